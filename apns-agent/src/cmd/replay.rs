//! `apns-agent replay CAPTURE [--mode monitor|enforce] [--json] [--frames]`: a dry run. Every
//! frame of a pcap or pcapng capture goes through the real XDP program by
//! BPF_PROG_TEST_RUN, in a private instance of the datapath loaded with the config's policy
//! (`datapath::instance`: nothing attached, no pin touched, no packet sent), and the counters
//! come out as `stats` prints them, under the capture's name. In monitor mode a second,
//! enforcing instance runs the same frames, to say what enforce would have dropped.
//!
//! The capture is streamed (`capture::Reader`) and each frame's verdict, with `--frames`, is
//! kept in an unnamed temporary file ([`Spool`]): replay runs as root on captures of any size
//! and origin, and its memory stays bounded. Nothing is printed before the last frame has
//! run, so a capture that turns out corrupt halfway prints only its error.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufReader, BufWriter, Read as _, Seek as _, SeekFrom, Write},
    path::Path,
};

use anyhow::Context as _;
use apns_common::{
    counters::{CounterKey, Direction, DropReason, Outcome},
    label::Label as _,
    policy::Mode,
};
use caps::Capability;
use serde::{ser::Error as _, ser::SerializeSeq as _, Serialize, Serializer};

use crate::{
    capture::Reader,
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
    frame_verdicts: Option<Spool>,
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
    // The header is checked before anything is loaded; the frames are read as they run.
    let mut capture = Reader::open(file)?;
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
    let verdicts = run(&mut capture, &main, enforce.as_ref(), frames)?;
    let summary = capture.summary();

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
        format: summary.format,
        link_types: summary.link_types.iter().copied().collect(),
        frames: summary.frames,
        outgoing_left_out: summary.outgoing,
        cut_frames: summary.cut_frames,
        mode: policy.mode.as_str(),
        stats: stats::Stats::from_model(&model),
        enforce_drops,
        frame_verdicts: verdicts,
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        render(&mut out, &report, &model)?;
    }
    out.flush().context("writing the report")
}

/// Runs every frame of `capture` through `main` (and `enforce`); with `per_frame`, each
/// one's verdict, spooled.
fn run(
    capture: &mut Reader,
    main: &Instance,
    enforce: Option<&Instance>,
    per_frame: bool,
) -> anyhow::Result<Option<Spool>> {
    let mut spool = per_frame.then(SpoolWriter::new).transpose()?;
    for frame in capture {
        let frame = frame?;
        let one = |instance: &Instance| -> anyhow::Result<Option<Counted>> {
            let before = per_frame.then(|| instance.snapshot()).transpose()?;
            let action = instance.run(&frame.data)?;
            let Some(before) = before else {
                return Ok(None);
            };
            let key = counted(&before, &instance.snapshot()?);
            Ok(Some(Counted { action, key }))
        };
        let verdict = one(main).with_context(|| format!("frame {}", frame.number))?;
        let enforced = match enforce {
            Some(instance) => one(instance).with_context(|| format!("frame {}", frame.number))?,
            None => None,
        };
        if let (Some(spool), Some(verdict)) = (&mut spool, verdict) {
            spool.push(frame.number, verdict, enforced)?;
        }
    }
    spool.map(SpoolWriter::finish).transpose()
}

/// What one instance did with a frame: its XDP action and the counter it moved.
#[derive(Clone, Copy)]
struct Counted {
    action: u32,
    key: Option<CounterKey>,
}

impl Counted {
    /// Bytes of a record: the action, whether a counter moved, and its key.
    const LEN: usize = 4 + 1 + size_of::<CounterKey>();

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.action.to_le_bytes());
        let key = self.key.unwrap_or_default();
        out.push(u8::from(self.key.is_some()));
        out.extend_from_slice(&key.ifindex.to_le_bytes());
        out.extend_from_slice(&key.port.to_le_bytes());
        out.extend_from_slice(&[key.direction, key.outcome]);
    }

    fn decode(bytes: &[u8]) -> Counted {
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        Counted {
            action: u32_at(0),
            key: (bytes[4] == 1).then(|| CounterKey {
                ifindex: u32_at(5),
                port: u16_at(9),
                direction: bytes[11],
                outcome: bytes[12],
            }),
        }
    }
}

/// The verdicts of `--frames` as they are written: one fixed-size record per frame in an
/// unnamed temporary file (gone when closed, even if replay is killed), because a capture's
/// frames can outnumber what memory should hold.
struct SpoolWriter {
    writer: BufWriter<File>,
    count: usize,
}

/// The verdicts of `--frames`, written, to be read back once to print them.
struct Spool {
    file: File,
    count: usize,
}

/// Bytes of a spooled record: the frame number, the main instance's verdict, whether the
/// enforcing one ran, and its verdict.
const SPOOL_RECORD: usize = 8 + Counted::LEN + 1 + Counted::LEN;

impl SpoolWriter {
    fn new() -> anyhow::Result<SpoolWriter> {
        let file = tempfile::tempfile()
            .context("creating a temporary file for the verdicts of --frames")?;
        Ok(SpoolWriter {
            writer: BufWriter::new(file),
            count: 0,
        })
    }

    fn push(
        &mut self,
        frame: usize,
        main: Counted,
        enforce: Option<Counted>,
    ) -> anyhow::Result<()> {
        let mut record = Vec::with_capacity(SPOOL_RECORD);
        record.extend_from_slice(&(frame as u64).to_le_bytes());
        main.encode(&mut record);
        record.push(u8::from(enforce.is_some()));
        enforce.unwrap_or(main).encode(&mut record);
        self.writer
            .write_all(&record)
            .context("writing a verdict of --frames to its temporary file")?;
        self.count += 1;
        Ok(())
    }

    fn finish(self) -> anyhow::Result<Spool> {
        let file = self
            .writer
            .into_inner()
            .map_err(|err| err.into_error())
            .context("writing the verdicts of --frames to their temporary file")?;
        Ok(Spool {
            file,
            count: self.count,
        })
    }
}

impl Spool {
    /// Every verdict, in frame order.
    fn verdicts(&self) -> anyhow::Result<impl Iterator<Item = anyhow::Result<FrameVerdict>> + '_> {
        let mut reader = BufReader::new(&self.file);
        reader
            .seek(SeekFrom::Start(0))
            .context("rewinding the temporary file of --frames")?;
        Ok((0..self.count).map(move |_| {
            let mut record = [0u8; SPOOL_RECORD];
            reader
                .read_exact(&mut record)
                .context("reading the temporary file of --frames")?;
            let (frame, rest) = record.split_at(8);
            let (main, rest) = rest.split_at(Counted::LEN);
            let (ran, enforce) = rest.split_at(1);
            let main = Counted::decode(main);
            Ok(FrameVerdict {
                frame: u64::from_le_bytes(frame.try_into().expect("8 bytes")) as usize,
                verdict: verdict(main.action, main.key),
                enforce: (ran[0] == 1).then(|| {
                    let enforce = Counted::decode(enforce);
                    verdict(enforce.action, enforce.key)
                }),
            })
        }))
    }
}

/// As a JSON array, read from the file as it is written out.
impl Serialize for Spool {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.count))?;
        for verdict in self
            .verdicts()
            .map_err(|err| S::Error::custom(format!("{err:#}")))?
        {
            let verdict = verdict.map_err(|err| S::Error::custom(format!("{err:#}")))?;
            seq.serialize_element(&verdict)?;
        }
        seq.end()
    }
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

/// Writes the text report: each frame's verdict (with --frames), then the table and what
/// enforce dropped.
fn render(to: &mut impl Write, report: &Report, model: &Model) -> anyhow::Result<()> {
    if let Some(spool) = &report.frame_verdicts {
        for frame in spool.verdicts()? {
            let frame = frame?;
            write!(to, "frame {}: {}", frame.frame, frame.verdict.words())?;
            if let Some(enforce) = &frame.enforce {
                write!(to, "; in enforce: {}", enforce.words())?;
            }
            writeln!(to)?;
        }
        writeln!(to)?;
    }
    let mut out = String::new();
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
    to.write_all(out.as_bytes())?;
    Ok(())
}
