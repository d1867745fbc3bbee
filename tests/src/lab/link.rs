//! Link-level access from inside a namespace: sending crafted Ethernet frames out of an
//! interface (AF_PACKET), reading an interface's MAC and its packet counters.
//!
//! Every function here must run on a thread that is already inside the namespace (see
//! `Lab::in_ns`). The counters come from /proc/thread-self/net/dev, which follows the calling
//! thread's network namespace; /sys/class/net would not: sysfs shows the devices of the namespace
//! that mounted it, which is the root one for us (that is why `ip netns exec` remounts /sys).

use std::{mem, os::fd::AsRawFd as _};

use anyhow::{bail, Context as _, Result};
use nix::{
    ifaddrs::getifaddrs,
    libc,
    net::if_::if_nametoindex,
    sys::socket::{
        sendto, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike as _,
    },
};

/// The packet counters of one interface, as the kernel reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// A namespace's TCP segment counters (`Tcp:` in /proc/net/snmp, shared by IPv4 and IPv6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpSegments {
    /// Segments sent, counted per segment (not per GSO packet): first transmissions, pure
    /// ACKs and resets; a retransmitted segment that carries data or SYN/FIN is counted in
    /// `retrans_segs` only.
    pub out_segs: u64,
    pub retrans_segs: u64,
}

impl TcpSegments {
    /// Every segment sent.
    pub fn sent(&self) -> u64 {
        self.out_segs + self.retrans_segs
    }
}

/// The TCP segment counters of the calling thread's network namespace.
pub(super) fn tcp_segments() -> Result<TcpSegments> {
    const PATH: &str = "/proc/thread-self/net/snmp";
    Ok(TcpSegments {
        out_segs: mib_field(PATH, "Tcp", "OutSegs")?,
        retrans_segs: mib_field(PATH, "Tcp", "RetransSegs")?,
    })
}

/// SYN and SYN-ACK retransmissions of the calling thread's network namespace
/// (`TcpExt: TCPSynRetrans` in /proc/net/netstat: by the timer, and a SYN-ACK sent again for
/// a duplicate SYN).
pub(super) fn syn_retransmits() -> Result<u64> {
    mib_field("/proc/thread-self/net/netstat", "TcpExt", "TCPSynRetrans")
}

/// TCP resets this network namespace's stack has sent (`Tcp: OutRsts`).
pub(super) fn resets_sent() -> Result<u64> {
    mib_field("/proc/thread-self/net/snmp", "Tcp", "OutRsts")
}

/// Field `name` of table `prefix` of a /proc/net MIB file: two lines start with `prefix:`,
/// the field names, then the values.
fn mib_field(path: &str, prefix: &str, name: &str) -> Result<u64> {
    let table = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut lines = table
        .lines()
        .filter(|line| line.split(':').next() == Some(prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("{path} has no {prefix} lines");
    };
    let index = names
        .split_whitespace()
        .position(|field| field == name)
        .with_context(|| format!("{path}: no {prefix} field {name}"))?;
    values
        .split_whitespace()
        .nth(index)
        .with_context(|| format!("{path}: no value for {prefix} {name}"))?
        .parse()
        .with_context(|| format!("{path}: {prefix} {name}"))
}

/// The (interface, address) pairs of the calling thread's network namespace whose
/// solicited-node multicast group (ff02::1:ffXX:XXXX, the address's last 24 bits) the
/// interface has not joined yet. Loopback is left out (it does no neighbour discovery).
pub(super) fn unjoined_solicited_nodes() -> Result<Vec<(String, String)>> {
    const ADDRESSES: &str = "/proc/thread-self/net/if_inet6";
    const GROUPS: &str = "/proc/thread-self/net/igmp6";
    let read =
        |path: &str| std::fs::read_to_string(path).with_context(|| format!("reading {path}"));
    let (addresses, groups) = (read(ADDRESSES)?, read(GROUPS)?);
    // `if_inet6`: address (32 hex digits), ifindex, prefix length, scope, flags, name.
    // `igmp6`: ifindex, name, group (32 hex digits), users, flags, timer.
    let joined: Vec<(&str, &str)> = groups
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((*fields.get(1)?, *fields.get(2)?))
        })
        .collect();
    Ok(addresses
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, name) = (*fields.first()?, *fields.get(5)?);
            if name == "lo" || address.len() != 32 {
                return None;
            }
            let group = format!("ff0200000000000000000001ff{}", &address[26..]);
            (!joined.contains(&(name, group.as_str())))
                .then(|| (name.to_owned(), address.to_owned()))
        })
        .collect())
}

/// Sends each frame as is (Ethernet header included) out of `ifname`.
pub(super) fn send_frames<F: AsRef<[u8]>>(ifname: &str, frames: &[F]) -> Result<()> {
    let ifindex = if_nametoindex(ifname).with_context(|| format!("no interface {ifname}"))?;
    // Protocol 0: the socket only sends, it never queues received frames.
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("opening an AF_PACKET socket")?;
    let target = link_addr(ifindex, 0)?;
    for (i, frame) in frames.iter().enumerate() {
        let frame = frame.as_ref();
        let sent = sendto(sock.as_raw_fd(), frame, &target, MsgFlags::empty())
            .with_context(|| format!("sending frame {i} ({} bytes) on {ifname}", frame.len()))?;
        if sent != frame.len() {
            bail!(
                "frame {i} on {ifname}: sent {sent} of {} bytes",
                frame.len()
            );
        }
    }
    Ok(())
}

/// The AF_PACKET address of an interface and an ethertype (host order; 0 for sending only,
/// as SOCK_RAW sends take the frame's own).
pub(super) fn link_addr(ifindex: u32, protocol: u16) -> Result<LinkAddr> {
    // SAFETY: sockaddr_ll is plain data, valid when zeroed.
    let mut raw: libc::sockaddr_ll = unsafe { mem::zeroed() };
    raw.sll_family = libc::AF_PACKET as libc::sa_family_t;
    raw.sll_protocol = protocol.to_be();
    raw.sll_ifindex = i32::try_from(ifindex).context("interface index out of range")?;
    let len = libc::socklen_t::try_from(mem::size_of::<libc::sockaddr_ll>())
        .context("sockaddr_ll size")?;
    // SAFETY: `raw` is a fully initialised sockaddr_ll of the stated length; from_raw copies it.
    unsafe { LinkAddr::from_raw((&raw as *const libc::sockaddr_ll).cast(), Some(len)) }
        .context("building the AF_PACKET address")
}

/// The MAC address of `ifname`.
pub(super) fn mac(ifname: &str) -> Result<[u8; 6]> {
    getifaddrs()
        .context("listing interfaces")?
        .filter(|ifa| ifa.interface_name == ifname)
        .find_map(|ifa| ifa.address?.as_link_addr()?.addr())
        .with_context(|| format!("no link-layer address for interface {ifname}"))
}

/// The counters of `ifname`.
pub(super) fn stats(ifname: &str) -> Result<LinkStats> {
    const PATH: &str = "/proc/thread-self/net/dev";
    let table = std::fs::read_to_string(PATH).with_context(|| format!("reading {PATH}"))?;
    // Two header lines, then `  name: rx_bytes rx_packets errs drop fifo frame compressed
    // multicast tx_bytes tx_packets errs drop …`.
    let fields = table
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim() == ifname)
        .map(|(_, counters)| counters.split_whitespace().collect::<Vec<_>>())
        .with_context(|| format!("no interface {ifname} in {PATH}"))?;
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{PATH}: {ifname} has {} counters", fields.len()))?
            .parse()
            .with_context(|| format!("{PATH}: counter {i} of {ifname}"))
    };
    Ok(LinkStats {
        rx_bytes: field(0)?,
        rx_packets: field(1)?,
        rx_dropped: field(3)?,
        tx_bytes: field(8)?,
        tx_packets: field(9)?,
        tx_dropped: field(11)?,
    })
}
