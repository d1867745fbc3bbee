//! The real XDP program, run in the kernel through BPF_PROG_TEST_RUN on hand-made frames:
//! each case states the verdict and the exact counter change it must cause
//! (docs/classification.md). Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};

use apns_common::counters::{CounterKey, CounterValue, Direction, Outcome};
use apns_tests::{
    packets::{
        self, arp_request, icmpv6_neighbour_solicitation, Ext, Frame, ACK, FIN, RST, SYN,
        TPID_8021AD, TPID_8021Q,
    },
    reference,
    xdp::{agent_policy, Classifier, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const PROVIDER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const APPLE: Ipv4Addr = Ipv4Addr::new(17, 253, 1, 10);
const OTHER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10);
const PROVIDER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100);
const APPLE6: Ipv6Addr = Ipv6Addr::new(0x2620, 0x149, 0xa44, 0, 0, 0, 0, 0x10);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
const EPHEMERAL: u16 = 40_000;

/// Apple's defaults, enforcing, with one provider host per family.
fn enforcing() -> reference::Policy {
    reference::Policy {
        enforce: true,
        providers_v4: vec![(PROVIDER, 32)],
        providers_v6: vec![(PROVIDER6, 128)],
        ..reference::Policy::apple_defaults()
    }
}

fn monitoring() -> reference::Policy {
    reference::Policy {
        enforce: false,
        ..enforcing()
    }
}

fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Frame {
    packets::tcp_v4(src, dst, sport, dport, flags)
}

fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Frame {
    packets::tcp_v6(src, dst, sport, dport, flags)
}

/// What one packet must do: its verdict and the one counter entry it must change.
struct Expect {
    outcome: Outcome,
    direction: Direction,
    port: u16,
    /// (syn, synack, rst, fin) increments.
    tcp: (u64, u64, u64, u64),
}

fn apns(direction: Direction, port: u16, outcome: Outcome, tcp: (u64, u64, u64, u64)) -> Expect {
    Expect {
        outcome,
        direction,
        port,
        tcp,
    }
}

fn class(outcome: Outcome) -> Expect {
    Expect {
        outcome,
        direction: Direction::None,
        port: 0,
        tcp: (0, 0, 0, 0),
    }
}

const SYN_ONLY: (u64, u64, u64, u64) = (1, 0, 0, 0);
const NO_FLAGS: (u64, u64, u64, u64) = (0, 0, 0, 0);

/// Runs `frame` once and checks the verdict and that exactly one counter entry changed, by
/// exactly this packet.
fn check(classifier: &Classifier, name: &str, frame: &[u8], expect: &Expect) {
    let before = classifier.snapshot().unwrap();
    let action = classifier.run(frame).unwrap();
    let after = classifier.snapshot().unwrap();
    let want_action = if expect.outcome.is_drop() {
        XDP_DROP
    } else {
        XDP_PASS
    };
    assert_eq!(action, want_action, "{name}: XDP action");

    let key = CounterKey {
        ifindex: TEST_RUN_IFINDEX,
        port: expect.port,
        direction: expect.direction as u8,
        outcome: expect.outcome as u8,
    };
    let (syn, synack, rst, fin) = expect.tcp;
    let want = CounterValue {
        packets: 1,
        bytes: frame.len() as u64,
        syn,
        synack,
        rst,
        fin,
    };
    let mut changed = Vec::new();
    for (k, v) in &after.entries {
        let old = before.get(k);
        if *v != old {
            changed.push((*k, v.since(&old)));
        }
    }
    assert_eq!(changed, vec![(key, want)], "{name}: counter change");
    assert_eq!(after.lost, 0, "{name}: lost counter updates");
}

/// The hand-made cases under the enforcing policy.
fn enforcing_cases() -> Vec<(&'static str, Frame, Expect)> {
    use Direction::{Inbound, Outbound};
    use Outcome::*;
    vec![
        (
            "v4 SYN to Apple 5223",
            tcp4(CLIENT, APPLE, EPHEMERAL, 5223, SYN),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v4 SYN-ACK from Apple 5223",
            tcp4(APPLE, CLIENT, 5223, EPHEMERAL, SYN | ACK),
            apns(Inbound, 5223, Pass, (0, 1, 0, 0)),
        ),
        (
            "v4 RST from Apple 443",
            tcp4(APPLE, CLIENT, 443, EPHEMERAL, RST | ACK),
            apns(Inbound, 443, Pass, (0, 0, 1, 0)),
        ),
        (
            "v4 FIN to Apple 5223",
            tcp4(CLIENT, APPLE, EPHEMERAL, 5223, FIN | ACK),
            apns(Outbound, 5223, Pass, (0, 0, 0, 1)),
        ),
        (
            "v4 data to Apple 5223",
            tcp4(CLIENT, APPLE, EPHEMERAL, 5223, ACK).payload(100),
            apns(Outbound, 5223, Pass, NO_FLAGS),
        ),
        (
            "v6 SYN to Apple 443",
            tcp6(CLIENT6, APPLE6, EPHEMERAL, 443, SYN),
            apns(Outbound, 443, Pass, SYN_ONLY),
        ),
        (
            "v6 SYN-ACK from Apple 5223",
            tcp6(APPLE6, CLIENT6, 5223, EPHEMERAL, SYN | ACK),
            apns(Inbound, 5223, Pass, (0, 1, 0, 0)),
        ),
        (
            "v4 pinhole 5223 to non-Apple",
            tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN),
            apns(Direction::None, 5223, DropPinhole, SYN_ONLY),
        ),
        (
            "v6 pinhole 2196 to non-Apple",
            tcp6(CLIENT6, OTHER6, EPHEMERAL, 2196, SYN),
            apns(Direction::None, 2196, DropPinhole, SYN_ONLY),
        ),
        (
            "v4 443 to non-Apple",
            tcp4(CLIENT, OTHER, EPHEMERAL, 443, SYN),
            class(NotApns),
        ),
        (
            "v4 2197 to Apple from non-provider",
            tcp4(CLIENT, APPLE, EPHEMERAL, 2197, SYN),
            apns(Outbound, 2197, DropProvider, SYN_ONLY),
        ),
        (
            "v4 2197 to Apple from provider",
            tcp4(PROVIDER, APPLE, EPHEMERAL, 2197, SYN),
            apns(Outbound, 2197, Pass, SYN_ONLY),
        ),
        (
            "v6 2195 to Apple from provider",
            tcp6(PROVIDER6, APPLE6, EPHEMERAL, 2195, SYN),
            apns(Outbound, 2195, Pass, SYN_ONLY),
        ),
        (
            "v6 2195 to Apple from non-provider",
            tcp6(CLIENT6, APPLE6, EPHEMERAL, 2195, SYN),
            apns(Outbound, 2195, DropProvider, SYN_ONLY),
        ),
        (
            "v4 unlisted port to Apple",
            tcp4(CLIENT, APPLE, EPHEMERAL, 8080, SYN),
            class(NotApns),
        ),
        (
            "v4 1 VLAN tag",
            tcp4(CLIENT, APPLE, EPHEMERAL, 5223, SYN).vlan(TPID_8021Q),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v6 2 VLAN tags",
            tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN)
                .vlan(TPID_8021AD)
                .vlan(TPID_8021Q),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v4 2 VLAN tags pinhole",
            tcp4(CLIENT, OTHER, EPHEMERAL, 2197, SYN)
                .vlan(TPID_8021AD)
                .vlan(TPID_8021Q),
            apns(Direction::None, 2197, DropPinhole, SYN_ONLY),
        ),
        (
            "v4 3 VLAN tags",
            tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN)
                .vlan(TPID_8021AD)
                .vlan(TPID_8021Q)
                .vlan(TPID_8021Q),
            class(NotIp),
        ),
        (
            "v4 options",
            tcp4(CLIENT, APPLE, EPHEMERAL, 5223, SYN).ipv4_options(vec![1; 12]),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v4 40 bytes of options",
            tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN).ipv4_options(vec![1; 40]),
            apns(Direction::None, 5223, DropPinhole, SYN_ONLY),
        ),
        (
            "v4 TCP options",
            tcp4(CLIENT, APPLE, EPHEMERAL, 5223, SYN).tcp_option_words(10),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v6 HBH+routing+dstopts",
            tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN)
                .ext(Ext::HopByHop(0))
                .ext(Ext::Routing(1))
                .ext(Ext::DestinationOptions(2)),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v6 AH",
            tcp6(CLIENT6, OTHER6, EPHEMERAL, 5223, SYN).ext(Ext::Auth(4)),
            apns(Direction::None, 5223, DropPinhole, SYN_ONLY),
        ),
        (
            "v6 6 extension headers",
            six_exts(tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN)),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v6 7 extension headers",
            six_exts(tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN)).ext(Ext::DestinationOptions(0)),
            class(DropUnfinished),
        ),
        (
            "v6 AH length 0",
            tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN).ext(Ext::Auth(0)),
            class(Malformed),
        ),
        (
            "v4 later fragment",
            tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN).fragment(100, true),
            class(Fragment),
        ),
        (
            "v4 last fragment",
            tcp4(CLIENT, APPLE, EPHEMERAL, 5223, SYN).fragment(7, false),
            class(Fragment),
        ),
        (
            "v4 first fragment",
            tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN)
                .fragment(0, true)
                .payload(64),
            apns(Direction::None, 5223, DropPinhole, SYN_ONLY),
        ),
        (
            "v6 later fragment",
            tcp6(CLIENT6, OTHER6, EPHEMERAL, 5223, SYN).fragment(100, true),
            class(Fragment),
        ),
        (
            "v6 first fragment",
            tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN).fragment(0, true),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v6 atomic fragment",
            tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN).fragment(0, false),
            apns(Outbound, 5223, Pass, SYN_ONLY),
        ),
        (
            "v4 UDP to Apple 5223",
            packets::udp_v4(CLIENT, APPLE, EPHEMERAL, 5223),
            class(NotApns),
        ),
        (
            "v6 UDP to non-Apple 5223",
            packets::udp_v6(CLIENT6, OTHER6, EPHEMERAL, 5223),
            class(NotApns),
        ),
        (
            "v6 neighbour solicitation",
            icmpv6_neighbour_solicitation(),
            class(NotApns),
        ),
    ]
}

fn six_exts(frame: Frame) -> Frame {
    frame
        .ext(Ext::HopByHop(0))
        .ext(Ext::DestinationOptions(0))
        .ext(Ext::Routing(0))
        .ext(Ext::Fragment {
            offset: 0,
            more: false,
        })
        .ext(Ext::Auth(1))
        .ext(Ext::DestinationOptions(1))
}

#[test]
fn crafted_packets_get_their_verdict_and_counters() {
    apns_tests::require_root!();
    let policy = enforcing();
    let classifier = Classifier::load(&agent_policy(&policy)).unwrap();
    for (name, frame, expect) in enforcing_cases() {
        let bytes = frame.bytes();
        // The reference must agree with the hand-written expectation too.
        let reference = reference::classify(&bytes, &policy);
        assert_eq!(
            (reference.outcome, reference.direction, reference.port),
            (expect.outcome, expect.direction, expect.port),
            "{name}: reference classifier"
        );
        check(&classifier, name, &bytes, &expect);
    }
    for (name, bytes) in tiny_first_fragments() {
        let expect = class(Outcome::DropUnfinished);
        assert_eq!(
            reference::classify(&bytes, &policy).outcome,
            Outcome::DropUnfinished,
            "{name}: reference classifier"
        );
        check(&classifier, &name, &bytes, &expect);
    }
    check(
        &classifier,
        "ARP request",
        &arp_request(),
        &class(Outcome::NotIp),
    );
    let lldp = packets::ethernet_frame(&[], 0x88cc, &[0; 32]);
    check(&classifier, "LLDP", &lldp, &class(Outcome::NotIp));
}

/// The tiny-fragment evasion (docs/classification.md, "Unfinished headers"): a pinhole SYN
/// whose first fragment ends after 8 bytes of its TCP header, over IPv4 and IPv6.
fn tiny_first_fragments() -> Vec<(String, Vec<u8>)> {
    [
        ("v4", tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN)),
        ("v6", tcp6(CLIENT6, OTHER6, EPHEMERAL, 5223, SYN)),
    ]
    .into_iter()
    .map(|(family, frame)| {
        let built = frame.fragment(0, true).build();
        (
            format!("{family} first fragment with 8 bytes of TCP"),
            packets::cut_at(&built, built.l4 + 8),
        )
    })
    .collect()
}

#[test]
fn monitor_mode_never_drops() {
    apns_tests::require_root!();
    let classifier = Classifier::load(&agent_policy(&monitoring())).unwrap();
    use Direction::Outbound;
    let cases = [
        (
            "pinhole 5223 to non-Apple",
            tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN),
            class(Outcome::NotApns),
        ),
        (
            "v6 pinhole to non-Apple",
            tcp6(CLIENT6, OTHER6, EPHEMERAL, 2197, SYN),
            class(Outcome::NotApns),
        ),
        (
            "2197 from non-provider",
            tcp4(CLIENT, APPLE, EPHEMERAL, 2197, SYN),
            apns(Outbound, 2197, Outcome::Pass, SYN_ONLY),
        ),
    ];
    for (name, frame, expect) in cases {
        check(&classifier, name, &frame.bytes(), &expect);
    }
    let deep =
        six_exts(tcp6(CLIENT6, OTHER6, EPHEMERAL, 5223, SYN)).ext(Ext::DestinationOptions(0));
    let unfinished = class(Outcome::Unfinished);
    check(
        &classifier,
        "v6 7 extension headers",
        &deep.bytes(),
        &unfinished,
    );
    for (name, bytes) in tiny_first_fragments() {
        check(&classifier, &name, &bytes, &unfinished);
    }
}

#[test]
fn every_truncation_at_a_header_boundary_is_malformed() {
    apns_tests::require_root!();
    let classifier = Classifier::load(&agent_policy(&enforcing())).unwrap();
    let mut truncations = 0;
    for (name, frame, expect) in enforcing_cases() {
        if expect.outcome == Outcome::NotIp {
            continue; // the third VLAN tag ends parsing before any length is read
        }
        let built = frame.build();
        for &boundary in built
            .boundaries
            .iter()
            .filter(|&&b| b >= packets::MIN_FRAME && b < built.bytes.len())
        {
            let cut = &built.bytes[..boundary];
            check(
                &classifier,
                &format!("{name} cut at {boundary}"),
                cut,
                &class(Outcome::Malformed),
            );
            truncations += 1;
        }
    }
    eprintln!("{truncations} truncated frames checked");
    assert!(truncations >= 100, "only {truncations} truncations");
}

#[test]
fn policy_swap_changes_the_next_verdict() {
    apns_tests::require_root!();
    let mut policy = enforcing();
    let mut classifier = Classifier::load(&agent_policy(&policy)).unwrap();
    let frame = tcp4(CLIENT, OTHER, EPHEMERAL, 5223, SYN).bytes();
    check(
        &classifier,
        "before",
        &frame,
        &apns(Direction::None, 5223, Outcome::DropPinhole, SYN_ONLY),
    );
    policy.allow_v4.push((Ipv4Addr::new(203, 0, 113, 0), 24));
    classifier.policy.apply(&agent_policy(&policy)).unwrap();
    check(
        &classifier,
        "after allow",
        &frame,
        &apns(Direction::Outbound, 5223, Outcome::Pass, SYN_ONLY),
    );
    policy.allow_v4.pop();
    classifier.policy.apply(&agent_policy(&policy)).unwrap();
    check(
        &classifier,
        "after del",
        &frame,
        &apns(Direction::None, 5223, Outcome::DropPinhole, SYN_ONLY),
    );
    assert_eq!(
        classifier.policy.read_active().unwrap(),
        agent_policy(&policy)
    );
}

/// The connection table counts every packet of a connection exactly, both sides, whether the
/// datapath wrote the connection's entry for it or only added it to its CPU's pending slot
/// (a plain packet in the scheduler tick of an earlier one): the agent's read adds the slots.
/// More connections than a CPU has slots per side, each sending two packets per call (the
/// second one pending), so that connections share slots and hand each other's counts to
/// their entries; then bursts of one connection per family in one BPF_PROG_TEST_RUN call,
/// most of whose packets share a tick.
#[test]
fn the_connection_table_counts_every_packet_exactly() {
    apns_tests::require_root!();
    use apns_agent::datapath::interfaces::InterfaceRole;
    use apns_common::{
        conns::{Pending, PENDING_SLOTS},
        maps::CONN_PENDING,
    };
    use apns_tests::{bench::testrun, packets::PSH, xdp::map_handle};
    use aya::maps::PerCpuArray;
    use std::collections::BTreeMap;

    let mut classifier = Classifier::load(&agent_policy(&monitoring())).unwrap();
    classifier
        .interfaces
        .set_role(TEST_RUN_IFINDEX, InterfaceRole::Devices)
        .unwrap();
    classifier.load_tc_conns().unwrap();
    let connections = 2 * PENDING_SLOTS as u16 + 88;
    const ROUNDS: u64 = 3;
    const BURST: u32 = 1000;
    const TC_NEXT: i32 = -1;
    let ports = EPHEMERAL..EPHEMERAL + connections;
    let (syn, data, answer) = (
        |port| tcp4(CLIENT, APPLE, port, 5223, SYN).bytes(),
        |port| {
            tcp4(CLIENT, APPLE, port, 5223, ACK | PSH)
                .payload(100)
                .bytes()
        },
        |port| {
            tcp4(APPLE, CLIENT, 5223, port, ACK | PSH)
                .payload(300)
                .bytes()
        },
    );
    let runner = classifier.runner();
    let tc_conns =
        testrun::tc_program(classifier.object(), apns_common::programs::TC_CONNS).unwrap();
    let run_tc = |frame: &[u8], repeat| testrun::tc_test_run(tc_conns, frame, repeat).unwrap().0;
    for port in ports.clone() {
        assert_eq!(classifier.run(&syn(port)).unwrap(), XDP_PASS);
    }
    const PAIR: u32 = 2;
    for _ in 0..ROUNDS {
        for port in ports.clone() {
            assert_eq!(runner.run_repeated(&data(port), PAIR).unwrap().0, XDP_PASS);
            assert_eq!(run_tc(&answer(port), PAIR), TC_NEXT);
        }
    }
    // Out (packets, bytes) and in (packets, bytes) each connection must have.
    let mut expected: BTreeMap<(u8, u16), [u64; 4]> = ports
        .clone()
        .map(|port| {
            let sent = ROUNDS * u64::from(PAIR);
            let out = syn(port).len() as u64 + sent * data(port).len() as u64;
            let inbound = sent * answer(port).len() as u64;
            ((4, port), [1 + sent, out, sent, inbound])
        })
        .collect();
    let six = (
        tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, SYN).bytes(),
        tcp6(CLIENT6, APPLE6, EPHEMERAL, 5223, ACK | PSH)
            .payload(100)
            .bytes(),
        tcp6(APPLE6, CLIENT6, 5223, EPHEMERAL, ACK | PSH)
            .payload(300)
            .bytes(),
    );
    assert_eq!(classifier.run(&six.0).unwrap(), XDP_PASS);
    expected.insert((6, EPHEMERAL), [1, six.0.len() as u64, 0, 0]);
    let pending_map: PerCpuArray<_, Pending> =
        PerCpuArray::try_from(map_handle(classifier.object(), CONN_PENDING).unwrap()).unwrap();
    let pending_packets = || -> u64 {
        (0..2 * PENDING_SLOTS)
            .flat_map(|index| {
                pending_map
                    .get(&index, 0)
                    .unwrap()
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .map(|slot| slot.packets)
            .sum()
    };
    // A burst's last packets wait in its slot unless the last one began a tick: a few
    // bursts make sure the read's adding them is tested.
    for burst in 1..=3 {
        let (v4_out, v4_in) = (data(EPHEMERAL), answer(EPHEMERAL));
        assert_eq!(runner.run_repeated(&v4_out, BURST).unwrap().0, XDP_PASS);
        assert_eq!(run_tc(&v4_in, BURST), TC_NEXT);
        assert_eq!(runner.run_repeated(&six.1, BURST).unwrap().0, XDP_PASS);
        assert_eq!(run_tc(&six.2, BURST), TC_NEXT);
        let burst_counts = |out: &[u8], inbound: &[u8]| {
            let n = u64::from(BURST);
            [n, n * out.len() as u64, n, n * inbound.len() as u64]
        };
        for (key, add) in [
            ((4, EPHEMERAL), burst_counts(&v4_out, &v4_in)),
            ((6, EPHEMERAL), burst_counts(&six.1, &six.2)),
        ] {
            let counts = expected.get_mut(&key).unwrap();
            for (count, more) in counts.iter_mut().zip(add) {
                *count += more;
            }
        }
        if pending_packets() > 0 {
            break;
        }
        assert!(
            burst < 3,
            "no count was ever left pending: the per-tick path never ran"
        );
    }
    let table = classifier.conns.read().unwrap();
    let counted: BTreeMap<(u8, u16), [u64; 4]> = table
        .entries
        .iter()
        .map(|(key, value)| {
            (
                (key.ip_version, key.device_port),
                [
                    value.out_packets,
                    value.out_bytes,
                    value.in_packets,
                    value.in_bytes,
                ],
            )
        })
        .collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(key, counts)| counted.get(key) != Some(counts))
        .map(|(key, counts)| (key, counts, counted.get(key)))
        .collect();
    assert!(
        wrong.is_empty() && counted.len() == expected.len(),
        "{} of {} connections counted wrong ((version, port), expected [out packets, out \
         bytes, in packets, in bytes], counted), the first: {:?}",
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(3)]
    );
    assert_eq!(table.stats.made, u64::from(connections) + 1);
}
