//! The redirect fast path on the lab gateway: APNs connections get through although the
//! gateway's forward chain drops their ports, because XDP forwards them before netfilter;
//! other traffic on those ports stays blocked; whatever the FIB cannot settle is passed to
//! the stack and counted, never dropped. Needs root.

use std::{net::Ipv4Addr, process::Command, time::Duration};

use apns_common::counters::{CounterValue, Direction, Outcome};
use apns_tests::{
    agent::{counter_key, gw_command, gw_ifindex, spawn_run, succeed, TestPins},
    lab::{
        self, Lab, LabOptions, Role, APPLE, APPLE_IF, CLIENT, CLIENT_IF, GW_IF_CLIENT, GW_IF_WAN,
        GW_LAN_CLIENT, ISP_IF_GW, ISP_WAN, OTHER,
    },
};
use etherparse::PacketBuilder;

const TIMEOUT: Duration = Duration::from_secs(5);
const REFUSED: Duration = Duration::from_millis(600);

/// A content filter stand-in: the gateway's forward chain drops TCP 5223 and 2197.
const FORWARD_DROP: &str = "table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
        tcp dport { 5223, 2197 } drop
    }
}";

/// Runs `args` in `role`'s namespace (`ip netns exec`: fine for iproute2, nft and ethtool).
fn in_ns(lab: &Lab, role: Role, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.ns_name(role)]).args(args);
    lab::run(&mut cmd).unwrap();
}

/// The gateway with the forward-chain filter, redirect on lan0 and wan0, resolved neighbours.
fn gateway<'lab>(lab: &'lab Lab, pins: &TestPins) -> apns_tests::agent::Agent<'lab> {
    lab::run_with_input(
        Command::new("ip").args(["netns", "exec", lab.ns_name(Role::Gw), "nft", "-f", "-"]),
        FORWARD_DROP.as_bytes(),
    )
    .unwrap();
    // XDP_REDIRECT into a veth needs NAPI on the peer end: GRO on (or an XDP program there).
    in_ns(
        lab,
        Role::Client,
        &["ethtool", "-K", CLIENT_IF.name, "gro", "on"],
    );
    in_ns(
        lab,
        Role::Isp,
        &["ethtool", "-K", ISP_IF_GW.name, "gro", "on"],
    );
    // veth hands the TCP checksum to the next hop to fill in (CHECKSUM_PARTIAL); an XDP frame
    // loses that note, so a redirected segment would arrive with a half checksum. Real NICs
    // receive full checksums from the wire; make the lab's hosts compute theirs.
    in_ns(
        lab,
        Role::Client,
        &["ethtool", "-K", CLIENT_IF.name, "tx", "off"],
    );
    in_ns(
        lab,
        Role::Apple,
        &["ethtool", "-K", APPLE_IF.name, "tx", "off"],
    );
    // The fast path only forwards to resolved neighbours (else the stack resolves them).
    for addr in [
        CLIENT.v4.to_string(),
        CLIENT.v6.to_string(),
        ISP_WAN.v4.to_string(),
        ISP_WAN.v6.to_string(),
    ] {
        in_ns(lab, Role::Gw, &["ping", "-c", "1", "-W", "2", &addr]);
    }
    let agent = spawn_run(
        lab,
        pins,
        &[
            "run",
            "--iface",
            GW_IF_CLIENT.name,
            "--iface",
            GW_IF_WAN.name,
            "--fastpath",
            "lan0=redirect",
            "--fastpath",
            "wan0=redirect",
        ],
    )
    .unwrap();
    let status = succeed(&mut gw_command(lab, pins, &["status"])).unwrap();
    assert!(status.contains("fast path redirect"), "{status}");
    agent
}

#[test]
fn redirect_delivers_apns_past_a_forward_drop_rule() {
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let _agent = gateway(&lab, &pins);
    let lan = gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let wan = gw_ifindex(&lab, GW_IF_WAN.name).unwrap();

    for ipv6 in [false, true] {
        for port in [5223, 2197] {
            let to = APPLE.socket(ipv6, port);
            assert_eq!(
                lab.echo(Role::Client, to, b"apns", TIMEOUT).unwrap(),
                b"apns",
                "to {to}"
            );
        }
        let blocked = OTHER.socket(ipv6, 5223);
        assert!(
            lab.connect(Role::Client, blocked, REFUSED).is_err(),
            "{blocked} must stay blocked by the filter"
        );
    }

    let snapshot = pins.snapshot().unwrap();
    for port in [5223, 2197] {
        let out = snapshot.get(&counter_key(
            lan,
            Direction::Outbound,
            port,
            Outcome::Fastpath,
        ));
        let back = snapshot.get(&counter_key(
            wan,
            Direction::Inbound,
            port,
            Outcome::Fastpath,
        ));
        assert_eq!(
            (out.syn, back.synack),
            (2, 2),
            "port {port}: one IPv4 and one IPv6 handshake, both ways in XDP"
        );
        let passed = snapshot.get(&counter_key(lan, Direction::Outbound, port, Outcome::Pass));
        assert_eq!(passed.syn, 0, "port {port}: no SYN fell back to the stack");
    }
}

/// A TCP SYN from the client to `dst`:5223 with `ttl`, addressed to the gateway's lan0.
fn syn_frame(dst: Ipv4Addr, ttl: u8) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_IF.mac, GW_IF_CLIENT.mac)
        .ipv4(CLIENT.v4.octets(), dst.octets(), ttl)
        .tcp(40_000, 5223, 1, 64_240)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

#[test]
fn what_the_fib_cannot_settle_is_passed_to_the_stack_and_counted() {
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let _agent = gateway(&lab, &pins);
    let lan = gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    // Destinations that are "Apple" but that the FIB cannot forward to.
    let no_neighbour = Ipv4Addr::new(17, 249, 9, 10);
    let blackholed = Ipv4Addr::new(17, 249, 8, 10);
    in_ns(
        &lab,
        Role::Gw,
        &["ip", "route", "add", "17.249.9.0/24", "via", "203.0.113.9"],
    );
    in_ns(
        &lab,
        Role::Gw,
        &["ip", "route", "add", "blackhole", "17.249.8.0/24"],
    );
    // The gateway's own LAN address, made an APNs destination so the fast path considers it.
    let gateway_itself = GW_LAN_CLIENT.v4;
    succeed(&mut gw_command(
        &lab,
        &pins,
        &["allow", "add", &format!("{gateway_itself}/32")],
    ))
    .unwrap();

    let counted = |outcome| -> CounterValue {
        pins.snapshot()
            .unwrap()
            .get(&counter_key(lan, Direction::Outbound, 5223, outcome))
    };
    for (what, frame) in [
        ("TTL 1", syn_frame(APPLE.v4, 1)),
        ("no neighbour yet", syn_frame(no_neighbour, 64)),
        ("blackhole route", syn_frame(blackholed, 64)),
        ("addressed to the gateway", syn_frame(gateway_itself, 64)),
    ] {
        let (passed, forwarded) = (counted(Outcome::Pass), counted(Outcome::Fastpath));
        lab.send_frames(Role::Client, CLIENT_IF.name, &[frame])
            .unwrap();
        let deadline = std::time::Instant::now() + TIMEOUT;
        while counted(Outcome::Pass).packets == passed.packets {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: never counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            counted(Outcome::Pass).packets,
            passed.packets + 1,
            "{what}: passed to the stack once"
        );
        assert_eq!(
            counted(Outcome::Fastpath),
            forwarded,
            "{what}: not forwarded by XDP"
        );
    }
    // Nothing was dropped by the datapath on the way.
    let drops = pins
        .snapshot()
        .unwrap()
        .entries
        .iter()
        .filter(|(k, _)| Outcome::from_u8(k.outcome).is_some_and(Outcome::is_drop))
        .count();
    assert_eq!(drops, 0);
}

/// The shipped example rules for the mark fast path (a transparent proxy on :3128 and a
/// forward filter, both exempting marked packets).
const MARK_EXAMPLE: &str = include_str!("../../packaging/nftables/apns-mark.nft");
const PROXY_PORT: u16 = 3128;
const PROXY_GREETING: &[u8] = b"PROXY";

/// A stand-in transparent proxy in the gateway: reads each request on :3128, answers
/// "PROXY" and closes; serves `connections` connections, then stops.
fn proxy(lab: &Lab, connections: usize) -> std::thread::JoinHandle<()> {
    let listener = lab
        .in_ns(Role::Gw, || std::net::TcpListener::bind(("::", PROXY_PORT)))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < connections && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    use std::io::{Read as _, Write as _};
                    // Read the request first: closing with unread data would reset.
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(TIMEOUT));
                    let _ = stream.read_to_end(&mut Vec::new());
                    let _ = stream.write_all(PROXY_GREETING);
                    served += 1;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })
}

/// What the client gets back when it says "ping" to `to`: the echo (it reached the host) or
/// the proxy's greeting (it was redirected).
fn reply(lab: &Lab, to: std::net::SocketAddr) -> Vec<u8> {
    lab.echo(Role::Client, to, b"ping", TIMEOUT).unwrap()
}

#[test]
fn mark_with_the_example_rules_exempts_apns_from_a_proxy_behind_nat() {
    let lab = Lab::new(LabOptions::NAT).unwrap();
    let pins = TestPins::new();
    lab::run_with_input(
        Command::new("ip").args(["netns", "exec", lab.ns_name(Role::Gw), "nft", "-f", "-"]),
        MARK_EXAMPLE.as_bytes(),
    )
    .unwrap();
    let _proxy = proxy(&lab, 4);
    let _agent = spawn_run(
        &lab,
        &pins,
        &[
            "run",
            "--iface",
            GW_IF_CLIENT.name,
            "--iface",
            GW_IF_WAN.name,
        ],
    )
    .unwrap();

    // Control: without the mark, APNs lands on the proxy like everything else.
    assert_eq!(reply(&lab, APPLE.socket(false, 5223)), PROXY_GREETING);

    succeed(&mut gw_command(
        &lab,
        &pins,
        &["fastpath", GW_IF_CLIENT.name, "mark"],
    ))
    .unwrap();
    let status = succeed(&mut gw_command(&lab, &pins, &["status"])).unwrap();
    assert!(status.contains("fast path mark"), "{status}");
    for ipv6 in [false, true] {
        for port in [5223, 443] {
            let to = APPLE.socket(ipv6, port);
            assert_eq!(
                reply(&lab, to),
                b"ping",
                "APNs to {to} goes straight to Apple"
            );
        }
    }
    assert_eq!(
        reply(&lab, OTHER.socket(false, 443)),
        PROXY_GREETING,
        "other 443 still goes to the proxy"
    );
    assert_eq!(reply(&lab, OTHER.socket(true, 443)), PROXY_GREETING);
    // With NAT on, Apple saw the gateway's WAN address.
    assert!(lab
        .accepted(Role::Apple)
        .iter()
        .all(|c| c.peer.ip() == lab::GW_WAN.ip(c.peer.is_ipv6())));

    // Back to pass: the TC half is gone and APNs is proxied again.
    succeed(&mut gw_command(
        &lab,
        &pins,
        &["fastpath", GW_IF_CLIENT.name, "pass"],
    ))
    .unwrap();
    assert!(!pins
        .path()
        .join("tc-links")
        .join(GW_IF_CLIENT.name)
        .exists());
    assert_eq!(reply(&lab, APPLE.socket(false, 5223)), PROXY_GREETING);
}
