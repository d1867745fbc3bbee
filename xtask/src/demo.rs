//! `cargo xtask demo`: setup, build the agent and the demo in release mode, run the demo (a
//! gateway in network namespaces with apns-agent on it: doctor, traffic, a policy change,
//! the fast path past a filter, `clients`' findings, counters, /metrics and a replay;
//! `tests/src/bin/apns-demo.rs`, checked by `tests/tests/demo.rs`).

use std::process::Stdio;

use anyhow::{bail, Context as _, Result};

use crate::util::{build_release_with_agent, is_root};

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("cargo xtask demo must run as root (it builds network namespaces and loads XDP): try sudo -E env PATH=\"$PATH\" cargo xtask demo");
    }
    crate::setup::run().context("setup failed")?;
    let demo = build_release_with_agent("apns-demo")?;
    let status = std::process::Command::new(&demo)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start {}", demo.display()))?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
