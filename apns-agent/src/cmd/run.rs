//! `apns-agent run`: install, attach, apply, then wait for signals.

use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use apns_common::events::EventConfig;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::oneshot,
};

use crate::{
    cli::RunArgs,
    config::{Config, DEFAULT_CONFIG},
    datapath::EbpfLog,
    pinned::{self, Datapath},
    pins::PinDir,
    privileges,
    telemetry::{server, textfile, Exporter},
};

pub fn run(args: &RunArgs, pin_dir: &Option<PathBuf>) -> anyhow::Result<()> {
    privileges::require(privileges::CHANGE, "apns-agent run")?;
    let config_path = match &args.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|path| path.exists()),
    };
    let config = effective_config(args, config_path.as_deref())?;
    anyhow::ensure!(
        !config.interfaces.is_empty(),
        "no interface to attach to: give --iface IFACE or set `interfaces` in the config"
    );
    let pins = PinDir::new(
        pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(&config.pin_dir)),
    );
    for interface in &config.interfaces {
        pinned::ifindex(interface)?;
    }

    // Signal handlers first: a SIGTERM that arrives while we set up is then served once the
    // setup is done, instead of killing the process half-way.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let signals = runtime.block_on(async { Signals::install() })?;
    // A taken metrics port fails here, before the kernel is touched.
    let listener = runtime.block_on(server::bind(args.metrics_addr))?;

    pins.prepare()?;
    {
        let _lock = pins.lock()?;
        let installed = pinned::install(&pins, Some(args.ebpf_log))?;
        tracing::info!(?installed, pin_dir = %pins.root().display(), "datapath installed");
        for interface in &config.interfaces {
            let mode = pinned::attach(&pins, interface, config.xdp_mode)?;
            let fastpath = config.fastpath.get(interface).copied().unwrap_or_default();
            pinned::set_fastpath(&pins, interface, fastpath, Some(config.mark))?;
            tracing::info!(
                interface,
                mode = mode.as_str(),
                fastpath = fastpath.as_str(),
                "attached"
            );
        }
        Datapath::open(&pins)?.policy.apply(&config.policy)?;
        tracing::info!(mode = %config.policy.mode, prefixes = config.policy.allow.len(), "policy applied");
        pinned::event_maps(&pins)?.set_config(EventConfig {
            per_cpu_per_second: args.events_per_second,
            sample_every: args.events_sample_every,
        })?;
    }

    let exporter = Arc::new(Exporter::open(
        &pins,
        Duration::from_secs(args.reachability_window),
    )?);
    tracing::info!(addr = %args.metrics_addr, "serving /metrics");
    let attached = runtime.block_on(async {
        let (stop, stopped) = oneshot::channel::<()>();
        let render = {
            let exporter = exporter.clone();
            move || exporter.render()
        };
        let server = tokio::spawn(server::serve(listener, render, async move {
            let _ = stopped.await;
        }));
        if args.ebpf_log != EbpfLog::Off {
            if let Err(err) = forward_ebpf_log(&pins) {
                tracing::warn!("the datapath's log is not forwarded: {err:#}");
            }
        }
        let attached = wait_for_signals(
            signals,
            args,
            config_path.as_deref(),
            &pins,
            &exporter,
            config,
        )
        .await;
        let _ = stop.send(());
        if let Err(err) = server.await {
            tracing::warn!("the metrics server ended badly: {err}");
        }
        attached
    })?;

    if args.detach_on_exit {
        let _lock = pins.lock()?;
        for interface in &attached {
            pinned::detach(&pins, interface)?;
            tracing::info!(interface, "detached (--detach-on-exit)");
        }
    } else {
        tracing::info!("exiting; the datapath stays attached and enforcing (fail-static)");
    }
    Ok(())
}

/// The config file (or the defaults) with the command line's overrides.
fn effective_config(args: &RunArgs, path: Option<&Path>) -> anyhow::Result<Config> {
    let mut config = match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if !args.interfaces.is_empty() {
        config.interfaces = args.interfaces.clone();
    }
    if let Some(mode) = args.mode {
        config.policy.mode = mode.into();
    }
    if let Some(xdp_mode) = args.xdp_mode {
        config.xdp_mode = xdp_mode.into();
    }
    config.fastpath.extend(args.fastpath.iter().cloned());
    Ok(config)
}

/// Forwards the datapath's aya-log records into this process's log (through the `log` crate,
/// which tracing-subscriber picks up) from a thread that waits on the log ring buffer; the
/// thread ends with the process.
fn forward_ebpf_log(pins: &PinDir) -> anyhow::Result<()> {
    let (id, _) = pinned::program_info(pins)?.context("no XDP program is pinned")?;
    let mut logger = aya_log::EbpfLogger::init_from_id(id)
        .with_context(|| format!("opening the log ring buffer of program {id}"))?;
    std::thread::Builder::new()
        .name("ebpf-log".into())
        .spawn(move || loop {
            let mut fds = [PollFd::new(logger.as_fd(), PollFlags::POLLIN)];
            if let Err(err) = poll(&mut fds, PollTimeout::from(1_000u16)) {
                if err != nix::errno::Errno::EINTR {
                    tracing::warn!("waiting for the datapath's log: {err}");
                    return;
                }
            }
            logger.flush();
        })
        .context("starting the datapath log thread")?;
    tracing::info!("forwarding the datapath's log (--ebpf-log)");
    Ok(())
}

/// How often `run` may log a summary of policy drops.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Logs one line with the drops counted since `before`, if any.
fn log_new_drops(
    before: &BTreeMap<(String, &'static str), u64>,
    now: &BTreeMap<(String, &'static str), u64>,
) {
    let new: Vec<String> = now
        .iter()
        .filter_map(|(key, &count)| {
            let delta = count.saturating_sub(before.get(key).copied().unwrap_or(0));
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
}

/// The signals `run` serves.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }
}

/// Serves SIGHUP (reload) until SIGTERM or SIGINT; returns the interfaces attached by the
/// config in force at exit.
async fn wait_for_signals(
    signals: Signals,
    args: &RunArgs,
    config_path: Option<&Path>,
    pins: &PinDir,
    exporter: &Exporter,
    mut config: Config,
) -> anyhow::Result<Vec<String>> {
    let Signals {
        mut hangup,
        mut terminate,
        mut interrupt,
    } = signals;
    // The textfile writes also feed the reachability window when nobody scrapes.
    let mut textfile_tick = tokio::time::interval(Duration::from_secs(args.textfile_interval));
    // At most one drop summary per interval in the log, however hard the datapath drops.
    let mut drop_log_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + DROP_LOG_INTERVAL,
        DROP_LOG_INTERVAL,
    );
    let mut drops_logged = exporter.policy_drops().unwrap_or_default();
    tracing::info!("running; SIGHUP reloads the config, SIGTERM/SIGINT exits");
    loop {
        tokio::select! {
            _ = drop_log_tick.tick() => match exporter.policy_drops() {
                Ok(drops) => {
                    log_new_drops(&drops_logged, &drops);
                    drops_logged = drops;
                }
                Err(err) => tracing::warn!("reading the drop counters: {err:#}"),
            },
            _ = textfile_tick.tick(), if args.textfile.is_some() => {
                if let Some(path) = &args.textfile {
                    let written = exporter
                        .render()
                        .and_then(|text| textfile::write_atomically(path, text.as_bytes()));
                    if let Err(err) = written {
                        tracing::warn!("textfile not written: {err:#}");
                    }
                }
            }
            _ = hangup.recv() => match reload(args, config_path, pins, &config) {
                Ok(new_config) => config = new_config,
                // A bad file leaves the running policy exactly as it was.
                Err(err) => tracing::error!("reload refused, policy unchanged: {err:#}"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    Ok(config.interfaces)
}

/// Re-reads the config and applies it: new interfaces are attached, interfaces dropped from
/// the config are detached, the policy is swapped as a whole.
fn reload(
    args: &RunArgs,
    path: Option<&Path>,
    pins: &PinDir,
    old: &Config,
) -> anyhow::Result<Config> {
    let Some(path) = path else {
        anyhow::bail!("SIGHUP: no config file to re-read (started without one)");
    };
    let config = effective_config(args, Some(path))?;
    for interface in &config.interfaces {
        pinned::ifindex(interface)?;
    }
    let _lock = pins.lock()?;
    for interface in config
        .interfaces
        .iter()
        .filter(|i| !old.interfaces.contains(i))
    {
        pinned::attach(pins, interface, config.xdp_mode)?;
        tracing::info!(interface, "attached (reload)");
    }
    Datapath::open(pins)?.policy.apply(&config.policy)?;
    for interface in old
        .interfaces
        .iter()
        .filter(|i| !config.interfaces.contains(i))
    {
        pinned::detach(pins, interface)?;
        tracing::info!(interface, "detached (reload)");
    }
    tracing::info!(mode = %config.policy.mode, "config reloaded from {}", path.display());
    Ok(config)
}
