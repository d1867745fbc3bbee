//! End-to-end scenarios: `apns-agent run` in a lab's gateway, attached to lan0 (client), lan1
//! (MDM), lan2 (the 802.1Q trunk to the VLAN host) and wan0, while LAN hosts open real TCP
//! connections to the Apple and the non-Apple echo servers. Each scenario asserts the *exact*
//! counters its connections must produce, per interface, direction, port and outcome, and
//! that the verdicts (connection works or times out) follow the policy; then that stopping
//! the agent and dropping the pins and the lab leave nothing behind.
//!
//! What is exact: the TCP flag counts (`syn`, `synack`, `rst`, `fin`). Every connection is one
//! echo exchange that both sides close in order, so it sends exactly one SYN and one FIN from
//! the LAN host (counted on its LAN interface) and one SYN-ACK and one FIN from the server
//! (counted on wan0), and no RST; every one of those segments has crossed the gateway's XDP
//! program by the time the exchange returns (the client read the server's FIN, which the
//! server sent after it read the client's FIN). What adds to them is a TCP retransmission,
//! which crosses the gateway again (a FIN is resent after a stall of about 200 ms, seen under
//! CPU contention on the VLAN path, whose 802.1Q relay is a user-space thread; a SYN or
//! SYN-ACK after 1 s), and the RST that a late duplicate may draw. So each check also reads
//! the lab's TCP counters of retransmitted and reset segments: with none (the normal case)
//! the flag counts must match exactly, otherwise exceed by no more than those. Packet and
//! byte counts of passed traffic depend on delayed ACKs and are only bounded; a dropped SYN
//! is the only packet of its attempt (it is given less than the 1 s before a SYN is resent),
//! so drops are exact in packets too. Needs root; every scenario builds its own lab and pin
//! directory, so they run in parallel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr},
    path::Path,
    thread,
    time::Duration,
};

use apns_common::counters::{CounterValue, Direction, Outcome};
use apns_tests::{
    agent::{self, TestPins},
    lab::{
        Iface, Lab, LabOptions, Role, APNS_PORTS, APPLE, GW_IF_CLIENT, GW_IF_MDM, GW_IF_TRUNK,
        GW_IF_WAN, GW_WAN, MDM, NETNS_DIR, OTHER, REFUSED,
    },
};

/// Bounds every connection, echo and wait that should succeed.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Connections per host, address family and port.
const CONNECTIONS: u64 = 3;
/// The LAN hosts and the gateway interface each one's packets arrive on.
const LAN_HOSTS: [(Role, Iface); 3] = [
    (Role::Client, GW_IF_CLIENT),
    (Role::Mdm, GW_IF_MDM),
    (Role::Vlan, GW_IF_TRUNK),
];

/// A counter key as a reader wants it: gateway interface, direction, port, outcome.
type Key = (&'static str, Direction, u16, Outcome);

/// The TCP flag counts of one counter: the part that a known set of connections fixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flags {
    syn: u64,
    synack: u64,
    rst: u64,
    fin: u64,
}

impl Flags {
    fn of(value: &CounterValue) -> Flags {
        Flags {
            syn: value.syn,
            synack: value.synack,
            rst: value.rst,
            fin: value.fin,
        }
    }

    fn is_zero(self) -> bool {
        self == Flags::default()
    }

    /// `self - earlier`, field by field; counters never go back.
    fn since(self, earlier: Flags) -> Flags {
        let sub = |now: u64, then: u64| {
            now.checked_sub(then)
                .unwrap_or_else(|| panic!("a counter went back: {earlier:?} -> {self:?}"))
        };
        Flags {
            syn: sub(self.syn, earlier.syn),
            synack: sub(self.synack, earlier.synack),
            rst: sub(self.rst, earlier.rst),
            fin: sub(self.fin, earlier.fin),
        }
    }
}

/// Flag counts by key; keys whose flags are all zero are left out.
type FlagCounts = BTreeMap<Key, Flags>;

/// What some traffic must add to the flag counts, key by key.
#[derive(Default)]
struct Expected(FlagCounts);

impl Expected {
    /// One echo exchange from the LAN host behind `lan` to an Apple `port`: its SYN and FIN
    /// counted outbound on `lan`, the server's SYN-ACK and FIN inbound on wan0.
    fn echo(&mut self, lan: Iface, port: u16) {
        let out = self.entry((lan.name, Direction::Outbound, port, Outcome::Pass));
        out.syn += 1;
        out.fin += 1;
        let back = self.entry((GW_IF_WAN.name, Direction::Inbound, port, Outcome::Pass));
        back.synack += 1;
        back.fin += 1;
    }

    /// One attempt whose SYN the datapath dropped under `key`.
    fn dropped_syn(&mut self, key: Key) {
        self.entry(key).syn += 1;
    }

    fn entry(&mut self, key: Key) -> &mut Flags {
        self.0.entry(key).or_default()
    }
}

/// The agent's datapath seen from a test: its pins, the gateway's interfaces by ifindex, and
/// the lab's TCP stacks (for their retransmissions and resets).
struct Datapath<'a> {
    lab: &'a Lab,
    pins: &'a TestPins,
    ifaces: [(u32, Iface); 4],
    /// The flag counts and the lab's extra TCP segments when `assert_added` last looked.
    seen: (FlagCounts, u64),
}

impl<'a> Datapath<'a> {
    fn new(lab: &'a Lab, pins: &'a TestPins) -> Datapath<'a> {
        let ifaces = [GW_IF_CLIENT, GW_IF_MDM, GW_IF_TRUNK, GW_IF_WAN].map(|iface| {
            let index = agent::gw_ifindex(lab, iface.name).unwrap_or_else(|e| panic!("{e:#}"));
            (index, iface)
        });
        let mut datapath = Datapath {
            lab,
            pins,
            ifaces,
            seen: (FlagCounts::new(), 0),
        };
        datapath.seen = (datapath.flag_counts(), datapath.extra_segments());
        datapath
    }

    /// Every counter, by readable key; fails on keys the gateway's interfaces cannot have
    /// and on packets the datapath could not count.
    fn counters(&self) -> BTreeMap<Key, CounterValue> {
        let snapshot = self.pins.snapshot().unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(snapshot.lost, 0, "packets not counted (map full)");
        snapshot
            .entries
            .iter()
            .map(|(key, value)| {
                let iface = self
                    .ifaces
                    .iter()
                    .find(|(index, _)| *index == key.ifindex)
                    .map(|(_, iface)| iface.name)
                    .unwrap_or_else(|| panic!("counter of an unknown interface: {key:?}"));
                let direction = Direction::from_u8(key.direction)
                    .unwrap_or_else(|| panic!("bad direction: {key:?}"));
                let outcome =
                    Outcome::from_u8(key.outcome).unwrap_or_else(|| panic!("bad outcome: {key:?}"));
                ((iface, direction, key.port, outcome), *value)
            })
            .collect()
    }

    fn flag_counts(&self) -> FlagCounts {
        self.counters()
            .iter()
            .map(|(key, value)| (*key, Flags::of(value)))
            .filter(|(_, flags)| !flags.is_zero())
            .collect()
    }

    /// Segments the TCP stacks of all the lab's namespaces sent so far beyond those of orderly
    /// exchanges: retransmissions (SYNs, SYN-ACKs and FINs included) and resets, `RetransSegs`
    /// and `OutRsts` of their /proc/net/snmp.
    fn extra_segments(&self) -> u64 {
        Role::ALL
            .iter()
            .map(|&role| {
                // /proc/net follows the process's first thread; thread-self follows this one.
                let snmp = self
                    .lab
                    .in_ns(role, || fs::read_to_string("/proc/thread-self/net/snmp"))
                    .and_then(|read| Ok(read?))
                    .unwrap_or_else(|e| panic!("reading the TCP MIB of {role}: {e:#}"));
                let mut tcp = snmp.lines().filter_map(|line| line.strip_prefix("Tcp:"));
                let (names, values) = (tcp.next(), tcp.next());
                let field = |name: &str| {
                    names
                        .zip(values)
                        .and_then(|(names, values)| {
                            let at = names.split_whitespace().position(|n| n == name)?;
                            values.split_whitespace().nth(at)?.parse::<u64>().ok()
                        })
                        .unwrap_or_else(|| panic!("no Tcp {name} for {role} in:\n{snmp}"))
                };
                field("RetransSegs") + field("OutRsts")
            })
            .sum()
    }

    /// Asserts that the flag counts grew by exactly `expected` since the last call (or since
    /// `new`): every key named there by that much, every other key not at all. Unless the
    /// lab's TCP stacks sent extra segments meanwhile: a stall of about 200 ms (e.g. the
    /// user-space VLAN relay starved of CPU) makes a host retransmit its FIN, which crosses an
    /// XDP ingress again, and the peer's answer to the duplicate may find the connection gone
    /// and draw a RST. Each extra segment bumps one flag at most: with E of them, the counts
    /// may exceed `expected` by E in total, and never fall short of it.
    fn assert_added(&mut self, expected: Expected, what: &str) {
        let now = (self.flag_counts(), self.extra_segments());
        let added: FlagCounts = now
            .0
            .iter()
            .map(|(key, flags)| {
                let before = self.seen.0.get(key).copied().unwrap_or_default();
                (*key, flags.since(before))
            })
            .filter(|(_, flags)| !flags.is_zero())
            .collect();
        let extra_segments = now.1 - self.seen.1;
        match surplus(&added, &expected.0) {
            Some(0) => {}
            Some(surplus) if surplus <= extra_segments => eprintln!(
                "{what}: {surplus} flags counted above expectation, after {extra_segments} \
                 retransmitted or reset segments: {added:?}"
            ),
            _ => assert_eq!(
                added, expected.0,
                "flag counters added by {what} ({extra_segments} segments retransmitted or reset)"
            ),
        }
        self.seen = now;
    }
}

/// By how much `added` exceeds `expected`, summed over every flag of every key; `None` if
/// some count falls short.
fn surplus(added: &FlagCounts, expected: &FlagCounts) -> Option<u64> {
    let keys: BTreeSet<&Key> = added.keys().chain(expected.keys()).collect();
    keys.into_iter().try_fold(0, |total, key| {
        let got = added.get(key).copied().unwrap_or_default();
        let want = expected.get(key).copied().unwrap_or_default();
        [
            (got.syn, want.syn),
            (got.synack, want.synack),
            (got.rst, want.rst),
            (got.fin, want.fin),
        ]
        .into_iter()
        .try_fold(total, |total, (got, want)| {
            Some(total + got.checked_sub(want)?)
        })
    })
}

/// Builds a lab (`options`), starts `apns-agent run --mode MODE` in its gateway on all four
/// gateway interfaces and hands both to `body`. Then stops the agent, which must exit cleanly,
/// drops the agent, the pins and the lab in that order, and checks that no namespace and no
/// pin of the scenario is left.
fn scenario(options: LabOptions, mode: &str, body: impl FnOnce(&Lab, &TestPins)) {
    let (namespaces, pin_dir) = {
        // Declared lab, pins, agent: dropped (also when `body` panics) agent, pins, lab.
        let lab = Lab::new(options).unwrap_or_else(|e| panic!("building the lab: {e:#}"));
        let pins = TestPins::new();
        let mut args = vec!["run"];
        for iface in [GW_IF_CLIENT, GW_IF_MDM, GW_IF_TRUNK, GW_IF_WAN] {
            args.extend(["--iface", iface.name]);
        }
        args.extend(["--mode", mode]);
        let mut agent = agent::spawn_run(&lab, &pins, &args).unwrap_or_else(|e| panic!("{e:#}"));
        body(&lab, &pins);
        let status = agent.stop(TIMEOUT).expect("stopping the agent");
        assert!(
            status.success(),
            "agent exit status after SIGTERM: {status}"
        );
        (lab.namespaces(), pins.path().to_owned())
    };
    for name in namespaces {
        assert!(
            !Path::new(NETNS_DIR).join(&name).exists(),
            "namespace {name} left behind"
        );
    }
    assert!(!pin_dir.exists(), "{} left behind", pin_dir.display());
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// One echo exchange from `from` to `to`, which must work.
fn echo(lab: &Lab, from: Role, to: SocketAddr) {
    let payload = format!("{from} -> {to}").into_bytes();
    let echoed = lab
        .echo(from, to, &payload, TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(echoed, payload, "echo from {from} to {to}");
}

/// A connection from `from` to `to` that the datapath must drop: it times out (a RST or an
/// ICMP error would mean something else answered).
fn dropped(lab: &Lab, from: Role, to: SocketAddr) {
    match lab.connect(from, to, REFUSED) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        Err(e) => panic!("{from} -> {to} should have timed out, not failed: {e}"),
        Ok(_) => panic!("{from} -> {to} connected but should have been dropped"),
    }
}

/// Monitor mode counts every APNs connection from every LAN host (IPv4 and IPv6, every port)
/// on the LAN interface it came in on, outbound, and its answer on wan0, inbound: SYN, SYN-ACK
/// and FIN counts equal the connection counts exactly, per interface, direction and port. In
/// particular the VLAN host's tagged frames are counted on the trunk lan2, and only there.
/// Connections to the non-Apple host on 443 touch no APNs counter: they are `not_apns`.
#[test]
fn monitor_counts_every_apns_connection_per_interface_direction_and_port() {
    apns_tests::require_root!();
    scenario(LabOptions::default(), "monitor", |lab, pins| {
        let mut datapath = Datapath::new(lab, pins);

        // First, before any APNs traffic: the non-Apple host on an APNs port. Nothing may be
        // counted but `not_apns` (and `not_ip`: ARP); `not_apns` is only bounded below, since
        // neighbour discovery (ICMPv6) counts there too and may run at any time.
        let before = datapath.counters();
        for ipv6 in [false, true] {
            for _ in 0..CONNECTIONS {
                echo(lab, Role::Client, OTHER.socket(ipv6, 443));
            }
        }
        let after = datapath.counters();
        let unexpected: Vec<&Key> = after
            .keys()
            .filter(|(_, direction, port, outcome)| {
                (*direction, *port) != (Direction::None, 0)
                    || !matches!(outcome, Outcome::NotApns | Outcome::NotIp)
            })
            .collect();
        assert!(
            unexpected.is_empty(),
            "counted for the other host: {unexpected:?}"
        );
        let not_apns = |counters: &BTreeMap<Key, CounterValue>, iface: Iface| {
            counters
                .get(&(iface.name, Direction::None, 0, Outcome::NotApns))
                .map_or(0, |value| value.packets)
        };
        let connections = 2 * CONNECTIONS;
        // Before an exchange returns, the client has sent at least SYN, ACK and its data with
        // its FIN; the server at least SYN-ACK and its echo with its FIN.
        for (iface, least) in [
            (GW_IF_CLIENT, 3 * connections),
            (GW_IF_WAN, 2 * connections),
        ] {
            let added = not_apns(&after, iface) - not_apns(&before, iface);
            assert!(
                added >= least,
                "{added} not_apns packets on {} (at least {least})",
                iface.name
            );
        }

        for (host, lan) in LAN_HOSTS {
            for ipv6 in [false, true] {
                let mut expected = Expected::default();
                for port in APNS_PORTS {
                    for _ in 0..CONNECTIONS {
                        echo(lab, host, APPLE.socket(ipv6, port));
                        expected.echo(lan, port);
                    }
                }
                // E.g. for the VLAN host: CONNECTIONS SYNs and FINs per port outbound on lan2
                // and nothing on lan0 or lan1.
                datapath.assert_added(expected, &format!("{host} over {}", family(ipv6)));
            }
        }
    });
}

/// Enforce mode: a pinhole port (5223) to a non-Apple address is dropped, one SYN counted
/// per attempt, while 5223 to Apple and 443 anywhere work. With a provider list that names
/// the MDM host only, the client's provider-port (2197) connections to Apple are dropped and
/// counted outbound as `drop_provider`, the MDM's work, and 443 (not a provider port) still
/// works for the client. IPv4 and IPv6.
#[test]
fn enforce_drops_pinhole_and_provider_violations_and_passes_the_rest() {
    apns_tests::require_root!();
    scenario(LabOptions::default(), "enforce", |lab, pins| {
        let mut datapath = Datapath::new(lab, pins);
        let pinhole = (
            GW_IF_CLIENT.name,
            Direction::None,
            5223,
            Outcome::DropPinhole,
        );
        let provider = (
            GW_IF_CLIENT.name,
            Direction::Outbound,
            2197,
            Outcome::DropProvider,
        );

        for ipv6 in [false, true] {
            let mut expected = Expected::default();
            dropped(lab, Role::Client, OTHER.socket(ipv6, 5223));
            expected.dropped_syn(pinhole);
            echo(lab, Role::Client, APPLE.socket(ipv6, 5223));
            expected.echo(GW_IF_CLIENT, 5223);
            // 443 to a non-Apple host is no APNs traffic at all: no flag counter moves.
            echo(lab, Role::Client, OTHER.socket(ipv6, 443));
            datapath.assert_added(expected, &format!("pinhole checks over {}", family(ipv6)));
        }

        let providers = [format!("{}/32", MDM.v4), format!("{}/128", MDM.v6)];
        let mut add = vec!["providers", "add"];
        add.extend(providers.iter().map(String::as_str));
        agent::succeed(&mut agent::gw_command(lab, pins, &add)).unwrap_or_else(|e| panic!("{e:#}"));
        let listed = agent::succeed(&mut agent::gw_command(lab, pins, &["providers", "list"]))
            .unwrap_or_else(|e| panic!("{e:#}"));
        for prefix in &providers {
            assert!(
                listed.lines().any(|line| line.trim() == prefix),
                "{prefix} not in:\n{listed}"
            );
        }

        for ipv6 in [false, true] {
            let mut expected = Expected::default();
            dropped(lab, Role::Client, APPLE.socket(ipv6, 2197));
            expected.dropped_syn(provider);
            echo(lab, Role::Mdm, APPLE.socket(ipv6, 2197));
            expected.echo(GW_IF_MDM, 2197);
            echo(lab, Role::Client, APPLE.socket(ipv6, 443));
            expected.echo(GW_IF_CLIENT, 443);
            datapath.assert_added(expected, &format!("provider checks over {}", family(ipv6)));
        }

        // Each dropped attempt was one packet: its only SYN.
        let counters = datapath.counters();
        for key in [pinhole, provider] {
            assert_eq!(counters[&key].packets, 2, "packets dropped under {key:?}");
        }
    });
}

/// With the gateway masquerading, the client's APNs connections (IPv4 and IPv6, every port)
/// are counted exactly on both sides: outbound on lan0 before NAT, inbound on wan0 after it,
/// where the Apple host answers the gateway's address (inbound is judged by Apple's source
/// address and port, which NAT does not change). Enforce mode: NAT'd answers are not dropped.
#[test]
fn nat_keeps_both_sides_counted() {
    apns_tests::require_root!();
    scenario(LabOptions::NAT, "enforce", |lab, pins| {
        let mut datapath = Datapath::new(lab, pins);
        for ipv6 in [false, true] {
            let mut expected = Expected::default();
            for port in APNS_PORTS {
                for _ in 0..CONNECTIONS {
                    echo(lab, Role::Client, APPLE.socket(ipv6, port));
                    expected.echo(GW_IF_CLIENT, port);
                }
            }
            datapath.assert_added(
                expected,
                &format!("the client over {} behind NAT", family(ipv6)),
            );
        }
        let peers: Vec<IpAddr> = lab
            .accepted(Role::Apple)
            .iter()
            .map(|a| a.peer.ip())
            .collect();
        assert_eq!(
            peers.len() as u64,
            2 * APNS_PORTS.len() as u64 * CONNECTIONS
        );
        assert!(
            peers
                .iter()
                .all(|ip| [GW_WAN.ip(false), GW_WAN.ip(true)].contains(ip)),
            "the Apple host saw other sources than the gateway's: {peers:?}"
        );
    });
}

/// A long-lived, mostly idle 5223 connection (a device's push channel) keeps working in
/// enforce mode: after a pause the next message is still echoed, and the whole life of the
/// connection counts exactly one SYN out and one SYN-ACK back, then one FIN each way at the
/// orderly close.
#[test]
fn idle_5223_connection_survives_with_one_syn() {
    apns_tests::require_root!();
    /// Long enough to be idle, short enough to keep the test under 10 s.
    const IDLE: Duration = Duration::from_secs(4);
    scenario(LabOptions::default(), "enforce", |lab, pins| {
        let mut datapath = Datapath::new(lab, pins);
        let apple = APPLE.socket(false, 5223);
        let mut stream = lab
            .connect(Role::Client, apple, TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut exchange = |message: &[u8]| {
            stream.write_all(message).unwrap();
            let mut back = vec![0; message.len()];
            stream
                .read_exact(&mut back)
                .unwrap_or_else(|e| panic!("echo of {message:?}: {e}"));
            assert_eq!(back, message);
        };
        exchange(b"register");
        // The point of the scenario: nothing crosses the connection for a while.
        thread::sleep(IDLE);
        exchange(b"push after idle");

        let mut open = Expected::default();
        open.entry((GW_IF_CLIENT.name, Direction::Outbound, 5223, Outcome::Pass))
            .syn = 1;
        open.entry((GW_IF_WAN.name, Direction::Inbound, 5223, Outcome::Pass))
            .synack = 1;
        datapath.assert_added(open, "one connection, two messages, an idle pause");
        // SYN, handshake ACK and both messages, at least, all passed as APNs.
        let out =
            datapath.counters()[&(GW_IF_CLIENT.name, Direction::Outbound, 5223, Outcome::Pass)];
        assert!(out.packets >= 4, "outbound 5223 packets: {out:?}");

        stream.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "unexpected bytes at close: {rest:?}");
        let mut close = Expected::default();
        close
            .entry((GW_IF_CLIENT.name, Direction::Outbound, 5223, Outcome::Pass))
            .fin = 1;
        close
            .entry((GW_IF_WAN.name, Direction::Inbound, 5223, Outcome::Pass))
            .fin = 1;
        datapath.assert_added(close, "the orderly close");
    });
}
