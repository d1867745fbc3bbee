//! `apns-agent run`: become the datapath's controller, install, reconcile to the config (with
//! the live changes still in force), serve /metrics, then serve signals until told to stop.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use apns_common::label::Label as _;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::oneshot,
};

use crate::{
    cli::{Global, RunArgs},
    datapath::{
        interfaces::FastPath,
        links,
        reconcile::{Change, Changes, Desired},
        status::{InterfaceStatus, LinkState, Program},
        Datapath, EbpfLog, PinDir,
    },
    privileges, readiness,
    settings::Settings,
    telemetry::{server, textfile, ConfigRecord, Exporter},
};

/// How often `run` checks that every attached interface is still the device its pin names
/// (an interface deleted and re-created, or renamed, under a running agent).
const INTERFACE_CHECK: Duration = Duration::from_secs(5);

/// How long a SIGHUP reload waits for another command to release the pin directory's lock.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Threads tokio may start for blocking work (metric renders): renders take the exporter's
/// lock one at a time anyway, and every idle thread keeps its memory.
const MAX_BLOCKING_THREADS: usize = 2;

pub fn run(global: &Global, args: &RunArgs) -> anyhow::Result<()> {
    privileges::require(privileges::CHANGE, "apns-agent run")?;
    let settings = Settings::resolve(&global.into())?;
    let config = settings.desired(&args.into());
    anyhow::ensure!(
        !config.interfaces.is_empty(),
        "no interface to attach to: give --iface IFACE or set `interfaces` in the config"
    );
    let pins = settings.pins.clone();
    // Before anything is touched: a second `run` on this datapath stops here.
    let controller = pins.become_controller()?;

    // Signal handlers first: a SIGTERM that arrives while we set up is then served once the
    // setup is done, instead of killing the process half-way.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
        .context("starting the async runtime")?;
    let signals = runtime.block_on(async { Signals::install() })?;
    // A taken metrics port or a bad web config fails here, before the kernel is touched.
    let listener = runtime.block_on(server::bind(args.metrics_addr))?;
    let web = server::Web::load(args.web_config_file.as_deref())?;

    pins.prepare()?;
    let mut datapath = {
        let lock = pins.lock()?;
        let (mut datapath, installed) = Datapath::install(
            &pins,
            &lock,
            Some(args.ebpf_log),
            settings.config.clients.table_size,
        )?;
        tracing::info!(?installed, pin_dir = %pins.root().display(), "datapath installed");
        apply(&settings, &mut datapath, &lock, &config)?;
        datapath
    };

    // Loading needed memory only while it ran (aya's parse of the object, its sections and
    // BTF); give what was freed back to the system, or the daemon keeps it. (The kernel's BTF,
    // once most of the peak, is no longer parsed: datapath/object.rs.)
    release_freed_memory();
    let running_rules = settings.config.clients.rules;
    let mut record = config_record(&settings);
    record.applied_at = Some(SystemTime::now());
    record.last_reload_ok = true;
    let wanted = {
        let settings = settings.clone();
        move || {
            Ok(settings
                .load_state()?
                .wanted_interfaces()?
                .into_keys()
                .collect())
        }
    };
    let exporter = Arc::new(Exporter::open(
        &pins,
        Duration::from_secs(args.reachability_window),
        record,
        running_rules,
        Box::new(wanted),
    )?);
    let attached = runtime.block_on(async {
        let (stop, stopped) = oneshot::channel::<()>();
        let render = {
            let exporter = exporter.clone();
            move || exporter.render()
        };
        let server = tokio::spawn(server::serve(listener, render, web.clone(), async move {
            let _ = stopped.await;
        }));
        if args.ebpf_log != EbpfLog::Off {
            if let Err(err) = forward_ebpf_log(&pins) {
                tracing::warn!("the datapath's log is not forwarded: {err:#}");
            }
        }
        let attached = serve_signals(
            signals,
            global,
            args,
            Running {
                datapath: &mut datapath,
                settings,
                config,
            },
            &exporter,
            &web,
        )
        .await;
        let _ = stop.send(());
        if let Err(err) = server.await {
            tracing::warn!("the metrics server ended badly: {err}");
        }
        attached
    })?;

    if args.detach_on_exit {
        let lock = pins.lock()?;
        let mut desired = datapath.live()?;
        desired
            .interfaces
            .retain(|interface, _| !attached.contains(interface));
        for change in datapath.reconcile(&lock, &desired)?.0 {
            tracing::info!("{change} (--detach-on-exit)");
        }
    } else {
        tracing::info!("exiting; the datapath stays attached and enforcing (fail-static)");
    }
    drop(controller);
    Ok(())
}

/// Returns the heap memory freed so far to the system (glibc keeps freed memory in its
/// arenas otherwise).
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where the policy of `settings` comes from, for /metrics.
fn config_record(settings: &Settings) -> ConfigRecord {
    let sources = &settings.config.sources;
    let paths = |paths: &[std::path::PathBuf]| -> Vec<String> {
        paths
            .iter()
            .map(|path| path.display().to_string())
            .collect()
    };
    ConfigRecord {
        file: settings
            .config_file()
            .map(|file| file.display().to_string()),
        apple: sources.apple.as_str(),
        allow_files: paths(&sources.allow_files),
        provider_files: paths(&sources.provider_files),
        ..ConfigRecord::default()
    }
}

/// Records, then brings the datapath to, the config's `desired` state with the live changes
/// still in force (`settings::state`). An interface that does not exist is reported and left
/// out; the others are attached. The caller holds `lock`.
fn apply(
    settings: &Settings,
    datapath: &mut Datapath,
    lock: &crate::datapath::Lock,
    config: &crate::datapath::reconcile::Desired,
) -> anyhow::Result<Changes> {
    let mut state = settings.load_state()?;
    let (desired, notes) = state.merge(config, settings.config_file(), SystemTime::now())?;
    for note in notes {
        tracing::info!("{note}");
    }
    // Intent before action; but `run`'s record is what the config says, which the next start
    // derives again, and refusing would leave the gateway unenforced (settings::state).
    if let Err(err) = settings.save_state(&state) {
        tracing::error!("{err:#}; applying the config all the same");
    }
    // `run` runs where its interfaces are: it may move links to re-created interfaces.
    let mut changes = datapath.move_stale_links(lock)?;
    changes.0.extend(datapath.reconcile(lock, &desired)?.0);
    for change in &changes.0 {
        match change {
            Change::Missing { .. } => tracing::warn!("{change}"),
            _ => tracing::info!("{change}"),
        }
    }
    Ok(changes)
}

/// Forwards the datapath's aya-log records into this process's log (through the `log` crate,
/// which tracing-subscriber picks up) from a thread that waits on the log ring buffer; the
/// thread ends with the process.
fn forward_ebpf_log(pins: &PinDir) -> anyhow::Result<()> {
    let Program { id, .. } =
        crate::datapath::status::program(pins)?.context("no XDP program is pinned")?;
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

/// How often `run` reads the connection table when nobody scrapes, so that what only the
/// agent counts (failed handshakes, 443 fallbacks) is counted before the table evicts it.
const CLIENTS_INTERVAL: Duration = Duration::from_secs(15);

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

/// What `run` controls and what it was told: the datapath, and the settings and config
/// (with `run`'s flags) it last applied.
struct Running<'a> {
    datapath: &'a mut Datapath,
    settings: Settings,
    config: Desired,
}

/// Serves SIGHUP (reload of the config and the web config), the textfile, the drop log and
/// the interface check until SIGTERM or SIGINT; returns the interfaces the config in force
/// at exit wants attached.
async fn serve_signals(
    signals: Signals,
    global: &Global,
    args: &RunArgs,
    mut running: Running<'_>,
    exporter: &Exporter,
    web: &server::Web,
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
    let mut interface_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + INTERFACE_CHECK,
        INTERFACE_CHECK,
    );
    let mut clients_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + CLIENTS_INTERVAL,
        CLIENTS_INTERVAL,
    );
    let mut reported = BTreeMap::new();
    let mut drops_logged = exporter.policy_drops().unwrap_or_default();
    let mut interfaces: Vec<String> = running.datapath.live()?.interfaces.into_keys().collect();
    readiness::ready(&format!(
        "attached to {}; serving /metrics on {}",
        interfaces.join(", "),
        args.metrics_addr
    ));
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
            _ = clients_tick.tick() => {
                if let Err(err) = exporter.observe_clients() {
                    tracing::warn!("reading the connection table: {err:#}");
                }
            }
            _ = interface_tick.tick() => {
                if let Err(err) = check(&mut running, &mut reported) {
                    tracing::warn!("checking the datapath: {err:#}");
                }
            }
            _ = hangup.recv() => {
                readiness::reloading();
                let reloaded = reload(global, args, &mut running);
                let recorded = match reloaded {
                    Ok(now) => {
                        interfaces = now;
                        exporter
                            .set_rules(running.settings.config.clients.rules)
                            .and_then(|()| exporter.config_applied(config_record(&running.settings)))
                    }
                    // A bad file leaves the running datapath exactly as it was.
                    Err(err) => {
                        tracing::error!("reload refused, nothing changed: {err:#}");
                        exporter.reload_failed()
                    }
                };
                if let Err(err) = recorded {
                    tracing::warn!("recording the reload for /metrics: {err:#}");
                }
                web.reload();
                readiness::ready(&format!("attached to {}", interfaces.join(", ")));
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    readiness::stopping();
    Ok(interfaces)
}

/// Re-reads the config and reconciles to it (live changes still in force stay). Returns the
/// interfaces now wanted.
fn reload(global: &Global, args: &RunArgs, running: &mut Running) -> anyhow::Result<Vec<String>> {
    let settings = Settings::resolve(&global.into())?;
    let Some(file) = settings.config_file() else {
        anyhow::bail!("SIGHUP: no config file to re-read (started without one)");
    };
    let datapath = &mut *running.datapath;
    anyhow::ensure!(
        settings.pins == *datapath.pins(),
        "SIGHUP: the config's pin_dir is now {}, but this agent controls {}: restart it to move",
        settings.pins.root().display(),
        datapath.pins().root().display()
    );
    let config = settings.desired(&args.into());
    anyhow::ensure!(
        !config.interfaces.is_empty(),
        "no interface to attach to: set `interfaces` in the config"
    );
    let lock = settings.pins.lock_within(LOCK_PATIENCE)?;
    apply(&settings, datapath, &lock, &config)?;
    tracing::info!("config reloaded from {}", file.display());
    let interfaces = datapath.live()?.interfaces.into_keys().collect();
    running.settings = settings;
    running.config = config;
    Ok(interfaces)
}

/// What an operator's day does to a running datapath, checked every few seconds:
/// - pins removed by hand are re-pinned from the open handles (else no other command could
///   reach the datapath, and no later `run` adopt it);
/// - an interface whose link state changed is reported (deleted, renamed, missing, back);
/// - the link of an interface that was re-created (or whose name another device took) moves
///   to the device that has the name now;
/// - an interface that should be attached but whose link pin was removed by hand (which
///   detaches it), or that was missing and has appeared, is attached. What "should" means is
///   what `run` applies: the config with the live changes still in force
///   (`settings::state`), so a `detach` stays detached.
fn check(running: &mut Running, reported: &mut BTreeMap<String, LinkState>) -> anyhow::Result<()> {
    let datapath = &mut *running.datapath;
    // The whole pin directory may have been removed: the lock lives on it.
    datapath.pins().prepare()?;
    // Another command is changing the datapath: look again at the next tick rather than
    // stall the agent (and /metrics, on the same thread) behind it.
    let Some(lock) = datapath.pins().try_lock()? else {
        tracing::debug!("the pin directory is locked by another command; checking later");
        return Ok(());
    };
    for pin in datapath.repair_pins(&lock)? {
        tracing::warn!("{pin} was removed by hand; pinned again from the running datapath");
    }
    let wanted = running
        .settings
        .load_state()?
        .effective(&running.config)?
        .interfaces;
    let mut statuses = datapath.interface_status()?;
    let missing = datapath.missing(wanted.keys())?;
    statuses.extend(missing.into_iter().map(InterfaceStatus::missing));
    let mut moved = false;
    for status in &statuses {
        if reported.get(&status.interface) != Some(&status.state) {
            match status.state {
                LinkState::Attached if reported.contains_key(&status.interface) => {
                    tracing::info!("{}", super::status::interface_line(status))
                }
                LinkState::Attached => {}
                _ => tracing::warn!("{}", super::status::interface_line(status)),
            }
            reported.insert(status.interface.clone(), status.state);
        }
        let named_now = links::ifindex(&status.interface).ok();
        moved |= named_now.is_some() && named_now != status.ifindex;
    }
    if moved {
        for change in datapath.move_stale_links(&lock)?.0 {
            tracing::info!("{change}");
        }
    }
    // The link pins alone tell what is lost; the rest of the live state is read only then.
    let pinned: BTreeSet<String> = datapath
        .pins()
        .links()?
        .into_iter()
        .map(|link| link.interface)
        .collect();
    let lost: BTreeMap<String, FastPath> = wanted
        .into_iter()
        .filter(|(interface, _)| !pinned.contains(interface) && links::ifindex(interface).is_ok())
        .collect();
    if !lost.is_empty() {
        // Missing until now (or not seen yet), or last seen with a link pin.
        let (appeared, unpinned): (Vec<&str>, Vec<&str>) =
            lost.keys().map(String::as_str).partition(|interface| {
                matches!(reported.get(*interface), None | Some(LinkState::Missing))
            });
        if !appeared.is_empty() {
            tracing::info!(
                "{}: the interface is here now; attaching it",
                appeared.join(", ")
            );
        }
        if !unpinned.is_empty() {
            tracing::warn!(
                "the link pin of {} was removed by hand (which detaches it); attaching again",
                unpinned.join(", ")
            );
        }
        let mut live = datapath.live()?;
        // Roles come from the config alone (`live` knows only the attached interfaces').
        live.devices.extend(
            lost.keys()
                .filter(|interface| running.config.devices.contains(*interface))
                .cloned(),
        );
        live.interfaces.extend(lost);
        live.xdp_mode = running.config.xdp_mode;
        for change in datapath.reconcile(&lock, &live)?.0 {
            tracing::info!("{change}");
        }
    }
    Ok(())
}
