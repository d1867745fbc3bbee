//! An agent of this release started over the previous release's datapath (map layout 2,
//! from its object kept as a fixture) migrates it in place with traffic flowing: the flow
//! never stalls, every packet is counted exactly once across the migration (checked against
//! the peers' own packet counters), the policy and interfaces carry over, and no pin of the
//! old layout remains. Needs root.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use apns_agent::datapath::{policy::Policy, Datapath};
use apns_common::counters::{Direction, Outcome};
use apns_tests::{
    agent::{self, spawn_run, TestPins},
    lab::{Lab, LabOptions, Role, APPLE, CLIENT_IF, GW_IF_CLIENT, GW_IF_WAN, ISP_IF_GW},
    layout2,
};

const TIMEOUT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);
/// Messages of the long-lived flow, one every few milliseconds: a few seconds of traffic,
/// the migration in the middle.
const MESSAGES: usize = 600;

#[test]
fn a_new_agent_migrates_the_previous_releases_datapath_under_a_live_flow() {
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let (lan0, wan0) = (GW_IF_CLIENT.name, GW_IF_WAN.name);
    let client_before = lab
        .wait_quiet(Role::Client, CLIENT_IF.name, QUIET, TIMEOUT)
        .unwrap();
    let isp_before = lab
        .wait_quiet(Role::Isp, ISP_IF_GW.name, QUIET, TIMEOUT)
        .unwrap();
    lab.in_ns(Role::Gw, || layout2::install(pins.dir(), &[lan0, wan0]))
        .unwrap()
        .unwrap();

    // One long-lived APNs connection; every message must come back whole, on time.
    let mut stream = lab
        .connect(Role::Client, APPLE.socket(false, 5223), TIMEOUT)
        .unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let flow = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            let message = [(i % 251) as u8; 64];
            stream.write_all(&message).unwrap();
            let mut back = [0u8; 64];
            stream.read_exact(&mut back).unwrap();
            assert_eq!(back, message, "message {i}");
            std::thread::sleep(Duration::from_millis(5));
        }
        MESSAGES
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = spawn_run(&lab, &pins, &["run", "--iface", lan0, "--iface", wan0]).unwrap();
    agent
        .wait_for_log("migrated the datapath from map layout 2 to 3", TIMEOUT)
        .unwrap();
    assert!(
        !flow.is_finished(),
        "the flow ended before the migration: make it longer"
    );
    assert_eq!(flow.join().unwrap(), MESSAGES, "the flow stalled");

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
    drop(agent.stop(TIMEOUT));
    let client_after = lab
        .wait_quiet(Role::Client, CLIENT_IF.name, QUIET, TIMEOUT)
        .unwrap();
    let isp_after = lab
        .wait_quiet(Role::Isp, ISP_IF_GW.name, QUIET, TIMEOUT)
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
    let lan = agent::gw_ifindex(&lab, lan0).unwrap();
    let wan = agent::gw_ifindex(&lab, wan0).unwrap();
    assert_eq!(
        counted(lan),
        client_after.tx_packets - client_before.tx_packets,
        "lan0: {snapshot:?}"
    );
    assert_eq!(
        counted(wan),
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
    assert!(syn.packets >= MESSAGES as u64);

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
