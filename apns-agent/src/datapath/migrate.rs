//! Migrating a pinned datapath of the previous map layout in place: a new agent started over
//! an agent of the previous release takes over its datapath with traffic flowing, no packet
//! unclassified and no count lost.
//!
//! The mechanism is general; what is specific to one layout change lives in [`previous`], the
//! reader of the previous layout (rewritten at every layout change to read the one before:
//! today layout 2, the first release). A layout older than the previous one, or newer than
//! this agent's, is refused by `layout::check` with the fix. The datapath's door
//! (`Datapath::install`) calls [`needed`] and [`migrate`] before it installs anything;
//! this module uses `install`'s steps, never the other way round.
//!
//! Steps, under the pin directory's lock:
//! 1. [`previous`] reads what the old datapath holds: the active policy, the fast path and
//!    mark bits of every attached interface, the drop-event limits.
//! 2. The new maps are made in a staging folder, `<pin dir>/migrating/maps/`, from this
//!    agent's object, and that state is written into them (policy, interfaces, event limits).
//!    Their META says layout 0: "built, counts not carried yet".
//! 3. The new programs are swapped in behind every pinned link (bpf_link_update, one link at
//!    a time): every packet is judged by one whole program with its own maps, old or new.
//! 4. Once no CPU can still be running the old program ([`QUIESCE`], an RCU grace period with
//!    room to spare), the old counters are added, key by key, into the new datapath's
//!    carried counts (`APNS_CNT_CARRIED`, which readers add in): the old maps are quiet by
//!    then, and nothing else writes the carried counts, so no increment races with the copy.
//!    The staging META then says this agent's layout: "ready to commit".
//! 5. Commit: the old map pins are replaced by the new ones (META last), the link pins are
//!    renamed to this layout's naming, and the staging folder goes.
//!
//! Interrupted (kill -9), the next agent finds: before step 4, the old META and maps intact
//! and the staging maps (some links may already run the new program on them): it runs the
//! migration again on the same staging maps, so counts made there meanwhile are kept; after
//! step 4, a staging META of this layout: it only commits. A staging folder whose maps
//! already were committed (killed before it was removed) is removed.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{bail, Context as _};
use apns_common::{
    counters::{CounterKey, CounterValue},
    events::EventConfig,
    maps::META,
    LAYOUT_VERSION,
};

use super::{
    counters::CounterMaps,
    events::EventMaps,
    install,
    interfaces::{FastPath, InterfaceMaps, MarkBits},
    layout::{self, open_pinned_map},
    links,
    object::EbpfLog,
    pins::PinDir,
    policy::Policy,
    policy_maps::PolicyMaps,
};

/// How long the migration waits after the last link swap before it reads the old counters:
/// bpf_link_update publishes the new program with RCU, so a CPU may finish a run of the old
/// one just after; an RCU grace period takes milliseconds.
const QUIESCE: Duration = Duration::from_millis(100);

/// What a datapath holds, whatever its layout: what a migration carries across besides the
/// counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents {
    pub policy: Policy,
    /// Every attached interface: ifindex, fast path, mark bits.
    pub interfaces: Vec<(u32, FastPath, MarkBits)>,
    pub events: EventConfig,
}

/// The staging pin directory of a migration of `pins`.
pub fn staging(pins: &PinDir) -> PinDir {
    PinDir::new(pins.root().join(super::pins::STAGING))
}

/// Whether the datapath pinned in `pins` needs (the rest of) a migration: the layout version
/// it migrates from. Removes the leftover of a migration that had committed.
pub fn needed(pins: &PinDir) -> anyhow::Result<Option<u32>> {
    let staging = staging(pins);
    if !pins.is_loaded() {
        return Ok(None);
    }
    // No readable META: not a datapath this agent knows; `layout::check` says what it is.
    let Ok(meta) = layout::read_meta(pins) else {
        return Ok(None);
    };
    let version = meta.layout_version;
    if version == LAYOUT_VERSION {
        if staging.root().exists() {
            staging.remove_all()?;
        }
        return Ok(None);
    }
    let interrupted = staging.map(META).exists();
    Ok((version == previous::VERSION || interrupted).then_some(version))
}

/// Migrates the datapath pinned in `pins` to this agent's layout; see the module
/// documentation. The caller holds the pin directory's lock.
pub fn migrate(
    pins: &PinDir,
    object: &[u8],
    log: Option<EbpfLog>,
    connections: u32,
) -> anyhow::Result<()> {
    let staging = staging(pins);
    let staged =
        staging.map(META).exists() && layout::read_meta(&staging)?.layout_version == LAYOUT_VERSION;
    if !staged {
        let log = log.unwrap_or(layout::ebpf_log(pins)?);
        carry_over(pins, &staging, object, log, connections).with_context(|| {
            format!(
                "migrating the datapath pinned at {} from map layout {} to {LAYOUT_VERSION} (the old datapath keeps running; `apns-agent run` again retries)",
                pins.root().display(),
                previous::VERSION
            )
        })?;
    }
    commit(pins, &staging).with_context(|| {
        format!(
            "committing the migration of {} (`apns-agent run` again finishes it)",
            pins.root().display()
        )
    })?;
    tracing::info!(
        pin_dir = %pins.root().display(),
        "migrated the datapath from map layout {} to {LAYOUT_VERSION}",
        previous::VERSION
    );
    Ok(())
}

/// Steps 1 to 4.
fn carry_over(
    pins: &PinDir,
    staging: &PinDir,
    object: &[u8],
    log: EbpfLog,
    connections: u32,
) -> anyhow::Result<()> {
    let contents = previous::contents(pins)?;
    staging.prepare()?;
    // Layout 0 in the staging META until the counts are carried.
    let mut ebpf = install::load(staging, object, log, 0, connections)?;
    {
        let open = |name: &'static str| open_pinned_map(staging, name);
        let mut interfaces = InterfaceMaps::open(open)?;
        for &(ifindex, fastpath, mark) in &contents.interfaces {
            interfaces.register(ifindex, fastpath)?;
            interfaces.set_fastpath(ifindex, fastpath, Some(mark))?;
        }
        PolicyMaps::open(open)?.apply(&contents.policy)?;
        EventMaps::open(open)?.set_config(contents.events)?;
    }
    install::load_programs(&mut ebpf)?;
    install::swap_programs(&mut ebpf, pins)?;
    std::thread::sleep(QUIESCE);
    let old = previous::counters(pins)?;
    CounterMaps::open(|name| open_pinned_map(staging, name))?.carry(&old)?;
    install::stamp(&mut ebpf, LAYOUT_VERSION, log)
}

/// Step 5: the staging pins take the old ones' places, META last.
fn commit(pins: &PinDir, staging: &PinDir) -> anyhow::Result<()> {
    for name in apns_common::maps::RETIRED {
        remove_pin(&pins.map(name))?;
    }
    for layout in apns_common::maps::ALL {
        let from = staging.map(layout.name);
        if !from.exists() {
            continue;
        }
        let to = pins.map(layout.name);
        remove_pin(&to)?;
        std::fs::rename(&from, &to)
            .with_context(|| format!("moving {} to {}", from.display(), to.display()))?;
    }
    for link in pins.links()? {
        if link.ifindex.is_some() {
            continue;
        }
        let Some(ifindex) = links::facts(&link)
            .map(|facts| facts.ifindex)
            .filter(|&i| i != 0)
        else {
            continue;
        };
        let to = pins.link(&link.interface, ifindex, link.mode);
        std::fs::rename(&link.path, &to)
            .with_context(|| format!("renaming link pin {}", link.path.display()))?;
    }
    staging.remove_all()
}

fn remove_pin(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing pin {}", path.display())),
    }
}

/// The previous map layout: version 2, the first release (git 56726c8). Its map types are
/// restated here (they left apns-common with layout 3); this module reads them, nothing else
/// does, and it is rewritten to read layout 3 when layout 4 comes.
pub mod previous {
    use std::collections::BTreeSet;

    use apns_common::policy::{PrefixV4, PrefixV6, GENERATION_PREFIX_BITS};
    use aya::maps::{lpm_trie::LpmTrie, Array, HashMap, MapData, PerCpuHashMap};
    use ipnet::{IpNet, Ipv4Net, Ipv6Net};

    use super::*;

    /// The layout this module reads.
    pub const VERSION: u32 = apns_common::PREVIOUS_LAYOUT_VERSION;

    /// `Array<u8>` of role bits by `generation * 65,536 + port` (retired with this layout).
    pub const PORTS: &str = apns_common::maps::RETIRED[0];
    /// Ports per generation in [`PORTS`].
    const PORTS_PER_GENERATION: u32 = 1 << 16;

    /// `APNS_POLICY`'s value in layout 2.
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    struct PolicyConfig {
        mode: u32,
        provider_prefixes: u32,
        port_count: u32,
        _pad: u32,
        ports: [u16; 64],
    }
    const _: () = assert!(size_of::<PolicyConfig>() == 144);

    /// `APNS_IFACES`'s value in layout 2 (a hash by ifindex then).
    #[repr(C)]
    #[derive(Clone, Copy, Debug)]
    struct IfaceConfig {
        fastpath: u32,
        mark: u32,
        mark_mask: u32,
        _pad: u32,
    }

    // SAFETY: plain #[repr(C)] integers, every bit pattern valid, no padding but the
    // explicit fields.
    unsafe impl aya::Pod for PolicyConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for IfaceConfig {}

    /// The prefixes `net` keeps of the layout-2 trie `name`: it gets each key's data and prefix
    /// length (the generation's bits taken off) and answers `None` for another generation's.
    fn prefixes_of<K: aya::Pod>(
        pins: &PinDir,
        name: &str,
        net: impl Fn(K, u8) -> anyhow::Result<Option<IpNet>>,
    ) -> anyhow::Result<BTreeSet<IpNet>> {
        let trie: LpmTrie<MapData, K, u8> = open(pins, name)?;
        let mut nets = BTreeSet::new();
        for key in trie.keys() {
            let key = key.with_context(|| format!("listing {name}"))?;
            let len = (key.prefix_len() - GENERATION_PREFIX_BITS) as u8;
            nets.extend(net(key.data(), len)?);
        }
        Ok(nets)
    }

    fn open<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
        pins: &PinDir,
        name: &str,
    ) -> anyhow::Result<T> {
        T::try_from(open_pinned_map(pins, name)?).with_context(|| {
            format!("layout-{VERSION} map {name} has an unexpected type or layout")
        })
    }

    /// The active policy, the attached interfaces and the event limits of the layout-2
    /// datapath pinned in `pins`.
    pub fn contents(pins: &PinDir) -> anyhow::Result<Contents> {
        let active: Array<MapData, u32> = open(pins, "APNS_ACTIVE")?;
        let generation = active.get(&0, 0).context("reading APNS_ACTIVE")? & 1;
        let configs: Array<MapData, PolicyConfig> = open(pins, "APNS_POLICY")?;
        let config = configs.get(&generation, 0).context("reading APNS_POLICY")?;
        if config.port_count as usize > config.ports.len() {
            bail!(
                "generation {generation} of layout-{VERSION} APNS_POLICY is incomplete (port count {})",
                config.port_count
            );
        }
        let roles: Array<MapData, u8> = open(pins, PORTS)?;
        let mut ports = BTreeMap::new();
        for &port in &config.ports[..config.port_count as usize] {
            let index = generation * PORTS_PER_GENERATION + u32::from(port);
            ports.insert(port, roles.get(&index, 0).context("reading APNS_PORTS")?);
        }
        let v4 = |name| {
            prefixes_of(pins, name, |data: PrefixV4, len| {
                Ok((u32::from(data.generation) == generation)
                    .then_some(IpNet::V4(Ipv4Net::new(data.addr.into(), len)?)))
            })
        };
        let v6 = |name| {
            prefixes_of(pins, name, |data: PrefixV6, len| {
                Ok((u32::from(data.generation) == generation)
                    .then_some(IpNet::V6(Ipv6Net::new(data.addr.into(), len)?)))
            })
        };
        let mut allow = v4("APNS_ALLOW_V4")?;
        allow.extend(v6("APNS_ALLOW_V6")?);
        let mut providers = v4("APNS_PROV_V4")?;
        providers.extend(v6("APNS_PROV_V6")?);
        let policy = Policy {
            mode: super::super::policy::Mode::from_code(config.mode).with_context(|| {
                format!("layout-{VERSION} APNS_POLICY: unknown mode {}", config.mode)
            })?,
            ports,
            allow,
            providers,
        };

        let ifaces: HashMap<MapData, u32, IfaceConfig> = open(pins, "APNS_IFACES")?;
        let mut interfaces = Vec::new();
        for link in pins.links()? {
            let Some(ifindex) = links::facts(&link).map(|f| f.ifindex).filter(|&i| i != 0) else {
                continue;
            };
            let (fastpath, mark) = match ifaces.get(&ifindex, 0) {
                Ok(entry) => (
                    FastPath::from_code(entry.fastpath).unwrap_or_default(),
                    MarkBits {
                        value: entry.mark,
                        mask: entry.mark_mask,
                    },
                ),
                Err(_) => (FastPath::Pass, MarkBits::default()),
            };
            let mark = if mark.validate().is_ok() {
                mark
            } else {
                MarkBits::default()
            };
            interfaces.push((ifindex, fastpath, mark));
        }
        let events: Array<MapData, EventConfig> = open(pins, "APNS_EVENT_CFG")?;
        Ok(Contents {
            policy,
            interfaces,
            events: events.get(&0, 0).context("reading APNS_EVENT_CFG")?,
        })
    }

    /// Every counter of the layout-2 datapath pinned in `pins`, summed over CPUs.
    pub fn counters(pins: &PinDir) -> anyhow::Result<BTreeMap<CounterKey, CounterValue>> {
        let map: PerCpuHashMap<MapData, CounterKey, CounterValue> = open(pins, "APNS_COUNTERS")?;
        let mut totals = BTreeMap::new();
        for entry in map.iter() {
            let (key, per_cpu) = entry.context("reading layout-2 APNS_COUNTERS")?;
            let total: &mut CounterValue = totals.entry(key).or_default();
            for value in per_cpu.iter() {
                total.add(value);
            }
        }
        Ok(totals)
    }
}
