//! Names and sizes of every map of the datapath, and who writes and reads each.
//!
//! The kernel statics in `apns-ebpf/src/maps.rs` carry exactly these names (the `#[map]`
//! macro needs a literal there); a user-space test parses the built object and checks that
//! each name below exists with the key and value size given here.
//!
//! What the XDP program looks up per packet: every packet `APNS_IFACES` and
//! `APNS_COUNTERS`; a TCP packet also `APNS_ACTIVE` and its generation's `APNS_TABLES` entry
//! (both ports and the prefilter in one value) — all arrays, inlined by the verifier. Only an
//! address the prefilter cannot settle reads its list's short list in `APNS_TABLES`, or
//! `APNS_LONG_PFX` (an array too) once per prefix length the list uses, or, for a list whose
//! long prefixes are too varied, costs an LPM trie lookup; only a provider port toward
//! Apple, a pinhole port toward anyone else, or a SYN from Apple reads `APNS_POLICY`; only a
//! passed APNs packet on a `redirect` interface `APNS_TX_PORTS` (and, if it is left to the
//! stack, `APNS_FP_PATHS`) and the flow table `APNS_FLOWS` (an LRU hash; one lookup); only
//! a passed APNs packet entering or XDP-redirected to a device-facing interface
//! `APNS_CONN_PEND` (a per-CPU array, inlined on Linux 6.10+), and, for the first packet of
//! its scheduler tick or a SYN, FIN or RST, the connection table `APNS_CONNS` (an LRU hash)
//! and `APNS_CONN_STATS`; only a policy drop the event maps.
//!
//! Memory (preallocated, `bytes_memlock`): `APNS_CONNS` 15 MiB at the default 65,536
//! entries; `APNS_FLOWS` 7 MiB; `APNS_LONG_PFX` 4 MiB (two generations of 2 MiB);
//! `APNS_COUNTERS` 768 KiB per CPU; `APNS_TABLES` 704 KiB (two generations of 352 KiB);
//! `APNS_IFACES` 256 KiB; `APNS_EVENTS` 256 KiB; `APNS_CONN_PEND` 32 KiB per CPU; the rest a few KiB. The LPM tries allocate
//! per prefix.

/// `Array<u32>`, 1 entry: the policy generation (0 or 1) the datapath judges packets by.
/// Written by the agent as its last step of a policy change (one aligned 4-byte store, so a
/// packet sees either the old or the new generation); read by the XDP program per packet.
pub const ACTIVE: &str = "APNS_ACTIVE";

/// `Array<PolicyConfig>`, [`crate::policy::GENERATIONS`] entries, indexed by generation. Written by the
/// agent into the inactive generation only; read by the XDP program.
pub const POLICY: &str = "APNS_POLICY";
pub const POLICY_MAX_ENTRIES: u32 = crate::policy::GENERATIONS;

/// `Array<GenerationTables>` ([`crate::policy::GenerationTables`], 352 KiB each), indexed by
/// generation: the port table (role bits and counter slot of every port) and the address
/// prefilter ([`crate::prefilter`]: the allow-list's and the provider list's verdict for
/// every 16-bit bucket) of that generation, in one value so that a TCP packet costs one
/// lookup for both. Written whole by the agent, derived from the policy with the tries,
/// into the inactive generation only; read by the XDP program for every TCP packet.
pub const TABLES: &str = "APNS_TABLES";
pub const TABLES_MAX_ENTRIES: u32 = crate::policy::GENERATIONS;

/// `LpmTrie<PrefixV4, u8>` / `LpmTrie<PrefixV6, u8>`: Apple's prefixes (the allow-list). The
/// value is unused (always 1). Written by the agent (inactive generation only); read by the
/// XDP program only for addresses the prefilter ([`TABLES`]) cannot settle.
pub const ALLOW_V4: &str = "APNS_ALLOW_V4";
pub const ALLOW_V6: &str = "APNS_ALLOW_V6";
/// Prefixes per generation and family the allow-list maps can hold.
pub const ALLOW_PREFIXES_PER_GENERATION: u32 = 131_072;
pub const ALLOW_MAX_ENTRIES: u32 = crate::policy::GENERATIONS * ALLOW_PREFIXES_PER_GENERATION;

/// `LpmTrie<PrefixV4, u8>` / `LpmTrie<PrefixV6, u8>`: the MDM provider source prefixes.
/// Same writer, reader and value as the allow-list.
pub const PROVIDERS_V4: &str = "APNS_PROV_V4";
pub const PROVIDERS_V6: &str = "APNS_PROV_V6";
pub const PROVIDER_PREFIXES_PER_GENERATION: u32 = 4_096;
pub const PROVIDERS_MAX_ENTRIES: u32 =
    crate::policy::GENERATIONS * PROVIDER_PREFIXES_PER_GENERATION;

/// `Array<LongPrefixTable>` ([`crate::long_prefixes::LongPrefixTable`], 2 MiB each), indexed
/// by generation: the long prefixes (/17 to /64) of every list too long for a short list
/// whose generation table says they are hashed ([`crate::prefilter::HashedLengths`]), in a
/// cuckoo hash the XDP program reads with inlined array accesses. Written whole by the agent
/// (inactive generation only, beside the tries, which still hold every list); read by the
/// XDP program for an address the prefilter asks about, once per prefix length the list uses.
pub const LONG_PREFIXES: &str = "APNS_LONG_PFX";
pub const LONG_PREFIXES_MAX_ENTRIES: u32 = crate::policy::GENERATIONS;

/// `PerCpuArray<CounterBlock>`, [`crate::counters::COUNTER_BLOCKS`] entries indexed by
/// [`crate::counters::block_index`]`(interface slot, port slot)`: every packet the XDP
/// program sees is counted in exactly one cell of one block (`crate::counters` explains the
/// slots, the overflow and the retired slot). Written by the XDP program's counters module
/// (its cells), and by the agent only to move the counters of a slot it recycles into the
/// retired slot (no packet can reach either then); read by the agent, which sums the per-CPU
/// values. Counters are monotonic across agent restarts. 768 KiB per CPU.
pub const COUNTERS: &str = "APNS_COUNTERS";

/// `Array<CounterSlots>`, 1 entry: which ifindex and which port each counter slot belongs to.
/// Written by the agent (attach, policy apply), under the pin directory's lock; read by every
/// counter reader (`stats`, /metrics, the textfile, tests). The XDP program never reads it.
pub const COUNTER_SLOTS: &str = "APNS_CNT_SLOTS";

/// `HashMap<CounterKey, CounterValue>`: counts carried over from a datapath of the previous
/// layout when the agent migrated it in place (`apns-agent/src/datapath/migrate.rs`), under
/// the keys they had there. Written only by the agent, once per migration, after the old
/// program stopped counting (so nothing races with it); read by every counter reader, which
/// adds it to what the datapath counts itself. The XDP program never touches it.
pub const COUNTERS_CARRIED: &str = "APNS_CNT_CARRIED";
/// Keys the carried counts can hold: the previous layout's counter map size.
pub const COUNTERS_CARRIED_MAX_ENTRIES: u32 = 16_384;

/// `PerCpuArray<u64>`, 1 entry: packets the XDP program could not count because a counter
/// array lookup failed, which the slot bounds make impossible; kept so that even a bug
/// shows as a number rather than as silence. Written by the XDP program; read by the agent.
pub const COUNTERS_LOST: &str = "APNS_CNT_LOST";

/// `RingBuf` of [`crate::events::DropEvent`]s: written by the XDP program when it drops a
/// packet by policy (sampled and rate-limited per `APNS_EVENT_CFG`); read by
/// `apns-agent events`, its only consumer.
pub const EVENTS: &str = "APNS_EVENTS";
/// Ring size in bytes (a power of two): about 4,600 events of 56 bytes plus headers.
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// `Array<EventConfig>`, 1 entry: the drop events' rate limit and sampling. Written by the
/// agent; read by the XDP program.
pub const EVENT_CONFIG: &str = "APNS_EVENT_CFG";

/// `PerCpuArray<EventState>`, 1 entry: the rate limiter's state. Only the XDP program reads
/// and writes it.
pub const EVENT_STATE: &str = "APNS_EVENT_ST";

/// `Array<IfaceConfig>`, [`IFACES_MAX_ENTRIES`] entries indexed by ifindex: every attached
/// interface's counter slot, fast path and flags. Written by the agent (attach, detach,
/// `fastpath`, roles); read by the XDP program for every packet (and for the egress of a
/// redirected one), by `apns_tc` (the counter slot of its cross-check) and by
/// `apns_tc_conns` (the devices flag). A packet whose ifindex is past the array is counted
/// in the overflow slot and never takes a fast path.
pub const IFACES: &str = "APNS_IFACES";
/// Ifindexes `APNS_IFACES` covers (0 to 16,383): 256 KiB, shared by all CPUs.
pub const IFACES_MAX_ENTRIES: u32 = 16_384;
/// `BPF_MAP_TYPE_DEVMAP_HASH` of egress interfaces for the redirect fast path, keyed and
/// valued by ifindex (a bare 4-byte ifindex, never a program: Linux before 5.14 runs no
/// program in skb mode whose devmap could hold one): every interface the agent attached.
/// Written by the agent; read by the XDP program.
pub const TX_PORTS: &str = "APNS_TX_PORTS";
/// Interfaces one datapath can be attached to.
pub const MAX_INTERFACES: u32 = 256;

/// Maps of the object that belong to one program load and are never pinned: aya-log's ring
/// buffer and the constants section (which holds the log level).
pub const UNPINNED: [&str; 2] = ["AYA_LOGS", ".rodata"];

/// Maps of [`crate::PREVIOUS_LAYOUT_VERSION`] this layout no longer has (`APNS_PORTS`, which
/// `APNS_TABLES` replaced; its other maps are replaced by this layout's maps of the same
/// name). A pin directory holding them is still apns-agent's; a migration removes them.
pub const RETIRED: [&str; 1] = ["APNS_PORTS"];

/// `Array<Meta>`, 1 entry: written once by the agent when it creates the maps, read by the
/// agent before it adopts pinned maps. The XDP program never touches it.
pub const META: &str = "APNS_META";

/// `PerCpuArray<PathCounters>`, [`crate::counters::IFACE_SLOTS`] entries indexed by interface
/// counter slot: per `redirect` interface, the APNs packets left to the stack by reason, and
/// the TC step's cross-check ([`crate::fastpath::PathCounters`]). Written by the XDP program
/// (fallbacks) and the TC program (hand-offs forwarded or refused), and by the agent only to
/// move a recycled interface slot's row into the retired slot, as for `APNS_COUNTERS`; read
/// by the agent (`status`, /metrics, `stats`). Added to layout 3 before its release.
pub const FASTPATH_PATHS: &str = "APNS_FP_PATHS";

/// `LruHashMap<ConnKey, u32>`: the flows the `redirect` fast path may forward inbound
/// (`apns-ebpf/src/flows.rs`), keyed like the connection table (the device's address and
/// port, Apple's address and port); the value is the ifindex where the device's packets
/// enter. Written by the XDP program for every APNs packet from a device (outbound, passed)
/// entering a `redirect` interface, once per flow (a lookup finds it afterwards); read by
/// the XDP program, and by `apns_tc` where it classifies itself, for every inbound APNs
/// packet on such an interface: without an entry opened on another interface, the packet
/// takes no fast path. The agent never writes it. An LRU, so that a flood of new flows
/// evicts the idlest; looked-up entries stay. 7 MiB preallocated (7,340,928 bytes of
/// memlock, BENCHMARKS.md). Added to layout 3 before its release.
pub const FLOWS: &str = "APNS_FLOWS";
/// Flows `APNS_FLOWS` holds: as many as the connection table's default.
pub const FLOWS_MAX_ENTRIES: u32 = 65_536;

/// Kernel map type numbers (`enum bpf_map_type`, stable UAPI) of the maps above.
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LPM_TRIE: u32 = 11;
    pub const RINGBUF: u32 = 27;
    pub const DEVMAP_HASH: u32 = 25;
    pub const LRU_HASH: u32 = 9;
}

/// Every map above with its type, key and value size, for layout checks in user space.
pub const ALL: [MapLayout; 23] = {
    use crate::{
        conns::{ConnKey, ConnStats, ConnValue, Pending},
        counters::{CounterBlock, CounterKey, CounterSlots, CounterValue, COUNTER_BLOCKS},
        events::{EventConfig, EventState},
        fastpath::IfaceConfig,
        policy::{GenerationTables, PolicyConfig, PrefixV4, PrefixV6},
    };
    use map_type::*;
    /// LPM keys are the 4-byte prefix length followed by the key data.
    const LPM_PREFIX_LEN: usize = 4;
    [
        MapLayout::new(ACTIVE, ARRAY, 4, 4, 1),
        MapLayout::new(
            POLICY,
            ARRAY,
            4,
            size_of::<PolicyConfig>(),
            POLICY_MAX_ENTRIES,
        ),
        MapLayout::new(
            TABLES,
            ARRAY,
            4,
            size_of::<GenerationTables>(),
            TABLES_MAX_ENTRIES,
        ),
        MapLayout::new(
            ALLOW_V4,
            LPM_TRIE,
            LPM_PREFIX_LEN + size_of::<PrefixV4>(),
            1,
            ALLOW_MAX_ENTRIES,
        ),
        MapLayout::new(
            ALLOW_V6,
            LPM_TRIE,
            LPM_PREFIX_LEN + size_of::<PrefixV6>(),
            1,
            ALLOW_MAX_ENTRIES,
        ),
        MapLayout::new(
            PROVIDERS_V4,
            LPM_TRIE,
            LPM_PREFIX_LEN + size_of::<PrefixV4>(),
            1,
            PROVIDERS_MAX_ENTRIES,
        ),
        MapLayout::new(
            PROVIDERS_V6,
            LPM_TRIE,
            LPM_PREFIX_LEN + size_of::<PrefixV6>(),
            1,
            PROVIDERS_MAX_ENTRIES,
        ),
        MapLayout::new(
            LONG_PREFIXES,
            ARRAY,
            4,
            size_of::<crate::long_prefixes::LongPrefixTable>(),
            LONG_PREFIXES_MAX_ENTRIES,
        ),
        MapLayout::new(
            COUNTERS,
            PERCPU_ARRAY,
            4,
            size_of::<CounterBlock>(),
            COUNTER_BLOCKS,
        ),
        MapLayout::new(COUNTER_SLOTS, ARRAY, 4, size_of::<CounterSlots>(), 1),
        MapLayout::new(
            COUNTERS_CARRIED,
            HASH,
            size_of::<CounterKey>(),
            size_of::<CounterValue>(),
            COUNTERS_CARRIED_MAX_ENTRIES,
        ),
        MapLayout::new(COUNTERS_LOST, PERCPU_ARRAY, 4, 8, 1),
        MapLayout::new(EVENTS, RINGBUF, 0, 0, EVENTS_RING_BYTES),
        MapLayout::new(EVENT_CONFIG, ARRAY, 4, size_of::<EventConfig>(), 1),
        MapLayout::new(EVENT_STATE, PERCPU_ARRAY, 4, size_of::<EventState>(), 1),
        MapLayout::new(
            IFACES,
            ARRAY,
            4,
            size_of::<IfaceConfig>(),
            IFACES_MAX_ENTRIES,
        ),
        // The devmap value is a bare ifindex, not `struct bpf_devmap_val` (ifindex and a
        // program): Linux before 5.14 runs no program in skb mode that uses the latter.
        MapLayout::new(TX_PORTS, DEVMAP_HASH, 4, 4, MAX_INTERFACES),
        MapLayout::new(META, ARRAY, 4, size_of::<Meta>(), 1),
        MapLayout::new(
            CONNS,
            LRU_HASH,
            size_of::<ConnKey>(),
            size_of::<ConnValue>(),
            CONNS_DEFAULT_ENTRIES,
        ),
        MapLayout::new(CONN_STATS, PERCPU_ARRAY, 4, size_of::<ConnStats>(), 1),
        MapLayout::new(
            CONN_PENDING,
            PERCPU_ARRAY,
            4,
            size_of::<Pending>(),
            crate::conns::PENDING_ENTRIES,
        ),
        MapLayout::new(
            FASTPATH_PATHS,
            PERCPU_ARRAY,
            4,
            size_of::<crate::fastpath::PathCounters>(),
            crate::counters::IFACE_SLOTS,
        ),
        MapLayout::new(FLOWS, LRU_HASH, size_of::<ConnKey>(), 4, FLOWS_MAX_ENTRIES),
    ]
};

/// The shape of one map, as the kernel reports it (`bpf_map_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: &'static str,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl MapLayout {
    const fn new(
        name: &'static str,
        map_type: u32,
        key_size: usize,
        value_size: usize,
        max_entries: u32,
    ) -> Self {
        Self {
            name,
            map_type,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries,
        }
    }
}

/// The single value of [`META`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// [`crate::LAYOUT_VERSION`] of the agent that created the maps.
    pub layout_version: u32,
    /// The aya-log level the pinned program was loaded with (0 off ... 5 trace): a program's
    /// log level is a load-time constant that its tag does not show.
    pub ebpf_log_level: u32,
}
const _: () = assert!(size_of::<Meta>() == 8);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Meta {}

/// `LruHashMap<ConnKey, ConnValue>` ([`crate::conns`]): one entry per APNs TCP connection of a
/// device behind the gateway, both directions under the device's address. Written by the XDP
/// program (the device's packets on device-facing interfaces; Apple's packets it redirects to
/// one) and the TC egress program `apns_tc_conns` (Apple's packets leaving through a
/// device-facing interface), and only for APNs traffic that passes; read by the agent
/// (`clients`, /metrics, `events`), which never writes or removes an entry: the kernel's LRU
/// evicts the least recently used when the table is full. Its size is the config's
/// `[clients] table_size` (the only map sized by the config, see [`SIZED_BY_CONFIG`]):
/// [`CONNS_DEFAULT_ENTRIES`] entries take 15 MiB (240 bytes each with the kernel's own,
/// `bytes_memlock`), preallocated.
pub const CONNS: &str = "APNS_CONNS";
/// Connections `APNS_CONNS` holds unless the config says otherwise.
pub const CONNS_DEFAULT_ENTRIES: u32 = 65_536;

/// `PerCpuArray<ConnStats>`, 1 entry ([`crate::conns::ConnStats`]): entries made, ends by
/// reason, lifetimes, failed updates. Written by the programs that write `APNS_CONNS`; read
/// by the agent.
pub const CONN_STATS: &str = "APNS_CONN_STATS";

/// `PerCpuArray<Pending>`, [`crate::conns::PENDING_ENTRIES`] entries
/// ([`crate::conns::pending_index`]): per CPU, the packet and byte counts of connections
/// whose entry in `APNS_CONNS` was already written in the same scheduler tick
/// ([`crate::conns::Pending`]). Written by the programs that write `APNS_CONNS`, which move
/// a slot's counts into the entry at the connection's next tick (or before the slot takes
/// another connection); read by the agent, which adds what is still there to the entries it
/// reads. 32 KiB per CPU.
pub const CONN_PENDING: &str = "APNS_CONN_PEND";

/// Maps whose size the config sets when the agent creates them: the layout check accepts any
/// size for these (the entry in [`ALL`] has the default).
pub const SIZED_BY_CONFIG: [&str; 1] = [CONNS];
