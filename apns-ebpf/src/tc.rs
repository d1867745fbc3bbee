//! The TC ingress program of the fast paths (`apns_tc`), attached to every `mark` and
//! `redirect` interface. It works one of two ways, chosen by the kernel's features
//! (`features::bits::XDP_META`, a load-time constant):
//!
//! - **From XDP metadata**, where XDP may write it. It acts on the metadata the XDP program
//!   left in front of a packet, and only on its own (each kind has its magic number):
//!   - a [`HandoffMeta`] (`redirect`, next hop without a resolved neighbour): forward the
//!     packet with `bpf_redirect_neigh` to the egress the XDP program's FIB lookup chose;
//!     the kernel's neighbour subsystem resolves the next hop (ARP/ND) and queues the packet
//!     meanwhile, which XDP cannot do. The XDP program already counted the packet
//!     (`fastpath_tc`) and decremented its TTL.
//!   - a [`MarkMeta`] (`mark`): copy it into `skb->mark`, so netfilter and policy routing can
//!     exempt APNs (from a transparent proxy, say) on gateways where redirect does not fit.
//!
//!   Both kinds are consumed (their magic zeroed): metadata travels with the skb, and over a
//!   veth it reaches the TC programs of the next namespace, which must not take it for theirs.
//! - **By classifying the packet itself**, where the kernel refuses `bpf_xdp_adjust_meta` to XDP.
//!   It parses and judges the packet as the XDP program did (same code, same policy maps): a
//!   device's APNs packet that passes gets the interface's mark (`mark`), or, on a `redirect`
//!   interface, the flow table (`flows`) and the FIB are asked again; what XDP left to the stack
//!   for want of a resolved neighbour is forwarded here as above (TTL decremented here). Everything
//!   else the XDP program left to the stack for a reason of its own (TTL, MTU, route, egress) gets
//!   the same answer from the FIB here and continues into the stack. Costs a parse and a policy
//!   lookup per packet on these interfaces (BENCHMARKS.md).
//!
//! Either way, what `bpf_redirect_neigh` did is counted in `APNS_FP_PATHS`, a cross-check of
//! the XDP program's `fastpath_tc` count.

use core::mem::MaybeUninit;

use apns_common::{
    counters::{Direction, Outcome},
    fastpath::{
        flags, mode, HandoffMeta, IfaceConfig, MarkMeta, HANDOFF_META_MAGIC, MARK_META_MAGIC,
    },
    features::bits,
};
use aya_ebpf::{helpers::bpf_redirect_neigh, programs::TcContext, EbpfContext as _};

use crate::{classify, conns, fastpath, features, flows, ifaces, maps::APNS_FP_PATHS, parse};

/// TCX_NEXT / TC_ACT_UNSPEC: let the next program or the default action decide.
pub(crate) const TC_NEXT: i32 = -1;
/// What `bpf_redirect_neigh` returns when it accepted the target (TCX_REDIRECT).
const TC_ACT_REDIRECT: i64 = 7;
/// Bytes of headers pulled into the skb's linear part when they are not all there yet: an
/// Ethernet header with two VLAN tags, IPv6 with extension headers, and TCP with options.
pub(crate) const HEADERS: u32 = 256;

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    if features::has(bits::XDP_META) {
        from_metadata(ctx)
    } else {
        classify(ctx)
    }
}

/// Acts on the metadata the XDP program left (see the module documentation).
#[inline(always)]
fn from_metadata(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points to the __sk_buff the kernel passed to the program.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + size_of::<HandoffMeta>() <= data {
        let found = meta as *mut HandoffMeta;
        // SAFETY: bounds checked above; metadata is 4-byte aligned.
        let handoff = unsafe { *found };
        if handoff.magic == HANDOFF_META_MAGIC {
            // SAFETY: as above; consumed before anything else, TC may write the metadata.
            unsafe { (*found).magic = 0 };
            return forward(ctx, handoff.oif);
        }
    }
    if meta + size_of::<MarkMeta>() > data {
        return TC_NEXT;
    }
    let found = meta as *mut MarkMeta;
    // SAFETY: bounds checked above; metadata is 4-byte aligned.
    let mark = unsafe { *found };
    if mark.magic == MARK_META_MAGIC {
        // SAFETY: as above; TC may write the metadata area.
        unsafe { (*found).magic = 0 };
        set_mark(ctx, mark.mark, mark.mask);
    }
    TC_NEXT
}

/// Classifies the packet as the XDP program did and does what its fast path would have
/// handed over (see the module documentation).
#[inline(always)]
fn classify(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points to the __sk_buff the kernel passed to the program.
    let (ifindex, len) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).len) };
    let Some(config) = ifaces::interface(ifindex) else {
        return TC_NEXT;
    };
    if config.fastpath != mode::MARK && config.fastpath != mode::REDIRECT {
        return TC_NEXT;
    }
    if !pull_headers(ctx, len) {
        return TC_NEXT;
    }
    let cursor = parse::Cursor::from_skb(ctx);
    let Ok(tcp) = parse::parse(&cursor) else {
        return TC_NEXT;
    };
    let judgement = classify::judge(&tcp);
    if judgement.outcome != Outcome::Pass {
        return TC_NEXT;
    }
    let outbound = judgement.direction == Direction::Outbound;
    if config.fastpath == mode::MARK {
        if outbound {
            set_mark(ctx, config.mark, config.mark_mask);
        }
        return TC_NEXT;
    }
    // The XDP program's flow check, with the same answer (it opened the device's flows).
    let mut slot = MaybeUninit::uninit();
    let key = conns::key(&mut slot, &tcp, outbound);
    let Ok(opened_on) = flows::admit(key, judgement.direction, ifindex) else {
        return TC_NEXT;
    };
    let Ok(route) = fastpath::route(ctx.as_ptr(), &cursor, ifindex, &tcp, 0) else {
        return TC_NEXT;
    };
    if !handed_off(config, &route, opened_on)
        || fastpath::decrement_ttl(&cursor, tcp.l3, route.ipv4).is_err()
    {
        return TC_NEXT;
    }
    forward(ctx, route.egress)
}

/// Whether the XDP program handed this packet over: the same test as its `redirect` path's
/// (an egress it may forward to whose neighbour it could not resolve, the hand-off ready). A
/// neighbour resolved since is forwarded here all the same: XDP counted the packet as handed
/// off.
#[inline(always)]
fn handed_off(config: &IfaceConfig, route: &fastpath::Route, opened_on: Option<u32>) -> bool {
    config.flags & flags::TC_HANDOFF != 0 && route.toward(opened_on).is_ok()
}

/// Makes sure the headers of an skb of `len` bytes are in its linear part (a GSO skb's
/// payload need not be); false when they cannot be.
#[inline(always)]
pub(crate) fn pull_headers(ctx: &TcContext, len: u32) -> bool {
    let linear = ctx.data_end().saturating_sub(ctx.data()) as u32;
    let wanted = if len < HEADERS { len } else { HEADERS };
    linear >= wanted || ctx.pull_data(wanted).is_ok()
}

/// Sets `mark`'s bits of `skb->mark` (the `mask` bits), keeping the others.
#[inline(always)]
fn set_mark(ctx: &TcContext, mark: u32, mask: u32) {
    // SAFETY: `skb` points to the __sk_buff the kernel passed to the program.
    let current = unsafe { (*ctx.skb.skb).mark };
    ctx.set_mark((current & !mask) | (mark & mask));
}

/// Forwards the packet out of `oif` with `bpf_redirect_neigh`, without a next hop: the kernel
/// routes it and resolves the neighbour (every kernel since 5.10 takes that form). A refusal
/// (an interface gone) lets the packet continue into the stack.
#[inline(always)]
fn forward(ctx: &TcContext, oif: u32) -> i32 {
    // SAFETY: no parameters (null, length 0), flags 0.
    let result = unsafe { bpf_redirect_neigh(oif, core::ptr::null_mut(), 0, 0) };
    let redirected = result == TC_ACT_REDIRECT;
    count(ctx, redirected);
    if redirected {
        TC_ACT_REDIRECT as i32
    } else {
        TC_NEXT
    }
}

/// The cross-check in `APNS_FP_PATHS`, by the ingress interface's counter slot. GRO may have
/// merged several handed-off frames into this skb: count its segments.
#[inline(always)]
fn count(ctx: &TcContext, redirected: bool) {
    // SAFETY: `skb` points to the __sk_buff the kernel passed to the program.
    let (ifindex, segments) = unsafe { ((*ctx.skb.skb).ingress_ifindex, (*ctx.skb.skb).gso_segs) };
    let slot = ifaces::counter_slot(ifaces::interface(ifindex));
    if let Some(paths) = APNS_FP_PATHS.get_ptr_mut(slot) {
        let segments = u64::from(segments.max(1));
        // SAFETY: this CPU's copy of a per-CPU array value; TC runs with preemption off.
        unsafe {
            if redirected {
                (*paths).tc_redirected += segments;
            } else {
                (*paths).tc_refused += segments;
            }
        }
    }
}
