//! Every bpffs path of one datapath, the bpffs mount, and the locks: the short one that
//! serialises changes, and the long one that makes a `run` the datapath's only controller.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/apns-agent`, mode 0700):
//!
//! ```text
//! maps/<MAP NAME>       every map of apns_common::maps (pins are 0600)
//! program               the XDP program the links run (status reads its id and tag)
//! links/<ifname>:<ifindex>:<mode>
//!                       one bpf_link per interface; mode is native or skb; or, mode
//!                       libxdp, a pin of our component in libxdp's dispatcher there
//! tc-program            the fast paths' TC ingress program (mark and redirect)
//! tc-links/<ifname>     its TCX link, on interfaces whose fast path is `mark` or `redirect`
//! tc-conns-program      the connection table's TC egress program
//! tc-conns-links/<ifname>
//!                       its TCX link, on device-facing interfaces (config `[roles]`)
//! migrating/            a migration's staging pin directory (datapath::migrate), briefly
//! ```
//!
//! Before Linux 6.6 (no TCX) a TC program is a netlink filter, which is no BPF object: its
//! entry in `tc-links/` or `tc-conns-links/` is then a second pin of the program it runs.
//!
//! `unload` and a failed first install remove only these names, and only from a folder that
//! holds nothing else ([`PinDir::check_ours`]): a mistyped `--pin-dir` or bpffs' root is
//! refused, never emptied.
//!
//! bpffs refuses dots in names: `<ifname>` spells `.` as `%2E` and `%` as `%25`.
//!
//! A link pin records the interface it was made for: its name, and its ifindex in the
//! agent's network namespace. With what the kernel says of the link (the ifindex it runs on,
//! 0 once that device is deleted), an interface that was deleted, re-created or renamed
//! since is told apart from the one the pin names. Pins of the first release, named
//! `<ifname>:<mode>`, are still read (their ifindex is unknown).
//!
//! Outside bpffs, [`CONTROLLER_DIR`] holds one pid file per pin directory: the `run` that
//! holds its lock is the datapath's controller.

use std::{
    fs,
    io::{Read as _, Seek as _, Write as _},
    os::unix::fs::{
        DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
    },
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
/// Where `run` keeps the pid file it locks (systemd's `RuntimeDirectory=apns-agent`).
pub const CONTROLLER_DIR: &str = "/run/apns-agent";
/// `statfs` magic of bpffs (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The XDP attach mode a link was made with; part of its pin name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Skb,
    /// A component of libxdp's dispatcher (`multiprog`); the pin is then our extension
    /// program, not a link.
    Libxdp,
}

impl AttachMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
            AttachMode::Libxdp => "libxdp",
        }
    }

    fn parse(text: &str) -> Option<AttachMode> {
        match text {
            "native" => Some(AttachMode::Native),
            "skb" => Some(AttachMode::Skb),
            "libxdp" => Some(AttachMode::Libxdp),
            _ => None,
        }
    }
}

/// A link pin found in `links/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkPin {
    pub interface: String,
    /// The interface's ifindex when it was attached (unknown for first-release pins).
    pub ifindex: Option<u32>,
    pub mode: AttachMode,
    pub path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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

    /// A file name that stands for this pin directory outside bpffs (the controller's pid
    /// file, the live-policy state file): its path below [`BPFFS_ROOT`] with `%` and `/`
    /// percent-encoded, so two pin directories never share one.
    pub fn file_stem(&self) -> String {
        let relative = self
            .root
            .strip_prefix(BPFFS_ROOT)
            .unwrap_or(&self.root)
            .to_string_lossy();
        relative
            .trim_matches('/')
            .replace('%', "%25")
            .replace('/', "%2F")
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(MAPS)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn program(&self) -> PathBuf {
        self.root.join(PROGRAM)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join(LINKS)
    }

    pub fn tc_program(&self) -> PathBuf {
        self.root.join(TC_PROGRAM)
    }

    pub fn tc_links_dir(&self) -> PathBuf {
        self.root.join(TC_LINKS)
    }

    pub fn tc_link(&self, interface: &str) -> PathBuf {
        self.tc_links_dir().join(pin_name(interface))
    }

    /// The TC link pins present: (interface, path), sorted.
    pub fn tc_links(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        Ok(list(&self.tc_links_dir())?
            .into_iter()
            .map(|(name, path)| (interface_of(&name), path))
            .collect())
    }

    pub fn tc_conns_program(&self) -> PathBuf {
        self.root.join(TC_CONNS_PROGRAM)
    }

    pub fn tc_conns_links_dir(&self) -> PathBuf {
        self.root.join(TC_CONNS_LINKS)
    }

    pub fn tc_conns_link(&self, interface: &str) -> PathBuf {
        self.tc_conns_links_dir().join(pin_name(interface))
    }

    /// The connection table's TC egress link pins present: (interface, path), sorted.
    pub fn tc_conns_links(&self) -> anyhow::Result<Vec<(String, PathBuf)>> {
        Ok(list(&self.tc_conns_links_dir())?
            .into_iter()
            .map(|(name, path)| (interface_of(&name), path))
            .collect())
    }

    pub fn link(&self, interface: &str, ifindex: u32, mode: AttachMode) -> PathBuf {
        self.links_dir().join(format!(
            "{}:{ifindex}:{}",
            pin_name(interface),
            mode.as_str()
        ))
    }

    /// Whether a datapath has been pinned here (its maps exist).
    pub fn is_loaded(&self) -> bool {
        self.map(apns_common::maps::ACTIVE).exists()
    }

    /// The link pins present, sorted by interface.
    pub fn links(&self) -> anyhow::Result<Vec<LinkPin>> {
        let mut links = Vec::new();
        for (name, path) in list(&self.links_dir())? {
            let Some(link) = parse_link_pin(&name, &path) else {
                bail!(
                    "{} is not an apns-agent link pin (expected <interface>:<ifindex>:native, ...:skb or ...:libxdp); remove it or run `apns-agent unload`",
                    path.display()
                );
            };
            links.push(link);
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
        refuse_mount_root(&self.root)?;
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
            self.tc_conns_links_dir(),
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
    pub fn lock(&self) -> anyhow::Result<Lock> {
        let dir = fs::File::open(&self.root)
            .with_context(|| format!("opening pin directory {}", self.root.display()))?;
        Flock::lock(dir, FlockArg::LockExclusive)
            .map(Lock)
            .map_err(|(_, errno)| errno)
            .with_context(|| format!("locking pin directory {}", self.root.display()))
    }

    /// Takes the pin directory's lock if nobody holds it; `None` if somebody does.
    pub fn try_lock(&self) -> anyhow::Result<Option<Lock>> {
        let dir = fs::File::open(&self.root)
            .with_context(|| format!("opening pin directory {}", self.root.display()))?;
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(Lock(lock))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => {
                Err(errno).with_context(|| format!("locking pin directory {}", self.root.display()))
            }
        }
    }

    /// Takes the pin directory's lock, waiting up to `patience` for another command to
    /// release it; then refuses, saying so (a command stopped while holding it must not
    /// stall `run` for ever).
    pub fn lock_within(&self, patience: std::time::Duration) -> anyhow::Result<Lock> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(lock) = self.try_lock()? {
                return Ok(lock);
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "pin directory {} is still locked by another apns-agent command after {} s",
                    self.root.display(),
                    patience.as_secs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The pid file whose lock a `run` holds while it controls this datapath.
    pub fn controller_file(&self) -> PathBuf {
        Path::new(CONTROLLER_DIR).join(format!("{}.pid", self.file_stem()))
    }

    /// Makes this process the datapath's only controller for as long as the returned guard
    /// lives; refuses, naming the pid, when another process is. The lock is the kernel's
    /// (flock), so a controller that dies, even by SIGKILL, releases it.
    pub fn become_controller(&self) -> anyhow::Result<Controller> {
        let path = self.controller_file();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(CONTROLLER_DIR)
            .with_context(|| format!("creating {CONTROLLER_DIR}"))?;
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!(
                    "another apns-agent run (pid {}) already controls the datapath pinned at {}: stop it first, or give this one another --pin-dir",
                    pid.trim(),
                    self.root.display()
                );
            }
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("locking {}", path.display()))
            }
        };
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .with_context(|| format!("writing the pid to {}", path.display()))?;
        Ok(Controller { _lock: lock, path })
    }

    /// Removes every pin of the datapath and then its folders, once [`PinDir::check_ours`]
    /// found nothing else there; refuses, removing nothing, otherwise. Folders go only when
    /// empty. Missing pieces are not an error.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        if !self.root.exists() {
            return Ok(());
        }
        let ours = self.check_ours()?;
        // Deepest first: the pins, then their folders, then the root.
        for path in ours.iter().rev() {
            let removed = if path.is_dir() {
                fs::remove_dir(path)
            } else {
                fs::remove_file(path)
            };
            match removed {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| format!("removing {}", path.display()))
                }
            }
        }
        Ok(())
    }

    /// Checks that this is a datapath's pin directory, which `unload` and a failed install may
    /// remove: on bpffs, below the mount's root (never bpffs itself, where every tool pins), and
    /// holding only the names of the layout above (maps of this layout or of the previous
    /// one, whose leftovers a migration may leave, the program pins, link pins, and a
    /// migration's staging folder of the same kind). Returns every path it holds, root
    /// first, each folder before what it holds; refuses with the foreign entries named.
    pub fn check_ours(&self) -> anyhow::Result<Vec<PathBuf>> {
        let root = &self.root;
        if !is_bpffs(root) {
            bail!(
                "{} is not a pin directory on bpffs: refusing to remove anything there",
                root.display()
            );
        }
        refuse_mount_root(root)?;
        let mut ours = vec![root.clone()];
        let mut foreign = Vec::new();
        self.collect(&mut ours, &mut foreign)?;
        if !foreign.is_empty() {
            let named: Vec<String> = foreign
                .iter()
                .take(5)
                .map(|path| path.display().to_string())
                .collect();
            bail!(
                "{} holds what is not apns-agent's ({}{}): refusing to remove anything there; move those away, or point --pin-dir at apns-agent's own directory",
                root.display(),
                named.join(", "),
                if foreign.len() > named.len() { ", ..." } else { "" }
            );
        }
        Ok(ours)
    }

    /// Sorts what this pin directory holds into `ours` (folders before their contents) and
    /// `foreign`.
    fn collect(&self, ours: &mut Vec<PathBuf>, foreign: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        let known_map = |name: &str| {
            apns_common::maps::ALL.iter().any(|map| map.name == name)
                || apns_common::maps::RETIRED.contains(&name)
        };
        for (name, path) in list(&self.root)? {
            let is_dir = path.is_dir();
            match name.as_str() {
                PROGRAM | TC_PROGRAM | TC_CONNS_PROGRAM if !is_dir => ours.push(path),
                MAPS | LINKS | TC_LINKS | TC_CONNS_LINKS if is_dir => {
                    ours.push(path.clone());
                    for (entry, entry_path) in list(&path)? {
                        let fits = !entry_path.is_dir()
                            && match name.as_str() {
                                MAPS => known_map(&entry),
                                LINKS => parse_link_pin(&entry, &entry_path).is_some(),
                                _ => true,
                            };
                        if fits {
                            ours.push(entry_path);
                        } else {
                            foreign.push(entry_path);
                        }
                    }
                }
                STAGING if is_dir => {
                    ours.push(path.clone());
                    PinDir::new(path).collect(ours, foreign)?;
                }
                _ => foreign.push(path),
            }
        }
        Ok(())
    }
}

/// Refuses a pin directory that is the root of a bpffs mount, where every BPF tool pins.
fn refuse_mount_root(root: &Path) -> anyhow::Result<()> {
    let device = |path: &Path| fs::metadata(path).map(|meta| meta.dev()).ok();
    let parent = root.parent().unwrap_or(Path::new("/"));
    if root == Path::new(BPFFS_ROOT) || (root.exists() && device(root) != device(parent)) {
        bail!(
            "pin directory {} is the root of a bpffs mount, where every BPF tool pins: apns-agent's pin directory is a folder below it, such as {DEFAULT_PIN_DIR}",
            root.display()
        );
    }
    Ok(())
}

/// The names of the layout above.
const PROGRAM: &str = "program";
const TC_PROGRAM: &str = "tc-program";
const TC_CONNS_PROGRAM: &str = "tc-conns-program";
const MAPS: &str = "maps";
const LINKS: &str = "links";
const TC_LINKS: &str = "tc-links";
const TC_CONNS_LINKS: &str = "tc-conns-links";
/// A migration's staging folder (`migrate`), a pin directory of its own.
pub const STAGING: &str = "migrating";

/// An interface name as a pin name: bpffs refuses names with a dot (VLAN interfaces are
/// often named `eth0.100`), so `.` is written `%2E` (and `%` itself `%25`).
fn pin_name(interface: &str) -> String {
    interface.replace('%', "%25").replace('.', "%2E")
}

/// The interface name a pin name stands for ([`pin_name`] undone).
fn interface_of(pin_name: &str) -> String {
    pin_name.replace("%2E", ".").replace("%25", "%")
}

/// The link pin at `path` (a file of `links/`), as its name says.
pub fn link_pin_at(path: &Path) -> Option<LinkPin> {
    parse_link_pin(path.file_name()?.to_str()?, path)
}

/// Reads a link pin's name: `<interface>:<ifindex>:<mode>`, or the first release's
/// `<interface>:<mode>`.
fn parse_link_pin(name: &str, path: &Path) -> Option<LinkPin> {
    let (rest, mode) = name.rsplit_once(':')?;
    let mode = AttachMode::parse(mode)?;
    let (interface, ifindex) = match rest.rsplit_once(':') {
        Some((interface, ifindex)) => (interface, Some(ifindex.parse().ok()?)),
        None => (rest, None),
    };
    Some(LinkPin {
        interface: interface_of(interface),
        ifindex,
        mode,
        path: path.to_path_buf(),
    })
}

/// Proof that the pin directory's lock is held; the datapath's changing methods take it.
pub struct Lock(#[expect(dead_code, reason = "held for its Drop, which unlocks")] Flock<fs::File>);

/// The controller lock of a running `run`; dropping it removes the pid file.
pub struct Controller {
    _lock: Flock<fs::File>,
    path: PathBuf,
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Removed while still locked: a second run waiting for it finds no stale pid.
        let _ = fs::remove_file(&self.path);
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

/// Whether `path` is on a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|fs| fs.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless it is there. Two agents starting together (the
/// test suite's, or a unit and an operator's command) must not both mount it: the second
/// mount would hide the first, and every pin made in between (ENOENT for the agent that
/// made it). So the check and the mount happen under an exclusive lock of the mount point:
/// whoever waited finds bpffs mounted when it checks again. (A process that opens the path
/// only after the mount locks bpffs's root instead of the folder beneath, and finds it
/// mounted all the same.)
fn ensure_bpffs() -> anyhow::Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if is_bpffs(root) {
        return Ok(());
    }
    refuse_private_mount_namespace()?;
    let mount_point = fs::File::open(root).with_context(|| format!("opening {BPFFS_ROOT}"))?;
    let _lock = Flock::lock(mount_point, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {BPFFS_ROOT} to mount bpffs there"))?;
    if is_bpffs(root) {
        return Ok(());
    }
    super::hooks::pause_at(super::hooks::BEFORE_BPFFS_MOUNT);
    tracing::info!("bpffs is not mounted at {BPFFS_ROOT}; mounting it");
    mount(Some("bpf"), root, Some("bpf"), MsFlags::empty(), None::<&str>).with_context(|| {
        format!("mounting bpffs at {BPFFS_ROOT} (needs CAP_SYS_ADMIN; or run `mount -t bpf bpf {BPFFS_ROOT}`)")
    })?;
    Ok(())
}

/// A bpffs mounted in a mount namespace of its own (what `ip netns exec` makes: it also
/// remounts /sys, so /sys/fs/bpf is an empty folder there) disappears with the last process
/// in it, and every pin with it: the datapath would not survive the agent. So before
/// mounting, the agent checks that its mount namespace is its parent's (and init's, where
/// it may read it), and refuses otherwise. (`doctor` asks the same.)
pub fn refuse_private_mount_namespace() -> anyhow::Result<()> {
    let namespace = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let Some(own) = namespace("self") else {
        return Ok(());
    };
    let parent = std::os::unix::process::parent_id().to_string();
    for other in [parent.as_str(), "1"] {
        if namespace(other).is_some_and(|theirs| theirs != own) {
            bail!(
                "{BPFFS_ROOT} is not bpffs here, and this process runs in a mount namespace of its own (process {other} is in another one), as `ip netns exec` makes: a bpffs mounted here would vanish with this process, and every pin with it. Enter only the network namespace instead (`nsenter --net=/run/netns/NAME apns-agent ...`), or run the agent in the host's mount namespace"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_unique_per_pin_directory() {
        let stem = |path: &str| PinDir::new(path).file_stem();
        assert_eq!(stem(DEFAULT_PIN_DIR), "apns-agent");
        assert_eq!(stem("/sys/fs/bpf/a/b"), "a%2Fb");
        assert_ne!(stem("/sys/fs/bpf/a/b"), stem("/sys/fs/bpf/a%2Fb"));
        assert_eq!(stem("/sys/fs/bpf/apns-test-1-2/"), "apns-test-1-2");
    }

    #[test]
    fn link_pins_record_the_interface() {
        let pins = PinDir::new("/sys/fs/bpf/x");
        let path = pins.link("lan0", 7, AttachMode::Native);
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "lan0:7:native");
        let parsed = parse_link_pin(name, &path).unwrap();
        assert_eq!(
            (parsed.interface.as_str(), parsed.ifindex),
            ("lan0", Some(7))
        );
        let old = parse_link_pin("wan0:skb", Path::new("/x")).unwrap();
        assert_eq!(
            (old.interface.as_str(), old.ifindex, old.mode),
            ("wan0", None, AttachMode::Skb)
        );
        assert!(parse_link_pin("wan0:x:skb", Path::new("/x")).is_none());
        assert!(parse_link_pin("wan0", Path::new("/x")).is_none());
        // bpffs refuses dots in names: a VLAN interface's pins spell them out.
        let vlan = pins.link("eth0.100", 9, AttachMode::Skb);
        let name = vlan.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "eth0%2E100:9:skb");
        assert_eq!(parse_link_pin(name, &vlan).unwrap().interface, "eth0.100");
        assert_eq!(pins.tc_link("a%b.c").file_name().unwrap(), "a%25b%2Ec");
        assert_eq!(
            pins.tc_conns_link("a%b.c").file_name().unwrap(),
            "a%25b%2Ec"
        );
        assert_eq!(interface_of("a%25b%2Ec"), "a%b.c");
    }
}
