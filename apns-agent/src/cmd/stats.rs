//! `apns-agent stats [--json | --all] [--interface IF] [--watch [SECS]]`: the counters
//! without a server, from the pinned maps.

use std::time::{Duration, Instant};

use crate::{
    cli::Global,
    datapath::{links, Datapath},
    privileges,
    settings::Settings,
    telemetry::{
        model::{self, Model},
        reachability::Reachability,
        stats, watch,
    },
};

/// Ratios need two samples; a one-shot `stats` has one, so it shows none. `--watch` gets them
/// from its second redraw on, over this window.
const WATCH_REACHABILITY_WINDOW: Duration = Duration::from_secs(300);

pub fn stats(
    global: &Global,
    json: bool,
    all: bool,
    interface: Option<&str>,
    watch_secs: Option<u64>,
) -> anyhow::Result<()> {
    privileges::require(privileges::READ, "apns-agent stats")?;
    let settings = Settings::resolve(&global.into())?;
    let datapath = Datapath::open(&settings.pins)?;
    if let Some(interface) = interface {
        let known =
            links::ifindex(interface).is_ok() || settings.pins.link_of(interface)?.is_some();
        anyhow::ensure!(
            known,
            "unknown interface {interface:?}: not present here and not attached"
        );
    }
    let known = model::Known::of(&datapath)?;
    let mut reachability = Reachability::new(WATCH_REACHABILITY_WINDOW);
    let mut sample = || -> anyhow::Result<Model> {
        let snapshot = datapath.counters.snapshot()?;
        reachability.observe(Instant::now(), &snapshot);
        let mut model = Model::build(&snapshot, &known, model::interface_name, &reachability);
        if let Some(interface) = interface {
            model.select_interface(interface);
        }
        Ok(model)
    };
    if let Some(secs) = watch_secs {
        return watch::watch(Duration::from_secs(secs), sample);
    }
    let model = sample()?;
    if json {
        println!("{}", stats::render_json(&model)?.trim_end());
    } else {
        let rows = if all {
            stats::Rows::All
        } else {
            stats::Rows::NonZero
        };
        print!("{}", stats::render_table_rows(&model, rows));
    }
    Ok(())
}
