//! The fast paths carry only what a device opened (docs/fastpath.md, "Trust"). On a gateway
//! whose forward chain accepts only established connections and the LAN's own traffic
//! (`policy drop`), segments forged from the WAN with an Apple source address and port (ACK,
//! RST, data; to an open and a closed port of a device; IPv4 and IPv6) never reach the
//! device, with the `redirect` fast path and then with `mark` (and the shipped example
//! rules), while the device's own 5223 and 443 connections to Apple take the fast path from
//! their first packet. A last step opens the forward chain and sees the same frames arrive:
//! the count at the device is real. Needs root.

use std::{
    net::{Ipv6Addr, TcpListener},
    time::Duration,
};

use apns_common::{
    counters::{Direction, Outcome},
    fastpath::Fallback,
};
use apns_tests::{
    agent::{gw_command, spawn_run, succeed, TestPins},
    lab::{wait_until, Lab, LabOptions, Role, APPLE, CLIENT, GW_IF_CLIENT, GW_IF_WAN, ISP_IF_GW},
    ledger::{Gateway, Ledger},
};
use etherparse::PacketBuilder;

/// How long one connection or wait may take (longer in the kernel matrix's guests).
fn timeout() -> Duration {
    Duration::from_secs(5) * apns_tests::time_scale()
}

/// The device's ports the forged segments go to: one with a listener, one without.
const OPEN_PORT: u16 = 22;
const CLOSED_PORT: u16 = 23;
/// The Apple ports they claim to come from, and the device's own connections use.
const PORTS: [u16; 2] = [5223, 443];
const FORGED: u64 = 100;

/// A gateway that forwards only established connections and what the LAN sends.
const ESTABLISHED_ONLY: &str = "table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname \"lan0\" accept
    }
}";

/// The same forward chain, open: the control.
const OPEN: &str = "table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
    }
}";

/// The forged segments' arrivals at the device, counted before anything else sees them.
const ARRIVALS: &str = "table inet arrivals {
    chain prerouting {
        type filter hook prerouting priority -400; policy accept;
        ip saddr 17.249.1.10 tcp dport { 22, 23 } counter
        ip6 saddr 2620:149:a44::10 tcp dport { 22, 23 } counter
    }
}";

/// The gateway's marked packets by the interface they entered (lan0, then wan0).
const MARKED: &str = "table inet marked {
    chain forward {
        type filter hook forward priority -10; policy accept;
        meta mark & 0x200000 == 0x200000 iifname \"lan0\" counter
        meta mark & 0x200000 == 0x200000 iifname \"wan0\" counter
    }
}";

/// The shipped example rules for the mark fast path (a transparent proxy redirect of 443 and
/// 5223 to :3128, where nothing listens, and a filter dropping 5223, both exempting the mark).
const MARK_EXAMPLE: &str = include_str!("../../packaging/nftables/apns-mark.nft");

/// The counters of `chain` of inet `table` in `role`'s namespace, in rule order.
fn rule_counts(lab: &Lab, role: Role, table: &str, chain: &str) -> Vec<u64> {
    lab.nft_counters(role, &["chain", "inet", table, chain])
        .unwrap()
}

/// Forged segments that reached the device.
fn arrived(lab: &Lab) -> u64 {
    rule_counts(lab, Role::Client, "arrivals", "prerouting")
        .iter()
        .sum()
}

/// [`FORGED`] segments from Apple's address, as the ISP router would deliver them to the
/// gateway's wan0: every combination of family, Apple port, device port and kind (ACK, RST,
/// data), in turn, each with its own sequence number.
fn forged_segments() -> Vec<Vec<u8>> {
    (0..FORGED as u32)
        .map(|i| {
            let (ipv6, sport, dport) = (
                i % 2 == 1,
                PORTS[(i / 2 % 2) as usize],
                [OPEN_PORT, CLOSED_PORT][(i / 4 % 2) as usize],
            );
            let ethernet = PacketBuilder::ethernet2(ISP_IF_GW.mac, GW_IF_WAN.mac);
            let ip = if ipv6 {
                ethernet.ipv6(APPLE.v6.octets(), CLIENT.v6.octets(), 64)
            } else {
                ethernet.ipv4(APPLE.v4.octets(), CLIENT.v4.octets(), 64)
            };
            let tcp = ip.tcp(sport, dport, 1_000 + 7 * i, 64_240);
            let mut frame = Vec::new();
            match i / 8 % 3 {
                0 => tcp.ack(4_242).write(&mut frame, &[]),
                1 => tcp.rst().write(&mut frame, &[]),
                _ => tcp.ack(4_242).psh().write(&mut frame, b"let me in"),
            }
            .unwrap();
            frame
        })
        .collect()
}

/// The device echoes through Apple's 5223 and 443, over IPv4 and IPv6.
fn device_connections(lab: &Lab) {
    for ipv6 in [false, true] {
        for port in PORTS {
            let to = APPLE.socket(ipv6, port);
            assert_eq!(
                lab.echo(Role::Client, to, b"apns", timeout()).unwrap(),
                b"apns",
                "to {to}"
            );
        }
    }
}

/// Sends the forged segments and waits until the gateway has counted every one of them as
/// an inbound APNs packet on wan0 left to the stack; returns how many the redirect fast path
/// counted as unsolicited meanwhile. The stack has had time to forward or drop them when it
/// returns.
fn forge(lab: &Lab, pins: &TestPins, gw: Gateway) -> u64 {
    let before = gw.ledger(lab, pins);
    lab.send_frames(Role::Isp, ISP_IF_GW.name, &forged_segments())
        .unwrap();
    let passed = |now: &Ledger| gw.delta(&before, now, gw.wan, Direction::Inbound, Outcome::Pass);
    wait_until("the forged segments counted", timeout(), || {
        passed(&gw.ledger(lab, pins)) >= FORGED
    });
    std::thread::sleep(Duration::from_millis(200));
    let after = gw.ledger(lab, pins);
    assert_eq!(
        passed(&after),
        FORGED,
        "each forged segment passed to the stack once"
    );
    for outcome in [Outcome::Fastpath, Outcome::FastpathTc] {
        assert_eq!(
            gw.delta(&before, &after, gw.wan, Direction::Inbound, outcome),
            0
        );
    }
    let unsolicited = |ledger: &Ledger| {
        ledger
            .paths(gw.wan)
            .counters
            .fallback(Fallback::Unsolicited)
    };
    unsolicited(&after) - unsolicited(&before)
}

#[test]
fn forged_apple_segments_never_reach_a_device_while_its_own_apns_takes_the_fast_path() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    for role in lab.roles() {
        lab.wait_settled(role, timeout()).unwrap();
    }
    lab.nft(Role::Gw, ESTABLISHED_ONLY).unwrap();
    lab.nft(Role::Gw, MARKED).unwrap();
    lab.nft(Role::Client, ARRIVALS).unwrap();
    lab.redirect_offloads().unwrap();
    lab.resolve_neighbours(&[CLIENT.v4.into(), CLIENT.v6.into()])
        .unwrap();
    let _listener = lab
        .in_ns(Role::Client, || {
            TcpListener::bind((Ipv6Addr::UNSPECIFIED, OPEN_PORT))
        })
        .unwrap()
        .unwrap();
    let (lan, wan) = (GW_IF_CLIENT.name, GW_IF_WAN.name);
    let redirect = |name: &str| format!("{name}=redirect");
    let _agent = spawn_run(
        &lab,
        &pins,
        &[
            "run",
            "--iface",
            lan,
            "--fastpath",
            &redirect(lan),
            "--iface",
            wan,
            "--fastpath",
            &redirect(wan),
        ],
    )
    .unwrap();
    let gw = Gateway::of(&lab, &PORTS);

    // Redirect: the device's connections in XDP both ways, from the first packet.
    let before = gw.ledger(&lab, &pins);
    device_connections(&lab);
    let after = gw.settle(&lab, &pins, &before, timeout());
    let delta =
        |ifindex, direction, outcome| gw.delta(&before, &after, ifindex, direction, outcome);
    assert_eq!(
        delta(gw.lan, Direction::Outbound, Outcome::Fastpath),
        after.client_sent - before.client_sent
    );
    assert_eq!(
        delta(gw.wan, Direction::Inbound, Outcome::Fastpath),
        after.apple_sent - before.apple_sent
    );
    for (ifindex, direction) in [(gw.lan, Direction::Outbound), (gw.wan, Direction::Inbound)] {
        assert_eq!(delta(ifindex, direction, Outcome::Pass), 0, "{direction:?}");
    }
    assert_eq!(
        after.paths(gw.wan).counters.fallback(Fallback::Unsolicited),
        0
    );

    // Forged segments go to the stack, whose forward chain drops them.
    assert_eq!(
        forge(&lab, &pins, gw),
        FORGED,
        "redirect: every one unsolicited"
    );
    assert_eq!(
        arrived(&lab),
        0,
        "redirect: forged segments reached the device"
    );

    // Mark, with the shipped example rules: the device's packets are marked (else the
    // example's proxy redirect would take them to :3128, where nothing listens), Apple's
    // replies pass as established, unmarked.
    lab.nft(Role::Gw, MARK_EXAMPLE).unwrap();
    for name in [lan, wan] {
        succeed(&mut gw_command(&lab, &pins, &["fastpath", name, "mark"])).unwrap();
    }
    let marked_before = rule_counts(&lab, Role::Gw, "marked", "forward");
    let before = gw.ledger(&lab, &pins);
    device_connections(&lab);
    let after = gw.settle(&lab, &pins, &before, timeout());
    let marked = rule_counts(&lab, Role::Gw, "marked", "forward");
    assert_eq!(
        marked[0] - marked_before[0],
        after.client_sent - before.client_sent,
        "every segment of the device marked"
    );
    assert_eq!(marked[1], 0, "Apple's packets are never marked");
    assert_eq!(forge(&lab, &pins, gw), 0, "mark: no flow table");
    assert_eq!(arrived(&lab), 0, "mark: forged segments reached the device");
    assert_eq!(rule_counts(&lab, Role::Gw, "marked", "forward")[1], 0);

    // The control: with the forward chain open, the same segments arrive, every one.
    lab.nft(Role::Gw, OPEN).unwrap();
    forge(&lab, &pins, gw);
    wait_until("the forged segments at the device", timeout(), || {
        arrived(&lab) >= FORGED
    });
    assert_eq!(arrived(&lab), FORGED);
}
