//! Applies the active policy generation to a TCP packet (docs/classification.md, section 5).
//!
//! Only array lookups on the common paths, two of them: the generation, then that
//! generation's tables (one value): the port table decides whether an address needs to be
//! judged at all, the prefilter (verdicts by the leading 16 bits) settles most addresses,
//! a list's short list settles those next to its long prefixes when it has few of them
//! (Apple's IPv6 /48s), the long-prefix table (two buckets of an array per prefix length)
//! those of a longer list of few lengths (a list of 100,000 /24s: one length), and only an
//! address next to a prefix of a list of many lengths, or of prefixes longer than /64, pays
//! for an LPM trie lookup.

use apns_common::{
    counters::{usable_slot, Direction, Outcome, OVERFLOW_SLOT},
    long_prefixes,
    policy::{mode, role, GenerationTables, PrefixV4, PrefixV6, GENERATION_PREFIX_BITS},
    prefilter::{leading_v4, leading_v6, short, table, verdict, HASHED_LENGTHS},
};
use aya_ebpf::maps::{lpm_trie::Key, LpmTrie};

use crate::{
    maps::{
        APNS_ACTIVE, APNS_ALLOW_V4, APNS_ALLOW_V6, APNS_LONG_PFX, APNS_POLICY, APNS_PROV_V4,
        APNS_PROV_V6, APNS_TABLES,
    },
    parse::{self, tcp_flag, Addrs, TcpPacket},
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

/// The policy generation a packet is judged by: its number (the tries' key prefix and
/// `APNS_POLICY`'s index) and its tables.
struct Generation {
    number: u32,
    tables: &'static GenerationTables,
}

/// The policy generation packets are judged by now (0 or 1).
#[inline(always)]
fn active() -> u32 {
    // A corrupt switch value still selects one of the two generations.
    APNS_ACTIVE.get(0).copied().unwrap_or(0) & 1
}

/// The judgement on a packet parsing alone settled (`outcome`): its class, but an
/// `unfinished` packet, which could hide an APNs-port packet from [`judge`], is dropped in
/// enforce mode (docs/classification.md, section 4).
#[inline(always)]
pub fn settled(outcome: Outcome) -> Judgement {
    if outcome == Outcome::Unfinished && enforcing(active()) {
        return Judgement::class(Outcome::DropUnfinished);
    }
    Judgement::class(outcome)
}

#[inline(always)]
pub fn judge(packet: &TcpPacket) -> Judgement {
    let number = active();
    let Some(tables) = APNS_TABLES.get(number) else {
        // Unreachable: the array holds both generations. No tables, no APNs port.
        return Judgement::class(Outcome::NotApns);
    };
    let generation = Generation { number, tables };
    // Port numbers index the table whole: a u16 is always in bounds (`bounded` shows the
    // verifier).
    let dst = tables.ports[parse::bounded(packet.dport)];
    let dst_roles = dst.roles;

    if dst_roles != 0 && is_apple(&generation, &packet.addrs, Endpoint::Destination) {
        let outcome = if dst_roles & role::PROVIDER != 0
            && provider_rule_applies(number)
            && !is_provider(&generation, &packet.addrs)
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

    let src = tables.ports[parse::bounded(packet.sport)];
    // A SYN without ACK opens a connection; from Apple's side that never happens on APNs.
    let opening = packet.flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN;
    if (src.roles != 0 || (opening && dst_roles != 0))
        && is_apple(&generation, &packet.addrs, Endpoint::Source)
    {
        // From Apple's APNs port, or (an attempt only) to an APNs port inside.
        let port = if src.roles != 0 { src.slot } else { dst.slot };
        let outcome = if !opening {
            Outcome::Pass
        } else if enforcing(number) {
            Outcome::DropInboundOpen
        } else {
            Outcome::InboundOpen
        };
        return Judgement {
            outcome,
            direction: Direction::Inbound,
            port_slot: usable_slot(u32::from(port)),
        };
    }

    // The destination port is a pinhole but the destination is not Apple (the outbound test
    // above failed): the pinhole is being used to reach someone else.
    if dst_roles & role::PINHOLE != 0 && enforcing(number) {
        return Judgement {
            outcome: Outcome::DropPinhole,
            direction: Direction::None,
            port_slot: usable_slot(u32::from(dst.slot)),
        };
    }
    Judgement::class(Outcome::NotApns)
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
fn is_apple(generation: &Generation, addrs: &Addrs, endpoint: Endpoint) -> bool {
    match (addrs, endpoint) {
        (Addrs::V4 { src, .. }, Endpoint::Source) => in_v4(ALLOW_V4, generation, src),
        (Addrs::V4 { dst, .. }, Endpoint::Destination) => in_v4(ALLOW_V4, generation, dst),
        (Addrs::V6 { src, .. }, Endpoint::Source) => in_v6(ALLOW_V6, generation, src),
        (Addrs::V6 { dst, .. }, Endpoint::Destination) => in_v6(ALLOW_V6, generation, dst),
    }
}

/// Whether the source is in the provider list.
#[inline(always)]
fn is_provider(generation: &Generation, addrs: &Addrs) -> bool {
    match addrs {
        Addrs::V4 { src, .. } => in_v4(PROVIDERS_V4, generation, src),
        Addrs::V6 { src, .. } => in_v6(PROVIDERS_V6, generation, src),
    }
}

/// One prefix list of one family: its prefilter tables, and its id for its short list,
/// hashed lengths, long-prefix table tag and trie ([`apns_long_prefix`]).
struct List {
    first: usize,
    /// IPv6's next-level table (unused for IPv4, whose first level is all it has).
    next: usize,
    short: usize,
}

const ALLOW_V4: List = List {
    first: table::ALLOW_V4,
    next: table::ALLOW_V4,
    short: short::ALLOW_V4,
};
const PROVIDERS_V4: List = List {
    first: table::PROVIDERS_V4,
    next: table::PROVIDERS_V4,
    short: short::PROVIDERS_V4,
};
const ALLOW_V6: List = List {
    first: table::ALLOW_V6,
    next: table::ALLOW_V6_NEXT,
    short: short::ALLOW_V6,
};
const PROVIDERS_V6: List = List {
    first: table::PROVIDERS_V6,
    next: table::PROVIDERS_V6_NEXT,
    short: short::PROVIDERS_V6,
};

/// The prefilter's verdict on the 16-bit bucket made of `high` and `low`.
#[inline(always)]
fn prefilter(generation: &Generation, table: usize, high: u8, low: u8) -> u8 {
    let bucket = parse::bounded(u16::from_be_bytes([high, low]));
    generation.tables.prefilter[table].get(bucket as u16)
}

/// Whether a long prefix (longer than /16) of list `id` covers the address whose leading and
/// trailing 64 bits are `high` and `low`: its short list answers inline when it holds the
/// whole list, [`apns_long_prefix`] otherwise.
#[inline(always)]
fn long_prefix(generation: &Generation, id: usize, high: u64, low: u64) -> bool {
    let short = &generation.tables.short[id];
    if short.complete != 0 {
        return short.covers(high);
    }
    apns_long_prefix(generation.number, id as u32, high, low) != 0
}

/// 1 when a long prefix of list `id` (a [`short`] id) in generation `generation` covers the
/// address whose leading and trailing 64 bits are `high` and `low` (IPv4: the address in the
/// upper half of `high`), else 0: from the long-prefix table where the list is hashed, else
/// from its LPM trie.
///
/// A global BPF function: the verifier checks it once, by itself (its arguments are plain
/// values, all 5.10 takes), where inlined code or a static function is checked again on
/// every path that reaches it. Inlined at every list's lookup, the table's compares (two
/// buckets of four slots a length) took Linux 5.10's verifier past its 1,000,000 instructions
/// with debug logging on, and a separate path for the table beside the trie's did the same
/// for the libxdp component on 5.10 and 6.1: one call for both leaves the caller one path.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn apns_long_prefix(generation: u32, id: u32, high: u64, low: u64) -> u32 {
    let Some(tables) = APNS_TABLES.get(generation) else {
        return 0;
    };
    let id = id as usize & (short::PER_GENERATION - 1);
    let hashed = &tables.hashed[id];
    if hashed.complete != 0 {
        let Some(table) = APNS_LONG_PFX.get(generation) else {
            return 0;
        };
        for index in 0..HASHED_LENGTHS {
            if index as u32 >= hashed.count {
                break;
            }
            let tag = long_prefixes::tag(id as u8, hashed.lengths[index]);
            if table.contains(high & hashed.masks[index], tag) {
                return 1;
            }
        }
        return 0;
    }
    let found = match id {
        short::ALLOW_V4 => in_trie_v4(&APNS_ALLOW_V4, generation, high),
        short::PROVIDERS_V4 => in_trie_v4(&APNS_PROV_V4, generation, high),
        short::ALLOW_V6 => in_trie_v6(&APNS_ALLOW_V6, generation, high, low),
        _ => in_trie_v6(&APNS_PROV_V6, generation, high, low),
    };
    u32::from(found)
}

#[inline(always)]
fn in_trie_v4(trie: &LpmTrie<PrefixV4, u8>, generation: u32, high: u64) -> bool {
    let [a, b, c, d, ..] = high.to_be_bytes();
    let data = PrefixV4 {
        generation: generation as u8,
        addr: [a, b, c, d],
    };
    trie.get(Key::new(GENERATION_PREFIX_BITS + 32, data))
        .is_some()
}

#[inline(always)]
fn in_trie_v6(trie: &LpmTrie<PrefixV6, u8>, generation: u32, high: u64, low: u64) -> bool {
    let mut addr = [0u8; 16];
    addr[..8].copy_from_slice(&high.to_be_bytes());
    addr[8..].copy_from_slice(&low.to_be_bytes());
    let data = PrefixV6 {
        generation: generation as u8,
        addr,
    };
    trie.get(Key::new(GENERATION_PREFIX_BITS + 128, data))
        .is_some()
}

#[inline(always)]
fn in_v4(list: List, generation: &Generation, addr: &[u8; 4]) -> bool {
    match prefilter(generation, list.first, addr[0], addr[1]) {
        verdict::NONE => return false,
        verdict::ALL => return true,
        _ => {}
    }
    long_prefix(generation, list.short, leading_v4(addr), 0)
}

#[inline(always)]
fn in_v6(list: List, generation: &Generation, addr: &[u8; 16]) -> bool {
    match prefilter(generation, list.first, addr[0], addr[1]) {
        verdict::NONE => return false,
        verdict::ALL => return true,
        _ => {}
    }
    if prefilter(generation, list.next, addr[2], addr[3]) == verdict::NONE {
        return false;
    }
    let low = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    long_prefix(generation, list.short, leading_v6(addr), low)
}
