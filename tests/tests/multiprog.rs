//! Sharing an interface with Debian's xdp-filter through libxdp's multiprog dispatcher
//! (docs/multiprog.md): whichever comes first, both run, each doing its job (xdp-filter's
//! drop rule drops, our counters count APNs exactly), `xdp-loader status` lists both, and
//! either can leave without disturbing the other; a killed agent's component keeps running
//! and the next agent adopts it as it is; an upgrade replaces only our component; a
//! component taken out by another tool is reported, and `detach` clears its record; a plain program on the interface is still refused;
//! a shared interface refuses the fast paths that need XDP metadata.
//!
//! Needs root and a kernel that loads extension programs: the kernel matrix's Debian kernels
//! do; this project's host kernel refuses them (xdp-filter falls back to a plain program
//! there), and the tests say so and stop.

use std::{net::SocketAddr, time::Duration};

use apns_agent::datapath::multiprog::LIBXDP_DISPATCHER;
use apns_tests::{
    agent::{self, gw_command, status_json, TestPins},
    lab::{run, Lab, LabOptions, Role, APPLE, GW_IF_CLIENT, GW_IF_WAN, OTHER},
    occupants::{on, remove_libxdp_dir, IpLinkOn, XdpFilterOn},
};

const TIMEOUT: Duration = Duration::from_secs(10);
const LAN: &str = GW_IF_CLIENT.name;
const WAN: &str = GW_IF_WAN.name;

/// Set by the kernel matrix (`GUEST_TESTS`) for its kernels, which all load extension
/// programs: there a missing dispatcher fails the test instead of skipping it.
const EXPECT_DISPATCHER: &str = "APNS_EXPECT_MULTIPROG";

/// Whether xdp-filter, just loaded on `interface`, runs through a libxdp dispatcher; prints
/// why the test stops where it does not (a kernel that refuses extension programs), and
/// fails where the kernel matrix says it must.
fn filter_uses_a_dispatcher(lab: &Lab, interface: &str) -> bool {
    let occupants = on(lab, interface).unwrap();
    let dispatched = occupants
        .iter()
        .any(|occupant| occupant.name == LIBXDP_DISPATCHER);
    if !dispatched {
        assert!(
            std::env::var_os(EXPECT_DISPATCHER).is_none(),
            "xdp-filter runs without libxdp's dispatcher ({occupants:?}), where {EXPECT_DISPATCHER} says this kernel loads extension programs"
        );
        eprintln!(
            "skipped: xdp-filter runs without libxdp's dispatcher here ({occupants:?}): this kernel refuses extension programs, so no dispatcher exists to share"
        );
    }
    dispatched
}

/// xdp-filter's drop rule for every packet to the non-Apple host.
fn drop_to_other(lab: &Lab) {
    run(lab.command(Role::Gw, "xdp-filter").args([
        "ip",
        &OTHER.ip(false).to_string(),
        "--mode",
        "dst",
    ]))
    .unwrap();
}

/// The component names `xdp-loader status IFACE` lists, in run order.
fn loader_status(lab: &Lab, interface: &str) -> Vec<String> {
    let status = run(lab
        .command(Role::Gw, "xdp-loader")
        .args(["status", interface]))
    .unwrap();
    status
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("=>"))
        .filter_map(|rest| rest.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

/// SYNs to Apple's port 5223 our datapath counted entering `ifindex`, whatever the outcome:
/// what our component saw. (Packets to other hosts count as `not_apns`, without a port.)
fn syns_seen(pins: &TestPins, ifindex: u32) -> u64 {
    pins.snapshot()
        .unwrap()
        .entries
        .iter()
        .filter(|(key, _)| key.ifindex == ifindex && key.port == 5223)
        .map(|(_, value)| value.syn)
        .sum()
}

/// What `status --json` says of `interface`: its XDP mode and dispatcher slot.
fn shared_status(lab: &Lab, pins: &TestPins, interface: &str) -> (String, serde_json::Value) {
    let status = status_json(lab, pins);
    let entry = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["interface"] == interface)
        .unwrap_or_else(|| panic!("{interface} in {status}"))
        .clone();
    (
        entry["xdp_mode"].as_str().unwrap().to_owned(),
        entry["dispatcher"].clone(),
    )
}

/// The program ids of the dispatcher on `interface` and of its components, in run order.
fn dispatcher_ids(lab: &Lab, interface: &str) -> (u32, Vec<u32>) {
    let occupants = on(lab, interface).unwrap();
    let [dispatcher] = &occupants[..] else {
        panic!("one XDP program on {interface}: {occupants:?}");
    };
    let components = dispatcher
        .dispatcher
        .as_ref()
        .expect("a libxdp dispatcher")
        .components
        .iter()
        .map(|(id, _)| *id)
        .collect();
    (dispatcher.program_id, components)
}

/// `attach --xdp-multiprog always lan0` (skb mode, as xdp-filter here), which must succeed.
fn attach_always(lab: &Lab, pins: &TestPins) {
    agent::succeed(&mut gw_command(lab, pins, &ALWAYS)).unwrap();
}

/// The arguments of `attach` that make the agent a dispatcher component on lan0.
const ALWAYS: [&str; 6] = [
    "attach",
    "--xdp-mode",
    "skb",
    "--xdp-multiprog",
    "always",
    LAN,
];

/// A lab and pin directory of the test's own, lan0's ifindex, and the Apple and non-Apple
/// hosts' 5223.
struct Setup {
    lab: Lab,
    pins: TestPins,
    lan: u32,
    apple: SocketAddr,
    other: SocketAddr,
}

impl Setup {
    fn new() -> Setup {
        let lab = Lab::new(LabOptions::default()).unwrap();
        let lan = agent::gw_ifindex(&lab, LAN).unwrap();
        Setup {
            lab,
            pins: TestPins::new(),
            lan,
            apple: APPLE.socket(false, 5223),
            other: OTHER.socket(false, 5223),
        }
    }
}

#[test]
fn xdp_filter_first_then_the_agent_both_run_and_a_killed_agent_is_adopted() {
    apns_tests::require_root!();
    let Setup {
        lab,
        pins,
        lan,
        apple,
        other,
    } = Setup::new();
    let filter = XdpFilterOn::load(&lab, LAN).unwrap();
    if !filter_uses_a_dispatcher(&lab, LAN) {
        return;
    }
    drop_to_other(&lab);
    let run_args = agent::run_lan_wan(&["--xdp-mode", "skb"]);

    // The agent joins xdp-filter's dispatcher (xdp_multiprog auto) on lan0 and takes wan0,
    // where nothing runs, alone.
    let mut first = agent::spawn_run(&lab, &pins, &run_args).unwrap();
    assert_eq!(
        loader_status(&lab, LAN),
        ["xdpfilt_alw_all", "apns_xdp_libxdp"]
    );
    let (mode, slot) = shared_status(&lab, &pins, LAN);
    assert_eq!(mode, "libxdp");
    assert_eq!(
        (slot["slot"].as_u64(), slot["priority"].as_u64()),
        (Some(1), Some(50))
    );
    assert_eq!(shared_status(&lab, &pins, WAN).0, "skb");
    let doctor = gw_command(&lab, &pins, &["doctor"]).output().unwrap();
    let doctor = String::from_utf8_lossy(&doctor.stdout);
    let proof = doctor
        .lines()
        .find(|line| line.contains("multiprog:"))
        .unwrap_or_else(|| panic!("no multiprog check: {doctor}"));
    assert!(
        proof.starts_with("ok") && proof.contains("loads in libxdp's dispatcher"),
        "{proof}"
    );

    // Each does its job: xdp-filter (priority 10) drops what goes to the other host before
    // we see it; we count every SYN to Apple.
    for _ in 0..5 {
        lab.echo_ok(Role::Client, apple);
    }
    lab.refused(Role::Client, other);
    assert_eq!(syns_seen(&pins, lan), 5);

    // kill -9: both components run on, and the next agent adopts ours as it is: no new
    // dispatcher, no new component, xdp-filter's untouched.
    let before = dispatcher_ids(&lab, LAN);
    first.child_mut().kill().unwrap();
    first.child_mut().wait().unwrap();
    lab.echo_ok(Role::Client, apple);
    lab.refused(Role::Client, other);
    assert_eq!(syns_seen(&pins, lan), 6);
    let mut second = agent::spawn_run(&lab, &pins, &run_args).unwrap();
    lab.echo_ok(Role::Client, apple);
    assert_eq!(syns_seen(&pins, lan), 7);
    assert_eq!(
        dispatcher_ids(&lab, LAN),
        before,
        "the restart changed the dispatcher"
    );
    assert!(second.stop(TIMEOUT).unwrap().success());

    // An upgrade (another eBPF log level reloads the programs the same way): a new
    // dispatcher with a new component of ours, xdp-filter's the same program, counters on.
    let mut third = agent::spawn_run(
        &lab,
        &pins,
        &agent::run_lan_wan(&["--xdp-mode", "skb", "--ebpf-log", "debug"]),
    )
    .unwrap();
    let (dispatcher, components) = dispatcher_ids(&lab, LAN);
    assert_ne!(dispatcher, before.0, "no new dispatcher");
    assert_eq!(components[0], before.1[0], "xdp-filter's program changed");
    assert_ne!(components[1], before.1[1], "our component was not replaced");
    assert_eq!(
        loader_status(&lab, LAN),
        ["xdpfilt_alw_all", "apns_xdp_libxdp"]
    );
    lab.echo_ok(Role::Client, apple);
    lab.refused(Role::Client, other);
    assert_eq!(syns_seen(&pins, lan), 8);
    assert!(third.stop(TIMEOUT).unwrap().success());

    // The agent leaves: xdp-filter alone again, still dropping; our count stops.
    agent::succeed(&mut gw_command(&lab, &pins, &["detach", LAN])).unwrap();
    assert_eq!(loader_status(&lab, LAN), ["xdpfilt_alw_all"]);
    lab.echo_ok(Role::Client, apple);
    lab.refused(Role::Client, other);
    assert_eq!(syns_seen(&pins, lan), 8);
    drop(filter);
    agent::succeed(&mut gw_command(&lab, &pins, &["unload"])).unwrap();
}

#[test]
fn the_agent_first_then_xdp_filter_both_run_and_either_leaves_alone() {
    apns_tests::require_root!();
    let Setup {
        lab,
        pins,
        lan,
        apple,
        other,
    } = Setup::new();

    // Where libxdp's dispatcher cannot run, joining fails before anything is pinned.
    let probe = XdpFilterOn::load(&lab, LAN).unwrap();
    let dispatchers = filter_uses_a_dispatcher(&lab, LAN);
    drop(probe);
    if !dispatchers {
        // There `always` fails on the kernel's refusal of our component, attaching nothing.
        let refused = agent::fail(&mut gw_command(&lab, &pins, &ALWAYS)).unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("apns_xdp_libxdp as an extension of the dispatcher"),
            "{stderr}"
        );
        assert!(
            on(&lab, LAN).unwrap().is_empty(),
            "an XDP program was left on {LAN}"
        );
        assert!(
            pins.dir().links().unwrap().is_empty(),
            "a link pin was left"
        );
        // The agent took libxdp's lock before the kernel refused: its folder, if empty, goes.
        remove_libxdp_dir();
        return;
    }

    // always: a dispatcher of our own, with one component, that libxdp can join.
    attach_always(&lab, &pins);
    assert_eq!(loader_status(&lab, LAN), ["apns_xdp_libxdp"]);
    let filter = XdpFilterOn::load(&lab, LAN).unwrap();
    drop_to_other(&lab);
    assert_eq!(
        loader_status(&lab, LAN),
        ["xdpfilt_alw_all", "apns_xdp_libxdp"]
    );
    for _ in 0..3 {
        lab.echo_ok(Role::Client, apple);
    }
    lab.refused(Role::Client, other);
    assert_eq!(syns_seen(&pins, lan), 3);
    let (mode, slot) = shared_status(&lab, &pins, LAN);
    assert_eq!((mode.as_str(), slot["slot"].as_u64()), ("libxdp", Some(1)));

    // A fast path that needs XDP metadata is refused on a shared interface, changing nothing.
    let refused = agent::fail(&mut gw_command(&lab, &pins, &["fastpath", LAN, "mark"])).unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("is shared with other XDP programs"),
        "{stderr}"
    );
    assert_eq!(
        loader_status(&lab, LAN),
        ["xdpfilt_alw_all", "apns_xdp_libxdp"]
    );

    // A plain program is in the way, whatever xdp_multiprog says.
    {
        let _plain = IpLinkOn::attach(&lab, WAN).unwrap();
        let refused = agent::fail(&mut gw_command(
            &lab,
            &pins,
            &["attach", "--xdp-multiprog", "always", WAN],
        ))
        .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("xdpdump") && stderr.contains("not a libxdp dispatcher"),
            "{stderr}"
        );
        assert_eq!(pins.dir().links().unwrap().len(), 1, "nothing attached");
    }

    // xdp-filter leaves first: its rule with it (the other host answers again), ours runs
    // alone, counting on from where it was.
    drop(filter);
    assert_eq!(loader_status(&lab, LAN), ["apns_xdp_libxdp"]);
    lab.echo_ok(Role::Client, other);
    lab.echo_ok(Role::Client, apple);
    assert_eq!(syns_seen(&pins, lan), 4);

    // Another tool takes every component out: `status` says so, `detach` clears the record,
    // `attach` joins again.
    run(lab
        .command(Role::Gw, "xdp-loader")
        .args(["unload", LAN, "--all"]))
    .unwrap();
    let status = status_json(&lab, &pins);
    let entry = status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["interface"] == LAN)
        .unwrap();
    assert_eq!(
        (entry["state"].as_str(), entry["attached"].as_bool()),
        (Some("left_dispatcher"), Some(false)),
        "{entry}"
    );
    agent::succeed(&mut gw_command(&lab, &pins, &["detach", LAN])).unwrap();
    assert!(pins.dir().links().unwrap().is_empty());
    attach_always(&lab, &pins);
    assert_eq!(loader_status(&lab, LAN), ["apns_xdp_libxdp"]);

    // Back again, then the agent unloads first: xdp-filter keeps running and dropping.
    let filter = XdpFilterOn::load(&lab, LAN).unwrap();
    drop_to_other(&lab);
    assert_eq!(
        loader_status(&lab, LAN),
        ["xdpfilt_alw_all", "apns_xdp_libxdp"]
    );
    agent::succeed(&mut gw_command(&lab, &pins, &["unload"])).unwrap();
    assert_eq!(loader_status(&lab, LAN), ["xdpfilt_alw_all"]);
    assert!(
        !pins.path().exists(),
        "unload left {}",
        pins.path().display()
    );
    lab.echo_ok(Role::Client, apple);
    lab.refused(Role::Client, other);
    drop(filter);
}
