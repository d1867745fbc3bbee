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
        ProgramInfo, SchedClassifier, Xdp, XdpMode as KernelXdpMode,
    },
    sys::NetlinkError,
};
use aya_obj::programs::XdpAttachType;

use super::{
    features::{Feature, Features},
    netdev,
    pins::{restrict, AttachMode, LinkPin, PinDir},
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

/// Attaches the pinned XDP program to `interface` (index `ifindex`) and pins the link.
pub fn attach_xdp(
    pins: &PinDir,
    interface: &str,
    ifindex: u32,
    choice: XdpMode,
) -> anyhow::Result<AttachMode> {
    if let Some(refusal) = Features::probe()?.attach_refusal() {
        bail!("{interface}: {refusal}");
    }
    let mut program = Xdp::from_pin(pins.program(), XdpAttachType::Interface)
        .with_context(|| format!("opening the pinned program {}", pins.program().display()))?;
    let attempts: &[AttachMode] = match choice {
        XdpMode::Auto => &[AttachMode::Native, AttachMode::Skb],
        XdpMode::Native => &[AttachMode::Native],
        XdpMode::Skb => &[AttachMode::Skb],
    };
    let mut last_error = None;
    for &mode in attempts {
        let flags = match mode {
            AttachMode::Native => KernelXdpMode::Driver,
            AttachMode::Skb => KernelXdpMode::Skb,
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
        AttachMode::Skb => "",
        AttachMode::Native => ", or try --xdp-mode skb",
    };
    Err(anyhow::Error::new(err)).with_context(|| {
        format!(
            "attaching XDP to {interface} in {} mode (is another XDP program attached? `ip link show {interface}` shows it; detach it first{or_skb})",
            mode.as_str()
        )
    })
}

/// Removes a link pin, which detaches the link (its pin held the last reference).
pub fn remove(path: &std::path::Path) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
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
