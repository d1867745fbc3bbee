//! The datapath object built from apns-ebpf (by build.rs), and how to load it.

use anyhow::Context as _;
use apns_common::{features, label::Label, programs};
use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};

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

/// The datapath with a `redirect` fast path that hands every packet to the TC step (as if no
/// next hop were resolved): measures the TC step's cost per packet against XDP redirect.
#[cfg(feature = "test-objects")]
pub static BENCH_HANDOFF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-handoff"));

/// The aya-log level a program is loaded with. Disabled log calls cost nothing: the level is
/// a load-time constant, and the verifier removes the code it makes unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EbpfLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl Label for EbpfLog {
    const WHAT: &'static str = "eBPF log level";
    const ALL: &'static [EbpfLog] = &[
        EbpfLog::Off,
        EbpfLog::Error,
        EbpfLog::Warn,
        EbpfLog::Info,
        EbpfLog::Debug,
        EbpfLog::Trace,
    ];
    fn as_str(self) -> &'static str {
        match self {
            EbpfLog::Off => "off",
            EbpfLog::Error => "error",
            EbpfLog::Warn => "warn",
            EbpfLog::Info => "info",
            EbpfLog::Debug => "debug",
            EbpfLog::Trace => "trace",
        }
    }
}

impl EbpfLog {
    /// The value of aya-log-ebpf's `AYA_LOG_LEVEL` (aya_log_common::Level, 0 for off).
    pub const fn level(self) -> u8 {
        self as u8
    }

    /// The tracing level name that shows records of this level; `None` for off.
    pub fn filter_directive(self) -> Option<&'static str> {
        (self != EbpfLog::Off).then(|| self.as_str())
    }

    pub fn from_level(level: u32) -> EbpfLog {
        EbpfLog::ALL
            .get(level as usize)
            .copied()
            .unwrap_or(EbpfLog::Trace)
    }
}

/// The global aya-log-ebpf reads its level from.
const LOG_LEVEL_GLOBAL: &str = "AYA_LOG_LEVEL";

/// The load-time constants of the programs: the verifier knows their values and removes the
/// code they switch off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Constants {
    /// aya-log-ebpf's level ([`EbpfLog::level`]).
    pub log: u8,
    /// The kernel features the programs may use (`apns_common::features::bits`).
    pub features: u32,
}

impl Constants {
    /// The constants for this kernel (its features probed) and log level `log`.
    pub fn for_this_kernel(log: EbpfLog) -> anyhow::Result<Constants> {
        Ok(Constants {
            log: log.level(),
            features: super::features::Features::probe()?.program_bits(),
        })
    }
}

/// A loader for the datapath object with its load-time constants set.
pub fn loader(constants: &Constants) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader.override_global(LOG_LEVEL_GLOBAL, &constants.log, true);
    loader.override_global(features::GLOBAL, &constants.features, true);
    loader
}

/// Loads the object with fresh, unpinned maps and loads (verifies) the XDP program, without
/// attaching it anywhere, logging off, with this kernel's features. Used by tests and
/// benchmarks that drive the program through BPF_PROG_TEST_RUN.
pub fn load_unpinned() -> anyhow::Result<Ebpf> {
    let constants = Constants::for_this_kernel(EbpfLog::Off)?;
    let mut ebpf = loader(&constants)
        .load(OBJECT)
        .context("loading the apns-ebpf object (maps and BTF)")?;
    xdp_program(&mut ebpf)?.load().with_context(|| {
        format!(
            "loading XDP program {} (the verifier log follows)",
            programs::XDP
        )
    })?;
    Ok(ebpf)
}

/// The XDP program of a loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(programs::XDP)
        .with_context(|| format!("the object has no program named {}", programs::XDP))?
        .try_into()
        .with_context(|| format!("program {} is not an XDP program", programs::XDP))
}

/// The TC egress program of the connection table in a loaded object.
pub fn tc_conns_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    ebpf.program_mut(programs::TC_CONNS)
        .with_context(|| format!("the object has no program named {}", programs::TC_CONNS))?
        .try_into()
        .with_context(|| format!("program {} is not a TC classifier", programs::TC_CONNS))
}

/// The TC ingress program of the fast paths (mark and redirect) in a loaded object.
pub fn tc_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut SchedClassifier> {
    ebpf.program_mut(programs::TC)
        .with_context(|| format!("the object has no program named {}", programs::TC))?
        .try_into()
        .with_context(|| format!("program {} is not a TC classifier", programs::TC))
}

/// The TC program of `hook` in a loaded object.
pub fn tc_hook_program(
    ebpf: &mut Ebpf,
    hook: super::links::TcHook,
) -> anyhow::Result<&mut SchedClassifier> {
    match hook {
        super::links::TcHook::FastPath => tc_program(ebpf),
        super::links::TcHook::Connections => tc_conns_program(ebpf),
    }
}
