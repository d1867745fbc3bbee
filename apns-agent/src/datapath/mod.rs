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
pub use object::EbpfLog;
pub use pins::{Lock, PinDir};

use self::{
    conns::ConnMaps,
    counters::CounterMaps,
    events::EventMaps,
    features::{Feature, Features},
    interfaces::{FastPath, InterfaceMaps, InterfaceRole, MarkBits},
    pins::LinkPin,
    policy::Policy,
    policy_maps::PolicyMaps,
    reconcile::{policy_summary, Change, Changes, Desired},
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

    /// Brings the datapath to `desired` and says what changed; see [`reconcile`] for the
    /// order and why. Interfaces are found by name only when they are attached: one that is
    /// attached already is known by the ifindex its link runs on (so a change of policy or
    /// fast path works from any network namespace, and never moves a link). An interface of
    /// `desired` that is not attached and does not exist here is left out and reported
    /// ([`Change::Missing`]): the others are attached and enforced all the same.
    pub fn reconcile(&mut self, _lock: &Lock, desired: &Desired) -> anyhow::Result<Changes> {
        desired.policy.validate()?;
        desired.mark.validate()?;
        let present = self.pins.links()?;
        let mut changes = Changes::default();
        let mut new = Vec::new();
        for (interface, &fastpath) in &desired.interfaces {
            links::check_interface_name(interface)?;
            if !present.iter().any(|link| link.interface == *interface) {
                let Ok(ifindex) = links::ifindex(interface) else {
                    changes.0.push(Change::Missing {
                        interface: interface.clone(),
                    });
                    continue;
                };
                // Never clobber someone else's XDP program: refuse before anything changes.
                occupants::check_free(interface, ifindex, &self.pins)?;
                new.push((interface.as_str(), ifindex, fastpath));
            }
        }

        let mut attached_here = Vec::new();
        for &(interface, ifindex, fastpath) in &new {
            let attached = self.attach(
                interface,
                ifindex,
                fastpath,
                desired.role(interface),
                desired.mark,
                desired.xdp_mode,
            );
            match attached {
                Ok((mode, path)) => {
                    attached_here.push((interface, ifindex, path));
                    changes.0.push(Change::Attached {
                        interface: interface.to_owned(),
                        mode,
                    });
                }
                Err(err) => {
                    for (interface, ifindex, path) in attached_here {
                        if let Err(cleanup) = self.drop_interface(interface, ifindex, &path) {
                            tracing::warn!("undoing the attach of {interface}: {cleanup:#}");
                        }
                    }
                    return Err(err);
                }
            }
        }
        for link in &present {
            let Some(&fastpath) = desired.interfaces.get(&link.interface) else {
                continue;
            };
            let Some(ifindex) = running_on(link) else {
                continue;
            };
            let role = desired.role(&link.interface);
            let current_role = self.interfaces.role(ifindex)?.unwrap_or_default();
            // A TC link pin removed by hand is put back too.
            let conns_link = self.pins.tc_conns_link(&link.interface).exists();
            if current_role != role || conns_link != (role == InterfaceRole::Devices) {
                self.set_role(&link.interface, ifindex, role)?;
                if current_role != role {
                    changes.0.push(Change::Role {
                        interface: link.interface.clone(),
                        from: current_role,
                        to: role,
                    });
                }
            }
            let current = self.interfaces.fastpath(ifindex)?;
            if current == Some((fastpath, desired.mark))
                && self.fastpath_complete(&link.interface, ifindex, fastpath)?
            {
                continue;
            }
            self.set_fastpath(&link.interface, ifindex, fastpath, desired.mark)?;
            let from = current.map_or(FastPath::Pass, |(fastpath, _)| fastpath);
            if from != fastpath {
                changes.0.push(Change::FastPath {
                    interface: link.interface.clone(),
                    from,
                    to: fastpath,
                });
            }
        }

        let live = self.policy.read_active()?;
        if live != desired.policy {
            self.policy.apply(&desired.policy)?;
            changes.0.push(Change::Policy {
                summary: policy_summary(&live, &desired.policy),
            });
        }
        let events = self.events.config()?;
        if events != desired.events {
            self.events.set_config(desired.events)?;
            changes.0.push(Change::Events {
                from: events,
                to: desired.events,
            });
        }
        for link in &present {
            if !desired.interfaces.contains_key(&link.interface) {
                self.drop_interface(&link.interface, running_on(link).unwrap_or(0), &link.path)?;
                changes.0.push(Change::Detached {
                    interface: link.interface.clone(),
                });
            }
        }
        Ok(changes)
    }

    /// Moves the link of every interface whose name now belongs to another device (deleted
    /// and re-created, or renamed and replaced) to that device, with the fast path the old
    /// one had. Names are looked up in the caller's network namespace, so only `run`, which
    /// runs where its interfaces are, calls this.
    pub fn move_stale_links(&mut self, _lock: &Lock) -> anyhow::Result<Changes> {
        let mut changes = Changes::default();
        for link in self.pins.links()? {
            let Ok(ifindex) = links::ifindex(&link.interface) else {
                continue;
            };
            if links::facts(&link).map(|facts| facts.ifindex) == Some(ifindex) {
                continue;
            }
            occupants::check_free(&link.interface, ifindex, &self.pins)?;
            let (fastpath, mark) = self.fastpath_of(&link)?.unwrap_or_default();
            let role = self.role_of(&link)?;
            self.drop_interface(&link.interface, running_on(&link).unwrap_or(0), &link.path)?;
            let mark = if mark.validate().is_ok() {
                mark
            } else {
                MarkBits::default()
            };
            let (mode, _) = self.attach(
                &link.interface,
                ifindex,
                fastpath,
                role,
                mark,
                XdpMode::Auto,
            )?;
            changes.0.push(Change::Reattached {
                interface: link.interface,
                mode,
            });
        }
        Ok(changes)
    }

    /// Attaches `interface` (index `ifindex`) with `fastpath` and `role`; returns the mode and
    /// the link pin. A failure leaves nothing of it behind.
    fn attach(
        &mut self,
        interface: &str,
        ifindex: u32,
        fastpath: FastPath,
        role: InterfaceRole,
        mark: MarkBits,
        xdp_mode: XdpMode,
    ) -> anyhow::Result<(pins::AttachMode, std::path::PathBuf)> {
        // The fast path and role before the link: the first packet already takes them.
        let attached = self
            .interfaces
            .register(ifindex, FastPath::Pass)
            .and_then(|()| self.set_fastpath(interface, ifindex, fastpath, mark))
            .and_then(|()| self.set_role(interface, ifindex, role))
            .and_then(|()| links::attach_xdp(&self.pins, interface, ifindex, xdp_mode));
        match attached {
            Ok(mode) => Ok((mode, self.pins.link(interface, ifindex, mode))),
            Err(err) => {
                if let Err(cleanup) = self.forget_interface(interface, ifindex) {
                    tracing::warn!(
                        "cleaning up after the failed attach of {interface}: {cleanup:#}"
                    );
                }
                Err(err)
            }
        }
    }

    /// Sets the fast path of an attached interface; `mark` and `redirect` attach the TC
    /// program on it, `pass` removes it.
    ///
    /// Order: the TC link exists before the interface entry lets XDP hand packets to it
    /// (`redirect` sets the entry's hand-off flag), and the entry is rewritten without the
    /// flag before the link goes: a packet XDP hands off (and counts as forwarded) always
    /// meets the TC program. A marked packet with no one to read the mark is harmless.
    fn set_fastpath(
        &mut self,
        interface: &str,
        ifindex: u32,
        fastpath: FastPath,
        mark: MarkBits,
    ) -> anyhow::Result<()> {
        let features = Features::probe()?;
        if let Some(refusal) = features.refusal(fastpath) {
            bail!("{interface}: {refusal}");
        }
        match fastpath {
            FastPath::Mark => {
                links::attach_tc(&self.pins, interface, TcHook::FastPath)?;
                self.interfaces.set_fastpath(ifindex, fastpath, Some(mark))
            }
            FastPath::Redirect => {
                links::attach_tc(&self.pins, interface, TcHook::FastPath)?;
                self.interfaces
                    .set_fastpath(ifindex, fastpath, Some(mark))?;
                // Without bpf_redirect_neigh the TC program cannot forward what XDP would
                // hand it: XDP leaves unresolved neighbours to the stack (`tc_not_ready`).
                if features.has(Feature::RedirectNeigh) {
                    self.interfaces.set_handoff(ifindex)?;
                }
                Ok(())
            }
            FastPath::Pass => {
                self.interfaces
                    .set_fastpath(ifindex, fastpath, Some(mark))?;
                links::remove_tc(&self.pins, interface, TcHook::FastPath)
            }
        }
    }

    /// Sets the role of an attached interface: a device-facing one gets the connection
    /// table's TC egress program (before its flag is set, so Apple's packets are recorded as
    /// soon as the device's are), an upstream one loses it.
    fn set_role(
        &mut self,
        interface: &str,
        ifindex: u32,
        role: InterfaceRole,
    ) -> anyhow::Result<()> {
        match role {
            InterfaceRole::Devices => {
                links::attach_tc(&self.pins, interface, TcHook::Connections)?;
                self.interfaces.set_role(ifindex, role)
            }
            InterfaceRole::Upstream => {
                self.interfaces.set_role(ifindex, role)?;
                links::remove_tc(&self.pins, interface, TcHook::Connections)
            }
        }
    }

    /// Whether the parts of `fastpath` beyond its entry are in place on `interface`: the TC
    /// link of `mark` and `redirect`, and the hand-off flag of `redirect`. A datapath made by
    /// an agent that had no TC step for `redirect`, or migrated from layout 2 (whose entries
    /// are written without the flag), lacks them; `reconcile` completes it.
    fn fastpath_complete(
        &self,
        interface: &str,
        ifindex: u32,
        fastpath: FastPath,
    ) -> anyhow::Result<bool> {
        let tc = self.pins.tc_link(interface).exists();
        Ok(match fastpath {
            FastPath::Pass => true,
            FastPath::Mark => tc,
            FastPath::Redirect => {
                tc && (self.interfaces.handoff_ready(ifindex)?
                    || !Features::probe()?.has(Feature::RedirectNeigh))
            }
        })
    }

    /// Detaches `interface`: its XDP link (pinned at `link`), then what
    /// [`Datapath::forget_interface`] removes.
    fn drop_interface(
        &mut self,
        interface: &str,
        ifindex: u32,
        link: &std::path::Path,
    ) -> anyhow::Result<()> {
        links::remove(link)?;
        self.forget_interface(interface, ifindex)
    }

    /// Removes `interface`'s entries in the interface maps (`ifindex` 0: the device is gone,
    /// and so are they), then its TC links: the entry's hand-off flag goes first, as in
    /// [`Datapath::set_fastpath`].
    fn forget_interface(&mut self, interface: &str, ifindex: u32) -> anyhow::Result<()> {
        if ifindex != 0 {
            self.interfaces.unregister(ifindex)?;
        }
        links::remove_tc(&self.pins, interface, TcHook::FastPath)?;
        links::remove_tc(&self.pins, interface, TcHook::Connections)
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
