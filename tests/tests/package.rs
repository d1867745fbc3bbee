//! The Debian package on this machine. `cargo xtask test` builds it (`cargo xtask dist`) after
//! `cargo test` and runs these tests with `--ignored`, naming it in `APNS_AGENT_DEB`; a plain
//! `cargo test` lists them as ignored. Needs root, dpkg, lintian, man-db and ansible
//! (`cargo xtask setup` installs them).
//!
//! - the package: its file list, control fields and maintainer scripts, lintian; installed
//!   with dpkg, what it installed works (`--version`, `man -l`, bash completion, the unit is
//!   enabled); a datapath attached by the installed agent in a lab namespace; purged, and
//!   nothing of it is left: files, the unit and its enablement, pins, the XDP links.
//! - the Ansible role (packaging/ansible) against localhost: installs the package, a second
//!   run changes nothing, a bad variable fails before anything is replaced.
//!
//! This may run on a live gateway: the tests refuse (fail, saying why) where an apns-agent
//! package, binary, unit, configuration or pinned datapath exists that they did not make.
//! `APNS_AGENT_PACKAGE_TESTS=skip` makes `cargo xtask test` skip them, and say so.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use apns_agent::{cli::Cli, datapath::policy::Mode, settings::config::Config};
use apns_tests::{
    agent::TestPins,
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT, GW_IF_WAN},
};
use clap::CommandFactory as _;

const PACKAGE: &str = "apns-agent";
const CONFIG: &str = "/etc/apns-agent/config.toml";
const UNIT: &str = "apns-agent.service";
/// Where a unit can be, in the package (usr/lib) or put there by an operator.
const UNIT_DIRS: [&str; 3] = [
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/etc/systemd/system",
];
/// The symlink that enabling the unit makes.
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/apns-agent.service";
/// deb-systemd-helper's records of what it enabled and masked.
const DSH_STATE: [&str; 2] = [
    "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-helper-masked",
];
/// The pin directory an apns-agent on this machine would use by default.
const DEFAULT_PINS: &str = "/sys/fs/bpf/apns-agent";
/// Where the Ansible role stages the package.
const STAGE: &str = "/var/cache/apns-agent";
/// Serialises the package tests of every checkout on this machine: there is one dpkg.
const LOCK: &str = "/run/lock/apns-agent-package-test.lock";
/// Written before a test installs the package: the pid of the test process. A package found
/// installed with this marker naming a dead process is a crashed test run's, and is purged.
const MARKER: &str = "/run/apns-agent-package-test.pid";

fn deb() -> PathBuf {
    let path = std::env::var_os("APNS_AGENT_DEB")
        .map(PathBuf::from)
        .expect("APNS_AGENT_DEB names the .deb (cargo xtask test builds it and sets it)");
    assert!(
        path.is_file(),
        "APNS_AGENT_DEB={} is not a file",
        path.display()
    );
    path
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `cmd` and returns its stdout; panics with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let output = cmd
        .output()
        .unwrap_or_else(|err| panic!("running {cmd:?}: {err}"));
    assert!(
        output.status.success(),
        "{cmd:?}: {}\n{}",
        output.status,
        text(&output)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `dpkg-query`'s status of the package, `None` when dpkg has no record of it at all.
fn package_status() -> Option<String> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", PACKAGE])
        .output()
        .expect("dpkg-query runs");
    let status = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    (output.status.success() && !status.starts_with("unknown ok not-installed")).then_some(status)
}

/// Runs dpkg with `args`, retrying for a while when another package manager holds its lock
/// (someone's apt-get on this shared machine).
fn dpkg(args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let output = Command::new("dpkg")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .expect("dpkg runs");
        let said = text(&output);
        if output.status.success() {
            return said;
        }
        if said.contains("lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        panic!("dpkg {}: {}\n{said}", args.join(" "), output.status);
    }
}

/// One test's hold on this machine's package state: taken only where no apns-agent is
/// installed (or a crashed test run's is, which is purged first); dropping it purges the
/// package and removes what the test made, whatever happened.
struct PackageSession {
    _lock: fs::File,
    /// Paths the test made outside the package (removed on drop).
    made: Vec<PathBuf>,
}

impl PackageSession {
    fn begin() -> PackageSession {
        let lock = fs::File::create(LOCK).unwrap_or_else(|err| panic!("creating {LOCK}: {err}"));
        lock.lock()
            .unwrap_or_else(|err| panic!("locking {LOCK}: {err}"));

        // A crashed test run's package: purge it, as the lab sweeps stale namespaces.
        if let Ok(pid) = fs::read_to_string(MARKER) {
            let alive = Path::new("/proc").join(pid.trim()).exists();
            if !alive && package_status().is_some() {
                eprintln!(
                    "purging the apns-agent package a crashed test run (pid {}) left",
                    pid.trim()
                );
                dpkg(&["--purge", PACKAGE]);
            }
            if !alive {
                let _ = fs::remove_file(MARKER);
            }
        }

        // Checked before the session exists: its drop purges, and what is found here is not
        // this test's to purge.
        let mut found = Vec::new();
        if let Some(status) = package_status() {
            found.push(format!("package {PACKAGE} ({status})"));
        }
        let mut paths: Vec<String> = [
            "/usr/bin/apns-agent",
            "/etc/apns-agent",
            DEFAULT_PINS,
            WANTS,
            STAGE,
        ]
        .map(str::to_owned)
        .into();
        paths.extend(UNIT_DIRS.iter().map(|dir| format!("{dir}/{UNIT}")));
        found.extend(paths.into_iter().filter(|p| Path::new(p).exists()));
        assert!(
            found.is_empty(),
            "REFUSING to run the package tests: this machine already has {} that these tests did \
             not install, and they would replace and purge it (this may be a live gateway). \
             Remove it yourself, or set APNS_AGENT_PACKAGE_TESTS=skip to skip these tests.",
            found.join(", ")
        );
        PackageSession {
            _lock: lock,
            made: Vec::new(),
        }
    }

    /// Installs the package (marking it as this test's first).
    fn install(&self, deb: &Path) {
        fs::write(MARKER, std::process::id().to_string()).unwrap();
        dpkg(&["--install", &deb.to_string_lossy()]);
    }

    fn made(&mut self, path: impl Into<PathBuf>) {
        self.made.push(path.into());
    }
}

impl Drop for PackageSession {
    fn drop(&mut self) {
        if package_status().is_some() {
            let output = Command::new("dpkg").args(["--purge", PACKAGE]).output();
            match output {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!("cleaning up: dpkg --purge {PACKAGE}: {}", text(&output)),
                Err(err) => eprintln!("cleaning up: dpkg --purge {PACKAGE}: {err}"),
            }
        }
        for path in &self.made {
            let removed = if path.is_dir() {
                fs::remove_dir_all(path)
            } else {
                fs::remove_file(path)
            };
            if let Err(err) = removed.or_else(|err| match err.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(err),
            }) {
                eprintln!("cleaning up {}: {err}", path.display());
            }
        }
        let _ = fs::remove_file(MARKER);
    }
}

/// The man pages the package must have: apns-agent.8 and one per visible subcommand, nested
/// ones included, from the same definitions `apns-agent generate` renders.
fn expected_man_pages() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut BTreeSet<String>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{prefix}-{}", sub.get_name());
            out.insert(format!("usr/share/man/man8/{name}.8.gz"));
            walk(sub, &name, out);
        }
    }
    let mut pages = BTreeSet::from(["usr/share/man/man8/apns-agent.8.gz".to_owned()]);
    walk(&Cli::command(), "apns-agent", &mut pages);
    pages
}

/// Every file (not directory) the .deb holds, without the leading `./`, with its mode.
fn deb_files(deb: &Path) -> Vec<(String, String)> {
    run(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter(|line| !line.starts_with('d'))
        .map(|line| {
            let mode = line.split_whitespace().next().unwrap().to_owned();
            let path = line.split_whitespace().nth(5).unwrap();
            (path.trim_start_matches("./").to_owned(), mode)
        })
        .collect()
}

fn check_contents(deb: &Path) {
    let files = deb_files(deb);
    let names: BTreeSet<String> = files.iter().map(|(path, _)| path.clone()).collect();
    let mut expected: BTreeSet<String> = [
        "usr/bin/apns-agent",
        "etc/apns-agent/config.toml",
        "usr/lib/systemd/system/apns-agent.service",
        "usr/share/bash-completion/completions/apns-agent",
        "usr/share/zsh/vendor-completions/_apns-agent",
        "usr/share/fish/vendor_completions.d/apns-agent.fish",
        "usr/share/apns-agent/prometheus/apns-agent.rules.yml",
        "usr/share/apns-agent/prometheus/apns-fleet.rules.yml",
        "usr/share/apns-agent/prometheus/prometheus.example.yml",
        "usr/share/apns-agent/prometheus/targets.example.yml",
        "usr/share/apns-agent/grafana/apns-agent.json",
        "usr/share/apns-agent/grafana/apns-fleet.json",
        "usr/share/apns-agent/nftables/apns-mark.nft",
        "usr/share/doc/apns-agent/copyright",
        "usr/share/doc/apns-agent/changelog.Debian.gz",
        "usr/share/doc/apns-agent/README.md",
        "usr/share/doc/apns-agent/operations.md",
        "usr/share/doc/apns-agent/preflight.md",
        "usr/share/doc/apns-agent/clients.md",
        "usr/share/doc/apns-agent/multiprog.md",
        "usr/share/doc/apns-agent/examples/config.toml",
        "usr/share/lintian/overrides/apns-agent",
    ]
    .map(str::to_owned)
    .into();
    expected.extend(expected_man_pages());
    assert_eq!(
        names,
        expected,
        "file list of {}: missing {:?}, unexpected {:?}",
        deb.display(),
        expected.difference(&names).collect::<Vec<_>>(),
        names.difference(&expected).collect::<Vec<_>>()
    );
    for (path, mode) in &files {
        let want = if path == "usr/bin/apns-agent" {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(mode, want, "{path}");
    }

    // The shipped conffile is safe until edited: no interface, monitor mode, no providers.
    let tmp = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--extract")
        .arg(deb)
        .arg(tmp.path()));
    let config = Config::load(&tmp.path().join("etc/apns-agent/config.toml")).unwrap();
    assert!(config.interfaces.is_empty(), "{config:?}");
    assert_eq!(config.policy.mode, Mode::Monitor);
    assert!(config.policy.providers.is_empty());
    // The unit runs the packaged binary.
    let unit =
        fs::read_to_string(tmp.path().join("usr/lib/systemd/system/apns-agent.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/apns-agent run "),
        "{unit}"
    );
    println!(
        "{}: {} files as expected, {} man pages",
        deb.display(),
        names.len(),
        expected_man_pages().len()
    );
}

fn check_control(deb: &Path) {
    let field = |name: &str| {
        run(Command::new("dpkg-deb")
            .args(["--field"])
            .arg(deb)
            .arg(name))
        .trim()
        .to_owned()
    };
    assert_eq!(field("Package"), PACKAGE);
    let version = field("Version");
    assert_eq!(version, format!("{}-1", env!("CARGO_PKG_VERSION")));
    let arch = run(Command::new("dpkg").arg("--print-architecture"))
        .trim()
        .to_owned();
    assert_eq!(field("Architecture"), arch);
    assert!(
        field("Depends").contains("libc6"),
        "Depends: {}",
        field("Depends")
    );
    // libxdp's dispatcher object, for sharing an interface with libxdp programs.
    assert_eq!(field("Suggests"), "libxdp1");
    let name = deb.file_name().unwrap().to_string_lossy();
    assert_eq!(name, format!("{PACKAGE}_{version}_{arch}.deb"));

    let tmp = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(tmp.path()));
    let read = |file: &str| fs::read_to_string(tmp.path().join(file)).unwrap_or_default();
    assert_eq!(read("conffiles").trim(), CONFIG, "conffiles");
    for script in ["postinst", "prerm", "postrm"] {
        assert!(!read(script).is_empty(), "no {script}");
        run(Command::new("sh").arg("-n").arg(tmp.path().join(script)));
        assert!(
            !read(script).contains("#DEBHELPER#"),
            "{script}: token left in"
        );
    }
    let (postinst, prerm, postrm) = (read("postinst"), read("prerm"), read("postrm"));
    // Enabled on install; restarted on upgrade only if running (try-restart, $2 = the old
    // version); never started on a fresh install (the conffile names no interface).
    assert!(
        postinst.contains("deb-systemd-helper enable apns-agent.service"),
        "{postinst}"
    );
    assert!(
        postinst.contains(
            "if [ -n \"$2\" ]; then\n\t\t\tdeb-systemd-invoke try-restart apns-agent.service"
        ),
        "{postinst}"
    );
    assert!(!postinst.contains("deb-systemd-invoke start"), "{postinst}");
    // Every systemctl/invoke call is guarded for machines without a running systemd.
    for (name, script) in [
        ("postinst", &postinst),
        ("prerm", &prerm),
        ("postrm", &postrm),
    ] {
        for (i, line) in script.lines().enumerate() {
            if line.contains("deb-systemd-invoke") || line.contains("systemctl") {
                let before: Vec<&str> = script.lines().take(i).collect();
                assert!(
                    before
                        .iter()
                        .rev()
                        .take(4)
                        .any(|l| l.contains("[ -d /run/systemd/system ]")),
                    "{name} line {}: {line} is not guarded by [ -d /run/systemd/system ]",
                    i + 1
                );
            }
        }
    }
    // Removal stops the service, then unloads the datapath with the binary still there;
    // upgrades do neither.
    let stop = prerm
        .find("deb-systemd-invoke stop apns-agent.service")
        .expect("prerm stops the unit");
    // The binary finds the pin directory in the config: no TOML is parsed in shell.
    let unload = prerm
        .find("timeout 60 /usr/bin/apns-agent unload")
        .expect("prerm unloads");
    let code: Vec<&str> = prerm
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    assert!(!code.iter().any(|line| line.contains("pin_dir")), "{prerm}");
    assert!(stop < unload, "{prerm}");
    assert!(
        prerm.contains("if [ -d /run/systemd/system ] && [ \"$1\" = remove ]"),
        "{prerm}"
    );
    assert!(
        prerm.contains("if [ \"$1\" = \"remove\" ] && [ -x /usr/bin/apns-agent ]"),
        "{prerm}"
    );
    // Purge forgets the enablement.
    assert!(
        postrm.contains("deb-systemd-helper purge apns-agent.service"),
        "{postrm}"
    );
    println!(
        "{}: control fields, conffiles and maintainer scripts as expected",
        deb.display()
    );
}

fn check_lintian(deb: &Path) {
    let output = Command::new("lintian")
        .args([
            "--info",
            "--pedantic",
            "--fail-on",
            "error,warning,info,pedantic",
        ])
        .arg(deb)
        .output()
        .expect("lintian runs (installed by cargo xtask setup)");
    let said = text(&output);
    let tags: Vec<&str> = said
        .lines()
        .filter(|line| {
            ["E:", "W:", "I:", "P:", "X:"]
                .iter()
                .any(|p| line.starts_with(p))
        })
        .collect();
    assert!(
        output.status.success() && tags.is_empty(),
        "lintian {}: {}\n{said}",
        deb.display(),
        output.status
    );
    println!(
        "lintian --pedantic: clean (overrides, each justified: packaging/deb/lintian-overrides)"
    );
}

/// The paths under `dir` (recursively; none if it does not exist) whose name contains `word`.
fn paths_naming(dir: &Path, word: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(word) {
            found.push(path.clone());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(paths_naming(&path, word));
        }
    }
    found
}

/// Whether an XDP program is attached to `interface` in the lab's gateway.
fn xdp_attached(lab: &Lab, interface: &str) -> bool {
    let shown = run(Command::new("ip").args([
        "-n",
        lab.ns_name(Role::Gw),
        "-d",
        "link",
        "show",
        "dev",
        interface,
    ]));
    shown.contains("prog/xdp")
}

#[test]
#[ignore = "needs the .deb: cargo xtask test builds it and runs this with --ignored"]
fn deb_installs_works_and_purges_without_a_trace() {
    apns_tests::require_root!();
    let deb = deb();
    check_contents(&deb);
    check_control(&deb);
    check_lintian(&deb);

    let session = PackageSession::begin();
    session.install(&deb);
    let status = package_status().expect("installed");
    assert!(status.starts_with("install ok installed"), "{status}");
    let installed: Vec<String> = run(Command::new("dpkg").args(["--listfiles", PACKAGE]))
        .lines()
        .map(str::to_owned)
        .collect();

    // What it installed works.
    let version = run(Command::new("/usr/bin/apns-agent").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("apns-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let checked = run(Command::new("/usr/bin/apns-agent").args(["check-config", CONFIG]));
    assert!(
        checked.contains("ok (0 interfaces, mode monitor"),
        "{checked}"
    );
    for page in ["apns-agent.8.gz", "apns-agent-check-config.8.gz"] {
        let shown = run(Command::new("man")
            .arg("-l")
            .arg(format!("/usr/share/man/man8/{page}"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .env("LC_ALL", "C.UTF-8"));
        assert!(
            shown.contains("SYNOPSIS") && shown.contains("apns-agent"),
            "{page}:\n{shown}"
        );
        if page == "apns-agent.8.gz" {
            assert!(
                shown.contains("apns-agent-run(8)") && shown.contains(CONFIG),
                "{shown}"
            );
        }
    }
    // The bash completion: sourced, registered for apns-agent, and it completes a verb.
    let completed = run(Command::new("bash").arg("--norc").arg("-c").arg(
        r#"source /usr/share/bash-completion/completions/apns-agent
           spec=$(complete -p apns-agent) || exit 1
           fn=$(sed -n 's/.* -F \([^ ]*\) .*/\1/p' <<<"$spec")
           COMP_WORDS=(apns-agent che); COMP_CWORD=1; COMP_LINE="apns-agent che"; COMP_POINT=${#COMP_LINE}
           "$fn" apns-agent che apns-agent
           printf '%s\n' "${COMPREPLY[@]}""#,
    ));
    assert_eq!(
        completed.trim(),
        "check-config",
        "bash completion of `apns-agent che`"
    );
    // The unit is installed and enabled (whether or not systemd runs here), not started.
    assert!(Path::new("/usr/lib/systemd/system").join(UNIT).exists());
    let enabled = run(Command::new("systemctl").args(["is-enabled", UNIT]));
    assert_eq!(enabled.trim(), "enabled");
    assert!(fs::symlink_metadata(WANTS).is_ok(), "{WANTS}");
    println!(
        "installed: --version, check-config, man -l, bash completion and the enabled unit work"
    );

    // A datapath attached by the installed agent to the lab gateway's interfaces, pinned
    // where the config says (a TOML literal string), beside an allow-list file that is gone:
    // the removal must unload it all the same.
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let append = |line: String| {
        let mut config = fs::OpenOptions::new().append(true).open(CONFIG).unwrap();
        writeln!(config, "{line}").unwrap();
    };
    append(format!("pin_dir = '{}'", pins.path().display()));
    for interface in [GW_IF_CLIENT.name, GW_IF_WAN.name] {
        run(lab
            .command(Role::Gw, "/usr/bin/apns-agent")
            .arg("--pin-dir")
            .arg(pins.path())
            .args(["attach", "--xdp-mode", "skb", interface]));
        assert!(xdp_attached(&lab, interface), "{interface}");
    }
    assert!(pins.dir().is_loaded());
    // The allow-list goes after the attach (which refuses a config it cannot read).
    append("allow_files = ['/etc/apns-agent/lists/gone.txt']".to_owned());

    let purged = dpkg(&["--purge", PACKAGE]);
    println!("dpkg --purge {PACKAGE}:\n{purged}");

    // Nothing of it is left.
    assert_eq!(package_status(), None, "dpkg still knows {PACKAGE}");
    let left: Vec<&String> = installed
        .iter()
        .filter(|path| {
            let path = Path::new(path.as_str());
            // Shared directories (/usr/bin, /etc, ...) belong to other packages too.
            path.exists() && (!path.is_dir() || path.to_string_lossy().contains("apns-agent"))
        })
        .collect();
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
    assert!(!Path::new("/etc/apns-agent").exists());
    let state = apns_agent::settings::state::path(pins.dir());
    assert!(!state.exists(), "{} is left", state.display());
    for dir in UNIT_DIRS {
        assert!(!Path::new(dir).join(UNIT).exists(), "{dir}/{UNIT}");
    }
    assert!(fs::symlink_metadata(WANTS).is_err(), "{WANTS} is left");
    for dir in DSH_STATE.iter().chain(&["/var/lib/dpkg/info"]) {
        let records = paths_naming(Path::new(dir), PACKAGE);
        assert!(records.is_empty(), "records left: {records:?}");
    }
    assert!(
        !pins.path().exists(),
        "the pins at {} are left",
        pins.path().display()
    );
    assert!(!Path::new(DEFAULT_PINS).exists(), "{DEFAULT_PINS} appeared");
    for interface in [GW_IF_CLIENT.name, GW_IF_WAN.name] {
        assert!(
            !xdp_attached(&lab, interface),
            "{interface} still has an XDP program"
        );
    }
    println!(
        "purged: no file, unit, enablement, dpkg record, pin or XDP link left of {} installed paths",
        installed.len()
    );
}

/// The example playbook (packaging/ansible/site.yml) against localhost, `connection: local`.
struct Ansible {
    dir: tempfile::TempDir,
}

impl Ansible {
    fn new(deb: &Path) -> Ansible {
        let dir = tempfile::tempdir().unwrap();
        let inventory = format!(
            r#"all:
  children:
    apns_gateways:
      hosts:
        localhost:
          ansible_connection: local
          ansible_become: false
          ansible_python_interpreter: /usr/bin/python3
          apns_agent_deb: {deb}
          apns_agent_site: test
          apns_agent_interfaces: [lan0, wan0]
          apns_agent_mode: enforce
          apns_agent_xdp_mode: skb
          apns_agent_providers: ["192.0.2.10/32"]
          apns_agent_ports: {{5223: [apns, pinhole], 443: [apns], 2197: [apns, pinhole, provider]}}
          apns_agent_fastpath: {{lan0: redirect, "lan2.100": mark}}
          apns_agent_mark: {{value: 0x400000, mask: 0x400000}}
    prometheus:
      hosts: {{}}
"#,
            deb = deb.display()
        );
        fs::write(dir.path().join("inventory.yml"), inventory).unwrap();
        Ansible { dir }
    }

    /// Runs the playbook with `extra` variables (JSON); returns (succeeded, output, recap).
    fn play(&self, extra: &str) -> (bool, String, String) {
        let home = self.dir.path().join("home");
        let output = Command::new("ansible-playbook")
            .arg("-i")
            .arg(self.dir.path().join("inventory.yml"))
            .arg(workspace().join("packaging/ansible/site.yml"))
            .args(["--extra-vars", extra])
            .env(
                "ANSIBLE_ROLES_PATH",
                workspace().join("packaging/ansible/roles"),
            )
            // Everything ansible keeps (its temp and cache folders) in this test's folder.
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", home.join("tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_FORCE_COLOR", "0")
            .output()
            .expect("ansible-playbook runs (installed by cargo xtask setup)");
        let said = text(&output);
        let recap = said
            .lines()
            .find(|line| line.starts_with("localhost") && line.contains("changed="))
            .unwrap_or_else(|| panic!("no PLAY RECAP for localhost:\n{said}"))
            .to_owned();
        (output.status.success(), said, recap)
    }
}

fn recap_count(recap: &str, key: &str) -> u32 {
    recap
        .split_whitespace()
        .find_map(|field| field.strip_prefix(&format!("{key}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {recap}"))
}

#[test]
#[ignore = "needs the .deb: cargo xtask test builds it and runs this with --ignored"]
fn ansible_role_installs_idempotently_and_refuses_a_bad_config() {
    apns_tests::require_root!();
    let deb = deb();
    let mut session = PackageSession::begin();
    session.made(STAGE);
    session.made(MARKER);
    fs::write(MARKER, std::process::id().to_string()).unwrap();
    let ansible = Ansible::new(&deb);

    // First run: installs the package and writes the configuration.
    let (ok, said, recap) = ansible.play("{}");
    assert!(ok && recap_count(&recap, "failed") == 0, "{said}");
    assert!(recap_count(&recap, "changed") > 0, "{recap}");
    let status = package_status().expect("the role installed the package");
    assert!(status.starts_with("install ok installed"), "{status}");
    let config = Config::load(Path::new(CONFIG)).unwrap();
    assert_eq!(config.interfaces, ["lan0", "wan0"]);
    assert_eq!(config.policy.mode, Mode::Enforce);
    assert_eq!(config.policy.providers.len(), 1);
    assert_eq!(config.policy.ports.len(), 3);
    assert_eq!(config.fastpath.len(), 2);
    let enabled = run(Command::new("systemctl").args(["is-enabled", UNIT]));
    assert_eq!(enabled.trim(), "enabled");
    println!("first run: {recap}");

    // Second run: nothing to do.
    let (ok, said, recap) = ansible.play("{}");
    assert!(ok, "{said}");
    assert_eq!(recap_count(&recap, "changed"), 0, "not idempotent:\n{said}");
    println!("second run: {recap}");

    // Bad variables fail before anything is replaced: one the role's argument spec refuses,
    // one only the agent's check-config refuses (host bits set in a provider prefix).
    let before = fs::read(CONFIG).unwrap();
    let modified = fs::metadata(CONFIG).unwrap().modified().unwrap();
    for (extra, reason) in [
        (
            r#"{"apns_agent_mode": "block"}"#,
            "apns_agent_mode must be one of",
        ),
        (
            r#"{"apns_agent_providers": ["192.0.2.10/24"]}"#,
            "has host bits set",
        ),
    ] {
        let (ok, said, recap) = ansible.play(extra);
        assert!(
            !ok && recap_count(&recap, "failed") == 1,
            "{extra} did not fail:\n{said}"
        );
        assert!(
            said.contains(reason),
            "{extra}: the failure does not say {reason:?}:\n{said}"
        );
        assert!(
            !said.contains("TASK [apns_agent : Install the package]")
                && !said.contains("TASK [apns_agent : Write the configuration]"),
            "{extra}: the role went on to install or write:\n{said}"
        );
        assert_eq!(recap_count(&recap, "changed"), 0, "{extra}: {recap}");
        println!("{extra}: refused ({reason}) before anything was replaced");
    }
    assert_eq!(fs::read(CONFIG).unwrap(), before, "{CONFIG} was replaced");
    assert_eq!(fs::metadata(CONFIG).unwrap().modified().unwrap(), modified);
    assert_eq!(package_status(), Some(status));
}
