//! One interface's checks: its link, MTU, driver and XDP features, the XDP programs already
//! on it, and reverse-path filtering. Everything is read in the caller's network namespace,
//! through netlink and /proc/sys (see [`crate::datapath::netdev`] for why not sysfs).

use serde::Serialize;

use crate::datapath::{
    interfaces::FastPath,
    links::{self, XdpMode},
    netdev::{self, xdp_act},
    occupants::{self, Occupant},
    PinDir,
};

use super::{host::sysctl, yes_no, Check};

/// Above this MTU, a single-buffer XDP program (ours) cannot be attached in native mode on
/// most drivers: a frame must fit one page with XDP's headroom (veth allows 3506 here).
pub const MAX_NATIVE_XDP_MTU: u32 = 3498;

/// The `netdev_xdp_act` feature bits by their kernel names (netdev.yaml).
const XDP_FEATURE_NAMES: [(u64, &str); 7] = [
    (xdp_act::BASIC, "basic"),
    (xdp_act::REDIRECT, "redirect"),
    (xdp_act::NDO_XMIT, "ndo-xmit"),
    (1 << 3, "xsk-zerocopy"),
    (1 << 4, "hw-offload"),
    (1 << 5, "rx-sg"),
    (1 << 6, "ndo-xmit-sg"),
];

/// What doctor read of an interface (`doctor --json`'s `interfaces`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Facts {
    /// `None`: no such interface here.
    pub ifindex: Option<u32>,
    pub up: bool,
    pub carrier: bool,
    pub oper_state: String,
    pub mtu: u32,
    /// Link kind of a virtual device (veth, bridge, ...).
    pub kind: Option<String>,
    pub driver: Option<String>,
    /// The kernel's XDP feature names; `None` when this kernel does not say (before 6.3).
    pub xdp_features: Option<Vec<&'static str>>,
    /// The XDP programs attached to it.
    pub xdp_programs: Vec<Occupant>,
}

/// What the config says of an interface, for the checks that depend on it.
pub struct Wanted {
    pub xdp_mode: XdpMode,
    pub fastpath: FastPath,
}

/// The checks of interface `name`, and what was read of it.
pub fn check(name: &str, pins: &PinDir, wanted: &Wanted) -> (Vec<Check>, Facts) {
    // The link checks that end the interface's checks: nothing more can be read.
    let unreadable = |detail: String, fix: &str| {
        let check = Check::fail(format!("{name} link"), detail, fix);
        (vec![check], Facts::default())
    };
    let ifindex = match links::check_interface_name(name).and_then(|()| links::ifindex(name)) {
        Ok(ifindex) => ifindex,
        Err(err) => {
            return unreadable(
                format!("{err:#}"),
                "check the name with `ip link`; the agent attaches by name, in its own network namespace",
            )
        }
    };
    let link = match netdev::link(ifindex) {
        Ok(Some(link)) => link,
        Ok(None) => {
            return unreadable(
                format!("{name} disappeared while doctor read it"),
                "run doctor again",
            )
        }
        Err(err) => {
            return unreadable(
                format!("{err:#}"),
                "netlink did not answer: run doctor again, as root",
            )
        }
    };
    let mut facts = Facts {
        ifindex: Some(ifindex),
        up: link.up,
        carrier: link.carrier,
        oper_state: link.oper_state.clone(),
        mtu: link.mtu,
        kind: link.kind.clone(),
        driver: netdev::driver(name).or_else(|| link.kind.clone()),
        xdp_features: None,
        xdp_programs: Vec::new(),
    };
    let mut checks = vec![link_check(name, &facts)];
    checks.push(mtu_check(name, link.mtu, wanted.xdp_mode));

    let features = netdev::xdp_features(ifindex);
    if let Ok(Some(bits)) = features {
        facts.xdp_features = Some(
            XDP_FEATURE_NAMES
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .map(|&(_, name)| name)
                .collect(),
        );
    }
    checks.push(features_check(name, &facts, features, wanted));

    match occupants::of(ifindex, Some(pins)) {
        Ok(programs) => {
            checks.push(programs_check(name, &programs));
            facts.xdp_programs = programs;
        }
        Err(err) => checks.push(Check::warn(
            format!("{name} xdp programs"),
            format!("could not be read: {err:#}"),
            "run doctor as root",
        )),
    }
    checks.push(rp_filter_check(name));
    (checks, facts)
}

fn link_check(name: &str, facts: &Facts) -> Check {
    let check = format!("{name} link");
    let driver = facts.driver.as_deref().unwrap_or("unknown");
    let detail = format!(
        "ifindex {}, driver {driver}, operstate {}",
        facts.ifindex.unwrap_or(0),
        facts.oper_state
    );
    if !facts.up {
        Check::warn(
            check,
            format!("administratively down ({detail}): nothing is classified until it is up"),
            format!("`ip link set dev {name} up`"),
        )
    } else if !facts.carrier {
        Check::warn(
            check,
            format!("up, but no carrier ({detail})"),
            "check the cable, the switch port, or the peer of a virtual link",
        )
    } else {
        Check::ok(check, format!("up, carrier ({detail})"))
    }
}

fn mtu_check(name: &str, mtu: u32, xdp_mode: XdpMode) -> Check {
    let check = format!("{name} mtu");
    if mtu > MAX_NATIVE_XDP_MTU && xdp_mode != XdpMode::Skb {
        let fallback = if xdp_mode == XdpMode::Auto {
            "`auto` then falls back to skb mode (slower)"
        } else {
            "`native` will be refused"
        };
        Check::warn(
            check,
            format!("{mtu}: above {MAX_NATIVE_XDP_MTU}, where most drivers refuse a single-buffer XDP program (ours) in native mode; {fallback}"),
            format!("lower the MTU to {MAX_NATIVE_XDP_MTU} or less for native mode, or set xdp_mode = \"skb\""),
        )
    } else {
        Check::ok(check, mtu.to_string())
    }
}

fn features_check(
    name: &str,
    facts: &Facts,
    features: anyhow::Result<Option<u64>>,
    wanted: &Wanted,
) -> Check {
    let check = format!("{name} xdp features");
    let bits = match features {
        Ok(Some(bits)) => bits,
        Ok(None) => {
            return Check::ok(
                check,
                "could not be determined: this kernel has no netdev netlink family (Linux 6.3+); `auto` tries native mode and falls back to skb",
            )
        }
        Err(err) => {
            return Check::ok(
                check,
                format!("could not be determined ({err:#}); `auto` tries native mode and falls back to skb"),
            )
        }
    };
    let has = |bit: u64| bits & bit != 0;
    let names = facts.xdp_features.as_deref().unwrap_or_default().join(" ");
    let detail = format!(
        "native XDP {}, XDP_REDIRECT {}, redirect target (ndo-xmit) {} [{}]",
        yes_no(has(xdp_act::BASIC)),
        yes_no(has(xdp_act::REDIRECT)),
        yes_no(has(xdp_act::NDO_XMIT)),
        if names.is_empty() { "none" } else { &names }
    );
    let driver = facts.driver.as_deref().unwrap_or("its driver");
    if !has(xdp_act::BASIC) {
        if wanted.xdp_mode == XdpMode::Native {
            return Check::fail(
                check,
                format!("{detail}: xdp_mode native is configured"),
                format!("use xdp_mode auto or skb for {name}: {driver} has no native XDP"),
            );
        }
        return Check::warn(
            check,
            format!("{detail}: the agent runs in skb (generic) mode here"),
            format!("fine for counting and policy; for line rate, a NIC whose driver has native XDP ({driver} has none)"),
        );
    }
    if wanted.fastpath == FastPath::Redirect && !has(xdp_act::REDIRECT) {
        return Check::warn(
            check,
            format!("{detail}: the redirect fast path is configured"),
            format!("{driver} cannot redirect from XDP: use the mark or pass fast path on {name}"),
        );
    }
    Check::ok(check, detail)
}

fn programs_check(name: &str, programs: &[Occupant]) -> Check {
    let check = format!("{name} xdp programs");
    if programs.is_empty() {
        return Check::ok(check, "none attached");
    }
    let described: Vec<String> = programs.iter().map(Occupant::describe).collect();
    match programs.iter().find(|program| !program.ours) {
        None => Check::ok(
            check,
            format!("this agent's datapath: {}", described.join("; ")),
        ),
        Some(other) => Check::fail(
            check,
            format!(
                "{name} runs {}: `attach` will refuse it",
                described.join("; ")
            ),
            other.way_out(name),
        ),
    }
}

/// Effective reverse-path filtering: the kernel applies the larger of `all` and the
/// interface's own value.
fn rp_filter_check(name: &str) -> Check {
    let check = format!("{name} rp_filter");
    let all = sysctl("/proc/sys/net/ipv4/conf/all/rp_filter");
    let own = sysctl(&format!("/proc/sys/net/ipv4/conf/{name}/rp_filter"));
    let Some(effective) = all.max(own) else {
        return Check::ok(check, "could not be read (no IPv4 on this host?)");
    };
    let word = match effective {
        0 => "off",
        1 => "strict",
        _ => "loose",
    };
    if effective == 1 {
        Check::warn(
            check,
            "strict: a packet that arrives on another interface than the route back to its source (asymmetric routing) is dropped by the kernel, after XDP counted it",
            format!("`sysctl -w net.ipv4.conf.{name}.rp_filter=2 net.ipv4.conf.all.rp_filter=2` (loose), persisted in /etc/sysctl.d/, if routes to Apple are asymmetric"),
        )
    } else {
        Check::ok(check, word)
    }
}
