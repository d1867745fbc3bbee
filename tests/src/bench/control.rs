//! Section 4: the control plane. How long a policy apply and a full counter read take, how
//! much memory the agent holds after a soak with /metrics scraped every second, its peak
//! through start, reload, upgrade and migration, and how much kernel memory its pinned maps
//! take (bpftool's `bytes_memlock`, which on this kernel is the maps' actual memory use).

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use apns_common::{
    counters::{
        block_index, CounterBlock, CounterSlots, CounterValue, Direction, Outcome, CELLS,
        LAST_ASSIGNABLE_SLOT,
    },
    maps::{COUNTERS, COUNTER_SLOTS},
};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};

use super::{
    forward::{monitor_run_args, spawn_agent, METRICS_ADDR},
    report::{Section, Table},
    stats::{group_thousands, median, num},
    testrun::OurProgram,
    Plan,
};
use crate::{
    agent::TestPins,
    lab::{run, Lab, Role, APPLE, GW_IF_CLIENT, GW_IF_WAN},
};

/// Interfaces and ports of the "realistic" counters: a gateway's LAN, MDM, VLAN trunk and
/// WAN, and Apple's five ports.
pub const REALISTIC: CounterFill = CounterFill {
    interfaces: 4,
    ports: 5,
};
/// Every interface and port slot in use.
pub const FULL: CounterFill = CounterFill {
    interfaces: LAST_ASSIGNABLE_SLOT,
    ports: LAST_ASSIGNABLE_SLOT,
};
/// Whether cell `(direction, outcome)` counts under a port (APNs traffic and drops) or under
/// port 0 alone (the other classes): the same test `fill_counters` writes by.
fn has_port((direction, outcome): &(Direction, Outcome)) -> bool {
    outcome.is_drop() || *direction != Direction::None
}

/// How many interface and port slots the counter-read timing fills.
#[derive(Clone, Copy, Debug)]
pub struct CounterFill {
    pub interfaces: u32,
    pub ports: u32,
}

impl CounterFill {
    /// Counter entries a snapshot returns: every key an interface can produce.
    pub fn entries(self) -> usize {
        // Counters an interface produces with no port (not_ip, not_apns, fragment,
        // malformed), and per port (pass, drops, fast path, inbound attempts).
        let port_keys = CELLS.iter().filter(|cell| has_port(cell)).count();
        let class_keys = CELLS.len() - port_keys;
        self.interfaces as usize * (class_keys + self.ports as usize * port_keys)
    }
}
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often the soak samples the agent's memory.
const RSS_SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// `bytes_memlock` of one map, from `bpftool -j map show ARGS`.
fn memlock(args: &[&str]) -> Result<(String, u64)> {
    let out = run(Command::new("bpftool")
        .args(["-j", "map", "show"])
        .args(args))?;
    let info: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("parsing `bpftool -j map show {}`", args.join(" ")))?;
    let bytes = info["bytes_memlock"]
        .as_u64()
        .with_context(|| format!("no bytes_memlock in `bpftool map show {}`", args.join(" ")))?;
    Ok((info["name"].as_str().unwrap_or("?").to_owned(), bytes))
}

/// Sum of `bytes_memlock` over the maps with these ids.
pub fn maps_memlock(ids: &[u32]) -> Result<u64> {
    let mut total = 0;
    for id in ids {
        total += memlock(&["id", &id.to_string()])?.1;
    }
    Ok(total)
}

/// `bytes_memlock` of every map pinned in `dir`, by map name.
pub fn pinned_maps_memlock(dir: &Path) -> Result<Vec<(String, u64)>> {
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        maps.push(memlock(&["pinned", &path.to_string_lossy()])?);
    }
    ensure!(!maps.is_empty(), "no maps pinned in {}", dir.display());
    maps.sort();
    Ok(maps)
}

/// Gives `fill.interfaces` interface slots (ifindexes 2, 3, ...) and `fill.ports` port
/// slots (5223, 443, ... then 10001, 10002, ...) and puts a count in every cell they can
/// produce, through second handles on `program`'s maps (the agent's own handles only
/// assign slots to real interfaces and policy ports).
fn fill_counters(program: &OurProgram, fill: CounterFill) -> Result<()> {
    let mut slots_map: Array<MapData, CounterSlots> = Array::try_from(program.map(COUNTER_SLOTS)?)
        .with_context(|| format!("map {COUNTER_SLOTS}'s layout"))?;
    let mut counters: PerCpuArray<MapData, CounterBlock> =
        PerCpuArray::try_from(program.map(COUNTERS)?)
            .with_context(|| format!("map {COUNTERS}'s layout"))?;
    const APPLE_PORTS: [u16; 5] = [5223, 443, 2197, 2195, 2196];
    let mut slots = CounterSlots::default();
    for i in 1..=fill.interfaces {
        slots.ifindex[i as usize] = i + 1; // 1 is the loopback.
    }
    for p in 1..=fill.ports {
        slots.port[p as usize] = APPLE_PORTS
            .get(p as usize - 1)
            .copied()
            .unwrap_or(10_000 + p as u16);
    }
    slots_map
        .set(0, slots, 0)
        .with_context(|| format!("writing map {COUNTER_SLOTS}"))?;
    let cpus = aya::util::nr_cpus().map_err(|(what, err)| anyhow::anyhow!("{what}: {err}"))?;
    let value = |i: u32| CounterValue {
        packets: 1000 + u64::from(i),
        bytes: 100_000 + u64::from(i),
        ..CounterValue::default()
    };
    for i in 1..=fill.interfaces {
        for p in 0..=fill.ports {
            let mut block = CounterBlock::default();
            for (cell, key) in CELLS.iter().enumerate() {
                if has_port(key) == (p != 0) {
                    block.cells[cell] = value(block_index(i, p));
                }
            }
            let values = PerCpuValues::try_from(vec![block; cpus])
                .context("building per-CPU counter values")?;
            counters
                .set(block_index(i, p), values, 0)
                .with_context(|| format!("writing block ({i}, {p}) of {COUNTERS}"))?;
        }
    }
    Ok(())
}

/// Wall time of `CounterMaps::snapshot` over counters filled as `fill` says.
pub fn snapshot_times(fill: CounterFill, reads: usize) -> Result<Vec<Duration>> {
    let program = OurProgram::load()?;
    fill_counters(&program, fill)?;
    let entries = fill.entries();
    let mut times = Vec::with_capacity(reads);
    for _ in 0..reads {
        let started = Instant::now();
        let snapshot = program.counters.snapshot()?;
        times.push(started.elapsed());
        ensure!(
            snapshot.entries.len() == entries,
            "read {} counter entries, wrote {entries}",
            snapshot.entries.len()
        );
    }
    Ok(times)
}

/// What the soak measured.
#[derive(Clone, Debug, Default)]
pub struct Soak {
    pub secs: f64,
    /// (seconds since start, VmRSS KiB).
    pub rss: Vec<(f64, u64)>,
    /// VmHWM (peak RSS) at the end, KiB.
    pub peak_kib: u64,
    pub scrapes: usize,
    pub failed_scrapes: usize,
    pub echoes: usize,
    /// The agent's pinned maps and their memory.
    pub maps: Vec<(String, u64)>,
}

impl Soak {
    pub fn end_kib(&self) -> u64 {
        self.rss.last().map_or(0, |&(_, kib)| kib)
    }
    pub fn start_kib(&self) -> u64 {
        self.rss.first().map_or(0, |&(_, kib)| kib)
    }
    pub fn maps_bytes(&self) -> u64 {
        self.maps.iter().map(|(_, bytes)| bytes).sum()
    }
}

/// A `VmXXX:` line of /proc/PID/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// GET /metrics from inside the gateway; the body's length.
fn scrape(lab: &Lab) -> Result<usize> {
    let addr: SocketAddr = METRICS_ADDR.parse().context("the metrics address")?;
    let mut stream = lab.connect(Role::Gw, addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .context("reading the /metrics response")?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "GET /metrics: {head}");
    Ok(body.len())
}

/// Runs the agent (monitor mode, lan0 and wan0) for `plan.soak`, scraping /metrics and
/// making one APNs connection through the gateway every second, and samples its memory.
pub fn soak(plan: &Plan, lab: &Lab, config_file: &Path) -> Result<Soak> {
    let pins = TestPins::new();
    let config_arg = config_file.to_string_lossy().into_owned();
    let agent = spawn_agent(lab, &pins, &monitor_run_args(&config_arg, &[]))?;
    let pid = agent.id();
    let mut soak = Soak::default();
    let started = Instant::now();
    let mut next_sample = Duration::ZERO;
    // Bounded by the deadline and, should the clock misbehave, by a tick count.
    let ticks = plan.soak.as_secs() + 2;
    for _ in 0..ticks {
        let tick = Instant::now();
        match scrape(lab) {
            Ok(_) => soak.scrapes += 1,
            Err(err) => {
                soak.failed_scrapes += 1;
                eprintln!("apns-bench: scrape failed: {err:#}");
            }
        }
        // An APNs connection so the counters and the reachability window keep moving.
        if lab
            .echo(Role::Client, APPLE.socket(false, 5223), b"apns", TIMEOUT)
            .is_ok()
        {
            soak.echoes += 1;
        }
        let elapsed = started.elapsed();
        if elapsed >= next_sample {
            soak.rss
                .push((elapsed.as_secs_f64(), proc_status_kib(pid, "VmRSS")?));
            next_sample += RSS_SAMPLE_EVERY;
        }
        if elapsed >= plan.soak {
            break;
        }
        thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    soak.secs = started.elapsed().as_secs_f64();
    // The last reading is the figure; skip it when the loop just took one.
    if soak.rss.last().is_none_or(|&(at, _)| soak.secs - at >= 1.0) {
        soak.rss.push((soak.secs, proc_status_kib(pid, "VmRSS")?));
    }
    soak.peak_kib = proc_status_kib(pid, "VmHWM")?;
    soak.maps = pinned_maps_memlock(&pins.dir().maps_dir())?;
    if soak.scrapes == 0 {
        bail!("no /metrics scrape succeeded during the soak");
    }
    drop(agent);
    drop(pins);
    Ok(soak)
}

/// The agent's peak resident memory (VmHWM) through the events that load the datapath
/// object: start, a reload, an upgrade and a migration, each its own step.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    /// (what happened, the VmHWM of the agent that did it, KiB).
    pub peaks: Vec<(&'static str, u64)>,
    /// Why the migration step was left out, if it was (the previous release's datapath
    /// cannot run on this kernel).
    pub skipped_migration: Option<String>,
}

impl Lifecycle {
    pub fn peak_kib(&self) -> u64 {
        self.peaks.iter().map(|&(_, kib)| kib).max().unwrap_or(0)
    }
}

/// What [`lifecycle`] runs and reads, for the report.
pub const LIFECYCLE_STEPS: &str = "(1) `apns-agent run` on a fresh pin directory, VmHWM once \
    it is ready; (2) SIGHUP to it, VmHWM once the reload is done (the same process, so the \
    peak so far); (3) it stops (the datapath stays, `--detach-on-exit`) and a new agent \
    starts on the same pins and adopts the datapath, as after a package upgrade: its VmHWM \
    once ready; (4) the previous release's datapath (map layout 2, \
    `tests/fixtures/apns-layout2.o`) installed on fresh pins, and a new agent migrating it: \
    its VmHWM once ready. The same agent arguments as the soak.";

/// Runs the agent through [`LIFECYCLE_STEPS`] in the lab's gateway.
pub fn lifecycle(lab: &Lab, config_file: &Path) -> Result<Lifecycle> {
    let config_arg = config_file.to_string_lossy().into_owned();
    let args = monitor_run_args(&config_arg, &[]);
    let hwm = |agent: &crate::agent::Agent<'_>| proc_status_kib(agent.id(), "VmHWM");
    let mut lifecycle = Lifecycle::default();
    let pins = TestPins::new();
    let mut first = spawn_agent(lab, &pins, &args)?;
    lifecycle.peaks.push(("start", hwm(&first)?));
    first.reload().context("reloading the agent (SIGHUP)")?;
    lifecycle.peaks.push(("reload (SIGHUP)", hwm(&first)?));
    first.stop(TIMEOUT).context("stopping the first agent")?;
    let adopting = spawn_agent(lab, &pins, &args)?;
    lifecycle
        .peaks
        .push(("upgrade (a new agent adopts the datapath)", hwm(&adopting)?));
    drop(adopting);
    drop(pins);

    if let Some(refusal) = crate::layout2::refused_here() {
        lifecycle.skipped_migration = Some(refusal);
        return Ok(lifecycle);
    }
    let pins = TestPins::new();
    lab.in_ns(Role::Gw, || {
        crate::layout2::install(pins.dir(), &[GW_IF_CLIENT.name, GW_IF_WAN.name])
    })?
    .context("installing the previous release's datapath (layout 2)")?;
    let migrating = spawn_agent(lab, &pins, &args)?;
    migrating
        .wait_for_log("migrated the datapath from map layout 2", TIMEOUT)
        .context("the agent did not migrate the layout-2 datapath")?;
    lifecycle.peaks.push((
        "migration (a new agent over the previous release's datapath)",
        hwm(&migrating)?,
    ));
    Ok(lifecycle)
}

/// Section 4's inputs gathered by the other steps.
pub struct ControlInputs<'a> {
    pub apply_10k: &'a [Duration],
    /// (prefixes, apply time) from section 2.
    pub scaling_apply: &'a [(usize, Duration)],
    pub largest_maps_bytes: u64,
    pub snapshot_realistic: &'a [Duration],
    pub snapshot_full: &'a [Duration],
    pub soak: &'a Soak,
    pub lifecycle: &'a Lifecycle,
}

pub fn describe(cpu: usize, inputs: &ControlInputs<'_>) -> Section {
    let ms = |d: &[Duration]| median(&d.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>());
    let mut section = Section::new("control_plane", "Control plane");
    section.method = vec![format!(
        "Apply: wall time of `PolicyMaps::apply` writing 10,000 IPv4 prefixes (section 2's \
         generator) into a freshly loaded datapath, median of {} datapaths. Counter read: wall \
         time of `CounterMaps::snapshot` (every counter, summed over CPUs), median of {} reads \
         of {} counters ({} interfaces x {} ports: every key a gateway interface can produce) \
         and of {} reads with every slot in use ({} interfaces x {} ports, {} counters). Both \
         on the pinned thread (CPU {cpu}). Memory: `apns-agent run` in \
         the lab's gateway (monitor, lan0 + wan0) for {:.0} s with /metrics scraped every \
         second and one APNs connection through the gateway every second; VmRSS from \
         /proc/PID/status every {} s; pinned maps: `bpftool -j map show pinned PATH` \
         bytes_memlock summed over the agent's pin directory.",
        inputs.apply_10k.len(),
        inputs.snapshot_realistic.len(),
        REALISTIC.entries(),
        REALISTIC.interfaces,
        REALISTIC.ports,
        inputs.snapshot_full.len(),
        FULL.interfaces,
        FULL.ports,
        group_thousands(FULL.entries() as i64),
        inputs.soak.secs,
        RSS_SAMPLE_EVERY.as_secs()
    )];
    let soak = inputs.soak;
    let mut table = Table::new("Figures:", &["what", "value"]);
    let apply = section.figure(
        "control.apply_10000_prefixes_ms".into(),
        ms(inputs.apply_10k),
        "ms",
        &format!(
            "PolicyMaps::apply of 10,000 IPv4 prefixes into a fresh datapath, median of {}",
            inputs.apply_10k.len()
        ),
    );
    table.row(vec![
        "apply 10,000 prefixes".into(),
        format!("{} ms", num(apply)),
    ]);
    for &(n, took) in inputs.scaling_apply {
        if n > 10_000 {
            table.row(vec![
                format!(
                    "apply {} prefixes (section 2, one apply)",
                    group_thousands(n as i64)
                ),
                format!("{} ms", num(took.as_secs_f64() * 1e3)),
            ]);
        }
    }
    let realistic_entries = REALISTIC.entries();
    let read = section.figure(
        "control.read_counters_realistic_us".into(),
        ms(inputs.snapshot_realistic) * 1e3,
        "µs",
        &format!(
            "CounterMaps::snapshot over {realistic_entries} counters, median of {}",
            inputs.snapshot_realistic.len()
        ),
    );
    table.row(vec![
        format!("read every counter ({realistic_entries} counters)"),
        format!("{} µs", num(read)),
    ]);
    let full_entries = FULL.entries();
    let read_full = section.figure(
        "control.read_counters_full_ms".into(),
        ms(inputs.snapshot_full),
        "ms",
        &format!(
            "CounterMaps::snapshot over {full_entries} counters (every slot in use), median of {}",
            inputs.snapshot_full.len()
        ),
    );
    table.row(vec![
        format!(
            "read every counter ({} counters, every slot in use)",
            group_thousands(full_entries as i64)
        ),
        format!("{} ms", num(read_full)),
    ]);
    let mib = |kib: u64| kib as f64 / 1024.0;
    let how_rss = format!(
        "VmRSS of apns-agent run after {:.0} s with /metrics scraped every second",
        soak.secs
    );
    let start = section.figure(
        "control.agent_rss_start_mib".into(),
        mib(soak.start_kib()),
        "MiB",
        "VmRSS of apns-agent run right after it started",
    );
    let end = section.figure(
        "control.agent_rss_end_mib".into(),
        mib(soak.end_kib()),
        "MiB",
        &how_rss,
    );
    let peak = section.figure(
        "control.agent_rss_peak_mib".into(),
        mib(soak.peak_kib),
        "MiB",
        "VmHWM of apns-agent run at the end of the soak",
    );
    table.row(vec![
        "agent resident memory at start".into(),
        format!("{start:.1} MiB"),
    ]);
    table.row(vec![
        format!("agent resident memory after {:.0} s", soak.secs),
        format!("{end:.1} MiB"),
    ]);
    table.row(vec![
        "agent peak resident memory (VmHWM)".into(),
        format!("{peak:.1} MiB"),
    ]);
    for (i, (step, kib)) in inputs.lifecycle.peaks.iter().enumerate() {
        let peak = section.figure(
            format!("control.agent_peak_mib.step_{}", i + 1),
            mib(*kib),
            "MiB",
            &format!("VmHWM of the agent after: {step} (steps below)"),
        );
        table.row(vec![
            format!("agent peak resident memory (VmHWM), {step}"),
            format!("{peak:.1} MiB"),
        ]);
    }
    table.row(vec![
        "scrapes / failed / APNs connections during the soak".into(),
        format!(
            "{} / {} / {}",
            soak.scrapes, soak.failed_scrapes, soak.echoes
        ),
    ]);
    let maps = section.figure(
        "control.pinned_maps_mib".into(),
        soak.maps_bytes() as f64 / (1024.0 * 1024.0),
        "MiB",
        "bpftool map show pinned: bytes_memlock summed over the agent's pinned maps",
    );
    table.row(vec![
        format!("pinned maps ({} maps, default policy)", soak.maps.len()),
        format!("{maps:.2} MiB"),
    ]);
    let largest = section.figure(
        "control.maps_with_100000_prefixes_mib".into(),
        inputs.largest_maps_bytes as f64 / (1024.0 * 1024.0),
        "MiB",
        "bpftool map show id: bytes_memlock summed over section 2's 100,000-prefix datapath",
    );
    table.row(vec![
        "maps with 100,000 IPv4 prefixes (section 2)".into(),
        format!("{largest:.2} MiB"),
    ]);
    section.tables.push(table);
    section.notes.push(format!(
        "Peak memory through the lifecycle: {LIFECYCLE_STEPS}"
    ));
    if let Some(refusal) = &inputs.lifecycle.skipped_migration {
        section.notes.push(format!(
            "The migration step was left out: the previous release's datapath cannot run on \
             this kernel ({refusal})."
        ));
    }
    let mut per_map = Table::new("The agent's pinned maps:", &["map", "bytes_memlock"]);
    for (name, bytes) in &soak.maps {
        per_map.row(vec![name.clone(), group_thousands(*bytes as i64)]);
    }
    section.tables.push(per_map);
    // About a dozen points whatever the soak's length: the shape is what matters.
    let every = soak.rss.len().div_ceil(12).max(1);
    section.notes.push(format!(
        "VmRSS over the soak (seconds: MiB): {}",
        soak.rss
            .iter()
            .enumerate()
            .filter(|(i, _)| i % every == 0 || *i + 1 == soak.rss.len())
            .map(|(_, sample)| sample)
            .map(|(s, kib)| format!("{s:.0}: {:.1}", mib(*kib)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    section
}
