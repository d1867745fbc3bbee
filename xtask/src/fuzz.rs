//! `cargo xtask fuzz [--secs N] [--target T,...]`: the fuzz targets of `fuzz/` (cargo-fuzz,
//! libFuzzer, AddressSanitizer, the installed nightly), each run for N seconds.
//! `cargo xtask test` runs each for [`TEST_SECS`], about a minute for all of them.
//!
//! Each target starts from its corpus in `fuzz/corpus/<target>/` (kept between runs, not
//! committed), the seeds in `fuzz/seeds/<target>/` and the workspace's fixtures of its
//! format ([`Target::fixtures`], copied into the corpus). A crash, a timeout or a leak fails
//! the run; libFuzzer leaves the input in `fuzz/artifacts/<target>/`, and
//! `cargo fuzz run <target> <file>` replays it.

use std::{path::PathBuf, time::Instant};

use anyhow::{Context, Result};

use crate::util::{command, describe, elapsed, run_step, step, workspace_root};

/// A fuzz target of `fuzz/fuzz_targets/`.
pub struct Target {
    pub name: &'static str,
    /// Files of the workspace, relative to its root, that seed the target's corpus.
    fixtures: &'static [&'static str],
}

/// Every target, in the order they run.
pub const TARGETS: &[Target] = &[
    Target {
        name: "capture",
        fixtures: &[],
    },
    Target {
        name: "config",
        fixtures: &["packaging/config.toml", "packaging/deb/config.toml"],
    },
    Target {
        name: "list",
        fixtures: &[],
    },
    Target {
        name: "web_config",
        fixtures: &[],
    },
    Target {
        name: "prefix",
        fixtures: &[],
    },
];

/// Seconds `cargo xtask test` runs each target for.
pub const TEST_SECS: u64 = 12;

/// An input running longer than this is a hang, and fails the run.
const TIMEOUT_SECS: u64 = 10;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to run each target for.
    #[arg(long, value_name = "N", default_value_t = 300)]
    secs: u64,
    /// The targets to run (a comma list): capture, config, list, web_config, prefix
    /// [default: all].
    #[arg(long = "target", value_name = "T", value_delimiter = ',', value_parser = parse_target)]
    targets: Vec<&'static Target>,
}

fn parse_target(name: &str) -> std::result::Result<&'static Target, String> {
    TARGETS
        .iter()
        .find(|target| target.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = TARGETS.iter().map(|target| target.name).collect();
            format!("no fuzz target {name}: {}", names.join(", "))
        })
}

pub fn run(args: &Args) -> Result<()> {
    crate::setup::checkers().context("setup failed")?;
    let targets: Vec<&Target> = if args.targets.is_empty() {
        TARGETS.iter().collect()
    } else {
        args.targets.clone()
    };
    fuzz(&targets, args.secs)
}

/// Builds the targets, then runs each of `targets` for `secs` seconds.
pub fn fuzz(targets: &[&Target], secs: u64) -> Result<()> {
    let start = Instant::now();
    let mut build = cargo_fuzz();
    build.arg("build");
    step(format!(
        "{} (the first build takes minutes)",
        describe(&build)
    ));
    crate::util::run(&mut build).context("building the fuzz targets failed")?;
    for target in targets {
        run_target(target, secs)?;
    }
    step(format!(
        "fuzzing: {} targets, {secs} s each, no crash ({})",
        targets.len(),
        elapsed(start.elapsed())
    ));
    Ok(())
}

/// `cargo fuzz` of the installed nightly (cargo-fuzz needs its sanitizer flags), on `fuzz/`.
fn cargo_fuzz() -> std::process::Command {
    let mut cmd = command("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(workspace_root());
    cmd
}

fn run_target(target: &Target, secs: u64) -> Result<()> {
    let fuzz_dir = workspace_root().join("fuzz");
    let corpus = fuzz_dir.join("corpus").join(target.name);
    std::fs::create_dir_all(&corpus)
        .with_context(|| format!("cannot create {}", corpus.display()))?;
    for fixture in target.fixtures {
        let from = workspace_root().join(fixture);
        let to = corpus.join(format!("fixture-{}", fixture.replace('/', "-")));
        std::fs::copy(&from, &to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    let seeds: PathBuf = fuzz_dir.join("seeds").join(target.name);
    let mut cmd = cargo_fuzz();
    cmd.args(["run", target.name])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg("-print_final_stats=1");
    run_step(
        &mut cmd,
        &format!(
            "fuzz target {} failed: the input is in {}; fix the crash and add a regression \
             test (fuzz/README.md)",
            target.name,
            fuzz_dir.join("artifacts").join(target.name).display()
        ),
    )
}
