//! The operator packaging in `packaging/` agrees with the agent it packages:
//!
//! - the systemd unit starts `run` with flags the CLI accepts, grants exactly the capabilities
//!   `run` checks for, keeps bpffs writable under its hardening, and passes
//!   `systemd-analyze verify`;
//! - the Prometheus rules pass `promtool check rules` and their unit tests
//!   (`promtool test rules`), and every alert is shown firing and staying silent;
//! - the Grafana dashboard's queries are valid PromQL;
//! - rules and dashboard use only metrics and labels the agent exports. Those are taken from
//!   the one table of metric families, `telemetry::families` (`metric_families.rs` checks
//!   that the exposition writes exactly its families), so the checks follow the code.
//!
//! promtool is installed wherever tests run (`cargo xtask setup`): a missing one fails.
//! systemd-analyze is used when present; without it the unit is checked by parsing only, and
//! the test says so.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use apns_agent::{
    cli::{Cli, Command as CliCommand},
    datapath::pins::{BPFFS_ROOT, DEFAULT_PIN_DIR},
    privileges,
    settings::config::{Config, DEFAULT_CONFIG},
    telemetry::{
        families::{self, Kind},
        metrics::ALL_INTERFACES,
        DEFAULT_METRICS_ADDR,
    },
};
use clap::Parser as _;

const UNIT: &str = "apns-agent.service";
const RULES: &str = "prometheus/apns-agent.rules.yml";
const RULE_TESTS: &str = "prometheus/apns-agent.rules.test.yml";
const DASHBOARD: &str = "grafana/apns-agent.json";
const README: &str = "README.md";

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .canonicalize()
        .expect("packaging/ exists next to apns-agent/")
}

fn read(relative: &str) -> String {
    let path = packaging().join(relative);
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// What the agent exports

/// The series a histogram `h` exports besides none under its own name.
const HISTOGRAM_SERIES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// The family a series belongs to: a histogram's `_bucket`, `_sum` and `_count` are its
/// family's; every other series is its own.
fn family_of<'a>(exported: &BTreeMap<String, BTreeSet<String>>, name: &'a str) -> &'a str {
    HISTOGRAM_SERIES
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .filter(|family| exported.contains_key(*family))
        .unwrap_or(name)
}

/// Every series the agent exports, with its label names: the families of the one table,
/// `telemetry::families::ALL` (`metric_families.rs` holds the exposition to it), and a
/// histogram's `_bucket` (with `le`), `_sum` and `_count` series.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let mut series = BTreeMap::new();
    for family in families::ALL {
        let labels: BTreeSet<String> = family.labels.iter().map(|&l| l.to_owned()).collect();
        if family.kind == Kind::Histogram {
            for suffix in HISTOGRAM_SERIES {
                let mut labels = labels.clone();
                if suffix == "_bucket" {
                    labels.insert("le".to_owned());
                }
                series.insert(format!("{}{suffix}", family.name), labels);
            }
        }
        series.insert(family.name.to_owned(), labels);
    }
    series
}

// ---------------------------------------------------------------------------------------------
// A small PromQL scanner: enough to find metric names, label matchers, grouping labels and
// legend placeholders. Not a parser: promtool checks the syntax.

#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug)]
struct MetricRef {
    name: String,
    matchers: Vec<Matcher>,
}

#[derive(Debug, Default)]
struct Scan {
    /// `apns_*` metrics and, in PromQL, recording-rule names (`level:metric:operations`).
    metrics: Vec<MetricRef>,
    /// Labels of `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`.
    grouping: Vec<String>,
    /// The labels of the first `by (...)`: the outermost aggregation's when the expression
    /// starts with one.
    first_by: Option<Vec<String>>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Skips a quoted string starting at `chars[i]`; returns the index after it and its contents.
fn quoted(chars: &[char], i: usize) -> (usize, String) {
    let quote = chars[i];
    let mut j = i + 1;
    let mut value = String::new();
    while j < chars.len() && chars[j] != quote {
        if chars[j] == '\\' && quote != '`' && j + 1 < chars.len() {
            j += 1;
        }
        value.push(chars[j]);
        j += 1;
    }
    (j + 1, value)
}

/// Label matchers inside `{...}` (without the braces).
fn parse_matchers(inner: &str) -> Vec<Matcher> {
    let chars: Vec<char> = inner.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() || chars[i] == ',' {
            i += 1;
            continue;
        }
        assert!(is_ident_start(chars[i]), "bad label matcher in {{{inner}}}");
        let start = i;
        while i < chars.len() && is_ident(chars[i]) {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let op_start = i;
        while i < chars.len() && "=!~".contains(chars[i]) {
            i += 1;
        }
        let op: String = chars[op_start..i].iter().collect();
        assert!(
            ["=", "!=", "=~", "!~"].contains(&op.as_str()),
            "bad operator {op:?} in {{{inner}}}"
        );
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        assert!(
            i < chars.len() && "\"'`".contains(chars[i]),
            "unquoted value in {{{inner}}}"
        );
        let (next, value) = quoted(&chars, i);
        i = next;
        out.push(Matcher { label, op, value });
    }
    out
}

/// Finds `apns_*` metric references (with their matchers) and grouping labels in `text`.
/// `code`: `text` is PromQL, whose strings are skipped; otherwise `text` is a whole file
/// (YAML), scanned everywhere, strings included, for metric references only.
fn scan(text: &str, code: bool) -> Scan {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Scan::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if code && "\"'`".contains(c) {
            i = quoted(&chars, i).0;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (is_ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let opens = |open: char| j < chars.len() && chars[j] == open;
            // ("apns_*" in prose is a family of names, not a metric.)
            let recorded = code && word.contains(':');
            if (word.starts_with("apns_") && word != "apns_") || recorded {
                let mut matchers = Vec::new();
                if opens('{') {
                    let close = (j..chars.len())
                        .find(|&k| chars[k] == '}')
                        .unwrap_or_else(|| panic!("unclosed selector of {word} in {text}"));
                    let inner: String = chars[j + 1..close].iter().collect();
                    matchers = parse_matchers(&inner);
                    i = close + 1;
                }
                out.metrics.push(MetricRef {
                    name: word,
                    matchers,
                });
            } else if code
                && ["by", "without", "on", "ignoring"].contains(&word.as_str())
                && opens('(')
            {
                let close = (j..chars.len())
                    .find(|&k| chars[k] == ')')
                    .unwrap_or_else(|| panic!("unclosed {word} ( in {text}"));
                let inner: String = chars[j + 1..close].iter().collect();
                let labels: Vec<String> = inner
                    .split(',')
                    .map(str::trim)
                    .filter(|label| !label.is_empty())
                    .map(str::to_owned)
                    .collect();
                if word == "by" && out.first_by.is_none() {
                    out.first_by = Some(labels.clone());
                }
                out.grouping.extend(labels);
                i = close + 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Checks every metric reference of `scan` against the exposition: the metric exists, its
/// matchers name its labels, and the gateway-wide reachability ratio is selected by its one
/// interface value. Returns the labels the referenced metrics can have.
fn check_refs(
    exported: &BTreeMap<String, BTreeSet<String>>,
    scan: &Scan,
    context: &str,
) -> BTreeSet<String> {
    check_refs_with(exported, scan, context, &TARGET_LABELS)
}

/// [`check_refs`] where the series carry `target_labels` from Prometheus besides their own
/// (the fleet's `site`), and `exported` may hold recording rules' names and labels too.
fn check_refs_with(
    exported: &BTreeMap<String, BTreeSet<String>>,
    scan: &Scan,
    context: &str,
    target_labels: &[&str],
) -> BTreeSet<String> {
    let mut available: BTreeSet<String> = target_labels.iter().map(|l| l.to_string()).collect();
    for metric in &scan.metrics {
        let labels = exported.get(&metric.name).unwrap_or_else(|| {
            panic!(
                "{context}: {} is not a metric the agent exports ({:?})",
                metric.name,
                exported.keys().collect::<Vec<_>>()
            )
        });
        for matcher in &metric.matchers {
            assert!(
                labels.contains(&matcher.label) || target_labels.contains(&matcher.label.as_str()),
                "{context}: {} has no label {:?} (it has {labels:?})",
                metric.name,
                matcher.label
            );
            if metric.name == "apns_reachability_ratio" && matcher.label == "interface" {
                assert_eq!(
                    (matcher.op.as_str(), matcher.value.as_str()),
                    ("=", ALL_INTERFACES),
                    "{context}: the reachability ratio only exists for interface=\"{ALL_INTERFACES}\""
                );
            }
        }
        available.extend(labels.iter().cloned());
    }
    for label in &scan.grouping {
        assert!(
            available.contains(label),
            "{context}: groups by {label:?}, which none of its metrics has ({available:?})"
        );
    }
    available
}

/// Labels named by `{{label}}` placeholders of a Grafana legend.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| part.split_once("}}"))
        .map(|(label, _)| label.trim().to_owned())
        .collect()
}

/// Whether `metric` is selected with `label =~ "variable"` (a dashboard variable).
fn filtered_by(metric: &MetricRef, label: &str, variable: &str) -> bool {
    metric
        .matchers
        .iter()
        .any(|m| m.label == label && m.op == "=~" && m.value == variable)
}

/// Every expression parses as PromQL: each becomes a recording rule, and `promtool check
/// rules` reads them all.
fn assert_promql_parses(exprs: &[String]) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("dashboard.rules.yml"), &rules).unwrap();
    let checked = promtool(&["check", "rules", "dashboard.rules.yml"], dir.path());
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
}

/// A legend can name only labels the query's result keeps: the grouping labels of its
/// aggregation, or, without one, every label `available` on the series it reads.
fn check_legend(scan: &Scan, available: BTreeSet<String>, legend: &str, context: &str) {
    let result_labels: BTreeSet<String> = if scan.grouping.is_empty() {
        available
    } else {
        scan.grouping.iter().cloned().collect()
    };
    for label in legend_labels(legend) {
        assert!(
            result_labels.contains(&label),
            "{context}: legend {{{{{label}}}}} is not a label of the result ({result_labels:?})"
        );
    }
}

#[test]
fn the_scanner_finds_names_labels_and_grouping() {
    let scan = scan(
        r#"sum by (port, direction) (rate(apns_packets_total{instance=~"$i", interface!="x"}[5m])) / on(port) apns_reachability_ratio{interface="all"} and up{job="apns_fake"}"#,
        true,
    );
    let names: Vec<&str> = scan.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["apns_packets_total", "apns_reachability_ratio"],
        "{scan:?}"
    );
    let labels: Vec<&str> = scan.metrics[0]
        .matchers
        .iter()
        .map(|m| m.label.as_str())
        .collect();
    assert_eq!(labels, ["instance", "interface"]);
    assert_eq!(scan.grouping, ["port", "direction", "port"]);
    assert_eq!(
        legend_labels("{{port}} {{ direction }}"),
        ["port", "direction"]
    );
}

// ---------------------------------------------------------------------------------------------
// promtool

/// Runs promtool in `dir`; fails the test if it is missing or refuses.
fn promtool(args: &[&str], dir: &Path) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs (installed by `cargo xtask setup`: Debian's prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {}: {}\n{text}",
        args.join(" "),
        output.status
    );
    println!("promtool {}:\n{text}", args.join(" "));
    text
}

// ---------------------------------------------------------------------------------------------
// systemd unit

/// A unit file as (section, key, value) in file order; continuation lines joined.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        let line = format!("{pending}{line}");
        pending.clear();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{UNIT}: not a key=value line: {line:?}"));
        assert!(!section.is_empty(), "{UNIT}: {key} outside a section");
        entries.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    entries
}

struct Unit(Vec<(String, String, String)>);

impl Unit {
    /// The one value of a single-valued key.
    fn one(&self, section: &str, key: &str) -> &str {
        let values: Vec<&str> = self
            .0
            .iter()
            .filter(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect();
        assert_eq!(
            values.len(),
            1,
            "{UNIT}: [{section}] {key}= should be set once: {values:?}"
        );
        values[0]
    }

    /// A list-valued key: the union of its assignments, an empty one resetting the list.
    fn list(&self, section: &str, key: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (_, _, value) in self.0.iter().filter(|(s, k, _)| s == section && k == key) {
            if value.is_empty() {
                out.clear();
            }
            out.extend(value.split_whitespace().map(str::to_owned));
        }
        out
    }
}

#[test]
fn systemd_unit() {
    let text = read(UNIT);
    let unit = Unit(parse_unit(&text));
    let mut checked = Vec::new();

    // ExecStart: the installed binary, `run` with the default config path, flags the CLI takes.
    let exec_start = unit.one("Service", "ExecStart");
    let mut words = exec_start.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/apns-agent"));
    let args: Vec<&str> = words.collect();
    let cli = Cli::try_parse_from(std::iter::once("apns-agent").chain(args.iter().copied()))
        .unwrap_or_else(|err| panic!("{UNIT}: ExecStart's flags: {err}"));
    let CliCommand::Run(run) = cli.command else {
        panic!("{UNIT}: ExecStart does not `run`: {exec_start}")
    };
    assert_eq!(
        cli.global.config.as_deref(),
        Some(Path::new(DEFAULT_CONFIG))
    );
    assert!(
        !run.detach_on_exit,
        "fail-static: the datapath stays attached on exit"
    );
    checked.push(format!(
        "ExecStart parses as `run` with --config {DEFAULT_CONFIG}, metrics on {}",
        run.metrics_addr
    ));

    // Readiness is the notify protocol (apns_agent::readiness), not a guess.
    let type_ = unit.one("Service", "Type");
    assert_eq!(type_, "notify", "Type={type_}");
    for (key, expected) in [
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("StateDirectory", "apns-agent"),
        ("RuntimeDirectory", "apns-agent"),
        ("KillSignal", "SIGTERM"),
        ("Restart", "on-failure"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(unit.one("Service", key), expected, "{UNIT}: {key}=");
    }
    checked.push(format!(
        "Type={type_}, ExecReload, KillSignal, Restart and hardening keys"
    ));
    // Comments the operator needs: why the datapath outlives the process.
    assert!(text.contains("Fail-static"), "{UNIT}: explain fail-static");

    // Capabilities: exactly those `run` requires (privileges::CHANGE), nothing more.
    let needed: BTreeSet<String> = privileges::CHANGE.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        needed,
        ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
            .map(str::to_owned)
            .into()
    );
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(unit.list("Service", key), needed, "{UNIT}: {key}=");
    }
    checked.push(format!("capabilities = privileges::CHANGE = {needed:?}"));

    // bpffs stays writable under ProtectSystem=strict/ProtectKernelTunables, for the default
    // pin directory and the shipped config's.
    let writable = unit.list("Service", "ReadWritePaths");
    assert!(
        writable.contains(BPFFS_ROOT),
        "{UNIT}: ReadWritePaths={BPFFS_ROOT}"
    );
    let config = Config::load(&packaging().join("config.toml")).expect("config.toml loads");
    for pin_dir in [DEFAULT_PIN_DIR, config.pin_dir.as_str()] {
        assert!(
            writable
                .iter()
                .any(|dir| Path::new(pin_dir).starts_with(dir)),
            "{UNIT}: pin directory {pin_dir} is not under ReadWritePaths={writable:?}"
        );
    }
    assert_eq!(
        unit.list("Service", "RestrictAddressFamilies"),
        ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
            .map(str::to_owned)
            .into()
    );
    checked.push(format!(
        "ReadWritePaths={writable:?} covers {DEFAULT_PIN_DIR} and config.toml's pin_dir; RestrictAddressFamilies"
    ));

    // systemd's own check, with ExecStart pointing at the binary this test was built with
    // (verify refuses an ExecStart that does not exist).
    let agent = env!("CARGO_BIN_EXE_apns-agent");
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(version) if version.status.success() => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(UNIT);
            let local = text.replace(
                "ExecStart=/usr/bin/apns-agent ",
                &format!("ExecStart=\"{agent}\" "),
            );
            assert_ne!(local, text, "ExecStart was not redirected");
            fs::write(&path, local).unwrap();
            let output = Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&path)
                .output()
                .expect("systemd-analyze runs");
            let report = output_text(&output);
            // verify exits 0 on unknown keys and bad values ("..., ignoring"): every message
            // about this unit counts. Messages about other units of the host do not.
            let ours: Vec<&str> = report.lines().filter(|l| l.contains(UNIT)).collect();
            assert!(
                output.status.success() && ours.is_empty(),
                "systemd-analyze verify {}: {}\n{report}",
                path.display(),
                output.status
            );
            let first_line = String::from_utf8_lossy(&version.stdout);
            checked.push(format!(
                "`systemd-analyze verify --man=no` is clean ({})",
                first_line.lines().next().unwrap_or("").trim()
            ));
            // The exposure score, for information (it varies with systemd's version).
            if let Ok(security) = Command::new("systemd-analyze")
                .args(["security", "--offline=yes"])
                .arg(&path)
                .output()
            {
                if let Some(line) = output_text(&security)
                    .lines()
                    .find(|l| l.contains("Overall exposure level"))
                {
                    checked.push(format!("systemd-analyze security: {}", line.trim()));
                }
            }
        }
        _ => checked.push(
            "systemd-analyze NOT FOUND: the unit was checked by parsing only, not verified by systemd"
                .to_owned(),
        ),
    }
    println!("{UNIT}:\n  {}", checked.join("\n  "));
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// Prometheus rules

/// (alert name, the rule's lines) for every alerting rule of the rules file.
fn alert_rules(text: &str) -> Vec<(String, String)> {
    let mut rules: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert:") {
            rules.push((name.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = rules.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    rules
}

/// The value of `key:` in a rule's lines.
fn rule_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|line| line.trim_start().strip_prefix(&format!("{key}:")))
        .map(str::trim)
}

#[test]
fn prometheus_rules_pass_promtool() {
    let dir = packaging().join("prometheus");
    let rules = Path::new(RULES).file_name().unwrap().to_str().unwrap();
    let tests = Path::new(RULE_TESTS).file_name().unwrap().to_str().unwrap();
    let checked = promtool(&["check", "rules", rules], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", tests], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn prometheus_rules_use_the_exported_metrics() {
    let exported = exported();
    let text = read(RULES);
    let rules = alert_rules(&text);
    let names: BTreeSet<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    for required in [
        "ApnsUnreachable",
        "ApnsPolicyDropsRising",
        "ApnsDatapathDetached",
        "ApnsAgentDown",
        "ApnsCountersLost",
    ] {
        assert!(names.contains(required), "{RULES}: no {required} alert");
    }

    let mut used = BTreeSet::new();
    for (name, body) in &rules {
        check_alert_fields(RULES, name, body);
        let expr = rule_field(body, "expr")
            .unwrap_or_else(|| panic!("{RULES}: {name} has no (one-line) expr"));
        let scan = scan(expr, true);
        check_refs(&exported, &scan, &format!("{RULES}: {name}"));
        used.extend(scan.metrics.into_iter().map(|m| m.name));
    }
    assert!(
        rules
            .iter()
            .any(|(_, body)| rule_field(body, "expr") == Some("absent(apns_agent_info)")),
        "{RULES}: an alert for the agent being down: absent(apns_agent_info)"
    );

    // Everything else in both files that looks like a metric (descriptions, test series).
    for file in [RULES, RULE_TESTS] {
        let scan = scan(&read(file), false);
        check_refs(&exported, &scan, file);
    }

    // Every alert is shown firing and staying silent by the unit tests.
    assert_alerts_tested(&names, RULE_TESTS);
    println!(
        "{RULES}: alerts {names:?} with severity, summary and description; metrics used {used:?}, \
         all exported with the labels used; {RULE_TESTS} tests each alert firing and silent"
    );
}

/// Asserts that the unit tests in `tests_file` show every alert of `names` both firing
/// (`exp_alerts` with entries) and staying silent (`exp_alerts: []`).
fn assert_alerts_tested(names: &BTreeSet<&str>, tests_file: &str) {
    let tests = read(tests_file);
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut outcomes: BTreeMap<&str, BTreeSet<bool>> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(alert) = line.strip_prefix("alertname:") {
            let expected = lines[i + 1..]
                .iter()
                .find_map(|l| l.strip_prefix("exp_alerts:"))
                .unwrap_or_else(|| panic!("{tests_file}: no exp_alerts after line {}", i + 1))
                .trim();
            outcomes
                .entry(alert.trim())
                .or_default()
                .insert(expected != "[]");
        }
    }
    for name in names {
        assert_eq!(
            outcomes.get(name),
            Some(&BTreeSet::from([false, true])),
            "{tests_file}: {name} should be tested both firing and silent"
        );
    }
}

/// Checks an alerting rule's labels and annotations: a known severity, a summary and a
/// description.
fn check_alert_fields(file: &str, name: &str, body: &str) {
    let severity = rule_field(body, "severity")
        .unwrap_or_else(|| panic!("{file}: {name} has no severity label"));
    assert!(
        ["critical", "warning", "info"].contains(&severity),
        "{file}: {name}: severity {severity}"
    );
    for annotation in ["summary", "description"] {
        assert!(
            rule_field(body, annotation).is_some_and(|v| !v.is_empty()),
            "{file}: {name} has no {annotation}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The fleet: site and fleet rules, the example scrape configuration, the fleet dashboard

const FLEET_RULES: &str = "prometheus/apns-fleet.rules.yml";
const FLEET_RULE_TESTS: &str = "prometheus/apns-fleet.rules.test.yml";
const SCRAPE_CONFIG: &str = "prometheus/prometheus.example.yml";
const SCRAPE_TARGETS: &str = "prometheus/targets.example.yml";
const FLEET_DASHBOARD: &str = "grafana/apns-fleet.json";

/// Labels Prometheus gives a fleet's series: the scrape target's, and the site from the
/// target group (file_sd) or a site Prometheus' external labels.
const FLEET_LABELS: [&str; 3] = ["instance", "job", "site"];

/// (record name, one-line expr) of every recording rule of a rules file, in file order.
fn recording_rules(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut rules = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.strip_prefix("- record:") {
            let expr = lines.get(i + 1).and_then(|l| l.strip_prefix("expr:"));
            let expr =
                expr.unwrap_or_else(|| panic!("{name}: expr: must follow record: on one line"));
            rules.push((name.trim().to_owned(), expr.trim().to_owned()));
        }
    }
    rules
}

/// Whether `expr` is an aggregation at its top (`sum by (...) (...)`, `count(...)`), whose
/// result has exactly its `by` labels.
fn is_aggregation(expr: &str) -> bool {
    ["sum", "count", "min", "max", "avg"].iter().any(|op| {
        expr.strip_prefix(op)
            .is_some_and(|rest| rest.starts_with('(') || rest.trim_start().starts_with("by "))
    })
}

/// What the fleet rules and dashboard can read: every metric the agent exports, and every
/// recording rule of the fleet rules with the labels of its result. Building it checks each
/// rule against what it reads: metrics and records that exist, labels they have.
fn fleet_series() -> BTreeMap<String, BTreeSet<String>> {
    let mut series = exported();
    for (name, expr) in recording_rules(&read(FLEET_RULES)) {
        assert!(
            name.contains(":apns_"),
            "{FLEET_RULES}: {name} is not named level:apns_metric:operations"
        );
        let context = format!("{FLEET_RULES}: {name}");
        let scan = scan(&expr, true);
        check_refs_with(&series, &scan, &context, &FLEET_LABELS);
        let labels: BTreeSet<String> = if is_aggregation(&expr) {
            scan.first_by
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect()
        } else {
            // A binary operation or filter keeps the labels of what it reads.
            scan.metrics
                .iter()
                .flat_map(|m| series[&m.name].iter().cloned())
                .collect()
        };
        assert!(
            series.insert(name.clone(), labels).is_none(),
            "{context}: recorded twice"
        );
    }
    series
}

#[test]
fn prometheus_fleet_rules_pass_promtool() {
    let dir = packaging().join("prometheus");
    let file = |path: &'static str| Path::new(path).file_name().unwrap().to_str().unwrap();
    let checked = promtool(&["check", "rules", file(FLEET_RULES)], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", file(FLEET_RULE_TESTS)], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn prometheus_fleet_rules_roll_up_the_exported_metrics() {
    let series = fleet_series();
    let text = read(FLEET_RULES);
    let recorded: BTreeSet<String> = recording_rules(&text).into_iter().map(|(n, _)| n).collect();
    for required in [
        "site:apns_reachability:ratio5m",
        "fleet:apns_reachability:ratio5m",
        "site:apns_policy_drops:rate5m",
        "site:apns_gateways_detached:count",
        "fleet:apns_gateways_detached:count",
    ] {
        assert!(recorded.contains(required), "{FLEET_RULES}: no {required}");
    }
    // Site roll-ups keep the site and drop the gateway; fleet roll-ups drop both.
    for (name, labels) in series.iter().filter(|(n, _)| recorded.contains(*n)) {
        let has = |label: &str| labels.contains(label);
        match name.split(':').next() {
            Some("instance") => assert!(has("site") && has("instance"), "{name}: {labels:?}"),
            Some("site") => assert!(has("site") && !has("instance"), "{name}: {labels:?}"),
            Some("fleet") => assert!(!has("site") && !has("instance"), "{name}: {labels:?}"),
            level => panic!("{FLEET_RULES}: {name}: unknown level {level:?}"),
        }
    }

    let rules = alert_rules(&text);
    let names: BTreeSet<&str> = rules.iter().map(|(name, _)| name.as_str()).collect();
    for required in [
        "ApnsSiteUnreachable",
        "ApnsFleetUnreachable",
        "ApnsSitePolicyDropsRising",
        "ApnsSiteDatapathDetached",
    ] {
        assert!(
            names.contains(required),
            "{FLEET_RULES}: no {required} alert"
        );
    }
    for (name, body) in &rules {
        check_alert_fields(FLEET_RULES, name, body);
        let expr = rule_field(body, "expr")
            .unwrap_or_else(|| panic!("{FLEET_RULES}: {name} has no (one-line) expr"));
        check_refs_with(
            &series,
            &scan(expr, true),
            &format!("{FLEET_RULES}: {name}"),
            &FLEET_LABELS,
        );
    }
    assert_alerts_tested(&names, FLEET_RULE_TESTS);

    // The unit tests' series are the agent's metrics with their labels, on at least three
    // gateways of at least two sites, and their expressions read recorded series.
    let tests = read(FLEET_RULE_TESTS);
    check_refs_with(
        &series,
        &scan(&tests, false),
        FLEET_RULE_TESTS,
        &FLEET_LABELS,
    );
    let values = |label: &str| -> BTreeSet<String> {
        tests
            .split(&format!("{label}=\""))
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    let (gateways, sites) = (values("instance"), values("site"));
    assert!(
        gateways.len() >= 3 && sites.len() >= 2,
        "{FLEET_RULE_TESTS}: gateways {gateways:?} on sites {sites:?}"
    );
    for line in tests.lines().map(str::trim) {
        if let Some(expr) = line.strip_prefix("- expr:") {
            check_refs_with(&series, &scan(expr, true), FLEET_RULE_TESTS, &FLEET_LABELS);
        }
    }
    println!(
        "{FLEET_RULES}: {} recording rules over exported metrics, alerts {names:?} tested firing \
         and silent on gateways {gateways:?} of sites {sites:?}",
        recorded.len()
    );
}

#[test]
fn prometheus_example_scrape_config_discovers_sites() {
    let dir = packaging().join("prometheus");
    let config = Path::new(SCRAPE_CONFIG)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let checked = promtool(&["check", "config", config], &dir);
    assert!(checked.contains("SUCCESS: 2 rule files found"), "{checked}");

    // Service discovery as Prometheus runs it, on the example targets and a group without a
    // site, with the config's file_sd pointed at them.
    let text = read(SCRAPE_CONFIG);
    let sd_glob = "/etc/prometheus/apns-agent/*.yml";
    assert!(
        text.contains(sd_glob),
        "{SCRAPE_CONFIG}: file_sd reads {sd_glob}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let targets = tmp.path().join("targets");
    fs::create_dir(&targets).unwrap();
    fs::write(targets.join("example.yml"), read(SCRAPE_TARGETS)).unwrap();
    fs::write(
        targets.join("nosite.yml"),
        "- targets: ['gw-x.example.net:15223']\n",
    )
    .unwrap();
    for rules in [RULES, FLEET_RULES] {
        let name = Path::new(rules).file_name().unwrap();
        fs::write(tmp.path().join(name), read(rules)).unwrap();
    }
    let local = text.replace(sd_glob, &format!("{}/*.yml", targets.display()));
    fs::write(tmp.path().join(config), local).unwrap();
    // File discovery answers at once; promtool otherwise waits 30 s for more.
    let discovered = promtool(
        &[
            "check",
            "service-discovery",
            "--timeout=2s",
            config,
            "apns-agent",
        ],
        tmp.path(),
    );
    let start = discovered.find('[').expect("a JSON list of targets");
    // promtool's log lines follow the JSON (they share the output here).
    let list: serde_json::Value = serde_json::Deserializer::from_str(&discovered[start..])
        .into_iter()
        .next()
        .expect("a JSON value")
        .expect("JSON");
    let mut sites = BTreeMap::new();
    for target in list.as_array().unwrap() {
        let labels = &target["labels"];
        assert_eq!(labels["job"], "apns-agent", "{target}");
        sites.insert(
            labels["instance"].as_str().unwrap().to_owned(),
            labels["site"].as_str().unwrap_or_default().to_owned(),
        );
    }
    let expected: BTreeMap<String, String> = [
        ("gw-p1.example.net:15223", "paris"),
        ("gw-p2.example.net:15223", "paris"),
        ("gw-l1.example.net:15223", "lyon"),
        ("gw-x.example.net:15223", "unassigned"),
    ]
    .into_iter()
    .map(|(instance, site)| (instance.to_owned(), site.to_owned()))
    .collect();
    assert_eq!(sites, expected, "{discovered}");
    println!("{SCRAPE_CONFIG}: valid; file_sd of {SCRAPE_TARGETS} gives {sites:?}");
}

#[test]
fn grafana_fleet_dashboard_reads_the_fleet_rules() {
    let series = fleet_series();
    let text = read(FLEET_DASHBOARD);
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["id"].is_null() && dashboard["uid"] == "apns-fleet");
    for object in objects(&dashboard) {
        if let Some(ds) = object.get("datasource").and_then(|d| d.as_object()) {
            if ds.get("type").and_then(|t| t.as_str()) == Some("prometheus") {
                assert_eq!(ds["uid"], "${datasource}", "{FLEET_DASHBOARD}: data source");
            }
        }
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = variables
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["datasource", "site", "gateway"],
        "{FLEET_DASHBOARD}"
    );
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        let definition = variable["definition"].as_str().unwrap();
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{FLEET_DASHBOARD}: variable query {definition}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let available = check_refs_with(&series, &scan(selector, true), definition, &FLEET_LABELS);
        assert!(
            available.contains(label.trim()),
            "{definition}: no label {label}"
        );
    }

    let queries = dashboard_queries(&dashboard);
    let mut expanded_queries = Vec::new();
    for (title, expr, legend) in &queries {
        let context = format!("{FLEET_DASHBOARD}: {title}: {expr}");
        let scan = scan(expr, true);
        assert!(
            !scan.metrics.is_empty() || expr.contains("up{job=\"apns-agent\""),
            "{context}: reads nothing of apns-agent's"
        );
        let available = check_refs_with(&series, &scan, &context, &FLEET_LABELS);
        check_legend(&scan, available, legend, &context);
        // Every series is filtered by the site selector; gateway series by the gateway too.
        for metric in &scan.metrics {
            let filtered = |label: &str, variable: &str| filtered_by(metric, label, variable);
            assert!(
                filtered("site", "$site"),
                "{context}: {} not filtered by $site",
                metric.name
            );
            if series[&metric.name].contains("instance") || metric.name.starts_with("apns_") {
                assert!(
                    filtered("instance", "$gateway"),
                    "{context}: {} not filtered by $gateway",
                    metric.name
                );
            }
        }
        let expanded = expr
            .replace("$__rate_interval", "1m")
            .replace("$site", ".*")
            .replace("$gateway", ".*");
        assert!(!expanded.contains('$'), "an unknown variable in {expr}");
        expanded_queries.push(expanded);
    }
    assert_promql_parses(&expanded_queries);
    println!(
        "{FLEET_DASHBOARD}: {} queries, PromQL, over exported metrics and fleet records, \
         filtered by $site and $gateway",
        queries.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Ansible

#[test]
fn ansible_role_and_playbook_pass_ansible_lint() {
    let dir = packaging().join("ansible");
    // ansible-lint's caches go to a scratch folder, not root's home.
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new("ansible-lint")
        .args(["--offline", "--nocolor", "--profile", "production"])
        .current_dir(&dir)
        .env("XDG_CACHE_HOME", scratch.path().join("cache"))
        .env("ANSIBLE_HOME", scratch.path().join("ansible"))
        .output()
        .expect("ansible-lint runs (installed by `cargo xtask setup`: Debian's ansible-lint)");
    let said = output_text(&output);
    assert!(
        output.status.success() && said.contains("0 failure(s), 0 warning(s)"),
        "ansible-lint in {}: {}\n{said}",
        dir.display(),
        output.status
    );
    println!("packaging/ansible: {}", said.trim());
}

// ---------------------------------------------------------------------------------------------
// Grafana dashboard

/// Every object of the JSON tree, depth first.
fn objects(value: &serde_json::Value) -> Vec<&serde_json::Map<String, serde_json::Value>> {
    let mut out = Vec::new();
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                out.push(map);
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// The dashboard's queries: (panel title, expr, legend).
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String, String)> {
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut out = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{DASHBOARD}: {title}: a target without expr"));
            let legend = target["legendFormat"].as_str().unwrap_or("").to_owned();
            out.push((title.clone(), expr.to_owned(), legend));
        }
    }
    out
}

#[test]
fn grafana_dashboard_is_importable() {
    let dashboard = dashboard();
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    assert!(
        dashboard["id"].is_null(),
        "an exported dashboard has id null"
    );

    // The data source is a template variable (works for import and for provisioning).
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{DASHBOARD}: no ${name} variable"))
    };
    let datasource = variable("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let uid = "${datasource}";
    for object in objects(&dashboard) {
        if let Some(ds) = object.get("datasource").and_then(|d| d.as_object()) {
            if ds.get("type").and_then(|t| t.as_str()) == Some("prometheus") {
                assert_eq!(
                    ds["uid"], uid,
                    "{DASHBOARD}: a data source not ${{datasource}}"
                );
            }
        }
    }
    for name in ["instance", "interface"] {
        assert_eq!(variable(name)["type"], "query");
    }

    // Panels: unique ids, a place on the grid, a data source on every query panel.
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(
        ids.len(),
        panels.len(),
        "{DASHBOARD}: panel ids must be unique"
    );
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], uid, "{title}");
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "{title}: no query"
            );
        }
    }
    println!(
        "{DASHBOARD}: schemaVersion {schema}, {} panels, data source ${{datasource}}, variables \
         instance and interface",
        panels.len()
    );
}

#[test]
fn grafana_dashboard_uses_the_exported_metrics() {
    let exported = exported();
    let dashboard = dashboard();
    let mut used = BTreeSet::new();
    let queries = dashboard_queries(&dashboard);
    for (title, expr, legend) in &queries {
        let context = format!("{DASHBOARD}: {title}: {expr}");
        let scan = scan(expr, true);
        assert!(!scan.metrics.is_empty(), "{context}: no apns_* metric");
        let available = check_refs(&exported, &scan, &context);
        check_legend(&scan, available, legend, &context);
        // The variables filter every query; the ratio is gateway-wide, not per interface.
        for metric in &scan.metrics {
            let filtered = |label: &str, variable: &str| filtered_by(metric, label, variable);
            assert!(filtered("instance", "$instance"), "{context}: no $instance");
            if exported[&metric.name].contains("interface")
                && metric.name != "apns_reachability_ratio"
            {
                assert!(
                    filtered("interface", "$interface"),
                    "{context}: no $interface"
                );
            }
        }
        used.extend(scan.metrics.into_iter().map(|m| m.name));
    }

    // The variables' queries: label_values(selector, label).
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let definition = variable["definition"].as_str().expect("definition");
        assert_eq!(variable["query"]["query"], definition);
        let inner = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{DASHBOARD}: variable query {definition}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let scan = scan(selector, true);
        let available = check_refs(&exported, &scan, definition);
        assert!(
            available.contains(label.trim()),
            "{definition}: no label {label}"
        );
        used.extend(scan.metrics.into_iter().map(|m| m.name));
    }

    // The dashboard shows every metric the agent exports (a histogram's family through any
    // of its series).
    let used: BTreeSet<String> = used
        .iter()
        .map(|name| family_of(&exported, name).to_owned())
        .collect();
    let all: BTreeSet<String> = exported
        .keys()
        .filter(|name| family_of(&exported, name) == name.as_str())
        .cloned()
        .collect();
    let missing: Vec<&String> = all.difference(&used).collect();
    assert!(missing.is_empty(), "{DASHBOARD}: nothing shows {missing:?}");
    println!(
        "{DASHBOARD}: {} queries use only exported metrics and labels, filter by $instance and \
         $interface, legends name result labels; every exported metric shown: {used:?}",
        queries.len()
    );
}

#[test]
fn grafana_dashboard_queries_are_promql() {
    // Grafana's variables replaced by what they expand to, then each query as a recording
    // rule: `promtool check rules` parses it.
    let dashboard = dashboard();
    let mut expanded_queries = Vec::new();
    let queries = dashboard_queries(&dashboard);
    for (_, expr, _) in &queries {
        let expanded = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$instance", ".*")
            .replace("$interface", ".*");
        assert!(!expanded.contains('$'), "an unknown variable in {expr}");
        expanded_queries.push(expanded);
    }
    assert_promql_parses(&expanded_queries);
}

// ---------------------------------------------------------------------------------------------
// README

#[test]
fn readme_covers_the_install() {
    let readme = read(README);
    for needle in [
        UNIT,
        RULES,
        RULE_TESTS,
        DASHBOARD,
        "config.toml",
        DEFAULT_CONFIG,
        DEFAULT_METRICS_ADDR,
        "--textfile",
        "systemctl enable --now apns-agent",
    ] {
        assert!(
            readme.contains(needle),
            "{README} does not mention {needle}"
        );
    }
    println!("{README}: mentions every file, {DEFAULT_CONFIG}, {DEFAULT_METRICS_ADDR}, --textfile");
}
