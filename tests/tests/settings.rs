//! Every subcommand resolves its settings the same way: the config's `pin_dir` counts for
//! `attach`, `status`, `stats`, `allow` and `unload` as it does for `run`. Needs root.

use std::process::Command;

use apns_tests::{
    agent::{self, TestPins},
    lab::{Lab, LabOptions, Role, APPLE, GW_IF_CLIENT},
};

#[test]
fn the_configs_pin_dir_counts_for_every_subcommand() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let file = std::env::temp_dir().join(format!("{}-pin-dir.toml", lab.id()));
    std::fs::write(
        &file,
        format!(
            "interfaces = [\"{}\"]\npin_dir = \"{}\"\n",
            GW_IF_CLIENT.name,
            pins.path().display()
        ),
    )
    .unwrap();
    // No --pin-dir anywhere below: only the config says where the datapath lives.
    let agent = |args: &[&str]| -> Command {
        let mut cmd = lab.command(Role::Gw, agent::binary());
        cmd.arg("--config").arg(&file).args(args);
        cmd
    };

    agent::succeed(&mut agent(&["attach", GW_IF_CLIENT.name])).unwrap();
    assert!(
        pins.dir().is_loaded(),
        "attach ignored the config's pin_dir"
    );

    let status = agent::succeed(&mut agent(&["status", "--json"])).unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["pin_dir"], pins.path().display().to_string());
    assert_eq!(status["loaded"], true);
    assert_eq!(status["interfaces"][0]["interface"], GW_IF_CLIENT.name);

    // The same counters as with the pin directory named on the command line (a datapath at
    // the default place, as on a live gateway, would show others): lan0's, counting this.
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    let stats = agent::succeed(&mut agent(&["stats", "--json"])).unwrap();
    let named = agent::succeed(&mut agent(&[
        "--pin-dir",
        &pins.path().display().to_string(),
        "stats",
        "--json",
    ]))
    .unwrap();
    let interfaces = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).unwrap()["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|interface| interface["interface"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(interfaces(&stats), interfaces(&named));
    assert!(
        interfaces(&stats)
            .iter()
            .all(|name| name == GW_IF_CLIENT.name),
        "{stats}"
    );

    agent::succeed(&mut agent(&["allow", "add", "198.51.100.0/24"])).unwrap();
    let policy = pins.open().unwrap().policy.read_active().unwrap();
    assert!(policy.allow.contains(&"198.51.100.0/24".parse().unwrap()));

    agent::succeed(&mut agent(&["unload"])).unwrap();
    assert!(!pins.path().exists(), "unload ignored the config's pin_dir");
    std::fs::remove_file(&file).unwrap();
}
