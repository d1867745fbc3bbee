//! Per-interface fast-path settings: what the XDP program does with APNs traffic it passes.

/// [`IfaceConfig::fastpath`] values. Never renumber.
pub mod mode {
    /// Classify and count only; the kernel stack forwards the packet.
    pub const PASS: u32 = 0;
    /// Mark APNs packets for netfilter and policy routing: the XDP program puts a
    /// [`super::MarkMeta`] in front of the packet (XDP metadata) and the TC ingress program
    /// `apns_tc_mark` on the same interface copies it into `skb->mark`.
    pub const MARK: u32 = 1;
    /// Forward APNs packets from XDP (FIB lookup, MAC rewrite, TTL/hop limit decrement,
    /// XDP_REDIRECT), past netfilter. Falls back to the stack whenever the FIB cannot settle.
    pub const REDIRECT: u32 = 2;
}

/// What the XDP program does with the APNs traffic it passes on an interface: [`mode`]'s
/// codes as a type.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FastPath {
    /// Classify and count; the kernel stack forwards.
    #[default]
    Pass = mode::PASS,
    /// Set `skb->mark` on APNs packets (XDP metadata + a TC ingress program), for netfilter
    /// and policy routing; works with NAT.
    Mark = mode::MARK,
    /// Forward from XDP (routed gateways, no NAT on the APNs path).
    Redirect = mode::REDIRECT,
}

impl FastPath {
    pub const fn code(self) -> u32 {
        self as u32
    }

    pub const fn from_code(code: u32) -> Option<FastPath> {
        match code {
            mode::PASS => Some(FastPath::Pass),
            mode::MARK => Some(FastPath::Mark),
            mode::REDIRECT => Some(FastPath::Redirect),
            _ => None,
        }
    }
}

impl crate::label::Label for FastPath {
    const WHAT: &'static str = "fast path";
    const ALL: &'static [FastPath] = &[FastPath::Pass, FastPath::Mark, FastPath::Redirect];
    fn as_str(self) -> &'static str {
        match self {
            FastPath::Pass => "pass",
            FastPath::Mark => "mark",
            FastPath::Redirect => "redirect",
        }
    }
}

/// Value of `APNS_IFACES`, an array indexed by ingress ifindex: written by the agent when it
/// attaches or detaches an interface or changes its fast path; read by the XDP program for
/// every packet (the counter slot) and for APNs packets (the fast path). An entry the agent
/// never wrote is all zeroes: not attached, counted in the overflow slot, fast path `pass`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// A [`mode`] value.
    pub fastpath: u32,
    /// With [`mode::MARK`]: the bits of `skb->mark` to set, and which bits they replace.
    pub mark: u32,
    pub mark_mask: u32,
    /// The interface's counter slot (`crate::counters`): 1 to `LAST_ASSIGNABLE_SLOT`, or 0
    /// (the overflow slot) when it has none.
    pub counter_slot: u16,
    /// [`flags`] bits. The XDP and TC programs read [`flags::DEVICES`].
    pub flags: u16,
}
const _: () = assert!(size_of::<IfaceConfig>() == 16);

/// [`IfaceConfig::flags`] bits. Never renumber.
pub mod flags {
    /// The agent attached the interface (cleared on detach; the entry's counter slot is then
    /// 0 and the slot may be recycled).
    pub const ATTACHED: u16 = 1 << 0;
    /// The interface faces the devices (config `[roles]`): the device's packets entering
    /// here, and Apple's leaving here, feed the connection table (`crate::conns`).
    pub const DEVICES: u16 = 1 << 1;
}

/// Default [`IfaceConfig::mark`] and [`IfaceConfig::mark_mask`]: one bit (0x00a90000 would
/// be prettier, but a single bit coexists with other users of the mark: Kubernetes, VPNs and
/// policy routing set their own low bits). Example rules: packaging/nftables/apns-mark.nft.
pub const DEFAULT_MARK: u32 = 0x0020_0000;
pub const DEFAULT_MARK_MASK: u32 = 0x0020_0000;

/// The XDP metadata the mark fast path leaves in front of an APNs packet, read by the TC
/// ingress program. Native byte order: both ends run on this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MarkMeta {
    /// [`MARK_META_MAGIC`]: metadata of another XDP program is never taken for ours.
    pub magic: u32,
    pub mark: u32,
    pub mask: u32,
}
const _: () = assert!(size_of::<MarkMeta>() == 12);

pub const MARK_META_MAGIC: u32 = 0xa9e5_4d4b;

#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceConfig {}
