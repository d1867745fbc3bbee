//! Other XDP programs on a lab interface, for the tests of `attach`'s refusal, of sharing an
//! interface (`multiprog`) and of `doctor`: Debian's xdp-filter (through libxdp: its
//! dispatcher where the kernel loads extension programs, the kernel matrix's guests; a plain
//! netlink attachment on this project's host kernel, which refuses them), a plain program attached by `ip link` (netlink, no libxdp), and the
//! benchmarks' floor program attached by a bpf_link. Each is a guard that takes its program
//! off again on drop.
//!
//! xdp-filter keeps one global state pinned under /sys/fs/bpf/xdp-filter, shared by every
//! interface it is loaded on: the guards of this process take turns (a lock held from load
//! to unload), and the unload is best effort (the lab's namespace going away detaches it
//! anyway).

use std::{
    process::Command,
    sync::{Mutex, MutexGuard, PoisonError},
};

use anyhow::{Context as _, Result};
use apns_agent::datapath::{
    links,
    occupants::{self, Occupant},
};
use aya::programs::XdpMode;

use crate::{
    bench::testrun::FloorProgram,
    lab::{run, Lab, Role},
};

static XDP_FILTER: Mutex<()> = Mutex::new(());

/// xdp-filter loaded on a gateway interface (skb mode).
pub struct XdpFilterOn<'lab> {
    lab: &'lab Lab,
    interface: String,
    _turn: MutexGuard<'static, ()>,
}

impl<'lab> XdpFilterOn<'lab> {
    pub fn load(lab: &'lab Lab, interface: &str) -> Result<XdpFilterOn<'lab>> {
        // libxdp pins its state and dispatchers on bpffs, and mounts none.
        crate::agent::bpffs_mounted();
        let turn = XDP_FILTER.lock().unwrap_or_else(PoisonError::into_inner);
        let guard = XdpFilterOn {
            lab,
            interface: interface.to_owned(),
            _turn: turn,
        };
        run(lab
            .command(Role::Gw, "xdp-filter")
            .args(["load", interface, "--mode", "skb"]))?;
        Ok(guard)
    }
}

impl Drop for XdpFilterOn<'_> {
    fn drop(&mut self) {
        if let Err(err) = run(self
            .lab
            .command(Role::Gw, "xdp-filter")
            .args(["unload", &self.interface]))
        {
            eprintln!("xdp-filter unload {}: {err:#}", self.interface);
            let _ = xdp_off(self.lab, &self.interface);
        }
        remove_libxdp_dir();
    }
}

/// Removes libxdp's folder on bpffs (its lock, made by xdp-filter or by an agent joining a
/// dispatcher) where it is empty: another libxdp user's pins stay where they are.
pub fn remove_libxdp_dir() {
    let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
}

/// xdp-tools' `xdpdump` XDP program (a plain libbpf object Debian ships), attached in skb
/// mode by `ip link set dev IF xdpgeneric obj ...`: netlink, no libxdp.
pub const IP_LINK_OBJECT: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdpdump_xdp.o";

/// A program attached to a gateway interface by `ip link` (see [`IP_LINK_OBJECT`]).
pub struct IpLinkOn<'lab> {
    lab: &'lab Lab,
    interface: String,
}

impl<'lab> IpLinkOn<'lab> {
    pub fn attach(lab: &'lab Lab, interface: &str) -> Result<IpLinkOn<'lab>> {
        let guard = IpLinkOn {
            lab,
            interface: interface.to_owned(),
        };
        ip_link_xdp(
            lab,
            interface,
            &["xdpgeneric", "obj", IP_LINK_OBJECT, "sec", "xdp"],
        )?;
        Ok(guard)
    }
}

impl Drop for IpLinkOn<'_> {
    fn drop(&mut self) {
        if let Err(err) = xdp_off(self.lab, &self.interface) {
            eprintln!(
                "detaching {IP_LINK_OBJECT} from {}: {err:#}",
                self.interface
            );
        }
    }
}

/// `ip link set dev IF xdpgeneric off` in the gateway: what netlink attached in skb mode
/// goes (`xdp off` alone would only detach a native program).
fn xdp_off(lab: &Lab, interface: &str) -> Result<String> {
    ip_link_xdp(lab, interface, &["xdpgeneric", "off"])
}

/// `ip -n GW link set dev IF ARGS...`.
fn ip_link_xdp(lab: &Lab, interface: &str, args: &[&str]) -> Result<String> {
    run(Command::new("ip")
        .args(["-n", lab.ns_name(Role::Gw), "link", "set", "dev", interface])
        .args(args))
}

/// The floor program attached to a gateway interface by a bpf_link (skb mode); the link
/// goes when this is dropped.
pub struct FloorOn {
    pub floor: FloorProgram,
}

impl FloorOn {
    pub fn attach(lab: &Lab, interface: &str) -> Result<FloorOn> {
        let mut floor = FloorProgram::load()?;
        let program = floor.xdp_mut()?;
        lab.in_ns(Role::Gw, || program.attach(interface, XdpMode::Skb))?
            .with_context(|| format!("attaching the floor program to {interface}"))?;
        Ok(FloorOn { floor })
    }
}

/// What runs on gateway interface `interface`, as `attach` and `doctor` read it.
pub fn on(lab: &Lab, interface: &str) -> Result<Vec<Occupant>> {
    lab.in_ns(Role::Gw, || {
        let ifindex = links::ifindex(interface)?;
        occupants::of(ifindex, None)
    })?
}
