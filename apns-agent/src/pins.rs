//! Every bpffs path the agent uses, the bpffs mount, and the lock that serialises changes.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/apns-agent`, mode 0700):
//!
//! ```text
//! maps/<MAP NAME>       every map of apns_common::maps (pins are 0600)
//! program               the XDP program the links run (status reads its id and tag)
//! links/<ifname>:<mode> one bpf_link per interface; mode is native or skb
//! tc-program            the mark fast path's TC ingress program
//! tc-links/<ifname>     its TCX link, on interfaces whose fast path is `mark`
//! ```

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use nix::{
    fcntl::{Flock, FlockArg},
    mount::{mount, MsFlags},
    sys::statfs::statfs,
};

/// Where bpffs is mounted on every system we know of.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/apns-agent";
/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The XDP attach mode a link was made with; part of its pin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
}

impl AttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }

    fn parse(text: &str) -> Option<AttachMode> {
        match text {
            "native" => Some(AttachMode::Native),
            "skb" => Some(AttachMode::Skb),
            _ => None,
        }
    }
}

/// A link pin found in `links/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub interface: String,
    pub mode: AttachMode,
    pub path: PathBuf,
}

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn program(&self) -> PathBuf {
        self.root.join("program")
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn tc_program(&self) -> PathBuf {
        self.root.join("tc-program")
    }

    pub fn tc_links_dir(&self) -> PathBuf {
        self.root.join("tc-links")
    }

    pub fn tc_link(&self, interface: &str) -> PathBuf {
        self.tc_links_dir().join(interface)
    }

    /// The TC link pins present: (interface, path), sorted.
    pub fn tc_links(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        list(&self.tc_links_dir())
    }

    pub fn link(&self, interface: &str, mode: AttachMode) -> PathBuf {
        self.links_dir()
            .join(format!("{interface}:{}", mode.as_str()))
    }

    /// Whether a datapath has been pinned here (its maps exist).
    pub fn is_loaded(&self) -> bool {
        self.map(apns_common::maps::ACTIVE).exists()
    }

    /// The link pins present, sorted by interface.
    pub fn links(&self) -> anyhow::Result<Vec<LinkPin>> {
        let mut links = Vec::new();
        for (name, path) in list(&self.links_dir())? {
            let parsed = name
                .rsplit_once(':')
                .and_then(|(interface, mode)| Some((interface, AttachMode::parse(mode)?)));
            let Some((interface, mode)) = parsed else {
                bail!(
                    "{} is not an apns-agent link pin (expected <interface>:native or <interface>:skb); remove it or run `apns-agent unload`",
                    path.display()
                );
            };
            links.push(LinkPin {
                interface: interface.to_owned(),
                mode,
                path,
            });
        }
        links.sort_by(|a, b| a.interface.cmp(&b.interface));
        Ok(links)
    }

    /// The link pin of `interface`, if it is attached.
    pub fn link_of(&self, interface: &str) -> anyhow::Result<Option<LinkPin>> {
        Ok(self
            .links()?
            .into_iter()
            .find(|link| link.interface == interface))
    }

    /// Makes sure bpffs is mounted at [`BPFFS_ROOT`] (mounting it if the system did not) and
    /// creates the pin directory tree with mode 0700.
    pub fn prepare(&self) -> anyhow::Result<()> {
        ensure_bpffs()?;
        // Check before creating anything: a pin directory elsewhere would leave folders behind.
        let existing = self
            .root
            .ancestors()
            .find(|dir| dir.exists())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(existing) {
            bail!(
                "pin directory {} is not on a bpffs mount ({} is not bpffs): use a directory under {BPFFS_ROOT}",
                self.root.display(),
                existing.display()
            );
        }
        for dir in [
            self.root.clone(),
            self.maps_dir(),
            self.links_dir(),
            self.tc_links_dir(),
        ] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating pin directory {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("setting mode 0700 on {}", dir.display()))?;
        }
        Ok(())
    }

    /// Takes the pin directory's lock (blocking): every command that changes the datapath
    /// holds it, so a CLI `allow add` and a `run` reload never interleave.
    pub fn lock(&self) -> anyhow::Result<Flock<fs::File>> {
        let dir = fs::File::open(&self.root)
            .with_context(|| format!("opening pin directory {}", self.root.display()))?;
        Flock::lock(dir, FlockArg::LockExclusive)
            .map_err(|(_, errno)| errno)
            .with_context(|| format!("locking pin directory {}", self.root.display()))
    }

    /// Removes every pin and the directory tree. Missing pieces are not an error.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        match fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("removing {}", self.root.display())),
        }
    }
}

/// The entries of a pin folder as (name, path), sorted; a folder not made yet is empty.
fn list(dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
    };
    let mut listed = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        listed.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    listed.sort();
    Ok(listed)
}

/// Restricts a freshly made pin to its owner.
pub fn restrict(path: &Path) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

fn ensure_bpffs() -> anyhow::Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root) {
        return Ok(());
    }
    tracing::info!("bpffs is not mounted at {BPFFS_ROOT}; mounting it");
    mount(Some("bpf"), root, Some("bpf"), MsFlags::empty(), None::<&str>).with_context(|| {
        format!("mounting bpffs at {BPFFS_ROOT} (needs CAP_SYS_ADMIN; or run `mount -t bpf bpf {BPFFS_ROOT}`)")
    })?;
    Ok(())
}
