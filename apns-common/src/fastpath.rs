//! Per-interface fast-path settings: what the XDP program does with APNs traffic it passes.

/// [`IfaceConfig::fastpath`] values. Never renumber.
pub mod mode {
    /// Classify and count only; the kernel stack forwards the packet.
    pub const PASS: u32 = 0;
    /// Mark the devices' APNs packets (outbound, to Apple) for netfilter and policy routing;
    /// Apple's replies are left to conntrack. The XDP program puts a
    /// [`super::MarkMeta`] in front of the packet (XDP metadata) and the TC ingress program
    /// `apns_tc` on the same interface copies it into `skb->mark`; where the kernel lets XDP
    /// write no metadata (`crate::features::bits::XDP_META`), `apns_tc` classifies the
    /// packet and marks it itself.
    pub const MARK: u32 = 1;
    /// Forward APNs packets from XDP (FIB lookup, MAC rewrite, TTL/hop limit decrement,
    /// XDP_REDIRECT), past netfilter: the devices' packets, and Apple's of the flows they
    /// opened (`crate::maps::FLOWS`; any other is [`super::Fallback::Unsolicited`]). A next
    /// hop without a resolved neighbour is handed to the TC ingress program `apns_tc` (in a
    /// [`super::HandoffMeta`], or, without XDP metadata, by `apns_tc` classifying the packet
    /// again), which forwards with `bpf_redirect_neigh`. Whatever else the FIB cannot settle goes to the stack
    /// ([`super::Fallback`]).
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
    /// Set `skb->mark` on the devices' APNs packets (a TC ingress program, from XDP metadata
    /// where the kernel allows it), for netfilter and policy routing; works with NAT.
    /// Apple's replies are never marked: conntrack sees them, as every packet of this path.
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

/// Value of `APNS_IFACES`, an array indexed by ifindex: written by the agent when it
/// attaches or detaches an interface or changes its fast path or role; read by the XDP
/// program for every packet (the counter slot) and for APNs packets (the fast path, the
/// flags), and by the TC programs (see `crate::maps::IFACES`). An entry the agent
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
    /// [`flags`] bits. The XDP program reads [`flags::DEVICES`] and [`flags::TC_HANDOFF`],
    /// `apns_tc_conns` [`flags::DEVICES`].
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
    /// The TC ingress program `apns_tc` is attached to the interface, so the XDP program may
    /// hand it a `redirect` packet whose neighbour is unresolved ([`super::HandoffMeta`]).
    /// The agent sets it only after the TC link exists and clears it before removing the
    /// link: a handed-off packet always meets the TC program. Without it such packets go to
    /// the stack ([`super::Fallback::TcNotReady`]).
    pub const TC_HANDOFF: u16 = 1 << 2;
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

/// The XDP metadata the `redirect` fast path leaves in front of an APNs packet whose next hop
/// has no resolved neighbour (`bpf_fib_lookup` answered NO_NEIGH), where the kernel lets XDP
/// write metadata: the TC ingress program forwards it with `bpf_redirect_neigh(oif)`, and
/// the kernel routes it to its next hop and resolves the neighbour (ARP/ND), queueing the
/// packet meanwhile. No next hop is passed: Linux 5.10's `bpf_redirect_neigh` takes none
/// (it reads a third argument as flags and drops the packet), and the kernel's own route
/// lookup finds the one the FIB found. The XDP program has already decremented the TTL or
/// hop limit. Native byte order. (It had 28 bytes before, the next hop after `oif`: the first
/// two fields kept their places, so during an upgrade, which swaps the TC program first, the
/// new TC program reads the old XDP program's metadata.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffMeta {
    /// [`HANDOFF_META_MAGIC`]. The TC program zeroes it once read: metadata travels with the
    /// skb, over a veth even into the next namespace's TC programs.
    pub magic: u32,
    /// Egress ifindex from the FIB.
    pub oif: u32,
}
const _: () = assert!(size_of::<HandoffMeta>() == 8);

pub const HANDOFF_META_MAGIC: u32 = 0xa9e5_4e48;
const _: () = assert!(HANDOFF_META_MAGIC != MARK_META_MAGIC);

/// Why the `redirect` fast path left an APNs packet to the kernel stack (`XDP_PASS`, counted
/// with outcome `pass` in the counters, and by reason in `APNS_FP_PATHS`). Where the stack
/// path is blocked (the forward chain the fast path exists to bypass), the packets of the
/// reasons marked *lost* are dropped there. Never renumber; codes index
/// [`PathCounters::fallback`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fallback {
    /// TTL or hop limit 1 or less: the stack answers ICMP time exceeded (before the forward
    /// hook).
    Ttl = 0,
    /// The packet is larger than the egress MTU: the stack answers "fragmentation needed" /
    /// "packet too big" (before the forward hook); the sender's PMTU discovery recovers.
    FragNeeded = 1,
    /// A blackhole route: dropped silently, as configured.
    Blackhole = 2,
    /// An unreachable route: the stack answers ICMP unreachable.
    Unreachable = 3,
    /// A prohibit route: the stack answers ICMP administratively prohibited.
    Prohibit = 4,
    /// Not forwarded: addressed to the gateway itself, or no route (IPv6).
    NotForwarded = 5,
    /// Forwarding is disabled on the ingress interface.
    ForwardingDisabled = 6,
    /// A route with a lightweight tunnel encapsulation (lost where the stack path is blocked).
    UnsupportedLwt = 7,
    /// The egress interface is not one the agent is attached to (lost).
    EgressUnmanaged = 8,
    /// An 802.1Q/802.1ad tagged frame (lost).
    VlanTagged = 9,
    /// No resolved neighbour and the TC program is not attached (yet) on the ingress
    /// interface, or the kernel has no `bpf_redirect_neigh` (lost).
    TcNotReady = 10,
    /// No resolved neighbour and the driver gives XDP no metadata room (lost).
    NoMetadata = 11,
    /// Any other FIB answer, or a frame the fast path could not rewrite (lost).
    Other = 12,
    /// An inbound packet (from Apple) of no flow a device behind the gateway opened through
    /// the fast path (`crate::maps::FLOWS`), or routed elsewhere than where that flow was
    /// opened: forged, or of a connection the flow table never saw or forgot. The
    /// operator's firewall judges it (lost only if the firewall drops it: that is its job).
    Unsolicited = 13,
}

impl Fallback {
    pub const ALL: [Fallback; 14] = [
        Fallback::Ttl,
        Fallback::FragNeeded,
        Fallback::Blackhole,
        Fallback::Unreachable,
        Fallback::Prohibit,
        Fallback::NotForwarded,
        Fallback::ForwardingDisabled,
        Fallback::UnsupportedLwt,
        Fallback::EgressUnmanaged,
        Fallback::VlanTagged,
        Fallback::TcNotReady,
        Fallback::NoMetadata,
        Fallback::Other,
        Fallback::Unsolicited,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Fallback::Ttl => "ttl",
            Fallback::FragNeeded => "frag_needed",
            Fallback::Blackhole => "blackhole",
            Fallback::Unreachable => "unreachable",
            Fallback::Prohibit => "prohibit",
            Fallback::NotForwarded => "not_forwarded",
            Fallback::ForwardingDisabled => "forwarding_disabled",
            Fallback::UnsupportedLwt => "unsupported_lwt",
            Fallback::EgressUnmanaged => "egress_unmanaged",
            Fallback::VlanTagged => "vlan_tagged",
            Fallback::TcNotReady => "tc_not_ready",
            Fallback::NoMetadata => "no_metadata",
            Fallback::Other => "other",
            Fallback::Unsolicited => "unsolicited",
        }
    }
}

impl crate::label::Label for Fallback {
    const WHAT: &'static str = "fast-path fallback reason";
    const ALL: &'static [Fallback] = &Fallback::ALL;
    fn as_str(self) -> &'static str {
        Fallback::as_str(self)
    }
}

/// Room for reasons in [`PathCounters::fallback`]: [`Fallback`] codes to come fit without a
/// layout change.
pub const FALLBACK_SLOTS: usize = 16;
const _: () = assert!(Fallback::ALL.len() <= FALLBACK_SLOTS);

/// Value of `APNS_FP_PATHS`, a per-CPU array indexed by interface counter slot (like the
/// interface half of `APNS_COUNTERS`, see `crate::counters`): what the `redirect` fast path
/// did with the APNs packets it did not forward from XDP itself. Packets are counted in
/// `APNS_COUNTERS` as always (outcome `fastpath`, `fastpath_tc` or `pass`); these numbers
/// break the `pass` ones down by reason and cross-check the TC step. Plain adds: per CPU,
/// and XDP and TC run with preemption off.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Packets left to the stack, indexed by [`Fallback`] code. Written by XDP.
    pub fallback: [u64; FALLBACK_SLOTS],
    /// Handed-off packets the TC program forwarded with `bpf_redirect_neigh` (by segment:
    /// GRO may merge handed-off packets between XDP and TC). Should equal the `fastpath_tc`
    /// packets counted by XDP. Written by TC.
    pub tc_redirected: u64,
    /// Handed-off packets `bpf_redirect_neigh` refused (bad parameters: should stay 0); they
    /// continue into the stack. Written by TC.
    pub tc_refused: u64,
}
const _: () = assert!(size_of::<PathCounters>() == 8 * (FALLBACK_SLOTS + 2));

impl PathCounters {
    /// Adds `other` field by field (user space sums per-CPU values with it).
    pub fn add(&mut self, other: &PathCounters) {
        for (mine, theirs) in self.fallback.iter_mut().zip(&other.fallback) {
            *mine += theirs;
        }
        self.tc_redirected += other.tc_redirected;
        self.tc_refused += other.tc_refused;
    }

    pub fn is_zero(&self) -> bool {
        *self == PathCounters::default()
    }

    /// Packets left to the stack for `reason`.
    pub fn fallback(&self, reason: Fallback) -> u64 {
        self.fallback[reason as usize]
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::IfaceConfig {}
    unsafe impl aya::Pod for super::PathCounters {}
}
