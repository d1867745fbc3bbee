//! The `apns-agent` binary: parse the command line, dispatch, print the error chain once.
//! Exit codes: 0 success, 1 failure, 2 usage error (clap).

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use apns_agent::{cli::Cli, cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
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
