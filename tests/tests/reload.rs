//! SIGHUP makes `apns-agent run` re-read its config and reconcile the datapath to it: each
//! section of the config in turn (interfaces added and removed, mode, allow-list, providers,
//! ports, fast path pass/mark/redirect, event limits) is changed, and after each reload the
//! live datapath is exactly what the file says. A bad file is refused and changes nothing.
//! Needs root.

use std::time::Duration;

use apns_agent::{
    datapath::{reconcile::Desired, XdpMode},
    settings::config::Config,
};
use apns_tests::{
    agent::{spawn_run, TestPins},
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT, GW_IF_MDM, GW_IF_WAN, OTHER, REFUSED},
};

/// What the datapath must look like for the config `text`.
fn expected(text: &str) -> Desired {
    let config = Config::parse(text).unwrap_or_else(|err| panic!("{err:#}\n{text}"));
    Desired {
        interfaces: config
            .interfaces
            .iter()
            .map(|name| {
                let fastpath = config.fastpath.get(name).copied().unwrap_or_default();
                (name.clone(), fastpath)
            })
            .collect(),
        devices: config
            .interfaces
            .iter()
            .filter(|name| {
                config.roles.get(*name)
                    == Some(&apns_agent::datapath::interfaces::InterfaceRole::Devices)
            })
            .cloned()
            .collect(),
        // The live state does not know how interfaces were attached.
        xdp_mode: XdpMode::Auto,
        sharing: config.sharing,
        mark: config.mark,
        policy: config.policy,
        events: config.events,
    }
}

/// The datapath as `live` reads it, plus which interfaces have the mark path's TC link.
fn live(pins: &TestPins) -> (Desired, Vec<String>) {
    let desired = pins.open().unwrap().live().unwrap();
    let tc = pins
        .dir()
        .tc_links()
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    (desired, tc)
}

#[test]
fn sighup_reconciles_each_config_section_and_refuses_a_bad_file() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let file = std::env::temp_dir().join(format!("{}-config.toml", lab.id()));
    let (lan0, lan1, wan0) = (GW_IF_CLIENT.name, GW_IF_MDM.name, GW_IF_WAN.name);
    let two = format!("interfaces = [\"{lan0}\", \"{wan0}\"]\n");
    let three = format!("interfaces = [\"{lan0}\", \"{lan1}\", \"{wan0}\"]\n");
    // Each step adds to (or changes) the file of the step before.
    let steps: Vec<(&str, String)> = vec![
        ("start", two.clone()),
        ("interface added", three.clone()),
        ("interface removed", two.clone()),
        ("mode", two.clone() + "mode = \"enforce\"\n"),
        (
            "allow-list",
            two.clone()
                + "mode = \"enforce\"\nallow = [\"17.0.0.0/8\", \"2620:149:a44::/48\", \"198.51.100.0/24\"]\n",
        ),
        (
            "providers",
            two.clone()
                + "mode = \"enforce\"\nallow = [\"17.0.0.0/8\", \"2620:149:a44::/48\", \"198.51.100.0/24\"]\nproviders = [\"192.0.2.0/26\"]\n",
        ),
    ];
    let policy = steps.last().unwrap().1.clone();
    let ports =
        "[ports]\n5223 = [\"pinhole\"]\n2197 = [\"pinhole\", \"provider\"]\n8443 = [\"apns\"]\n";
    let mut steps = steps;
    steps.push(("ports", policy.clone() + ports));
    steps.push((
        "fast path mark",
        policy.clone() + ports + &format!("[fastpath]\n{lan0} = \"mark\"\n"),
    ));
    steps.push((
        "fast path redirect",
        policy.clone()
            + ports
            + &format!("[fastpath]\n{lan0} = \"redirect\"\n{wan0} = \"redirect\"\n"),
    ));
    steps.push((
        "fast path pass",
        policy.clone() + ports + &format!("[fastpath]\n{lan0} = \"pass\"\n"),
    ));
    steps.push((
        "event limits",
        policy.clone() + ports + "[events]\nper_cpu_per_second = 7\nsample_every = 3\n",
    ));

    std::fs::write(&file, &steps[0].1).unwrap();
    let config_arg = file.display().to_string();
    let mut agent = spawn_run(&lab, &pins, &["run", "--config", &config_arg]).unwrap();
    let other = OTHER.socket(false, 5223);
    for (section, text) in &steps {
        std::fs::write(&file, text).unwrap();
        agent.reload().unwrap();
        let (desired, tc) = live(&pins);
        assert_eq!(
            desired,
            expected(text),
            "after reloading {section}:\n{text}"
        );
        // The TC program runs on every mark and redirect interface (redirect hands it the
        // packets whose next hop is not resolved yet).
        let with_tc: Vec<String> = desired
            .interfaces
            .iter()
            .filter(|(_, fastpath)| **fastpath != apns_common::fastpath::FastPath::Pass)
            .map(|(name, _)| name.clone())
            .collect();
        assert_eq!(tc, with_tc, "{section}: TC links");
        eprintln!("reload: {section} applied");
    }
    assert!(
        lab.connect(Role::Client, other, REFUSED).is_err(),
        "enforce mode drops the pinhole use"
    );

    // A file with an error: refused, nothing changes, the agent keeps running.
    let before = (live(&pins), pins.dir().links().unwrap());
    std::fs::write(
        &file,
        two + "mode = \"monitor\"\nallow = [\"17.1.0.0/8\"]\n",
    )
    .unwrap();
    agent.reload().unwrap();
    assert_eq!((live(&pins), pins.dir().links().unwrap()), before);
    assert!(
        lab.connect(Role::Client, other, REFUSED).is_err(),
        "still enforcing"
    );
    assert!(agent.wait_timeout(Duration::ZERO).unwrap().is_none());
    drop(agent);
    std::fs::remove_file(&file).unwrap();
}
