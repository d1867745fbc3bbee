//! apns-agent's XDP classifier: parse, judge, count, return the verdict.
//!
//! The contract is docs/classification.md; the code is split by concern: `parse` reads
//! headers, `classify` applies the policy maps, `counters` is the only writer of the counter
//! maps, `maps` holds the map statics.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod classify;
mod counters;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

use crate::{classify::Judgement, parse::Cursor};

/// Entry point attached to every interface. Every packet leaves through the single counter
/// update below, so what is counted and what is returned cannot disagree.
#[xdp]
pub fn apns_xdp(ctx: XdpContext) -> u32 {
    let cursor = Cursor::new(&ctx);
    let (judgement, tcp_flags) = match parse::parse(&cursor) {
        Ok(tcp) => (classify::judge(&tcp), Some(tcp.flags)),
        Err(class) => (Judgement::class(class), None),
    };
    counters::record(
        ctx.ingress_ifindex() as u32,
        &judgement,
        cursor.len() as u64,
        tcp_flags,
    );
    if judgement.outcome.is_drop() {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; nothing in this crate panics.
    loop {}
}

/// The crate is also compiled for the host by `cargo clippy --workspace`; there it is empty.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
