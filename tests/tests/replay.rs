//! `apns-agent replay`: captures written by tcpdump in the lab's gateway (Ethernet on lan0,
//! Linux cooked SLL and SLL2 from `-i any`; pcap, and the same frames rewritten as pcapng,
//! as tcpdump 4.99 writes pcap only) replay to exactly the counters the attached datapath
//! counted for the same traffic, per outcome, direction and port; crafted bad captures each
//! get their error, naming the frame; a capture many times larger than replay's read buffer
//! replays to exactly its parts' counters in the memory a small one takes; and replay leaves
//! no pin, program or link behind.
//! Needs root and tcpdump (`cargo xtask setup` installs it).

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use apns_agent::{
    datapath::{
        counters::Snapshot,
        netdev::{self, XdpAttachMode},
        policy::{Mode, Policy},
    },
    telemetry::{
        model::{Known, Model},
        reachability::Reachability,
        stats::Stats,
    },
};
use apns_common::counters::CounterValue;
use apns_tests::{
    agent::{self, gw_command, gw_ifindex, TestPins},
    lab::{
        CaptureMarker, Lab, LabOptions, Role, Tcpdump, APPLE, CLIENT_IF, GW_IF_CLIENT, GW_IF_MDM,
        GW_IF_TRUNK, GW_IF_VLAN, GW_IF_WAN, OTHER,
    },
    packets::{self, pcap_bytes, ACK, SYN},
    scratch::Scratch,
};

const TIMEOUT: Duration = Duration::from_secs(5);
/// The gateway's interfaces, attached: `-i any` captures them all. Not lan2.100: bpffs
/// refuses pin names with a dot, so the agent cannot attach it today; no traffic crosses it
/// here, and the quiet waits cover it.
const GW_IFACES: [&str; 4] = [
    GW_IF_CLIENT.name,
    GW_IF_MDM.name,
    GW_IF_TRUNK.name,
    GW_IF_WAN.name,
];

/// Counters added between two snapshots.
fn delta(before: &Snapshot, after: &Snapshot) -> Snapshot {
    let mut entries = after.entries.clone();
    for (key, value) in &mut entries {
        let old = before.get(key);
        *value = CounterValue {
            packets: value.packets - old.packets,
            bytes: value.bytes - old.bytes,
            syn: value.syn - old.syn,
            synack: value.synack - old.synack,
            rst: value.rst - old.rst,
            fin: value.fin - old.fin,
        };
    }
    entries.retain(|_, value| value.packets > 0);
    Snapshot {
        entries,
        lost: after.lost - before.lost,
        // Replay compares traffic counters; the lab gateway has no redirect interface.
        paths: Default::default(),
    }
}

/// `stats --json`'s view of `snapshot` restricted to `ifindexes`, all under one name (the
/// shape replay prints, whose one interface is the capture).
fn live_view(snapshot: &Snapshot, ifindexes: &[u32], ports: &Policy) -> serde_json::Value {
    let mut selected = snapshot.clone();
    selected
        .entries
        .retain(|key, _| ifindexes.contains(&key.ifindex));
    let known = Known {
        interfaces: vec!["capture".to_owned()],
        ports: ports.ports.keys().copied().collect(),
        redirect: Vec::new(),
    };
    let model = Model::build(
        &selected,
        &known,
        |_| "capture".to_owned(),
        &Reachability::new(Duration::from_secs(1)),
    );
    let stats = serde_json::to_value(Stats::from_model(&model)).unwrap();
    stats["interfaces"][0].clone()
}

/// `replay --json CAPTURE`, parsed.
fn replay(pins: &TestPins, capture: &Path, extra: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(agent::binary());
    agent::command(&mut cmd, pins, &["replay", "--json"]);
    cmd.arg(capture).args(extra);
    let stdout = agent::succeed(&mut cmd).unwrap();
    serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"))
}

/// The replay's counters under the same name as [`live_view`]'s.
fn replayed(report: &serde_json::Value) -> serde_json::Value {
    let mut interface = report["stats"]["interfaces"][0].clone();
    interface["interface"] = "capture".into();
    interface
}

/// The records of tcpdump's pcap (little endian, microseconds): its link type and
/// (timestamp in microseconds, original length, frame) per record.
fn pcap_records(pcap: &Path) -> (u32, Vec<(u64, u32, Vec<u8>)>) {
    let bytes = std::fs::read(pcap).unwrap();
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(
        word(0),
        0xa1b2_c3d4,
        "{} is a little-endian pcap",
        pcap.display()
    );
    let mut records = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = word(at + 8) as usize;
        let micros = u64::from(word(at)) * 1_000_000 + u64::from(word(at + 4));
        records.push((
            micros,
            word(at + 12),
            bytes[at + 16..at + 16 + caplen].to_vec(),
        ));
        at += 16 + caplen;
    }
    assert_eq!(at, bytes.len(), "{} ends inside a record", pcap.display());
    (word(20), records)
}

/// tcpdump's pcap rewritten as pcapng, frame for frame (tcpdump 4.99 writes pcap only):
/// one section, one interface of the capture's link type, an enhanced packet block per
/// frame (pcapng spec, sections 4.1 to 4.3).
fn to_pcapng(pcap: &Path, pcapng: &Path) {
    let (linktype, records) = pcap_records(pcap);
    std::fs::write(pcapng, pcapng_bytes(linktype, &records)).unwrap();
}

/// A pcapng file of `records` (timestamp in microseconds, original length, frame).
fn pcapng_bytes(linktype: u32, records: &[(u64, u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let block = |out: &mut Vec<u8>, kind: u32, body: &[u8]| {
        let len = (12 + body.len()) as u32;
        out.extend(kind.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(body);
        out.extend(len.to_le_bytes());
    };
    let mut section = Vec::new();
    section.extend(0x1a2b_3c4du32.to_le_bytes());
    section.extend(1u16.to_le_bytes());
    section.extend(0u16.to_le_bytes());
    section.extend((-1i64).to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &section);
    let mut interface = Vec::new();
    interface.extend((linktype as u16).to_le_bytes());
    interface.extend(0u16.to_le_bytes());
    interface.extend(262_144u32.to_le_bytes());
    block(&mut out, 1, &interface);
    for &(micros, origlen, ref frame) in records {
        let mut packet = Vec::new();
        packet.extend(0u32.to_le_bytes());
        packet.extend(((micros >> 32) as u32).to_le_bytes());
        packet.extend((micros as u32).to_le_bytes());
        packet.extend((frame.len() as u32).to_le_bytes());
        packet.extend(origlen.to_le_bytes());
        packet.extend(frame);
        packet.resize(packet.len().next_multiple_of(4), 0);
        block(&mut out, 6, &packet);
    }
    out
}

/// Frames of an Ethernet pcap that are TCP to one of `ips` on `port`.
fn frames_to(capture: &Path, ips: [std::net::IpAddr; 2], port: u16) -> u64 {
    let (_, records) = pcap_records(capture);
    let mut count = 0;
    for (_, _, frame) in records {
        let Ok(packet) = etherparse::SlicedPacket::from_ethernet(&frame) else {
            continue;
        };
        let dst = match &packet.net {
            Some(etherparse::NetSlice::Ipv4(ip)) => {
                std::net::IpAddr::V4(ip.header().destination_addr())
            }
            Some(etherparse::NetSlice::Ipv6(ip)) => {
                std::net::IpAddr::V6(ip.header().destination_addr())
            }
            _ => continue,
        };
        if let Some(etherparse::TransportSlice::Tcp(tcp)) = &packet.transport {
            if ips.contains(&dst) && tcp.destination_port() == port {
                count += 1;
            }
        }
    }
    count
}

/// Program ids, and the XDP programs attached in this network namespace (by ifindex).
type Objects = (BTreeSet<u32>, Vec<(u32, Vec<(XdpAttachMode, u32)>)>);

/// The [`Objects`] now, to tell what a command left behind.
fn kernel_objects() -> Objects {
    let programs = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .collect();
    let attached = nix::net::if_::if_nameindex()
        .unwrap()
        .iter()
        .map(|interface| {
            let ifindex = interface.index();
            let xdp = netdev::link(ifindex)
                .unwrap()
                .map(|link| link.xdp.programs())
                .unwrap_or_default();
            (ifindex, xdp)
        })
        .collect();
    (programs, attached)
}

#[test]
fn captures_replay_to_the_counters_the_attached_datapath_counted() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let scratch = Scratch::new("replay-lab");
    let mut attach = vec!["attach"];
    attach.extend(GW_IFACES);
    agent::succeed(&mut gw_command(&lab, &pins, &attach)).unwrap();
    let policy = Policy::apple_defaults();
    assert_eq!(policy.mode, Mode::Monitor);

    // Ethernet on lan0, received frames only (XDP sees those); cooked from every interface,
    // both directions (replay leaves out what the gateway sent).
    let ethernet = scratch.path("lan0.pcap");
    let sll = scratch.path("any-sll.pcap");
    let sll2 = scratch.path("any-sll2.pcap");
    let quiet = || {
        for name in GW_IFACES.iter().chain([&GW_IF_VLAN.name]) {
            lab.wait_quiet(
                Role::Gw,
                name,
                Duration::from_millis(300),
                Duration::from_secs(20),
            )
            .unwrap();
        }
    };
    quiet();
    let dumps = [
        (&["-i", GW_IF_CLIENT.name, "-Q", "in"][..], &ethernet),
        (&["-i", "any", "-y", "LINUX_SLL"], &sll),
        (&["-i", "any", "-y", "LINUX_SLL2"], &sll2),
    ]
    .map(|(args, path)| Tcpdump::start(&lab, Role::Gw, args, path).unwrap());
    quiet();
    let before = pins.snapshot().unwrap();

    // APNs from the client (IPv4 and IPv6, courier and fallback port), the MDM server on
    // the provider port, and a pinhole violation (5223 to a host that is not Apple's).
    for (from, addr) in [
        (Role::Client, APPLE.socket(false, 5223)),
        (Role::Client, APPLE.socket(true, 5223)),
        (Role::Client, APPLE.socket(false, 443)),
        (Role::Mdm, APPLE.socket(false, 2197)),
        (Role::Client, OTHER.socket(false, 5223)),
        (Role::Client, OTHER.socket(true, 443)),
    ] {
        let payload = format!("{from} -> {addr}").into_bytes();
        assert_eq!(lab.echo(from, addr, &payload, TIMEOUT).unwrap(), payload);
    }
    // Every capture sees the marker on lan0 (and the datapath counts it, as replay does).
    let marker = CaptureMarker::send(&lab, Role::Client, CLIENT_IF.name).unwrap();
    quiet();
    let counted = delta(&before, &pins.snapshot().unwrap());
    for dump in dumps {
        let said = dump.stop_after(&marker).unwrap();
        // A frame the kernel dropped before tcpdump saw it would make the comparison moot.
        assert!(
            said.contains(" 0 packets dropped by kernel"),
            "tcpdump: {said}"
        );
    }
    assert!(
        counted.packets() > 20,
        "the traffic was counted: {counted:?}"
    );

    let lan0 = gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let all: Vec<u32> = GW_IFACES
        .iter()
        .map(|name| gw_ifindex(&lab, name).unwrap())
        .collect();
    let ethernet_ng = scratch.path("lan0.pcapng");
    let sll2_ng = scratch.path("any-sll2.pcapng");
    to_pcapng(&ethernet, &ethernet_ng);
    to_pcapng(&sll2, &sll2_ng);

    let objects = kernel_objects();
    let own_pins = pins.dir().links().unwrap();
    let pinhole = frames_to(&ethernet, [OTHER.v4.into(), OTHER.v6.into()], 5223);
    assert!(pinhole >= 3, "the pinhole violation was captured");
    for (capture, ifindexes, format, link_type) in [
        (&ethernet, &[lan0][..], "pcap", "ethernet"),
        (&ethernet_ng, &[lan0][..], "pcapng", "ethernet"),
        (&sll, &all[..], "pcap", "linux_sll"),
        (&sll2, &all[..], "pcap", "linux_sll2"),
        (&sll2_ng, &all[..], "pcapng", "linux_sll2"),
    ] {
        let report = replay(&pins, capture, &[]);
        let name = capture.file_name().unwrap().to_string_lossy();
        assert_eq!(report["format"], format, "{name}");
        assert_eq!(
            report["link_types"],
            serde_json::json!([link_type]),
            "{name}"
        );
        assert_eq!(report["mode"], "monitor");
        assert_eq!(
            replayed(&report),
            live_view(&counted, ifindexes, &policy),
            "{name} replayed to other counters than the datapath counted"
        );
        assert_eq!(report["stats"]["interfaces"][0]["interface"], name.as_ref());
        if link_type == "ethernet" {
            assert_eq!(report["outgoing_left_out"], 0);
            assert_eq!(
                report["enforce_drops"],
                serde_json::json!({"pinhole": pinhole, "provider": 0, "inbound_open": 0, "unfinished": 0}),
                "{name}: enforce drops the pinhole violation's frames"
            );
        } else {
            assert!(report["outgoing_left_out"].as_u64().unwrap() > 0, "{name}");
        }
        eprintln!(
            "{name}: {} frames replayed, {} outgoing left out, counters equal the datapath's",
            report["frames"], report["outgoing_left_out"]
        );
    }

    // Enforce mode: the pinhole violation's frames are dropped, by reason.
    let enforced = replay(&pins, &ethernet, &["--mode", "enforce", "--frames"]);
    assert_eq!(enforced["mode"], "enforce");
    let dropped: Vec<&serde_json::Value> = enforced["frame_verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|frame| frame["action"] == "drop")
        .collect();
    assert_eq!(dropped.len() as u64, pinhole);
    assert!(dropped
        .iter()
        .all(|frame| frame["outcome"] == "drop_pinhole" && frame["port"] == 5223));

    // Nothing left behind: our pins as they were, nothing attached, every program replay
    // loaded gone.
    assert_eq!(pins.dir().links().unwrap(), own_pins);
    assert_no_leftovers(&objects);
}

/// After replays ran: no XDP program attached here that was not before, and none of the
/// programs loaded since (named like ours, attached nowhere) still exists: the kernel frees
/// them shortly after the process exits. (Pins: replay only knows its --pin-dir, which the
/// callers check.)
fn assert_no_leftovers(before: &Objects) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (programs, attached) = kernel_objects();
        assert_eq!(attached, before.1, "replay attached an XDP program");
        let linked: BTreeSet<u32> = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .map(|l| l.program_id())
            .collect();
        let max_before = before.0.iter().max().copied().unwrap_or(0);
        let left: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| programs.contains(&p.id()) && p.id() > max_before)
            .filter(|p| !linked.contains(&p.id()) && p.name_as_str() == Some("apns_xdp"))
            .map(|p| p.id())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "programs {left:?} left behind"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_captures_get_an_error_naming_the_frame_and_print_nothing() {
    apns_tests::require_root!();
    let pins = TestPins::new();
    let scratch = Scratch::new("replay-bad");
    let frame = vec![0u8; 60];
    let good = pcap_bytes(1, &[frame.clone(), frame.clone()]);
    let records = [(0, 60, frame.clone()), (0, 60, frame.clone())];
    let good_ng = pcapng_bytes(1, &records);
    // pcapng whose second packet block says it is 8 bytes long (the minimum is 12).
    let mut corrupt_ng = good_ng.clone();
    let second = good_ng.len() - (32 + 60);
    corrupt_ng[second + 4..second + 8].copy_from_slice(&8u32.to_le_bytes());
    // pcapng whose packet names interface 3 of a section that described one.
    let mut stray_ng = pcapng_bytes(1, &records[..1]);
    let first = stray_ng.len() - (32 + 60);
    stray_ng[first + 8..first + 12].copy_from_slice(&3u32.to_le_bytes());

    let cases: [(&str, Vec<u8>, &str); 8] = [
        (
            "truncated.pcap",
            good[..good.len() - 10].to_vec(),
            "truncated: the file ends inside frame 2 (after 1 complete frames)",
        ),
        (
            "truncated.pcapng",
            good_ng[..good_ng.len() - 10].to_vec(),
            "truncated: the file ends inside frame 2 (after 1 complete frames)",
        ),
        (
            "corrupt.pcapng",
            corrupt_ng,
            "frame 2 is corrupt (the block at byte 140 fails",
        ),
        (
            "stray.pcapng",
            stray_ng,
            "frame 1: interface 3 was never described (corrupt file)",
        ),
        (
            "wifi.pcap",
            pcap_bytes(105, std::slice::from_ref(&frame)),
            "frame 1: link type 105 is not supported: replay reads Ethernet and Linux cooked (SLL, SLL2) captures",
        ),
        (
            "runt.pcap",
            pcap_bytes(1, &[frame.clone(), vec![0; 10]]),
            "frame 2: 10 bytes, shorter than an Ethernet header (14 bytes): the capture is corrupt",
        ),
        (
            "text.pcap",
            b"this is not a capture\n".to_vec(),
            "not a pcap or pcapng file",
        ),
        ("empty.pcap", Vec::new(), "the file is empty"),
    ];
    let objects = kernel_objects();
    for (name, bytes, expected) in cases {
        let path = scratch.path(name);
        std::fs::write(&path, bytes).unwrap();
        let mut cmd = Command::new(agent::binary());
        agent::command(&mut cmd, &pins, &["replay"]);
        cmd.arg(&path);
        let output = agent::fail(&mut cmd).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "{name}: something was printed as if it worked"
        );
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        let prefix = format!("apns-agent: capture {}: ", path.display());
        assert!(
            stderr.starts_with(&format!("{prefix}{expected}")),
            "{name}: {stderr}"
        );
    }
    // The good files of the same frames replay fine.
    for (name, bytes) in [("good.pcap", good), ("good.pcapng", good_ng)] {
        let path = scratch.path(name);
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(replay(&pins, &path, &[])["frames"], 2, "{name}");
    }
    assert!(!pins.path().exists(), "replay made a pin directory");
    assert_no_leftovers(&objects);
}

/// `replay --json --mode enforce CAPTURE`, parsed, and the replay's peak resident memory in
/// KiB (VmHWM), read while it waits to write its report into a pipe that holds less than the
/// report: by then it has read the whole capture and run every frame. Its own figure:
/// `wait4`'s ru_maxrss would include this test process's, which the child starts as.
fn replay_measured(pins: &TestPins, capture: &Path) -> (serde_json::Value, u64) {
    let mut cmd = Command::new(agent::binary());
    agent::command(&mut cmd, pins, &["replay", "--json", "--mode", "enforce"]);
    // The smallest pipe, one page, made before the child can write to it.
    let (mut stdout, writer) = std::io::pipe().unwrap();
    nix::fcntl::fcntl(&stdout, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES)).unwrap();
    cmd.arg(capture).stdout(writer).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Only the child may hold the writing end, or the reads below never see its end.
    drop(cmd);
    let mut report = vec![0u8; 1];
    // Its first byte comes once the report is being written: nothing more is read or run.
    stdout.read_exact(&mut report).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    stdout.read_to_end(&mut report).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "replay of {}: {}: {}",
        capture.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        report.len() > PIPE_BYTES as usize + 1,
        "the report ({} bytes) is larger than the pipe, so replay waited to write it",
        report.len()
    );
    let peak = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"));
    let report = serde_json::from_slice(&report)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&report)));
    (report, peak)
}

/// A page: the smallest pipe Linux makes.
const PIPE_BYTES: i32 = 4096;

/// Every number of a replay's counters and enforce drops, by its path in the report.
fn counters(report: &serde_json::Value) -> Vec<(String, u64)> {
    fn walk(path: String, value: &serde_json::Value, out: &mut Vec<(String, u64)>) {
        match value {
            serde_json::Value::Number(number) => {
                out.push((path, number.as_u64().expect("a count")))
            }
            serde_json::Value::Object(fields) => {
                for (key, value) in fields {
                    walk(format!("{path}.{key}"), value, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (index, value) in items.iter().enumerate() {
                    walk(format!("{path}[{index}]"), value, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        "stats".to_owned(),
        &report["stats"]["interfaces"][0],
        &mut out,
    );
    walk(
        "enforce_drops".to_owned(),
        &report["enforce_drops"],
        &mut out,
    );
    out
}

#[test]
fn a_capture_larger_than_the_read_buffer_replays_whole_in_bounded_memory() {
    let pins = TestPins::new();
    let scratch = Scratch::new("replay-large");
    let device = Ipv4Addr::new(192, 0, 2, 10);
    let apple = Ipv4Addr::new(17, 249, 1, 10);
    let other = Ipv4Addr::new(203, 0, 113, 130);
    // A mix of what replay tells apart, in full-size frames: APNs to Apple, a pinhole
    // violation (5223 to a host that is not Apple: enforce drops it), web traffic, DNS.
    let mix = [
        packets::tcp_v4(device, apple, 40000, 5223, SYN).bytes(),
        packets::tcp_v4(device, apple, 40000, 5223, ACK)
            .payload(1400)
            .bytes(),
        packets::tcp_v4(device, other, 40001, 5223, SYN)
            .payload(1400)
            .bytes(),
        packets::tcp_v4(device, other, 40002, 443, ACK)
            .payload(1400)
            .bytes(),
        packets::udp_v4(device, other, 40003, 53)
            .payload(100)
            .bytes(),
    ];
    let record_bytes: usize = mix.iter().map(|frame| frame.len() + 16).sum();
    // Two captures of the mix repeated: one of 1 MiB, the size of replay's read buffer, and
    // one 16 times larger.
    let capture = |name: &str, copies: usize| {
        let path = scratch.path(name);
        let frames: Vec<Vec<u8>> = (0..copies).flat_map(|_| mix.clone()).collect();
        std::fs::write(&path, pcap_bytes(1, &frames)).unwrap();
        path
    };
    let small_copies = (1 << 20) / record_bytes;
    let small = capture("small.pcap", small_copies);
    let large = capture("large.pcap", small_copies * 16);
    let size = std::fs::metadata(&large).unwrap().len();

    let (small_report, small_rss) = replay_measured(&pins, &small);
    let (large_report, large_rss) = replay_measured(&pins, &large);
    assert_eq!(small_report["frames"], mix.len() * small_copies);
    assert_eq!(large_report["frames"], mix.len() * small_copies * 16);
    let small_counters = counters(&small_report);
    assert!(
        small_counters
            .iter()
            .any(|(key, n)| key == "enforce_drops.pinhole" && *n == small_copies as u64),
        "the pinhole violations are dropped: {small_counters:?}"
    );
    let scaled: Vec<(String, u64)> = small_counters
        .into_iter()
        // Port numbers name a row; everything else counts.
        .map(|(key, n)| match key.ends_with(".port") {
            true => (key, n),
            false => (key, n * 16),
        })
        .collect();
    assert_eq!(
        counters(&large_report),
        scaled,
        "16 times the small capture"
    );
    // Holding it whole would add its 16 MiB; streamed, the large capture costs no more than
    // a few read buffers over the small one.
    assert!(
        large_rss < small_rss + 8 * 1024,
        "replay of {size} bytes peaked at {large_rss} KiB, of 1 MiB at {small_rss} KiB"
    );
    assert!(!pins.path().exists(), "replay made a pin directory");
}
