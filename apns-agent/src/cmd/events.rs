//! `apns-agent events [--json] [--count N]`: streams policy drop events until Ctrl-C (or N),
//! each with the finding of the device it concerns where the connection table knows it
//! (docs/clients.md, "Drop events").

use std::{
    io::Write as _,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apns_common::{counters::DropReason, label::Label as _};
use serde::Serialize;

use crate::{
    cli::Global,
    datapath::{conns::ConnMaps, events::PolicyDrop, Datapath},
    privileges,
    settings::Settings,
    telemetry::{
        clients::{Report, Rules},
        model::interface_name,
    },
};

/// How long one wait for the ring lasts before looking again (keeps Ctrl-C responsive).
const POLL: Duration = Duration::from_millis(200);
/// How old the devices' findings may be: a flood of drops reads the table at most this often.
const FINDINGS_MAX_AGE: Duration = Duration::from_secs(5);

/// A drop event as `events` prints it.
#[derive(Serialize)]
struct Event<'a> {
    #[serde(flatten)]
    drop: &'a PolicyDrop,
    /// The device the drop concerns, if the connection table knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceNote>,
}

#[derive(Serialize)]
struct DeviceNote {
    address: IpAddr,
    /// The finding's label, and in words.
    finding: &'static str,
    words: String,
}

/// The devices' findings, read again when older than [`FINDINGS_MAX_AGE`].
struct Findings<'a> {
    conns: &'a ConnMaps,
    rules: Rules,
    report: Option<(Instant, Report)>,
}

impl Findings<'_> {
    /// The finding of `address`, if the table knows the device. A table that cannot be read
    /// leaves the event as it is (the drop is what matters).
    fn finding_of(&mut self, address: IpAddr) -> Option<DeviceNote> {
        let stale = self
            .report
            .as_ref()
            .is_none_or(|(at, _)| at.elapsed() >= FINDINGS_MAX_AGE);
        if stale {
            let table = self.conns.read().ok()?;
            let report = Report::build(&table, &self.rules, interface_name);
            self.report = Some((Instant::now(), report));
        }
        let (_, report) = self.report.as_ref()?;
        let device = report.device(address)?;
        Some(DeviceNote {
            address,
            finding: device.finding.as_str(),
            words: device.words.clone(),
        })
    }
}

/// One line for a person: time, interface, reason, flow, and how many were suppressed.
fn line(drop: &PolicyDrop) -> String {
    let endpoint = |addr: &IpAddr, port: u16| match addr {
        IpAddr::V4(addr) => format!("{addr}:{port}"),
        IpAddr::V6(addr) => format!("[{addr}]:{port}"),
    };
    let mut line = format!(
        "{} {} drop {} {} {} -> {}",
        drop.time,
        drop.interface,
        drop.reason,
        drop.protocol,
        endpoint(&drop.src, drop.sport),
        endpoint(&drop.dst, drop.dport)
    );
    if drop.suppressed > 0 {
        line.push_str(&format!(" (+{} more not reported)", drop.suppressed));
    }
    line
}

/// The device a drop concerns: the destination of an inbound connection attempt (the
/// device it was aimed at), the source of any other drop (the host behind the gateway).
fn concerned(drop: &PolicyDrop) -> IpAddr {
    if drop.reason == DropReason::InboundOpen.as_str() {
        drop.dst
    } else {
        drop.src
    }
}

pub fn events(global: &Global, json: bool, count: Option<u64>) -> anyhow::Result<()> {
    privileges::require(privileges::READ, "apns-agent events")?;
    let settings = Settings::resolve(&global.into())?;
    let Datapath {
        events: mut maps,
        conns,
        ..
    } = Datapath::open(&settings.pins)?;
    let mut findings = Findings {
        conns: &conns,
        rules: settings.config.clients.rules,
        report: None,
    };
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    loop {
        for event in maps.drain() {
            let drop = PolicyDrop::from_event(&event, interface_name);
            let device = findings.finding_of(concerned(&drop));
            let line = if json {
                serde_json::to_string(&Event {
                    drop: &drop,
                    device,
                })?
            } else {
                match device {
                    Some(device) => {
                        format!(
                            "{} (device {}: {})",
                            line(&drop),
                            device.address,
                            device.words
                        )
                    }
                    None => line(&drop),
                }
            };
            writeln!(out, "{line}").context("writing to stdout")?;
            printed += 1;
            if count.is_some_and(|count| printed >= count) {
                return Ok(());
            }
        }
        out.flush().context("writing to stdout")?;
        maps.wait(POLL)?;
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn events_read_as_lines() {
        let event = crate::datapath::events::tests::sample_event();
        let line = line(&PolicyDrop::from_event(&event, |_| "lan0".into()));
        assert!(
            line.ends_with("lan0 drop pinhole tcp 192.0.2.10:40000 -> 203.0.113.130:5223 (+3 more not reported)"),
            "{line}"
        );
    }
}
