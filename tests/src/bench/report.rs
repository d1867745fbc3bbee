//! The benchmark report: figures grouped in sections, the goals of the issue with their
//! verdicts, and the command and machine every figure came from; written as markdown (for
//! people and BENCHMARKS.md) and JSON (for scripts comparing runs).

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::stats::num;

/// The machine the figures were measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    /// CPUs this process may run on (what `nproc` prints).
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    /// The first `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    pub memory_mib: u64,
}

/// `git describe`-like: the commit the workspace is at, and whether it has uncommitted
/// changes (the figures then belong to the tree as built, not to the commit).
pub fn source_revision() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) => {
            let changed = git(&["status", "--porcelain", "--untracked-files=no"])
                .map_or(0, |status| status.lines().count());
            if changed == 0 {
                format!("git {commit}")
            } else {
                format!("git {commit} with {changed} files changed and not committed")
            }
        }
        None => "unknown (not a git checkout)".to_owned(),
    }
}

impl Machine {
    pub fn probe() -> Result<Machine> {
        let nproc = std::thread::available_parallelism()
            .context("counting the CPUs this process may use")?
            .get();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .context("reading /proc/sys/kernel/osrelease")?
            .trim()
            .to_owned();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").context("reading /proc/cpuinfo")?;
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown (no model name in /proc/cpuinfo)".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0);
        Ok(Machine {
            nproc,
            kernel,
            cpu_model,
            memory_mib: memory_kib / 1024,
        })
    }

    pub fn one_line(&self) -> String {
        format!(
            "{} CPUs ({}), {} MiB, Linux {}",
            self.nproc, self.cpu_model, self.memory_mib, self.kernel
        )
    }
}

/// One measured number. `how` says how it was measured (the program, the command line, the
/// repeat count), so a reader can redo it.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Stable dotted name, e.g. `per_packet.apns_v4_syn.agent_ns`.
    pub key: String,
    pub value: f64,
    pub unit: &'static str,
    pub how: String,
}

/// A table as the markdown report shows it (the figures themselves are in `figures`).
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub caption: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: impl Into<String>, columns: &[&str]) -> Table {
        Table {
            caption: caption.into(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// One numbered section of the report.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub id: &'static str,
    pub title: String,
    /// How the section measures, in a few sentences.
    pub method: Vec<String>,
    pub tables: Vec<Table>,
    pub notes: Vec<String>,
    pub figures: Vec<Figure>,
    /// Goals this section measured itself: each replaces the report's goal of the same
    /// wording (see [`Report::effective_goals`]), or is added if there is none.
    pub goals: Vec<Goal>,
}

impl Section {
    pub fn new(id: &'static str, title: impl Into<String>) -> Section {
        Section {
            id,
            title: title.into(),
            ..Section::default()
        }
    }

    /// Records a figure and returns its value, so a table cell can be built from it.
    pub fn figure(&mut self, key: String, value: f64, unit: &'static str, how: &str) -> f64 {
        self.figures.push(Figure {
            key,
            value,
            unit,
            how: how.to_owned(),
        });
        value
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// The thing to measure does not exist yet (e.g. `redirect` mode).
    NotAvailable,
}

impl Verdict {
    pub fn from_met(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::NotMet
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "not met",
            Verdict::NotAvailable => "not yet available",
        }
    }
}

/// A goal of the issue and how the run measured against it.
#[derive(Clone, Debug)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub verdict: Verdict,
}

/// Everything one run produced.
#[derive(Clone, Debug)]
pub struct Report {
    /// How the run was started (`cargo xtask bench --quick`), as the xtask passed it on.
    pub command: String,
    /// The bench binary's own command line.
    pub bench_command: String,
    pub machine: Machine,
    /// The sources measured: git commit, and whether the tree had uncommitted changes.
    pub source: String,
    pub quick: bool,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub elapsed: Duration,
    pub sections: Vec<Section>,
    pub goals: Vec<Goal>,
}

impl Report {
    /// Figures that are missing, zero or not finite: what `--quick` checks.
    pub fn bad_figures(&self) -> Vec<String> {
        self.sections
            .iter()
            .flat_map(|s| &s.figures)
            .filter(|f| !(f.value.is_finite() && f.value > 0.0))
            .map(|f| format!("{} = {}", f.key, f.value))
            .collect()
    }

    /// The report's goals, each replaced by a section's goal of the same wording where a
    /// section measured it (e.g. the redirect goal, measured by the forwarding section), and
    /// the sections' other goals after them. What the markdown and the JSON show.
    pub fn effective_goals(&self) -> Vec<Goal> {
        let measured: Vec<&Goal> = self.sections.iter().flat_map(|s| &s.goals).collect();
        let mut goals: Vec<Goal> = self
            .goals
            .iter()
            .map(|goal| {
                measured
                    .iter()
                    .find(|m| m.goal == goal.goal)
                    .map_or_else(|| goal.clone(), |m| (*m).clone())
            })
            .collect();
        for m in measured {
            if !self.goals.iter().any(|g| g.goal == m.goal) {
                goals.push(m.clone());
            }
        }
        goals
    }

    pub fn figure_count(&self) -> usize {
        self.sections.iter().map(|s| s.figures.len()).sum()
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let mode = if self.quick {
            "quick (smoke run: too short for the figures to mean much)"
        } else {
            "full"
        };
        // Writing to a String cannot fail.
        let _ = writeln!(md, "# apns-agent benchmark report\n");
        let _ = writeln!(md, "- command: `{}`", self.command);
        let _ = writeln!(md, "- bench binary: `{}`", self.bench_command);
        let _ = writeln!(md, "- mode: {mode}");
        let _ = writeln!(md, "- machine: {}", self.machine.one_line());
        let _ = writeln!(md, "- source: {}", self.source);
        let _ = writeln!(
            md,
            "- started: {} (Unix time), took {:.0} s\n",
            self.started_unix,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(md, "## Goals\n");
        let _ = writeln!(md, "| goal | measured | verdict |");
        let _ = writeln!(md, "|---|---|---|");
        for goal in &self.effective_goals() {
            let _ = writeln!(
                md,
                "| {} | {} | **{}** |",
                goal.goal,
                goal.measured,
                goal.verdict.as_str()
            );
        }
        for (i, section) in self.sections.iter().enumerate() {
            let _ = writeln!(md, "\n## {}. {}\n", i + 1, section.title);
            for line in &section.method {
                let _ = writeln!(md, "{line}");
            }
            for table in &section.tables {
                let _ = writeln!(md, "\n{}\n", table.caption);
                let _ = writeln!(md, "| {} |", table.columns.join(" | "));
                let _ = writeln!(md, "|{}", "---|".repeat(table.columns.len()));
                for row in &table.rows {
                    let _ = writeln!(md, "| {} |", row.join(" | "));
                }
            }
            if !section.notes.is_empty() {
                md.push('\n');
                for note in &section.notes {
                    let _ = writeln!(md, "- {note}");
                }
            }
        }
        let _ = writeln!(md, "\n## Every figure\n");
        let _ = writeln!(md, "| figure | value | unit | how |");
        let _ = writeln!(md, "|---|---|---|---|");
        for figure in self.sections.iter().flat_map(|s| &s.figures) {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} |",
                figure.key,
                num(figure.value),
                figure.unit,
                figure.how
            );
        }
        md
    }

    pub fn json(&self) -> Value {
        let number = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
        json!({
            "command": self.command,
            "bench_command": self.bench_command,
            "mode": if self.quick { "quick" } else { "full" },
            "machine": {
                "nproc": self.machine.nproc,
                "kernel": self.machine.kernel,
                "cpu_model": self.machine.cpu_model,
                "memory_mib": self.machine.memory_mib,
            },
            "source": self.source,
            "started_unix": self.started_unix,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "goals": self.effective_goals().iter().map(|g| json!({
                "goal": g.goal,
                "measured": g.measured,
                "verdict": g.verdict.as_str(),
            })).collect::<Vec<_>>(),
            "sections": self.sections.iter().map(|s| json!({
                "id": s.id,
                "title": s.title,
                "method": s.method,
                "notes": s.notes,
                "tables": s.tables.iter().map(|t| json!({
                    "caption": t.caption,
                    "columns": t.columns,
                    "rows": t.rows,
                })).collect::<Vec<_>>(),
                "figures": s.figures.iter().map(|f| json!({
                    "key": f.key,
                    "value": number(f.value),
                    "unit": f.unit,
                    "how": f.how,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Writes `report.md` and `report.json` into `dir` (created if missing) and returns
    /// their paths.
    pub fn write(&self, dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join("report.md");
        let js = dir.join("report.json");
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        let text = serde_json::to_string_pretty(&self.json()).context("serialising the report")?;
        std::fs::write(&js, text + "\n").with_context(|| format!("writing {}", js.display()))?;
        Ok((md, js))
    }
}
