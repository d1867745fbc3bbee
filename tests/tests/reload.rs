//! SIGHUP makes `apns-agent run` re-read its config and apply it as a whole; a bad file is
//! refused and the running policy stays exactly as it was. Needs root.

use std::time::{Duration, Instant};

use apns_agent::{config::Config, pinned::Datapath, policy::Policy};
use apns_tests::{
    agent::{spawn_run, TestPins},
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT, GW_IF_MDM, GW_IF_WAN, OTHER},
};
use nix::{sys::signal::Signal, unistd::Pid};

const REFUSED: Duration = Duration::from_millis(600);

fn live_policy(pins: &TestPins) -> Policy {
    Datapath::open(pins.dir())
        .unwrap()
        .policy
        .read_active()
        .unwrap()
}

fn wait_for_policy(pins: &TestPins, expected: &Policy) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while live_policy(pins) != *expected {
        assert!(
            Instant::now() < deadline,
            "the reloaded policy never came into force"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_applies_a_new_config_and_refuses_a_bad_one() {
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let file = std::env::temp_dir().join(format!("{}-config.toml", lab.id()));
    let write = |text: &str| std::fs::write(&file, text).unwrap();
    let interfaces = |names: &[&str]| {
        format!(
            "interfaces = [{}]\n",
            names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    write(&(interfaces(&[GW_IF_CLIENT.name, GW_IF_WAN.name]) + "mode = \"monitor\"\n"));
    let config_arg = file.display().to_string();
    let agent = spawn_run(&lab, &pins, &["run", "--config", &config_arg]).unwrap();
    let hangup =
        || nix::sys::signal::kill(Pid::from_raw(agent.id() as i32), Signal::SIGHUP).unwrap();
    let other = OTHER.socket(false, 5223);
    lab.echo(Role::Client, other, b"x", Duration::from_secs(5))
        .unwrap();

    // Enforce, and a third interface.
    let enforcing =
        interfaces(&[GW_IF_CLIENT.name, GW_IF_MDM.name, GW_IF_WAN.name]) + "mode = \"enforce\"\n";
    write(&enforcing);
    hangup();
    let expected = Config::parse(&enforcing).unwrap().policy;
    wait_for_policy(&pins, &expected);
    assert!(
        lab.connect(Role::Client, other, REFUSED).is_err(),
        "enforce mode drops the pinhole use"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pins.dir().link_of(GW_IF_MDM.name).unwrap().is_none() {
        assert!(Instant::now() < deadline, "lan1 was not attached on reload");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A file with an error: refused, nothing changes, the agent keeps running.
    write(&(interfaces(&[GW_IF_CLIENT.name]) + "mode = \"monitor\"\nallow = [\"17.1.0.0/8\"]\n"));
    let before = (live_policy(&pins), pins.dir().links().unwrap());
    hangup();
    // Nothing observable happens on a refused reload; give the agent time to (not) act.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!((live_policy(&pins), pins.dir().links().unwrap()), before);
    assert!(
        lab.connect(Role::Client, other, REFUSED).is_err(),
        "still enforcing"
    );

    // Dropping an interface from the config detaches it.
    let fewer = interfaces(&[GW_IF_CLIENT.name, GW_IF_WAN.name]) + "mode = \"enforce\"\n";
    write(&fewer);
    hangup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pins.dir().link_of(GW_IF_MDM.name).unwrap().is_some() {
        assert!(Instant::now() < deadline, "lan1 was not detached on reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(agent);
    std::fs::remove_file(&file).unwrap();
}
