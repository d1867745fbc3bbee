//! Every subcommand resolves its settings the same way: the config's `pin_dir` counts for
//! `attach`, `status`, `stats`, `allow` and `unload` as it does for `run`. Needs root.

use std::process::Command;

use apns_tests::{
    agent::{self, TestPins},
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT},
};

#[test]
fn the_configs_pin_dir_counts_for_every_subcommand() {
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

    let stats = agent::succeed(&mut agent(&["stats", "--json"])).unwrap();
    serde_json::from_str::<serde_json::Value>(&stats).unwrap();

    agent::succeed(&mut agent(&["allow", "add", "198.51.100.0/24"])).unwrap();
    let policy = pins.open().unwrap().policy.read_active().unwrap();
    assert!(policy.allow.contains(&"198.51.100.0/24".parse().unwrap()));

    agent::succeed(&mut agent(&["unload"])).unwrap();
    assert!(!pins.path().exists(), "unload ignored the config's pin_dir");
    std::fs::remove_file(&file).unwrap();
}
