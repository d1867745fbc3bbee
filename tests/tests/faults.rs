//! An operator's day, as faults a gateway meets: restarts that must not change what is
//! enforced, a kill -9 exactly between two steps of a change, interfaces and pins that change
//! under a running agent, an interface gone after a reboot, a second agent, a read-only
//! textfile or state directory, a closed stdout, `ip netns exec`. Each asserts exact counters
//! and the live policy. Needs root (and unshare, mount: util-linux).

use std::{
    io::Read as _,
    net::SocketAddr,
    os::unix::process::ExitStatusExt as _,
    process::{Command, Stdio},
    time::Duration,
};

use apns_agent::{
    datapath::{
        self, hooks, object::UPGRADE_PROBE_OBJECT, policy::Mode, policy::Policy,
        reconcile::Desired, status, Datapath, XdpMode,
    },
    settings::state,
};
use apns_common::counters::{Direction, Outcome};
use apns_tests::{
    agent::{self, run_lan_wan, spawn_run, TestPins},
    lab::{
        self, wait_until, Lab, LabChild, LabOptions, Role, APPLE, GW_IF_CLIENT, GW_IF_MDM,
        GW_IF_WAN, MDM, OTHER,
    },
};

const TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent's periodic check (every 5 s) may take to notice a change.
const NOTICED: Duration = Duration::from_secs(20);

fn live_policy(pins: &TestPins) -> Policy {
    pins.open().unwrap().policy.read_active().unwrap()
}

fn interface_status<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|interface| interface["interface"] == name)
        .unwrap_or_else(|| panic!("{name} is not in status: {status}"))
}

/// A config file for one test, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    fn new(lab: &Lab, name: &str, text: &str) -> ConfigFile {
        let path = std::env::temp_dir().join(format!("{}-{name}.toml", lab.id()));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether process `pid` is stopped (state T in /proc/PID/stat).
fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(") ")?.1;
            after_name.chars().next()
        })
        .is_some_and(|state| state == 'T')
}

/// Starts `apns-agent ARGS` in the gateway with the test hook `point` armed, and waits until
/// it stopped itself there.
fn spawn_paused<'lab>(
    lab: &'lab Lab,
    pins: &TestPins,
    args: &[&str],
    point: &str,
) -> LabChild<'lab> {
    let mut cmd = agent::gw_command(lab, pins, args);
    cmd.env(hooks::PAUSE_AT, point)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = lab.spawn(&mut cmd).unwrap();
    let pid = child.id();
    wait_until(
        &format!("{args:?} to stop at {point}"),
        Duration::from_secs(30),
        || {
            assert!(
                child.wait_timeout(Duration::ZERO).unwrap().is_none(),
                "{args:?} exited before it reached {point}"
            );
            is_stopped(pid)
        },
    );
    child
}

fn kill_9(child: &mut std::process::Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_restart_keeps_what_the_cli_set_until_the_config_changes_it() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let base = format!(
        "interfaces = [\"{}\", \"{}\", \"{}\"]\nmode = \"monitor\"\n",
        GW_IF_CLIENT.name, GW_IF_MDM.name, GW_IF_WAN.name
    );
    let config = ConfigFile::new(&lab, "restart", &base);
    let run = ["run", "--config", &config.arg()];
    let mut first = spawn_run(&lab, &pins, &run).unwrap();

    // The operator enforces and restricts the provider ports to the MDM server, live.
    agent::succeed(&mut agent::gw_command(&lab, &pins, &["mode", "enforce"])).unwrap();
    let mdm = format!("{}/32", MDM.v4);
    agent::succeed(&mut agent::gw_command(
        &lab,
        &pins,
        &["providers", "add", &mdm],
    ))
    .unwrap();
    let enforced = live_policy(&pins);
    assert_eq!(enforced.mode, Mode::Enforce);
    let pinhole_drops = || {
        pins.counter(lan, Direction::None, 5223, Outcome::DropPinhole)
            .unwrap()
            .packets
    };
    let provider_drops = || {
        pins.counter(lan, Direction::Outbound, 2197, Outcome::DropProvider)
            .unwrap()
            .packets
    };
    lab.refused(Role::Client, OTHER.socket(false, 5223));
    lab.refused(Role::Client, APPLE.socket(false, 2197));
    lab.echo_ok(Role::Mdm, APPLE.socket(false, 2197));
    assert_eq!((pinhole_drops(), provider_drops()), (1, 1));

    // kill -9, and a restart with the unchanged config: still enforcing, same providers.
    kill_9(first.child_mut());
    drop(first);
    let mut second = spawn_run(&lab, &pins, &run).unwrap();
    assert_eq!(
        live_policy(&pins),
        enforced,
        "a restart changed the live policy"
    );
    lab.refused(Role::Client, OTHER.socket(false, 5223));
    lab.refused(Role::Client, APPLE.socket(false, 2197));
    assert_eq!((pinhole_drops(), provider_drops()), (2, 2));
    let status = agent::status_json(&lab, &pins);
    assert_eq!(status["sources"]["mode"]["source"], "command");
    assert!(
        status["sources"]["mode"]["command"]
            .as_str()
            .unwrap()
            .ends_with("mode enforce"),
        "{status}"
    );
    assert_eq!(status["sources"]["allow"]["source"], "config");

    // The same across an upgrade: another program is pinned when the agent starts.
    kill_9(second.child_mut());
    drop(second);
    {
        pins.dir().prepare().unwrap();
        let lock = pins.dir().lock().unwrap();
        Datapath::install_object(pins.dir(), &lock, UPGRADE_PROBE_OBJECT, None).unwrap();
    }
    let probe_tag = status::program(pins.dir()).unwrap().unwrap().tag;
    let mut third = spawn_run(&lab, &pins, &run).unwrap();
    assert_ne!(status::program(pins.dir()).unwrap().unwrap().tag, probe_tag);
    assert_eq!(
        live_policy(&pins),
        enforced,
        "an upgrade changed the live policy"
    );
    lab.refused(Role::Client, OTHER.socket(false, 5223));
    assert_eq!(pinhole_drops(), 3);

    // The operator changes the config's mode: the config wins there, the providers stay.
    std::fs::write(&config.0, base.replace("monitor", "monitor\n# edited")).unwrap();
    third.reload().unwrap();
    assert_eq!(live_policy(&pins), enforced, "an unchanged setting moved");
    std::fs::write(&config.0, base.replace("\"monitor\"", "\"enforce\"")).unwrap();
    third.reload().unwrap();
    std::fs::write(&config.0, &base).unwrap();
    third.reload().unwrap();
    let now = live_policy(&pins);
    assert_eq!(
        now.mode,
        Mode::Monitor,
        "the config's new mode did not apply"
    );
    assert_eq!(now.providers, enforced.providers);
    lab.echo_ok(Role::Client, OTHER.socket(false, 5223));
    assert_eq!(pinhole_drops(), 3);
    assert!(
        !third.log_tail().contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
}

#[test]
fn kill_9_between_writing_a_policy_and_switching_to_it() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let run = run_lan_wan(&[]);
    let mut agent = spawn_run(&lab, &pins, &run).unwrap();
    let before = live_policy(&pins);
    assert_eq!(before.mode, Mode::Monitor);

    // `mode enforce` stops after writing the inactive generation, before the switch.
    let mut edit = spawn_paused(
        &lab,
        &pins,
        &["mode", "enforce"],
        hooks::BEFORE_POLICY_SWITCH,
    );
    assert_eq!(
        live_policy(&pins),
        before,
        "the switch moved before it was flipped"
    );
    // Every packet is judged by the whole old policy: the pinhole use passes and counts.
    lab.echo_ok(Role::Client, OTHER.socket(false, 5223));
    let not_apns = |pins: &TestPins| {
        pins.counter(lan, Direction::None, 0, Outcome::NotApns)
            .unwrap()
            .packets
    };
    let counted = not_apns(&pins);
    assert!(counted > 0);
    kill_9(edit.child_mut());
    drop(edit);
    assert_eq!(live_policy(&pins), before);

    // The next agent finds a consistent datapath: it starts, and applies a whole policy.
    kill_9(agent.child_mut());
    drop(agent);
    let _agent = spawn_run(&lab, &pins, &[&run[..], &["--mode", "enforce"]].concat()).unwrap();
    let after = live_policy(&pins);
    assert_eq!(
        after,
        Policy {
            mode: Mode::Enforce,
            ..before.clone()
        }
    );
    let datapath = pins.open().unwrap();
    let inactive = datapath.policy.active_generation().unwrap() ^ 1;
    assert_eq!(datapath.policy.read_generation(inactive).unwrap(), before);
    lab.refused(Role::Client, OTHER.socket(false, 5223));
    assert_eq!(
        pins.counter(lan, Direction::None, 5223, Outcome::DropPinhole)
            .unwrap()
            .packets,
        1
    );
}

#[test]
fn kill_9_in_the_middle_of_an_upgrade_of_several_interfaces() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let interfaces = [GW_IF_CLIENT.name, GW_IF_MDM.name, GW_IF_WAN.name];
    // An older agent's program runs on three interfaces.
    {
        pins.dir().prepare().unwrap();
        let lock = pins.dir().lock().unwrap();
        let (mut datapath, _) =
            Datapath::install_object(pins.dir(), &lock, UPGRADE_PROBE_OBJECT, None).unwrap();
        let mut desired: Desired = datapath.live().unwrap();
        desired.xdp_mode = XdpMode::Auto;
        for name in interfaces {
            desired
                .interfaces
                .insert(name.to_owned(), Default::default());
        }
        lab.in_ns(Role::Gw, || datapath.reconcile(&lock, &desired))
            .unwrap()
            .unwrap();
    }
    let old = status::program(pins.dir()).unwrap().unwrap();
    let link_programs = || -> Vec<u32> {
        let status = agent::status_json(&lab, &pins);
        interfaces
            .iter()
            .map(|name| {
                interface_status(&status, name)["program_id"]
                    .as_u64()
                    .unwrap() as u32
            })
            .collect()
    };
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let wan = agent::gw_ifindex(&lab, GW_IF_WAN.name).unwrap();
    let syns = || {
        pins.counter(lan, Direction::Outbound, 5223, Outcome::Pass)
            .unwrap()
            .syn
    };
    let synacks = || {
        pins.counter(wan, Direction::Inbound, 5223, Outcome::Pass)
            .unwrap()
            .synack
    };
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    assert_eq!((syns(), synacks()), (1, 1));

    // The new agent stops after its program runs behind the first link only.
    let mut args = vec!["run"];
    for name in interfaces {
        args.extend(["--iface", name]);
    }
    let mut half = spawn_paused(&lab, &pins, &args, hooks::AFTER_FIRST_LINK_SWAP);
    let programs = link_programs();
    assert_eq!(
        programs.iter().filter(|&&id| id == old.id).count(),
        2,
        "one link swapped, two not: {programs:?}"
    );
    // Each packet is judged by one whole program; both count in the same maps.
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    assert_eq!((syns(), synacks()), (2, 2));
    kill_9(half.child_mut());
    drop(half);

    // The next agent completes the upgrade: every link runs its program, counters go on.
    let _agent = spawn_run(&lab, &pins, &args).unwrap();
    let new = status::program(pins.dir()).unwrap().unwrap();
    assert_ne!(new.tag, old.tag);
    assert_eq!(link_programs(), vec![new.id; 3]);
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    assert_eq!((syns(), synacks()), (3, 3));
}

#[test]
fn interfaces_deleted_recreated_and_renamed_under_a_running_agent() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let ip = |args: &[&str]| {
        lab::run(
            Command::new("ip")
                .args(["-n", lab.ns_name(Role::Gw)])
                .args(args),
        )
        .unwrap();
    };
    let make_extra = || {
        ip(&[
            "link", "add", "apnsx0", "type", "veth", "peer", "name", "apnsx1",
        ]);
        ip(&["link", "set", "apnsx0", "up"]);
        ip(&["link", "set", "apnsx1", "up"]);
    };
    make_extra();
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let mut agent = spawn_run(
        &lab,
        &pins,
        &run_lan_wan(&["--iface", "apnsx0", "--fastpath", "apnsx0=mark"]),
    )
    .unwrap();
    let first = interface_status(&agent::status_json(&lab, &pins), "apnsx0")["ifindex"].clone();
    let syns = || {
        pins.counter(lan, Direction::Outbound, 5223, Outcome::Pass)
            .unwrap()
            .syn
    };
    // While the agent moves a link, the interface is briefly not listed at all.
    let state_of = |name: &str| {
        let status = agent::status_json(&lab, &pins);
        status["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|interface| interface["interface"] == name)
            .map_or(serde_json::Value::Null, |interface| {
                interface["state"].clone()
            })
    };

    // Deleted: reported, the rest goes on.
    ip(&["link", "del", "apnsx0"]);
    assert_eq!(state_of("apnsx0"), "interface_gone");
    agent
        .wait_for_log("the interface was deleted", NOTICED)
        .unwrap();
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    assert_eq!(syns(), 1);

    // Re-created under the same name: attached again, with its fast path.
    make_extra();
    wait_until("apnsx0 to be attached again", NOTICED, || {
        state_of("apnsx0") == "attached"
    });
    let again = interface_status(&agent::status_json(&lab, &pins), "apnsx0").clone();
    assert_ne!(again["ifindex"], first, "still the old device");
    assert_eq!(again["fastpath"], "mark");
    assert!(pins.dir().tc_link("apnsx0").exists());

    // Renamed: the link stays with the device, and status says where it went.
    ip(&["link", "set", "apnsx0", "down"]);
    ip(&["link", "set", "apnsx0", "name", "apnsx9"]);
    let renamed = interface_status(&agent::status_json(&lab, &pins), "apnsx0").clone();
    assert_eq!(renamed["state"], "renamed");
    assert_eq!(renamed["current_name"], "apnsx9");
    agent.wait_for_log("renamed", NOTICED).unwrap();
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    assert_eq!(syns(), 2);
    assert!(agent.wait_timeout(Duration::ZERO).unwrap().is_none());
}

#[test]
fn pins_removed_by_hand_are_pinned_again_and_nothing_is_lost() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let agent = spawn_run(&lab, &pins, &run_lan_wan(&[])).unwrap();
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    let lan_link = pins.dir().link_of(GW_IF_CLIENT.name).unwrap().unwrap().path;
    let counters = pins.dir().map(apns_common::maps::COUNTERS);
    std::fs::remove_file(&counters).unwrap();
    std::fs::remove_file(pins.dir().program()).unwrap();
    // Removing a link's only pin detaches it.
    std::fs::remove_file(&lan_link).unwrap();

    wait_until("the pins to be restored", NOTICED, || {
        counters.exists()
            && pins.dir().program().exists()
            && pins.dir().link_of(GW_IF_CLIENT.name).unwrap().is_some()
    });
    agent.wait_for_log("was removed by hand", TIMEOUT).unwrap();
    // The same map, with the counts made before the removal.
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    let value = pins
        .counter(lan, Direction::Outbound, 5223, Outcome::Pass)
        .unwrap();
    assert_eq!(value.syn, 2, "counts were lost: {value:?}");
    let status = agent::status_json(&lab, &pins);
    assert_eq!(
        interface_status(&status, GW_IF_CLIENT.name)["state"],
        "attached"
    );
}

#[test]
fn a_read_only_textfile_directory_is_reported_and_the_agent_keeps_serving() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let dir = std::env::temp_dir().join(format!("{}-textfile", lab.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("apns.prom");
    let metrics: SocketAddr = "127.0.0.1:15223".parse().unwrap();
    let agent = spawn_run(
        &lab,
        &pins,
        &[
            "run",
            "--iface",
            GW_IF_CLIENT.name,
            "--textfile",
            &file.display().to_string(),
            "--textfile-interval",
            "1",
        ],
    )
    .unwrap();
    wait_until("the textfile", NOTICED, || file.exists());
    std::fs::remove_file(&file).unwrap();
    // Immutable: not even root may create a file in it.
    let chattr = |flag: &str| {
        lab::run(Command::new("chattr").arg(flag).arg(&dir)).unwrap();
    };
    chattr("+i");
    let line = agent.wait_for_log("textfile not written", NOTICED);
    chattr("-i");
    let line = line.unwrap();
    assert!(line.contains(&file.display().to_string()), "{line}");
    assert!(agent::scrape_metrics(&lab, metrics)
        .unwrap()
        .contains("apns_agent_info"));
    wait_until("the textfile again", NOTICED, || file.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_run_on_the_same_datapath_is_refused() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let run = [
        "run",
        "--iface",
        GW_IF_CLIENT.name,
        "--metrics-addr",
        "127.0.0.1:15224",
    ];
    let first = spawn_run(&lab, &pins, &run).unwrap();
    let second = agent::fail(&mut agent::gw_command(&lab, &pins, &run)).unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("another apns-agent run (pid {})", first.id())),
        "{stderr}"
    );
    assert_eq!(second.status.code(), Some(1));
    // CLI verbs stay allowed beside it.
    agent::succeed(&mut agent::gw_command(&lab, &pins, &["mode", "enforce"])).unwrap();
    assert_eq!(live_policy(&pins).mode, Mode::Enforce);
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    agent::succeed(&mut agent::gw_command(
        &lab,
        &pins,
        &["attach", GW_IF_CLIENT.name],
    ))
    .unwrap();
    for (args, keep) in [(["stats", "--json"], 10), (["status", "--json"], 0)] {
        let mut cmd = agent::gw_command(&lab, &pins, &args);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -c 10` reads ten bytes and goes away; `| true` reads nothing.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = vec![0u8; keep];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            output.status.success() || output.status.signal() == Some(libc_sigpipe()),
            "{args:?}: {}",
            output.status
        );
    }
}

fn libc_sigpipe() -> i32 {
    nix::sys::signal::Signal::SIGPIPE as i32
}

#[test]
fn ip_netns_exec_is_refused_before_it_pins_into_a_private_bpffs() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let output = agent::fail(
        Command::new("ip")
            .args(["netns", "exec", lab.ns_name(Role::Gw)])
            .arg(agent::binary())
            .arg("--pin-dir")
            .arg(pins.path())
            .args(["run", "--iface", GW_IF_CLIENT.name]),
    )
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("mount namespace of its own") && stderr.contains("nsenter --net="),
        "{stderr}"
    );
    assert!(!pins.path().exists());
    let links =
        lab::run(Command::new("ip").args(["-n", lab.ns_name(Role::Gw), "link", "show"])).unwrap();
    assert!(!links.contains("prog/xdp"), "{links}");
}

/// `ip -n GW ARGS` in the lab's gateway.
fn gw_ip(lab: &Lab, args: &[&str]) {
    lab::run(
        Command::new("ip")
            .args(["-n", lab.ns_name(Role::Gw)])
            .args(args),
    )
    .unwrap();
}

/// A veth pair `name` (and its peer `name`p), up, in the lab's gateway.
fn make_veth(lab: &Lab, name: &str) {
    let peer = format!("{name}p");
    gw_ip(
        lab,
        &["link", "add", name, "type", "veth", "peer", "name", &peer],
    );
    gw_ip(lab, &["link", "set", name, "up"]);
    gw_ip(lab, &["link", "set", &peer, "up"]);
}

/// `state` of `name` in `status --json`, or null when it is not listed.
fn state_in_status(lab: &Lab, pins: &TestPins, name: &str) -> serde_json::Value {
    let status = agent::status_json(lab, pins);
    status["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|interface| interface["interface"] == name)
        .map_or(serde_json::Value::Null, |interface| {
            interface["state"].clone()
        })
}

/// `apns-agent ARGS` in the lab's gateway and in a mount namespace of its own where the state
/// directory is read-only, as on a gateway whose /var/lib is full or mounted read-only. The
/// rest of the host's mounts (bpffs among them) are the same; the namespace goes with the
/// command.
fn with_read_only_state(lab: &Lab, pins: &TestPins, args: &[&str]) -> Command {
    let dir = state::STATE_DIR;
    let mut cmd = lab.command(Role::Gw, "unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-ec"])
        .arg(format!(
            "mount --bind {dir} {dir}; mount -o remount,bind,ro {dir}; exec \"$0\" \"$@\""
        ))
        .arg(agent::binary());
    agent::command(&mut cmd, pins, args);
    cmd
}

#[test]
fn a_read_only_state_directory_refuses_live_changes_and_changes_nothing() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let _agent = spawn_run(&lab, &pins, &run_lan_wan(&[])).unwrap();
    let state_file = state::path(pins.dir());
    let recorded = std::fs::read_to_string(&state_file).unwrap();
    let pinned = pins.pinned().unwrap();
    assert_eq!(
        pinned.policies[pinned.generation as usize].mode,
        Mode::Monitor
    );
    let mdm = format!("{}/32", MDM.v4);
    for args in [
        &["mode", "enforce"][..],
        &["providers", "add", &mdm],
        &["detach", GW_IF_WAN.name],
        &["fastpath", GW_IF_CLIENT.name, "mark"],
    ] {
        let output = agent::fail(&mut with_read_only_state(&lab, &pins, args)).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with("apns-agent: nothing changed")
                && stderr.contains(&state_file.display().to_string())
                && stderr.contains("Read-only file system"),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            pins.pinned().unwrap(),
            pinned,
            "{args:?} changed the datapath"
        );
        assert_eq!(
            std::fs::read_to_string(&state_file).unwrap(),
            recorded,
            "{args:?} changed the record"
        );
    }
    let status = agent::status_json(&lab, &pins);
    assert_eq!(
        interface_status(&status, GW_IF_CLIENT.name)["fastpath"],
        "pass"
    );
    assert!(!pins.dir().tc_link(GW_IF_CLIENT.name).exists());
    // An attach that would make a datapath: none is left behind.
    let other = TestPins::new();
    let output = agent::fail(&mut with_read_only_state(
        &lab,
        &other,
        &["attach", GW_IF_MDM.name],
    ))
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nothing changed"), "{stderr}");
    assert!(
        !other.path().exists(),
        "the attach left {}",
        other.path().display()
    );
    assert!(!state::path(other.dir()).exists());
    assert_eq!(
        state_in_status(&lab, &pins, GW_IF_MDM.name),
        serde_json::Value::Null
    );
    let links = lab::run(Command::new("ip").args([
        "-n",
        lab.ns_name(Role::Gw),
        "link",
        "show",
        "dev",
        GW_IF_MDM.name,
    ]))
    .unwrap();
    assert!(!links.contains("prog/xdp"), "{links}");
    // Still monitoring: the pinhole use passes, nothing is dropped.
    let pinhole_drops = || {
        pins.counter(lan, Direction::None, 5223, Outcome::DropPinhole)
            .unwrap()
            .packets
    };
    lab.echo_ok(Role::Client, OTHER.socket(false, 5223));
    assert_eq!(pinhole_drops(), 0);

    // The same change where the directory is writable: recorded and applied.
    agent::succeed(&mut agent::gw_command(&lab, &pins, &["mode", "enforce"])).unwrap();
    assert_ne!(std::fs::read_to_string(&state_file).unwrap(), recorded);
    lab.refused(Role::Client, OTHER.socket(false, 5223));
    assert_eq!(pinhole_drops(), 1);
}

#[test]
fn an_interface_gone_after_a_reboot_is_reported_and_the_others_enforce() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let lan = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let metrics: SocketAddr = telemetry_addr();
    make_veth(&lab, "apnsm0");
    let run = run_lan_wan(&["--mode", "enforce"]);
    let mut first = spawn_run(&lab, &pins, &run).unwrap();
    // Added live, as the issue found it: recorded, so that a restart attaches it again.
    agent::succeed(&mut agent::gw_command(&lab, &pins, &["attach", "apnsm0"])).unwrap();
    kill_9(first.child_mut());
    drop(first);

    // The reboot: the interface is gone, and so is everything in bpffs; the record stays.
    gw_ip(&lab, &["link", "del", "apnsm0"]);
    {
        let lock = pins.dir().lock().unwrap();
        datapath::unload(pins.dir(), &lock).unwrap();
    }
    let agent = spawn_run(&lab, &pins, &run).unwrap();
    let line = agent.wait_for_log("apnsm0: NOT attached", TIMEOUT).unwrap();
    assert!(line.contains("WARN"), "{line}");

    // Enforcing on the rest, from a fresh datapath: exact counts.
    lab.refused(Role::Client, OTHER.socket(false, 5223));
    lab.echo_ok(Role::Client, APPLE.socket(false, 5223));
    assert_eq!(
        pins.counter(lan, Direction::None, 5223, Outcome::DropPinhole)
            .unwrap()
            .packets,
        1
    );
    assert_eq!(
        pins.counter(lan, Direction::Outbound, 5223, Outcome::Pass)
            .unwrap()
            .syn,
        1
    );
    let status = agent::status_json(&lab, &pins);
    let missing = interface_status(&status, "apnsm0");
    assert_eq!(missing["state"], "missing", "{status}");
    assert_eq!(missing["attached"], false);
    for name in [GW_IF_CLIENT.name, GW_IF_WAN.name] {
        assert_eq!(interface_status(&status, name)["state"], "attached");
    }
    let text = agent::succeed(&mut agent::gw_command(&lab, &pins, &["status"])).unwrap();
    assert!(
        text.contains("interface apnsm0: NOT attached: missing"),
        "{text}"
    );
    let exposition = agent::scrape_metrics(&lab, metrics).unwrap();
    let samples = agent::samples(&exposition);
    assert_eq!(
        samples.get(r#"apns_datapath_attached{interface="apnsm0",xdp_mode="none"}"#),
        Some(&0.0),
        "{exposition}"
    );
    assert_eq!(
        samples
            .iter()
            .filter(
                |(series, value)| series.starts_with("apns_datapath_attached{") && **value == 1.0
            )
            .count(),
        2,
        "{exposition}"
    );

    // It comes back: attached, and counted.
    make_veth(&lab, "apnsm0");
    wait_until("apnsm0 to be attached", NOTICED, || {
        state_in_status(&lab, &pins, "apnsm0") == "attached"
    });
    agent
        .wait_for_log("apnsm0: the interface is here now", TIMEOUT)
        .unwrap();
    assert!(agent::scrape_metrics(&lab, metrics)
        .unwrap()
        .lines()
        .any(
            |line| line.starts_with(r#"apns_datapath_attached{interface="apnsm0""#)
                && line.ends_with(" 1")
        ));
}

#[test]
fn run_with_every_interface_missing_starts_and_attaches_each_when_it_appears() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let agent = spawn_run(&lab, &pins, &["run", "--iface", "apnsn0"]).unwrap();
    agent.wait_for_log("apnsn0: NOT attached", TIMEOUT).unwrap();
    assert_eq!(state_in_status(&lab, &pins, "apnsn0"), "missing");
    assert!(pins.dir().links().unwrap().is_empty());
    make_veth(&lab, "apnsn0");
    wait_until("apnsn0 to be attached", NOTICED, || {
        state_in_status(&lab, &pins, "apnsn0") == "attached"
    });
    assert_eq!(pins.dir().links().unwrap().len(), 1);
}

/// Where `run` serves /metrics by default, in the lab's gateway.
fn telemetry_addr() -> SocketAddr {
    apns_agent::telemetry::DEFAULT_METRICS_ADDR.parse().unwrap()
}

/// Two agents that start together where bpffs is not mounted (a fresh system, the kernel
/// matrix's guests) mount it once: the first to find it missing mounts it while the other
/// waits, then finds it mounted. (Both mounting stacked a second bpffs over the first, and
/// hid what the first had pinned meanwhile: its `BPF_OBJ_PIN` failed with ENOENT.) Here the
/// first agent is stopped right before its mount, holding the lock, while the second
/// starts; run in a mount and PID namespace of the test's own, so the host's bpffs is never
/// touched and whatever the two pin goes with the namespace.
#[test]
fn agents_starting_together_mount_bpffs_once() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let (first, second) = (TestPins::new(), TestPins::new());
    let script = format!(
        "while mountpoint -q {root}; do umount -l {root}; done
         {pause}={point} \"$0\" attach {lan} --pin-dir {first} & stopped=$!
         tries=0
         until grep -q '^State:.*stopped' /proc/$stopped/status; do
             tries=$((tries + 1)); [ $tries -lt 400 ] || {{ echo 'the first agent never stopped'; exit 1; }}
             sleep 0.05
         done
         \"$0\" attach {wan} --pin-dir {second} & waiting=$!
         sleep 1
         kill -CONT $stopped
         wait $stopped
         wait $waiting
         echo \"bpffs mounts: $(grep -c ' {root} ' /proc/self/mountinfo)\"
         ls {first} {second} >/dev/null
         echo both pinned",
        root = datapath::pins::BPFFS_ROOT,
        pause = hooks::PAUSE_AT,
        point = hooks::BEFORE_BPFFS_MOUNT,
        lan = GW_IF_CLIENT.name,
        wan = GW_IF_WAN.name,
        first = first.path().display(),
        second = second.path().display(),
    );
    let mut cmd = lab.command(Role::Gw, "unshare");
    cmd.args([
        "--mount",
        "--pid",
        "--fork",
        "--mount-proc",
        "--propagation",
        "private",
        "sh",
        "-ec",
    ])
    .arg(&script)
    .arg(agent::binary());
    let stdout = agent::succeed(&mut cmd).unwrap();
    // The two attach in either order.
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "both pinned",
            "bpffs mounts: 1",
            &format!("{}: attached (native mode)", GW_IF_CLIENT.name),
            &format!("{}: attached (native mode)", GW_IF_WAN.name),
        ],
        "{stdout}"
    );
}
