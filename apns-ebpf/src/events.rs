//! Reports policy drops through the `APNS_EVENTS` ring buffer, sampled and rate-limited per
//! CPU (`APNS_EVENT_CFG`), so that a flood of violations costs at most a bounded number of
//! ring-buffer writes per CPU and second. Runs only for dropped packets, never on the pass path.

use apns_common::events::DropEvent;
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_log_ebpf::{
    debug,
    macro_support::{level_enabled, Level},
};

use crate::{
    classify::Judgement,
    maps::{APNS_EVENTS, APNS_EVENT_CFG, APNS_EVENT_ST},
    parse::{Addrs, TcpPacket},
};

pub(crate) const NS_PER_SEC: u64 = 1_000_000_000;

/// The debug record of a policy drop. A global BPF function (plain values, called only when
/// the log level lets it through): the verifier checks aya-log's record code once, where
/// inlined on every path to a drop it took Linux 5.10's and 6.1's verifiers past their
/// 1,000,000 instructions with debug logging on. Returns 0 (5.10 takes no global function
/// without a scalar result).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn apns_log_drop(ifindex: u32, outcome: u32, dport: u32) -> u32 {
    debug!(
        (),
        "policy drop on ifindex {}: outcome {}, dport {}", ifindex, outcome as u8, dport as u16
    );
    0
}

#[inline(always)]
pub fn report_drop(ifindex: u32, judgement: &Judgement, packet: &TcpPacket) {
    if level_enabled(Level::Debug) {
        apns_log_drop(
            ifindex,
            u32::from(judgement.outcome as u8),
            u32::from(packet.dport),
        );
    }
    let Some(config) = APNS_EVENT_CFG.get(0) else {
        return;
    };
    if config.per_cpu_per_second == 0 {
        return;
    }
    let Some(state) = APNS_EVENT_ST.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot; XDP runs with preemption disabled, so nobody else touches it.
    let state = unsafe { &mut *state };

    state.since_sample += 1;
    if state.since_sample < config.sample_every {
        state.suppressed += 1;
        return;
    }
    state.since_sample = 0;

    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(state.window_start_ns) >= NS_PER_SEC {
        state.window_start_ns = now;
        state.emitted = 0;
    }
    if state.emitted >= config.per_cpu_per_second {
        state.suppressed += 1;
        return;
    }
    let Some(mut entry) = APNS_EVENTS.reserve::<DropEvent>(0) else {
        // The consumer is behind and the ring is full: the drop is still counted.
        state.suppressed += 1;
        return;
    };
    let (ip_version, src, dst) = match &packet.addrs {
        Addrs::V4 { src, dst } => (4, widen(src), widen(dst)),
        Addrs::V6 { src, dst } => (6, **src, **dst),
    };
    entry.write(DropEvent {
        time_ns: now,
        ifindex,
        outcome: judgement.outcome as u8,
        protocol: apns_common::ip::TCP,
        ip_version,
        _pad: 0,
        sport: packet.sport,
        dport: packet.dport,
        suppressed: state.suppressed,
        src,
        dst,
    });
    entry.submit(0);
    state.emitted += 1;
    state.suppressed = 0;
}

#[inline(always)]
fn widen(addr: &[u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(addr);
    out
}
