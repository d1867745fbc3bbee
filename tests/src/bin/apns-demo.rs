//! `cargo xtask demo`: a gateway in network namespaces with apns-agent enforcing on it, a
//! short mix of APNs and other traffic, then the counters and an excerpt of /metrics. Builds
//! everything it uses and removes it again, in well under a minute. Needs root.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use apns_tests::{
    agent::{self, TestPins},
    lab::{
        Lab, LabOptions, Role, APPLE, GW_IF_CLIENT, GW_IF_MDM, GW_IF_TRUNK, GW_IF_WAN, MDM, OTHER,
    },
};

/// Where the agent serves /metrics inside the gateway's namespace.
const METRICS: &str = "127.0.0.1:15223";
const TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for a SYN to be answered, short enough that a dropped one is not retried.
const REFUSED_AFTER: Duration = Duration::from_millis(600);

fn main() {
    if let Err(err) = demo() {
        eprintln!("demo failed: {err:#}");
        std::process::exit(1);
    }
}

fn step(text: &str) {
    println!("==> {text}");
}

fn demo() -> Result<()> {
    let started = Instant::now();
    step("building the lab: client, MDM server and VLAN host -> gateway -> ISP -> Apple (17.249.1.10) and a non-Apple host");
    let lab = Lab::new(LabOptions::default())?;
    let pins = TestPins::new();

    step("starting apns-agent on the gateway (enforce mode, lan0 lan1 lan2 wan0)");
    // Ready when it says so (systemd's notify protocol: READY=1), as under systemd.
    let mut agent_process = agent::spawn_run_with(
        &lab,
        &pins,
        &[
            "run",
            "--mode",
            "enforce",
            "--metrics-addr",
            METRICS,
            "--iface",
            GW_IF_CLIENT.name,
            "--iface",
            GW_IF_MDM.name,
            "--iface",
            GW_IF_TRUNK.name,
            "--iface",
            GW_IF_WAN.name,
        ],
        false,
    )?;
    print!("{}", agent::succeed(&mut status_command(&lab, &pins))?);

    step("driving traffic");
    let apple = |port| APPLE.socket(false, port);
    let apple6 = |port| APPLE.socket(true, port);
    let other = |port| OTHER.socket(false, port);
    let mut ok = 0;
    for (what, from, to, times) in [
        ("device -> Apple 5223 (APNs)", Role::Client, apple(5223), 5),
        (
            "device -> Apple 443 over IPv6 (APNs fallback)",
            Role::Client,
            apple6(443),
            3,
        ),
        (
            "MDM server -> Apple 2197 (provider API)",
            Role::Mdm,
            apple(2197),
            2,
        ),
        (
            "VLAN device -> Apple 5223 (802.1Q tagged at the gateway)",
            Role::Vlan,
            apple(5223),
            2,
        ),
        (
            "device -> non-Apple 443 (ordinary HTTPS)",
            Role::Client,
            other(443),
            2,
        ),
    ] {
        for _ in 0..times {
            let echoed = lab
                .echo(from, to, b"hello APNs", TIMEOUT)
                .with_context(|| what.to_owned())?;
            anyhow::ensure!(echoed == b"hello APNs", "{what}: wrong echo");
            ok += 1;
        }
        println!("    ok   {times} x {what}");
    }
    let providers = [format!("{}/32", MDM.v4), format!("{}/128", MDM.v6)];
    step(&format!(
        "live policy change: only the MDM server may use provider ports (apns-agent providers add {})",
        providers.join(" ")
    ));
    let mut add = std::process::Command::new(agent::binary());
    let mut args = vec!["providers", "add"];
    args.extend(providers.iter().map(String::as_str));
    agent::command(&mut add, &pins, &args);
    print!("    {}", agent::succeed(&mut add)?);
    lab.echo(Role::Mdm, apple(2197), b"hello APNs", TIMEOUT)
        .context("MDM server -> Apple 2197 after the change")?;
    println!("    ok   1 x MDM server -> Apple 2197 (in the provider list)");
    for (what, from, to) in [
        (
            "device -> non-Apple 5223 (the pinhole used as a tunnel)",
            Role::Client,
            other(5223),
        ),
        (
            "device -> Apple 2197 (not a provider)",
            Role::Client,
            apple(2197),
        ),
    ] {
        match lab.connect(from, to, REFUSED_AFTER) {
            Ok(_) => bail!("{what}: the connection went through, enforce mode should drop it"),
            Err(_) => {
                println!("    drop 1 x {what}: refused by the datapath, as enforce mode should")
            }
        }
    }
    println!("    {ok} connections echoed");

    step("counters (apns-agent stats)");
    let mut stats = lab.command(Role::Gw, agent::binary());
    agent::command(&mut stats, &pins, &["stats"]);
    print!("{}", agent::succeed(&mut stats)?);

    step("an excerpt of /metrics (non-zero APNs series)");
    let metrics = scrape(&lab)?;
    for line in metrics.lines().filter(|line| {
        (line.starts_with("apns_packets_total")
            || line.starts_with("apns_bytes_total")
            || line.starts_with("apns_tcp_events_total")
            || line.starts_with("apns_policy_drops_total")
            || line.starts_with("apns_reachability_ratio")
            || line.starts_with("apns_datapath_attached")
            || line.starts_with("apns_agent_info"))
            && !line.ends_with(" 0")
    }) {
        println!("    {line}");
    }

    step("stopping the agent (the datapath stays attached: fail-static), then unloading");
    agent_process.stop(TIMEOUT)?;
    drop(agent_process);
    let mut unload = std::process::Command::new(agent::binary());
    agent::command(&mut unload, &pins, &["unload"]);
    print!("{}", agent::succeed(&mut unload)?);
    drop(pins);
    drop(lab);
    step(&format!(
        "done in {:.1} s; every namespace and pin is gone",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn status_command(lab: &Lab, pins: &TestPins) -> std::process::Command {
    let mut cmd = lab.command(Role::Gw, agent::binary());
    agent::command(&mut cmd, pins, &["status"]);
    cmd
}

/// GET /metrics from inside the gateway.
fn scrape(lab: &Lab) -> Result<String> {
    agent::scrape_metrics(lab, METRICS.parse()?)
}
