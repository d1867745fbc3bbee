//! The datapath's per-interface state: the counter slot, fast-path setting and role
//! (`APNS_IFACES`, an array by ifindex) and the egress devmap the redirect fast path forwards
//! through (`APNS_TX_PORTS`). Every attached interface has an entry in both; detaching
//! clears them (the counter slot stays reserved for the ifindex until it is recycled, see
//! `counters::SlotMaps`).

use anyhow::Context as _;
pub use apns_common::fastpath::FastPath;
use apns_common::{
    fastpath::{flags, IfaceConfig, DEFAULT_MARK, DEFAULT_MARK_MASK},
    maps::{IFACES, IFACES_MAX_ENTRIES, TX_PORTS},
};
use aya::maps::{Array, DevMapHash, Map, MapData, MapError};

use super::counters::SlotMaps;

/// What an interface faces, for the connection table (config `[roles]`; docs/clients.md):
/// the devices' packets entering a `devices` interface and Apple's leaving through one are
/// recorded; an `upstream` interface feeds the table nothing of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterfaceRole {
    /// Toward the devices (the LAN side).
    Devices,
    /// Toward the Internet and Apple, or anything else (the default).
    #[default]
    Upstream,
}

impl apns_common::label::Label for InterfaceRole {
    const WHAT: &'static str = "interface role";
    const ALL: &'static [InterfaceRole] = &[InterfaceRole::Devices, InterfaceRole::Upstream];
    fn as_str(self) -> &'static str {
        match self {
            InterfaceRole::Devices => "devices",
            InterfaceRole::Upstream => "upstream",
        }
    }
}

/// The `skb->mark` bits the mark fast path sets: `mark = (mark & !mask) | value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MarkBits {
    pub value: u32,
    pub mask: u32,
}

impl Default for MarkBits {
    fn default() -> Self {
        MarkBits {
            value: DEFAULT_MARK,
            mask: DEFAULT_MARK_MASK,
        }
    }
}

impl MarkBits {
    pub fn validate(self) -> anyhow::Result<MarkBits> {
        anyhow::ensure!(self.mask != 0, "mark mask 0 would set no bit");
        anyhow::ensure!(
            self.value & !self.mask == 0,
            "mark value {:#x} has bits outside its mask {:#x}",
            self.value,
            self.mask
        );
        Ok(self)
    }
}

pub struct InterfaceMaps {
    ifaces: Array<MapData, IfaceConfig>,
    tx_ports: DevMapHash<MapData>,
    slots: SlotMaps,
}

impl InterfaceMaps {
    /// See [`super::policy_maps::PolicyMaps::open`].
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(InterfaceMaps {
            ifaces: Array::try_from(map(IFACES)?)
                .with_context(|| format!("map {IFACES} has an unexpected type or layout"))?,
            tx_ports: DevMapHash::try_from(map(TX_PORTS)?)
                .with_context(|| format!("map {TX_PORTS} has an unexpected type"))?,
            slots: SlotMaps::open(&mut map)?,
        })
    }

    /// Adds an attached interface: a redirect target, with `fastpath`, and a counter slot.
    /// Must run in the interface's network namespace (the kernel resolves devmap entries
    /// there). An interface past `APNS_IFACES` or without a free slot is still counted, under
    /// interface 0 (a warning says so).
    pub fn register(&mut self, ifindex: u32, fastpath: FastPath) -> anyhow::Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding ifindex {ifindex} to map {TX_PORTS}"))?;
        if ifindex >= IFACES_MAX_ENTRIES {
            tracing::warn!(
                ifindex,
                "ifindex past the datapath's interface table ({IFACES_MAX_ENTRIES} entries): its packets are counted under interface 0 and it cannot take a fast path"
            );
            return Ok(());
        }
        let ifaces = &self.ifaces;
        let slot = self.slots.assign_interface(ifindex, |slot, owner| {
            // A slot is in use while its interface is attached and its entry names the slot.
            if owner == 0 || owner >= IFACES_MAX_ENTRIES {
                return Ok(false);
            }
            let entry = read_entry(ifaces, owner)?;
            Ok(entry.flags & flags::ATTACHED != 0 && u32::from(entry.counter_slot) == slot)
        })?;
        if slot.is_none() {
            tracing::warn!(
                ifindex,
                "every counter slot belongs to an attached interface: this one is counted under interface 0"
            );
        }
        let current = read_entry(&self.ifaces, ifindex)?;
        let config = IfaceConfig {
            counter_slot: slot.unwrap_or(0),
            flags: flags::ATTACHED,
            ..entry_with(current, fastpath, None)
        };
        self.write_entry(ifindex, &config)
    }

    /// Removes a detached interface: no redirect target, no fast path, no counter slot in its
    /// entry (the slot keeps its counters under this ifindex until recycled). Absent entries
    /// are fine.
    pub fn unregister(&mut self, ifindex: u32) -> anyhow::Result<()> {
        match self.tx_ports.remove(ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            // The kernel removes a deleted device from the devmap by itself; aya reports that
            // key's absence as the syscall's ENOENT.
            Err(MapError::SyscallError(err))
                if err.io_error.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("removing ifindex {ifindex} from {TX_PORTS}"));
            }
        }
        if ifindex < IFACES_MAX_ENTRIES {
            self.write_entry(ifindex, &IfaceConfig::default())?;
        }
        Ok(())
    }

    /// Sets `ifindex`'s fast path; `mark` None keeps the interface's mark bits (the defaults
    /// for a new one).
    pub fn set_fastpath(
        &mut self,
        ifindex: u32,
        fastpath: FastPath,
        mark: Option<MarkBits>,
    ) -> anyhow::Result<()> {
        if ifindex >= IFACES_MAX_ENTRIES {
            anyhow::bail!(
                "ifindex {ifindex} is past the datapath's interface table ({IFACES_MAX_ENTRIES} entries): the interface is counted (under interface 0) but cannot have a fast path"
            );
        }
        let current = read_entry(&self.ifaces, ifindex)?;
        self.write_entry(ifindex, &entry_with(current, fastpath, mark))
    }

    /// The fast path and mark bits of `ifindex`; `None` when the interface is not
    /// registered.
    pub fn fastpath(&self, ifindex: u32) -> anyhow::Result<Option<(FastPath, MarkBits)>> {
        if ifindex >= IFACES_MAX_ENTRIES {
            return Ok(None);
        }
        let config = read_entry(&self.ifaces, ifindex)?;
        if config.flags & flags::ATTACHED == 0 {
            return Ok(None);
        }
        let fastpath = FastPath::from_code(config.fastpath)
            .with_context(|| format!("map {IFACES}: unknown fast path code {}", config.fastpath))?;
        let mark = MarkBits {
            value: config.mark,
            mask: config.mark_mask,
        };
        Ok(Some((fastpath, mark)))
    }

    /// Sets the role of an attached interface (its [`flags::DEVICES`] bit). An interface past
    /// `APNS_IFACES` has no entry: it can only be upstream.
    pub fn set_role(&mut self, ifindex: u32, role: InterfaceRole) -> anyhow::Result<()> {
        if ifindex >= IFACES_MAX_ENTRIES {
            anyhow::ensure!(
                role == InterfaceRole::Upstream,
                "ifindex {ifindex} is past the datapath's interface table ({IFACES_MAX_ENTRIES} entries): the interface cannot face the devices"
            );
            return Ok(());
        }
        let mut config = read_entry(&self.ifaces, ifindex)?;
        match role {
            InterfaceRole::Devices => config.flags |= flags::DEVICES,
            InterfaceRole::Upstream => config.flags &= !flags::DEVICES,
        }
        self.write_entry(ifindex, &config)
    }

    /// The role of `ifindex`; `None` when the interface is not registered.
    pub fn role(&self, ifindex: u32) -> anyhow::Result<Option<InterfaceRole>> {
        if ifindex >= IFACES_MAX_ENTRIES {
            return Ok(None);
        }
        let config = read_entry(&self.ifaces, ifindex)?;
        if config.flags & flags::ATTACHED == 0 {
            return Ok(None);
        }
        Ok(Some(if config.flags & flags::DEVICES != 0 {
            InterfaceRole::Devices
        } else {
            InterfaceRole::Upstream
        }))
    }

    /// Lets the XDP program hand `ifindex`'s `redirect` packets whose next hop is not
    /// resolved to the TC program ([`flags::TC_HANDOFF`]). The caller has attached the TC
    /// program on the interface; [`InterfaceMaps::set_fastpath`] to anything but `redirect`
    /// clears the flag again.
    pub fn set_handoff(&mut self, ifindex: u32) -> anyhow::Result<()> {
        if ifindex >= IFACES_MAX_ENTRIES {
            return Ok(());
        }
        let current = read_entry(&self.ifaces, ifindex)?;
        self.write_entry(
            ifindex,
            &IfaceConfig {
                flags: current.flags | flags::TC_HANDOFF,
                ..current
            },
        )
    }

    /// Whether the XDP program may hand `ifindex`'s packets to the TC program
    /// ([`flags::TC_HANDOFF`]).
    pub fn handoff_ready(&self, ifindex: u32) -> anyhow::Result<bool> {
        if ifindex >= IFACES_MAX_ENTRIES {
            return Ok(false);
        }
        Ok(read_entry(&self.ifaces, ifindex)?.flags & flags::TC_HANDOFF != 0)
    }

    fn write_entry(&mut self, ifindex: u32, config: &IfaceConfig) -> anyhow::Result<()> {
        self.ifaces
            .set(ifindex, config, 0)
            .with_context(|| format!("writing ifindex {ifindex} to map {IFACES}"))
    }
}

fn read_entry(ifaces: &Array<MapData, IfaceConfig>, ifindex: u32) -> anyhow::Result<IfaceConfig> {
    ifaces
        .get(&ifindex, 0)
        .with_context(|| format!("reading ifindex {ifindex} of map {IFACES}"))
}

/// `current` with `fastpath`, and `mark` (None keeps the current bits, or the defaults). Any
/// fast path but `redirect` clears the hand-off flag; `redirect` keeps it as it is: only
/// [`InterfaceMaps::set_handoff`] sets it, once the TC program is attached.
fn entry_with(current: IfaceConfig, fastpath: FastPath, mark: Option<MarkBits>) -> IfaceConfig {
    let mark = mark.unwrap_or(if current.mark_mask != 0 {
        MarkBits {
            value: current.mark,
            mask: current.mark_mask,
        }
    } else {
        MarkBits::default()
    });
    let flags = if fastpath == FastPath::Redirect {
        current.flags
    } else {
        current.flags & !flags::TC_HANDOFF
    };
    IfaceConfig {
        fastpath: fastpath.code(),
        mark: mark.value,
        mark_mask: mark.mask,
        flags,
        ..current
    }
}
