//! Prometheus exposition of a [`Model`] (text format 0.0.4, what `/metrics` serves and the
//! node_exporter textfile collector reads).
//!
//! The metric names and labels are a contract with dashboards and alerts:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `apns_packets_total`, `apns_bytes_total` | interface, direction (outbound, inbound), port, verdict (pass, drop, fastpath, fastpath_tc) | APNs traffic; bytes are frame bytes from the Ethernet header on |
//! | `apns_tcp_events_total` | interface, direction, port, event (syn, synack, rst, fin) | TCP flags on APNs traffic, over all verdicts |
//! | `apns_policy_drops_total` | interface, reason (pinhole, provider, inbound_open, unfinished) | packets the policy dropped |
//! | `apns_inbound_opens_total` | interface, port, verdict (pass, drop) | inbound connection attempts on an APNs port (SYNs from Apple's side); only ports that saw one |
//! | `apns_other_packets_total` | interface, class (not_ip, not_apns, fragment, malformed, unfinished) | packets that are not APNs traffic |
//! | `apns_fastpath_packets_total` | interface, path (xdp_redirect, tc_redirect, stack) | per `redirect` interface, how its APNs packets left: forwarded by XDP, forwarded by the TC step (next hop not resolved yet), or left to the kernel stack |
//! | `apns_fastpath_fallback_packets_total` | interface, reason (`apns_common::fastpath::Fallback`: ttl, frag_needed, blackhole, ...) | the `stack` packets above by reason; where the stack path is blocked, packets of the reasons docs/fastpath.md marks *lost* are dropped there |
//! | `apns_fastpath_tc_handoffs_total` | interface, result (forwarded, refused) | the TC program's own count of the packets handed to it (a cross-check of `tc_redirect`, by segment) |
//! | `apns_uncounted_packets_total` | — | packets not counted because the counter map was full: non-zero means every other counter is an undercount |
//! | `apns_reachability_ratio` | interface (always `all`), port | SYN-ACKs in / SYNs out over the reachability window, for the whole gateway; absent when no SYN was sent in it |
//! | `apns_allowlist_prefixes` | family (ipv4, ipv6) | prefixes in the active allow-list |
//! | `apns_datapath_attached` | interface, xdp_mode | 1 if the interface's link is live, 0 if its pin is stale or the interface is missing (wanted, but no such interface: xdp_mode `none`) |
//! | `apns_policy_generation` | — | the active policy generation (0 or 1); flips on every policy change |
//! | `apns_config_applied_timestamp_seconds` | — | when `run` last applied its config (start-up or SIGHUP) |
//! | `apns_config_last_reload_successful` | — | 0 if the last SIGHUP reload was refused |
//! | `apns_config_reload_failures_total` | — | SIGHUP reloads refused since `run` started |
//! | `apns_policy_sources_info` | config_file, apple, allow_files, provider_files | where `run`'s policy comes from; always 1 |
//! | `apns_agent_info` | version, program_tag | always 1 |
//! | `apns_kernel_feature` | feature (xdp_meta, fib_lookup, redirect_neigh, coarse_clock, xdp_link, tcx) | 1 if the kernel has the optional feature and it is not switched off, else 0 (docs/platform.md) |
//! | `apns_connections_open` | interface, port | APNs connections open now, by device-facing interface and Apple port (docs/clients.md) |
//! | `apns_connections_ended_total` | reason (fin_device, fin_apple, rst_device, rst_apple, evicted) | connections by how they ended: the first FIN or RST and its side, or evicted from the table before their end was seen |
//! | `apns_connection_lifetime_seconds` | — | histogram of ended connections' lifetimes, first packet to end |
//! | `apns_handshake_failures_total` | port, reason (unanswered, refused, incomplete) | failed handshakes since the agent started |
//! | `apns_port443_connections_total` | kind (fallback, direct) | 443 connections since the agent started: right after failed 5223 handshakes of the same device, or not |
//! | `apns_unhealthy_devices` | finding (no_answer, reset_by_network, reset_by_apple, never_connected, cut_while_idle, falls_back_to_443) | devices with that finding now |
//! | `apns_conntrack_entries`, `apns_conntrack_size` | — | connections the table holds now, and at most |
//! | `apns_conntrack_evictions_total` | — | connections the table evicted for room |
//! | `apns_conntrack_untracked_total` | — | connections the kernel could not add to the table |
//!
//! `apns_reachability_ratio` is gateway-wide: a SYN and its SYN-ACK enter the gateway on
//! different interfaces (see [`crate::telemetry::reachability`]), so its `interface` label
//! is [`ALL_INTERFACES`].
//!
//! `apns_uncounted_packets_total` was specified as `apns_counter_updates_lost_total`, but
//! promtool's lint refuses a metric name containing its own type ("counter").
//!
//! The counters are the kernel's own totals since the datapath was loaded. The datapath is
//! pinned and outlives the agent, so the totals survive agent restarts; they are exported
//! as they are (a counter whose value is the absolute total), never as deltas kept by the
//! agent. They reset only when the datapath is unloaded, which Prometheus' `rate()` handles
//! as any counter reset.
//!
//! Built with prometheus-client's [`Collector`] and `Const*` metrics — the crate's way for
//! values read from elsewhere at scrape time — into a fresh registry per render: a render
//! costs O(counter and connection map size) and keeps no state, and the output follows the model's sorted
//! order, so it is stable from one scrape (or textfile write) to the next.

use std::borrow::Cow;

use anyhow::Context as _;
use std::collections::BTreeMap;

use apns_common::label::Label as _;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info as InfoMetric, MetricType},
    registry::Registry,
};

use crate::{
    datapath::features::{Feature, Features},
    datapath::{
        policy::Policy,
        status::{InterfaceStatus, PathReport},
    },
    telemetry::{
        clients::{Finding, HandshakeFailure, Report, Tally},
        model::Model,
        ConfigRecord,
    },
};

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The `interface` label of `apns_reachability_ratio`, which is computed over every interface.
///
/// XDP sees packets only where they enter the gateway: a device's SYN is counted on a LAN
/// interface and Apple's SYN-ACK on the WAN interface, and without connection tracking the
/// SYN-ACK cannot be attributed to a LAN interface, so the ratio exists only for the gateway
/// as a whole. The label is kept, since it is part of the metric contract (dashboards and
/// alerts select and group on it), with a value no real interface can have: Linux refuses
/// "all" as an interface name (the `net.*.conf.all` sysctls own it).
pub const ALL_INTERFACES: &str = "all";

/// What the exposition says about the agent rather than the traffic.
#[derive(Clone, Debug)]
pub struct Info {
    /// Agent version.
    pub version: String,
    /// Tag of the loaded XDP program, 16 hex digits as `status` shows it.
    pub program_tag: String,
    /// IPv4 prefixes in the active allow-list.
    pub allow_ipv4: usize,
    /// IPv6 prefixes in the active allow-list.
    pub allow_ipv6: usize,
    /// Interfaces with a link pin.
    pub interfaces: Vec<InterfaceStatus>,
    /// The active policy generation (0 or 1): it flips on every policy change, by `run` or
    /// a subcommand.
    pub generation: u32,
    /// What `run` says of the configuration it applies.
    pub config: ConfigRecord,
    /// What the connection table shows (`/metrics` always has it; `None` renders none of
    /// its families).
    pub connections: Option<Connections>,
    /// The optional kernel features (`datapath::features`), by label: present and usable.
    pub kernel_features: Vec<(&'static str, bool)>,
}

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
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Info {
    /// This agent's version, the pinned program's tag (from `Datapath::status`), the active
    /// policy (`PolicyMaps::read_active`) and `Datapath::interface_status`.
    pub fn new(program_tag: &str, policy: &Policy, interfaces: Vec<InterfaceStatus>) -> Info {
        Info {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            program_tag: program_tag.to_owned(),
            allow_ipv4: policy.allow_v4().count(),
            allow_ipv6: policy.allow_v6().count(),
            interfaces,
            generation: 0,
            config: ConfigRecord::default(),
            connections: None,
            kernel_features: Features::probe()
                .map(|features| {
                    Feature::ALL
                        .iter()
                        .map(|&feature| (feature.as_str(), features.has(feature)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// Renders `model` and `info` in the Prometheus text format.
pub fn render(model: &Model, info: &Info) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    // The registry wants an owned, 'static collector; a clone costs no more than the
    // rendering itself.
    registry.register_collector(Box::new(Exposition {
        model: model.clone(),
        info: info.clone(),
    }));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).context("encoding the Prometheus metrics")?;
    Ok(text)
}

#[derive(Debug)]
struct Exposition {
    model: Model,
    info: Info,
}

/// Label pairs of one sample, in exposition order.
type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

/// Writes one metric family: HELP and TYPE, then one sample per label set. Counter names go
/// without `_total`: the encoder appends it to counters.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: Vec<(Labels, M)>,
) -> std::fmt::Result {
    let mut metric_encoder = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(metric_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        use MetricType::{Counter, Gauge};
        let (model, info) = (&self.model, &self.info);
        let (mut packets, mut bytes, mut tcp) = (Vec::new(), Vec::new(), Vec::new());
        let (mut drops, mut other, mut opens) = (Vec::new(), Vec::new(), Vec::new());
        let (mut paths, mut fallbacks, mut handoffs) = (Vec::new(), Vec::new(), Vec::new());
        for (name, interface) in &model.interfaces {
            let name = Cow::from(name.as_str());
            for (key, flow) in &interface.flows {
                let labels = |last: &'static str, value: &'static str| -> Labels {
                    vec![
                        ("interface", name.clone()),
                        ("direction", key.direction.as_str().into()),
                        ("port", key.port.to_string().into()),
                        (last, value.into()),
                    ]
                };
                for (verdict, volume) in &flow.volume {
                    let verdict = verdict.as_str();
                    packets.push((
                        labels("verdict", verdict),
                        ConstCounter::new(volume.packets),
                    ));
                    bytes.push((labels("verdict", verdict), ConstCounter::new(volume.bytes)));
                }
                for (event, count) in &flow.tcp {
                    tcp.push((labels("event", event.as_str()), ConstCounter::new(*count)));
                }
            }
            for (reason, count) in &interface.policy_drops {
                let labels = vec![
                    ("interface", name.clone()),
                    ("reason", reason.as_str().into()),
                ];
                drops.push((labels, ConstCounter::new(*count)));
            }
            for (&(port, verdict), count) in &interface.inbound_opens {
                let labels = vec![
                    ("interface", name.clone()),
                    ("port", port.to_string().into()),
                    ("verdict", verdict.as_str().into()),
                ];
                opens.push((labels, ConstCounter::new(*count)));
            }
            for (class, count) in &interface.other {
                let labels = vec![
                    ("interface", name.clone()),
                    ("class", class.as_str().into()),
                ];
                other.push((labels, ConstCounter::new(*count)));
            }
            if let Some(totals) = &interface.paths {
                let report = PathReport::new(totals);
                let labelled = |label: &'static str, value: &'static str| -> Labels {
                    vec![("interface", name.clone()), (label, value.into())]
                };
                for (path, packets) in [
                    ("xdp_redirect", report.xdp_redirect),
                    ("tc_redirect", report.tc_redirect),
                    ("stack", report.stack),
                ] {
                    paths.push((labelled("path", path), ConstCounter::new(packets)));
                }
                for (reason, packets) in report.stack_by_reason {
                    fallbacks.push((labelled("reason", reason), ConstCounter::new(packets)));
                }
                for (result, packets) in report.tc_handoffs {
                    handoffs.push((labelled("result", result), ConstCounter::new(packets)));
                }
            }
        }
        let reachability = model
            .reachability
            .iter()
            .map(|(port, ratio)| {
                let labels = vec![
                    ("interface", ALL_INTERFACES.into()),
                    ("port", port.to_string().into()),
                ];
                (labels, ConstGauge::new(*ratio))
            })
            .collect();
        let allowlist = [("ipv4", info.allow_ipv4), ("ipv6", info.allow_ipv6)]
            .map(|(family, count)| (vec![("family", family.into())], ConstGauge::new(count)));
        let attached = info
            .interfaces
            .iter()
            .map(|interface| {
                let labels = vec![
                    ("interface", interface.interface.as_str().into()),
                    ("xdp_mode", interface.xdp_mode.into()),
                ];
                (labels, ConstGauge::new(u32::from(interface.attached)))
            })
            .collect();

        family(
            &mut encoder,
            "apns_packets",
            "APNs packets by interface, direction (outbound: toward Apple), APNs port and verdict, since the datapath was loaded",
            Counter,
            packets,
        )?;
        family(
            &mut encoder,
            "apns_bytes",
            "APNs frame bytes (Ethernet header included) by interface, direction, APNs port and verdict, since the datapath was loaded",
            Counter,
            bytes,
        )?;
        family(
            &mut encoder,
            "apns_tcp_events",
            "TCP segments of APNs traffic by flag: syn (SYN without ACK, a connection attempt), synack (answered attempt), rst, fin; over all verdicts",
            Counter,
            tcp,
        )?;
        family(
            &mut encoder,
            "apns_policy_drops",
            "Packets dropped by the enforce-mode policy: pinhole (TCP to a pinhole port of an address outside the allow-list), provider (to a provider port from outside the provider list), inbound_open (a connection attempt from Apple's side, which APNs never makes), unfinished (headers the parser cannot finish that could hide an APNs-port packet: a first fragment without the whole TCP header, an IPv6 header chain too long to follow)",
            Counter,
            drops,
        )?;
        family(
            &mut encoder,
            "apns_inbound_opens",
            "Inbound connection attempts on an APNs port (a SYN without ACK from Apple's addresses, from an APNs port or to one inside: APNs connections are only ever opened from inside), by verdict: pass in monitor mode, drop in enforce mode",
            Counter,
            opens,
        )?;
        family(
            &mut encoder,
            "apns_other_packets",
            "Packets that are not APNs traffic: not_ip, not_apns (IP touching no rule), fragment (non-first IP fragment), malformed, unfinished (headers that could hide an APNs-port packet, passed in monitor mode; dropped in enforce mode, see apns_policy_drops_total)",
            Counter,
            other,
        )?;
        family(
            &mut encoder,
            "apns_fastpath_packets",
            "APNs packets that arrived on a redirect fast-path interface, by how they left: xdp_redirect (forwarded by XDP), tc_redirect (forwarded by the TC step: the next hop's neighbour was not resolved yet), stack (left to the kernel stack, see apns_fastpath_fallback_packets_total)",
            Counter,
            paths,
        )?;
        family(
            &mut encoder,
            "apns_fastpath_fallback_packets",
            "APNs packets the redirect fast path left to the kernel stack, by reason; where the stack's forward path drops APNs, the reasons egress_unmanaged, vlan_tagged, tc_not_ready, no_metadata, unsupported_lwt and other are lost there; unsolicited (from Apple, of no flow a device opened: forged, or forgotten) is for the firewall to judge (docs/fastpath.md)",
            Counter,
            fallbacks,
        )?;
        family(
            &mut encoder,
            "apns_fastpath_tc_handoffs",
            "Packets the TC program of the redirect fast path was handed, by result: forwarded (bpf_redirect_neigh accepted them) or refused (should stay 0); counted by segment, a cross-check of path=tc_redirect",
            Counter,
            handoffs,
        )?;
        family(
            &mut encoder,
            "apns_uncounted_packets",
            "Packets not counted because the counter map was full; when non-zero every other counter is an undercount (more interfaces or ports than the map was sized for)",
            Counter,
            vec![(Labels::new(), ConstCounter::new(model.lost))],
        )?;
        family(
            &mut encoder,
            "apns_reachability_ratio",
            "SYN-ACKs from Apple / SYNs toward Apple (not counting policy-dropped SYNs) on an APNs port over the reachability window, summed over every interface (interface=\"all\": SYNs enter on LAN interfaces, SYN-ACKs on the WAN one); absent when no SYN was sent in the window",
            Gauge,
            reachability,
        )?;
        family(
            &mut encoder,
            "apns_allowlist_prefixes",
            "Prefixes in the active allow-list (Apple's addresses) by address family",
            Gauge,
            allowlist.into(),
        )?;
        family(
            &mut encoder,
            "apns_datapath_attached",
            "1 if the datapath is attached to the interface (its link is live), 0 if only a stale link pin is left or the interface is missing (the config or `attach` wants it but it does not exist; xdp_mode=\"none\")",
            Gauge,
            attached,
        )?;
        let kernel = info
            .kernel_features
            .iter()
            .map(|&(feature, present)| {
                (
                    vec![("feature", feature.into())],
                    ConstGauge::new(u32::from(present)),
                )
            })
            .collect();
        family(
            &mut encoder,
            "apns_kernel_feature",
            "Optional kernel features the datapath uses, as probed on this kernel: 1 present, 0 missing or switched off by APNS_AGENT_FEATURES_OFF (xdp_meta, fib_lookup, redirect_neigh, coarse_clock, xdp_link, tcx; docs/platform.md says what each changes)",
            Gauge,
            kernel,
        )?;
        family(
            &mut encoder,
            "apns_policy_generation",
            "The active policy generation (0 or 1); it flips on every policy change, by run or a subcommand, so changes() counts them",
            Gauge,
            vec![(Labels::new(), ConstGauge::new(i64::from(info.generation)))],
        )?;
        let config = &info.config;
        if let Some(at) = config.applied_at {
            let seconds = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            family(
                &mut encoder,
                "apns_config_applied_timestamp_seconds",
                "When run last applied its config (start-up or SIGHUP), Unix time",
                Gauge,
                vec![(Labels::new(), ConstGauge::new(seconds))],
            )?;
        }
        family(
            &mut encoder,
            "apns_config_last_reload_successful",
            "1 if the last SIGHUP reload was applied (or none was asked for), 0 if it was refused and the config in force is the one before",
            Gauge,
            vec![(Labels::new(), ConstGauge::new(i64::from(config.last_reload_ok)))],
        )?;
        family(
            &mut encoder,
            "apns_config_reload_failures",
            "SIGHUP reloads refused (a bad config or list file) since run started",
            Counter,
            vec![(Labels::new(), ConstCounter::new(config.reload_failures))],
        )?;
        let sources = InfoMetric::new(vec![
            ("config_file", config.file.clone().unwrap_or_default()),
            ("apple", config.apple.to_owned()),
            ("allow_files", config.allow_files.join(",")),
            ("provider_files", config.provider_files.join(",")),
        ]);
        let metric = encoder.encode_descriptor(
            "apns_policy_sources",
            "Where run's policy comes from: the config file (empty: built-in defaults), the Apple preset, the allow-list and provider list files; always 1",
            None,
            sources.metric_type(),
        )?;
        sources.encode(metric)?;
        if let Some(connections) = &info.connections {
            encode_connections(&mut encoder, connections)?;
        }
        // Named "apns_agent": the info type appends `_info`.
        let agent = InfoMetric::new(vec![
            ("version", info.version.as_str()),
            ("program_tag", info.program_tag.as_str()),
        ]);
        let metric = encoder.encode_descriptor(
            "apns_agent",
            "Agent version and the tag of the loaded XDP program; always 1",
            None,
            agent.metric_type(),
        )?;
        agent.encode(metric)
    }
}

/// One sample per item of `values`: its label `label` and its metric.
fn by_label<M>(
    label: &'static str,
    values: impl Iterator<Item = (&'static str, M)>,
) -> Vec<(Labels<'static>, M)> {
    values
        .map(|(value, metric)| (vec![(label, value.into())], metric))
        .collect()
}

/// The connection table's families (docs/clients.md).
fn encode_connections(
    encoder: &mut DescriptorEncoder,
    connections: &Connections,
) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let open = connections
        .open
        .iter()
        .map(|((interface, port), count)| {
            let labels: Labels = vec![
                ("interface", interface.clone().into()),
                ("port", port.to_string().into()),
            ];
            (labels, ConstGauge::new(*count as i64))
        })
        .collect();
    family(
        encoder,
        "apns_connections_open",
        "APNs connections open now (established, not ended, not abandoned for a newer one, a packet within stale_after), by the device-facing interface the device is behind and Apple port",
        Gauge,
        open,
    )?;
    let ended = by_label(
        "reason",
        connections
            .ended
            .iter()
            .map(|(reason, count)| (*reason, ConstCounter::new(*count))),
    );
    family(
        encoder,
        "apns_connections_ended",
        "APNs connections by how they ended: the first FIN or RST and its side (fin_device, fin_apple, rst_device, rst_apple), or evicted from the connection table before their end was seen; since the datapath was loaded",
        Counter,
        ended,
    )?;
    let (buckets, sum) = connections.lifetimes.clone();
    let metric = encoder.encode_descriptor(
        "apns_connection_lifetime_seconds",
        "Lifetimes of APNs connections whose end was seen, first packet to first FIN or RST; since the datapath was loaded",
        None,
        MetricType::Histogram,
    )?;
    ConstHistogram { buckets, sum }.encode(metric)?;
    let failures = connections
        .handshake_failures
        .iter()
        .map(|((port, reason), count)| {
            let labels: Labels = vec![
                ("port", port.to_string().into()),
                ("reason", (*reason).into()),
            ];
            (labels, ConstCounter::new(*count))
        })
        .collect();
    family(
        encoder,
        "apns_handshake_failures",
        "Failed APNs handshakes since the agent started: unanswered (no SYN-ACK or RST within handshake_timeout, or before the device tried again), refused (a RST instead of a SYN-ACK), incomplete (Apple answered, the device never completed the handshake)",
        Counter,
        failures,
    )?;
    let port443 = by_label(
        "kind",
        connections
            .port443
            .iter()
            .map(|(kind, count)| (*kind, ConstCounter::new(*count))),
    );
    family(
        encoder,
        "apns_port443_connections",
        "APNs connections to Apple on 443 since the agent started: fallback (opened within fallback_window of a failed 5223 handshake of the same device: 5223 is blocked on its path) or direct",
        Counter,
        port443,
    )?;
    let unhealthy = by_label(
        "finding",
        connections
            .unhealthy
            .iter()
            .map(|(finding, count)| (finding.as_str(), ConstGauge::new(*count as i64))),
    );
    family(
        encoder,
        "apns_unhealthy_devices",
        "Devices behind the gateway with that finding now (apns-agent clients; ok devices are not counted)",
        Gauge,
        unhealthy,
    )?;
    family(
        encoder,
        "apns_conntrack_entries",
        "APNs connections the connection table holds now",
        Gauge,
        vec![(Labels::new(), ConstGauge::new(connections.entries as i64))],
    )?;
    family(
        encoder,
        "apns_conntrack_size",
        "APNs connections the connection table holds at most (config [clients] table_size)",
        Gauge,
        vec![(Labels::new(), ConstGauge::new(i64::from(connections.size)))],
    )?;
    family(
        encoder,
        "apns_conntrack_evictions",
        "Connections the connection table evicted to make room for new ones (least recently used first); since the datapath was loaded",
        Counter,
        vec![(Labels::new(), ConstCounter::new(connections.evicted))],
    )?;
    family(
        encoder,
        "apns_conntrack_untracked",
        "Connections the kernel could not add to the connection table (not tracked); since the datapath was loaded",
        Counter,
        vec![(Labels::new(), ConstCounter::new(connections.untracked))],
    )
}

#[cfg(test)]
mod tests {
    use apns_common::fastpath::Fallback;

    use std::{
        io::Write as _,
        process::{Command, Stdio},
    };

    use super::*;
    use crate::{
        datapath::status::LinkState,
        telemetry::model::tests::{sample_model, sample_paths},
    };

    fn sample_info() -> Info {
        let status = |interface: &str, attached, xdp_mode| InterfaceStatus {
            interface: interface.to_owned(),
            attached,
            state: if attached {
                LinkState::Attached
            } else {
                LinkState::Unreadable
            },
            ifindex: None,
            current_name: None,
            xdp_mode,
            fastpath: None,
            role: None,
            program_id: None,
            link_id: None,
            link_pin: String::new(),
            paths: None,
        };
        Info::new(
            "00abcdef01234567",
            &Policy::apple_defaults(),
            vec![status("eth1", true, "native"), status("eth2", false, "skb")],
        )
    }

    fn rendered() -> String {
        render(&sample_model(), &sample_info()).unwrap()
    }

    #[test]
    fn exact_samples() {
        let text = rendered();
        let lines: Vec<&str> = text.lines().collect();
        let version = env!("CARGO_PKG_VERSION");
        for expected in [
            r#"apns_packets_total{interface="eth1",direction="outbound",port="5223",verdict="pass"} 7"#,
            r#"apns_packets_total{interface="eth1",direction="outbound",port="5223",verdict="drop"} 0"#,
            r#"apns_packets_total{interface="eth1",direction="outbound",port="2197",verdict="drop"} 4"#,
            r#"apns_packets_total{interface="eth1",direction="inbound",port="443",verdict="pass"} 12"#,
            r#"apns_packets_total{interface="eth2",direction="inbound",port="5223",verdict="pass"} 1"#,
            r#"apns_bytes_total{interface="eth1",direction="outbound",port="2197",verdict="pass"} 300"#,
            r#"apns_bytes_total{interface="eth1",direction="inbound",port="443",verdict="fastpath"} 0"#,
            r#"apns_tcp_events_total{interface="eth1",direction="outbound",port="2197",event="syn"} 5"#,
            r#"apns_tcp_events_total{interface="eth1",direction="inbound",port="5223",event="synack"} 3"#,
            r#"apns_tcp_events_total{interface="eth1",direction="outbound",port="5223",event="fin"} 2"#,
            r#"apns_policy_drops_total{interface="eth1",reason="pinhole"} 6"#,
            r#"apns_policy_drops_total{interface="eth1",reason="provider"} 4"#,
            r#"apns_policy_drops_total{interface="eth2",reason="provider"} 0"#,
            r#"apns_policy_drops_total{interface="eth1",reason="inbound_open"} 3"#,
            r#"apns_inbound_opens_total{interface="eth1",port="5223",verdict="drop"} 3"#,
            r#"apns_inbound_opens_total{interface="eth2",port="443",verdict="pass"} 2"#,
            r#"apns_other_packets_total{interface="eth1",class="not_apns"} 100"#,
            r#"apns_other_packets_total{interface="eth2",class="fragment"} 8"#,
            r#"apns_uncounted_packets_total 11"#,
            r#"apns_reachability_ratio{interface="all",port="5223"} 0.5"#,
            r#"apns_allowlist_prefixes{family="ipv4"} 1"#,
            r#"apns_allowlist_prefixes{family="ipv6"} 4"#,
            r#"apns_datapath_attached{interface="eth1",xdp_mode="native"} 1"#,
            r#"apns_datapath_attached{interface="eth2",xdp_mode="skb"} 0"#,
            "# TYPE apns_packets_total counter",
            "# TYPE apns_reachability_ratio gauge",
            "# TYPE apns_agent_info gauge",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{text}"
            );
        }
        let info =
            format!(r#"apns_agent_info{{version="{version}",program_tag="00abcdef01234567"}} 1"#);
        assert!(
            lines.contains(&info.as_str()),
            "missing {info:?} in:\n{text}"
        );
        // 7 flows (5 on eth1, 2 on eth2) x 4 verdicts, x 4 events.
        let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("apns_packets_total{"), 28);
        // No interface has a redirect fast path: no path series.
        assert_eq!(count("apns_fastpath_"), 0);
        assert_eq!(count("apns_tcp_events_total{"), 28);
        // One gateway-wide ratio per port; ports without a SYN in the window have no ratio
        // at all, never NaN.
        assert_eq!(count("apns_reachability_ratio{"), 1);
        assert!(!text.contains("NaN"));
        assert!(lines.iter().all(|l| !l.contains("_total_total")));
    }

    #[test]
    fn every_metric_has_help() {
        let text = rendered();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        assert!(families.len() > 10, "{text}");
        for name in families {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no help for {name}"
            );
        }
    }

    #[test]
    fn redirect_paths_by_interface_and_reason() {
        let mut model = sample_model();
        let mut paths = sample_paths(12, Fallback::EgressUnmanaged, 4);
        paths.counters.fallback[Fallback::Ttl as usize] = 1;
        model.interfaces.get_mut("eth1").unwrap().paths = Some(paths);
        let text = render(&model, &sample_info()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            r#"apns_fastpath_packets_total{interface="eth1",path="xdp_redirect"} 12"#,
            r#"apns_fastpath_packets_total{interface="eth1",path="tc_redirect"} 2"#,
            r#"apns_fastpath_packets_total{interface="eth1",path="stack"} 5"#,
            r#"apns_fastpath_fallback_packets_total{interface="eth1",reason="ttl"} 1"#,
            r#"apns_fastpath_fallback_packets_total{interface="eth1",reason="egress_unmanaged"} 4"#,
            r#"apns_fastpath_fallback_packets_total{interface="eth1",reason="frag_needed"} 0"#,
            r#"apns_fastpath_tc_handoffs_total{interface="eth1",result="forwarded"} 2"#,
            r#"apns_fastpath_tc_handoffs_total{interface="eth1",result="refused"} 0"#,
            r#"apns_packets_total{interface="eth1",direction="outbound",port="5223",verdict="fastpath_tc"} 0"#,
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{text}"
            );
        }
        // Every reason of the one redirect interface, none of the other.
        let count = |prefix: &str| lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(
            count("apns_fastpath_fallback_packets_total{"),
            Fallback::ALL.len()
        );
        assert!(!text.contains(r#"apns_fastpath_packets_total{interface="eth2""#));
        promtool(&text);
    }

    #[test]
    fn an_empty_model_renders() {
        let text = render(&Model::default(), &sample_info()).unwrap();
        assert!(text.contains("apns_uncounted_packets_total 0\n"));
        assert!(!text.contains("apns_packets_total{"));
        promtool(&text);
    }

    /// `promtool check metrics` accepts the exposition, lint included. promtool is installed
    /// wherever tests run (`cargo xtask setup`), so a missing one fails the test.
    fn promtool(text: &str) {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool runs (installed by `cargo xtask setup`)");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("feeding promtool");
        let output = child.wait_with_output().expect("promtool finishes");
        assert!(
            output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
            "promtool check metrics: {}\n{}{}\non:\n{text}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    fn promtool_accepts_it() {
        promtool(&rendered());
    }

    /// A connection table's view with a sample in every family.
    pub(crate) fn sample_connections() -> Connections {
        let mut lifetimes = vec![(1.0, 2), (2.0, 0), (4.0, 1)];
        lifetimes.push((f64::INFINITY, 1));
        Connections {
            size: 65_536,
            entries: 12,
            evicted: 3,
            untracked: 0,
            open: BTreeMap::from([
                (("eth1".to_owned(), 5223), 4),
                (("eth1".to_owned(), 443), 0),
            ]),
            ended: BTreeMap::from([
                ("fin_device", 2),
                ("fin_apple", 0),
                ("rst_device", 0),
                ("rst_apple", 2),
                ("evicted", 1),
            ]),
            lifetimes: (lifetimes, 100_003.5),
            handshake_failures: BTreeMap::from([((5223, "refused"), 3), ((5223, "unanswered"), 0)]),
            port443: BTreeMap::from([("fallback", 1), ("direct", 5)]),
            unhealthy: BTreeMap::from([(Finding::ResetByApple, 1), (Finding::CutWhileIdle, 2)]),
        }
    }

    #[test]
    fn connection_table_families() {
        let mut info = sample_info();
        info.connections = Some(sample_connections());
        let text = render(&sample_model(), &info).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            r#"apns_connections_open{interface="eth1",port="5223"} 4"#,
            r#"apns_connections_open{interface="eth1",port="443"} 0"#,
            r#"apns_connections_ended_total{reason="rst_apple"} 2"#,
            r#"apns_connections_ended_total{reason="evicted"} 1"#,
            // Cumulative buckets, the last one +Inf.
            r#"apns_connection_lifetime_seconds_bucket{le="1"} 2"#,
            r#"apns_connection_lifetime_seconds_bucket{le="4"} 3"#,
            r#"apns_connection_lifetime_seconds_bucket{le="+Inf"} 4"#,
            "apns_connection_lifetime_seconds_count 4",
            "apns_connection_lifetime_seconds_sum 100003.5",
            r#"apns_handshake_failures_total{port="5223",reason="refused"} 3"#,
            r#"apns_port443_connections_total{kind="fallback"} 1"#,
            r#"apns_unhealthy_devices{finding="cut_while_idle"} 2"#,
            "apns_conntrack_entries 12",
            "apns_conntrack_size 65536",
            "apns_conntrack_evictions_total 3",
            "apns_conntrack_untracked_total 0",
            "# TYPE apns_connection_lifetime_seconds histogram",
        ] {
            assert!(
                lines.contains(&expected),
                "missing {expected:?} in:\n{text}"
            );
        }
        promtool(&text);
    }
}
