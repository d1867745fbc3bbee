//! The only writer of the counter maps. One packet, one counter entry
//! (`apns_common::counters`).
//!
//! Values are per CPU and XDP runs with preemption disabled, so plain adds are race-free and
//! need no atomics.

use apns_common::counters::{CounterKey, CounterValue, Outcome};
use aya_ebpf::bindings::BPF_NOEXIST;

use crate::{
    classify::Judgement,
    maps::{APNS_CNT_LOST, APNS_COUNTERS},
};

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Counts one packet of `bytes` frame bytes under `judgement` on interface `ifindex`.
/// `tcp_flags` is present for TCP packets that reached the policy.
#[inline(always)]
pub fn record(ifindex: u32, judgement: &Judgement, bytes: u64, tcp_flags: Option<u8>) {
    let key = CounterKey {
        ifindex,
        port: judgement.port,
        direction: judgement.direction as u8,
        outcome: judgement.outcome as u8,
    };
    // TCP events are only meaningful for APNs connections and pinhole attempts.
    let flags = match (judgement.outcome, tcp_flags) {
        (
            Outcome::Pass | Outcome::Fastpath | Outcome::DropProvider | Outcome::DropPinhole,
            Some(flags),
        ) => flags,
        _ => 0,
    };

    if let Some(value) = APNS_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: a map value pointer stays valid for the whole program run, and this CPU's
        // copy is touched by nobody else while we run.
        unsafe { add(&mut *value, bytes, flags) };
        return;
    }
    let mut first = CounterValue::default();
    add(&mut first, bytes, flags);
    if APNS_COUNTERS
        .insert(&key, &first, BPF_NOEXIST as u64)
        .is_ok()
    {
        return;
    }
    // Either another CPU created the entry between our lookup and insert, or the map is full.
    match APNS_COUNTERS.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(value) => unsafe { add(&mut *value, bytes, flags) },
        None => {
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
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    value.syn += (syn && !ack) as u64;
    value.synack += (syn && ack) as u64;
    value.rst += (flags & TCP_RST != 0) as u64;
    value.fin += (flags & TCP_FIN != 0) as u64;
}
