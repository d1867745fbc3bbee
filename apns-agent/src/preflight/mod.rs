//! `doctor`'s checks: will the agent work on this box, and if not, what to do about it.
//!
//! Every check reads state and changes none: the kernel and its features, bpffs, BTF, this
//! process's capabilities, the config, IP forwarding, conntrack, the metrics address, and
//! per interface its link, MTU, driver and XDP features, the XDP programs already on it
//! ([`crate::datapath::occupants`]) and reverse-path filtering. Nothing is sent on the
//! network unless a probe is asked for ([`probe`]). Each check is one [`Check`]: ok, warn or
//! fail, what was found, and the fix in words.

pub mod host;
pub mod interface;
pub mod probe;

use std::{collections::BTreeMap, fmt::Write as _};

use apns_common::label::Label;

use serde::Serialize;

/// How bad a finding is. Ordered: the worst decides the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    /// The agent works, but something will surprise the operator (slower, partial, fragile).
    Warn,
    /// The agent will not work as configured until this is fixed.
    Fail,
}

impl Label for Level {
    const WHAT: &'static str = "check level";
    const ALL: &'static [Level] = &[Level::Ok, Level::Warn, Level::Fail];
    fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// `doctor`'s exit codes. A command-line error exits 2 as well, but prints nothing on
/// standard output; a doctor report always ends with its summary line.
pub mod exit {
    /// Every check passed.
    pub const OK: u8 = 0;
    /// Warnings, no failure.
    pub const WARNINGS: u8 = 1;
    /// At least one failure.
    pub const FAILURES: u8 = 2;
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked: "kernel", "lan0 xdp", ...
    pub check: String,
    #[serde(serialize_with = "crate::label::serialize_label")]
    pub status: Level,
    /// What was found.
    pub detail: String,
    /// What to do about it, in words; none when nothing needs doing.
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::with_fix(Level::Warn, check.into(), detail.into(), fix.into())
    }

    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::with_fix(Level::Fail, check.into(), detail.into(), fix.into())
    }

    fn with_fix(status: Level, check: String, detail: String, fix: String) -> Check {
        Check {
            check,
            status,
            detail,
            fix: Some(fix),
        }
    }

    /// One line: `warn  lan0 link: administratively down; fix: ip link set dev lan0 up`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{:<4}  {}: {}",
            self.status.as_str(),
            self.check,
            self.detail
        );
        if let Some(fix) = &self.fix {
            let _ = write!(line, "; fix: {fix}");
        }
        line
    }
}

/// Everything `doctor` found (the JSON shape of `doctor --json`; fields are only ever
/// added).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema: u32,
    pub checks: Vec<Check>,
    /// What was read of each interface asked about, by name.
    pub interfaces: BTreeMap<String, interface::Facts>,
    pub ok: usize,
    pub warnings: usize,
    pub failures: usize,
    /// 0, 1 or 2: see [`exit`].
    pub exit_code: u8,
}

impl Report {
    pub fn new(checks: Vec<Check>, interfaces: BTreeMap<String, interface::Facts>) -> Report {
        let count = |level| checks.iter().filter(|check| check.status == level).count();
        let (ok, warnings, failures) = (count(Level::Ok), count(Level::Warn), count(Level::Fail));
        let exit_code = match checks.iter().map(|check| check.status).max() {
            Some(Level::Fail) => exit::FAILURES,
            Some(Level::Warn) => exit::WARNINGS,
            _ => exit::OK,
        };
        Report {
            schema: 1,
            checks,
            interfaces,
            ok,
            warnings,
            failures,
            exit_code,
        }
    }

    /// One line per check, then the summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&check.line());
            out.push('\n');
        }
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let _ = writeln!(
            out,
            "doctor: {} ok, {}, {} (exit {})",
            self.ok,
            plural(self.warnings, "warning", "warnings"),
            plural(self.failures, "failure", "failures"),
            self.exit_code
        );
        out
    }
}

/// "yes" or "no", as the checks' lines say it.
fn yes_no(yes: bool) -> &'static str {
    if yes {
        "yes"
    } else {
        "no"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_finding_decides_the_exit_code() {
        let ok = Check::ok("kernel", "Linux 6.18");
        let warn = Check::warn(
            "lan0 link",
            "administratively down",
            "ip link set dev lan0 up",
        );
        let fail = Check::fail("config", "bad", "fix it");
        assert_eq!(Report::new(vec![ok.clone()], BTreeMap::new()).exit_code, 0);
        assert_eq!(
            Report::new(vec![ok.clone(), warn.clone()], BTreeMap::new()).exit_code,
            1
        );
        let report = Report::new(vec![ok, warn, fail], BTreeMap::new());
        assert_eq!(report.exit_code, 2);
        assert_eq!(
            report.render(),
            "ok    kernel: Linux 6.18\n\
             warn  lan0 link: administratively down; fix: ip link set dev lan0 up\n\
             fail  config: bad; fix: fix it\n\
             doctor: 1 ok, 1 warning, 1 failure (exit 2)\n"
        );
    }
}
