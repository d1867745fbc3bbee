//! `unload` removes a datapath's pins and nothing else (issue 23): pointed at a plain folder,
//! at bpffs' root, or at a pin directory that holds another tool's pinned map, it refuses in
//! one line naming what is not apns-agent's, and removes nothing; the other tool's map still
//! opens. A first install is refused at bpffs' root before it pins anything there. Needs root
//! (and bpftool, which `cargo xtask setup` installs).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use apns_tests::{
    agent::{self, TestPins},
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

/// Mounts bpffs at /sys/fs/bpf where it is not (a guest of the kernel matrix boots without
/// it), as the agent would, once per test process: tests running in parallel that each saw
/// it missing would mount it twice, one over the other, hiding what the first had pinned.
fn bpffs_mounted() {
    static MOUNT: std::sync::Once = std::sync::Once::new();
    MOUNT.call_once(|| TestPins::new().dir().prepare().unwrap());
}

#[test]
fn unload_of_a_plain_folder_is_refused_and_removes_nothing() {
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
    let root = Path::new("/sys/fs/bpf");
    bpffs_mounted();
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
    let pins = TestPins::new();
    // An empty pin directory of ours.
    bpffs_mounted();
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
