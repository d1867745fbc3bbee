//! The connection table's families (docs/clients.md): what [`Connections`] holds, built from
//! a clients [`Report`] and the agent's [`Tally`].

use std::collections::BTreeMap;

use apns_common::label::Label as _;
use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

use super::{family, single, Values};
use crate::telemetry::{
    clients::{Finding, HandshakeFailure, Report, Tally},
    families,
};

/// What the connection table says, for the exposition (docs/clients.md): built from a
/// [`Report`] and the agent's [`Tally`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Connections {
    pub size: u32,
    pub entries: u64,
    pub evicted: u64,
    pub untracked: u64,
    /// (device-facing interface, Apple port) → open connections.
    pub open: BTreeMap<(String, u16), u64>,
    /// Reason → connections ended.
    pub ended: BTreeMap<&'static str, u64>,
    /// Lifetimes: (upper bound in seconds, count) per bucket, and their sum in seconds.
    pub lifetimes: (Vec<(f64, u64)>, f64),
    /// (port, reason) → failed handshakes since the agent started.
    pub handshake_failures: BTreeMap<(u16, &'static str), u64>,
    /// `fallback` | `direct` → 443 connections since the agent started.
    pub port443: BTreeMap<&'static str, u64>,
    /// Finding → devices, every finding but `ok`.
    pub unhealthy: BTreeMap<Finding, u64>,
}

impl Connections {
    /// The exposition's view of `report` and `tally`. `devices` (the device-facing
    /// interfaces) and `ports` (the policy's) give every open-connection and failure series
    /// from the start, at zero.
    pub fn of(report: &Report, tally: &Tally, devices: &[String], ports: &[u16]) -> Connections {
        let mut open = report.open.clone();
        let mut handshake_failures = tally.handshake_failures.clone();
        for &port in ports {
            for interface in devices {
                open.entry((interface.clone(), port)).or_default();
            }
            for reason in HandshakeFailure::ALL {
                handshake_failures
                    .entry((port, reason.as_str()))
                    .or_default();
            }
        }
        Connections {
            size: report.table.size,
            entries: report.table.entries,
            evicted: report.table.evicted,
            untracked: report.table.failed,
            open,
            ended: report.ended.clone(),
            lifetimes: report.lifetimes(),
            handshake_failures,
            port443: tally.connections_443.clone(),
            unhealthy: report
                .findings()
                .into_iter()
                .filter(|(finding, _)| *finding != Finding::Ok)
                .collect(),
        }
    }
}

/// A histogram read from elsewhere (the datapath's lifetime buckets): per-bucket counts, as
/// prometheus-client's encoder wants them (it accumulates).
#[derive(Debug)]
struct ConstHistogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let count = self.buckets.iter().map(|(_, count)| count).sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum, count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One sample per entry of `counts`, labelled by its key.
fn by_key<M>(
    counts: &BTreeMap<&'static str, u64>,
    metric: impl Fn(u64) -> M,
) -> Vec<(Values<'static>, M)> {
    counts
        .iter()
        .map(|(key, count)| (vec![(*key).into()], metric(*count)))
        .collect()
}

/// The connection table's families, in [`families::ALL`]' order.
pub(super) fn encode(
    encoder: &mut DescriptorEncoder,
    connections: &Connections,
) -> std::fmt::Result {
    let open = connections.open.iter().map(|((interface, port), count)| {
        let values: Values = vec![interface.as_str().into(), port.to_string().into()];
        (values, ConstGauge::new(*count as i64))
    });
    family(encoder, &families::CONNECTIONS_OPEN, open)?;
    let ended = by_key(&connections.ended, ConstCounter::new);
    family(encoder, &families::CONNECTIONS_ENDED, ended)?;
    let lifetimes = &families::CONNECTION_LIFETIMES;
    let (buckets, sum) = connections.lifetimes.clone();
    ConstHistogram { buckets, sum }.encode(encoder.encode_descriptor(
        lifetimes.encoder_name(),
        lifetimes.help,
        None,
        lifetimes.metric_type(),
    )?)?;
    let failures = connections
        .handshake_failures
        .iter()
        .map(|((port, reason), count)| {
            let values: Values = vec![port.to_string().into(), (*reason).into()];
            (values, ConstCounter::new(*count))
        });
    family(encoder, &families::HANDSHAKE_FAILURES, failures)?;
    let port443 = by_key(&connections.port443, ConstCounter::new);
    family(encoder, &families::PORT443_CONNECTIONS, port443)?;
    let unhealthy = connections.unhealthy.iter().map(|(finding, count)| {
        (
            vec![finding.as_str().into()],
            ConstGauge::new(*count as i64),
        )
    });
    family(encoder, &families::UNHEALTHY_DEVICES, unhealthy)?;
    let entries = ConstGauge::new(connections.entries as i64);
    single(encoder, &families::CONNTRACK_ENTRIES, entries)?;
    let size = ConstGauge::new(i64::from(connections.size));
    single(encoder, &families::CONNTRACK_SIZE, size)?;
    let evicted = ConstCounter::new(connections.evicted);
    single(encoder, &families::CONNTRACK_EVICTIONS, evicted)?;
    let untracked = ConstCounter::new(connections.untracked);
    single(encoder, &families::CONNTRACK_UNTRACKED, untracked)
}
