//! The rules of docs/clients.md on crafted tables: one case per finding, the cases the lab
//! cannot make (a middlebox that drops instead of resetting, a reset with another TTL,
//! an answer that never reaches the device), and the order of the report.

use std::net::Ipv4Addr;

use super::*;

const S: u64 = 1_000_000_000;
/// "Now" in the crafted tables: two hours of history fit before it.
const NOW: u64 = 10_000 * S;
const APPLE: [u8; 4] = [17, 249, 1, 10];

/// A connection of device 192.0.2.`device` from `port` to Apple on `apple_port`, its
/// first SYN `first` seconds before now; `edit` fills in the rest.
fn conn(
    device: u8,
    port: u16,
    apple_port: u16,
    first: u64,
    edit: impl FnOnce(&mut ConnValue),
) -> (ConnKey, ConnValue) {
    let mut key = ConnKey {
        device_port: port,
        apple_port,
        ip_version: 4,
        ..ConnKey::default()
    };
    key.device[..4].copy_from_slice(&[192, 0, 2, device]);
    key.apple[..4].copy_from_slice(&APPLE);
    let mut value = ConnValue {
        first_ns: NOW - first * S,
        out_last_ns: NOW - first * S,
        out_packets: 1,
        syns: 1,
        ifindex: 2,
        ..ConnValue::default()
    };
    edit(&mut value);
    (key, value)
}

/// Apple answered `after` seconds after the first SYN (TTL 60), the device went on, and
/// the last packets either way came `idle` seconds before now.
fn established(value: &mut ConnValue, after: u64, idle: u64) {
    value.synack_ns = value.first_ns + after * S;
    value.synack_ttl = 60;
    value.out_packets = 5;
    value.in_packets = 4;
    value.out_last_ns = NOW - idle * S;
    value.in_last_ns = NOW - idle * S;
}

/// An idle cut: after `gap` seconds of silence the device resumed `ago` seconds before
/// now, and a RST (TTL `ttl`) came right after, unless `reset` is false (then the
/// middlebox dropped it and nothing came back).
fn cut(value: &mut ConnValue, ago: u64, gap: u64, reset: bool) {
    value.synack_ns = value.first_ns + S;
    value.synack_ttl = 60;
    value.out_packets = 6;
    value.in_packets = 3;
    value.in_last_ns = NOW - (ago + gap) * S;
    value.resume_ns = NOW - ago * S;
    value.resume_gap_ns = gap * S;
    value.out_last_ns = NOW - ago * S;
    if reset {
        value.in_rst_ns = NOW - ago * S + S / 10;
        value.rst_ttl = 63;
        value.end = End::RstApple as u64;
    }
}

/// A handshake refused right away by a RST with IP TTL `ttl`.
fn refused(value: &mut ConnValue, ttl: u8) {
    value.in_rst_ns = value.first_ns + S / 100;
    value.rst_ttl = ttl;
    value.end = End::RstApple as u64;
}

fn report(entries: Vec<(ConnKey, ConnValue)>) -> Report {
    let table = ConnTable {
        now_ns: NOW,
        size: 65_536,
        stats: ConnStats {
            made: entries.len() as u64,
            ..ConnStats::default()
        },
        entries,
    };
    let rules = Rules {
        idle_cut_min: Duration::from_secs(60),
        ..Rules::default()
    };
    Report::build(&table, &rules, |_| "lan0".to_owned())
}

fn finding(report: &Report, device: u8) -> (Finding, bool, String) {
    let device = report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, device)))
        .unwrap_or_else(|| panic!("device {device} missing: {report:#?}"));
    (device.finding, device.failing, device.words.clone())
}

#[test]
fn a_healthy_device_is_ok() {
    let report = report(vec![conn(1, 40_000, 5223, 3000, |v| established(v, 1, 30))]);
    assert_eq!(finding(&report, 1), (Finding::Ok, false, "ok".to_owned()));
    let device = &report.devices[0];
    assert_eq!((device.open, device.handshakes.established), (1, 1));
    assert_eq!(report.open[&("lan0".to_owned(), 5223)], 1);
}

#[test]
fn unanswered_refused_and_incomplete_handshakes() {
    let report = report(vec![
        // Device 1: no answer, 20 s and 5 s ago (the latter still pending).
        conn(1, 40_000, 5223, 20, |v| v.syns = 3),
        conn(1, 40_001, 5223, 5, |_| {}),
        // Device 2: refused, RST TTL as Apple's SYN-ACKs: by Apple.
        conn(2, 40_000, 5223, 30, |v| refused(v, 60)),
        // Device 4: refused by something else (TTL 63 where Apple's SYN-ACKs say 60).
        conn(4, 40_000, 5223, 30, |v| refused(v, 63)),
        // Device 3: Apple answered, the device never completed: never connected.
        conn(3, 40_000, 5223, 40, |v| {
            v.synack_ns = v.first_ns + S / 100;
            v.synack_ttl = 60;
        }),
    ]);
    assert_eq!(finding(&report, 1).0, Finding::NoAnswer);
    assert!(finding(&report, 1).1);
    assert_eq!(
        report.devices[0].handshakes.unanswered, 1,
        "the other is pending"
    );
    assert_eq!(finding(&report, 2).0, Finding::ResetByApple);
    assert_eq!(finding(&report, 4).0, Finding::ResetByNetwork);
    assert_eq!(finding(&report, 3).0, Finding::NeverConnected);
    // Worst first: failing devices by finding.
    let order: Vec<Finding> = report.devices.iter().map(|d| d.finding).collect();
    assert_eq!(
        order,
        [
            Finding::NoAnswer,
            Finding::ResetByNetwork,
            Finding::ResetByApple,
            Finding::NeverConnected
        ]
    );
}

#[test]
fn a_device_that_connected_before_fails_by_its_latest_cause() {
    let report = report(vec![
        conn(1, 40_000, 5223, 3000, |v| {
            established(v, 1, 2000);
            v.out_fin_ns = NOW - 2000 * S;
            v.end = End::FinDevice as u64;
        }),
        conn(1, 40_001, 5223, 100, |v| refused(v, 60)),
        conn(1, 40_002, 5223, 50, |_| {}),
    ]);
    assert_eq!(finding(&report, 1).0, Finding::NoAnswer);
    // Mixed causes on a device that never connected: never connected.
    let report = super::tests::report(vec![
        conn(2, 40_001, 5223, 100, |v| refused(v, 60)),
        conn(2, 40_002, 5223, 50, |_| {}),
    ]);
    assert_eq!(finding(&report, 2).0, Finding::NeverConnected);
}

#[test]
fn cuts_while_idle_reset_or_silent_at_a_similar_gap() {
    // Device 1: a middlebox resets after ~10 min of idle, twice, then a new connection.
    // Device 2: one that drops instead: the device gives up and opens a new connection.
    // Device 3: gaps of 10 and 30 minutes: not similar.
    // Device 5: one cut only.
    let report = report(vec![
        conn(1, 40_000, 5223, 3000, |v| cut(v, 2300, 600, true)),
        conn(1, 40_001, 5223, 2290, |v| cut(v, 1500, 620, true)),
        conn(1, 40_002, 5223, 1490, |v| established(v, 1, 10)),
        conn(2, 40_000, 5223, 3000, |v| cut(v, 2300, 600, false)),
        conn(2, 40_001, 5223, 2200, |v| cut(v, 1500, 600, false)),
        conn(2, 40_002, 5223, 1400, |v| established(v, 1, 10)),
        conn(3, 40_000, 5223, 3500, |v| cut(v, 2800, 600, true)),
        conn(3, 40_001, 5223, 2790, |v| cut(v, 900, 1800, true)),
        conn(3, 40_002, 5223, 890, |v| established(v, 1, 10)),
        conn(5, 40_000, 5223, 3000, |v| cut(v, 2300, 600, true)),
        conn(5, 40_001, 5223, 2290, |v| established(v, 1, 10)),
    ]);
    let (one, failing, words) = finding(&report, 1);
    assert_eq!((one, failing), (Finding::CutWhileIdle, false));
    assert_eq!(
        words,
        "cut while idle after ~10 min (a timeout on the path is shorter than the keep-alive)"
    );
    assert_eq!(finding(&report, 2).0, Finding::CutWhileIdle);
    let silent = report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
        .unwrap();
    assert_eq!(silent.idle_cuts_secs, [600.0, 600.0]);
    // Not similar, or once: the resets it made are the network's (TTL 63, not 60)...
    // but an idle cut's reset is not counted as a reset: nothing else is wrong.
    assert_eq!(finding(&report, 3).0, Finding::Ok);
    assert_eq!(finding(&report, 5).0, Finding::Ok);
}

#[test]
fn resets_of_established_connections_by_whom() {
    let reset = |value: &mut ConnValue, ttl: u8| {
        established(value, 1, 200);
        value.in_rst_ns = NOW - 200 * S;
        value.rst_ttl = ttl;
        value.end = End::RstApple as u64;
    };
    let report = report(vec![
        // Device 1: one reset by Apple: ordinary.
        conn(1, 40_000, 5223, 900, |v| reset(v, 60)),
        conn(1, 40_001, 5223, 190, |v| established(v, 1, 10)),
        // Device 2: two: reset by Apple.
        conn(2, 40_000, 5223, 900, |v| reset(v, 60)),
        conn(2, 40_001, 5223, 800, |v| reset(v, 60)),
        conn(2, 40_002, 5223, 190, |v| established(v, 1, 10)),
        // Device 3: one with another TTL: reset by the network.
        conn(3, 40_000, 5223, 900, |v| reset(v, 64)),
        conn(3, 40_001, 5223, 190, |v| established(v, 1, 10)),
    ]);
    assert_eq!(finding(&report, 1).0, Finding::Ok);
    assert_eq!(finding(&report, 2).0, Finding::ResetByApple);
    assert!(!finding(&report, 2).1, "it holds an open connection");
    assert_eq!(finding(&report, 3).0, Finding::ResetByNetwork);
    let three = report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))
        .unwrap();
    assert_eq!(
        three.resets,
        Resets {
            by_network: 1,
            ..Resets::default()
        }
    );
}

#[test]
fn fallback_to_443_only_right_after_failed_5223() {
    let report = report(vec![
        // Device 1: 5223 unanswered (last SYN 3 s later), 443 10 s after.
        conn(1, 40_000, 5223, 100, |v| {
            v.syns = 2;
            v.out_packets = 2;
            v.out_last_ns = v.first_ns + 3 * S;
        }),
        conn(1, 40_001, 443, 87, |v| established(v, 1, 5)),
        // Device 2: 443 only.
        conn(2, 40_001, 443, 87, |v| established(v, 1, 5)),
        // Device 3: 443 two minutes after a failed 5223: not a fallback.
        conn(3, 40_000, 5223, 300, |_| {}),
        conn(3, 40_001, 443, 180, |v| established(v, 1, 5)),
    ]);
    let one = report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        .unwrap();
    assert_eq!(
        (one.finding, one.fallbacks_443, one.direct_443, one.failing),
        (Finding::FallsBackTo443, 1, 0, false)
    );
    assert_eq!(one.words, "falls back to 443 (5223 is blocked on the path)");
    let two = report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
        .unwrap();
    assert_eq!(
        (two.finding, two.fallbacks_443, two.direct_443),
        (Finding::Ok, 0, 1)
    );
    assert_eq!(finding(&report, 3).0, Finding::Ok);
    // The tally counts each once, after its start.
    let mut tally = Tally::new();
    tally.observe(&super::tests::report(Vec::new()));
    tally.observe(&report);
    tally.observe(&report);
    assert_eq!(tally.connections_443["fallback"], 1);
    assert_eq!(tally.connections_443["direct"], 2);
    assert_eq!(tally.handshake_failures[&(5223, "unanswered")], 2);
}

#[test]
fn old_history_stale_and_abandoned_connections() {
    let report = report(vec![
        // Device 1: failures long before the window, nothing since: not listed.
        conn(1, 40_000, 5223, 9000, |_| {}),
        // Device 2: established long ago, silent for two hours: stale, not open.
        conn(2, 40_000, 5223, 9000, |v| established(v, 1, 7200)),
        // Device 3: a connection abandoned for a newer one on the same port.
        conn(3, 40_000, 5223, 600, |v| established(v, 1, 500)),
        conn(3, 40_001, 5223, 400, |v| established(v, 1, 5)),
    ]);
    assert!(report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        .is_none());
    assert!(report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
        .is_none());
    let three = report
        .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))
        .unwrap();
    assert_eq!(three.open, 1);
    assert_eq!(
        three
            .connections
            .iter()
            .map(|c| c.state)
            .collect::<Vec<_>>(),
        [State::Open, State::Abandoned]
    );
}

#[test]
fn evictions_and_ends_add_up() {
    let mut table = ConnTable {
        now_ns: NOW,
        size: 256,
        entries: vec![
            conn(1, 40_000, 5223, 100, |v| established(v, 1, 5)),
            conn(1, 40_001, 5223, 90, |v| {
                established(v, 1, 50);
                v.end = End::FinDevice as u64;
            }),
        ],
        stats: ConnStats {
            made: 10,
            ..ConnStats::default()
        },
    };
    // 10 made, 2 present: 8 evicted; 4 ends seen (one still present): 3 evicted ended
    // connections, so 5 evicted before their end was seen.
    table.stats.ended[End::FinDevice as usize] = 3;
    table.stats.ended[End::RstApple as usize] = 1;
    let report = Report::build(&table, &Rules::default(), |_| "lan0".to_owned());
    assert_eq!(report.table.evicted, 8);
    assert_eq!(report.ended[EVICTED], 5);
    assert_eq!(report.ended["fin_device"], 3);
}
