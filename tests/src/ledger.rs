//! Exact counts on the lab gateway: what the client's and the Apple host's own TCP stacks sent,
//! beside what the gateway's datapath counted, on lan0 (client → Apple) and wan0 (Apple →
//! client). Balanced ledgers mean every segment crossed the gateway's XDP program and was
//! counted exactly once.

use std::time::{Duration, Instant};

use apns_agent::datapath::counters::{PathTotals, Snapshot};
use apns_common::counters::{Direction, Outcome};

use crate::{
    agent::{counter_key, gw_ifindex, TestPins},
    lab::{Lab, Role, GW_IF_CLIENT, GW_IF_WAN},
};

/// How long counts must stay unchanged to be final: longer than Linux's largest delayed-ACK
/// timeout (200 ms), so no segment of a finished exchange is still to come.
const SETTLED: Duration = Duration::from_millis(400);

/// What the gateway counted and what the hosts sent, at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Ledger {
    pub snapshot: Snapshot,
    /// TCP segments the client and the Apple host have sent.
    pub client_sent: u64,
    pub apple_sent: u64,
    /// Of those, retransmissions.
    pub client_retransmitted: u64,
    pub apple_retransmitted: u64,
}

impl Ledger {
    /// The redirect paths of `ifindex` as the datapath counts them.
    pub fn paths(&self, ifindex: u32) -> PathTotals {
        self.snapshot.paths(ifindex)
    }
}

/// The interfaces a ledger balances, lan0 and wan0, and the APNs ports the exchanges use.
#[derive(Clone, Copy)]
pub struct Gateway {
    pub lan: u32,
    pub wan: u32,
    ports: &'static [u16],
}

impl Gateway {
    pub fn of(lab: &Lab, ports: &'static [u16]) -> Gateway {
        Gateway {
            lan: gw_ifindex(lab, GW_IF_CLIENT.name).unwrap(),
            wan: gw_ifindex(lab, GW_IF_WAN.name).unwrap(),
            ports,
        }
    }

    pub fn ledger(self, lab: &Lab, pins: &TestPins) -> Ledger {
        let (client, apple) = (
            lab.tcp_segments(Role::Client).unwrap(),
            lab.tcp_segments(Role::Apple).unwrap(),
        );
        Ledger {
            snapshot: pins.snapshot().unwrap(),
            client_sent: client.sent(),
            apple_sent: apple.sent(),
            client_retransmitted: client.retrans_segs,
            apple_retransmitted: apple.retrans_segs,
        }
    }

    /// APNs packets counted on `ifindex` in `direction` over the ports, with `outcome`.
    pub fn counted(
        self,
        snapshot: &Snapshot,
        ifindex: u32,
        direction: Direction,
        outcome: Outcome,
    ) -> u64 {
        self.ports
            .iter()
            .map(|&port| {
                snapshot
                    .get(&counter_key(ifindex, direction, port, outcome))
                    .packets
            })
            .sum()
    }

    /// APNs packets counted on `ifindex` in `direction` over the ports, every outcome.
    fn counted_all(self, snapshot: &Snapshot, ifindex: u32, direction: Direction) -> u64 {
        Outcome::ALL
            .iter()
            .map(|&outcome| self.counted(snapshot, ifindex, direction, outcome))
            .sum()
    }

    /// `outcome` packets on `ifindex` in `direction` between two ledgers.
    pub fn delta(
        self,
        before: &Ledger,
        after: &Ledger,
        ifindex: u32,
        direction: Direction,
        outcome: Outcome,
    ) -> u64 {
        self.counted(&after.snapshot, ifindex, direction, outcome)
            - self.counted(&before.snapshot, ifindex, direction, outcome)
    }

    /// Waits until every segment the client and the Apple host sent since `before` has been
    /// counted on the gateway (lan0 outbound, wan0 inbound), and nothing moved for
    /// [`SETTLED`]; returns the ledger then. The hosts' TCP stacks count each segment they
    /// send, retransmissions included: equality means every one crossed the gateway's XDP
    /// program and was counted exactly once. Segments of other ports, or forged by a test,
    /// must not cross the gateway meanwhile.
    pub fn settle(self, lab: &Lab, pins: &TestPins, before: &Ledger, timeout: Duration) -> Ledger {
        let deadline = Instant::now() + timeout;
        let balanced = |now: &Ledger| {
            let lan = self.counted_all(&now.snapshot, self.lan, Direction::Outbound)
                - self.counted_all(&before.snapshot, self.lan, Direction::Outbound);
            let wan = self.counted_all(&now.snapshot, self.wan, Direction::Inbound)
                - self.counted_all(&before.snapshot, self.wan, Direction::Inbound);
            (
                lan,
                now.client_sent - before.client_sent,
                wan,
                now.apple_sent - before.apple_sent,
            )
        };
        let mut last = self.ledger(lab, pins);
        let mut since = Instant::now();
        loop {
            let (lan, client, wan, apple) = balanced(&last);
            if lan == client && wan == apple && since.elapsed() >= SETTLED {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "counted on lan0 {lan} of the client's {client} segments, on wan0 {wan} of Apple's {apple}: {last:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
            let now = self.ledger(lab, pins);
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
    }
}
