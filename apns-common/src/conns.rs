//! The connection table: one entry per APNs TCP connection a device behind the gateway opens
//! to Apple, paired in both directions under the device's own address, so that the agent can
//! say which devices hold a live connection, which fail their handshakes, which are reset,
//! and which are cut while idle (docs/clients.md has the rules the agent applies).
//!
//! ## Who writes what (docs/clients.md, "What is seen where")
//!
//! - The device's packets (direction outbound, outcome `pass` or `fastpath`) are recorded by
//!   the XDP program where they enter, on a device-facing interface
//!   ([`crate::fastpath::flags::DEVICES`]): there they still carry the device's own address,
//!   NAT or not. They make the entry.
//! - Apple's packets (direction inbound) are recorded where they leave toward the device: by
//!   the TC egress program `apns_tc_conns` on the device-facing interface, which sees them
//!   after the stack has routed them and undone NAT; or, when the `redirect` fast path
//!   forwards them from XDP straight to a device-facing interface (they then skip TC egress),
//!   by the XDP program as it redirects them. They only update an entry, never make one.
//!
//! So each packet of a connection is recorded once, in routed, NAT and redirect
//! deployments alike. Packets that are not APNs never reach the table.
//!
//! ## Concurrency
//!
//! The table is shared by all CPUs (both halves of a connection must meet in one entry). The
//! device's packets write only the `out_*` fields and Apple's only the `in_*` fields; the
//! packet and byte counts are atomic adds, times are plain stores (the last writer wins),
//! and [`ConnValue::end`] is set only while it is 0 (not atomically: BPF's compare-and-swap
//! needs Linux 5.12, and 5.10 refuses a program that holds one; the two halves of one
//! connection can then both count an end within the same few nanoseconds).
//!
//! ## Per tick, not per packet
//!
//! A connection's entry is written for the first packet of each scheduler tick per CPU and
//! side, and for every SYN, FIN and RST; the other packets of the tick only add to per-CPU
//! counts in `APNS_CONN_PEND` ([`Pending`] says why and how the counts stay exact).

/// Key of `APNS_CONNS`: the connection as the device sees it. Addresses in network byte
/// order (IPv4 in the first 4 bytes, the rest zero), ports in host byte order. Aligned to 8
/// so that the XDP program zeroes a key on its stack with five 8-byte stores, not a call to
/// a byte loop (`key` in `apns-ebpf/src/conns.rs`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    /// The device behind the gateway (its own address, before NAT).
    pub device: [u8; 16],
    /// The Apple host.
    pub apple: [u8; 16],
    pub device_port: u16,
    /// The APNs port.
    pub apple_port: u16,
    /// 4 or 6.
    pub ip_version: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<ConnKey>() == 40);

/// How a connection ended: the first FIN or RST seen, and from which side. Stored in
/// [`ConnValue::end`] and indexing [`ConnStats::ended`]; never renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    /// Not ended (no FIN or RST seen yet).
    Open = 0,
    FinDevice = 1,
    FinApple = 2,
    RstDevice = 3,
    RstApple = 4,
}

/// Entries of [`ConnStats::ended`]: one per [`End`] code.
pub const END_CODES: usize = 5;

impl End {
    /// The ways a connection can end (every code but [`End::Open`]).
    pub const ENDED: [End; 4] = [End::FinDevice, End::FinApple, End::RstDevice, End::RstApple];

    pub const fn from_code(code: u64) -> Option<End> {
        match code {
            0 => Some(End::Open),
            1 => Some(End::FinDevice),
            2 => Some(End::FinApple),
            3 => Some(End::RstDevice),
            4 => Some(End::RstApple),
            _ => None,
        }
    }
}

impl crate::label::Label for End {
    const WHAT: &'static str = "connection end";
    const ALL: &'static [End] = &[
        End::Open,
        End::FinDevice,
        End::FinApple,
        End::RstDevice,
        End::RstApple,
    ];
    fn as_str(self) -> &'static str {
        match self {
            End::Open => "open",
            End::FinDevice => "fin_device",
            End::FinApple => "fin_apple",
            End::RstDevice => "rst_device",
            End::RstApple => "rst_apple",
        }
    }
}

/// A pause of at least this long with no packet either way, ended by a packet from the
/// device, is a *resume* ([`ConnValue::resume_ns`]): what the idle-cut rule looks at.
pub const RESUME_AFTER_NS: u64 = 1_000_000_000;

/// Value of `APNS_CONNS`. Times are `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC nanoseconds
/// at the scheduler tick's resolution, 1 to 10 ms), 0 for "never"; bytes are frame bytes from the Ethernet header on, as the counters count them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnValue {
    // Written by the device's packets only.
    /// When the entry was made: the device's first SYN, or, for a connection the table did
    /// not know (older than the datapath, or pushed out of the table), its first other packet.
    pub first_ns: u64,
    /// The device's latest packet.
    pub out_last_ns: u64,
    /// The device's packets and frame bytes; plain packets that shared a scheduler tick with
    /// an earlier one on the same CPU wait in `APNS_CONN_PEND` ([`Pending`]) until a later
    /// tick's packet or the agent's read adds them.
    pub out_packets: u64,
    pub out_bytes: u64,
    /// The device's latest resume: its first packet after at least [`RESUME_AFTER_NS`] with no
    /// packet either way, on an established connection. A new resume is only recorded once
    /// Apple answered the previous one (`in_last_ns >= resume_ns`), so the retransmissions of
    /// an unanswered keep-alive never hide the idle gap that preceded it.
    pub resume_ns: u64,
    /// The idle gap that ended at `resume_ns`.
    pub resume_gap_ns: u64,
    /// The device's first FIN and first RST.
    pub out_fin_ns: u64,
    pub out_rst_ns: u64,
    // Written by Apple's packets only.
    /// Apple's first SYN-ACK: the handshake was answered.
    pub synack_ns: u64,
    /// Apple's latest packet other than a RST (an answer).
    pub in_last_ns: u64,
    /// Apple's packets and frame bytes, counted as [`ConnValue::out_packets`].
    pub in_packets: u64,
    pub in_bytes: u64,
    /// Apple's first FIN and first RST (as seen from the device: a RST a middlebox sends in
    /// Apple's name counts here too; [`ConnValue::rst_ttl`] tells them apart).
    pub in_fin_ns: u64,
    pub in_rst_ns: u64,
    /// An [`End`] code: the first FIN or RST from either side. Set once.
    pub end: u64,
    /// SYNs from the device: 1 plus its retransmissions; 0 for a connection picked up after
    /// its handshake.
    pub syns: u32,
    /// The device-facing interface the device's packets arrive on.
    pub ifindex: u32,
    /// IP TTL (hop limit) of Apple's first SYN-ACK and of its first RST, as they leave toward
    /// the device: a RST whose TTL differs from the SYN-ACK's did not come from the host that
    /// answered the handshake (a middlebox on the path sent it).
    pub synack_ttl: u8,
    pub rst_ttl: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(size_of::<ConnValue>() == 136);

/// Buckets of [`ConnStats::lifetime`]: bucket `i` counts lifetimes below `2^i` seconds (and
/// at least `2^(i-1)`); the last one everything longer, from `2^(LIFETIME_BUCKETS - 2)` s
/// (about 18 hours) on.
pub const LIFETIME_BUCKETS: usize = 18;

/// Value of `APNS_CONN_STATS`, one per CPU: what the datapath did to the table. Written by
/// the XDP and TC programs (plain adds: per CPU, preemption off); read by the agent, which
/// sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Entries made: new connections (and connections the table did not know). With the
    /// entries present, this gives the evictions exactly: the agent never removes an entry,
    /// so every entry made and no longer present was evicted by the kernel's LRU.
    pub made: u64,
    /// Connections whose end was seen, by [`End`] code (index 0 unused).
    pub ended: [u64; END_CODES],
    /// Entries the kernel could not make (`bpf_map_update_elem` failed): connections not
    /// tracked. Should stay 0; counted so that it is never silent.
    pub failed: u64,
    /// Lifetimes (first packet to end) of ended connections, in [`LIFETIME_BUCKETS`]
    /// power-of-two buckets of seconds.
    pub lifetime: [u64; LIFETIME_BUCKETS],
    /// Sum of those lifetimes in milliseconds.
    pub lifetime_ms: u64,
}
const _: () = assert!(size_of::<ConnStats>() == 8 * (1 + END_CODES + 1 + LIFETIME_BUCKETS + 1));

impl ConnStats {
    /// Adds `other` field by field (user space sums the per-CPU values with it).
    pub fn add(&mut self, other: &ConnStats) {
        self.made += other.made;
        for (mine, theirs) in self.ended.iter_mut().zip(other.ended) {
            *mine += theirs;
        }
        self.failed += other.failed;
        for (mine, theirs) in self.lifetime.iter_mut().zip(other.lifetime) {
            *mine += theirs;
        }
        self.lifetime_ms += other.lifetime_ms;
    }
}

/// The [`ConnStats::lifetime`] bucket of a lifetime of `seconds`.
#[inline(always)]
pub fn lifetime_bucket(seconds: u64) -> usize {
    let mut bucket = 0;
    // A bounded loop: the verifier sees at most LIFETIME_BUCKETS - 1 iterations.
    while bucket < LIFETIME_BUCKETS - 1 && seconds >> bucket != 0 {
        bucket += 1;
    }
    bucket
}

/// The half of a connection a packet feeds: the device's packets its `out_*` fields, Apple's
/// its `in_*` fields. Indexes the halves of `APNS_CONN_PEND` ([`pending_index`]).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Device = 0,
    Apple = 1,
}

/// Slots of `APNS_CONN_PEND` per [`Side`] and CPU (a power of two).
pub const PENDING_SLOTS: u32 = 256;
/// Entries of `APNS_CONN_PEND`: both sides' slots.
pub const PENDING_ENTRIES: u32 = 2 * PENDING_SLOTS;

/// The entry of `APNS_CONN_PEND` of `slot` (below [`PENDING_SLOTS`]) on `side`.
#[inline(always)]
pub const fn pending_index(side: Side, slot: u32) -> u32 {
    side as u32 * PENDING_SLOTS + slot % PENDING_SLOTS
}

/// The side an entry of `APNS_CONN_PEND` belongs to.
pub const fn pending_side(index: u32) -> Side {
    if index < PENDING_SLOTS {
        Side::Device
    } else {
        Side::Apple
    }
}

/// Value of `APNS_CONN_PEND`, one per CPU, slot and side: the packets of one connection that
/// this CPU counted here rather than in the connection's entry.
///
/// The datapath writes a connection's entry in `APNS_CONNS` (a shared LRU hash: a hashed
/// lookup, the clock, atomic adds) for the first packet of each scheduler tick on each CPU
/// and side, and for every SYN, FIN and RST. A plain packet of the same connection in the
/// same tick on the same CPU would write the same times again, so only its packet and byte
/// counts are added here, per CPU, with an inlined array lookup and no clock (the tick is
/// `bpf_jiffies64`, which the verifier inlines). The first packet of a later tick adds them
/// to the entry; the agent adds what is still here when it reads the table. So every time in
/// an entry is as exact as the clock's tick resolution allowed before, and every count is
/// exact once read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// The connection the counts belong to.
    pub key: ConnKey,
    /// The tick (`bpf_jiffies64`) in which the datapath last wrote the connection's entry for
    /// this side on this CPU: a plain packet of the same tick only adds to the counts.
    pub tick: u64,
    /// Packets and frame bytes not yet in the entry's counts.
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<Pending>() == 64);

impl ConnValue {
    /// Adds the counts `pending` holds for `side` (the agent's part of [`Pending`]).
    pub fn add_pending(&mut self, side: Side, pending: &Pending) {
        let (packets, bytes) = match side {
            Side::Device => (&mut self.out_packets, &mut self.out_bytes),
            Side::Apple => (&mut self.in_packets, &mut self.in_bytes),
        };
        *packets += pending.packets;
        *bytes += pending.bytes;
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::ConnValue {}
    unsafe impl aya::Pod for super::ConnStats {}
    unsafe impl aya::Pod for super::Pending {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_land_in_power_of_two_buckets() {
        assert_eq!(lifetime_bucket(0), 0);
        assert_eq!(lifetime_bucket(1), 1);
        assert_eq!(lifetime_bucket(2), 2);
        assert_eq!(lifetime_bucket(3), 2);
        assert_eq!(lifetime_bucket(4), 3);
        assert_eq!(lifetime_bucket(1 << 15), 16);
        assert_eq!(lifetime_bucket((1 << 16) - 1), 16);
        assert_eq!(lifetime_bucket(1 << 16), LIFETIME_BUCKETS - 1);
        assert_eq!(lifetime_bucket(u64::MAX), LIFETIME_BUCKETS - 1);
    }

    #[test]
    fn end_codes_round_trip() {
        for end in <End as crate::label::Label>::ALL {
            assert_eq!(End::from_code(*end as u64), Some(*end));
            assert!((*end as usize) < END_CODES);
        }
        assert_eq!(End::from_code(5), None);
    }

    #[test]
    fn pending_slots_split_by_side() {
        assert_eq!(pending_index(Side::Device, 0), 0);
        assert_eq!(
            pending_index(Side::Device, PENDING_SLOTS - 1),
            PENDING_SLOTS - 1
        );
        assert_eq!(pending_index(Side::Apple, 0), PENDING_SLOTS);
        assert_eq!(pending_index(Side::Apple, PENDING_SLOTS), PENDING_SLOTS);
        assert_eq!(
            pending_index(Side::Apple, PENDING_SLOTS - 1),
            PENDING_ENTRIES - 1
        );
        for index in 0..PENDING_ENTRIES {
            let side = pending_side(index);
            assert_eq!(pending_index(side, index), index);
        }
    }

    #[test]
    fn pending_counts_go_to_their_side() {
        let pending = Pending {
            packets: 3,
            bytes: 180,
            ..Pending::default()
        };
        let mut value = ConnValue {
            out_packets: 1,
            out_bytes: 60,
            in_packets: 2,
            in_bytes: 120,
            ..ConnValue::default()
        };
        value.add_pending(Side::Device, &pending);
        assert_eq!((value.out_packets, value.out_bytes), (4, 240));
        assert_eq!((value.in_packets, value.in_bytes), (2, 120));
        value.add_pending(Side::Apple, &pending);
        assert_eq!((value.in_packets, value.in_bytes), (5, 300));
    }
}
