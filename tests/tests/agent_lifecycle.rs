//! The apns-agent binary on a gateway in network namespaces: attach, kill -9, adopt,
//! upgrade under a flow, live policy edits, bad input, unload. Needs root.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use apns_agent::datapath::{
    object::{OBJECT, UPGRADE_PROBE_OBJECT},
    policy::Mode,
    reconcile::Desired,
    status, Datapath, Installed, XdpMode,
};
use apns_common::{
    counters::{Direction, Outcome},
    maps::CONNS_DEFAULT_ENTRIES,
};
use apns_tests::{
    agent::{self, run_lan_wan, TestPins},
    lab::{self, Lab, LabOptions, Role, APPLE, GW_IF_CLIENT, GW_IF_WAN, OTHER},
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn agent_here(pins: &TestPins, args: &[&str]) -> Command {
    let mut cmd = Command::new(agent::binary());
    agent::command(&mut cmd, pins, args);
    cmd
}

/// Waits until `pins` holds a datapath attached to lan0 and wan0 with `mode` in force.
fn wait_attached(pins: &TestPins, mode: Mode) {
    lab::wait_until(
        "the agent to attach and apply its policy",
        Duration::from_secs(30),
        || {
            pins.dir().links().map(|l| l.len() == 2).unwrap_or(false)
                && Datapath::open(pins.dir())
                    .and_then(|d| d.policy.read_active())
                    .map(|p| p.mode == mode)
                    .unwrap_or(false)
        },
    );
}

#[test]
fn kill_9_leaves_the_datapath_enforcing_and_run_adopts_it() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let wan = agent::gw_ifindex(&lab, GW_IF_WAN.name).unwrap();
    let run_args = run_lan_wan(&["--mode", "enforce"]);
    let apple = APPLE.socket(false, 5223);
    let other = OTHER.socket(false, 5223);
    let syns = |pins: &TestPins| {
        let value = pins.counter(lan, Direction::Outbound, 5223, Outcome::Pass);
        value.unwrap().syn
    };
    let synacks = |pins: &TestPins| {
        let value = pins.counter(wan, Direction::Inbound, 5223, Outcome::Pass);
        value.unwrap().synack
    };
    let pinhole_drops = |pins: &TestPins| {
        let value = pins.counter(lan, Direction::None, 5223, Outcome::DropPinhole);
        value.unwrap().packets
    };

    let mut first = agent::spawn_run(&lab, &pins, &run_args).unwrap();
    wait_attached(&pins, Mode::Enforce);
    let program = status::program(pins.dir())
        .unwrap()
        .expect("a pinned program");
    for _ in 0..5 {
        lab.echo_ok(Role::Client, apple);
    }
    lab.refused(Role::Client, other);
    assert_eq!(
        (syns(&pins), synacks(&pins), pinhole_drops(&pins)),
        (5, 5, 1)
    );

    // kill -9: nothing runs in user space any more, the datapath goes on.
    first.child_mut().kill().unwrap();
    first.child_mut().wait().unwrap();
    assert_eq!(pins.dir().links().unwrap().len(), 2, "links stay pinned");
    for _ in 0..3 {
        lab.echo_ok(Role::Client, apple);
    }
    lab.refused(Role::Client, other);
    assert_eq!(
        (syns(&pins), synacks(&pins), pinhole_drops(&pins)),
        (8, 8, 2)
    );

    // A new agent adopts the running datapath: same program, counters intact.
    let mut second = agent::spawn_run(&lab, &pins, &run_args).unwrap();
    wait_attached(&pins, Mode::Enforce);
    assert_eq!(
        status::program(pins.dir()).unwrap(),
        Some(program),
        "the program was adopted, not reloaded"
    );
    assert_eq!(
        (syns(&pins), synacks(&pins), pinhole_drops(&pins)),
        (8, 8, 2)
    );
    lab.echo_ok(Role::Client, apple);
    assert_eq!(syns(&pins), 9);

    // SIGTERM: the agent exits cleanly and leaves the datapath attached (fail-static).
    let status = second.stop(TIMEOUT).unwrap();
    assert!(
        status.success(),
        "agent exit status after SIGTERM: {status}"
    );
    assert_eq!(pins.dir().links().unwrap().len(), 2);
    lab.refused(Role::Client, other);
    assert_eq!(pinhole_drops(&pins), 3);
}

#[test]
fn detach_on_exit_detaches_what_run_attached() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let mut agent = agent::spawn_run(&lab, &pins, &run_lan_wan(&["--detach-on-exit"])).unwrap();
    wait_attached(&pins, Mode::Monitor);
    assert!(agent.stop(TIMEOUT).unwrap().success());
    assert!(
        pins.dir().links().unwrap().is_empty(),
        "links left after --detach-on-exit"
    );
}

#[test]
fn upgrade_under_a_flow_loses_no_packet_and_no_counter() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    pins.dir().prepare().unwrap();
    let lock = pins.dir().lock().unwrap();
    let (mut datapath, installed) =
        Datapath::install(pins.dir(), &lock, None, CONNS_DEFAULT_ENTRIES).unwrap();
    assert_eq!(installed, Installed::Fresh);
    let mut desired: Desired = datapath.live().unwrap();
    desired.xdp_mode = XdpMode::Auto;
    for iface in [GW_IF_CLIENT.name, GW_IF_WAN.name] {
        desired
            .interfaces
            .insert(iface.to_owned(), Default::default());
    }
    lab.in_ns(Role::Gw, || datapath.reconcile(&lock, &desired))
        .unwrap()
        .unwrap();
    let tag = || {
        status::program(pins.dir())
            .unwrap()
            .expect("a pinned program")
            .tag
    };
    let original_tag = tag();

    // One long-lived connection; each message must come back whole while programs swap. Long
    // enough for several upgrades on a loaded 2-core machine: each loads and verifies the
    // three programs (about half a second when the machine is idle).
    const MESSAGES: usize = 2000;
    let flow = lab
        .echo_flow(
            Role::Client,
            APPLE.socket(false, 5223),
            MESSAGES,
            Duration::from_millis(2),
            TIMEOUT,
        )
        .unwrap();

    let mut previous = pins.snapshot().unwrap();
    let mut upgrades = 0;
    while !flow.is_finished() {
        let object = if upgrades % 2 == 0 {
            UPGRADE_PROBE_OBJECT
        } else {
            OBJECT
        };
        assert_eq!(
            Datapath::install_object(pins.dir(), &lock, object, None)
                .unwrap()
                .1,
            Installed::Upgraded
        );
        upgrades += 1;
        let now = pins.snapshot().unwrap();
        for (key, old) in &previous.entries {
            let new = now.get(key);
            assert!(
                new.packets >= old.packets && new.bytes >= old.bytes,
                "counter {key:?} went back across an upgrade: {old:?} -> {new:?}"
            );
        }
        previous = now;
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(flow.join().unwrap(), MESSAGES, "sent = received");
    assert!(
        upgrades >= 4,
        "only {upgrades} upgrades happened during the flow"
    );
    if upgrades % 2 == 1 {
        Datapath::install_object(pins.dir(), &lock, OBJECT, None).unwrap();
    }
    assert_eq!(tag(), original_tag);
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let outbound = pins.snapshot().unwrap().get(&agent::counter_key(
        lan,
        Direction::Outbound,
        5223,
        Outcome::Pass,
    ));
    assert!(
        outbound.packets >= MESSAGES as u64,
        "outbound packets counted: {outbound:?}"
    );
    assert_eq!(outbound.syn, 1, "one connection");
}

#[test]
fn allow_list_edits_change_the_next_verdict() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    agent::succeed(&mut agent::gw_command(
        &lab,
        &pins,
        &["attach", GW_IF_CLIENT.name, GW_IF_WAN.name],
    ))
    .unwrap();
    agent::succeed(&mut agent_here(&pins, &["mode", "enforce"])).unwrap();
    let other = OTHER.socket(false, 5223);
    lab.refused(Role::Client, other);
    agent::succeed(&mut agent_here(
        &pins,
        &["allow", "add", "203.0.113.128/25"],
    ))
    .unwrap();
    lab.echo_ok(Role::Client, other);
    agent::succeed(&mut agent_here(
        &pins,
        &["allow", "del", "203.0.113.128/25"],
    ))
    .unwrap();
    lab.refused(Role::Client, other);
    let listed = agent::succeed(&mut agent_here(&pins, &["allow", "list"])).unwrap();
    assert!(
        !listed.contains("203.0.113.128/25") && listed.contains("17.0.0.0/8"),
        "{listed}"
    );
}

#[test]
fn unload_leaves_no_pin_link_or_program() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    agent::succeed(&mut agent::gw_command(
        &lab,
        &pins,
        &["attach", GW_IF_CLIENT.name, GW_IF_WAN.name],
    ))
    .unwrap();
    let status =
        agent::succeed(&mut agent::gw_command(&lab, &pins, &["status", "--json"])).unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let program_id = status["program"]["id"].as_u64().unwrap();
    let link_ids: Vec<u64> = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|iface| iface["link_id"].as_u64().unwrap())
        .collect();
    assert_eq!(link_ids.len(), 2);
    agent::succeed(&mut agent_here(&pins, &["unload"])).unwrap();

    assert!(!pins.path().exists(), "pin directory left behind");
    let bpftool = |args: &[&str]| {
        Command::new("bpftool")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert!(
        !bpftool(&["prog", "show", "id", &program_id.to_string()]),
        "program {program_id} still loaded"
    );
    for id in link_ids {
        assert!(
            !bpftool(&["link", "show", "id", &id.to_string()]),
            "link {id} still exists"
        );
    }
    let links = apns_tests::lab::run(Command::new("ip").args([
        "-n",
        lab.ns_name(Role::Gw),
        "-d",
        "link",
        "show",
    ]))
    .unwrap();
    assert!(
        !links.contains("prog/xdp"),
        "an XDP program is still attached in the gateway:\n{links}"
    );
}

#[test]
fn an_interface_with_a_dot_in_its_name_attaches_and_detaches() {
    apns_tests::require_root!();
    // VLAN interfaces are often named `lan2.100`; bpffs refuses dots in pin names.
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let vlan = apns_tests::lab::GW_IF_VLAN.name;
    assert!(vlan.contains('.'), "{vlan}");
    agent::succeed(&mut agent::gw_command(
        &lab,
        &pins,
        &["attach", vlan, "--xdp-mode", "skb"],
    ))
    .unwrap();
    agent::succeed(&mut agent::gw_command(
        &lab,
        &pins,
        &["fastpath", vlan, "mark"],
    ))
    .unwrap();
    let status =
        agent::succeed(&mut agent::gw_command(&lab, &pins, &["status", "--json"])).unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let interface = &status["interfaces"][0];
    assert_eq!(interface["interface"], vlan, "{status}");
    assert_eq!(interface["state"], "attached", "{status}");
    assert_eq!(interface["fastpath"], "mark", "{status}");
    agent::succeed(&mut agent::gw_command(&lab, &pins, &["detach", vlan])).unwrap();
    assert!(pins.dir().links().unwrap().is_empty());
    assert!(pins.dir().tc_links().unwrap().is_empty());
}
