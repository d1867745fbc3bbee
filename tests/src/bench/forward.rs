//! Section 3: packets per second forwarded by the lab gateway (client → gateway lan0 → wan0 →
//! ISP → Apple host) with no program, with a floor XDP program, with the agent in monitor
//! (pass) mode, and with an nftables ruleset doing the same matching and counting.
//!
//! The sender is the bottleneck on these machines and single runs vary by ±25 %
//! (docs/platform.md), so every configuration runs once per round, in an order that rotates from
//! round to round, and each configuration is compared with "no program" of the same round
//! (a pair); the report gives medians of the rates and of the pair ratios. Each run sends a
//! fixed number of UDP datagrams with iperf3; the rate is what left the gateway's wan0
//! divided by the sender's time. The CPU time per packet is that of the sender process and
//! of ksoftirqd: veth hands a packet to its peer on the sending CPU, so the whole path
//! (gateway and ISP forwarding, delivery to the receiver's socket) runs in softirq in the
//! sender's context or, when deferred, in ksoftirqd. It leaves out the rest of a shared
//! machine, which the rate cannot; the sender's own cost is the same in every configuration,
//! so the differences are the gateway's.

use std::{
    path::Path,
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use apns_agent::datapath::{counters::Snapshot, object, Datapath};
use apns_common::counters::Outcome;
use aya::programs::{xdp::XdpLinkId, XdpMode};

use super::{
    charts::{BarChart, Chart, Series, Value},
    report::{Goal, Section, Table, Verdict},
    stats::{median, num, range, ratio, times, Estimate},
    testrun::FloorProgram,
    Plan,
};
use crate::{
    agent::{self, TestPins},
    lab::{
        run, run_with_input, Lab, LabChild, Role, APPLE, APPLE_IF, CLIENT, CLIENT_IF, GW_IF_CLIENT,
        GW_IF_WAN, ISP_IF_GW, ISP_WAN,
    },
};

/// The iperf3 server's port on the Apple host (the APNs ports are taken by the lab's echo
/// servers, and iperf3 needs TCP on the same port for its control connection).
const IPERF_PORT: &str = "5201";
/// How long the agent may take to report that it runs.
/// /proc/stat counts in USER_HZ ticks, 100 per second on every Linux architecture's ABI.
const USER_HZ: f64 = 100.0;
/// The interfaces every program is attached to: where the client's traffic enters the
/// gateway and where the replies do.
const GW_IFACES: [&str; 2] = [GW_IF_CLIENT.name, GW_IF_WAN.name];
/// Where the agent serves /metrics inside the gateway namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:15231";
/// The nftables table of the baseline (in the gateway namespace).
const NFT_TABLE: &str = "apnsbench";

/// The nftables baseline: the agent's matches (Apple's prefixes as interval sets, the APNs
/// port set, both directions, both families) with a counter on each rule and on the rest,
/// in the forward hook where it sees each forwarded packet once. (`fwd` is an nft keyword,
/// hence `forward_apns`.)
pub fn nft_ruleset() -> String {
    format!(
        "table inet {NFT_TABLE} {{
\tset apple_v4 {{ type ipv4_addr; flags interval; elements = {{ 17.0.0.0/8 }} }}
\tset apple_v6 {{ type ipv6_addr; flags interval; elements = {{ 2620:149:a44::/48, 2403:300:a42::/48, 2403:300:a51::/48, 2a01:b740:a42::/48 }} }}
\tset apns_ports {{ type inet_service; elements = {{ 5223, 443, 2197, 2195, 2196 }} }}
\tchain forward_apns {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tip daddr @apple_v4 tcp dport @apns_ports counter accept
\t\tip saddr @apple_v4 tcp sport @apns_ports counter accept
\t\tip6 daddr @apple_v6 tcp dport @apns_ports counter accept
\t\tip6 saddr @apple_v6 tcp sport @apns_ports counter accept
\t\tcounter
\t}}
}}
"
    )
}

/// What the gateway runs during a forwarding run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    None,
    FloorNative,
    FloorSkb,
    AgentPass,
    /// Not asked for by the issue: shows how much of the agent's cost on veth is the native
    /// receive path rather than the program.
    AgentPassSkb,
    Nftables,
}

impl Config {
    pub const ALL: [Config; 6] = [
        Config::None,
        Config::FloorNative,
        Config::FloorSkb,
        Config::AgentPass,
        Config::AgentPassSkb,
        Config::Nftables,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Config::None => "no_program",
            Config::FloorNative => "floor_native",
            Config::FloorSkb => "floor_skb",
            Config::AgentPass => "agent_pass",
            Config::AgentPassSkb => "agent_pass_skb",
            Config::Nftables => "nftables",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Config::None => "no program (kernel forwarding)",
            Config::FloorNative => "floor XDP, native (lan0 + wan0)",
            Config::FloorSkb => "floor XDP, generic/skb (lan0 + wan0)",
            Config::AgentPass => "apns-agent, monitor (pass), native (lan0 + wan0)",
            Config::AgentPassSkb => "apns-agent, monitor (pass), generic/skb (lan0 + wan0)",
            Config::Nftables => "nftables forward chain (sets + counters)",
        }
    }
}

/// One forwarding run.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    /// Packets that left the gateway's wan0 per second of the sender's time.
    pub pps: f64,
    /// CPU time of the sender and of ksoftirqd per forwarded packet (see
    /// [`forwarding_cpu_ticks`]).
    pub cpu_ns_per_packet: f64,
    pub forwarded: u64,
}

/// Everything section 3 measured: runs[size index][config index][round].
#[derive(Clone, Debug, Default)]
pub struct Forwarding {
    pub sizes: Vec<usize>,
    pub runs: Vec<Vec<Vec<RunResult>>>,
    /// The APNs TCP load, kernel forwarding against `redirect`.
    pub tcp: TcpForwarding,
}

impl Forwarding {
    /// One figure of every run of `config` at `size`, round by round.
    fn figures(&self, size: usize, config: Config, figure: fn(&RunResult) -> f64) -> Vec<f64> {
        self.runs[size][config as usize]
            .iter()
            .map(figure)
            .collect()
    }

    /// Round by round `config` / `base` of one figure.
    fn ratios(
        &self,
        size: usize,
        config: Config,
        base: Config,
        figure: fn(&RunResult) -> f64,
    ) -> Vec<f64> {
        self.figures(size, config, figure)
            .iter()
            .zip(self.figures(size, base, figure))
            .map(|(a, b)| ratio(*a, b))
            .collect()
    }

    /// Round by round `config` / `base` packet rates.
    pub fn pair_ratios(&self, size: usize, config: Config, base: Config) -> Vec<f64> {
        self.ratios(size, config, base, |run| run.pps)
    }

    /// Round by round `config` / `base` CPU time per packet.
    pub fn cpu_pair_ratios(&self, size: usize, config: Config, base: Config) -> Vec<f64> {
        self.ratios(size, config, base, |run| run.cpu_ns_per_packet)
    }

    pub fn median_pps(&self, size: usize, config: Config) -> f64 {
        median(&self.figures(size, config, |run| run.pps))
    }
}

/// Starts `apns-agent --pin-dir PINS run ARGS` in the gateway and waits until it is ready
/// (READY=1: its datapath attached and its policy applied). Its log is kept, not shown: the
/// last lines go into the error if it does not come up. Stopped by SIGTERM when the returned
/// guard drops.
/// `run` with `config` in monitor mode on lan0 and wan0, detaching on exit, serving /metrics
/// on [`METRICS_ADDR`], and `extra` flags: how every section runs the agent.
pub fn monitor_run_args(config: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["run", "--config", config, "--mode", "monitor"];
    args.extend(extra);
    args.extend([
        "--iface",
        GW_IF_CLIENT.name,
        "--iface",
        GW_IF_WAN.name,
        "--detach-on-exit",
        "--metrics-addr",
        METRICS_ADDR,
    ]);
    args.into_iter().map(str::to_owned).collect()
}

pub fn spawn_agent<'lab>(
    lab: &'lab Lab,
    pins: &TestPins,
    args: &[impl AsRef<str>],
) -> Result<agent::Agent<'lab>> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    agent::spawn_run_with(lab, pins, &args, false)
        .with_context(|| format!("apns-agent run in {}", lab.ns_name(Role::Gw)))
}

/// An empty agent config: the built-in defaults (Apple's prefixes and ports), whatever
/// /etc/apns-agent/config.toml says on this machine.
pub fn write_agent_config(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join("agent-config.toml");
    std::fs::write(
        &path,
        "# apns-bench: empty on purpose, the agent's built-in defaults apply.\n",
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The floor attached to the gateway's interfaces; detached on drop.
struct AttachedFloor<'a> {
    lab: &'a Lab,
    floor: &'a mut FloorProgram,
    links: Vec<XdpLinkId>,
}

impl<'a> AttachedFloor<'a> {
    fn attach(lab: &'a Lab, floor: &'a mut FloorProgram, mode: XdpMode) -> Result<Self> {
        let mut attached = AttachedFloor {
            lab,
            floor,
            links: Vec::new(),
        };
        let floor = &mut *attached.floor;
        let links = &mut attached.links;
        // The interface names resolve in the calling thread's namespace: attach from inside
        // the gateway's.
        lab.in_ns(Role::Gw, || -> Result<()> {
            let program = floor.xdp_mut()?;
            for iface in GW_IFACES {
                links.push(
                    program
                        .attach(iface, mode)
                        .with_context(|| format!("attaching the floor to {iface} ({mode:?})"))?,
                );
            }
            Ok(())
        })?
        .with_context(|| format!("in {}", lab.ns_name(Role::Gw)))?;
        Ok(attached)
    }
}

impl Drop for AttachedFloor<'_> {
    fn drop(&mut self) {
        let floor = &mut *self.floor;
        let links = std::mem::take(&mut self.links);
        let detached = self.lab.in_ns(Role::Gw, || -> Result<()> {
            let program = floor.xdp_mut()?;
            for link in links {
                program.detach(link).context("detaching the floor")?;
            }
            Ok(())
        });
        if let Err(err) = detached.and_then(|inner| inner) {
            eprintln!("apns-bench: {err:#}");
        }
    }
}

/// The nftables baseline loaded in the gateway; the table is deleted on drop.
struct NftTable<'a> {
    lab: &'a Lab,
}

impl<'a> NftTable<'a> {
    fn load(lab: &'a Lab) -> Result<Self> {
        let mut nft = lab.command(Role::Gw, "nft");
        nft.args(["-f", "-"]);
        run_with_input(&mut nft, nft_ruleset().as_bytes()).with_context(|| {
            format!("loading the nftables baseline in {}", lab.ns_name(Role::Gw))
        })?;
        Ok(NftTable { lab })
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let mut nft = self.lab.command(Role::Gw, "nft");
        nft.args(["delete", "table", "inet", NFT_TABLE]);
        if let Err(err) = run(&mut nft) {
            eprintln!("apns-bench: {err:#}");
        }
    }
}

/// The utime + stime fields of a /proc/PID/stat text, in USER_HZ ticks (`fields` are 1-based
/// field numbers, as proc(5) gives them).
fn stat_ticks(stat: &str, fields: [usize; 2]) -> Option<u64> {
    // `pid (comm) state ...`: comm may hold anything, so count fields after the last ')'.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    fields
        .iter()
        .map(|&field| rest.get(field - 3)?.parse::<u64>().ok())
        .sum()
}

/// CPU time, in USER_HZ ticks, of everything that does the forwarding work of a run: the
/// children this process has reaped (the iperf3 client, reaped at the end of the run, in
/// whose context the softirqs of its own sends run: veth hands each packet over on the
/// sending CPU) plus every ksoftirqd thread (softirq work deferred to them). Unlike the
/// machine's total in /proc/stat, this leaves out whatever else runs on the (shared)
/// machine.
fn forwarding_cpu_ticks() -> Result<u64> {
    let own = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // cutime and cstime: the CPU time of waited-for children.
    let mut ticks = stat_ticks(&own, [16, 17]).context("parsing /proc/self/stat")?;
    for entry in std::fs::read_dir("/proc")
        .context("listing /proc")?
        .flatten()
    {
        let path = entry.path();
        let is_ksoftirqd = std::fs::read_to_string(path.join("comm"))
            .is_ok_and(|comm| comm.starts_with("ksoftirqd/"));
        if is_ksoftirqd {
            if let Ok(stat) = std::fs::read_to_string(path.join("stat")) {
                // utime and stime.
                ticks += stat_ticks(&stat, [14, 15]).unwrap_or(0);
            }
        }
    }
    Ok(ticks)
}

/// CPUs for the iperf3 client and server: apart when there are two or more.
fn iperf_cpus() -> (usize, usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0, n.saturating_sub(1))
}

/// Starts the iperf3 server on the Apple host and waits until it listens.
fn start_iperf_server(lab: &Lab) -> Result<LabChild<'_>> {
    start_iperf_server_on(lab, None, IPERF_PORT)
}

/// Starts `iperf3 -s -p PORT` on the Apple host, bound to `bind` if given, and waits until
/// it listens.
fn start_iperf_server_on<'lab>(
    lab: &'lab Lab,
    bind: Option<&str>,
    port: &str,
) -> Result<LabChild<'lab>> {
    let (_, server_cpu) = iperf_cpus();
    let mut cmd = lab.command(Role::Apple, "iperf3");
    cmd.args(["-s", "-p", port, "-A", &server_cpu.to_string()]);
    if let Some(bind) = bind {
        cmd.args(["-B", bind]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = lab.spawn(&mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = match bind {
        Some(bind) => format!("src {bind}:{port}"),
        None => format!("sport = :{port}"),
    };
    loop {
        let mut ss = lab.command(Role::Apple, "ss");
        ss.args(["-Hltn", &filter]);
        if !run(&mut ss)?.trim().is_empty() {
            return Ok(server);
        }
        if Instant::now() >= deadline {
            bail!(
                "iperf3 -s did not listen on {filter} within 10 s in {}",
                lab.ns_name(Role::Apple)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The iperf3 client command of one run (for the report as well).
pub fn iperf_client_args(payload: usize, packets: u64) -> Vec<String> {
    let (client_cpu, _) = iperf_cpus();
    [
        "-c",
        &APPLE.v4.to_string(),
        "-p",
        IPERF_PORT,
        "-u",
        "-b",
        "0",
        "-l",
        &payload.to_string(),
        "-n",
        &(payload as u64 * packets).to_string(),
        "-A",
        &client_cpu.to_string(),
        "--connect-timeout",
        "5000",
        "-J",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// How many times a run is tried while the iperf3 server is still busy with the one before.
const BUSY_TRIES: usize = 20;
/// How long to wait before trying again.
const BUSY_WAIT: Duration = Duration::from_millis(250);

/// iperf3's JSON output of one client run: `Ok(None)` when the server was still busy with
/// the previous run (it ends its side of a test a moment after the client; a loaded machine
/// makes the moment longer), an error for any other failure.
fn iperf_output(output: &str) -> Result<Option<serde_json::Value>> {
    let json: serde_json::Value =
        serde_json::from_str(output).context("parsing iperf3's JSON output")?;
    match json["error"].as_str() {
        Some(error) if error.contains("server is busy") => Ok(None),
        Some(error) => bail!("iperf3: {error}"),
        None => Ok(Some(json)),
    }
}

/// Runs `attempt` until it does not find the iperf3 server busy ([`iperf_output`]), at most
/// [`BUSY_TRIES`] times.
fn while_server_busy<T>(mut attempt: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    for _ in 0..BUSY_TRIES {
        if let Some(done) = attempt()? {
            return Ok(done);
        }
        thread::sleep(BUSY_WAIT);
    }
    bail!(
        "iperf3: the server stayed busy with an earlier run for {:?}",
        BUSY_WAIT * BUSY_TRIES as u32
    )
}

/// Sends `packets` UDP datagrams of `payload` bytes from the client to the Apple host.
fn one_run(lab: &Lab, payload: usize, packets: u64) -> Result<RunResult> {
    while_server_busy(|| try_one_run(lab, payload, packets))
}

/// [`one_run`], once; `None` if the server was busy.
fn try_one_run(lab: &Lab, payload: usize, packets: u64) -> Result<Option<RunResult>> {
    let before_link = lab.link_stats(Role::Gw, GW_IF_WAN.name)?;
    let before_cpu = forwarding_cpu_ticks()?;
    let mut client = lab.command(Role::Client, "iperf3");
    client.args(iperf_client_args(payload, packets));
    // Bounded: `run` kills the client after 30 s.
    let output = run(&mut client)
        .with_context(|| format!("iperf3 client in {}", lab.ns_name(Role::Client)))?;
    let after_cpu = forwarding_cpu_ticks()?;
    let after_link = lab.link_stats(Role::Gw, GW_IF_WAN.name)?;
    let Some(json) = iperf_output(&output)? else {
        return Ok(None);
    };
    let sum = &json["end"]["sum"];
    let seconds = sum["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .with_context(|| format!("iperf3 reported no duration: {sum}"))?;
    let forwarded = after_link.tx_packets.saturating_sub(before_link.tx_packets);
    if forwarded == 0 {
        bail!(
            "nothing left the gateway's {} during the run",
            GW_IF_WAN.name
        );
    }
    let cpu_ns = after_cpu.saturating_sub(before_cpu) as f64 * 1e9 / USER_HZ;
    Ok(Some(RunResult {
        pps: forwarded as f64 / seconds,
        cpu_ns_per_packet: cpu_ns / forwarded as f64,
        forwarded,
    }))
}

/// Section 3. `lab` is a fresh lab without NAT; `config_file` an agent config (see
/// [`write_agent_config`]).
pub fn forwarding(plan: &Plan, lab: &Lab, config_file: &Path) -> Result<(Section, Forwarding)> {
    let server = start_iperf_server(lab)?;
    let mut floor = FloorProgram::load()?;
    let pins = TestPins::new();
    let config_arg = config_file.to_string_lossy().into_owned();
    let agent_args = |xdp_mode: &str| monitor_run_args(&config_arg, &["--xdp-mode", xdp_mode]);
    let sizes: Vec<usize> = plan.forward_packets.iter().map(|(size, _)| *size).collect();
    let mut result = Forwarding {
        sizes: sizes.clone(),
        runs: vec![vec![Vec::new(); Config::ALL.len()]; sizes.len()],
        tcp: TcpForwarding::default(),
    };
    // Warm up (ARP/ND, caches, iperf3's first start) so round 1 is not the odd one out.
    one_run(lab, 64, plan.forward_packets[0].1 / 4)?;
    for round in 0..plan.forward_rounds {
        for turn in 0..Config::ALL.len() {
            let config = Config::ALL[(turn + round) % Config::ALL.len()];
            // The guards keep the configuration in place for the runs and undo it after.
            let _floor_guard;
            let _nft_guard;
            let _agent_guard;
            match config {
                Config::None => {}
                Config::FloorNative => {
                    _floor_guard = AttachedFloor::attach(lab, &mut floor, XdpMode::Driver)?
                }
                Config::FloorSkb => {
                    _floor_guard = AttachedFloor::attach(lab, &mut floor, XdpMode::Skb)?
                }
                Config::AgentPass => _agent_guard = spawn_agent(lab, &pins, &agent_args("native"))?,
                Config::AgentPassSkb => _agent_guard = spawn_agent(lab, &pins, &agent_args("skb"))?,
                Config::Nftables => _nft_guard = NftTable::load(lab)?,
            }
            for (s, &(payload, packets)) in plan.forward_packets.iter().enumerate() {
                let r = one_run(lab, payload, packets).with_context(|| {
                    format!(
                        "{payload}-byte run, round {}, {}",
                        round + 1,
                        config.label()
                    )
                })?;
                eprintln!(
                    "    round {:>2}/{} {:>4} B {:<50} {:>10} pps {:>7} ns CPU/packet",
                    round + 1,
                    plan.forward_rounds,
                    payload,
                    config.label(),
                    num(r.pps),
                    num(r.cpu_ns_per_packet)
                );
                result.runs[s][config as usize].push(r);
            }
        }
    }
    if floor.packets()? == 0 {
        bail!("the floor program never saw a packet while attached");
    }
    drop(server);
    result.tcp = tcp_forwarding(plan, lab, &pins, &config_arg)?;
    drop(pins);
    Ok((describe(plan, &result), result))
}

fn describe(plan: &Plan, result: &Forwarding) -> Section {
    let mut section = Section::new("forwarding", "Forwarding through the lab gateway");
    let client = |payload: usize, packets: u64| {
        format!("iperf3 {}", iperf_client_args(payload, packets).join(" "))
    };
    section.method = vec![
        format!(
            "Client namespace → gateway (lan0 → wan0, IPv4 forwarding) → ISP → Apple host, all \
             veth. Each run sends a fixed number of UDP datagrams with iperf3 from the client to \
             `iperf3 -s` on the Apple host ({}). **pps** = packets that left the gateway's wan0 / \
             the sender's seconds. **CPU ns / packet** = CPU time of the iperf3 client plus every \
             ksoftirqd thread, per forwarded packet: veth hands each packet over on the sending \
             CPU, so gateway, ISP and delivery work run in softirq in the sender's context (or \
             ksoftirqd); the sender's own cost is in every configuration alike, other load on \
             the shared machine is not in it (it is in the rate). {} rounds; every round runs \
             each configuration once, in an order rotated from round to round, and each is \
             paired with the same round's \"no program\"; the ratios are taken pair by pair and \
             the median reported. The client is pinned to CPU 0 and the server to the last CPU \
             (`-A`).",
            plan.forward_packets
                .iter()
                .map(|&(payload, packets)| format!("`{}`", client(payload, packets)))
                .collect::<Vec<_>>()
                .join(", "),
            plan.forward_rounds
        ),
        format!(
            "The agent runs as `apns-agent run --config EMPTY --mode monitor --xdp-mode native \
             --iface lan0 --iface wan0 --detach-on-exit --metrics-addr {METRICS_ADDR}` (built-in \
             policy), started before and stopped after each configuration's runs; the \
             generic/skb row (not asked for by the issue) is the same with `--xdp-mode skb`. The datagrams \
             are UDP to 17.249.1.10:5201: the agent parses them to L4 and counts them as \
             not_apns; nftables looks the destination up in its Apple set before the rule's TCP \
             match fails, then counts them in the last rule."
        ),
        "Attaching any native XDP program to a veth switches its receive path to NAPI and builds \
         the skb from an XDP frame: part of any slowdown is that switch, not the program, hence \
         the floor rows (native, and generic/skb as a second floor)."
            .to_owned(),
    ];
    for (s, &payload) in result.sizes.iter().enumerate() {
        let mut table = Table::new(
            format!(
                "{payload}-byte UDP payloads ({}-byte frames):",
                payload + 42
            ),
            &[
                "configuration",
                "median pps",
                "pps range",
                "pps / no program (median of pairs)",
                "pair ratios",
                "CPU ns / packet (median)",
                "CPU / no program (median of pairs)",
            ],
        );
        for config in Config::ALL {
            let pps = result.figures(s, config, |run| run.pps);
            let cpu = result.figures(s, config, |run| run.cpu_ns_per_packet);
            let key = |what: &str| format!("forwarding.{payload}B.{}.{what}", config.key());
            let how = format!(
                "median of {} runs: {}",
                pps.len(),
                client(payload, plan.forward_packets[s].1)
            );
            let median_pps = section.figure(key("pps"), median(&pps), "packets/s", &how);
            let cpu_ns = section.figure(key("cpu_ns_per_packet"), median(&cpu), "ns", &how);
            let (lo, hi) = range(&pps);
            let mut row = vec![
                config.label().to_owned(),
                num(median_pps),
                format!("{}–{}", num(lo), num(hi)),
            ];
            if config == Config::None {
                row.extend(["1.00x".into(), "—".into(), num(cpu_ns), "1.00x".into()]);
            } else {
                let pairs = result.pair_ratios(s, config, Config::None);
                let pps_ratio = section.figure(
                    key("pps_ratio_to_no_program"),
                    median(&pairs),
                    "x",
                    "median of the round-by-round pps ratios to no program",
                );
                let cpu_ratio = section.figure(
                    key("cpu_ratio_to_no_program"),
                    median(&result.cpu_pair_ratios(s, config, Config::None)),
                    "x",
                    "median of the round-by-round CPU-per-packet ratios to no program",
                );
                row.extend([
                    times(pps_ratio),
                    pairs
                        .iter()
                        .map(|r| format!("{r:.2}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    num(cpu_ns),
                    times(cpu_ratio),
                ]);
            }
            table.row(row);
        }
        section.tables.push(table);
    }
    section.notes.push(format!(
        "The nftables ruleset (in the gateway namespace):\n\n```\n{}```",
        nft_ruleset()
    ));
    describe_tcp(plan, &result.tcp, &mut section);
    section.charts = charts(result);
    section
}

/// Section 3's pictures: UDP packet rates per configuration and payload size, and the APNs
/// TCP throughput with and without `redirect`; medians of the rounds, whiskers the 95 %
/// interval of the median where there are 6 rounds or more.
fn charts(result: &Forwarding) -> Vec<Chart> {
    let rounds = result
        .runs
        .first()
        .and_then(|configs| configs.first())
        .map_or(0, Vec::len);
    let udp_title =
        format!("UDP packets per second through the lab gateway (medians of {rounds} rounds)");
    let udp = BarChart {
        title: udp_title.clone(),
        unit: "packets per second leaving the gateway's wan0".to_owned(),
        series: result
            .sizes
            .iter()
            .enumerate()
            .map(|(s, payload)| Series::new(format!("{payload}-byte payloads"), s + 1))
            .collect(),
        groups: Config::ALL
            .into_iter()
            .map(|config| {
                (
                    config.label().to_owned(),
                    (0..result.sizes.len())
                        .map(|s| {
                            Some(Value::from(Estimate::of(&result.figures(
                                s,
                                config,
                                |run| run.pps,
                            ))))
                        })
                        .collect(),
                )
            })
            .collect(),
    };
    let tcp_title = format!(
        "APNs TCP throughput, kernel forwarding and redirect (medians of {} rounds)",
        result.tcp.rounds.len()
    );
    let mbits = |redirect: bool| {
        let column: Vec<f64> = result.tcp.column(redirect, |r| r.bits_per_second / 1e6);
        Some(Value::from(Estimate::of(&column)))
    };
    let tcp = BarChart {
        title: tcp_title.clone(),
        unit: "Mbit/s received by the Apple host".to_owned(),
        series: vec![Series::new("one TCP stream", 1)],
        groups: vec![
            (
                "no program (kernel forwarding)".to_owned(),
                vec![mbits(false)],
            ),
            ("apns-agent, redirect".to_owned(), vec![mbits(true)]),
        ],
    };
    vec![
        Chart {
            file: "forwarding_udp.svg".to_owned(),
            svg: udp.svg(),
            title: udp_title,
        },
        Chart {
            file: "forwarding_tcp.svg".to_owned(),
            svg: tcp.svg(),
            title: tcp_title,
        },
    ]
}

/// The APNs port the TCP load goes to.
const TCP_PORT: &str = "5223";
/// A second Apple address on the Apple host for the TCP load's iperf3 server: the lab's echo
/// server holds 17.249.1.10:5223 (APPLE, same /24, inside Apple's 17.0.0.0/8).
const TCP_SERVER: &str = "17.249.1.11";
/// The issue's goal for `redirect` (the same wording as the binary's goal, which this
/// section's measured goal replaces in the report).
const REDIRECT_FORWARDING_MIN: f64 = 1.5;

/// One TCP run through the gateway.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpRun {
    /// What the iperf3 server received, per second (iperf3's `sum_received`).
    pub bits_per_second: f64,
    /// Packets the ISP's gw0 received from the gateway per second of the run (with GSO, one
    /// per GSO packet, as the devices count them).
    pub pps: f64,
    /// CPU time of the sender and of ksoftirqd per KiB received.
    pub cpu_ns_per_kib: f64,
    /// Packets the agent counted with verdict `fastpath` during the run (0 without it).
    pub fastpath_packets: u64,
    /// Packets the agent counted with verdict `fastpath_tc` (handed to the TC step).
    pub fastpath_tc_packets: u64,
}

/// The TCP part of section 3: `rounds[i]` = (no program, redirect) of round i.
#[derive(Clone, Debug, Default)]
pub struct TcpForwarding {
    pub bytes: u64,
    pub rounds: Vec<(TcpRun, TcpRun)>,
}

impl TcpForwarding {
    fn column(&self, redirect: bool, f: impl Fn(&TcpRun) -> f64) -> Vec<f64> {
        self.rounds
            .iter()
            .map(|(none, red)| f(if redirect { red } else { none }))
            .collect()
    }

    fn pair_ratios(&self, f: impl Fn(&TcpRun) -> f64) -> Vec<f64> {
        self.rounds
            .iter()
            .map(|(none, red)| ratio(f(red), f(none)))
            .collect()
    }

    pub fn fastpath_packets(&self) -> u64 {
        self.rounds
            .iter()
            .map(|(_, red)| red.fastpath_packets)
            .sum()
    }
}

/// Bytes per TCP run.
fn tcp_bytes(plan: &Plan) -> u64 {
    if plan.quick {
        50_000_000
    } else {
        1_000_000_000
    }
}

/// The iperf3 client command of one TCP run.
pub fn tcp_client_args(bytes: u64) -> Vec<String> {
    let (client_cpu, _) = iperf_cpus();
    [
        "-c",
        TCP_SERVER,
        "-p",
        TCP_PORT,
        "-n",
        &bytes.to_string(),
        "-A",
        &client_cpu.to_string(),
        "--connect-timeout",
        "5000",
        "-J",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// `ip netns exec`-style command in `role`'s namespace that must succeed.
fn in_ns(lab: &Lab, role: Role, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = lab.command(role, program);
    cmd.args(args);
    run(&mut cmd).with_context(|| format!("{program} {} in {}", args.join(" "), lab.ns_name(role)))
}

/// Whether `ethtool -k IFACE` shows `feature: on`.
fn offload_on(lab: &Lab, role: Role, iface: &str, feature: &str) -> Result<bool> {
    let out = in_ns(lab, role, "ethtool", &["-k", iface])?;
    Ok(out
        .lines()
        .any(|line| line.trim().starts_with(&format!("{feature}: on"))))
}

/// The lab prepared for redirect as tests/tests/fastpath.rs does (and docs/fastpath.md asks
/// for on veth), plus the TCP server's address; undone on drop.
struct RedirectPrep<'a> {
    lab: &'a Lab,
    /// (role, iface, `-K` flag, whether it was on before)
    restore: Vec<(Role, &'static str, &'static str, bool)>,
}

impl<'a> RedirectPrep<'a> {
    fn new(lab: &'a Lab) -> Result<Self> {
        let mut prep = RedirectPrep {
            lab,
            restore: Vec::new(),
        };
        // XDP_REDIRECT into a veth needs NAPI on the peer end: GRO on (client eth0, ISP gw0).
        // veth leaves TCP checksums partial, which an XDP frame cannot carry: the client and
        // the Apple host compute full checksums (tx off). Both configurations run like this.
        for (role, iface, feature, flag, value) in [
            (
                Role::Client,
                CLIENT_IF.name,
                "generic-receive-offload",
                "gro",
                "on",
            ),
            (
                Role::Isp,
                ISP_IF_GW.name,
                "generic-receive-offload",
                "gro",
                "on",
            ),
            (Role::Client, CLIENT_IF.name, "tx-checksumming", "tx", "off"),
            (Role::Apple, APPLE_IF.name, "tx-checksumming", "tx", "off"),
        ] {
            let was_on = offload_on(lab, role, iface, feature)?;
            prep.restore.push((role, iface, flag, was_on));
            in_ns(lab, role, "ethtool", &["-K", iface, flag, value])?;
        }
        in_ns(
            lab,
            Role::Apple,
            "ip",
            &[
                "addr",
                "add",
                &format!("{TCP_SERVER}/24"),
                "dev",
                APPLE_IF.name,
            ],
        )?;
        // The fast path forwards only to resolved neighbours.
        for addr in [CLIENT.v4.to_string(), ISP_WAN.v4.to_string()] {
            in_ns(lab, Role::Gw, "ping", &["-c", "1", "-W", "2", &addr])?;
        }
        Ok(prep)
    }
}

impl Drop for RedirectPrep<'_> {
    fn drop(&mut self) {
        let mut undo = vec![(
            Role::Apple,
            "ip",
            vec![
                "addr".to_owned(),
                "del".to_owned(),
                format!("{TCP_SERVER}/24"),
                "dev".to_owned(),
                APPLE_IF.name.to_owned(),
            ],
        )];
        for &(role, iface, flag, was_on) in &self.restore {
            let value = if was_on { "on" } else { "off" };
            undo.push((
                role,
                "ethtool",
                vec!["-K".into(), iface.into(), flag.into(), value.into()],
            ));
        }
        for (role, program, args) in undo {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            if let Err(err) = in_ns(self.lab, role, program, &args) {
                eprintln!("apns-bench: {err:#}");
            }
        }
    }
}

/// Packets the agent has counted with verdict `fastpath` and with `fastpath_tc` so far (0
/// when no datapath is pinned).
fn fastpath_counts(pins: &TestPins) -> (u64, u64) {
    let count = |snapshot: &Snapshot, outcome: Outcome| {
        snapshot
            .entries
            .iter()
            .filter(|(key, _)| key.outcome == outcome as u8)
            .map(|(_, value)| value.packets)
            .sum()
    };
    pins.snapshot().map_or((0, 0), |snapshot| {
        (
            count(&snapshot, Outcome::Fastpath),
            count(&snapshot, Outcome::FastpathTc),
        )
    })
}

/// One TCP stream of `bytes` from the client to the Apple host's APNs port.
fn one_tcp_run(lab: &Lab, pins: Option<&TestPins>, bytes: u64) -> Result<TcpRun> {
    while_server_busy(|| try_one_tcp_run(lab, pins, bytes))
}

/// [`one_tcp_run`], once; `None` if the server was busy.
fn try_one_tcp_run(lab: &Lab, pins: Option<&TestPins>, bytes: u64) -> Result<Option<TcpRun>> {
    let before_fast = pins.map_or((0, 0), fastpath_counts);
    let before_link = lab.link_stats(Role::Isp, ISP_IF_GW.name)?;
    let before_cpu = forwarding_cpu_ticks()?;
    let mut client = lab.command(Role::Client, "iperf3");
    client.args(tcp_client_args(bytes));
    // Bounded: `run` kills the client after 30 s.
    let output = run(&mut client)
        .with_context(|| format!("iperf3 TCP client in {}", lab.ns_name(Role::Client)))?;
    let after_cpu = forwarding_cpu_ticks()?;
    let after_link = lab.link_stats(Role::Isp, ISP_IF_GW.name)?;
    let after_fast = pins.map_or((0, 0), fastpath_counts);
    let Some(json) = iperf_output(&output)? else {
        return Ok(None);
    };
    let sum = &json["end"]["sum_received"];
    let (Some(seconds), Some(bits_per_second), Some(received)) = (
        sum["seconds"].as_f64().filter(|s| *s > 0.0),
        sum["bits_per_second"].as_f64(),
        sum["bytes"].as_f64().filter(|b| *b > 0.0),
    ) else {
        bail!("iperf3 reported no received sum: {sum}");
    };
    let packets = after_link.rx_packets.saturating_sub(before_link.rx_packets);
    let cpu_ns = after_cpu.saturating_sub(before_cpu) as f64 * 1e9 / USER_HZ;
    Ok(Some(TcpRun {
        bits_per_second,
        pps: packets as f64 / seconds,
        cpu_ns_per_kib: cpu_ns / (received / 1024.0),
        fastpath_packets: after_fast.0.saturating_sub(before_fast.0),
        fastpath_tc_packets: after_fast.1.saturating_sub(before_fast.1),
    }))
}

/// The TCP part: rounds of (no program, agent with redirect on lan0 and wan0), the order
/// alternating from round to round, on a lab prepared for redirect.
fn tcp_forwarding(
    plan: &Plan,
    lab: &Lab,
    pins: &TestPins,
    config_arg: &str,
) -> Result<TcpForwarding> {
    let _prep = RedirectPrep::new(lab)?;
    let _server = start_iperf_server_on(lab, Some(TCP_SERVER), TCP_PORT)?;
    let bytes = tcp_bytes(plan);
    let rounds = if plan.quick {
        2
    } else {
        plan.forward_rounds.max(6)
    };
    let agent_args = redirect_agent_args(config_arg);
    // Warm up (neighbours, iperf3's first start).
    one_tcp_run(lab, None, bytes / 4)?;
    let mut result = TcpForwarding {
        bytes,
        rounds: Vec::new(),
    };
    for round in 0..rounds {
        let mut pair = (TcpRun::default(), TcpRun::default());
        for redirect in [round % 2 == 1, round % 2 == 0] {
            let r = if redirect {
                let _agent = spawn_agent(lab, pins, &agent_args)?;
                one_tcp_run(lab, Some(pins), bytes)
            } else {
                one_tcp_run(lab, None, bytes)
            }
            .with_context(|| {
                format!(
                    "TCP run, round {}, {}",
                    round + 1,
                    if redirect { "redirect" } else { "no program" }
                )
            })?;
            progress(
                round,
                rounds,
                if redirect {
                    "apns-agent redirect"
                } else {
                    "no program"
                },
                &r,
            );
            if redirect {
                pair.1 = r;
            } else {
                pair.0 = r;
            }
        }
        result.rounds.push(pair);
    }
    Ok(result)
}

/// The redirect fast path's TC step against XDP redirect (issue 17), on a lab prepared for
/// redirect: an agent with redirect on lan0 and wan0 sets the datapath up and stops (fail-
/// static: it stays attached), then each round runs one TCP stream of `bytes` with the
/// agent's object behind the pinned links (XDP redirect) and one with `BENCH_HANDOFF_OBJECT`
/// (every packet the fast path forwards handed to the TC step), swapped in as an upgrade
/// would, the order alternating. Returns (XDP redirect, TC step) per round.
pub fn tc_step_forwarding(
    lab: &Lab,
    pins: &TestPins,
    config_arg: &str,
    rounds: usize,
    bytes: u64,
) -> Result<Vec<(TcpRun, TcpRun)>> {
    let _prep = RedirectPrep::new(lab)?;
    let _server = start_iperf_server_on(lab, Some(TCP_SERVER), TCP_PORT)?;
    let mut agent_args = redirect_agent_args(config_arg);
    agent_args.retain(|arg| arg != "--detach-on-exit");
    drop(spawn_agent(lab, pins, &agent_args)?);
    let install = |object: &[u8]| -> Result<()> {
        let lock = pins.dir().lock()?;
        Datapath::install_object(pins.dir(), &lock, object, None)?;
        Ok(())
    };
    // Warm up (neighbours, iperf3's first start).
    one_tcp_run(lab, None, bytes / 4)?;
    let mut pairs = Vec::new();
    for round in 0..rounds {
        let mut pair = (TcpRun::default(), TcpRun::default());
        for tc_step in [round % 2 == 1, round % 2 == 0] {
            install(if tc_step {
                object::BENCH_HANDOFF_OBJECT
            } else {
                object::OBJECT
            })?;
            let r = one_tcp_run(lab, Some(pins), bytes)
                .with_context(|| format!("TCP run, round {}", round + 1))?;
            progress(
                round,
                rounds,
                if tc_step { "TC step" } else { "XDP redirect" },
                &r,
            );
            if tc_step {
                pair.1 = r;
            } else {
                pair.0 = r;
            }
        }
        pairs.push(pair);
    }
    Ok(pairs)
}

/// The progress line of TCP run `round` (0-based) of `rounds`.
fn progress(round: usize, rounds: usize, what: &str, r: &TcpRun) {
    eprintln!(
        "    round {:>2}/{rounds} TCP {what:<22} {:>8} Mbit/s {:>10} pps {:>7} ns CPU/KiB {:>9} fastpath {:>9} fastpath_tc",
        round + 1,
        num(r.bits_per_second / 1e6),
        num(r.pps),
        num(r.cpu_ns_per_kib),
        r.fastpath_packets,
        r.fastpath_tc_packets
    );
}

fn redirect_agent_args(config_arg: &str) -> Vec<String> {
    [
        "run",
        "--config",
        config_arg,
        "--mode",
        "monitor",
        "--xdp-mode",
        "native",
        "--iface",
        GW_IF_CLIENT.name,
        "--iface",
        GW_IF_WAN.name,
        "--fastpath",
        "lan0=redirect",
        "--fastpath",
        "wan0=redirect",
        "--detach-on-exit",
        "--metrics-addr",
        METRICS_ADDR,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn describe_tcp(plan: &Plan, tcp: &TcpForwarding, section: &mut Section) {
    let client = format!("iperf3 {}", tcp_client_args(tcp.bytes).join(" "));
    let agent = redirect_agent_args("EMPTY").join(" ");
    section.method.push(format!(
        "**APNs TCP, kernel forwarding against `redirect`.** One TCP stream per run, `{client}` \
         from the client to `iperf3 -s -B {TCP_SERVER} -p {TCP_PORT}` on the Apple host \
         ({TCP_SERVER} is a second address on it, in Apple's 17.0.0.0/8, since the lab's echo \
         server holds 17.249.1.10:{TCP_PORT}), {} rounds, each one run without a program and \
         one with `apns-agent {agent}` (started before, stopped after its run), the order \
         alternating from round to round; ratios pair by pair, medians reported. The lab is \
         prepared for redirect as in tests/tests/fastpath.rs, for both configurations alike: \
         `ethtool -K eth0 tx off` on the client and the Apple host (full TCP checksums), GRO on \
         the client's eth0 and the ISP's gw0 (NAPI on the veth peers redirect sends into), \
         neighbours resolved by ping from the gateway. **Mbit/s** = iperf3's received rate; \
         **pps** = packets the ISP's gw0 received per second (a GSO packet counts once); \
         **CPU ns / KiB** = CPU time of the iperf3 client and ksoftirqd per KiB received.",
        tcp.rounds.len()
    ));
    let mut table = Table::new(
        format!(
            "APNs TCP to {TCP_SERVER}:{TCP_PORT}, {} bytes per run:",
            num(tcp.bytes as f64)
        ),
        &[
            "configuration",
            "median Mbit/s",
            "Mbit/s range",
            "throughput / no program (median of pairs)",
            "pair ratios",
            "median pps (ISP gw0)",
            "CPU ns / KiB (median)",
            "CPU / no program (median of pairs)",
            "fastpath packets (agent counters)",
        ],
    );
    let how = format!("median of {} runs: {client}", tcp.rounds.len());
    let mut throughput_ratio = f64::NAN;
    for redirect in [false, true] {
        let name = if redirect { "redirect" } else { "no_program" };
        let key = |what: &str| format!("forwarding.tcp_apns.{name}.{what}");
        let bps = tcp.column(redirect, |r| r.bits_per_second);
        let median_bps = section.figure(key("bits_per_second"), median(&bps), "bit/s", &how);
        let pps = section.figure(
            key("pps"),
            median(&tcp.column(redirect, |r| r.pps)),
            "packets/s",
            &how,
        );
        let cpu = section.figure(
            key("cpu_ns_per_kib"),
            median(&tcp.column(redirect, |r| r.cpu_ns_per_kib)),
            "ns",
            &how,
        );
        let (lo, hi) = range(&bps);
        let mut row = vec![
            if redirect {
                "apns-agent, redirect on lan0 + wan0 (monitor, native)".to_owned()
            } else {
                "no program (kernel forwarding)".to_owned()
            },
            num(median_bps / 1e6),
            format!("{}–{}", num(lo / 1e6), num(hi / 1e6)),
        ];
        if redirect {
            let pairs = tcp.pair_ratios(|r| r.bits_per_second);
            throughput_ratio = section.figure(
                key("throughput_ratio_to_no_program"),
                median(&pairs),
                "x",
                "median of the round-by-round throughput ratios to no program",
            );
            let cpu_ratio = section.figure(
                key("cpu_ratio_to_no_program"),
                median(&tcp.pair_ratios(|r| r.cpu_ns_per_kib)),
                "x",
                "median of the round-by-round CPU-per-KiB ratios to no program",
            );
            // Zero here means the flow never took the fast path: the figure is then invalid,
            // and the run fails like any other missing figure.
            let fast = section.figure(
                key("fastpath_packets"),
                tcp.fastpath_packets() as f64,
                "packets",
                "sum over the redirect runs of the agent's pinned counters with verdict \
                 fastpath (every interface, port and direction), read before and after each run",
            );
            row.extend([
                times(throughput_ratio),
                pairs
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                num(pps),
                num(cpu),
                times(cpu_ratio),
                num(fast),
            ]);
        } else {
            row.extend([
                "1.00x".into(),
                "—".into(),
                num(pps),
                num(cpu),
                "1.00x".into(),
                "—".into(),
            ]);
        }
        table.row(row);
    }
    section.tables.push(table);
    let fast = tcp.fastpath_packets();
    let none_bps = median(&tcp.column(false, |r| r.bits_per_second));
    let red_bps = median(&tcp.column(true, |r| r.bits_per_second));
    let valid = fast > 0 && throughput_ratio.is_finite();
    section.goals.push(Goal {
        goal: format!("`redirect` ≥ {REDIRECT_FORWARDING_MIN}x kernel forwarding"),
        measured: format!(
            "APNs TCP (iperf3, {} rounds{}): {} (median pair ratio; {} vs {} Mbit/s median), \
             {} packets counted with verdict fastpath; veth, where XDP on a device turns off \
             GSO on its peer",
            tcp.rounds.len(),
            if plan.quick { ", quick" } else { "" },
            times(throughput_ratio),
            num(red_bps / 1e6),
            num(none_bps / 1e6),
            num(fast as f64)
        ),
        verdict: Verdict::from_met(valid && throughput_ratio >= REDIRECT_FORWARDING_MIN),
    });
    let bytes_per_packet =
        |redirect: bool| median(&tcp.column(redirect, |r| r.bits_per_second / 8.0 / r.pps));
    section.notes.push(format!(
        "On veth, an XDP program on a device turns off GSO on its peer, so with the agent on \
         lan0 and wan0 the client and the ISP hand over one segment at a time: this compares a \
         path without GSO (redirect) against one that may use it (kernel forwarding), and the \
         figure says little about NICs, for which redirect is made. In this lab `tx off` \
         (needed for full checksums) also turns off TSO/scatter-gather on the client, so kernel \
         forwarding moved MTU-sized packets as well: {} bytes per packet at the ISP's gw0 \
         without a program, {} with redirect (received bytes / gw0 packets, medians). UDP (the \
         tables above) never takes the fast path, which forwards only APNs TCP.",
        num(bytes_per_packet(false)),
        num(bytes_per_packet(true))
    ));
}
