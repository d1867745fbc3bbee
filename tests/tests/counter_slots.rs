//! The counters' overflow and retired slots (apns_common::counters): a packet of an
//! interface or a port without a counter slot of its own is counted under interface 0 / port
//! 0, and a recycled slot's counters move there before the slot changes hands. Each test
//! compares the whole snapshot with what it sent: nothing lost, nothing attributed to
//! another interface or port. Needs root.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    ops::RangeInclusive,
};

use apns_agent::datapath::{
    interfaces::FastPath,
    links::ifindex,
    policy::{Mode, Policy},
};
use apns_common::{
    counters::{CounterKey, CounterValue, Direction, Outcome, LAST_ASSIGNABLE_SLOT},
    maps::IFACES_MAX_ENTRIES,
    policy::role,
};
use apns_tests::{
    agent::counter_key,
    lab::{run, Lab, LabOptions, Role},
    packets::{self, SYN},
    xdp::{Classifier, XDP_PASS},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const APPLE: Ipv4Addr = Ipv4Addr::new(17, 249, 1, 10);

/// What the test sent, by the key it must be counted under.
#[derive(Default)]
struct Expected(BTreeMap<CounterKey, CounterValue>);

impl Expected {
    /// One SYN of `bytes` bytes, outbound to Apple, counted under (`ifindex`, `port`).
    fn syn(&mut self, ifindex: u32, port: u16, bytes: usize) {
        let value = self
            .0
            .entry(counter_key(
                ifindex,
                Direction::Outbound,
                port,
                Outcome::Pass,
            ))
            .or_default();
        value.packets += 1;
        value.bytes += bytes as u64;
        value.syn += 1;
    }

    /// Moves everything counted under `ifindex` to interface 0 (a recycled slot).
    fn retire_interface(&mut self, ifindex: u32) {
        self.retire(|key| key.ifindex == ifindex, |key| key.ifindex = 0);
    }

    /// Moves everything counted under `port` to port 0 (a recycled slot).
    fn retire_port(&mut self, port: u16) {
        self.retire(|key| key.port == port, |key| key.port = 0);
    }

    fn retire(&mut self, select: impl Fn(&CounterKey) -> bool, change: impl Fn(&mut CounterKey)) {
        let moved: Vec<(CounterKey, CounterValue)> = self
            .0
            .iter()
            .filter(|(key, _)| select(key))
            .map(|(key, value)| (*key, *value))
            .collect();
        for (mut key, value) in moved {
            self.0.remove(&key);
            change(&mut key);
            self.0.entry(key).or_default().add(&value);
        }
    }

    fn packets(&self) -> u64 {
        self.0.values().map(|value| value.packets).sum()
    }
}

fn check(classifier: &Classifier, expected: &Expected, when: &str) {
    let snapshot = classifier.snapshot().unwrap();
    assert_eq!(snapshot.entries, expected.0, "{when}: every counter");
    assert_eq!(
        snapshot.packets(),
        expected.packets(),
        "{when}: packets in total"
    );
    assert_eq!(snapshot.lost, 0, "{when}: lost counter updates");
    // The single-key reader agrees with the snapshot.
    for (key, value) in &expected.0 {
        assert_eq!(
            classifier.counters.get(key).unwrap(),
            *value,
            "{when}: CounterMaps::get({key:?})"
        );
    }
}

fn apple_policy(ports: impl IntoIterator<Item = u16>) -> Policy {
    Policy {
        mode: Mode::Monitor,
        ports: ports.into_iter().map(|port| (port, role::APNS)).collect(),
        allow: BTreeSet::from(["17.0.0.0/8".parse().unwrap()]),
        providers: BTreeSet::new(),
    }
}

fn ip(lab: &Lab, args: &[&str]) {
    run(lab.command(Role::Gw, "ip").args(args)).unwrap_or_else(|e| panic!("ip {args:?}: {e:#}"));
}

#[test]
fn interfaces_without_a_counter_slot_are_counted_under_interface_zero() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap_or_else(|e| panic!("building a lab: {e:#}"));
    // One veth more than there are slots, and one whose ifindex is past APNS_IFACES.
    let slots = LAST_ASSIGNABLE_SLOT as usize;
    let names: Vec<String> = (0..=slots).map(|i| format!("sl{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        ip(
            &lab,
            &[
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                &format!("sp{i}"),
            ],
        );
    }
    let big_index = (IFACES_MAX_ENTRIES + 100).to_string();
    ip(
        &lab,
        &[
            "link", "add", "slbig", "index", &big_index, "type", "veth", "peer", "name", "spbig",
        ],
    );
    let frame = packets::tcp_v4(CLIENT, APPLE, 40_000, 5223, SYN).bytes();

    lab.in_ns(Role::Gw, || {
        let index_of = |name: &str| ifindex(name).unwrap_or_else(|e| panic!("{e:#}"));
        let indexes: Vec<u32> = names.iter().map(|name| index_of(name)).collect();
        let big = index_of("slbig");
        assert_eq!(big, IFACES_MAX_ENTRIES + 100);
        let mut classifier = Classifier::load_unregistered(&Policy::apple_defaults()).unwrap();
        let mut expected = Expected::default();
        let send = |classifier: &Classifier, ifindex: u32| {
            let action = classifier.runner().run_on(&frame, ifindex).unwrap();
            assert_eq!(action, XDP_PASS, "SYN on ifindex {ifindex}");
        };

        // Not registered yet: counted in the overflow slot.
        send(&classifier, indexes[0]);
        expected.syn(0, 5223, frame.len());
        check(&classifier, &expected, "before any attach");

        // Every slot taken by an attached interface: the last one and the one past the array
        // have none. The packets counted before keep their key.
        for &index in &indexes {
            classifier
                .interfaces
                .register(index, FastPath::Pass)
                .unwrap();
        }
        classifier.interfaces.register(big, FastPath::Pass).unwrap();
        for (i, &index) in indexes.iter().enumerate() {
            send(&classifier, index);
            expected.syn(if i < slots { index } else { 0 }, 5223, frame.len());
        }
        send(&classifier, big);
        expected.syn(0, 5223, frame.len());
        check(&classifier, &expected, "with every slot in use");

        // The first interface is detached: the last one's next attach recycles its slot, and
        // the detached interface's counters move to interface 0 rather than to the newcomer.
        classifier.interfaces.unregister(indexes[0]).unwrap();
        classifier
            .interfaces
            .register(indexes[slots], FastPath::Pass)
            .unwrap();
        expected.retire_interface(indexes[0]);
        check(
            &classifier,
            &expected,
            "after recycling a detached interface's slot",
        );
        send(&classifier, indexes[slots]);
        expected.syn(indexes[slots], 5223, frame.len());
        // A packet still arriving on the detached interface has no slot any more.
        send(&classifier, indexes[0]);
        expected.syn(0, 5223, frame.len());
        check(
            &classifier,
            &expected,
            "after the recycled slot's first packets",
        );
    })
    .unwrap();
}

#[test]
fn ports_beyond_their_counter_slots_are_counted_under_port_zero_and_recycling_loses_nothing() {
    apns_tests::require_root!();
    let slots = LAST_ASSIGNABLE_SLOT as u16;
    // More ports than slots: the last five have none.
    let first: RangeInclusive<u16> = 2001..=2000 + slots + 5;
    let second: RangeInclusive<u16> = 3001..=3000 + slots;
    let mut classifier = Classifier::load(&apple_policy(first.clone())).unwrap();
    let mut expected = Expected::default();
    let send = |classifier: &Classifier, expected: &mut Expected, port: u16, counted_as: u16| {
        let frame = packets::tcp_v4(CLIENT, APPLE, 40_000, port, SYN).bytes();
        assert_eq!(classifier.run(&frame).unwrap(), XDP_PASS, "SYN to :{port}");
        expected.syn(apns_tests::xdp::TEST_RUN_IFINDEX, counted_as, frame.len());
    };

    for port in first.clone() {
        let counted_as = if port <= 2000 + slots { port } else { 0 };
        send(&classifier, &mut expected, port, counted_as);
    }
    check(&classifier, &expected, "more ports than slots");

    // A new port table while the first is still in force in the other generation: its slots
    // cannot be recycled yet, so every new port is counted under port 0.
    classifier
        .policy
        .apply(&apple_policy(second.clone()))
        .unwrap();
    for port in second.clone() {
        send(&classifier, &mut expected, port, 0);
    }
    check(&classifier, &expected, "while the old ports are in force");

    // Applied again, the first table is in neither generation: its ports' slots are recycled
    // for the new ports, and their counters move to port 0 first.
    classifier
        .policy
        .apply(&apple_policy(second.clone()))
        .unwrap();
    for port in first.clone().take(slots as usize) {
        expected.retire_port(port);
    }
    check(
        &classifier,
        &expected,
        "after recycling the old ports' slots",
    );
    for port in second.clone() {
        send(&classifier, &mut expected, port, port);
    }
    check(&classifier, &expected, "the new ports in their own slots");
    assert_eq!(
        expected.packets(),
        u64::from(first.len() as u16 + 2 * second.len() as u16)
    );
}
