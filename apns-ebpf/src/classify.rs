//! Applies the active policy generation to a TCP packet (docs/classification.md, section 5).
//!
//! Only array lookups on the common paths: the port table (an array) decides whether an
//! address needs to be judged at all, the prefilter (an array by the leading 16 bits) settles
//! most addresses, and only an address next to a long prefix pays for an LPM trie lookup.

use apns_common::{
    counters::{usable_slot, Direction, Outcome, OVERFLOW_SLOT},
    policy::{mode, port_index, role, PortEntry, PrefixV4, PrefixV6, GENERATION_PREFIX_BITS},
    prefilter::{table, table_index, verdict},
};
use aya_ebpf::maps::{lpm_trie::Key, LpmTrie};

use crate::{
    maps::{
        APNS_ACTIVE, APNS_ALLOW_V4, APNS_ALLOW_V6, APNS_POLICY, APNS_PORTS, APNS_PREFILTER,
        APNS_PROV_V4, APNS_PROV_V6,
    },
    parse::{Addrs, TcpPacket},
};

/// What the datapath made of a packet: the counter key minus the interface, with the port
/// as its counter slot.
pub struct Judgement {
    pub outcome: Outcome,
    pub direction: Direction,
    /// Counter slot of the APNs port; the overflow slot when the outcome has no port.
    pub port_slot: u32,
}

impl Judgement {
    /// A packet settled by parsing alone.
    #[inline(always)]
    pub fn class(outcome: Outcome) -> Self {
        Self {
            outcome,
            direction: Direction::None,
            port_slot: OVERFLOW_SLOT,
        }
    }
}

#[inline(always)]
pub fn judge(packet: &TcpPacket) -> Judgement {
    // A corrupt switch value still selects one of the two generations.
    let generation = APNS_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let dst = port_entry(generation, packet.dport);
    let dst_roles = dst.roles;

    if dst_roles != 0 && is_apple(generation, &packet.addrs, Endpoint::Destination) {
        let outcome = if dst_roles & role::PROVIDER != 0
            && provider_rule_applies(generation)
            && !is_provider(generation, &packet.addrs)
        {
            Outcome::DropProvider
        } else {
            Outcome::Pass
        };
        return Judgement {
            outcome,
            direction: Direction::Outbound,
            port_slot: usable_slot(u32::from(dst.slot)),
        };
    }

    let src = port_entry(generation, packet.sport);
    if src.roles != 0 && is_apple(generation, &packet.addrs, Endpoint::Source) {
        return Judgement {
            outcome: Outcome::Pass,
            direction: Direction::Inbound,
            port_slot: usable_slot(u32::from(src.slot)),
        };
    }

    // The destination port is a pinhole but the destination is not Apple (the outbound test
    // above failed): the pinhole is being used to reach someone else.
    if dst_roles & role::PINHOLE != 0 && enforcing(generation) {
        return Judgement {
            outcome: Outcome::DropPinhole,
            direction: Direction::None,
            port_slot: usable_slot(u32::from(dst.slot)),
        };
    }
    Judgement::class(Outcome::NotApns)
}

/// The port's entry in `generation`; a port not in the table has no roles.
#[inline(always)]
fn port_entry(generation: u32, port: u16) -> PortEntry {
    APNS_PORTS
        .get(port_index(generation, port))
        .copied()
        .unwrap_or_default()
}

/// `mode` and `provider_prefixes` of a generation; a missing entry reads as monitor.
#[inline(always)]
fn policy(generation: u32) -> (u32, u32) {
    match APNS_POLICY.get(generation) {
        Some(policy) => (policy.mode, policy.provider_prefixes),
        None => (mode::MONITOR, 0),
    }
}

#[inline(always)]
fn enforcing(generation: u32) -> bool {
    policy(generation).0 == mode::ENFORCE
}

#[inline(always)]
fn provider_rule_applies(generation: u32) -> bool {
    let (current_mode, provider_prefixes) = policy(generation);
    current_mode == mode::ENFORCE && provider_prefixes > 0
}

enum Endpoint {
    Source,
    Destination,
}

#[inline(always)]
fn is_apple(generation: u32, addrs: &Addrs, endpoint: Endpoint) -> bool {
    match (addrs, endpoint) {
        (Addrs::V4 { src, .. }, Endpoint::Source) => in_v4(ALLOW_V4, generation, src),
        (Addrs::V4 { dst, .. }, Endpoint::Destination) => in_v4(ALLOW_V4, generation, dst),
        (Addrs::V6 { src, .. }, Endpoint::Source) => in_v6(ALLOW_V6, generation, src),
        (Addrs::V6 { dst, .. }, Endpoint::Destination) => in_v6(ALLOW_V6, generation, dst),
    }
}

/// Whether the source is in the provider list.
#[inline(always)]
fn is_provider(generation: u32, addrs: &Addrs) -> bool {
    match addrs {
        Addrs::V4 { src, .. } => in_v4(PROVIDERS_V4, generation, src),
        Addrs::V6 { src, .. } => in_v6(PROVIDERS_V6, generation, src),
    }
}

/// One prefix list of one family: its prefilter tables and its trie.
struct List<K: 'static> {
    first: u32,
    /// IPv6's next-level table (unused for IPv4, whose first level is all it has).
    next: u32,
    trie: &'static LpmTrie<K, u8>,
}

const ALLOW_V4: List<PrefixV4> = List {
    first: table::ALLOW_V4,
    next: table::ALLOW_V4,
    trie: &APNS_ALLOW_V4,
};
const PROVIDERS_V4: List<PrefixV4> = List {
    first: table::PROVIDERS_V4,
    next: table::PROVIDERS_V4,
    trie: &APNS_PROV_V4,
};
const ALLOW_V6: List<PrefixV6> = List {
    first: table::ALLOW_V6,
    next: table::ALLOW_V6_NEXT,
    trie: &APNS_ALLOW_V6,
};
const PROVIDERS_V6: List<PrefixV6> = List {
    first: table::PROVIDERS_V6,
    next: table::PROVIDERS_V6_NEXT,
    trie: &APNS_PROV_V6,
};

/// The prefilter's verdict on a 16-bit bucket; a missing table (never, the array is sized
/// for every generation) reads as `ASK`, which is always safe.
#[inline(always)]
fn prefilter(generation: u32, table: u32, bucket: u16) -> u8 {
    match APNS_PREFILTER.get(table_index(generation, table)) {
        Some(table) => table.get(bucket),
        None => verdict::ASK,
    }
}

#[inline(always)]
fn in_v4(list: List<PrefixV4>, generation: u32, addr: &[u8; 4]) -> bool {
    match prefilter(
        generation,
        list.first,
        u16::from_be_bytes([addr[0], addr[1]]),
    ) {
        verdict::NONE => return false,
        verdict::ALL => return true,
        _ => {}
    }
    let data = PrefixV4 {
        generation: generation as u8,
        addr: *addr,
    };
    list.trie
        .get(Key::new(GENERATION_PREFIX_BITS + 32, data))
        .is_some()
}

#[inline(always)]
fn in_v6(list: List<PrefixV6>, generation: u32, addr: &[u8; 16]) -> bool {
    match prefilter(
        generation,
        list.first,
        u16::from_be_bytes([addr[0], addr[1]]),
    ) {
        verdict::NONE => return false,
        verdict::ALL => return true,
        _ => {}
    }
    if prefilter(
        generation,
        list.next,
        u16::from_be_bytes([addr[2], addr[3]]),
    ) == verdict::NONE
    {
        return false;
    }
    let data = PrefixV6 {
        generation: generation as u8,
        addr: *addr,
    };
    list.trie
        .get(Key::new(GENERATION_PREFIX_BITS + 128, data))
        .is_some()
}
