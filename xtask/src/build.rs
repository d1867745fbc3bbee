//! `cargo xtask build`: setup, then a release build of the agent (what the demo runs).

use std::time::Instant;

use anyhow::Result;

use crate::util::{cargo, elapsed, step, workspace_root};

pub fn run() -> Result<()> {
    crate::setup::run()?;
    let start = Instant::now();
    step("cargo build --release -p apns-agent");
    crate::util::run(
        cargo()
            .args(["build", "--release", "-p", "apns-agent"])
            .current_dir(workspace_root()),
    )?;
    step(format!(
        "built {} ({})",
        workspace_root().join("target/release/apns-agent").display(),
        elapsed(start.elapsed())
    ));
    Ok(())
}
