//! Telemetry: the datapath's counters for ops tooling — Prometheus (`/metrics` and the
//! node_exporter textfile), JSON for scripts, and tables for a person at a terminal.
//!
//! Every output is rendered from one [`model::Model`], built from a counters
//! [`crate::counters::Snapshot`], so the three views cannot disagree about what a number means.
//! The APNs reachability ratio needs history, which a snapshot has not: [`reachability`] keeps
//! a sliding window of handshake totals between snapshots.

pub mod metrics;
pub mod model;
pub mod reachability;
pub mod server;
pub mod stats;
pub mod textfile;
pub mod watch;

/// Where `run` serves `/metrics` unless told otherwise.
///
/// Port 15223: Prometheus' default port allocations list has handed out all of 9100–9999 and
/// continues upward from 10000, so any port in or just above that range collides with some
/// exporter a gateway may already run. 15223 is far from both, is not an IANA-assigned port,
/// sits below Linux's ephemeral range (32768–60999, where an outgoing connection could hold
/// it), and is easy to remember: APNs' own 5223 behind a 1. Loopback only by default: the
/// counters describe the gateway's traffic, so exposing them is the operator's decision.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:15223";

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    counters::CounterMaps,
    pinned::{self, Datapath},
    pins::PinDir,
};

/// What `run` keeps between scrapes: the pinned counter maps and the reachability window.
/// Every scrape (and every textfile write) renders from a fresh snapshot.
pub struct Exporter {
    pins: PinDir,
    counters: CounterMaps,
    reachability: Mutex<reachability::Reachability>,
}

impl Exporter {
    pub fn open(pins: &PinDir, reachability_window: Duration) -> anyhow::Result<Exporter> {
        let counters = Datapath::open(pins)?.counters;
        // The window's first baseline is the agent's start, not its first scrape: handshakes
        // between the two count.
        let mut reachability = reachability::Reachability::new(reachability_window);
        reachability.observe(Instant::now(), &counters.snapshot()?);
        Ok(Exporter {
            pins: pins.clone(),
            counters,
            reachability: Mutex::new(reachability),
        })
    }

    /// Policy drops per (interface, reason) since the datapath was loaded, for `run`'s log.
    pub fn policy_drops(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<(String, &'static str), u64>> {
        let snapshot = self.counters.snapshot()?;
        let model = {
            let reachability = self
                .reachability
                .lock()
                .map_err(|_| anyhow::anyhow!("the reachability window is poisoned"))?;
            model::Model::build(&snapshot, model::interface_name, &reachability)
        };
        Ok(model
            .interfaces
            .into_iter()
            .flat_map(|(name, interface)| {
                interface
                    .policy_drops
                    .into_iter()
                    .map(move |(reason, packets)| ((name.clone(), reason.as_str()), packets))
            })
            .collect())
    }

    /// The Prometheus exposition of the datapath now. Costs one map read (O(entries)).
    pub fn render(&self) -> anyhow::Result<String> {
        let snapshot = self.counters.snapshot()?;
        let model = {
            let mut reachability = self
                .reachability
                .lock()
                .map_err(|_| anyhow::anyhow!("the reachability window is poisoned"))?;
            reachability.observe(Instant::now(), &snapshot);
            model::Model::build(&snapshot, model::interface_name, &reachability)
        };
        // Read live: `apns-agent allow add` may have changed the policy under a running agent.
        let policy = Datapath::open(&self.pins)?.policy.read_active()?;
        let (_, tag) = pinned::program_info(&self.pins)?.context("no XDP program is pinned")?;
        let info = metrics::Info::new(tag, &policy, pinned::interface_status(&self.pins)?);
        metrics::render(&model, &info)
    }
}
