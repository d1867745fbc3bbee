//! Which devices behind the gateway can reach APNs, and why not: the connection table
//! ([`crate::datapath::conns`]) read per device, each device given one [`Finding`] in words.
//! `apns-agent clients`, /metrics and `events` all read it from here. docs/clients.md states
//! every rule below in prose; change both together.
//!
//! All times are the kernel's (CLOCK_MONOTONIC, at the tick's resolution); the report turns
//! them into ages.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use apns_common::{
    conns::{ConnKey, ConnStats, ConnValue, End, END_CODES, LIFETIME_BUCKETS},
    label::Label,
};
use serde::Serialize;

use crate::{datapath::conns::Table, telemetry::stats};

/// The APNs ports the fallback rule is about: devices use 5223, and 443 only when they cannot
/// reach 5223 (docs/apns.md).
pub const DEVICE_PORT: u16 = 5223;
pub const FALLBACK_PORT: u16 = 443;

/// The thresholds of the rules (config `[clients]`; docs/clients.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// How far back a device's failures, resets, cuts and fallbacks count.
    pub window: Duration,
    /// A handshake neither answered (SYN-ACK) nor refused (RST) this long after the device's
    /// first SYN has failed: no answer.
    pub handshake_timeout: Duration,
    /// The shortest idle gap a cut connection must have had to count as cut while idle.
    pub idle_cut_min: Duration,
    /// Idle cuts of similar length in the window that make the finding (repeatedly).
    pub idle_cut_repeat: u32,
    /// A 443 connection opened at most this long after a failed 5223 handshake's last SYN is
    /// a fallback.
    pub fallback_window: Duration,
    /// A connection with no packet either way for this long is no longer open (longer than
    /// any keep-alive).
    pub stale_after: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            window: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            idle_cut_min: Duration::from_secs(60),
            idle_cut_repeat: 2,
            fallback_window: Duration::from_secs(60),
            stale_after: Duration::from_secs(3600),
        }
    }
}

/// Idle cuts are "at a similar length" when the longest gap is at most this many times the
/// shortest.
const SIMILAR_GAPS: f64 = 1.5;
/// Resets by Apple of established connections in the window that make a finding: one is
/// ordinary (a courier restarting), two or more are not.
const APPLE_RESETS: usize = 2;

/// What is wrong with a device, worst first (the order `clients` sorts by).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Finding {
    /// Its latest handshakes went unanswered: no SYN-ACK, no RST.
    NoAnswer,
    /// Its connections or handshakes are reset by something on the path, not by Apple.
    ResetByNetwork,
    /// Apple refuses its handshakes, or resets its connections again and again.
    ResetByApple,
    /// It tries, but none of its connections was ever established, for no single reason
    /// above (Apple's SYN-ACK came but the device never completed the handshake, or mixed).
    NeverConnected,
    /// Its connections are cut after a similar idle gap, again and again: a NAT, firewall or
    /// proxy on the path forgets idle connections sooner than the device's keep-alive.
    CutWhileIdle,
    /// It opens 443 right after failed 5223 handshakes: 5223 is blocked on the path.
    FallsBackTo443,
    Ok,
}

impl Label for Finding {
    const WHAT: &'static str = "finding";
    const ALL: &'static [Finding] = &[
        Finding::NoAnswer,
        Finding::ResetByNetwork,
        Finding::ResetByApple,
        Finding::NeverConnected,
        Finding::CutWhileIdle,
        Finding::FallsBackTo443,
        Finding::Ok,
    ];
    /// The metric label and JSON key.
    fn as_str(self) -> &'static str {
        match self {
            Finding::NoAnswer => "no_answer",
            Finding::ResetByNetwork => "reset_by_network",
            Finding::ResetByApple => "reset_by_apple",
            Finding::NeverConnected => "never_connected",
            Finding::CutWhileIdle => "cut_while_idle",
            Finding::FallsBackTo443 => "falls_back_to_443",
            Finding::Ok => "ok",
        }
    }
}

/// How one handshake went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Handshake {
    /// Picked up after its handshake (older than the datapath, or evicted and seen again).
    NotSeen,
    /// Waiting: less than the handshake timeout old, nothing newer from the device.
    Pending,
    /// Apple answered and the device went on: established.
    Established,
    /// Apple answered (SYN-ACK seen here) but the device sent nothing but SYNs since.
    Incomplete,
    /// Neither SYN-ACK nor RST within the timeout (or before the device tried again).
    Unanswered,
    /// A RST instead of a SYN-ACK, from Apple.
    RefusedByApple,
    /// A RST instead of a SYN-ACK that did not come from Apple's host (its TTL differs from
    /// the SYN-ACKs that host sends).
    RefusedByNetwork,
}

impl Label for Handshake {
    const WHAT: &'static str = "handshake";
    const ALL: &'static [Handshake] = &[
        Handshake::NotSeen,
        Handshake::Pending,
        Handshake::Established,
        Handshake::Incomplete,
        Handshake::Unanswered,
        Handshake::RefusedByApple,
        Handshake::RefusedByNetwork,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Handshake::NotSeen => "not_seen",
            Handshake::Pending => "pending",
            Handshake::Established => "established",
            Handshake::Incomplete => "incomplete",
            Handshake::Unanswered => "unanswered",
            Handshake::RefusedByApple => "refused_by_apple",
            Handshake::RefusedByNetwork => "refused_by_network",
        }
    }
}

impl Handshake {
    /// How a failed handshake failed (`apns_handshake_failures_total`'s `reason`); `None`
    /// for one that did not fail (yet).
    pub fn failure(self) -> Option<HandshakeFailure> {
        match self {
            Handshake::Unanswered => Some(HandshakeFailure::Unanswered),
            Handshake::RefusedByApple | Handshake::RefusedByNetwork => {
                Some(HandshakeFailure::Refused)
            }
            Handshake::Incomplete => Some(HandshakeFailure::Incomplete),
            Handshake::NotSeen | Handshake::Pending | Handshake::Established => None,
        }
    }

    fn failed(self) -> bool {
        self.failure().is_some()
    }
}

/// How a handshake failed, whoever refused it (the `reason` label of
/// `apns_handshake_failures_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    Unanswered,
    Refused,
    Incomplete,
}

impl Label for HandshakeFailure {
    const WHAT: &'static str = "handshake failure";
    const ALL: &'static [HandshakeFailure] = &[
        HandshakeFailure::Unanswered,
        HandshakeFailure::Refused,
        HandshakeFailure::Incomplete,
    ];
    fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Unanswered => "unanswered",
            HandshakeFailure::Refused => "refused",
            HandshakeFailure::Incomplete => "incomplete",
        }
    }
}

/// Where a connection stands now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Established, not ended, not abandoned, not stale.
    Open,
    /// A handshake not (yet) established.
    Handshake,
    /// Ended by a FIN or RST ([`Connection::end`]).
    Ended,
    /// The device opened a newer connection to the same Apple port after its last packet.
    Abandoned,
    /// No packet either way for longer than `stale_after`.
    Stale,
}

impl Label for State {
    const WHAT: &'static str = "connection state";
    const ALL: &'static [State] = &[
        State::Open,
        State::Handshake,
        State::Ended,
        State::Abandoned,
        State::Stale,
    ];
    fn as_str(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Handshake => "handshake",
            State::Ended => "ended",
            State::Abandoned => "abandoned",
            State::Stale => "stale",
        }
    }
}

/// Who reset an established connection (not counting idle cuts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetBy {
    /// A RST from Apple's side with the TTL of Apple's SYN-ACK.
    Apple,
    /// A RST from Apple's side with another TTL: something on the path sent it.
    Network,
    /// A RST from the device.
    Device,
}

impl Label for ResetBy {
    const WHAT: &'static str = "reset by";
    const ALL: &'static [ResetBy] = &[ResetBy::Apple, ResetBy::Network, ResetBy::Device];
    fn as_str(self) -> &'static str {
        match self {
            ResetBy::Apple => "apple",
            ResetBy::Network => "network",
            ResetBy::Device => "device",
        }
    }
}

/// One connection of the table, as the rules see it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Connection {
    pub device_port: u16,
    pub apple: IpAddr,
    pub apple_port: u16,
    pub interface: String,
    #[serde(serialize_with = "crate::label::serialize_label")]
    pub state: State,
    #[serde(serialize_with = "crate::label::serialize_label")]
    pub handshake: Handshake,
    /// `fin_device`, `fin_apple`, `rst_device`, `rst_apple`, or `open`.
    #[serde(serialize_with = "crate::label::serialize_label")]
    pub end: End,
    /// Seconds since its first packet, since its last, and since its end.
    pub age_secs: f64,
    pub idle_secs: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_secs_ago: Option<f64>,
    /// SYNs the device sent (1 plus retransmissions; 0 if picked up after its handshake).
    pub syns: u32,
    /// Cut while idle: the idle gap (seconds) that preceded the cut.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_cut_after_secs: Option<f64>,
    /// A RST after the handshake, not counting idle cuts: who sent it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "crate::label::serialize_option"
    )]
    pub reset_by: Option<ResetBy>,
    /// A 443 connection opened right after a failed 5223 handshake.
    pub fallback: bool,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    #[serde(skip)]
    key: ConnKey,
    #[serde(skip)]
    value: ConnValue,
}

/// Counts of a device's handshakes in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Handshakes {
    pub attempts: u64,
    pub established: u64,
    pub unanswered: u64,
    pub refused: u64,
    pub incomplete: u64,
}

/// Resets of a device's established connections in the window (idle cuts not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Resets {
    pub by_apple: u64,
    pub by_network: u64,
    pub by_device: u64,
}

/// One device: its finding and the evidence for it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Device {
    pub address: IpAddr,
    /// The finding's label (`no_answer`, ..., `ok`).
    #[serde(serialize_with = "crate::label::serialize_label")]
    pub finding: Finding,
    /// The finding in words.
    pub words: String,
    /// Whether the device cannot reach APNs now: no open connection, and its latest
    /// handshake failed.
    pub failing: bool,
    /// Open connections, and how long the oldest of them has been open (seconds).
    pub open: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_secs: Option<f64>,
    /// Seconds since Apple last answered one of its handshakes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_handshake_secs: Option<f64>,
    pub handshakes: Handshakes,
    pub resets: Resets,
    /// The idle gaps (seconds) its cut connections had, oldest first.
    pub idle_cuts_secs: Vec<f64>,
    /// Its 443 connections in the window: fallbacks after failed 5223 handshakes, and the
    /// others.
    pub fallbacks_443: u64,
    pub direct_443: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// The device-facing interfaces its packets arrived on.
    pub interfaces: Vec<String>,
    /// Its connections in the window and the open ones, newest first.
    pub connections: Vec<Connection>,
}

/// What the table says as a whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TableSummary {
    /// Connections the table holds at most, and holds now.
    pub size: u32,
    pub entries: u64,
    /// Entries the datapath made since it was loaded.
    pub made: u64,
    /// Entries the kernel evicted to make room (made − present: the agent removes none).
    pub evicted: u64,
    /// Entries the kernel could not make (connections not tracked).
    pub failed: u64,
}

/// Everything `clients` shows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub table: TableSummary,
    /// The rules' window, in seconds.
    pub window_secs: u64,
    /// Worst first.
    pub devices: Vec<Device>,
    /// The connections open now, by device-facing interface and Apple port.
    #[serde(skip)]
    pub open: BTreeMap<(String, u16), u64>,
    /// How connections ended, from the datapath's counts: by reason, and `evicted` (made,
    /// gone, and never seen ending).
    #[serde(skip)]
    pub ended: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    pub stats: ConnStats,
}

/// One entry of the table, borrowed.
type Entry<'a> = (&'a ConnKey, &'a ConnValue);

/// The `ended` reason of connections evicted before their end was seen.
pub const EVICTED: &str = "evicted";

impl Report {
    /// Applies `rules` to `table`; `interface_name` names an ifindex.
    pub fn build(table: &Table, rules: &Rules, interface_name: impl Fn(u32) -> String) -> Report {
        let now = table.now_ns;
        let mut names: HashMap<u32, String> = HashMap::new();
        let mut name = |ifindex: u32| {
            names
                .entry(ifindex)
                .or_insert_with(|| interface_name(ifindex))
                .clone()
        };
        // Apple's hosts' TTLs as their SYN-ACKs arrive: what a RST from them looks like.
        let mut apple_ttls: HashMap<[u8; 16], BTreeSet<u8>> = HashMap::new();
        for (key, value) in &table.entries {
            if value.synack_ns != 0 && value.synack_ttl != 0 {
                apple_ttls
                    .entry(key.apple)
                    .or_default()
                    .insert(value.synack_ttl);
            }
        }
        let mut by_device: BTreeMap<(u8, [u8; 16]), Vec<Entry>> = BTreeMap::new();
        for (key, value) in &table.entries {
            by_device
                .entry((key.ip_version, key.device))
                .or_default()
                .push((key, value));
        }
        let mut devices = Vec::new();
        let mut open = BTreeMap::new();
        let mut unended = 0;
        for ((version, address), mut entries) in by_device {
            entries.sort_by_key(|(_, value)| value.first_ns);
            unended += entries
                .iter()
                .filter(|(_, value)| value.end == End::Open as u64)
                .count() as u64;
            let connections = judge(&entries, now, rules, &apple_ttls, &mut name);
            for connection in connections.iter().filter(|c| c.state == State::Open) {
                *open
                    .entry((connection.interface.clone(), connection.apple_port))
                    .or_default() += 1;
            }
            if let Some(device) = Device::of(ip(version, address), connections, now, rules) {
                devices.push(device);
            }
        }
        devices.sort_by(|a, b| {
            (!a.failing, a.finding, a.address).cmp(&(!b.failing, b.finding, b.address))
        });
        let stats = table.stats;
        let mut ended: BTreeMap<&'static str, u64> = End::ENDED
            .iter()
            .map(|&end| (end.as_str(), stats.ended[end as usize]))
            .collect();
        let seen_ending: u64 = stats.ended.iter().sum();
        ended.insert(
            EVICTED,
            stats
                .made
                .saturating_sub(seen_ending)
                .saturating_sub(unended),
        );
        Report {
            table: TableSummary {
                size: table.size,
                entries: table.entries.len() as u64,
                made: stats.made,
                evicted: table.evicted(),
                failed: stats.failed,
            },
            window_secs: rules.window.as_secs(),
            devices,
            open,
            ended,
            stats,
        }
    }

    /// The device `address`, if the table has it.
    pub fn device(&self, address: IpAddr) -> Option<&Device> {
        self.devices.iter().find(|device| device.address == address)
    }

    /// Devices per finding, every finding present.
    pub fn findings(&self) -> BTreeMap<Finding, u64> {
        let mut counts: BTreeMap<Finding, u64> = Finding::ALL.iter().map(|&f| (f, 0)).collect();
        for device in &self.devices {
            *counts.entry(device.finding).or_default() += 1;
        }
        counts
    }

    /// Lifetimes of ended connections: (upper bound in seconds, count) per bucket, the last
    /// bucket's bound infinite; and the sum in seconds.
    pub fn lifetimes(&self) -> (Vec<(f64, u64)>, f64) {
        let buckets = (0..LIFETIME_BUCKETS)
            .map(|bucket| {
                let bound = if bucket + 1 == LIFETIME_BUCKETS {
                    f64::INFINITY
                } else {
                    (1u64 << bucket) as f64
                };
                (bound, self.stats.lifetime[bucket])
            })
            .collect();
        (buckets, self.stats.lifetime_ms as f64 / 1000.0)
    }
}

fn ip(version: u8, address: [u8; 16]) -> IpAddr {
    if version == 4 {
        IpAddr::V4(Ipv4Addr::new(
            address[0], address[1], address[2], address[3],
        ))
    } else {
        IpAddr::V6(Ipv6Addr::from(address))
    }
}

fn secs(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64()
}

/// `now - then` in seconds (0 for a time after `now`, a read race).
fn age(now: u64, then: u64) -> f64 {
    secs(now.saturating_sub(then))
}

fn last_packet(value: &ConnValue) -> u64 {
    value
        .out_last_ns
        .max(value.in_last_ns)
        .max(value.in_rst_ns)
        .max(value.in_fin_ns)
}

/// When the connection ended (its first FIN or RST), if it did.
fn end_ns(value: &ConnValue) -> Option<u64> {
    match End::from_code(value.end)? {
        End::Open => None,
        End::FinDevice => Some(value.out_fin_ns),
        End::FinApple => Some(value.in_fin_ns),
        End::RstDevice => Some(value.out_rst_ns),
        End::RstApple => Some(value.in_rst_ns),
    }
}

/// The rules of docs/clients.md applied to one device's connections, oldest first.
fn judge(
    entries: &[Entry],
    now: u64,
    rules: &Rules,
    apple_ttls: &HashMap<[u8; 16], BTreeSet<u8>>,
    name: &mut impl FnMut(u32) -> String,
) -> Vec<Connection> {
    let timeout = rules.handshake_timeout.as_nanos() as u64;
    let idle_cut_min = rules.idle_cut_min.as_nanos() as u64;
    let stale = rules.stale_after.as_nanos() as u64;
    // The newest first packet among the connections after each one: of any Apple port, and
    // of its own port. One pass from the end, so that a device with many connections (a
    // flood) costs linear time, not quadratic.
    let mut later_any = vec![0u64; entries.len()];
    let mut later_port = vec![0u64; entries.len()];
    let mut newest_any = 0u64;
    let mut newest_port: HashMap<u16, u64> = HashMap::new();
    for (index, &(key, value)) in entries.iter().enumerate().rev() {
        later_any[index] = newest_any;
        let port = newest_port.entry(key.apple_port).or_default();
        later_port[index] = *port;
        newest_any = newest_any.max(value.first_ns);
        *port = (*port).max(value.first_ns);
    }
    let mut connections: Vec<Connection> = Vec::with_capacity(entries.len());
    for (index, &(key, value)) in entries.iter().enumerate() {
        // The device tried again (any Apple port) after this one's last packet.
        let superseded = later_any[index] > value.out_last_ns;
        let end = End::from_code(value.end).unwrap_or(End::Open);
        let handshake = if value.syns == 0 {
            Handshake::NotSeen
        } else if value.synack_ns != 0 {
            if value.out_packets > u64::from(value.syns) {
                Handshake::Established
            } else if now.saturating_sub(value.first_ns) >= timeout
                || superseded
                || end != End::Open
            {
                Handshake::Incomplete
            } else {
                Handshake::Pending
            }
        } else if value.in_rst_ns != 0 {
            let theirs = apple_ttls.get(&key.apple);
            if theirs.is_some_and(|ttls| !ttls.contains(&value.rst_ttl)) {
                Handshake::RefusedByNetwork
            } else {
                Handshake::RefusedByApple
            }
        } else if now.saturating_sub(value.first_ns) >= timeout || superseded || end != End::Open {
            Handshake::Unanswered
        } else {
            Handshake::Pending
        };
        let established =
            handshake == Handshake::Established || (value.syns == 0 && value.in_packets > 0);
        // Cut while idle: after a resume with a long enough gap, no answer came, and the
        // connection was reset or the device moved on to a new one on the same port.
        let unanswered_resume = established
            && value.resume_ns != 0
            && value.resume_gap_ns >= idle_cut_min
            && value.in_last_ns < value.resume_ns;
        let reset_after_resume = matches!(end, End::RstApple | End::RstDevice)
            && end_ns(value).is_some_and(|at| at >= value.resume_ns);
        let abandoned_after_resume = end == End::Open && later_port[index] >= value.resume_ns;
        let idle_cut = (unanswered_resume && (reset_after_resume || abandoned_after_resume))
            .then(|| secs(value.resume_gap_ns));
        let reset_by = match (established, idle_cut, end) {
            (true, None, End::RstApple) => Some(
                if value.synack_ttl != 0 && value.rst_ttl != value.synack_ttl {
                    ResetBy::Network
                } else {
                    ResetBy::Apple
                },
            ),
            (true, None, End::RstDevice) => Some(ResetBy::Device),
            _ => None,
        };
        let abandoned = later_port[index] > last_packet(value);
        let state = if end != End::Open {
            State::Ended
        } else if now.saturating_sub(last_packet(value)) >= stale {
            State::Stale
        } else if abandoned {
            State::Abandoned
        } else if established {
            State::Open
        } else {
            State::Handshake
        };
        connections.push(Connection {
            device_port: key.device_port,
            apple: ip(key.ip_version, key.apple),
            apple_port: key.apple_port,
            interface: name(value.ifindex),
            state,
            handshake,
            end,
            age_secs: age(now, value.first_ns),
            idle_secs: age(now, last_packet(value)),
            ended_secs_ago: end_ns(value).map(|at| age(now, at)),
            syns: value.syns,
            idle_cut_after_secs: idle_cut,
            reset_by,
            fallback: false,
            packets_out: value.out_packets,
            packets_in: value.in_packets,
            bytes_out: value.out_bytes,
            bytes_in: value.in_bytes,
            key: *key,
            value: *value,
        });
    }
    mark_fallbacks(&mut connections, rules);
    connections
}

/// A 443 handshake whose first SYN came at most `fallback_window` after the last SYN of a
/// failed 5223 handshake of the same device, with no 5223 connection established in between,
/// is a fallback. Sorted times and binary searches: linear-logarithmic in connections.
fn mark_fallbacks(connections: &mut [Connection], rules: &Rules) {
    let window = rules.fallback_window.as_nanos() as u64;
    let sorted = |keep: &dyn Fn(&ConnValue) -> Option<u64>| -> Vec<u64> {
        let mut times: Vec<u64> = connections
            .iter()
            .filter(|c| c.apple_port == DEVICE_PORT && c.value.syns != 0)
            .filter_map(|c| keep(&c.value))
            .collect();
        times.sort_unstable();
        times
    };
    // Last SYNs of 5223 handshakes without a SYN-ACK; SYN-ACKs of 5223 handshakes.
    let failed = sorted(&|v| (v.synack_ns == 0).then_some(v.out_last_ns));
    let answered = sorted(&|v| (v.synack_ns != 0).then_some(v.synack_ns));
    // Whether `times` has one in [from, to].
    let any_between = |times: &[u64], from: u64, to: u64| {
        let at = times.partition_point(|&t| t < from);
        times.get(at).is_some_and(|&t| t <= to)
    };
    for c in connections.iter_mut() {
        if c.apple_port != FALLBACK_PORT || c.value.syns == 0 {
            continue;
        }
        let start = c.value.first_ns;
        let since = start.saturating_sub(window);
        c.fallback = any_between(&failed, since, start) && !any_between(&answered, since, start);
    }
}

impl Device {
    /// The device's finding from its connections (oldest first); `None` when nothing of it
    /// is recent: no connection in the window and none open.
    fn of(
        address: IpAddr,
        connections: Vec<Connection>,
        now: u64,
        rules: &Rules,
    ) -> Option<Device> {
        let window = rules.window.as_nanos() as u64;
        let since = now.saturating_sub(window);
        let recent: Vec<&Connection> = connections
            .iter()
            .filter(|c| c.state == State::Open || last_packet(&c.value) >= since)
            .collect();
        if recent.is_empty() {
            return None;
        }
        let mut handshakes = Handshakes::default();
        let mut resets = Resets::default();
        let mut cuts = Vec::new();
        let (mut fallbacks, mut direct) = (0, 0);
        let (mut bytes_out, mut bytes_in) = (0, 0);
        let mut interfaces = BTreeSet::new();
        for c in &recent {
            bytes_out += c.bytes_out;
            bytes_in += c.bytes_in;
            interfaces.insert(c.interface.clone());
            if c.handshake != Handshake::NotSeen {
                handshakes.attempts += 1;
                match c.handshake {
                    Handshake::Established => handshakes.established += 1,
                    Handshake::Unanswered => handshakes.unanswered += 1,
                    Handshake::RefusedByApple | Handshake::RefusedByNetwork => {
                        handshakes.refused += 1
                    }
                    Handshake::Incomplete => handshakes.incomplete += 1,
                    Handshake::Pending | Handshake::NotSeen => {}
                }
                if c.apple_port == FALLBACK_PORT {
                    if c.fallback {
                        fallbacks += 1;
                    } else {
                        direct += 1;
                    }
                }
            }
            match c.reset_by {
                Some(ResetBy::Apple) => resets.by_apple += 1,
                Some(ResetBy::Network) => resets.by_network += 1,
                Some(ResetBy::Device) => resets.by_device += 1,
                None => {}
            }
            if let Some(gap) = c.idle_cut_after_secs {
                cuts.push(gap);
            }
        }
        let open: Vec<&Connection> = connections
            .iter()
            .filter(|c| c.state == State::Open)
            .collect();
        let last_established = connections
            .iter()
            .filter(|c| c.handshake == Handshake::Established)
            .map(|c| c.value.first_ns)
            .max();
        let ever_established = last_established.is_some()
            || connections
                .iter()
                .any(|c| c.handshake == Handshake::NotSeen && c.value.in_packets > 0);
        // Handshakes decided since its last established connection, in the window.
        let failures: Vec<&Connection> = recent
            .iter()
            .copied()
            .filter(|c| c.handshake.failed())
            .filter(|c| last_established.is_none_or(|at| c.value.first_ns > at))
            .collect();
        let failing = open.is_empty() && !failures.is_empty();
        let finding = if failing {
            let causes: BTreeSet<Handshake> = failures.iter().map(|c| c.handshake).collect();
            let latest = failures
                .iter()
                .max_by_key(|c| c.value.first_ns)
                .map(|c| c.handshake);
            let cause = if ever_established {
                latest
            } else if causes.len() == 1 {
                causes.first().copied()
            } else {
                None
            };
            match cause {
                Some(Handshake::Unanswered) => Finding::NoAnswer,
                Some(Handshake::RefusedByNetwork) => Finding::ResetByNetwork,
                Some(Handshake::RefusedByApple) => Finding::ResetByApple,
                _ => Finding::NeverConnected,
            }
        } else if cuts.len() >= rules.idle_cut_repeat as usize && similar(&cuts) {
            Finding::CutWhileIdle
        } else if resets.by_network > 0
            || recent
                .iter()
                .any(|c| c.handshake == Handshake::RefusedByNetwork)
        {
            Finding::ResetByNetwork
        } else if resets.by_apple as usize >= APPLE_RESETS {
            Finding::ResetByApple
        } else if falls_back(&connections, since) {
            Finding::FallsBackTo443
        } else {
            Finding::Ok
        };
        let words = words(finding, &cuts);
        let mut shown: Vec<Connection> = recent.into_iter().cloned().collect();
        shown.reverse();
        Some(Device {
            address,
            finding,
            words,
            failing,
            open: open.len() as u32,
            open_secs: open.iter().map(|c| c.age_secs).reduce(f64::max),
            last_handshake_secs: connections
                .iter()
                .filter(|c| c.value.synack_ns != 0)
                .map(|c| age(now, c.value.synack_ns))
                .reduce(f64::min),
            handshakes,
            resets,
            idle_cuts_secs: cuts,
            fallbacks_443: fallbacks,
            direct_443: direct,
            bytes_out,
            bytes_in,
            interfaces: interfaces.into_iter().collect(),
            connections: shown,
        })
    }
}

/// Whether the device's latest fallback (in the window) was not followed by an established
/// 5223 connection.
fn falls_back(connections: &[Connection], since: u64) -> bool {
    let Some(latest) = connections
        .iter()
        .filter(|c| c.fallback && c.value.first_ns >= since)
        .map(|c| c.value.first_ns)
        .max()
    else {
        return false;
    };
    !connections.iter().any(|c| {
        c.apple_port == DEVICE_PORT
            && c.handshake == Handshake::Established
            && c.value.first_ns > latest
    })
}

/// Gaps of a similar length: the longest at most [`SIMILAR_GAPS`] times the shortest.
fn similar(gaps: &[f64]) -> bool {
    let min = gaps.iter().copied().fold(f64::INFINITY, f64::min);
    let max = gaps.iter().copied().fold(0.0, f64::max);
    min > 0.0 && max <= SIMILAR_GAPS * min
}

/// A duration for people: "~N min" from two minutes on, "~N s" below.
fn about(seconds: f64) -> String {
    if seconds >= 120.0 {
        format!("~{} min", (seconds / 60.0).round() as u64)
    } else {
        format!("~{} s", seconds.round() as u64)
    }
}

/// The finding in words (docs/clients.md).
fn words(finding: Finding, cuts: &[f64]) -> String {
    match finding {
        Finding::NoAnswer => "no answer from Apple".to_owned(),
        Finding::ResetByNetwork => "reset by the network".to_owned(),
        Finding::ResetByApple => "reset by Apple".to_owned(),
        Finding::NeverConnected => "never connected".to_owned(),
        Finding::CutWhileIdle => format!(
            "cut while idle after {} (a timeout on the path is shorter than the keep-alive)",
            about(cuts.iter().copied().fold(f64::INFINITY, f64::min))
        ),
        Finding::FallsBackTo443 => "falls back to 443 (5223 is blocked on the path)".to_owned(),
        Finding::Ok => "ok".to_owned(),
    }
}

/// Counts that only the agent can make from the table (the datapath cannot tell when a
/// handshake has timed out, or what a 443 connection followed), each connection counted
/// once, since this tally started: handshake failures per port and cause, and 443
/// connections by kind. A connection is known by its key and its first packet's time.
#[derive(Debug, Default)]
pub struct Tally {
    seen: HashSet<(ConnKey, u64, &'static str)>,
    /// (port, `unanswered` | `refused` | `incomplete`) → handshakes.
    pub handshake_failures: BTreeMap<(u16, &'static str), u64>,
    /// `fallback` | `direct` → 443 connections.
    pub connections_443: BTreeMap<&'static str, u64>,
    started: bool,
}

impl Tally {
    /// A tally whose first [`Tally::observe`] only records what is there already: the
    /// counts start at zero when the agent does.
    pub fn new() -> Tally {
        Tally {
            handshake_failures: BTreeMap::new(),
            connections_443: ["fallback", "direct"].map(|kind| (kind, 0)).into(),
            ..Tally::default()
        }
    }

    /// Counts what `report` shows that was not counted yet.
    pub fn observe(&mut self, report: &Report) {
        let mut present = HashSet::new();
        for device in &report.devices {
            for c in &device.connections {
                let mut count = |what: &'static str| {
                    let id = (c.key, c.value.first_ns, what);
                    present.insert(id);
                    self.seen.insert(id)
                };
                if let Some(cause) = c.handshake.failure() {
                    if count("failure") && self.started {
                        *self
                            .handshake_failures
                            .entry((c.apple_port, cause.as_str()))
                            .or_default() += 1;
                    }
                }
                let decided = !matches!(c.handshake, Handshake::Pending | Handshake::NotSeen);
                if c.apple_port == FALLBACK_PORT && decided {
                    let kind = if c.fallback { "fallback" } else { "direct" };
                    if count("443") && self.started {
                        *self.connections_443.entry(kind).or_default() += 1;
                    }
                }
            }
        }
        // Forget what left the table (or the window): memory stays bounded by the table.
        self.seen.retain(|id| present.contains(id));
        self.started = true;
    }
}

/// Version of the JSON shape `clients --json` prints (fields are only ever added).
pub const SCHEMA: u32 = 1;

/// `clients --json`: the report with its schema.
pub fn render_json(report: &Report) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct Document<'a> {
        schema: u32,
        #[serde(flatten)]
        report: &'a Report,
    }
    let document = Document {
        schema: SCHEMA,
        report,
    };
    Ok(serde_json::to_string_pretty(&document)?)
}

/// `clients` without `--json`: a line about the table, then one line per device, worst
/// first; with `detail`, each device's connections under it.
pub fn render_table(report: &Report, detail: bool) -> String {
    let table = &report.table;
    let mut out = format!(
        "connection table: {} of {} entries, {} made, {} evicted{}; window {}\n",
        table.entries,
        table.size,
        table.made,
        table.evicted,
        if table.failed > 0 {
            format!(
                ", {} NOT tracked (the kernel refused an entry)",
                table.failed
            )
        } else {
            String::new()
        },
        duration(report.window_secs as f64)
    );
    if report.devices.is_empty() {
        out.push_str("no device seen in the window\n");
        return out;
    }
    out.push('\n');
    let mut rows = stats::Table::new(
        2,
        &[
            "device",
            "finding",
            "open",
            "open for",
            "last handshake",
            "failed",
            "resets",
            "cuts",
            "443 fallbacks",
            "bytes out",
            "bytes in",
        ],
    );
    for device in &report.devices {
        let h = &device.handshakes;
        let r = &device.resets;
        rows.row(vec![
            device.address.to_string(),
            device.words.clone(),
            device.open.to_string(),
            device.open_secs.map_or("-".to_owned(), duration),
            device
                .last_handshake_secs
                .map_or("never".to_owned(), |s| format!("{} ago", duration(s))),
            (h.unanswered + h.refused + h.incomplete).to_string(),
            (r.by_apple + r.by_network + r.by_device).to_string(),
            device.idle_cuts_secs.len().to_string(),
            device.fallbacks_443.to_string(),
            bytes(device.bytes_out),
            bytes(device.bytes_in),
        ]);
    }
    rows.write(&mut out);
    if detail {
        for device in &report.devices {
            out.push_str(&format!("\n{}: {}\n", device.address, device.words));
            let mut rows = stats::Table::new(
                4,
                &[
                    "apple",
                    "port",
                    "state",
                    "handshake",
                    "age",
                    "idle",
                    "end",
                    "syns",
                    "pkts out",
                    "pkts in",
                ],
            );
            for c in &device.connections {
                rows.row(vec![
                    format!("{}:{}", endpoint(c.apple), c.apple_port),
                    c.device_port.to_string(),
                    c.state.as_str().to_owned(),
                    c.handshake.as_str().to_owned(),
                    duration(c.age_secs),
                    duration(c.idle_secs),
                    match (c.idle_cut_after_secs, c.reset_by, c.fallback) {
                        (Some(gap), _, _) => format!("cut after {}", about(gap)),
                        (None, Some(by), _) => format!("reset by {}", by.as_str()),
                        (None, None, true) => "fallback".to_owned(),
                        _ => c.end.as_str().to_owned(),
                    },
                    c.syns.to_string(),
                    c.packets_out.to_string(),
                    c.packets_in.to_string(),
                ]);
            }
            rows.write(&mut out);
        }
    }
    out
}

fn endpoint(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// "45 s", "12 min", "3 h", "2 d".
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// "512 B", "1.5 KiB", "3.0 MiB".
fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `END_CODES` is the size of the datapath's end counts; `End::ENDED` indexes it.
const _: () = assert!(END_CODES == 5);

#[cfg(test)]
mod tests {
    //! The rules of docs/clients.md on crafted tables: one case per finding, the cases the lab
    //! cannot make (a middlebox that drops instead of resetting, a reset with another TTL,
    //! an answer that never reaches the device), and the order of the report.

    use super::*;

    const S: u64 = 1_000_000_000;
    /// "Now" in the crafted tables: two hours of history fit before it.
    const NOW: u64 = 10_000 * S;
    const APPLE: [u8; 4] = [17, 249, 1, 10];

    /// A connection of device 192.0.2.`device` from `port` to Apple on `apple_port`, its
    /// first SYN `first` seconds before now; `edit` fills in the rest.
    fn conn(
        device: u8,
        port: u16,
        apple_port: u16,
        first: u64,
        edit: impl FnOnce(&mut ConnValue),
    ) -> (ConnKey, ConnValue) {
        let mut key = ConnKey {
            device_port: port,
            apple_port,
            ip_version: 4,
            ..ConnKey::default()
        };
        key.device[..4].copy_from_slice(&[192, 0, 2, device]);
        key.apple[..4].copy_from_slice(&APPLE);
        let mut value = ConnValue {
            first_ns: NOW - first * S,
            out_last_ns: NOW - first * S,
            out_packets: 1,
            syns: 1,
            ifindex: 2,
            ..ConnValue::default()
        };
        edit(&mut value);
        (key, value)
    }

    /// Apple answered `after` seconds after the first SYN (TTL 60), the device went on, and
    /// the last packets either way came `idle` seconds before now.
    fn established(value: &mut ConnValue, after: u64, idle: u64) {
        value.synack_ns = value.first_ns + after * S;
        value.synack_ttl = 60;
        value.out_packets = 5;
        value.in_packets = 4;
        value.out_last_ns = NOW - idle * S;
        value.in_last_ns = NOW - idle * S;
    }

    /// An idle cut: after `gap` seconds of silence the device resumed `ago` seconds before
    /// now, and a RST (TTL `ttl`) came right after, unless `reset` is false (then the
    /// middlebox dropped it and nothing came back).
    fn cut(value: &mut ConnValue, ago: u64, gap: u64, reset: bool) {
        value.synack_ns = value.first_ns + S;
        value.synack_ttl = 60;
        value.out_packets = 6;
        value.in_packets = 3;
        value.in_last_ns = NOW - (ago + gap) * S;
        value.resume_ns = NOW - ago * S;
        value.resume_gap_ns = gap * S;
        value.out_last_ns = NOW - ago * S;
        if reset {
            value.in_rst_ns = NOW - ago * S + S / 10;
            value.rst_ttl = 63;
            value.end = End::RstApple as u64;
        }
    }

    /// A handshake refused right away by a RST with IP TTL `ttl`.
    fn refused(value: &mut ConnValue, ttl: u8) {
        value.in_rst_ns = value.first_ns + S / 100;
        value.rst_ttl = ttl;
        value.end = End::RstApple as u64;
    }

    fn report(entries: Vec<(ConnKey, ConnValue)>) -> Report {
        let table = Table {
            now_ns: NOW,
            size: 65_536,
            stats: ConnStats {
                made: entries.len() as u64,
                ..ConnStats::default()
            },
            entries,
        };
        let rules = Rules {
            idle_cut_min: Duration::from_secs(60),
            ..Rules::default()
        };
        Report::build(&table, &rules, |_| "lan0".to_owned())
    }

    fn finding(report: &Report, device: u8) -> (Finding, bool, String) {
        let device = report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, device)))
            .unwrap_or_else(|| panic!("device {device} missing: {report:#?}"));
        (device.finding, device.failing, device.words.clone())
    }

    #[test]
    fn a_healthy_device_is_ok() {
        let report = report(vec![conn(1, 40_000, 5223, 3000, |v| established(v, 1, 30))]);
        assert_eq!(finding(&report, 1), (Finding::Ok, false, "ok".to_owned()));
        let device = &report.devices[0];
        assert_eq!((device.open, device.handshakes.established), (1, 1));
        assert_eq!(report.open[&("lan0".to_owned(), 5223)], 1);
    }

    #[test]
    fn unanswered_refused_and_incomplete_handshakes() {
        let report = report(vec![
            // Device 1: no answer, 20 s and 5 s ago (the latter still pending).
            conn(1, 40_000, 5223, 20, |v| v.syns = 3),
            conn(1, 40_001, 5223, 5, |_| {}),
            // Device 2: refused, RST TTL as Apple's SYN-ACKs: by Apple.
            conn(2, 40_000, 5223, 30, |v| refused(v, 60)),
            // Device 4: refused by something else (TTL 63 where Apple's SYN-ACKs say 60).
            conn(4, 40_000, 5223, 30, |v| refused(v, 63)),
            // Device 3: Apple answered, the device never completed: never connected.
            conn(3, 40_000, 5223, 40, |v| {
                v.synack_ns = v.first_ns + S / 100;
                v.synack_ttl = 60;
            }),
        ]);
        assert_eq!(finding(&report, 1).0, Finding::NoAnswer);
        assert!(finding(&report, 1).1);
        assert_eq!(
            report.devices[0].handshakes.unanswered, 1,
            "the other is pending"
        );
        assert_eq!(finding(&report, 2).0, Finding::ResetByApple);
        assert_eq!(finding(&report, 4).0, Finding::ResetByNetwork);
        assert_eq!(finding(&report, 3).0, Finding::NeverConnected);
        // Worst first: failing devices by finding.
        let order: Vec<Finding> = report.devices.iter().map(|d| d.finding).collect();
        assert_eq!(
            order,
            [
                Finding::NoAnswer,
                Finding::ResetByNetwork,
                Finding::ResetByApple,
                Finding::NeverConnected
            ]
        );
    }

    #[test]
    fn a_device_that_connected_before_fails_by_its_latest_cause() {
        let report = report(vec![
            conn(1, 40_000, 5223, 3000, |v| {
                established(v, 1, 2000);
                v.out_fin_ns = NOW - 2000 * S;
                v.end = End::FinDevice as u64;
            }),
            conn(1, 40_001, 5223, 100, |v| refused(v, 60)),
            conn(1, 40_002, 5223, 50, |_| {}),
        ]);
        assert_eq!(finding(&report, 1).0, Finding::NoAnswer);
        // Mixed causes on a device that never connected: never connected.
        let report = super::tests::report(vec![
            conn(2, 40_001, 5223, 100, |v| refused(v, 60)),
            conn(2, 40_002, 5223, 50, |_| {}),
        ]);
        assert_eq!(finding(&report, 2).0, Finding::NeverConnected);
    }

    #[test]
    fn cuts_while_idle_reset_or_silent_at_a_similar_gap() {
        // Device 1: a middlebox resets after ~10 min of idle, twice, then a new connection.
        // Device 2: one that drops instead: the device gives up and opens a new connection.
        // Device 3: gaps of 10 and 30 minutes: not similar.
        // Device 5: one cut only.
        let report = report(vec![
            conn(1, 40_000, 5223, 3000, |v| cut(v, 2300, 600, true)),
            conn(1, 40_001, 5223, 2290, |v| cut(v, 1500, 620, true)),
            conn(1, 40_002, 5223, 1490, |v| established(v, 1, 10)),
            conn(2, 40_000, 5223, 3000, |v| cut(v, 2300, 600, false)),
            conn(2, 40_001, 5223, 2200, |v| cut(v, 1500, 600, false)),
            conn(2, 40_002, 5223, 1400, |v| established(v, 1, 10)),
            conn(3, 40_000, 5223, 3500, |v| cut(v, 2800, 600, true)),
            conn(3, 40_001, 5223, 2790, |v| cut(v, 900, 1800, true)),
            conn(3, 40_002, 5223, 890, |v| established(v, 1, 10)),
            conn(5, 40_000, 5223, 3000, |v| cut(v, 2300, 600, true)),
            conn(5, 40_001, 5223, 2290, |v| established(v, 1, 10)),
        ]);
        let (one, failing, words) = finding(&report, 1);
        assert_eq!((one, failing), (Finding::CutWhileIdle, false));
        assert_eq!(
            words,
            "cut while idle after ~10 min (a timeout on the path is shorter than the keep-alive)"
        );
        assert_eq!(finding(&report, 2).0, Finding::CutWhileIdle);
        let silent = report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
            .unwrap();
        assert_eq!(silent.idle_cuts_secs, [600.0, 600.0]);
        // Not similar, or once: the resets it made are the network's (TTL 63, not 60)...
        // but an idle cut's reset is not counted as a reset: nothing else is wrong.
        assert_eq!(finding(&report, 3).0, Finding::Ok);
        assert_eq!(finding(&report, 5).0, Finding::Ok);
    }

    #[test]
    fn resets_of_established_connections_by_whom() {
        let reset = |value: &mut ConnValue, ttl: u8| {
            established(value, 1, 200);
            value.in_rst_ns = NOW - 200 * S;
            value.rst_ttl = ttl;
            value.end = End::RstApple as u64;
        };
        let report = report(vec![
            // Device 1: one reset by Apple: ordinary.
            conn(1, 40_000, 5223, 900, |v| reset(v, 60)),
            conn(1, 40_001, 5223, 190, |v| established(v, 1, 10)),
            // Device 2: two: reset by Apple.
            conn(2, 40_000, 5223, 900, |v| reset(v, 60)),
            conn(2, 40_001, 5223, 800, |v| reset(v, 60)),
            conn(2, 40_002, 5223, 190, |v| established(v, 1, 10)),
            // Device 3: one with another TTL: reset by the network.
            conn(3, 40_000, 5223, 900, |v| reset(v, 64)),
            conn(3, 40_001, 5223, 190, |v| established(v, 1, 10)),
        ]);
        assert_eq!(finding(&report, 1).0, Finding::Ok);
        assert_eq!(finding(&report, 2).0, Finding::ResetByApple);
        assert!(!finding(&report, 2).1, "it holds an open connection");
        assert_eq!(finding(&report, 3).0, Finding::ResetByNetwork);
        let three = report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))
            .unwrap();
        assert_eq!(
            three.resets,
            Resets {
                by_network: 1,
                ..Resets::default()
            }
        );
    }

    #[test]
    fn fallback_to_443_only_right_after_failed_5223() {
        let report = report(vec![
            // Device 1: 5223 unanswered (last SYN 3 s later), 443 10 s after.
            conn(1, 40_000, 5223, 100, |v| {
                v.syns = 2;
                v.out_packets = 2;
                v.out_last_ns = v.first_ns + 3 * S;
            }),
            conn(1, 40_001, 443, 87, |v| established(v, 1, 5)),
            // Device 2: 443 only.
            conn(2, 40_001, 443, 87, |v| established(v, 1, 5)),
            // Device 3: 443 two minutes after a failed 5223: not a fallback.
            conn(3, 40_000, 5223, 300, |_| {}),
            conn(3, 40_001, 443, 180, |v| established(v, 1, 5)),
        ]);
        let one = report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
            .unwrap();
        assert_eq!(
            (one.finding, one.fallbacks_443, one.direct_443, one.failing),
            (Finding::FallsBackTo443, 1, 0, false)
        );
        assert_eq!(one.words, "falls back to 443 (5223 is blocked on the path)");
        let two = report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
            .unwrap();
        assert_eq!(
            (two.finding, two.fallbacks_443, two.direct_443),
            (Finding::Ok, 0, 1)
        );
        assert_eq!(finding(&report, 3).0, Finding::Ok);
        // The tally counts each once, after its start.
        let mut tally = Tally::new();
        tally.observe(&super::tests::report(Vec::new()));
        tally.observe(&report);
        tally.observe(&report);
        assert_eq!(tally.connections_443["fallback"], 1);
        assert_eq!(tally.connections_443["direct"], 2);
        assert_eq!(tally.handshake_failures[&(5223, "unanswered")], 2);
    }

    #[test]
    fn old_history_stale_and_abandoned_connections() {
        let report = report(vec![
            // Device 1: failures long before the window, nothing since: not listed.
            conn(1, 40_000, 5223, 9000, |_| {}),
            // Device 2: established long ago, silent for two hours: stale, not open.
            conn(2, 40_000, 5223, 9000, |v| established(v, 1, 7200)),
            // Device 3: a connection abandoned for a newer one on the same port.
            conn(3, 40_000, 5223, 600, |v| established(v, 1, 500)),
            conn(3, 40_001, 5223, 400, |v| established(v, 1, 5)),
        ]);
        assert!(report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
            .is_none());
        assert!(report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
            .is_none());
        let three = report
            .device(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3)))
            .unwrap();
        assert_eq!(three.open, 1);
        assert_eq!(
            three
                .connections
                .iter()
                .map(|c| c.state)
                .collect::<Vec<_>>(),
            [State::Open, State::Abandoned]
        );
    }

    #[test]
    fn evictions_and_ends_add_up() {
        let mut table = Table {
            now_ns: NOW,
            size: 256,
            entries: vec![
                conn(1, 40_000, 5223, 100, |v| established(v, 1, 5)),
                conn(1, 40_001, 5223, 90, |v| {
                    established(v, 1, 50);
                    v.end = End::FinDevice as u64;
                }),
            ],
            stats: ConnStats {
                made: 10,
                ..ConnStats::default()
            },
        };
        // 10 made, 2 present: 8 evicted; 4 ends seen (one still present): 3 evicted ended
        // connections, so 5 evicted before their end was seen.
        table.stats.ended[End::FinDevice as usize] = 3;
        table.stats.ended[End::RstApple as usize] = 1;
        let report = Report::build(&table, &Rules::default(), |_| "lan0".to_owned());
        assert_eq!(report.table.evicted, 8);
        assert_eq!(report.ended[EVICTED], 5);
        assert_eq!(report.ended["fin_device"], 3);
    }
}
