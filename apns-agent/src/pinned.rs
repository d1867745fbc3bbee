//! The pinned datapath's lifecycle: load or adopt, attach, detach, unload, and what status
//! reports. Everything lives in bpffs (see `pins`), so it outlives the agent process: a
//! killed agent leaves the datapath classifying and enforcing, and the next one adopts it.

use std::path::Path;

use anyhow::{bail, Context as _};
use apns_common::{
    events::EventConfig,
    maps::{MapLayout, Meta, META},
    LAYOUT_VERSION,
};
use aya::{
    maps::{Array, Map, MapData, MapInfo},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachType},
        xdp::XdpLink,
        ProgramInfo, SchedClassifier, Xdp, XdpMode,
    },
};
use aya_obj::programs::XdpAttachType;

use crate::{
    counters::CounterMaps,
    datapath::{self, xdp_program, EbpfLog, OBJECT, TC_MARK_PROGRAM},
    events::EventMaps,
    interfaces::{FastPath, InterfaceMaps, MarkBits},
    maps::PolicyMaps,
    pins::{restrict, AttachMode, LinkPin, PinDir},
    policy::Policy,
};

/// How to attach XDP to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic (skb) mode where the driver has none.
    #[default]
    Auto,
    Native,
    Skb,
}

/// Handles to the maps of a pinned datapath.
pub struct Datapath {
    pub policy: PolicyMaps,
    pub counters: CounterMaps,
}

impl Datapath {
    /// Opens the maps of the datapath pinned in `pins`, after checking their layout. Refuses
    /// when nothing is loaded there.
    pub fn open(pins: &PinDir) -> anyhow::Result<Datapath> {
        if !pins.is_loaded() {
            bail!(
                "no apns-agent datapath is loaded (nothing pinned at {}): start one with `apns-agent run` or `apns-agent attach IFACE`",
                pins.root().display()
            );
        }
        check_pinned_layout(pins)?;
        let open = |name: &'static str| open_pinned_map(pins, name);
        Ok(Datapath {
            policy: PolicyMaps::open(open)?,
            counters: CounterMaps::open(open)?,
        })
    }
}

/// The per-interface maps of the datapath pinned in `pins` (layout checked).
pub fn interface_maps(pins: &PinDir) -> anyhow::Result<InterfaceMaps> {
    Datapath::open(pins)?;
    InterfaceMaps::open(|name| open_pinned_map(pins, name))
}

/// The drop-event maps of the datapath pinned in `pins` (layout checked as by
/// [`Datapath::open`]).
pub fn event_maps(pins: &PinDir) -> anyhow::Result<EventMaps> {
    Datapath::open(pins)?;
    EventMaps::open(|name| open_pinned_map(pins, name))
}

fn open_pinned_map(pins: &PinDir, name: &str) -> anyhow::Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data)
        .with_context(|| format!("pinned map {} has an unknown type", path.display()))
}

/// Checks every pinned map against the layout this agent was built with. A datapath pinned
/// by an agent of another layout is refused, never silently reused.
fn check_pinned_layout(pins: &PinDir) -> anyhow::Result<()> {
    let fix = "run `apns-agent unload` to remove it (its counters are lost), then start again";
    // The version first: `APNS_META` has the same layout in every version, and a datapath
    // of another version is best refused by its version, not by the first map that differs.
    if let Ok(meta) = read_meta(pins) {
        if meta.layout_version != LAYOUT_VERSION {
            bail!(
                "the datapath pinned at {} has map layout version {}; this agent uses version {LAYOUT_VERSION}: {fix}",
                pins.root().display(),
                meta.layout_version
            );
        }
    }
    for expected in apns_common::maps::ALL {
        let path = pins.map(expected.name);
        let info = MapInfo::from_pin(&path).with_context(|| {
            format!(
                "pinned map {} is missing or unreadable; the pin directory is incomplete: {fix}",
                path.display()
            )
        })?;
        let found = MapLayout {
            name: expected.name,
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if found != expected {
            bail!(
                "pinned map {} has another layout (type {}, key {} B, value {} B, {} entries; this agent needs type {}, key {} B, value {} B, {} entries): {fix}",
                path.display(),
                found.map_type, found.key_size, found.value_size, found.max_entries,
                expected.map_type, expected.key_size, expected.value_size, expected.max_entries
            );
        }
    }
    let version = read_meta(pins)?.layout_version;
    if version != LAYOUT_VERSION {
        bail!(
            "the datapath pinned at {} has map layout version {version}; this agent uses version {LAYOUT_VERSION}: {fix}",
            pins.root().display()
        );
    }
    Ok(())
}

fn read_meta(pins: &PinDir) -> anyhow::Result<Meta> {
    let meta: Array<MapData, Meta> =
        Array::try_from(open_pinned_map(pins, META)?).with_context(|| format!("map {META}"))?;
    meta.get(&0, 0)
        .with_context(|| format!("reading map {META}"))
}

/// The aya-log level of the pinned program.
pub fn ebpf_log(pins: &PinDir) -> anyhow::Result<EbpfLog> {
    Ok(EbpfLog::from_level(read_meta(pins)?.ebpf_log_level))
}

/// What [`install`] did with the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Nothing was pinned: maps, program and pins were created.
    Fresh,
    /// The pinned program is this agent's program: adopted as it is.
    Adopted,
    /// The pinned program differed: every link now runs this agent's program (swapped
    /// atomically with bpf_link_update), maps and counters kept.
    Upgraded,
}

/// Makes the pinned datapath run this agent's program: creates it when nothing is pinned,
/// adopts it when the pinned program is the same, swaps the program behind every pinned link
/// when it differs. Maps are reused (after a layout check), so counters carry on.
///
/// `log` is the aya-log level to load the program with; `None` keeps the pinned program's
/// (off for a new one). A different level reloads the program like an upgrade.
pub fn install(pins: &PinDir, log: Option<EbpfLog>) -> anyhow::Result<Installed> {
    install_object(pins, OBJECT, log)
}

/// [`install`] with another build of the datapath object (upgrade tests).
pub fn install_object(
    pins: &PinDir,
    object: &[u8],
    log: Option<EbpfLog>,
) -> anyhow::Result<Installed> {
    pins.prepare()?;
    if pins.is_loaded() {
        check_pinned_layout(pins)?;
        return install_program(pins, object, log);
    }
    // Nothing was pinned: a failure half-way must not leave maps without a program behind.
    let installed = install_program(pins, object, log).and_then(|installed| {
        // A datapath is never left without a policy: Apple's defaults until told otherwise.
        Datapath::open(pins)?
            .policy
            .apply(&Policy::apple_defaults())?;
        event_maps(pins)?.set_config(EventConfig::default())?;
        Ok(installed)
    });
    if installed.is_err() {
        if let Err(err) = pins.remove_all() {
            tracing::warn!("cleaning up the half-made pin directory: {err:#}");
        }
    }
    installed
}

fn install_program(
    pins: &PinDir,
    object: &[u8],
    log: Option<EbpfLog>,
) -> anyhow::Result<Installed> {
    let pinned_meta = if pins.is_loaded() {
        Some(read_meta(pins)?)
    } else {
        None
    };
    let pinned_log = pinned_meta.map(|meta| EbpfLog::from_level(meta.ebpf_log_level));
    let log = log.or(pinned_log).unwrap_or_default();
    let level = log.level();
    let mut loader = datapath::loader(&level);
    let paths: Vec<(&str, std::path::PathBuf)> = apns_common::maps::ALL
        .iter()
        .map(|layout| (layout.name, pins.map(layout.name)))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(object).with_context(|| {
        format!(
            "loading the datapath with its maps pinned in {}",
            pins.maps_dir().display()
        )
    })?;
    for (_, path) in &paths {
        restrict(path)?;
    }
    // Written before the program is loaded or swapped in: an interrupted install then
    // re-installs rather than adopts (the level would not match).
    let mut meta: Array<_, Meta> =
        Array::try_from(ebpf.map_mut(META).context("the object has no META map")?)?;
    meta.set(
        0,
        Meta {
            layout_version: LAYOUT_VERSION,
            ebpf_log_level: u32::from(level),
        },
        0,
    )
    .with_context(|| format!("writing map {META}"))?;
    let program = xdp_program(&mut ebpf)?;
    program
        .load()
        .context("loading the XDP program (the verifier log follows)")?;
    let new_tag = program.info()?.tag();

    let program_pin = pins.program();
    let pinned_tag = if program_pin.exists() {
        Some(
            ProgramInfo::from_pin(&program_pin)
                .with_context(|| format!("reading pinned program {}", program_pin.display()))?
                .tag(),
        )
    } else {
        None
    };
    if pinned_tag == Some(new_tag) && pinned_log == Some(log) {
        return Ok(Installed::Adopted);
    }
    install_tc_program(&mut ebpf, pins)?;
    let program = xdp_program(&mut ebpf)?;
    for link in pins.links()? {
        let pinned = PinnedLink::from_pin(&link.path)
            .with_context(|| format!("opening link pin {}", link.path.display()))?;
        let xdp_link = XdpLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("{} is not an XDP link", link.path.display()))?;
        let id = program.attach_to_link(xdp_link).with_context(|| {
            format!(
                "replacing the program behind {} (bpf_link_update)",
                link.path.display()
            )
        })?;
        // Keep the link alive after `program` is dropped: it stays pinned.
        let _kept: FdLink = program.take_link(id)?.try_into()?;
    }
    if pinned_tag.is_some() {
        std::fs::remove_file(&program_pin)
            .with_context(|| format!("removing the old program pin {}", program_pin.display()))?;
    }
    program
        .pin(&program_pin)
        .with_context(|| format!("pinning the XDP program at {}", program_pin.display()))?;
    restrict(&program_pin)?;
    Ok(if pinned_tag.is_none() {
        Installed::Fresh
    } else {
        Installed::Upgraded
    })
}

/// Loads the mark fast path's TC program of the same object, swaps it in behind every pinned
/// TC link, and pins it (replacing an older one).
fn install_tc_program(ebpf: &mut aya::Ebpf, pins: &PinDir) -> anyhow::Result<()> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(TC_MARK_PROGRAM)
        .with_context(|| format!("the object has no program named {TC_MARK_PROGRAM}"))?
        .try_into()
        .with_context(|| format!("program {TC_MARK_PROGRAM} is not a TC classifier"))?;
    program
        .load()
        .with_context(|| format!("loading {TC_MARK_PROGRAM} (the verifier log follows)"))?;
    for (interface, path) in pins.tc_links()? {
        let pinned = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening link pin {}", path.display()))?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .with_context(|| format!("{} is not a TCX link", path.display()))?;
        let id = program.attach_to_link(link).with_context(|| {
            format!("replacing the TC program of {interface} (bpf_link_update)")
        })?;
        let _kept: FdLink = program.take_link(id)?.try_into()?;
    }
    let pin = pins.tc_program();
    if pin.exists() {
        std::fs::remove_file(&pin)
            .with_context(|| format!("removing the old program pin {}", pin.display()))?;
    }
    program
        .pin(&pin)
        .with_context(|| format!("pinning {TC_MARK_PROGRAM} at {}", pin.display()))?;
    restrict(&pin)
}

/// Attaches the mark fast path's TC ingress program to `interface` (kept when already there).
fn attach_tc(pins: &PinDir, interface: &str) -> anyhow::Result<()> {
    let path = pins.tc_link(interface);
    if path.exists() {
        return Ok(());
    }
    let mut program = SchedClassifier::from_pin(pins.tc_program())
        .with_context(|| format!("opening the pinned program {}", pins.tc_program().display()))?;
    let id = program
        .attach(interface, TcAttachType::Ingress)
        .with_context(|| format!("attaching {TC_MARK_PROGRAM} to {interface} (TC ingress)"))?;
    let link: FdLink = program.take_link(id)?.try_into().with_context(|| {
        format!("{interface}: TC attached without a bpf_link (kernel older than 6.6?)")
    })?;
    link.pin(&path)
        .with_context(|| format!("pinning the TC link of {interface} at {}", path.display()))?;
    restrict(&path)
}

/// Removes `interface`'s TC link, if any.
fn detach_tc(pins: &PinDir, interface: &str) -> anyhow::Result<()> {
    let path = pins.tc_link(interface);
    if !path.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(&path)
        .with_context(|| format!("opening link pin {}", path.display()))?;
    drop(
        link.unpin()
            .with_context(|| format!("removing link pin {}", path.display()))?,
    );
    Ok(())
}

/// Attaches the pinned program to `interface` and pins the link. Already attached: nothing
/// changes, and the mode it was attached with is returned.
pub fn attach(pins: &PinDir, interface: &str, choice: XdpModeChoice) -> anyhow::Result<AttachMode> {
    if let Some(link) = pins.link_of(interface)? {
        return Ok(link.mode);
    }
    let ifindex = ifindex(interface)?;
    let mut program = Xdp::from_pin(pins.program(), XdpAttachType::Interface)
        .with_context(|| format!("opening the pinned program {}", pins.program().display()))?;
    // Registered first, so the interface's very first packets are counted under its own
    // counter slot (not interface 0's); undone if no attach attempt succeeds.
    register(pins, ifindex)?;
    let attempts: &[AttachMode] = match choice {
        XdpModeChoice::Auto => &[AttachMode::Native, AttachMode::Skb],
        XdpModeChoice::Native => &[AttachMode::Native],
        XdpModeChoice::Skb => &[AttachMode::Skb],
    };
    let mut last_error = None;
    for &mode in attempts {
        let flags = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        match program.attach_to_if_index(ifindex, flags) {
            Ok(id) => {
                let link: FdLink = program
                    .take_link(id)?
                    .try_into()
                    .with_context(|| format!("{interface}: the kernel gave a netlink attachment, not a bpf_link (kernel older than 5.9?)"))?;
                let path = pins.link(interface, mode);
                link.pin(&path).with_context(|| {
                    format!("pinning the link of {interface} at {}", path.display())
                })?;
                restrict(&path)?;
                return Ok(mode);
            }
            Err(err) => {
                tracing::debug!(interface, mode = mode.as_str(), error = %err, "attach attempt failed");
                last_error = Some((mode, err));
            }
        }
    }
    if let Err(cleanup) = interface_maps(pins).and_then(|mut maps| maps.unregister(ifindex)) {
        tracing::warn!("undoing the registration of {interface}: {cleanup:#}");
    }
    let (mode, err) = last_error.expect("at least one attach attempt");
    Err(anyhow::Error::new(err)).with_context(|| {
        format!(
            "attaching XDP to {interface} in {} mode (is another XDP program attached? `ip link show {interface}` shows it; detach it first, or try --xdp-mode skb)",
            mode.as_str()
        )
    })
}

/// Makes a newly attached interface a redirect target, with the `pass` fast path unless it
/// already has one (a re-attach keeps the operator's choice).
fn register(pins: &PinDir, ifindex: u32) -> anyhow::Result<()> {
    let mut maps = interface_maps(pins)?;
    let fastpath = maps.fastpath(ifindex)?.unwrap_or_default();
    maps.register(ifindex, fastpath)
}

/// Detaches `interface` (removing its link pin). Not attached: an error naming it.
pub fn detach(pins: &PinDir, interface: &str) -> anyhow::Result<()> {
    let Some(link) = pins.link_of(interface)? else {
        bail!(
            "{interface} is not attached (no link pin in {})",
            pins.links_dir().display()
        );
    };
    remove_link(&link)?;
    detach_tc(pins, interface)?;
    // An interface that is gone left the devmap by itself; its fast-path entry is harmless.
    if let Ok(ifindex) = ifindex(interface) {
        interface_maps(pins)?.unregister(ifindex)?;
    }
    Ok(())
}

/// Sets the fast path of an attached `interface`; `mark` attaches the TC half on it (and any
/// other fast path removes it).
pub fn set_fastpath(
    pins: &PinDir,
    interface: &str,
    fastpath: FastPath,
    mark: Option<MarkBits>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        pins.link_of(interface)?.is_some(),
        "{interface} is not attached (see `apns-agent status`)"
    );
    let ifindex = ifindex(interface)?;
    if fastpath.is_mark() {
        // The TC half first: a marked packet with no one to read the mark is harmless.
        attach_tc(pins, interface)?;
        interface_maps(pins)?.set_fastpath(ifindex, fastpath, mark)
    } else {
        interface_maps(pins)?.set_fastpath(ifindex, fastpath, mark)?;
        detach_tc(pins, interface)
    }
}

fn remove_link(link: &LinkPin) -> anyhow::Result<()> {
    let pinned = PinnedLink::from_pin(&link.path)
        .with_context(|| format!("opening link pin {}", link.path.display()))?;
    // Unpinning drops the last reference but this fd; closing it detaches the program.
    let fd_link = pinned
        .unpin()
        .with_context(|| format!("removing link pin {}", link.path.display()))?;
    drop(fd_link);
    Ok(())
}

/// Detaches every interface and removes every pin (program and maps unload with them).
pub fn unload(pins: &PinDir) -> anyhow::Result<()> {
    for (interface, _) in pins.tc_links()? {
        detach_tc(pins, &interface)?;
    }
    for link in pins.links()? {
        remove_link(&link)?;
    }
    pins.remove_all()
}

/// Index of `interface` in the caller's network namespace.
pub fn ifindex(interface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(interface)
        .with_context(|| format!("unknown interface {interface:?} (see `ip link`)"))
}

/// One interface as `status` reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InterfaceStatus {
    pub interface: String,
    /// Whether the link still exists in the kernel and its interface is present.
    pub attached: bool,
    pub xdp_mode: &'static str,
    /// `pass` or `redirect`; absent when the interface is not present here.
    pub fastpath: Option<FastPath>,
    pub program_id: Option<u32>,
    pub link_id: Option<u32>,
    pub link_pin: String,
}

pub fn interface_status(pins: &PinDir) -> anyhow::Result<Vec<InterfaceStatus>> {
    let mut out = Vec::new();
    let maps = interface_maps(pins)?;
    for link in pins.links()? {
        let info = PinnedLink::from_pin(&link.path)
            .ok()
            .map(FdLink::from)
            .and_then(|fd| fd.info().ok());
        let index = ifindex(&link.interface).ok();
        out.push(InterfaceStatus {
            attached: info.is_some() && index.is_some(),
            xdp_mode: link.mode.as_str(),
            fastpath: match index {
                Some(index) => maps.fastpath(index)?,
                None => None,
            },
            program_id: info.as_ref().map(|i| i.program_id()),
            link_id: info.as_ref().map(|i| i.id()),
            link_pin: link.path.display().to_string(),
            interface: link.interface,
        });
    }
    Ok(out)
}

/// Id and tag of the pinned program.
pub fn program_info(pins: &PinDir) -> anyhow::Result<Option<(u32, u64)>> {
    let path = pins.program();
    if !Path::new(&path).exists() {
        return Ok(None);
    }
    let info = ProgramInfo::from_pin(&path)
        .with_context(|| format!("reading pinned program {}", path.display()))?;
    Ok(Some((info.id(), info.tag())))
}
