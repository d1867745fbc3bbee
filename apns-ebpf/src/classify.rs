//! Applies the active policy generation to a TCP packet (docs/classification.md, section 5).
//!
//! Lookups are ordered cheapest first: the port table (an array) decides whether the LPM
//! tries need to be consulted at all, so non-APNs traffic costs two array reads.

use apns_common::{
    counters::{Direction, Outcome},
    policy::{mode, port_index, role, PrefixV4, PrefixV6, GENERATION_PREFIX_BITS},
};
use aya_ebpf::maps::{lpm_trie::Key, LpmTrie};

use crate::{
    maps::{
        APNS_ACTIVE, APNS_ALLOW_V4, APNS_ALLOW_V6, APNS_POLICY, APNS_PORTS, APNS_PROV_V4,
        APNS_PROV_V6,
    },
    parse::{Addrs, TcpPacket},
};

/// What the datapath made of a packet: the counter key minus the interface.
pub struct Judgement {
    pub outcome: Outcome,
    pub direction: Direction,
    /// APNs port in host byte order, 0 when the outcome has none.
    pub port: u16,
}

impl Judgement {
    /// A packet settled by parsing alone.
    #[inline(always)]
    pub fn class(outcome: Outcome) -> Self {
        Self {
            outcome,
            direction: Direction::None,
            port: 0,
        }
    }
}

#[inline(always)]
pub fn judge(packet: &TcpPacket) -> Judgement {
    // A corrupt switch value still selects one of the two generations.
    let generation = APNS_ACTIVE.get(0).copied().unwrap_or(0) & 1;
    let dst_roles = port_roles(generation, packet.dport);

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
            port: packet.dport,
        };
    }

    if port_roles(generation, packet.sport) != 0
        && is_apple(generation, &packet.addrs, Endpoint::Source)
    {
        return Judgement {
            outcome: Outcome::Pass,
            direction: Direction::Inbound,
            port: packet.sport,
        };
    }

    // The destination port is a pinhole but the destination is not Apple (the outbound test
    // above failed): the pinhole is being used to reach someone else.
    if dst_roles & role::PINHOLE != 0 && enforcing(generation) {
        return Judgement {
            outcome: Outcome::DropPinhole,
            direction: Direction::None,
            port: packet.dport,
        };
    }
    Judgement::class(Outcome::NotApns)
}

#[inline(always)]
fn port_roles(generation: u32, port: u16) -> u8 {
    APNS_PORTS
        .get(port_index(generation, port))
        .copied()
        .unwrap_or(0)
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
        (Addrs::V4 { src, .. }, Endpoint::Source) => in_v4(&APNS_ALLOW_V4, generation, *src),
        (Addrs::V4 { dst, .. }, Endpoint::Destination) => in_v4(&APNS_ALLOW_V4, generation, *dst),
        (Addrs::V6 { src, .. }, Endpoint::Source) => in_v6(&APNS_ALLOW_V6, generation, *src),
        (Addrs::V6 { dst, .. }, Endpoint::Destination) => in_v6(&APNS_ALLOW_V6, generation, *dst),
    }
}

/// Whether the source is in the provider list.
#[inline(always)]
fn is_provider(generation: u32, addrs: &Addrs) -> bool {
    match addrs {
        Addrs::V4 { src, .. } => in_v4(&APNS_PROV_V4, generation, *src),
        Addrs::V6 { src, .. } => in_v6(&APNS_PROV_V6, generation, *src),
    }
}

#[inline(always)]
fn in_v4(trie: &LpmTrie<PrefixV4, u8>, generation: u32, addr: [u8; 4]) -> bool {
    let data = PrefixV4 {
        generation: generation as u8,
        addr,
    };
    trie.get(Key::new(GENERATION_PREFIX_BITS + 32, data))
        .is_some()
}

#[inline(always)]
fn in_v6(trie: &LpmTrie<PrefixV6, u8>, generation: u32, addr: [u8; 16]) -> bool {
    let data = PrefixV6 {
        generation: generation as u8,
        addr,
    };
    trie.get(Key::new(GENERATION_PREFIX_BITS + 128, data))
        .is_some()
}
