//! Allow-lists that stay fresh: a list file changed and re-read on SIGHUP changes the verdict
//! of the next packet, a bad line changes nothing and is counted in /metrics, and Apple's
//! narrow preset classifies Apple's listed ranges as Apple and the rest of 17/8 as not.
//! Needs root.

use std::{net::Ipv4Addr, time::Duration};

use apns_common::counters::{CounterKey, Direction, Outcome};
use apns_tests::{
    agent::{self, spawn_run, TestPins},
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT, GW_IF_WAN, OTHER, REFUSED},
    packets::{self, SYN},
    xdp::{Classifier, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS},
};

const TIMEOUT: Duration = Duration::from_secs(5);
const METRICS: &str = "127.0.0.1:15223";

/// The value of the sample line `series` in an exposition.
fn sample(exposition: &str, series: &str) -> String {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{exposition}"))
        .to_owned()
}

#[test]
fn a_list_file_reread_on_sighup_changes_the_next_verdict_and_a_bad_line_changes_nothing() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let dir = std::env::temp_dir().join(format!("{}-lists", lab.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("allow.txt");
    std::fs::write(&list, "# nothing yet\n").unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"{}\", \"{}\"]\nmode = \"enforce\"\nallow_files = [\"allow.txt\"]\n",
            GW_IF_CLIENT.name, GW_IF_WAN.name
        ),
    )
    .unwrap();
    let mut agent = spawn_run(
        &lab,
        &pins,
        &["run", "--config", &config.display().to_string()],
    )
    .unwrap();
    let other = OTHER.socket(false, 5223);
    let metrics = || agent::scrape_metrics(&lab, METRICS.parse().unwrap()).unwrap();
    assert!(lab.connect(Role::Client, other, REFUSED).is_err());

    // The operator's list now names the "other" host: the next connection passes.
    std::fs::write(
        &list,
        "# managed by cron\n203.0.113.128/25  # the lab's other host\n",
    )
    .unwrap();
    agent.reload().unwrap();
    let reply = lab.echo(Role::Client, other, b"x", TIMEOUT).unwrap();
    assert_eq!(reply, b"x");
    let policy = pins.open().unwrap().policy.read_active().unwrap();
    assert!(policy.allow.contains(&"203.0.113.128/25".parse().unwrap()));

    // A bad line: the whole file is refused, the policy stays, the failure is counted.
    std::fs::write(&list, "203.0.113.128/25\n17.1.0.0/8\n").unwrap();
    agent.reload().unwrap();
    assert_eq!(pins.open().unwrap().policy.read_active().unwrap(), policy);
    let line = agent.wait_for_log("reload refused", TIMEOUT).unwrap();
    assert!(line.contains("allow.txt line 2"), "{line}");
    let text = metrics();
    assert_eq!(sample(&text, "apns_config_reload_failures_total"), "1");
    assert_eq!(sample(&text, "apns_config_last_reload_successful"), "0");
    lab.echo(Role::Client, other, b"x", TIMEOUT).unwrap();

    // Emptied: the next connection is refused again, and the last reload counts as good.
    std::fs::write(&list, "").unwrap();
    agent.reload().unwrap();
    assert!(lab.connect(Role::Client, other, REFUSED).is_err());
    let text = metrics();
    assert_eq!(sample(&text, "apns_config_reload_failures_total"), "1");
    assert_eq!(sample(&text, "apns_config_last_reload_successful"), "1");
    let sources = text
        .lines()
        .find(|line| line.starts_with("apns_policy_sources_info{"))
        .expect("apns_policy_sources_info");
    assert!(
        sources.contains(&format!("allow_files=\"{}\"", list.display()))
            && sources.contains("apple=\"all\""),
        "{sources}"
    );
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_narrow_preset_is_apples_narrow_list() {
    apns_tests::require_root!();
    let config =
        apns_agent::settings::config::Config::parse("apple = \"narrow\"\nmode = \"enforce\"\n")
            .unwrap();
    let classifier = Classifier::load(&config.policy).unwrap();
    let client = Ipv4Addr::new(192, 0, 2, 10);
    for (apple, action, key) in [
        (
            Ipv4Addr::new(17, 249, 1, 10),
            XDP_PASS,
            (5223, Direction::Outbound, Outcome::Pass),
        ),
        (
            Ipv4Addr::new(17, 1, 2, 3),
            XDP_DROP,
            (5223, Direction::None, Outcome::DropPinhole),
        ),
    ] {
        let frame = packets::tcp_v4(client, apple, 40_000, 5223, SYN).bytes();
        let before = classifier.snapshot().unwrap();
        assert_eq!(classifier.run(&frame).unwrap(), action, "to {apple}");
        let (port, direction, outcome) = key;
        let key = CounterKey {
            ifindex: TEST_RUN_IFINDEX,
            port,
            direction: direction as u8,
            outcome: outcome as u8,
        };
        let after = classifier.snapshot().unwrap();
        assert_eq!(
            after.get(&key).packets - before.get(&key).packets,
            1,
            "to {apple}: {key:?}"
        );
    }
}
