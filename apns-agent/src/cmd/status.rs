//! `apns-agent status [--json]`: the datapath, and where each part of its live state came
//! from (the config, or a subcommand since: `settings::state`).

use std::collections::BTreeMap;

use apns_common::{fastpath::Fallback, label::Label as _};
use serde::Serialize;

use crate::{
    cli::Global,
    datapath::{
        self,
        status::{Handoff, InterfaceStatus, KernelStatus, LinkState, PathReport, Status},
        Datapath,
    },
    privileges,
    settings::{state::Source, Settings},
    telemetry::stats::fallback_words,
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
    let settings = Settings::resolve(&global.into())?;
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
    for line in kernel_lines(&status.kernel) {
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
        println!("{}", interface_line(interface));
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

/// The features in one line: "kernel: xdp_meta yes, ...; TC by tcx", and a line per fast
/// path.
fn kernel_lines(kernel: &KernelStatus) -> Vec<String> {
    if let Some(error) = &kernel.error {
        return vec![format!("kernel features: not probed: {error}")];
    }
    let listed: Vec<String> = kernel
        .features
        .iter()
        .map(|(feature, usable)| format!("{feature} {}", if *usable { "yes" } else { "no" }))
        .collect();
    let mut lines = vec![format!(
        "kernel features: {}; TC programs attached by {}",
        listed.join(", "),
        kernel.tc_attachment
    )];
    lines.extend(
        kernel
            .fastpaths
            .iter()
            .map(|(mode, way)| format!("fast path {mode}: {way}")),
    );
    lines
}

/// One line for a person, and a second with the paths of a `redirect` interface (also what
/// `run` logs when an interface's state changes).
pub fn interface_line(interface: &InterfaceStatus) -> String {
    let state = match interface.state {
        LinkState::Attached => "attached".to_owned(),
        LinkState::Renamed => format!(
            "attached to the device now named {} (renamed)",
            interface.current_name.as_deref().unwrap_or("?")
        ),
        LinkState::InterfaceGone => {
            "NOT attached: the interface was deleted (the link is defunct)".to_owned()
        }
        LinkState::OtherNamespace => format!(
            "attached to ifindex {}, which is not in this network namespace",
            interface.ifindex.unwrap_or(0)
        ),
        LinkState::Unreadable => "NOT attached (stale pin)".to_owned(),
        LinkState::LeftDispatcher => {
            "NOT attached: our component is no longer in the interface's libxdp dispatcher (`detach` removes the record, `attach` joins again)".to_owned()
        }
        LinkState::Missing => {
            "NOT attached: missing (no such interface here; the config or `attach` wants it, and `run` attaches it when it appears)".to_owned()
        }
    };
    // No link, so no mode, program or pin to show.
    if interface.state == LinkState::Missing {
        return format!("interface {}: {state}", interface.interface);
    }
    let mut line = format!(
        "interface {}: {state}, {} mode, fast path {}, role {}, program {}, link {} ({})",
        interface.interface,
        interface.xdp_mode,
        interface.fastpath.map_or("-", |fastpath| fastpath.as_str()),
        interface.role.map_or("-", |role| role.as_str()),
        interface
            .program_id
            .map_or("-".to_owned(), |id| id.to_string()),
        interface
            .link_id
            .map_or("-".to_owned(), |id| id.to_string()),
        interface.link_pin
    );
    if let Some(slot) = &interface.dispatcher {
        line.push_str(&format!(
            ", in libxdp dispatcher {} at slot {} (priority {})",
            slot.dispatcher_id, slot.slot, slot.priority
        ));
    }
    if let Some(paths) = &interface.paths {
        line.push('\n');
        line.push_str(&paths_line(paths));
    }
    line
}

/// How a `redirect` interface's packets left it, in one line.
fn paths_line(paths: &PathReport) -> String {
    let count = |counts: &BTreeMap<&str, u64>, word: &str| counts.get(word).copied().unwrap_or(0);
    let by_reason = |reason: Fallback| count(&paths.stack_by_reason, reason.as_str());
    let handed = |result: Handoff| count(&paths.tc_handoffs, result.as_str());
    format!(
        "  redirect paths: xdp {}, tc {}, stack {} ({}); TC handed {} forwarded, {} refused",
        paths.xdp_redirect,
        paths.tc_redirect,
        paths.stack,
        fallback_words(by_reason),
        handed(Handoff::Forwarded),
        handed(Handoff::Refused)
    )
}
