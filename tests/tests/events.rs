//! Drop events: a flood of pinhole violations yields exactly the configured number of events
//! while every drop is counted; events carry the flow they describe. Needs root.

use std::net::Ipv4Addr;

use apns_agent::datapath::events::PolicyDrop;
use apns_common::{
    counters::{CounterKey, Direction, Outcome},
    events::EventConfig,
};
use apns_tests::{
    packets::{self, SYN},
    reference,
    xdp::{agent_policy, Classifier, TEST_RUN_IFINDEX, XDP_DROP},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NOT_APPLE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 130);
const FLOOD: u32 = 100_000;
const BUDGET: u32 = 50;

#[test]
fn a_flood_of_violations_yields_the_configured_number_of_events() {
    apns_tests::require_root!();
    let policy = reference::Policy {
        enforce: true,
        ..reference::Policy::apple_defaults()
    };
    // The rate limiter's state is per CPU: both runs below must land on the same CPU, or the
    // second one reads another CPU's (empty) state.
    apns_tests::bench::testrun::pin_current_thread(0).unwrap();
    let mut classifier = Classifier::load(&agent_policy(&policy)).unwrap();
    classifier
        .events
        .set_config(EventConfig {
            per_cpu_per_second: BUDGET,
            sample_every: 1,
        })
        .unwrap();
    let violation = packets::tcp_v4(CLIENT, NOT_APPLE, 40_000, 5223, SYN).bytes();

    // One BPF_PROG_TEST_RUN call runs the program FLOOD times on one CPU, well within one
    // second (the kernel reports the time per run): one rate-limit window.
    let (action, per_run) = classifier.runner().run_repeated(&violation, FLOOD).unwrap();
    assert_eq!(action, XDP_DROP);
    assert!(
        per_run * FLOOD < std::time::Duration::from_millis(500),
        "the flood took {:?}: more than one rate-limit window",
        per_run * FLOOD
    );

    let events = classifier.events.drain();
    assert_eq!(
        events.len(),
        BUDGET as usize,
        "events emitted for {FLOOD} drops"
    );
    let drops = classifier
        .snapshot()
        .unwrap()
        .get(&CounterKey {
            ifindex: TEST_RUN_IFINDEX,
            port: 5223,
            direction: Direction::None as u8,
            outcome: Outcome::DropPinhole as u8,
        })
        .packets;
    assert_eq!(drops, u64::from(FLOOD), "every drop counted");

    let first = PolicyDrop::from_event(&events[0], |index| format!("if{index}"));
    assert_eq!(
        (
            first.reason,
            first.protocol,
            first.src.to_string(),
            first.sport,
            first.dst.to_string(),
            first.dport
        ),
        (
            "pinhole",
            "tcp",
            CLIENT.to_string(),
            40_000,
            NOT_APPLE.to_string(),
            5223
        )
    );
    assert_eq!(first.interface, format!("if{TEST_RUN_IFINDEX}"));
    assert!(
        events.iter().all(|e| e.suppressed == 0),
        "no drop is skipped before the budget is spent"
    );

    // The next window reports how many drops went unreported in the previous one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    classifier.run(&violation).unwrap();
    let next = classifier.events.drain();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].suppressed, FLOOD - BUDGET);
}

#[test]
fn events_can_be_turned_off_and_sampled() {
    apns_tests::require_root!();
    let policy = reference::Policy {
        enforce: true,
        ..reference::Policy::apple_defaults()
    };
    let mut classifier = Classifier::load(&agent_policy(&policy)).unwrap();
    let violation = packets::tcp_v4(CLIENT, NOT_APPLE, 40_000, 2197, SYN).bytes();

    classifier
        .events
        .set_config(EventConfig {
            per_cpu_per_second: 0,
            sample_every: 1,
        })
        .unwrap();
    classifier.runner().run_repeated(&violation, 1_000).unwrap();
    assert!(classifier.events.drain().is_empty(), "events are off");

    classifier
        .events
        .set_config(EventConfig {
            per_cpu_per_second: 1_000,
            sample_every: 10,
        })
        .unwrap();
    classifier.runner().run_repeated(&violation, 1_000).unwrap();
    let sampled = classifier.events.drain();
    assert_eq!(sampled.len(), 100, "every 10th of 1,000 drops");
    assert!(sampled[1..].iter().all(|e| e.suppressed == 9));
}
