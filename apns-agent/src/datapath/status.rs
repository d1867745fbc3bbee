//! What `status`, `/metrics` and the tests read about a datapath: its programs, its policy in
//! brief, and each interface as the kernel sees it.

use std::collections::BTreeMap;

use apns_common::{fastpath::Fallback, label::Label};
use aya::programs::ProgramInfo;
use serde::Serialize;

use super::{
    counters::PathTotals,
    features::{Feature, Features},
    interfaces::{FastPath, InterfaceRole},
    links,
    pins::{AttachMode, LinkPin, PinDir},
    policy::Policy,
};

/// The JSON shape of `status --json` (stable: fields are only ever added).
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub agent_version: &'static str,
    pub pin_dir: String,
    pub loaded: bool,
    pub program: Option<Program>,
    pub policy: Option<PolicySummary>,
    pub interfaces: Vec<InterfaceStatus>,
    /// The kernel's optional features and the way each fast path takes with them.
    pub kernel: KernelStatus,
}

/// The optional kernel features as `status` reports them (`datapath::features`).
#[derive(Clone, Debug, Serialize)]
pub struct KernelStatus {
    /// Feature label → usable (present, not switched off).
    pub features: BTreeMap<&'static str, bool>,
    /// How TC programs are attached ([`TcAttachment`](super::features::TcAttachment)'s
    /// words), "unknown" if not probed.
    pub tc_attachment: &'static str,
    /// Fast path (mark, redirect) → the way it takes here, or why it cannot.
    pub fastpaths: BTreeMap<&'static str, String>,
    /// Why the features could not be probed, if they could not.
    pub error: Option<String>,
}

impl KernelStatus {
    pub fn probe() -> KernelStatus {
        match Features::probe() {
            Ok(features) => KernelStatus {
                features: Feature::ALL
                    .iter()
                    .map(|&feature| (feature.as_str(), features.has(feature)))
                    .collect(),
                tc_attachment: features.tc_attachment().as_str(),
                fastpaths: features.fastpath_ways().into_iter().collect(),
                error: None,
            },
            Err(err) => KernelStatus {
                features: BTreeMap::new(),
                tc_attachment: "unknown",
                fastpaths: BTreeMap::new(),
                error: Some(format!("{err:#}")),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Program {
    pub id: u32,
    /// 16 hex digits.
    pub tag: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PolicySummary {
    pub mode: &'static str,
    pub generation: u32,
    pub allow_ipv4: usize,
    pub allow_ipv6: usize,
    pub providers_ipv4: usize,
    pub providers_ipv6: usize,
    pub ports: usize,
}

impl PolicySummary {
    pub fn new(policy: &Policy, generation: u32) -> PolicySummary {
        PolicySummary {
            mode: policy.mode.as_str(),
            generation,
            allow_ipv4: policy.allow_v4().count(),
            allow_ipv6: policy.allow_v6().count(),
            providers_ipv4: policy.providers_v4().count(),
            providers_ipv6: policy.providers_v6().count(),
            ports: policy.ports.len(),
        }
    }
}

/// Where an interface's link stands, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// The link runs on the interface its pin names.
    Attached,
    /// The link runs on the device the pin was made for, which has been renamed since
    /// (`current_name`); the pin's name now belongs to another device or none.
    Renamed,
    /// The device the link was made for was deleted: the link is defunct. A device created
    /// since under the same name is not attached until `run` (or `attach`) moves the link.
    InterfaceGone,
    /// The link runs on a device that is not in this network namespace.
    OtherNamespace,
    /// The pin exists but its link cannot be read.
    Unreadable,
    /// Our libxdp component is no longer in the interface's dispatcher (another tool took
    /// it out, e.g. `xdp-loader unload --all`); `detach` removes the record.
    LeftDispatcher,
    /// No link pin and no device of that name in this network namespace, though the config
    /// (or `attach`) wants the interface: it is attached when it appears. (`run` goes on with
    /// the others rather than leave every interface unenforced.)
    Missing,
}

impl Label for LinkState {
    const WHAT: &'static str = "link state";
    const ALL: &'static [LinkState] = &[
        LinkState::Attached,
        LinkState::Renamed,
        LinkState::InterfaceGone,
        LinkState::OtherNamespace,
        LinkState::Unreadable,
        LinkState::LeftDispatcher,
        LinkState::Missing,
    ];
    fn as_str(self) -> &'static str {
        match self {
            LinkState::Attached => "attached",
            LinkState::Renamed => "renamed",
            LinkState::InterfaceGone => "interface_gone",
            LinkState::OtherNamespace => "other_namespace",
            LinkState::Unreadable => "unreadable",
            LinkState::LeftDispatcher => "left_dispatcher",
            LinkState::Missing => "missing",
        }
    }
}

/// One interface as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceStatus {
    /// The interface the link was made for (its pin's name).
    pub interface: String,
    /// Whether the program runs on a live device through this link.
    pub attached: bool,
    #[serde(serialize_with = "crate::label::serialize_label")]
    pub state: LinkState,
    /// The device the link runs on (0 once it was deleted).
    pub ifindex: Option<u32>,
    /// That device's name now, when it differs from `interface`.
    pub current_name: Option<String>,
    pub xdp_mode: &'static str,
    /// The fast path of the device the link runs on; absent when it is gone.
    #[serde(serialize_with = "crate::label::serialize_option")]
    pub fastpath: Option<FastPath>,
    /// Its role for the connection table (devices or upstream); absent when it is gone.
    #[serde(serialize_with = "crate::label::serialize_option")]
    pub role: Option<InterfaceRole>,
    pub program_id: Option<u32>,
    pub link_id: Option<u32>,
    pub link_pin: String,
    /// Where our component runs in the interface's libxdp dispatcher (xdp_mode `libxdp`).
    pub dispatcher: Option<DispatcherSlot>,
    /// For a `redirect` interface, how its APNs packets left it (filled in by
    /// `Datapath::status`).
    pub paths: Option<PathReport>,
}

/// Our component's place in a libxdp dispatcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DispatcherSlot {
    pub dispatcher_id: u32,
    /// 0 runs first.
    pub slot: usize,
    pub priority: u32,
}

/// How a `redirect` interface's APNs packets left it, in the JSON of `status` and `stats`
/// (fields only ever added): forwarded by XDP, by the TC step (the next hop was not
/// resolved yet), or left to the stack, by reason (every reason present); `tc_handoffs` is
/// the TC program's own count of what it was handed (by segment), a cross-check of
/// `tc_redirect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PathReport {
    pub xdp_redirect: u64,
    pub tc_redirect: u64,
    pub stack: u64,
    pub stack_by_reason: BTreeMap<&'static str, u64>,
    pub tc_handoffs: BTreeMap<&'static str, u64>,
}

/// What the TC step did with a packet XDP handed it: the keys of
/// [`PathReport::tc_handoffs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    /// `bpf_redirect_neigh` accepted it.
    Forwarded,
    /// `bpf_redirect_neigh` refused it (the packet went to the stack).
    Refused,
}

impl Label for Handoff {
    const WHAT: &'static str = "TC hand-off result";
    const ALL: &'static [Handoff] = &[Handoff::Forwarded, Handoff::Refused];
    fn as_str(self) -> &'static str {
        match self {
            Handoff::Forwarded => "forwarded",
            Handoff::Refused => "refused",
        }
    }
}

impl PathReport {
    pub fn new(totals: &PathTotals) -> PathReport {
        PathReport {
            xdp_redirect: totals.xdp_redirect,
            tc_redirect: totals.tc_redirect,
            stack: totals.stack(),
            stack_by_reason: Fallback::ALL
                .iter()
                .map(|&reason| (reason.as_str(), totals.counters.fallback(reason)))
                .collect(),
            tc_handoffs: BTreeMap::from([
                (Handoff::Forwarded.as_str(), totals.counters.tc_redirected),
                (Handoff::Refused.as_str(), totals.counters.tc_refused),
            ]),
        }
    }
}

impl InterfaceStatus {
    /// The state of `link`; `settings` reads the fast path and role of an ifindex.
    pub fn of(
        link: &LinkPin,
        settings: impl Fn(u32) -> anyhow::Result<(Option<FastPath>, Option<InterfaceRole>)>,
    ) -> anyhow::Result<InterfaceStatus> {
        let seen = if link.mode == AttachMode::Libxdp {
            Seen::component(link)
        } else {
            Seen::link(link)
        };
        let attached = matches!(seen.state, LinkState::Attached | LinkState::Renamed);
        let (fastpath, role) = match seen.ifindex.filter(|_| attached) {
            Some(index) => settings(index)?,
            None => (None, None),
        };
        Ok(InterfaceStatus {
            interface: link.interface.clone(),
            attached,
            state: seen.state,
            ifindex: seen.ifindex,
            current_name: seen.current_name.filter(|name| *name != link.interface),
            xdp_mode: link.mode.as_str(),
            fastpath,
            role,
            program_id: seen.program_id,
            link_id: seen.link_id,
            link_pin: link.path.display().to_string(),
            dispatcher: seen.dispatcher,
            paths: None,
        })
    }

    /// An interface that is wanted but neither attached nor present
    /// ([`LinkState::Missing`]): no link, no mode (`xdp_mode` "none"), no pin.
    pub fn missing(interface: String) -> InterfaceStatus {
        InterfaceStatus {
            interface,
            attached: false,
            state: LinkState::Missing,
            ifindex: None,
            current_name: None,
            xdp_mode: "none",
            fastpath: None,
            role: None,
            program_id: None,
            link_id: None,
            link_pin: String::new(),
            dispatcher: None,
            paths: None,
        }
    }
}

/// What the kernel says of an interface's record: a link of ours, or our component in a
/// libxdp dispatcher.
struct Seen {
    state: LinkState,
    /// The device it runs on (0 once that was deleted).
    ifindex: Option<u32>,
    /// That device's name now.
    current_name: Option<String>,
    program_id: Option<u32>,
    link_id: Option<u32>,
    dispatcher: Option<DispatcherSlot>,
}

impl Seen {
    /// A link of ours: what its link runs on.
    fn link(link: &LinkPin) -> Seen {
        let facts = links::facts(link);
        let ifindex = facts.map(|facts| facts.ifindex);
        let current_name = ifindex
            .filter(|&index| index != 0)
            .and_then(links::interface_name);
        let state = match (facts, &current_name) {
            (None, _) => LinkState::Unreadable,
            (Some(facts), _) if facts.ifindex == 0 => LinkState::InterfaceGone,
            (Some(_), Some(name)) if *name == link.interface => LinkState::Attached,
            (Some(_), Some(_)) => LinkState::Renamed,
            (Some(_), None) => LinkState::OtherNamespace,
        };
        Seen {
            state,
            ifindex,
            current_name,
            program_id: facts.map(|facts| facts.program_id),
            link_id: facts.map(|facts| facts.link_id),
            dispatcher: None,
        }
    }

    /// Our libxdp component: attached while the interface's dispatcher runs it.
    fn component(link: &LinkPin) -> Seen {
        let slot = links::component_slot(link);
        let current_name = link.ifindex.and_then(links::interface_name);
        let state = match (slot, &current_name) {
            (Some(_), Some(name)) if *name == link.interface => LinkState::Attached,
            (Some(_), _) => LinkState::Renamed,
            (None, None) => LinkState::InterfaceGone,
            (None, Some(_)) => LinkState::LeftDispatcher,
        };
        Seen {
            state,
            ifindex: link.ifindex,
            current_name,
            program_id: aya::programs::ProgramInfo::from_pin(&link.path)
                .ok()
                .map(|info| info.id()),
            link_id: None,
            dispatcher: slot.map(|(dispatcher_id, slot, priority)| DispatcherSlot {
                dispatcher_id,
                slot,
                priority,
            }),
        }
    }
}

/// Id and tag of the XDP program pinned in `pins`.
pub fn program(pins: &PinDir) -> anyhow::Result<Option<Program>> {
    let path = pins.program();
    if !path.exists() {
        return Ok(None);
    }
    let info = ProgramInfo::from_pin(&path)
        .map_err(|err| anyhow::anyhow!("reading pinned program {}: {err}", path.display()))?;
    Ok(Some(Program {
        id: info.id(),
        tag: format!("{:016x}", info.tag()),
    }))
}
