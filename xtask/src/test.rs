//! `cargo xtask test`: setup, then the supply-chain checks (`deny.rs`), every test of the
//! workspace (unit, integration and the kernel tests, which load XDP programs and therefore
//! need root), a short run of each fuzz target (`fuzz.rs`), the benchmark's smoke run,
//! and the package tests: `cargo xtask dist` builds the .deb, then tests/tests/package.rs
//! (ignored by a plain `cargo test`) installs, uses and purges it and runs the Ansible role.
//! `APNS_AGENT_PACKAGE_TESTS=skip` skips the latter (on a machine whose apns-agent must not
//! be touched), and the summary says so.
//!
//! Then the kernel matrix (`vm::matrix`): the tests of `vm::GUEST_TESTS`, built on the host,
//! in a QEMU guest of each kernel of `vm::GUEST_KERNELS`. `--kernel` picks what runs: `host`
//! (everything above) and the guest kernels by name; all of them by default.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{
    bystander::Bystander,
    util::{cargo, describe, elapsed, is_root, run_step, step, target_dir, workspace_root},
    vm::{self, GuestKernel},
};

#[derive(clap::Args)]
pub struct Args {
    /// Where the tests run: `host` (the whole suite, the benchmark's smoke run and the package
    /// tests on this machine's kernel), or a guest kernel: 5.10, 6.1, 6.12 (the kernel matrix).
    /// Repeat it or give a comma list [default: all]
    #[arg(long = "kernel", value_name = "K", value_delimiter = ',', value_parser = parse_kernel)]
    kernels: Vec<Kernel>,
    /// Extra arguments for the host's `cargo test`, after `--`
    /// (e.g. `cargo xtask test -- -p apns-tests -- --nocapture`).
    #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
    cargo_test_args: Vec<OsString>,
}

/// Root-only tests skip, saying why, where they cannot run (tests/src/root_only.rs); run
/// here as root, one that cannot run fails instead: nothing is skipped unnoticed.
pub const NO_SKIP: (&str, &str) = ("APNS_TESTS_NO_SKIP", "1");

/// A value of `--kernel`.
#[derive(Clone, Copy)]
enum Kernel {
    Host,
    Guest(&'static GuestKernel),
}

fn parse_kernel(name: &str) -> std::result::Result<Kernel, String> {
    if name == "host" {
        return Ok(Kernel::Host);
    }
    vm::parse_guest_kernel(name)
        .map(Kernel::Guest)
        .map_err(|err| format!("{err}, or host"))
}

impl Args {
    /// Whether the host suite runs, and the guest kernels of the matrix, in table order.
    fn selection(&self) -> (bool, Vec<&'static GuestKernel>) {
        if self.kernels.is_empty() {
            return (true, vm::GUEST_KERNELS.iter().collect());
        }
        let host = self.kernels.iter().any(|k| matches!(k, Kernel::Host));
        let guests = vm::GUEST_KERNELS
            .iter()
            .filter(|kernel| {
                self.kernels
                    .iter()
                    .any(|k| matches!(k, Kernel::Guest(g) if g.name == kernel.name))
            })
            .collect();
        (host, guests)
    }
}

pub fn run(args: &Args) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask test must run as root (the kernel tests load XDP programs): try sudo -E cargo xtask test");
    }
    let start = Instant::now();
    let result = setup_and_test(args);
    match &result {
        Ok(PackageTests::Ran) => step(format!(
            "cargo xtask test: PASSED ({})",
            elapsed(start.elapsed())
        )),
        Ok(PackageTests::Skipped) => step(format!(
            "cargo xtask test: PASSED, but the package tests were SKIPPED \
             (APNS_AGENT_PACKAGE_TESTS=skip) ({})",
            elapsed(start.elapsed())
        )),
        Ok(PackageTests::NoHost) => step(format!(
            "cargo xtask test: PASSED, guest kernels only (--kernel without host) ({})",
            elapsed(start.elapsed())
        )),
        Err(err) => step(format!(
            "cargo xtask test: FAILED after {}: {err:#}",
            elapsed(start.elapsed())
        )),
    }
    // The summary line already carries the error; keep the exit code non-zero.
    result
        .map(|_| ())
        .map_err(|_| anyhow::anyhow!("tests did not pass"))
}

/// Whether the package tests ran.
enum PackageTests {
    Ran,
    Skipped,
    /// Nor did anything else on the host.
    NoHost,
}

fn setup_and_test(args: &Args) -> Result<PackageTests> {
    let (host, guests) = args.selection();
    crate::setup::checkers().context("setup failed")?;
    if !guests.is_empty() {
        crate::setup::guests(&guests).context("setting up the guests failed")?;
    }
    let package = if host {
        host_tests(args)?
    } else {
        step("not running the host's tests (--kernel without host)");
        PackageTests::NoHost
    };
    if !guests.is_empty() {
        let binaries = vm::build_tests(None)?;
        vm::matrix(&guests, &binaries)?;
    }
    Ok(package)
}

/// The whole suite on this machine's kernel, beside a bystander agent, then the benchmark's
/// smoke run and the package tests, then the check that nothing was left behind.
fn host_tests(args: &Args) -> Result<PackageTests> {
    // What exists before is not this run's: a crashed earlier run's leftovers are the tests'
    // own sweeps to remove, and must not fail this run.
    let before = test_artifacts();
    crate::deny::check().context("the supply-chain checks (cargo deny) failed")?;
    // The release agent the benchmark runs anyway, started first as a bystander: the suite
    // must pass beside an agent it did not start, as on a live gateway.
    crate::util::build_release_with_agent("apns-bench")?;
    let mut bystander = Bystander::start(&target_dir().join("release").join("apns-agent"))?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "apns-ebpf"])
        .args(&args.cargo_test_args)
        .env(NO_SKIP.0, NO_SKIP.1)
        .current_dir(workspace_root());
    run_step(&mut cmd, "the tests above say which failed")?;
    let targets: Vec<_> = crate::fuzz::TARGETS.iter().collect();
    crate::fuzz::fuzz(&targets, crate::fuzz::TEST_SECS).context("fuzzing failed")?;
    // The benchmark's smoke run: checks that every figure is still produced (never how good
    // the figures are: speed goals are reported, not tested).
    crate::bench::run(&crate::bench::Args {
        quick: true,
        out: Some(target_dir().join("bench-quick")),
        soak_secs: None,
    })
    .context("the benchmark smoke run (cargo xtask bench --quick) failed")?;
    let package = package_tests()?;
    bystander.still_running()?;
    drop(bystander);
    check_nothing_left_behind(&before)?;
    Ok(package)
}

/// Builds the .deb, then runs tests/tests/package.rs on it (one test at a time: they share
/// this machine's dpkg), unless APNS_AGENT_PACKAGE_TESTS=skip.
fn package_tests() -> Result<PackageTests> {
    let deb = crate::dist::build().context("building the package (cargo xtask dist) failed")?;
    if std::env::var("APNS_AGENT_PACKAGE_TESTS").is_ok_and(|value| value == "skip") {
        step(format!(
            "SKIPPING the package tests (APNS_AGENT_PACKAGE_TESTS=skip): {} was built but not \
             installed, and the Ansible role was not run",
            deb.display()
        ));
        return Ok(PackageTests::Skipped);
    }
    let mut cmd = cargo();
    // The same package selection as the run above, so cargo resolves the same features and
    // reuses its build instead of compiling the tests crate again.
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "apns-ebpf",
        "--test",
        "package",
    ])
    .args(["--", "--ignored", "--test-threads", "1"])
    .env("APNS_AGENT_DEB", &deb)
    .env(NO_SKIP.0, NO_SKIP.1)
    .current_dir(workspace_root())
    .stdin(Stdio::null());
    step(format!(
        "APNS_AGENT_DEB={} {}",
        deb.display(),
        describe(&cmd)
    ));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    if !status.success() {
        bail!("the package tests (`{}`) failed ({status})", describe(&cmd));
    }
    Ok(PackageTests::Ran)
}

/// The tests make network namespaces (`apnslab-<pid>-*`), pin directories
/// (`/sys/fs/bpf/apns-test-<pid>-*`) with their state and controller files
/// (`/var/lib/apns-agent/apns-test-<pid>-*.json`, `/run/apns-agent/apns-test-<pid>-*.pid`),
/// notify sockets (`/tmp/apns-notify-<pid>-*.sock`) and agent processes, and install the
/// apns-agent package; each must remove its own, even when it fails. Whatever this run added
/// and is still there after the whole suite is a leak.
fn check_nothing_left_behind(before: &BTreeSet<String>) -> Result<()> {
    step("checking that the tests left no namespace, pin, file or process behind");
    let leftovers: Vec<String> = test_artifacts().difference(before).cloned().collect();
    if !leftovers.is_empty() {
        bail!("the tests left these behind: {}", leftovers.join(", "));
    }
    Ok(())
}

/// What tests made, by description. Every name carries its maker's pid: one whose maker still
/// runs (another benchmark or test run on this machine) is not a leak of this run, and
/// nothing without such a name is the tests' at all (an apns-agent the operator runs on this
/// gateway, with its own pin directory, is none of our business).
fn test_artifacts() -> BTreeSet<String> {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let mut artifacts = BTreeSet::new();
    for (dir, prefix, what) in [
        ("/run/netns", "apnslab-", "network namespace"),
        ("/sys/fs/bpf", "apns-test-", "pin directory"),
        ("/var/lib/apns-agent", "apns-test-", "state file"),
        ("/run/apns-agent", "apns-test-", "controller file"),
        ("/tmp", "apns-notify-", "notify socket"),
    ] {
        for name in names(dir) {
            if made_by_a_dead_process(&name, prefix) {
                artifacts.insert(format!("{what} {dir}/{name}"));
            }
        }
    }
    // The package tests install and purge apns-agent and stage it for the Ansible role.
    let installed = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "apns-agent"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|out| {
            out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("not-installed")
        });
    if installed {
        artifacts.insert("the apns-agent package (dpkg-query -W apns-agent)".to_owned());
    }
    if Path::new("/var/cache/apns-agent").exists() {
        artifacts.insert("/var/cache/apns-agent (the Ansible role's staging)".to_owned());
    }
    for pid in names("/proc") {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&byte| byte == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let is_agent = args
            .first()
            .is_some_and(|exe| exe.ends_with("/apns-agent") || exe.ends_with("/apns-demo"));
        let test_pins = args.iter().any(|arg| {
            arg.strip_prefix("/sys/fs/bpf/")
                .is_some_and(|name| made_by_a_dead_process(name, "apns-test-"))
        });
        if is_agent && test_pins {
            artifacts.insert(format!("process {} (pid {pid})", args.join(" ")));
        }
    }
    artifacts
}

/// Whether `name` is `<prefix><pid>-...` and process `pid` no longer runs.
fn made_by_a_dead_process(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|rest| rest.split('-').next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
}
