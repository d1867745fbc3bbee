//! The XDP object built from apns-ebpf (by build.rs) and how to load it.

use anyhow::Context as _;
use aya::{programs::Xdp, Ebpf, EbpfLoader};

/// The eBPF object, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apns"));

/// The same classifier with other instructions (another program tag) and identical maps and
/// behaviour: lets tests exercise an upgrade through the pinned links.
#[cfg(feature = "test-objects")]
pub static UPGRADE_PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apns-probe"));

/// The benchmarks' floor: an XDP program (`floor_xdp`) that bumps one per-CPU counter
/// (`FLOOR_PACKETS`) and passes.
#[cfg(feature = "test-objects")]
pub static BENCH_FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-floor"));

/// Name of the TC ingress program of the mark fast path in [`OBJECT`].
pub const TC_MARK_PROGRAM: &str = "apns_tc_mark";

/// Name of the XDP entry point in [`OBJECT`].
pub const XDP_PROGRAM: &str = "apns_xdp";

/// The aya-log level a program is loaded with. Disabled log calls cost nothing: the level is
/// a load-time constant, and the verifier removes the code it makes unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EbpfLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl EbpfLog {
    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL` (aya_log_common::Level, 0 for off).
    pub const fn level(self) -> u8 {
        self as u8
    }

    /// The tracing level name that shows records of this level; `None` for off.
    pub const fn filter_directive(self) -> Option<&'static str> {
        match self {
            EbpfLog::Off => None,
            EbpfLog::Error => Some("error"),
            EbpfLog::Warn => Some("warn"),
            EbpfLog::Info => Some("info"),
            EbpfLog::Debug => Some("debug"),
            EbpfLog::Trace => Some("trace"),
        }
    }

    pub fn from_level(level: u32) -> EbpfLog {
        match level {
            0 => EbpfLog::Off,
            1 => EbpfLog::Error,
            2 => EbpfLog::Warn,
            3 => EbpfLog::Info,
            4 => EbpfLog::Debug,
            _ => EbpfLog::Trace,
        }
    }
}

/// The global aya-log-ebpf reads its level from.
const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// A loader for the datapath object with its log level set.
pub fn loader<'a>(log: &'a u8) -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.override_global(LOG_LEVEL_GLOBAL, log, true);
    loader
}

/// Loads the object with fresh, unpinned maps and loads (verifies) the XDP program, without
/// attaching it anywhere, logging off. Used by tests and benchmarks that drive the program
/// through BPF_PROG_TEST_RUN.
pub fn load_unpinned() -> anyhow::Result<Ebpf> {
    let off = EbpfLog::Off.level();
    let mut ebpf = loader(&off)
        .load(OBJECT)
        .context("loading the apns-ebpf object (maps and BTF)")?;
    xdp_program(&mut ebpf)?
        .load()
        .with_context(|| format!("loading XDP program {XDP_PROGRAM} (the verifier log follows)"))?;
    Ok(ebpf)
}

/// The XDP program of a loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(XDP_PROGRAM)
        .with_context(|| format!("the object has no program named {XDP_PROGRAM}"))?
        .try_into()
        .with_context(|| format!("program {XDP_PROGRAM} is not an XDP program"))
}
