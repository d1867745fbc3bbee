//! The only writer of the connection table (`APNS_CONNS`, `APNS_CONN_STATS`,
//! `APNS_CONN_PEND`; `apns_common::conns` says who records what where). Called for APNs TCP
//! packets that pass only: [`record_outbound`] for the device's packets entering a
//! device-facing interface, [`record_inbound`] for Apple's packets leaving through one.
//! Nothing here runs for other traffic.
//!
//! Each records through the connection's pending slot ([`record`]): a plain packet in the
//! scheduler tick of an earlier one of its connection, side and CPU only adds to the slot's
//! counts; any other packet writes the entry.

use core::mem::MaybeUninit;

use apns_common::conns::{
    lifetime_bucket, pending_index, ConnKey, ConnStats, ConnValue, End, Pending, Side,
    PENDING_SLOTS, RESUME_AFTER_NS,
};
use apns_common::features::bits;
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};

use crate::{
    events::NS_PER_SEC,
    features,
    maps::{APNS_CONNS, APNS_CONN_PEND, APNS_CONN_STATS},
    parse::{tcp_flag, Addrs, Cursor, TcpPacket},
};

const NS_PER_MS: u64 = 1_000_000;

/// Writes the key of `packet`'s connection into `slot` (`device_is_source` for the device's
/// own packets), for the connection table and the flow table alike, and returns it. Filled
/// in place: a key returned by value costs the XDP program a second copy on its stack, past
/// the 512 bytes. Inlined: the recording functions take plain values, never pointers into
/// the packet (a packet pointer handed to a function of its own may reach it through
/// arithmetic the verifier refuses).
#[inline(always)]
pub fn key<'k>(
    slot: &'k mut MaybeUninit<ConnKey>,
    packet: &TcpPacket,
    device_is_source: bool,
) -> &'k ConnKey {
    // Zeroed with five 8-byte stores: `ConnKey::default()` compiles to a call of
    // compiler_builtins' memset, a byte loop (see `copy_address`).
    let words = slot.as_mut_ptr().cast::<u64>();
    for index in 0..size_of::<ConnKey>() / size_of::<u64>() {
        // SAFETY: ConnKey is 40 bytes aligned to 8: five whole words of the slot.
        unsafe { words.add(index).write_volatile(0) };
    }
    // SAFETY: every byte was just written, and all zeroes is a valid ConnKey.
    let key = unsafe { slot.assume_init_mut() };
    match &packet.addrs {
        Addrs::V4 { src, dst } => {
            let (device, apple) = if device_is_source {
                (src, dst)
            } else {
                (dst, src)
            };
            key.ip_version = 4;
            copy_address(&mut key.device, *device);
            copy_address(&mut key.apple, *apple);
        }
        Addrs::V6 { src, dst } => {
            let (device, apple) = if device_is_source {
                (src, dst)
            } else {
                (dst, src)
            };
            key.ip_version = 6;
            copy_address(&mut key.device, *device);
            copy_address(&mut key.apple, *apple);
        }
    }
    (key.device_port, key.apple_port) = if device_is_source {
        (packet.sport, packet.dport)
    } else {
        (packet.dport, packet.sport)
    };
    key
}

/// Copies an address of `N` bytes from the packet into the front of `to`, one byte at a time
/// and unrolled. A plain copy compiles to a call of compiler_builtins' memmove, a byte loop
/// behind a BPF-to-BPF call: with the key's memset, about 30 ns per IPv4 packet and 60 ns
/// per IPv6 packet, more than the table's lookup (BENCHMARKS.md). The volatile reads keep
/// LLVM from turning the bytes back into that call.
#[inline(always)]
fn copy_address<const N: usize>(to: &mut [u8; 16], from: &[u8; N]) {
    let mut index = 0;
    while index < N && index < to.len() {
        // SAFETY: `index` is below both lengths; the source is the parser's bounds-checked
        // slice of the packet.
        to[index] = unsafe { core::ptr::read_volatile(&raw const from[index]) };
        index += 1;
    }
}

/// CLOCK_MONOTONIC in nanoseconds. At the scheduler tick's resolution (1 to 10 ms) where the
/// kernel has the coarse clock (5.11+): the rules work in seconds, and it costs about 10 ns
/// less per packet than `bpf_ktime_get_ns` (BENCHMARKS.md), which older kernels use.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: helpers without arguments or side effects; the verifier never visits the one
    // the kernel lacks (`features`).
    unsafe {
        if features::has(bits::COARSE_CLOCK) {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// Adds `n` to a counter other CPUs may add to at the same time (both halves of one
/// connection can be handled on different CPUs): a BPF atomic add. The BPF target has no
/// `AtomicU64::fetch_add` in core, hence the intrinsic. Its result is unused, so LLVM emits
/// the plain `lock +=` (XADD) every kernel takes, not the fetching form of 5.12+.
#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    // SAFETY: the map value outlives the program run and u64 fields are 8-byte aligned.
    #[cfg(target_arch = "bpf")]
    unsafe {
        use core::intrinsics::{atomic_xadd, AtomicOrdering};
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n);
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        *counter += n;
    }
}

/// Sets `field` from 0 to `code` unless something set it first: true if this call did.
///
/// Not atomic: BPF's compare-and-swap needs Linux 5.12, and the oldest kernel of the matrix
/// (5.10) refuses any program that holds one, reachable or not. Only the two halves of one
/// connection can race here (the device's end on one CPU, Apple's on another, within the
/// same few nanoseconds); then both ends may count in `APNS_CONN_STATS`.
#[inline(always)]
fn set_once(field: &mut u64, code: u64) -> bool {
    if *field != 0 {
        return false;
    }
    *field = code;
    true
}

#[inline(always)]
fn stats() -> Option<&'static mut ConnStats> {
    // SAFETY: this CPU's copy; XDP and TC run with preemption disabled, so nobody else
    // touches it while we do.
    APNS_CONN_STATS
        .get_ptr_mut(0)
        .map(|stats| unsafe { &mut *stats })
}

/// Records that the connection ended (`end`, at `now`) unless an earlier FIN or RST did
/// already: the first end is the only one counted.
#[inline(always)]
fn ended(value: &mut ConnValue, end: End, now: u64) {
    if !set_once(&mut value.end, end as u64) {
        return;
    }
    let Some(stats) = stats() else {
        return;
    };
    if let Some(count) = stats.ended.get_mut(end as usize) {
        *count += 1;
    }
    let lifetime = now.saturating_sub(value.first_ns);
    let bucket = lifetime_bucket(lifetime / NS_PER_SEC);
    if let Some(count) = stats.lifetime.get_mut(bucket) {
        *count += 1;
    }
    stats.lifetime_ms += lifetime / NS_PER_MS;
}

/// Flags that change a connection's state: a packet with one always writes the entry.
const STATE_FLAGS: u8 = tcp_flag::SYN | tcp_flag::FIN | tcp_flag::RST;

/// The words of a key, read and written one at a time: the key is 8-byte aligned.
const KEY_WORDS: usize = size_of::<ConnKey>() / size_of::<u64>();

/// Multiplier of the pending slot's hash (2^64 divided by the golden ratio): spreads the
/// key's bits into the top ones, which pick the slot.
const SLOT_HASH: u64 = 0x9e37_79b9_7f4a_7c15;

/// The scheduler tick now: `bpf_jiffies64`, which the verifier turns into a load of the
/// kernel's `jiffies_64` on 64-bit JITs (not a helper call). It advances together with the
/// coarse clock the entries' times come from.
#[inline(always)]
fn tick() -> u64 {
    // SAFETY: a helper without arguments or side effects (Linux 5.5+).
    unsafe { bpf_jiffies64() }
}

/// This CPU's pending slot for `key` on `side` (`apns_common::conns::Pending`).
#[inline(always)]
fn pending_slot(key: &ConnKey, side: Side) -> Option<&'static mut Pending> {
    let words = (key as *const ConnKey).cast::<u64>();
    let mut mixed = 0u64;
    for index in 0..KEY_WORDS {
        // SAFETY: the key is KEY_WORDS whole words. Volatile, as in `same_key`.
        mixed ^= unsafe { words.add(index).read_volatile() };
    }
    let slot = (mixed.wrapping_mul(SLOT_HASH) >> (64 - PENDING_SLOTS.trailing_zeros())) as u32;
    // SAFETY: this CPU's copy; XDP and TC run with preemption and bottom halves off, so
    // nothing else touches it while we do (as `stats`).
    APNS_CONN_PEND
        .get_ptr_mut(pending_index(side, slot))
        .map(|pending| unsafe { &mut *pending })
}

/// Whether `a` and `b` are the same key, word by word. Volatile reads keep LLVM from merging
/// the compares into a call of compiler_builtins' `bcmp`, a byte loop (as `copy_address`).
#[inline(always)]
fn same_key(a: &ConnKey, b: &ConnKey) -> bool {
    let (a, b) = (
        (a as *const ConnKey).cast::<u64>(),
        (b as *const ConnKey).cast::<u64>(),
    );
    let mut index = 0;
    while index < KEY_WORDS {
        // SAFETY: both keys are KEY_WORDS whole words.
        if unsafe { a.add(index).read_volatile() != b.add(index).read_volatile() } {
            return false;
        }
        index += 1;
    }
    true
}

/// Records a packet of `key` on `side` with `flags`, `bytes` and `packets` (a GSO skb
/// carries several): adds it to the pending slot if the slot holds the connection and the
/// entry was written in this tick and the packet changes no state; else `write`s the entry
/// with the slot's counts added, and the slot then holds the connection from this tick on.
/// A slot that held another connection's counts first hands them to its entry
/// ([`apns_conns_add`]).
#[inline(always)]
fn record(
    key: &ConnKey,
    side: Side,
    flags: u8,
    bytes: u64,
    packets: u64,
    write: impl FnOnce(u64, u64),
) {
    let tick = tick();
    let Some(pending) = pending_slot(key, side) else {
        // Never: the index is below the map's size. Writing is always right.
        write(bytes, packets);
        return;
    };
    let same = same_key(&pending.key, key);
    if same && pending.tick == tick && flags & STATE_FLAGS == 0 {
        pending.packets += packets;
        pending.bytes += bytes;
        return;
    }
    let (more_packets, more_bytes) = (pending.packets, pending.bytes);
    pending.packets = 0;
    pending.bytes = 0;
    if same {
        write(bytes + more_bytes, packets + more_packets);
    } else {
        if more_packets != 0 {
            apns_conns_add(&pending.key, side as u32, more_packets, more_bytes);
        }
        write(bytes, packets);
        let words = (&raw mut pending.key).cast::<u64>();
        let from = (key as *const ConnKey).cast::<u64>();
        for index in 0..KEY_WORDS {
            // SAFETY: both keys are KEY_WORDS whole words. Volatile: no memcpy call.
            unsafe {
                words
                    .add(index)
                    .write_volatile(from.add(index).read_volatile())
            };
        }
    }
    pending.tick = tick;
}

/// Adds a pending slot's counts to the `side` half of `key`'s entry, if the table still holds
/// it (if not, the kernel's LRU evicted the connection, counts and all). A static BPF
/// function, as [`apns_conns_outbound`]; `key` points into the slot.
#[inline(never)]
fn apns_conns_add(key: &ConnKey, side: u32, packets: u64, bytes: u64) {
    let Some(value) = APNS_CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value pointer stays valid for the whole program run.
    let value = unsafe { &mut *value };
    if side == Side::Device as u32 {
        add(&mut value.out_packets, packets);
        add(&mut value.out_bytes, bytes);
    } else {
        add(&mut value.in_packets, packets);
        add(&mut value.in_bytes, bytes);
    }
}

/// A packet from the device (outbound, passed) that entered interface `ifindex`, which faces
/// the devices: makes the entry on a SYN (or on the first packet of a connection the table
/// does not know), else updates the device's half. Called by the XDP program with the key
/// on its own stack.
#[inline(always)]
pub fn record_outbound(key: &ConnKey, flags: u8, ifindex: u32, bytes: u64) {
    record(
        key,
        Side::Device,
        flags,
        bytes,
        1,
        |all_bytes, all_packets| {
            match apns_conns_outbound(key, flags, ifindex, all_bytes, all_packets) {
                MAKE => make(key, ifindex, all_bytes, all_packets, false),
                // A new connection on the addresses and ports of an earlier one: the counts
                // pending were the earlier one's, whose entry this replaces.
                MAKE_SYN => make(key, ifindex, bytes, 1, true),
                _ => {}
            }
        },
    );
}

/// A packet from Apple (inbound, passed) on its way out of a device-facing interface, with
/// its IP `ttl` ([`ttl`]) and the `packets` it carries: updates Apple's half of an entry the
/// device made ([`apns_conns_inbound`]). Called by the XDP and TC egress programs with the
/// key on their own stack.
#[inline(always)]
pub fn record_inbound(key: &ConnKey, flags: u8, ttl: u8, bytes: u64, packets: u64) {
    record(
        key,
        Side::Apple,
        flags,
        bytes,
        packets,
        |all_bytes, all_packets| apns_conns_inbound(key, flags, ttl, all_bytes, all_packets),
    );
}

/// What [`apns_conns_outbound`] leaves to its caller: nothing, or making the entry (`make`),
/// for a SYN or another first packet. The caller makes it, so that `make`'s frame (a whole
/// value) is not stacked on the recorder's: the verifier adds up the frames of a call
/// chain against 512 bytes, and Linux 6.1 rounds each to 32.
const DONE: u32 = 0;
const MAKE: u32 = 1;
const MAKE_SYN: u32 = 2;

/// The device's half of [`record_outbound`], up to making an entry; `bytes` and `packets`
/// include the counts that were pending.
///
/// A BPF function of its own (not inlined): it has a stack frame of its own, and non-APNs
/// packets never pay for the call. Static, not global: a global function is checked once
/// rather than for every path that reaches the call, but Linux 5.10 takes no pointer
/// argument to one (the key), and 6.1 takes none as a map key.
#[inline(never)]
fn apns_conns_outbound(key: &ConnKey, flags: u8, ifindex: u32, bytes: u64, packets: u64) -> u32 {
    let syn = flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN;
    let Some(value) = APNS_CONNS.get_ptr_mut(key) else {
        // A stray FIN or RST of a connection the table does not know makes no entry.
        if flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
            return DONE;
        }
        return if syn { MAKE_SYN } else { MAKE };
    };
    let now = now();
    // SAFETY: a map value pointer stays valid for the whole program run.
    let value = unsafe { &mut *value };
    if syn {
        // The device sent only SYNs so far and nothing ended: a retransmission. Anything else
        // is a new connection on the same addresses and ports.
        let only_syns = value.syns != 0 && value.out_packets == u64::from(value.syns);
        if value.end == End::Open as u64 && only_syns {
            value.syns += 1;
            value.out_last_ns = now;
            add(&mut value.out_packets, packets);
            add(&mut value.out_bytes, bytes);
            return DONE;
        }
        return MAKE_SYN;
    }
    if value.synack_ns != 0 || value.syns == 0 {
        let last = if value.in_last_ns > value.out_last_ns {
            value.in_last_ns
        } else {
            value.out_last_ns
        };
        // Only once Apple answered the previous resume: a keep-alive's retransmissions after
        // an idle gap must not replace that gap by their own short ones.
        if last != 0 && now - last >= RESUME_AFTER_NS && value.in_last_ns >= value.resume_ns {
            value.resume_gap_ns = now - last;
            value.resume_ns = now;
        }
    }
    value.out_last_ns = now;
    value.ifindex = ifindex;
    add(&mut value.out_packets, packets);
    add(&mut value.out_bytes, bytes);
    if flags & tcp_flag::FIN != 0 && value.out_fin_ns == 0 {
        value.out_fin_ns = now;
        ended(value, End::FinDevice, now);
    }
    if flags & tcp_flag::RST != 0 && value.out_rst_ns == 0 {
        value.out_rst_ns = now;
        ended(value, End::RstDevice, now);
    }
    DONE
}

/// Makes (or replaces) the entry of a connection whose first packet from the device this is
/// (with `packets` and `bytes`: a connection the table lost may have had some pending).
/// A function of its own too: the new value's 136 bytes live on its frame only while it runs.
#[inline(never)]
fn make(key: &ConnKey, ifindex: u32, bytes: u64, packets: u64, syn: bool) {
    let now = now();
    let value = ConnValue {
        first_ns: now,
        out_last_ns: now,
        out_packets: packets,
        out_bytes: bytes,
        syns: u32::from(syn),
        ifindex,
        ..ConnValue::default()
    };
    let made = APNS_CONNS.insert(key, value, u64::from(BPF_ANY)).is_ok();
    if let Some(stats) = stats() {
        if made {
            stats.made += 1;
        } else {
            stats.failed += 1;
        }
    }
}

/// Apple's half of [`record_inbound`]: updates Apple's half of an entry the device made; a
/// packet of a connection the table does not know is ignored. A static BPF function, as
/// [`apns_conns_outbound`].
#[inline(never)]
fn apns_conns_inbound(key: &ConnKey, flags: u8, ttl: u8, bytes: u64, packets: u64) {
    let Some(value) = APNS_CONNS.get_ptr_mut(key) else {
        return;
    };
    // SAFETY: a map value pointer stays valid for the whole program run.
    let value = unsafe { &mut *value };
    let now = now();
    add(&mut value.in_packets, packets);
    add(&mut value.in_bytes, bytes);
    if flags & tcp_flag::RST != 0 {
        if value.in_rst_ns == 0 {
            value.in_rst_ns = now;
            value.rst_ttl = ttl;
            ended(value, End::RstApple, now);
        }
        return;
    }
    value.in_last_ns = now;
    if flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN | tcp_flag::ACK
        && value.synack_ns == 0
    {
        value.synack_ns = now;
        value.synack_ttl = ttl;
    }
    if flags & tcp_flag::FIN != 0 && value.in_fin_ns == 0 {
        value.in_fin_ns = now;
        ended(value, End::FinApple, now);
    }
}

/// The IP TTL or hop limit of `packet`; 0 if the header is not where the parser found it.
#[inline(always)]
pub fn ttl(cursor: &Cursor, packet: &TcpPacket) -> u8 {
    cursor
        .bytes::<1>(packet.ttl_offset())
        .map_or(0, |byte| byte[0])
}
