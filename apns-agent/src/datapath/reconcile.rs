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

use anyhow::bail;
use apns_common::{events::EventConfig, label::Label};

use super::{
    features::{Feature, Features},
    interfaces::{FastPath, InterfaceRole, MarkBits},
    links::{self, TcHook, XdpAttach, XdpMode},
    multiprog::Multiprog,
    occupants,
    pins::{AttachMode, Lock},
    policy::Policy,
    running_on, Datapath, Sharing,
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
    /// Whether interfaces not attached yet are shared through libxdp's dispatcher.
    pub sharing: Sharing,
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

/// Refuses a `mark` or `redirect` fast path on an interface shared through libxdp's
/// dispatcher where the TC program expects XDP metadata: our component writes none (it is
/// built without `bpf_xdp_adjust_meta`, which Linux 6.12 refuses in a dispatcher component).
/// Where the kernel has no XDP metadata at all, the TC program classifies by itself and
/// both work.
fn refuse_shared_fastpath(interface: &str, fastpath: FastPath) -> anyhow::Result<()> {
    if Features::probe()?.has(Feature::XdpMeta) {
        bail!(
            "{interface} is shared with other XDP programs (libxdp's dispatcher), where the {} fast path cannot work on this kernel: the agent's component hands no XDP metadata to its TC program. Use the pass fast path there, or give the agent the interface alone (xdp_multiprog = \"never\", after unloading the other programs)",
            fastpath.as_str()
        );
    }
    Ok(())
}

/// The changing calls of [`Datapath`]: [`Datapath::reconcile`] and the steps it takes.
impl Datapath {
    /// Brings the datapath to `desired` and says what changed; see this module's documentation
    /// for the order and why. Interfaces are found by name only when they are attached: one that is
    /// attached already is known by the ifindex its link runs on (so a change of policy or
    /// fast path works from any network namespace, and never moves a link). An interface of
    /// `desired` that is not attached and does not exist here is left out and reported
    /// ([`Change::Missing`]): the others are attached and enforced all the same.
    pub fn reconcile(&mut self, _lock: &Lock, desired: &Desired) -> anyhow::Result<Changes> {
        desired.policy.validate()?;
        desired.mark.validate()?;
        let present = self.pins.links()?;
        let mut changes = Changes::default();
        let mut new = Vec::new();
        for (interface, &fastpath) in &desired.interfaces {
            links::check_interface_name(interface)?;
            if !present.iter().any(|link| link.interface == *interface) {
                let Ok(ifindex) = links::ifindex(interface) else {
                    changes.0.push(Change::Missing {
                        interface: interface.clone(),
                    });
                    continue;
                };
                // Never clobber someone else's XDP program: refuse before anything changes.
                occupants::check_free(interface, ifindex, &self.pins, desired.sharing.multiprog)?;
                new.push((interface.as_str(), ifindex, fastpath));
            }
        }

        let mut attached_here = Vec::new();
        for &(interface, ifindex, fastpath) in &new {
            let attached = self.attach(
                interface,
                ifindex,
                fastpath,
                desired.role(interface),
                desired.mark,
                XdpAttach {
                    mode: desired.xdp_mode,
                    sharing: desired.sharing,
                },
            );
            match attached {
                Ok((mode, path)) => {
                    attached_here.push((interface, ifindex, path));
                    changes.0.push(Change::Attached {
                        interface: interface.to_owned(),
                        mode,
                    });
                }
                Err(err) => {
                    for (interface, ifindex, path) in attached_here {
                        if let Err(cleanup) = self.drop_interface(interface, ifindex, &path) {
                            tracing::warn!("undoing the attach of {interface}: {cleanup:#}");
                        }
                    }
                    return Err(err);
                }
            }
        }
        for link in &present {
            let Some(&fastpath) = desired.interfaces.get(&link.interface) else {
                continue;
            };
            let Some(ifindex) = running_on(link) else {
                continue;
            };
            let role = desired.role(&link.interface);
            let current_role = self.interfaces.role(ifindex)?.unwrap_or_default();
            // A TC link pin removed by hand is put back too.
            let conns_link = self.pins.tc_conns_link(&link.interface).exists();
            if current_role != role || conns_link != (role == InterfaceRole::Devices) {
                self.set_role(&link.interface, ifindex, role)?;
                if current_role != role {
                    changes.0.push(Change::Role {
                        interface: link.interface.clone(),
                        from: current_role,
                        to: role,
                    });
                }
            }
            let current = self.interfaces.fastpath(ifindex)?;
            if current == Some((fastpath, desired.mark))
                && self.fastpath_complete(&link.interface, ifindex, fastpath)?
            {
                continue;
            }
            if link.mode == AttachMode::Libxdp && fastpath != FastPath::Pass {
                refuse_shared_fastpath(&link.interface, fastpath)?;
            }
            self.set_fastpath(&link.interface, ifindex, fastpath, desired.mark)?;
            let from = current.map_or(FastPath::Pass, |(fastpath, _)| fastpath);
            if from != fastpath {
                changes.0.push(Change::FastPath {
                    interface: link.interface.clone(),
                    from,
                    to: fastpath,
                });
            }
        }

        let live = self.policy.read_active()?;
        if live != desired.policy {
            self.policy.apply(&desired.policy)?;
            changes.0.push(Change::Policy {
                summary: policy_summary(&live, &desired.policy),
            });
        }
        let events = self.events.config()?;
        if events != desired.events {
            self.events.set_config(desired.events)?;
            changes.0.push(Change::Events {
                from: events,
                to: desired.events,
            });
        }
        for link in &present {
            if !desired.interfaces.contains_key(&link.interface) {
                self.drop_interface(&link.interface, running_on(link).unwrap_or(0), &link.path)?;
                changes.0.push(Change::Detached {
                    interface: link.interface.clone(),
                });
            }
        }
        Ok(changes)
    }

    /// Moves the link of every interface whose name now belongs to another device (deleted
    /// and re-created, or renamed and replaced) to that device, with the fast path the old
    /// one had. Names are looked up in the caller's network namespace, so only `run`, which
    /// runs where its interfaces are, calls this.
    pub fn move_stale_links(&mut self, _lock: &Lock) -> anyhow::Result<Changes> {
        let mut changes = Changes::default();
        for link in self.pins.links()? {
            let Ok(ifindex) = links::ifindex(&link.interface) else {
                continue;
            };
            let runs_there = if link.mode == AttachMode::Libxdp {
                link.ifindex
            } else {
                links::facts(&link).map(|facts| facts.ifindex)
            };
            if runs_there == Some(ifindex) {
                continue;
            }
            // A shared interface stays shared on the device that took its name.
            let sharing = Sharing {
                multiprog: if link.mode == AttachMode::Libxdp {
                    Multiprog::Always
                } else {
                    Multiprog::Auto
                },
                ..Sharing::default()
            };
            occupants::check_free(&link.interface, ifindex, &self.pins, sharing.multiprog)?;
            let (fastpath, mark) = self.fastpath_of(&link)?.unwrap_or_default();
            let role = self.role_of(&link)?;
            self.drop_interface(&link.interface, running_on(&link).unwrap_or(0), &link.path)?;
            let mark = if mark.validate().is_ok() {
                mark
            } else {
                MarkBits::default()
            };
            let (mode, _) = self.attach(
                &link.interface,
                ifindex,
                fastpath,
                role,
                mark,
                XdpAttach {
                    mode: XdpMode::Auto,
                    sharing,
                },
            )?;
            changes.0.push(Change::Reattached {
                interface: link.interface,
                mode,
            });
        }
        Ok(changes)
    }

    /// Attaches `interface` (index `ifindex`) with `fastpath` and `role`; returns the mode and
    /// the link pin. A failure leaves nothing of it behind.
    fn attach(
        &mut self,
        interface: &str,
        ifindex: u32,
        fastpath: FastPath,
        role: InterfaceRole,
        mark: MarkBits,
        how: XdpAttach,
    ) -> anyhow::Result<(AttachMode, std::path::PathBuf)> {
        if fastpath != FastPath::Pass && links::joins(ifindex, how.sharing.multiprog)? {
            refuse_shared_fastpath(interface, fastpath)?;
        }
        // The fast path and role before the link: the first packet already takes them.
        let attached = self
            .interfaces
            .register(ifindex, FastPath::Pass)
            .and_then(|()| self.set_fastpath(interface, ifindex, fastpath, mark))
            .and_then(|()| self.set_role(interface, ifindex, role))
            .and_then(|()| links::attach_xdp(&self.pins, interface, ifindex, how));
        match attached {
            Ok(mode) => Ok((mode, self.pins.link(interface, ifindex, mode))),
            Err(err) => {
                if let Err(cleanup) = self.forget_interface(interface, ifindex) {
                    tracing::warn!(
                        "cleaning up after the failed attach of {interface}: {cleanup:#}"
                    );
                }
                Err(err)
            }
        }
    }

    /// Sets the fast path of an attached interface; `mark` and `redirect` attach the TC
    /// program on it, `pass` removes it.
    ///
    /// Order: the TC link exists before the interface entry lets XDP hand packets to it
    /// (`redirect` sets the entry's hand-off flag), and the entry is rewritten without the
    /// flag before the link goes: a packet XDP hands off (and counts as forwarded) always
    /// meets the TC program. A marked packet with no one to read the mark is harmless.
    fn set_fastpath(
        &mut self,
        interface: &str,
        ifindex: u32,
        fastpath: FastPath,
        mark: MarkBits,
    ) -> anyhow::Result<()> {
        let features = Features::probe()?;
        if let Some(refusal) = features.refusal(fastpath) {
            bail!("{interface}: {refusal}");
        }
        match fastpath {
            FastPath::Mark => {
                links::attach_tc(&self.pins, interface, TcHook::FastPath)?;
                self.interfaces.set_fastpath(ifindex, fastpath, Some(mark))
            }
            FastPath::Redirect => {
                links::attach_tc(&self.pins, interface, TcHook::FastPath)?;
                self.interfaces
                    .set_fastpath(ifindex, fastpath, Some(mark))?;
                // Without bpf_redirect_neigh the TC program cannot forward what XDP would
                // hand it: XDP leaves unresolved neighbours to the stack (`tc_not_ready`).
                if features.has(Feature::RedirectNeigh) {
                    self.interfaces.set_handoff(ifindex)?;
                }
                Ok(())
            }
            FastPath::Pass => {
                self.interfaces
                    .set_fastpath(ifindex, fastpath, Some(mark))?;
                links::remove_tc(&self.pins, interface, TcHook::FastPath)
            }
        }
    }

    /// Sets the role of an attached interface: a device-facing one gets the connection
    /// table's TC egress program (before its flag is set, so Apple's packets are recorded as
    /// soon as the device's are), an upstream one loses it.
    fn set_role(
        &mut self,
        interface: &str,
        ifindex: u32,
        role: InterfaceRole,
    ) -> anyhow::Result<()> {
        match role {
            InterfaceRole::Devices => {
                links::attach_tc(&self.pins, interface, TcHook::Connections)?;
                self.interfaces.set_role(ifindex, role)
            }
            InterfaceRole::Upstream => {
                self.interfaces.set_role(ifindex, role)?;
                links::remove_tc(&self.pins, interface, TcHook::Connections)
            }
        }
    }

    /// Whether the parts of `fastpath` beyond its entry are in place on `interface`: the TC
    /// link of `mark` and `redirect`, and the hand-off flag of `redirect`. A datapath made by
    /// an agent that had no TC step for `redirect`, or migrated from layout 2 (whose entries
    /// are written without the flag), lacks them; `reconcile` completes it.
    fn fastpath_complete(
        &self,
        interface: &str,
        ifindex: u32,
        fastpath: FastPath,
    ) -> anyhow::Result<bool> {
        let tc = self.pins.tc_link(interface).exists();
        Ok(match fastpath {
            FastPath::Pass => true,
            FastPath::Mark => tc,
            FastPath::Redirect => {
                tc && (self.interfaces.handoff_ready(ifindex)?
                    || !Features::probe()?.has(Feature::RedirectNeigh))
            }
        })
    }

    /// Detaches `interface`: its XDP link (pinned at `link`), then what
    /// [`Datapath::forget_interface`] removes.
    fn drop_interface(
        &mut self,
        interface: &str,
        ifindex: u32,
        link: &std::path::Path,
    ) -> anyhow::Result<()> {
        links::remove(link)?;
        self.forget_interface(interface, ifindex)
    }

    /// Removes `interface`'s entries in the interface maps (`ifindex` 0: the device is gone,
    /// and so are they), then its TC links: the entry's hand-off flag goes first, as in
    /// [`Datapath::set_fastpath`].
    fn forget_interface(&mut self, interface: &str, ifindex: u32) -> anyhow::Result<()> {
        if ifindex != 0 {
            self.interfaces.unregister(ifindex)?;
        }
        links::remove_tc(&self.pins, interface, TcHook::FastPath)?;
        links::remove_tc(&self.pins, interface, TcHook::Connections)
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
