//! apns-agent's XDP classifier: parse, judge, count, return the verdict.
//!
//! The contract is docs/classification.md; the code is split by concern: `parse` reads
//! headers, `classify` applies the policy maps, `counters` is the only writer of the counter
//! maps, `conns` of the connection table (docs/clients.md), `events` reports policy drops to
//! the ring buffer, `fastpath` forwards (redirect) or marks APNs packets, `tc` is the TC
//! ingress program of both fast paths (the mark's copy into `skb->mark`, the redirect's
//! hand-off for unresolved neighbours), `tc_conns` the TC egress half of the connection
//! table, `maps` holds the map statics, `features` the kernel features the agent probed. The entry points live in the binaries (`main.rs`;
//! `probe.rs` for upgrade tests and `handoff_bench.rs` for the TC step's benchmark) so that
//! they share every line of this crate.
#![cfg_attr(target_arch = "bpf", no_std)]
// The BPF target's core has no atomic read-modify-write methods; the connection table's
// shared counters use the intrinsics (`conns`).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
// `parse::bounded`'s empty asm barrier.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod classify;
mod conns;
mod counters;
mod events;
mod fastpath;
mod features;
mod maps;
mod parse;
pub mod tc;
pub mod tc_conns;

use apns_common::{
    conns::ConnKey,
    counters::{Direction, Outcome},
    fastpath::mode as fastpath_mode,
    features::bits,
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{classify::Judgement, fastpath::Forward, parse::Cursor};

/// Classifies, counts and returns the XDP action for one frame. Every packet leaves through
/// the single counter update below, so what is counted and what is returned cannot disagree:
/// a hand-off to the TC program is counted (`fastpath_tc`) only once its metadata is
/// written, and a packet the redirect path leaves to the stack also has its reason counted.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    handle_with::<false>(ctx)
}

/// [`handle`]; with `HAND_OFF_ALL`, the `redirect` fast path hands every packet it would
/// forward to the TC step, as if no next hop were resolved: the `bench-handoff` object
/// measures the TC step's cost per packet that way. `handle` compiles the branch out.
#[inline(always)]
pub fn handle_with<const HAND_OFF_ALL: bool>(ctx: &XdpContext) -> u32 {
    let cursor = Cursor::new(ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    // One array read per packet gives the counter slot and, for APNs, the fast path.
    let iface = fastpath::interface(ifindex);
    let iface_slot = fastpath::counter_slot(iface);
    let mut action = xdp_action::XDP_PASS;
    let mut mark = None;
    let mut handoff = None;
    let mut fallback = None;
    let (mut judgement, tcp_flags) = match parse::parse(&cursor) {
        Ok(tcp) => {
            let mut judgement = classify::judge(&tcp);
            if judgement.outcome.is_drop() {
                events::report_drop(ctx, ifindex, &judgement, &tcp);
                action = xdp_action::XDP_DROP;
            } else if judgement.outcome == Outcome::Pass {
                // The device's packets feed the connection table where they enter.
                if judgement.direction == Direction::Outbound && fastpath::faces_devices(iface) {
                    let mut key = ConnKey::default();
                    conns::key(&mut key, &tcp, true);
                    conns::record_outbound(&key, tcp.flags, ifindex, cursor.len() as u64);
                }
                match iface {
                    Some(config) if config.fastpath == fastpath_mode::REDIRECT => {
                        match fastpath::redirect::<HAND_OFF_ALL>(
                            ctx, &cursor, ifindex, &tcp, config,
                        ) {
                            Forward::Xdp {
                                action: redirected,
                                egress,
                            } => {
                                judgement.outcome = Outcome::Fastpath;
                                action = redirected;
                                // Apple's packets redirected by XDP to the devices skip TC
                                // egress, where the table would otherwise see them: record
                                // them here. (A hand-off goes out through the stack's
                                // transmit path, TC egress included.)
                                if judgement.direction == Direction::Inbound
                                    && fastpath::faces_devices(fastpath::interface(egress))
                                {
                                    let mut key = ConnKey::default();
                                    conns::key(&mut key, &tcp, false);
                                    let ttl = conns::ttl(&cursor, &tcp);
                                    conns::apns_conns_inbound(
                                        &key,
                                        tcp.flags,
                                        ttl,
                                        cursor.len() as u64,
                                        1,
                                    );
                                }
                            }
                            Forward::Handoff(decided) => handoff = Some(decided),
                            Forward::Stack(reason) => fallback = Some(reason),
                        }
                    }
                    // Without XDP metadata the TC ingress program classifies and marks
                    // the packet itself.
                    Some(config)
                        if config.fastpath == fastpath_mode::MARK
                            && features::has(bits::XDP_META) =>
                    {
                        mark = Some(config)
                    }
                    _ => {}
                }
            }
            (judgement, Some(tcp.flags))
        }
        Err(class) => (Judgement::class(class), None),
    };
    // Frame length as received: the fast path rewrites bytes, never the length.
    let bytes = cursor.len() as u64;
    if let Some(decided) = handoff {
        // XDP_PASS either way: the TC program takes over (from the metadata, or by
        // classifying the packet again where XDP has no metadata), or the stack.
        if !features::has(bits::XDP_META) {
            judgement.outcome = Outcome::FastpathTc;
        } else {
            match fastpath::handoff(ctx, &decided) {
                Ok(()) => judgement.outcome = Outcome::FastpathTc,
                Err(reason) => fallback = Some(reason),
            }
        }
    }
    counters::record(iface_slot, &judgement, bytes, tcp_flags);
    if let Some(reason) = fallback {
        fastpath::count_fallback(iface_slot, reason);
    }
    if let Some(config) = mark {
        fastpath::mark(ctx, config);
    }
    action
}

/// Defines the TC programs in a binary of this crate: `apns_tc`, the TC ingress program of
/// the mark and redirect fast paths (see [`tc`]), and `apns_tc_conns`, the TC egress half of
/// the connection table on device-facing interfaces (see [`tc_conns`]). Every build of the
/// datapath (`main.rs`, `probe.rs`, `handoff_bench.rs`) carries them unchanged; only their XDP
/// program differs.
#[macro_export]
macro_rules! tc_programs {
    () => {
        #[aya_ebpf::macros::classifier]
        pub fn apns_tc(ctx: aya_ebpf::programs::TcContext) -> i32 {
            $crate::tc::handle(&ctx)
        }

        #[aya_ebpf::macros::classifier]
        pub fn apns_tc_conns(ctx: aya_ebpf::programs::TcContext) -> i32 {
            $crate::tc_conns::handle(&ctx)
        }
    };
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing in this crate panics.
    loop {}
}
