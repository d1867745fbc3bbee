//! `apns-agent replay CAPTURE [--mode monitor|enforce] [--json] [--frames]`: a dry run. Every
//! frame of a pcap or pcapng capture goes through the real XDP program by
//! BPF_PROG_TEST_RUN, in a private instance of the datapath loaded with the config's policy
//! (`datapath::instance`: nothing attached, no pin touched, no packet sent), and the counters
//! come out as `stats` prints them, under the capture's name. In monitor mode a second,
//! enforcing instance runs the same frames, to say what enforce would have dropped.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context as _;
use apns_common::{
    counters::{CounterKey, Direction, DropReason, Outcome},
    label::Label as _,
    policy::Mode,
};
use caps::Capability;
use serde::Serialize;

use crate::{
    capture::{self, Capture},
    cli::Global,
    datapath::{
        counters::Snapshot,
        instance::{action, Instance},
        policy::Policy,
    },
    privileges,
    settings::Settings,
    telemetry::{
        model::{Known, Model},
        reachability::Reachability,
        stats,
    },
};

/// Loading and test-running an XDP program.
const NEEDED: &[Capability] = &[Capability::CAP_BPF, Capability::CAP_NET_ADMIN];

/// The JSON shape of `replay --json` (fields are only ever added).
#[derive(Serialize)]
struct Report {
    capture: String,
    format: &'static str,
    link_types: Vec<&'static str>,
    /// Frames run through the datapath.
    frames: usize,
    /// Frames of a cooked capture this host sent: XDP never sees them.
    outgoing_left_out: usize,
    /// Frames the capture kept shorter than the wire had (their bytes count short).
    cut_frames: usize,
    mode: &'static str,
    /// The counters, as `stats --json` prints them; the interface is the capture's name.
    stats: stats::Stats,
    /// What enforce mode drops of these frames, by reason (the counters above, in enforce
    /// mode; a second, enforcing instance in monitor mode).
    enforce_drops: BTreeMap<&'static str, u64>,
    /// With --frames: each frame's verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    frame_verdicts: Option<Vec<FrameVerdict>>,
}

#[derive(Serialize)]
struct FrameVerdict {
    frame: usize,
    #[serde(flatten)]
    verdict: Verdict,
    /// In monitor mode: what the enforcing instance did with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    enforce: Option<Verdict>,
}

#[derive(Serialize)]
struct Verdict {
    /// The XDP action: pass, drop, ...
    action: &'static str,
    outcome: &'static str,
    direction: &'static str,
    port: u16,
}

impl Verdict {
    fn words(&self) -> String {
        if self.direction == Direction::None.as_str() && self.port == 0 {
            format!("{}, {}", self.action, self.outcome)
        } else if self.direction == Direction::None.as_str() {
            format!("{}, {} port {}", self.action, self.outcome, self.port)
        } else {
            format!(
                "{}, {} {} port {}",
                self.action, self.outcome, self.direction, self.port
            )
        }
    }
}

pub fn replay(
    global: &Global,
    file: &Path,
    mode: Option<Mode>,
    json: bool,
    frames: bool,
) -> anyhow::Result<()> {
    privileges::require(NEEDED, "apns-agent replay")?;
    let settings = Settings::resolve(&global.into())?;
    // Read and check the whole capture before running anything.
    let capture = capture::read(file)?;
    let mut policy = settings.config.policy.clone();
    if let Some(mode) = mode {
        policy.mode = mode;
    }
    let main = Instance::load(&policy).context("loading a private datapath instance")?;
    // Monitor mode never drops; an enforcing twin tells what enforce would.
    let enforce = match policy.mode {
        Mode::Monitor => Some(
            Instance::load(&Policy {
                mode: Mode::Enforce,
                ..policy.clone()
            })
            .context("loading a private enforcing instance")?,
        ),
        Mode::Enforce => None,
    };
    let verdicts = run(&capture, &main, enforce.as_ref(), frames)?;

    let name = file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let known = Known {
        interfaces: vec![name.clone()],
        ports: policy.ports.keys().copied().collect(),
        // A replay runs the program on frames, not on an interface: no fast path.
        redirect: Vec::new(),
    };
    // One snapshot: no ratio (a window needs two).
    let no_window = Reachability::new(std::time::Duration::from_secs(1));
    let model = Model::build(&main.snapshot()?, &known, |_| name.clone(), &no_window);
    let enforce_model = match &enforce {
        Some(instance) => Model::build(&instance.snapshot()?, &known, |_| name.clone(), &no_window),
        None => model.clone(),
    };
    let enforce_drops: BTreeMap<&'static str, u64> = DropReason::ALL
        .iter()
        .map(|reason| {
            let packets = enforce_model
                .interfaces
                .values()
                .map(|interface| interface.policy_drops.get(reason).copied().unwrap_or(0))
                .sum();
            (reason.as_str(), packets)
        })
        .collect();
    let report = Report {
        capture: file.display().to_string(),
        format: capture.format,
        link_types: capture.link_types.iter().copied().collect(),
        frames: capture.frames.len(),
        outgoing_left_out: capture.outgoing,
        cut_frames: capture.frames.iter().filter(|frame| frame.cut).count(),
        mode: policy.mode.as_str(),
        stats: stats::Stats::from_model(&model),
        enforce_drops,
        frame_verdicts: verdicts,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, &model));
    }
    Ok(())
}

/// Runs every frame through `main` (and `enforce`); with `per_frame`, each one's verdict.
fn run(
    capture: &Capture,
    main: &Instance,
    enforce: Option<&Instance>,
    per_frame: bool,
) -> anyhow::Result<Option<Vec<FrameVerdict>>> {
    let mut verdicts = Vec::new();
    for frame in &capture.frames {
        let one = |instance: &Instance| -> anyhow::Result<Option<Verdict>> {
            let before = per_frame.then(|| instance.snapshot()).transpose()?;
            let action = instance.run(&frame.data)?;
            let Some(before) = before else {
                return Ok(None);
            };
            let key = counted(&before, &instance.snapshot()?);
            Ok(Some(verdict(action, key)))
        };
        let verdict = one(main).with_context(|| format!("frame {}", frame.number))?;
        let enforced = match enforce {
            Some(instance) => one(instance).with_context(|| format!("frame {}", frame.number))?,
            None => None,
        };
        if let Some(verdict) = verdict {
            verdicts.push(FrameVerdict {
                frame: frame.number,
                verdict,
                enforce: enforced,
            });
        }
    }
    Ok(per_frame.then_some(verdicts))
}

/// The counter one frame moved.
fn counted(before: &Snapshot, after: &Snapshot) -> Option<CounterKey> {
    after
        .entries
        .iter()
        .find(|(key, value)| value.packets > before.get(key).packets)
        .map(|(key, _)| *key)
}

fn verdict(xdp_action: u32, key: Option<CounterKey>) -> Verdict {
    let outcome = key.and_then(|key| Outcome::from_u8(key.outcome));
    let direction = key.and_then(|key| Direction::from_u8(key.direction));
    Verdict {
        action: action::name(xdp_action),
        // A frame the map had no room for is counted as lost, not under a key.
        outcome: outcome.map_or("not counted (counter map full)", Outcome::as_str),
        direction: direction.unwrap_or(Direction::None).as_str(),
        port: key.map_or(0, |key| key.port),
    }
}

fn render(report: &Report, model: &Model) -> String {
    let mut out = String::new();
    if let Some(verdicts) = &report.frame_verdicts {
        for frame in verdicts {
            out.push_str(&format!("frame {}: {}", frame.frame, frame.verdict.words()));
            if let Some(enforce) = &frame.enforce {
                out.push_str(&format!("; in enforce: {}", enforce.words()));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let mut notes = Vec::new();
    if report.outgoing_left_out > 0 {
        notes.push(format!(
            "{} frames this host sent left out (XDP sees received frames only)",
            report.outgoing_left_out
        ));
    }
    if report.cut_frames > 0 {
        notes.push(format!(
            "{} frames cut short by the capture's snap length (their bytes count short)",
            report.cut_frames
        ));
    }
    out.push_str(&format!(
        "replay of {} ({}, {}): {} frames through the datapath in {} mode, nothing attached{}{}\n\n",
        report.capture,
        report.format,
        report.link_types.join(", "),
        report.frames,
        report.mode,
        if notes.is_empty() { "" } else { "; " },
        notes.join("; ")
    ));
    out.push_str(&stats::render_table(model));
    let total: u64 = report.enforce_drops.values().sum();
    let reasons: Vec<String> = report
        .enforce_drops
        .iter()
        .map(|(reason, packets)| format!("{reason} {packets}"))
        .collect();
    out.push_str(&format!(
        "\nenforce {} {total} frames ({})\n",
        if report.mode == Mode::Enforce.as_str() {
            "dropped"
        } else {
            "would have dropped"
        },
        reasons.join(", ")
    ));
    out
}
