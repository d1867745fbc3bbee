//! `apns-agent doctor` in the lab's gateway: each check made to fail (or warn) on purpose and
//! to pass again, asserting its line, its fix and the exit code (0 ok, 1 warnings, 2
//! failures); a caller without capabilities; and that doctor sends nothing unless --probe
//! (counted with the gateway's link statistics). Needs root.

use std::{
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use apns_tests::{
    agent::{self, gw_command, TestPins},
    lab::{run, Lab, LabOptions, Role, APPLE, GW_IF_CLIENT, GW_IF_MDM, GW_IF_TRUNK, GW_IF_WAN},
    occupants::{on, FloorOn, XdpFilterOn},
    scratch::Scratch,
};

/// Where `run` serves metrics by default; inside the gateway's own namespace.
const METRICS: &str = "127.0.0.1:15223";
const ESTABLISHED: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";
/// Unprivileged uid/gid.
const NOBODY: u32 = 65534;

/// What one doctor run printed and its exit code.
struct Outcome {
    stdout: String,
    code: i32,
}

impl Outcome {
    /// The line of check `check`.
    fn line(&self, check: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| {
                line.get(6..)
                    .is_some_and(|rest| rest.starts_with(&format!("{check}: ")))
            })
            .unwrap_or_else(|| panic!("no {check:?} line in:\n{}", self.stdout))
    }
}

fn doctor_with(mut cmd: Command) -> Outcome {
    let output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let code = output.status.code().expect("doctor exits, not killed");
    let json = stdout.starts_with('{');
    assert!(
        json || stdout
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("doctor: ")),
        "a doctor report ends with its summary:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Outcome { stdout, code }
}

/// `apns-agent --config CONFIG doctor ARGS...` in the gateway.
fn doctor(lab: &Lab, pins: &TestPins, config: &Path, args: &[&str]) -> Outcome {
    let mut cmd = gw_command(lab, pins, &["doctor"]);
    cmd.arg("--config").arg(config).args(args);
    doctor_with(cmd)
}

fn sysctl(lab: &Lab, path: &'static str, value: &str) {
    let value = value.to_owned();
    lab.in_ns(Role::Gw, move || std::fs::write(path, value))
        .unwrap()
        .unwrap_or_else(|err| panic!("writing {path}: {err}"));
}

#[test]
fn each_check_fails_and_passes_on_purpose() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let scratch = Scratch::new("doctor-checks");
    let config = scratch.file("config.toml", "mode = \"monitor\"\n");
    let lan0 = GW_IF_CLIENT.name;
    let lan1 = GW_IF_MDM.name;
    let ifaces = ["--iface", lan0, "--iface", lan1];

    // The lab's gateway is healthy: every check passes.
    let healthy = doctor(&lab, &pins, &config, &ifaces);
    assert_eq!(healthy.code, 0, "{}", healthy.stdout);
    assert!(
        healthy
            .stdout
            .lines()
            .rev()
            .skip(1)
            .all(|l| l.starts_with("ok ")),
        "{}",
        healthy.stdout
    );
    for check in [
        "config",
        "kernel",
        "capabilities",
        "bpffs",
        "pin directory",
        "btf",
    ] {
        healthy.line(check);
    }
    // Sharing interfaces (xdp_multiprog auto): proven where the kernel loads extension
    // programs (the kernel matrix's, tests/tests/multiprog.rs), said where it refuses them.
    let multiprog = healthy.line("multiprog");
    assert!(
        multiprog.contains("loads in libxdp's dispatcher")
            || multiprog.contains("refuses the agent's component as an extension program"),
        "{multiprog}"
    );
    assert!(healthy
        .line(&format!("{lan0} xdp programs"))
        .ends_with("none attached"));
    assert!(healthy
        .line(&format!("{lan0} xdp features"))
        .contains("native XDP yes"));

    // An interface down: a warning, and how to bring it up.
    run(Command::new("ip").args(["-n", lab.ns_name(Role::Gw), "link", "set", lan1, "down"]))
        .unwrap();
    let down = doctor(&lab, &pins, &config, &ifaces);
    assert_eq!(down.code, 1, "{}", down.stdout);
    let line = down.line(&format!("{lan1} link"));
    assert!(
        line.starts_with(&format!("warn  {lan1} link: administratively down")),
        "{line}"
    );
    assert!(
        line.ends_with(&format!("; fix: `ip link set dev {lan1} up`")),
        "{line}"
    );
    run(Command::new("ip").args(["-n", lab.ns_name(Role::Gw), "link", "set", lan1, "up"])).unwrap();
    let up = doctor(&lab, &pins, &config, &ifaces);
    assert!(up
        .line(&format!("{lan1} link"))
        .starts_with(&format!("ok    {lan1} link: up")));

    // Someone else's XDP program: xdp-filter (netlink), then the floor (bpf_link).
    {
        let _filter = XdpFilterOn::load(&lab, lan0).unwrap();
        let theirs = on(&lab, lan0).unwrap().remove(0);
        let taken = doctor(&lab, &pins, &config, &ifaces);
        assert_eq!(taken.code, 2, "{}", taken.stdout);
        assert_eq!(
            taken.line(&format!("{lan0} xdp programs")),
            format!(
                "fail  {lan0} xdp programs: {lan0} runs XDP program {} ({}, tag {}, attached by netlink in skb mode, not a libxdp dispatcher): `attach` will refuse it; fix: detach it first (`xdp-filter unload {lan0}` / `ip link set dev {lan0} xdpgeneric off`), or run the agent on another interface",
                theirs.program_id, theirs.name, theirs.tag
            )
        );
    }
    {
        let _floor = FloorOn::attach(&lab, lan0).unwrap();
        let theirs = on(&lab, lan0).unwrap().remove(0);
        let link = theirs.link_id.unwrap();
        let taken = doctor(&lab, &pins, &config, &ifaces);
        assert_eq!(taken.code, 2, "{}", taken.stdout);
        let line = taken.line(&format!("{lan0} xdp programs"));
        assert!(line.starts_with(&format!("fail  {lan0} xdp programs: {lan0} runs XDP program {} (floor_xdp, tag {}, attached by bpf_link {link} in skb mode", theirs.program_id, theirs.tag)), "{line}");
        assert!(
            line.contains(&format!(
                "; fix: its owner holds it through bpf_link {link}"
            )),
            "{line}"
        );
    }
    // Our own datapath there is fine.
    agent::succeed(&mut gw_command(&lab, &pins, &["attach", lan0])).unwrap();
    let ours = doctor(&lab, &pins, &config, &ifaces);
    assert_eq!(ours.code, 0, "{}", ours.stdout);
    assert!(ours
        .line(&format!("{lan0} xdp programs"))
        .starts_with(&format!(
            "ok    {lan0} xdp programs: this agent's datapath: XDP program "
        )));
    assert!(ours.line("pin directory").contains("a datapath is loaded"));

    // A conntrack timeout shorter than APNs' idle connections.
    sysctl(&lab, ESTABLISHED, "600");
    let short = doctor(&lab, &pins, &config, &ifaces);
    assert_eq!(short.code, 1, "{}", short.stdout);
    let line = short.line("conntrack");
    assert!(
        line.starts_with(
            "warn  conntrack: established TCP connections are forgotten after 600 s idle"
        ),
        "{line}"
    );
    assert!(
        line.contains(
            "; fix: `sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established=1800` or more"
        ),
        "{line}"
    );
    sysctl(&lab, ESTABLISHED, "432000");
    let restored = doctor(&lab, &pins, &config, &ifaces);
    assert_eq!(
        restored.line("conntrack"),
        "ok    conntrack: established TCP timeout 432000 s (APNs needs at least 1800 s)"
    );

    // The metrics port taken by another process (this test, in the gateway's namespace).
    let addr: SocketAddr = METRICS.parse().unwrap();
    let listener = lab
        .in_ns(Role::Gw, move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    let taken = doctor(&lab, &pins, &config, &ifaces);
    assert_eq!(taken.code, 2, "{}", taken.stdout);
    let line = taken.line(&format!("metrics {METRICS}"));
    assert!(
        line.starts_with(&format!(
            "fail  metrics {METRICS}: taken by process {} (",
            std::process::id()
        )),
        "{line}"
    );
    assert!(
        line.ends_with("; fix: stop that process, or give `run --metrics-addr` another address"),
        "{line}"
    );
    drop(listener);
    let free = doctor(&lab, &pins, &config, &ifaces);
    assert_eq!(
        free.line(&format!("metrics {METRICS}")),
        format!("ok    metrics {METRICS}: free: `run` can serve /metrics there")
    );

    // A bad config: one failed check, the others still run.
    let bad = scratch.file("bad.toml", "mode = \"block\"\n");
    let broken = doctor(&lab, &pins, &bad, &ifaces);
    assert_eq!(broken.code, 2, "{}", broken.stdout);
    let line = broken.line("config");
    assert!(
        line.starts_with(&format!(
            "fail  config: config file {}: line 1, column 8, key mode: unknown policy mode \"block\"",
            bad.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("; fix: correct the file (`apns-agent check-config FILE`"),
        "{line}"
    );
    assert!(broken.line("kernel").starts_with("ok "));
    assert!(broken.line(&format!("{lan1} link")).starts_with("ok "));

    // An interface that is not there.
    let missing = doctor(&lab, &pins, &config, &["--iface", "nope0"]);
    assert_eq!(missing.code, 2);
    assert!(missing
        .line("nope0 link")
        .starts_with("fail  nope0 link: unknown interface \"nope0\""));

    // The JSON report says the same, with what was read of each interface.
    let json = doctor(&lab, &pins, &config, &["--iface", lan0, "--json"]);
    let report: serde_json::Value =
        serde_json::from_str(&json.stdout).unwrap_or_else(|err| panic!("{err}: {}", json.stdout));
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["interfaces"][lan0]["xdp_programs"][0]["ours"], true);
}

#[test]
fn without_capabilities_doctor_says_which_are_missing() {
    let pins = TestPins::new();
    let scratch = Scratch::new("doctor-nobody");
    let config = scratch.file("config.toml", "");
    // Not in a lab namespace: joining one needs the very privileges dropped here.
    let mut cmd = Command::new(agent::binary());
    agent::command(&mut cmd, &pins, &["doctor", "--iface", "lo"]);
    cmd.arg("--config").arg(&config).uid(NOBODY).gid(NOBODY);
    // The scratch folder must be readable by nobody.
    std::fs::set_permissions(
        scratch.dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let outcome = doctor_with(cmd);
    assert_eq!(outcome.code, 2, "{}", outcome.stdout);
    assert_eq!(
        outcome.line("capabilities"),
        "fail  capabilities: missing CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN (the agent needs CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN); fix: run the agent as root, or grant these capabilities (the systemd unit's AmbientCapabilities= does)"
    );
    assert!(
        outcome.line("config").starts_with("ok "),
        "{}",
        outcome.stdout
    );
}

#[test]
fn doctor_sends_nothing_unless_probe() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let scratch = Scratch::new("doctor-quiet");
    let config = scratch.file("config.toml", "");
    let gw = [
        GW_IF_CLIENT.name,
        GW_IF_MDM.name,
        GW_IF_TRUNK.name,
        GW_IF_WAN.name,
    ];
    let quiet = || {
        gw.map(|name| {
            lab.wait_quiet(
                Role::Gw,
                name,
                Duration::from_millis(300),
                Duration::from_secs(20),
            )
            .unwrap()
        })
    };
    let args = ["--iface", GW_IF_CLIENT.name, "--iface", GW_IF_WAN.name];

    let before = quiet();
    let started = Instant::now();
    let outcome = doctor(&lab, &pins, &config, &args);
    let elapsed = started.elapsed();
    let after = gw.map(|name| lab.link_stats(Role::Gw, name).unwrap());
    eprintln!(
        "doctor --iface lan0 --iface wan0 took {elapsed:?} (in the lab's gateway, debug build)"
    );
    assert_eq!(outcome.code, 0, "{}", outcome.stdout);
    for ((name, before), after) in gw.iter().zip(before).zip(after) {
        assert_eq!(after.tx_packets, before.tx_packets, "doctor sent on {name}");
    }

    // --probe: one TCP connection to the lab's Apple host, which sees it.
    let target = format!("{}:5223", APPLE.v4);
    let accepted = lab.accepted(Role::Apple).len();
    let before = quiet();
    let started = Instant::now();
    let mut probe_args = args.to_vec();
    probe_args.extend(["--probe", &target]);
    let probed = doctor(&lab, &pins, &config, &probe_args);
    eprintln!("doctor with --probe took {:?}", started.elapsed());
    assert_eq!(probed.code, 0, "{}", probed.stdout);
    let line = probed.line(&format!("probe {target}"));
    assert!(
        line.starts_with(&format!("ok    probe {target}: connected to {target} in ")),
        "{line}"
    );
    let wan = lab.link_stats(Role::Gw, GW_IF_WAN.name).unwrap();
    assert!(
        wan.tx_packets > before[3].tx_packets,
        "the probe went out of wan0"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.accepted(Role::Apple).len() == accepted && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        lab.accepted(Role::Apple).len(),
        accepted + 1,
        "Apple's server saw the probe"
    );

    // Nothing answers: the probe fails, and says what to check.
    let closed = format!("{}:5999", APPLE.v4);
    let mut args = args.to_vec();
    args.extend(["--probe", &closed]);
    let refused = doctor(&lab, &pins, &config, &args);
    assert_eq!(refused.code, 2, "{}", refused.stdout);
    assert!(refused
        .line(&format!("probe {closed}"))
        .starts_with(&format!("fail  probe {closed}: no TCP connection")));
}
