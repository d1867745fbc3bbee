//! The judgement: the rules of docs/clients.md applied to one device's connections, each
//! connection's handshake, state and end ([`judge`]), then the device's finding
//! ([`Device::of`]).

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use apns_common::conns::{ConnKey, ConnValue, End};

use super::{
    render::about, Connection, Device, Entry, Finding, Handshake, Handshakes, ResetBy, Resets,
    Rules, State, APPLE_RESETS, DEVICE_PORT, FALLBACK_PORT, SIMILAR_GAPS,
};

/// Apple's hosts' TTLs as their SYN-ACKs arrive: what a RST from them looks like.
pub(super) type AppleTtls = HashMap<[u8; 16], BTreeSet<u8>>;

pub(super) fn ip(version: u8, address: [u8; 16]) -> IpAddr {
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
pub(super) fn judge(
    entries: &[Entry],
    now: u64,
    rules: &Rules,
    apple_ttls: &AppleTtls,
    name: &mut impl FnMut(u32) -> String,
) -> Vec<Connection> {
    let (later_any, later_port) = later_firsts(entries);
    let mut connections: Vec<Connection> = Vec::with_capacity(entries.len());
    for (index, &(key, value)) in entries.iter().enumerate() {
        // The device tried again (any Apple port) after this one's last packet.
        let superseded = later_any[index] > value.out_last_ns;
        let handshake = handshake(key, value, now, rules, apple_ttls, superseded);
        let later_on_port = later_port[index];
        let interface = name(value.ifindex);
        connections.push(connection(
            (key, value),
            handshake,
            later_on_port,
            now,
            rules,
            interface,
        ));
    }
    mark_fallbacks(&mut connections, rules);
    connections
}

/// For each entry, the newest first packet among the connections after it: of any Apple
/// port, and of its own port. One pass from the end, so that a device with many connections
/// (a flood) costs linear time, not quadratic.
fn later_firsts(entries: &[Entry]) -> (Vec<u64>, Vec<u64>) {
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
    (later_any, later_port)
}

/// How the connection's handshake went; `superseded`: the device tried again after its last
/// packet.
fn handshake(
    key: &ConnKey,
    value: &ConnValue,
    now: u64,
    rules: &Rules,
    apple_ttls: &AppleTtls,
    superseded: bool,
) -> Handshake {
    let timeout = rules.handshake_timeout.as_nanos() as u64;
    let end = End::from_code(value.end).unwrap_or(End::Open);
    // No answer will come any more: timed out, tried again, or ended.
    let given_up = now.saturating_sub(value.first_ns) >= timeout || superseded || end != End::Open;
    if value.syns == 0 {
        Handshake::NotSeen
    } else if value.synack_ns != 0 {
        if value.out_packets > u64::from(value.syns) {
            Handshake::Established
        } else if given_up {
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
    } else if given_up {
        Handshake::Unanswered
    } else {
        Handshake::Pending
    }
}

/// One entry as the rules see it, its handshake judged; `later_on_port`: the newest first
/// packet of the device's later connections on the same Apple port.
fn connection(
    (key, value): Entry,
    handshake: Handshake,
    later_on_port: u64,
    now: u64,
    rules: &Rules,
    interface: String,
) -> Connection {
    let idle_cut_min = rules.idle_cut_min.as_nanos() as u64;
    let stale = rules.stale_after.as_nanos() as u64;
    let end = End::from_code(value.end).unwrap_or(End::Open);
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
    let abandoned_after_resume = end == End::Open && later_on_port >= value.resume_ns;
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
    let abandoned = later_on_port > last_packet(value);
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
    Connection {
        device_port: key.device_port,
        apple: ip(key.ip_version, key.apple),
        apple_port: key.apple_port,
        interface,
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
    }
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

/// What a device's recent connections add up to.
#[derive(Default)]
struct Evidence {
    handshakes: Handshakes,
    resets: Resets,
    /// The idle gaps of its cut connections, oldest first.
    cuts: Vec<f64>,
    fallbacks: u64,
    direct: u64,
    bytes_out: u64,
    bytes_in: u64,
    interfaces: BTreeSet<String>,
}

impl Evidence {
    fn of(recent: &[&Connection]) -> Evidence {
        let mut evidence = Evidence::default();
        for c in recent {
            evidence.bytes_out += c.bytes_out;
            evidence.bytes_in += c.bytes_in;
            evidence.interfaces.insert(c.interface.clone());
            if c.handshake != Handshake::NotSeen {
                evidence.add_handshake(c);
            }
            let resets = &mut evidence.resets;
            match c.reset_by {
                Some(ResetBy::Apple) => resets.by_apple += 1,
                Some(ResetBy::Network) => resets.by_network += 1,
                Some(ResetBy::Device) => resets.by_device += 1,
                None => {}
            }
            if let Some(gap) = c.idle_cut_after_secs {
                evidence.cuts.push(gap);
            }
        }
        evidence
    }

    /// Counts the handshake of `c`, which the device made.
    fn add_handshake(&mut self, c: &Connection) {
        let handshakes = &mut self.handshakes;
        handshakes.attempts += 1;
        match c.handshake {
            Handshake::Established => handshakes.established += 1,
            Handshake::Unanswered => handshakes.unanswered += 1,
            Handshake::RefusedByApple | Handshake::RefusedByNetwork => handshakes.refused += 1,
            Handshake::Incomplete => handshakes.incomplete += 1,
            Handshake::Pending | Handshake::NotSeen => {}
        }
        if c.apple_port == FALLBACK_PORT {
            if c.fallback {
                self.fallbacks += 1;
            } else {
                self.direct += 1;
            }
        }
    }
}

impl Device {
    /// The device's finding from its connections (oldest first); `None` when nothing of it
    /// is recent: no connection in the window and none open.
    pub(super) fn of(
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
        let evidence = Evidence::of(&recent);
        let open: Vec<&Connection> = connections
            .iter()
            .filter(|c| c.state == State::Open)
            .collect();
        let (failures, ever_established) = failures(&connections, &recent);
        let failing = open.is_empty() && !failures.is_empty();
        let finding = if failing {
            failed(&failures, ever_established)
        } else {
            reaching(&evidence, &recent, &connections, since, rules)
        };
        let mut shown: Vec<Connection> = recent.into_iter().cloned().collect();
        shown.reverse();
        Some(Device {
            address,
            finding,
            words: words(finding, &evidence.cuts),
            failing,
            open: open.len() as u32,
            open_secs: open.iter().map(|c| c.age_secs).reduce(f64::max),
            last_handshake_secs: connections
                .iter()
                .filter(|c| c.value.synack_ns != 0)
                .map(|c| age(now, c.value.synack_ns))
                .reduce(f64::min),
            handshakes: evidence.handshakes,
            resets: evidence.resets,
            idle_cuts_secs: evidence.cuts,
            fallbacks_443: evidence.fallbacks,
            direct_443: evidence.direct,
            bytes_out: evidence.bytes_out,
            bytes_in: evidence.bytes_in,
            interfaces: evidence.interfaces.into_iter().collect(),
            connections: shown,
        })
    }
}

/// The recent handshakes decided as failed since the device's last established connection,
/// and whether it ever had one.
fn failures<'a>(
    connections: &[Connection],
    recent: &[&'a Connection],
) -> (Vec<&'a Connection>, bool) {
    let last_established = connections
        .iter()
        .filter(|c| c.handshake == Handshake::Established)
        .map(|c| c.value.first_ns)
        .max();
    let ever_established = last_established.is_some()
        || connections
            .iter()
            .any(|c| c.handshake == Handshake::NotSeen && c.value.in_packets > 0);
    let failures = recent
        .iter()
        .copied()
        .filter(|c| c.handshake.failed())
        .filter(|c| last_established.is_none_or(|at| c.value.first_ns > at))
        .collect();
    (failures, ever_established)
}

/// The finding of a device that cannot reach APNs now: the cause of its latest failure if it
/// ever connected, else the one cause of all of them.
fn failed(failures: &[&Connection], ever_established: bool) -> Finding {
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
}

/// The finding of a device that reaches APNs: what goes wrong with its connections, if
/// anything.
fn reaching(
    evidence: &Evidence,
    recent: &[&Connection],
    connections: &[Connection],
    since: u64,
    rules: &Rules,
) -> Finding {
    let cuts = &evidence.cuts;
    if cuts.len() >= rules.idle_cut_repeat as usize && similar(cuts) {
        Finding::CutWhileIdle
    } else if evidence.resets.by_network > 0
        || recent
            .iter()
            .any(|c| c.handshake == Handshake::RefusedByNetwork)
    {
        Finding::ResetByNetwork
    } else if evidence.resets.by_apple as usize >= APPLE_RESETS {
        Finding::ResetByApple
    } else if falls_back(connections, since) {
        Finding::FallsBackTo443
    } else {
        Finding::Ok
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
