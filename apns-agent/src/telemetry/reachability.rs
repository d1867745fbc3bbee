//! APNs reachability: of the connection attempts (SYN) devices and providers sent toward
//! Apple, how many were answered (SYN-ACK), over a sliding window, per APNs port for the
//! whole gateway.
//!
//! # Gateway-wide, not per interface
//!
//! XDP sees a packet only where it enters the gateway. A device's SYN toward Apple is
//! counted on the LAN interface it arrived on (direction outbound); Apple's SYN-ACK is
//! counted on the WAN interface it arrived on (direction inbound). The two halves of one
//! handshake are therefore always on different interfaces, and a per-interface ratio would
//! read 0 on every LAN interface and not exist on the WAN one. The datapath keeps no
//! connection tracking, so nothing says which LAN interface a SYN-ACK will leave through:
//! it cannot be attributed to one. The ratio is only meaningful summed over every
//! interface, so handshakes are totalled per port alone.
//!
//! # Window
//!
//! The kernel only keeps totals since the datapath was loaded; a ratio of totals would
//! hide today's outage behind months of healthy history. So every [`Reachability::observe`]
//! stores the gateway-wide cumulative totals with their time, per port, and the ratio is
//! computed between the newest sample and the oldest one the window still needs.
//!
//! Summing per port is also what keeps the window exact: counter entries are never removed
//! (a removed or re-created interface keeps its old ifindex entries, and a new ifindex starts
//! from zero), and the whole map is emptied only when the datapath is reloaded. So a port's
//! total only goes down on a reload, and an interface whose first packets on a port arrive
//! in the middle of the window (the WAN's first SYN-ACK after the LAN's first SYNs) adds
//! them all to that port's window.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use apns_common::counters::Direction;

use crate::{
    datapath::counters::Snapshot,
    telemetry::class::{classify, Class, Verdict},
};

/// Cumulative handshake totals of one port, over every interface, at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    at: Instant,
    /// SYNs sent toward Apple (outbound on any interface, not dropped by us).
    syn: u64,
    /// SYN-ACKs seen from Apple (inbound on any interface).
    synack: u64,
}

/// Sliding-window tracker of SYN-ACKs in / SYNs out per APNs port, gateway-wide.
#[derive(Clone, Debug)]
pub struct Reachability {
    window: Duration,
    /// Oldest first. The front is the baseline: the newest sample at or before the window's
    /// start (or the oldest sample, while the window is not yet full).
    samples: HashMap<u16, VecDeque<Sample>>,
    /// When the previous snapshot was observed: a port that first shows up now had no
    /// handshakes then (the datapath creates a counter entry on its first packet).
    previous: Option<Instant>,
}

impl Reachability {
    pub fn new(window: Duration) -> Reachability {
        Reachability {
            window,
            samples: HashMap::new(),
            previous: None,
        }
    }

    /// Records the totals of `snapshot` as of `now`.
    ///
    /// A total that went down means the datapath was unloaded and loaded again: that port's
    /// window restarts from this sample. A port missing from `snapshot` is forgotten for the
    /// same reason. An observation older than the newest one is ignored (callers sharing a
    /// tracker may race); time only moves forward in a window.
    pub fn observe(&mut self, now: Instant, snapshot: &Snapshot) {
        let totals = handshake_totals(snapshot);
        self.samples.retain(|key, _| totals.contains_key(key));
        let start = now.checked_sub(self.window);
        let previous = self.previous.filter(|&previous| previous <= now);
        if previous.is_some() || self.previous.is_none() {
            self.previous = Some(now);
        }
        for (port, (syn, synack)) in totals {
            let samples = self.samples.entry(port).or_default();
            if let (true, Some(at)) = (samples.is_empty(), previous) {
                samples.push_back(Sample {
                    at,
                    syn: 0,
                    synack: 0,
                });
            }
            if let Some(last) = samples.back() {
                if now < last.at {
                    continue;
                }
                if syn < last.syn || synack < last.synack {
                    samples.clear();
                }
            }
            samples.push_back(Sample {
                at: now,
                syn,
                synack,
            });
            // Drop the baseline once the next sample is itself at or before the window's
            // start: that one is the better (more recent) baseline.
            if let Some(start) = start {
                while samples.len() >= 2 && samples[1].at <= start {
                    samples.pop_front();
                }
            }
        }
    }

    /// SYN-ACKs seen / SYNs sent on `port`, over every interface, since the window's
    /// baseline; `None` when no SYN was sent in the window (no evidence either way — never
    /// NaN).
    ///
    /// Not clamped: a retransmitted SYN-ACK (the final ACK was lost) counts again, so a
    /// healthy port can read slightly above 1. Clamping would hide that nothing is wrong.
    pub fn ratio(&self, port: u16) -> Option<f64> {
        let samples = self.samples.get(&port)?;
        let (baseline, latest) = (samples.front()?, samples.back()?);
        // Resets clear the window, so within one the totals never go down.
        let syn = latest.syn.checked_sub(baseline.syn)?;
        let synack = latest.synack.checked_sub(baseline.synack)?;
        (syn > 0).then(|| synack as f64 / syn as f64)
    }
}

/// `(syn sent, synack seen)` per port, summed over every interface: outbound SYNs from
/// whichever interface they entered on, inbound SYN-ACKs likewise.
///
/// SYNs the provider rule dropped are left out: they never reached Apple, and counting them
/// would make a policy decision (already reported as `apns_policy_drops_total`) look like
/// Apple being unreachable.
fn handshake_totals(snapshot: &Snapshot) -> BTreeMap<u16, (u64, u64)> {
    let mut totals: BTreeMap<u16, (u64, u64)> = BTreeMap::new();
    for (key, value) in &snapshot.entries {
        let Some(Class::Apns {
            direction,
            port,
            verdict,
        }) = classify(key)
        else {
            continue;
        };
        let total = totals.entry(port).or_default();
        match (direction, verdict) {
            (Direction::Outbound, Verdict::Pass | Verdict::Fastpath | Verdict::FastpathTc) => {
                total.0 += value.syn
            }
            (Direction::Inbound, _) => total.1 += value.synack,
            (Direction::Outbound, Verdict::Drop) | (Direction::None, _) => {}
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use apns_common::counters::{CounterKey, CounterValue, Outcome};

    use super::*;
    use crate::telemetry::model::tests::entry;

    /// LAN side: eth1 (ifindex 2), where devices' SYNs enter.
    const LAN: u32 = 2;
    /// WAN side: eth2 (ifindex 3), where Apple's SYN-ACKs enter.
    const WAN: u32 = 3;

    /// `syn` SYNs toward Apple entering on the LAN interface and `synack` SYN-ACKs from Apple
    /// entering on the WAN interface, both on `port`. Values: [packets, bytes, syn, synack,
    /// rst, fin].
    fn handshakes(port: u16, syn: u64, synack: u64) -> [(CounterKey, CounterValue); 2] {
        [
            entry(
                LAN,
                port,
                Direction::Outbound,
                Outcome::Pass,
                [syn, 0, syn, 0, 0, 0],
            ),
            entry(
                WAN,
                port,
                Direction::Inbound,
                Outcome::Pass,
                [synack, 0, 0, synack, 0, 0],
            ),
        ]
    }

    /// A gateway's snapshot for port 5223: [`handshakes`] only.
    fn totals(syn: u64, synack: u64) -> Snapshot {
        Snapshot {
            entries: handshakes(5223, syn, synack).into_iter().collect(),
            lost: 0,
            paths: Default::default(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_syn_on_one_interface_and_its_synack_on_another_is_one_handshake() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(120));
        let snapshot = |handshakes: u64| Snapshot {
            entries: [
                // Devices' SYNs enter on eth1 (outbound)...
                entry(
                    2,
                    5223,
                    Direction::Outbound,
                    Outcome::Pass,
                    [handshakes, 0, handshakes, 0, 0, 0],
                ),
                // ...and Apple's SYN-ACKs enter on eth2 (inbound).
                entry(
                    3,
                    5223,
                    Direction::Inbound,
                    Outcome::Pass,
                    [handshakes, 0, 0, handshakes, 0, 0],
                ),
            ]
            .into_iter()
            .collect(),
            lost: 0,
            paths: Default::default(),
        };
        reach.observe(t0, &snapshot(3));
        reach.observe(t0 + secs(10), &snapshot(4));
        // One SYN on eth1, one SYN-ACK on eth2: one answered attempt.
        assert_eq!(reach.ratio(5223), Some(1.0));
        assert_eq!(reach.ratio(443), None);
    }

    #[test]
    fn a_port_first_seen_after_an_earlier_observation_counts_from_zero() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(120));
        // The agent scraped before any APNs packet: no counter entry existed yet.
        reach.observe(t0, &Snapshot::default());
        reach.observe(t0 + secs(5), &totals(4, 0));
        assert_eq!(
            reach.ratio(5223),
            Some(0.0),
            "4 SYNs since the first look, none answered"
        );
        // A fresh tracker has no earlier look: one snapshot is no evidence.
        let mut fresh = Reachability::new(secs(120));
        fresh.observe(t0, &totals(4, 0));
        assert_eq!(fresh.ratio(5223), None);
    }

    #[test]
    fn every_interface_counts_toward_its_port() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(120));
        let snapshot = |eth1_syn: u64, lan2_syn: u64, eth2_synack: u64, port_443: (u64, u64)| {
            let mut snapshot = totals(eth1_syn, eth2_synack);
            snapshot
                .entries
                .extend(handshakes(443, port_443.0, port_443.1));
            // A second LAN interface (ifindex 4) sending SYNs on 5223 too; its entry appears
            // only after the first observation, and all of its SYNs are in the window.
            if lan2_syn > 0 {
                snapshot.entries.extend([entry(
                    4,
                    5223,
                    Direction::Outbound,
                    Outcome::Pass,
                    [lan2_syn, 0, lan2_syn, 0, 0, 0],
                )]);
            }
            snapshot
        };
        reach.observe(t0, &snapshot(10, 0, 10, (0, 0)));
        reach.observe(t0 + secs(60), &snapshot(12, 6, 16, (5, 4)));
        // 5223: 2 more SYNs on eth1 and 6 on ifindex 4; 6 more SYN-ACKs on eth2.
        assert_eq!(reach.ratio(5223), Some(0.75));
        // 443 is its own window: 4 SYN-ACKs for 5 SYNs.
        assert_eq!(reach.ratio(443), Some(0.8));
        assert_eq!(reach.samples.len(), 2);
    }

    #[test]
    fn no_ratio_without_a_syn_in_the_window() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(120));
        assert_eq!(reach.ratio(5223), None);
        reach.observe(t0, &totals(10, 10));
        // One sample is no window yet.
        assert_eq!(reach.ratio(5223), None);
        reach.observe(t0 + secs(60), &totals(10, 12));
        // SYN-ACKs without SYNs: still no evidence, and no NaN or infinity.
        assert_eq!(reach.ratio(5223), None);
        assert_eq!(reach.ratio(443), None);
    }

    #[test]
    fn ratio_over_the_window() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(120));
        reach.observe(t0, &totals(0, 0));
        reach.observe(t0 + secs(60), &totals(10, 5));
        assert_eq!(reach.ratio(5223), Some(0.5));
        reach.observe(t0 + secs(120), &totals(20, 15));
        // Window start is t0: t0 itself is still the baseline.
        assert_eq!(reach.ratio(5223), Some(0.75));
        reach.observe(t0 + secs(200), &totals(30, 25));
        // Window start is t80: the baseline moves to t60, the newest sample before it.
        assert_eq!(reach.ratio(5223), Some(1.0));
        assert_eq!(reach.samples[&5223].len(), 3);
    }

    #[test]
    fn a_quiet_window_forgets_old_syns() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(120));
        reach.observe(t0, &totals(0, 0));
        reach.observe(t0 + secs(100), &totals(10, 0));
        assert_eq!(reach.ratio(5223), Some(0.0));
        reach.observe(t0 + secs(500), &totals(10, 0));
        // Nothing was sent in (t380, t500]: the old failures no longer count.
        assert_eq!(reach.ratio(5223), None);
        assert_eq!(reach.samples[&5223].len(), 2);
    }

    #[test]
    fn a_counter_reset_restarts_the_window() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(600));
        reach.observe(t0, &totals(0, 0));
        reach.observe(t0 + secs(60), &totals(10, 10));
        assert_eq!(reach.ratio(5223), Some(1.0));
        // The datapath was reloaded: totals start again from zero.
        reach.observe(t0 + secs(120), &totals(3, 1));
        assert_eq!(reach.ratio(5223), None);
        reach.observe(t0 + secs(180), &totals(7, 3));
        assert_eq!(reach.ratio(5223), Some(0.5));
        // Gone from the map altogether (reloaded, nothing counted yet): forgotten.
        reach.observe(t0 + secs(240), &Snapshot::default());
        assert_eq!(reach.ratio(5223), None);
        assert!(reach.samples.is_empty());
    }

    #[test]
    fn older_observations_are_ignored() {
        let t0 = Instant::now() + secs(1000);
        let mut reach = Reachability::new(secs(600));
        reach.observe(t0, &totals(0, 0));
        reach.observe(t0 + secs(60), &totals(4, 1));
        reach.observe(t0 + secs(30), &totals(100, 0));
        assert_eq!(reach.ratio(5223), Some(0.25));
    }

    #[test]
    fn provider_drops_are_not_attempts_toward_apple() {
        let t0 = Instant::now();
        let mut reach = Reachability::new(secs(600));
        let with_drops = |syn: u64, synack: u64, dropped: u64| {
            let mut snapshot = totals(syn, synack);
            snapshot.entries.extend([entry(
                LAN,
                5223,
                Direction::Outbound,
                Outcome::DropProvider,
                [dropped, 0, dropped, 0, 0, 0],
            )]);
            snapshot
        };
        reach.observe(t0, &with_drops(4, 2, 0));
        // 4 more SYNs passed and 4 more SYN-ACKs came back; 50 SYNs were dropped.
        reach.observe(t0 + secs(10), &with_drops(8, 6, 50));
        assert_eq!(reach.ratio(5223), Some(1.0));
    }
}
