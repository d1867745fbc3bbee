//! The TC egress half of the connection table (`apns_common::conns`): attached (TCX egress)
//! to the device-facing interfaces only, it records Apple's APNs packets as they leave toward
//! a device, after the stack has routed them and undone NAT, so that both halves of a
//! connection meet under the device's own address. It never changes, drops or redirects a
//! packet, and counts nothing in the counter maps (the XDP program counted the packet where
//! it entered).

use core::mem::MaybeUninit;

use apns_common::counters::{Direction, Outcome};
use aya_ebpf::programs::TcContext;

use crate::{classify, conns, ifaces, parse, tc};

#[inline(always)]
pub fn handle(ctx: &TcContext) -> i32 {
    // SAFETY: `skb` points to the __sk_buff the kernel passed to the program.
    let (ifindex, len, segments) = unsafe {
        let skb = &*ctx.skb.skb;
        (skb.ifindex, skb.len, skb.gso_segs)
    };
    // Attached to device-facing interfaces only; a stale attachment records nothing.
    if !ifaces::faces_devices(ifaces::interface(ifindex)) {
        return tc::TC_NEXT;
    }
    if !tc::pull_headers(ctx, len) {
        return tc::TC_NEXT;
    }
    let cursor = parse::Cursor::from_skb(ctx);
    let Ok(tcp) = parse::parse(&cursor) else {
        return tc::TC_NEXT;
    };
    let judgement = classify::judge(&tcp);
    if judgement.outcome == Outcome::Pass && judgement.direction == Direction::Inbound {
        // A GSO skb carries several segments; a plain one reports 0.
        let packets = if segments > 1 { u64::from(segments) } else { 1 };
        let mut slot = MaybeUninit::uninit();
        let key = conns::key(&mut slot, &tcp, false);
        let ttl = conns::ttl(&cursor, &tcp);
        conns::record_inbound(key, tcp.flags, ttl, u64::from(len), packets);
    }
    tc::TC_NEXT
}
