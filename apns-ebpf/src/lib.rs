//! apns-agent's XDP classifier: parse, judge, count, return the verdict.
//!
//! The contract is docs/classification.md; the code is split by concern: `parse` reads
//! headers, `classify` applies the policy maps, `counters` is the only writer of
//! `APNS_COUNTERS`, `conns` of the connection table (docs/clients.md), `events` reports
//! policy drops to the ring buffer, `ifaces` reads the interface entries, `egress` is the
//! redirect's egress map, `flows` admits inbound packets to the redirect fast path only for
//! flows a device opened, `fastpath`
//! forwards (redirect) or marks APNs packets and counts what it leaves to the stack
//! (`APNS_FP_PATHS`), `tc` is the TC ingress program of both fast paths (the mark's copy
//! into `skb->mark`, the redirect's hand-off for unresolved neighbours; it also counts in
//! `APNS_FP_PATHS`), `tc_conns` the TC egress half of the connection table, `maps` holds the
//! map statics, `features` the kernel features the agent probed. The entry points live in
//! the binaries (`main.rs`; `probe.rs` for upgrade tests and `handoff_bench.rs` for the TC
//! step's benchmark) so that they share every line of this crate.
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
mod egress;
mod events;
mod fastpath;
mod features;
mod flows;
mod ifaces;
mod maps;
mod parse;
pub mod tc;
pub mod tc_conns;

use core::mem::MaybeUninit;

use apns_common::{
    counters::{Direction, Outcome},
    fastpath::{mode as fastpath_mode, Fallback, IfaceConfig},
    features::bits,
};
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};

use crate::{
    classify::Judgement,
    fastpath::{Forward, Handoff},
    parse::{Cursor, TcpPacket},
};

/// Classifies, counts and returns the XDP action for one frame. Every packet leaves through
/// the single counter update below, so what is counted and what is returned cannot disagree:
/// a hand-off to the TC program is counted (`fastpath_tc`) only once its metadata is
/// written, and a packet the fast path leaves to the stack also has its reason counted.
#[inline(always)]
pub fn handle(ctx: &XdpContext) -> u32 {
    handle_with::<false, true>(ctx)
}

/// [`handle`] as a component of libxdp's multiprog dispatcher (`apns_xdp_libxdp`): compiled
/// without a single `bpf_xdp_adjust_meta` call, so with no XDP metadata for the `mark` and
/// `redirect` fast paths (the agent runs joined interfaces with the `pass` fast path). Linux
/// 6.12 refuses to load an extension program that may change packet data in place of a
/// dispatcher slot that does not, and it judges by the calls in the code, run or not.
#[inline(always)]
pub fn handle_component(ctx: &XdpContext) -> u32 {
    handle_with::<false, false>(ctx)
}

/// [`handle`]; with `HAND_OFF_ALL`, the `redirect` fast path hands every packet it would
/// forward to the TC step, as if no next hop were resolved: the `bench-handoff` object
/// measures the TC step's cost per packet that way. `handle` compiles the branch out.
/// Without `META_CALLS` the code never calls `bpf_xdp_adjust_meta` ([`handle_component`]).
#[inline(always)]
pub fn handle_with<const HAND_OFF_ALL: bool, const META_CALLS: bool>(ctx: &XdpContext) -> u32 {
    let cursor = Cursor::new(ctx);
    let ifindex = ctx.ingress_ifindex() as u32;
    // One array read per packet gives the counter slot and, for APNs, the fast path.
    let iface = ifaces::interface(ifindex);
    let iface_slot = ifaces::counter_slot(iface);
    // Frame length as received: the fast path rewrites bytes, never the length.
    let bytes = cursor.len() as u64;
    let (mut judgement, tcp_flags, mut next) = match parse::parse(&cursor) {
        Ok(tcp) => {
            let mut judgement = classify::judge(&tcp);
            if judgement.outcome.is_drop() {
                events::report_drop(ifindex, &judgement, &tcp);
            }
            let next = if judgement.outcome == Outcome::Pass {
                passed_apns::<HAND_OFF_ALL, META_CALLS>(
                    ctx,
                    &cursor,
                    ifindex,
                    iface,
                    &tcp,
                    &mut judgement,
                )
            } else {
                Next::of(&judgement)
            };
            (judgement, Some(tcp.flags), next)
        }
        Err(class) => {
            let judgement = classify::settled(class);
            let next = Next::of(&judgement);
            (judgement, None, next)
        }
    };
    if let Some(decided) = next.handoff {
        // XDP_PASS either way: the TC program takes over (from the metadata, or by
        // classifying the packet again where XDP has no metadata), or the stack.
        match hand_off::<META_CALLS>(ctx, &decided) {
            Ok(()) => judgement.outcome = Outcome::FastpathTc,
            Err(reason) => next.fallback = Some(reason),
        }
    }
    counters::record(iface_slot, &judgement, bytes, tcp_flags);
    if let Some(reason) = next.fallback {
        fastpath::count_fallback(iface_slot, reason);
    }
    if let (true, Some(config)) = (META_CALLS, next.mark) {
        fastpath::mark(ctx, config);
    }
    next.action
}

/// What is left to do with a frame once it is judged: its XDP action, and at most one of a
/// mark, a hand-off to the TC program, or the reason the fast path left it to the stack.
struct Next {
    action: u32,
    mark: Option<&'static IfaceConfig>,
    handoff: Option<Handoff>,
    fallback: Option<Fallback>,
}

impl Next {
    #[inline(always)]
    fn verdict(action: u32) -> Self {
        Next {
            action,
            mark: None,
            handoff: None,
            fallback: None,
        }
    }

    /// Drop or pass, as the judgement says, and nothing else.
    #[inline(always)]
    fn of(judgement: &Judgement) -> Self {
        Next::verdict(if judgement.outcome.is_drop() {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        })
    }

    #[inline(always)]
    fn fallback(reason: Fallback) -> Self {
        Next {
            fallback: Some(reason),
            ..Next::verdict(xdp_action::XDP_PASS)
        }
    }
}

/// An APNs packet the policy passes, which entered `ifindex`: recorded in the connection
/// table where it enters from the devices, then given to the interface's fast path: `mark`
/// marks the device's packets, `redirect` forwards the device's packets and Apple's of the
/// flows they opened (`flows`). Sets the outcome of what the fast path did.
#[inline(always)]
fn passed_apns<const HAND_OFF_ALL: bool, const META_CALLS: bool>(
    ctx: &XdpContext,
    cursor: &Cursor,
    ifindex: u32,
    iface: Option<&'static IfaceConfig>,
    tcp: &TcpPacket,
    judgement: &mut Judgement,
) -> Next {
    let outbound = judgement.direction == Direction::Outbound;
    // The device's packets feed the connection table where they enter.
    if outbound && ifaces::faces_devices(iface) {
        record_outbound(cursor, ifindex, tcp);
    }
    let Some(config) = iface.filter(|config| config.fastpath != fastpath_mode::PASS) else {
        return Next::verdict(xdp_action::XDP_PASS);
    };
    if config.fastpath == fastpath_mode::MARK {
        // Only the device's packets are marked: Apple's replies pass the stack's conntrack,
        // which the mark path never bypasses. Without XDP metadata the TC ingress program
        // classifies and marks the packet itself.
        return Next {
            mark: (outbound && writes_meta::<META_CALLS>()).then_some(config),
            ..Next::verdict(xdp_action::XDP_PASS)
        };
    }
    let opened_on = match admit(ifindex, tcp, judgement.direction) {
        Ok(opened_on) => opened_on,
        Err(reason) => return Next::fallback(reason),
    };
    match fastpath::redirect::<HAND_OFF_ALL>(ctx, cursor, ifindex, tcp, config, opened_on) {
        Forward::Xdp { action, egress } => {
            judgement.outcome = Outcome::Fastpath;
            // Apple's packets redirected by XDP to the devices skip TC egress, where the
            // table would otherwise see them: record them here. (A hand-off goes out through
            // the stack's transmit path, TC egress included.)
            if !outbound && ifaces::faces_devices(ifaces::interface(egress)) {
                let mut slot = MaybeUninit::uninit();
                let key = conns::key(&mut slot, tcp, false);
                let ttl = conns::ttl(cursor, tcp);
                conns::record_inbound(key, tcp.flags, ttl, cursor.len() as u64, 1);
            }
            Next::verdict(action)
        }
        Forward::Handoff(decided) => Next {
            handoff: Some(decided),
            ..Next::verdict(xdp_action::XDP_PASS)
        },
        Forward::Stack(reason) => Next::fallback(reason),
    }
}

/// The device's packet (outbound) that entered `ifindex`, a device-facing interface, in the
/// connection table. Each step that needs the connection's key builds its own, in its own
/// scope: a key kept alive across the fast path's FIB lookup would push the XDP program's
/// frames past the 512 bytes Linux 6.1 sums over a call chain.
#[inline(always)]
fn record_outbound(cursor: &Cursor, ifindex: u32, tcp: &TcpPacket) {
    let mut slot = MaybeUninit::uninit();
    let key = conns::key(&mut slot, tcp, true);
    conns::record_outbound(key, tcp.flags, ifindex, cursor.len() as u64);
}

/// [`flows::admit`] for the packet of `tcp` that entered `ifindex` in `direction`.
#[inline(always)]
fn admit(ifindex: u32, tcp: &TcpPacket, direction: Direction) -> Result<Option<u32>, Fallback> {
    let mut slot = MaybeUninit::uninit();
    let key = conns::key(&mut slot, tcp, direction == Direction::Outbound);
    flows::admit(key, direction, ifindex)
}

/// Hands a `redirect` packet to the TC program: with its metadata where XDP may write it;
/// elsewhere the TC program classifies the packet again, and there is nothing to write.
#[inline(always)]
fn hand_off<const META_CALLS: bool>(ctx: &XdpContext, decided: &Handoff) -> Result<(), Fallback> {
    if writes_meta::<META_CALLS>() {
        fastpath::handoff(ctx, decided)
    } else {
        Ok(())
    }
}

/// Whether this build may and this kernel lets XDP write metadata for the TC program.
#[inline(always)]
fn writes_meta<const META_CALLS: bool>() -> bool {
    META_CALLS && features::has(bits::XDP_META)
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
