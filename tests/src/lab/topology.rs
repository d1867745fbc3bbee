//! The lab's fixed topology: roles, addresses, interface names and MACs (as public constants, so
//! tests can build frames and expectations without asking the kernel), and the `ip`/`nft` steps
//! that build it inside a lab's namespaces.
//!
//! ```text
//!  client                    mdm                         vlan
//!  eth0 192.0.2.10/25        eth0 192.0.2.130/25         eth0 (trunk) ─ eth0.100 198.51.100.10/24
//!       2001:db8:1::10/64         2001:db8:1:1::10/64                        2001:db8:2::10/64
//!    │                         │                           │ 802.1Q, VLAN 100 tagged in the frame
//!  lan0 192.0.2.1/25         lan1 192.0.2.129/25         lan2 (trunk) ─ lan2.100 198.51.100.1/24
//!       2001:db8:1::1/64          2001:db8:1:1::1/64                         2001:db8:2::1/64
//!  gw: forwarding on; with LabOptions::nat, masquerade on wan0
//!  wan0 203.0.113.2/25, 2001:db8:f::2/64
//!    │
//!  gw0 203.0.113.1/25, 2001:db8:f::1/64
//!  isp: forwarding on; without NAT routes 192.0.2.0/24, 198.51.100.0/24, 2001:db8:1::/48 and
//!       2001:db8:2::/64 back to wan0
//!  apple0 17.249.1.1/24, 2620:149:a44::1/64       other0 203.0.113.129/25, 2001:db8:ff::1/64
//!    │                                              │
//!  eth0 17.249.1.10/24, 2620:149:a44::10/64       eth0 203.0.113.130/25, 2001:db8:ff::10/64
//!  apple: echo servers on 5223 443 2197 2195 2196  other: the same
//! ```
//!
//! With `LabOptions::second_upstream`, a second upstream router `isp2` shares the WAN
//! segment (a macvlan on the ISP's gw0, so frames between wan0 and it cross the same veth)
//! and reaches the servers through the ISP:
//!
//! ```text
//!  gw wan0 ── isp gw0 203.0.113.1  ┬─ (macvlan) isp2 gw0 203.0.113.3/25, 2001:db8:f::3/64
//!                                  │   isp2 core0 198.18.0.1/30, 2001:db8:e::1/64
//!                                  │     │ default via the ISP
//!                                  └─ isp isp2 198.18.0.2/30, 2001:db8:e::2/64
//! ```
//!
//! The gateway's default route stays on the ISP; a test moves it to `ISP2_WAN`. Replies
//! from the servers still come back through the ISP (asymmetric, as after a real failover
//! until the return path follows).
//!
//! Every LAN host has its own veth to the gateway (no bridge): each gateway LAN interface is a
//! plain veth, so native XDP attaches to it and per-interface counters tell device traffic
//! (lan0), MDM traffic (lan1) and VLAN traffic (lan2) apart. The VLAN sub-interfaces are TAPs
//! fed by a relay (see `vlan.rs`): this kernel has no 802.1Q support of its own. "LAN 1" is
//! 192.0.2.0/24 and 2001:db8:1::/48, split between client and MDM. The WAN side has an `isp`
//! router between the gateway and the two servers, as on a real line: frames on wan0 are
//! addressed to the ISP's MAC, not to Apple's.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{netns::run_with_input, vlan::VlanRelay, Lab};

/// The TCP ports APNs uses (see docs/apns.md): devices 5223 (443 as fallback), providers 443 and
/// 2197, and 2195/2196. Both WAN servers listen on all of them.
pub const APNS_PORTS: [u16; 5] = [5223, 443, 2197, 2195, 2196];

/// The 802.1Q VLAN id between the `vlan` host and the gateway.
pub const VLAN_ID: u16 = 100;

/// One network namespace of the lab and the host it plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A managed device on LAN 1.
    Client,
    /// The MDM provider server, on LAN 1 as well (its own veth).
    Mdm,
    /// A device behind the gateway's 802.1Q trunk.
    Vlan,
    /// The gateway the agent runs on.
    Gw,
    /// The upstream router between the gateway's WAN and the servers.
    Isp,
    /// A host in Apple's address space (17.0.0.0/8, 2620:149:a44::/48) running echo servers.
    Apple,
    /// A non-Apple host running the same echo servers.
    Other,
    /// A second upstream router on the WAN segment, only with
    /// `LabOptions::second_upstream` (not in [`Role::ALL`]).
    Isp2,
}

impl Role {
    /// Every role every lab has, in the order the lab creates their namespaces.
    pub const ALL: [Role; 7] = [
        Role::Client,
        Role::Mdm,
        Role::Vlan,
        Role::Gw,
        Role::Isp,
        Role::Apple,
        Role::Other,
    ];

    /// The suffix of the role's namespace name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Mdm => "mdm",
            Role::Vlan => "vlan",
            Role::Gw => "gw",
            Role::Isp => "isp",
            Role::Apple => "apple",
            Role::Other => "other",
            Role::Isp2 => "isp2",
        }
    }

    /// The addresses of a host role; `None` for the routers (gw, isp), which have one pair per
    /// interface (see the `GW_*` and `ISP_*` constants).
    pub fn host_addrs(self) -> Option<Addrs> {
        match self {
            Role::Client => Some(CLIENT),
            Role::Mdm => Some(MDM),
            Role::Vlan => Some(VLAN_HOST),
            Role::Apple => Some(APPLE),
            Role::Other => Some(OTHER),
            Role::Gw | Role::Isp | Role::Isp2 => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The IPv4 and IPv6 address of one host or one router interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addrs {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Addrs {
    const fn new(v4: [u8; 4], v6: [u16; 8]) -> Addrs {
        Addrs {
            v4: Ipv4Addr::new(v4[0], v4[1], v4[2], v4[3]),
            v6: Ipv6Addr::new(v6[0], v6[1], v6[2], v6[3], v6[4], v6[5], v6[6], v6[7]),
        }
    }

    /// The IPv6 address if `ipv6`, else the IPv4 one.
    pub fn ip(self, ipv6: bool) -> IpAddr {
        if ipv6 {
            self.v6.into()
        } else {
            self.v4.into()
        }
    }

    /// `ip(ipv6)` with a port.
    pub fn socket(self, ipv6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(ipv6), port)
    }
}

/// The managed device (client namespace, eth0).
pub const CLIENT: Addrs = Addrs::new([192, 0, 2, 10], [0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x10]);
/// The MDM provider (mdm namespace, eth0).
pub const MDM: Addrs = Addrs::new([192, 0, 2, 130], [0x2001, 0xdb8, 1, 1, 0, 0, 0, 0x10]);
/// The device behind the VLAN (vlan namespace, eth0.100).
pub const VLAN_HOST: Addrs = Addrs::new([198, 51, 100, 10], [0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x10]);
/// The Apple host: inside 17.0.0.0/8 *and* Apple's narrower 17.249.0.0/16, and inside
/// 2620:149:a44::/48, so it is APNs under either allow-list.
pub const APPLE: Addrs = Addrs::new([17, 249, 1, 10], [0x2620, 0x149, 0xa44, 0, 0, 0, 0, 0x10]);
/// The non-Apple host (documentation ranges).
pub const OTHER: Addrs = Addrs::new([203, 0, 113, 130], [0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10]);

/// The gateway on the client's link (lan0): the client's default route.
pub const GW_LAN_CLIENT: Addrs = Addrs::new([192, 0, 2, 1], [0x2001, 0xdb8, 1, 0, 0, 0, 0, 1]);
/// The gateway on the MDM's link (lan1): the MDM's default route.
pub const GW_LAN_MDM: Addrs = Addrs::new([192, 0, 2, 129], [0x2001, 0xdb8, 1, 1, 0, 0, 0, 1]);
/// The gateway on VLAN 100 (lan2.100): the vlan host's default route.
pub const GW_LAN_VLAN: Addrs = Addrs::new([198, 51, 100, 1], [0x2001, 0xdb8, 2, 0, 0, 0, 0, 1]);
/// The gateway's WAN address (wan0): what the servers see when NAT is on.
pub const GW_WAN: Addrs = Addrs::new([203, 0, 113, 2], [0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 2]);
/// The ISP router on the WAN link (gw0): the gateway's default route.
pub const ISP_WAN: Addrs = Addrs::new([203, 0, 113, 1], [0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 1]);
/// The ISP router on the Apple host's link (apple0): the Apple host's default route.
pub const ISP_APPLE: Addrs = Addrs::new([17, 249, 1, 1], [0x2620, 0x149, 0xa44, 0, 0, 0, 0, 1]);
/// The second upstream router on the WAN segment (isp2's gw0, `LabOptions::second_upstream`).
pub const ISP2_WAN: Addrs = Addrs::new([203, 0, 113, 3], [0x2001, 0xdb8, 0xf, 0, 0, 0, 0, 3]);
/// The second upstream router on its link to the ISP (isp2's core0).
pub const ISP2_CORE: Addrs = Addrs::new([198, 18, 0, 1], [0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 1]);
/// The ISP router on its link to the second upstream router (the ISP's isp2): isp2's
/// default route.
pub const ISP_CORE: Addrs = Addrs::new([198, 18, 0, 2], [0x2001, 0xdb8, 0xe, 0, 0, 0, 0, 2]);
/// The ISP router on the other host's link (other0): the other host's default route.
pub const ISP_OTHER: Addrs = Addrs::new([203, 0, 113, 129], [0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1]);

/// One network interface of the lab: where it lives, its name there and its MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Iface {
    pub role: Role,
    pub name: &'static str,
    /// Fixed, locally administered (02:…), so crafted frames and pcaps can be written ahead.
    pub mac: [u8; 6],
}

const fn iface(role: Role, name: &'static str, link: u8, host: u8) -> Iface {
    Iface {
        role,
        name,
        mac: [0x02, 0, 0, 0, link, host],
    }
}

/// Gateway LAN interface towards the client.
pub const GW_IF_CLIENT: Iface = iface(Role::Gw, "lan0", 1, 1);
/// The client's only interface.
pub const CLIENT_IF: Iface = iface(Role::Client, "eth0", 1, 0x10);
/// Gateway LAN interface towards the MDM server.
pub const GW_IF_MDM: Iface = iface(Role::Gw, "lan1", 2, 1);
/// The MDM server's only interface.
pub const MDM_IF: Iface = iface(Role::Mdm, "eth0", 2, 0x10);
/// Gateway trunk towards the vlan host: carries 802.1Q-tagged frames only.
pub const GW_IF_TRUNK: Iface = iface(Role::Gw, "lan2", 3, 1);
/// The vlan host's trunk.
pub const VLAN_IF_TRUNK: Iface = iface(Role::Vlan, "eth0", 3, 0x10);
/// The gateway's VLAN 100 sub-interface (holds the addresses; a software one, see `vlan.rs`);
/// shares the trunk's MAC.
pub const GW_IF_VLAN: Iface = Iface {
    name: "lan2.100",
    ..GW_IF_TRUNK
};
/// The vlan host's VLAN 100 sub-interface (holds the addresses; a software one, see
/// `vlan.rs`); shares the trunk's MAC.
pub const VLAN_IF_VLAN: Iface = Iface {
    name: "eth0.100",
    ..VLAN_IF_TRUNK
};
/// The gateway's WAN interface.
pub const GW_IF_WAN: Iface = iface(Role::Gw, "wan0", 4, 2);
/// The ISP router's interface towards the gateway.
pub const ISP_IF_GW: Iface = iface(Role::Isp, "gw0", 4, 1);
/// The ISP router's interface towards the Apple host.
pub const ISP_IF_APPLE: Iface = iface(Role::Isp, "apple0", 5, 1);
/// The Apple host's only interface.
pub const APPLE_IF: Iface = iface(Role::Apple, "eth0", 5, 0x10);
/// The ISP router's interface towards the other host.
pub const ISP_IF_OTHER: Iface = iface(Role::Isp, "other0", 6, 1);
/// The other host's only interface.
pub const OTHER_IF: Iface = iface(Role::Other, "eth0", 6, 0x10);

/// The second upstream router's WAN interface: a macvlan on [`ISP_IF_GW`], moved into isp2.
pub const ISP2_IF_GW: Iface = iface(Role::Isp2, "gw0", 4, 3);
/// The second upstream router's link to the ISP.
pub const ISP2_IF_CORE: Iface = iface(Role::Isp2, "core0", 7, 1);
/// The ISP's link to the second upstream router.
pub const ISP_IF_ISP2: Iface = iface(Role::Isp, "isp2", 7, 2);

/// The veth pairs, first end created, second end moved into its namespace by the same command.
const VETHS: [(Iface, Iface); 6] = [
    (GW_IF_CLIENT, CLIENT_IF),
    (GW_IF_MDM, MDM_IF),
    (GW_IF_TRUNK, VLAN_IF_TRUNK),
    (GW_IF_WAN, ISP_IF_GW),
    (ISP_IF_APPLE, APPLE_IF),
    (ISP_IF_OTHER, OTHER_IF),
];

/// Which interface holds which addresses, with the IPv4 and IPv6 prefix lengths.
const ADDRESSES: [(Iface, Addrs, u8, u8); 12] = [
    (GW_IF_CLIENT, GW_LAN_CLIENT, 25, 64),
    (CLIENT_IF, CLIENT, 25, 64),
    (GW_IF_MDM, GW_LAN_MDM, 25, 64),
    (MDM_IF, MDM, 25, 64),
    (GW_IF_VLAN, GW_LAN_VLAN, 24, 64),
    (VLAN_IF_VLAN, VLAN_HOST, 24, 64),
    (GW_IF_WAN, GW_WAN, 25, 64),
    (ISP_IF_GW, ISP_WAN, 25, 64),
    (ISP_IF_APPLE, ISP_APPLE, 24, 64),
    (APPLE_IF, APPLE, 24, 64),
    (ISP_IF_OTHER, ISP_OTHER, 25, 64),
    (OTHER_IF, OTHER, 25, 64),
];

/// Default routes: each host and the gateway route everything through their next hop.
const DEFAULT_ROUTES: [(Role, Addrs); 6] = [
    (Role::Client, GW_LAN_CLIENT),
    (Role::Mdm, GW_LAN_MDM),
    (Role::Vlan, GW_LAN_VLAN),
    (Role::Gw, ISP_WAN),
    (Role::Apple, ISP_APPLE),
    (Role::Other, ISP_OTHER),
];

/// The LAN prefixes the ISP routes back to the gateway when the gateway does not masquerade.
const LAN_PREFIXES: [&str; 4] = [
    "192.0.2.0/24",
    "198.51.100.0/24",
    "2001:db8:1::/48",
    "2001:db8:2::/64",
];

/// Sysctls written in every namespace before any interface exists, so that new interfaces
/// inherit them through `default`.
const SYSCTLS: [(&str, &str); 7] = [
    // Addresses are usable at once (no tentative state that fails bind()) and links stay
    // quiet: no DAD probes, no router solicitations. Tests count packets exactly.
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_ra", "0"),
    ("net/ipv6/conf/default/router_solicitations", "0"),
    // The unsolicited MLD reports that follow each new address (solicited-node groups) are
    // repeated within 1 ms instead of within a second, so the links fall quiet quickly.
    (
        "net/ipv6/conf/default/mldv1_unsolicited_report_interval",
        "1",
    ),
    (
        "net/ipv6/conf/default/mldv2_unsolicited_report_interval",
        "1",
    ),
    // New namespaces copy the root namespace's IPv4 settings (devconf_inherit_init_net=0);
    // fix reverse-path filtering so that the lab behaves the same on every machine.
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
];

/// Sysctls of the two routers.
const ROUTER_SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
];

/// The gateway's NAT: masquerade everything (IPv4 and IPv6) that leaves through wan0, so the
/// WAN side needs no route to the LAN prefixes.
fn nat_ruleset() -> String {
    format!(
        "table inet apnslab_nat {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname \"{}\" masquerade\n\
         \t}}\n\
         }}\n",
        GW_IF_WAN.name
    )
}

/// Builds the topology inside the lab's (empty) namespaces. The VLAN relays it returns must
/// live as long as the lab: they are the VLAN sub-interfaces.
pub(super) fn build(lab: &Lab) -> Result<Vec<VlanRelay>> {
    for role in lab.roles() {
        let routers = if matches!(role, Role::Gw | Role::Isp | Role::Isp2) {
            &ROUTER_SYSCTLS[..]
        } else {
            &[]
        };
        lab.in_ns(role, || -> Result<()> {
            for (key, value) in SYSCTLS.iter().chain(routers) {
                // /proc/sys/net shows the network namespace of the thread that opens it.
                let path = format!("/proc/sys/{key}");
                std::fs::write(&path, value)
                    .with_context(|| format!("writing {value} to {path}"))?;
            }
            Ok(())
        })?
        .with_context(|| format!("setting sysctls in namespace {}", lab.ns_name(role)))?;
    }

    let mut veths = IpBatch::new(lab);
    for (a, b) in VETHS {
        let (a_mac, b_mac) = (mac_string(a.mac), mac_string(b.mac));
        // Made in `a`'s namespace and the peer moved into `b`'s by the same call: names only
        // need to be unique per namespace, never in the root namespace.
        veths.add(
            a.role,
            &[
                "link",
                "add",
                a.name,
                "address",
                &a_mac,
                "type",
                "veth",
                "peer",
                "name",
                b.name,
                "address",
                &b_mac,
                "netns",
                lab.ns_name(b.role),
            ],
        );
    }
    veths.run()?;

    // Everything else, in each namespace in this order: its addresses, links up, routes.
    let mut rest = IpBatch::new(lab);
    for role in lab.roles() {
        rest.add(role, &["link", "set", "lo", "up"]);
    }
    let mut relays = Vec::with_capacity(2);
    for (trunk, sub) in [(GW_IF_TRUNK, GW_IF_VLAN), (VLAN_IF_TRUNK, VLAN_IF_VLAN)] {
        // The trunk carries tagged frames only: without IPv6 it sends no untagged link-local,
        // MLD or ND traffic of its own.
        let key = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", trunk.name);
        lab.in_ns(trunk.role, || std::fs::write(&key, "1"))?
            .with_context(|| format!("writing 1 to {key} in {}", lab.ns_name(trunk.role)))?;
        relays.push(VlanRelay::start(
            lab.ns(trunk.role),
            trunk.name,
            sub.name,
            VLAN_ID,
        )?);
        rest.add(
            sub.role,
            &["link", "set", sub.name, "address", &mac_string(sub.mac)],
        );
    }

    for (at, addrs, v4_len, v6_len) in ADDRESSES {
        let v4 = format!("{}/{v4_len}", addrs.v4);
        let v6 = format!("{}/{v6_len}", addrs.v6);
        rest.add(at.role, &["addr", "add", &v4, "dev", at.name]);
        rest.add(at.role, &["addr", "add", &v6, "dev", at.name, "nodad"]);
    }

    let subs = [GW_IF_VLAN, VLAN_IF_VLAN];
    for at in VETHS.iter().flat_map(|(a, b)| [a, b]).chain(&subs) {
        rest.add(at.role, &["link", "set", at.name, "up"]);
    }

    for (role, via) in DEFAULT_ROUTES {
        rest.add(
            role,
            &["route", "add", "default", "via", &via.v4.to_string()],
        );
        rest.add(
            role,
            &["route", "add", "default", "via", &via.v6.to_string()],
        );
    }
    if !lab.options().nat {
        for prefix in LAN_PREFIXES {
            let via = if prefix.contains(':') {
                GW_WAN.v6.to_string()
            } else {
                GW_WAN.v4.to_string()
            };
            rest.add(Role::Isp, &["route", "add", prefix, "via", &via]);
        }
    }
    rest.run()?;

    if lab.options().second_upstream {
        second_upstream(lab)?;
    }

    if lab.options().nat {
        let mut nft = lab.command(Role::Gw, "nft");
        nft.args(["-f", "-"]);
        run_with_input(&mut nft, nat_ruleset().as_bytes())
            .with_context(|| format!("loading the NAT ruleset in {}", lab.ns_name(Role::Gw)))?;
    }
    Ok(relays)
}

/// `ip` commands gathered per namespace and run as one `ip -n NAMESPACE -batch -` each, in
/// the order they were added: starting a process costs little on a host, but much more in a
/// QEMU (TCG) guest of the kernel matrix; there, replacing the ~70 single `ip` runs took the
/// demo's lab from 39 s to 27 s (Debian 6.1 guest, BENCHMARKS.md).
struct IpBatch<'lab> {
    lab: &'lab Lab,
    /// Per namespace, in the order of first use: its command lines.
    lines: Vec<(Role, String)>,
}

impl<'lab> IpBatch<'lab> {
    fn new(lab: &'lab Lab) -> IpBatch<'lab> {
        IpBatch {
            lab,
            lines: Vec::new(),
        }
    }

    /// Adds `ip ARGS` in `role`'s namespace (no argument holds a space).
    fn add(&mut self, role: Role, args: &[&str]) {
        let line = args.join(" ");
        match self.lines.iter_mut().find(|(at, _)| *at == role) {
            Some((_, lines)) => {
                lines.push('\n');
                lines.push_str(&line);
            }
            None => self.lines.push((role, line)),
        }
    }

    /// Runs each namespace's commands; `ip` stops at the first that fails and says which.
    fn run(self) -> Result<()> {
        for (role, lines) in &self.lines {
            let mut cmd = Command::new("ip");
            cmd.arg("-n")
                .arg(self.lab.ns_name(*role))
                .args(["-batch", "-"]);
            run_with_input(&mut cmd, format!("{lines}\n").as_bytes())
                .with_context(|| format!("building the lab's {role}:\n{lines}"))?;
        }
        Ok(())
    }
}

/// Builds the second upstream router (see the module documentation).
fn second_upstream(lab: &Lab) -> Result<()> {
    let (wan, core, back) = (ISP2_IF_GW, ISP2_IF_CORE, ISP_IF_ISP2);
    // A macvlan in bridge mode on the ISP's end of the WAN veth: its own MAC on the same
    // segment, which the ISP's gw0 keeps receiving its own frames beside.
    ip(
        lab,
        Role::Isp,
        &[
            "link",
            "add",
            "isp2wan",
            "link",
            ISP_IF_GW.name,
            "address",
            &mac_string(wan.mac),
            "type",
            "macvlan",
            "mode",
            "bridge",
        ],
    )?;
    ip(
        lab,
        Role::Isp,
        &["link", "set", "isp2wan", "netns", lab.ns_name(Role::Isp2)],
    )?;
    ip(
        lab,
        Role::Isp2,
        &["link", "set", "isp2wan", "name", wan.name],
    )?;
    ip(
        lab,
        back.role,
        &[
            "link",
            "add",
            back.name,
            "address",
            &mac_string(back.mac),
            "type",
            "veth",
            "peer",
            "name",
            core.name,
            "address",
            &mac_string(core.mac),
            "netns",
            lab.ns_name(core.role),
        ],
    )?;
    for (at, addrs, v4_len) in [
        (wan, ISP2_WAN, 25),
        (core, ISP2_CORE, 30),
        (back, ISP_CORE, 30),
    ] {
        let v4 = format!("{}/{v4_len}", addrs.v4);
        let v6 = format!("{}/64", addrs.v6);
        ip(lab, at.role, &["addr", "add", &v4, "dev", at.name])?;
        ip(lab, at.role, &["addr", "add", &v6, "dev", at.name, "nodad"])?;
        ip(lab, at.role, &["link", "set", at.name, "up"])?;
    }
    ip(
        lab,
        Role::Isp2,
        &["route", "add", "default", "via", &ISP_CORE.v4.to_string()],
    )?;
    ip(
        lab,
        Role::Isp2,
        &[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &ISP_CORE.v6.to_string(),
        ],
    )
}

/// Runs `ip -n <namespace of role> ARGS`.
fn ip(lab: &Lab, role: Role, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(lab.ns_name(role)).args(args);
    super::run(&mut cmd).map(drop)
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}
