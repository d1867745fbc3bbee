//! The benchmark report: figures grouped in sections, the goals of the issue with their
//! verdicts, and the command and machine every figure came from; written as markdown (for
//! people and BENCHMARKS.md) and JSON (for scripts comparing runs).

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

use super::{
    charts::Chart,
    stats::{num, Estimate, DECISIVE_HALF_WIDTH},
};

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

/// The 1-, 5- and 15-minute load averages (/proc/loadavg), as `uptime` shows them: how busy
/// the machine was around the figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".to_owned(),
        |text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        },
    )
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
    /// The 95 % confidence interval of a median, where the figure has one.
    pub interval: Option<(f64, f64)>,
    pub unit: &'static str,
    pub how: String,
}

impl Figure {
    /// A ratio whose interval is wider than ±[`DECISIVE_HALF_WIDTH`] (or missing): the
    /// figures that decide goals and, when noisy, cannot.
    fn noisy_ratio(&self) -> bool {
        self.unit == "x"
            && self.interval.is_some_and(|(low, high)| {
                let estimate = Estimate {
                    median: self.value,
                    low,
                    high,
                    n: 0,
                };
                !estimate.decisive()
            })
    }
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
    /// Pictures of the section's figures, shown after its tables.
    pub charts: Vec<Chart>,
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
            interval: None,
            unit,
            how: how.to_owned(),
        });
        value
    }

    /// Records a median with its 95 % interval and returns it.
    pub fn estimate(
        &mut self,
        key: String,
        estimate: Estimate,
        unit: &'static str,
        how: &str,
    ) -> Estimate {
        self.figures.push(Figure {
            key,
            value: estimate.median,
            interval: Some((estimate.low, estimate.high)),
            unit,
            how: how.to_owned(),
        });
        estimate
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// The 95 % interval of a figure straddles the goal: the run cannot tell.
    Undecided,
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

    /// Met with 95 % confidence ([`Estimate::at_most`]'s `Some(true)`), not met, or
    /// undecided.
    pub fn from_confidence(met: Option<bool>) -> Verdict {
        met.map_or(Verdict::Undecided, Verdict::from_met)
    }

    /// The verdict on a goal every one of `parts` must meet: not met if one is not met,
    /// undecided if none is not met but one is undecided.
    pub fn all(parts: impl IntoIterator<Item = Verdict>) -> Verdict {
        parts
            .into_iter()
            .fold(Verdict::Met, |all, part| match (all, part) {
                (Verdict::NotMet, _) | (_, Verdict::NotMet) => Verdict::NotMet,
                (Verdict::NotAvailable, _) | (_, Verdict::NotAvailable) => Verdict::NotAvailable,
                (Verdict::Undecided, _) | (_, Verdict::Undecided) => Verdict::Undecided,
                (Verdict::Met, Verdict::Met) => Verdict::Met,
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "not met",
            Verdict::Undecided => "undecided (the 95 % interval straddles the goal)",
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
    /// Load averages (1, 5, 15 minutes) when the run started and when it ended.
    pub load: (String, String),
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

    /// Ratios with an interval, and those of them wider than ±5 %: what says whether the
    /// machine was quiet enough for the run to decide.
    pub fn noise(&self) -> (usize, Vec<&str>) {
        let ratios: Vec<&Figure> = self
            .sections
            .iter()
            .flat_map(|s| &s.figures)
            .filter(|f| f.unit == "x" && f.interval.is_some())
            .collect();
        let noisy = ratios
            .iter()
            .filter(|f| f.noisy_ratio())
            .map(|f| f.key.as_str())
            .collect();
        (ratios.len(), noisy)
    }

    /// One line on the run's noise, for the report and the terminal.
    pub fn noise_line(&self) -> String {
        let (ratios, noisy) = self.noise();
        let limit = DECISIVE_HALF_WIDTH * 100.0;
        if noisy.is_empty() {
            format!(
                "every ratio's 95 % interval is within ±{limit:.0} % of its median ({ratios} ratios): quiet enough to decide"
            )
        } else {
            format!(
                "TOO NOISY TO DECIDE: {} of {ratios} ratios have a 95 % interval wider than ±{limit:.0} % ({})",
                noisy.len(),
                noisy.join(", ")
            )
        }
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let mode = if self.quick {
            "quick (per-packet figures from short rounds, with their intervals; forwarding and \
             the soak too short to mean much)"
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
            "- started: {} (Unix time), took {:.0} s",
            self.started_unix,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "- load average (1, 5, 15 min): {} at the start, {} at the end",
            self.load.0, self.load.1
        );
        let _ = writeln!(md, "- noise: {}\n", self.noise_line());
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
            for chart in &section.charts {
                let _ = writeln!(md, "\n![{}]({})", chart.title, chart.file);
            }
            if !section.notes.is_empty() {
                md.push('\n');
                for note in &section.notes {
                    let _ = writeln!(md, "- {note}");
                }
            }
        }
        let _ = writeln!(md, "\n## Every figure\n");
        let _ = writeln!(md, "| figure | value | 95 % interval | unit | how |");
        let _ = writeln!(md, "|---|---|---|---|---|");
        for figure in self.sections.iter().flat_map(|s| &s.figures) {
            let interval = figure.interval.map_or("—".to_owned(), |(low, high)| {
                format!("{}–{}", num(low), num(high))
            });
            let _ = writeln!(
                md,
                "| `{}` | {} | {interval} | {} | {} |",
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
            "load_average": { "start": self.load.0, "end": self.load.1 },
            "noise": self.noise_line(),
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
                    "interval_95": f.interval.map(|(low, high)| json!([number(low), number(high)])),
                    "unit": f.unit,
                    "how": f.how,
                })).collect::<Vec<_>>(),
                "charts": s.charts.iter().map(|c| &c.file).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    /// Writes `report.md`, `report.json` and the charts (SVG) into `dir` (created if
    /// missing) and returns the paths of the first two.
    pub fn write(&self, dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for chart in self.sections.iter().flat_map(|s| &s.charts) {
            let path = dir.join(&chart.file);
            std::fs::write(&path, &chart.svg)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let md = dir.join("report.md");
        let js = dir.join("report.json");
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        let text = serde_json::to_string_pretty(&self.json()).context("serialising the report")?;
        std::fs::write(&js, text + "\n").with_context(|| format!("writing {}", js.display()))?;
        Ok((md, js))
    }
}
