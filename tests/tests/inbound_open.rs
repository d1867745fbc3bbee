//! Inbound connection attempts on the lab gateway (issue 18): 100 SYNs crafted from Apple's
//! address and port 5223 toward the device behind the gateway, per address family, arrive on
//! wan0. In enforce mode the datapath drops every one (none reaches the device: a capture in
//! its namespace sees none) and counts them exactly under `drop_inbound_open`, with a drop
//! event that names the device and its finding; the device's own connection to the same
//! Apple host on 5223 works both ways meanwhile. In monitor mode the same 200 are counted as
//! `inbound_open` and delivered (the capture sees all 200). Needs root.

use std::{
    io::{BufRead as _, BufReader},
    net::IpAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use apns_common::counters::{Direction, Outcome};
use apns_tests::{
    agent::{self, gw_command, run_lan_wan, spawn_run, TestPins},
    lab::{
        self as lab, Lab, LabChild, LabOptions, Role, APPLE, CLIENT, CLIENT_IF, GW_IF_CLIENT,
        GW_IF_WAN, ISP_IF_GW,
    },
};

/// How long one connection or wait may take (longer in the kernel matrix's guests).
fn timeout() -> Duration {
    Duration::from_secs(5) * apns_tests::time_scale()
}

/// How long a capture file must stop growing before the capture is read.
const QUIET: Duration = Duration::from_millis(500);
/// Crafted SYNs per address family.
const SYNS: u16 = 100;
/// Their destination ports on the device.
const FIRST_PORT: u16 = 40_000;

/// 100 SYNs from Apple's 5223 toward the device, IPv4 or IPv6, as the ISP puts them on the
/// wire toward the gateway's wan0.
fn inbound_syns(ipv6: bool) -> Vec<Vec<u8>> {
    (0..SYNS)
        .map(|i| {
            let builder = etherparse::PacketBuilder::ethernet2(ISP_IF_GW.mac, GW_IF_WAN.mac);
            let builder = if ipv6 {
                builder.ipv6(APPLE.v6.octets(), CLIENT.v6.octets(), 64)
            } else {
                builder.ipv4(APPLE.v4.octets(), CLIENT.v4.octets(), 64)
            };
            let mut frame = Vec::new();
            builder
                .tcp(5223, FIRST_PORT + i, 1, 64_240)
                .syn()
                .write(&mut frame, &[])
                .unwrap();
            frame
        })
        .collect()
}

/// A capture on the device's eth0 of SYNs (without ACK) from the Apple host, into a file.
struct Capture<'lab> {
    child: LabChild<'lab>,
    file: PathBuf,
    /// tcpdump's last words (its counts), once it has stopped.
    stderr: std::thread::JoinHandle<Vec<String>>,
}

impl<'lab> Capture<'lab> {
    fn start(lab: &'lab Lab, name: &str) -> Capture<'lab> {
        let file = std::env::temp_dir().join(format!("{}-{name}.pcap", lab.id()));
        // IPv6's TCP flags without extension headers: byte 40 + 13 of the packet.
        let filter = format!(
            "(ip and src host {} and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn) or \
             (ip6 and src host {} and ip6[6] == 6 and ip6[53] & 0x12 == 0x02)",
            APPLE.v4, APPLE.v6
        );
        let mut cmd = lab.command(Role::Client, "tcpdump");
        // --immediate-mode: packets reach tcpdump as they come, not in blocks handed over
        // after a timeout (a capture stopped before that timeout would have none of them);
        // -Z root: it writes the file as the user that opened it; -s 128: a slot of its ring
        // per packet is the snapshot length, so with the default 262,144 bytes a burst of
        // 200 SYNs overflows it (and the kernel drops from the capture, not the link).
        cmd.args([
            "-i",
            CLIENT_IF.name,
            "-n",
            "-s",
            "128",
            "--immediate-mode",
            "-U",
            "-Z",
            "root",
            "-w",
        ])
        .arg(&file)
        .arg(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = lab.spawn(&mut cmd).unwrap();
        let stderr = child.child_mut().stderr.take().unwrap();
        // tcpdump says "listening on" once its filter is in place.
        let mut lines = BufReader::new(stderr).lines();
        let listening = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.contains("listening on"));
        assert!(listening, "tcpdump did not start");
        let stderr = std::thread::spawn(move || lines.map_while(Result::ok).collect());
        Capture {
            child,
            file,
            stderr,
        }
    }

    /// Stops the capture and returns how many packets it holds.
    fn packets(mut self) -> usize {
        // The packets a test waits for were counted on wan0; the stack forwards them and
        // tcpdump writes them a moment later: stop once the file stopped growing.
        let size = || std::fs::metadata(&self.file).map_or(0, |meta| meta.len());
        let deadline = Instant::now() + timeout();
        let (mut last, mut since) = (size(), Instant::now());
        while since.elapsed() < QUIET && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if size() != last {
                (last, since) = (size(), Instant::now());
            }
        }
        self.child.stop(timeout()).unwrap();
        // A capture that lost packets proves nothing about what arrived.
        let said = self.stderr.join().unwrap();
        assert!(
            said.iter()
                .any(|line| line == "0 packets dropped by kernel"),
            "tcpdump dropped packets: {said:?}"
        );
        let out = std::process::Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.file)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&self.file);
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}

#[test]
fn inbound_syns_are_dropped_in_enforce_and_delivered_in_monitor_counted_exactly() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let device_facing = format!("{}=devices", GW_IF_CLIENT.name);
    let _agent = spawn_run(
        &lab,
        &pins,
        &run_lan_wan(&["--role", &device_facing, "--mode", "enforce"]),
    )
    .unwrap();
    let wan0 = agent::gw_ifindex(&lab, GW_IF_WAN.name).unwrap();
    let counted = |outcome| {
        pins.counter(wan0, Direction::Inbound, 5223, outcome)
            .unwrap()
    };

    // The device's own connection to the same Apple host on 5223 works both ways.
    for ipv6 in [false, true] {
        let to = APPLE.socket(ipv6, 5223);
        assert_eq!(
            lab.echo(Role::Client, to, b"apns", timeout()).unwrap(),
            b"apns"
        );
    }

    // Enforce: every crafted SYN dropped, counted, none delivered; the events name the device.
    let mut events = lab
        .spawn(
            gw_command(&lab, &pins, &["events", "--json", "--count", "2"]).stdout(Stdio::piped()),
        )
        .unwrap();
    let capture = Capture::start(&lab, "enforce");
    for ipv6 in [false, true] {
        lab.send_frames(Role::Isp, ISP_IF_GW.name, &inbound_syns(ipv6))
            .unwrap();
    }
    let total = u64::from(2 * SYNS);
    lab::wait_until("the drops to be counted", timeout(), || {
        counted(Outcome::DropInboundOpen).packets >= total
    });
    assert_eq!(capture.packets(), 0, "a dropped SYN reached the device");
    let dropped = counted(Outcome::DropInboundOpen);
    assert_eq!((dropped.packets, dropped.syn), (total, total));
    assert_eq!(counted(Outcome::InboundOpen).packets, 0);
    let stdout = events.child_mut().stdout.take().unwrap();
    let lines: Vec<serde_json::Value> = BufReader::new(stdout)
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for event in &lines {
        assert_eq!(event["reason"], "inbound_open", "{event}");
        assert_eq!(event["sport"], 5223);
        let dst: IpAddr = event["dst"].as_str().unwrap().parse().unwrap();
        assert!(dst == IpAddr::from(CLIENT.v4) || dst == IpAddr::from(CLIENT.v6));
        // The device is in the connection table (its echoes): the event says how it fares.
        assert_eq!(event["device"]["address"], event["dst"], "{event}");
        assert_eq!(event["device"]["finding"], "ok", "{event}");
    }
    assert!(events
        .wait_timeout(timeout())
        .unwrap()
        .is_some_and(|s| s.success()));
    let metrics = agent::scrape_metrics(
        &lab,
        apns_agent::telemetry::DEFAULT_METRICS_ADDR.parse().unwrap(),
    )
    .unwrap();
    for line in [
        format!(
            r#"apns_inbound_opens_total{{interface="{}",port="5223",verdict="drop"}} {total}"#,
            GW_IF_WAN.name
        ),
        format!(
            r#"apns_policy_drops_total{{interface="{}",reason="inbound_open"}} {total}"#,
            GW_IF_WAN.name
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line}");
    }

    // Monitor: the same SYNs counted apart and delivered.
    agent::succeed(&mut gw_command(&lab, &pins, &["mode", "monitor"])).unwrap();
    let capture = Capture::start(&lab, "monitor");
    for ipv6 in [false, true] {
        lab.send_frames(Role::Isp, ISP_IF_GW.name, &inbound_syns(ipv6))
            .unwrap();
    }
    lab::wait_until("the attempts to be counted", timeout(), || {
        counted(Outcome::InboundOpen).packets >= total
    });
    assert_eq!(
        capture.packets(),
        usize::from(2 * SYNS),
        "every SYN delivered"
    );
    let passed = counted(Outcome::InboundOpen);
    assert_eq!((passed.packets, passed.syn), (total, total));
    assert_eq!(
        counted(Outcome::DropInboundOpen).packets,
        total,
        "no new drop"
    );
}
