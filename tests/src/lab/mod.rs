//! The lab: a gateway topology in uniquely named network namespaces, for end-to-end tests,
//! `cargo xtask demo` and benchmarks. `Lab::new` builds it (sweeping labs that crashed runs left
//! behind), starts echo servers on the two WAN hosts, and dropping the `Lab` stops them and
//! deletes every namespace it made (and with them every veth). The topology, with its addresses,
//! interface names and MACs, is in `topology.rs` (re-exported here).
//!
//! Everything runs inside the lab's namespaces through setns(CLONE_NEWNET) on one thread or in
//! a child before exec, never through `ip netns exec`: that one also moves into a new mount
//! namespace with a fresh /sys, where /sys/fs/bpf (and the agent's pins) are not visible.
//! Nothing is added to the root namespace: no address, route or interface.
//!
//! Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), /dev/net/tun, `ip` and, for NAT, `nft`.

mod child;
mod link;
mod netns;
mod servers;
mod tcpdump;
mod topology;
mod vlan;

use std::{
    ffi::OsStr,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
    path::PathBuf,
    process::{self, Command},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::programs::XdpMode;
use socket2::{Domain, Socket, Type};

use crate::bench::testrun::FloorProgram;

pub use child::LabChild;
pub use link::{LinkStats, TcpSegments};
pub use netns::{run, run_with_input, NETNS_DIR, NETNS_PREFIX};
pub use servers::Accepted;
pub use tcpdump::{CaptureMarker, Tcpdump};
pub use topology::*;

use netns::Namespace;
use servers::EchoServer;
use vlan::VlanRelay;

/// How long a new lab's namespaces get to settle (times the tests' time scale).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes lab names unique within this process; the pid makes them unique across processes.
static NEXT_LAB: AtomicU64 = AtomicU64::new(0);

/// How the lab is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabOptions {
    /// Masquerade (IPv4 and IPv6) on the gateway's WAN interface with nftables; the ISP then
    /// has no route back to the LAN prefixes and the servers see `GW_WAN` as the source.
    pub nat: bool,
    /// A second upstream router ([`Role::Isp2`]) on the gateway's WAN segment, ready to
    /// take over the gateway's default route (see `topology.rs`). Off by default: it adds
    /// a namespace and its own traffic (MLD, ND) on wan0.
    pub second_upstream: bool,
}

impl LabOptions {
    /// With NAT, nothing else.
    pub const NAT: LabOptions = LabOptions {
        nat: true,
        second_upstream: false,
    };
}

/// A running lab; see the module documentation.
pub struct Lab {
    id: String,
    options: LabOptions,
    // Fields drop in declaration order: servers and relays first (their sockets live in the
    // namespaces), namespaces last.
    servers: Vec<(Role, EchoServer)>,
    relays: Vec<VlanRelay>,
    /// XDP programs on the peer ends of the gateway's veths, where the kernel needs one to
    /// take redirected frames ([`Lab::redirect_offloads`]); detached when dropped.
    peer_programs: Mutex<Vec<FloorProgram>>,
    /// In [`Lab::roles`] order, one per role.
    namespaces: Vec<Namespace>,
}

impl Lab {
    /// Builds a lab and returns once every namespace has settled ([`Lab::wait_settled`]):
    /// a test that counts packets exactly must not see the links' own start-up traffic.
    /// Namespaces of earlier runs whose process is gone are deleted first.
    pub fn new(options: LabOptions) -> Result<Lab> {
        netns::sweep_stale();
        let id = format!(
            "{NETNS_PREFIX}{}-{}",
            process::id(),
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Lab {
            id,
            options,
            servers: Vec::new(),
            relays: Vec::new(),
            peer_programs: Mutex::new(Vec::new()),
            namespaces: Vec::with_capacity(Role::ALL.len() + 1),
        };
        // On any error below, dropping `lab` deletes what was made so far.
        for role in lab.roles() {
            let name = format!("{}-{role}", lab.id);
            lab.namespaces.push(Namespace::create(role, name)?);
        }
        lab.relays = topology::build(&lab).with_context(|| format!("building lab {}", lab.id))?;
        for role in [Role::Apple, Role::Other] {
            let addrs = role
                .host_addrs()
                .with_context(|| format!("{role} has no host addresses"))?;
            let server = EchoServer::start(lab.ns(role), addrs, &APNS_PORTS)?;
            lab.servers.push((role, server));
        }
        // The links came up within milliseconds of each other (topology.rs batches the
        // commands); their carriers, and IPv6 with them, follow up to a second later.
        for role in lab.roles() {
            lab.wait_settled(role, SETTLE_TIMEOUT * crate::time_scale())?;
        }
        Ok(lab)
    }

    /// `apnslab-<pid>-<seq>`: unique among live labs, e.g. for a per-test bpffs pin folder.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn options(&self) -> LabOptions {
        self.options
    }

    /// The roles this lab has: [`Role::ALL`], and [`Role::Isp2`] with
    /// [`LabOptions::second_upstream`].
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = Role::ALL.to_vec();
        if self.options.second_upstream {
            roles.push(Role::Isp2);
        }
        roles
    }

    fn ns(&self, role: Role) -> &Namespace {
        // `namespaces` holds every role of `roles()` in order from `new` on; asking for an
        // optional role the lab was built without is a bug in the test.
        self.namespaces
            .iter()
            .find(|ns| ns.role() == role)
            .unwrap_or_else(|| panic!("lab {} has no {role} namespace (see LabOptions)", self.id))
    }

    /// The name of `role`'s namespace (for `ip -n NAME …`).
    pub fn ns_name(&self, role: Role) -> &str {
        self.ns(role).name()
    }

    /// The path of `role`'s namespace under /run/netns.
    pub fn ns_path(&self, role: Role) -> PathBuf {
        netns::path_of(self.ns_name(role))
    }

    /// The names of all the lab's namespaces; none of them exists any more after drop.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// Runs `f` on a fresh thread inside `role`'s network namespace (the mount namespace stays
    /// the caller's) and returns what it returns. Sockets it opens stay in the namespace.
    pub fn in_ns<T: Send>(&self, role: Role, f: impl FnOnce() -> T + Send) -> Result<T> {
        self.ns(role)
            .run_on_thread(f)
            .with_context(|| format!("running in namespace {}", self.ns_name(role)))
    }

    /// A command whose child runs in `role`'s network namespace but keeps the root mount
    /// namespace, so it sees /sys/fs/bpf and its pins.
    pub fn command(&self, role: Role, program: impl AsRef<OsStr>) -> Command {
        self.ns(role).command(program.as_ref())
    }

    /// Spawns `cmd` (made with `command`) and guards it: the child is stopped when the guard
    /// drops, which the borrow checker puts before the lab's own drop.
    pub fn spawn(&self, cmd: &mut Command) -> Result<LabChild<'_>> {
        let line = netns::command_line(cmd);
        let child = cmd.spawn().with_context(|| format!("starting `{line}`"))?;
        Ok(LabChild::new(child, line))
    }

    /// A TCP connection made from inside `from`'s namespace; it works from any thread.
    pub fn connect(
        &self,
        from: Role,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        self.ns(from)
            .run_on_thread(|| TcpStream::connect_timeout(&addr, timeout))
            .flatten()
            .map_err(|e| io::Error::new(e.kind(), format!("connecting from {from} to {addr}: {e}")))
    }

    /// A TCP connection made from inside `from`'s namespace with `source` as its address
    /// (one of the namespace's, e.g. an extra device address on the client's eth0).
    pub fn connect_from(
        &self,
        from: Role,
        source: IpAddr,
        addr: SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        self.ns(from)
            .run_on_thread(|| -> io::Result<TcpStream> {
                // std's TcpStream cannot bind before it connects.
                let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
                socket.bind(&SocketAddr::new(source, 0).into())?;
                socket.connect_timeout(&addr.into(), timeout)?;
                Ok(socket.into())
            })
            .flatten()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("connecting from {from} ({source}) to {addr}: {e}"),
                )
            })
    }

    /// One long-lived connection from `from` to the echo server at `addr`, driven by a thread:
    /// `messages` messages of 64 bytes, `pause` apart, each of which must come back whole
    /// within `timeout` (the thread panics otherwise). The thread returns the count echoed.
    pub fn echo_flow(
        &self,
        from: Role,
        addr: SocketAddr,
        messages: usize,
        pause: Duration,
        timeout: Duration,
    ) -> io::Result<thread::JoinHandle<usize>> {
        let mut stream = self.connect(from, addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(thread::spawn(move || {
            for i in 0..messages {
                let message = [(i % 251) as u8; 64];
                stream.write_all(&message).unwrap();
                let mut back = [0u8; 64];
                stream.read_exact(&mut back).unwrap();
                assert_eq!(back, message, "message {i}");
                thread::sleep(pause);
            }
            messages
        }))
    }

    /// Connects from `from` to `addr`, sends `bytes`, half-closes and reads the echo until the
    /// server closes; the whole exchange is bounded by `timeout`.
    pub fn echo(
        &self,
        from: Role,
        addr: SocketAddr,
        bytes: &[u8],
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let context =
            |e: io::Error| io::Error::new(e.kind(), format!("echo from {from} to {addr}: {e}"));
        let stream = self.connect(from, addr, timeout)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let mut writer = stream.try_clone().map_err(context)?;
        // Write and read at once: a payload larger than the socket buffers would otherwise
        // block both ends.
        thread::scope(|scope| {
            let sent = scope.spawn(move || -> io::Result<()> {
                writer.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
                writer.write_all(bytes)?;
                writer.shutdown(Shutdown::Write)
            });
            let echoed = read_until_closed(&stream, deadline);
            sent.join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))?;
            echoed
        })
        .map_err(context)
    }

    /// Sends crafted Ethernet frames (header included) out of `ifname` in `role`'s namespace.
    pub fn send_frames<F: AsRef<[u8]> + Sync>(
        &self,
        role: Role,
        ifname: &str,
        frames: &[F],
    ) -> Result<()> {
        self.in_ns(role, || link::send_frames(ifname, frames))?
            .with_context(|| format!("in namespace {}", self.ns_name(role)))
    }

    /// The MAC address of `ifname` in `role`'s namespace, as the kernel has it.
    pub fn mac(&self, role: Role, ifname: &str) -> Result<[u8; 6]> {
        self.in_ns(role, || link::mac(ifname))?
            .with_context(|| format!("in namespace {}", self.ns_name(role)))
    }

    /// The packet counters of `ifname` in `role`'s namespace.
    pub fn link_stats(&self, role: Role, ifname: &str) -> Result<LinkStats> {
        self.in_ns(role, || link::stats(ifname))?
            .with_context(|| format!("in namespace {}", self.ns_name(role)))
    }

    /// The TCP segment counters of `role`'s namespace (IPv4 and IPv6 together): what its
    /// hosts' own stack sent and received, to check a gateway's counts against.
    pub fn tcp_segments(&self, role: Role) -> Result<TcpSegments> {
        self.in_ns(role, link::tcp_segments)?
            .with_context(|| format!("in namespace {}", self.ns_name(role)))
    }

    /// The SYN and SYN-ACK retransmissions of `role`'s namespace so far (TCPSynRetrans): on
    /// a slow machine a handshake's answer may come after the first retransmission timeout,
    /// and the counters then see one SYN (or SYN-ACK) more.
    pub fn syn_retransmits(&self, role: Role) -> Result<u64> {
        self.in_ns(role, link::syn_retransmits)?
            .with_context(|| format!("in namespace {}", self.ns_name(role)))
    }

    /// TCP resets `role`'s host has sent (its stack's, not a firewall's).
    pub fn resets_sent(&self, role: Role) -> Result<u64> {
        self.in_ns(role, link::resets_sent)?
            .with_context(|| format!("in namespace {}", self.ns_name(role)))
    }

    /// Waits until `role`'s namespace has settled after the lab was built: every link that
    /// is up has its carrier processed (the kernel's link watch reports a new carrier up to
    /// a second late, and IPv6 starts on the link only then), and every IPv6 address has
    /// joined its solicited-node multicast group, so that the host answers neighbour
    /// solicitations. A gateway that resolves a host before then gets no answer and retries
    /// a second later, which a test counting packets exactly sees as a retransmission.
    /// Fails after `timeout`.
    pub fn wait_settled(&self, role: Role, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let links = run(self.command(role, "ip").args(["-o", "link", "show", "up"]))?;
            let waiting: Vec<&str> = links
                .lines()
                .filter(|line| line.contains("NO-CARRIER") || line.contains(" state DOWN "))
                .collect();
            let missing = self
                .in_ns(role, link::unjoined_solicited_nodes)?
                .with_context(|| format!("in namespace {}", self.ns_name(role)))?;
            if waiting.is_empty() && missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "namespace {} not settled after {timeout:?}: links without carrier {waiting:?}, no solicited-node group for {missing:?}",
                    self.ns_name(role)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the counters of `ifname` have not moved for `quiet` (e.g. the last MLD
    /// report after setup) and returns them: a baseline for exact packet counts. Fails after
    /// `timeout`.
    pub fn wait_quiet(
        &self,
        role: Role,
        ifname: &str,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<LinkStats> {
        self.in_ns(role, || -> Result<LinkStats> {
            let deadline = Instant::now() + timeout;
            let mut last = link::stats(ifname)?;
            let mut since = Instant::now();
            loop {
                if since.elapsed() >= quiet {
                    return Ok(last);
                }
                if Instant::now() >= deadline {
                    bail!("{ifname} still busy after {timeout:?}: {last:?}");
                }
                thread::sleep(Duration::from_millis(10));
                let now = link::stats(ifname)?;
                if now != last {
                    (last, since) = (now, Instant::now());
                }
            }
        })?
        .with_context(|| format!("in namespace {}", self.ns_name(role)))
    }

    /// The connections the echo server on `role` (Apple or Other) accepted so far, oldest
    /// first; empty for roles without a server.
    pub fn accepted(&self, role: Role) -> Vec<Accepted> {
        self.servers
            .iter()
            .filter(|(r, _)| *r == role)
            .flat_map(|(_, server)| server.accepted())
            .collect()
    }
}

impl Lab {
    /// Gets the lab ready for the redirect fast path on the gateway's lan0 and wan0
    /// (docs/fastpath.md): XDP_REDIRECT into a veth needs NAPI on the peer end (GRO on the
    /// client's eth0 and the ISP's gw0; before Linux 5.13 an XDP program there, as
    /// [`Lab::redirect_offloads`] says), and a redirected frame loses veth's checksum-offload
    /// note, so the hosts that send across it (client, Apple, and the ISP for the resets it
    /// sends itself) compute full checksums; the fast path only forwards to resolved
    /// neighbours, so the gateway resolves the ISP and `neighbours` first.
    pub fn prepare_redirect(&self, neighbours: &[std::net::IpAddr]) -> Result<()> {
        self.redirect_offloads()?;
        self.resolve_neighbours(neighbours)
    }

    /// The offload settings of [`Lab::prepare_redirect`] alone (the gateway's neighbour
    /// caches left as they are). Before Linux 5.13, veth takes redirected frames only into a
    /// peer that runs an XDP program (GRO does not give it NAPI yet; a frame redirected
    /// there is dropped with ENXIO), so on those kernels the client's eth0 and the ISP's gw0
    /// also get the benchmarks' floor program (count and pass), in native mode.
    pub fn redirect_offloads(&self) -> Result<()> {
        if veth_needs_peer_xdp()? {
            for (role, ifname) in [(Role::Client, CLIENT_IF.name), (Role::Isp, ISP_IF_GW.name)] {
                let mut floor = FloorProgram::load()?;
                let program = floor.xdp_mut()?;
                self.in_ns(role, || program.attach(ifname, XdpMode::Driver))?
                    .with_context(|| {
                        format!(
                            "attaching the floor program to {ifname} in {}",
                            self.ns_name(role)
                        )
                    })?;
                self.peer_programs
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the lab's peer programs: a test panicked"))?
                    .push(floor);
            }
        }
        let steps: [(Role, &str, &str); 5] = [
            (Role::Client, CLIENT_IF.name, "gro"),
            (Role::Isp, ISP_IF_GW.name, "gro"),
            (Role::Client, CLIENT_IF.name, "tx"),
            (Role::Apple, APPLE_IF.name, "tx"),
            (Role::Isp, ISP_IF_GW.name, "tx"),
        ];
        for (role, ifname, feature) in steps {
            let setting = if feature == "gro" { "on" } else { "off" };
            run(self
                .command(role, "ethtool")
                .args(["-K", ifname, feature, setting]))?;
        }
        Ok(())
    }

    /// The packet counters of the rules of nftables `object` (`["table", "inet", NAME]` or
    /// `["chain", "inet", TABLE, NAME]`) in `role`'s namespace, in rule order.
    pub fn nft_counters(&self, role: Role, object: &[&str]) -> Result<Vec<u64>> {
        let listing = run(self.command(role, "nft").arg("list").args(object))?;
        listing
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|pair| pair[0] == "packets")
            .map(|pair| {
                pair[1]
                    .parse()
                    .with_context(|| format!("nft counter {:?} in {object:?}", pair[1]))
            })
            .collect()
    }

    /// The gateway resolves the ISP and `neighbours` (one ping each).
    pub fn resolve_neighbours(&self, neighbours: &[std::net::IpAddr]) -> Result<()> {
        let isp = [ISP_WAN.v4.into(), ISP_WAN.v6.into()];
        for addr in isp.iter().chain(neighbours) {
            run(self
                .command(Role::Gw, "ping")
                .args(["-c", "1", "-W", "2", &addr.to_string()]))?;
        }
        Ok(())
    }
}

/// A content filter stand-in for the gateway (the very filter the `redirect` fast path
/// exists to bypass): its forward chain drops TCP 5223 and 2197 in both directions, and
/// counts what it drops.
pub const APNS_FORWARD_DROP: &str = "table inet filter {
    chain forward {
        type filter hook forward priority 0; policy accept;
        tcp dport { 5223, 2197 } counter drop
        tcp sport { 5223, 2197 } counter drop
    }
}";

/// How long a test gives a connection it expects to be dropped: short enough that a dropped
/// SYN is not retransmitted (the first retransmission is after 1 s).
pub const REFUSED: Duration = Duration::from_millis(600);

impl Lab {
    /// Loads the nftables `ruleset` (`nft -f -`) in `role`'s namespace.
    pub fn nft(&self, role: Role, ruleset: &str) -> Result<()> {
        run_with_input(
            self.command(role, "nft").args(["-f", "-"]),
            ruleset.as_bytes(),
        )?;
        Ok(())
    }

    /// `from` connects to the echo server at `to` and gets its bytes back (5 s at most).
    pub fn echo_ok(&self, from: Role, to: SocketAddr) {
        let reply = self
            .echo(from, to, b"ping", Duration::from_secs(5))
            .unwrap_or_else(|err| panic!("echo from {from} to {to}: {err}"));
        assert_eq!(reply, b"ping", "echo from {from} to {to}");
    }

    /// `from` cannot connect to `to` within [`REFUSED`].
    pub fn refused(&self, from: Role, to: SocketAddr) {
        assert!(
            self.connect(from, to, REFUSED).is_err(),
            "the connection from {from} to {to} should have been dropped"
        );
    }
}

/// Polls `ready` every 20 ms until it holds; panics after `timeout`, saying `what` it waited
/// for (tests wait on what they can observe, never for a fixed time).
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until EOF or `deadline`.
fn read_until_closed(mut stream: &TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut echoed = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {} echoed bytes", echoed.len()),
            ));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(echoed),
            Ok(n) => echoed.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether this kernel (before 5.13) takes XDP_REDIRECT frames into a veth only when its peer
/// runs an XDP program; from 5.13 on GRO on the peer is enough ("veth: allow enabling NAPI
/// even without XDP").
fn veth_needs_peer_xdp() -> Result<bool> {
    const RELEASE: &str = "/proc/sys/kernel/osrelease";
    let release = std::fs::read_to_string(RELEASE).with_context(|| format!("reading {RELEASE}"))?;
    let mut numbers = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|part| part.parse::<u32>());
    match (numbers.next(), numbers.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor) < (5, 13)),
        _ => bail!("{RELEASE} holds {release:?}, not a kernel release"),
    }
}
