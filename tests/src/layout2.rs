//! The previous release's datapath (map layout 2), from its object kept as a fixture
//! (`tests/fixtures/apns-layout2.o`, see its README): loaded with Apple's default policy
//! written into its maps the way that release's agent wrote them, either unpinned (for
//! BPF_PROG_TEST_RUN) or pinned and attached as that release's `apns-agent attach` left it
//! (for the migration tests).

use anyhow::{Context as _, Result};
use apns_agent::datapath::{
    interfaces::MarkBits,
    links,
    pins::{AttachMode, PinDir},
    policy::{APPLE_V4, APPLE_V6, DEFAULT_PORTS},
};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, DevMapHash, HashMap,
    },
    programs::{links::FdLink, SchedClassifier, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/apns-layout2.o");

/// Every map of layout 2, by name.
pub const MAPS: [&str; 15] = [
    "APNS_ACTIVE",
    "APNS_POLICY",
    "APNS_PORTS",
    "APNS_ALLOW_V4",
    "APNS_ALLOW_V6",
    "APNS_PROV_V4",
    "APNS_PROV_V6",
    "APNS_COUNTERS",
    "APNS_CNT_LOST",
    "APNS_EVENTS",
    "APNS_EVENT_CFG",
    "APNS_EVENT_ST",
    "APNS_IFACES",
    "APNS_TX_PORTS",
    "APNS_META",
];

/// Loads the layout-2 object, its maps pinned in `pins` if given, with Apple's default
/// policy in generation 0 (active, monitor mode), META saying layout 2 and log level 0, the
/// default event limits, and its XDP and TC programs loaded.
pub fn load(pins: Option<&PinDir>) -> Result<Ebpf> {
    let object = std::fs::read(FIXTURE).with_context(|| format!("reading {FIXTURE}"))?;
    let off = 0u8;
    let mut loader = EbpfLoader::new();
    loader.override_global("AYA_LOG_LEVEL", &off, true);
    let paths: Vec<_> = MAPS
        .iter()
        .filter_map(|name| Some((*name, pins?.map(name))))
        .collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(&object)
        .context("loading the layout-2 object")?;
    let mut map = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("no map {name} in the fixture"))
    };
    // Layout 2: one role byte per (generation, port); the policy config lists the ports.
    let mut ports: Array<_, u8> = Array::try_from(map("APNS_PORTS")?)?;
    let mut config = [0u8; 144];
    config[8..12].copy_from_slice(&(DEFAULT_PORTS.len() as u32).to_ne_bytes());
    for (index, (port, roles)) in DEFAULT_PORTS.into_iter().enumerate() {
        ports.set(u32::from(port), roles, 0)?;
        config[16 + 2 * index..18 + 2 * index].copy_from_slice(&port.to_ne_bytes());
    }
    let mut configs: Array<_, [u8; 144]> = Array::try_from(map("APNS_POLICY")?)?;
    configs.set(0, config, 0)?;
    // Tries keyed by a generation byte and the address.
    let mut v4: LpmTrie<_, [u8; 5], u8> = LpmTrie::try_from(map("APNS_ALLOW_V4")?)?;
    for prefix in APPLE_V4 {
        let net: ipnet::Ipv4Net = prefix.parse()?;
        let mut key = [0u8; 5];
        key[1..].copy_from_slice(&net.network().octets());
        v4.insert(&Key::new(8 + u32::from(net.prefix_len()), key), 1, 0)?;
    }
    let mut v6: LpmTrie<_, [u8; 17], u8> = LpmTrie::try_from(map("APNS_ALLOW_V6")?)?;
    for prefix in APPLE_V6 {
        let net: ipnet::Ipv6Net = prefix.parse()?;
        let mut key = [0u8; 17];
        key[1..].copy_from_slice(&net.network().octets());
        v6.insert(&Key::new(8 + u32::from(net.prefix_len()), key), 1, 0)?;
    }
    let mut events: Array<_, [u32; 2]> = Array::try_from(map("APNS_EVENT_CFG")?)?;
    events.set(0, [100, 1], 0)?;
    let mut meta: Array<_, [u32; 2]> = Array::try_from(map("APNS_META")?)?;
    meta.set(0, [2, 0], 0)?;
    let xdp: &mut Xdp = ebpf
        .program_mut("apns_xdp")
        .context("no apns_xdp")?
        .try_into()?;
    xdp.load().context("loading the layout-2 XDP program")?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut("apns_tc_mark")
        .context("no apns_tc_mark")?
        .try_into()?;
    tc.load().context("loading the layout-2 TC program")?;
    Ok(ebpf)
}

/// Why the layout-2 datapath cannot run on this kernel, if it cannot: the line of the
/// verifier's log that refuses its programs. That release assumed what the kernels it ran
/// on had (`bpf_xdp_adjust_meta` in XDP, BPF atomics of 5.12+, ...); on a kernel without them
/// it never ran, and there is nothing to migrate from.
pub fn refused_here() -> Option<String> {
    let err = load(None).err()?;
    let refusal =
        err.chain().find_map(
            |cause| match cause.downcast_ref::<aya::programs::ProgramError>() {
                Some(aya::programs::ProgramError::LoadError { verifier_log, .. }) => Some(
                    apns_agent::datapath::object::refusal_line(&verifier_log.to_string())
                        .to_owned(),
                ),
                _ => None,
            },
        );
    Some(refusal.unwrap_or_else(|| format!("{err:#}")))
}

/// Registers `ifindex` in the layout-2 interface maps of `ebpf` with the `pass` fast path
/// and the default mark bits, as that release's attach did. Must run in the interface's
/// network namespace (the devmap resolves it there).
pub fn register(ebpf: &mut Ebpf, ifindex: u32) -> Result<()> {
    let mark = MarkBits::default();
    let mut ifaces: HashMap<_, u32, [u32; 4]> =
        HashMap::try_from(ebpf.map_mut("APNS_IFACES").context("no APNS_IFACES")?)?;
    ifaces.insert(ifindex, [0, mark.value, mark.mask, 0], 0)?;
    let mut tx: DevMapHash<_> =
        DevMapHash::try_from(ebpf.map_mut("APNS_TX_PORTS").context("no APNS_TX_PORTS")?)?;
    tx.insert(ifindex, ifindex, None, 0)?;
    Ok(())
}

/// What that release's `apns-agent attach IFACE...` left in `pins`: the maps, the XDP and
/// TC programs pinned, and each interface attached (native mode) with its link pinned under
/// that release's name, `links/<interface>:native`. Runs in the caller's network namespace.
pub fn install(pins: &PinDir, interfaces: &[&str]) -> Result<()> {
    pins.prepare()?;
    let mut ebpf = load(Some(pins))?;
    for interface in interfaces {
        register(&mut ebpf, links::ifindex(interface)?)?;
    }
    let tc: &mut SchedClassifier = ebpf
        .program_mut("apns_tc_mark")
        .context("no apns_tc_mark")?
        .try_into()?;
    tc.pin(pins.tc_program())?;
    let xdp: &mut Xdp = ebpf
        .program_mut("apns_xdp")
        .context("no apns_xdp")?
        .try_into()?;
    xdp.pin(pins.program())?;
    for interface in interfaces {
        let id = xdp.attach(interface, XdpMode::Driver)?;
        let link: FdLink = xdp.take_link(id)?.try_into()?;
        let path = pins
            .links_dir()
            .join(format!("{interface}:{}", AttachMode::Native.as_str()));
        link.pin(&path)
            .with_context(|| format!("pinning {}", path.display()))?;
    }
    Ok(())
}
