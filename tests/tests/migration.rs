//! An agent of this release started over the previous release's datapath (map layout 2,
//! from its object kept as a fixture) migrates it in place with traffic flowing: the flow
//! never stalls, every packet is counted exactly once across the migration (checked against
//! the peers' own packet counters), the policy and interfaces carry over, and no pin of the
//! old layout remains. Needs root.

use std::{collections::BTreeMap, time::Duration};

use apns_agent::datapath::{migrate, policy::Policy, Datapath};
use apns_common::counters::{Direction, Outcome};
use apns_tests::{
    agent::{self, spawn_run, TestPins},
    lab::{Lab, LabOptions, LinkStats, Role, APPLE, CLIENT_IF, GW_IF_CLIENT, GW_IF_WAN, ISP_IF_GW},
    layout2,
};

/// How long one connection or wait may take (longer in the kernel matrix's guests).
fn timeout() -> Duration {
    Duration::from_secs(5) * apns_tests::time_scale()
}

const QUIET: Duration = Duration::from_millis(300);
/// Messages of the long-lived flow, one every few milliseconds: a few seconds of traffic,
/// the migration in the middle.
const MESSAGES: usize = 600;

/// [`MESSAGES`], times the square of [`apns_tests::time_scale`]: in the kernel matrix's guests
/// the migration loads and verifies programs, which their emulated CPUs slow down far more than
/// the rest (the flow must outlast it).
fn messages() -> usize {
    let scale = apns_tests::time_scale() as usize;
    MESSAGES * scale * scale
}

/// The peers' transmit counters and what the layout-2 datapath counted, read together at a
/// quiet moment: read again until neither peer sent anything while the counters were read.
fn baseline(lab: &Lab, pins: &TestPins) -> (LinkStats, LinkStats, BTreeMap<u32, u64>) {
    loop {
        lab.wait_quiet(Role::Client, CLIENT_IF.name, QUIET, timeout())
            .unwrap();
        lab.wait_quiet(Role::Isp, ISP_IF_GW.name, QUIET, timeout())
            .unwrap();
        let stats = || {
            (
                lab.link_stats(Role::Client, CLIENT_IF.name).unwrap(),
                lab.link_stats(Role::Isp, ISP_IF_GW.name).unwrap(),
            )
        };
        let before = stats();
        let counted = layout2_counted(pins);
        if stats() == before {
            return (before.0, before.1, counted);
        }
    }
}

/// Packets the layout-2 datapath pinned in `pins` counted, per ifindex.
fn layout2_counted(pins: &TestPins) -> BTreeMap<u32, u64> {
    let mut counted = BTreeMap::new();
    for (key, value) in migrate::previous::counters(pins.dir()).unwrap() {
        *counted.entry(key.ifindex).or_default() += value.packets;
    }
    counted
}

#[test]
fn a_new_agent_migrates_the_previous_releases_datapath_under_a_live_flow() {
    apns_tests::require_root!();
    if let Some(refusal) = layout2::refused_here() {
        eprintln!("skipped: the previous release's datapath cannot run on this kernel, so there is nothing to migrate from (its verifier refusal: {refusal})");
        return;
    }
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let (lan0, wan0) = (GW_IF_CLIENT.name, GW_IF_WAN.name);
    lab.in_ns(Role::Gw, || layout2::install(pins.dir(), &[lan0, wan0]))
        .unwrap()
        .unwrap();
    let lan = agent::gw_ifindex(&lab, lan0).unwrap();
    let wan = agent::gw_ifindex(&lab, wan0).unwrap();
    // The baseline, once the old datapath runs: what the peers had sent and what the old
    // datapath had counted (the lab's hosts send a few neighbour discovery packets of their
    // own at start; those before the attach were never seen).
    let (client_before, isp_before, counted_before) = baseline(&lab, &pins);

    // One long-lived APNs connection; every message must come back whole, on time.
    let flow = lab
        .echo_flow(
            Role::Client,
            APPLE.socket(false, 5223),
            messages(),
            Duration::from_millis(5),
            timeout(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = spawn_run(&lab, &pins, &["run", "--iface", lan0, "--iface", wan0]).unwrap();
    agent
        .wait_for_log("migrated the datapath from map layout 2 to 3", timeout())
        .unwrap();
    assert!(
        !flow.is_finished(),
        "the flow ended before the migration: make it longer"
    );
    assert_eq!(flow.join().unwrap(), messages(), "the flow stalled");

    // Nothing of the old layout is left: the layout check passes, the retired map and the
    // staging folder are gone, link pins have this layout's names.
    let datapath = Datapath::open(pins.dir()).unwrap();
    assert!(!pins.dir().map("APNS_PORTS").exists());
    assert!(!pins.dir().root().join("migrating").exists());
    let links = pins.dir().links().unwrap();
    assert_eq!(links.len(), 2);
    for link in &links {
        assert!(
            link.ifindex.is_some(),
            "{} has the old name",
            link.path.display()
        );
    }
    assert_eq!(
        datapath.policy.read_active().unwrap(),
        Policy::apple_defaults()
    );
    let live = datapath.live().unwrap();
    assert_eq!(
        live.interfaces.keys().collect::<Vec<_>>(),
        [lan0, wan0],
        "{live:?}"
    );

    // Every packet that entered lan0 and wan0, before, during and after the migration, is
    // counted exactly once: the peers' transmit counters say how many there were.
    drop(agent.stop(timeout()));
    let client_after = lab
        .wait_quiet(Role::Client, CLIENT_IF.name, QUIET, timeout())
        .unwrap();
    let isp_after = lab
        .wait_quiet(Role::Isp, ISP_IF_GW.name, QUIET, timeout())
        .unwrap();
    let snapshot = datapath.counters.snapshot().unwrap();
    let counted = |ifindex: u32| -> u64 {
        snapshot
            .entries
            .iter()
            .filter(|(key, _)| key.ifindex == ifindex)
            .map(|(_, value)| value.packets)
            .sum()
    };
    let before = |ifindex| counted_before.get(&ifindex).copied().unwrap_or(0);
    assert_eq!(
        counted(lan) - before(lan),
        client_after.tx_packets - client_before.tx_packets,
        "lan0: {snapshot:?}"
    );
    assert_eq!(
        counted(wan) - before(wan),
        isp_after.tx_packets - isp_before.tx_packets,
        "wan0: {snapshot:?}"
    );
    let syn = snapshot.get(&agent::counter_key(
        lan,
        Direction::Outbound,
        5223,
        Outcome::Pass,
    ));
    let synack = snapshot.get(&agent::counter_key(
        wan,
        Direction::Inbound,
        5223,
        Outcome::Pass,
    ));
    assert_eq!((syn.syn, synack.synack), (1, 1), "one connection");
    assert!(syn.packets >= messages() as u64);

    // A layout the agent cannot migrate from (older than the previous, or newer) is refused
    // with the fix, and nothing is touched.
    let meta_path = pins.dir().map(apns_common::maps::META);
    let set_version = |version: u32| {
        let data = aya::maps::MapData::from_pin(&meta_path).unwrap();
        let mut meta: aya::maps::Array<_, [u32; 2]> =
            aya::maps::Array::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
        meta.set(0, [version, 0], 0).unwrap();
    };
    for version in [1, 4] {
        set_version(version);
        let output = agent::fail(&mut agent::gw_command(
            &lab,
            &pins,
            &["run", "--iface", lan0],
        ))
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("map layout version {version}"))
                && stderr.contains("migrates only from 2")
                && stderr.contains("apns-agent unload"),
            "{stderr}"
        );
    }
    set_version(3);
}
