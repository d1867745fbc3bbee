//! `apns-agent generate` (hidden, for packagers): man pages and shell completions generated
//! from the clap definitions in `cli.rs`, so `man`, tab completion and `--help` cannot
//! disagree. `cargo xtask dist` runs it from the release binary and packages what it writes.
//!
//! Its own arguments are defined and parsed here: the one hidden variant in `cli.rs` hands
//! them over raw, so this packager-only command lives in one file.

use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use clap_complete::Shell;
use clap_mangen::Man;

use crate::{
    cli::Cli, datapath::pins::DEFAULT_PIN_DIR, settings::config::DEFAULT_CONFIG, telemetry,
};

/// Section 8 (system administration commands and daemons): every verb that changes the
/// datapath needs root's capabilities, and `run` is the daemon of the systemd unit.
const SECTION: &str = "8";

/// The name the binary is installed and completed under.
const BIN: &str = "apns-agent";

#[derive(Parser, Debug)]
#[command(
    name = "apns-agent generate",
    about = "Write man pages or shell completions generated from apns-agent's command line"
)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Write apns-agent.8 and one page per subcommand (apns-agent-run.8,
    /// apns-agent-allow-add.8, ...) into DIR.
    Man { dir: PathBuf },
    /// Write SHELL's completion script into DIR: apns-agent.bash, _apns-agent (zsh),
    /// apns-agent.fish, ...
    Completions {
        #[arg(value_enum)]
        shell: Shell,
        dir: PathBuf,
    },
}

/// `apns-agent generate ARGS...`; prints each file it wrote.
pub fn generate(args: &[OsString]) -> anyhow::Result<()> {
    let argv = std::iter::once(OsString::from("apns-agent generate")).chain(args.iter().cloned());
    // Usage errors and --help end here, as clap ends them for every other subcommand.
    let args = Args::try_parse_from(argv).unwrap_or_else(|err| err.exit());
    let written = match &args.what {
        What::Man { dir } => man_pages(dir)?,
        What::Completions { shell, dir } => vec![completions(*shell, dir)?],
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The man pages of the command and of every visible subcommand, nested ones included.
fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    create_dir(dir)?;
    // `help` is a clap convenience, not a verb worth a page; build() names the subcommands
    // `apns-agent-run`, `apns-agent-allow-add`, ..., which become the pages' titles.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut written = Vec::new();
    write_pages(&cli, dir, &mut written)?;
    Ok(written)
}

fn write_pages(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let man = Man::new(cmd.clone())
        .section(SECTION)
        .manual("apns-agent manual")
        .source(format!("{BIN} {}", env!("CARGO_PKG_VERSION")))
        .date(page_date()?);
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("rendering {}", path.display()))?;
    let top = cmd.get_display_name().unwrap_or(cmd.get_name()) == BIN;
    let extra = if top {
        top_sections()
    } else {
        format!(".SH \"SEE ALSO\"\n\\fB{BIN}\\fR({SECTION})\n")
    };
    page.extend_from_slice(extra.as_bytes());
    fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}

/// The pages' date, YYYY-MM-DD: SOURCE_DATE_EPOCH when set (reproducible builds; `cargo xtask
/// dist` sets it to the commit's time), else today. Without a date, `.TH` shifts its fields.
fn page_date() -> anyhow::Result<String> {
    let time = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(epoch) => {
            let secs: u64 = epoch
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={epoch:?} is not seconds"))?;
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)
        }
        Err(_) => std::time::SystemTime::now(),
    };
    let rfc3339 = humantime::format_rfc3339_seconds(time).to_string();
    Ok(rfc3339[..10].to_owned())
}

/// What an operator looks for in the main page beyond the options: where things are, what
/// the exit codes mean, where to read on. Paths come from the same constants the code uses.
fn top_sections() -> String {
    let metrics = telemetry::DEFAULT_METRICS_ADDR;
    format!(
        r#".SH FILES
.TP
\fI{DEFAULT_CONFIG}\fR
The configuration \fBrun\fR reads (a conffile of the package). Every key is described in
\fI/usr/share/doc/apns-agent/examples/config.toml\fR; \fBcheck-config\fR validates a file
without touching the kernel.
.TP
\fI{DEFAULT_PIN_DIR}\fR
The datapath's programs, links and maps, pinned on bpffs. They outlive the agent: a stopped
or crashed agent leaves APNs classified and policed (fail-static), and the next \fBrun\fR
adopts them with their counters. \fBunload\fR removes them.
.TP
\fI/usr/share/apns-agent/\fR
Prometheus recording and alerting rules, an example scrape configuration, Grafana dashboards
(one gateway, the fleet) and nftables examples for the mark fast path.
.SH "EXIT STATUS"
0 on success, 1 on failure (the error chain is printed once, on standard error), 2 on a
usage error. \fBdoctor\fR exits 0 when every check passed, 1 with warnings only, 2 with at
least one failure; its report always ends with a summary line on standard output, which a
usage error never prints.
.SH NOTES
Metrics are served on \fIhttp://{metrics}/metrics\fR unless \fBrun --metrics-addr\fR says
otherwise. The systemd unit \fIapns-agent.service\fR runs \fBapns-agent run\fR; \fBsystemctl
reload apns-agent\fR re-reads the configuration.
Installing, upgrading and removing the package, and running a fleet of gateways:
\fI/usr/share/doc/apns-agent/operations.md\fR.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBbpftool\fR(8), \fBnft\fR(8), \fBip\fR(8)
"#
    )
}

/// One shell's completion script, named as that shell's loader expects.
fn completions(shell: Shell, dir: &Path) -> anyhow::Result<PathBuf> {
    create_dir(dir)?;
    let mut cli = without_hidden_subcommands(Cli::command());
    clap_complete::generate_to(shell, &mut cli, BIN, dir)
        .with_context(|| format!("writing {shell} completions into {}", dir.display()))
}

/// `cli` with its hidden subcommands (this one) left out: clap_complete's bash generator
/// offers hidden subcommands too, and clap has no way to remove a subcommand, so the
/// top-level command is rebuilt from its parts.
fn without_hidden_subcommands(cli: clap::Command) -> clap::Command {
    let mut rebuilt = clap::Command::new(BIN)
        .version(env!("CARGO_PKG_VERSION"))
        .args(cli.get_arguments().cloned())
        .subcommands(
            cli.get_subcommands()
                .filter(|sub| !sub.is_hide_set())
                .cloned(),
        )
        .subcommand_required(cli.is_subcommand_required_set())
        .propagate_version(cli.is_propagate_version_set());
    if let Some(about) = cli.get_about() {
        rebuilt = rebuilt.about(about.clone());
    }
    rebuilt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_page_per_visible_subcommand_and_no_hidden_one() {
        let dir = tempfile::tempdir().unwrap();
        let written = man_pages(dir.path()).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for expected in [
            "apns-agent.8",
            "apns-agent-run.8",
            "apns-agent-check-config.8",
            "apns-agent-allow-add.8",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("generate") || n.contains("help")),
            "{names:?}"
        );
        let top = fs::read_to_string(dir.path().join("apns-agent.8")).unwrap();
        assert!(top.starts_with(".ie"), "roff from clap_mangen: {top:.80}");
        assert!(
            top.contains(".SH FILES") && top.contains(DEFAULT_CONFIG),
            "{top}"
        );
        assert!(top.contains("apns\\-agent\\-run(8)"), "{top}");
    }

    #[test]
    fn completions_leave_out_the_hidden_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let path = completions(shell, dir.path()).unwrap();
            let text = fs::read_to_string(&path).unwrap();
            assert!(text.contains("check-config"), "{shell}: {}", path.display());
            assert!(!text.contains("generate"), "{shell}: {}", path.display());
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        let parse = |args: &[&str]| {
            Args::try_parse_from(std::iter::once("apns-agent generate").chain(args.iter().copied()))
        };
        assert!(parse(&["man", "/tmp/x"]).is_ok());
        assert!(parse(&["completions", "fish", "/tmp/x"]).is_ok());
        assert!(parse(&["completions", "tcsh", "/tmp/x"]).is_err());
        assert!(parse(&["pdf", "/tmp/x"]).is_err());
    }
}
