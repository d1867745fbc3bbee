//! `cargo xtask demo` (tests/src/bin/apns-demo.rs, run here as cargo built it for the tests)
//! shows, in this order: doctor, traffic, a live policy change, the fast path passing a
//! filter that blocks 5223, the two findings in `clients`, the counters without all-zero
//! rows, a /metrics excerpt and a replay of its capture; with the exact numbers its traffic
//! makes; and leaves nothing behind. Once with the fast path this kernel offers (redirect),
//! once with the kernel's `bpf_fib_lookup` switched off for the agent, where it takes mark.
//! Needs root, tcpdump and nft.

use std::{collections::BTreeMap, process::Command};

use apns_tests::{agent::PIN_PREFIX, lab::NETNS_PREFIX};

/// The steps the demo announces (`==> ...`), in the order it must show them.
const STEPS: [&str; 8] = [
    "apns-agent doctor",
    "driving traffic",
    "live policy change",
    "a content filter on the gateway",
    "which devices reach APNs",
    "counters (apns-agent stats",
    "an excerpt of /metrics",
    "replay of what the devices on lan0 sent",
];

/// What the demo printed: its steps in order, each with the lines under it.
struct Transcript {
    steps: Vec<(String, Vec<String>)>,
}

impl Transcript {
    fn parse(stdout: &str) -> Transcript {
        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        for line in stdout.lines() {
            if let Some(title) = line.strip_prefix("==> ") {
                steps.push((title.to_owned(), Vec::new()));
            } else if let Some((_, lines)) = steps.last_mut() {
                lines.push(line.trim().to_owned());
            }
        }
        Transcript { steps }
    }

    /// The lines under the step whose title starts with `title`.
    fn step(&self, title: &str) -> &[String] {
        &self
            .steps
            .iter()
            .find(|(t, _)| t.starts_with(title))
            .unwrap_or_else(|| panic!("no step {title:?}"))
            .1
    }
}

/// The line of `lines` that starts with `start`.
fn line<'a>(lines: &'a [String], start: &str) -> &'a str {
    lines
        .iter()
        .find(|line| line.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{}", lines.join("\n")))
}

/// The cells of a table row (columns are two or more spaces apart).
fn cells(row: &str) -> Vec<&str> {
    row.split("  ")
        .map(str::trim)
        .filter(|cell| !cell.is_empty())
        .collect()
}

/// The rows of the table whose header starts with `header`, as column name to cell.
fn table<'a>(lines: &'a [String], header: &str) -> Vec<BTreeMap<&'a str, &'a str>> {
    let at = lines
        .iter()
        .position(|line| line.starts_with(header))
        .unwrap_or_else(|| panic!("no table {header:?} in:\n{}", lines.join("\n")));
    let names = cells(&lines[at]);
    lines[at + 1..]
        .iter()
        .take_while(|line| !line.is_empty())
        .map(|row| {
            let row = cells(row);
            assert_eq!(row.len(), names.len(), "{row:?} under {names:?}");
            names.iter().copied().zip(row).collect()
        })
        .collect()
}

fn number(cell: &str) -> u64 {
    cell.parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not a count"))
}

/// Runs the demo (with `env` added) and returns its transcript, once it succeeded and left
/// nothing behind.
fn run_demo(env: &[(&str, &str)]) -> Transcript {
    let child = Command::new(env!("CARGO_BIN_EXE_apns-demo"))
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the demo");
    let pid = child.id();
    let output = child.wait_with_output().expect("running the demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the demo failed: {}",
        output.status
    );

    // Nothing of the demo's process is left: namespaces, pins, scratch files.
    let mine = |dir: &str, prefix: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.starts_with(&format!("{prefix}{pid}-")))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(mine("/run/netns", NETNS_PREFIX), Vec::<String>::new());
    assert_eq!(mine("/sys/fs/bpf", PIN_PREFIX), Vec::<String>::new());
    assert!(!std::env::temp_dir()
        .join(format!("apns-demo-{pid}"))
        .exists());
    Transcript::parse(&stdout)
}

/// Everything but the fast path's own counters, which depend on the fast path.
fn check(transcript: &Transcript) {
    let titles: Vec<&str> = transcript.steps.iter().map(|(t, _)| t.as_str()).collect();
    // Each step after the one before it.
    let mut at = 0;
    for step in STEPS {
        let found = titles[at..]
            .iter()
            .position(|title| title.starts_with(step))
            .unwrap_or_else(|| panic!("no step {step:?} after {:?}", &titles[..at]));
        at += found + 1;
    }

    // doctor: the kernel probed, every program through the verifier, no failure.
    let doctor = transcript.step("apns-agent doctor");
    assert!(
        doctor
            .iter()
            .any(|line| line.contains(" kernel: Linux ") && line.contains("fib_lookup")),
        "{doctor:?}"
    );
    assert!(
        line(doctor, "doctor: ").contains(" 0 failures"),
        "{doctor:?}"
    );
    let verified: Vec<&String> = doctor
        .iter()
        .filter(|line| line.contains(" verifier apns_"))
        .collect();
    assert!(!verified.is_empty(), "{doctor:?}");
    assert!(
        verified.iter().all(|line| line.contains("accepted")),
        "{verified:?}"
    );

    // Traffic, and the two devices with trouble on their path.
    let traffic = transcript.step("driving traffic");
    for expected in [
        "ok   5 x device -> Apple 5223 (APNs)",
        "ok   3 x device -> Apple 443 over IPv6 (APNs fallback)",
        "ok   2 x MDM server -> Apple 2197 (provider API)",
        "ok   2 x VLAN device -> Apple 5223 (802.1Q tagged at the gateway)",
        "ok   2 x device -> non-Apple 443 (ordinary HTTPS)",
        "ok   2 x device 192.0.2.11 -> Apple 5223, then 3 s idle: reset",
        "fail 1 x device 192.0.2.12 -> Apple 5223: no answer (dropped upstream); ok 1 x the same device -> Apple 443",
    ] {
        line(traffic, expected);
    }

    let policy = transcript.step("live policy change");
    line(policy, "ok   1 x MDM server -> Apple 2197");
    line(policy, "drop 1 x device -> non-Apple 5223");
    line(policy, "drop 1 x device -> Apple 2197");

    // The filter dropped the one SYN before the fast path, and nothing after.
    let filter = transcript.step("a content filter on the gateway");
    line(
        filter,
        "fail 1 x device -> Apple 5223: no answer, the filter dropped its SYN (filter drops: 1)",
    );
    line(filter, "ok   1 x device -> Apple 5223: through, and the filter dropped nothing more (filter drops: 1)");

    // Each device's finding, in the table and in words.
    let clients = transcript.step("which devices reach APNs");
    let devices = table(clients, "device");
    let device = |address: &str| {
        devices
            .iter()
            .find(|row| row["device"] == address)
            .unwrap_or_else(|| panic!("no device {address} in {devices:?}"))
    };
    let idle = device("192.0.2.11");
    assert!(
        idle["finding"].starts_with("cut while idle after ~3 s"),
        "{idle:?}"
    );
    // Both reset by the ISP's firewall, and counted as cuts, not as resets.
    assert_eq!(
        (idle["cuts"], idle["resets"], idle["open"]),
        ("2", "0", "1"),
        "{idle:?}"
    );
    let blocked = device("192.0.2.12");
    assert_eq!(
        blocked["finding"],
        "falls back to 443 (5223 is blocked on the path)"
    );
    assert_eq!(
        (blocked["failed"], blocked["443 fallbacks"], blocked["open"]),
        ("1", "1", "1"),
        "{blocked:?}"
    );
    // The device whose SYN the filter dropped: one failed handshake, then through.
    let device_10 = device("192.0.2.10");
    assert_eq!((device_10["finding"], device_10["failed"]), ("ok", "1"));
    for address in ["2001:db8:1::10", "198.51.100.10"] {
        assert_eq!(device(address)["finding"], "ok", "{address}");
    }
    assert_eq!(devices.len(), 5, "{devices:?}");
    // Worst first.
    assert_eq!(devices[0]["device"], "192.0.2.11");
    assert_eq!(devices[1]["device"], "192.0.2.12");
    line(
        clients,
        "192.0.2.11: cut while idle: a firewall or NAT on its path forgets idle connections",
    );
    line(
        clients,
        "192.0.2.12: falls back to 443: its 5223 gets no answer on its path",
    );

    // The counters: only rows with a count, the exact handshakes of the run.
    let counters = transcript.step("counters");
    // At least one reset per cut connection; more where the idle device sent a second
    // segment before the first reset came back (a slow guest of the kernel matrix).
    // Apple's host may reset a connection itself on a slow machine (a segment that reached
    // its socket after the firewall had reset that); it counts those.
    let reset_counts: Vec<u64> = line(counters, "the ISP's firewall sent ")
        .split(' ')
        .filter_map(|word| word.parse().ok())
        .collect();
    let [resets, apple_resets] = reset_counts[..] else {
        panic!("the firewall's and Apple's reset counts: {reset_counts:?}");
    };
    assert!(resets >= 2, "{resets} resets for 2 cut connections");
    let traffic = table(counters, "interface  direction");
    for row in &traffic {
        let numbers: Vec<u64> = ["packets", "bytes", "syn", "synack", "rst", "fin", "drops"]
            .iter()
            .map(|column| number(row[column]))
            .collect();
        assert!(numbers.iter().any(|&n| n > 0), "an all-zero row: {row:?}");
    }
    let row = |interface: &str, direction: &str, port: &str| {
        traffic
            .iter()
            .find(|row| {
                row["interface"] == interface
                    && row["direction"] == direction
                    && row["port"] == port
            })
            .unwrap_or_else(|| panic!("no row {interface} {direction} {port} in {traffic:?}"))
    };
    // The handshakes the demo made, as SYNs: lan0's 5223 SYNs are 5 of the device, 2 cut
    // and 1 again of the idle device, 1 of the blocked device, 1 into the filter and 1
    // through it; the answers all but the blocked and the filtered SYN's.
    let made = [
        (
            "lan0",
            "outbound",
            "syn",
            [("5223", 11), ("443", 4), ("2197", 1)].as_slice(),
        ),
        ("lan1", "outbound", "syn", &[("2197", 3)]),
        ("lan2", "outbound", "syn", &[("5223", 2)]),
        (
            "wan0",
            "inbound",
            "synack",
            &[("5223", 11), ("443", 4), ("2197", 3)],
        ),
    ];
    // A handshake answered after the first retransmission timeout (a slow guest of the
    // kernel matrix) adds a SYN or SYN-ACK, which the sending host counts: each interface's
    // total is exact with them, and each port's where its host retransmitted nothing.
    let retransmits: Vec<u64> = line(counters, "SYN retransmissions: ")
        .split(", ")
        .map(|part| number(part.rsplit(' ').next().unwrap()))
        .collect();
    assert_eq!(retransmits.len(), 4, "{retransmits:?}");
    for ((interface, direction, column, ports), retransmitted) in made.into_iter().zip(retransmits)
    {
        let counted = |port: &str| number(row(interface, direction, port)[column]);
        let total: u64 = ports.iter().map(|&(port, _)| counted(port)).sum();
        let designed: u64 = ports.iter().map(|&(_, count)| count).sum();
        assert_eq!(
            total,
            designed + retransmitted,
            "{interface} {direction} {column}: {designed} handshakes, {retransmitted} retransmissions"
        );
        for &(port, count) in ports {
            if retransmitted == 0 {
                assert_eq!(
                    counted(port),
                    count,
                    "{interface} {direction} {port} {column}"
                );
            } else {
                assert!(
                    counted(port) >= count,
                    "{interface} {direction} {port} {column}"
                );
            }
        }
    }
    for (interface, direction, port, column, count) in [
        ("lan0", "outbound", "5223", "drops", 0),
        ("lan0", "outbound", "2197", "drops", 1),
    ] {
        assert_eq!(
            number(row(interface, direction, port)[column]),
            count,
            "{interface} {direction} {port} {column}"
        );
    }
    // Every reset wan0 counted inbound is the firewall's (all on 5223, the cut device's) or
    // Apple's host's (on whichever port's socket it reset).
    let wan0_resets: u64 = traffic
        .iter()
        .filter(|row| row["interface"] == "wan0" && row["direction"] == "inbound")
        .map(|row| number(row["rst"]))
        .sum();
    assert_eq!(wan0_resets, resets + apple_resets, "wan0 inbound rst");
    let on_5223 = number(row("wan0", "inbound", "5223")["rst"]);
    if apple_resets == 0 {
        assert_eq!(on_5223, resets, "wan0 inbound 5223 rst");
    } else {
        assert!(on_5223 >= resets, "wan0 inbound 5223 rst: {on_5223}");
    }
    // Those 8 rows, and no other APNs row: 4 interfaces x 5 ports x 2 directions.
    assert_eq!(traffic.len(), 8, "{traffic:?}");
    let drops = table(counters, "interface  pinhole_drops");
    let lan0 = drops
        .iter()
        .find(|row| row["interface"] == "lan0")
        .expect("lan0's policy drops");
    assert_eq!((lan0["pinhole_drops"], lan0["provider_drops"]), ("1", "1"));
    // Every interface had other packets (ARP, neighbour discovery): the hidden rows are
    // the 32 quiet traffic rows.
    assert_eq!(drops.len(), 4, "{drops:?}");
    let note = counters
        .iter()
        .find(|line| line.ends_with("all-zero rows not shown (`stats --all` shows every row)"))
        .unwrap_or_else(|| panic!("no note of hidden rows in {counters:?}"));
    assert_eq!(
        number(note.split_whitespace().next().unwrap()),
        32,
        "{note}"
    );

    // The metrics say the same.
    let metrics = transcript.step("an excerpt of /metrics");
    for (series, value) in [
        (r#"apns_unhealthy_devices{finding="cut_while_idle"}"#, "1"),
        (
            r#"apns_unhealthy_devices{finding="falls_back_to_443"}"#,
            "1",
        ),
        (r#"apns_port443_connections_total{kind="fallback"}"#, "1"),
        (r#"apns_port443_connections_total{kind="direct"}"#, "3"),
        (
            r#"apns_handshake_failures_total{port="5223",reason="unanswered"}"#,
            "2",
        ),
    ] {
        assert_eq!(
            line(metrics, &format!("{series} ")),
            format!("{series} {value}")
        );
    }
    assert!(metrics
        .iter()
        .any(|line| line.starts_with("apns_policy_drops_total{")
            && line.contains(r#"reason="pinhole""#)
            && line.ends_with(" 1")));

    // The replay: the devices' frames, and what enforce drops of them.
    let replay = transcript.step("replay");
    // A frame the kernel dropped before tcpdump saw it would make the comparison below moot.
    assert!(
        line(replay, "tcpdump:").contains(" 0 packets dropped by kernel"),
        "{replay:?}"
    );
    line(
        replay,
        "enforce would have dropped 2 frames (inbound_open 0, pinhole 1, provider 1, unfinished 0)",
    );
    // The frames the devices on lan0 sent are the APNs frames lan0 counted live: the
    // replay's counts are the live table's.
    let replayed = table(replay, "interface");
    let mut compared = 0;
    for replayed in &replayed {
        if number(replayed["packets"]) == 0 {
            continue;
        }
        let live = row("lan0", replayed["direction"], replayed["port"]);
        for column in ["packets", "bytes", "syn", "synack", "rst", "fin"] {
            assert_eq!(
                replayed[column], live[column],
                "replayed {column} of {replayed:?}, live {live:?}"
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 3, "lan0's 443, 2197 and 5223: {replayed:?}");

    let done = transcript.steps.last().expect("steps").0.as_str();
    assert!(done.starts_with("done in "), "{done}");
}

#[test]
fn the_demo_shows_every_step_with_the_redirect_fast_path() {
    apns_tests::require_root!();
    let transcript = run_demo(&[]);
    check(&transcript);
    line(transcript.step("apns-agent doctor"), "ok    kernel: Linux ");
    // Both sides of the connection through the filter went by the fast path, none to the
    // stack.
    let filter = transcript.step("a content filter on the gateway");
    line(filter, "-> redirect on lan0 and wan0");
    for interface in ["lan0", "wan0"] {
        let paths = line(
            filter,
            &format!("interface {interface}: redirect paths: xdp "),
        );
        let words: Vec<&str> = paths.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let after = |word: &str| {
            let at = words.iter().position(|w| *w == word).unwrap();
            number(words[at + 1])
        };
        assert!(after("xdp") + after("tc") > 0, "{paths}");
        assert_eq!(after("stack"), 0, "{paths}");
    }
}

#[test]
fn the_demo_takes_the_mark_fast_path_where_the_kernel_cannot_redirect() {
    apns_tests::require_root!();
    let transcript = run_demo(&[("APNS_AGENT_FEATURES_OFF", "fib_lookup")]);
    check(&transcript);
    assert!(
        line(transcript.step("apns-agent doctor"), "warn  kernel: Linux ")
            .contains("fib_lookup no"),
        "doctor warns of the redirect fast path"
    );
    let filter = transcript.step("a content filter on the gateway");
    line(filter, "-> mark on lan0");
    // The device's packets of the connection through the filter, each marked and accepted
    // by the exemption rule: at least its SYN, its ACK, its data and its FIN.
    let accepted = line(filter, "marked packets the filter accepted: ");
    let count = number(accepted.rsplit(' ').next().unwrap());
    assert!(count >= 4, "{accepted}");
}
