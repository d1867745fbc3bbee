//! The redirect fast path on the lab gateway: APNs connections get through although the
//! gateway's forward chain drops their ports in both directions, because XDP (or, for a next
//! hop whose neighbour is not resolved, the TC step with bpf_redirect_neigh) forwards them
//! before netfilter; from the first packet on, with cold neighbour caches, after a next
//! hop's entry is deleted or fails, and after another router takes over the default route.
//! Every APNs packet is counted once, and the counts are checked against what the hosts'
//! own TCP stacks sent. Whatever the fast path still cannot forward goes to the stack and is
//! counted by reason. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use apns_common::{
    counters::{CounterValue, Direction, Outcome},
    fastpath::Fallback,
};
use apns_tests::{
    agent::{
        self, counter_key, gw_command, gw_ifindex, run_lan_wan, scrape_metrics, spawn_run, succeed,
        TestPins,
    },
    lab::{
        self, Lab, LabOptions, Role, APPLE, CLIENT, CLIENT_IF, GW_IF_CLIENT, GW_IF_TRUNK,
        GW_IF_WAN, GW_LAN_CLIENT, ISP2_IF_GW, ISP2_WAN, ISP_WAN, MDM, OTHER, REFUSED, VLAN_HOST,
        VLAN_ID, VLAN_IF_TRUNK,
    },
    ledger::Gateway,
};
use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, VlanId};

/// How long one connection or wait may take (longer in the kernel matrix's guests).
fn timeout() -> Duration {
    Duration::from_secs(5) * apns_tests::time_scale()
}

/// The ports the filter drops and the tests use.
const PORTS: [u16; 2] = [5223, 2197];

/// Runs `args` in `role`'s namespace (`ip netns exec`: fine for iproute2, nft and ethtool).
fn in_ns(lab: &Lab, role: Role, args: &[&str]) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.ns_name(role)]).args(args);
    lab::run(&mut cmd).unwrap()
}

/// The gateway's forward-chain filter, and the hosts' offloads as docs/fastpath.md asks;
/// returns once every host answers neighbour solicitations (exact counts need no
/// retransmission).
fn filtered_gateway(lab: &Lab) {
    for role in lab.roles() {
        lab.wait_settled(role, timeout()).unwrap();
    }
    lab.nft(Role::Gw, lab::APNS_FORWARD_DROP).unwrap();
    lab.redirect_offloads().unwrap();
}

/// The gateway resolves its neighbours (the client and the ISP) itself.
fn resolve_neighbours(lab: &Lab) {
    lab.resolve_neighbours(&[CLIENT.v4.into(), CLIENT.v6.into()])
        .unwrap();
}

/// The gateway with the filter, resolved neighbours, and the agent with redirect on lan0
/// and wan0 (and `more` interfaces, with redirect too).
fn gateway<'lab>(lab: &'lab Lab, pins: &TestPins, more: &[&str]) -> apns_tests::agent::Agent<'lab> {
    filtered_gateway(lab);
    resolve_neighbours(lab);
    let mut args = vec!["run".to_owned()];
    for name in [GW_IF_CLIENT.name, GW_IF_WAN.name].iter().chain(more) {
        args.extend(["--iface".to_owned(), name.to_string()]);
        args.extend(["--fastpath".to_owned(), format!("{name}=redirect")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = spawn_run(lab, pins, &args).unwrap();
    let status = succeed(&mut gw_command(lab, pins, &["status"])).unwrap();
    assert!(status.contains("fast path redirect"), "{status}");
    agent
}

/// One connection from the client to Apple on every APNs port over IPv4 and IPv6, each
/// echoing `payload`.
fn echo_every_port(lab: &Lab, payload: &[u8]) {
    for ipv6 in [false, true] {
        for port in PORTS {
            let to = APPLE.socket(ipv6, port);
            assert_eq!(
                lab.echo(Role::Client, to, payload, timeout()).unwrap(),
                payload,
                "to {to}"
            );
        }
    }
}

/// Packets the forward chain's rules have dropped so far.
fn forward_drops(lab: &Lab) -> u64 {
    lab.nft_counters(Role::Gw, &["chain", "inet", "filter", "forward"])
        .unwrap()
        .iter()
        .sum()
}

#[test]
fn redirect_delivers_apns_past_a_forward_drop_rule() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let _agent = gateway(&lab, &pins, &[]);
    let gw = Gateway::of(&lab, &PORTS);
    let before = gw.ledger(&lab, &pins);

    echo_every_port(&lab, b"apns");
    let after = gw.settle(&lab, &pins, &before, timeout());
    for ipv6 in [false, true] {
        let blocked = OTHER.socket(ipv6, 5223);
        assert!(
            lab.connect(Role::Client, blocked, REFUSED).is_err(),
            "{blocked} must stay blocked by the filter"
        );
    }

    let snapshot = &after.snapshot;
    for port in PORTS {
        let out = snapshot.get(&counter_key(
            gw.lan,
            Direction::Outbound,
            port,
            Outcome::Fastpath,
        ));
        let back = snapshot.get(&counter_key(
            gw.wan,
            Direction::Inbound,
            port,
            Outcome::Fastpath,
        ));
        assert_eq!(
            (out.syn, back.synack),
            (2, 2),
            "port {port}: one IPv4 and one IPv6 handshake, both ways in XDP"
        );
    }
    // Resolved neighbours: every APNs packet was forwarded by XDP itself.
    for (ifindex, direction) in [(gw.lan, Direction::Outbound), (gw.wan, Direction::Inbound)] {
        for outcome in [Outcome::Pass, Outcome::FastpathTc] {
            assert_eq!(
                gw.delta(&before, &after, ifindex, direction, outcome),
                0,
                "{outcome:?}"
            );
        }
    }
}

/// The agent on lan0 and wan0, fast path `pass`.
fn run_on_lan_and_wan<'lab>(lab: &'lab Lab, pins: &TestPins) -> apns_tests::agent::Agent<'lab> {
    let args = run_lan_wan(&[]);
    spawn_run(lab, pins, &args).unwrap()
}

/// Writes `bytes` on `stream` and reads the echo back.
fn exchange(stream: &mut TcpStream, bytes: &[u8]) {
    stream.set_read_timeout(Some(timeout())).unwrap();
    stream.write_all(bytes).unwrap();
    let mut echoed = vec![0; bytes.len()];
    stream
        .read_exact(&mut echoed)
        .unwrap_or_else(|err| panic!("echo of {:?}: {err}", String::from_utf8_lossy(bytes)));
    assert_eq!(echoed, bytes);
}

#[test]
fn the_first_connection_after_redirect_goes_through_with_cold_neighbour_caches() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    filtered_gateway(&lab);
    // The hosts know the gateway (and it them, from their requests), then the agent starts
    // without a fast path, and redirect is switched on live, as an operator would.
    for (role, addr) in [
        (Role::Client, IpAddr::from(GW_LAN_CLIENT.v4)),
        (Role::Client, GW_LAN_CLIENT.v6.into()),
        (Role::Isp, lab::GW_WAN.v4.into()),
        (Role::Isp, lab::GW_WAN.v6.into()),
    ] {
        in_ns(
            &lab,
            role,
            &["ping", "-c", "1", "-W", "2", &addr.to_string()],
        );
    }
    let _agent = run_on_lan_and_wan(&lab, &pins);
    for name in [GW_IF_CLIENT.name, GW_IF_WAN.name] {
        succeed(&mut gw_command(
            &lab,
            &pins,
            &["fastpath", name, "redirect"],
        ))
        .unwrap();
    }
    // The gateway forgets every neighbour: its first packet to each must resolve it.
    in_ns(&lab, Role::Gw, &["ip", "-4", "neigh", "flush", "all"]);
    in_ns(&lab, Role::Gw, &["ip", "-6", "neigh", "flush", "all"]);
    let gw = Gateway::of(&lab, &PORTS);
    let before = gw.ledger(&lab, &pins);
    let dropped = forward_drops(&lab);

    // The first connection of each port and family.
    echo_every_port(&lab, b"first");

    let after = gw.settle(&lab, &pins, &before, timeout());
    // Per family, the first SYN found the upstream next hop unresolved and its SYN-ACK the
    // client: both were handed to TC, which resolved them; everything after went by XDP.
    let syn = |ifindex, direction, port| {
        after
            .snapshot
            .get(&counter_key(ifindex, direction, port, Outcome::FastpathTc))
    };
    let handed = syn(gw.lan, Direction::Outbound, 5223);
    assert_eq!((handed.packets, handed.syn), (2, 2), "the two first SYNs");
    let handed = syn(gw.wan, Direction::Inbound, 5223);
    assert_eq!((handed.packets, handed.synack), (2, 2), "their SYN-ACKs");
    for (ifindex, direction) in [(gw.lan, Direction::Outbound), (gw.wan, Direction::Inbound)] {
        assert_eq!(syn(ifindex, direction, 2197).packets, 0, "2197 came second");
        assert_eq!(
            gw.delta(&before, &after, ifindex, direction, Outcome::Pass),
            0
        );
        // The TC program saw exactly what XDP handed it, and nothing reached the stack.
        let totals = after.paths(ifindex);
        assert_eq!(totals.counters.tc_redirected, 2);
        assert_eq!(totals.counters.tc_refused, 0);
        assert_eq!(totals.stack(), 0);
        assert_eq!(totals.tc_redirect, 2);
        assert_eq!(
            totals.xdp_redirect,
            gw.delta(&before, &after, ifindex, direction, Outcome::Fastpath)
        );
    }
    assert_eq!(
        forward_drops(&lab),
        dropped,
        "nothing reached the forward chain"
    );
    // Both neighbours are resolved now.
    let neighbours = in_ns(&lab, Role::Gw, &["ip", "neigh", "show"]);
    for addr in [
        ISP_WAN.v4.to_string(),
        CLIENT.v4.to_string(),
        ISP_WAN.v6.to_string(),
    ] {
        let line = neighbours
            .lines()
            .find(|line| line.starts_with(&format!("{addr} ")))
            .unwrap_or_else(|| panic!("no neighbour {addr} in:\n{neighbours}"));
        assert!(line.contains("lladdr"), "{line}");
    }

    // status and stats show the paths of both interfaces.
    let status = agent::status_json(&lab, &pins);
    for interface in status["interfaces"].as_array().unwrap() {
        let paths = &interface["paths"];
        assert_eq!(paths["tc_redirect"], 2, "{interface}");
        assert_eq!(paths["stack"], 0, "{interface}");
        assert_eq!(paths["tc_handoffs"]["forwarded"], 2, "{interface}");
    }
    let text = succeed(&mut gw_command(&lab, &pins, &["status"])).unwrap();
    assert!(text.contains("redirect paths: xdp "), "{text}");
}

#[test]
fn a_live_flow_survives_a_lost_neighbour_and_a_new_next_hop() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions {
        second_upstream: true,
        ..LabOptions::default()
    })
    .unwrap();
    let pins = TestPins::new();
    let _agent = gateway(&lab, &pins, &[]);
    let gw = Gateway::of(&lab, &PORTS);

    for ipv6 in [false, true] {
        let family = if ipv6 { "-6" } else { "-4" };
        let (isp, isp2) = (ISP_WAN.ip(ipv6).to_string(), ISP2_WAN.ip(ipv6).to_string());
        let mut stream = lab
            .connect(Role::Client, APPLE.socket(ipv6, 5223), timeout())
            .unwrap();
        exchange(&mut stream, b"warm");
        let mut before = gw.settle(&lab, &pins, &gw.ledger(&lab, &pins), timeout());
        let isp2_before = lab.link_stats(Role::Isp2, ISP2_IF_GW.name).unwrap();
        let wan = GW_IF_WAN.name;
        let changes: [(&str, Vec<&str>); 3] = [
            (
                "deleted",
                vec!["ip", family, "neigh", "del", &isp, "dev", wan],
            ),
            (
                "failed",
                vec![
                    "ip", family, "neigh", "replace", &isp, "dev", wan, "nud", "failed",
                ],
            ),
            (
                "moved to a second router",
                vec![
                    "ip", family, "route", "replace", "default", "via", &isp2, "dev", wan,
                ],
            ),
        ];
        for (what, change) in changes {
            in_ns(&lab, Role::Gw, &change);
            exchange(&mut stream, what.as_bytes());
            let after = gw.settle(&lab, &pins, &before, timeout());
            // The first segment after the change found no resolved neighbour and went by
            // TC, which resolved it; the rest by XDP; none to the stack.
            let out = |outcome| gw.delta(&before, &after, gw.lan, Direction::Outbound, outcome);
            assert_eq!(out(Outcome::FastpathTc), 1, "ipv6 {ipv6}, next hop {what}");
            assert_eq!(out(Outcome::Pass), 0, "ipv6 {ipv6}, next hop {what}");
            let back = |outcome| gw.delta(&before, &after, gw.wan, Direction::Inbound, outcome);
            assert_eq!(back(Outcome::FastpathTc) + back(Outcome::Pass), 0, "{what}");
            let handed = after.paths(gw.lan).counters.tc_redirected
                - before.paths(gw.lan).counters.tc_redirected;
            assert_eq!(
                handed, 1,
                "the TC program forwarded it, ipv6 {ipv6}, {what}"
            );
            before = after;
        }
        // The client's segments now leave through the second router.
        let isp2_after = lab.link_stats(Role::Isp2, ISP2_IF_GW.name).unwrap();
        assert!(isp2_after.rx_packets > isp2_before.rx_packets);
        exchange(&mut stream, b"still there");
        drop(stream);
    }
}

/// A TCP SYN to `dst`:5223 with `ttl`, don't-fragment set and `payload` bytes of data, from
/// the client to the gateway's lan0.
fn syn_frame(dst: Ipv4Addr, ttl: u8, payload: usize) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, ttl, IpNumber::TCP, CLIENT.v4.octets(), dst.octets()).unwrap();
    ip.dont_fragment = true;
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_IF.mac, GW_IF_CLIENT.mac)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40_000, 5223, 1, 64_240)
        .syn()
        .write(&mut frame, &vec![0; payload])
        .unwrap();
    frame
}

/// An IPv6 TCP SYN to Apple:5223 with hop limit `hops`, from the client to lan0.
fn syn_frame_v6(hops: u8) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_IF.mac, GW_IF_CLIENT.mac)
        .ipv6(CLIENT.v6.octets(), APPLE.v6.octets(), hops)
        .tcp(40_000, 5223, 1, 64_240)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

/// A tagged TCP SYN to Apple:5223 from the vlan host, on the gateway's trunk.
fn tagged_syn_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(VLAN_IF_TRUNK.mac, GW_IF_TRUNK.mac)
        .single_vlan(VlanId::try_new(VLAN_ID).unwrap())
        .ipv4(VLAN_HOST.v4.octets(), APPLE.v4.octets(), 64)
        .tcp(40_001, 5223, 1, 64_240)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

#[test]
fn what_the_fast_path_cannot_forward_goes_to_the_stack_counted_by_reason() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let _agent = gateway(&lab, &pins, &[GW_IF_TRUNK.name]);
    let lan = gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let trunk = gw_ifindex(&lab, GW_IF_TRUNK.name).unwrap();
    // "Apple" destinations the fast path cannot forward to.
    let prefix = |third: u8| Ipv4Addr::new(17, 249, third, 10);
    let routes: [&[&str]; 5] = [
        &["blackhole", "17.249.8.0/24"],
        &["prohibit", "17.249.6.0/24"],
        &["unreachable", "17.249.4.0/24"],
        // Smaller than the crafted frame below: fragmentation needed.
        &["17.249.5.0/24", "via", "203.0.113.1", "mtu", "lock", "1280"],
        // Out of lan1, which the agent is not attached to.
        &["17.249.7.0/24", "via", "192.0.2.130"],
    ];
    for route in routes {
        let mut args = vec!["ip", "route", "add"];
        args.extend(route);
        in_ns(&lab, Role::Gw, &args);
    }
    assert_eq!(MDM.v4, Ipv4Addr::new(192, 0, 2, 130));
    // The gateway's own LAN address, made an APNs destination so the fast path considers it.
    let gateway_itself = GW_LAN_CLIENT.v4;
    succeed(&mut gw_command(
        &lab,
        &pins,
        &["allow", "add", &format!("{gateway_itself}/32")],
    ))
    .unwrap();

    // (reason, frame, where it enters, whether the forward chain drops it: lost).
    let cases: [(Fallback, Vec<u8>, u32, bool); 9] = [
        (Fallback::Ttl, syn_frame(APPLE.v4, 1, 0), lan, false),
        (Fallback::Ttl, syn_frame_v6(1), lan, false),
        (Fallback::Blackhole, syn_frame(prefix(8), 64, 0), lan, false),
        (Fallback::Prohibit, syn_frame(prefix(6), 64, 0), lan, false),
        (
            Fallback::Unreachable,
            syn_frame(prefix(4), 64, 0),
            lan,
            false,
        ),
        (
            Fallback::FragNeeded,
            syn_frame(prefix(5), 64, 1300),
            lan,
            false,
        ),
        (
            Fallback::NotForwarded,
            syn_frame(gateway_itself, 64, 0),
            lan,
            false,
        ),
        (
            Fallback::EgressUnmanaged,
            syn_frame(prefix(7), 64, 0),
            lan,
            true,
        ),
        (Fallback::VlanTagged, tagged_syn_frame(), trunk, true),
    ];
    let fallback = |ifindex: u32, reason: Fallback| {
        pins.snapshot()
            .unwrap()
            .paths(ifindex)
            .counters
            .fallback(reason)
    };
    let passed = |ifindex: u32| {
        pins.snapshot().unwrap().get(&counter_key(
            ifindex,
            Direction::Outbound,
            5223,
            Outcome::Pass,
        ))
    };
    for (reason, frame, ifindex, lost) in cases {
        let what = reason.as_str();
        let (reasons_before, passed_before) = (fallback(ifindex, reason), passed(ifindex));
        let dropped = forward_drops(&lab);
        if ifindex == trunk {
            lab.send_frames(Role::Vlan, VLAN_IF_TRUNK.name, &[frame])
                .unwrap();
        } else {
            lab.send_frames(Role::Client, CLIENT_IF.name, &[frame])
                .unwrap();
        }
        let deadline = Instant::now() + timeout();
        while fallback(ifindex, reason) == reasons_before {
            assert!(Instant::now() < deadline, "{what}: never counted");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(fallback(ifindex, reason), reasons_before + 1, "{what}");
        let now: CounterValue = passed(ifindex);
        assert_eq!(
            now.packets,
            passed_before.packets + 1,
            "{what}: passed to the stack once"
        );
        // The lost ones reach the forward chain and die there; the others are answered (or
        // dropped by the route) before it.
        let deadline = Instant::now() + timeout();
        while lost && forward_drops(&lab) == dropped {
            assert!(
                Instant::now() < deadline,
                "{what}: never reached the forward chain"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(forward_drops(&lab), dropped + u64::from(lost), "{what}");
    }

    let snapshot = pins.snapshot().unwrap();
    let lan_paths = snapshot.paths(lan);
    assert_eq!(lan_paths.stack(), 8);
    assert_eq!(lan_paths.counters.fallback(Fallback::Ttl), 2);
    assert_eq!(snapshot.paths(trunk).stack(), 1);
    assert_eq!(lan_paths.xdp_redirect + lan_paths.tc_redirect, 0);
    // Nothing was dropped by the datapath on the way.
    assert!(!snapshot
        .entries
        .keys()
        .any(|k| Outcome::from_u8(k.outcome).is_some_and(Outcome::is_drop)));

    // The same numbers in status --json and /metrics.
    let status = agent::status_json(&lab, &pins);
    let lan0 = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|interface| interface["interface"] == GW_IF_CLIENT.name)
        .unwrap();
    assert_eq!(lan0["paths"]["stack"], 8);
    assert_eq!(lan0["paths"]["stack_by_reason"]["egress_unmanaged"], 1);
    assert_eq!(lan0["paths"]["stack_by_reason"]["ttl"], 2);
    let metrics = scrape_metrics(
        &lab,
        apns_agent::telemetry::DEFAULT_METRICS_ADDR.parse().unwrap(),
    )
    .unwrap();
    for expected in [
        r#"apns_fastpath_fallback_packets_total{interface="lan0",reason="ttl"} 2"#,
        r#"apns_fastpath_fallback_packets_total{interface="lan0",reason="frag_needed"} 1"#,
        r#"apns_fastpath_fallback_packets_total{interface="lan2",reason="vlan_tagged"} 1"#,
        r#"apns_fastpath_packets_total{interface="lan0",path="stack"} 8"#,
        r#"apns_fastpath_packets_total{interface="lan0",path="tc_redirect"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|line| line == expected),
            "missing {expected} in:\n{metrics}"
        );
    }
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
        let deadline =
            std::time::Instant::now() + Duration::from_secs(30) * apns_tests::time_scale();
        let mut served = 0;
        while served < connections && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    use std::io::{Read as _, Write as _};
                    // Read the request first: closing with unread data would reset.
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(timeout()));
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
    lab.echo(Role::Client, to, b"ping", timeout()).unwrap()
}

#[test]
fn mark_with_the_example_rules_exempts_apns_from_a_proxy_behind_nat() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::NAT).unwrap();
    let pins = TestPins::new();
    lab.nft(Role::Gw, MARK_EXAMPLE).unwrap();
    let _proxy = proxy(&lab, 4);
    let _agent = run_on_lan_and_wan(&lab, &pins);

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
