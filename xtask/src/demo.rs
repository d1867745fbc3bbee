//! `cargo xtask demo`: setup, build the agent and the demo in release mode, run the demo (a
//! gateway in network namespaces with apns-agent on it; `tests/src/bin/apns-demo.rs`).

use std::process::Stdio;

use anyhow::{bail, Context as _, Result};

use crate::util::{cargo, describe, is_root, step, workspace_root};

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("cargo xtask demo must run as root (it builds network namespaces and loads XDP): try sudo -E env PATH=\"$PATH\" cargo xtask demo");
    }
    crate::setup::run().context("setup failed")?;
    let mut build = cargo();
    build
        .args([
            "build",
            "--release",
            "-p",
            "apns-agent",
            "-p",
            "apns-tests",
            "--bin",
            "apns-agent",
            "--bin",
            "apns-demo",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null());
    step(format!(
        "{} (the first build takes a few minutes)",
        describe(&build)
    ));
    let status = build
        .status()
        .with_context(|| format!("could not start `{}`", describe(&build)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&build));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let demo = target.join("release/apns-demo");
    let status = std::process::Command::new(&demo)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start {}", demo.display()))?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
