//! `apns-bench`: the benchmark `cargo xtask bench` builds and runs (issue 7). Measures
//! apns-agent side by side with a floor program, xdp-filter and nftables, and writes
//! `report.md`, `report.json` and the charts into `--out` (see `apns_tests::bench` for the
//! sections).
//!
//! ```text
//! apns-bench [--quick] [--out DIR] [--soak-secs N]
//! ```
//!
//! `--quick` takes about a minute (per-packet figures from short rounds, little of the rest)
//! and, like a full run, fails only if a figure is missing, zero or not finite: timings are
//! reported, never asserted; the report says which goals the intervals decide. Needs root:
//! it loads XDP programs and builds network namespaces, and removes all of them again, on
//! errors too.

use std::{
    path::PathBuf,
    process::ExitCode,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use apns_tests::{
    bench::{
        control::{self, ControlInputs, Lifecycle, Soak},
        forward::{self, Config, Forwarding},
        report::{load_average, source_revision, Goal, Machine, Report, Verdict},
        stats::{median, num, times, Estimate},
        testrun::{self, ClassCost, Family, PerPacket, Scaling},
        Plan,
    },
    lab::{Lab, LabOptions},
};

/// The issues' goals, reported against, never asserted: per packet and scaling from issue 12
/// (datapath v2), forwarding and resident memory from issue 7.
const APNS_PER_FLOOR_MAX: f64 = 1.6;
const APNS_FILTER_PER_AGENT_MIN: f64 = 2.0;
const OTHER_PER_FLOOR_MAX: f64 = 1.25;
const MIX_PER_FLOOR_MAX: f64 = 1.3;
const PREFIX_SCALING_MAX: f64 = 1.3;
const PASS_FORWARDING_MIN: f64 = 0.95;
const RSS_MAX_MIB: f64 = 20.0;
const PEAK_RSS_MAX_MIB: f64 = 16.0;

struct Args {
    quick: bool,
    out: PathBuf,
    soak: Option<Duration>,
}

const USAGE: &str = "usage: apns-bench [--quick] [--out DIR] [--soak-secs N]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("target/bench"),
        soak: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = argv.next().context(USAGE)?.into(),
            "--soak-secs" => {
                let secs: u64 = argv
                    .next()
                    .context(USAGE)?
                    .parse()
                    .context("--soak-secs takes a whole number of seconds")?;
                if secs == 0 {
                    bail!("--soak-secs must be at least 1");
                }
                args.soak = Some(Duration::from_secs(secs));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        let report = bench(&args)?;
        let (md, json) = report.write(&args.out)?;
        println!("{}", summary(&report));
        println!("wrote {} and {}", md.display(), json.display());
        let bad = report.bad_figures();
        if !bad.is_empty() {
            bail!(
                "{} of {} figures are missing, zero or not finite: {}",
                bad.len(),
                report.figure_count(),
                bad.join(", ")
            );
        }
        println!(
            "all {} figures produced (finite, non-zero)",
            report.figure_count()
        );
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("apns-bench failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// When the run started, for the steps' time stamps.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn step(text: &str) {
    let at = STARTED.get_or_init(Instant::now).elapsed();
    eprintln!("==> [{:>3} s] {text}", at.as_secs());
}

/// Everything measured on the pinned thread (sections 1, 2 and the timed parts of 4).
struct Pinned {
    per_packet: (apns_tests::bench::report::Section, PerPacket),
    scaling: (apns_tests::bench::report::Section, Scaling),
    apply_10k: Vec<Duration>,
    snapshot_realistic: Vec<Duration>,
    snapshot_full: Vec<Duration>,
}

fn bench(args: &Args) -> Result<Report> {
    let started = *STARTED.get_or_init(Instant::now);
    let load_start = load_average();
    let started_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let machine = Machine::probe()?;
    // Read first: other work may change the tree while the benchmark runs.
    let source = source_revision();
    let soak = args.soak.unwrap_or(if args.quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(600)
    });
    let plan = if args.quick {
        Plan::quick(soak)
    } else {
        Plan::full(soak)
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let agent_config = forward::write_agent_config(&args.out)?;
    let cpu = machine.nproc - 1;

    // On a thread of its own, so that the pinning does not pass to the agent and the iperf3
    // processes started later (children inherit the affinity of the thread that forks).
    let pinned = thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Pinned> {
                testrun::pin_current_thread(cpu)?;
                step(&format!(
                    "1/4 per-packet cost: rounds of {} classes x 3 programs x {} repeats for {} s on CPU {cpu}",
                    testrun::classes().len(),
                    plan.per_packet.repeat,
                    plan.per_packet.budget.as_secs()
                ));
                let per_packet = testrun::per_packet(&plan, cpu)?;
                step("2/4 allow-list scaling: 1, 100, 10,000, 100,000 IPv4 /24s and IPv6 /64s");
                let scaling = testrun::allow_list_scaling(&plan, cpu)?;
                step("4/4 control plane: apply and counter-read timings");
                let apply_10k = testrun::apply_time(10_000, plan.apply_runs)?;
                let snapshot_realistic =
                    control::snapshot_times(control::REALISTIC, plan.snapshot_reads)?;
                let snapshot_full =
                    control::snapshot_times(control::FULL, plan.snapshot_reads.min(21))?;
                Ok(Pinned {
                    per_packet,
                    scaling,
                    apply_10k,
                    snapshot_realistic,
                    snapshot_full,
                })
            })
            .join()
            .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
    })?;

    step("building the lab (client, gateway, ISP, Apple host in network namespaces)");
    let lab = Lab::new(LabOptions::default())?;
    step(&format!(
        "3/4 forwarding: {} rounds x {} configurations x {} sizes",
        plan.forward_rounds,
        Config::ALL.len(),
        plan.forward_packets.len()
    ));
    let (forward_section, forwarding) = forward::forwarding(&plan, &lab, &agent_config)?;
    step(&format!(
        "4/4 control plane: agent soak for {} s with /metrics scraped every second",
        plan.soak.as_secs()
    ));
    let soak = control::soak(&plan, &lab, &agent_config)?;
    step("4/4 control plane: the agent's peak memory through start, reload, upgrade and migration");
    let lifecycle = control::lifecycle(&lab, &agent_config)?;
    drop(lab);

    let (per_packet_section, per_packet) = pinned.per_packet;
    let (scaling_section, scaling) = pinned.scaling;
    let control_section = control::describe(
        cpu,
        &ControlInputs {
            apply_10k: &pinned.apply_10k,
            scaling_apply: &scaling.apply,
            largest_maps_bytes: scaling.largest_maps_bytes,
            snapshot_realistic: &pinned.snapshot_realistic,
            snapshot_full: &pinned.snapshot_full,
            soak: &soak,
            lifecycle: &lifecycle,
        },
    );
    let goals = goals(&per_packet, &scaling, &forwarding, &soak, &lifecycle);
    Ok(Report {
        command: std::env::var("APNS_BENCH_COMMAND").unwrap_or_else(|_| bench_command()),
        bench_command: bench_command(),
        machine,
        source,
        quick: plan.quick,
        started_unix,
        elapsed: started.elapsed(),
        load: (load_start, load_average()),
        sections: vec![
            per_packet_section,
            scaling_section,
            forward_section,
            control_section,
        ],
        goals,
    })
}

fn bench_command() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// The issue's goals against what this run measured.
fn goals(
    per_packet: &PerPacket,
    scaling: &Scaling,
    fwd: &Forwarding,
    soak: &Soak,
    lifecycle: &Lifecycle,
) -> Vec<Goal> {
    let mut goals = Vec::new();
    let apns: Vec<&ClassCost> = per_packet.rows.iter().filter(|r| r.apns).collect();
    let other: Vec<&ClassCost> = per_packet.rows.iter().filter(|r| !r.apns).collect();
    // Each class's ratio with its interval against a limit: every class must meet it.
    let judged = |rows: &[&ClassCost],
                  ratio: fn(&ClassCost) -> Estimate,
                  verdict: &dyn Fn(&Estimate) -> Option<bool>|
     -> (Verdict, String) {
        let measured = rows
            .iter()
            .map(|r| format!("{} {}", r.key, ratio(r).show(times)))
            .collect::<Vec<_>>()
            .join(", ");
        let met = Verdict::all(
            rows.iter()
                .map(|r| Verdict::from_confidence(verdict(&ratio(r)))),
        );
        (met, measured)
    };
    let (verdict, measured) = judged(&apns, |r| r.costs.agent_per_floor, &|e| {
        e.at_most(APNS_PER_FLOOR_MAX)
    });
    goals.push(Goal {
        goal: format!(
            "classified APNs packet ≤ {APNS_PER_FLOOR_MAX}x the floor (BPF_PROG_TEST_RUN)"
        ),
        measured,
        verdict,
    });
    let (verdict, measured) = judged(&apns, |r| r.costs.filter_per_agent, &|e| {
        e.at_least(APNS_FILTER_PER_AGENT_MIN)
    });
    goals.push(Goal {
        goal: format!(
            "classified APNs packet at least {APNS_FILTER_PER_AGENT_MIN}x cheaper than xdp-filter"
        ),
        measured: format!("xdp-filter / agent: {measured}"),
        verdict,
    });
    let (verdict, measured) = judged(&other, |r| r.costs.agent_per_floor, &|e| {
        e.at_most(OTHER_PER_FLOOR_MAX)
    });
    goals.push(Goal {
        goal: format!("every non-APNs class ≤ {OTHER_PER_FLOOR_MAX}x the floor"),
        measured,
        verdict,
    });
    let mix = per_packet.mix;
    goals.push(Goal {
        goal: format!("gateway mix ≤ {MIX_PER_FLOOR_MAX}x the floor"),
        measured: mix.map_or("not measured".to_owned(), |mix| {
            format!(
                "{} ({} vs {} ns; xdp-filter {} ns, {})",
                mix.agent_per_floor.show(times),
                num(mix.agent.median),
                num(mix.floor.median),
                num(mix.filter.median),
                times(mix.filter_per_floor.median)
            )
        }),
        verdict: mix.map_or(Verdict::NotMet, |mix| {
            Verdict::from_confidence(mix.agent_per_floor.at_most(MIX_PER_FLOOR_MAX))
        }),
    });
    let mut scaling_verdicts = Vec::new();
    let mut scaling_measured = Vec::new();
    for family in Family::ALL {
        let Some(most) = scaling.growth(family) else {
            scaling_verdicts.push(Verdict::NotMet);
            continue;
        };
        let one = scaling
            .points
            .iter()
            .find(|p| p.family == family)
            .map_or(f64::NAN, |p| p.apns.median);
        scaling_verdicts.push(Verdict::from_confidence(
            most.per_one.at_most(PREFIX_SCALING_MAX),
        ));
        scaling_measured.push(format!(
            "{}: {} → {} ns ({})",
            family.key(),
            num(one),
            num(most.apns.median),
            most.per_one.show(times)
        ));
    }
    goals.push(Goal {
        goal: format!(
            "1 → 100,000 prefixes (long: IPv4 /24, IPv6 /64) ≤ {PREFIX_SCALING_MAX}x the cost"
        ),
        measured: scaling_measured.join(", "),
        verdict: Verdict::all(scaling_verdicts),
    });
    let mut pass_measured = Vec::new();
    let mut pass_met = true;
    let mut nft_measured = Vec::new();
    let mut nft_met = true;
    for (s, payload) in fwd.sizes.iter().enumerate() {
        let to_none = median(&fwd.pair_ratios(s, Config::AgentPass, Config::None));
        let cpu_to_none = median(&fwd.cpu_pair_ratios(s, Config::AgentPass, Config::None));
        pass_met &= to_none >= PASS_FORWARDING_MIN;
        pass_measured.push(format!(
            "{payload} B: pps {} (CPU per packet {})",
            times(to_none),
            times(cpu_to_none)
        ));
        let to_nft = median(&fwd.pair_ratios(s, Config::AgentPass, Config::Nftables));
        nft_met &= to_nft > 1.0;
        nft_measured.push(format!(
            "{payload} B agent/nftables {} ({} vs {} pps)",
            times(to_nft),
            num(fwd.median_pps(s, Config::AgentPass)),
            num(fwd.median_pps(s, Config::Nftables))
        ));
    }
    goals.push(Goal {
        goal: format!(
            "agent `pass` forwarding ≥ {PASS_FORWARDING_MIN}x of no program (median pair ratio)"
        ),
        measured: pass_measured.join(", "),
        verdict: Verdict::from_met(pass_met),
    });
    goals.push(Goal {
        goal: "agent `pass` forwarding ahead of nftables (median pair ratio > 1)".into(),
        measured: nft_measured.join(", "),
        verdict: Verdict::from_met(nft_met),
    });
    let rss = soak.end_kib() as f64 / 1024.0;
    goals.push(Goal {
        goal: format!("agent resident memory ≤ {RSS_MAX_MIB} MiB"),
        measured: format!(
            "{rss:.1} MiB after {:.0} s (peak {:.1} MiB)",
            soak.secs,
            soak.peak_kib as f64 / 1024.0
        ),
        verdict: Verdict::from_met(rss > 0.0 && rss <= RSS_MAX_MIB),
    });
    let peak = soak.peak_kib.max(lifecycle.peak_kib()) as f64 / 1024.0;
    let per_step = std::iter::once(format!("soak {:.1}", soak.peak_kib as f64 / 1024.0))
        .chain(
            lifecycle
                .peaks
                .iter()
                .map(|(step, kib)| format!("{step} {:.1}", *kib as f64 / 1024.0)),
        )
        .collect::<Vec<_>>()
        .join(", ");
    goals.push(Goal {
        goal: format!("agent peak resident memory ≤ {PEAK_RSS_MAX_MIB} MiB"),
        measured: format!("VmHWM {peak:.1} MiB at most ({per_step} MiB)"),
        verdict: Verdict::from_met(peak > 0.0 && peak <= PEAK_RSS_MAX_MIB),
    });
    goals
}

/// The goals, one line each, for the terminal.
fn summary(report: &Report) -> String {
    let mut lines = vec![
        format!(
            "apns-bench ({}) on {} in {:.0} s, load average {} at the start and {} at the end",
            if report.quick { "quick" } else { "full" },
            report.machine.one_line(),
            report.elapsed.as_secs_f64(),
            report.load.0,
            report.load.1
        ),
        format!("  noise: {}", report.noise_line()),
    ];
    for goal in &report.effective_goals() {
        let verdict = match goal.verdict {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT MET",
            Verdict::Undecided => "undecided",
            Verdict::NotAvailable => "n/a",
        };
        lines.push(format!("  [{verdict:>9}] {}: {}", goal.goal, goal.measured));
    }
    lines.join("\n")
}
