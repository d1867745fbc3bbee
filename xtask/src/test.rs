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
    Ok(())
}
