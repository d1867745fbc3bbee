//! Whole-policy swaps are atomic: while one thread swaps between two policies 1,000 times,
//! another runs the real XDP program (BPF_PROG_TEST_RUN) on a probe packet over and over, and
//! every run is judged by policy A or by policy B, never by a mix of the two. Needs root.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
};

use apns_common::{
    counters::{CounterKey, Direction, Outcome},
    policy::role,
};
use apns_tests::{
    packets::{self, SYN},
    reference,
    xdp::{agent_policy, Classifier, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// Not Apple: in policy B's allow-list only.
const PROBE_DST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 130);
const PROBE_PORT: u16 = 5223;
const SWAPS: usize = 1_000;
/// Runs per BPF_PROG_TEST_RUN call. Only 1: with more, the kernel swaps the XDP dispatcher in
/// and out around every call (milliseconds of RCU waits), and the probe would barely run.
const REPEAT: u32 = 1;
/// Filler prefixes per policy, so that writing a generation takes long enough for the
/// datapath to run many times in the middle of it.
const FILLER: u8 = 64;

/// A: Apple's defaults, enforcing: the probe (TCP to a non-Apple host on 5223) is a pinhole
/// violation, dropped.
fn policy_a(variant: u8) -> reference::Policy {
    let mut policy = reference::Policy {
        enforce: true,
        ..reference::Policy::apple_defaults()
    };
    policy.allow_v4.extend(filler(variant));
    policy
}

/// Prefixes that differ from one variant to the next, so every swap rewrites the generation.
fn filler(variant: u8) -> impl Iterator<Item = (Ipv4Addr, u8)> {
    (0..FILLER).map(move |i| (Ipv4Addr::new(100, 64 + variant % 4, i, 0), 24))
}

/// B: the probe's destination is allowed but 5223 is not in the port table: not APNs. A mix
/// of A's port table and B's allow-list would pass the probe as outbound APNs instead, and a
/// mix the other way round would count it as not APNs but under A's verdict.
fn policy_b(variant: u8) -> reference::Policy {
    let mut policy = reference::Policy {
        enforce: true,
        ports: [(443, role::APNS), (8443, role::APNS | role::PINHOLE)].into(),
        allow_v4: vec![(Ipv4Addr::new(203, 0, 113, 128), 25)],
        ..reference::Policy::apple_defaults()
    };
    policy.allow_v4.extend(filler(variant));
    policy
}

fn key(direction: Direction, port: u16, outcome: Outcome) -> CounterKey {
    CounterKey {
        ifindex: TEST_RUN_IFINDEX,
        port,
        direction: direction as u8,
        outcome: outcome as u8,
    }
}

#[test]
fn swaps_under_traffic_never_judge_by_a_half_applied_policy() {
    apns_tests::require_root!();
    let a = |variant| agent_policy(&policy_a(variant));
    let b = |variant| agent_policy(&policy_b(variant));
    let probe = packets::tcp_v4(CLIENT, PROBE_DST, 40_000, PROBE_PORT, SYN).bytes();
    // What each policy alone does with the probe, per the reference.
    assert_eq!(
        reference::classify(&probe, &policy_a(0)).outcome,
        Outcome::DropPinhole
    );
    assert_eq!(
        reference::classify(&probe, &policy_b(0)).outcome,
        Outcome::NotApns
    );

    let mut classifier = Classifier::load(&a(0)).unwrap();
    let done = AtomicBool::new(false);
    let (runner, policy_maps) = classifier.split();
    let (calls, drops, passes) = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let (mut calls, mut drops, mut passes) = (0u64, 0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                let (action, _) = runner.run_repeated(&probe, REPEAT).unwrap();
                calls += 1;
                match action {
                    XDP_DROP => drops += 1,
                    XDP_PASS => passes += 1,
                    other => panic!("unexpected XDP action {other}"),
                }
            }
            (calls, drops, passes)
        });
        // Kinds go B B A A B B ...: generations are written alternately, so each write turns
        // the inactive generation from one kind into the other while packets run.
        let mut last = a(0);
        for swap in 0..SWAPS {
            let variant = (swap % 251) as u8;
            last = if (swap / 2) % 2 == 0 {
                b(variant)
            } else {
                a(variant)
            };
            policy_maps.apply(&last).unwrap();
        }
        assert!(
            last == a(((SWAPS - 1) % 251) as u8),
            "the schedule ends on A"
        );
        done.store(true, Ordering::Relaxed);
        traffic.join().unwrap()
    });
    let runs = calls * u64::from(REPEAT);

    let snapshot = classifier.snapshot().unwrap();
    let pinhole = snapshot
        .get(&key(Direction::None, PROBE_PORT, Outcome::DropPinhole))
        .packets;
    let not_apns = snapshot
        .get(&key(Direction::None, 0, Outcome::NotApns))
        .packets;
    eprintln!(
        "{SWAPS} swaps, {runs} probe runs: {pinhole} judged by A (pinhole drop), {not_apns} by B (not APNs); {drops} calls ended in a drop, {passes} in a pass"
    );
    assert_eq!(snapshot.packets(), runs, "every run counted once");
    assert_eq!(
        pinhole + not_apns,
        runs,
        "runs judged by neither A nor B (a half-applied policy): {:?}",
        snapshot.entries
    );
    assert!(
        pinhole > 0 && not_apns > 0,
        "both policies were in force at some point"
    );
    assert_eq!(
        classifier.policy.read_active().unwrap(),
        a(((SWAPS - 1) % 251) as u8),
        "the last swap is in force"
    );
}
