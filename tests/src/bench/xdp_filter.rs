//! Scratch network namespaces for the benchmark, and what it puts in them: xdp-filter
//! (Debian's xdp-tools) as the peer to compare against, loaded on a veth and then opened by
//! program id so the benchmark runs it through BPF_PROG_TEST_RUN exactly like our program;
//! and [`DispatcherHold`], which keeps the programs it times in the kernel's XDP dispatcher.
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
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{loaded_programs, ProgramInfo, Xdp, XdpMode};
use aya_obj::programs::XdpAttachType;
use nix::sched::{setns, CloneFlags};

use crate::lab::{run, NETNS_DIR};

/// Scratch namespaces are `apnsbench-<pid>-<n>`: the pid tells a later run whether the owner
/// is gone, so a crashed run's namespace can be swept without touching a live one.
const NS_PREFIX: &str = "apnsbench-";
/// The `<n>` of the next scratch namespace of this process.
static NEXT_NS: AtomicUsize = AtomicUsize::new(0);
/// The veths xdp-filter is loaded on inside the scratch namespace, `xfb<i>` (one per
/// instance), and their peers `xfp<i>`.
const IFACE_PREFIX: &str = "xfb";
const PEER_PREFIX: &str = "xfp";

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
        let name = format!(
            "{NS_PREFIX}{}-{}",
            process::id(),
            NEXT_NS.fetch_add(1, Ordering::Relaxed)
        );
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
            .and_then(|rest| rest.split('-').next())
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
        unload(&stale);
        eprintln!("apns-bench: removing stale namespace {name} (pid {pid} is gone)");
        drop(stale);
    }
}

/// xdp-filter loaded with [`XDP_FILTER_RULES`] on veths of a scratch namespace, once per
/// instance (each load is a program of its own; the rules are xdp-filter's shared maps).
/// Dropping it unloads xdp-filter (removing its pins) and deletes the namespace.
pub struct XdpFilter {
    /// Our handles on xdp-filter's programs, one per instance; dropped first (fields drop in
    /// order).
    programs: Vec<Xdp>,
    pub program_ids: Vec<u32>,
    pub program_name: String,
    ns: ScratchNs,
}

impl XdpFilter {
    pub fn load(instances: usize) -> Result<XdpFilter> {
        let ns = ScratchNs::create()?;
        // From here on, an error unloads xdp-filter again (a load that failed half-way may
        // have pinned something): the guard comes before the load.
        let mut guard = Unloader {
            ns: &ns,
            armed: true,
        };
        let mut program_ids = Vec::new();
        for i in 0..instances.max(1) {
            let (iface, peer) = (format!("{IFACE_PREFIX}{i}"), format!("{PEER_PREFIX}{i}"));
            ns.ip(&["link", "add", &iface, "type", "veth", "peer", "name", &peer])?;
            ns.ip(&["link", "set", &iface, "up"])?;
            ns.ip(&["link", "set", &peer, "up"])?;
            // Generic (skb) mode: the benchmark never sends a packet through the interface,
            // it only needs xdp-filter to load and configure its program. `run_in` and `run`
            // name the namespace and the command line in their errors.
            ns.run_in(|| run(Command::new("xdp-filter").args(["load", &iface, "--mode", "skb"])))?;
            program_ids.push(xdp_program_id(&ns, &iface)?);
        }
        for rule in XDP_FILTER_RULES {
            ns.run_in(|| run(Command::new("xdp-filter").args(rule)))?;
        }
        let mut programs = Vec::new();
        let mut program_name = String::new();
        for &id in &program_ids {
            let info = loaded_programs()
                .filter_map(Result::ok)
                .find(|info| info.id() == id)
                .with_context(|| format!("program id {id} (xdp-filter's) is not loaded"))?;
            program_name = info.name_as_str().unwrap_or("?").to_owned();
            programs.push(program_from_info(info, &program_name)?);
        }
        guard.armed = false;
        drop(guard);
        Ok(XdpFilter {
            programs,
            program_ids,
            program_name,
            ns,
        })
    }

    /// The program of `instance`.
    pub fn xdp(&self, instance: usize) -> &Xdp {
        &self.programs[instance % self.programs.len()]
    }

    /// How xdp-filter was loaded and configured, for the report.
    pub fn commands() -> Vec<String> {
        let mut commands = vec![format!("xdp-filter load {IFACE_PREFIX}<i> --mode skb")];
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

/// The id of the XDP program attached to `iface`, from `ip -j link show`.
fn xdp_program_id(ns: &ScratchNs, iface: &str) -> Result<u32> {
    let text = ns.ip(&["-j", "link", "show", "dev", iface])?;
    let links: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing `ip -n {} -j link show dev {iface}`", ns.name()))?;
    let Some(id) = links[0]["xdp"]["prog"]["id"].as_u64() else {
        bail!(
            "no XDP program on {iface} in {} after xdp-filter load: {text}",
            ns.name()
        );
    };
    u32::try_from(id).context("program id out of range")
}

/// Unloads xdp-filter from the namespace's veths unless disarmed: covers errors between load and the
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

/// Unloads xdp-filter from every `xfb<i>` veth of `ns` that has an XDP program (a
/// namespace left by a crashed run may hold some).
fn unload(ns: &ScratchNs) {
    let listed = ns.ip(&["-j", "link", "show"]).and_then(|text| {
        serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| format!("parsing `ip -n {} -j link show`", ns.name()))
    });
    let links = match listed {
        Ok(links) => links,
        Err(err) => {
            eprintln!("apns-bench: {err:#}");
            return;
        }
    };
    let loaded = links.as_array().into_iter().flatten().filter_map(|link| {
        let name = link["ifname"].as_str()?;
        (name.starts_with(IFACE_PREFIX) && !link["xdp"].is_null()).then_some(name)
    });
    for iface in loaded {
        if let Err(err) = ns.run_in(|| run(Command::new("xdp-filter").args(["unload", iface]))) {
            eprintln!("apns-bench: xdp-filter unload {iface}: {err:#}");
        }
    }
    // Only an empty folder goes: another libxdp user's pins stay where they are.
    let _ = std::fs::remove_dir(LIBXDP_PIN_DIR);
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        unload(&self.ns);
    }
}

/// Keeps programs in the kernel's XDP dispatcher while the benchmark times them: each is
/// attached in generic (skb) mode to a veth of a scratch namespace of its own (deleted on
/// drop, which detaches them; no packet ever crosses those veths). Without it, every
/// BPF_PROG_TEST_RUN call with repeat > 1 adds its program to the dispatcher and removes it
/// again, rebuilding the dispatcher's code and waiting for an RCU grace period each time
/// (about 20 ms a call on the loaded 2-CPU machine this was written on); with the program
/// already in the dispatcher, a call only takes and drops a reference (a few µs). The timed
/// code is the same either way: during the call the program sits in the dispatcher and is
/// called directly.
pub struct DispatcherHold {
    ns: ScratchNs,
    devices: usize,
}

impl DispatcherHold {
    pub fn new() -> Result<DispatcherHold> {
        Ok(DispatcherHold {
            ns: ScratchNs::create()?,
            devices: 0,
        })
    }

    /// Attaches `program` to a new veth of the namespace (the dummy device is not in
    /// every kernel). It stays attached until the namespace goes (or the program is dropped).
    pub fn hold(&mut self, program: &mut Xdp) -> Result<()> {
        let device = format!("hold{}", self.devices);
        let peer = format!("{device}p");
        self.ns.ip(&[
            "link", "add", &device, "type", "veth", "peer", "name", &peer,
        ])?;
        self.devices += 1;
        // The device's name resolves in the calling thread's namespace: attach from inside.
        self.ns.run_in(|| {
            program
                .attach(&device, XdpMode::Skb)
                .with_context(|| format!("attaching a program to {device} (generic XDP)"))
        })?;
        Ok(())
    }
}
