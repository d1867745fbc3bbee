//! `apns-agent doctor [--iface IF]... [--json] [--probe HOST:PORT] [--metrics-addr ADDR]`:
//! the preflight checks of [`crate::preflight`], one line each, and an exit code that says
//! how bad the worst one is. Every problem is a check line, never an error, so the exit code
//! is always the report's (see [`crate::preflight::exit`]).

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use crate::{
    cli::{DoctorArgs, Global},
    datapath::{pins::DEFAULT_PIN_DIR, PinDir},
    preflight::{
        host,
        interface::{self, Wanted},
        probe, Check, Report,
    },
    settings::{config::Config, Settings},
};

pub fn doctor(global: &Global, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&global.into());
    let mut checks = vec![host::config(&settings)];
    // A bad config is one failed check; the others go on with the built-in defaults.
    let (config, pins) = match &settings {
        Ok(settings) => (settings.config.clone(), settings.pins.clone()),
        Err(_) => (
            Config::default(),
            PinDir::new(
                global
                    .pin_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR)),
            ),
        ),
    };
    checks.extend([host::kernel()]);
    checks.extend(host::verifier());
    checks.push(host::multiprog(config.sharing.multiprog));
    checks.extend([
        host::capabilities(),
        host::bpffs(),
        host::datapath(&pins),
        host::btf(),
        host::forwarding(),
        host::conntrack(),
        host::metrics(args.metrics_addr),
    ]);
    let interfaces = if args.interfaces.is_empty() {
        &config.interfaces
    } else {
        &args.interfaces
    };
    if interfaces.is_empty() {
        checks.push(Check::warn(
            "interfaces",
            "none to check",
            "name them with --iface IF, or in the config's interfaces",
        ));
    }
    let mut facts = BTreeMap::new();
    for name in interfaces {
        let wanted = Wanted {
            xdp_mode: config.xdp_mode,
            fastpath: config.fastpath.get(name).copied().unwrap_or_default(),
        };
        let (found, read) = interface::check(name, &pins, &wanted);
        checks.extend(found);
        facts.insert(name.clone(), read);
    }
    if let Some(target) = &args.probe {
        checks.push(probe::probe(target));
    }
    let report = Report::new(checks, facts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::from(report.exit_code))
}
