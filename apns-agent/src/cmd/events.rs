//! `apns-agent events [--json] [--count N]`: streams policy drop events until Ctrl-C (or N).

use std::{io::Write as _, time::Duration};

use anyhow::Context as _;

use crate::{
    cli::Global,
    datapath::{events::Drop, Datapath},
    privileges,
    settings::Settings,
    telemetry::model::interface_name,
};

/// How long one wait for the ring lasts before looking again (keeps Ctrl-C responsive).
const POLL: Duration = Duration::from_millis(200);

pub fn events(global: &Global, json: bool, count: Option<u64>) -> anyhow::Result<()> {
    privileges::require(privileges::READ, "apns-agent events")?;
    let settings = Settings::resolve(global)?;
    let mut maps = Datapath::open(&settings.pins)?.events;
    let mut out = std::io::stdout().lock();
    let mut printed = 0u64;
    loop {
        for event in maps.drain() {
            let drop = Drop::from_event(&event, interface_name);
            let line = if json {
                serde_json::to_string(&drop)?
            } else {
                drop.line()
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
