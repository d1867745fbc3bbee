//! Sharing an interface with other XDP programs through libxdp's multiprog dispatcher
//! (docs/multiprog.md). A dispatcher is an XDP program with ten empty slots (`prog0` to
//! `prog9`); each component is an extension program (`BPF_PROG_TYPE_EXT`) attached in place
//! of one slot, and the dispatcher runs them in order, going on to the next while a
//! component returns an action of its slot's `chain_call_actions`.
//!
//! The protocol is libxdp's (xdp-tools 1.3, `lib/libxdp/protocol.org`), so that xdp-loader,
//! xdp-filter and every libxdp program see our component and keep theirs:
//!
//! - every change happens under an exclusive flock of `<bpffs>/xdp`;
//! - a dispatcher is never changed: a change builds a new one (libxdp's own
//!   `xdp-dispatcher.o`, its configuration in the `.rodata` constant `conf`), attaches every
//!   component to it (the others' extension programs re-attached from their pins with
//!   `BPF_LINK_CREATE`), pins them in `<bpffs>/xdp/dispatch-<ifindex>-<dispatcher id>/` as
//!   `prog<N>-prog` and `prog<N>-link`, swaps it for the old one on the interface through
//!   netlink (`XDP_FLAGS_REPLACE`, the old program as the expected one: a concurrent change
//!   makes the swap fail instead of being lost), and only then removes the old pins;
//! - the last component out detaches the dispatcher.
//!
//! Our component is `apns_xdp_libxdp` (`object::COMPONENT_OBJECT`), with the datapath's
//! pinned maps. Its record in our pin directory is a pin of that extension program
//! (`links/<ifname>:<ifindex>:libxdp`): libxdp re-attaches it to each dispatcher it builds,
//! so the program, unlike its link, outlives every change made by others.

use std::{
    fs,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::DirBuilderExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, Map, MapData},
    programs::{links::FdLink, Extension, ProgramFd, ProgramInfo, Xdp},
    EbpfLoader,
};
use nix::fcntl::{Flock, FlockArg};

use apns_common::label::Label;

use super::{
    netdev::{self, XdpAttachMode},
    pins::BPFFS_ROOT,
    sys,
};

/// Whether the agent shares an interface's XDP hook with other programs, as a component of
/// libxdp's multiprog dispatcher (docs/multiprog.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Multiprog {
    /// Join the dispatcher an interface runs; take an interface with no XDP program alone.
    #[default]
    Auto,
    /// Take interfaces alone; an interface that runs a dispatcher is refused.
    Never,
    /// Always run as a dispatcher's component (a new dispatcher where none runs), so that
    /// libxdp programs can join later.
    Always,
}

impl Label for Multiprog {
    const WHAT: &'static str = "xdp_multiprog";
    const ALL: &'static [Multiprog] = &[Multiprog::Auto, Multiprog::Never, Multiprog::Always];
    fn as_str(self) -> &'static str {
        match self {
            Multiprog::Auto => "auto",
            Multiprog::Never => "never",
            Multiprog::Always => "always",
        }
    }
}

/// How new interfaces share their XDP hook: the multiprog choice and our component's
/// priority in a dispatcher (lower runs first; libxdp's default 50, xdp-filter's 10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sharing {
    pub multiprog: Multiprog,
    pub priority: u32,
}

impl Default for Sharing {
    fn default() -> Self {
        Sharing {
            multiprog: Multiprog::Auto,
            priority: DEFAULT_PRIORITY,
        }
    }
}

/// The program name libxdp gives its dispatchers.
pub const LIBXDP_DISPATCHER: &str = "xdp_dispatcher";
/// libxdp's folder below bpffs: its lock and the dispatchers' pins.
pub const LIBXDP_DIR: &str = "xdp";
/// Slots of a dispatcher (`MAX_DISPATCHER_ACTIONS`).
pub const MAX_COMPONENTS: usize = 10;
/// The priority libxdp gives a program that does not say (`XDP_DEFAULT_RUN_PRIO`); lower
/// runs first. xdp-filter runs at 10.
pub const DEFAULT_PRIORITY: u32 = 50;
/// `XDP_DISPATCHER_MAGIC` ('X' + 'D' + 'P') and the configuration version we speak.
const MAGIC: u8 = 236;
const VERSION: u8 = 2;
/// The bit of `chain_call_actions` for the empty slots' own return value
/// (`XDP_DISPATCHER_RETVAL`): always set, so an empty slot never ends the chain.
const EMPTY_SLOT_CONTINUES: u32 = 1 << 31;
/// `XDP_PASS` (2): our component lets the chain go on for what it passes; a drop ends it.
const CHAIN_ON_PASS: u32 = 1 << 2 | EMPTY_SLOT_CONTINUES;
/// The name of the dispatcher's configuration constant in `xdp-dispatcher.o`.
const CONFIG_GLOBAL: &str = "conf";
/// `struct xdp_dispatcher_config` of version 2: four bytes, then three `__u32[10]`.
const CONFIG_SIZE: usize = 4 + 3 * 4 * MAX_COMPONENTS;
/// IFLA_XDP flags (include/uapi/linux/if_link.h).
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1 << 0;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_HW_MODE: u32 = 1 << 3;
const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// Where libxdp's packages install the dispatcher object, besides `$LIBXDP_OBJECT_PATH`
/// (libxdp's own override). Debian's libxdp1 uses the multiarch folder.
fn dispatcher_object_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LIBXDP_OBJECT_PATH")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.push(PathBuf::from(format!(
        "/usr/lib/{}-linux-gnu/bpf",
        std::env::consts::ARCH
    )));
    dirs.extend(["/usr/lib/bpf", "/usr/lib64/bpf", "/usr/local/lib/bpf"].map(PathBuf::from));
    dirs
}

/// libxdp's dispatcher object (`xdp-dispatcher.o`, package libxdp1 on Debian).
pub fn dispatcher_object() -> anyhow::Result<PathBuf> {
    let dirs = dispatcher_object_dirs();
    dirs.iter()
        .map(|dir| dir.join("xdp-dispatcher.o"))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "libxdp's dispatcher object xdp-dispatcher.o is in none of {} (install libxdp1: `apt install libxdp1`, or set LIBXDP_OBJECT_PATH)",
                dirs.iter()
                    .map(|dir| dir.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// One slot's settings in a dispatcher's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotConfig {
    pub chain_call_actions: u32,
    pub priority: u32,
    pub flags: u32,
}

/// `struct xdp_dispatcher_config` (version 2): the slots in use, in run order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatcherConfig {
    pub xdp_frags: bool,
    pub slots: Vec<SlotConfig>,
}

impl DispatcherConfig {
    fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut bytes = [0u8; CONFIG_SIZE];
        bytes[0] = MAGIC;
        bytes[1] = VERSION;
        bytes[2] = self.slots.len() as u8;
        bytes[3] = u8::from(self.xdp_frags);
        for (slot, config) in self.slots.iter().enumerate() {
            for (array, value) in [config.chain_call_actions, config.priority, config.flags]
                .into_iter()
                .enumerate()
            {
                let at = 4 + array * 4 * MAX_COMPONENTS + slot * 4;
                bytes[at..at + 4].copy_from_slice(&value.to_ne_bytes());
            }
        }
        bytes
    }

    fn from_bytes(bytes: &[u8; CONFIG_SIZE]) -> anyhow::Result<DispatcherConfig> {
        if bytes[0] != MAGIC {
            bail!(
                "its configuration has no libxdp magic ({} instead of {MAGIC})",
                bytes[0]
            );
        }
        if bytes[1] != VERSION {
            bail!(
                "its configuration is version {} (apns-agent speaks libxdp's version {VERSION}, libxdp 1.3 and 1.4)",
                bytes[1]
            );
        }
        let used = usize::from(bytes[2]);
        if used > MAX_COMPONENTS {
            bail!("its configuration says {used} components, more than {MAX_COMPONENTS}");
        }
        let value = |array: usize, slot: usize| {
            let at = 4 + array * 4 * MAX_COMPONENTS + slot * 4;
            u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Ok(DispatcherConfig {
            xdp_frags: bytes[3] != 0,
            slots: (0..used)
                .map(|slot| SlotConfig {
                    chain_call_actions: value(0, slot),
                    priority: value(1, slot),
                    flags: value(2, slot),
                })
                .collect(),
        })
    }
}

/// The exclusive lock of libxdp's folder, held while a dispatcher changes.
pub struct LibxdpLock(
    #[expect(dead_code, reason = "held for its Drop, which unlocks")] Flock<fs::File>,
);

/// Takes libxdp's lock (`<bpffs>/xdp`, made if missing), waiting for the holder.
pub fn lock() -> anyhow::Result<LibxdpLock> {
    let dir = Path::new(BPFFS_ROOT).join(LIBXDP_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err).with_context(|| format!("creating {}", dir.display())),
    }
    let file = fs::File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {} (libxdp's lock)", dir.display()))?;
    Ok(LibxdpLock(lock))
}

/// One component of a dispatcher: its extension program and slot settings.
pub struct Component {
    pub program: Extension,
    pub id: u32,
    pub name: String,
    pub config: SlotConfig,
}

/// The libxdp dispatcher attached to an interface, read from the kernel and libxdp's pins.
pub struct Current {
    pub dispatcher: Attached,
    pub components: Vec<Component>,
}

/// A dispatcher attached to an interface.
pub struct Attached {
    pub program_id: u32,
    pub mode: XdpAttachMode,
    pub pin_dir: PathBuf,
    program: ProgramFd,
}

/// The pin folder of dispatcher `program_id` on `ifindex`.
fn pin_dir(ifindex: u32, program_id: u32) -> PathBuf {
    Path::new(BPFFS_ROOT)
        .join(LIBXDP_DIR)
        .join(format!("dispatch-{ifindex}-{program_id}"))
}

/// The dispatcher on `interface` (index `ifindex`), `None` when no XDP program runs there.
/// An error when something else does: a plain program, or a dispatcher libxdp has no pins
/// of (which libxdp itself would not touch).
pub fn current(interface: &str, ifindex: u32) -> anyhow::Result<Option<Current>> {
    let link = netdev::link(ifindex)?.with_context(|| format!("{interface} is gone"))?;
    let Some(&(mode, program_id)) = link.xdp.programs().first() else {
        return Ok(None);
    };
    let info = sys::program_by_id(program_id)
        .with_context(|| format!("{interface}: reading its XDP program {program_id}"))?;
    if info.name_as_str() != Some(LIBXDP_DISPATCHER) {
        bail!(
            "{interface} runs XDP program {program_id} ({}), not a libxdp dispatcher",
            info.name_as_str().unwrap_or("?")
        );
    }
    let config = read_config(&info)
        .with_context(|| format!("{interface}: reading libxdp dispatcher {program_id}"))?;
    let pin_dir = pin_dir(ifindex, program_id);
    let mut components = Vec::new();
    for (slot, &config) in config.slots.iter().enumerate() {
        let path = pin_dir.join(format!("prog{slot}-prog"));
        let program = Extension::from_pin(&path).with_context(|| {
            format!(
                "{interface}: opening component {slot} of libxdp dispatcher {program_id} at {}",
                path.display()
            )
        })?;
        let info = program.info()?;
        components.push(Component {
            id: info.id(),
            name: info.name_as_str().unwrap_or("?").to_owned(),
            program,
            config,
        });
    }
    Ok(Some(Current {
        dispatcher: Attached {
            program_id,
            mode,
            pin_dir,
            program: info
                .fd()
                .with_context(|| format!("{interface}: opening dispatcher {program_id}"))?,
        },
        components,
    }))
}

/// The configuration of a loaded dispatcher: the value of its one `.rodata` map.
fn read_config(info: &ProgramInfo) -> anyhow::Result<DispatcherConfig> {
    let ids = info.map_ids()?.unwrap_or_default();
    let [id] = ids[..] else {
        bail!("it has {} maps where a dispatcher has one", ids.len());
    };
    let map =
        Map::from_map_data(MapData::from_id(id).with_context(|| format!("opening map {id}"))?)?;
    let array: Array<_, [u8; CONFIG_SIZE]> = Array::try_from(map)
        .with_context(|| format!("map {id} is not a dispatcher configuration"))?;
    DispatcherConfig::from_bytes(
        &array
            .get(&0, 0)
            .with_context(|| format!("reading map {id}"))?,
    )
}

/// Loads our component as an extension of the dispatcher's `function` (the second
/// argument), attaches it, pins the program at the path given and returns its link.
pub type LoadComponent<'a> = &'a mut dyn FnMut(&ProgramFd, &str, &Path) -> anyhow::Result<FdLink>;

/// A component of the dispatcher to build: one already running, or ours, made for its slot
/// by `load`.
pub enum Member<'a> {
    Existing(Box<Component>),
    New {
        priority: u32,
        load: LoadComponent<'a>,
    },
}

impl Member<'_> {
    /// libxdp's run order: priority, then program name.
    fn order(&self) -> (u32, &str) {
        match self {
            Member::Existing(component) => (component.config.priority, &component.name),
            Member::New { priority, .. } => (*priority, apns_common::programs::XDP_COMPONENT),
        }
    }
}

/// What [`replace`] made: the new dispatcher and where it pinned the new member.
#[derive(Debug)]
pub struct Built {
    pub dispatcher_id: Option<u32>,
    /// libxdp's pin of the [`Member::New`] component's program.
    pub new_member_pin: Option<PathBuf>,
}

/// Makes `members` the components of `interface`'s dispatcher, in libxdp's order (priority,
/// then name), replacing `old` (or, without one, attaching a new
/// dispatcher in `mode`). No members: the dispatcher is detached. The caller holds
/// [`lock`]. A failure before the swap leaves the interface as it was.
pub fn replace(
    _lock: &LibxdpLock,
    interface: &str,
    ifindex: u32,
    old: Option<&Attached>,
    mode: XdpAttachMode,
    mut members: Vec<Member<'_>>,
) -> anyhow::Result<Built> {
    if members.len() > MAX_COMPONENTS {
        bail!(
            "{interface}: a libxdp dispatcher runs at most {MAX_COMPONENTS} programs, and it would need {}",
            members.len()
        );
    }
    if members.is_empty() {
        if let Some(old) = old {
            netdev::set_xdp(
                ifindex,
                None,
                Some(old.program.as_fd().as_raw_fd()),
                flags(mode) | XDP_FLAGS_REPLACE,
            )
            .with_context(|| {
                format!(
                    "{interface}: detaching libxdp dispatcher {}",
                    old.program_id
                )
            })?;
            remove_pins(&old.pin_dir);
        }
        return Ok(Built {
            dispatcher_id: None,
            new_member_pin: None,
        });
    }
    members.sort_by(|a, b| a.order().cmp(&b.order()));
    let config = DispatcherConfig {
        xdp_frags: false,
        slots: members
            .iter()
            .map(|member| match member {
                Member::Existing(component) => component.config,
                Member::New { priority, .. } => SlotConfig {
                    chain_call_actions: CHAIN_ON_PASS,
                    priority: *priority,
                    flags: 0,
                },
            })
            .collect(),
    };
    let (dispatcher_fd, dispatcher_id) =
        load_dispatcher(&config).with_context(|| format!("{interface}: a new dispatcher"))?;
    let new_dir = pin_dir(ifindex, dispatcher_id);
    let attached = attach_members(interface, &dispatcher_fd, members, &new_dir).and_then(|new| {
        let expected = old.map(|old| old.program.as_fd().as_raw_fd());
        let replace = if old.is_some() { XDP_FLAGS_REPLACE } else { XDP_FLAGS_UPDATE_IF_NOEXIST };
        netdev::set_xdp(ifindex, Some(dispatcher_fd.as_fd().as_raw_fd()), expected, flags(mode) | replace)
            .with_context(|| {
                format!(
                    "{interface}: swapping in the new libxdp dispatcher {dispatcher_id} (did another program change the interface meanwhile?)"
                )
            })?;
        Ok(new)
    });
    match attached {
        Ok(new_member_pin) => {
            if let Some(old) = old {
                remove_pins(&old.pin_dir);
            }
            Ok(Built {
                dispatcher_id: Some(dispatcher_id),
                new_member_pin,
            })
        }
        Err(err) => {
            remove_pins(&new_dir);
            Err(err)
        }
    }
}

/// libxdp's dispatcher loaded (verified, attached nowhere) with `config`: its program and id.
fn load_dispatcher(config: &DispatcherConfig) -> anyhow::Result<(ProgramFd, u32)> {
    let object = dispatcher_object()?;
    let config_bytes = config.to_bytes();
    let mut ebpf = EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, &config_bytes[..], true)
        .load_file(&object)
        .with_context(|| format!("loading libxdp's dispatcher {}", object.display()))?;
    let dispatcher: &mut Xdp = ebpf
        .program_mut(LIBXDP_DISPATCHER)
        .with_context(|| format!("{} has no program {LIBXDP_DISPATCHER}", object.display()))?
        .try_into()?;
    dispatcher.load().with_context(|| {
        format!(
            "loading libxdp's dispatcher {} (the verifier log follows)",
            object.display()
        )
    })?;
    // The program's fd keeps it (and its configuration map) loaded once `ebpf` is gone.
    Ok((dispatcher.fd()?.try_clone()?, dispatcher.info()?.id()))
}

/// A dispatcher of `slots` slots (1 to 10) that continue on `XDP_PASS`, attached nowhere:
/// its program, its id, and the function our component would replace in it (the dispatcher's own where it is
/// alone, as in [`replace`], else the first slot's): `doctor`'s proof that the component
/// loads on this kernel, and the benchmark of what a dispatcher costs.
pub fn unattached_dispatcher(slots: usize) -> anyhow::Result<(ProgramFd, u32, &'static str)> {
    let slot = SlotConfig {
        chain_call_actions: CHAIN_ON_PASS,
        priority: DEFAULT_PRIORITY,
        flags: 0,
    };
    let config = DispatcherConfig {
        xdp_frags: false,
        slots: vec![slot; slots.clamp(1, MAX_COMPONENTS)],
    };
    let function = if slots <= 1 {
        LIBXDP_DISPATCHER
    } else {
        "prog0"
    };
    let (program, id) = load_dispatcher(&config)?;
    Ok((program, id, function))
}

/// Attaches each member to its slot of the loaded dispatcher and pins program and link in
/// `dir`; returns the program pin of the new member.
fn attach_members(
    interface: &str,
    dispatcher: &ProgramFd,
    members: Vec<Member<'_>>,
    dir: &Path,
) -> anyhow::Result<Option<PathBuf>> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut new_member_pin = None;
    let alone = members.len() == 1;
    for (slot, member) in members.into_iter().enumerate() {
        // As libxdp does, a lone component replaces the dispatcher's own function (no
        // dispatch at all); libxdp re-attaches it to a slot when a second one comes.
        let function = if alone {
            LIBXDP_DISPATCHER.to_owned()
        } else {
            format!("prog{slot}")
        };
        let program_pin = dir.join(format!("prog{slot}-prog"));
        let link_pin = dir.join(format!("prog{slot}-link"));
        let link = match member {
            Member::Existing(mut component) => {
                let link = component
                    .program
                    .attach_to_program(dispatcher, &function)
                    .with_context(|| {
                        format!(
                            "{interface}: attaching {} (program {}) to the new dispatcher's {function}",
                            component.name, component.id
                        )
                    })?;
                let link = component.program.take_link(link)?;
                component
                    .program
                    .pin(&program_pin)
                    .with_context(|| format!("pinning {}", program_pin.display()))?;
                FdLink::from(link)
            }
            Member::New { load, .. } => {
                new_member_pin = Some(program_pin.clone());
                load(dispatcher, &function, &program_pin)?
            }
        };
        link.pin(&link_pin)
            .with_context(|| format!("pinning {}", link_pin.display()))?;
    }
    Ok(new_member_pin)
}

/// The XDP flags of `mode`.
fn flags(mode: XdpAttachMode) -> u32 {
    match mode {
        XdpAttachMode::Native => XDP_FLAGS_DRV_MODE,
        XdpAttachMode::Skb => XDP_FLAGS_SKB_MODE,
        XdpAttachMode::Hw => XDP_FLAGS_HW_MODE,
    }
}

/// Removes a dispatcher's pin folder: its links go with the last reference (the old
/// dispatcher, detached, then unloads), the programs stay where others hold them.
fn remove_pins(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Err(err) = fs::remove_file(entry.path()) {
            tracing::warn!("removing {}: {err}", entry.path().display());
        }
    }
    if let Err(err) = fs::remove_dir(dir) {
        tracing::warn!("removing {}: {err}", dir.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_reads_back_as_written() {
        let config = DispatcherConfig {
            xdp_frags: false,
            slots: vec![
                SlotConfig {
                    chain_call_actions: 1 << 2 | EMPTY_SLOT_CONTINUES,
                    priority: 10,
                    flags: 0,
                },
                SlotConfig {
                    chain_call_actions: CHAIN_ON_PASS,
                    priority: DEFAULT_PRIORITY,
                    flags: 0,
                },
            ],
        };
        let bytes = config.to_bytes();
        // libxdp's layout: magic, version, count, frags; then chain actions, priorities.
        assert_eq!(&bytes[..4], &[236, 2, 2, 0]);
        assert_eq!(&bytes[4..8], &(4u32 | 1 << 31).to_ne_bytes());
        assert_eq!(&bytes[44..48], &10u32.to_ne_bytes());
        assert_eq!(&bytes[48..52], &50u32.to_ne_bytes());
        assert_eq!(DispatcherConfig::from_bytes(&bytes).unwrap(), config);
        let mut wrong = bytes;
        wrong[1] = 3;
        assert!(DispatcherConfig::from_bytes(&wrong)
            .unwrap_err()
            .to_string()
            .contains("version 3"));
    }
}
