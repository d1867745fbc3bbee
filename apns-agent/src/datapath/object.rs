//! The datapath object built from apns-ebpf (by build.rs), and how to load it.

use std::path::PathBuf;

use anyhow::Context as _;
use apns_common::{features, label::Label, maps::CONNS, programs};
use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};

use super::pins::{restrict, PinDir};

/// The eBPF object, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apns"));

/// The classifier as a component of libxdp's multiprog dispatcher (`apns_xdp_libxdp`, loaded
/// as an extension program; docs/multiprog.md), with the same maps as [`OBJECT`].
pub static COMPONENT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apns-libxdp"));

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

/// A loader for the datapath object with its load-time constants set. It never reads the
/// kernel's BTF: the object has no BTF (CO-RE) relocations, and aya (patched,
/// third_party/README.md) parses the kernel's BTF only for an object that has some. Kernel
/// features are probed without it; the object's own BTF (function and line info) is loaded
/// as before.
pub fn loader(constants: &Constants) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader.override_global(LOG_LEVEL_GLOBAL, &constants.log, true);
    loader.override_global(features::GLOBAL, &constants.features, true);
    loader
}

/// Loads the libxdp component's object ([`COMPONENT_OBJECT`]) with the maps pinned in `pins`
/// and aya-log level `log` (the pinned programs'), its program marked as an extension: the
/// caller loads it against a dispatcher's slot.
pub fn load_component(pins: &PinDir, log: EbpfLog) -> anyhow::Result<Ebpf> {
    let constants = Constants::for_this_kernel(log)?;
    let mut loader = loader(&constants);
    loader.extension(programs::XDP_COMPONENT);
    if let Ok(table) = aya::maps::MapInfo::from_pin(pins.map(CONNS)) {
        loader.map_max_entries(CONNS, table.max_entries());
    }
    let paths = map_pins(pins);
    load_with_pinned_maps(loader, &paths, pins, COMPONENT_OBJECT)
}

/// Each map of the datapath with its pin path in `maps_at`.
pub fn map_pins(maps_at: &PinDir) -> Vec<(&'static str, PathBuf)> {
    apns_common::maps::ALL
        .iter()
        .map(|layout| (layout.name, maps_at.map(layout.name)))
        .collect()
}

/// Loads `object` with `loader` and every map of the datapath pinned at `paths` in `maps_at`
/// (reused where pinned, else created and pinned there: aya's `map_pin_path`).
pub fn load_with_pinned_maps<'a>(
    mut loader: EbpfLoader<'a>,
    paths: &'a [(&'static str, PathBuf)],
    maps_at: &PinDir,
    object: &[u8],
) -> anyhow::Result<Ebpf> {
    for (name, path) in paths {
        loader.map_pin_path(name, path.as_path());
    }
    let ebpf = loader.load(object).with_context(|| {
        format!(
            "loading the datapath with its maps pinned in {}",
            maps_at.maps_dir().display()
        )
    })?;
    for (_, path) in paths {
        if path.exists() {
            restrict(path)?;
        }
    }
    Ok(ebpf)
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

/// What the verifier said of one program: its size once translated, and how many
/// instructions the verifier processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub translated: u32,
    pub processed: u32,
}

/// Loads every program of the object with this kernel's features (fresh, unpinned maps;
/// nothing attached) and returns the verifier's verdict on each: its counts, or the line of
/// its log that says why it refused.
pub fn verify_all() -> anyhow::Result<Vec<(&'static str, Result<Verified, String>)>> {
    let constants = Constants::for_this_kernel(EbpfLog::Off)?;
    let mut ebpf = loader(&constants)
        .load(OBJECT)
        .context("loading the apns-ebpf object (maps and BTF)")?;
    let mut verdicts = Vec::new();
    let xdp = xdp_program(&mut ebpf)?;
    verdicts.push((programs::XDP, verdict(xdp.load(), || xdp.info())));
    for name in [programs::TC, programs::TC_CONNS] {
        let tc: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("the object has no program named {name}"))?
            .try_into()?;
        verdicts.push((name, verdict(tc.load(), || tc.info())));
    }
    Ok(verdicts)
}

/// The verifier's verdict on the libxdp component ([`COMPONENT_OBJECT`], fresh maps) as an
/// extension of a slot of libxdp's dispatcher (`multiprog`), both loaded and attached
/// nowhere. An error when there is no dispatcher to load (libxdp's object missing).
pub fn verify_component() -> anyhow::Result<Result<Verified, String>> {
    let (dispatcher, _, slot) = super::multiprog::unattached_dispatcher(2)?;
    let constants = Constants::for_this_kernel(EbpfLog::Off)?;
    let mut loader = loader(&constants);
    loader.extension(programs::XDP_COMPONENT);
    let mut ebpf = loader
        .load(COMPONENT_OBJECT)
        .context("loading the libxdp component's object (maps and BTF)")?;
    let component: &mut aya::programs::Extension = ebpf
        .program_mut(programs::XDP_COMPONENT)
        .with_context(|| format!("the component object has no {}", programs::XDP_COMPONENT))?
        .try_into()?;
    Ok(verdict(component.load(dispatcher, slot), || {
        component.info()
    }))
}

fn verdict(
    loaded: Result<(), aya::programs::ProgramError>,
    info: impl FnOnce() -> Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
) -> Result<Verified, String> {
    match loaded {
        Ok(()) => {
            let info = info().map_err(|err| format!("{err}"))?;
            Ok(Verified {
                translated: info.size_translated().unwrap_or_default() / 8,
                processed: info.verified_instruction_count().unwrap_or_default(),
            })
        }
        Err(aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                // Refused before the verifier ran (an extension program where the kernel
                // allows none: EPERM).
                Err(format!("{io_error}, before verification"))
            } else {
                Err(format!("{io_error}: {}", refusal_line(&log)))
            }
        }
        Err(err) => Err(err.to_string()),
    }
}

/// The line of a verifier log that says why it refused: the last one before the statistics
/// the verifier appends (verification time, stack depth, processed instructions).
pub fn refusal_line(log: &str) -> &str {
    log.lines()
        .map(str::trim)
        .rev()
        .find(|line| {
            !line.is_empty()
                && !line.starts_with("verification time")
                && !line.starts_with("stack depth")
                && !line.starts_with("processed ")
        })
        .unwrap_or("(the verifier said nothing)")
}

#[cfg(test)]
mod tests {
    use super::refusal_line;

    #[test]
    fn the_refusal_is_the_line_before_the_statistics() {
        let log = "0: (b7) r0 = 0\nR2 type=mem expected=fp, pkt\nverification time 12 usec\nstack depth 8\nprocessed 3 insns (limit 1000000)\n";
        assert_eq!(refusal_line(log), "R2 type=mem expected=fp, pkt");
        assert_eq!(refusal_line(""), "(the verifier said nothing)");
    }
}
