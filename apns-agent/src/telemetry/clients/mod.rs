//! Which devices behind the gateway can reach APNs, and why not: the connection table
//! ([`crate::datapath::conns`]) read per device, each device given one [`Finding`] in words.
//! `apns-agent clients`, /metrics and `events` all read it from here. docs/clients.md states
//! every rule of this module and [`judge`] in prose; change both together.
//!
//! All times are the kernel's (CLOCK_MONOTONIC, at the tick's resolution); the report turns
//! them into ages.
//!
//! Here the rules' thresholds, the types of a report and its assembly ([`Report::build`]);
//! [`judge`] applies the rules, [`tally`] keeps what only the agent counts across reads,
//! [`render`] prints a report for people and scripts.

mod judge;
mod render;
mod tally;

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

use apns_common::{
    conns::{ConnKey, ConnStats, ConnValue, End, END_CODES, LIFETIME_BUCKETS},
    label::Label,
};
use serde::Serialize;

pub use render::{render_json, render_table, SCHEMA};
pub use tally::Tally;

use crate::datapath::conns::ConnTable;
use judge::{ip, judge, AppleTtls};

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

/// A 443 connection whose handshake was decided: a fallback (opened right after a failed
/// 5223 handshake) or a direct one. The `kind` of `apns_port443_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Port443 {
    Fallback,
    Direct,
}

impl Label for Port443 {
    const WHAT: &'static str = "443 connection kind";
    const ALL: &'static [Port443] = &[Port443::Fallback, Port443::Direct];
    fn as_str(self) -> &'static str {
        match self {
            Port443::Fallback => "fallback",
            Port443::Direct => "direct",
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
    pub fn build(
        table: &ConnTable,
        rules: &Rules,
        interface_name: impl Fn(u32) -> String,
    ) -> Report {
        let now = table.now_ns;
        let mut names: HashMap<u32, String> = HashMap::new();
        let mut name = |ifindex: u32| {
            names
                .entry(ifindex)
                .or_insert_with(|| interface_name(ifindex))
                .clone()
        };
        let mut apple_ttls = AppleTtls::new();
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

/// `END_CODES` is the size of the datapath's end counts; `End::ENDED` indexes it.
const _: () = assert!(END_CODES == 5);

#[cfg(test)]
mod tests;
