//! The traffic's families: a [`Model`]'s counters, by interface, and the gateway-wide
//! reachability ratio.

use apns_common::label::Label as _;
use prometheus_client::{
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::{family, single, Values, ALL_INTERFACES};
use crate::{
    datapath::{counters::RedirectPath, status::PathReport},
    telemetry::{
        families,
        model::{InterfaceModel, Model},
    },
};

/// Samples of one counter family.
type Counters<'a> = Vec<(Values<'a>, ConstCounter)>;

/// The samples of every per-interface family, gathered in one pass over the model.
#[derive(Default)]
struct Samples<'a> {
    packets: Counters<'a>,
    bytes: Counters<'a>,
    tcp: Counters<'a>,
    drops: Counters<'a>,
    opens: Counters<'a>,
    other: Counters<'a>,
    paths: Counters<'a>,
    fallbacks: Counters<'a>,
    handoffs: Counters<'a>,
}

impl<'a> Samples<'a> {
    /// Adds the flows' families (packets, bytes, TCP events) of the interface `name`.
    fn add_flows(&mut self, name: &'a str, interface: &InterfaceModel) {
        for (key, flow) in &interface.flows {
            let values = |last: &'static str| -> Values<'a> {
                vec![
                    name.into(),
                    key.direction.as_str().into(),
                    key.port.to_string().into(),
                    last.into(),
                ]
            };
            for (verdict, volume) in &flow.volume {
                let verdict = verdict.as_str();
                let packets = ConstCounter::new(volume.packets);
                self.packets.push((values(verdict), packets));
                self.bytes
                    .push((values(verdict), ConstCounter::new(volume.bytes)));
            }
            for (event, count) in &flow.tcp {
                self.tcp
                    .push((values(event.as_str()), ConstCounter::new(*count)));
            }
        }
    }

    /// Adds the policy's and the classes' families of the interface `name`.
    fn add_policy(&mut self, name: &'a str, interface: &InterfaceModel) {
        for (reason, count) in &interface.policy_drops {
            let values = vec![name.into(), reason.as_str().into()];
            self.drops.push((values, ConstCounter::new(*count)));
        }
        for (&(port, verdict), count) in &interface.inbound_opens {
            let values = vec![
                name.into(),
                port.to_string().into(),
                verdict.as_str().into(),
            ];
            self.opens.push((values, ConstCounter::new(*count)));
        }
        for (class, count) in &interface.other {
            let values = vec![name.into(), class.as_str().into()];
            self.other.push((values, ConstCounter::new(*count)));
        }
    }

    /// Adds the redirect fast path's families of the interface `name`, if it has one.
    fn add_paths(&mut self, name: &'a str, interface: &InterfaceModel) {
        let Some(totals) = &interface.paths else {
            return;
        };
        let report = PathReport::new(totals);
        let values = |value: &'static str| -> Values<'a> { vec![name.into(), value.into()] };
        for &path in RedirectPath::ALL {
            self.paths.push((
                values(path.as_str()),
                ConstCounter::new(totals.packets(path)),
            ));
        }
        for (reason, packets) in report.stack_by_reason {
            self.fallbacks
                .push((values(reason), ConstCounter::new(packets)));
        }
        for (result, packets) in report.tc_handoffs {
            self.handoffs
                .push((values(result), ConstCounter::new(packets)));
        }
    }
}

/// The traffic's families, in [`families::ALL`]' order.
pub(super) fn encode(encoder: &mut DescriptorEncoder, model: &Model) -> std::fmt::Result {
    let mut samples = Samples::default();
    for (name, interface) in &model.interfaces {
        let name = name.as_str();
        samples.add_flows(name, interface);
        samples.add_policy(name, interface);
        samples.add_paths(name, interface);
    }
    for (of, samples) in [
        (&families::PACKETS, samples.packets),
        (&families::BYTES, samples.bytes),
        (&families::TCP_EVENTS, samples.tcp),
        (&families::POLICY_DROPS, samples.drops),
        (&families::INBOUND_OPENS, samples.opens),
        (&families::OTHER_PACKETS, samples.other),
        (&families::FASTPATH_PACKETS, samples.paths),
        (&families::FASTPATH_FALLBACKS, samples.fallbacks),
        (&families::FASTPATH_TC_HANDOFFS, samples.handoffs),
    ] {
        family(encoder, of, samples)?;
    }
    let lost = ConstCounter::new(model.lost);
    single(encoder, &families::UNCOUNTED_PACKETS, lost)?;
    let reachability = model.reachability.iter().map(|(port, ratio)| {
        let values: Values = vec![ALL_INTERFACES.into(), port.to_string().into()];
        (values, ConstGauge::new(*ratio))
    });
    family(encoder, &families::REACHABILITY_RATIO, reachability)
}
