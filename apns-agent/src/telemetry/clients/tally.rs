//! What only the agent can count from the connection table, across reads: [`Tally`].

use std::collections::{BTreeMap, HashSet};

use apns_common::{conns::ConnKey, label::Label};

use super::{Handshake, Port443, Report, FALLBACK_PORT};

/// Counts that only the agent can make from the table (the datapath cannot tell when a
/// handshake has timed out, or what a 443 connection followed), each connection counted
/// once, since this tally started: handshake failures per port and cause, and 443
/// connections by kind. A connection is known by its key and its first packet's time.
#[derive(Debug, Default)]
pub struct Tally {
    seen: HashSet<(ConnKey, u64, &'static str)>,
    /// (port, `unanswered` | `refused` | `incomplete`) → handshakes.
    pub handshake_failures: BTreeMap<(u16, &'static str), u64>,
    /// [`Port443`] word → 443 connections.
    pub connections_443: BTreeMap<&'static str, u64>,
    started: bool,
}

impl Tally {
    /// A tally whose first [`Tally::observe`] only records what is there already: the
    /// counts start at zero when the agent does.
    pub fn new() -> Tally {
        Tally {
            handshake_failures: BTreeMap::new(),
            connections_443: Port443::ALL.iter().map(|kind| (kind.as_str(), 0)).collect(),
            ..Tally::default()
        }
    }

    /// Counts what `report` shows that was not counted yet.
    pub fn observe(&mut self, report: &Report) {
        let mut present = HashSet::new();
        for device in &report.devices {
            for c in &device.connections {
                let mut count = |what: &'static str| {
                    let id = (c.key, c.value.first_ns, what);
                    present.insert(id);
                    self.seen.insert(id)
                };
                if let Some(cause) = c.handshake.failure() {
                    if count("failure") && self.started {
                        *self
                            .handshake_failures
                            .entry((c.apple_port, cause.as_str()))
                            .or_default() += 1;
                    }
                }
                let decided = !matches!(c.handshake, Handshake::Pending | Handshake::NotSeen);
                if c.apple_port == FALLBACK_PORT && decided {
                    let kind = if c.fallback {
                        Port443::Fallback
                    } else {
                        Port443::Direct
                    };
                    if count("443") && self.started {
                        *self.connections_443.entry(kind.as_str()).or_default() += 1;
                    }
                }
            }
        }
        // Forget what left the table (or the window): memory stays bounded by the table.
        self.seen.retain(|id| present.contains(id));
        self.started = true;
    }
}
