//! Drives the `apns-agent` binary in end-to-end tests: where the binary is, a unique pin
//! directory per test that is unloaded on drop (and swept after crashed runs), and helpers to
//! run a subcommand and read its outcome.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context as _, Result};
use apns_agent::{
    counters::Snapshot,
    pinned::{self, Datapath},
    pins::{PinDir, BPFFS_ROOT},
};

/// Pin directories made by tests: `/sys/fs/bpf/apns-test-<pid>-<seq>`.
const PIN_PREFIX: &str = "apns-test-";
static NEXT_PIN_DIR: AtomicU64 = AtomicU64::new(0);

/// The apns-agent binary cargo built next to this test executable (`cargo test --workspace`
/// builds it; `cargo xtask test` runs exactly that).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/apns-agent
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("apns-agent"))
        .expect("the test executable lives in target/<profile>/deps");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p apns-agent` (cargo test --workspace does)",
        path.display()
    );
    path
}

/// A pin directory that belongs to one test. Dropping it unloads whatever is pinned there
/// (detaching its links) and removes it.
pub struct TestPins {
    pins: PinDir,
}

impl TestPins {
    pub fn new() -> TestPins {
        sweep_stale();
        let name = format!(
            "{PIN_PREFIX}{}-{}",
            std::process::id(),
            NEXT_PIN_DIR.fetch_add(1, Ordering::Relaxed)
        );
        TestPins {
            pins: PinDir::new(Path::new(BPFFS_ROOT).join(name)),
        }
    }

    pub fn dir(&self) -> &PinDir {
        &self.pins
    }

    pub fn path(&self) -> &Path {
        self.pins.root()
    }

    /// The pinned datapath's counters.
    pub fn snapshot(&self) -> Result<Snapshot> {
        Datapath::open(&self.pins)?.counters.snapshot()
    }
}

impl Default for TestPins {
    fn default() -> Self {
        TestPins::new()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        if let Err(err) = pinned::unload(&self.pins) {
            eprintln!("cleaning up {}: {err:#}", self.pins.root().display());
        }
    }
}

/// Unloads test pin directories whose process is gone (a crashed or killed test run).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(BPFFS_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PIN_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(err) = pinned::unload(&PinDir::new(entry.path())) {
                eprintln!("sweeping stale {}: {err:#}", entry.path().display());
            }
        }
    }
}

/// `apns-agent --pin-dir DIR ARGS...` as a command (to run in a lab namespace or here).
pub fn command(cmd: &mut Command, pins: &TestPins, args: &[&str]) {
    cmd.arg("--pin-dir").arg(pins.path()).args(args);
}

/// Runs a finished command and returns its stdout, or an error with its stderr.
pub fn succeed(cmd: &mut Command) -> Result<String> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !output.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command that must fail, and returns its output.
pub fn fail(cmd: &mut Command) -> Result<Output> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if output.status.success() {
        bail!(
            "{cmd:?} succeeded but should have failed: {}",
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}
