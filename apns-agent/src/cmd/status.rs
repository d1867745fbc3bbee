//! `apns-agent status [--json]`: the datapath, and where each part of its live state came
//! from (the config, or a subcommand since: `settings::state`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    cli::Global,
    datapath::{
        self,
        status::{InterfaceStatus, Status},
        Datapath,
    },
    privileges,
    settings::{state::Source, Settings},
};

/// The JSON shape of `status --json` (stable: fields are only ever added).
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    datapath: Status,
    /// Setting (mode, allow, providers, ports, interfaces, fastpath) to where its live value
    /// came from.
    sources: BTreeMap<&'static str, Source>,
    /// Why `sources` could not be read, if it could not.
    sources_error: Option<String>,
}

pub fn status(global: &Global, json: bool) -> anyhow::Result<()> {
    privileges::require(privileges::READ, "apns-agent status")?;
    let settings = Settings::resolve(global)?;
    let pins = &settings.pins;
    let state = settings.load_state();
    let status = if pins.is_loaded() {
        let datapath = Datapath::open(pins)?;
        let mut status = datapath.status()?;
        // What the record wants that is neither attached nor here: the interfaces `run` left
        // out as missing.
        if let Ok(state) = &state {
            let wanted = state.wanted_interfaces()?;
            let missing = datapath.missing(wanted.keys())?;
            status
                .interfaces
                .extend(missing.into_iter().map(InterfaceStatus::missing));
        }
        status
    } else {
        datapath::status_unloaded(pins)
    };
    let (sources, sources_error) = match state {
        Ok(state) => (state.sources(), None),
        Err(err) => (BTreeMap::new(), Some(format!("{err:#}"))),
    };
    let report = Report {
        datapath: status,
        sources,
        sources_error,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print(&report);
    Ok(())
}

fn print(report: &Report) {
    let status = &report.datapath;
    println!(
        "apns-agent {}, pins in {}",
        status.agent_version, status.pin_dir
    );
    for line in status.kernel.lines() {
        println!("{line}");
    }
    let Some(policy) = &status.policy else {
        println!("datapath: not loaded");
        return;
    };
    if let Some(program) = &status.program {
        println!("program: id {}, tag {}", program.id, program.tag);
    }
    println!(
        "policy: {} (generation {}); allow-list {} IPv4 + {} IPv6 prefixes; providers {} IPv4 + {} IPv6; {} ports",
        policy.mode,
        policy.generation,
        policy.allow_ipv4,
        policy.allow_ipv6,
        policy.providers_ipv4,
        policy.providers_ipv6,
        policy.ports
    );
    if !status.interfaces.iter().any(|interface| interface.attached) {
        println!("interfaces: none attached");
    }
    for interface in &status.interfaces {
        println!("{}", interface.line());
    }
    match &report.sources_error {
        Some(err) => println!("sources: unknown ({err})"),
        None => {
            for (section, source) in &report.sources {
                println!("{section}: {}", source.describe());
            }
        }
    }
}
