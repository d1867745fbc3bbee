//! Each optional kernel feature switched off in turn (`APNS_AGENT_FEATURES_OFF`, as if the
//! kernel lacked it): the datapath loads without it, `status` and /metrics say so, what
//! depends on it takes its other way or is refused with the feature's name, and the counters
//! and the connection table stay exact. Needs root; each feature gets a lab of its own.

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use apns_agent::datapath::features::FEATURES_OFF_VAR;
use apns_common::counters::{Direction, Outcome};
use apns_tests::{
    agent::{self, gw_command, TestPins},
    lab::{Lab, LabOptions, Role, APPLE, GW_IF_CLIENT, GW_IF_WAN},
};

const METRICS: &str = "127.0.0.1:15223";
/// How long one connection may take (longer in the kernel matrix's guests).
fn timeout() -> Duration {
    Duration::from_secs(5) * apns_tests::time_scale()
}

/// APNs connections each lab makes from the client to Apple's 5223.
const CONNECTIONS: u64 = 5;

/// The optional features whose absence leaves the agent running (without `xdp_link` nothing
/// attaches: [`without_xdp_link_nothing_attaches_and_the_refusal_names_it`]).
const RUNNABLE_WITHOUT: [&str; 5] = [
    "xdp_meta",
    "fib_lookup",
    "redirect_neigh",
    "coarse_clock",
    "tcx",
];

#[test]
fn each_optional_feature_off_loads_counts_exactly_and_says_what_changed() {
    apns_tests::require_root!();
    for feature in RUNNABLE_WITHOUT {
        feature_off(feature);
    }
}

fn feature_off(feature: &str) {
    let lab = Lab::new(LabOptions::default()).unwrap();
    // What redirecting between veths needs (GRO on the peers, full checksums).
    lab.redirect_offloads().unwrap();
    let pins = TestPins::new();
    let (lan, wan) = (GW_IF_CLIENT.name, GW_IF_WAN.name);
    // Redirect on both sides (a stateful stack must see both halves of a connection or
    // neither); without bpf_fib_lookup redirect is refused (asked for below): mark instead.
    let fastpath = if feature == "fib_lookup" {
        "mark"
    } else {
        "redirect"
    };
    let (lan_fastpath, wan_fastpath) = (format!("{lan}={fastpath}"), format!("{wan}={fastpath}"));
    let devices = format!("{lan}=devices");
    let args = agent::run_lan_wan(&[
        "--metrics-addr",
        METRICS,
        "--role",
        &devices,
        "--fastpath",
        &lan_fastpath,
        "--fastpath",
        &wan_fastpath,
    ]);
    let env = [(FEATURES_OFF_VAR, feature)];
    let agent = agent::spawn_run_env(&lab, &pins, &args, true, &env)
        .unwrap_or_else(|err| panic!("{feature} off: {err:#}"));

    let status = status_json(&lab, &pins, &env);
    assert_eq!(
        status["kernel"]["features"][feature],
        serde_json::Value::Bool(false),
        "{feature} off: {status:#}"
    );
    if feature == "fib_lookup" {
        let mut cmd = gw_command(&lab, &pins, &["fastpath", wan, "redirect"]);
        cmd.envs(env);
        let refused = agent::fail(&mut cmd).unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("kernel feature fib_lookup") && stderr.contains(wan),
            "{stderr}"
        );
        let status = status_json(&lab, &pins, &env);
        assert!(
            status["interfaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|interface| interface["fastpath"] != "redirect"),
            "a refused redirect changed the datapath: {status:#}"
        );
    }

    for _ in 0..CONNECTIONS {
        assert_eq!(
            lab.echo(Role::Client, APPLE.socket(false, 5223), b"ping", timeout())
                .unwrap_or_else(|err| panic!("{feature} off: {err}")),
            b"ping"
        );
    }
    let lan_index = agent::gw_ifindex(&lab, lan).unwrap();
    let wan_index = agent::gw_ifindex(&lab, wan).unwrap();
    let snapshot = pins.snapshot().unwrap();
    let sum = |ifindex, direction, field: fn(&apns_common::counters::CounterValue) -> u64| {
        [Outcome::Pass, Outcome::Fastpath, Outcome::FastpathTc]
            .into_iter()
            .map(|outcome| {
                field(&snapshot.get(&agent::counter_key(ifindex, direction, 5223, outcome)))
            })
            .sum::<u64>()
    };
    assert_eq!(
        sum(lan_index, Direction::Outbound, |value| value.syn),
        CONNECTIONS,
        "{feature} off: the device's SYNs on {lan}"
    );
    assert_eq!(
        sum(wan_index, Direction::Inbound, |value| value.synack),
        CONNECTIONS,
        "{feature} off: Apple's SYN-ACKs on {wan}"
    );

    let samples = agent::samples(&agent::scrape_metrics(&lab, METRICS.parse().unwrap()).unwrap());
    assert_eq!(
        samples.get(&format!(r#"apns_kernel_feature{{feature="{feature}"}}"#)),
        Some(&0.0),
        "{feature} off"
    );
    // Every connection the device opened and closed is in the connection table, ended once.
    let ended: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("apns_connections_ended_total{"))
        .map(|(_, value)| value)
        .sum();
    assert_eq!(
        ended, CONNECTIONS as f64,
        "{feature} off: connections ended"
    );
    drop(agent);
}

/// `status --json` with `env` (the switch applies to every apns-agent process that reads it).
fn status_json(lab: &Lab, pins: &TestPins, env: &[(&str, &str)]) -> serde_json::Value {
    let mut cmd = gw_command(lab, pins, &["status", "--json"]);
    cmd.envs(env.iter().copied());
    let text = agent::succeed(&mut cmd).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[test]
fn without_xdp_link_nothing_attaches_and_the_refusal_names_it() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let mut cmd = gw_command(&lab, &pins, &["attach", GW_IF_CLIENT.name]);
    cmd.env(FEATURES_OFF_VAR, "xdp_link");
    let refused = agent::fail(&mut cmd).unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("kernel feature xdp_link") && stderr.contains(GW_IF_CLIENT.name),
        "{stderr}"
    );
    assert!(
        pins.dir().links().unwrap().is_empty(),
        "a refused attach left a link"
    );
}

/// Before Linux 5.11 every BPF object counts against RLIMIT_MEMLOCK, over all of a user's
/// objects: with a datapath pinned (megabytes of maps), a command run from a shell with
/// Debian 11's 64 KiB limit failed its feature probe with EPERM, as root. The agent lifts
/// its own limit when a load hits it, as aya does: a second attach and `status` work. (On
/// later kernels the limit plays no part and this passes either way; the kernel matrix runs
/// it on 5.10.)
#[test]
fn commands_work_under_a_small_memlock_limit_while_a_datapath_is_pinned() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    agent::succeed(&mut gw_command(&lab, &pins, &["attach", GW_IF_CLIENT.name])).unwrap();
    let mut attach = gw_command(&lab, &pins, &["attach", GW_IF_WAN.name]);
    agent::succeed(with_memlock_limit(&mut attach)).unwrap();
    assert_eq!(pins.dir().links().unwrap().len(), 2);
    let mut status = gw_command(&lab, &pins, &["status", "--json"]);
    let text = agent::succeed(with_memlock_limit(&mut status)).unwrap();
    let status: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status["kernel"]["error"], serde_json::Value::Null, "{text}");
    assert_eq!(status["kernel"]["features"]["xdp_link"], true, "{text}");
}

/// `cmd` with RLIMIT_MEMLOCK at 64 KiB (soft and hard), Debian 11's default for a shell.
fn with_memlock_limit(cmd: &mut Command) -> &mut Command {
    const LIMIT: u64 = 64 * 1024;
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::resource::setrlimit(
                nix::sys::resource::Resource::RLIMIT_MEMLOCK,
                LIMIT,
                LIMIT,
            )
            .map_err(std::io::Error::from)
        })
    }
}
