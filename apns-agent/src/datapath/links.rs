//! Attaching the pinned programs to interfaces and detaching them: one pinned bpf_link per
//! interface for XDP, one per `mark` or `redirect` interface for the fast paths' TC ingress
//! program, one per device-facing interface for the connection table's TC egress program,
//! and what the kernel says each link is attached to. TC programs are attached with TCX
//! links where the kernel has them (6.6+), else as netlink filters (clsact, direct action),
//! whose record in the pin directory is a second pin of the program they run.

use anyhow::{bail, Context as _};
use apns_common::{label::Label, programs};
use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, Link as _, LinkOrder, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcAttachType, TcHandle},
        Extension, ProgramFd, ProgramInfo, SchedClassifier, Xdp, XdpMode as KernelXdpMode,
    },
    sys::NetlinkError,
};
use aya_obj::programs::XdpAttachType;

use super::{
    features::{Feature, Features},
    layout,
    multiprog::{self, Member, Multiprog, Sharing},
    netdev::{self, XdpAttachMode},
    object, occupants,
    pins::{self, restrict, AttachMode, LinkPin, PinDir},
    sys::{self, LinkFacts},
};

/// How to attach XDP to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode where the driver has none.
    #[default]
    Auto,
    Native,
    Skb,
}

impl Label for XdpMode {
    const WHAT: &'static str = "XDP mode";
    const ALL: &'static [XdpMode] = &[XdpMode::Auto, XdpMode::Native, XdpMode::Skb];
    fn as_str(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        }
    }
}

/// Index of `interface` in the caller's network namespace.
pub fn ifindex(interface: &str) -> anyhow::Result<u32> {
    nix::net::if_::if_nametoindex(interface)
        .with_context(|| format!("unknown interface {interface:?} (see `ip link`)"))
}

/// The name of `ifindex` in the caller's network namespace, if it exists.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// What the kernel says about a link pin: `None` when the pin cannot be opened or read.
pub fn facts(link: &LinkPin) -> Option<LinkFacts> {
    sys::pinned_link(&link.path).ok()
}

/// How to attach XDP to a new interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpAttach {
    pub mode: XdpMode,
    pub sharing: Sharing,
}

/// Whether attaching `interface` (index `ifindex`) with `multiprog` makes the agent a
/// component of libxdp's dispatcher there rather than the interface's only XDP program.
pub fn joins(ifindex: u32, multiprog: Multiprog) -> anyhow::Result<bool> {
    Ok(match multiprog {
        Multiprog::Never => false,
        Multiprog::Always => true,
        Multiprog::Auto => occupants::of(ifindex, None)?
            .iter()
            .any(occupants::Occupant::joinable),
    })
}

/// Attaches XDP to `interface` (index `ifindex`): the pinned program with a pinned link of
/// its own, or, where [`joins`] says so, our component in libxdp's dispatcher (at `sharing`'s
/// priority). Returns the mode the record names.
pub fn attach_xdp(
    pins: &PinDir,
    interface: &str,
    ifindex: u32,
    how: XdpAttach,
) -> anyhow::Result<AttachMode> {
    let XdpAttach {
        mode: choice,
        sharing,
    } = how;
    if let Some(refusal) = Features::probe()?.attach_refusal() {
        bail!("{interface}: {refusal}");
    }
    if joins(ifindex, sharing.multiprog)? {
        join(pins, interface, ifindex, choice, sharing.priority)?;
        return Ok(AttachMode::Libxdp);
    }
    let mut program = Xdp::from_pin(pins.program(), XdpAttachType::Interface)
        .with_context(|| format!("opening the pinned program {}", pins.program().display()))?;
    let mut last_error = None;
    for &mode in attempts(choice) {
        let flags = match mode {
            XdpAttachMode::Native => KernelXdpMode::Driver,
            _ => KernelXdpMode::Skb,
        };
        let mode = match mode {
            XdpAttachMode::Native => AttachMode::Native,
            _ => AttachMode::Skb,
        };
        match program.attach_to_if_index(ifindex, flags) {
            Ok(id) => {
                let link: FdLink = program
                    .take_link(id)?
                    .try_into()
                    .with_context(|| format!("{interface}: the kernel gave a netlink attachment, not a bpf_link (kernel older than 5.9?)"))?;
                let path = pins.link(interface, ifindex, mode);
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
    let (mode, err) = last_error.expect("at least one attach attempt");
    let or_skb = match mode {
        AttachMode::Native => ", or try --xdp-mode skb",
        _ => "",
    };
    Err(anyhow::Error::new(err)).with_context(|| {
        format!(
            "attaching XDP to {interface} in {} mode (is another XDP program attached? `ip link show {interface}` shows it; detach it first{or_skb})",
            mode.as_str()
        )
    })
}

/// The XDP modes to try for `choice`, in order.
fn attempts(choice: XdpMode) -> &'static [XdpAttachMode] {
    match choice {
        XdpMode::Auto => &[XdpAttachMode::Native, XdpAttachMode::Skb],
        XdpMode::Native => &[XdpAttachMode::Native],
        XdpMode::Skb => &[XdpAttachMode::Skb],
    }
}

/// Makes our component a member of `interface`'s libxdp dispatcher (a new dispatcher, in
/// `choice`'s mode, where the interface runs none) at `priority`, and records it in `pins`.
fn join(
    pins: &PinDir,
    interface: &str,
    ifindex: u32,
    choice: XdpMode,
    priority: u32,
) -> anyhow::Result<()> {
    let lock = multiprog::lock()?;
    let built = match multiprog::current(interface, ifindex)? {
        Some(current) => {
            let mut members: Vec<Member<'_>> = current
                .components
                .into_iter()
                .map(|component| Member::Existing(Box::new(component)))
                .collect();
            let mut load = component_loader(pins, interface);
            members.push(Member::New {
                priority,
                load: &mut load,
            });
            let mode = current.dispatcher.mode;
            multiprog::replace(
                &lock,
                interface,
                ifindex,
                Some(&current.dispatcher),
                mode,
                members,
            )?
        }
        None => {
            let mut last_error = None;
            let mut built = None;
            for &mode in attempts(choice) {
                let mut load = component_loader(pins, interface);
                let members = vec![Member::New {
                    priority,
                    load: &mut load,
                }];
                match multiprog::replace(&lock, interface, ifindex, None, mode, members) {
                    Ok(done) => {
                        built = Some(done);
                        break;
                    }
                    Err(err) => {
                        tracing::debug!(interface, mode = mode.as_str(), error = %format!("{err:#}"), "dispatcher attach attempt failed");
                        last_error = Some(err);
                    }
                }
            }
            match (built, last_error) {
                (Some(built), _) => built,
                (None, Some(err)) => return Err(err),
                (None, None) => bail!("{interface}: no XDP mode to try"),
            }
        }
    };
    let component = built
        .new_member_pin
        .context("the new dispatcher has no component of ours")?;
    record_component(pins, interface, ifindex, &component)
}

/// Pins our component (pinned by libxdp's layout at `component`) as the record of
/// `interface` in `pins`.
fn record_component(
    pins: &PinDir,
    interface: &str,
    ifindex: u32,
    component: &Path,
) -> anyhow::Result<()> {
    let record = pins.link(interface, ifindex, AttachMode::Libxdp);
    Extension::from_pin(component)
        .with_context(|| format!("opening our component {}", component.display()))?
        .pin(&record)
        .with_context(|| {
            format!(
                "recording our component of {interface} at {}",
                record.display()
            )
        })?;
    restrict(&record)
}

/// Loads our component for a dispatcher's slot, with the datapath's pinned maps: the
/// [`multiprog::LoadComponent`] of [`join`] and [`rejoin`].
fn component_loader<'a>(
    pins: &'a PinDir,
    interface: &'a str,
) -> impl FnMut(&ProgramFd, &str, &Path) -> anyhow::Result<FdLink> + 'a {
    move |dispatcher, function, pin| {
        let mut ebpf = object::load_component(pins, layout::ebpf_log(pins)?)?;
        let program: &mut Extension = ebpf
            .program_mut(programs::XDP_COMPONENT)
            .with_context(|| format!("the component object has no {}", programs::XDP_COMPONENT))?
            .try_into()?;
        program
            .load(dispatcher.try_clone()?, function)
            .with_context(|| {
                format!(
                    "{interface}: loading {} as an extension of the dispatcher's {function} (the verifier log follows; a kernel that refuses every extension program says EPERM here)",
                    programs::XDP_COMPONENT
                )
            })?;
        let link = program
            .attach()
            .with_context(|| format!("{interface}: attaching our component to {function}"))?;
        let link = program.take_link(link)?;
        program
            .pin(pin)
            .with_context(|| format!("pinning {}", pin.display()))?;
        Ok(FdLink::from(link))
    }
}

/// Our component's program id, from its record.
fn component_id(record: &Path) -> anyhow::Result<u32> {
    Ok(ProgramInfo::from_pin(record)
        .with_context(|| format!("reading our component {}", record.display()))?
        .id())
}

/// Where our component (recorded by `link`) runs: the dispatcher's program id, its slot
/// and priority; `None` when the interface's dispatcher no longer runs it.
pub fn component_slot(link: &LinkPin) -> Option<(u32, usize, u32)> {
    let (_, joined) = joined(link).ok()??;
    Some((joined.dispatcher.program_id, joined.slot, joined.priority))
}

/// The dispatcher on the interface of `link` (our component's record) while it runs our
/// component: its ifindex, the dispatcher, and its other components. `None` when there is
/// no such device, another program runs there, or its dispatcher no longer runs ours.
fn joined(link: &LinkPin) -> anyhow::Result<Option<(u32, Joined)>> {
    let ours = component_id(&link.path)?;
    let Some(ifindex) = link.ifindex else {
        return Ok(None);
    };
    let Ok(Some(current)) = multiprog::current(&link.interface, ifindex) else {
        return Ok(None);
    };
    let Some(slot) = current.components.iter().position(|c| c.id == ours) else {
        return Ok(None);
    };
    let mut others = current.components;
    let ours = others.remove(slot);
    Ok(Some((
        ifindex,
        Joined {
            dispatcher: current.dispatcher,
            slot,
            priority: ours.config.priority,
            others,
        },
    )))
}

/// A dispatcher that runs our component, beside `others`.
struct Joined {
    dispatcher: multiprog::Attached,
    /// Our component's slot (0 runs first) and priority.
    slot: usize,
    priority: u32,
    others: Vec<multiprog::Component>,
}

impl Joined {
    /// Rebuilds the dispatcher with the others as they are, and `ours` if given.
    fn rebuild(
        self,
        lock: &multiprog::LibxdpLock,
        interface: &str,
        ifindex: u32,
        ours: Option<Member<'_>>,
    ) -> anyhow::Result<multiprog::Built> {
        let members = self
            .others
            .into_iter()
            .map(|component| Member::Existing(Box::new(component)))
            .chain(ours)
            .collect();
        let mode = self.dispatcher.mode;
        multiprog::replace(
            lock,
            interface,
            ifindex,
            Some(&self.dispatcher),
            mode,
            members,
        )
    }
}

/// Takes our component out of its dispatcher (detaching the dispatcher when it was the last)
/// and removes its record `link`. A dispatcher that no longer runs it is left alone.
fn leave(link: &LinkPin) -> anyhow::Result<()> {
    let lock = multiprog::lock()?;
    if let Some((ifindex, joined)) = joined(link)? {
        joined.rebuild(&lock, &link.interface, ifindex, None)?;
    }
    std::fs::remove_file(&link.path)
        .with_context(|| format!("removing our component's record {}", link.path.display()))
}

/// Replaces our component recorded by `link` with this agent's (an upgrade): the dispatcher
/// is rebuilt with the others as they are and ours, new, at its priority. A dispatcher
/// that no longer runs ours is left alone.
pub fn rejoin(pins: &PinDir, link: &LinkPin) -> anyhow::Result<()> {
    let lock = multiprog::lock()?;
    let Some((ifindex, joined)) = joined(link)? else {
        return Ok(());
    };
    let mut load = component_loader(pins, &link.interface);
    let ours = Member::New {
        priority: joined.priority,
        load: &mut load,
    };
    let built = joined.rebuild(&lock, &link.interface, ifindex, Some(ours))?;
    let component = built
        .new_member_pin
        .context("the new dispatcher has no component of ours")?;
    std::fs::remove_file(&link.path).with_context(|| {
        format!(
            "removing our old component's record {}",
            link.path.display()
        )
    })?;
    record_component(pins, &link.interface, ifindex, &component)
}

/// Removes a link pin, which detaches the link (its pin held the last reference); the record
/// of a libxdp component takes it out of its dispatcher.
pub fn remove(path: &std::path::Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if let Some(link) = pins::link_pin_at(path).filter(|link| link.mode == AttachMode::Libxdp) {
        return leave(&link);
    }
    let pinned = PinnedLink::from_pin(path)
        .with_context(|| format!("opening link pin {}", path.display()))?;
    // Unpinning drops the last reference but this fd; closing it detaches the program.
    drop(
        pinned
            .unpin()
            .with_context(|| format!("removing link pin {}", path.display()))?,
    );
    Ok(())
}

/// The two places the datapath attaches a TC program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    /// The fast paths' program, TC ingress of every `mark` and `redirect` interface.
    FastPath,
    /// The connection table's program, TC egress of every device-facing interface.
    Connections,
}

impl TcHook {
    fn attach_type(self) -> TcAttachType {
        match self {
            TcHook::FastPath => TcAttachType::Ingress,
            TcHook::Connections => TcAttachType::Egress,
        }
    }

    fn direction(self) -> &'static str {
        match self {
            TcHook::FastPath => "TC ingress",
            TcHook::Connections => "TC egress",
        }
    }

    fn program_name(self) -> &'static str {
        match self {
            TcHook::FastPath => programs::TC,
            TcHook::Connections => programs::TC_CONNS,
        }
    }

    /// Where the program is pinned.
    pub fn program_pin(self, pins: &PinDir) -> PathBuf {
        match self {
            TcHook::FastPath => pins.tc_program(),
            TcHook::Connections => pins.tc_conns_program(),
        }
    }

    /// Where the attachment to `interface` is recorded: the TCX link's pin, or, for a netlink
    /// filter (which is no BPF object), a second pin of the program it runs.
    pub fn pin(self, pins: &PinDir, interface: &str) -> PathBuf {
        match self {
            TcHook::FastPath => pins.tc_link(interface),
            TcHook::Connections => pins.tc_conns_link(interface),
        }
    }

    /// The interfaces the program is attached to, with their records: (interface, pin).
    pub fn attachments(self, pins: &PinDir) -> anyhow::Result<Vec<(String, PathBuf)>> {
        match self {
            TcHook::FastPath => pins.tc_links(),
            TcHook::Connections => pins.tc_conns_links(),
        }
    }

    /// TCX: first among the interface's ingress programs for the fast paths (the XDP program
    /// has already counted a packet it hands to TC as forwarded, so no program may run before
    /// ours and drop it; TCX stops at the first verdict; a program attached later with
    /// "before" still goes in front); anywhere for the connection table, which only reads.
    fn tcx_order(self) -> LinkOrder {
        match self {
            TcHook::FastPath => LinkOrder::first(),
            TcHook::Connections => LinkOrder::default(),
        }
    }
}

/// The netlink filter of a TC program on kernels without TCX (before 6.6): one cls_bpf filter
/// in direct-action mode on the interface's clsact qdisc, at this priority and handle in
/// both directions. A low priority number runs early: the fast paths' program must see a
/// handed-off packet before any other filter can drop it.
const NETLINK_PRIORITY: u16 = 0x00a9;
const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0xa9e5);

/// Attaches the TC program of `hook` to `interface` (kept when already there), as a TCX link
/// where the kernel has TCX, else as a netlink filter; records it at [`TcHook::pin`].
pub fn attach_tc(pins: &PinDir, interface: &str, hook: TcHook) -> anyhow::Result<()> {
    let path = hook.pin(pins, interface);
    if path.exists() {
        return Ok(());
    }
    let program_pin = hook.program_pin(pins);
    let mut program = SchedClassifier::from_pin(&program_pin)
        .with_context(|| format!("opening the pinned program {}", program_pin.display()))?;
    let what = || {
        format!(
            "attaching {} to {interface} ({})",
            hook.program_name(),
            hook.direction()
        )
    };
    if Features::probe()?.has(Feature::Tcx) {
        let id = program
            .attach_with_options(
                interface,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(hook.tcx_order()),
            )
            .with_context(what)?;
        let link: FdLink = program
            .take_link(id)?
            .try_into()
            .with_context(|| format!("{interface}: TC attached without a bpf_link"))?;
        link.pin(&path)
            .with_context(|| format!("pinning the TC link of {interface} at {}", path.display()))?;
    } else {
        attach_netlink(&mut program, interface, hook)
            .with_context(|| format!("{} as a netlink filter (no TCX here)", what()))?;
        program.pin(&path).with_context(|| {
            format!(
                "recording the netlink filter of {interface} at {}",
                path.display()
            )
        })?;
    }
    restrict(&path)
}

/// Puts `program` into the netlink filter of `hook` on `interface`: the clsact qdisc first
/// (kept when there), then the filter, made or, when one is there (an earlier agent's whose
/// record was lost), replaced in place.
fn attach_netlink(
    program: &mut SchedClassifier,
    interface: &str,
    hook: TcHook,
) -> anyhow::Result<()> {
    if let Err(err) = tc::qdisc_add_clsact(interface) {
        if os_error(&err) != Some(libc::EEXIST) {
            return Err(anyhow::Error::new(err).context("adding the clsact qdisc"));
        }
    }
    let options = NlOptions {
        priority: NETLINK_PRIORITY,
        handle: NETLINK_HANDLE,
        classid: None,
    };
    let id = match program.attach_with_options(
        interface,
        hook.attach_type(),
        TcAttachOptions::Netlink(options),
    ) {
        Ok(id) => id,
        Err(err) if os_error(&err) == Some(libc::EEXIST) => {
            program.attach_to_link(our_filter(interface, hook)?)?
        }
        Err(err) => return Err(err.into()),
    };
    // The filter stays in the kernel, held by the qdisc, until it is detached: dropping aya's
    // handle would detach it.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// Makes the program of `program_pin` the one our netlink filter of `hook` on `interface` runs
/// (an upgrade: the kernel replaces a filter's program in place, with no gap).
pub fn replace_netlink(
    program: &mut SchedClassifier,
    interface: &str,
    hook: TcHook,
) -> anyhow::Result<()> {
    let id = program
        .attach_to_link(our_filter(interface, hook)?)
        .with_context(|| {
            format!(
                "replacing the program of the netlink filter on {interface} ({})",
                hook.direction()
            )
        })?;
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// aya's handle of our netlink filter of `hook` on `interface`.
fn our_filter(interface: &str, hook: TcHook) -> anyhow::Result<SchedClassifierLink> {
    SchedClassifierLink::attached(
        interface,
        hook.attach_type(),
        NETLINK_PRIORITY,
        NETLINK_HANDLE,
        None,
    )
    .with_context(|| format!("unknown interface {interface:?}"))
}

/// Detaches the TC program of `hook` from `interface` and removes its record: the TCX link
/// goes with its pin; a netlink filter is deleted if `interface`, in the caller's network
/// namespace, has our filter running the recorded program. (A filter is named by interface,
/// priority and handle only: called from another namespace, or after the interface was
/// deleted, the name may stand for another device, whose filter is not ours to delete.)
pub fn remove_tc(pins: &PinDir, interface: &str, hook: TcHook) -> anyhow::Result<()> {
    let path = hook.pin(pins, interface);
    if !path.exists() || sys::pins_a_link(&path) {
        return remove(&path);
    }
    if runs_recorded_program(interface, hook, &path)? {
        match our_filter(interface, hook)?.detach() {
            Ok(()) => {}
            // Deleted already (by `tc filter del`, say): nothing left to detach.
            Err(err) if os_error(&err) == Some(libc::ENOENT) => {}
            Err(err) => {
                return Err(anyhow::Error::new(err)).with_context(|| {
                    format!(
                        "deleting the netlink filter of {} on {interface} ({})",
                        hook.program_name(),
                        hook.direction()
                    )
                })
            }
        }
    }
    std::fs::remove_file(&path).with_context(|| format!("removing the record {}", path.display()))
}

/// Whether `interface` has our netlink filter of `hook` and it runs the program recorded at
/// `record`.
fn runs_recorded_program(interface: &str, hook: TcHook, record: &Path) -> anyhow::Result<bool> {
    let Ok(index) = ifindex(interface) else {
        return Ok(false);
    };
    let recorded = ProgramInfo::from_pin(record)
        .with_context(|| format!("reading the recorded program {}", record.display()))?
        .id();
    let running = netdev::tc_filter_program(
        index,
        hook.attach_type() == TcAttachType::Ingress,
        NETLINK_PRIORITY,
        NETLINK_HANDLE.into(),
    )?;
    Ok(running == Some(recorded))
}

/// The OS error code somewhere in `err`'s chain (aya wraps netlink's in several layers).
fn os_error(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(err) = current {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .or_else(|| err.downcast_ref::<NetlinkError>()?.raw_os_error())
        {
            return Some(code);
        }
        current = err.source();
    }
    None
}

/// Refuses a link pin name that is not ours before anything is changed.
pub fn check_interface_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name.len() < libc::IF_NAMESIZE
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if !valid {
        bail!("{name:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)");
    }
    Ok(())
}
