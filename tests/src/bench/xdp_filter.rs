//! xdp-filter (Debian's xdp-tools) as the peer to compare against: loaded on a veth inside a
//! scratch network namespace this module creates and deletes, then opened by program id so
//! the benchmark runs it through BPF_PROG_TEST_RUN exactly like our program.
//!
//! xdp-filter runs from a thread that entered the namespace with setns(CLONE_NEWNET) (its
//! children inherit that thread's namespace), never through `ip netns exec`: that one also
//! remounts /sys, and xdp-filter keeps its maps and program pinned under /sys/fs/bpf, which
//! must be the root mount namespace's bpffs for later `xdp-filter` calls (and our cleanup)
//! to find them.

use std::{
    borrow::Cow,
    fs::File,
    os::fd::{AsFd as _, OwnedFd},
    process::{self, Command},
    thread,
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{loaded_programs, ProgramInfo, Xdp};
use aya_obj::programs::XdpAttachType;
use nix::sched::{setns, CloneFlags};

use crate::lab::{run, NETNS_DIR};

/// Scratch namespaces are `apnsbench-<pid>`: the pid tells a later run whether the owner is
/// gone, so a crashed run's namespace can be swept without touching a live one.
const NS_PREFIX: &str = "apnsbench-";
/// The veth xdp-filter is loaded on (and its peer), inside the scratch namespace.
const IFACE: &str = "xfb0";
const PEER: &str = "xfb1";

/// The rules xdp-filter gets: the closest it can express to our policy. It has no prefixes
/// (exact addresses only) and no notion of direction beyond src/dst, so: the APNs device port
/// and one Apple address, both as destinations.
pub const XDP_FILTER_RULES: [&[&str]; 2] = [&["port", "5223"], &["ip", "17.0.0.1"]];

/// A network namespace made for one benchmark and deleted on drop.
pub struct ScratchNs {
    name: String,
    fd: OwnedFd,
}

impl ScratchNs {
    pub fn create() -> Result<ScratchNs> {
        sweep_stale();
        let name = format!("{NS_PREFIX}{}", process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let path = format!("{NETNS_DIR}/{name}");
        match File::open(&path) {
            Ok(file) => Ok(ScratchNs {
                name,
                fd: file.into(),
            }),
            Err(err) => {
                let _ = run(Command::new("ip").args(["netns", "delete", &name]));
                Err(err).with_context(|| format!("opening {path}"))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a fresh thread inside the namespace (network only; the mount namespace and
    /// with it /sys/fs/bpf stay ours). Commands it spawns run in the namespace too.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        let fd = self.fd.as_fd();
        thread::scope(|scope| {
            scope
                .spawn(move || -> Result<T> {
                    setns(fd, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("setns into network namespace {}", self.name))?;
                    f()
                })
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
        .with_context(|| format!("in network namespace {}", self.name))
    }

    /// `ip -n NAME ARGS`.
    fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        if let Err(err) = run(Command::new("ip").args(["netns", "delete", &self.name])) {
            eprintln!("apns-bench: {err:#}");
        }
    }
}

/// Deletes scratch namespaces whose process is gone, unloading xdp-filter in them first so
/// its pinned program and maps go too. Problems are printed, not fatal.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let stale = ScratchNs {
            name: name.clone(),
            fd: file.into(),
        };
        // Fails harmlessly when xdp-filter was never loaded there.
        let _ = stale.run_in(|| run(Command::new("xdp-filter").args(["unload", IFACE])));
        eprintln!("apns-bench: removing stale namespace {name} (pid {pid} is gone)");
        drop(stale);
    }
}

/// xdp-filter loaded with [`XDP_FILTER_RULES`] on a veth of a scratch namespace. Dropping it
/// unloads xdp-filter (removing its pins) and deletes the namespace.
pub struct XdpFilter {
    /// Our handle on xdp-filter's program; dropped first (fields drop in order).
    program: Xdp,
    pub program_id: u32,
    pub program_name: String,
    ns: ScratchNs,
}

impl XdpFilter {
    pub fn load() -> Result<XdpFilter> {
        let ns = ScratchNs::create()?;
        ns.ip(&["link", "add", IFACE, "type", "veth", "peer", "name", PEER])?;
        ns.ip(&["link", "set", IFACE, "up"])?;
        ns.ip(&["link", "set", PEER, "up"])?;
        // From here on, an error unloads xdp-filter again (a load that failed half-way may
        // have pinned something): the guard comes before the load.
        let mut guard = Unloader {
            ns: &ns,
            armed: true,
        };
        // Generic (skb) mode: the benchmark never sends a packet through the interface, it
        // only needs xdp-filter to load and configure its program.
        // `run_in` and `run` name the namespace and the command line in their errors.
        ns.run_in(|| run(Command::new("xdp-filter").args(["load", IFACE, "--mode", "skb"])))?;
        for rule in XDP_FILTER_RULES {
            ns.run_in(|| run(Command::new("xdp-filter").args(rule)))?;
        }
        let id = xdp_program_id(&ns)?;
        let info = loaded_programs()
            .filter_map(Result::ok)
            .find(|info| info.id() == id)
            .with_context(|| format!("program id {id} (xdp-filter's) is not loaded"))?;
        let program_name = info.name_as_str().unwrap_or("?").to_owned();
        let program = program_from_info(info, &program_name)?;
        guard.armed = false;
        drop(guard);
        Ok(XdpFilter {
            program,
            program_id: id,
            program_name,
            ns,
        })
    }

    pub fn xdp(&self) -> &Xdp {
        &self.program
    }

    /// How xdp-filter was loaded and configured, for the report.
    pub fn commands() -> Vec<String> {
        let mut commands = vec![format!("xdp-filter load {IFACE} --mode skb")];
        commands.extend(
            XDP_FILTER_RULES
                .iter()
                .map(|rule| format!("xdp-filter {}", rule.join(" "))),
        );
        commands
    }
}

fn program_from_info(info: ProgramInfo, name: &str) -> Result<Xdp> {
    Xdp::from_program_info(info, Cow::Owned(name.to_owned()), XdpAttachType::Interface)
        .with_context(|| format!("opening xdp-filter's program {name} as an XDP program"))
}

/// The id of the XDP program attached to [`IFACE`], from `ip -j link show`.
fn xdp_program_id(ns: &ScratchNs) -> Result<u32> {
    let text = ns.ip(&["-j", "link", "show", "dev", IFACE])?;
    let links: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing `ip -n {} -j link show dev {IFACE}`", ns.name()))?;
    let Some(id) = links[0]["xdp"]["prog"]["id"].as_u64() else {
        bail!(
            "no XDP program on {IFACE} in {} after xdp-filter load: {text}",
            ns.name()
        );
    };
    u32::try_from(id).context("program id out of range")
}

/// Unloads xdp-filter from [`IFACE`] unless disarmed: covers errors between load and the
/// `XdpFilter` that owns the cleanup from then on.
struct Unloader<'a> {
    ns: &'a ScratchNs,
    armed: bool,
}

impl Drop for Unloader<'_> {
    fn drop(&mut self) {
        if self.armed {
            unload(self.ns);
        }
    }
}

/// Where libxdp (under xdp-filter) pins its dispatchers; it leaves the folder itself behind.
const LIBXDP_PIN_DIR: &str = "/sys/fs/bpf/xdp";

fn unload(ns: &ScratchNs) {
    if let Err(err) = ns.run_in(|| run(Command::new("xdp-filter").args(["unload", IFACE]))) {
        eprintln!("apns-bench: xdp-filter unload {IFACE}: {err:#}");
    }
    // Only an empty folder goes: another libxdp user's pins stay where they are.
    let _ = std::fs::remove_dir(LIBXDP_PIN_DIR);
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        unload(&self.ns);
    }
}
