//! `run`'s supervisor: once the datapath is installed and /metrics served, one loop that waits
//! for the next [`Event`] (a signal or a timer) and hands it to the function that deals with
//! it, until SIGTERM or SIGINT.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::{interval, interval_at, Instant, Interval},
};

use super::{apply, check, config_record, Running, LOCK_PATIENCE};
use crate::{
    cli::{Global, RunArgs},
    readiness,
    settings::Settings,
    telemetry::{server, textfile, Exporter},
};

/// How often `run` checks that every attached interface is still the device its pin names
/// (an interface deleted and re-created, or renamed, under a running agent).
const INTERFACE_CHECK: Duration = Duration::from_secs(5);

/// How often `run` reads the connection table when nobody scrapes, so that what only the
/// agent counts (failed handshakes, 443 fallbacks) is counted before the table evicts it.
const CLIENTS_INTERVAL: Duration = Duration::from_secs(15);

/// How often `run` may log a summary of policy drops.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What the loop waits for. (Scrapes are served by the HTTP server's own task.)
enum Event {
    /// SIGHUP: re-read the config and the web config.
    Reload,
    /// SIGTERM or SIGINT.
    Stop,
    /// Time for the drop summary in the log.
    DropLog,
    /// Time to rewrite the textfile (`--textfile`).
    Textfile,
    /// Time to read the connection table.
    Clients,
    /// Time to check the interfaces and pins.
    InterfaceCheck,
}

/// The signals `run` serves. Installed before the datapath is touched: a SIGTERM that arrives
/// during the start-up is then served once it is done, instead of killing the process
/// half-way.
pub(super) struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub(super) fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }
}

/// The timers of the loop.
struct Ticks {
    /// The textfile writes also feed the reachability window when nobody scrapes.
    textfile: Interval,
    /// At most one drop summary per interval in the log, however hard the datapath drops.
    drop_log: Interval,
    interface_check: Interval,
    clients: Interval,
}

impl Ticks {
    fn new(args: &RunArgs) -> Ticks {
        // The first check and reads one period after the start, which just did them.
        let after = |period: Duration| interval_at(Instant::now() + period, period);
        Ticks {
            textfile: interval(Duration::from_secs(args.textfile_interval)),
            drop_log: after(DROP_LOG_INTERVAL),
            interface_check: after(INTERFACE_CHECK),
            clients: after(CLIENTS_INTERVAL),
        }
    }
}

/// The running agent between start-up and exit.
pub(super) struct Supervisor<'a> {
    pub(super) global: &'a Global,
    pub(super) args: &'a RunArgs,
    pub(super) running: Running<'a>,
    pub(super) exporter: &'a Exporter,
    pub(super) web: &'a server::Web,
}

impl Supervisor<'_> {
    /// Serves events until SIGTERM or SIGINT; returns the interfaces the config in force at
    /// exit wants attached.
    pub(super) async fn serve(mut self, signals: Signals) -> anyhow::Result<Vec<String>> {
        let Signals {
            mut hangup,
            mut terminate,
            mut interrupt,
        } = signals;
        let mut ticks = Ticks::new(self.args);
        let textfile = self.args.textfile.is_some();
        let mut reported = BTreeMap::new();
        let mut drops_logged = self.exporter.policy_drops().unwrap_or_default();
        let mut interfaces = self.running.interfaces()?;
        readiness::ready(&format!(
            "attached to {}; serving /metrics on {}",
            interfaces.join(", "),
            self.args.metrics_addr
        ));
        tracing::info!("running; SIGHUP reloads the config, SIGTERM/SIGINT exits");
        loop {
            let event = tokio::select! {
                _ = hangup.recv() => Event::Reload,
                _ = terminate.recv() => Event::Stop,
                _ = interrupt.recv() => Event::Stop,
                _ = ticks.drop_log.tick() => Event::DropLog,
                _ = ticks.textfile.tick(), if textfile => Event::Textfile,
                _ = ticks.clients.tick() => Event::Clients,
                _ = ticks.interface_check.tick() => Event::InterfaceCheck,
            };
            match event {
                Event::Stop => break,
                Event::Reload => interfaces = self.reload(interfaces),
                Event::DropLog => self.log_drops(&mut drops_logged),
                Event::Textfile => self.write_textfile(),
                Event::Clients => {
                    if let Err(err) = self.exporter.observe_clients() {
                        tracing::warn!("reading the connection table: {err:#}");
                    }
                }
                Event::InterfaceCheck => {
                    if let Err(err) = check::interfaces(&mut self.running, &mut reported) {
                        tracing::warn!("checking the datapath: {err:#}");
                    }
                }
            }
        }
        readiness::stopping();
        Ok(interfaces)
    }

    /// SIGHUP: re-reads the config and reconciles to it (a bad file changes nothing), records
    /// the outcome for /metrics, and re-reads the web config. Returns the interfaces now
    /// wanted (`interfaces`, those before, if the reload was refused).
    fn reload(&mut self, interfaces: Vec<String>) -> Vec<String> {
        readiness::reloading();
        let (interfaces, recorded) = match self.reconcile_to_config() {
            Ok(now) => {
                let recorded = self
                    .exporter
                    .set_rules(self.running.settings.config.clients.rules)
                    .and_then(|()| {
                        self.exporter
                            .config_applied(config_record(&self.running.settings))
                    });
                (now, recorded)
            }
            // A bad file leaves the running datapath exactly as it was.
            Err(err) => {
                tracing::error!("reload refused, nothing changed: {err:#}");
                (interfaces, self.exporter.reload_failed())
            }
        };
        if let Err(err) = recorded {
            tracing::warn!("recording the reload for /metrics: {err:#}");
        }
        self.web.reload();
        readiness::ready(&format!("attached to {}", interfaces.join(", ")));
        interfaces
    }

    /// Re-reads the config and reconciles to it (live changes still in force stay). Returns
    /// the interfaces now wanted.
    fn reconcile_to_config(&mut self) -> anyhow::Result<Vec<String>> {
        let settings = Settings::resolve(&self.global.into())?;
        let Some(file) = settings.config_file() else {
            anyhow::bail!("SIGHUP: no config file to re-read (started without one)");
        };
        let datapath = &mut *self.running.datapath;
        anyhow::ensure!(
            settings.pins == *datapath.pins(),
            "SIGHUP: the config's pin_dir is now {}, but this agent controls {}: restart it to move",
            settings.pins.root().display(),
            datapath.pins().root().display()
        );
        let config = settings.desired(&self.args.into());
        anyhow::ensure!(
            !config.interfaces.is_empty(),
            "no interface to attach to: set `interfaces` in the config"
        );
        let lock = settings.pins.lock_within(LOCK_PATIENCE)?;
        apply(&settings, datapath, &lock, &config)?;
        tracing::info!("config reloaded from {}", file.display());
        self.running.settings = settings;
        self.running.config = config;
        self.running.interfaces()
    }

    /// Logs one line with the policy drops counted since the last one, if any.
    fn log_drops(&self, logged: &mut BTreeMap<(String, &'static str), u64>) {
        let now = match self.exporter.policy_drops() {
            Ok(now) => now,
            Err(err) => {
                tracing::warn!("reading the drop counters: {err:#}");
                return;
            }
        };
        let new: Vec<String> = now
            .iter()
            .filter_map(|(key, &count)| {
                let delta = count.saturating_sub(logged.get(key).copied().unwrap_or(0));
                (delta > 0).then(|| format!("{} {} {delta}", key.0, key.1))
            })
            .collect();
        if !new.is_empty() {
            tracing::warn!(
                "policy drops in the last {} s: {} (`apns-agent events` shows who)",
                DROP_LOG_INTERVAL.as_secs(),
                new.join(", ")
            );
        }
        *logged = now;
    }

    /// Rewrites the textfile (`--textfile`) with what a scrape would get now.
    fn write_textfile(&self) {
        let Some(path) = &self.args.textfile else {
            return;
        };
        let written = self
            .exporter
            .render()
            .and_then(|text| textfile::write_atomically(path, text.as_bytes()));
        if let Err(err) = written {
            tracing::warn!("textfile not written: {err:#}");
        }
    }
}
