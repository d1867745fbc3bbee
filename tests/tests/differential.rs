//! Differential test: generated and mutated frames classified by the real XDP program (in the
//! kernel, through BPF_PROG_TEST_RUN) and by the independent user-space reference built on
//! etherparse (`apns_tests::reference`). Any disagreement on verdict, outcome, direction, port
//! or TCP events fails, printing the frame. Needs root.
//!
//! The seed is fixed so CI is reproducible; `APNS_DIFF_SEED=<n>` explores others and
//! `APNS_DIFF_FRAMES=<n>` changes the count.
//!
//! A second test aims at the prefix lookups (the prefilter tables in front of the short lists,
//! the long-prefix table and the LPM tries): policies with prefixes of every length around the
//! prefilter's 16- and 32-bit steps, and TCP segments whose addresses sit on, next to and near
//! those prefixes.

use std::{
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

use apns_common::counters::{CounterKey, CounterValue, Outcome};
use apns_tests::{
    packets::{self, Generator, ACK, FIN, RST, SYN},
    reference::{self, Policy},
    xdp::{agent_policy, Classifier, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS},
};
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

const DEFAULT_SEED: u64 = 0x0a9e_5eed;
const DEFAULT_FRAMES: usize = 100_000;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

/// Runs `frames` generated frames under `policy`; returns the number of mismatches.
fn compare(policy: &Policy, seed: u64, frames: usize) -> usize {
    let mut generator = Generator::new(seed);
    compare_frames(policy, seed, frames, || generator.next_frame())
}

/// Runs `frames` frames from `next` under `policy`; returns the number of mismatches.
fn compare_frames(
    policy: &Policy,
    seed: u64,
    frames: usize,
    mut next: impl FnMut() -> Vec<u8>,
) -> usize {
    let classifier = Classifier::load(&agent_policy(policy)).unwrap();
    let mut mismatches = 0;
    let mut total_bytes = 0;
    for index in 0..frames {
        let frame = next();
        total_bytes += frame.len() as u64;
        let expected = reference::classify(&frame, policy);
        let key = CounterKey {
            ifindex: TEST_RUN_IFINDEX,
            port: expected.port,
            direction: expected.direction as u8,
            outcome: expected.outcome as u8,
        };
        let before = classifier.counters.get(&key).unwrap();
        let action = classifier.run(&frame).unwrap();
        let after = classifier.counters.get(&key).unwrap();
        let want_action = if expected.drops() { XDP_DROP } else { XDP_PASS };
        let want_delta = CounterValue {
            packets: 1,
            bytes: frame.len() as u64,
            syn: expected.syn,
            synack: expected.synack,
            rst: expected.rst,
            fin: expected.fin,
        };
        let delta = after.since(&before);
        if action != want_action || delta != want_delta {
            mismatches += 1;
            if mismatches <= 10 {
                eprintln!(
                    "mismatch at frame {index} (seed {seed:#x}): reference {expected:?}, kernel action {action} and counter delta {delta:?} under the expected key\n  frame: {}",
                    frame.iter().map(|b| format!("{b:02x}")).collect::<String>()
                );
            }
        }
    }
    // Each frame raised its expected key by exactly one packet; if the totals also match, no
    // frame was counted anywhere else.
    let snapshot = classifier.snapshot().unwrap();
    assert_eq!(
        snapshot.packets(),
        frames as u64,
        "packets counted in total"
    );
    assert_eq!(
        snapshot.entries.values().map(|v| v.bytes).sum::<u64>(),
        total_bytes,
        "bytes counted in total"
    );
    assert_eq!(snapshot.lost, 0, "counter updates lost");
    mismatches
}

#[test]
fn kernel_and_reference_agree_on_generated_frames() {
    apns_tests::require_root!();
    let seed = env_number("APNS_DIFF_SEED", DEFAULT_SEED);
    let frames = env_number("APNS_DIFF_FRAMES", DEFAULT_FRAMES as u64) as usize;
    let enforcing = Generator::policy();
    let monitoring = Policy {
        enforce: false,
        ..Generator::policy()
    };
    let mismatches = compare(&enforcing, seed, frames) + compare(&monitoring, seed ^ 1, frames / 5);
    let total = frames + frames / 5;
    // Written to stderr directly, past libtest's capture: CI logs must show the count and seed.
    writeln!(std::io::stderr(), "differential: {total} frames (seed {seed:#x}: {frames} enforcing, {} monitoring with seed {:#x}), {mismatches} mismatches", frames / 5, seed ^ 1)
        .expect("stderr is writable");
    assert_eq!(
        mismatches, 0,
        "kernel and reference disagree (seed {seed:#x})"
    );
    // The frames include the evasions enforce must drop (tiny first fragments, deep chains).
    let mut generator = Generator::new(seed);
    let evasions = (0..frames)
        .filter(|_| {
            reference::classify(&generator.next_frame(), &enforcing).outcome
                == Outcome::DropUnfinished
        })
        .count();
    assert!(
        evasions >= frames / 100,
        "only {evasions} of {frames} frames were unfinished headers"
    );
}

/// Prefixes of every length around the prefilter's steps (16 bits; IPv6 also 32), nested,
/// overlapping and single hosts, in the allow-list and in the provider list. Every list but
/// the IPv6 allow-list fits a short list (`apns_common::prefilter::ShortList`); the IPv6
/// allow-list fits one only when monitoring: enforcing, it has three more prefixes (a /128
/// among them), so the trie answers for it.
fn prefix_policy(enforce: bool) -> Policy {
    let v4 = |list: &[([u8; 4], u8)]| {
        list.iter()
            .map(|&(addr, len)| (Ipv4Addr::from(addr), len))
            .collect::<Vec<_>>()
    };
    let v6 = |list: &[(&str, u8)]| {
        list.iter()
            .map(|&(addr, len)| (addr.parse::<Ipv6Addr>().expect("valid address"), len))
            .collect::<Vec<_>>()
    };
    let defaults = Policy::apple_defaults();
    let mut allow_v6 = defaults.allow_v6.clone();
    allow_v6.extend(v6(&[
        ("2a00::", 12),
        ("2a02::", 16),
        ("2001:db8::", 32),
        ("2001:db8:1234::", 48),
        ("3fff:2:8000::", 33),
        ("3fff:8000::", 17),
    ]));
    if enforce {
        allow_v6.extend(v6(&[
            ("2400:c000::", 20),
            ("fd00:1234:5678::", 48),
            ("2606:4700::1111", 128),
        ]));
    }
    Policy {
        enforce,
        allow_v4: v4(&[
            ([17, 0, 0, 0], 8),
            ([10, 16, 0, 0], 12),
            ([100, 64, 0, 0], 10),
            ([172, 16, 0, 0], 16),
            ([198, 18, 0, 0], 15),
            ([44, 128, 0, 0], 17),
            ([192, 168, 1, 0], 24),
            ([192, 168, 1, 128], 25),
            ([203, 0, 113, 7], 32),
        ]),
        allow_v6,
        providers_v4: v4(&[
            ([192, 0, 2, 0], 24),
            ([198, 51, 100, 64], 26),
            ([10, 20, 0, 0], 14),
        ]),
        providers_v6: v6(&[
            ("2001:db8:1::", 48),
            ("2a01:b740:a42:1::", 64),
            ("2602:fe::", 31),
        ]),
        ..defaults
    }
}

/// `prefix_policy(false)` enforcing, with lists too long for a short list that use at most
/// four lengths past /16 each, so that the long-prefix table answers for them
/// (`apns_common::prefilter::HashedLengths`): the IPv4 allow-list (/17, /24, /25, /32), the
/// IPv6 allow-list (/17, /32, /33, /48) and the IPv4 provider list (/24, /26).
fn hashed_prefix_policy() -> Policy {
    let mut policy = prefix_policy(false);
    policy.enforce = true;
    for third in 0..24u8 {
        let len = if third % 2 == 0 { 24 } else { 25 };
        policy
            .allow_v4
            .push((Ipv4Addr::new(192, 168, 10 + third, 0), len));
    }
    for third in 0..12u16 {
        let net = Ipv6Addr::new(0x2001, 0xdb8, 0x100 + third, 0, 0, 0, 0, 0);
        policy.allow_v6.push((net, 48));
    }
    for third in 0..10u8 {
        policy
            .providers_v4
            .push((Ipv4Addr::new(198, 51, 101 + third, 64), 26));
    }
    policy
}

/// Which of `policy`'s lists the long-prefix table answers for, as the agent decides it
/// (`ShortList` first, then `HashedLengths`): IPv4 allow, IPv6 allow, IPv4 providers, IPv6
/// providers.
fn hashed_lists(policy: &Policy) -> [bool; 4] {
    use apns_common::prefilter::{leading_v4, leading_v6, HashedLengths, ShortList};
    let hashed = |prefixes: Vec<(u64, u8)>| {
        ShortList::of_prefixes(prefixes.iter().copied()).complete == 0
            && HashedLengths::of_prefixes(prefixes).complete == 1
    };
    let v4 = |list: &[(Ipv4Addr, u8)]| {
        hashed(
            list.iter()
                .map(|(a, l)| (leading_v4(&a.octets()), *l))
                .collect(),
        )
    };
    let v6 = |list: &[(Ipv6Addr, u8)]| {
        hashed(
            list.iter()
                .map(|(a, l)| (leading_v6(&a.octets()), *l))
                .collect(),
        )
    };
    [
        v4(&policy.allow_v4),
        v6(&policy.allow_v6),
        v4(&policy.providers_v4),
        v6(&policy.providers_v6),
    ]
}

/// TCP segments between addresses on, next to and near `policy`'s prefixes (and random ones),
/// on the policy's ports and others.
struct PrefixFrames {
    rng: ChaCha8Rng,
    v4: Vec<(u32, u8)>,
    v6: Vec<(u128, u8)>,
    ports: Vec<u16>,
}

impl PrefixFrames {
    fn new(policy: &Policy, seed: u64) -> PrefixFrames {
        PrefixFrames {
            rng: ChaCha8Rng::seed_from_u64(seed),
            v4: policy
                .allow_v4
                .iter()
                .chain(&policy.providers_v4)
                .map(|&(addr, len)| (u32::from(addr), len))
                .collect(),
            v6: policy
                .allow_v6
                .iter()
                .chain(&policy.providers_v6)
                .map(|&(addr, len)| (u128::from(addr), len))
                .collect(),
            ports: policy.ports.keys().copied().collect(),
        }
    }

    /// An address on, next to or near one of the prefixes, or anywhere; `bits` wide.
    fn near(&mut self, prefixes: &[(u128, u8)], bits: u32) -> u128 {
        let (net, len) = prefixes[self.rng.random_range(0..prefixes.len())];
        let host_bits = bits - u32::from(len);
        let host_mask = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        let all = if bits == 128 {
            u128::MAX
        } else {
            (1u128 << bits) - 1
        };
        let random: u128 = self.rng.random::<u128>() & all;
        match self.rng.random_range(0..6) {
            // Inside.
            0 | 1 => net | (random & host_mask),
            // Just before its first or just after its last address.
            2 => net.wrapping_sub(1 + (random & 3)) & all,
            3 => (net | host_mask).wrapping_add(1 + (random & 3)) & all,
            // Same leading 16 (or, for IPv6, 32) bits, the rest random.
            4 => {
                let keep = if bits == 128 && self.rng.random() {
                    32
                } else {
                    16
                };
                let mask = all >> keep;
                (net & !mask & all) | (random & mask)
            }
            _ => random,
        }
    }

    fn next_frame(&mut self) -> Vec<u8> {
        let flags = [SYN, SYN | ACK, ACK, RST, FIN | ACK][self.rng.random_range(0..5)];
        let mut port = || {
            if self.rng.random_range(0..4) == 0 {
                self.rng.random::<u16>()
            } else {
                self.ports[self.rng.random_range(0..self.ports.len())]
            }
        };
        let (sport, dport) = (port(), port());
        if self.rng.random() {
            let v4: Vec<(u128, u8)> = self.v4.iter().map(|&(a, l)| (u128::from(a), l)).collect();
            let src = Ipv4Addr::from(self.near(&v4, 32) as u32);
            let dst = Ipv4Addr::from(self.near(&v4, 32) as u32);
            packets::tcp_v4(src, dst, sport, dport, flags).bytes()
        } else {
            let v6 = self.v6.clone();
            let src = Ipv6Addr::from(self.near(&v6, 128));
            let dst = Ipv6Addr::from(self.near(&v6, 128));
            packets::tcp_v6(src, dst, sport, dport, flags).bytes()
        }
    }
}

#[test]
fn kernel_and_reference_agree_on_prefixes_of_every_length() {
    apns_tests::require_root!();
    let seed = env_number("APNS_DIFF_SEED", DEFAULT_SEED) ^ 0x9f;
    let frames = env_number("APNS_DIFF_FRAMES", DEFAULT_FRAMES as u64) as usize / 3;
    let policies = [
        (prefix_policy(true), seed),
        (prefix_policy(false), seed ^ 1),
        (hashed_prefix_policy(), seed ^ 2),
    ];
    // Each way of answering for long prefixes is exercised: the tries (the enforcing IPv6
    // allow-list has a /128), short lists (the rest of the first two) and the long-prefix table.
    assert_eq!(hashed_lists(&policies[0].0), [false; 4]);
    assert_eq!(hashed_lists(&policies[2].0), [true, true, true, false]);
    let mut mismatches = 0;
    for (policy, seed) in &policies {
        let mut source = PrefixFrames::new(policy, *seed);
        mismatches += compare_frames(policy, *seed, frames, || source.next_frame());
    }
    writeln!(
        std::io::stderr(),
        "prefix differential: {} frames (seed {seed:#x}, enforcing, monitoring, hashed), {mismatches} mismatches",
        policies.len() * frames
    )
    .expect("stderr is writable");
    assert_eq!(
        mismatches, 0,
        "kernel and reference disagree (seed {seed:#x})"
    );
}
