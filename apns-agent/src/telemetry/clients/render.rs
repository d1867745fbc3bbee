//! The report for people and scripts: `clients --json` ([`render_json`]) and the tables of
//! `clients` ([`render_table`]).

use std::net::IpAddr;

use apns_common::label::Label as _;
use serde::Serialize;

use super::{Device, Port443, Report};
use crate::telemetry::table::Table;

/// Version of the JSON shape `clients --json` prints (fields are only ever added).
pub const SCHEMA: u32 = 1;

/// `clients --json`: the report with its schema.
pub fn render_json(report: &Report) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Document<'a> {
        schema: u32,
        #[serde(flatten)]
        report: &'a Report,
    }
    let document = Document {
        schema: SCHEMA,
        report,
    };
    Ok(serde_json::to_string_pretty(&document)?)
}

/// `clients` without `--json`: a line about the table, then one line per device, worst
/// first; with `detail`, each device's connections under it.
pub fn render_table(report: &Report, detail: bool) -> String {
    let table = &report.table;
    let mut out = format!(
        "connection table: {} of {} entries, {} made, {} evicted{}; window {}\n",
        table.entries,
        table.size,
        table.made,
        table.evicted,
        if table.failed > 0 {
            format!(
                ", {} NOT tracked (the kernel refused an entry)",
                table.failed
            )
        } else {
            String::new()
        },
        duration(report.window_secs as f64)
    );
    if report.devices.is_empty() {
        out.push_str("no device seen in the window\n");
        return out;
    }
    out.push('\n');
    devices_table(&report.devices, &mut out);
    if detail {
        for device in &report.devices {
            out.push_str(&format!("\n{}: {}\n", device.address, device.words));
            connections_table(device, &mut out);
        }
    }
    out
}

/// One line per device.
fn devices_table(devices: &[Device], out: &mut String) {
    let mut rows = Table::new(
        2,
        &[
            "device",
            "finding",
            "open",
            "open for",
            "last handshake",
            "failed",
            "resets",
            "cuts",
            "443 fallbacks",
            "bytes out",
            "bytes in",
        ],
    );
    for device in devices {
        let h = &device.handshakes;
        let r = &device.resets;
        rows.row(vec![
            device.address.to_string(),
            device.words.clone(),
            device.open.to_string(),
            device.open_secs.map_or("-".to_owned(), duration),
            device
                .last_handshake_secs
                .map_or("never".to_owned(), |s| format!("{} ago", duration(s))),
            (h.unanswered + h.refused + h.incomplete).to_string(),
            (r.by_apple + r.by_network + r.by_device).to_string(),
            device.idle_cuts_secs.len().to_string(),
            device.fallbacks_443.to_string(),
            bytes(device.bytes_out),
            bytes(device.bytes_in),
        ]);
    }
    rows.write(out);
}

/// One line per connection of `device`.
fn connections_table(device: &Device, out: &mut String) {
    let mut rows = Table::new(
        4,
        &[
            "apple",
            "port",
            "state",
            "handshake",
            "age",
            "idle",
            "end",
            "syns",
            "pkts out",
            "pkts in",
        ],
    );
    for c in &device.connections {
        rows.row(vec![
            format!("{}:{}", endpoint(c.apple), c.apple_port),
            c.device_port.to_string(),
            c.state.as_str().to_owned(),
            c.handshake.as_str().to_owned(),
            duration(c.age_secs),
            duration(c.idle_secs),
            match (c.idle_cut_after_secs, c.reset_by, c.fallback) {
                (Some(gap), _, _) => format!("cut after {}", about(gap)),
                (None, Some(by), _) => format!("reset by {}", by.as_str()),
                (None, None, true) => Port443::Fallback.as_str().to_owned(),
                _ => c.end.as_str().to_owned(),
            },
            c.syns.to_string(),
            c.packets_out.to_string(),
            c.packets_in.to_string(),
        ]);
    }
    rows.write(out);
}

/// A duration for people: "~N min" from two minutes on, "~N s" below.
pub(super) fn about(seconds: f64) -> String {
    if seconds >= 120.0 {
        format!("~{} min", (seconds / 60.0).round() as u64)
    } else {
        format!("~{} s", seconds.round() as u64)
    }
}

fn endpoint(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// "45 s", "12 min", "3 h", "2 d".
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// "512 B", "1.5 KiB", "3.0 MiB".
fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
