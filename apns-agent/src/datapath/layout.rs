//! The pinned maps' layout, checked against the one this agent was built with, and the META
//! map that records the layout version and the program's log level.

use anyhow::{bail, Context as _};
use apns_common::{
    maps::{MapLayout, Meta, META},
    LAYOUT_VERSION, PREVIOUS_LAYOUT_VERSION,
};
use aya::maps::{Array, Map, MapData, MapInfo};

use super::{object::EbpfLog, pins::PinDir};

/// What an operator does about a pinned datapath this agent cannot use.
const FIX: &str = "run `apns-agent unload` to remove it (its counters are lost), then start again";

/// Opens one pinned map of `pins`.
pub fn open_pinned_map(pins: &PinDir, name: &str) -> anyhow::Result<Map> {
    let path = pins.map(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data)
        .with_context(|| format!("pinned map {} has an unknown type", path.display()))
}

/// Checks every pinned map against the layout this agent was built with, and returns each
/// map's kernel id. A datapath pinned by an agent of another layout is refused, never
/// silently reused.
pub fn check(pins: &PinDir) -> anyhow::Result<Vec<(&'static str, u32)>> {
    // The version first: `APNS_META` has the same layout in every version, and a datapath
    // of another version is best refused by its version, not by the first map that differs.
    if let Ok(meta) = read_meta(pins) {
        if meta.layout_version == PREVIOUS_LAYOUT_VERSION {
            bail!(
                "the datapath pinned at {} has the previous release's map layout ({}): `apns-agent run` (or `attach`) migrates it in place, keeping its policy and counters",
                pins.root().display(),
                meta.layout_version
            );
        }
        if meta.layout_version != LAYOUT_VERSION {
            bail!(
                "the datapath pinned at {} has map layout version {}; this agent uses version {LAYOUT_VERSION} and migrates only from {}: {FIX}",
                pins.root().display(),
                meta.layout_version,
                PREVIOUS_LAYOUT_VERSION
            );
        }
    }
    let mut ids = Vec::new();
    for expected in apns_common::maps::ALL {
        let path = pins.map(expected.name);
        let info = MapInfo::from_pin(&path).with_context(|| {
            format!(
                "pinned map {} is missing or unreadable; the pin directory is incomplete: {FIX}",
                path.display()
            )
        })?;
        let found = MapLayout {
            name: expected.name,
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        // The config sizes these when the datapath is made: any size is this layout.
        let expected = if apns_common::maps::SIZED_BY_CONFIG.contains(&expected.name) {
            MapLayout {
                max_entries: found.max_entries,
                ..expected
            }
        } else {
            expected
        };
        if found != expected {
            bail!(
                "pinned map {} has another layout (type {}, key {} B, value {} B, {} entries; this agent needs type {}, key {} B, value {} B, {} entries): {FIX}",
                path.display(),
                found.map_type, found.key_size, found.value_size, found.max_entries,
                expected.map_type, expected.key_size, expected.value_size, expected.max_entries
            );
        }
        ids.push((expected.name, info.id()));
    }
    let version = read_meta(pins)?.layout_version;
    if version != LAYOUT_VERSION {
        bail!(
            "the datapath pinned at {} has map layout version {version}; this agent uses version {LAYOUT_VERSION}: {FIX}",
            pins.root().display()
        );
    }
    Ok(ids)
}

pub fn read_meta(pins: &PinDir) -> anyhow::Result<Meta> {
    let meta: Array<MapData, Meta> =
        Array::try_from(open_pinned_map(pins, META)?).with_context(|| format!("map {META}"))?;
    meta.get(&0, 0)
        .with_context(|| format!("reading map {META}"))
}

/// The aya-log level the pinned program was loaded with.
pub fn ebpf_log(pins: &PinDir) -> anyhow::Result<EbpfLog> {
    Ok(EbpfLog::from_level(read_meta(pins)?.ebpf_log_level))
}
