//! Prometheus exposition of a [`Model`] (text format 0.0.4, what `/metrics` serves and the
//! node_exporter textfile collector reads).
//!
//! Every family's name, type, labels and help text come from [`families`]; docs/metrics.md
//! tables them for operators (a test holds both, and packaging/'s rules and dashboards, to
//! the same list). Here each family gets its samples: [`traffic`] from the counters,
//! [`connections`] from the connection table, this module what the agent says of itself.
//!
//! `apns_reachability_ratio` is gateway-wide: a SYN and its SYN-ACK enter the gateway on
//! different interfaces (see [`crate::telemetry::reachability`]), so its `interface` label
//! is [`ALL_INTERFACES`].
//!
//! The counters are the kernel's own totals since the datapath was loaded. The datapath is
//! pinned and outlives the agent, so the totals survive agent restarts; they are exported
//! as they are (a counter whose value is the absolute total), never as deltas kept by the
//! agent. They reset only when the datapath is unloaded, which Prometheus' `rate()` handles
//! as any counter reset.
//!
//! Built with prometheus-client's [`Collector`] and `Const*` metrics — the crate's way for
//! values read from elsewhere at scrape time — into a fresh registry per render: a render
//! costs O(counter and connection map size) and keeps no state, and the output follows the
//! model's sorted order, so it is stable from one scrape (or textfile write) to the next.

mod connections;
mod traffic;

use std::borrow::Cow;

use anyhow::Context as _;
use apns_common::label::Label as _;
use prometheus_client::{
    collector::Collector,
    encoding::{prometheus_text, DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info as InfoMetric},
    registry::Registry,
};

pub use connections::Connections;

use crate::{
    datapath::features::{Feature, Features},
    datapath::{policy::Policy, status::InterfaceStatus},
    telemetry::{
        families::{self, Family},
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

/// Label values of one sample, in the order of its family's label names.
type Values<'a> = Vec<Cow<'a, str>>;

/// Writes one metric family: HELP and TYPE from the table, then one sample per set of label
/// values. A sample with more or fewer values than the family has labels is an error.
fn family<'a, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    of: &Family,
    samples: impl IntoIterator<Item = (Values<'a>, M)>,
) -> std::fmt::Result {
    let mut metric_encoder =
        encoder.encode_descriptor(of.encoder_name(), of.help, None, of.metric_type())?;
    for (values, metric) in samples {
        if values.len() != of.labels.len() {
            return Err(std::fmt::Error);
        }
        let labels: Vec<(&str, Cow<str>)> = of.labels.iter().copied().zip(values).collect();
        metric.encode(metric_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one sample without labels.
fn single<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    of: &Family,
    metric: M,
) -> std::fmt::Result {
    family(encoder, of, [(Values::new(), metric)])
}

/// An info family: its one sample's label values, always 1.
fn info(encoder: &mut DescriptorEncoder, of: &Family, values: Vec<String>) -> std::fmt::Result {
    if values.len() != of.labels.len() {
        return Err(std::fmt::Error);
    }
    let info = InfoMetric::new(of.labels.iter().copied().zip(values).collect::<Vec<_>>());
    info.encode(encoder.encode_descriptor(of.encoder_name(), of.help, None, of.metric_type())?)
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let info = &self.info;
        traffic::encode(&mut encoder, &self.model)?;
        encode_datapath(&mut encoder, info)?;
        encode_config(&mut encoder, &info.config)?;
        if let Some(connections) = &info.connections {
            connections::encode(&mut encoder, connections)?;
        }
        let agent = vec![info.version.clone(), info.program_tag.clone()];
        self::info(&mut encoder, &families::AGENT, agent)
    }
}

/// The datapath's families: the allow-list, the links, the kernel's features, the policy
/// generation.
fn encode_datapath(encoder: &mut DescriptorEncoder, info: &Info) -> std::fmt::Result {
    let allowlist = [("ipv4", info.allow_ipv4), ("ipv6", info.allow_ipv6)]
        .map(|(family, count)| (vec![family.into()], ConstGauge::new(count)));
    family(encoder, &families::ALLOWLIST_PREFIXES, allowlist)?;
    let attached = info.interfaces.iter().map(|interface| {
        let values: Values = vec![
            interface.interface.as_str().into(),
            interface.xdp_mode.into(),
        ];
        (values, ConstGauge::new(u32::from(interface.attached)))
    });
    family(encoder, &families::DATAPATH_ATTACHED, attached)?;
    let kernel = info.kernel_features.iter().map(|&(feature, present)| {
        let values: Values = vec![feature.into()];
        (values, ConstGauge::new(u32::from(present)))
    });
    family(encoder, &families::KERNEL_FEATURE, kernel)?;
    let generation = ConstGauge::new(i64::from(info.generation));
    single(encoder, &families::POLICY_GENERATION, generation)
}

/// The families of the config `run` applies: when, how its reloads went, where its policy
/// comes from.
fn encode_config(encoder: &mut DescriptorEncoder, config: &ConfigRecord) -> std::fmt::Result {
    if let Some(at) = config.applied_at {
        let seconds = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |since| since.as_secs_f64());
        single(encoder, &families::CONFIG_APPLIED, ConstGauge::new(seconds))?;
    }
    let reload_ok = ConstGauge::new(i64::from(config.last_reload_ok));
    single(encoder, &families::CONFIG_RELOAD_OK, reload_ok)?;
    let failures = ConstCounter::new(config.reload_failures);
    single(encoder, &families::CONFIG_RELOAD_FAILURES, failures)?;
    let sources = vec![
        config.file.clone().unwrap_or_default(),
        config.apple.to_owned(),
        config.allow_files.join(","),
        config.provider_files.join(","),
    ];
    info(encoder, &families::POLICY_SOURCES, sources)
}

#[cfg(test)]
mod tests {
    use apns_common::fastpath::Fallback;

    use std::{
        collections::BTreeMap,
        io::Write as _,
        process::{Command, Stdio},
    };

    use super::*;
    use crate::{
        datapath::status::LinkState,
        telemetry::{
            clients::Finding,
            model::tests::{sample_model, sample_paths},
        },
    };

    fn sample_info() -> Info {
        let status = |interface: &str, attached, xdp_mode| InterfaceStatus {
            attached,
            state: if attached {
                LinkState::Attached
            } else {
                LinkState::Unreadable
            },
            xdp_mode,
            ..InterfaceStatus::missing(interface.to_owned())
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
