//! Reading the datapath's counters: per-CPU values summed into one snapshot.

use std::collections::BTreeMap;

use anyhow::Context as _;
use apns_common::{
    counters::{CounterKey, CounterValue},
    maps::{COUNTERS, COUNTERS_LOST},
};
use aya::maps::{Map, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues};

/// Handles to the counter maps of one datapath.
pub struct CounterMaps {
    counters: PerCpuHashMap<MapData, CounterKey, CounterValue>,
    lost: PerCpuArray<MapData, u64>,
}

/// All counters at one moment, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: BTreeMap<CounterKey, CounterValue>,
    /// Packets not counted because the counter map was full.
    pub lost: u64,
}

impl Snapshot {
    /// The value under `key`, zero if the datapath never created it.
    pub fn get(&self, key: &CounterKey) -> CounterValue {
        self.entries.get(key).copied().unwrap_or_default()
    }

    /// Total packets over every entry.
    pub fn packets(&self) -> u64 {
        self.entries.values().map(|value| value.packets).sum()
    }
}

impl CounterMaps {
    /// See [`super::policy_maps::PolicyMaps::open`].
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        let counters = PerCpuHashMap::try_from(map(COUNTERS)?)
            .with_context(|| format!("map {COUNTERS} has an unexpected type or layout"))?;
        let lost = PerCpuArray::try_from(map(COUNTERS_LOST)?)
            .with_context(|| format!("map {COUNTERS_LOST} has an unexpected type or layout"))?;
        Ok(Self { counters, lost })
    }

    /// The value under one key, summed over CPUs; zero if the datapath never created it.
    pub fn get(&self, key: &CounterKey) -> anyhow::Result<CounterValue> {
        match self.counters.get(key, 0) {
            Ok(per_cpu) => Ok(sum(&per_cpu)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(CounterValue::default()),
            Err(err) => Err(err).with_context(|| format!("reading map {COUNTERS}")),
        }
    }

    /// Reads every counter. Costs one syscall per entry; never blocks the datapath.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut entries = BTreeMap::new();
        for entry in self.counters.iter() {
            let (key, per_cpu) = entry.with_context(|| format!("reading map {COUNTERS}"))?;
            entries.insert(key, sum(&per_cpu));
        }
        let lost = self
            .lost
            .get(&0, 0)
            .with_context(|| format!("reading map {COUNTERS_LOST}"))?
            .iter()
            .sum();
        Ok(Snapshot { entries, lost })
    }
}

fn sum(per_cpu: &PerCpuValues<CounterValue>) -> CounterValue {
    per_cpu
        .iter()
        .fold(CounterValue::default(), |mut total, value| {
            total.add(value);
            total
        })
}
