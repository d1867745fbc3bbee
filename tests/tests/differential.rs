//! Differential test: generated and mutated frames classified by the real XDP program (in the
//! kernel, through BPF_PROG_TEST_RUN) and by the independent user-space reference built on
//! etherparse (`apns_tests::reference`). Any disagreement on verdict, outcome, direction, port
//! or TCP events fails, printing the frame. Needs root.
//!
//! The seed is fixed so CI is reproducible; `APNS_DIFF_SEED=<n>` explores others and
//! `APNS_DIFF_FRAMES=<n>` changes the count.

use std::io::Write as _;

use apns_common::counters::{CounterKey, CounterValue};
use apns_tests::{
    packets::Generator,
    reference::{self, Policy},
    xdp::{agent_policy, Classifier, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS},
};

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
    let classifier = Classifier::load(&agent_policy(policy)).unwrap();
    let mut generator = Generator::new(seed);
    let mut mismatches = 0;
    let mut total_bytes = 0;
    for index in 0..frames {
        let frame = generator.next_frame();
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
}
