//! The fast paths for APNs packets: `redirect` (forwarded past netfilter, by XDP itself or,
//! for a next hop without a resolved neighbour, by the TC program) and `mark` (tagged for
//! netfilter and policy routing through XDP metadata).
//!
//! Both take a device's packets. `redirect` forwards Apple's only for flows a device opened
//! (`flows`; any other inbound packet goes to the stack, [`Fallback::Unsolicited`]); `mark`
//! never marks them (they pass the stack's conntrack).
//!
//! For an interface whose fast path is `redirect`, an untagged APNs packet with a TTL above 1
//! gets a FIB lookup (bpf_fib_lookup, the kernel's own routing table and neighbour cache):
//! - success, egress managed: new MACs, TTL or hop limit minus one (IPv4 checksum updated
//!   incrementally), XDP_REDIRECT through the egress devmap ([`Forward::Xdp`]);
//! - no resolved neighbour ("NO_NEIGH"), egress managed, TC program ready: handed to the TC
//!   ingress program, which forwards it with `bpf_redirect_neigh`, which resolves the
//!   neighbour in the kernel ([`Forward::Handoff`]). Where XDP may write metadata
//!   (`features::bits::XDP_META`), TTL or hop limit minus one and a [`HandoffMeta`] in front
//!   of the packet; elsewhere the packet passes as it came and the TC program asks the FIB
//!   again ([`route`], shared) and forwards what it would have been handed.
//!   XDP cannot resolve a neighbour, and the stack, which could, is exactly what the fast
//!   path bypasses: a forward chain that drops APNs would drop the very packet that should
//!   trigger the resolution;
//! - anything else — fragmentation needed, a local destination, a blackhole/unreachable/
//!   prohibit route, a TTL about to expire, an egress interface the agent does not manage, an
//!   inbound packet routed elsewhere than to where its flow was opened, a VLAN tag — goes to
//!   the stack with its [`Fallback`] reason ([`Forward::Stack`]), which
//!   knows how to answer (ICMP) and is counted per reason in `APNS_FP_PATHS`.

use apns_common::fastpath::{
    flags, Fallback, HandoffMeta, IfaceConfig, MarkMeta, FALLBACK_SLOTS, HANDOFF_META_MAGIC,
    MARK_META_MAGIC,
};
use aya_ebpf::{
    bindings::{
        bpf_fib_lookup, BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_PROHIBIT, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_FIB_LKUP_RET_UNSUPP_LWT,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_meta},
    programs::XdpContext,
    EbpfContext as _,
};

use aya_log_ebpf::{
    debug,
    macro_support::{level_enabled, Level},
};

use crate::{
    maps::{APNS_FP_PATHS, APNS_TX_PORTS},
    parse::{Addrs, Cursor, TcpPacket, IPV4_TTL, IPV6_HOP_LIMIT},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// Offsets inside the IPv4 header (the TTL's and the hop limit's are `parse`'s).
const IPV4_TOS: usize = 1;
const IPV4_CHECKSUM: usize = 10;
/// The Ethernet header's destination and source MACs.
const ETH_ALEN: usize = 6;

/// What the `redirect` fast path does with an APNs packet.
pub enum Forward {
    /// Forwarded by XDP: the XDP action (XDP_REDIRECT) and the egress ifindex.
    Xdp { action: u32, egress: u32 },
    /// To be handed to the TC program ([`handoff`] writes the metadata).
    Handoff(Handoff),
    /// Left to the stack, for this reason.
    Stack(Fallback),
}

/// A hand-off decided by [`redirect`]: the metadata, and where the IP header is.
pub struct Handoff {
    meta: HandoffMeta,
    l3: usize,
    ipv4: bool,
}

/// Puts a [`MarkMeta`] in front of the packet for the TC ingress program to copy into
/// `skb->mark`. Must be the last thing done with the frame: moving the metadata boundary
/// invalidates every packet pointer.
#[inline(always)]
pub fn mark(ctx: &XdpContext, config: &IfaceConfig) {
    // SAFETY: a helper on our own context; a negative delta grows the metadata area.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<MarkMeta>() as i32)) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + size_of::<MarkMeta>() > ctx.data() {
        return;
    }
    // SAFETY: the bounds were checked just above, in the form the verifier understands.
    unsafe {
        *(meta as *mut MarkMeta) = MarkMeta {
            magic: MARK_META_MAGIC,
            mark: config.mark,
            mask: config.mark_mask,
        };
    }
}

/// The debug record of a fast-path fallback; a global BPF function for the reason
/// `events::apns_log_drop` is one.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn apns_log_fallback(reason: u32, ifindex: u32) -> u32 {
    debug!(
        (),
        "fast path: fallback {} on ifindex {}, passing to the stack", reason as u8, ifindex
    );
    0
}

/// Decides what the `redirect` fast path does with `packet` (see the module documentation)
/// and, for [`Forward::Xdp`], rewrites the frame. `opened_on`: for an inbound packet, the
/// interface where its flow's device packets enter (`flows::admit`), the only egress it may
/// take.
#[inline(always)]
pub fn redirect<const HAND_OFF_ALL: bool>(
    ctx: &XdpContext,
    cursor: &Cursor,
    ifindex: u32,
    packet: &TcpPacket,
    config: &IfaceConfig,
    opened_on: Option<u32>,
) -> Forward {
    let route = match route(ctx.as_ptr(), cursor, ifindex, packet, packet.ip_len) {
        Ok(route) => route,
        Err(reason) => {
            if level_enabled(Level::Debug) {
                apns_log_fallback(u32::from(reason as u8), ifindex);
            }
            return Forward::Stack(reason);
        }
    };
    if let Err(reason) = route.toward(opened_on) {
        return Forward::Stack(reason);
    }
    if !route.resolved || HAND_OFF_ALL {
        if config.flags & flags::TC_HANDOFF == 0 {
            return Forward::Stack(Fallback::TcNotReady);
        }
        return Forward::Handoff(Handoff {
            meta: HandoffMeta {
                magic: HANDOFF_META_MAGIC,
                oif: route.egress,
            },
            l3: packet.l3,
            ipv4: route.ipv4,
        });
    }

    if decrement_ttl(cursor, packet.l3, route.ipv4).is_err() {
        return Forward::Stack(Fallback::Other);
    }
    let Ok(eth) = cursor.bytes_mut::<{ 2 * ETH_ALEN }>(0) else {
        return Forward::Stack(Fallback::Other);
    };
    eth[..ETH_ALEN].copy_from_slice(&route.dmac);
    eth[ETH_ALEN..].copy_from_slice(&route.smac);
    match APNS_TX_PORTS.redirect(route.egress) {
        Ok(action) => Forward::Xdp {
            action,
            egress: route.egress,
        },
        Err(_) => Forward::Stack(Fallback::Other),
    }
}

/// Where the FIB sends a packet the `redirect` fast path may forward.
pub struct Route {
    /// The egress ifindex.
    pub egress: u32,
    /// Whether the next hop's neighbour entry is resolved (its MACs are below).
    pub resolved: bool,
    pub ipv4: bool,
    dmac: [u8; ETH_ALEN],
    smac: [u8; ETH_ALEN],
}

impl Route {
    /// Whether the egress is an interface the agent manages (the devmap holds it): the fast
    /// path forwards only between those.
    #[inline(always)]
    pub fn managed(&self) -> bool {
        APNS_TX_PORTS.contains(self.egress)
    }

    /// Whether the fast path may forward there: a managed egress and, for an inbound packet,
    /// the interface its flow was opened on (`opened_on`), or the reason it may not.
    #[inline(always)]
    pub fn toward(&self, opened_on: Option<u32>) -> Result<(), Fallback> {
        if !self.managed() {
            return Err(Fallback::EgressUnmanaged);
        }
        match opened_on {
            Some(ifindex) if ifindex != self.egress => Err(Fallback::Unsolicited),
            _ => Ok(()),
        }
    }
}

/// Asks the kernel's FIB (`bpf_fib_lookup` on the program's context `ctx`, XDP or TC) where
/// `packet`, which entered `ifindex`, goes; or the reason the stack must have it: a VLAN tag,
/// a TTL about to expire (the stack sends the ICMP time-exceeded), or what the FIB answered.
/// `tot_len` is the length the FIB checks the egress MTU with; 0 lets a TC program's FIB check
/// the skb itself (GSO included).
#[inline(always)]
pub fn route(
    ctx: *mut core::ffi::c_void,
    cursor: &Cursor,
    ifindex: u32,
    packet: &TcpPacket,
    tot_len: u16,
) -> Result<Route, Fallback> {
    if packet.tagged {
        return Err(Fallback::VlanTagged);
    }
    // SAFETY: bpf_fib_lookup is plain data; all zeroes is a valid, empty request.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.l4_protocol = apns_common::ip::TCP;
    params.sport = packet.sport.to_be();
    params.dport = packet.dport.to_be();
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ifindex;
    let ipv4 = match &packet.addrs {
        Addrs::V4 { src, dst } => {
            let Ok(ip) = cursor.bytes::<20>(packet.l3) else {
                return Err(Fallback::Other);
            };
            params.family = AF_INET;
            params.__bindgen_anon_2.tos = ip[IPV4_TOS];
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(**src);
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(**dst);
            true
        }
        Addrs::V6 { src, dst } => {
            params.family = AF_INET6;
            params.__bindgen_anon_3.ipv6_src = words(src);
            params.__bindgen_anon_4.ipv6_dst = words(dst);
            false
        }
    };
    match cursor.bytes::<1>(packet.ttl_offset()) {
        Ok([ttl]) if *ttl > 1 => {}
        Ok(_) => return Err(Fallback::Ttl),
        Err(_) => return Err(Fallback::Other),
    }
    // SAFETY: `params` is a valid, fully initialised bpf_fib_lookup on our stack.
    let result = unsafe { fib_lookup(ctx, &mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    // The FIB fills in the egress ifindex on NO_NEIGH too. Older kernels (5.10 does) also
    // answer SUCCESS for a neighbour entry still being resolved (INCOMPLETE, or FAILED), with
    // its all-zero address: a frame sent there is lost, so that is no resolved neighbour.
    let resolved = fib_answer(result)? && params.dmac != [0; ETH_ALEN];
    Ok(Route {
        egress: params.ifindex,
        resolved,
        ipv4,
        dmac: params.dmac,
        smac: params.smac,
    })
}

/// `Ok(true)` for a resolved next hop, `Ok(false)` for one without a neighbour entry, or the
/// reason the stack gets the packet.
#[inline(always)]
fn fib_answer(result: i64) -> Result<bool, Fallback> {
    const SUCCESS: i64 = BPF_FIB_LKUP_RET_SUCCESS as i64;
    const NO_NEIGH: i64 = BPF_FIB_LKUP_RET_NO_NEIGH as i64;
    const BLACKHOLE: i64 = BPF_FIB_LKUP_RET_BLACKHOLE as i64;
    const UNREACHABLE: i64 = BPF_FIB_LKUP_RET_UNREACHABLE as i64;
    const PROHIBIT: i64 = BPF_FIB_LKUP_RET_PROHIBIT as i64;
    const NOT_FWDED: i64 = BPF_FIB_LKUP_RET_NOT_FWDED as i64;
    const FWD_DISABLED: i64 = BPF_FIB_LKUP_RET_FWD_DISABLED as i64;
    const UNSUPP_LWT: i64 = BPF_FIB_LKUP_RET_UNSUPP_LWT as i64;
    const FRAG_NEEDED: i64 = BPF_FIB_LKUP_RET_FRAG_NEEDED as i64;
    match result {
        SUCCESS => Ok(true),
        NO_NEIGH => Ok(false),
        BLACKHOLE => Err(Fallback::Blackhole),
        UNREACHABLE => Err(Fallback::Unreachable),
        PROHIBIT => Err(Fallback::Prohibit),
        NOT_FWDED => Err(Fallback::NotForwarded),
        FWD_DISABLED => Err(Fallback::ForwardingDisabled),
        UNSUPP_LWT => Err(Fallback::UnsupportedLwt),
        FRAG_NEEDED => Err(Fallback::FragNeeded),
        _ => Err(Fallback::Other),
    }
}

/// Puts the [`HandoffMeta`] in front of the packet and decrements its TTL or hop limit, so
/// the TC program needs no packet writes. On failure the frame is left as it came (no
/// metadata, TTL untouched) and the reason is returned. Must be the last thing done with the
/// frame: moving the metadata boundary invalidates every packet pointer.
#[inline(always)]
pub fn handoff(ctx: &XdpContext, handoff: &Handoff) -> Result<(), Fallback> {
    const META: i32 = size_of::<HandoffMeta>() as i32;
    // SAFETY: a helper on our own context; a negative delta grows the metadata area (it
    // fails when the driver leaves no room for metadata).
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -META) } != 0 {
        return Err(Fallback::NoMetadata);
    }
    // Packet pointers from before the adjustment are invalid: read them again.
    let cursor = Cursor::new(ctx);
    let meta = ctx.metadata();
    if meta + size_of::<HandoffMeta>() > ctx.data()
        || decrement_ttl(&cursor, handoff.l3, handoff.ipv4).is_err()
    {
        // Never happens after a successful adjustment of an untagged frame; give the room
        // back so that no stale bytes pose as metadata.
        // SAFETY: as above; a positive delta shrinks the area again.
        unsafe { bpf_xdp_adjust_meta(ctx.ctx, META) };
        return Err(Fallback::Other);
    }
    // SAFETY: the bounds were checked just above, in the form the verifier understands.
    unsafe { *(meta as *mut HandoffMeta) = handoff.meta };
    Ok(())
}

/// Counts one packet the `redirect` fast path left to the stack, by reason, for the
/// interface in counter slot `iface_slot` (already bounded by `usable_slot`).
#[inline(always)]
pub fn count_fallback(iface_slot: u32, reason: Fallback) {
    if let Some(paths) = APNS_FP_PATHS.get_ptr_mut(iface_slot) {
        // SAFETY: this CPU's copy of a per-CPU array value, touched by nobody else while XDP
        // runs (preemption off); the index is masked into the array.
        unsafe { (*paths).fallback[reason as usize & (FALLBACK_SLOTS - 1)] += 1 };
    }
}

/// TTL (with the RFC 1624 incremental checksum update) or hop limit minus one, at `l3`.
#[inline(always)]
pub fn decrement_ttl(cursor: &Cursor, l3: usize, ipv4: bool) -> Result<(), ()> {
    if ipv4 {
        let ip = cursor.bytes_mut::<20>(l3).map_err(drop)?;
        ip[IPV4_TTL] -= 1;
        // The 16-bit word holding the TTL went down by 0x0100, so the one's-complement
        // checksum goes up by 0x0100, with the end-around carry.
        let check = u32::from(u16::from_be_bytes([
            ip[IPV4_CHECKSUM],
            ip[IPV4_CHECKSUM + 1],
        ]));
        let sum = check + 0x0100;
        let folded = ((sum & 0xffff) + (sum >> 16)) as u16;
        ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&folded.to_be_bytes());
    } else {
        let ip = cursor.bytes_mut::<8>(l3).map_err(drop)?;
        ip[IPV6_HOP_LIMIT] -= 1;
    }
    Ok(())
}

/// An IPv6 address as the four 32-bit words bpf_fib_lookup takes (network byte order).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
