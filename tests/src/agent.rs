//! Drives the `apns-agent` binary in end-to-end tests: where the binary is, a unique pin
//! directory per test that is unloaded on drop (and swept after crashed runs), helpers to
//! run a subcommand and read its outcome, to run `apns-agent run` in a lab's gateway, and to
//! name the counters a test expects.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use apns_agent::{
    counters::Snapshot,
    pinned::{self, Datapath},
    pins::{PinDir, BPFFS_ROOT},
};
use apns_common::counters::{CounterKey, Direction, Outcome};

use crate::lab::{Lab, LabChild, Role};

/// How long `spawn_run` waits for the agent to report that it runs.
const RUN_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pin directories made by tests: `/sys/fs/bpf/apns-test-<pid>-<seq>`.
const PIN_PREFIX: &str = "apns-test-";
static NEXT_PIN_DIR: AtomicU64 = AtomicU64::new(0);

/// The apns-agent binary cargo built next to this executable: tests live in
/// target/<profile>/deps, binaries such as the demo in target/<profile>, the agent in
/// target/<profile> (`cargo test --workspace` and `cargo xtask demo` build it).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("this executable has a path");
    let dir = exe.parent().expect("this executable lives in a folder");
    [dir.join("apns-agent"), dir.join("../apns-agent")]
        .into_iter()
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!(
                "no apns-agent binary next to {}: build it with `cargo build -p apns-agent` (cargo test --workspace does)",
                exe.display()
            )
        })
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

    /// One counter of the pinned datapath (zero if never created).
    pub fn counter(
        &self,
        ifindex: u32,
        direction: Direction,
        port: u16,
        outcome: Outcome,
    ) -> Result<apns_common::counters::CounterValue> {
        Ok(self
            .snapshot()?
            .get(&counter_key(ifindex, direction, port, outcome)))
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

/// `apns-agent --pin-dir DIR ARGS...` as a command that runs in the lab's gateway namespace
/// (and the root mount namespace, so it sees the pins).
pub fn gw_command(lab: &Lab, pins: &TestPins, args: &[&str]) -> Command {
    let mut cmd = lab.command(Role::Gw, binary());
    command(&mut cmd, pins, args);
    cmd
}

/// The ifindex of the gateway's interface `name`, as counter keys hold it.
pub fn gw_ifindex(lab: &Lab, name: &str) -> Result<u32> {
    lab.in_ns(Role::Gw, || pinned::ifindex(name))?
        .with_context(|| format!("ifindex of {name} in {}", lab.ns_name(Role::Gw)))
}

/// The counter key of packets that arrived on `ifindex` for `port`, in `direction`, with
/// `outcome`.
pub fn counter_key(ifindex: u32, direction: Direction, port: u16, outcome: Outcome) -> CounterKey {
    CounterKey {
        ifindex,
        port,
        direction: direction as u8,
        outcome: outcome as u8,
    }
}

/// Spawns `apns-agent run ARGS...` in the lab's gateway and returns once it serves signals:
/// its log says "running" (after the datapath is installed, attached and its policy applied;
/// an agent that adopts a datapath may have had it ready long before). The log is passed on
/// to this process's stderr, line by line, prefixed with "agent: ".
pub fn spawn_run<'lab>(lab: &'lab Lab, pins: &TestPins, args: &[&str]) -> Result<LabChild<'lab>> {
    let mut cmd = gw_command(lab, pins, args);
    cmd.stderr(Stdio::piped());
    let mut child = lab.spawn(&mut cmd)?;
    let stderr = child
        .child_mut()
        .stderr
        .take()
        .context("the agent's stderr is not piped")?;
    let (ready_tx, ready_rx) = mpsc::channel();
    // Keeps draining the log so the agent never blocks on a full pipe; ends at the agent's exit.
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("agent: {line}");
            if line.contains("running;") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx.recv_timeout(RUN_READY_TIMEOUT).with_context(|| {
        format!("the agent did not report running within {RUN_READY_TIMEOUT:?}")
    })?;
    Ok(child)
}

/// GET /metrics from the agent serving on `addr` inside the lab's gateway: the body, or an
/// error when nothing answers there (yet) or the answer is not 200.
pub fn scrape_metrics(lab: &Lab, addr: std::net::SocketAddr) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = lab.connect(Role::Gw, addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET http://{addr}/metrics: no HTTP header"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET http://{addr}/metrics: {head}"
    );
    Ok(body.to_owned())
}
