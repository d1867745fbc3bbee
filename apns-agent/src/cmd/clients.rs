//! `apns-agent clients [--json] [--watch [SECS]] [--device ADDR]`: the devices behind the
//! gateway and whether they reach APNs, from the pinned connection table (works without a
//! running agent: after a `kill -9` too).

use std::{net::IpAddr, time::Duration};

use crate::{
    cli::Global,
    datapath::{interfaces::InterfaceRole, Datapath},
    privileges,
    settings::Settings,
    telemetry::{
        clients::{self, Report},
        model, watch,
    },
};

pub fn clients(
    global: &Global,
    json: bool,
    watch_secs: Option<u64>,
    device: Option<IpAddr>,
) -> anyhow::Result<()> {
    privileges::require(privileges::READ, "apns-agent clients")?;
    let settings = Settings::resolve(&global.into())?;
    let datapath = Datapath::open(&settings.pins)?;
    let rules = settings.config.clients.rules;
    let has_devices = datapath
        .interface_status()?
        .iter()
        .any(|interface| interface.attached && interface.role == Some(InterfaceRole::Devices));
    let report = || -> anyhow::Result<Report> {
        let table = datapath.conns.read()?;
        let mut report = Report::build(&table, &rules, model::interface_name);
        if let Some(address) = device {
            report.devices.retain(|d| d.address == address);
        }
        Ok(report)
    };
    let render = |report: &Report| {
        let mut text = String::new();
        if !has_devices {
            text.push_str("note: no attached interface has the devices role, so nothing feeds the connection table: set [roles] in the config (docs/clients.md)\n");
        }
        if let (Some(address), true) = (device, report.devices.is_empty()) {
            text.push_str(&format!(
                "device {address}: not in the connection table in the last {} s (no APNs connection of it seen, or its entries were evicted)\n",
                rules.window.as_secs()
            ));
            return text;
        }
        text.push_str(&clients::render_table(report, device.is_some()));
        text
    };
    if let Some(secs) = watch_secs {
        let first = render(&report()?);
        return watch::redraw(Duration::from_secs(secs), first, || Ok(render(&report()?)));
    }
    let report = report()?;
    if json {
        println!("{}", clients::render_json(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(())
}
