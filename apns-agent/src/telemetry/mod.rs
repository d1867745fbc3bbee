//! Telemetry: the datapath's counters for ops tooling — Prometheus (`/metrics` and the
//! node_exporter textfile), JSON for scripts, and tables for a person at a terminal.
//!
//! Every view of the counters is rendered from one [`model::Model`], built from a counters
//! [`crate::datapath::counters::Snapshot`], so the three views cannot disagree about what a
//! number means; every view of the connection table from one [`clients::Report`].
//! The APNs reachability ratio needs history, which a snapshot has not: [`reachability`] keeps
//! a sliding window of handshake totals between snapshots.

pub mod admission;
pub mod auth;
pub mod class;
pub mod clients;
pub mod families;
pub mod metrics;
pub mod model;
pub mod reachability;
pub mod server;
pub mod stats;
pub mod table;
pub mod textfile;
pub mod watch;
pub mod web_config;

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
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use apns_common::label::Label as _;

use crate::datapath::{interfaces::InterfaceRole, status, Datapath, PinDir};

/// What `run` keeps between scrapes: the open datapath (re-opened only when its pins change
/// underneath, e.g. an `unload` and a new load), the reachability window, and what `run`
/// says of the configuration it applies. Every scrape (and every textfile write) renders
/// from a fresh snapshot; one at a time.
pub struct Exporter {
    pins: PinDir,
    inner: Mutex<Inner>,
    wanted: WantedInterfaces,
}

/// The interfaces `run` wants attached, read at each render: those of them that are neither
/// attached nor present are exported as missing (`apns_datapath_attached` 0).
pub type WantedInterfaces = Box<dyn Fn() -> anyhow::Result<Vec<String>> + Send + Sync>;

struct Inner {
    datapath: Datapath,
    reachability: reachability::Reachability,
    config: ConfigRecord,
    /// The `clients` rules, and what only the agent counts from the connection table.
    rules: clients::Rules,
    tally: clients::Tally,
    /// The highest eviction counts exported from this datapath so far: a read that races
    /// with new entries can come out one low, and a counter must never go down.
    evicted: (u64, u64),
}

/// Where the policy `run` applies comes from, and how its applications went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigRecord {
    /// The config file, or none for the built-in defaults.
    pub file: Option<String>,
    /// The Apple preset the allow-list starts from.
    pub apple: &'static str,
    pub allow_files: Vec<String>,
    pub provider_files: Vec<String>,
    /// When `run` last applied the config (start-up or SIGHUP).
    pub applied_at: Option<SystemTime>,
    /// Whether the last SIGHUP reload was applied (true until one is refused).
    pub last_reload_ok: bool,
    /// SIGHUP reloads refused since `run` started.
    pub reload_failures: u64,
}

impl Inner {
    /// The datapath, re-opened first if its pins now hold other maps; what was kept of the
    /// old one's counts (the eviction clamp) starts again with the new one.
    fn current(&mut self, pins: &PinDir) -> anyhow::Result<&Datapath> {
        if !self.datapath.is_current() {
            tracing::info!(pin_dir = %pins.root().display(), "the pinned datapath changed; re-opening it");
            self.datapath = Datapath::open(pins)?;
            self.evicted = (0, 0);
        }
        Ok(&self.datapath)
    }

    /// Reads the connection table, judges it and counts what is new in it (handshake
    /// failures, 443 connections).
    fn observe_clients(&mut self, pins: &PinDir) -> anyhow::Result<clients::Report> {
        let table = self.current(pins)?.conns.read()?;
        let report = clients::Report::build(&table, &self.rules, model::interface_name);
        self.tally.observe(&report);
        Ok(report)
    }
}

impl Exporter {
    pub fn open(
        pins: &PinDir,
        reachability_window: Duration,
        config: ConfigRecord,
        rules: clients::Rules,
        wanted: WantedInterfaces,
    ) -> anyhow::Result<Exporter> {
        let datapath = Datapath::open(pins)?;
        // The window's first baseline is the agent's start, not its first scrape: handshakes
        // between the two count.
        let mut reachability = reachability::Reachability::new(reachability_window);
        reachability.observe(Instant::now(), &datapath.counters.snapshot()?);
        let mut inner = Inner {
            datapath,
            reachability,
            config,
            rules,
            tally: clients::Tally::new(),
            evicted: (0, 0),
        };
        // Likewise the tally's: what the table shows now was there before the agent.
        inner.observe_clients(pins)?;
        Ok(Exporter {
            pins: pins.clone(),
            inner: Mutex::new(inner),
            wanted,
        })
    }

    /// `run` changed the `clients` rules (SIGHUP).
    pub fn set_rules(&self, rules: clients::Rules) -> anyhow::Result<()> {
        self.inner()?.rules = rules;
        Ok(())
    }

    /// Reads the connection table and counts what is new in it (handshake failures, 443
    /// connections): `run` calls it between scrapes too, so that short-lived entries are
    /// counted before the table evicts them.
    pub fn observe_clients(&self) -> anyhow::Result<()> {
        self.inner()?.observe_clients(&self.pins)?;
        Ok(())
    }

    /// `run` applied the config described by `config` (at start-up or on SIGHUP).
    pub fn config_applied(&self, config: ConfigRecord) -> anyhow::Result<()> {
        let mut inner = self.inner()?;
        let failures = inner.config.reload_failures;
        inner.config = ConfigRecord {
            applied_at: Some(SystemTime::now()),
            last_reload_ok: true,
            reload_failures: failures,
            ..config
        };
        Ok(())
    }

    /// `run` refused a SIGHUP reload; the config in force stays as it was.
    pub fn reload_failed(&self) -> anyhow::Result<()> {
        let mut inner = self.inner()?;
        inner.config.last_reload_ok = false;
        inner.config.reload_failures += 1;
        Ok(())
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
        let snapshot = inner.current(&self.pins)?.counters.snapshot()?;
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

    /// The Prometheus exposition of the datapath now: one read each of the counters, the
    /// connection table, the active policy and the interfaces' links (O(entries) of the
    /// counter and connection maps).
    pub fn render(&self) -> anyhow::Result<String> {
        let mut inner = self.inner()?;
        let report = inner.observe_clients(&self.pins)?;
        let Inner {
            datapath,
            reachability,
            config,
            tally,
            evicted,
            ..
        } = &mut *inner;
        let snapshot = datapath.counters.snapshot()?;
        // Read live: `apns-agent allow add` may have changed the policy under a running agent.
        let policy = datapath.policy.read_active()?;
        let mut interfaces = datapath.interface_status()?;
        match (self.wanted)() {
            Ok(wanted) => interfaces.extend(
                datapath
                    .missing(&wanted)?
                    .into_iter()
                    .map(status::InterfaceStatus::missing),
            ),
            // The traffic's metrics are worth more than this one family's missing rows.
            Err(err) => tracing::warn!("which interfaces are missing is unknown: {err:#}"),
        }
        let known = model::Known::from_parts(&interfaces, &policy);
        reachability.observe(Instant::now(), &snapshot);
        let model = model::Model::build(&snapshot, &known, model::interface_name, reachability);
        let program = status::program(&self.pins)?.context("no XDP program is pinned")?;
        let mut info = metrics::Info::new(&program.tag, &policy, interfaces);
        info.generation = datapath.policy.active_generation()?;
        info.config = config.clone();
        let devices: Vec<String> = info
            .interfaces
            .iter()
            .filter(|interface| {
                interface.attached && interface.role == Some(InterfaceRole::Devices)
            })
            .map(|interface| interface.interface.clone())
            .collect();
        let mut connections = metrics::Connections::of(&report, tally, &devices, &known.ports);
        // Never down within one datapath: keep the highest value exported.
        evicted.0 = evicted.0.max(connections.evicted);
        connections.evicted = evicted.0;
        if let Some(ended) = connections.ended.get_mut(clients::EVICTED) {
            evicted.1 = evicted.1.max(*ended);
            *ended = evicted.1;
        }
        info.connections = Some(connections);
        metrics::render(&model, &info)
    }
}
