//! The counter map's key and value, and the codes in the key.
//!
//! Every packet is counted exactly once, under the key that says what the datapath made of
//! it: `(interface, port, direction, outcome)`. APNs traffic is keyed by its APNs port and
//! direction; a pinhole drop by the pinhole port; everything else by its class alone
//! (port 0, no direction).

/// What the datapath made of a packet. Stored in [`CounterKey::outcome`]; never renumber,
/// keep retired values reserved. Label strings come from [`Outcome::as_str`]; the metrics
/// code in apns-agent must change with this enum.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// APNs traffic, passed.
    Pass = 0,
    /// APNs traffic to a provider port from a source outside the provider list (enforce).
    DropProvider = 1,
    /// TCP to a pinhole port of an address outside the allow-list (enforce).
    DropPinhole = 2,
    /// APNs traffic forwarded by the `redirect` fast path (XDP_REDIRECT), past the stack.
    Fastpath = 3,
    /// Not IPv4 or IPv6 (ARP, LLDP, a third VLAN tag, ...).
    NotIp = 4,
    /// IP traffic that touches no rule (including ICMP, ICMPv6 neighbour discovery, UDP).
    NotApns = 5,
    /// A non-first IP fragment: it carries no L4 header, so it is counted and passed.
    Fragment = 6,
    /// Truncated or inconsistent headers, or more IPv6 extension headers than parsed.
    Malformed = 7,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Pass,
        Outcome::DropProvider,
        Outcome::DropPinhole,
        Outcome::Fastpath,
        Outcome::NotIp,
        Outcome::NotApns,
        Outcome::Fragment,
        Outcome::Malformed,
    ];

    pub const fn from_u8(code: u8) -> Option<Outcome> {
        match code {
            0 => Some(Outcome::Pass),
            1 => Some(Outcome::DropProvider),
            2 => Some(Outcome::DropPinhole),
            3 => Some(Outcome::Fastpath),
            4 => Some(Outcome::NotIp),
            5 => Some(Outcome::NotApns),
            6 => Some(Outcome::Fragment),
            7 => Some(Outcome::Malformed),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::DropProvider => "drop_provider",
            Outcome::DropPinhole => "drop_pinhole",
            Outcome::Fastpath => "fastpath",
            Outcome::NotIp => "not_ip",
            Outcome::NotApns => "not_apns",
            Outcome::Fragment => "fragment",
            Outcome::Malformed => "malformed",
        }
    }

    /// Whether the packet was dropped.
    pub const fn is_drop(self) -> bool {
        matches!(self, Outcome::DropProvider | Outcome::DropPinhole)
    }
}

impl crate::label::Label for Outcome {
    const WHAT: &'static str = "outcome";
    const ALL: &'static [Outcome] = &Outcome::ALL;
    fn as_str(self) -> &'static str {
        Outcome::as_str(self)
    }
}

/// Direction of APNs traffic. Stored in [`CounterKey::direction`]; never renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Not APNs traffic (other classes, pinhole drops).
    None = 0,
    /// Toward Apple: destination in the allow-list, destination port in the port table.
    Outbound = 1,
    /// From Apple: source in the allow-list, source port in the port table.
    Inbound = 2,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::None, Direction::Outbound, Direction::Inbound];

    pub const fn from_u8(code: u8) -> Option<Direction> {
        match code {
            0 => Some(Direction::None),
            1 => Some(Direction::Outbound),
            2 => Some(Direction::Inbound),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::None => "none",
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl crate::label::Label for Direction {
    const WHAT: &'static str = "direction";
    const ALL: &'static [Direction] = &Direction::ALL;
    fn as_str(self) -> &'static str {
        Direction::as_str(self)
    }
}

/// Key of [`crate::maps::COUNTERS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// Interface the packet arrived on (`ingress_ifindex`).
    pub ifindex: u32,
    /// APNs port (host byte order); 0 for classes that have no port.
    pub port: u16,
    /// A [`Direction`] code.
    pub direction: u8,
    /// An [`Outcome`] code.
    pub outcome: u8,
}
const _: () = assert!(size_of::<CounterKey>() == 8);

/// Value of [`crate::maps::COUNTERS`], one per CPU. Plain adds in the kernel: each CPU owns
/// its copy, and XDP runs with preemption off, so no atomics are needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    /// Frame bytes from the Ethernet header on (what XDP sees), not IP bytes.
    pub bytes: u64,
    /// TCP segments with SYN and without ACK (connection attempts).
    pub syn: u64,
    /// TCP segments with SYN and ACK (answered attempts).
    pub synack: u64,
    /// TCP segments with RST.
    pub rst: u64,
    /// TCP segments with FIN.
    pub fin: u64,
}
const _: () = assert!(size_of::<CounterValue>() == 48);

impl CounterValue {
    /// Adds `other` field by field (user space sums per-CPU values with it).
    pub fn add(&mut self, other: &CounterValue) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.syn += other.syn;
        self.synack += other.synack;
        self.rst += other.rst;
        self.fin += other.fin;
    }

    /// What was added since `earlier` (counters only grow; a field that went down reads 0).
    pub fn since(&self, earlier: &CounterValue) -> CounterValue {
        CounterValue {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            syn: self.syn.saturating_sub(earlier.syn),
            synack: self.synack.saturating_sub(earlier.synack),
            rst: self.rst.saturating_sub(earlier.rst),
            fin: self.fin.saturating_sub(earlier.fin),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::CounterValue {}
}
