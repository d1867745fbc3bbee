//! `unload` removes a datapath's pins and nothing else (issue 23): pointed at a plain folder,
//! at bpffs' root, or at a pin directory that holds another tool's pinned map, it refuses in
//! one line naming what is not apns-agent's, and removes nothing; the other tool's map still
//! opens. A first install is refused at bpffs' root before it pins anything there. `unload`
//! reads nothing of the config but `pin_dir`, and the package's prerm leaves finding it to
//! the binary. Needs root (and bpftool, which `cargo xtask setup` installs; unshare, mount and
//! overlayfs for the prerm).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use apns_agent::datapath::Datapath;
use apns_common::maps::CONNS_DEFAULT_ENTRIES;
use apns_tests::{
    agent::{self, TestPins},
    lab::{self, Lab, LabOptions, Role, GW_IF_CLIENT},
    scratch::Scratch,
};

/// `apns-agent --pin-dir DIR ARGS...`, here (the root network namespace: `unload` and
/// `attach` of a missing interface need no lab).
fn agent_at(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(agent::binary());
    cmd.arg("--pin-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// Runs a command that must fail and returns its stderr.
fn refused(mut cmd: Command) -> String {
    let output = agent::fail(&mut cmd).unwrap();
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The names below `dir`, sorted, as `find` lists them.
fn tree(dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            names.push(path.display().to_string());
        }
    }
    names.sort();
    names
}

#[test]
fn unload_of_a_plain_folder_is_refused_and_removes_nothing() {
    apns_tests::require_root!();
    let scratch = Scratch::new("unload-plain");
    scratch.file("config.toml", "mode = \"monitor\"\n");
    std::fs::create_dir_all(scratch.path("maps")).unwrap();
    scratch.file("maps/APNS_META", "not a pin\n");
    let before = tree(scratch.dir());
    let stderr = refused(agent_at(scratch.dir(), &["unload"]));
    assert!(
        stderr.contains("is not a pin directory on bpffs") && stderr.contains("refusing"),
        "{stderr}"
    );
    assert_eq!(tree(scratch.dir()), before);
}

#[test]
fn unload_and_install_at_bpffs_root_are_refused() {
    apns_tests::require_root!();
    let root = Path::new("/sys/fs/bpf");
    agent::bpffs_mounted();
    let before = tree(root);
    let stderr = refused(agent_at(root, &["unload"]));
    assert!(stderr.contains("root of a bpffs mount"), "{stderr}");
    // A first install there (attach of an interface that does not exist would fail later,
    // and its cleanup would empty the folder): refused before anything is pinned.
    let stderr = refused(agent_at(root, &["attach", "lo"]));
    assert!(stderr.contains("root of a bpffs mount"), "{stderr}");
    // Other tests pin and unpin beside us: only our own names may not appear or vanish.
    let after = tree(root);
    for ours in [
        "/sys/fs/bpf/maps",
        "/sys/fs/bpf/program",
        "/sys/fs/bpf/links",
    ] {
        assert!(!after.iter().any(|name| name == ours), "{ours} was made");
    }
    for name in before.iter().filter(|name| !name.contains("apns-test-")) {
        assert!(after.contains(name), "{name} was removed");
    }
}

#[test]
fn unload_of_a_pin_directory_holding_a_foreign_map_is_refused_and_removes_nothing() {
    apns_tests::require_root!();
    let pins = TestPins::new();
    // An empty pin directory of ours.
    agent::bpffs_mounted();
    pins.dir().prepare().unwrap();
    let foreign = pins.path().join("foreign_map");
    let made = Command::new("bpftool")
        .args(["map", "create"])
        .arg(&foreign)
        .args([
            "type", "array", "key", "4", "value", "4", "entries", "1", "name", "foreign",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "bpftool map create");
    let before = tree(pins.path());
    let stderr = refused(agent_at(pins.path(), &["unload"]));
    assert!(
        stderr.contains("holds what is not apns-agent's")
            && stderr.contains(&foreign.display().to_string()),
        "{stderr}"
    );
    assert_eq!(tree(pins.path()), before);
    let shown = Command::new("bpftool")
        .args(["map", "show", "pinned"])
        .arg(&foreign)
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "the foreign map no longer opens: {}",
        String::from_utf8_lossy(&shown.stderr)
    );
    // Ours to clean up: the foreign pin, then the (now empty) directory goes with `pins`.
    std::fs::remove_file(&foreign).unwrap();
}

/// Loads a datapath at `pins`, attached nowhere.
fn load(pins: &TestPins) {
    agent::bpffs_mounted();
    pins.dir().prepare().unwrap();
    let lock = pins.dir().lock().unwrap();
    Datapath::install(pins.dir(), &lock, None, CONNS_DEFAULT_ENTRIES).unwrap();
}

/// `apns-agent --config FILE ARGS...`, here.
fn agent_with(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(agent::binary());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null());
    cmd
}

#[test]
fn unload_reads_only_the_pin_dir_of_the_config() {
    apns_tests::require_root!();
    let scratch = Scratch::new("unload-config");
    let pins = TestPins::new();
    let config = scratch.path("config.toml");
    // Beside pin_dir (a TOML literal string), a list file that is gone, or a prefix longer
    // than its family.
    for (broken, reason) in [
        ("allow_files = ['gone.txt']", "gone.txt"),
        ("providers = [\"10.0.0.0/33\"]", "out of range"),
    ] {
        load(&pins);
        let text = format!("{broken}\npin_dir = '{}'\n", pins.path().display());
        std::fs::write(&config, text).unwrap();
        // The whole config is refused where it is applied...
        let stderr = refused(agent_with(
            &config,
            &["check-config", &config.display().to_string()],
        ));
        assert!(stderr.contains(reason), "{stderr}");
        // ...and unload, which needs only the pin directory, unloads all the same.
        let stdout = agent::succeed(&mut agent_with(&config, &["unload"])).unwrap();
        assert_eq!(
            stdout.trim(),
            format!(
                "unloaded: no program, link or pin left at {}",
                pins.path().display()
            ),
            "{broken}"
        );
        assert!(!pins.path().exists(), "{broken}");
    }

    // A pin_dir that cannot be read: refused with the line, nothing removed.
    load(&pins);
    for (text, needles) in [
        (
            "mode = 'enforce'\npin_dir = 5\n",
            &["line 2", "pin_dir"][..],
        ),
        ("pin_dir = '/sys/fs/bpf/x\n", &["line 1"][..]),
    ] {
        std::fs::write(&config, text).unwrap();
        let stderr = refused(agent_with(&config, &["unload"]));
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        for needle in needles.iter().chain(&[config.to_str().unwrap()]) {
            assert!(stderr.contains(needle), "{text:?}: {stderr}");
        }
        assert!(pins.dir().is_loaded(), "{text:?}");
    }
}

#[test]
fn prerm_unloads_the_datapath_where_the_config_says() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let scratch = Scratch::new("prerm");
    agent::succeed(&mut agent::gw_command(
        &lab,
        &pins,
        &["attach", "--xdp-mode", "skb", GW_IF_CLIENT.name],
    ))
    .unwrap();
    let xdp_on_lan = || {
        lab::run(Command::new("ip").args([
            "-n",
            lab.ns_name(Role::Gw),
            "link",
            "show",
            "dev",
            GW_IF_CLIENT.name,
        ]))
        .unwrap()
        .contains("prog/xdp")
    };
    assert!(xdp_on_lan());
    // The installed package, as prerm sees it: the binary at /usr/bin/apns-agent and a
    // config at /etc/apns-agent/config.toml whose pin_dir is a TOML literal string (which a
    // sed of `"..."` missed) beside an allow-list file that is gone. Laid over the host's
    // /usr/bin and /etc (overlayfs) in a mount namespace of the script's own.
    let bin = scratch.path("usr-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(agent::binary(), bin.join("apns-agent")).unwrap();
    std::fs::create_dir_all(scratch.path("etc/apns-agent")).unwrap();
    scratch.file(
        "etc/apns-agent/config.toml",
        &format!(
            "interfaces = ['{}']\nallow_files = ['/etc/apns-agent/lists/gone.txt']\npin_dir = '{}'\n",
            GW_IF_CLIENT.name,
            pins.path().display()
        ),
    );
    let prerm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deb/prerm");
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(
            "mount -t overlay overlay -o lowerdir=\"$1\":/usr/bin /usr/bin
             mount -t overlay overlay -o lowerdir=\"$2\":/etc /etc
             exec sh \"$3\" remove",
        )
        .arg("sh")
        .arg(&bin)
        .arg(scratch.path("etc"))
        .arg(&prerm)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "unloaded: no program, link or pin left at {}",
            pins.path().display()
        )
    );
    assert!(!pins.path().exists());
    assert!(
        !xdp_on_lan(),
        "the datapath is still attached to {}",
        GW_IF_CLIENT.name
    );
}
