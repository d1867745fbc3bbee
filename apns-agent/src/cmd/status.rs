//! `apns-agent status [--json]`.

use serde::Serialize;

use crate::{
    pinned::{self, Datapath, InterfaceStatus},
    pins::PinDir,
    privileges,
};

/// The JSON shape of `status --json` (stable: fields are only ever added).
#[derive(Serialize)]
struct Status {
    agent_version: &'static str,
    pin_dir: String,
    loaded: bool,
    program: Option<Program>,
    policy: Option<PolicySummary>,
    interfaces: Vec<InterfaceStatus>,
}

#[derive(Serialize)]
struct Program {
    id: u32,
    tag: String,
}

#[derive(Serialize)]
struct PolicySummary {
    mode: &'static str,
    generation: u32,
    allow_ipv4: usize,
    allow_ipv6: usize,
    providers_ipv4: usize,
    providers_ipv6: usize,
    ports: usize,
}

pub fn status(pins: &PinDir, json: bool) -> anyhow::Result<()> {
    privileges::require(privileges::READ, "apns-agent status")?;
    let loaded = pins.is_loaded();
    let policy = if loaded {
        let datapath = Datapath::open(pins)?;
        let policy = datapath.policy.read_active()?;
        Some(PolicySummary {
            mode: policy.mode.as_str(),
            generation: datapath.policy.active_generation()?,
            allow_ipv4: policy.allow_v4().count(),
            allow_ipv6: policy.allow_v6().count(),
            providers_ipv4: policy.providers_v4().count(),
            providers_ipv6: policy.providers_v6().count(),
            ports: policy.ports.len(),
        })
    } else {
        None
    };
    let status = Status {
        agent_version: env!("CARGO_PKG_VERSION"),
        pin_dir: pins.root().display().to_string(),
        loaded,
        program: pinned::program_info(pins)?.map(|(id, tag)| Program {
            id,
            tag: format!("{tag:016x}"),
        }),
        policy,
        interfaces: pinned::interface_status(pins)?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "apns-agent {}, pins in {}",
        status.agent_version, status.pin_dir
    );
    let Some(policy) = &status.policy else {
        println!("datapath: not loaded");
        return Ok(());
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
    if status.interfaces.is_empty() {
        println!("interfaces: none attached");
    }
    for iface in &status.interfaces {
        println!(
            "interface {}: {}, {} mode, fast path {}, program {}, link {} ({})",
            iface.interface,
            if iface.attached {
                "attached"
            } else {
                "NOT attached (stale pin)"
            },
            iface.xdp_mode,
            iface.fastpath.map_or("-", |fastpath| fastpath.as_str()),
            iface.program_id.map_or("-".to_owned(), |id| id.to_string()),
            iface.link_id.map_or("-".to_owned(), |id| id.to_string()),
            iface.link_pin
        );
    }
    Ok(())
}
