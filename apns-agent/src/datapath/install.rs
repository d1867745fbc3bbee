//! Putting this agent's programs into the pinned datapath: create it when nothing is pinned,
//! adopt it when the pinned programs are this agent's, and otherwise swap this agent's
//! programs in behind every pinned link (`bpf_link_update`), keeping the maps and with them
//! the counters and the policy. XDP and TC programs are swapped by the same code; a
//! component in libxdp's dispatcher cannot be swapped in place, and its dispatcher is
//! rebuilt around the new one (`links::rejoin`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use apns_common::{
    maps::{Meta, CONNS, META},
    programs, LAYOUT_VERSION,
};
use aya::{
    maps::Array,
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        ProgramInfo, SchedClassifier, Xdp,
    },
    Ebpf,
};

use aya_obj::programs::XdpAttachType;

use super::{
    layout,
    links::{self, TcHook},
    object::{self, EbpfLog},
    pins::{restrict, AttachMode, PinDir},
    sys,
};

/// What [`install`] did with the programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Nothing was pinned: maps, programs and pins were created.
    Fresh,
    /// The pinned programs are this agent's: adopted as they are.
    Adopted,
    /// The pinned programs differed: every link now runs this agent's programs (swapped
    /// atomically with bpf_link_update), maps and counters kept.
    Upgraded,
    /// The pinned datapath had the previous map layout (version `from`): it was migrated in
    /// place (see `migrate`), policy, interfaces and counters carried over.
    Migrated { from: u32 },
}

/// Makes the datapath pinned in `pins` run `object`'s programs; see the module
/// documentation. The caller holds the pin directory's lock and has prepared it, and has
/// migrated a datapath of the previous map layout first (`migrate`, which uses this
/// module's steps: so this module never calls it).
///
/// `log` is the aya-log level to load the program with; `None` keeps the pinned program's
/// (off for a new one). A different level reloads the programs like an upgrade.
///
/// `connections` is the size of a connection table made now (`APNS_CONNS`); a pinned one
/// keeps its size (a warning says so when it differs).
pub fn install(
    pins: &PinDir,
    object: &[u8],
    log: Option<EbpfLog>,
    connections: u32,
) -> anyhow::Result<Installed> {
    let pinned_log = if pins.is_loaded() {
        layout::check(pins)?;
        Some(layout::ebpf_log(pins)?)
    } else {
        None
    };
    let log = log.or(pinned_log).unwrap_or_default();
    // Written before the program is loaded or swapped in: an interrupted install then
    // re-installs rather than adopts (the level would not match).
    let mut ebpf = load(pins, object, log, LAYOUT_VERSION, connections)?;
    load_programs(&mut ebpf)?;
    let pinned_tag = pinned_tag(&pins.program())?;
    let new_tag = object::xdp_program(&mut ebpf)?.info()?.tag();
    if pinned_tag == Some(new_tag) && pinned_log == Some(log) {
        return Ok(Installed::Adopted);
    }
    swap_programs(&mut ebpf, pins)?;
    Ok(if pinned_tag.is_none() {
        Installed::Fresh
    } else {
        Installed::Upgraded
    })
}

/// Loads (verifies) the XDP and the two TC programs of a loaded object.
pub fn load_programs(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    object::xdp_program(ebpf)?.load().with_context(|| {
        format!(
            "loading XDP program {} (the verifier log follows)",
            programs::XDP
        )
    })?;
    object::tc_program(ebpf)?.load().with_context(|| {
        format!(
            "loading TC program {} (the verifier log follows)",
            programs::TC
        )
    })?;
    object::tc_conns_program(ebpf)?.load().with_context(|| {
        format!(
            "loading TC program {} (the verifier log follows)",
            programs::TC_CONNS
        )
    })
}

/// Swaps the loaded programs of `ebpf` in behind every link pinned in `pins` (and into every
/// netlink TC filter recorded there) and pins them in place of the old ones. The TC halves
/// first: what the fast paths' program reads (XDP metadata) is written by either XDP
/// version, and the connection table's halves share its layout.
pub fn swap_programs(ebpf: &mut Ebpf, pins: &PinDir) -> anyhow::Result<()> {
    for hook in [TcHook::FastPath, TcHook::Connections] {
        let program = tc_hook_program(ebpf, hook)?;
        let mut tcx_links = Vec::new();
        for (interface, record) in hook.attachments(pins)? {
            if sys::pins_a_link(&record) {
                tcx_links.push(record);
                continue;
            }
            links::replace_netlink(program, &interface, hook)?;
            std::fs::remove_file(&record)
                .with_context(|| format!("removing the old record {}", record.display()))?;
            program
                .pin(&record)
                .with_context(|| format!("recording the netlink filter at {}", record.display()))?;
            restrict(&record)?;
        }
        swap_in(program, tcx_links.into_iter(), &hook.program_pin(pins))?;
    }
    let (components, xdp_links): (Vec<_>, Vec<_>) = pins
        .links()?
        .into_iter()
        .partition(|link| link.mode == AttachMode::Libxdp);
    swap_in(
        object::xdp_program(ebpf)?,
        xdp_links.into_iter().map(|link| link.path),
        &pins.program(),
    )?;
    // A component cannot be swapped in place: its dispatcher is rebuilt around the new one.
    for component in &components {
        links::rejoin(pins, component)?;
    }
    Ok(())
}

/// The TC program of `hook` in a loaded object.
fn tc_hook_program(ebpf: &mut Ebpf, hook: TcHook) -> anyhow::Result<&mut SchedClassifier> {
    match hook {
        TcHook::FastPath => object::tc_program(ebpf),
        TcHook::Connections => object::tc_conns_program(ebpf),
    }
}

/// Which of the datapath's programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    Xdp,
    /// The fast paths' TC ingress program.
    Tc,
    /// The connection table's TC egress program.
    TcConns,
}

/// Pins the loaded program `id` (of `kind`) at `path`.
pub fn pin_program_by_id(id: u32, path: &Path, kind: ProgramKind) -> anyhow::Result<()> {
    let info =
        sys::program_by_id(id).with_context(|| format!("program {id} is no longer loaded"))?;
    let pinned = match kind {
        ProgramKind::Xdp => {
            Xdp::from_program_info(info, programs::XDP.into(), XdpAttachType::Interface)
                .map(|mut program| program.pin(path))
        }
        ProgramKind::Tc | ProgramKind::TcConns => {
            let name = if kind == ProgramKind::Tc {
                programs::TC
            } else {
                programs::TC_CONNS
            };
            SchedClassifier::from_program_info(info, name.into())
                .map(|mut program| program.pin(path))
        }
    };
    pinned
        .with_context(|| format!("opening program {id}"))?
        .with_context(|| format!("pinning program {id} at {}", path.display()))?;
    restrict(path)
}

/// Loads `object` with every map pinned in `maps_at` (created there, or reused when already
/// pinned: aya's `map_pin_path`), the log level set, and META stamped with `version` and
/// the level. A connection table made now holds `connections` entries. The programs are not
/// loaded yet.
pub fn load(
    maps_at: &PinDir,
    object: &[u8],
    log: EbpfLog,
    version: u32,
    connections: u32,
) -> anyhow::Result<Ebpf> {
    let constants = object::Constants::for_this_kernel(log)?;
    let mut loader = object::loader(&constants);
    warn_if_resized(maps_at, connections);
    loader.map_max_entries(CONNS, connections);
    let paths = object::map_pins(maps_at);
    let mut ebpf = object::load_with_pinned_maps(loader, &paths, maps_at, object)?;
    stamp(&mut ebpf, version, log)?;
    Ok(ebpf)
}

/// A pinned connection table keeps its size: the kernel cannot resize a map, and a new one
/// would lose every connection tracked. Says so when the config asks for another.
fn warn_if_resized(pins: &PinDir, connections: u32) {
    let path = pins.map(CONNS);
    let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
        return;
    };
    if info.max_entries() != connections {
        tracing::warn!(
            "the pinned connection table {} holds {} connections; the config's [clients] table_size ({connections}) applies when the datapath is made again (`apns-agent unload`, then `run`; the connections tracked so far are lost)",
            path.display(),
            info.max_entries()
        );
    }
}

/// Writes META of a loaded object: the layout `version` and the log level.
pub fn stamp(ebpf: &mut Ebpf, version: u32, log: EbpfLog) -> anyhow::Result<()> {
    let mut meta: Array<_, Meta> =
        Array::try_from(ebpf.map_mut(META).context("the object has no META map")?)?;
    meta.set(
        0,
        Meta {
            layout_version: version,
            ebpf_log_level: u32::from(log.level()),
        },
        0,
    )
    .with_context(|| format!("writing map {META}"))
}

/// The tag of the program pinned at `path`, if one is.
fn pinned_tag(path: &Path) -> anyhow::Result<Option<u64>> {
    if !path.exists() {
        return Ok(None);
    }
    let info = ProgramInfo::from_pin(path)
        .with_context(|| format!("reading pinned program {}", path.display()))?;
    Ok(Some(info.tag()))
}

/// A loaded program that can take another's place behind a live link.
trait Swappable {
    /// Makes the link pinned at `link` run this program (`bpf_link_update`).
    fn replace_behind(&mut self, link: FdLink) -> anyhow::Result<()>;
    fn pin_at(&mut self, path: &Path) -> anyhow::Result<()>;
}

/// One impl per aya program type; they differ only in their link types.
macro_rules! swappable {
    ($program:ty, $link:ty, $kind:literal) => {
        impl Swappable for $program {
            fn replace_behind(&mut self, link: FdLink) -> anyhow::Result<()> {
                let link = <$link>::try_from(link)
                    .with_context(|| concat!("the pinned link is not a ", $kind, " link"))?;
                let id = self.attach_to_link(link)?;
                // The link stays pinned; this handle must not detach it when dropped.
                let _kept: FdLink = self.take_link(id)?.try_into()?;
                Ok(())
            }
            fn pin_at(&mut self, path: &Path) -> anyhow::Result<()> {
                Ok(self.pin(path)?)
            }
        }
    };
}
swappable!(Xdp, XdpLink, "XDP");
swappable!(SchedClassifier, SchedClassifierLink, "TCX");

/// Swaps `program` in behind every link pinned at `links`, then pins it at `program_pin`
/// in place of the old one.
fn swap_in(
    program: &mut impl Swappable,
    links: impl Iterator<Item = PathBuf>,
    program_pin: &Path,
) -> anyhow::Result<()> {
    for (index, path) in links.enumerate() {
        if index == 1 {
            super::hooks::pause_at(super::hooks::AFTER_FIRST_LINK_SWAP);
        }
        let pinned = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening link pin {}", path.display()))?;
        program
            .replace_behind(FdLink::from(pinned))
            .with_context(|| {
                format!(
                    "replacing the program behind {} (bpf_link_update)",
                    path.display()
                )
            })?;
    }
    if program_pin.exists() {
        std::fs::remove_file(program_pin)
            .with_context(|| format!("removing the old program pin {}", program_pin.display()))?;
    }
    program
        .pin_at(program_pin)
        .with_context(|| format!("pinning the program at {}", program_pin.display()))?;
    restrict(program_pin)
}
