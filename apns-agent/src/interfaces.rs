//! The datapath's per-interface state: the fast-path setting (`APNS_IFACES`) and the egress
//! devmap the redirect fast path forwards through (`APNS_TX_PORTS`). Every attached
//! interface has an entry in both; detaching removes them.

use anyhow::Context as _;
use apns_common::{
    fastpath::{mode, IfaceConfig, DEFAULT_MARK, DEFAULT_MARK_MASK},
    maps::{IFACES, TX_PORTS},
};
use aya::maps::{DevMapHash, HashMap, Map, MapData, MapError};

/// What the XDP program does with the APNs traffic it passes on an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FastPath {
    /// Classify and count; the kernel stack forwards.
    #[default]
    Pass,
    /// Set `skb->mark` on APNs packets (XDP metadata + a TC ingress program), for netfilter
    /// and policy routing; works with NAT.
    Mark,
    /// Forward from XDP (routed gateways, no NAT on the APNs path).
    Redirect,
}

/// The `skb->mark` bits the mark fast path sets: `mark = (mark & !mask) | value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

impl FastPath {
    const fn code(self) -> u32 {
        match self {
            FastPath::Pass => mode::PASS,
            FastPath::Mark => mode::MARK,
            FastPath::Redirect => mode::REDIRECT,
        }
    }

    fn from_code(code: u32) -> Option<FastPath> {
        match code {
            mode::PASS => Some(FastPath::Pass),
            mode::MARK => Some(FastPath::Mark),
            mode::REDIRECT => Some(FastPath::Redirect),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            FastPath::Pass => "pass",
            FastPath::Mark => "mark",
            FastPath::Redirect => "redirect",
        }
    }

    pub const fn is_mark(self) -> bool {
        matches!(self, FastPath::Mark)
    }
}

impl std::str::FromStr for FastPath {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<FastPath> {
        match text {
            "pass" => Ok(FastPath::Pass),
            "mark" => Ok(FastPath::Mark),
            "redirect" => Ok(FastPath::Redirect),
            other => anyhow::bail!("unknown fast path {other:?}: expected pass, mark or redirect"),
        }
    }
}

pub struct InterfaceMaps {
    ifaces: HashMap<MapData, u32, IfaceConfig>,
    tx_ports: DevMapHash<MapData>,
}

impl InterfaceMaps {
    /// See [`crate::maps::PolicyMaps::open`].
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

    /// The fast path of `ifindex`; `None` when the interface is not registered.
    pub fn fastpath(&self, ifindex: u32) -> anyhow::Result<Option<FastPath>> {
        match self.ifaces.get(&ifindex, 0) {
            Ok(config) => FastPath::from_code(config.fastpath)
                .map(Some)
                .with_context(|| {
                    format!("map {IFACES}: unknown fast path code {}", config.fastpath)
                }),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading map {IFACES}")),
        }
    }
}
