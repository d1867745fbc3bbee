//! The datapath's counters: reading them (per-CPU cells summed into one [`Snapshot`] keyed by
//! `(ifindex, port, direction, outcome)`, as every reader expects, with the `redirect` fast
//! path's per-interface breakdown from `APNS_FP_PATHS`) and handing out the counter slots
//! they are stored by ([`SlotMaps`]). The storage is described in `apns_common::counters`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use apns_common::{
    counters::{
        block_index, cell_key, cell_of, CounterBlock, CounterKey, CounterSlots, CounterValue,
        Direction, Outcome, CELLS, CELLS_PER_BLOCK, IFACE_SLOTS, LAST_ASSIGNABLE_SLOT,
        OVERFLOW_SLOT, PORT_SLOTS, RETIRED_SLOT,
    },
    fastpath::PathCounters,
    label::Label,
    maps::{COUNTERS, COUNTERS_CARRIED, COUNTERS_LOST, COUNTER_SLOTS, FASTPATH_PATHS},
};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};

/// Handles to the counter maps of one datapath, for reading.
pub struct CounterMaps {
    counters: PerCpuArray<MapData, CounterBlock>,
    slots: Array<MapData, CounterSlots>,
    lost: PerCpuArray<MapData, u64>,
    /// Counts carried over from a datapath of the previous layout (`migrate`), added in.
    carried: HashMap<MapData, CounterKey, CounterValue>,
    paths: PerCpuArray<MapData, PathCounters>,
}

/// All counters at one moment, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every counter that has counted a packet. Ifindex 0 holds the packets of interfaces
    /// without a counter slot and the counters of recycled interface slots; port 0 with a
    /// direction or a drop outcome, those of ports without a slot and of recycled port slots.
    pub entries: BTreeMap<CounterKey, CounterValue>,
    /// Packets the datapath could not count at all (a failed counter lookup; should stay 0).
    pub lost: u64,
    /// The `redirect` fast path's fallbacks by reason and its TC cross-check, by ifindex
    /// (0: interfaces without a counter slot and recycled slots), for every interface with a
    /// non-zero count.
    pub paths: BTreeMap<u32, PathCounters>,
}

/// How the APNs packets of one `redirect` interface left it: forwarded by XDP, forwarded by
/// the TC step, or left to the stack (by reason, in `counters`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathTotals {
    /// Counted with outcome `fastpath`.
    pub xdp_redirect: u64,
    /// Counted with outcome `fastpath_tc`.
    pub tc_redirect: u64,
    /// From `APNS_FP_PATHS`: fallbacks by reason and the TC cross-check.
    pub counters: PathCounters,
}

impl PathTotals {
    /// Packets left to the stack, over every reason.
    pub fn stack(&self) -> u64 {
        self.counters.fallback.iter().sum()
    }

    /// The packets that took `path`.
    pub fn packets(&self, path: RedirectPath) -> u64 {
        match path {
            RedirectPath::XdpRedirect => self.xdp_redirect,
            RedirectPath::TcRedirect => self.tc_redirect,
            RedirectPath::Stack => self.stack(),
        }
    }
}

/// The ways a `redirect` interface's APNs packets leave it ([`PathTotals`]): the `path` of
/// `apns_fastpath_packets_total` and the columns of `stats`' paths table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectPath {
    XdpRedirect,
    TcRedirect,
    Stack,
}

impl Label for RedirectPath {
    const WHAT: &'static str = "redirect path";
    const ALL: &'static [RedirectPath] = &[
        RedirectPath::XdpRedirect,
        RedirectPath::TcRedirect,
        RedirectPath::Stack,
    ];
    fn as_str(self) -> &'static str {
        match self {
            RedirectPath::XdpRedirect => "xdp_redirect",
            RedirectPath::TcRedirect => "tc_redirect",
            RedirectPath::Stack => "stack",
        }
    }
}

impl Snapshot {
    /// The value under `key`, zero if the datapath never counted there.
    pub fn get(&self, key: &CounterKey) -> CounterValue {
        self.entries.get(key).copied().unwrap_or_default()
    }

    /// Total packets over every entry.
    pub fn packets(&self) -> u64 {
        self.entries.values().map(|value| value.packets).sum()
    }

    /// The `redirect` fast path's paths on interface `ifindex`, over every port and
    /// direction.
    pub fn paths(&self, ifindex: u32) -> PathTotals {
        let mut totals = PathTotals {
            counters: self.paths.get(&ifindex).copied().unwrap_or_default(),
            ..PathTotals::default()
        };
        for (key, value) in self.entries.range(
            CounterKey {
                ifindex,
                ..CounterKey::default()
            }..,
        ) {
            if key.ifindex != ifindex {
                break;
            }
            match Outcome::from_u8(key.outcome) {
                Some(Outcome::Fastpath) => totals.xdp_redirect += value.packets,
                Some(Outcome::FastpathTc) => totals.tc_redirect += value.packets,
                _ => {}
            }
        }
        totals
    }
}

/// How often a reader tries to get a read no slot change ran through, and how long it waits
/// for a change to finish (a change moves a few dozen blocks: milliseconds).
const READ_ATTEMPTS: usize = 20;
const CHANGE_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

impl CounterMaps {
    /// See [`super::policy_maps::PolicyMaps::open`].
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        let counters = PerCpuArray::try_from(map(COUNTERS)?)
            .with_context(|| format!("map {COUNTERS} has an unexpected type or layout"))?;
        let slots = Array::try_from(map(COUNTER_SLOTS)?)
            .with_context(|| format!("map {COUNTER_SLOTS} has an unexpected type or layout"))?;
        let lost = PerCpuArray::try_from(map(COUNTERS_LOST)?)
            .with_context(|| format!("map {COUNTERS_LOST} has an unexpected type or layout"))?;
        let carried = HashMap::try_from(map(COUNTERS_CARRIED)?)
            .with_context(|| format!("map {COUNTERS_CARRIED} has an unexpected type or layout"))?;
        let paths = PerCpuArray::try_from(map(FASTPATH_PATHS)?)
            .with_context(|| format!("map {FASTPATH_PATHS} has an unexpected type or layout"))?;
        Ok(Self {
            counters,
            slots,
            lost,
            carried,
            paths,
        })
    }

    /// Adds `entries` to the carried counts (a migration, once the previous layout's
    /// program no longer counts).
    pub fn carry(&mut self, entries: &BTreeMap<CounterKey, CounterValue>) -> anyhow::Result<()> {
        for (key, value) in entries {
            let mut total = self.carried_value(key)?;
            total.add(value);
            self.carried
                .insert(key, total, 0)
                .with_context(|| format!("writing {key:?} to map {COUNTERS_CARRIED}"))?;
        }
        Ok(())
    }

    fn carried_value(&self, key: &CounterKey) -> anyhow::Result<CounterValue> {
        match self.carried.get(key, 0) {
            Ok(value) => Ok(value),
            Err(MapError::KeyNotFound) => Ok(CounterValue::default()),
            Err(err) => Err(err).with_context(|| format!("reading map {COUNTERS_CARRIED}")),
        }
    }

    /// The value under one key, summed over CPUs; zero if nothing was counted there. Reads
    /// only the blocks the key can live in (one, for a key with a slotted interface and port).
    pub fn get(&self, key: &CounterKey) -> anyhow::Result<CounterValue> {
        let carried = self.carried_value(key)?;
        self.consistent(|slots| {
            let mut total = carried;
            let cells = cells_of_key(key);
            if cells.is_empty() {
                return Ok(total);
            }
            for iface in iface_slots_of(slots, key.ifindex) {
                for port in port_slots_of(slots, key.port) {
                    let block = read_block(&self.counters, iface, port)?;
                    for &cell in &cells {
                        total.add(&block.cells[cell]);
                    }
                }
            }
            Ok(total)
        })
    }

    /// Reads every counter: one syscall per (interface slot, port slot) in use, plus the
    /// overflow and retired slots. Never blocks the datapath.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let (entries, paths) = self.consistent(|slots| {
            let mut entries: BTreeMap<CounterKey, CounterValue> = BTreeMap::new();
            for iface in slots_in_use(&slots.ifindex) {
                for port in slots_in_use(&slots.port) {
                    let block = read_block(&self.counters, iface, port)?;
                    for (cell, value) in block.cells.iter().enumerate() {
                        if value.packets == 0 {
                            continue;
                        }
                        let (direction, outcome) = cell_key(cell);
                        let key = CounterKey {
                            ifindex: slot_ifindex(slots, iface),
                            port: slot_port(slots, port),
                            direction: direction as u8,
                            outcome: outcome as u8,
                        };
                        entries.entry(key).or_default().add(value);
                    }
                }
            }
            let mut paths: BTreeMap<u32, PathCounters> = BTreeMap::new();
            for iface in slots_in_use(&slots.ifindex) {
                let row = read_paths(&self.paths, iface)?;
                if !row.is_zero() {
                    paths
                        .entry(slot_ifindex(slots, iface))
                        .or_default()
                        .add(&row);
                }
            }
            Ok((entries, paths))
        })?;
        let mut entries = entries;
        for carried in self.carried.iter() {
            let (key, value) =
                carried.with_context(|| format!("reading map {COUNTERS_CARRIED}"))?;
            entries.entry(key).or_default().add(&value);
        }
        let lost = self
            .lost
            .get(&0, 0)
            .with_context(|| format!("reading map {COUNTERS_LOST}"))?
            .iter()
            .sum();
        Ok(Snapshot {
            entries,
            lost,
            paths,
        })
    }

    /// Runs `read` against the slot table until no slot change ran through it (the table's
    /// sequence lock). If changes keep coming, the last read is returned: a transient
    /// misreading of a recycled slot is better than no counters at all.
    fn consistent<T>(
        &self,
        mut read: impl FnMut(&CounterSlots) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let before = read_slots(&self.slots)?;
            if before.sequence % 2 == 1 && attempt < READ_ATTEMPTS {
                std::thread::sleep(CHANGE_WAIT);
                continue;
            }
            let result = read(&before)?;
            let after = read_slots(&self.slots)?.sequence;
            if after == before.sequence || attempt >= READ_ATTEMPTS {
                return Ok(result);
            }
        }
    }
}

fn read_slots(slots: &Array<MapData, CounterSlots>) -> anyhow::Result<CounterSlots> {
    slots
        .get(&0, 0)
        .with_context(|| format!("reading map {COUNTER_SLOTS}"))
}

fn read_block(
    counters: &PerCpuArray<MapData, CounterBlock>,
    iface: u32,
    port: u32,
) -> anyhow::Result<CounterBlock> {
    let per_cpu = counters
        .get(&block_index(iface, port), 0)
        .with_context(|| {
            format!("reading map {COUNTERS} (interface slot {iface}, port slot {port})")
        })?;
    Ok(sum(&per_cpu))
}

fn read_paths(
    paths: &PerCpuArray<MapData, PathCounters>,
    iface: u32,
) -> anyhow::Result<PathCounters> {
    let per_cpu = paths
        .get(&iface, 0)
        .with_context(|| format!("reading map {FASTPATH_PATHS} (interface slot {iface})"))?;
    Ok(per_cpu
        .iter()
        .fold(PathCounters::default(), |mut total, row| {
            total.add(row);
            total
        }))
}

fn sum(per_cpu: &PerCpuValues<CounterBlock>) -> CounterBlock {
    per_cpu
        .iter()
        .fold(CounterBlock::default(), |mut total, block| {
            total.add(block);
            total
        })
}

/// The slots of a table that can hold counts: the overflow and retired slots and every
/// assigned one (a slot never assigned was never written).
fn slots_in_use<T: Copy + Default + PartialEq>(table: &[T]) -> impl Iterator<Item = u32> + '_ {
    (0..table.len() as u32).filter(|&slot| {
        slot == OVERFLOW_SLOT || slot == RETIRED_SLOT || table[slot as usize] != T::default()
    })
}

/// The ifindex a reader reports for interface slot `slot`.
fn slot_ifindex(slots: &CounterSlots, slot: u32) -> u32 {
    match slot {
        OVERFLOW_SLOT | RETIRED_SLOT => 0,
        _ => slots.ifindex[slot as usize],
    }
}

/// The port a reader reports for port slot `slot`.
fn slot_port(slots: &CounterSlots, slot: u32) -> u16 {
    match slot {
        OVERFLOW_SLOT | RETIRED_SLOT => 0,
        _ => slots.port[slot as usize],
    }
}

fn iface_slots_of(slots: &CounterSlots, ifindex: u32) -> Vec<u32> {
    if ifindex == 0 {
        return vec![OVERFLOW_SLOT, RETIRED_SLOT];
    }
    (1..=LAST_ASSIGNABLE_SLOT)
        .filter(|&slot| slots.ifindex[slot as usize] == ifindex)
        .collect()
}

fn port_slots_of(slots: &CounterSlots, port: u16) -> Vec<u32> {
    if port == 0 {
        return vec![OVERFLOW_SLOT, RETIRED_SLOT];
    }
    (1..=LAST_ASSIGNABLE_SLOT)
        .filter(|&slot| slots.port[slot as usize] == port)
        .collect()
}

/// The cells a key is read from: its own, and for `(none, malformed)` also the unnamed
/// cells (see `cell_key`).
fn cells_of_key(key: &CounterKey) -> Vec<usize> {
    let (Some(direction), Some(outcome)) = (
        Direction::from_u8(key.direction),
        Outcome::from_u8(key.outcome),
    ) else {
        return Vec::new();
    };
    let cell = cell_of(direction, outcome);
    // A pair the datapath never writes shares the malformed cell; it owns none.
    if CELLS.get(cell) != Some(&(direction, outcome)) {
        return Vec::new();
    }
    let mut cells = vec![cell];
    if (direction, outcome) == (Direction::None, Outcome::Malformed) {
        cells.extend(CELLS.len()..CELLS_PER_BLOCK);
    }
    cells
}

/// The one writer of the counter slots (`APNS_CNT_SLOTS`) and of the retired slot: hands out
/// interface and port slots, recycling an unused one (its counters moved into the retired
/// slot first) when none is free. Callers hold the pin directory's lock.
pub struct SlotMaps {
    counters: PerCpuArray<MapData, CounterBlock>,
    slots: Array<MapData, CounterSlots>,
    paths: PerCpuArray<MapData, PathCounters>,
}

impl SlotMaps {
    /// See [`super::policy_maps::PolicyMaps::open`].
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(SlotMaps {
            counters: PerCpuArray::try_from(map(COUNTERS)?)
                .with_context(|| format!("map {COUNTERS} has an unexpected type or layout"))?,
            slots: Array::try_from(map(COUNTER_SLOTS)?)
                .with_context(|| format!("map {COUNTER_SLOTS} has an unexpected type or layout"))?,
            paths: PerCpuArray::try_from(map(FASTPATH_PATHS)?).with_context(|| {
                format!("map {FASTPATH_PATHS} has an unexpected type or layout")
            })?,
        })
    }

    /// The slot table as it is.
    pub fn read(&self) -> anyhow::Result<CounterSlots> {
        read_slots(&self.slots)
    }

    /// The port slot of every port of `wanted`, assigning slots to ports that have none.
    /// Slots of ports in `keep` (the generation in force) or `wanted` are never recycled.
    /// A port that gets no slot maps to the overflow slot (0).
    pub fn assign_ports(
        &mut self,
        keep: &BTreeSet<u16>,
        wanted: &BTreeSet<u16>,
    ) -> anyhow::Result<BTreeMap<u16, u8>> {
        let mut table = self.read()?;
        let plan = plan_ports(&table, keep, wanted);
        if !plan.recycled.is_empty() || !plan.assigned.is_empty() {
            self.begin_change(&mut table)?;
            for &slot in &plan.recycled {
                self.retire_port_slot(slot)?;
            }
            for &(slot, port) in &plan.assigned {
                table.port[slot as usize] = port;
            }
            self.end_change(&mut table)?;
        }
        Ok(plan.slots)
    }

    /// The counter slot of interface `ifindex` (kept from an earlier attach when it has one).
    /// `in_use(slot, ifindex)` says whether another interface's slot is still used by the
    /// datapath (its interface attached); unused ones may be recycled. `None` when every
    /// slot is in use: the interface is then counted in the overflow slot.
    pub fn assign_interface(
        &mut self,
        ifindex: u32,
        mut in_use: impl FnMut(u32, u32) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Option<u16>> {
        let mut table = self.read()?;
        let assignable = 1..=LAST_ASSIGNABLE_SLOT;
        if let Some(slot) = assignable
            .clone()
            .find(|&slot| table.ifindex[slot as usize] == ifindex)
        {
            return Ok(Some(slot as u16));
        }
        let mut chosen = assignable
            .clone()
            .find(|&slot| table.ifindex[slot as usize] == 0);
        let mut recycle = false;
        if chosen.is_none() {
            for slot in assignable {
                if !in_use(slot, table.ifindex[slot as usize])? {
                    chosen = Some(slot);
                    recycle = true;
                    break;
                }
            }
        }
        let Some(slot) = chosen else {
            return Ok(None);
        };
        self.begin_change(&mut table)?;
        if recycle {
            tracing::info!(
                slot,
                old_ifindex = table.ifindex[slot as usize],
                ifindex,
                "recycling the counter slot of a detached interface (its counters move to interface 0)"
            );
            self.retire_iface_slot(slot)?;
        }
        table.ifindex[slot as usize] = ifindex;
        self.end_change(&mut table)?;
        Ok(Some(slot as u16))
    }

    fn write_slots(&mut self, table: &CounterSlots) -> anyhow::Result<()> {
        self.slots
            .set(0, table, 0)
            .with_context(|| format!("writing map {COUNTER_SLOTS}"))
    }

    /// Marks the table as changing (odd sequence) before counters move.
    fn begin_change(&mut self, table: &mut CounterSlots) -> anyhow::Result<()> {
        table.sequence = table.sequence.wrapping_add(1) | 1;
        self.write_slots(table)
    }

    fn end_change(&mut self, table: &mut CounterSlots) -> anyhow::Result<()> {
        table.sequence = table.sequence.wrapping_add(1);
        self.write_slots(table)
    }

    /// Moves port slot `slot`'s counters, on every interface slot, into the retired port
    /// slot. No packet reaches the slot: its port is in no generation.
    fn retire_port_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        for iface in 0..IFACE_SLOTS {
            self.move_block(block_index(iface, slot), block_index(iface, RETIRED_SLOT))?;
        }
        Ok(())
    }

    /// Moves interface slot `slot`'s counters, for every port slot, into the retired
    /// interface slot. No packet reaches the slot: its interface is detached.
    fn retire_iface_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        for port in 0..PORT_SLOTS {
            self.move_block(block_index(slot, port), block_index(RETIRED_SLOT, port))?;
        }
        self.move_paths(slot, RETIRED_SLOT)
    }

    /// [`SlotMaps::move_block`] for the interface slot's row of `APNS_FP_PATHS`.
    fn move_paths(&mut self, from: u32, to: u32) -> anyhow::Result<()> {
        move_entry(&mut self.paths, FASTPATH_PATHS, from, to, PathCounters::add)
    }

    /// Adds block `from` into block `to` CPU by CPU, then zeroes `from`. Only for blocks no
    /// packet writes (a retired destination, a source whose slot no map entry names): the
    /// writes replace whole per-CPU values.
    fn move_block(&mut self, from: u32, to: u32) -> anyhow::Result<()> {
        move_entry(&mut self.counters, COUNTERS, from, to, CounterBlock::add)
    }
}

/// Adds entry `from` of the per-CPU array `map` (named `name`) into entry `to`, CPU by CPU
/// with `add`, then zeroes `from`; nothing when `from` is all zeroes.
fn move_entry<T: aya::Pod + Default + PartialEq>(
    map: &mut PerCpuArray<MapData, T>,
    name: &str,
    from: u32,
    to: u32,
    add: fn(&mut T, &T),
) -> anyhow::Result<()> {
    let read = |map: &PerCpuArray<MapData, T>, index: u32| {
        map.get(&index, 0)
            .with_context(|| format!("reading entry {index} of map {name}"))
    };
    let source = read(map, from)?;
    if source.iter().all(|value| *value == T::default()) {
        return Ok(());
    }
    let merged: Vec<T> = read(map, to)?
        .iter()
        .zip(source.iter())
        .map(|(target, source)| {
            let mut merged = *target;
            add(&mut merged, source);
            merged
        })
        .collect();
    let zero: Vec<T> = merged.iter().map(|_| T::default()).collect();
    let per_cpu =
        |values: Vec<T>| PerCpuValues::try_from(values).context("building per-CPU values");
    map.set(to, per_cpu(merged)?, 0)
        .with_context(|| format!("writing entry {to} of map {name}"))?;
    map.set(from, per_cpu(zero)?, 0)
        .with_context(|| format!("clearing entry {from} of map {name}"))
}

/// What [`SlotMaps::assign_ports`] will do.
#[derive(Debug, Default, PartialEq, Eq)]
struct PortPlan {
    /// Port → slot for every wanted port (0: no slot, counted in the overflow slot).
    slots: BTreeMap<u16, u8>,
    /// Slots whose counters move to the retired slot before they are reassigned.
    recycled: Vec<u32>,
    /// (slot, port) to write into the table.
    assigned: Vec<(u32, u16)>,
}

/// Port slots for `wanted`: a port keeps its slot; a new one takes a free slot, else the
/// slot of a port in neither `keep` nor `wanted` (lowest first), else none.
fn plan_ports(table: &CounterSlots, keep: &BTreeSet<u16>, wanted: &BTreeSet<u16>) -> PortPlan {
    let mut plan = PortPlan::default();
    let mut owner: Vec<u16> = table.port.to_vec();
    let assignable = || 1..=LAST_ASSIGNABLE_SLOT as usize;
    for &port in wanted {
        if let Some(slot) = assignable().find(|&slot| owner[slot] == port) {
            plan.slots.insert(port, slot as u8);
        }
    }
    for &port in wanted {
        if plan.slots.contains_key(&port) {
            continue;
        }
        let free = assignable().find(|&slot| owner[slot] == 0);
        let recyclable = || {
            assignable().find(|&slot| {
                let old = owner[slot];
                !keep.contains(&old) && !wanted.contains(&old)
            })
        };
        let slot = match free {
            Some(slot) => slot,
            None => match recyclable() {
                Some(slot) => {
                    plan.recycled.push(slot as u32);
                    slot
                }
                None => {
                    plan.slots.insert(port, OVERFLOW_SLOT as u8);
                    continue;
                }
            },
        };
        owner[slot] = port;
        plan.assigned.push((slot as u32, port));
        plan.slots.insert(port, slot as u8);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(list: &[u16]) -> BTreeSet<u16> {
        list.iter().copied().collect()
    }

    fn apply(table: &mut CounterSlots, plan: &PortPlan) {
        for &(slot, port) in &plan.assigned {
            table.port[slot as usize] = port;
        }
    }

    #[test]
    fn ports_keep_their_slots_across_policies() {
        let mut table = CounterSlots::default();
        let first = plan_ports(&table, &ports(&[]), &ports(&[443, 5223]));
        assert_eq!(first.slots, [(443, 1), (5223, 2)].into());
        assert!(first.recycled.is_empty());
        apply(&mut table, &first);
        // 443 leaves, 2197 arrives: 5223 keeps slot 2, 2197 takes a free slot, 443 keeps its
        // slot (its counters stay readable).
        let second = plan_ports(&table, &ports(&[443, 5223]), &ports(&[5223, 2197]));
        assert_eq!(second.slots, [(2197, 3), (5223, 2)].into());
        apply(&mut table, &second);
        assert_eq!(table.port[1], 443);
        // 443 comes back: its old slot.
        let third = plan_ports(&table, &ports(&[5223, 2197]), &ports(&[443, 5223]));
        assert_eq!(third.slots, [(443, 1), (5223, 2)].into());
        assert!(third.assigned.is_empty());
    }

    #[test]
    fn full_tables_recycle_only_ports_in_no_generation() {
        let mut table = CounterSlots::default();
        let all: Vec<u16> = (1..=LAST_ASSIGNABLE_SLOT as u16)
            .map(|p| 1000 + p)
            .collect();
        let plan = plan_ports(&table, &ports(&[]), &ports(&all));
        apply(&mut table, &plan);
        // Every slot is taken. Keep 1001..=1010 in force, want 1011..=1015 and two new ports:
        // the new ones take the slots of ports in neither (1016 and 1017, lowest first).
        let keep: Vec<u16> = (1001..=1010).collect();
        let wanted = ports(&[1011, 1012, 1013, 1014, 1015, 7, 8]);
        let plan = plan_ports(&table, &ports(&keep), &wanted);
        assert_eq!(plan.recycled, vec![16, 17]);
        assert_eq!(plan.slots[&7], 16);
        assert_eq!(plan.slots[&8], 17);
        assert_eq!(plan.slots[&1011], 11);
        // Nothing recyclable: the port is counted in the overflow slot.
        let keep: Vec<u16> = all.clone();
        let plan = plan_ports(&table, &ports(&keep), &ports(&[9]));
        assert_eq!(plan.slots[&9], OVERFLOW_SLOT as u8);
        assert!(plan.recycled.is_empty() && plan.assigned.is_empty());
    }

    #[test]
    fn keys_map_back_to_their_cells() {
        let key = |direction: Direction, outcome: Outcome| CounterKey {
            ifindex: 2,
            port: 5223,
            direction: direction as u8,
            outcome: outcome as u8,
        };
        assert_eq!(
            cells_of_key(&key(Direction::Inbound, Outcome::Pass)),
            vec![cell_of(Direction::Inbound, Outcome::Pass)]
        );
        assert_eq!(
            cells_of_key(&key(Direction::None, Outcome::Malformed)).len(),
            1 + CELLS_PER_BLOCK - CELLS.len()
        );
        assert!(cells_of_key(&key(Direction::Inbound, Outcome::DropPinhole)).is_empty());
    }
}
