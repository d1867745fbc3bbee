//! End-to-end checks of the lab itself (`apns_tests::lab`): that traffic really crosses the
//! gateway on every APNs port from every LAN host, with and without NAT; that raw frames reach
//! the gateway; that commands run in the namespace but keep the root mount namespace; and that
//! labs clean up after themselves and after crashed runs. Needs root; every test builds its own
//! lab, so they run in parallel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::{self, Command},
    time::{Duration, Instant},
};

use apns_tests::lab::{
    run, Lab, LabOptions, Role, APNS_PORTS, CLIENT_IF, GW_IF_CLIENT, GW_IF_TRUNK, GW_IF_VLAN,
    GW_WAN, NETNS_DIR, NETNS_PREFIX, VLAN_ID, VLAN_IF_TRUNK,
};

const TIMEOUT: Duration = Duration::from_secs(5);
const LAN_HOSTS: [Role; 3] = [Role::Client, Role::Mdm, Role::Vlan];
const WAN_HOSTS: [Role; 2] = [Role::Apple, Role::Other];

fn lab(nat: bool) -> Lab {
    Lab::new(LabOptions {
        nat,
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("building a lab (nat: {nat}): {e:#}"))
}

fn addrs(role: Role) -> apns_tests::lab::Addrs {
    role.host_addrs()
        .unwrap_or_else(|| panic!("{role} is a host"))
}

/// Echoes a payload naming the path from every LAN host, over IPv4 and IPv6, to every port of
/// both WAN hosts.
fn echo_everywhere(lab: &Lab) {
    for from in LAN_HOSTS {
        for to in WAN_HOSTS {
            for ipv6 in [false, true] {
                for port in APNS_PORTS {
                    let addr = addrs(to).socket(ipv6, port);
                    let payload = format!("{from} -> {addr} through the gateway").into_bytes();
                    let echoed = lab
                        .echo(from, addr, &payload, TIMEOUT)
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(echoed, payload, "{from} -> {addr}");
                }
            }
        }
    }
}

/// The source addresses a WAN host saw, with how many connections each, per local port.
fn peers(lab: &Lab, host: Role) -> BTreeMap<IpAddr, BTreeSet<u16>> {
    let mut seen: BTreeMap<IpAddr, BTreeSet<u16>> = BTreeMap::new();
    for accepted in lab.accepted(host) {
        seen.entry(accepted.peer.ip())
            .or_default()
            .insert(accepted.local.port());
    }
    seen
}

#[test]
fn routed_lab_carries_every_apns_port_from_every_lan_host() {
    apns_tests::require_root!();
    let lab = lab(false);
    echo_everywhere(&lab);
    // Without NAT each server sees each LAN host's own address, on every port.
    let ports: BTreeSet<u16> = APNS_PORTS.into();
    for host in WAN_HOSTS {
        let expected: BTreeMap<IpAddr, BTreeSet<u16>> = LAN_HOSTS
            .iter()
            .flat_map(|&from| [addrs(from).ip(false), addrs(from).ip(true)])
            .map(|ip| (ip, ports.clone()))
            .collect();
        assert_eq!(peers(&lab, host), expected, "sources seen by {host}");
        assert_eq!(
            lab.accepted(host).len(),
            LAN_HOSTS.len() * 2 * APNS_PORTS.len()
        );
    }
}

#[test]
fn nat_lab_carries_every_apns_port_and_hides_the_lan() {
    apns_tests::require_root!();
    let lab = lab(true);
    let ruleset = run(lab.command(Role::Gw, "nft").args(["list", "ruleset"])).expect("nft");
    assert!(ruleset.contains("masquerade"), "{ruleset}");
    echo_everywhere(&lab);
    // Under NAT the servers only ever see the gateway's WAN addresses.
    let ports: BTreeSet<u16> = APNS_PORTS.into();
    for host in WAN_HOSTS {
        let expected = BTreeMap::from([
            (GW_WAN.ip(false), ports.clone()),
            (GW_WAN.ip(true), ports.clone()),
        ]);
        assert_eq!(peers(&lab, host), expected, "sources seen by {host}");
    }
}

/// An Ethernet frame with the IEEE "local experimental" ethertype: nothing in the kernel
/// answers it, so the only frames on the link are the ones the test sends.
fn frame(dst: [u8; 6], src: [u8; 6], vlan: Option<u16>, seq: u8) -> Vec<u8> {
    let mut frame = [dst, src].concat();
    if let Some(id) = vlan {
        frame.extend_from_slice(&0x8100u16.to_be_bytes());
        frame.extend_from_slice(&id.to_be_bytes());
    }
    frame.extend_from_slice(&0x88b5u16.to_be_bytes());
    frame.extend(std::iter::repeat_n(seq, 46));
    frame
}

/// Waits (bounded) until `ifname`'s rx_packets reaches `want`, then returns the counters.
fn wait_rx(lab: &Lab, role: Role, ifname: &str, want: u64) -> apns_tests::lab::LinkStats {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let stats = lab.link_stats(role, ifname).expect("link stats");
        if stats.rx_packets >= want || Instant::now() >= deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn raw_frames_reach_the_gateway_exactly() {
    apns_tests::require_root!();
    let lab = lab(false);
    for iface in [GW_IF_CLIENT, CLIENT_IF, GW_IF_VLAN, VLAN_IF_TRUNK] {
        assert_eq!(
            lab.mac(iface.role, iface.name).expect("mac"),
            iface.mac,
            "{iface:?}"
        );
    }
    const N: u8 = 5;

    // Untagged, client -> gateway lan0.
    let quiet = Duration::from_millis(300);
    let before = lab
        .wait_quiet(Role::Gw, GW_IF_CLIENT.name, quiet, TIMEOUT)
        .expect("lan0 quiet");
    let frames: Vec<Vec<u8>> = (0..N)
        .map(|seq| frame(GW_IF_CLIENT.mac, CLIENT_IF.mac, None, seq))
        .collect();
    lab.send_frames(Role::Client, CLIENT_IF.name, &frames)
        .expect("send");
    let after = wait_rx(
        &lab,
        Role::Gw,
        GW_IF_CLIENT.name,
        before.rx_packets + u64::from(N),
    );
    assert_eq!(after.rx_packets - before.rx_packets, u64::from(N));
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(after.rx_bytes - before.rx_bytes, bytes as u64);

    // Tagged with VLAN 100, vlan host trunk -> gateway lan2, then onto lan2.100. Frames of
    // another VLAN and untagged ones reach the trunk but not the sub-interface.
    let trunk_before = lab
        .wait_quiet(Role::Gw, GW_IF_TRUNK.name, quiet, TIMEOUT)
        .expect("lan2 quiet");
    let sub_before = lab.link_stats(Role::Gw, GW_IF_VLAN.name).expect("stats");
    let tagged: Vec<Vec<u8>> = (0..N)
        .map(|seq| frame(GW_IF_TRUNK.mac, VLAN_IF_TRUNK.mac, Some(VLAN_ID), seq))
        .chain([
            frame(GW_IF_TRUNK.mac, VLAN_IF_TRUNK.mac, Some(VLAN_ID + 1), 0),
            frame(GW_IF_TRUNK.mac, VLAN_IF_TRUNK.mac, None, 0),
        ])
        .collect();
    lab.send_frames(Role::Vlan, VLAN_IF_TRUNK.name, &tagged)
        .expect("send tagged");
    let trunk = wait_rx(
        &lab,
        Role::Gw,
        GW_IF_TRUNK.name,
        trunk_before.rx_packets + u64::from(N) + 2,
    );
    assert_eq!(trunk.rx_packets - trunk_before.rx_packets, u64::from(N) + 2);
    let sub = wait_rx(
        &lab,
        Role::Gw,
        GW_IF_VLAN.name,
        sub_before.rx_packets + u64::from(N),
    );
    assert_eq!(sub.rx_packets - sub_before.rx_packets, u64::from(N));
    // The sub-interface gets the frames without their tag.
    let untagged_bytes: usize = tagged[..usize::from(N)].iter().map(|f| f.len() - 4).sum();
    assert_eq!(sub.rx_bytes - sub_before.rx_bytes, untagged_bytes as u64);
    // Nothing more arrives later (e.g. the wrong-VLAN frame, late).
    let settled = lab
        .wait_quiet(Role::Gw, GW_IF_VLAN.name, quiet, TIMEOUT)
        .expect("lan2.100 quiet");
    assert_eq!(settled.rx_packets, sub.rx_packets);
}

#[test]
fn commands_run_in_the_namespace_and_drop_cleans_up() {
    apns_tests::require_root!();
    let lab = lab(false);
    let names = lab.namespaces();
    assert_eq!(names.len(), Role::ALL.len());
    assert!(
        names.iter().all(|n| Path::new(NETNS_DIR).join(n).exists()),
        "{names:?}"
    );

    // A command's child is in the client's network namespace but our mount namespace (where
    // /sys/fs/bpf is mounted and pins are visible).
    let client_ns = fs::metadata(lab.ns_path(Role::Client)).expect("ns").ino();
    let out = run(lab
        .command(Role::Client, "readlink")
        .args(["/proc/self/ns/net", "/proc/self/ns/mnt"]))
    .expect("readlink");
    let own_mnt = fs::read_link("/proc/self/ns/mnt").expect("own mnt ns");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [format!("net:[{client_ns}]"), own_mnt.display().to_string()],
    );
    // The same holds for closures run with in_ns.
    let ns_inode = lab
        .in_ns(Role::Client, || {
            fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino())
        })
        .expect("in_ns")
        .expect("stat");
    assert_eq!(ns_inode, client_ns);

    // A guarded child is stopped and reaped when its guard drops.
    let mut sleeper = lab
        .spawn(lab.command(Role::Client, "sleep").arg("60"))
        .expect("spawn");
    let proc_dir = format!("/proc/{}", sleeper.id());
    assert!(sleeper
        .wait_timeout(Duration::from_millis(50))
        .expect("wait")
        .is_none());
    drop(sleeper);
    assert!(!Path::new(&proc_dir).exists(), "{proc_dir} still exists");

    drop(lab);
    let left: Vec<&String> = names
        .iter()
        .filter(|n| Path::new(NETNS_DIR).join(n).exists())
        .collect();
    assert!(left.is_empty(), "namespaces left after drop: {left:?}");
}

/// Deletes the named namespaces when the test ends, whatever happened.
struct NetnsGuard(Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for name in &self.0 {
            if Path::new(NETNS_DIR).join(name).exists() {
                let _ = run(Command::new("ip").args(["netns", "delete", name]));
            }
        }
    }
}

#[test]
fn new_lab_sweeps_namespaces_of_dead_processes_only() {
    apns_tests::require_root!();
    // 4000000000 is above the kernel's largest pid_max (4194304): no such process can exist.
    // Our own pid in the rest of the name keeps concurrent runs of this test apart.
    let stale = format!("{NETNS_PREFIX}4000000000-{}-stale", process::id());
    // A live pid (ours) with a sequence number no lab of ours uses: must survive the sweep.
    let live = format!("{NETNS_PREFIX}{}-{}-live", process::id(), u64::MAX);
    let _guard = NetnsGuard(vec![stale.clone(), live.clone()]);
    for name in [&stale, &live] {
        run(Command::new("ip").args(["netns", "add", name])).expect("ip netns add");
    }

    let _lab = lab(false);
    assert!(
        !Path::new(NETNS_DIR).join(&stale).exists(),
        "{stale} was not swept"
    );
    assert!(
        Path::new(NETNS_DIR).join(&live).exists(),
        "{live} of a live pid was swept"
    );
}
