//! Attaching the pinned programs to interfaces and detaching them: one pinned bpf_link per
//! interface for XDP, one per `mark` or `redirect` interface for the fast paths' TC ingress
//! program, one per device-facing interface for the connection table's TC egress program,
//! and what the kernel says each link is attached to.

use anyhow::{bail, Context as _};
use apns_common::{label::Label, programs};
use aya::programs::{
    links::{FdLink, LinkOrder, PinnedLink},
    tc::{TcAttachOptions, TcAttachType},
    SchedClassifier, Xdp, XdpMode as KernelXdpMode,
};
use aya_obj::programs::XdpAttachType;

use super::{
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
    Err(anyhow::Error::new(err)).with_context(|| {
        format!(
            "attaching XDP to {interface} in {} mode (is another XDP program attached? `ip link show {interface}` shows it; detach it first, or try --xdp-mode skb)",
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

/// Attaches the fast paths' TC ingress program to `interface` (kept when already there),
/// first among the interface's TCX ingress programs: the XDP program has already counted a
/// packet it hands to TC as forwarded, so no program may run before ours and drop it (TCX
/// stops at the first verdict). A program attached later with "before" still goes in front.
pub fn attach_tc(pins: &PinDir, interface: &str) -> anyhow::Result<()> {
    attach_tcx(
        &pins.tc_program(),
        &pins.tc_link(interface),
        interface,
        TcAttachType::Ingress,
        LinkOrder::first(),
        programs::TC,
    )
}

/// Attaches the connection table's TC egress program to `interface`, a device-facing one
/// (kept when already there).
pub fn attach_tc_conns(pins: &PinDir, interface: &str) -> anyhow::Result<()> {
    attach_tcx(
        &pins.tc_conns_program(),
        &pins.tc_conns_link(interface),
        interface,
        TcAttachType::Egress,
        LinkOrder::default(),
        programs::TC_CONNS,
    )
}

/// Attaches the TC program pinned at `program_pin` to `interface` (TCX, `attach_type`, at
/// `order` among the interface's programs there) and pins the link at `path`; nothing to do
/// when that pin exists.
fn attach_tcx(
    program_pin: &std::path::Path,
    path: &std::path::Path,
    interface: &str,
    attach_type: TcAttachType,
    order: LinkOrder,
    name: &str,
) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let direction = match attach_type {
        TcAttachType::Egress => "TC egress",
        _ => "TC ingress",
    };
    let mut program = SchedClassifier::from_pin(program_pin)
        .with_context(|| format!("opening the pinned program {}", program_pin.display()))?;
    let id = program
        .attach_with_options(interface, attach_type, TcAttachOptions::TcxOrder(order))
        .with_context(|| format!("attaching {name} to {interface} ({direction})"))?;
    let link: FdLink = program.take_link(id)?.try_into().with_context(|| {
        format!("{interface}: TC attached without a bpf_link (kernel older than 6.6?)")
    })?;
    link.pin(path)
        .with_context(|| format!("pinning the TC link of {interface} at {}", path.display()))?;
    restrict(path)
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
