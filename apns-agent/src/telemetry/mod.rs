//! Telemetry: the datapath's counters for ops tooling — Prometheus (`/metrics` and the
//! node_exporter textfile), JSON for scripts, and tables for a person at a terminal.
//!
//! Every output is rendered from one [`model::Model`], built from a counters
//! [`crate::datapath::counters::Snapshot`], so the three views cannot disagree about what a number means.
//! The APNs reachability ratio needs history, which a snapshot has not: [`reachability`] keeps
//! a sliding window of handshake totals between snapshots.

pub mod class;
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

use crate::datapath::{Datapath, PinDir};

/// What `run` keeps between scrapes: the open datapath (re-opened only when its pins change
/// underneath, e.g. an `unload` and a new load) and the reachability window. Every scrape
/// (and every textfile write) renders from a fresh snapshot; one at a time.
pub struct Exporter {
    pins: PinDir,
    inner: Mutex<Inner>,
}

struct Inner {
    datapath: Datapath,
    reachability: reachability::Reachability,
}

impl Inner {
    /// The datapath, re-opened if its pins now hold other maps.
    fn datapath(&mut self, pins: &PinDir) -> anyhow::Result<&Datapath> {
        if !self.datapath.is_current() {
            tracing::info!(pin_dir = %pins.root().display(), "the pinned datapath changed; re-opening it");
            self.datapath = Datapath::open(pins)?;
        }
        Ok(&self.datapath)
    }
}

impl Exporter {
    pub fn open(pins: &PinDir, reachability_window: Duration) -> anyhow::Result<Exporter> {
        let datapath = Datapath::open(pins)?;
        // The window's first baseline is the agent's start, not its first scrape: handshakes
        // between the two count.
        let mut reachability = reachability::Reachability::new(reachability_window);
        reachability.observe(Instant::now(), &datapath.counters.snapshot()?);
        Ok(Exporter {
            pins: pins.clone(),
            inner: Mutex::new(Inner {
                datapath,
                reachability,
            }),
        })
    }

    fn inner(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| anyhow::anyhow!("the exporter's state is poisoned"))
    }

    /// Policy drops per (interface, reason) since the datapath was loaded, for `run`'s log.
    pub fn policy_drops(
        &self,
    ) -> anyhow::Result<std::collections::BTreeMap<(String, &'static str), u64>> {
        let mut inner = self.inner()?;
        let datapath = inner.datapath(&self.pins)?;
        let snapshot = datapath.counters.snapshot()?;
        let model = model::Model::build(
            &snapshot,
            &model::Known::default(),
            model::interface_name,
            &inner.reachability,
        );
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
        let mut inner = self.inner()?;
        let datapath = inner.datapath(&self.pins)?;
        let snapshot = datapath.counters.snapshot()?;
        // Read live: `apns-agent allow add` may have changed the policy under a running agent.
        let status = datapath.status()?;
        let policy = datapath.policy.read_active()?;
        let known = model::Known::of(datapath)?;
        let Inner { reachability, .. } = &mut *inner;
        reachability.observe(Instant::now(), &snapshot);
        let model = model::Model::build(&snapshot, &known, model::interface_name, reachability);
        let program = status.program.context("no XDP program is pinned")?;
        let info = metrics::Info::new(&program.tag, &policy, status.interfaces);
        metrics::render(&model, &info)
    }
}
