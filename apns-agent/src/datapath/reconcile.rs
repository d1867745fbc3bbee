//! The one way the datapath's state changes: describe the whole state wanted ([`Desired`]),
//! and [`Datapath::reconcile`](super::Datapath::reconcile) brings the kernel to it and
//! reports what it changed. `run` start-up, SIGHUP and the periodic interface check, and the
//! CLI verbs (`attach`, `detach`, `fastpath`, `allow`, `providers`, `ports`, `mode`) all go
//! through it: the verbs read the live state ([`Datapath::live`](super::Datapath::live)),
//! change one part and reconcile.
//!
//! Order, and why:
//! 1. Everything is checked first (policy, mark bits, interface names, and that no other XDP
//!    program runs on a new interface: `occupants`): bad input changes nothing. A new
//!    interface that does not exist here is left out and reported ([`Change::Missing`]), not
//!    an error: an interface gone after a reboot must not leave every other one unenforced.
//! 2. New interfaces are attached (their fast path is written before the link exists, so
//!    their first packet already takes it); links whose interface was re-created under the
//!    same name are moved to the new one. If any attach fails, the ones made by this call
//!    are removed again.
//! 3. Fast paths and roles of the interfaces kept.
//! 4. The policy, as a whole (one generation switch; see `policy_maps`).
//! 5. The drop-event limits.
//! 6. Interfaces no longer wanted are detached, last: until then they keep enforcing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use apns_common::{events::EventConfig, label::Label};

use super::{
    interfaces::{FastPath, InterfaceRole, MarkBits},
    links::XdpMode,
    pins::AttachMode,
    policy::Policy,
};

/// The whole state wanted of a datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// The interfaces to attach, with their fast path. Every other attached interface is
    /// detached.
    pub interfaces: BTreeMap<String, FastPath>,
    /// Those of `interfaces` that face the devices (role `devices`, config `[roles]`); the
    /// others are upstream. Only the config sets roles.
    pub devices: BTreeSet<String>,
    /// How to attach interfaces that are not attached yet (those that are keep their mode).
    pub xdp_mode: XdpMode,
    /// The bits the `mark` fast path sets.
    pub mark: MarkBits,
    pub policy: Policy,
    pub events: EventConfig,
}

/// One thing [`Datapath::reconcile`](super::Datapath::reconcile) changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Attached {
        interface: String,
        mode: AttachMode,
    },
    /// The interface's link pointed at a device that is gone or renamed; it now runs on the
    /// device that has the name.
    Reattached {
        interface: String,
        mode: AttachMode,
    },
    Detached {
        interface: String,
    },
    /// Wanted, but neither attached nor present in this network namespace: left out.
    Missing {
        interface: String,
    },
    FastPath {
        interface: String,
        from: FastPath,
        to: FastPath,
    },
    Role {
        interface: String,
        from: InterfaceRole,
        to: InterfaceRole,
    },
    Policy {
        summary: String,
    },
    Events {
        from: EventConfig,
        to: EventConfig,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Attached { interface, mode } => {
                write!(f, "{interface}: attached ({} mode)", mode.as_str())
            }
            Change::Reattached { interface, mode } => write!(
                f,
                "{interface}: re-attached to the interface now named {interface} ({} mode)",
                mode.as_str()
            ),
            Change::Detached { interface } => write!(f, "{interface}: detached"),
            Change::Missing { interface } => write!(
                f,
                "{interface}: NOT attached: no such interface here (`run` attaches it when it appears)"
            ),
            Change::FastPath {
                interface,
                from,
                to,
            } => write!(
                f,
                "{interface}: fast path {} -> {}",
                from.as_str(),
                to.as_str()
            ),
            Change::Role {
                interface,
                from,
                to,
            } => write!(f, "{interface}: role {} -> {}", from.as_str(), to.as_str()),
            Change::Policy { summary } => write!(f, "policy: {summary}"),
            Change::Events { from, to } => write!(
                f,
                "drop events: {}/s per CPU, 1 in {} -> {}/s per CPU, 1 in {}",
                from.per_cpu_per_second,
                from.sample_every.max(1),
                to.per_cpu_per_second,
                to.sample_every.max(1)
            ),
        }
    }
}

/// What one reconcile changed, in the order it changed it (and the interfaces it left out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes(pub Vec<Change>);

impl Desired {
    /// The role `desired` gives `interface`.
    pub fn role(&self, interface: &str) -> InterfaceRole {
        if self.devices.contains(interface) {
            InterfaceRole::Devices
        } else {
            InterfaceRole::Upstream
        }
    }
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How `new` differs from `old`, in words: "mode monitor -> enforce; providers +1 -0".
pub fn policy_summary(old: &Policy, new: &Policy) -> String {
    let mut parts = Vec::new();
    if old.mode != new.mode {
        parts.push(format!(
            "mode {} -> {}",
            old.mode.as_str(),
            new.mode.as_str()
        ));
    }
    let count = |name: &str, old: usize, added: usize, removed: usize| {
        (added + removed > 0)
            .then(|| format!("{name} +{added} -{removed} (now {})", old + added - removed))
    };
    parts.extend(count(
        "allow-list",
        old.allow.len(),
        new.allow.difference(&old.allow).count(),
        old.allow.difference(&new.allow).count(),
    ));
    parts.extend(count(
        "providers",
        old.providers.len(),
        new.providers.difference(&old.providers).count(),
        old.providers.difference(&new.providers).count(),
    ));
    if old.ports != new.ports {
        let ports: Vec<String> = new.ports.keys().map(u16::to_string).collect();
        parts.push(format!("ports now {}", ports.join(" ")));
    }
    if parts.is_empty() {
        "unchanged".to_owned()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_changes_read_as_words() {
        let old = Policy::apple_defaults();
        let mut new = old.clone();
        new.mode = apns_common::policy::Mode::Enforce;
        new.providers.insert("192.0.2.0/24".parse().unwrap());
        assert_eq!(
            policy_summary(&old, &new),
            "mode monitor -> enforce; providers +1 -0 (now 1)"
        );
        assert_eq!(policy_summary(&old, &old), "unchanged");
    }
}
