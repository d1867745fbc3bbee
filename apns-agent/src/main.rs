//! The `apns-agent` binary: parse the command line, dispatch, print the error chain once.
//! Exit codes: 0 success, 1 failure, 2 usage error (`doctor` has its own: 0 ok, 1 warnings,
//! 2 failures; see `preflight::exit`); a command whose reader goes away (a
//! closed stdout: `stats --json | head`) ends quietly, killed by SIGPIPE as command-line
//! tools are.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::{error::ErrorKind, Parser as _};
use tracing_subscriber::EnvFilter;

use apns_agent::{
    cli::{Cli, Command, RunArgs},
    cmd,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    if !matches!(cli.command, Command::Run(_)) {
        restore_sigpipe();
    }
    init_logging(&cli);
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("apns-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap prints them; a usage error is one line on stderr,
/// with where to look, and exit code 2.
fn usage_error(err: clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ");
    eprintln!("apns-agent: {first} (see `apns-agent --help`)");
    ExitCode::from(2)
}

/// Rust ignores SIGPIPE, so a write to a closed pipe is an error `println!` panics on. A
/// command that prints for a reader should instead end when its reader goes away, as `ls` or
/// `cat` do. `run` keeps ignoring it: its sockets and log must never kill the agent.
fn restore_sigpipe() {
    // SAFETY: setting a signal's disposition to its default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs to stderr; colours only on a terminal, and never with NO_COLOR set (no-color.org).
fn init_logging(cli: &Cli) {
    let mut filter = match cli.global.verbose {
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
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter)),
        )
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}
