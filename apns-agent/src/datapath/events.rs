//! Drop events from the datapath's ring buffer: decoding and wall-clock time (`apns-agent
//! events` prints them). The ring has one consumer: `events` (run only reports drop counts,
//! from the counters).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use apns_common::{
    counters::{DropReason, Outcome},
    events::{DropEvent, EventConfig},
    ip,
    label::Label,
    maps::{EVENTS, EVENT_CONFIG},
};
use aya::maps::{Array, Map, MapData, RingBuf};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;

use super::conns::monotonic_now_ns;

/// Handles to the event maps of one datapath.
pub struct EventMaps {
    ring: RingBuf<MapData>,
    config: Array<MapData, EventConfig>,
}

/// A drop event as operators read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyDrop {
    /// RFC 3339, UTC.
    pub time: String,
    pub interface: String,
    /// `pinhole`, `provider` or `inbound_open` ([`DropReason`]'s label).
    pub reason: &'static str,
    pub protocol: &'static str,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Drops on the same CPU that produced no event since the previous one (sampling, rate
    /// limit or a full ring); they are all counted in apns_policy_drops_total.
    pub suppressed: u32,
}

impl EventMaps {
    /// See [`super::policy_maps::PolicyMaps::open`].
    pub fn open(mut map: impl FnMut(&'static str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(EventMaps {
            ring: RingBuf::try_from(map(EVENTS)?)
                .with_context(|| format!("map {EVENTS} has an unexpected type"))?,
            config: Array::try_from(map(EVENT_CONFIG)?)
                .with_context(|| format!("map {EVENT_CONFIG} has an unexpected type or layout"))?,
        })
    }

    pub fn config(&self) -> anyhow::Result<EventConfig> {
        self.config
            .get(&0, 0)
            .with_context(|| format!("reading map {EVENT_CONFIG}"))
    }

    pub fn set_config(&mut self, config: EventConfig) -> anyhow::Result<()> {
        self.config
            .set(0, config, 0)
            .with_context(|| format!("writing map {EVENT_CONFIG}"))
    }

    /// Takes every event waiting in the ring.
    pub fn drain(&mut self) -> Vec<DropEvent> {
        let mut events = Vec::new();
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<DropEvent>() {
                // SAFETY: the datapath writes whole DropEvents (repr(C), any bit pattern
                // valid); read_unaligned copes with the ring's 8-byte alignment.
                events.push(unsafe { item.as_ptr().cast::<DropEvent>().read_unaligned() });
            }
        }
        events
    }

    /// Waits up to `timeout` for the ring to have data.
    pub fn wait(&self, timeout: Duration) -> anyhow::Result<()> {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(err) => Err(err).with_context(|| format!("waiting for map {EVENTS}")),
        }
    }
}

impl PolicyDrop {
    /// `event` as operators read it; `interface_name` turns an ifindex into a name.
    pub fn from_event(event: &DropEvent, interface_name: impl Fn(u32) -> String) -> PolicyDrop {
        let addr = |bytes: &[u8; 16]| match event.ip_version {
            4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
            _ => IpAddr::V6(Ipv6Addr::from(*bytes)),
        };
        PolicyDrop {
            time: wall_clock(event.time_ns),
            interface: interface_name(event.ifindex),
            // The same words as the policy drops' `reason` label.
            reason: Outcome::from_u8(event.outcome)
                .and_then(DropReason::of)
                .map_or("unknown", DropReason::as_str),
            protocol: if event.protocol == ip::TCP {
                "tcp"
            } else {
                "other"
            },
            src: addr(&event.src),
            sport: event.sport,
            dst: addr(&event.dst),
            dport: event.dport,
            suppressed: event.suppressed,
        }
    }
}

/// Converts a `bpf_ktime_get_ns` timestamp (CLOCK_MONOTONIC) to RFC 3339 UTC.
fn wall_clock(monotonic_ns: u64) -> String {
    let age = Duration::from_nanos(monotonic_now_ns().saturating_sub(monotonic_ns));
    let at = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn event_times_are_wall_clock() {
        // An event a minute old reads as a minute ago.
        let time = wall_clock(monotonic_now_ns() - 60_000_000_000);
        let parsed = humantime::parse_rfc3339(&time).unwrap();
        let age = SystemTime::now().duration_since(parsed).unwrap();
        assert!(
            age.abs_diff(Duration::from_secs(60)) < Duration::from_secs(2),
            "{time} is {age:?} ago"
        );
    }

    /// A pinhole drop of 192.0.2.10:40000 -> 203.0.113.130:5223 on ifindex 7, with 3 more
    /// not reported (also the renderer's tests' sample).
    pub(crate) fn sample_event() -> DropEvent {
        let mut event = DropEvent {
            ifindex: 7,
            outcome: Outcome::DropPinhole as u8,
            protocol: apns_common::ip::TCP,
            ip_version: 4,
            sport: 40000,
            dport: 5223,
            suppressed: 3,
            ..DropEvent::default()
        };
        event.src[..4].copy_from_slice(&[192, 0, 2, 10]);
        event.dst[..4].copy_from_slice(&[203, 0, 113, 130]);
        event
    }

    #[test]
    fn events_read_as_json() {
        let event = sample_event();
        let drop = PolicyDrop::from_event(&event, |_| "lan0".into());
        let json = serde_json::to_value(&drop).unwrap();
        assert_eq!(json["dst"], "203.0.113.130");
        assert_eq!(json["reason"], "pinhole");
    }
}
