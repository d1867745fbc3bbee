//! Counters as ops tooling reads them, from a real agent on the lab gateway: /metrics,
//! `stats --json` and the node_exporter textfile show exactly the connections the test made,
//! and all three agree; promtool accepts a real scrape; the reachability ratio falls to 0 for
//! a port Apple resets while another stays at 1; SIGHUP re-reads /metrics' web config. Needs
//! root (and promtool, which `cargo xtask setup` installs).

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use apns_tests::{
    agent::{self, TestPins},
    lab::{self, Lab, LabOptions, Role, APPLE, GW_IF_CLIENT, GW_IF_WAN, OTHER, REFUSED},
    scratch::Scratch,
};

const METRICS: &str = "127.0.0.1:15223";
const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts `apns-agent run` in the gateway on lan0 and wan0 (enforce) and waits until it runs.
fn start_agent<'lab>(lab: &'lab Lab, pins: &TestPins, extra: &[&str]) -> agent::Agent<'lab> {
    let mut args = vec![
        "run",
        "--mode",
        "enforce",
        "--metrics-addr",
        METRICS,
        "--iface",
        GW_IF_CLIENT.name,
        "--iface",
        GW_IF_WAN.name,
    ];
    args.extend_from_slice(extra);
    agent::spawn_run(lab, pins, &args).unwrap()
}

/// GET /metrics from inside the gateway.
fn scrape(lab: &Lab) -> anyhow::Result<String> {
    agent::scrape_metrics(lab, METRICS.parse().unwrap())
}

/// Sample lines of an exposition: `name{labels}` -> value.
fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no sample {series}"))
}

fn echo(lab: &Lab, to: SocketAddr, times: usize) {
    for _ in 0..times {
        assert_eq!(
            lab.echo(Role::Client, to, b"ping", TIMEOUT).unwrap(),
            b"ping"
        );
    }
}

fn stats_json(lab: &Lab, pins: &TestPins) -> serde_json::Value {
    let mut cmd = lab.command(Role::Gw, agent::binary());
    agent::command(&mut cmd, pins, &["stats", "--json"]);
    serde_json::from_str(&agent::succeed(&mut cmd).unwrap()).unwrap()
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[test]
fn metrics_stats_and_textfile_show_the_same_exact_counts() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let textfile: PathBuf = std::env::temp_dir().join(format!("{}.prom", lab.id()));
    let textfile_arg = textfile.display().to_string();
    let _agent = start_agent(
        &lab,
        &pins,
        &["--textfile", &textfile_arg, "--textfile-interval", "1"],
    );

    echo(&lab, APPLE.socket(false, 5223), 3);
    echo(&lab, APPLE.socket(false, 443), 2);
    echo(&lab, APPLE.socket(true, 443), 1);
    echo(&lab, OTHER.socket(false, 443), 2);
    assert!(lab
        .connect(Role::Client, OTHER.socket(false, 5223), REFUSED)
        .is_err());

    // Read the three views once the counters stopped moving: a scrape, the next textfile
    // write, and a scrape again must all be the same text.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (scraped, written) = loop {
        assert!(Instant::now() < deadline, "counters never settled");
        let before = scrape(&lab).unwrap();
        let since = modified(&textfile);
        while modified(&textfile) == since {
            std::thread::sleep(Duration::from_millis(50));
        }
        let written = std::fs::read_to_string(&textfile).unwrap();
        if scrape(&lab).unwrap() == before && written == before {
            break (before, written);
        }
    };
    let json = stats_json(&lab, &pins);
    assert_eq!(scraped, written);

    let m = agent::samples(&scraped);
    let tcp = |iface: &str, direction: &str, port: u16, event: &str| {
        value(&m, &format!("apns_tcp_events_total{{interface=\"{iface}\",direction=\"{direction}\",port=\"{port}\",event=\"{event}\"}}"))
    };
    assert_eq!(tcp("lan0", "outbound", 5223, "syn"), 3.0);
    assert_eq!(tcp("lan0", "outbound", 443, "syn"), 3.0, "2 IPv4 + 1 IPv6");
    assert_eq!(tcp("wan0", "inbound", 5223, "synack"), 3.0);
    assert_eq!(tcp("wan0", "inbound", 443, "synack"), 3.0);
    assert_eq!(
        value(
            &m,
            r#"apns_policy_drops_total{interface="lan0",reason="pinhole"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"apns_policy_drops_total{interface="lan0",reason="provider"}"#
        ),
        0.0
    );
    assert_eq!(
        value(
            &m,
            r#"apns_reachability_ratio{interface="all",port="5223"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            r#"apns_datapath_attached{interface="lan0",xdp_mode="native"}"#
        ),
        1.0
    );

    // Every number of `stats --json` is the same as in the exposition.
    let mut compared = 0;
    for iface in json["interfaces"].as_array().unwrap() {
        let name = iface["interface"].as_str().unwrap();
        for traffic in iface["traffic"].as_array().unwrap() {
            let (direction, port) = (
                traffic["direction"].as_str().unwrap(),
                traffic["port"].as_u64().unwrap(),
            );
            for (field, metric, label) in [
                ("packets", "apns_packets_total", "verdict"),
                ("bytes", "apns_bytes_total", "verdict"),
                ("tcp", "apns_tcp_events_total", "event"),
            ] {
                for (key, count) in traffic[field].as_object().unwrap() {
                    let series = format!("{metric}{{interface=\"{name}\",direction=\"{direction}\",port=\"{port}\",{label}=\"{key}\"}}");
                    assert_eq!(value(&m, &series), count.as_f64().unwrap(), "{series}");
                    compared += 1;
                }
            }
        }
        for (field, metric, label) in [
            ("policy_drops", "apns_policy_drops_total", "reason"),
            ("other", "apns_other_packets_total", "class"),
        ] {
            for (key, count) in iface[field].as_object().unwrap() {
                let series = format!("{metric}{{interface=\"{name}\",{label}=\"{key}\"}}");
                assert_eq!(value(&m, &series), count.as_f64().unwrap(), "{series}");
                compared += 1;
            }
        }
    }
    assert!(compared > 50, "only {compared} numbers compared");

    // promtool's linter has nothing to say about a real scrape.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed by cargo xtask setup");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scraped.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_file(&textfile).unwrap();
}

#[test]
fn reachability_falls_to_zero_for_a_port_apple_resets() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    // The Apple host answers SYNs on 5223 with a reset from now on.
    lab::run(Command::new("ip").args([
        "netns", "exec", lab.ns_name(Role::Apple), "nft",
        "add table inet apns_test; add chain inet apns_test input { type filter hook input priority 0; }; add rule inet apns_test input tcp dport 5223 reject with tcp reset",
    ]))
    .unwrap();
    let pins = TestPins::new();
    let _agent = start_agent(&lab, &pins, &[]);

    for _ in 0..4 {
        assert!(
            lab.connect(Role::Client, APPLE.socket(false, 5223), TIMEOUT)
                .is_err(),
            "5223 should be reset"
        );
    }
    echo(&lab, APPLE.socket(false, 443), 2);

    let m = agent::samples(&scrape(&lab).unwrap());
    assert_eq!(
        value(
            &m,
            r#"apns_reachability_ratio{interface="all",port="5223"}"#
        ),
        0.0
    );
    assert_eq!(
        value(&m, r#"apns_reachability_ratio{interface="all",port="443"}"#),
        1.0
    );
    let rst = value(
        &m,
        r#"apns_tcp_events_total{interface="wan0",direction="inbound",port="5223",event="rst"}"#,
    );
    assert_eq!(rst, 4.0, "one reset per attempt");
    assert!(
        !m.keys()
            .any(|k| k.starts_with("apns_reachability_ratio") && k.contains("port=\"2197\"")),
        "no ratio without attempts"
    );
}

#[test]
fn events_stream_names_each_refused_flow() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let _agent = start_agent(&lab, &pins, &[]);
    for _ in 0..3 {
        assert!(lab
            .connect(Role::Client, OTHER.socket(false, 5223), REFUSED)
            .is_err());
    }
    assert!(lab
        .connect(Role::Client, OTHER.socket(true, 2197), REFUSED)
        .is_err());

    let mut cmd = lab.command(Role::Gw, agent::binary());
    agent::command(&mut cmd, &pins, &["events", "--json", "--count", "4"]);
    let output = agent::succeed(&mut cmd).unwrap();
    let events: Vec<serde_json::Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4, "{output}");
    for event in &events[..3] {
        assert_eq!(event["interface"], "lan0");
        assert_eq!(event["reason"], "pinhole");
        assert_eq!(event["protocol"], "tcp");
        assert_eq!(event["src"], lab::CLIENT.v4.to_string());
        assert_eq!(event["dst"], OTHER.v4.to_string());
        assert_eq!(event["dport"], 5223);
        assert!(humantime::parse_rfc3339(event["time"].as_str().unwrap()).is_ok());
    }
    assert_eq!(events[3]["dst"], OTHER.v6.to_string());
    assert_eq!(events[3]["dport"], 2197);
}

#[test]
fn ebpf_log_flag_forwards_the_datapaths_log_and_off_removes_it() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let mut agent = start_agent(&lab, &pins, &["--ebpf-log", "debug"]);
    assert_eq!(
        pins.open().unwrap().ebpf_log().unwrap(),
        apns_agent::datapath::EbpfLog::Debug
    );
    assert!(lab
        .connect(Role::Client, OTHER.socket(false, 5223), REFUSED)
        .is_err());
    let line = agent
        .wait_for_log("policy drop on ifindex", Duration::from_secs(20))
        .unwrap();
    assert!(line.contains("dport 5223"), "{line}");
    agent.stop(TIMEOUT).unwrap();
    drop(agent);

    // A plain run reloads the program with logging off (its level is a load-time constant).
    let _quiet = start_agent(&lab, &pins, &[]);
    assert_eq!(
        pins.open().unwrap().ebpf_log().unwrap(),
        apns_agent::datapath::EbpfLog::Off
    );
}

#[test]
fn sighup_rereads_the_web_config_and_a_bad_one_keeps_the_one_in_force() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let scratch = Scratch::new("web-reload");
    let users = |password: &str| {
        let hash = bcrypt::hash(password, 4).unwrap();
        format!("basic_auth_users:\n  prometheus: '{hash}'\n")
    };
    let web = scratch.file("web.yml", &users("old"));
    let web_arg = web.display().to_string();
    // A config file, so that the config's own reload succeeds: the web config is the subject.
    let config = scratch.file("config.toml", "").display().to_string();
    let mut agent = start_agent(
        &lab,
        &pins,
        &["--config", &config, "--web-config-file", &web_arg],
    );
    let status = |password: &str| {
        let credentials = agent::basic_credentials("prometheus", password);
        agent::get_metrics(&lab, METRICS.parse().unwrap(), Some(&credentials))
            .unwrap()
            .0
    };
    assert_eq!(status("old"), 200);
    assert_eq!(status("new"), 401);

    scratch.file("web.yml", &users("new"));
    agent.reload().unwrap();
    let line = agent.wait_for_log("web config reloaded", TIMEOUT).unwrap();
    assert!(line.contains(&web_arg), "{line}");
    // The old password passed before the reload, and is refused after it.
    assert_eq!(status("old"), 401);
    assert_eq!(status("new"), 200);

    scratch.file("web.yml", "basic_auth_users:\n  prometheus: plain\n");
    agent.reload().unwrap();
    let line = agent
        .wait_for_log("web config not reloaded", TIMEOUT)
        .unwrap();
    assert!(
        line.contains(&web_arg) && line.contains("not a bcrypt hash"),
        "{line}"
    );
    assert_eq!(status("old"), 401);
    assert_eq!(status("new"), 200);
}
