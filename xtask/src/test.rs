//! `cargo xtask test`: setup, then every test of the workspace (unit, integration and the
//! kernel tests, which load XDP programs and therefore need root).

use std::ffi::OsString;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, describe, elapsed, is_root, step, workspace_root};

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
    check_nothing_left_behind()
}

/// The tests make network namespaces (`apnslab-*`), pin directories (`/sys/fs/bpf/apns-test-*`)
/// and agent processes; each must remove its own, even when it fails. Whatever is still there
/// after the whole suite is a leak.
fn check_nothing_left_behind() -> Result<()> {
    step("checking that the tests left no namespace, pin or process behind");
    let mut leftovers = Vec::new();
    let namespaces = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten();
    leftovers.extend(
        namespaces
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("apnslab-"))
            .map(|name| format!("network namespace {name}")),
    );
    let pins = std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten();
    leftovers.extend(
        pins.map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("apns-test-"))
            .map(|name| format!("pin directory /sys/fs/bpf/{name}")),
    );
    let processes = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    leftovers.extend(processes.filter_map(|entry| {
        let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
        let comm = comm.trim();
        matches!(comm, "apns-agent" | "apns-demo").then(|| {
            format!(
                "process {comm} (pid {})",
                entry.file_name().to_string_lossy()
            )
        })
    }));
    if !leftovers.is_empty() {
        bail!("the tests left these behind: {}", leftovers.join(", "));
    }
    Ok(())
}
