//! The connection table end to end (issue 13): `apns-agent run` on the lab gateway with lan0
//! facing the devices, devices behind it that reach Apple, are refused, or are cut while idle
//! by a middlebox on the upstream path, over IPv4 and IPv6, routed, behind NAT, and with the
//! redirect fast path; `clients --json` must give each device its exact finding, and the
//! metrics must say the same. Then: a flood bigger than the table, `clients` after a
//! `kill -9`, bad input, and the 443 fallback (issue 18). Needs root; every test builds its
//! own lab and pin directory.
//!
//! The lab's client namespace plays several devices: extra addresses on its eth0, each
//! device's connections bound to its own address. The Apple namespace gets extra hosts:
//! [`REFUSING`] listens on nothing (its kernel answers every SYN with a RST), [`CUTTING`]
//! runs echo servers behind the ISP's middlebox, which gives connections to it a short
//! established timeout and resets the first packet after it expired.

use std::{
    collections::BTreeMap,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use apns_common::counters::{Direction, Outcome};
use apns_tests::{
    agent::{self, gw_command, spawn_run, Agent, TestPins},
    lab::{self, Lab, LabOptions, Role, APPLE, APPLE_IF, CLIENT_IF, GW_IF_CLIENT, GW_IF_WAN},
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(5);
/// The middlebox's established timeout (seconds) toward [`CUTTING`], and how long the
/// cut device stays idle: well past it.
const MIDDLEBOX_TIMEOUT: u64 = 2;
const IDLE: Duration = Duration::from_secs(5);
/// Idle cuts each cut device goes through.
const CUTS: usize = 3;
/// Handshakes each refused device tries.
const REFUSALS: usize = 3;

/// A device behind the gateway: its IPv4 and IPv6 address on the client's eth0.
#[derive(Clone, Copy, Debug)]
struct Device {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Device {
    const fn new(host: u8) -> Device {
        Device {
            v4: Ipv4Addr::new(192, 0, 2, host),
            v6: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, host as u16),
        }
    }

    fn ip(self, ipv6: bool) -> IpAddr {
        if ipv6 {
            self.v6.into()
        } else {
            self.v4.into()
        }
    }
}

/// The healthy device, the refused one, the one cut while idle.
const HEALTHY: Device = Device::new(0x11);
const REFUSED: Device = Device::new(0x12);
const CUT: Device = Device::new(0x13);
/// The fallback tests' devices: one whose 5223 is blocked, one that only uses 443.
const FALLS_BACK: Device = Device::new(0x14);
const ONLY_443: Device = Device::new(0x15);
const DEVICES: [Device; 5] = [HEALTHY, REFUSED, CUT, FALLS_BACK, ONLY_443];

/// Apple hosts besides the lab's echo server ([`APPLE`]).
const REFUSING: Device = Device {
    v4: Ipv4Addr::new(17, 249, 1, 11),
    v6: Ipv6Addr::new(0x2620, 0x149, 0xa44, 0, 0, 0, 0, 0x11),
};
const CUTTING: Device = Device {
    v4: Ipv4Addr::new(17, 249, 1, 12),
    v6: Ipv6Addr::new(0x2620, 0x149, 0xa44, 0, 0, 0, 0, 0x12),
};

/// How the gateway forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Deployment {
    Routed,
    Nat,
    /// The redirect fast path, every neighbour resolved: XDP forwards everything.
    Redirect,
    /// The redirect fast path with the devices' neighbour entries left cold: Apple's first
    /// packets toward a device go through the TC step (`bpf_redirect_neigh`), which leaves
    /// through the stack's transmit path, where the table's TC egress program records them.
    RedirectColdNeighbours,
}

/// Runs `ip -n NS ARGS` for `role`.
fn ip(lab: &Lab, role: Role, args: &[&str]) {
    let mut cmd = Command::new("ip");
    cmd.arg("-n").arg(lab.ns_name(role)).args(args);
    lab::run(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
}

/// Loads `ruleset` into nftables in `role`'s namespace.
fn nft(lab: &Lab, role: Role, ruleset: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.ns_name(role), "nft", "-f", "-"]);
    lab::run_with_input(&mut cmd, ruleset.as_bytes()).unwrap_or_else(|e| panic!("{e:#}"));
}

/// The devices' addresses on the client, the extra Apple hosts, and echo servers on
/// [`CUTTING`] (5223 and 443). The servers stop when the returned flag is dropped... set.
fn populate(lab: &Lab) -> EchoServers {
    for device in DEVICES {
        ip(
            lab,
            Role::Client,
            &[
                "addr",
                "add",
                &format!("{}/25", device.v4),
                "dev",
                CLIENT_IF.name,
            ],
        );
        ip(
            lab,
            Role::Client,
            &[
                "addr",
                "add",
                &format!("{}/64", device.v6),
                "dev",
                CLIENT_IF.name,
                "nodad",
            ],
        );
    }
    for host in [REFUSING, CUTTING] {
        ip(
            lab,
            Role::Apple,
            &[
                "addr",
                "add",
                &format!("{}/24", host.v4),
                "dev",
                APPLE_IF.name,
            ],
        );
        ip(
            lab,
            Role::Apple,
            &[
                "addr",
                "add",
                &format!("{}/64", host.v6),
                "dev",
                APPLE_IF.name,
                "nodad",
            ],
        );
    }
    EchoServers::start(lab, CUTTING, &[5223, 443])
}

/// The ISP's middlebox: connections toward [`CUTTING`] get an established timeout of
/// [`MIDDLEBOX_TIMEOUT`] seconds; a packet of a connection it no longer knows (not a SYN)
/// is answered with a RST in the peer's name, as a stateful firewall that lost the state.
fn middlebox(lab: &Lab) {
    nft(
        lab,
        Role::Isp,
        &format!(
            "table inet apnslab_mbox {{
    ct timeout short {{
        protocol tcp;
        l3proto inet;
        policy = {{ established: {MIDDLEBOX_TIMEOUT} }}
    }}
    chain pre {{
        type filter hook prerouting priority filter; policy accept;
        ip daddr {v4} ct timeout set \"short\"
        ip6 daddr {v6} ct timeout set \"short\"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state new tcp flags & (syn | rst) == 0 reject with tcp reset
    }}
}}
",
            v4 = CUTTING.v4,
            v6 = CUTTING.v6
        ),
    );
}

/// Echo servers on `host`'s addresses in the Apple namespace, until dropped.
struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl EchoServers {
    fn start(lab: &Lab, host: Device, ports: &[u16]) -> EchoServers {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in ports {
            for ipv6 in [false, true] {
                let addr = SocketAddr::new(host.ip(ipv6), port);
                let listener = lab
                    .in_ns(Role::Apple, || TcpListener::bind(addr))
                    .unwrap()
                    .unwrap_or_else(|e| panic!("listening on {addr}: {e}"));
                listener.set_nonblocking(true).unwrap();
                let stop = Arc::clone(&stop);
                threads.push(thread::spawn(move || serve(&listener, &stop)));
            }
        }
        EchoServers { stop, threads }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &Arc<AtomicBool>) {
    let mut connections = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                let stop = Arc::clone(stop);
                connections.push(thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                    let mut buf = [0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        match stream.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => return,
                        }
                    }
                }));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// A TCP connection from `from` (a device's address) to `to`, made in the client namespace.
fn connect(
    lab: &Lab,
    from: IpAddr,
    to: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    lab.connect_from(Role::Client, from, to, timeout)
}

/// Sends `bytes` on `stream` and reads them back.
fn echo(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(bytes)?;
    let mut back = vec![0u8; bytes.len()];
    stream.read_exact(&mut back)?;
    assert_eq!(back, bytes);
    Ok(())
}

/// What `apns-agent clients --json` says.
fn clients(lab: &Lab, pins: &TestPins, config: &Path) -> Value {
    let config = config.display().to_string();
    let out = agent::succeed(&mut gw_command(
        lab,
        pins,
        &["clients", "--json", "--config", &config],
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The devices of a `clients --json` report by address.
fn by_address(report: &Value) -> BTreeMap<String, Value> {
    report["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|device| {
            (
                device["address"].as_str().unwrap().to_owned(),
                device.clone(),
            )
        })
        .collect()
}

/// The agent's config for these tests: lan0 faces the devices, the rules' idle gap fits
/// the lab's seconds.
fn config_file(lab: &Lab) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-clients.toml", lab.id()));
    std::fs::write(
        &path,
        format!(
            "[roles]\n{} = \"devices\"\n{} = \"upstream\"\n\n[clients]\nidle_cut_min = 2\n",
            GW_IF_CLIENT.name, GW_IF_WAN.name
        ),
    )
    .unwrap();
    path
}

/// Starts the agent on lan0 and wan0 for `deployment`, with `config`.
fn gateway<'lab>(
    lab: &'lab Lab,
    pins: &TestPins,
    config: &Path,
    deployment: Deployment,
    mode: &str,
) -> Agent<'lab> {
    let config = config.display().to_string();
    let mut args = vec![
        "run",
        "--config",
        config.as_str(),
        "--iface",
        GW_IF_CLIENT.name,
        "--iface",
        GW_IF_WAN.name,
        "--mode",
        mode,
    ];
    match deployment {
        Deployment::Routed | Deployment::Nat => {}
        Deployment::Redirect => {
            let neighbours: Vec<IpAddr> = DEVICES
                .iter()
                .flat_map(|device| [device.ip(false), device.ip(true)])
                .collect();
            lab.prepare_redirect(&neighbours).unwrap();
        }
        Deployment::RedirectColdNeighbours => lab.prepare_redirect(&[]).unwrap(),
    }
    if deployment != Deployment::Routed && deployment != Deployment::Nat {
        args.extend(["--fastpath", "lan0=redirect", "--fastpath", "wan0=redirect"]);
    }
    spawn_run(lab, pins, &args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The three devices of issue 13 in both families at once; returns the healthy devices'
/// open connections (kept open until dropped).
fn three_devices(lab: &Lab) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for ipv6 in [false, true] {
        let mut stream = connect(lab, HEALTHY.ip(ipv6), APPLE.socket(ipv6, 5223), TIMEOUT)
            .unwrap_or_else(|e| panic!("healthy device: {e}"));
        echo(&mut stream, b"hello").unwrap();
        held.push(stream);
        for _ in 0..REFUSALS {
            let refused = connect(
                lab,
                REFUSED.ip(ipv6),
                SocketAddr::new(REFUSING.ip(ipv6), 5223),
                TIMEOUT,
            );
            let err = refused.expect_err("the refusing host refuses");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        }
    }
    // The cut device, both families side by side: connect, talk, stay idle past the
    // middlebox's timeout, talk again: reset. Then a connection that stays up.
    let cut = |ipv6: bool| {
        let to = SocketAddr::new(CUTTING.ip(ipv6), 5223);
        for cycle in 0..CUTS {
            let mut stream = connect(lab, CUT.ip(ipv6), to, TIMEOUT)
                .unwrap_or_else(|e| panic!("cut device, cycle {cycle}: {e}"));
            echo(&mut stream, b"hello").unwrap();
            thread::sleep(IDLE);
            let after = echo(&mut stream, b"ping").expect_err("the middlebox resets it");
            assert_eq!(
                after.kind(),
                ErrorKind::ConnectionReset,
                "cycle {cycle}: {after}"
            );
        }
        let mut stream = connect(lab, CUT.ip(ipv6), to, TIMEOUT).unwrap();
        echo(&mut stream, b"hello again").unwrap();
        stream
    };
    thread::scope(|scope| {
        let v4 = scope.spawn(|| cut(false));
        let v6 = scope.spawn(|| cut(true));
        held.push(v4.join().unwrap());
        held.push(v6.join().unwrap());
    });
    held
}

/// The three devices through `deployment`; `clients --json` gives each its finding.
fn findings_through(deployment: Deployment) {
    let lab = Lab::new(LabOptions {
        nat: deployment == Deployment::Nat,
        ..LabOptions::default()
    })
    .unwrap();
    let _servers = populate(&lab);
    middlebox(&lab);
    let pins = TestPins::new();
    let config = config_file(&lab);
    let _agent = gateway(&lab, &pins, &config, deployment, "monitor");
    let started = Instant::now();
    let _held = three_devices(&lab);
    eprintln!("{deployment:?}: traffic took {:?}", started.elapsed());
    let report = clients(&lab, &pins, &config);
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    let devices = by_address(&report);
    for ipv6 in [false, true] {
        let device = |d: Device| {
            devices
                .get(&d.ip(ipv6).to_string())
                .unwrap_or_else(|| panic!("{deployment:?}: {} missing", d.ip(ipv6)))
        };
        let healthy = device(HEALTHY);
        assert_eq!(healthy["finding"], "ok", "{deployment:?} {healthy}");
        assert_eq!(healthy["open"], 1);
        let refused = device(REFUSED);
        assert_eq!(
            refused["finding"], "reset_by_apple",
            "{deployment:?} {refused}"
        );
        assert_eq!(refused["failing"], true);
        assert_eq!(refused["handshakes"]["refused"], REFUSALS as u64);
        let cut = device(CUT);
        assert_eq!(cut["finding"], "cut_while_idle", "{deployment:?} {cut}");
        assert_eq!(cut["idle_cuts_secs"].as_array().unwrap().len(), CUTS);
        assert!(
            cut["words"]
                .as_str()
                .unwrap()
                .starts_with(&format!("cut while idle after ~{} s", IDLE.as_secs())),
            "{cut}"
        );
        assert_eq!(cut["open"], 1);
    }
    assert_eq!(devices.len(), 6, "only the six devices: {devices:?}");
    // Every connection one entry: per family the healthy one, the refused attempts, the cut
    // connections and the last one of the cut device.
    let connections = 2 * (1 + REFUSALS + CUTS + 1) as u64;
    assert_eq!(report["table"]["made"], connections);
    assert_eq!(report["table"]["entries"], connections);
    assert_eq!(report["table"]["evicted"], 0);

    // The metrics say the same.
    let metrics = metrics(&lab);
    let expect = [
        (r#"apns_unhealthy_devices{finding="reset_by_apple"}"#, 2),
        (r#"apns_unhealthy_devices{finding="cut_while_idle"}"#, 2),
        (r#"apns_unhealthy_devices{finding="no_answer"}"#, 0),
        (r#"apns_unhealthy_devices{finding="reset_by_network"}"#, 0),
        (r#"apns_unhealthy_devices{finding="never_connected"}"#, 0),
        (r#"apns_unhealthy_devices{finding="falls_back_to_443"}"#, 0),
        (r#"apns_connections_open{interface="lan0",port="5223"}"#, 4),
        (r#"apns_connections_open{interface="lan0",port="443"}"#, 0),
        (
            r#"apns_handshake_failures_total{port="5223",reason="refused"}"#,
            2 * REFUSALS as u64,
        ),
        (
            r#"apns_handshake_failures_total{port="5223",reason="unanswered"}"#,
            0,
        ),
        // The refusals and the middlebox's resets come in Apple's name.
        (
            r#"apns_connections_ended_total{reason="rst_apple"}"#,
            2 * (REFUSALS + CUTS) as u64,
        ),
        (r#"apns_connections_ended_total{reason="rst_device"}"#, 0),
        (r#"apns_connections_ended_total{reason="fin_device"}"#, 0),
        (r#"apns_connections_ended_total{reason="evicted"}"#, 0),
        (
            "apns_connection_lifetime_seconds_count",
            2 * (REFUSALS + CUTS) as u64,
        ),
        (r#"apns_port443_connections_total{kind="fallback"}"#, 0),
        ("apns_conntrack_entries", connections),
        ("apns_conntrack_evictions_total", 0),
        ("apns_conntrack_untracked_total", 0),
    ];
    for (series, value) in expect {
        assert_eq!(
            metrics.get(series).copied(),
            Some(value as f64),
            "{deployment:?}: {series}"
        );
    }
    let wan0 = agent::gw_ifindex(&lab, GW_IF_WAN.name).unwrap();
    let inbound = |outcome| {
        pins.counter(wan0, Direction::Inbound, 5223, outcome)
            .unwrap()
    };
    match deployment {
        Deployment::Routed | Deployment::Nat => {}
        Deployment::Redirect => {
            // Apple's side was forwarded by XDP (and so recorded there, not by TC egress).
            let forwarded = inbound(Outcome::Fastpath);
            assert!(
                forwarded.synack >= 4 && forwarded.rst >= 2 * (REFUSALS + CUTS) as u64,
                "{forwarded:?}"
            );
        }
        Deployment::RedirectColdNeighbours => {
            // Some of Apple's answers found a device unresolved and took the TC step; the
            // findings above are exact all the same (a SYN-ACK or reset the table missed
            // would have made an unanswered handshake).
            let (by_xdp, by_tc) = (inbound(Outcome::Fastpath), inbound(Outcome::FastpathTc));
            assert!(by_tc.packets > 0, "no hand-off to TC: {by_tc:?}");
            assert!(
                by_xdp.synack + by_tc.synack >= 4
                    && by_xdp.rst + by_tc.rst >= 2 * (REFUSALS + CUTS) as u64,
                "{by_xdp:?} {by_tc:?}"
            );
        }
    }
    let _ = std::fs::remove_file(&config);
}

/// The agent's /metrics in the lab's gateway: each sample line's series to its value.
fn metrics(lab: &Lab) -> BTreeMap<String, f64> {
    let addr = apns_agent::telemetry::DEFAULT_METRICS_ADDR.parse().unwrap();
    agent::samples(&agent::scrape_metrics(lab, addr).unwrap_or_else(|e| panic!("{e:#}")))
}

#[test]
fn findings_routed() {
    apns_tests::require_root!();
    findings_through(Deployment::Routed);
}

#[test]
fn findings_behind_nat() {
    apns_tests::require_root!();
    findings_through(Deployment::Nat);
}

#[test]
fn findings_with_the_redirect_fast_path() {
    apns_tests::require_root!();
    findings_through(Deployment::Redirect);
}

#[test]
fn findings_with_the_redirect_fast_path_and_cold_neighbour_caches() {
    apns_tests::require_root!();
    findings_through(Deployment::RedirectColdNeighbours);
}

/// A TCP SYN from `src`:`sport` to `dst`:`dport` on the wire between `from` and `to` (MACs).
fn syn(
    from: lab::Iface,
    to: lab::Iface,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(from.mac, to.mac);
    let builder = match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => builder.ipv4(src.octets(), dst.octets(), 64),
        (IpAddr::V6(src), IpAddr::V6(dst)) => builder.ipv6(src.octets(), dst.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut frame = Vec::new();
    builder
        .tcp(sport, dport, 1, 64_240)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

/// Connections made while the table holds [`FLOOD_TABLE`]: more than it can hold.
const FLOOD: u16 = 1000;
const FLOOD_TABLE: u32 = 256;
const FLOOD_PORTS: u16 = 20_000;

#[test]
fn a_flood_bigger_than_the_table_keeps_everything_healthy_and_evictions_exact() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let _servers = populate(&lab);
    let pins = TestPins::new();
    let config = std::env::temp_dir().join(format!("{}-flood.toml", lab.id()));
    std::fs::write(
        &config,
        format!(
            "[roles]\n{} = \"devices\"\n[clients]\ntable_size = {FLOOD_TABLE}\n",
            GW_IF_CLIENT.name
        ),
    )
    .unwrap();
    let mut agent = gateway(&lab, &pins, &config, Deployment::Routed, "monitor");
    let lan0 = agent::gw_ifindex(&lab, GW_IF_CLIENT.name).unwrap();
    let syns = || {
        pins.counter(lan0, Direction::Outbound, 5223, Outcome::Pass)
            .unwrap()
            .syn
    };
    // Connection attempts from the client, one per source port, in batches the veth's ring
    // takes whole; each batch counted by XDP before the next.
    let client = apns_tests::lab::CLIENT.v4.into();
    let apple = APPLE.v4.into();
    for batch in (0..FLOOD).step_by(50) {
        let frames: Vec<Vec<u8>> = (batch..batch + 50)
            .map(|i| {
                syn(
                    CLIENT_IF,
                    GW_IF_CLIENT,
                    client,
                    apple,
                    FLOOD_PORTS + i,
                    5223,
                )
            })
            .collect();
        lab.send_frames(Role::Client, CLIENT_IF.name, &frames)
            .unwrap();
        lab::wait_until("the batch to be counted", TIMEOUT, || {
            syns() >= u64::from(batch + 50)
        });
    }
    assert_eq!(syns(), u64::from(FLOOD));
    // What the kernel holds, read independently: every entry one of the flood's.
    let table = pins.open().unwrap().conns.read().unwrap();
    assert_eq!(table.size, FLOOD_TABLE);
    let present = table.entries.len() as u64;
    assert!(present <= u64::from(FLOOD_TABLE), "{present} entries");
    assert!(table
        .entries
        .iter()
        .all(|(key, _)| (FLOOD_PORTS..FLOOD_PORTS + FLOOD).contains(&key.device_port)));
    assert_eq!(
        table.stats.made,
        u64::from(FLOOD),
        "one entry made per connection"
    );
    assert_eq!(table.stats.failed, 0);
    let evicted = u64::from(FLOOD) - present;
    eprintln!("flood: {FLOOD} connections into a table of {FLOOD_TABLE}: {present} kept, {evicted} evicted");
    assert!(evicted >= u64::from(FLOOD - FLOOD_TABLE as u16));
    // The agent says the same, in `clients` and in /metrics.
    let report = clients(&lab, &pins, &config);
    assert_eq!(report["table"]["made"], u64::from(FLOOD));
    assert_eq!(report["table"]["entries"], present);
    assert_eq!(report["table"]["evicted"], evicted);
    let metrics = metrics(&lab);
    assert_eq!(metrics["apns_conntrack_evictions_total"], evicted as f64);
    assert_eq!(metrics["apns_conntrack_entries"], present as f64);
    assert_eq!(metrics["apns_conntrack_size"], f64::from(FLOOD_TABLE));
    // Still healthy: the agent runs, and a real connection is tracked.
    assert!(
        agent.wait_timeout(Duration::ZERO).unwrap().is_none(),
        "the agent exited"
    );
    let mut stream = connect(&lab, HEALTHY.ip(false), APPLE.socket(false, 5223), TIMEOUT).unwrap();
    echo(&mut stream, b"still here").unwrap();
    let report = clients(&lab, &pins, &config);
    let devices = by_address(&report);
    assert_eq!(devices[&HEALTHY.v4.to_string()]["open"], 1, "{report}");
    let _ = std::fs::remove_file(&config);
}

#[test]
fn clients_works_after_kill_9_and_a_restart() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::NAT).unwrap();
    let _servers = populate(&lab);
    let pins = TestPins::new();
    let config = config_file(&lab);
    let mut agent = gateway(&lab, &pins, &config, Deployment::Nat, "monitor");
    let mut held = Vec::new();
    for ipv6 in [false, true] {
        let mut stream =
            connect(&lab, HEALTHY.ip(ipv6), APPLE.socket(ipv6, 5223), TIMEOUT).unwrap();
        echo(&mut stream, b"hello").unwrap();
        held.push(stream);
    }
    let open = |report: &Value| -> Vec<(String, Value, Value)> {
        by_address(report)
            .into_iter()
            .map(|(address, device)| (address, device["finding"].clone(), device["open"].clone()))
            .collect()
    };
    let before = clients(&lab, &pins, &config);
    agent.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
    agent
        .wait_timeout(TIMEOUT)
        .unwrap()
        .expect("the agent died");
    drop(agent);
    // Without any agent: the pinned table still answers, and the connections still count.
    let orphaned = clients(&lab, &pins, &config);
    for ipv6 in [false, true] {
        let mut stream = &held[usize::from(ipv6)];
        stream.write_all(b"!").unwrap();
        let mut back = [0u8; 1];
        stream.read_exact(&mut back).unwrap();
    }
    let expected = vec![
        (HEALTHY.v4.to_string(), Value::from("ok"), Value::from(1)),
        (HEALTHY.v6.to_string(), Value::from("ok"), Value::from(1)),
    ];
    assert_eq!(open(&before), expected);
    assert_eq!(open(&orphaned), expected);
    assert_eq!(orphaned["table"]["made"], 2);
    // A new agent adopts the table as it is.
    let _agent = gateway(&lab, &pins, &config, Deployment::Nat, "monitor");
    let adopted = clients(&lab, &pins, &config);
    assert_eq!(open(&adopted), expected);
    assert_eq!(adopted["table"]["made"], 2);
    let devices = by_address(&adopted);
    let packets = |report: &BTreeMap<String, Value>| {
        report[&HEALTHY.v4.to_string()]["connections"][0]["packets_out"]
            .as_u64()
            .unwrap()
    };
    assert!(
        packets(&devices) > packets(&by_address(&before)),
        "counted while no agent ran"
    );
    assert_eq!(
        metrics(&lab)[r#"apns_connections_open{interface="lan0",port="5223"}"#],
        2.0
    );
    let _ = std::fs::remove_file(&config);
}

#[test]
fn bad_input_to_clients_gets_a_clear_error() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let config = config_file(&lab);
    let config_arg = config.display().to_string();
    let output = agent::fail(&mut gw_command(
        &lab,
        &pins,
        &["clients", "--device", "not-an-address"],
    ))
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("\"not-an-address\" is not an IP address") && stderr.lines().count() == 1,
        "{stderr}"
    );
    // Nothing loaded: says so and how to start.
    let output = agent::fail(&mut gw_command(&lab, &pins, &["clients"])).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no apns-agent datapath is loaded"),
        "{stderr}"
    );
    // An address the table does not know: said in words, not an error.
    let _agent = gateway(&lab, &pins, &config, Deployment::Routed, "monitor");
    let out = agent::succeed(&mut gw_command(
        &lab,
        &pins,
        &["clients", "--config", &config_arg, "--device", "192.0.2.99"],
    ))
    .unwrap();
    assert!(
        out.contains("device 192.0.2.99: not in the connection table"),
        "{out}"
    );
    let _ = std::fs::remove_file(&config);
}

#[test]
fn a_device_that_falls_back_to_443_is_told_from_one_that_only_uses_443() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let _servers = populate(&lab);
    // The upstream router blocks 5223 toward the lab's Apple host (dropped, not refused).
    nft(
        &lab,
        Role::Isp,
        &format!(
            "table inet apnslab_block {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip daddr {} tcp dport 5223 drop
        ip6 daddr {} tcp dport 5223 drop
    }}
}}
",
            APPLE.v4, APPLE.v6
        ),
    );
    let pins = TestPins::new();
    let config = config_file(&lab);
    let _agent = gateway(&lab, &pins, &config, Deployment::Routed, "monitor");
    let mut held = Vec::new();
    for ipv6 in [false, true] {
        // 5223 times out; the device tries 443 at once, as iOS does on Wi-Fi.
        let blocked = connect(
            &lab,
            FALLS_BACK.ip(ipv6),
            APPLE.socket(ipv6, 5223),
            Duration::from_millis(1500),
        );
        assert!(blocked.is_err(), "5223 is blocked");
        let mut stream =
            connect(&lab, FALLS_BACK.ip(ipv6), APPLE.socket(ipv6, 443), TIMEOUT).unwrap();
        echo(&mut stream, b"fallback").unwrap();
        held.push(stream);
        // Another device uses 443 only, to another Apple host: ordinary HTTPS.
        let mut stream = connect(
            &lab,
            ONLY_443.ip(ipv6),
            SocketAddr::new(CUTTING.ip(ipv6), 443),
            TIMEOUT,
        )
        .unwrap();
        echo(&mut stream, b"https").unwrap();
        held.push(stream);
    }
    let report = clients(&lab, &pins, &config);
    let devices = by_address(&report);
    for ipv6 in [false, true] {
        let falls_back = &devices[&FALLS_BACK.ip(ipv6).to_string()];
        assert_eq!(falls_back["finding"], "falls_back_to_443", "{falls_back}");
        assert_eq!(falls_back["fallbacks_443"], 1);
        assert_eq!(falls_back["direct_443"], 0);
        assert_eq!(falls_back["handshakes"]["unanswered"], 1);
        assert_eq!(falls_back["failing"], false);
        let only_443 = &devices[&ONLY_443.ip(ipv6).to_string()];
        assert_eq!(only_443["finding"], "ok", "{only_443}");
        assert_eq!(only_443["fallbacks_443"], 0);
        assert_eq!(only_443["direct_443"], 1);
    }
    assert_eq!(devices.len(), 4);
    let metrics = metrics(&lab);
    for (series, value) in [
        (r#"apns_port443_connections_total{kind="fallback"}"#, 2.0),
        (r#"apns_port443_connections_total{kind="direct"}"#, 2.0),
        (
            r#"apns_unhealthy_devices{finding="falls_back_to_443"}"#,
            2.0,
        ),
        (
            r#"apns_handshake_failures_total{port="5223",reason="unanswered"}"#,
            2.0,
        ),
        (r#"apns_connections_open{interface="lan0",port="443"}"#, 4.0),
    ] {
        assert_eq!(metrics.get(series).copied(), Some(value), "{series}");
    }
    let _ = std::fs::remove_file(&config);
}
