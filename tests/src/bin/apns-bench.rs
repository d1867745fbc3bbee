//! `apns-bench`: the benchmark `cargo xtask bench` builds and runs (issue 7). Measures
//! apns-agent side by side with a floor program, xdp-filter and nftables, and writes
//! `report.md` and `report.json` into `--out` (see `apns_tests::bench` for the sections).
//!
//! ```text
//! apns-bench [--quick] [--out DIR] [--soak-secs N]
//! ```
//!
//! `--quick` does little of each (CI's smoke run, under two minutes) and, like a full run,
//! fails only if a figure is missing, zero or not finite: timings are reported, never
//! asserted. Needs root: it loads XDP programs and builds network namespaces, and removes
//! all of them again, on errors too.

use std::{
    path::PathBuf,
    process::ExitCode,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use apns_tests::{
    bench::{
        control::{self, ControlInputs, Soak},
        forward::{self, Config, Forwarding},
        report::{source_revision, Goal, Machine, Report, Verdict},
        stats::{median, num, times},
        testrun::{self, PerPacket, Scaling},
        Plan,
    },
    lab::{Lab, LabOptions},
};

/// The issue's goals, reported against, never asserted.
const APNS_PER_FLOOR_MAX: f64 = 1.3;
const OTHER_PER_FLOOR_MAX: f64 = 1.1;
const PREFIX_SCALING_MAX: f64 = 1.5;
const PASS_FORWARDING_MIN: f64 = 0.95;
const RSS_MAX_MIB: f64 = 20.0;

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

fn step(text: &str) {
    eprintln!("==> {text}");
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
    let started = Instant::now();
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
                    "1/4 per-packet cost: {} runs x {} repeats x 8 classes x 3 programs on CPU {cpu}",
                    plan.test_runs, plan.repeat
                ));
                let per_packet = testrun::per_packet(&plan, cpu)?;
                step("2/4 allow-list scaling: 1, 100, 10,000, 100,000 prefixes");
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
        },
    );
    let goals = goals(&per_packet, &scaling, &forwarding, &soak);
    Ok(Report {
        command: std::env::var("APNS_BENCH_COMMAND").unwrap_or_else(|_| bench_command()),
        bench_command: bench_command(),
        machine,
        source,
        quick: plan.quick,
        started_unix,
        elapsed: started.elapsed(),
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
fn goals(per_packet: &PerPacket, scaling: &Scaling, fwd: &Forwarding, soak: &Soak) -> Vec<Goal> {
    let mut goals = Vec::new();
    let apns: Vec<_> = per_packet.rows.iter().filter(|r| r.2).collect();
    let other: Vec<_> = per_packet.rows.iter().filter(|r| !r.2).collect();
    let per_floor = |rows: &[&(&str, &str, bool, f64, f64, f64)]| -> (bool, String) {
        let ratios: Vec<(&str, f64)> = rows.iter().map(|r| (r.0, r.3 / r.4)).collect();
        let measured = ratios
            .iter()
            .map(|(key, ratio)| format!("{key} {}", times(*ratio)))
            .collect::<Vec<_>>()
            .join(", ");
        (ratios.iter().map(|r| r.1).all(f64::is_finite), measured)
    };
    let (finite, measured) = per_floor(&apns);
    goals.push(Goal {
        goal: format!(
            "classified APNs packet ≤ {APNS_PER_FLOOR_MAX}x the floor (BPF_PROG_TEST_RUN)"
        ),
        measured,
        verdict: Verdict::from_met(finite && apns.iter().all(|r| r.3 / r.4 <= APNS_PER_FLOOR_MAX)),
    });
    goals.push(Goal {
        goal: "classified APNs packet cheaper than xdp-filter".into(),
        measured: apns
            .iter()
            .map(|r| format!("{} {} vs {} ns", r.0, num(r.3), num(r.5)))
            .collect::<Vec<_>>()
            .join(", "),
        verdict: Verdict::from_met(apns.iter().all(|r| r.3 < r.5)),
    });
    let (finite, measured) = per_floor(&other);
    goals.push(Goal {
        goal: format!("non-APNs traffic ≤ {OTHER_PER_FLOOR_MAX}x the floor"),
        measured,
        verdict: Verdict::from_met(
            finite && other.iter().all(|r| r.3 / r.4 <= OTHER_PER_FLOOR_MAX),
        ),
    });
    let one = scaling.cost.first().map_or(f64::NAN, |c| c.1);
    let most = scaling.cost.last().map_or(f64::NAN, |c| c.1);
    goals.push(Goal {
        goal: format!("1 → 100,000 prefixes ≤ {PREFIX_SCALING_MAX}x the cost"),
        measured: format!("{} → {} ns ({})", num(one), num(most), times(most / one)),
        verdict: Verdict::from_met(most / one <= PREFIX_SCALING_MAX),
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
    goals
}

/// The goals, one line each, for the terminal.
fn summary(report: &Report) -> String {
    let mut lines = vec![format!(
        "apns-bench ({}) on {} in {:.0} s",
        if report.quick { "quick" } else { "full" },
        report.machine.one_line(),
        report.elapsed.as_secs_f64()
    )];
    for goal in &report.effective_goals() {
        let verdict = match goal.verdict {
            Verdict::Met => "met",
            Verdict::NotMet => "NOT MET",
            Verdict::NotAvailable => "n/a",
        };
        lines.push(format!("  [{verdict:>7}] {}: {}", goal.goal, goal.measured));
    }
    lines.join("\n")
}
