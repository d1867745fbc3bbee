//! The connection table (`APNS_CONNS`, `APNS_CONN_STATS`, `APNS_CONN_PEND`;
//! `apns_common::conns`): reading it whole, as one [`ConnTable`] with the datapath's own
//! counts, each entry with the counts still pending for it on any CPU. The agent never writes
//! or removes an entry; the kernel's LRU evicts the least recently used when the table is
//! full, and [`ConnTable::evicted`] counts them exactly.

use anyhow::Context as _;
use apns_common::{
    conns::{pending_side, ConnKey, ConnStats, ConnValue, Pending, PENDING_ENTRIES},
    maps::{CONNS, CONN_PENDING, CONN_STATS},
};
use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use nix::time::{clock_gettime, ClockId};

/// Entries read per BPF_MAP_LOOKUP_BATCH call: more than any hash bucket holds (a smaller
/// count than a bucket's entries makes the kernel refuse the call).
const BATCH: usize = 4096;

/// Handles to the connection table of one datapath, for reading.
pub struct ConnMaps {
    conns: HashMap<MapData, ConnKey, ConnValue>,
    stats: PerCpuArray<MapData, ConnStats>,
    pending: PerCpuArray<MapData, Pending>,
    size: u32,
}

/// The connection table at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnTable {
    /// CLOCK_MONOTONIC when the table was read: the clock of every time in the entries (which
    /// the datapath reads at the tick's resolution).
    pub now_ns: u64,
    /// Entries the table holds at most (the config's `[clients] table_size` when the datapath
    /// was made).
    pub size: u32,
    /// Every entry, in no particular order.
    pub entries: Vec<(ConnKey, ConnValue)>,
    /// The datapath's counts, summed over CPUs.
    pub stats: ConnStats,
}

impl ConnTable {
    /// Connections the kernel evicted to make room: every entry made and no longer present
    /// (the agent never removes one). Exact when no packet made an entry during the read.
    pub fn evicted(&self) -> u64 {
        self.stats.made.saturating_sub(self.entries.len() as u64)
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `bpf_ktime_get_coarse_ns()` reads (at a
/// coarser resolution).
pub fn monotonic_now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or_default()
}

impl ConnMaps {
    /// See [`super::policy_maps::PolicyMaps::open`].
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        let conns = map(CONNS)?;
        let size = match &conns {
            Map::LruHashMap(data) => data
                .info()
                .with_context(|| format!("reading the info of map {CONNS}"))?
                .max_entries(),
            _ => anyhow::bail!("map {CONNS} is not an LRU hash"),
        };
        Ok(ConnMaps {
            conns: HashMap::try_from(conns)
                .with_context(|| format!("map {CONNS} has an unexpected type or layout"))?,
            stats: PerCpuArray::try_from(map(CONN_STATS)?)
                .with_context(|| format!("map {CONN_STATS} has an unexpected type or layout"))?,
            pending: PerCpuArray::try_from(map(CONN_PENDING)?)
                .with_context(|| format!("map {CONN_PENDING} has an unexpected type or layout"))?,
            size,
        })
    }

    /// Entries the table holds at most.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Reads the whole table and the datapath's counts. The counts are read first: an entry
    /// made during the walk then shows as present but not yet made, which
    /// [`ConnTable::evicted`] saturates, rather than as evicted. The pending counts are read
    /// after the entries: a packet that moves a slot's counts into its entry in between makes
    /// this read miss them (the next one has them), never count them twice.
    pub fn read(&self) -> anyhow::Result<ConnTable> {
        let stats = self.stats()?;
        let now_ns = monotonic_now_ns();
        let mut entries = match self.read_batches() {
            Ok(entries) => entries,
            // A kernel without batch lookups on this map type (EINVAL, EOPNOTSUPP, or 524,
            // the kernel's own ENOTSUPP), or a bucket fuller than a batch (ENOSPC): entry by
            // entry.
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSPC | 524)
                ) =>
            {
                self.read_one_by_one()?
            }
            Err(err) => return Err(err).with_context(|| format!("reading map {CONNS}")),
        };
        self.add_pending(&mut entries)?;
        Ok(ConnTable {
            now_ns,
            size: self.size,
            entries,
            stats,
        })
    }

    /// The whole table in a few BPF_MAP_LOOKUP_BATCH calls (65,536 entries: about 10 ms,
    /// against 130 ms for two calls per entry).
    fn read_batches(&self) -> std::io::Result<Vec<(ConnKey, ConnValue)>> {
        use std::os::fd::AsFd as _;
        let fd = aya::maps::IterableMap::map(&self.conns).fd().as_fd();
        let (keys, values) =
            super::sys::lookup_batch(fd, size_of::<ConnKey>(), size_of::<ConnValue>(), BATCH)?;
        let read = |bytes: &[u8], at: usize| -> ConnKey {
            // SAFETY: `at` is a multiple of the key size within `bytes`; any bit pattern is a
            // valid ConnKey (plain integers); read_unaligned copes with the Vec's alignment.
            unsafe { bytes.as_ptr().add(at).cast::<ConnKey>().read_unaligned() }
        };
        Ok((0..keys.len() / size_of::<ConnKey>())
            .map(|index| {
                let key = read(&keys, index * size_of::<ConnKey>());
                // SAFETY: as above, for the values.
                let value = unsafe {
                    values
                        .as_ptr()
                        .add(index * size_of::<ConnValue>())
                        .cast::<ConnValue>()
                        .read_unaligned()
                };
                (key, value)
            })
            .collect())
    }

    /// The whole table, two syscalls per entry. The kernel's walk starts over when the key it
    /// continues from was evicted meanwhile, so under churn an entry can come twice (kept
    /// once) and the walk is bounded.
    fn read_one_by_one(&self) -> anyhow::Result<Vec<(ConnKey, ConnValue)>> {
        let mut entries = std::collections::HashMap::new();
        let limit = 2 * self.size as usize + 1024;
        for entry in self.conns.iter().take(limit) {
            let (key, value) = entry.with_context(|| format!("reading map {CONNS}"))?;
            entries.insert(key, value);
        }
        Ok(entries.into_iter().collect())
    }

    /// Adds the counts pending on every CPU (`APNS_CONN_PEND`) to the entries they belong to;
    /// counts of a connection the table no longer holds are dropped, as the datapath drops
    /// them.
    fn add_pending(&self, entries: &mut [(ConnKey, ConnValue)]) -> anyhow::Result<()> {
        let mut pending = Vec::new();
        for index in 0..PENDING_ENTRIES {
            let per_cpu = self
                .pending
                .get(&index, 0)
                .with_context(|| format!("reading entry {index} of map {CONN_PENDING}"))?;
            let side = pending_side(index);
            pending.extend(
                per_cpu
                    .iter()
                    .filter(|slot| slot.packets != 0)
                    .map(|slot| (slot.key, side, *slot)),
            );
        }
        if pending.is_empty() {
            return Ok(());
        }
        let at: std::collections::HashMap<ConnKey, usize> = entries
            .iter()
            .enumerate()
            .map(|(index, (key, _))| (*key, index))
            .collect();
        for (key, side, slot) in pending {
            if let Some(&index) = at.get(&key) {
                entries[index].1.add_pending(side, &slot);
            }
        }
        Ok(())
    }

    /// The datapath's counts, summed over CPUs.
    pub fn stats(&self) -> anyhow::Result<ConnStats> {
        let per_cpu = self
            .stats
            .get(&0, 0)
            .with_context(|| format!("reading map {CONN_STATS}"))?;
        Ok(per_cpu
            .iter()
            .fold(ConnStats::default(), |mut total, stats| {
                total.add(stats);
                total
            }))
    }
}
