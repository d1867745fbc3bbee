//! The only writer of the counter maps. One packet, one counter cell
//! (`apns_common::counters`): the block of (interface slot, port slot) in the per-CPU array
//! `APNS_COUNTERS`, the cell of (direction, outcome) in it. Array lookups only: the verifier
//! inlines them, so counting costs a few instructions and never a helper call.
//!
//! Values are per CPU and XDP runs with preemption disabled, so plain adds are race-free and
//! need no atomics.

use apns_common::counters::{block_index, cell_of, CounterValue, Outcome, CELLS_PER_BLOCK};

use crate::{
    classify::Judgement,
    maps::{APNS_CNT_LOST, APNS_COUNTERS},
    parse::tcp_flag::{ACK as TCP_ACK, FIN as TCP_FIN, RST as TCP_RST, SYN as TCP_SYN},
};

/// Counts one packet of `bytes` frame bytes under `judgement` on the interface whose counter
/// slot is `iface_slot` (already bounded by `usable_slot`). `tcp_flags` is present for TCP
/// packets that reached the policy.
#[inline(always)]
pub fn record(iface_slot: u32, judgement: &Judgement, bytes: u64, tcp_flags: Option<u8>) {
    // TCP events are only meaningful for what the policy judged APNs-related: every outcome
    // of a parsed TCP segment but `not_apns`.
    let flags = match tcp_flags {
        Some(flags) if judgement.outcome != Outcome::NotApns => flags,
        _ => 0,
    };
    let cell = cell_of(judgement.direction, judgement.outcome) & (CELLS_PER_BLOCK - 1);
    match APNS_COUNTERS.get_ptr_mut(block_index(iface_slot, judgement.port_slot)) {
        // SAFETY: a map value pointer stays valid for the whole program run, and this CPU's
        // copy is touched by nobody else while we run; `cell` is masked into the block.
        Some(block) => unsafe { add(&mut (*block).cells[cell], bytes, flags) },
        None => {
            // Unreachable with slots bounded by `usable_slot`; counted, never silent.
            if let Some(lost) = APNS_CNT_LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU array slot owned by this CPU for the program run.
                unsafe { *lost += 1 };
            }
        }
    }
}

#[inline(always)]
fn add(value: &mut CounterValue, bytes: u64, flags: u8) {
    value.packets += 1;
    value.bytes += bytes;
    // Most packets carry no flag worth counting (they are not APNs): skip four adds of zero.
    if flags & (TCP_FIN | TCP_SYN | TCP_RST) == 0 {
        return;
    }
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    value.syn += (syn && !ack) as u64;
    value.synack += (syn && ack) as u64;
    value.rst += (flags & TCP_RST != 0) as u64;
    value.fin += (flags & TCP_FIN != 0) as u64;
}
