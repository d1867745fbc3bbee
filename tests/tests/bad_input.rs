//! Bad input to the apns-agent binary: every case fails with one clear line naming the
//! problem, and leaves the datapath exactly as it was (both policy generations, the switch,
//! the program and every link). Needs root.

use std::{os::unix::process::CommandExt as _, process::Command};

use apns_agent::datapath::Datapath;
use apns_tests::{
    agent::{self, Pinned, TestPins},
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT, GW_IF_MDM, GW_IF_WAN},
};

/// What a bad command may not change.
#[derive(Debug, PartialEq)]
struct State {
    pinned: Pinned,
    link_programs: Vec<(String, Option<u32>, Option<u32>)>,
}

fn state(lab: &Lab, pins: &TestPins) -> State {
    let datapath = Datapath::open(pins.dir()).unwrap();
    let interfaces = lab
        .in_ns(Role::Gw, || datapath.interface_status())
        .unwrap()
        .unwrap();
    State {
        pinned: pins.pinned().unwrap(),
        link_programs: interfaces
            .into_iter()
            .map(|i| {
                assert!(i.attached, "{} detached", i.interface);
                (i.interface, i.program_id, i.link_id)
            })
            .collect(),
    }
}

/// Unprivileged uid/gid for the capability cases.
const NOBODY: u32 = 65534;

#[test]
fn bad_input_is_refused_in_one_line_and_changes_nothing() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let empty = TestPins::new();
    let foreign = TestPins::new();
    let agent = |pins: &TestPins, args: &[&str]| {
        let mut cmd = lab.command(Role::Gw, agent::binary());
        agent::command(&mut cmd, pins, args);
        cmd
    };
    agent::succeed(&mut agent(
        &pins,
        &["attach", GW_IF_CLIENT.name, GW_IF_WAN.name],
    ))
    .unwrap();
    agent::succeed(&mut agent(&pins, &["providers", "add", "192.0.2.128/25"])).unwrap();
    agent::succeed(&mut agent(&pins, &["mode", "enforce"])).unwrap();

    // A foreign map where apns-agent expects its own, and a pin directory outside bpffs.
    std::fs::create_dir_all(foreign.path().join("maps")).unwrap();
    agent::succeed(
        Command::new("bpftool").args([
            "map",
            "create",
            &foreign
                .path()
                .join("maps/APNS_ACTIVE")
                .display()
                .to_string(),
            "type",
            "hash",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "4",
            "name",
            "APNS_ACTIVE",
        ]),
    )
    .unwrap();
    let not_bpffs = std::env::temp_dir().join(format!("apns-not-bpffs-{}", std::process::id()));

    let dir = tempfile_dir();
    let config = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let host_bits = config(
        "host-bits.toml",
        "interfaces = [\"lan0\"]\nallow = [\"17.1.0.0/8\"]\n",
    );
    let unknown_key = config(
        "unknown-key.toml",
        "interfaces = [\"lan0\"]\ncolour = \"red\"\n",
    );
    let not_toml = config("not-toml.toml", "interfaces = [\"lan0\"\n");
    let bad_port = config("bad-port.toml", "[ports]\n70000 = [\"apns\"]\n");
    let bad_mode = config("bad-mode.toml", "mode = \"block\"\n");
    let missing = dir.join("missing.toml").display().to_string();

    let before = state(&lab, &pins);
    let p = &pins;
    // (arguments, pin directory, text the error must contain)
    let cases: Vec<(Vec<&str>, &TestPins, &str)> = vec![
        (
            vec!["allow", "add", "17.1.0.0/8"],
            p,
            "host bits set (did you mean 17.0.0.0/8?)",
        ),
        (
            vec!["allow", "add", "17.0.0.0/33"],
            p,
            "prefix length \"33\" is out of range for IPv4 (0 to 32)",
        ),
        (
            vec!["allow", "add", "::ffff:17.0.0.0/104"],
            p,
            "never matches: an IPv4-mapped or IPv4-compatible IPv6 prefix; IPv4 traffic is judged as IPv4, so write 17.0.0.0/8",
        ),
        (
            vec!["allow", "add", "apple.com"],
            p,
            "is not an IPv4 or IPv6 prefix",
        ),
        (
            vec!["allow", "add", "2620:149:a44::1/48"],
            p,
            "host bits set",
        ),
        (
            vec!["allow", "add", "17.0.0.0/8"],
            p,
            "already in the allow-list",
        ),
        (
            vec!["allow", "add", "10.0.0.0/8", "10.0.0.0/8"],
            p,
            "given twice",
        ),
        (
            vec!["allow", "add", "10.0.0.0/8", "10.0.0.1/8"],
            p,
            "host bits set",
        ),
        (
            vec!["allow", "del", "10.9.0.0/16"],
            p,
            "not in the allow-list",
        ),
        (
            vec!["allow", "del", "17.0.0.0/8", "10.9.0.0/16"],
            p,
            "not in the allow-list",
        ),
        (
            vec!["providers", "add", "2001:db8::1/32"],
            p,
            "host bits set",
        ),
        (
            vec!["providers", "add", "192.0.2.128/25"],
            p,
            "already in the provider list",
        ),
        (
            vec!["providers", "del", "198.51.100.0/24"],
            p,
            "not in the provider list",
        ),
        (vec!["ports", "add", "0"], p, "port 0 is out of range"),
        (
            vec!["ports", "add", "70000"],
            p,
            "port 70000 is out of range",
        ),
        (vec!["ports", "add", "https"], p, "is not a port number"),
        (
            vec!["ports", "add", "5223=tunnel"],
            p,
            "unknown port role \"tunnel\"",
        ),
        (
            vec!["ports", "add", "5223=apns,pinhole"],
            p,
            "already in the port table",
        ),
        (vec!["ports", "add", "8443", "8443"], p, "given twice"),
        (
            vec!["ports", "del", "8080"],
            p,
            "port 8080 is not in the port table",
        ),
        (
            vec!["attach", "nosuch0"],
            p,
            "unknown interface \"nosuch0\"",
        ),
        (vec!["detach", "nosuch0"], p, "nosuch0 is not attached"),
        (
            vec!["detach", GW_IF_MDM.name, GW_IF_CLIENT.name],
            p,
            "lan1 is not attached",
        ),
        (vec!["run", "--config", &missing], p, "reading config file"),
        (vec!["run", "--config", &host_bits], p, "line 2"),
        (vec!["run", "--config", &not_toml], p, "line 1"),
        (
            vec!["check-config", &unknown_key],
            p,
            "unknown field `colour`",
        ),
        (
            vec!["check-config", &bad_port],
            p,
            "port 70000 is out of range",
        ),
        (
            vec!["check-config", &bad_mode],
            p,
            "unknown policy mode \"block\": expected monitor or enforce",
        ),
        (
            vec!["allow", "list"],
            &empty,
            "no apns-agent datapath is loaded",
        ),
        (
            vec!["mode", "enforce"],
            &empty,
            "no apns-agent datapath is loaded",
        ),
        (
            vec!["allow", "list"],
            &foreign,
            "APNS_ACTIVE has another layout",
        ),
        (
            vec!["attach", GW_IF_MDM.name],
            &foreign,
            "APNS_ACTIVE has another layout",
        ),
    ];
    let mut checked = 0;
    for (args, dir, needle) in &cases {
        let output = agent::fail(&mut agent(dir, args)).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: expected one line of error, got:\n{stderr}"
        );
        assert!(
            lines[0].contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            lines[0]
        );
        assert_eq!(output.status.code(), Some(1), "{args:?}: exit status");
        assert_eq!(state(&lab, &pins), before, "{args:?} changed the datapath");
        checked += 1;
    }

    // Usage errors: exit status 2, one line that names the problem and where to look.
    for (args, needle) in [
        (vec!["mode", "block"], "invalid value 'block'"),
        (vec!["run", "--xdp-mode", "hw"], "invalid value 'hw'"),
        (vec!["allow", "add"], "required"),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (vec!["ports", "add", "-1"], "unexpected argument '-1'"),
    ] {
        let output = agent::fail(&mut agent(&pins, &args)).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains("--help"),
            "{args:?}: {stderr}"
        );
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(state(&lab, &pins), before, "{args:?} changed the datapath");
        checked += 1;
    }

    // A caller without capabilities is told which one it lacks.
    for args in [
        vec!["allow", "add", "10.0.0.0/8"],
        vec!["ports", "list"],
        vec!["unload"],
    ] {
        // Not in the gateway namespace: joining it needs the very privileges dropped here.
        let mut cmd = Command::new(agent::binary());
        agent::command(&mut cmd, &pins, &args);
        cmd.uid(NOBODY).gid(NOBODY);
        let output = agent::fail(&mut cmd).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("CAP_BPF"), "{args:?} as nobody: {stderr}");
        assert_eq!(
            state(&lab, &pins),
            before,
            "{args:?} as nobody changed the datapath"
        );
        checked += 1;
    }

    // No bpffs at the pin directory: refused before anything is created there.
    let mut cmd = lab.command(Role::Gw, agent::binary());
    cmd.arg("--pin-dir")
        .arg(&not_bpffs)
        .args(["attach", GW_IF_MDM.name]);
    let output = agent::fail(&mut cmd).unwrap();
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not on a bpffs mount"));
    assert!(!not_bpffs.exists(), "{} was created", not_bpffs.display());
    assert_eq!(state(&lab, &pins), before);
    checked += 1;

    eprintln!("{checked} bad inputs refused, datapath unchanged");
    assert!(checked >= 30);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A scratch folder for the config files of this test.
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("apns-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
