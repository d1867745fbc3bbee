//! Enforce that header tricks cannot evade (docs/classification.md, "Unfinished headers"):
//! a pinhole SYN from a device to a host outside Apple on 5223, split into 8-byte IPv4
//! fragments (RFC 1858's tiny-fragment attack) and hidden behind seven IPv6 destination
//! options headers. Enforce drops each first fragment and each deep chain as
//! `drop_unfinished` and passes the later fragments (`fragment`), which nothing reassembles
//! without their first; monitor counts them as `unfinished` and passes them. Checked on the
//! lab gateway (what reached the other host, and the counters) and in `replay`. Needs root.

use std::{path::Path, process::Command, time::Duration};

use apns_common::counters::{Direction, Outcome};
use apns_tests::{
    agent::{self, counter_key, gw_command, gw_ifindex, run_lan_wan, spawn_run, succeed, TestPins},
    lab::{wait_until, Lab, LabOptions, Role, CLIENT, CLIENT_IF, GW_IF_CLIENT, OTHER},
    packets::{self, ipv4_fragments, pcap_bytes, tcp_v4, tcp_v6, Ext, SYN},
    scratch::Scratch,
};

/// How long one wait may take (longer in the kernel matrix's guests).
fn timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5) * apns_tests::time_scale()
}

const PINHOLE: u16 = 5223;
const DEVICE_PORT: u16 = 40_000;

/// The evasions, as the client sends them to the gateway's lan0: the IPv4 SYN's three 8-byte
/// fragments (20 bytes of TCP header: 8 + 8 + 4), then the IPv6 SYN behind seven destination
/// options headers.
fn evasions() -> Vec<Vec<u8>> {
    let v4 = tcp_v4(CLIENT.v4, OTHER.v4, DEVICE_PORT, PINHOLE, SYN).fragment(0, true);
    let mut v6 = tcp_v6(CLIENT.v6, OTHER.v6, DEVICE_PORT, PINHOLE, SYN);
    v6.ipv6_exts = vec![Ext::DestinationOptions(0); 7];
    let mut frames = ipv4_fragments(&v4.build(), 8);
    assert_eq!(frames.len(), 3);
    frames.push(v6.bytes());
    for frame in &mut frames {
        frame[..6].copy_from_slice(&GW_IF_CLIENT.mac);
        frame[6..12].copy_from_slice(&CLIENT_IF.mac);
    }
    frames
}

/// The outcome of each of [`evasions`] in `mode`.
fn outcomes(mode: &str) -> [Outcome; 4] {
    let first = if mode == "enforce" {
        Outcome::DropUnfinished
    } else {
        Outcome::Unfinished
    };
    [first, Outcome::Fragment, Outcome::Fragment, first]
}

/// What reached the other host from the client: IPv4 first fragments (offset 0) and IPv6
/// packets, counted before the host reassembles anything.
const ARRIVALS: &str = "table inet arrivals {
    chain prerouting {
        type filter hook prerouting priority -500; policy accept;
        ip saddr 192.0.2.10 ip frag-off & 0x1fff == 0 counter
        ip6 saddr 2001:db8:1::10 counter
    }
}";

/// The client answers nothing to its forged port (the other host's SYN-ACKs would draw
/// RSTs, which [`ARRIVALS`] would count).
const QUIET_CLIENT: &str = "table inet quiet {
    chain input {
        type filter hook input priority 0; policy accept;
        tcp dport 40000 drop
    }
}";

fn arrivals(lab: &Lab) -> u64 {
    lab.nft_counters(Role::Other, &["table", "inet", "arrivals"])
        .unwrap()
        .iter()
        .sum()
}

#[test]
fn evasions_are_dropped_in_enforce_and_counted_in_monitor_on_the_gateway() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    for role in lab.roles() {
        lab.wait_settled(role, timeout()).unwrap();
    }
    lab.nft(Role::Other, ARRIVALS).unwrap();
    lab.nft(Role::Client, QUIET_CLIENT).unwrap();
    let _agent = spawn_run(&lab, &pins, &run_lan_wan(&["--mode", "enforce"])).unwrap();
    let lan = gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let count = |outcome| {
        pins.snapshot()
            .unwrap()
            .get(&counter_key(lan, Direction::None, 0, outcome))
            .packets
    };
    for mode in ["enforce", "monitor"] {
        succeed(&mut gw_command(&lab, &pins, &["mode", mode])).unwrap();
        // Two of each: the IPv4 first fragment and the deep chain, the two later fragments.
        let [unfinished, ..] = outcomes(mode);
        let before = [unfinished, Outcome::Fragment].map(count);
        let arrived = arrivals(&lab);
        lab.send_frames(Role::Client, CLIENT_IF.name, &evasions())
            .unwrap();
        wait_until("the evasions counted", timeout(), || {
            [unfinished, Outcome::Fragment].map(count) == before.map(|n| n + 2)
        });
        // What the stack forwarded has had time to arrive.
        std::thread::sleep(Duration::from_millis(200));
        let reached = arrivals(&lab) - arrived;
        if mode == "enforce" {
            assert_eq!(reached, 0, "a first fragment or the deep chain got through");
        } else {
            assert_eq!(
                reached, 2,
                "monitor: the first fragment and the deep chain pass"
            );
        }
        assert_eq!(
            count(Outcome::DropPinhole),
            0,
            "{mode}: judged as whole packets"
        );
    }
}

/// `replay --json --frames` of the evasions in `mode`: each frame's outcome and action.
fn replay(pins: &TestPins, capture: &Path, mode: &str) -> Vec<(String, String)> {
    let mut cmd = Command::new(agent::binary());
    agent::command(
        &mut cmd,
        pins,
        &["replay", "--json", "--frames", "--mode", mode],
    );
    cmd.arg(capture);
    let stdout = agent::succeed(&mut cmd).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("{err}: {stdout}"));
    report["frame_verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|frame| {
            (
                frame["outcome"].as_str().unwrap().to_owned(),
                frame["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn replay_says_what_enforce_would_drop_of_the_evasions() {
    apns_tests::require_root!();
    let pins = TestPins::new();
    let scratch = Scratch::new("evasion");
    let capture = scratch.path("evasions.pcap");
    std::fs::write(&capture, pcap_bytes(1, &evasions())).unwrap();
    for mode in ["enforce", "monitor"] {
        let want: Vec<(String, String)> = outcomes(mode)
            .iter()
            .map(|outcome| {
                let action = if outcome.is_drop() { "drop" } else { "pass" };
                (outcome.as_str().to_owned(), action.to_owned())
            })
            .collect();
        assert_eq!(replay(&pins, &capture, mode), want, "{mode}");
    }
    // The same SYN as one frame: a pinhole drop, as before.
    let whole = packets::tcp_v4(CLIENT.v4, OTHER.v4, DEVICE_PORT, PINHOLE, SYN).bytes();
    std::fs::write(&capture, pcap_bytes(1, &[whole])).unwrap();
    assert_eq!(
        replay(&pins, &capture, "enforce"),
        [("drop_pinhole".to_owned(), "drop".to_owned())]
    );
}
