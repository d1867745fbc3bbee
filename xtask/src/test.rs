//! `cargo xtask test`: setup, then every test of the workspace (unit, integration and the
//! kernel tests, which load XDP programs and therefore need root).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, describe, elapsed, is_root, step, target_dir, workspace_root};

#[derive(clap::Args)]
pub struct Args {
    /// Extra arguments for `cargo test`, after `--`
    /// (e.g. `cargo xtask test -- -p apns-tests -- --nocapture`).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<OsString>,
}

pub fn run(args: &Args) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask test must run as root (the kernel tests load XDP programs): try sudo -E cargo xtask test");
    }
    let start = Instant::now();
    let result = setup_and_test(args);
    match &result {
        Ok(()) => step(format!(
            "cargo xtask test: PASSED ({})",
            elapsed(start.elapsed())
        )),
        Err(err) => step(format!(
            "cargo xtask test: FAILED after {}: {err:#}",
            elapsed(start.elapsed())
        )),
    }
    // The summary line already carries the error; keep the exit code non-zero.
    result.map_err(|_| anyhow::anyhow!("tests did not pass"))
}

fn setup_and_test(args: &Args) -> Result<()> {
    crate::setup::run().context("setup failed")?;
    // What exists before is not this run's: a crashed earlier run's leftovers are the tests'
    // own sweeps to remove, and must not fail this run.
    let before = test_artifacts();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "apns-ebpf"])
        .args(&args.cargo_test_args)
        .current_dir(workspace_root())
        .stdin(Stdio::null());
    step(describe(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&cmd));
    }
    // The benchmark's smoke run: checks that every figure is still produced (never how good
    // the figures are: speed goals are reported, not tested).
    crate::bench::run(&crate::bench::Args {
        quick: true,
        out: Some(target_dir().join("bench-quick")),
        soak_secs: None,
    })
    .context("the benchmark smoke run (cargo xtask bench --quick) failed")?;
    check_nothing_left_behind(&before)
}

/// The tests make network namespaces (`apnslab-*`), pin directories (`/sys/fs/bpf/apns-test-*`)
/// and agent processes; each must remove its own, even when it fails. Whatever this run
/// added and is still there after the whole suite is a leak.
fn check_nothing_left_behind(before: &BTreeSet<String>) -> Result<()> {
    step("checking that the tests left no namespace, pin or process behind");
    let leftovers: Vec<String> = test_artifacts().difference(before).cloned().collect();
    if !leftovers.is_empty() {
        bail!("the tests left these behind: {}", leftovers.join(", "));
    }
    Ok(())
}

/// The namespaces, pin directories and processes that tests make, by description.
fn test_artifacts() -> BTreeSet<String> {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    };
    // Namespaces and pin directories carry their maker's pid: one whose maker still runs
    // (another benchmark or test run on this machine) is not a leak of this run.
    let leaked = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('-').next())
            .is_some_and(|pid| !Path::new("/proc").join(pid).exists())
    };
    let mut artifacts = BTreeSet::new();
    for name in names("/run/netns") {
        if leaked(&name, "apnslab-") {
            artifacts.insert(format!("network namespace {name}"));
        }
    }
    for name in names("/sys/fs/bpf") {
        if leaked(&name, "apns-test-") {
            artifacts.insert(format!("pin directory /sys/fs/bpf/{name}"));
        }
    }
    for pid in names("/proc") {
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim();
        if matches!(comm, "apns-agent" | "apns-demo") {
            artifacts.insert(format!("process {comm} (pid {pid})"));
        }
    }
    artifacts
}
