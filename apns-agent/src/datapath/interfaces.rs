//! The datapath's per-interface state: the fast-path setting (`APNS_IFACES`) and the egress
//! devmap the redirect fast path forwards through (`APNS_TX_PORTS`). Every attached
//! interface has an entry in both; detaching removes them.

use anyhow::Context as _;
pub use apns_common::fastpath::FastPath;
use apns_common::{
    fastpath::{IfaceConfig, DEFAULT_MARK, DEFAULT_MARK_MASK},
    maps::{IFACES, TX_PORTS},
};
use aya::maps::{DevMapHash, HashMap, Map, MapData, MapError};

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
    ifaces: HashMap<MapData, u32, IfaceConfig>,
    tx_ports: DevMapHash<MapData>,
}

impl InterfaceMaps {
    /// See [`super::policy_maps::PolicyMaps::open`].
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(InterfaceMaps {
            ifaces: HashMap::try_from(map(IFACES)?)
                .with_context(|| format!("map {IFACES} has an unexpected type or layout"))?,
            tx_ports: DevMapHash::try_from(map(TX_PORTS)?)
                .with_context(|| format!("map {TX_PORTS} has an unexpected type"))?,
        })
    }

    /// Adds an attached interface: a redirect target, with `fastpath`. Must run in the
    /// interface's network namespace (the kernel resolves devmap entries there).
    pub fn register(&mut self, ifindex: u32, fastpath: FastPath) -> anyhow::Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding ifindex {ifindex} to map {TX_PORTS}"))?;
        self.set_fastpath(ifindex, fastpath, None)
    }

    /// Removes a detached interface; absent entries are fine.
    pub fn unregister(&mut self, ifindex: u32) -> anyhow::Result<()> {
        for result in [self.ifaces.remove(&ifindex), self.tx_ports.remove(ifindex)] {
            match result {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                // The kernel removes a deleted device from the devmap by itself; aya reports
                // that key's absence as the syscall's ENOENT.
                Err(MapError::SyscallError(err))
                    if err.io_error.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("removing ifindex {ifindex} from {IFACES}/{TX_PORTS}")
                    });
                }
            }
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
        let mark = match mark {
            Some(mark) => mark,
            None => match self.ifaces.get(&ifindex, 0) {
                Ok(current) if current.mark_mask != 0 => MarkBits {
                    value: current.mark,
                    mask: current.mark_mask,
                },
                Ok(_) | Err(MapError::KeyNotFound) => MarkBits::default(),
                Err(err) => return Err(err).with_context(|| format!("reading map {IFACES}")),
            },
        };
        let config = IfaceConfig {
            fastpath: fastpath.code(),
            mark: mark.value,
            mark_mask: mark.mask,
            _pad: 0,
        };
        self.ifaces
            .insert(ifindex, config, 0)
            .with_context(|| format!("writing ifindex {ifindex} to map {IFACES}"))
    }

    /// The fast path and mark bits of `ifindex`; `None` when the interface is not
    /// registered.
    pub fn fastpath(&self, ifindex: u32) -> anyhow::Result<Option<(FastPath, MarkBits)>> {
        match self.ifaces.get(&ifindex, 0) {
            Ok(config) => {
                let fastpath = FastPath::from_code(config.fastpath).with_context(|| {
                    format!("map {IFACES}: unknown fast path code {}", config.fastpath)
                })?;
                let mark = MarkBits {
                    value: config.mark,
                    mask: config.mark_mask,
                };
                Ok(Some((fastpath, mark)))
            }
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading map {IFACES}")),
        }
    }
}
