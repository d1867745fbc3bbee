//! The host's checks: kernel, bpffs and the pin directory, BTF, capabilities, the config, IP
//! forwarding, conntrack and the metrics address. Sysctls are read from /proc/sys, which
//! follows the caller's network namespace.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener},
    path::Path,
};

use apns_common::{fastpath::FastPath, label::Label as _};

use crate::{
    datapath::{
        features::{Feature, Features, FEATURES_OFF_VAR},
        multiprog::{self, Multiprog},
        object,
        pins::{self, PinDir, BPFFS_ROOT},
        status, Datapath,
    },
    privileges,
    settings::Settings,
};

use super::{yes_no, Check};

/// Below this, APNs' idle connections (keep-alive every 10 to 20 minutes) fall out of the
/// connection-tracking table and break through NAT (docs/apns.md).
pub const MIN_ESTABLISHED_TIMEOUT: u64 = 1800;
/// Kernel BTF: what bpftool and the verifier's messages use to name types.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
const ESTABLISHED_TIMEOUT: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established";

/// Reads a one-number file of /proc/sys.
pub fn sysctl(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The config, as every subcommand resolves it.
pub fn config(settings: &anyhow::Result<Settings>) -> Check {
    match settings {
        Ok(settings) => {
            let config = &settings.config;
            let source = match settings.config_file() {
                Some(path) => format!("{} is valid", path.display()),
                None => format!(
                    "no config file ({} does not exist): the built-in defaults",
                    crate::settings::config::DEFAULT_CONFIG
                ),
            };
            Check::ok(
                "config",
                format!(
                    "{source} ({} interfaces, {} allow-list prefixes, {} provider prefixes, {} ports)",
                    config.interfaces.len(),
                    config.policy.allow.len(),
                    config.policy.providers.len(),
                    config.policy.ports.len()
                ),
            )
        }
        Err(err) => Check::fail(
            "config",
            format!("{err:#}"),
            "correct the file (`apns-agent check-config FILE` says the same without the other checks); the checks below use the built-in defaults",
        ),
    }
}

/// The kernel's optional features, probed (never guessed from the version: builds of one
/// version differ), and the way each fast path takes with them.
pub fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    if !privileges::missing(privileges::CHANGE).is_empty() {
        return Check::warn(
            "kernel",
            format!("Linux {release}: features not probed (probing loads BPF programs)"),
            "run doctor as root (see the capabilities check) to probe them",
        );
    }
    let features = match Features::probe() {
        Ok(features) => features,
        Err(err) => {
            return Check::fail(
                "kernel",
                format!("{err:#}"),
                format!("correct or unset {FEATURES_OFF_VAR}"),
            )
        }
    };
    let listed: Vec<String> = Feature::ALL
        .iter()
        .map(|&feature| format!("{} {}", feature.as_str(), yes_no(features.has(feature))))
        .collect();
    let ways: Vec<String> = features
        .fastpath_ways()
        .iter()
        .map(|(mode, way)| format!("{mode}: {way}"))
        .collect();
    let detail = format!(
        "Linux {release}: {}; {}",
        listed.join(", "),
        ways.join("; ")
    );
    if let Some(refusal) = features.attach_refusal() {
        Check::fail("kernel", detail, format!("{refusal}; upgrade the kernel"))
    } else if let Some(refusal) = features.refusal(FastPath::Redirect) {
        Check::warn("kernel", detail, refusal)
    } else {
        Check::ok("kernel", detail)
    }
}

/// The verifier's verdict on every program of the real datapath, loaded with this kernel's
/// features into a private instance with nothing attached or pinned: one check per program.
pub fn verifier() -> Vec<Check> {
    if !privileges::missing(privileges::CHANGE).is_empty() {
        return vec![Check::warn(
            "verifier",
            "not asked (loading programs needs the capabilities above)",
            "run doctor as root",
        )];
    }
    match object::verify_all() {
        Ok(verdicts) => verdicts
            .into_iter()
            .map(|(program, verdict)| {
                let check = format!("verifier {program}");
                match verdict {
                    Ok(counts) => Check::ok(
                        check,
                        format!(
                            "accepted: {} instructions, {} processed",
                            counts.translated, counts.processed
                        ),
                    ),
                    Err(line) => Check::fail(
                        check,
                        format!("refused: {line}"),
                        "report it with `apns-agent doctor --json` and `uname -a`; the datapath will not load on this kernel",
                    ),
                }
            })
            .collect(),
        Err(err) => vec![Check::fail(
            "verifier",
            format!("{err:#}"),
            "report it with `apns-agent doctor --json` and `uname -a`",
        )],
    }
}

/// Whether the agent can share interfaces with libxdp programs (docs/multiprog.md): its
/// component loaded as an extension of a slot of libxdp's dispatcher, both attached nowhere.
/// Where it cannot, `always` fails (every attach would), `auto` only says so: it shares only
/// interfaces that run a dispatcher, and those are refused by their own check.
pub fn multiprog(choice: Multiprog) -> Check {
    const CHECK: &str = "multiprog";
    if choice == Multiprog::Never {
        return Check::ok(CHECK, "not used (xdp_multiprog = \"never\")");
    }
    if !privileges::missing(privileges::CHANGE).is_empty() {
        return Check::warn(
            CHECK,
            "not asked (loading programs needs the capabilities above)",
            "run doctor as root",
        );
    }
    let (unavailable, fix) = match object::verify_component() {
        Ok(Ok(counts)) => {
            return Check::ok(
                CHECK,
                format!(
                    "the agent's component loads in libxdp's dispatcher ({}): {} instructions, {} processed",
                    multiprog::dispatcher_object()
                        .map_or_else(|_| "?".to_owned(), |path| path.display().to_string()),
                    counts.translated,
                    counts.processed
                ),
            )
        }
        Ok(Err(line)) => (
            format!("this kernel refuses the agent's component as an extension program: {line}"),
            "a kernel that loads extension programs (Debian 11 to 13 do), or xdp_multiprog = \"auto\"",
        ),
        Err(err) => (
            format!("{err:#}"),
            "install libxdp1 (xdp-tools), or xdp_multiprog = \"auto\"",
        ),
    };
    match choice {
        Multiprog::Always => Check::fail(CHECK, unavailable, fix),
        _ => Check::ok(
            CHECK,
            format!("unavailable, so interfaces that run xdp-filter or another libxdp program cannot be shared: {unavailable}"),
        ),
    }
}

/// bpffs at /sys/fs/bpf: mounted, or mountable by the agent.
pub fn bpffs() -> Check {
    let root = Path::new(BPFFS_ROOT);
    if pins::is_bpffs(root) {
        return Check::ok("bpffs", format!("mounted at {BPFFS_ROOT}"));
    }
    if let Err(err) = pins::refuse_private_mount_namespace() {
        return Check::fail(
            "bpffs",
            format!("not mounted at {BPFFS_ROOT}, and this is a private mount namespace"),
            format!("{err:#}"),
        );
    }
    if !root.is_dir() {
        return Check::fail(
            "bpffs",
            format!("{BPFFS_ROOT} does not exist"),
            "the kernel needs CONFIG_BPF_SYSCALL and sysfs mounted at /sys",
        );
    }
    if privileges::missing(&[caps::Capability::CAP_SYS_ADMIN]).is_empty() {
        Check::ok(
            "bpffs",
            format!("not mounted at {BPFFS_ROOT}; the agent mounts it when it starts"),
        )
    } else {
        Check::warn(
            "bpffs",
            format!("not mounted at {BPFFS_ROOT}, and this process could not mount it (no CAP_SYS_ADMIN)"),
            format!("mount it at boot (`mount -t bpf bpf {BPFFS_ROOT}`, or a bpffs line in /etc/fstab), or give the agent CAP_SYS_ADMIN"),
        )
    }
}

/// The pin directory: where it is and what is loaded there.
pub fn datapath(pins: &PinDir) -> Check {
    let root = pins.root().display();
    if !pins.root().starts_with(BPFFS_ROOT) {
        return Check::fail(
            "pin directory",
            format!("{root} is not under {BPFFS_ROOT}"),
            format!("set pin_dir (or --pin-dir) to a directory under {BPFFS_ROOT}"),
        );
    }
    if !pins.is_loaded() {
        return Check::ok(
            "pin directory",
            format!("{root}: nothing loaded yet (`run` or `attach` loads the datapath)"),
        );
    }
    let missing = privileges::missing(privileges::READ);
    if !missing.is_empty() {
        return Check::warn(
            "pin directory",
            format!(
                "{root}: a datapath is pinned there, not read ({} missing)",
                missing.join(", ")
            ),
            "run doctor as root to check it",
        );
    }
    // The two pieces of `status` this line needs, not the policy or the counters.
    let read = || -> anyhow::Result<_> {
        let interfaces = Datapath::open(pins)?.interface_status()?;
        Ok((interfaces, status::program(pins)?))
    };
    match read() {
        Ok((interfaces, program)) => {
            let attached = interfaces.iter().filter(|i| i.attached).count();
            let program =
                program.map_or("no program pin".to_owned(), |p| format!("program {}", p.id));
            Check::ok(
                "pin directory",
                format!("{root}: a datapath is loaded ({program}, {attached} interfaces attached); `run` adopts it with its counters"),
            )
        }
        Err(err) => Check::fail(
            "pin directory",
            format!("{root}: {err:#}"),
            format!("`apns-agent --pin-dir {root} unload` removes what is there (its counters are lost); then `run` loads this version"),
        ),
    }
}

/// Kernel BTF.
pub fn btf() -> Check {
    if Path::new(VMLINUX_BTF).exists() {
        Check::ok("btf", format!("kernel BTF at {VMLINUX_BTF}"))
    } else {
        Check::warn(
            "btf",
            format!("no kernel BTF ({VMLINUX_BTF} is missing)"),
            "the datapath carries its own BTF and loads without it, but bpftool and verifier messages lose type names; a kernel built with CONFIG_DEBUG_INFO_BTF=y has it",
        )
    }
}

/// What the agent needs to load, attach and pin.
pub fn capabilities() -> Check {
    let needed: Vec<String> = privileges::CHANGE
        .iter()
        .map(|cap| cap.to_string())
        .collect();
    let missing = privileges::missing(privileges::CHANGE);
    if missing.is_empty() {
        Check::ok(
            "capabilities",
            format!("this process has {}", needed.join(", ")),
        )
    } else {
        Check::fail(
            "capabilities",
            format!("missing {} (the agent needs {})", missing.join(", "), needed.join(", ")),
            "run the agent as root, or grant these capabilities (the systemd unit's AmbientCapabilities= does)",
        )
    }
}

/// IPv4 and IPv6 forwarding: a gateway forwards.
pub fn forwarding() -> Check {
    let v4 = sysctl("/proc/sys/net/ipv4/ip_forward");
    let v6 = sysctl("/proc/sys/net/ipv6/conf/all/forwarding");
    let word = |value: Option<u64>| match value {
        Some(0) => "off",
        Some(_) => "on",
        None => "unknown",
    };
    let detail = format!("IPv4 forwarding {}, IPv6 forwarding {}", word(v4), word(v6));
    let mut off = Vec::new();
    if v4 == Some(0) {
        off.push("net.ipv4.ip_forward=1");
    }
    if v6 == Some(0) {
        off.push("net.ipv6.conf.all.forwarding=1");
    }
    if off.is_empty() {
        Check::ok("forwarding", detail)
    } else {
        Check::warn(
            "forwarding",
            detail,
            format!(
                "on a gateway: `sysctl -w {}` (and persist it in /etc/sysctl.d/); the redirect fast path forwards only what the kernel would",
                off.join(" ")
            ),
        )
    }
}

/// Connection tracking and its established-TCP timeout.
pub fn conntrack() -> Check {
    match sysctl(ESTABLISHED_TIMEOUT) {
        None => Check::ok(
            "conntrack",
            "not loaded here: no connection state on this host to time out APNs connections",
        ),
        Some(seconds) if seconds < MIN_ESTABLISHED_TIMEOUT => Check::warn(
            "conntrack",
            format!("established TCP connections are forgotten after {seconds} s idle: APNs connections idle for 10 to 20 minutes break through NAT"),
            format!("`sysctl -w net.netfilter.nf_conntrack_tcp_timeout_established={}` or more (the kernel's default is 432000), persisted in /etc/sysctl.d/", MIN_ESTABLISHED_TIMEOUT),
        ),
        Some(seconds) => Check::ok(
            "conntrack",
            format!("established TCP timeout {seconds} s (APNs needs at least {MIN_ESTABLISHED_TIMEOUT} s)"),
        ),
    }
}

/// Whether `run` can serve /metrics at `addr`. Binding sends nothing.
pub fn metrics(addr: SocketAddr) -> Check {
    let check = format!("metrics {addr}");
    match TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            Check::ok(check, "free: `run` can serve /metrics there")
        }
        Err(err) if err.kind() == ErrorKind::AddrInUse => match listener_owner(addr.port()) {
            Some((pid, name)) if name == "apns-agent" => Check::ok(
                check,
                format!("served by the running apns-agent (pid {pid})"),
            ),
            owner => Check::fail(
                check,
                match owner {
                    Some((pid, name)) => format!("taken by process {pid} ({name})"),
                    None => "taken by another process".to_owned(),
                },
                "stop that process, or give `run --metrics-addr` another address",
            ),
        },
        Err(err) => Check::fail(
            check,
            format!("cannot bind it: {err}"),
            "give `run --metrics-addr` an address of this host (the default is loopback)",
        ),
    }
}

/// The process that listens on TCP `port` in this network namespace: the socket's inode
/// from /proc/net/tcp{,6}, then the process holding it among /proc/*/fd.
fn listener_owner(port: u16) -> Option<(u32, String)> {
    const LISTEN: &str = "0A";
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            std::fs::read_to_string(table)
                .ok()?
                .lines()
                .skip(1)
                .find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit_once(':')?.1;
                    let listening = fields.get(3) == Some(&LISTEN);
                    (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                        .then(|| fields.get(9).map(|inode| inode.to_string()))?
                })
        })?;
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
        }) {
            let name = std::fs::read_to_string(entry.path().join("comm"))
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "?".to_owned());
            return Some((pid, name));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_names_its_owner() {
        // An address of its own in 127/8: once the listener is gone, no other test binding
        // 127.0.0.1:0 in parallel can take the same port before the second check.
        let listener = TcpListener::bind("127.77.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let check = metrics(addr);
        assert_eq!(check.status, super::super::Level::Fail, "{check:?}");
        assert!(
            check
                .detail
                .contains(&format!("process {}", std::process::id())),
            "{check:?}"
        );
        drop(listener);
        assert_eq!(metrics(addr).status, super::super::Level::Ok);
    }
}
