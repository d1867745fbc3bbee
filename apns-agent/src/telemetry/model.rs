//! One aggregation of a counters [`Snapshot`] into what every output shows.
//!
//! The datapath counts each packet once under `(ifindex, port, direction, outcome)`
//! (docs/classification.md). Operators read something else: per interface, APNs packets and
//! bytes per direction, port and verdict; TCP handshake events; policy drops by reason; and
//! the rest by class; and, for the whole gateway, the reachability ratio per APNs port. [`Model::build`] is the only place that translation happens, and the
//! label words come from the [`Label`] trait (of [`Outcome`], [`Direction`], [`DropReason`]
//! and `class`' enums), so Prometheus, JSON and the terminal views cannot drift apart.

use std::collections::BTreeMap;

use apns_common::{
    counters::{CounterValue, Direction, DropReason, Outcome},
    label::Label,
};

use crate::{
    datapath::{
        counters::{PathTotals, Snapshot},
        interfaces::FastPath,
        policy::Policy,
        status::InterfaceStatus,
        Datapath,
    },
    telemetry::{
        class::{classify, Class, TcpEvent, Verdict, OTHER_CLASSES},
        reachability::Reachability,
    },
};

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Volume {
    pub packets: u64,
    pub bytes: u64,
}

/// APNs traffic of one interface in one direction on one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Every [`Verdict`] is present (zero if never counted): a series that exists from the
    /// start lets Prometheus' `rate()` see its first increment.
    pub volume: BTreeMap<Verdict, Volume>,
    /// Every [`TcpEvent`] is present, summed over verdicts.
    pub tcp: BTreeMap<TcpEvent, u64>,
}

impl Default for Flow {
    fn default() -> Flow {
        Flow {
            volume: Verdict::ALL
                .iter()
                .map(|&v| (v, Volume::default()))
                .collect(),
            tcp: TcpEvent::ALL.iter().map(|&e| (e, 0)).collect(),
        }
    }
}

impl Flow {
    /// Packets and bytes over all verdicts.
    pub fn total(&self) -> Volume {
        self.volume
            .values()
            .fold(Volume::default(), |sum, v| Volume {
                packets: sum.packets + v.packets,
                bytes: sum.bytes + v.bytes,
            })
    }

    /// The volume under `verdict`.
    pub fn get(&self, verdict: Verdict) -> Volume {
        self.volume.get(&verdict).copied().unwrap_or_default()
    }

    /// The count of `event`.
    pub fn event(&self, event: TcpEvent) -> u64 {
        self.tcp.get(&event).copied().unwrap_or_default()
    }
}

/// Key of [`InterfaceModel::flows`]: outbound before inbound, then by port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    /// Outbound or inbound.
    pub direction: Direction,
    pub port: u16,
}

/// Everything counted on one interface.
#[derive(Clone, Debug, PartialEq)]
pub struct InterfaceModel {
    pub flows: BTreeMap<FlowKey, Flow>,
    /// Packets per reason; every reason present.
    pub policy_drops: BTreeMap<DropReason, u64>,
    /// Packets per [`OTHER_CLASSES`] outcome; every class present.
    pub other: BTreeMap<Outcome, u64>,
    /// Inbound connection attempts on an APNs port (SYNs from Apple's side) by port and
    /// verdict: passed (monitor) or dropped (enforce).
    pub inbound_opens: BTreeMap<(u16, Verdict), u64>,
    /// How the `redirect` fast path's APNs packets left the interface (XDP, TC, the stack
    /// by reason): present for interfaces whose fast path is `redirect`, and for any with a
    /// fallback or TC count.
    pub paths: Option<PathTotals>,
}

impl Default for InterfaceModel {
    fn default() -> InterfaceModel {
        InterfaceModel {
            flows: BTreeMap::new(),
            policy_drops: DropReason::ALL.iter().map(|&r| (r, 0)).collect(),
            other: OTHER_CLASSES.map(|c| (c, 0)).into(),
            inbound_opens: BTreeMap::new(),
            paths: None,
        }
    }
}

/// The counters of a datapath at one moment, as every output shows them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// By interface name.
    pub interfaces: BTreeMap<String, InterfaceModel>,
    /// SYN-ACKs in / SYNs out per APNs port over the reachability window, for the whole
    /// gateway: a SYN and its SYN-ACK enter on different interfaces (see
    /// [`crate::telemetry::reachability`]). Only ports that sent a SYN in the window.
    pub reachability: BTreeMap<u16, f64>,
    /// Packets not counted because the counter map was full.
    pub lost: u64,
}

/// What the datapath is set up to count: its attached interfaces and its APNs ports. The
/// model holds every series of these from the start, at zero, so that Prometheus tells "no
/// traffic" (a series at 0) from "not measured" (no series) and `rate()` sees the first
/// increment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// Interface names, as [`interface_name`] gives them.
    pub interfaces: Vec<String>,
    pub ports: Vec<u16>,
    /// Ifindexes of the attached interfaces whose fast path is `redirect`.
    pub redirect: Vec<u32>,
}

impl Known {
    /// The attached interfaces and the active policy's ports of `datapath`.
    pub fn of(datapath: &Datapath) -> anyhow::Result<Known> {
        Ok(Known::from_parts(
            &datapath.interface_status()?,
            &datapath.policy.read_active()?,
        ))
    }

    /// The attached ones of `interfaces` (`Datapath::interface_status`) and the ports of
    /// `policy` (the active one), for a caller that has read both already.
    pub fn from_parts(interfaces: &[InterfaceStatus], policy: &Policy) -> Known {
        let attached = || interfaces.iter().filter(|interface| interface.attached);
        Known {
            interfaces: attached()
                .filter_map(|interface| interface.ifindex)
                .map(interface_name)
                .collect(),
            ports: policy.ports.keys().copied().collect(),
            redirect: attached()
                .filter(|interface| interface.fastpath == Some(FastPath::Redirect))
                .filter_map(|interface| interface.ifindex)
                .collect(),
        }
    }
}

impl InterfaceModel {
    /// Counts one counter cell of the interface, of class `class`.
    fn add(&mut self, class: Class, value: &CounterValue) {
        match class {
            Class::Apns {
                direction,
                port,
                verdict,
            } => {
                let flow = self.flows.entry(FlowKey { direction, port }).or_default();
                let volume = flow.volume.entry(verdict).or_default();
                volume.packets += value.packets;
                volume.bytes += value.bytes;
                for &event in TcpEvent::ALL {
                    *flow.tcp.entry(event).or_default() += event.count_in(value);
                }
                if verdict == Verdict::Drop {
                    *self.policy_drops.entry(DropReason::Provider).or_default() += value.packets;
                }
            }
            Class::Dropped(reason) => {
                *self.policy_drops.entry(reason).or_default() += value.packets;
            }
            Class::InboundOpen { port, verdict } => {
                *self.inbound_opens.entry((port, verdict)).or_default() += value.packets;
                if verdict == Verdict::Drop {
                    *self
                        .policy_drops
                        .entry(DropReason::InboundOpen)
                        .or_default() += value.packets;
                }
            }
            Class::Other(outcome) => {
                *self.other.entry(outcome).or_default() += value.packets;
            }
        }
    }
}

impl Model {
    /// Aggregates `snapshot`, with every series of `known` present. `interface_name` turns
    /// an ifindex into a name (see [`interface_name`]); it is called once per ifindex.
    /// Ratios come from `reachability`, which the caller has fed this snapshot (or an
    /// earlier one) with [`Reachability::observe`].
    pub fn build(
        snapshot: &Snapshot,
        known: &Known,
        interface_name: impl Fn(u32) -> String,
        reachability: &Reachability,
    ) -> Model {
        let mut names: BTreeMap<u32, String> = BTreeMap::new();
        let mut interfaces: BTreeMap<String, InterfaceModel> = BTreeMap::new();
        for name in &known.interfaces {
            let interface = interfaces.entry(name.clone()).or_default();
            for &port in &known.ports {
                for direction in [Direction::Outbound, Direction::Inbound] {
                    interface
                        .flows
                        .entry(FlowKey { direction, port })
                        .or_default();
                }
            }
        }
        for (key, value) in &snapshot.entries {
            let Some(class) = classify(key) else {
                // Only a datapath of another layout writes these, and layouts are checked
                // when the maps are opened; a debug line is enough.
                tracing::debug!(?key, "counter entry with an unknown code, not reported");
                continue;
            };
            let name = names
                .entry(key.ifindex)
                .or_insert_with(|| interface_name(key.ifindex));
            interfaces
                .entry(name.clone())
                .or_default()
                .add(class, value);
        }
        let with_paths: std::collections::BTreeSet<u32> = known
            .redirect
            .iter()
            .chain(snapshot.paths.keys())
            .copied()
            .collect();
        for ifindex in with_paths {
            let name = names
                .entry(ifindex)
                .or_insert_with(|| interface_name(ifindex));
            interfaces.entry(name.clone()).or_default().paths = Some(snapshot.paths(ifindex));
        }
        // Only APNs ports can have a ratio, and every one of them has a flow somewhere.
        let ports: std::collections::BTreeSet<u16> = interfaces
            .values()
            .flat_map(|interface| interface.flows.keys().map(|key| key.port))
            .collect();
        let reachability = ports
            .into_iter()
            .filter_map(|port| Some((port, reachability.ratio(port)?)))
            .collect();
        Model {
            interfaces,
            reachability,
            lost: snapshot.lost,
        }
    }

    /// Keeps only `interface` (for `stats --interface`). An interface without counters yet
    /// is kept as all zeros, so the output says "nothing counted" instead of nothing.
    /// [`Model::reachability`] is kept as it is: it is the gateway's, not any interface's.
    pub fn select_interface(&mut self, interface: &str) {
        let selected = self.interfaces.remove(interface).unwrap_or_default();
        self.interfaces = BTreeMap::from([(interface.to_owned(), selected)]);
    }
}

/// The name of interface `ifindex` in the caller's network namespace, or the number itself
/// when it has none (the interface was removed: its counters stay in the map).
pub fn interface_name(ifindex: u32) -> String {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .map(|name| name.to_string_lossy().into_owned())
        // nix 0.30 answers an unknown index with an empty name rather than an error.
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| ifindex.to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::{Duration, Instant};

    use apns_common::counters::{CounterKey, CounterValue};

    use super::*;

    /// One counter entry.
    pub(crate) fn entry(
        ifindex: u32,
        port: u16,
        direction: Direction,
        outcome: Outcome,
        value: [u64; 6],
    ) -> (CounterKey, CounterValue) {
        let [packets, bytes, syn, synack, rst, fin] = value;
        (
            CounterKey {
                ifindex,
                port,
                direction: direction as u8,
                outcome: outcome as u8,
            },
            CounterValue {
                packets,
                bytes,
                syn,
                synack,
                rst,
                fin,
            },
        )
    }

    /// Two interfaces (2 = eth1, 3 = eth2), both directions, several ports, every drop
    /// reason, inbound connection attempts both dropped and passed, and the other classes. Values: [packets, bytes, syn, synack, rst, fin].
    pub(crate) fn sample_snapshot() -> Snapshot {
        use Direction::{Inbound, None as NoDir, Outbound};
        let entries = [
            entry(2, 5223, Outbound, Outcome::Pass, [7, 700, 4, 0, 1, 2]),
            entry(2, 5223, Inbound, Outcome::Pass, [5, 900, 0, 3, 0, 1]),
            entry(2, 443, Outbound, Outcome::Pass, [10, 1500, 2, 0, 0, 0]),
            entry(2, 443, Inbound, Outcome::Pass, [12, 6000, 0, 2, 1, 0]),
            entry(2, 2197, Outbound, Outcome::Pass, [3, 300, 1, 0, 0, 0]),
            entry(
                2,
                2197,
                Outbound,
                Outcome::DropProvider,
                [4, 240, 4, 0, 0, 0],
            ),
            entry(2, 5223, NoDir, Outcome::DropPinhole, [6, 360, 6, 0, 0, 0]),
            entry(
                2,
                5223,
                Inbound,
                Outcome::DropInboundOpen,
                [3, 162, 3, 0, 0, 0],
            ),
            entry(3, 443, Inbound, Outcome::InboundOpen, [2, 108, 2, 0, 0, 0]),
            entry(2, 0, NoDir, Outcome::NotIp, [9, 540, 0, 0, 0, 0]),
            entry(2, 0, NoDir, Outcome::NotApns, [100, 64000, 0, 0, 0, 0]),
            entry(2, 0, NoDir, Outcome::Malformed, [1, 20, 0, 0, 0, 0]),
            entry(3, 5223, Outbound, Outcome::Pass, [2, 140, 2, 0, 0, 0]),
            entry(3, 5223, Inbound, Outcome::Pass, [1, 74, 0, 1, 0, 0]),
            entry(3, 0, NoDir, Outcome::Fragment, [8, 12000, 0, 0, 0, 0]),
        ];
        Snapshot {
            entries: entries.into_iter().collect(),
            lost: 11,
            paths: Default::default(),
        }
    }

    pub(crate) fn names(ifindex: u32) -> String {
        match ifindex {
            2 => "eth1".to_owned(),
            3 => "eth2".to_owned(),
            other => other.to_string(),
        }
    }

    /// A `redirect` interface's paths: `xdp` packets forwarded by XDP, 2 by TC (and the
    /// TC program's matching count), and `stack` packets left to the stack for `reason`.
    pub(crate) fn sample_paths(
        xdp: u64,
        reason: apns_common::fastpath::Fallback,
        stack: u64,
    ) -> crate::datapath::counters::PathTotals {
        let mut counters = apns_common::fastpath::PathCounters::default();
        counters.fallback[reason as usize] = stack;
        counters.tc_redirected = 2;
        crate::datapath::counters::PathTotals {
            xdp_redirect: xdp,
            tc_redirect: 2,
            counters,
        }
    }

    /// The sample snapshot with a reachability window that saw it grow from `earlier`.
    pub(crate) fn sample_model() -> Model {
        let mut earlier = sample_snapshot();
        // 60 s earlier, no SYN had been sent on 5223 (eth1 or eth2) and only eth2 had seen
        // a SYN-ACK, its one.
        for (ifindex, direction) in [
            (2, Direction::Outbound),
            (2, Direction::Inbound),
            (3, Direction::Outbound),
        ] {
            let (key, value) = entry(ifindex, 5223, direction, Outcome::Pass, [0; 6]);
            earlier.entries.insert(key, value);
        }
        let start = Instant::now();
        let mut reachability = Reachability::new(Duration::from_secs(300));
        reachability.observe(start, &earlier);
        let now = sample_snapshot();
        reachability.observe(start + Duration::from_secs(60), &now);
        Model::build(&now, &Known::default(), names, &reachability)
    }

    #[test]
    fn aggregates_by_interface_direction_port_and_verdict() {
        let model = sample_model();
        assert_eq!(model.lost, 11);
        assert_eq!(
            model.interfaces.keys().collect::<Vec<_>>(),
            ["eth1", "eth2"]
        );
        let eth1 = &model.interfaces["eth1"];
        let key = |direction, port| FlowKey { direction, port };
        assert_eq!(
            eth1.flows.keys().copied().collect::<Vec<_>>(),
            [
                key(Direction::Outbound, 443),
                key(Direction::Outbound, 2197),
                key(Direction::Outbound, 5223),
                key(Direction::Inbound, 443),
                key(Direction::Inbound, 5223),
            ]
        );
        let provider = &eth1.flows[&key(Direction::Outbound, 2197)];
        assert_eq!(
            provider.get(Verdict::Pass),
            Volume {
                packets: 3,
                bytes: 300
            }
        );
        assert_eq!(
            provider.get(Verdict::Drop),
            Volume {
                packets: 4,
                bytes: 240
            }
        );
        assert_eq!(provider.get(Verdict::Fastpath), Volume::default());
        assert_eq!(
            provider.total(),
            Volume {
                packets: 7,
                bytes: 540
            }
        );
        // SYNs are summed over verdicts: 1 passed + 4 dropped.
        assert_eq!(provider.event(TcpEvent::Syn), 5);
        let inbound = &eth1.flows[&key(Direction::Inbound, 5223)];
        assert_eq!(inbound.event(TcpEvent::Synack), 3);
        assert_eq!(inbound.event(TcpEvent::Fin), 1);
        assert_eq!(
            eth1.policy_drops,
            BTreeMap::from([
                (DropReason::Pinhole, 6),
                (DropReason::Provider, 4),
                (DropReason::InboundOpen, 3),
                (DropReason::Unfinished, 0)
            ])
        );
        assert_eq!(
            eth1.other,
            BTreeMap::from([
                (Outcome::NotIp, 9),
                (Outcome::NotApns, 100),
                (Outcome::Fragment, 0),
                (Outcome::Malformed, 1),
                (Outcome::Unfinished, 0),
            ])
        );
        let eth2 = &model.interfaces["eth2"];
        assert_eq!(eth2.other[&Outcome::Fragment], 8);
        assert_eq!(eth2.policy_drops[&DropReason::Provider], 0);
        // Gateway-wide: 5223 sent 4 SYNs on eth1 and 2 on eth2 since the baseline, and saw
        // 3 SYN-ACKs on eth1 and none more on eth2: 3 / 6. 443 and 2197 sent no SYN in the
        // window (same totals at both ends), so they have no ratio at all.
        assert_eq!(model.reachability, BTreeMap::from([(5223, 0.5)]));
    }

    #[test]
    fn reachability_pairs_a_syn_and_a_synack_on_different_interfaces() {
        // A device's SYN enters on eth1 (outbound), Apple's SYN-ACK on eth2 (inbound).
        let snapshot = |handshakes: u64| Snapshot {
            entries: [
                entry(
                    2,
                    5223,
                    Direction::Outbound,
                    Outcome::Pass,
                    [handshakes, 60 * handshakes, handshakes, 0, 0, 0],
                ),
                entry(
                    3,
                    5223,
                    Direction::Inbound,
                    Outcome::Pass,
                    [handshakes, 60 * handshakes, 0, handshakes, 0, 0],
                ),
            ]
            .into_iter()
            .collect(),
            lost: 0,
            paths: Default::default(),
        };
        let start = Instant::now();
        let mut reachability = Reachability::new(Duration::from_secs(300));
        reachability.observe(start, &snapshot(2));
        reachability.observe(start + Duration::from_secs(60), &snapshot(3));
        let model = Model::build(&snapshot(3), &Known::default(), names, &reachability);
        assert_eq!(model.reachability, BTreeMap::from([(5223, 1.0)]));
        // Each interface still reports its own half of the handshakes.
        assert_eq!(
            model.interfaces.keys().collect::<Vec<_>>(),
            ["eth1", "eth2"]
        );
    }

    #[test]
    fn unknown_interfaces_and_codes() {
        let mut snapshot = Snapshot::default();
        let (key, value) = entry(42, 0, Direction::None, Outcome::NotIp, [1, 60, 0, 0, 0, 0]);
        snapshot.entries.insert(key, value);
        // An APNs outcome without a direction and an unknown outcome code are skipped.
        let (key, value) = entry(42, 5223, Direction::None, Outcome::Pass, [5; 6]);
        snapshot.entries.insert(key, value);
        let mut bad = key;
        bad.outcome = 200;
        snapshot.entries.insert(bad, value);
        let model = Model::build(
            &snapshot,
            &Known::default(),
            names,
            &Reachability::new(Duration::from_secs(60)),
        );
        let unknown = &model.interfaces["42"];
        assert!(unknown.flows.is_empty());
        assert!(model.reachability.is_empty());
        assert_eq!(unknown.other[&Outcome::NotIp], 1);
    }

    #[test]
    fn known_interfaces_and_ports_are_there_from_the_start() {
        let known = Known {
            interfaces: vec!["lan0".into(), "eth1".into()],
            ports: vec![5223, 2197],
            redirect: Vec::new(),
        };
        let model = Model::build(
            &sample_snapshot(),
            &known,
            names,
            &Reachability::new(Duration::from_secs(60)),
        );
        let quiet = &model.interfaces["lan0"];
        assert_eq!(quiet.flows.len(), 4, "2 ports x 2 directions");
        for flow in quiet.flows.values() {
            assert_eq!(flow.total(), Volume::default());
            assert_eq!(flow.volume.len(), Verdict::ALL.len());
        }
        assert_eq!(quiet.policy_drops.len(), DropReason::ALL.len());
        // Known series never hide counted ones.
        let busy = &model.interfaces["eth1"];
        let key = FlowKey {
            direction: Direction::Outbound,
            port: 5223,
        };
        assert_eq!(busy.flows[&key].get(Verdict::Pass).packets, 7);
        assert!(busy.flows.contains_key(&FlowKey {
            direction: Direction::Inbound,
            port: 2197
        }));
    }

    #[test]
    fn selecting_an_interface() {
        let mut model = sample_model();
        model.select_interface("eth2");
        assert_eq!(model.interfaces.keys().collect::<Vec<_>>(), ["eth2"]);
        // The gateway-wide ratio stays: it belongs to no single interface.
        assert_eq!(model.reachability, BTreeMap::from([(5223, 0.5)]));
        assert_eq!(model.lost, 11);
        model.select_interface("eth9");
        assert_eq!(
            model.interfaces,
            BTreeMap::from([("eth9".to_owned(), InterfaceModel::default())])
        );
        assert_eq!(model.reachability, BTreeMap::from([(5223, 0.5)]));
    }

    #[test]
    fn loopback_resolves() {
        assert_eq!(interface_name(1), "lo");
        assert_eq!(interface_name(u32::MAX), u32::MAX.to_string());
    }

    #[test]
    fn labels_come_from_the_datapath_words() {
        assert_eq!(Verdict::Pass.as_str(), "pass");
        assert_eq!(Verdict::Fastpath.as_str(), "fastpath");
        assert_eq!(
            OTHER_CLASSES.map(Outcome::as_str),
            ["not_ip", "not_apns", "fragment", "malformed", "unfinished"]
        );
    }
}
