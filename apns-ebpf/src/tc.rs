//! The TC ingress program of the fast paths (`apns_tc`), attached to every `mark` and
//! `redirect` interface. It acts on the XDP metadata the XDP program left in front of a
//! packet, and only on its own (each kind has its magic number):
//! - a [`HandoffMeta`] (`redirect`, next hop without a resolved neighbour): forward the
//!   packet with `bpf_redirect_neigh` to the egress and next hop the XDP program's FIB lookup
//!   chose; the kernel's neighbour subsystem resolves the next hop (ARP/ND) and queues the
//!   packet meanwhile, which XDP cannot do. The XDP program already counted the packet
//!   (`fastpath_tc`) and decremented its TTL; this program only cross-checks
//!   (`APNS_FP_PATHS`).
//! - a [`MarkMeta`] (`mark`): copy it into `skb->mark`, so netfilter and policy routing can
//!   exempt APNs (from a transparent proxy, say) on gateways where redirect does not fit.
//!
//! Both kinds are consumed (their magic zeroed): metadata travels with the skb, and over a
//! veth it reaches the TC programs of the next namespace, which must not take it for theirs.

use apns_common::fastpath::{HandoffMeta, MarkMeta, HANDOFF_META_MAGIC, MARK_META_MAGIC};
use aya_ebpf::{bindings::bpf_redir_neigh, helpers::bpf_redirect_neigh, programs::TcContext};

use crate::{fastpath, maps::APNS_FP_PATHS};

/// TCX_NEXT / TC_ACT_UNSPEC: let the next program or the default action decide.
pub(crate) const TC_NEXT: i32 = -1;
/// What `bpf_redirect_neigh` returns when it accepted the target (TCX_REDIRECT).
const TC_ACT_REDIRECT: i64 = 7;

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
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
        if unsafe { (*found).magic } == HANDOFF_META_MAGIC {
            return forward(ctx, found);
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
        // SAFETY: `skb` as above.
        let current = unsafe { (*ctx.skb.skb).mark };
        ctx.set_mark((current & !mark.mask) | (mark.mark & mark.mask));
    }
    TC_NEXT
}

/// Forwards a handed-off packet with `bpf_redirect_neigh`; a refusal (bad parameters, which
/// the XDP program never writes) lets the packet continue into the stack.
#[inline(always)]
fn forward(ctx: &TcContext, found: *mut HandoffMeta) -> i32 {
    // SAFETY: `found` was bounds-checked by the caller; consume it before anything else.
    let handoff = unsafe { *found };
    unsafe { (*found).magic = 0 };
    // SAFETY: bpf_redir_neigh is plain data (a family and a union of addresses).
    let mut next_hop: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    next_hop.nh_family = handoff.nh_family;
    // The union's 16 bytes also hold an IPv4 next hop in their first word.
    next_hop.__bindgen_anon_1.ipv6_nh = handoff.nh;
    // SAFETY: a helper taking a pointer to our own stack copy and its exact size.
    let result = unsafe {
        bpf_redirect_neigh(
            handoff.oif,
            &mut next_hop,
            size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
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
    let slot = fastpath::counter_slot(fastpath::interface(ifindex));
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
