//! Typed access to the datapath's policy maps, and the one way policy gets into them:
//! write the whole policy into the inactive generation (its tables: port entries with
//! counter slots, the address prefilter and how each list's long prefixes are answered; the
//! tries; the long-prefix table; its config), then flip `APNS_ACTIVE`.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context as _};
use apns_common::{
    long_prefixes::{self, LongPrefixTable},
    maps::{ACTIVE, ALLOW_V4, ALLOW_V6, LONG_PREFIXES, POLICY, PROVIDERS_V4, PROVIDERS_V6, TABLES},
    policy::{
        GenerationTables, PolicyConfig, PortEntry, PrefixV4, PrefixV6, GENERATION_PREFIX_BITS,
        MAX_PORTS, PORT_LIST_DIRTY,
    },
    prefilter::{
        leading_mask, leading_v4, leading_v6, short, table, HashedLengths, PrefixTable, ShortList,
        FIRST_LEVEL_BITS,
    },
};
use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData},
    Pod,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    counters::SlotMaps,
    policy::{Mode, Policy},
};

/// Handles to the policy maps of one datapath (loaded by us, or opened from pins).
pub struct PolicyMaps {
    active: Array<MapData, u32>,
    config: Array<MapData, PolicyConfig>,
    tables: Array<MapData, GenerationTables>,
    /// Port counter slots are handed out as policies name ports.
    slots: SlotMaps,
    allow_v4: LpmTrie<MapData, PrefixV4, u8>,
    allow_v6: LpmTrie<MapData, PrefixV6, u8>,
    providers_v4: LpmTrie<MapData, PrefixV4, u8>,
    providers_v6: LpmTrie<MapData, PrefixV6, u8>,
    long_prefixes: Array<MapData, LongPrefixTable>,
}

/// Value stored in the LPM tries: only presence matters.
const PRESENT: u8 = 1;

impl PolicyMaps {
    /// Builds the handles from a source of maps by name: `Ebpf::take_map` for a freshly loaded
    /// object, or opening pins.
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            name: &'static str,
            map: anyhow::Result<Map>,
        ) -> anyhow::Result<T> {
            T::try_from(map?)
                .with_context(|| format!("map {name} has an unexpected type or layout"))
        }
        Ok(Self {
            active: typed(ACTIVE, map(ACTIVE))?,
            config: typed(POLICY, map(POLICY))?,
            tables: typed(TABLES, map(TABLES))?,
            slots: SlotMaps::open(&mut map)?,
            allow_v4: typed(ALLOW_V4, map(ALLOW_V4))?,
            allow_v6: typed(ALLOW_V6, map(ALLOW_V6))?,
            providers_v4: typed(PROVIDERS_V4, map(PROVIDERS_V4))?,
            providers_v6: typed(PROVIDERS_V6, map(PROVIDERS_V6))?,
            long_prefixes: typed(LONG_PREFIXES, map(LONG_PREFIXES))?,
        })
    }

    /// The generation the datapath judges packets by.
    pub fn active_generation(&self) -> anyhow::Result<u32> {
        let generation = self
            .active
            .get(&0, 0)
            .with_context(|| format!("reading map {ACTIVE}"))?;
        Ok(generation & 1)
    }

    /// Makes `policy` the datapath's policy atomically: every packet is judged either by the
    /// previous policy or by this one. Validates first, so bad input changes nothing.
    pub fn apply(&mut self, policy: &Policy) -> anyhow::Result<()> {
        policy.validate()?;
        let target = self.active_generation()? ^ 1;

        // Mark the generation as being rewritten before touching its tables, so that a
        // generation an agent left half-written is never read back as a policy.
        let dirty = PolicyConfig {
            port_count: PORT_LIST_DIRTY,
            ..PolicyConfig::default()
        };
        self.set_config(target, &dirty)?;
        // Counter slots for the new ports; those of the generation in force stay put.
        let in_force = self
            .config
            .get(&(target ^ 1), 0)
            .with_context(|| format!("reading generation {} of map {POLICY}", target ^ 1))?;
        let keep: BTreeSet<u16> = listed_ports(&in_force).iter().copied().collect();
        let wanted: BTreeSet<u16> = policy.ports.keys().copied().collect();
        let slots = self.slots.assign_ports(&keep, &wanted)?;
        let (tables, long_prefixes) = generation_tables(policy, &slots);
        self.tables
            .set(target, tables, 0)
            .with_context(|| format!("writing generation {target} of map {TABLES}"))?;
        self.long_prefixes
            .set(target, long_prefixes, 0)
            .with_context(|| format!("writing generation {target} of map {LONG_PREFIXES}"))?;
        sync_trie(
            ALLOW_V4,
            &mut self.allow_v4,
            target,
            policy.allow_v4().map(|n| v4_key(target, n)).collect(),
        )?;
        sync_trie(
            ALLOW_V6,
            &mut self.allow_v6,
            target,
            policy.allow_v6().map(|n| v6_key(target, n)).collect(),
        )?;
        sync_trie(
            PROVIDERS_V4,
            &mut self.providers_v4,
            target,
            policy.providers_v4().map(|n| v4_key(target, n)).collect(),
        )?;
        sync_trie(
            PROVIDERS_V6,
            &mut self.providers_v6,
            target,
            policy.providers_v6().map(|n| v6_key(target, n)).collect(),
        )?;

        let mut config = PolicyConfig {
            mode: policy.mode.code(),
            provider_prefixes: policy.providers.len() as u32,
            port_count: policy.ports.len() as u32,
            ..PolicyConfig::default()
        };
        for (i, (&port, &roles)) in policy.ports.iter().enumerate() {
            config.ports[i] = port;
            config.roles[i] = roles;
        }
        self.set_config(target, &config)?;
        super::hooks::pause_at(super::hooks::BEFORE_POLICY_SWITCH);
        // The switch: one aligned 4-byte store, seen whole by every CPU.
        self.active
            .set(0, target, 0)
            .with_context(|| format!("switching map {ACTIVE} to generation {target}"))
    }

    /// The policy of the active generation.
    pub fn read_active(&self) -> anyhow::Result<Policy> {
        self.read_generation(self.active_generation()?)
    }

    /// The policy held by `generation` (0 or 1), whether in force or not.
    pub fn read_generation(&self, generation: u32) -> anyhow::Result<Policy> {
        let config = self
            .config
            .get(&generation, 0)
            .with_context(|| format!("reading generation {generation} of map {POLICY}"))?;
        if config.port_count as usize > MAX_PORTS {
            bail!(
                "map {POLICY}: generation {generation} is incomplete or corrupt (port count {})",
                config.port_count
            );
        }
        let count = config.port_count as usize;
        let ports: BTreeMap<u16, u8> = config.ports[..count]
            .iter()
            .copied()
            .zip(config.roles[..count].iter().copied())
            .collect();
        let mut allow: BTreeSet<IpNet> = BTreeSet::new();
        allow.extend(
            read_trie(ALLOW_V4, &self.allow_v4, generation)?
                .into_iter()
                .map(v4_net),
        );
        allow.extend(
            read_trie(ALLOW_V6, &self.allow_v6, generation)?
                .into_iter()
                .map(v6_net),
        );
        let mut providers: BTreeSet<IpNet> = BTreeSet::new();
        providers.extend(
            read_trie(PROVIDERS_V4, &self.providers_v4, generation)?
                .into_iter()
                .map(v4_net),
        );
        providers.extend(
            read_trie(PROVIDERS_V6, &self.providers_v6, generation)?
                .into_iter()
                .map(v6_net),
        );
        Ok(Policy {
            mode: Mode::from_code(config.mode).with_context(|| {
                format!(
                    "map {POLICY}: generation {generation} has unknown policy mode code {}",
                    config.mode
                )
            })?,
            ports,
            allow,
            providers,
        })
    }

    fn set_config(&mut self, generation: u32, config: &PolicyConfig) -> anyhow::Result<()> {
        self.config
            .set(generation, config, 0)
            .with_context(|| format!("writing generation {generation} of map {POLICY}"))
    }
}

/// The ports a generation's config lists (none if it was left dirty).
fn listed_ports(config: &PolicyConfig) -> &[u16] {
    let count = config.port_count as usize;
    if count <= MAX_PORTS {
        &config.ports[..count]
    } else {
        &[]
    }
}

/// A generation's tables for `policy`: its ports with their roles and counter slots (`slots`,
/// 0 for a port without one), and the prefilter derived from its lists
/// (`apns_common::prefilter`); with its long-prefix table.
fn generation_tables(
    policy: &Policy,
    slots: &BTreeMap<u16, u8>,
) -> (Box<GenerationTables>, Box<LongPrefixTable>) {
    // SAFETY: `GenerationTables` is plain integers (it implements `aya::Pod`), for which all
    // zero bytes are a valid value: no port, no prefix. Built on the heap: it is about 352 KiB.
    let mut tables = unsafe { Box::<GenerationTables>::new_zeroed().assume_init() };
    for (&port, &roles) in &policy.ports {
        tables.ports[usize::from(port)] = PortEntry {
            roles,
            slot: slots.get(&port).copied().unwrap_or(0),
            _pad: [0; 2],
        };
    }
    let prefilter = &mut tables.prefilter;
    for net in policy.allow_v4() {
        prefilter[table::ALLOW_V4].add_v4(net.network().octets(), net.prefix_len());
    }
    for net in policy.providers_v4() {
        prefilter[table::PROVIDERS_V4].add_v4(net.network().octets(), net.prefix_len());
    }
    for (first, next, nets) in [
        (
            table::ALLOW_V6,
            table::ALLOW_V6_NEXT,
            policy.allow_v6().collect::<Vec<_>>(),
        ),
        (
            table::PROVIDERS_V6,
            table::PROVIDERS_V6_NEXT,
            policy.providers_v6().collect(),
        ),
    ] {
        let [first, next] = prefilter
            .get_disjoint_mut([first, next])
            .expect("an IPv6 list's two tables are distinct entries");
        for net in nets {
            PrefixTable::add_v6(first, next, net.network().octets(), net.prefix_len());
        }
    }
    let long_prefixes = long_prefix_lists(policy, &mut tables);
    (tables, long_prefixes)
}

/// How each list's long prefixes (longer than /16) are answered: a short list when they are
/// few, else the long-prefix table when they use few lengths and the table has room for them
/// (in list order), else the trie. Fills the tables' short lists and hashed lengths and
/// returns the long-prefix table.
fn long_prefix_lists(policy: &Policy, tables: &mut GenerationTables) -> Box<LongPrefixTable> {
    let v4 = |net: Ipv4Net| (leading_v4(&net.network().octets()), net.prefix_len());
    let v6 = |net: Ipv6Net| (leading_v6(&net.network().octets()), net.prefix_len());
    let lists: [(usize, Vec<(u64, u8)>); short::PER_GENERATION] = [
        (short::ALLOW_V4, policy.allow_v4().map(v4).collect()),
        (short::PROVIDERS_V4, policy.providers_v4().map(v4).collect()),
        (short::ALLOW_V6, policy.allow_v6().map(v6).collect()),
        (short::PROVIDERS_V6, policy.providers_v6().map(v6).collect()),
    ];
    let mut table = empty_long_prefix_table();
    let mut used = 0;
    for (id, prefixes) in lists {
        tables.short[id] = ShortList::of_prefixes(prefixes.iter().copied());
        if tables.short[id].complete != 0 {
            continue;
        }
        let hashed = HashedLengths::of_prefixes(prefixes.iter().copied());
        let long: Vec<(u64, u8)> = prefixes
            .into_iter()
            .filter(|&(_, len)| len > FIRST_LEVEL_BITS)
            .collect();
        if hashed.complete == 0 || used + long.len() > long_prefixes::CAPACITY {
            continue;
        }
        // A list that does not fit is left to its trie, and the lists before it keep theirs.
        let mut before = empty_long_prefix_table();
        before.buckets.copy_from_slice(&table.buckets);
        let fits = long.iter().all(|&(network, len)| {
            let tag = long_prefixes::tag(id as u8, len);
            table.insert(network & leading_mask(len), tag).is_none()
        });
        if fits {
            used += long.len();
            tables.hashed[id] = hashed;
        } else {
            table = before;
        }
    }
    table
}

/// An empty long-prefix table, made on the heap (2 MiB).
fn empty_long_prefix_table() -> Box<LongPrefixTable> {
    // SAFETY: `LongPrefixTable` is plain integers (it implements `aya::Pod`), for which all
    // zero bytes are a valid value: every slot empty.
    unsafe { Box::<LongPrefixTable>::new_zeroed().assume_init() }
}

/// Key data of an LPM trie that starts with the generation byte.
trait GenerationKey: Pod + Ord {
    fn generation(&self) -> u8;
}
impl GenerationKey for PrefixV4 {
    fn generation(&self) -> u8 {
        self.generation
    }
}
impl GenerationKey for PrefixV6 {
    fn generation(&self) -> u8 {
        self.generation
    }
}

/// (prefix length including the generation byte, key data): an LPM key in an orderable form.
type TrieEntry<K> = (u32, K);

fn v4_key(generation: u32, net: Ipv4Net) -> TrieEntry<PrefixV4> {
    let data = PrefixV4 {
        generation: generation as u8,
        addr: net.network().octets(),
    };
    (GENERATION_PREFIX_BITS + u32::from(net.prefix_len()), data)
}

fn v6_key(generation: u32, net: Ipv6Net) -> TrieEntry<PrefixV6> {
    let data = PrefixV6 {
        generation: generation as u8,
        addr: net.network().octets(),
    };
    (GENERATION_PREFIX_BITS + u32::from(net.prefix_len()), data)
}

fn v4_net((bits, data): TrieEntry<PrefixV4>) -> IpNet {
    let len = (bits - GENERATION_PREFIX_BITS) as u8;
    IpNet::V4(Ipv4Net::new(data.addr.into(), len).expect("prefix length read from a valid key"))
}

fn v6_net((bits, data): TrieEntry<PrefixV6>) -> IpNet {
    let len = (bits - GENERATION_PREFIX_BITS) as u8;
    IpNet::V6(Ipv6Net::new(data.addr.into(), len).expect("prefix length read from a valid key"))
}

/// The entries of `generation` in an LPM trie.
fn read_trie<K: GenerationKey>(
    name: &str,
    trie: &LpmTrie<MapData, K, u8>,
    generation: u32,
) -> anyhow::Result<BTreeSet<TrieEntry<K>>> {
    let mut entries = BTreeSet::new();
    for key in trie.keys() {
        let key = key.with_context(|| format!("listing map {name}"))?;
        let data = key.data();
        if u32::from(data.generation()) == generation {
            entries.insert((key.prefix_len(), data));
        }
    }
    Ok(entries)
}

/// Makes the `generation` part of an LPM trie hold exactly `desired`, touching only the
/// entries that differ.
fn sync_trie<K: GenerationKey>(
    name: &str,
    trie: &mut LpmTrie<MapData, K, u8>,
    generation: u32,
    desired: BTreeSet<TrieEntry<K>>,
) -> anyhow::Result<()> {
    let present = read_trie(name, trie, generation)?;
    for &(bits, data) in present.difference(&desired) {
        trie.remove(&Key::new(bits, data))
            .with_context(|| format!("removing a prefix from map {name}"))?;
    }
    for &(bits, data) in desired.difference(&present) {
        trie.insert(&Key::new(bits, data), PRESENT, 0)
            .with_context(|| format!("adding a prefix to map {name}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use apns_common::{long_prefixes::tag, prefilter::HASHED_LENGTHS};

    use super::*;

    /// `count` distinct IPv4 /24s outside 17.0.0.0/8, and as many IPv6 /64s in 2001:db8::/32.
    fn v4_24s(count: u32) -> impl Iterator<Item = IpNet> {
        (0..count).map(|i| IpNet::V4(Ipv4Net::new((0x2000_0000 + (i << 8)).into(), 24).unwrap()))
    }
    fn v6_64s(count: u32) -> impl Iterator<Item = IpNet> {
        (0..count).map(|i| {
            let net = (0x2001_0db8_u128 << 96) | (u128::from(i) << 64);
            IpNet::V6(Ipv6Net::new(net.into(), 64).unwrap())
        })
    }

    fn lists_of(policy: &Policy) -> (Box<GenerationTables>, Box<LongPrefixTable>) {
        generation_tables(policy, &BTreeMap::new())
    }

    #[test]
    fn apple_alone_takes_short_lists_and_leaves_the_table_empty() {
        let (tables, long) = lists_of(&Policy::apple_defaults());
        assert!(tables.short.iter().all(|list| list.complete == 1));
        assert!(tables.hashed.iter().all(|list| list.complete == 0));
        assert!(long
            .buckets
            .iter()
            .all(|b| b.slots.iter().all(|s| s.tag == 0)));
    }

    #[test]
    fn a_long_list_of_few_lengths_goes_into_the_table() {
        let mut policy = Policy::apple_defaults();
        policy.allow.extend(v4_24s(200));
        policy.allow.extend(v6_64s(20));
        let (tables, long) = lists_of(&policy);
        for id in [short::ALLOW_V4, short::ALLOW_V6] {
            assert_eq!(tables.short[id].complete, 0, "list {id}");
            assert_eq!(tables.hashed[id].complete, 1, "list {id}");
        }
        assert_eq!(tables.hashed[short::ALLOW_V4].lengths[..1], [24]);
        // Apple's /48s and the /64s.
        assert_eq!(tables.hashed[short::ALLOW_V6].lengths[..2], [64, 48]);
        let v4 = leading_v4(&[32, 0, 199, 0]);
        assert!(long.contains(v4, tag(short::ALLOW_V4 as u8, 24)));
        assert!(!long.contains(v4, tag(short::PROVIDERS_V4 as u8, 24)));
        let past = leading_v4(&[32, 0, 200, 0]);
        assert!(!long.contains(past, tag(short::ALLOW_V4 as u8, 24)));
    }

    #[test]
    fn a_list_past_the_tables_room_or_of_many_lengths_is_left_to_its_trie() {
        let mut policy = Policy::apple_defaults();
        policy.allow.extend(v4_24s(100_000));
        policy.allow.extend(v6_64s(20_000));
        let (tables, long) = lists_of(&policy);
        assert_eq!(tables.hashed[short::ALLOW_V4].complete, 1);
        assert_eq!(tables.hashed[short::ALLOW_V6], HashedLengths::default());
        let last_v6 = leading_v6(
            &Ipv6Net::new((0x2001_0db8_0000_4e1f_u128 << 64).into(), 64)
                .unwrap()
                .network()
                .octets(),
        );
        assert!(!long.contains(last_v6, tag(short::ALLOW_V6 as u8, 64)));
        assert!(long.contains(
            leading_v4(&[33, 134, 159, 0]),
            tag(short::ALLOW_V4 as u8, 24)
        ));

        let mut policy = Policy::apple_defaults();
        policy.allow.extend(v4_24s(20));
        let lengths = 17..=(17 + HASHED_LENGTHS as u8);
        policy
            .allow
            .extend(lengths.map(|len| IpNet::V4(Ipv4Net::new([44, 0, 0, 0].into(), len).unwrap())));
        let (tables, _) = lists_of(&policy);
        assert_eq!(tables.hashed[short::ALLOW_V4], HashedLengths::default());
    }
}
