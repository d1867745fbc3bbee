//! `cargo xtask`: the project's driver for setting up a machine, building and testing.
//!
//! `main` only parses the command line and dispatches; each subcommand lives in its own module
//! (`setup.rs`, `build.rs`, `dist.rs`, `test.rs`, `deny.rs`, `fuzz.rs`, `demo.rs`, `bench.rs`,
//! `vm.rs`) with an `Args`
//! struct (if it takes any) and a `run` function. Shared helpers (progress lines, running
//! commands, PATH) are in `util.rs`; `bystander.rs` is the agent `test` runs beside the suite;
//! `vm.rs` also owns the guest kernels and the kernel matrix `test` runs.
//!
//! Adding a subcommand: write `src/<name>.rs` with
//! `pub struct Args` (derive `clap::Args`) and `pub fn run(args: &Args) -> anyhow::Result<()>`,
//! add `mod <name>;` below and a variant to `Command`, and call `setup::run()` first if it
//! needs the installed tools.

mod bench;
mod build;
mod bystander;
mod demo;
mod deny;
mod dist;
mod fuzz;
mod setup;
mod test;
mod util;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build and test apns-agent"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the build and the tests need: rust-src for nightly, bpf-linker 0.13.0
    /// built against nightly's LLVM, cargo-deb, cargo-deny, cargo-fuzz, the Debian packages,
    /// virtme-ng and the guest kernels (Debian's 5.10, 6.1 and 6.12, in target/kernels/).
    /// Idempotent.
    Setup,
    /// Run setup, then build the agent in release mode (`cargo build --release -p apns-agent`).
    Build,
    /// Run setup, then build the Debian package target/dist/apns-agent_<version>_<arch>.deb
    /// (agent, unit, conffile, man pages, completions, rules, dashboards; cargo-deb).
    Dist,
    /// Run setup, then the supply-chain checks (`deny`), every test (`cargo test --workspace
    /// --exclude apns-ebpf`, with APNS_TESTS_NO_SKIP=1: a root-only test that cannot run
    /// fails, never skips), each fuzz target for 12 s, then the benchmark smoke run
    /// (`bench --quick`), all beside a bystander agent the tests did not
    /// start, then build the .deb and install, use and purge it and run the Ansible role on
    /// this machine (APNS_AGENT_PACKAGE_TESTS=skip skips that), then check nothing was left
    /// behind; then the kernel matrix: the tests of xtask/src/vm.rs's GUEST_TESTS in a QEMU
    /// guest of each Debian kernel (`--kernel` picks: host, 5.10, 6.1, 6.12). Needs root.
    Test(test::Args),
    /// Run setup, then the supply-chain checks `test` runs first: `cargo deny check` of
    /// licences, bans and sources (deny.toml), and of advisories when a copy of the RustSec
    /// advisory database is at hand (APNS_ADVISORY_DB: a git clone of it).
    Deny,
    /// Run setup, then the fuzz targets of fuzz/ (cargo-fuzz, libFuzzer, the nightly's
    /// AddressSanitizer) on the parsers of untrusted input: captures, the config and list
    /// files, the web config, prefixes; each for --secs seconds. A crash fails the run and
    /// leaves its input in fuzz/artifacts/<target>/.
    Fuzz(fuzz::Args),
    /// Run setup, then the demo: a gateway in network namespaces with apns-agent on it, in
    /// order: doctor, traffic, a live policy change, the fast path passing a filter that
    /// blocks 5223, two devices' findings in `clients`, the counters, /metrics, and a
    /// replay of a capture of the run. Needs root.
    Demo,
    /// Run setup, then the benchmarks (per-packet cost, allow-list scaling, forwarding, control
    /// plane) against a floor, xdp-filter and nftables; writes report.md and report.json into
    /// target/bench/. Needs root.
    Bench(bench::Args),
    /// Run setup, then boot a Debian kernel in a QEMU guest (virtme-ng, TCG, the host's root
    /// read-only) and run a command, a script or a host-built test binary in it as root,
    /// printing its output: `cargo xtask vm --kernel 6.1 -- uname -r`,
    /// `cargo xtask vm --kernel 5.10 --test object -- --nocapture`.
    Vm(vm::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Setup => setup::all(),
        Command::Build => build::run(),
        Command::Dist => dist::run(),
        Command::Test(args) => test::run(args),
        Command::Deny => deny::run(),
        Command::Fuzz(args) => fuzz::run(args),
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(args),
        Command::Vm(args) => vm::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
