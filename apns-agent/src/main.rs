//! The `apns-agent` binary: parse the command line, dispatch, print the error chain once.
//! Exit codes: 0 success, 1 failure, 2 usage error (clap).

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use apns_agent::{
    cli::{Cli, Command, RunArgs},
    cmd,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
    .to_owned();
    // The datapath's records (run --ebpf-log) carry the eBPF crate's module paths: show them
    // at the level asked for, whatever the agent's own level.
    if let Command::Run(RunArgs { ebpf_log, .. }) = &cli.command {
        if let Some(level) = ebpf_log.filter_directive() {
            filter.push_str(&format!(",apns_ebpf={level}"));
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    match cmd::dispatch(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("apns-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}
