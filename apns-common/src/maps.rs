//! Names and sizes of every map of the datapath, and who writes and reads each.
//!
//! The kernel statics in `apns-ebpf/src/maps.rs` carry exactly these names (the `#[map]`
//! macro needs a literal there); a user-space test parses the built object and checks that
//! each name below exists with the key and value size given here.

/// `Array<u32>`, 1 entry: the policy generation (0 or 1) the datapath judges packets by.
/// Written by the agent as its last step of a policy change (one aligned 4-byte store, so a
/// packet sees either the old or the new generation); read by the XDP program per packet.
pub const ACTIVE: &str = "APNS_ACTIVE";

/// `Array<PolicyConfig>`, [`GENERATIONS`] entries, indexed by generation. Written by the
/// agent into the inactive generation only; read by the XDP program.
pub const POLICY: &str = "APNS_POLICY";
pub const POLICY_MAX_ENTRIES: u32 = crate::policy::GENERATIONS;

/// `Array<u8>` of port role bits ([`crate::policy::role`]), indexed by
/// `generation * PORTS_PER_GENERATION + port` (port in host byte order). Written by the agent
/// (inactive generation only); read by the XDP program.
pub const PORTS: &str = "APNS_PORTS";
pub const PORTS_PER_GENERATION: u32 = 1 << 16;
pub const PORTS_MAX_ENTRIES: u32 = crate::policy::GENERATIONS * PORTS_PER_GENERATION;

/// `LpmTrie<PrefixV4, u8>` / `LpmTrie<PrefixV6, u8>`: Apple's prefixes (the allow-list). The
/// value is unused (always 1). Written by the agent (inactive generation only); read by the
/// XDP program.
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

/// `PerCpuHashMap<CounterKey, CounterValue>`: every packet the XDP program sees is counted
/// in exactly one entry. Written (inserted and incremented) only by the XDP program's
/// counters module; read by the agent, which sums the per-CPU values. The agent never
/// deletes entries of a live datapath, so counters are monotonic across agent restarts.
pub const COUNTERS: &str = "APNS_COUNTERS";
/// Bounds the memory of [`COUNTERS`]: an interface needs at most
/// `ports x 2 directions x 2 verdicts + ports (pinhole drops) + 4 other classes` entries.
pub const COUNTERS_MAX_ENTRIES: u32 = 16_384;

/// `PerCpuArray<u64>`, 1 entry: packets whose counter could not be recorded because
/// [`COUNTERS`] was full. Written by the XDP program; read by the agent. Should stay 0.
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

/// `HashMap<u32 ifindex, IfaceConfig>`: the fast path of every attached interface. Written by
/// the agent (attach, detach, `fastpath`); read by the XDP program for APNs packets.
pub const IFACES: &str = "APNS_IFACES";
/// `DevMapHash` of egress interfaces for the redirect fast path, keyed and valued by ifindex:
/// every interface the agent attached. Written by the agent; read by the XDP program.
pub const TX_PORTS: &str = "APNS_TX_PORTS";
/// Interfaces one datapath can be attached to.
pub const MAX_INTERFACES: u32 = 256;

/// Maps of the object that belong to one program load and are never pinned: aya-log's ring
/// buffer and the constants section (which holds the log level).
pub const UNPINNED: [&str; 2] = ["AYA_LOGS", ".rodata"];

/// `Array<Meta>`, 1 entry: written once by the agent when it creates the maps, read by the
/// agent before it adopts pinned maps. The XDP program never touches it.
pub const META: &str = "APNS_META";

/// Kernel map type numbers (`enum bpf_map_type`, stable UAPI) of the maps above.
pub mod map_type {
    pub const PERCPU_HASH: u32 = 5;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const LPM_TRIE: u32 = 11;
    pub const RINGBUF: u32 = 27;
    pub const HASH: u32 = 1;
    pub const DEVMAP_HASH: u32 = 25;
}

/// Every map above with its type, key and value size, for layout checks in user space.
pub const ALL: [MapLayout; 15] = {
    use crate::{
        counters::{CounterKey, CounterValue},
        events::{EventConfig, EventState},
        fastpath::IfaceConfig,
        policy::{PolicyConfig, PrefixV4, PrefixV6},
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
        MapLayout::new(PORTS, ARRAY, 4, 1, PORTS_MAX_ENTRIES),
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
            COUNTERS,
            PERCPU_HASH,
            size_of::<CounterKey>(),
            size_of::<CounterValue>(),
            COUNTERS_MAX_ENTRIES,
        ),
        MapLayout::new(COUNTERS_LOST, PERCPU_ARRAY, 4, 8, 1),
        MapLayout::new(EVENTS, RINGBUF, 0, 0, EVENTS_RING_BYTES),
        MapLayout::new(EVENT_CONFIG, ARRAY, 4, size_of::<EventConfig>(), 1),
        MapLayout::new(EVENT_STATE, PERCPU_ARRAY, 4, size_of::<EventState>(), 1),
        MapLayout::new(IFACES, HASH, 4, size_of::<IfaceConfig>(), MAX_INTERFACES),
        // The devmap value is `struct bpf_devmap_val`: ifindex and a program fd/id.
        MapLayout::new(TX_PORTS, DEVMAP_HASH, 4, 8, MAX_INTERFACES),
        MapLayout::new(META, ARRAY, 4, size_of::<Meta>(), 1),
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
