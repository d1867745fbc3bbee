//! What the README and `--help` say agrees with what the binary accepts: every subcommand is
//! in the README's table, every flag the table shows exists on that subcommand, and the help
//! of every value with a fixed set of labels names them all.

use apns_agent::cli::Cli;
use apns_common::{fastpath::FastPath, label::Label};
use clap::CommandFactory as _;

const README: &str = include_str!("../../README.md");

/// The first column of the README's subcommand table: its backticked spans, row by row.
fn table_rows() -> Vec<Vec<String>> {
    let section = README
        .split("## Using it on a gateway")
        .nth(1)
        .expect("the README has a \"Using it on a gateway\" section");
    section
        .lines()
        .take_while(|line| !line.starts_with("## "))
        .filter(|line| line.starts_with("| `"))
        .map(|line| {
            let first = line
                .trim_start_matches('|')
                .split(" |")
                .next()
                .unwrap_or("");
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(|span| span.replace("\\|", "|"))
                .collect()
        })
        .collect()
}

#[test]
fn the_readme_table_names_every_subcommand_with_flags_it_takes() {
    let cli = Cli::command();
    let globals: Vec<String> = cli
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect();
    let mut named = Vec::new();
    for row in table_rows() {
        let mut current = None;
        for span in row {
            let mut words = span.split_whitespace();
            let Some(first) = words.next() else { continue };
            if let Some(sub) = cli.find_subcommand(first) {
                current = Some(sub);
                named.push(first.to_owned());
            }
            let Some(sub) = current else {
                panic!("README table: {span:?} does not start with a subcommand")
            };
            for flag in span
                .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
                .filter_map(|word| word.strip_prefix("--"))
            {
                let flag = flag.split('=').next().unwrap_or(flag);
                let known = sub.get_arguments().any(|arg| arg.get_long() == Some(flag))
                    || globals.iter().any(|global| global == flag);
                assert!(
                    known,
                    "README: `{} --{flag}` is not a flag the binary takes",
                    sub.get_name()
                );
            }
        }
    }
    for sub in cli.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        assert!(
            named.iter().any(|name| name == sub.get_name()),
            "README's table does not list `{}`",
            sub.get_name()
        );
    }
    for global in ["--config", "--pin-dir"] {
        assert!(README.contains(global), "README does not mention {global}");
    }
}

#[test]
fn help_names_every_fast_path() {
    let mut cli = Cli::command();
    let run = cli.find_subcommand_mut("run").unwrap();
    let fastpath_flag = run
        .get_arguments()
        .find(|arg| arg.get_long() == Some("fastpath"))
        .expect("run --fastpath")
        .get_help()
        .expect("run --fastpath has help")
        .to_string();
    let fastpath = Cli::command()
        .find_subcommand("fastpath")
        .unwrap()
        .get_about()
        .unwrap()
        .to_string();
    for label in FastPath::ALL.iter().map(|mode| mode.as_str()) {
        assert!(
            fastpath_flag.contains(&format!("IFACE={label}")),
            "run --fastpath help lacks {label}: {fastpath_flag}"
        );
        assert!(
            fastpath.contains(label),
            "fastpath help lacks {label}: {fastpath}"
        );
    }
}
