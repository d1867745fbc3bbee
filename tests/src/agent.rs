//! Drives the `apns-agent` binary in end-to-end tests: where the binary is, a unique pin
//! directory per test that is unloaded on drop (and swept after crashed runs), helpers to
//! run a subcommand and read its outcome, to run `apns-agent run` in a lab's gateway, and to
//! name the counters a test expects.

use std::{
    collections::VecDeque,
    io::{BufRead as _, BufReader},
    ops::{Deref, DerefMut},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use apns_agent::datapath::{
    self,
    counters::Snapshot,
    links,
    pins::{LinkPin, BPFFS_ROOT},
    policy::Policy,
    status::Program,
    Datapath, PinDir,
};
use apns_agent::settings::state;
use apns_common::counters::{CounterKey, Direction, Outcome};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::lab::{Lab, LabChild, Role, GW_IF_CLIENT, GW_IF_WAN};

/// How long `spawn_run` waits for the agent to report READY=1.
const RUN_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// [`RUN_READY_TIMEOUT`], times [`crate::time_scale`].
fn run_ready_timeout() -> Duration {
    RUN_READY_TIMEOUT * crate::time_scale()
}

/// Log lines of an agent kept for the message when it fails.
const LOG_TAIL: usize = 200;

/// Pin directories made by tests: `/sys/fs/bpf/apns-test-<pid>-<seq>`.
pub const PIN_PREFIX: &str = "apns-test-";
static NEXT_PIN_DIR: AtomicU64 = AtomicU64::new(0);
/// Notify sockets made by tests: `/tmp/apns-notify-<pid>-<seq>.sock`.
static NEXT_SOCKET: AtomicU64 = AtomicU64::new(0);

/// The apns-agent binary cargo built next to this executable (or the one APNS_AGENT_BINARY
/// names): tests live in
/// target/<profile>/deps, binaries such as the demo in target/<profile>, the agent in
/// target/<profile> (`cargo test --workspace` and `cargo xtask demo` build it).
pub fn binary() -> PathBuf {
    // Another build may be named (measurements of the release binary).
    if let Some(path) = std::env::var_os("APNS_AGENT_BINARY") {
        return PathBuf::from(path);
    }
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

/// Mounts bpffs at /sys/fs/bpf where it is not (a guest of the kernel matrix boots without
/// it), as the agent would, once per test process: tests running in parallel that each saw
/// it missing would mount it twice, one over the other, hiding what the first had pinned.
/// For what needs bpffs before an agent runs (other tools' pins, xdp-filter).
pub fn bpffs_mounted() {
    static MOUNT: std::sync::Once = std::sync::Once::new();
    MOUNT.call_once(|| TestPins::new().dir().prepare().expect("mounting bpffs"));
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

    /// The pinned datapath, opened.
    pub fn open(&self) -> Result<Datapath> {
        Datapath::open(&self.pins)
    }

    /// What a refused command may not change of the pinned datapath.
    pub fn pinned(&self) -> Result<Pinned> {
        let datapath = self.open()?;
        Ok(Pinned {
            generation: datapath.policy.active_generation()?,
            policies: [
                datapath.policy.read_generation(0)?,
                datapath.policy.read_generation(1)?,
            ],
            program: datapath::status::program(&self.pins)?,
            links: self.pins.links()?,
        })
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

/// The policy's switch and both generations, the pinned program and the link pins.
#[derive(Debug, PartialEq)]
pub struct Pinned {
    pub generation: u32,
    pub policies: [Policy; 2],
    pub program: Option<Program>,
    pub links: Vec<LinkPin>,
}

impl Default for TestPins {
    fn default() -> Self {
        TestPins::new()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        if let Err(err) = remove(&self.pins) {
            eprintln!("cleaning up {}: {err:#}", self.pins.root().display());
        }
    }
}

/// Unloads the datapath pinned at `pins` (if any) and removes its state file.
fn remove(pins: &PinDir) -> Result<()> {
    if pins.root().exists() {
        let lock = pins.lock()?;
        datapath::unload(pins, &lock)?;
    }
    state::remove(pins)
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
            if let Err(err) = remove(&PinDir::new(entry.path())) {
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
    lab.in_ns(Role::Gw, || links::ifindex(name))?
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

/// A socket that speaks the service manager's side of systemd's notify protocol: handed to
/// an agent as NOTIFY_SOCKET, it receives READY=1, RELOADING=1 and STOPPING=1. Removed on
/// drop.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    pub fn new() -> Result<NotifySocket> {
        let path = std::env::temp_dir().join(format!(
            "apns-notify-{}-{}.sock",
            std::process::id(),
            NEXT_SOCKET.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)
            .with_context(|| format!("binding notify socket {}", path.display()))?;
        Ok(NotifySocket { socket, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for a message that has the line `state` (e.g. "READY=1");
    /// returns every message received meanwhile. `alive` is asked between waits: an agent
    /// that exited will never send it.
    pub fn wait_for(
        &self,
        state: &str,
        timeout: Duration,
        mut alive: impl FnMut() -> bool,
    ) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("no {state} within {timeout:?} (received: {seen:?})");
            }
            if !alive() {
                bail!("the agent exited before it sent {state} (received: {seen:?})");
            }
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(100))))
                .context("setting the notify socket's timeout")?;
            match self.socket.recv(&mut buf) {
                Ok(len) => {
                    let message = String::from_utf8_lossy(&buf[..len]).into_owned();
                    let found = message.lines().any(|line| line == state);
                    seen.push(message);
                    if found {
                        return Ok(seen);
                    }
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(err) => return Err(err).context("reading the notify socket"),
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An `apns-agent run` in a lab's gateway: the child (stopped on drop), its readiness
/// socket, and its log (passed on to this process's stderr, prefixed "agent: ").
pub struct Agent<'lab> {
    child: LabChild<'lab>,
    notify: NotifySocket,
    log: Arc<Mutex<VecDeque<String>>>,
    lines: mpsc::Receiver<String>,
}

impl<'lab> Deref for Agent<'lab> {
    type Target = LabChild<'lab>;
    fn deref(&self) -> &LabChild<'lab> {
        &self.child
    }
}

impl DerefMut for Agent<'_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Agent<'_> {
    /// Waits for the agent's next message with `state` (READY=1, STOPPING=1, ...).
    pub fn wait_for(&mut self, state: &str, timeout: Duration) -> Result<Vec<String>> {
        let Agent {
            child, notify, log, ..
        } = self;
        notify
            .wait_for(state, timeout, || {
                child.wait_timeout(Duration::ZERO).ok().flatten().is_none()
            })
            .with_context(|| format!("the agent's log ends:\n{}", tail(log)))
    }

    /// SIGHUP, then waits for the reload to end (RELOADING=1, then READY=1): whatever the
    /// reload did, it is done when this returns.
    pub fn reload(&mut self) -> Result<()> {
        self.signal(Signal::SIGHUP)?;
        self.wait_for("RELOADING=1", run_ready_timeout())?;
        self.wait_for("READY=1", run_ready_timeout())?;
        Ok(())
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .with_context(|| format!("sending {signal} to the agent"))
    }

    /// Waits up to `timeout` for a log line that contains `needle`, and returns it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("the agent never logged {needle:?}"),
            }
        }
    }

    /// The last lines the agent logged.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    Vec::from(log.lock().unwrap_or_else(PoisonError::into_inner).clone()).join("\n")
}

/// `status --json` of the test's datapath, run in the gateway.
pub fn status_json(lab: &Lab, pins: &TestPins) -> serde_json::Value {
    let text = succeed(&mut gw_command(lab, pins, &["status", "--json"])).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

/// `run` on the lab gateway's LAN and WAN interfaces, then `more` arguments: the agent most
/// tests start.
pub fn run_lan_wan<'a>(more: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--iface",
        GW_IF_CLIENT.name,
        "--iface",
        GW_IF_WAN.name,
    ];
    args.extend_from_slice(more);
    args
}

/// Spawns `apns-agent run ARGS...` in the lab's gateway and returns once it reported READY=1
/// (its datapath installed, attached and its policy applied, /metrics served); see
/// [`Agent`]. Its log goes to this process's stderr too.
pub fn spawn_run<'lab>(lab: &'lab Lab, pins: &TestPins, args: &[&str]) -> Result<Agent<'lab>> {
    spawn_run_with(lab, pins, args, true)
}

/// [`spawn_run`]; `echo` false keeps the agent's log to [`Agent::log_tail`] (benchmarks).
pub fn spawn_run_with<'lab>(
    lab: &'lab Lab,
    pins: &TestPins,
    args: &[&str],
    echo: bool,
) -> Result<Agent<'lab>> {
    spawn_run_env(lab, pins, args, echo, &[])
}

/// [`spawn_run_with`], with `env` added to the agent's environment.
pub fn spawn_run_env<'lab>(
    lab: &'lab Lab,
    pins: &TestPins,
    args: &[&str],
    echo: bool,
    env: &[(&str, &str)],
) -> Result<Agent<'lab>> {
    let notify = NotifySocket::new()?;
    let mut cmd = gw_command(lab, pins, args);
    cmd.envs(env.iter().copied());
    cmd.env("NOTIFY_SOCKET", notify.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = lab.spawn(&mut cmd)?;
    let stderr = child
        .child_mut()
        .stderr
        .take()
        .context("the agent's stderr is not piped")?;
    let log = Arc::new(Mutex::new(VecDeque::new()));
    let (lines_tx, lines) = mpsc::channel();
    let sink = Arc::clone(&log);
    // Keeps draining the log so the agent never blocks on a full pipe; ends at the agent's exit.
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("agent: {line}");
            }
            let mut log = sink.lock().unwrap_or_else(PoisonError::into_inner);
            if log.len() >= LOG_TAIL {
                log.pop_front();
            }
            log.push_back(line.clone());
            let _ = lines_tx.send(line);
        }
    });
    let mut agent = Agent {
        child,
        notify,
        log,
        lines,
    };
    agent
        .wait_for("READY=1", run_ready_timeout())
        .context("apns-agent run did not become ready")?;
    Ok(agent)
}

/// The samples of a Prometheus text exposition: each series (name and labels, as written)
/// to its value.
pub fn samples(exposition: &str) -> std::collections::BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
            (series.to_owned(), value)
        })
        .collect()
}

/// GET /metrics from the agent serving on `addr` inside the lab's gateway: the body, or an
/// error when nothing answers there (yet) or the answer is not 200.
pub fn scrape_metrics(lab: &Lab, addr: std::net::SocketAddr) -> Result<String> {
    let (status, body) = get_metrics(lab, addr, None)?;
    anyhow::ensure!(status == 200, "GET http://{addr}/metrics: {status} {body}");
    Ok(body)
}

/// GET /metrics over a new connection from inside the lab's gateway, with an
/// `Authorization` header if given: the status code and the body.
pub fn get_metrics(
    lab: &Lab,
    addr: std::net::SocketAddr,
    authorization: Option<&str>,
) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = lab.connect(Role::Gw, addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let header = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{header}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET http://{addr}/metrics: no HTTP header"))?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET http://{addr}/metrics: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// The `Authorization` header value of HTTP basic auth.
pub fn basic_credentials(user: &str, password: &str) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}
