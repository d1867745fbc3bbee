//! The one door to the pinned datapath: whatever opens, checks or changes the programs, maps,
//! links and pins of a datapath goes through this module.
//!
//! Everything lives in bpffs ([`pins`]), so it outlives the agent process: a killed agent
//! leaves the datapath classifying and enforcing, and the next one adopts it.
//!
//! - [`Datapath::open`] checks the pinned maps' layout once and hands out typed handles:
//!   [`Datapath::policy`], [`Datapath::counters`], [`Datapath::interfaces`],
//!   [`Datapath::events`]; [`Datapath::status`] reports it.
//! - [`Datapath::install`] creates, adopts or upgrades it ([`install`]), and migrates a
//!   datapath of the previous map layout in place ([`migrate`]).
//! - [`Datapath::reconcile`] is the only way its state changes ([`reconcile`]); it and the
//!   other changing calls take the pin directory's [`Lock`] as proof that the caller holds it.
//!
//! Submodules: `object` (the embedded ELF), `features` (the kernel's optional features,
//! probed), `pins` (paths and locks), `layout` (the map
//! layout check), `install`, `migrate` (from the previous layout), `hooks` (test hooks),
//! `links` (attach and detach), `occupants` (other XDP programs
//! on an interface), `netdev` (devices as netlink reports them), `policy` (the policy model),
//! `policy_maps`, `counters`, `interfaces`, `events`, `conns` (typed map access; `conns` is
//! the connection table), `reconcile`,
//! `status`, `sys` (raw bpf calls aya lacks), `instance` (a private, unpinned instance for
//! BPF_PROG_TEST_RUN).

pub mod conns;
pub mod counters;
pub mod events;
pub mod features;
pub mod hooks;
mod install;
pub mod instance;
pub mod interfaces;
mod layout;
pub mod links;
pub mod migrate;
pub mod multiprog;
pub mod netdev;
pub mod object;
pub mod occupants;
pub mod pins;
pub mod policy;
pub mod policy_maps;
pub mod reconcile;
pub mod status;
mod sys;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt as _,
};

use anyhow::{bail, Context as _};
use apns_common::{
    events::EventConfig,
    maps::{ACTIVE, CONNS_DEFAULT_ENTRIES},
};

pub use install::Installed;
pub use links::{TcHook, XdpMode};
pub use multiprog::{Multiprog, Sharing};
pub use object::EbpfLog;
pub use pins::{Lock, PinDir};

use self::{
    conns::ConnMaps,
    counters::CounterMaps,
    events::EventMaps,
    interfaces::{FastPath, InterfaceMaps, InterfaceRole, MarkBits},
    pins::LinkPin,
    policy::Policy,
    policy_maps::PolicyMaps,
    reconcile::Desired,
    status::{InterfaceStatus, PolicySummary, Status},
};

/// An open pinned datapath: typed handles to its maps, its layout checked.
pub struct Datapath {
    pins: PinDir,
    pub policy: PolicyMaps,
    pub counters: CounterMaps,
    pub interfaces: InterfaceMaps,
    pub events: EventMaps,
    pub conns: ConnMaps,
    identity: Identity,
    /// Kernel id of every map, by name: what [`Datapath::repair_pins`] re-pins from.
    map_ids: Vec<(&'static str, u32)>,
}

/// Which pinned maps a handle holds: the switch map pin's device and inode. bpffs gives
/// every pin its own inode, so an unload and a new load, or a migration, change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(pins: &PinDir) -> anyhow::Result<Identity> {
        let path = pins.map(ACTIVE);
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        Ok(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Datapath {
    /// Opens the datapath pinned in `pins`, after checking its maps' layout. Refuses when
    /// nothing is loaded there.
    pub fn open(pins: &PinDir) -> anyhow::Result<Datapath> {
        if !pins.is_loaded() {
            bail!(
                "no apns-agent datapath is loaded (nothing pinned at {}): start one with `apns-agent run` or `apns-agent attach IFACE`",
                pins.root().display()
            );
        }
        let identity = Identity::of(pins)?;
        let map_ids = layout::check(pins)?;
        let open = |name: &'static str| layout::open_pinned_map(pins, name);
        Ok(Datapath {
            pins: pins.clone(),
            policy: PolicyMaps::open(open)?,
            counters: CounterMaps::open(open)?,
            interfaces: InterfaceMaps::open(open)?,
            events: EventMaps::open(open)?,
            conns: ConnMaps::open(open)?,
            identity,
            map_ids,
        })
    }

    /// Makes the datapath pinned in `pins` run this agent's programs (creating, adopting or
    /// upgrading it: see [`install`]) and opens it. A new datapath starts with Apple's
    /// default policy, never with none; a new one that fails half-way is removed again.
    ///
    /// `log` is the aya-log level to load the program with; `None` keeps the pinned one's.
    /// A new connection table gets `connections` entries (the config's `[clients]
    /// table_size`); a pinned one keeps its size.
    pub fn install(
        pins: &PinDir,
        lock: &Lock,
        log: Option<EbpfLog>,
        connections: u32,
    ) -> anyhow::Result<(Datapath, Installed)> {
        Datapath::install_with(pins, lock, object::OBJECT, log, connections)
    }

    /// [`Datapath::install`] with another build of the datapath object (upgrade tests).
    pub fn install_object(
        pins: &PinDir,
        lock: &Lock,
        object: &[u8],
        log: Option<EbpfLog>,
    ) -> anyhow::Result<(Datapath, Installed)> {
        Datapath::install_with(pins, lock, object, log, CONNS_DEFAULT_ENTRIES)
    }

    fn install_with(
        pins: &PinDir,
        _lock: &Lock,
        object: &[u8],
        log: Option<EbpfLog>,
        connections: u32,
    ) -> anyhow::Result<(Datapath, Installed)> {
        pins.prepare()?;
        let fresh = !pins.is_loaded();
        let installed = migrate_or_install(pins, object, log, connections).and_then(|installed| {
            let mut datapath = Datapath::open(pins)?;
            if fresh {
                datapath.policy.apply(&Policy::apple_defaults())?;
                datapath.events.set_config(EventConfig::default())?;
            }
            Ok((datapath, installed))
        });
        if installed.is_err() && fresh {
            if let Err(err) = pins.remove_all() {
                tracing::warn!("cleaning up the half-made pin directory: {err:#}");
            }
        }
        installed
    }

    pub fn pins(&self) -> &PinDir {
        &self.pins
    }

    /// Whether the pins still hold the maps this handle opened: false once they hold others
    /// (the datapath was unloaded and loaded again, or migrated). Pins removed by hand leave
    /// the maps as they were, and this handle with them: it stays current.
    pub fn is_current(&self) -> bool {
        match Identity::of(&self.pins) {
            Ok(identity) => identity == self.identity,
            Err(_) => !self.pins.map(ACTIVE).exists(),
        }
    }

    /// Re-creates pins removed by hand while this handle is open: the maps (from the ids
    /// this handle opened them by) and the three programs (from the programs their links
    /// run). A datapath whose pins are gone keeps running, but no other command can reach
    /// it and the next `run` could not adopt it. Returns what it re-pinned. The pin
    /// directory must exist ([`PinDir::prepare`]): its lock lives on it.
    pub fn repair_pins(&self, _lock: &Lock) -> anyhow::Result<Vec<String>> {
        let mut repaired = Vec::new();
        for &(name, id) in &self.map_ids {
            let path = self.pins.map(name);
            if path.exists() {
                continue;
            }
            aya::maps::MapData::from_id(id)
                .with_context(|| format!("opening map {name} (id {id})"))?
                .pin(&path)
                .with_context(|| format!("re-pinning map {name} at {}", path.display()))?;
            pins::restrict(&path)?;
            repaired.push(format!("map {}", path.display()));
        }
        let xdp_links: Vec<_> = self
            .pins
            .links()?
            .into_iter()
            .map(|link| link.path)
            .collect();
        let tc_links: Vec<_> = self
            .pins
            .tc_links()?
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        let conns_links: Vec<_> = self
            .pins
            .tc_conns_links()?
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        for (pin, links, kind) in [
            (self.pins.program(), xdp_links, install::ProgramKind::Xdp),
            (self.pins.tc_program(), tc_links, install::ProgramKind::Tc),
            (
                self.pins.tc_conns_program(),
                conns_links,
                install::ProgramKind::TcConns,
            ),
        ] {
            if pin.exists() {
                continue;
            }
            let Some(id) = links
                .iter()
                .find_map(|link| sys::pinned_link(link).ok())
                .map(|facts| facts.program_id)
            else {
                continue;
            };
            install::pin_program_by_id(id, &pin, kind)?;
            repaired.push(format!("program {}", pin.display()));
        }
        Ok(repaired)
    }

    /// The aya-log level the pinned program was loaded with.
    pub fn ebpf_log(&self) -> anyhow::Result<EbpfLog> {
        layout::ebpf_log(&self.pins)
    }

    /// The datapath as `status` shows it, with the paths of each `redirect` interface.
    pub fn status(&self) -> anyhow::Result<Status> {
        let policy = self.policy.read_active()?;
        let mut interfaces = self.interface_status()?;
        if interfaces
            .iter()
            .any(|interface| interface.fastpath == Some(FastPath::Redirect))
        {
            let snapshot = self.counters.snapshot()?;
            for interface in &mut interfaces {
                if let (Some(FastPath::Redirect), Some(ifindex)) =
                    (interface.fastpath, interface.ifindex)
                {
                    interface.paths = Some(status::PathReport::new(&snapshot.paths(ifindex)));
                }
            }
        }
        Ok(Status {
            agent_version: env!("CARGO_PKG_VERSION"),
            pin_dir: self.pins.root().display().to_string(),
            loaded: true,
            program: status::program(&self.pins)?,
            policy: Some(PolicySummary::new(
                &policy,
                self.policy.active_generation()?,
            )),
            interfaces,
            kernel: status::KernelStatus::probe(),
        })
    }

    /// Every interface with a link pin, as the kernel sees it.
    pub fn interface_status(&self) -> anyhow::Result<Vec<InterfaceStatus>> {
        self.pins
            .links()?
            .iter()
            .map(|link| {
                InterfaceStatus::of(link, |ifindex| {
                    let fastpath = self
                        .interfaces
                        .fastpath(ifindex)?
                        .map(|(fastpath, _)| fastpath);
                    Ok((fastpath, self.interfaces.role(ifindex)?))
                })
            })
            .collect()
    }

    /// Those of `wanted` that have no link pin and no device of that name in the caller's
    /// network namespace: what [`Datapath::reconcile`] leaves out as missing.
    pub fn missing<'a>(
        &self,
        wanted: impl IntoIterator<Item = &'a String>,
    ) -> anyhow::Result<Vec<String>> {
        let pinned = self.pins.links()?;
        Ok(wanted
            .into_iter()
            .filter(|interface| {
                !pinned.iter().any(|link| link.interface == **interface)
                    && links::ifindex(interface).is_err()
            })
            .cloned()
            .collect())
    }

    /// The live state, in the shape [`Datapath::reconcile`] takes: what a CLI verb changes
    /// one part of.
    pub fn live(&self) -> anyhow::Result<Desired> {
        let mut interfaces = BTreeMap::new();
        let mut devices = BTreeSet::new();
        let mut mark = None;
        for link in self.pins.links()? {
            let current = self.fastpath_of(&link)?;
            if let Some((_, bits)) = current {
                mark.get_or_insert(bits);
            }
            if self.role_of(&link)? == InterfaceRole::Devices {
                devices.insert(link.interface.clone());
            }
            interfaces.insert(
                link.interface,
                current.map_or(FastPath::Pass, |(fastpath, _)| fastpath),
            );
        }
        Ok(Desired {
            interfaces,
            devices,
            xdp_mode: XdpMode::Auto,
            sharing: Sharing::default(),
            mark: mark
                .filter(|bits| bits.validate().is_ok())
                .unwrap_or_default(),
            policy: self.policy.read_active()?,
            events: self.events.config()?,
        })
    }

    /// The role of the device `link` was made for (upstream when unknown).
    fn role_of(&self, link: &LinkPin) -> anyhow::Result<InterfaceRole> {
        let ifindex = running_on(link).or_else(|| links::ifindex(&link.interface).ok());
        Ok(match ifindex {
            Some(index) => self.interfaces.role(index)?.unwrap_or_default(),
            None => InterfaceRole::default(),
        })
    }

    /// The fast path and mark bits of the device `link` was made for (or, for a
    /// first-release pin whose device is gone, of the device that has its name now).
    fn fastpath_of(&self, link: &LinkPin) -> anyhow::Result<Option<(FastPath, MarkBits)>> {
        let ifindex = running_on(link).or_else(|| links::ifindex(&link.interface).ok());
        match ifindex {
            Some(index) => self.interfaces.fastpath(index),
            None => Ok(None),
        }
    }
}

/// Migrates a datapath of the previous map layout in place ([`migrate`]), or else creates,
/// adopts or upgrades it ([`install`]). Here rather than in `install`: a migration uses
/// `install`'s steps, and the two would otherwise call each other.
fn migrate_or_install(
    pins: &PinDir,
    object: &[u8],
    log: Option<EbpfLog>,
    connections: u32,
) -> anyhow::Result<Installed> {
    if let Some(from) = migrate::needed(pins)? {
        migrate::migrate(pins, object, log, connections)?;
        return Ok(Installed::Migrated { from });
    }
    install::install(pins, object, log, connections)
}

/// The device `link` runs on or was made for: the kernel's word while the device exists,
/// else the ifindex the pin recorded (its entries in the interface maps outlive it).
fn running_on(link: &LinkPin) -> Option<u32> {
    links::facts(link)
        .map(|facts| facts.ifindex)
        .filter(|&index| index != 0)
        .or(link.ifindex)
}

/// What `status` shows where nothing is loaded.
pub fn status_unloaded(pins: &PinDir) -> Status {
    Status {
        agent_version: env!("CARGO_PKG_VERSION"),
        pin_dir: pins.root().display().to_string(),
        loaded: false,
        program: None,
        policy: None,
        interfaces: Vec::new(),
        kernel: status::KernelStatus::probe(),
    }
}

/// Detaches every interface and removes every pin (programs and maps unload with them).
/// Works on an incomplete pin directory too (it needs no layout check), but refuses, changing
/// nothing, one that holds anything else or is not one at all ([`PinDir::check_ours`]).
pub fn unload(pins: &PinDir, _lock: &Lock) -> anyhow::Result<()> {
    // Before anything is detached: a directory that is not a datapath's is left whole.
    pins.check_ours()?;
    for (interface, _) in pins.tc_links()? {
        links::remove_tc(pins, &interface, TcHook::FastPath)?;
    }
    for (interface, _) in pins.tc_conns_links()? {
        links::remove_tc(pins, &interface, TcHook::Connections)?;
    }
    for link in pins.links()? {
        links::remove(&link.path)?;
    }
    pins.remove_all()
}
