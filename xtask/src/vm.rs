//! Guests: the kernels the gateways run, booted under QEMU (virtme-ng, TCG), and the host-built
//! tests run in them.
//!
//! This module owns
//! - [`GUEST_KERNELS`], the Debian kernels of the matrix, and where each is unpacked
//!   (`target/kernels/<release>/`, which `cargo xtask setup` fills: `setup::guests`);
//! - [`GUEST_TESTS`], the one table of what runs in every guest kernel;
//! - booting a guest ([`run_in_guest`]): the host's root is shared read-only, the command runs
//!   as root from a script, and its exit code, `uname` and output come back through a folder the
//!   guest may write (`target/vm/...`), never through vng's own exit code (255 here: the
//!   guest finds no virtio-serial ports, so the output goes to the serial console);
//! - `cargo xtask vm` ([`run`]): one guest, one command or test binary, for debugging;
//! - the kernel matrix `cargo xtask test --kernel` runs ([`matrix`]).
//!
//! Guests have no network device (vng adds one only with `--network`): whatever a test sends
//! stays in the namespaces it makes inside the guest. QEMU runs under TCG (KVM guests do not run
//! on these machines, docs/platform.md), many times slower than the host: guests say what loads,
//! verifies and works, never how fast.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::util::{self, cargo, describe, elapsed, step, target_dir, workspace_root};

/// A kernel of the matrix: a Debian kernel package, unpacked on the host.
pub struct GuestKernel {
    /// What `--kernel` calls it: the kernel series.
    pub name: &'static str,
    /// Debian's kernel release (`uname -r`); the package is `linux-image-<release>`.
    pub release: &'static str,
    /// Whose kernel it is.
    pub distro: &'static str,
    /// The suite to fetch it from with a private source list, when the system's own sources
    /// (Debian 12's) do not carry it.
    pub suite: Option<&'static str>,
}

/// The kernels the gateways run. A Debian security update that bumps a kernel's ABI (the `-50`)
/// eventually removes the old package from the archive: then setup fails to download it, and
/// the release here moves to the current one (`apt-cache search linux-image-6.1.0-`).
pub const GUEST_KERNELS: &[GuestKernel] = &[
    GuestKernel {
        name: "5.10",
        release: "5.10.0-32-amd64",
        distro: "Debian 11",
        suite: Some("bullseye"),
    },
    GuestKernel {
        name: "6.1",
        release: "6.1.0-50-amd64",
        distro: "Debian 12",
        suite: None,
    },
    GuestKernel {
        name: "6.12",
        release: "6.12.111+deb12-amd64",
        distro: "Debian 12, bookworm-backports' kernel",
        suite: None,
    },
];

impl GuestKernel {
    pub fn package(&self) -> String {
        format!("linux-image-{}", self.release)
    }

    /// Where the package is unpacked: `target/kernels/<release>/`. Not /var/tmp, which is a
    /// fresh tmpfs in the guest: the guest reads the modules from here.
    pub fn dir(&self) -> PathBuf {
        kernels_dir().join(self.release)
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir()
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }

    /// The unpacked tree's `lib/modules/<release>` (Debian 12's packages; a later Debian's
    /// under `usr/lib/modules`).
    pub fn modules(&self) -> PathBuf {
        modules_dir(&self.dir(), self.release)
    }

    fn by_name(name: &str) -> Option<&'static GuestKernel> {
        GUEST_KERNELS.iter().find(|kernel| kernel.name == name)
    }
}

/// `DIR/lib/modules/RELEASE`, or `DIR/usr/lib/modules/RELEASE` when only that exists.
pub fn modules_dir(dir: &Path, release: &str) -> PathBuf {
    let lib = dir.join("lib/modules").join(release);
    let usr = dir.join("usr/lib/modules").join(release);
    if !lib.exists() && usr.exists() {
        usr
    } else {
        lib
    }
}

/// `target/kernels`, absolute: the guest sees the host's paths.
pub fn kernels_dir() -> PathBuf {
    absolute_target().join("kernels")
}

/// The virtme-ng release setup installs: 1.42 boots Debian's 5.10, 6.1 and 6.12 images with
/// their modules (it links the unpacked `lib/modules/<release>` into the guest by itself).
pub const VIRTME_NG_VERSION: &str = "1.42";

/// The Python venv virtme-ng lives in, named after its release so that a new pin gets a fresh
/// venv: `~/.local/share/apns-agent/virtme-ng-<version>`.
pub fn virtme_ng_venv() -> Result<PathBuf> {
    Ok(util::home()?
        .join(".local/share/apns-agent")
        .join(format!("virtme-ng-{VIRTME_NG_VERSION}")))
}

/// One integration test binary of the workspace, run in every guest kernel.
pub struct GuestTest {
    /// The cargo package and the test target (`tests/<test>.rs` of that package).
    pub package: &'static str,
    pub test: &'static str,
    /// Arguments for the test binary: libtest's name filters (any of them selects a test; none:
    /// every test), `--skip NAME`, `--test-threads N`.
    pub args: &'static [&'static str],
    /// Environment for the test, e.g. fewer generated frames: guests run under TCG.
    pub env: &'static [(&'static str, &'static str)],
    /// How long the guest may take, boot included, before it is killed.
    pub timeout_secs: u64,
    /// Known failures: (kernel name, test name, why): that test is skipped (`--skip`) in that
    /// kernel, and the run says so. Each is an open defect, not a setting.
    pub known_failures: &'static [(&'static str, &'static str, &'static str)],
}

/// What runs in every guest kernel (`cargo xtask test --kernel`): one guest per test and kernel,
/// at most [`PARALLEL_GUESTS`] at once, within [`MATRIX_BUDGET`].
pub const GUEST_TESTS: &[GuestTest] = &[
    // The embedded object and the verifier's verdict on it, with no network. Its output
    // (`--nocapture`) holds each program's instruction counts, which the summary shows.
    GuestTest {
        package: "apns-agent",
        test: "object",
        args: &["--nocapture"],
        env: &[],
        timeout_secs: 180,
        known_failures: &[],
    },
    // Crafted frames through BPF_PROG_TEST_RUN: verdicts and counters.
    GuestTest {
        package: "apns-tests",
        test: "classifier",
        args: &[],
        env: &[],
        timeout_secs: 300,
        known_failures: &[],
    },
    // Generated frames against the user-space reference: 20,000 frames instead of 100,000
    // (and half of that for the prefix test): all of them took 6.5 min under TCG.
    GuestTest {
        package: "apns-tests",
        test: "differential",
        args: &[],
        env: &[("APNS_DIFF_FRAMES", "20000")],
        timeout_secs: 420,
        known_failures: &[],
    },
    // The agent in a lab gateway: attach, exact counters, enforce dropping inbound connection
    // attempts, drop events.
    GuestTest {
        package: "apns-tests",
        test: "inbound_open",
        args: &[],
        env: &[TIME_SCALE],
        timeout_secs: 420,
        known_failures: &[],
    },
    // The fast paths: mark with the shipped nft rules behind NAT, and redirect from the first
    // packet with the neighbour caches cold (the TC step).
    GuestTest {
        package: "apns-tests",
        test: "fastpath",
        args: &[
            "mark_with_the_example_rules_exempts_apns_from_a_proxy_behind_nat",
            "the_first_connection_after_redirect_goes_through_with_cold_neighbour_caches",
        ],
        env: &[TIME_SCALE],
        timeout_secs: 480,
        known_failures: &[],
    },
    // Enforce against header tricks: tiny first fragments and deep IPv6 chains.
    GuestTest {
        package: "apns-tests",
        test: "evasion",
        args: &[],
        env: &[TIME_SCALE],
        timeout_secs: 300,
        known_failures: &[],
    },
    // The fast paths' trust: forged Apple segments never reach a device (redirect's flow
    // table, mark's device-only marks).
    GuestTest {
        package: "apns-tests",
        test: "fastpath_trust",
        args: &[],
        env: &[TIME_SCALE],
        timeout_secs: 420,
        known_failures: &[],
    },
    // Each optional feature switched off in a lab of its own: loads, exact counters, the
    // connection table, status and /metrics, redirect refused without bpf_fib_lookup.
    GuestTest {
        package: "apns-tests",
        test: "features",
        args: &[],
        env: &[TIME_SCALE],
        timeout_secs: 720,
        known_failures: &[],
    },
    // `cargo xtask demo` as its test runs it (the redirect and the mark fast path): every
    // step with its exact counts (the resets as the lab's ISP firewall counted them) and
    // both findings of `clients`, on every kernel.
    GuestTest {
        package: "apns-tests",
        test: "demo",
        args: &[],
        env: &[TIME_SCALE],
        timeout_secs: 600,
        known_failures: &[],
    },
    // Sharing an interface with the real xdp-filter through libxdp's dispatcher: every
    // guest kernel loads extension programs, so the test may not skip there.
    GuestTest {
        package: "apns-tests",
        test: "multiprog",
        args: &[],
        env: &[TIME_SCALE, ("APNS_EXPECT_MULTIPROG", "1")],
        timeout_secs: 420,
        known_failures: &[],
    },
    // unload removes only a datapath's own pins.
    GuestTest {
        package: "apns-tests",
        test: "unload_safety",
        args: &[],
        env: &[],
        timeout_secs: 180,
        known_failures: &[],
    },
    // Migration from the previous release's datapath where it could run (it says, and skips,
    // where its verifier refuses the old programs).
    GuestTest {
        package: "apns-tests",
        test: "migration",
        args: &[],
        env: &[TIME_SCALE],
        timeout_secs: 420,
        known_failures: &[],
    },
];

/// The lab tests' waits, four times the host's (`apns_tests::time_scale`): under TCG the
/// guests verify programs and build namespaces several times slower, 5.10's most of all.
const TIME_SCALE: (&str, &str) = ("APNS_TEST_TIME_SCALE", "4");

/// Guests at once: one per core of these 2-core machines (each guest's vCPUs are host threads).
pub const PARALLEL_GUESTS: usize = 2;
/// vCPUs per guest in the matrix: one each, two guests at once on two cores.
const MATRIX_CPUS: u32 = 1;
/// The whole matrix's wall-clock budget: runs not started by then are reported as not run, and
/// a run's timeout never reaches past it.
pub const MATRIX_BUDGET: Duration = Duration::from_secs(35 * 60);
/// Guest memory: the tests' namespaces, the agent, and the guest's overlays (which live in
/// its RAM, under /run/tmp).
const MEMORY: &str = "2G";

/// Lines the guest script prints to the console around the command (also kept in files).
const START_MARKER: &str = "@@apns-vm start";
const EXIT_MARKER: &str = "@@apns-vm exit";

fn absolute_target() -> PathBuf {
    let dir = target_dir();
    std::path::absolute(&dir).unwrap_or(dir)
}

/// `--kernel` of `cargo xtask vm`: a guest kernel by name.
pub fn parse_guest_kernel(name: &str) -> std::result::Result<&'static GuestKernel, String> {
    GuestKernel::by_name(name).ok_or_else(|| {
        format!(
            "no guest kernel {name:?}: one of {}",
            GUEST_KERNELS
                .iter()
                .map(|kernel| kernel.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

#[derive(clap::Args)]
pub struct Args {
    /// The guest's kernel: 5.10 (Debian 11), 6.1 (Debian 12) or 6.12 (bookworm-backports).
    #[arg(long, value_name = "K", value_parser = parse_guest_kernel, default_value = "6.1")]
    kernel: &'static GuestKernel,
    /// Run this integration test binary of the workspace (e.g. `object`, `classifier`, `lab`),
    /// built on the host first (`cargo test --no-run`); what follows `--` goes to it (filters,
    /// `--nocapture`).
    #[arg(long, value_name = "NAME", conflicts_with = "script")]
    test: Option<String>,
    /// Run this shell script (bash) in the guest.
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,
    /// vCPUs of the guest.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=8))]
    cpus: u32,
    /// Kill the guest after this many seconds, boot included.
    #[arg(long, value_name = "SECS", default_value_t = 900)]
    timeout: u64,
    /// The command to run as root in the guest, after `--`: one argument is shell code
    /// (`-- 'uname -r; lsmod'`), several are a command and its arguments. With --test, the
    /// test binary's arguments.
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<OsString>,
}

/// `cargo xtask vm`: boots one guest, runs the command, prints its output, and fails when the
/// command did.
pub fn run(args: &Args) -> Result<()> {
    let kernel = args.kernel;
    crate::setup::run().context("setup failed")?;
    crate::setup::guests(&[kernel]).context("setting up the guest failed")?;
    let body = if let Some(name) = &args.test {
        let tests = build_tests(Some(name))?;
        let matching: Vec<&TestBinary> = tests.iter().filter(|t| &t.test == name).collect();
        let binary = match matching.as_slice() {
            [one] => *one,
            [] => bail!(
                "no integration test {name:?} in the workspace; there are: {}",
                tests
                    .iter()
                    .map(|t| t.test.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            [..] => bail!(
                "several packages have an integration test {name:?}: {}",
                matching
                    .iter()
                    .map(|t| t.package.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let args: Vec<String> = args
            .cmd
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        binary.script(&args, &[])
    } else if let Some(script) = &args.script {
        fs::read_to_string(script).with_context(|| format!("cannot read {}", script.display()))?
    } else {
        match args.cmd.as_slice() {
            [] => bail!(
                "nothing to run: give a command after `--` (`cargo xtask vm --kernel {} -- uname -r`), --script FILE or --test NAME",
                kernel.name
            ),
            [code] => code.to_string_lossy().into_owned(),
            words => words
                .iter()
                .map(|word| shell_quote(&word.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(" "),
        }
    };
    // One folder per `cargo xtask vm`, so that two can run at once; those of ended runs go.
    let parent = absolute_target().join("vm").join(kernel.release);
    sweep_vm_dirs(&parent);
    let dir = parent.join(format!("vm-{}", std::process::id()));
    let outcome = run_in_guest(&Guest {
        kernel,
        body: &body,
        dir: &dir,
        cpus: args.cpus,
        timeout: Duration::from_secs(args.timeout),
        echo: true,
    })?;
    let release = outcome.release.as_deref().unwrap_or("?");
    match outcome.status {
        Some(0) => {
            step(format!(
                "{} guest ({release}): the command exited with 0 ({}; boot {})",
                kernel.name,
                elapsed(outcome.elapsed),
                outcome.boot.map_or_else(|| "?".to_owned(), elapsed)
            ));
            Ok(())
        }
        Some(code) => bail!(
            "in the {} guest ({release}) the command exited with {code} ({}; console: {})",
            kernel.name,
            elapsed(outcome.elapsed),
            outcome.console.display()
        ),
        None => bail!(
            "the {} guest {} (console: {})",
            kernel.name,
            outcome.no_status_reason(),
            outcome.console.display()
        ),
    }
}

/// Removes the `vm-<pid>` folders in `parent` whose process has ended.
fn sweep_vm_dirs(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ended = name
            .to_str()
            .and_then(|name| name.strip_prefix("vm-"))
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists());
        if ended {
            // Best effort: a folder left here costs only disk.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// One guest to boot: a kernel, the script body to run as root, and the folder (on the host,
/// writable by the guest) for its files.
pub struct Guest<'a> {
    pub kernel: &'a GuestKernel,
    /// bash code; runs in a subshell, stdout and stderr together.
    pub body: &'a str,
    /// Emptied first; gets `script.sh`, `console.log` (everything the guest printed),
    /// `output` (the body's output), `status` (its exit code), `release` and `version`.
    pub dir: &'a Path,
    pub cpus: u32,
    /// From the start of vng to the guest's end, boot included.
    pub timeout: Duration,
    /// Print the body's output as it comes (the boot's only when the body never starts).
    pub echo: bool,
}

/// What came back from a guest.
pub struct Outcome {
    /// The body's exit code; None when the guest ended without one (a panic, a timeout).
    pub status: Option<i32>,
    /// `uname -r` and `uname -v` in the guest.
    pub release: Option<String>,
    pub version: Option<String>,
    /// From the start of vng to the body's start.
    pub boot: Option<Duration>,
    pub elapsed: Duration,
    pub timed_out: bool,
    /// The body's output, read back from the guest's file (the console's copy when that is
    /// missing).
    pub output: String,
    pub console: PathBuf,
    /// The last lines of the console, for a guest that never got to the body.
    pub console_tail: Vec<String>,
}

impl Outcome {
    /// Why there is no status.
    pub fn no_status_reason(&self) -> String {
        if self.timed_out {
            format!("was killed after {}", elapsed(self.elapsed))
        } else if self.boot.is_none() {
            format!(
                "never started the command (boot failed?); the console ended with: {}",
                self.console_tail.join(" | ")
            )
        } else {
            format!(
                "ended without the command's exit code (a kernel panic?); the console ended with: {}",
                self.console_tail.join(" | ")
            )
        }
    }
}

/// The guest script around `body`: modules, the folders the agent and the tests write, markers,
/// and the exit code, `uname` and output into `dir`.
fn guest_script(body: &str, dir: &Path) -> String {
    let dir = shell_quote(&dir.display().to_string());
    format!(
        r#"# Written by cargo xtask (xtask/src/vm.rs); runs as root in the guest.
# The host's root is read-only here; /etc /usr /var /tmp /root are overlays (writable,
# discarded), /run is a tmpfs, {dir} is shared with the host.
# Modules of Debian's kernels the tests need: veth (ip link add would ask for it too) and tun,
# whose /dev/net/tun the lab's VLAN relay opens (the node appears only once tun is loaded: no
# udev or static nodes here). nftables, tc and conntrack load theirs on demand.
modprobe -a veth tun 2>&1 || echo "warning: modprobe veth tun failed"
mkdir -p /var/lib/apns-agent /run/apns-agent /run/netns
uname -r > {dir}/release
uname -v > {dir}/version
echo "{START_MARKER} $(uname -r) $(uname -v)"
( {body}
) 2>&1 < /dev/null | tee {dir}/output
status=${{PIPESTATUS[0]}}
echo "$status" > {dir}/status
echo "{EXIT_MARKER} $status"
"#
    )
}

/// Boots `guest.kernel` under virtme-ng and runs `guest.body` in it.
pub fn run_in_guest(guest: &Guest) -> Result<Outcome> {
    let dir = guest.dir;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let script = dir.join("script.sh");
    fs::write(&script, guest_script(guest.body, dir))
        .with_context(|| format!("cannot write {}", script.display()))?;
    let console_path = dir.join("console.log");
    let mut console = fs::File::create(&console_path)
        .with_context(|| format!("cannot create {}", console_path.display()))?;

    let venv_bin = virtme_ng_venv()?.join("bin");
    let mut cmd = Command::new(venv_bin.join("vng"));
    // vng runs virtme-run by name.
    let mut path = OsString::from(&venv_bin);
    path.push(":");
    path.push(util::child_path());
    cmd.env("PATH", path)
        .arg("--run")
        .arg(guest.kernel.vmlinuz())
        // TCG: KVM guests do not run here. 9p for the root: virtiofs would need virtiofsd.
        // QEMU's standard PC rather than microvm, as measured with Debian's kernels.
        .args(["--force-9p", "--disable-kvm", "--disable-microvm"])
        // Without --verbose the guest's output is lost (it goes to the serial console); the
        // kernel's own messages are cut back to warnings and worse with loglevel.
        .args(["--verbose", "--append", "loglevel=5"])
        .args(["--memory", MEMORY, "--cpus", &guest.cpus.to_string()])
        .arg("--rwdir")
        .arg(dir)
        // HOME stays root's but read-only otherwise.
        .args(["--overlay-rwdir", "/root"])
        .arg("--exec")
        .arg(format!(
            "bash {}",
            shell_quote(&script.display().to_string())
        ))
        .current_dir(workspace_root())
        .stdin(Stdio::null());
    let (reader, writer) = std::io::pipe().context("cannot make a pipe for the guest's output")?;
    cmd.stdout(
        writer
            .try_clone()
            .context("cannot duplicate the guest's output pipe")?,
    )
    .stderr(writer);
    let description = describe(&cmd);
    if guest.echo {
        step(format!("{} guest: {description}", guest.kernel.name));
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{description}`"))?;
    // The pipe's write ends live in `cmd` until it is dropped: without that, no end of file.
    drop(cmd);

    let (lines_tx, lines) = mpsc::channel::<String>();
    let reading = thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    if lines_tx
                        .send(text.trim_end_matches(['\n', '\r']).to_owned())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });

    let deadline = start + guest.timeout;
    let mut boot = None;
    let mut timed_out = false;
    let mut console_output = Vec::new();
    let mut tail: Vec<String> = Vec::new();
    let mut in_body = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                writeln!(console, "{line}")
                    .with_context(|| format!("cannot write {}", console_path.display()))?;
                if line.starts_with(START_MARKER) {
                    boot = Some(start.elapsed());
                    in_body = true;
                    if guest.echo {
                        step(format!(
                            "{} guest booted in {}: {}",
                            guest.kernel.name,
                            elapsed(start.elapsed()),
                            line.trim_start_matches(START_MARKER).trim()
                        ));
                    }
                    continue;
                }
                if line.starts_with(EXIT_MARKER) {
                    in_body = false;
                    continue;
                }
                if in_body {
                    if guest.echo {
                        println!("{line}");
                    }
                    console_output.push(line.clone());
                }
                tail.push(line);
                if tail.len() > 8 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                kill_tree(child.id());
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{description}`"))?;
    let took = start.elapsed();
    drop(lines);
    // The reader ends with the pipe, which the killed group no longer holds.
    if reading.join().is_err() {
        step("the guest output reader panicked");
    }
    if guest.echo && boot.is_none() {
        for line in &tail {
            eprintln!("{line}");
        }
    }

    let read = |name: &str| {
        fs::read_to_string(dir.join(name))
            .ok()
            .map(|text| text.trim().to_owned())
    };
    let exit = read("status").and_then(|text| text.parse::<i32>().ok());
    if exit.is_none() && !timed_out && guest.echo {
        step(format!(
            "vng ended with {status} and no exit code from the guest"
        ));
    }
    Ok(Outcome {
        status: exit,
        release: read("release").filter(|text| !text.is_empty()),
        version: read("version").filter(|text| !text.is_empty()),
        boot,
        elapsed: took,
        timed_out,
        output: read("output").unwrap_or_else(|| console_output.join("\n")),
        console: console_path,
        console_tail: tail,
    })
}

/// Kills `pid` and every process below it (vng, virtme-run, qemu), all of which
/// `run_in_guest` started. They stay in xtask's process group, so that a Ctrl-C at the
/// terminal stops them with it.
fn kill_tree(pid: u32) {
    let mut tree = vec![pid];
    let mut index = 0;
    while let Some(&parent) = tree.get(index) {
        tree.extend(children(parent));
        index += 1;
    }
    for pid in tree {
        let Ok(pid) = i32::try_from(pid) else {
            continue;
        };
        // SAFETY: kill has no memory-safety preconditions; `pid` is a process this run
        // started or one of its descendants.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The processes whose parent is `pid` (from /proc/*/stat: the field after the command's
/// closing parenthesis is the state, then the parent's pid).
fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let parent: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// `'text'`, for bash.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// An integration test executable cargo built.
pub struct TestBinary {
    pub package: String,
    pub test: String,
    pub executable: PathBuf,
    /// The package's folder: cargo runs tests from there.
    pub package_dir: PathBuf,
}

impl TestBinary {
    /// The guest script body that runs it as `cargo test` would.
    fn script(&self, args: &[String], env: &[(&str, &str)]) -> String {
        let package_dir = shell_quote(&self.package_dir.display().to_string());
        let mut line = format!("cd {package_dir} && CARGO_MANIFEST_DIR={package_dir}");
        // As root in the guest, a root-only test that cannot run fails instead of skipping.
        let (no_skip, on) = crate::test::NO_SKIP;
        line.push_str(&format!(" {no_skip}={on}"));
        for (name, value) in env {
            line.push_str(&format!(" {name}={}", shell_quote(value)));
        }
        line.push(' ');
        line.push_str(&shell_quote(&self.executable.display().to_string()));
        for arg in args {
            line.push(' ');
            line.push_str(&shell_quote(arg));
        }
        line
    }
}

/// Builds the integration tests of [`GUEST_TESTS`] and `extra` without running them, and
/// returns their executables. Only those (a test target that does not build elsewhere in the
/// workspace does not stop the guests), but with the host run's package selection, so that
/// cargo resolves the same features and reuses that build; the table's apns-agent test makes
/// cargo build the agent binary the tests crate's tests look for next to them.
pub fn build_tests(extra: Option<&str>) -> Result<Vec<TestBinary>> {
    let mut names: Vec<&str> = GUEST_TESTS.iter().map(|test| test.test).collect();
    names.extend(extra);
    names.sort_unstable();
    names.dedup();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "apns-ebpf", "--no-run"])
        .arg("--message-format=json-render-diagnostics");
    for name in names {
        cmd.args(["--test", name]);
    }
    cmd.current_dir(workspace_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    step(describe(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", describe(&cmd), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tests = test_binaries(&stdout)?;
    if tests.is_empty() {
        bail!("`{}` listed no integration test executable", describe(&cmd));
    }
    Ok(tests)
}

/// The integration test executables among cargo's JSON messages.
fn test_binaries(messages: &str) -> Result<Vec<TestBinary>> {
    let mut tests = BTreeMap::new();
    for line in messages.lines().filter(|line| line.starts_with('{')) {
        let message: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("cargo printed a line that is not JSON: {line}"))?;
        if message["reason"] != "compiler-artifact" || message["profile"]["test"] != true {
            continue;
        }
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"));
        let (Some(executable), Some(test), Some(id), Some(manifest)) = (
            message["executable"].as_str(),
            message["target"]["name"].as_str(),
            message["package_id"].as_str(),
            message["manifest_path"].as_str(),
        ) else {
            continue;
        };
        if !is_test {
            continue;
        }
        let package = package_name(id);
        let package_dir = Path::new(manifest)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        tests.insert(
            (package.clone(), test.to_owned()),
            TestBinary {
                package,
                test: test.to_owned(),
                executable: PathBuf::from(executable),
                package_dir,
            },
        );
    }
    Ok(tests.into_values().collect())
}

/// The package name in a cargo package id: `path+file:///w/tests#apns-tests@0.1.0` →
/// `apns-tests`; `path+file:///w/apns-agent#0.1.0` (name = folder) → `apns-agent`.
fn package_name(id: &str) -> String {
    let (url, fragment) = id.split_once('#').unwrap_or((id, ""));
    match fragment.split_once('@') {
        Some((name, _)) => name.to_owned(),
        None => url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(url)
            .to_owned(),
    }
}

/// libtest's counts, summed over its `test result:` lines.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Counts {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

/// Sums `test result: ok. 3 passed; 1 failed; 0 ignored; ...` lines; None when there is none.
fn counts(output: &str) -> Option<Counts> {
    let mut total: Option<Counts> = None;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let sum = total.get_or_insert_with(Counts::default);
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(number)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(number) = number.parse::<u32>() else {
                continue;
            };
            match what {
                "passed" => sum.passed += number,
                "failed" => sum.failed += number,
                "ignored" => sum.ignored += number,
                _ => {}
            }
        }
    }
    total
}

/// The first line saying what went wrong: a panic's message (the line after `panicked at`),
/// or else the first line naming an error; with the verifier's last word when a verifier log
/// follows (the line before its `verification time` / `processed N insns` statistics).
fn first_error(output: &str) -> Option<String> {
    let lines: Vec<&str> = output.lines().collect();
    let (at, message) = match lines.iter().position(|line| line.contains(" panicked at ")) {
        Some(at) => (at + 1, *lines.get(at + 1)?),
        None => lines.iter().enumerate().find_map(|(at, line)| {
            let lower = line.to_lowercase();
            (lower.contains("error") || lower.contains("failed")).then_some((at, *line))
        })?,
    };
    let mut text = shorten(message.trim(), 160);
    // The verifier's statistics end its log; the reason is the line before them, within this
    // failure (up to the next `---- name stdout ----`).
    let failure = lines[at..]
        .iter()
        .take_while(|line| !line.starts_with("---- "))
        .map(|line| line.trim())
        .collect::<Vec<_>>();
    let is_statistics = |line: &str| {
        line.starts_with("verification time")
            || line.starts_with("stack depth")
            || (line.starts_with("processed ") && line.contains(" insns"))
    };
    if let Some(stats) = failure.iter().position(|line| is_statistics(line)) {
        if let Some(reason) = failure[..stats]
            .iter()
            .rev()
            .find(|line| !line.is_empty() && !is_statistics(line))
        {
            text.push_str(" | verifier: ");
            text.push_str(&shorten(reason, 200));
        }
    }
    Some(text)
}

/// `text` cut to `chars` characters, with an ellipsis when cut.
fn shorten(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// One run of the matrix.
struct Job<'a> {
    kernel: &'static GuestKernel,
    test: &'static GuestTest,
    binary: &'a TestBinary,
}

struct JobResult {
    outcome: Option<Outcome>,
    /// Why it did not run (an error starting the guest, the budget).
    error: Option<String>,
    counts: Option<Counts>,
}

impl JobResult {
    fn passed(&self) -> bool {
        self.outcome.as_ref().is_some_and(|o| o.status == Some(0))
            && self.counts.is_some_and(|c| c.failed == 0)
    }
}

/// Runs every [`GUEST_TESTS`] entry in every kernel of `kernels`, [`PARALLEL_GUESTS`] guests at
/// a time, prints a summary per kernel, and fails when any run did not pass.
pub fn matrix(kernels: &[&'static GuestKernel], binaries: &[TestBinary]) -> Result<()> {
    let mut jobs = Vec::new();
    for test in GUEST_TESTS {
        let binary = binaries
            .iter()
            .find(|b| b.package == test.package && b.test == test.test)
            .with_context(|| {
                format!(
                    "GUEST_TESTS names {} {}, which cargo did not build (xtask/src/vm.rs)",
                    test.package, test.test
                )
            })?;
        for &kernel in kernels {
            jobs.push(Job {
                kernel,
                test,
                binary,
            });
        }
    }
    // The longest first (by their timeouts), so that no long run starts last and alone.
    jobs.sort_by_key(|job| std::cmp::Reverse(job.test.timeout_secs));
    step(format!(
        "kernel matrix: {} tests in each of {}, {} guests at a time, {} budget",
        GUEST_TESTS.len(),
        kernels
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", "),
        PARALLEL_GUESTS,
        elapsed(MATRIX_BUDGET)
    ));
    let start = Instant::now();
    let next = Mutex::new(0usize);
    let results: Mutex<BTreeMap<usize, JobResult>> = Mutex::new(BTreeMap::new());
    thread::scope(|scope| {
        for _ in 0..PARALLEL_GUESTS.min(jobs.len()) {
            scope.spawn(|| loop {
                let index = {
                    let Ok(mut next) = next.lock() else { return };
                    let index = *next;
                    *next += 1;
                    index
                };
                let Some(job) = jobs.get(index) else { return };
                let result = run_job(job, start);
                if let Ok(mut results) = results.lock() {
                    results.insert(index, result);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a matrix worker panicked"))?;

    step(format!(
        "kernel matrix: {} runs in {}",
        jobs.len(),
        elapsed(start.elapsed())
    ));
    let mut failures = 0;
    for &kernel in kernels {
        // In the table's order.
        let mut mine: Vec<(&Job, Option<&JobResult>)> = jobs
            .iter()
            .enumerate()
            .filter(|(_, job)| job.kernel.name == kernel.name)
            .map(|(index, job)| (job, results.get(&index)))
            .collect();
        mine.sort_by_key(|(job, _)| {
            GUEST_TESTS
                .iter()
                .position(|test| (test.package, test.test) == (job.test.package, job.test.test))
        });
        let outcome = mine
            .iter()
            .find_map(|(_, result)| result.and_then(|r| r.outcome.as_ref()));
        // Only the object test prints instruction counts.
        let counts: Vec<(String, u64, u64)> = mine
            .iter()
            .filter_map(|(_, result)| result.and_then(|r| r.outcome.as_ref()))
            .flat_map(|outcome| instruction_counts(&outcome.output))
            .collect();
        let release = outcome
            .and_then(|o| o.release.clone())
            .unwrap_or_else(|| "?".to_owned());
        let version = outcome.and_then(|o| o.version.clone()).unwrap_or_default();
        eprintln!(
            "    {} ({}): uname -r {release}, uname -v {version}",
            kernel.name, kernel.distro
        );
        for (job, result) in mine {
            let name = format!("{} {}", job.test.package, job.test.test);
            let Some(result) = result else {
                failures += 1;
                eprintln!("      {name:<24} NOT RUN");
                continue;
            };
            if !result.passed() {
                failures += 1;
            }
            eprintln!("      {name:<24} {}", describe_result(result));
        }
        if !counts.is_empty() {
            let counts: Vec<String> = counts
                .iter()
                .map(|(program, translated, processed)| {
                    // Kernels before 5.16 do not report the verifier's count (it reads 0).
                    let processed = match processed {
                        0 => "–".to_owned(),
                        n => n.to_string(),
                    };
                    format!("{program} {translated} / {processed}")
                })
                .collect();
            eprintln!(
                "      instructions (translated / processed by the verifier, every feature this kernel has on): {}",
                counts.join(", ")
            );
        }
    }
    if failures > 0 {
        bail!(
            "kernel matrix: {failures} of {} guest runs did not pass (outputs in {})",
            jobs.len(),
            absolute_target().join("vm").display()
        );
    }
    Ok(())
}

/// Each program's instruction counts from the `object` test's output, with every feature of
/// the kernel on: the last of its lines `features 0x..: NAME: T translated instructions, P
/// instructions processed by the verifier` (the combinations come in ascending order, all on
/// last), in the order the programs first appear.
fn instruction_counts(output: &str) -> Vec<(String, u64, u64)> {
    let mut counts: Vec<(String, u64, u64)> = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("features ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ": ");
        let (Some(_), Some(program), Some(figures)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let numbers: Vec<u64> = figures
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|word| word.parse().ok())
            .collect();
        let [translated, processed] = numbers[..] else {
            continue;
        };
        match counts.iter_mut().find(|(name, ..)| name == program) {
            Some(entry) => *entry = (program.to_owned(), translated, processed),
            None => counts.push((program.to_owned(), translated, processed)),
        }
    }
    counts
}

/// `ok: 3 of 3 passed (24 s, boot 11 s)`, `FAILED: 1 of 3 passed, 2 failed (...): <first error>`.
fn describe_result(result: &JobResult) -> String {
    let Some(outcome) = &result.outcome else {
        return format!(
            "NOT RUN: {}",
            result.error.as_deref().unwrap_or("no result")
        );
    };
    let verdict = if result.passed() { "ok" } else { "FAILED" };
    let counts = match result.counts {
        Some(c) => {
            let total = c.passed + c.failed;
            let mut text = format!("{} of {total} passed", c.passed);
            if c.failed > 0 {
                text.push_str(&format!(", {} failed", c.failed));
            }
            if c.ignored > 0 {
                text.push_str(&format!(", {} ignored", c.ignored));
            }
            text
        }
        None => "no test result".to_owned(),
    };
    let timing = format!(
        "{}, boot {}",
        elapsed(outcome.elapsed),
        outcome.boot.map_or_else(|| "?".to_owned(), elapsed)
    );
    let mut text = format!("{verdict}: {counts} ({timing})");
    if !result.passed() {
        let why = match outcome.status {
            None => outcome.no_status_reason(),
            Some(code) => first_error(&outcome.output).map_or_else(
                || format!("exit code {code}"),
                |line| format!("exit code {code}: {line}"),
            ),
        };
        let dir = outcome.console.parent().unwrap_or(Path::new("."));
        text.push_str(&format!(
            "\n        {why}\n        output, console: {}/",
            dir.display()
        ));
    }
    text
}

fn run_job(job: &Job, matrix_start: Instant) -> JobResult {
    let left = MATRIX_BUDGET.saturating_sub(matrix_start.elapsed());
    let name = format!("{} {}", job.test.package, job.test.test);
    if left < Duration::from_secs(30) {
        return JobResult {
            outcome: None,
            error: Some(format!(
                "the matrix's {} budget was spent",
                elapsed(MATRIX_BUDGET)
            )),
            counts: None,
        };
    }
    let mut args: Vec<String> = job.test.args.iter().map(|&arg| arg.to_owned()).collect();
    for &(kernel, test, why) in job.test.known_failures {
        if kernel == job.kernel.name {
            step(format!(
                "{} guest, {name}: SKIPPING {test}, a known failure there: {why}",
                job.kernel.name
            ));
            args.extend(["--skip".to_owned(), test.to_owned()]);
        }
    }
    let body = job.binary.script(&args, job.test.env);
    let dir = absolute_target()
        .join("vm")
        .join(job.kernel.release)
        .join(format!("{}-{}", job.test.package, job.test.test));
    let guest = Guest {
        kernel: job.kernel,
        body: &body,
        dir: &dir,
        cpus: MATRIX_CPUS,
        timeout: Duration::from_secs(job.test.timeout_secs).min(left),
        echo: false,
    };
    step(format!(
        "{} guest, {name}: starting ({} timeout; files in {})",
        job.kernel.name,
        elapsed(guest.timeout),
        dir.display()
    ));
    match run_in_guest(&guest) {
        Ok(outcome) => {
            let counts = counts(&outcome.output);
            let result = JobResult {
                counts,
                outcome: Some(outcome),
                error: None,
            };
            step(format!(
                "{} guest, {name}: {}",
                job.kernel.name,
                describe_result(&result)
            ));
            result
        }
        Err(err) => {
            step(format!(
                "{} guest, {name}: could not run: {err:#}",
                job.kernel.name
            ));
            JobResult {
                outcome: None,
                error: Some(format!("{err:#}")),
                counts: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_package_names_from_ids() {
        assert_eq!(
            package_name("path+file:///work/main/tests#apns-tests@0.1.0"),
            "apns-tests"
        );
        assert_eq!(
            package_name("path+file:///work/main/apns-agent#0.1.0"),
            "apns-agent"
        );
        assert_eq!(
            package_name("registry+https://github.com/rust-lang/crates.io-index#libc@0.2.1"),
            "libc"
        );
    }

    #[test]
    fn sums_libtest_counts() {
        let output = "running 3 tests\ntest a ... ok\n\ntest result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 4 filtered out; finished in 1.20s\n\ntest result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";
        assert_eq!(
            counts(output),
            Some(Counts {
                passed: 3,
                failed: 2,
                ignored: 1
            })
        );
        assert_eq!(counts("no tests here"), None);
    }

    #[test]
    fn finds_the_panic_message() {
        let output = "---- t stdout ----\n\nthread 't' (120) panicked at apns-agent/tests/object.rs:96:24:\ncalled `Result::unwrap()` on an `Err` value: LoadError\n";
        assert_eq!(
            first_error(output).as_deref(),
            Some("called `Result::unwrap()` on an `Err` value: LoadError")
        );
    }

    #[test]
    fn finds_the_verifier_reason() {
        let output = "---- t stdout ----\n\nthread 't' (102) panicked at tests/tests/classifier.rs:337:63:\ncalled `Result::unwrap()` on an `Err` value: loading XDP program apns_xdp (the verifier log follows)\n\nCaused by:\n    0: the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: Validating apns_conns_outbound() func#3...\n       Arg#0 type PTR in apns_conns_outbound() is not supported yet.\n       verification time 2698 usec\n       stack depth 0+0\n       processed 0 insns (limit 1000000) max_states_per_insn 0\n\n---- u stdout ----\n";
        assert_eq!(
            first_error(output).as_deref(),
            Some("called `Result::unwrap()` on an `Err` value: loading XDP program apns_xdp (the verifier log follows) | verifier: Arg#0 type PTR in apns_conns_outbound() is not supported yet.")
        );
    }

    #[test]
    fn reads_instruction_counts_with_every_feature_on() {
        let output = "running 3 tests\n\
            features 0x0: apns_xdp: 3000 translated instructions, 180000 instructions processed by the verifier\n\
            features 0x0: apns_tc: 90 translated instructions, 100 instructions processed by the verifier\n\
            features 0x3: apns_xdp: 3294 translated instructions, 210699 instructions processed by the verifier\n\
            features 0x3: apns_tc: 101 translated instructions, 122 instructions processed by the verifier\n\
            test verifier_accepts_every_program_in_every_feature_combination ... ok\n";
        assert_eq!(
            instruction_counts(output),
            [
                ("apns_xdp".to_owned(), 3294, 210699),
                ("apns_tc".to_owned(), 101, 122)
            ]
        );
        assert!(instruction_counts("test result: ok. 3 passed").is_empty());
    }

    #[test]
    fn quotes_for_bash() {
        assert_eq!(shell_quote("target/debug/x-1"), "target/debug/x-1");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn kernel_names_are_unique() {
        for kernel in GUEST_KERNELS {
            assert_eq!(
                GUEST_KERNELS
                    .iter()
                    .filter(|k| k.name == kernel.name)
                    .count(),
                1
            );
            assert_ne!(kernel.name, "host");
        }
    }
}
