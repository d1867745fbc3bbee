//! `apns-agent run`: become the datapath's controller, install, reconcile to the config (with
//! the live changes still in force), serve /metrics, then serve signals until told to stop.

mod check;
mod supervisor;

use std::{
    os::fd::AsFd as _,
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use apns_common::label::Label as _;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::oneshot;

use crate::{
    cli::{Global, RunArgs},
    datapath::{
        reconcile::{Change, Changes, Desired},
        status::Program,
        Datapath, EbpfLog, PinDir,
    },
    privileges,
    settings::Settings,
    telemetry::{server, ConfigRecord, Exporter},
};
use supervisor::{Signals, Supervisor};

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
        let attached = Supervisor {
            global,
            args,
            running: Running {
                datapath: &mut datapath,
                settings,
                config,
            },
            exporter: &exporter,
            web: &web,
        }
        .serve(signals)
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

/// What `run` controls and what it was told: the datapath, and the settings and config
/// (with `run`'s flags) it last applied.
struct Running<'a> {
    datapath: &'a mut Datapath,
    settings: Settings,
    config: Desired,
}

impl Running<'_> {
    /// The interfaces attached now.
    fn interfaces(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.datapath.live()?.interfaces.into_keys().collect())
    }
}
