//! The map statics. Names, sizes and who writes/reads each map are documented once, in
//! `apns_common::maps`; the static names here must match those constants (a user-space test
//! checks the built object).

use apns_common::{
    conns::{ConnKey, ConnStats, ConnValue, Pending, PENDING_ENTRIES},
    counters::{CounterBlock, CounterKey, CounterSlots, CounterValue, COUNTER_BLOCKS, IFACE_SLOTS},
    events::{EventConfig, EventState},
    fastpath::{IfaceConfig, PathCounters},
    long_prefixes::LongPrefixTable,
    maps::{
        ALLOW_MAX_ENTRIES, CONNS_DEFAULT_ENTRIES, COUNTERS_CARRIED_MAX_ENTRIES, EVENTS_RING_BYTES,
        FLOWS_MAX_ENTRIES, IFACES_MAX_ENTRIES, LONG_PREFIXES_MAX_ENTRIES, MAX_INTERFACES,
        POLICY_MAX_ENTRIES, PROVIDERS_MAX_ENTRIES, TABLES_MAX_ENTRIES,
    },
    policy::{GenerationTables, PolicyConfig, PrefixV4, PrefixV6},
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};

use crate::egress::EgressDevices;

#[map]
pub static APNS_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static APNS_POLICY: Array<PolicyConfig> = Array::with_max_entries(POLICY_MAX_ENTRIES, 0);

#[map]
pub static APNS_TABLES: Array<GenerationTables> = Array::with_max_entries(TABLES_MAX_ENTRIES, 0);

#[map]
pub static APNS_ALLOW_V4: LpmTrie<PrefixV4, u8> = LpmTrie::with_max_entries(ALLOW_MAX_ENTRIES, 0);

#[map]
pub static APNS_ALLOW_V6: LpmTrie<PrefixV6, u8> = LpmTrie::with_max_entries(ALLOW_MAX_ENTRIES, 0);

#[map]
pub static APNS_PROV_V4: LpmTrie<PrefixV4, u8> =
    LpmTrie::with_max_entries(PROVIDERS_MAX_ENTRIES, 0);

#[map]
pub static APNS_PROV_V6: LpmTrie<PrefixV6, u8> =
    LpmTrie::with_max_entries(PROVIDERS_MAX_ENTRIES, 0);

#[map]
pub static APNS_LONG_PFX: Array<LongPrefixTable> =
    Array::with_max_entries(LONG_PREFIXES_MAX_ENTRIES, 0);

#[map]
pub static APNS_COUNTERS: PerCpuArray<CounterBlock> =
    PerCpuArray::with_max_entries(COUNTER_BLOCKS, 0);

/// Never read here (only the agent uses it); declared so the object carries it.
#[map]
pub static APNS_CNT_SLOTS: Array<CounterSlots> = Array::with_max_entries(1, 0);

/// Never read here (only the agent writes and reads it); declared so the object carries it.
#[map]
pub static APNS_CNT_CARRIED: HashMap<CounterKey, CounterValue> =
    HashMap::with_max_entries(COUNTERS_CARRIED_MAX_ENTRIES, 0);

#[map]
pub static APNS_CNT_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static APNS_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
pub static APNS_EVENT_CFG: Array<EventConfig> = Array::with_max_entries(1, 0);

#[map]
pub static APNS_EVENT_ST: PerCpuArray<EventState> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static APNS_IFACES: Array<IfaceConfig> = Array::with_max_entries(IFACES_MAX_ENTRIES, 0);

#[map]
pub static APNS_TX_PORTS: EgressDevices = EgressDevices::with_max_entries(MAX_INTERFACES);

/// Never read here; declared so the object carries the map the agent stamps its layout into.
#[map]
pub static APNS_META: Array<apns_common::maps::Meta> = Array::with_max_entries(1, 0);

/// Sized here with the default; the agent creates it with the config's size.
#[map]
pub static APNS_CONNS: LruHashMap<ConnKey, ConnValue> =
    LruHashMap::with_max_entries(CONNS_DEFAULT_ENTRIES, 0);

#[map]
pub static APNS_CONN_STATS: PerCpuArray<ConnStats> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static APNS_CONN_PEND: PerCpuArray<Pending> = PerCpuArray::with_max_entries(PENDING_ENTRIES, 0);

/// Written by the XDP program (fallbacks) and the TC program (the hand-off cross-check).
#[map]
pub static APNS_FP_PATHS: PerCpuArray<PathCounters> = PerCpuArray::with_max_entries(IFACE_SLOTS, 0);

#[map]
pub static APNS_FLOWS: LruHashMap<ConnKey, u32> =
    LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);
