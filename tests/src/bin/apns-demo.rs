//! `cargo xtask demo`: a gateway in network namespaces with apns-agent on it, showing in
//! order what the agent is for: `doctor` on the gateway before anything is installed; a
//! mix of APNs and other traffic; a live policy change (monitor to enforce) and the two
//! drops it makes; a content filter that blocks 5223 in the gateway's forward chain, a
//! device's APNs connection failing through it and passing once the fast path this kernel
//! supports is on; two devices whose trouble `clients` finds and names (one whose upstream
//! firewall forgets idle connections, one whose 5223 is blocked upstream); the counters
//! without their all-zero rows; an excerpt of /metrics; and `replay` of a capture of the
//! devices' frames taken during the run. It checks what it shows as it goes (a step that
//! does not come out as it should stops it), removes everything it built, and needs root,
//! tcpdump and nft. `tests/tests/demo.rs` runs it and checks its transcript.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use apns_agent::datapath::features::Features;
use apns_tests::{
    agent::{self, TestPins},
    lab::{
        self, CaptureMarker, Lab, LabOptions, Role, Tcpdump, APPLE, CLIENT, CLIENT_IF,
        GW_IF_CLIENT, GW_IF_MDM, GW_IF_TRUNK, GW_IF_WAN, ISP_IF_GW, MDM, OTHER,
    },
    scratch::Scratch,
};
use serde_json::Value;

/// Where the agent serves /metrics inside the gateway's namespace.
const METRICS: &str = "127.0.0.1:15223";
const TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for a SYN to be answered, short enough that a dropped one is not retried
/// (the first retransmission comes after 1 s): every drop below is one packet.
const REFUSED_AFTER: Duration = Duration::from_millis(600);

/// A device whose path to Apple goes through a firewall (on the lab's ISP router) that
/// forgets an idle connection after [`FIREWALL_IDLE_TIMEOUT`].
const IDLE_DEVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// A device whose 5223 is blocked upstream (the ISP router drops it).
const BLOCKED_DEVICE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
/// The ISP firewall's established timeout for [`IDLE_DEVICE`]'s connections, in seconds (a
/// real one's is minutes to hours; the demo's `[clients] idle_cut_min` is shortened to
/// match).
const FIREWALL_IDLE_TIMEOUT: u64 = 1;
/// How long [`IDLE_DEVICE`] leaves a connection idle: well past the firewall's timeout
/// and past `idle_cut_min`.
const IDLE: Duration = Duration::from_secs(3);
/// Connections of [`IDLE_DEVICE`] cut while idle: two of a similar length make the
/// finding (`[clients] idle_cut_repeat`, 2 by default).
const CUTS: usize = 2;

/// The gateway's config: the demo's interfaces, monitor mode first (enforce comes as a
/// live change), the MDM server as the only provider, the LAN interfaces of devices, and an
/// idle-cut threshold of seconds instead of the default minute.
fn config() -> String {
    format!(
        "interfaces = [\"{lan0}\", \"{lan1}\", \"{lan2}\", \"{wan0}\"]\n\
         mode = \"monitor\"\n\
         providers = [\"{mdm4}/32\", \"{mdm6}/128\"]\n\
         \n\
         [roles]\n\
         {lan0} = \"devices\"\n\
         {lan2} = \"devices\"\n\
         \n\
         [clients]\n\
         idle_cut_min = 2\n",
        lan0 = GW_IF_CLIENT.name,
        lan1 = GW_IF_MDM.name,
        lan2 = GW_IF_TRUNK.name,
        wan0 = GW_IF_WAN.name,
        mdm4 = MDM.v4,
        mdm6 = MDM.v6,
    )
}

/// The ISP router's firewall: a stateful one that forgets [`IDLE_DEVICE`]'s connections
/// after [`FIREWALL_IDLE_TIMEOUT`] idle and answers a packet of a connection it no longer
/// knows with a reset in the peer's name (those towards the gateway counted: how many it
/// sends depends on how many segments a device sent into a forgotten connection before the
/// first reset came back, one each on a fast machine, more in a slow guest); and a rule that
/// drops [`BLOCKED_DEVICE`]'s 5223.
fn isp_firewall() -> String {
    format!(
        "table inet isp_firewall {{
    ct timeout idle_short {{
        protocol tcp;
        l3proto inet;
        policy = {{ established: {FIREWALL_IDLE_TIMEOUT} }}
    }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        ip saddr {IDLE_DEVICE} ct timeout set \"idle_short\"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state new tcp flags & (syn | rst) == 0 iifname \"{}\" counter reject with tcp reset
        ct state new tcp flags & (syn | rst) == 0 reject with tcp reset
        ip saddr {BLOCKED_DEVICE} tcp dport 5223 drop
    }}
}}
",
        ISP_IF_GW.name
    )
}

/// The gateway's content filter: its forward chain lets established connections through
/// and drops new ones to 5223 (XMPP over TLS, to such a filter), counting them.
const CONTENT_FILTER: &str = "table inet content_filter {
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        tcp dport 5223 counter drop
    }
}
";

/// The exemption the mark fast path needs in that chain (packaging/nftables/apns-mark.nft).
const MARK_EXEMPTION: &str = "meta mark & 0x200000 == 0x200000 counter accept";

fn main() {
    if let Err(err) = demo() {
        eprintln!("demo failed: {err:#}");
        std::process::exit(1);
    }
}

fn step(text: &str) {
    println!("==> {text}");
}

/// Prints a command's output indented under its step.
fn show(text: &str) {
    for line in text.lines() {
        if line.is_empty() {
            println!();
        } else {
            println!("    {line}");
        }
    }
}

fn demo() -> Result<()> {
    let started = Instant::now();
    step("building the lab: devices, MDM server and VLAN device -> gateway -> ISP router -> Apple (17.249.1.10) and a non-Apple host");
    let lab = Lab::new(LabOptions::default())?;
    let pins = TestPins::new();
    let scratch = Scratch::new("demo");
    let config = scratch.file("config.toml", &config());
    let config = config
        .to_str()
        .context("the scratch folder's path is not UTF-8")?;
    for device in [IDLE_DEVICE, BLOCKED_DEVICE] {
        lab::run(lab.command(Role::Client, "ip").args([
            "addr",
            "add",
            &format!("{device}/25"),
            "dev",
            CLIENT_IF.name,
        ]))?;
    }
    lab.nft(Role::Isp, &isp_firewall())
        .context("loading the ISP router's firewall")?;
    // Checksums and GRO as the redirect fast path needs them (docs/fastpath.md), set before
    // any connection: harmless for the other fast paths.
    lab.redirect_offloads()?;
    for role in lab.roles() {
        lab.wait_settled(role, TIMEOUT)?;
    }
    let gw = |args: &[&str]| {
        let mut cmd = lab.command(Role::Gw, agent::binary());
        agent::command(&mut cmd, &pins, &["--config", config]);
        cmd.args(args);
        cmd
    };

    step("apns-agent doctor: will the agent work on this gateway? (nothing installed yet)");
    let doctor = gw(&["doctor", "--metrics-addr", METRICS])
        .output()
        .context("running apns-agent doctor")?;
    show(&String::from_utf8_lossy(&doctor.stdout));
    ensure!(
        matches!(doctor.status.code(), Some(0 | 1)),
        "doctor found a failure ({}): {}",
        doctor.status,
        String::from_utf8_lossy(&doctor.stderr).trim()
    );

    // What the devices on lan0 send, for `replay` at the end.
    let capture = scratch.path("devices.pcap");
    let tcpdump = Tcpdump::start(
        &lab,
        Role::Client,
        &["-i", CLIENT_IF.name, "-Q", "out"],
        &capture,
    )?;

    step("starting apns-agent on the gateway: lan0 lan1 lan2 wan0, monitor mode, lan0 and lan2 face devices");
    // Ready when it says so (systemd's notify protocol: READY=1), as under systemd.
    let mut agent_process = agent::spawn_run_with(
        &lab,
        &pins,
        &["run", "--config", config, "--metrics-addr", METRICS],
        false,
    )?;

    step("driving traffic");
    let apple = |port| APPLE.socket(false, port);
    let apple6 = |port| APPLE.socket(true, port);
    let other = |port| OTHER.socket(false, port);
    // The two devices with trouble on their path, beside the rest.
    let (idle_device, blocked_device) = thread::scope(|scope| -> Result<_> {
        let idle_device = scope.spawn(|| idle_device(&lab));
        let blocked_device = scope.spawn(|| blocked_device(&lab));
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
                echo(&lab, from, to).with_context(|| what.to_owned())?;
            }
            println!("    ok   {times} x {what}");
        }
        let joined = |handle: thread::ScopedJoinHandle<'_, Result<Vec<TcpStream>>>| {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        Ok((joined(idle_device)?, joined(blocked_device)?))
    })?;
    println!(
        "    ok   {CUTS} x device {IDLE_DEVICE} -> Apple 5223, then {} s idle: reset (its upstream firewall had forgotten them); it connected again",
        IDLE.as_secs()
    );
    println!(
        "    fail 1 x device {BLOCKED_DEVICE} -> Apple 5223: no answer (dropped upstream); ok 1 x the same device -> Apple 443"
    );

    step("live policy change: monitor -> enforce (apns-agent mode enforce): pinholes and provider ports are now enforced");
    show(&agent::succeed(&mut gw(&["mode", "enforce"]))?);
    echo(&lab, Role::Mdm, apple(2197)).context("MDM server -> Apple 2197 in enforce mode")?;
    println!("    ok   1 x MDM server -> Apple 2197 (in the config's provider list)");
    for (what, to) in [
        (
            "device -> non-Apple 5223 (the pinhole used as a tunnel)",
            other(5223),
        ),
        ("device -> Apple 2197 (not a provider)", apple(2197)),
    ] {
        ensure!(
            lab.connect(Role::Client, to, REFUSED_AFTER).is_err(),
            "{what}: the connection went through, enforce mode should drop it"
        );
        println!("    drop 1 x {what}: dropped by the datapath, as enforce mode should");
    }

    step("a content filter on the gateway: its forward chain drops new connections to 5223");
    lab.nft(Role::Gw, CONTENT_FILTER)
        .context("loading the content filter")?;
    show(CONTENT_FILTER);
    ensure!(
        lab.connect(Role::Client, apple(5223), REFUSED_AFTER)
            .is_err(),
        "device -> Apple 5223 went through the content filter"
    );
    ensure!(
        filter_drops(&lab)? == 1,
        "the filter should have dropped one SYN"
    );
    println!("    fail 1 x device -> Apple 5223: no answer, the filter dropped its SYN (filter drops: 1)");
    let fastpath = kernel_fastpath(&agent::succeed(&mut gw(&["status", "--json"]))?)?;
    println!("    this kernel's fast paths (apns-agent status):");
    for (mode, way) in &fastpath.ways {
        println!("      {mode}: {way}");
    }
    match fastpath.chosen {
        FastPath::Redirect => {
            println!("    -> redirect on lan0 and wan0 (this gateway routes, no NAT on the APNs path): XDP forwards APNs between them, before netfilter");
            // The redirect fast path forwards to resolved neighbours from XDP; the gateway
            // knows them from the traffic above, and a ping makes sure.
            lab.resolve_neighbours(&[CLIENT.v4.into(), CLIENT.v6.into()])?;
            for interface in [GW_IF_CLIENT.name, GW_IF_WAN.name] {
                show(&agent::succeed(&mut gw(&[
                    "fastpath", interface, "redirect",
                ]))?);
            }
        }
        FastPath::Mark => {
            println!("    -> mark on lan0: the devices' APNs packets carry mark 0x200000, which the filter's first rule accepts (packaging/nftables/apns-mark.nft)");
            lab.nft(
                Role::Gw,
                &format!("insert rule inet content_filter forward {MARK_EXEMPTION}\n"),
            )
            .context("adding the mark exemption to the content filter")?;
            println!("    nft insert rule inet content_filter forward {MARK_EXEMPTION}");
            show(&agent::succeed(&mut gw(&[
                "fastpath",
                GW_IF_CLIENT.name,
                "mark",
            ]))?);
        }
    }
    echo(&lab, Role::Client, apple(5223)).context("device -> Apple 5223 with the fast path on")?;
    ensure!(
        filter_drops(&lab)? == 1,
        "the filter dropped packets of the fast path's connection"
    );
    println!("    ok   1 x device -> Apple 5223: through, and the filter dropped nothing more (filter drops: 1)");
    println!("    the fast path's counters:");
    match fastpath.chosen {
        FastPath::Redirect => {
            let status = agent::succeed(&mut gw(&["status"]))?;
            show_redirect_paths(&status)?;
        }
        FastPath::Mark => println!(
            "      marked packets the filter accepted: {}",
            filter_counter(&lab, "accept")?
        ),
    }

    step("which devices reach APNs, and why not (apns-agent clients)");
    show(&agent::succeed(&mut gw(&["clients"]))?);
    println!();
    let report: Value = serde_json::from_str(&agent::succeed(&mut gw(&["clients", "--json"]))?)
        .context("parsing clients --json")?;
    explain_findings(&report)?;

    step("counters (apns-agent stats; rows of zeros left out, `stats --all` shows them)");
    show(&agent::succeed(&mut gw(&["stats"]))?);
    // The resets wan0 counted inbound are the ISP firewall's, which counts them too, and any
    // Apple's host sent itself (a slow machine: a segment that reached one of its sockets
    // after the firewall had reset it), which its stack counts.
    let resets: u64 = lab
        .nft_counters(Role::Isp, &["chain", "inet", "isp_firewall", "forward"])?
        .iter()
        .sum();
    let apple_resets = lab.resets_sent(Role::Apple)?;
    println!(
        "    the ISP's firewall sent {resets} resets and Apple's host {apple_resets} (wan0's inbound rst above)"
    );
    // A handshake answered after the first retransmission timeout (a slow machine) makes
    // one SYN or SYN-ACK more than the steps above say; the hosts count them.
    let retransmits =
        [Role::Client, Role::Mdm, Role::Vlan, Role::Apple].map(|role| lab.syn_retransmits(role));
    let [devices, mdm, vlan, apple] = retransmits;
    println!(
        "    SYN retransmissions: devices {}, MDM server {}, VLAN device {}, Apple {}",
        devices?, mdm?, vlan?, apple?
    );

    step("an excerpt of /metrics (non-zero series)");
    let metrics = agent::scrape_metrics(&lab, METRICS.parse()?)?;
    for line in metrics.lines().filter(|line| {
        [
            "apns_packets_total",
            "apns_policy_drops_total",
            "apns_fastpath_packets_total",
            "apns_unhealthy_devices",
            "apns_handshake_failures_total",
            "apns_port443_connections_total",
            "apns_reachability_ratio",
            "apns_datapath_attached",
            "apns_agent_info",
        ]
        .iter()
        .any(|name| line.starts_with(name))
            && !line.ends_with(" 0")
    }) {
        println!("    {line}");
    }

    step("replay of what the devices on lan0 sent, captured during the run: what the config's policy (monitor) would drop in enforce mode");
    // The capture holds every frame the devices sent once it holds a marker sent after them.
    let marker = CaptureMarker::send(&lab, Role::Client, CLIENT_IF.name)?;
    println!("    tcpdump: {}", tcpdump.stop_after(&marker)?);
    let capture = capture
        .to_str()
        .context("the capture's path is not UTF-8")?;
    let mut replay = Command::new(agent::binary());
    agent::command(&mut replay, &pins, &["--config", config, "replay", capture]);
    show(&agent::succeed(&mut replay)?);

    step("stopping the agent (the datapath stays attached: fail-static), then unloading");
    drop((idle_device, blocked_device));
    agent_process.stop(TIMEOUT)?;
    drop(agent_process);
    show(&agent::succeed(&mut gw(&["unload"]))?);
    drop(pins);
    drop(lab);
    drop(scratch);
    step(&format!(
        "done in {:.1} s; every namespace, pin and file is gone",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `from` connects to the echo server at `to` and gets its bytes back.
fn echo(lab: &Lab, from: Role, to: SocketAddr) -> Result<()> {
    let echoed = lab.echo(from, to, b"hello APNs", TIMEOUT)?;
    ensure!(echoed == b"hello APNs", "wrong echo from {to}");
    Ok(())
}

/// Sends `bytes` on `stream` and reads them back.
fn exchange(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(bytes)?;
    let mut back = vec![0; bytes.len()];
    stream.read_exact(&mut back)?;
    if back != bytes {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// [`IDLE_DEVICE`]: [`CUTS`] connections at once, each used, left idle for [`IDLE`] and
/// used again, which the ISP's firewall answers with a reset; then the connection the
/// device opens again, which stays open.
fn idle_device(lab: &Lab) -> Result<Vec<TcpStream>> {
    let to = APPLE.socket(false, 5223);
    let connect = || lab.connect_from(Role::Client, IDLE_DEVICE.into(), to, TIMEOUT);
    thread::scope(|scope| -> Result<()> {
        let cuts: Vec<_> = (0..CUTS)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    let mut stream = connect()?;
                    exchange(&mut stream, b"hello")?;
                    thread::sleep(IDLE);
                    match exchange(&mut stream, b"ping") {
                        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
                        other => bail!("{IDLE_DEVICE}: a reset after {IDLE:?} idle, not {other:?}"),
                    }
                })
            })
            .collect();
        for cut in cuts {
            cut.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        Ok(())
    })?;
    let mut again = connect()?;
    exchange(&mut again, b"hello again")?;
    Ok(vec![again])
}

/// [`BLOCKED_DEVICE`]: its 5223 gets no answer, so it goes to 443 at once (as iOS does on
/// Wi-Fi), which stays open.
fn blocked_device(lab: &Lab) -> Result<Vec<TcpStream>> {
    let from = IpAddr::from(BLOCKED_DEVICE);
    ensure!(
        lab.connect_from(Role::Client, from, APPLE.socket(false, 5223), REFUSED_AFTER)
            .is_err(),
        "{BLOCKED_DEVICE}: 5223 should be blocked upstream"
    );
    let mut fallback = lab.connect_from(Role::Client, from, APPLE.socket(false, 443), TIMEOUT)?;
    exchange(&mut fallback, b"hello on 443")?;
    Ok(vec![fallback])
}

/// The packets the content filter's rule with `verdict` (drop or accept) counted.
fn filter_counter(lab: &Lab, verdict: &str) -> Result<u64> {
    let listing = lab::run(lab.command(Role::Gw, "nft").args([
        "list",
        "chain",
        "inet",
        "content_filter",
        "forward",
    ]))?;
    let rule = listing
        .lines()
        .find(|line| line.contains("counter") && line.trim_end().ends_with(verdict))
        .with_context(|| format!("no counted {verdict} rule in:\n{listing}"))?;
    let words: Vec<&str> = rule.split_whitespace().collect();
    let packets = words
        .windows(2)
        .find(|pair| pair[0] == "packets")
        .with_context(|| format!("no packet count in {rule:?}"))?[1];
    packets
        .parse()
        .with_context(|| format!("packet count in {rule:?}"))
}

fn filter_drops(lab: &Lab) -> Result<u64> {
    filter_counter(lab, "drop")
}

/// The fast path the demo turns on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FastPath {
    Redirect,
    Mark,
}

/// The fast paths of this kernel in `status --json`'s words, and the one the demo takes:
/// redirect where the kernel can do it (the lab is routed, without NAT), else mark, which
/// every kernel can. The choice comes from the agent's own probe, which `status` and
/// `doctor` report (an `APNS_AGENT_FEATURES_OFF` in the environment counts, as for them).
struct KernelFastPaths {
    ways: Vec<(String, String)>,
    chosen: FastPath,
}

fn kernel_fastpath(status: &str) -> Result<KernelFastPaths> {
    let status: Value = serde_json::from_str(status).context("parsing status --json")?;
    let ways = status["kernel"]["fastpaths"]
        .as_object()
        .with_context(|| format!("no kernel.fastpaths in status --json: {status}"))?
        .iter()
        .map(|(mode, way)| (mode.clone(), way.as_str().unwrap_or_default().to_owned()))
        .collect();
    let refusal = Features::probe()?.refusal(apns_common::fastpath::FastPath::Redirect);
    let chosen = if refusal.is_none() {
        FastPath::Redirect
    } else {
        FastPath::Mark
    };
    Ok(KernelFastPaths { ways, chosen })
}

/// The `status` lines of lan0 and wan0 and their redirect paths (how many APNs packets XDP
/// forwarded, the TC step forwarded, the stack got).
fn show_redirect_paths(status: &str) -> Result<()> {
    let mut shown = 0;
    let mut lines = status.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = [GW_IF_CLIENT.name, GW_IF_WAN.name]
            .into_iter()
            .find(|name| line.trim_start().starts_with(&format!("interface {name}:")))
        else {
            continue;
        };
        if let Some(paths) = lines.next_if(|next| next.trim_start().starts_with("redirect paths:"))
        {
            println!("      interface {name}: {}", paths.trim());
            shown += 1;
        }
    }
    ensure!(
        shown == 2,
        "no redirect paths of lan0 and wan0 in status:\n{status}"
    );
    Ok(())
}

/// The finding `clients` gives each device the demo made, checked, and one line per
/// finding that is not `ok` saying what it means.
fn explain_findings(report: &Value) -> Result<()> {
    let expected = [
        (IpAddr::from(IDLE_DEVICE), "cut_while_idle"),
        (IpAddr::from(BLOCKED_DEVICE), "falls_back_to_443"),
    ];
    let devices = report["devices"]
        .as_array()
        .context("no devices in clients --json")?;
    for device in devices {
        let address = device["address"].as_str().unwrap_or_default();
        let finding = device["finding"].as_str().unwrap_or_default();
        let wanted = expected
            .iter()
            .find(|(ip, _)| ip.to_string() == address)
            .map_or("ok", |(_, finding)| finding);
        ensure!(
            finding == wanted,
            "clients: {address} should be {wanted}, not {finding}: {device}"
        );
        let meaning = match finding {
            "ok" => continue,
            "cut_while_idle" => format!(
                "cut while idle: a firewall or NAT on its path forgets idle connections sooner than the device's keep-alive comes (here the ISP router's, after {FIREWALL_IDLE_TIMEOUT} s), so its pushes stop until it reconnects; keep TCP state to Apple for at least 1800 s there"
            ),
            "falls_back_to_443" => "falls back to 443: its 5223 gets no answer on its path (here the ISP router drops it), so it reaches APNs over 443 only, which iOS uses on Wi-Fi alone; open TCP 5223 to 17.0.0.0/8 there".to_owned(),
            other => bail!("clients: unexpected finding {other} for {address}"),
        };
        println!("    {address}: {meaning}");
    }
    for (address, finding) in expected {
        ensure!(
            devices
                .iter()
                .any(|device| device["address"] == address.to_string()),
            "clients does not list {address} ({finding})"
        );
    }
    Ok(())
}
