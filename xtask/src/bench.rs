//! `cargo xtask bench [--quick] [--out DIR] [--soak-secs N]`: setup, build the agent and the
//! benchmark in release mode, run the benchmark (`tests/src/bin/apns-bench.rs`), which writes
//! `report.md`, `report.json` and its charts into DIR (default `target/bench/`). `--quick`
//! takes about a minute: its per-packet figures come from about 8 s of rounds, with 95 %
//! intervals that say whether they decide anything; the other sections do little.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::util::{build_release_with_agent, elapsed, is_root, step, target_dir, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// About a minute: per-packet figures from short rounds, with 95 % intervals (the report
    /// says whether the machine was quiet enough to decide); little forwarding and a 10 s soak.
    #[arg(long)]
    pub quick: bool,
    /// Where report.md and report.json go [default: target/bench].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// How long the agent runs, /metrics scraped every second, before its memory is read
    /// [default: 600, or 10 with --quick].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub soak_secs: Option<u64>,
}

impl Args {
    /// The arguments the bench binary gets, with the report folder made absolute.
    fn bench_args(&self, out: &Path) -> Vec<String> {
        let mut args = Vec::new();
        if self.quick {
            args.push("--quick".to_owned());
        }
        args.push("--out".to_owned());
        args.push(out.display().to_string());
        if let Some(secs) = self.soak_secs {
            args.push("--soak-secs".to_owned());
            args.push(secs.to_string());
        }
        args
    }
}

pub fn run(args: &Args) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask bench must run as root (it loads XDP programs and builds network namespaces): try sudo -E env PATH=\"$PATH\" cargo xtask bench");
    }
    let started = Instant::now();
    crate::setup::run().context("setup failed")?;
    let bench = build_release_with_agent("apns-bench")?;

    // The bench binary runs from the workspace root, so a relative --out is made absolute
    // from where the user typed it.
    let out = match &args.out {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => std::env::current_dir()
            .context("reading the current directory")?
            .join(dir),
        None => target_dir().join("bench"),
    };
    let bench_args = args.bench_args(&out);
    // What the user typed (`cargo xtask` runs this binary with the rest of the line), for
    // the report.
    let typed: Vec<String> = std::env::args().skip(1).collect();
    let command_line = format!("cargo xtask {}", typed.join(" "));
    step(format!("{} {}", bench.display(), bench_args.join(" ")));
    let status = std::process::Command::new(&bench)
        .args(&bench_args)
        .env("APNS_BENCH_COMMAND", command_line.trim_end())
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start {}", bench.display()))?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    step(format!(
        "benchmark done in {}; reports in {}",
        elapsed(started.elapsed()),
        out.display()
    ));
    Ok(())
}
