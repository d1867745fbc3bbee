//! What `apns-agent stats` prints: JSON for scripts, a table for a person, and rates for
//! `stats --watch`. All three are built from a [`Model`], like the Prometheus metrics. JSON
//! (like the metrics) has every series; the table leaves out all-zero rows unless asked
//! for every one ([`Rows`]).
//!
//! # JSON (`stats --json`), schema 1
//!
//! Stable: within a schema version fields are only ever added; a change in meaning bumps
//! `schema`. Every verdict, event, reason and class key is always present (zero if nothing
//! was counted), so scripts can index without checks. Counters are totals since the datapath
//! was loaded.
//!
//! ```json
//! {
//!   "schema": 1,
//!   "lost": 0,
//!   "reachability": [ { "port": 5223, "ratio": 0.75 } ],
//!   "interfaces": [
//!     {
//!       "interface": "eth1",
//!       "traffic": [
//!         {
//!           "direction": "outbound",
//!           "port": 5223,
//!           "packets": { "drop": 0, "fastpath": 0, "fastpath_tc": 0, "pass": 7 },
//!           "bytes": { "drop": 0, "fastpath": 0, "fastpath_tc": 0, "pass": 700 },
//!           "tcp": { "fin": 2, "rst": 1, "syn": 4, "synack": 0 }
//!         }
//!       ],
//!       "policy_drops": { "inbound_open": 0, "pinhole": 6, "provider": 4 },
//!       "inbound_opens": [ { "port": 5223, "packets": { "drop": 0, "pass": 2 } } ],
//!       "other": { "fragment": 0, "malformed": 1, "not_apns": 100, "not_ip": 9 },
//!       "fastpath": {
//!         "xdp_redirect": 12, "tc_redirect": 2, "stack": 1,
//!         "stack_by_reason": { "blackhole": 0, "egress_unmanaged": 0, "ttl": 1, ... },
//!         "tc_handoffs": { "forwarded": 2, "refused": 0 }
//!       }
//!     }
//!   ]
//! }
//! ```
//!
//! - `lost`: packets not counted because the counter map was full (every other number is
//!   then an undercount).
//! - `reachability`: SYN-ACKs in / SYNs out per APNs port over the agent's reachability
//!   window, for the whole gateway (a device's SYN enters on a LAN interface and Apple's
//!   SYN-ACK on the WAN one, so no single interface has both halves; see
//!   [`crate::telemetry::reachability`]); only ports that sent a SYN in the window, and
//!   empty when the process had no window (a one-shot `stats` has seen a single snapshot).
//!   Not filtered by `stats --interface`.
//! - `traffic`: APNs traffic per direction (`outbound` toward Apple, `inbound` from Apple)
//!   and APNs port; `bytes` are frame bytes, Ethernet header included; `tcp` counts segments
//!   by flag over all verdicts (`syn` is SYN without ACK).
//! - `policy_drops`: packets dropped by the enforce-mode policy, by reason.
//! - `inbound_opens`: inbound connection attempts on an APNs port (SYNs from Apple's side,
//!   which APNs never sends), per port: passed in monitor mode, dropped in enforce mode
//!   (then also under `policy_drops.inbound_open`). Only ports that saw one.
//! - `other`: packets that are not APNs traffic, by class.
//! - `fastpath`: for `redirect` interfaces (else `null`), how their APNs packets left:
//!   forwarded by XDP, by the TC step (next hop not resolved yet), or left to the stack,
//!   by reason (every reason present); `tc_handoffs` is the TC program's own count, by
//!   segment (docs/fastpath.md).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use anyhow::Context as _;
use apns_common::{counters::DropReason, fastpath::Fallback, label::Label as _};
use serde::Serialize;

use crate::{
    datapath::{counters::RedirectPath, status::PathReport},
    telemetry::{
        class::{TcpEvent, Verdict, OTHER_CLASSES},
        model::{FlowKey, Model, Volume},
        table::Table,
    },
};

/// Version of the JSON shape below.
pub const SCHEMA: u32 = 1;

/// The document `stats --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub schema: u32,
    pub lost: u64,
    /// Gateway-wide, per APNs port.
    pub reachability: Vec<PortRatio>,
    pub interfaces: Vec<InterfaceStats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InterfaceStats {
    pub interface: String,
    pub traffic: Vec<TrafficStats>,
    pub policy_drops: BTreeMap<&'static str, u64>,
    pub inbound_opens: Vec<InboundOpenStats>,
    pub other: BTreeMap<&'static str, u64>,
    pub fastpath: Option<PathReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct InboundOpenStats {
    pub port: u16,
    /// By verdict: `pass` (monitor) and `drop` (enforce), both always present.
    pub packets: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrafficStats {
    pub direction: &'static str,
    pub port: u16,
    pub packets: BTreeMap<&'static str, u64>,
    pub bytes: BTreeMap<&'static str, u64>,
    pub tcp: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortRatio {
    pub port: u16,
    pub ratio: f64,
}

impl Stats {
    pub fn from_model(model: &Model) -> Stats {
        let interfaces = model
            .interfaces
            .iter()
            .map(|(name, interface)| InterfaceStats {
                interface: name.clone(),
                traffic: interface
                    .flows
                    .iter()
                    .map(|(key, flow)| {
                        let by_verdict = |field: fn(&Volume) -> u64| {
                            flow.volume
                                .iter()
                                .map(|(verdict, volume)| (verdict.as_str(), field(volume)))
                                .collect()
                        };
                        TrafficStats {
                            direction: key.direction.as_str(),
                            port: key.port,
                            packets: by_verdict(|v| v.packets),
                            bytes: by_verdict(|v| v.bytes),
                            tcp: flow
                                .tcp
                                .iter()
                                .map(|(event, count)| (event.as_str(), *count))
                                .collect(),
                        }
                    })
                    .collect(),
                policy_drops: interface
                    .policy_drops
                    .iter()
                    .map(|(reason, packets)| (reason.as_str(), *packets))
                    .collect(),
                inbound_opens: inbound_opens(&interface.inbound_opens),
                other: interface
                    .other
                    .iter()
                    .map(|(class, packets)| (class.as_str(), *packets))
                    .collect(),
                fastpath: interface.paths.as_ref().map(PathReport::new),
            })
            .collect();
        Stats {
            schema: SCHEMA,
            lost: model.lost,
            reachability: model
                .reachability
                .iter()
                .map(|(&port, &ratio)| PortRatio { port, ratio })
                .collect(),
            interfaces,
        }
    }
}

/// `stats --json`: [`Stats`] as pretty JSON, with a final newline.
pub fn render_json(model: &Model) -> anyhow::Result<String> {
    let mut json =
        serde_json::to_string_pretty(&Stats::from_model(model)).context("encoding the stats")?;
    json.push('\n');
    Ok(json)
}

/// The inbound connection attempts of one interface, one entry per port.
fn inbound_opens(counts: &BTreeMap<(u16, Verdict), u64>) -> Vec<InboundOpenStats> {
    let mut ports: BTreeMap<u16, BTreeMap<&'static str, u64>> = BTreeMap::new();
    for (&(port, verdict), &packets) in counts {
        let entry = ports.entry(port).or_insert_with(|| {
            [Verdict::Pass, Verdict::Drop]
                .map(|verdict| (verdict.as_str(), 0))
                .into()
        });
        *entry.entry(verdict.as_str()).or_default() += packets;
    }
    ports
        .into_iter()
        .map(|(port, packets)| InboundOpenStats { port, packets })
        .collect()
}

/// Which rows of the `stats` table are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Only rows with a count, and a last line saying how many all-zero rows were left out:
    /// a gateway's table holds every interface, direction and APNs port from the start (as
    /// the metrics must), most of them zero, and the rows that matter get lost among them.
    NonZero,
    /// Every row (`stats --all`, and `replay`'s table of one capture).
    All,
}

/// The `stats` table with every row: what `replay` prints.
pub fn render_table(model: &Model) -> String {
    render_table_rows(model, Rows::All)
}

/// `stats` without `--json`: one line per interface, direction and port with packets,
/// bytes (all verdicts), the TCP events and the provider drops among them; then, per
/// interface, policy drops by reason, inbound connection attempts and the other classes;
/// then, per `redirect` interface, how its APNs packets left; then the lost count if any.
/// With [`Rows::NonZero`], rows whose numbers are all zero are left out and counted.
pub fn render_table_rows(model: &Model, rows: Rows) -> String {
    let mut out = String::new();
    if model.interfaces.is_empty() {
        out.push_str("no counters yet (nothing attached, or no traffic)\n");
    }
    let mut shown = Shown { rows, hidden: 0 };
    let traffic = traffic_table(model, &mut shown);
    if !traffic.is_empty() {
        traffic.write(&mut out);
        out.push('\n');
    }
    let other = other_table(model, &mut shown);
    if !other.is_empty() {
        other.write(&mut out);
    }
    let paths = paths_table(model, &mut shown);
    if !paths.is_empty() {
        out.push('\n');
        paths.write(&mut out);
    }
    let hidden = shown.hidden;
    if hidden > 0 {
        let _ = writeln!(
            out,
            "{}{hidden} all-zero {} not shown (`stats --all` shows every row)",
            if out.is_empty() { "" } else { "\n" },
            if hidden == 1 { "row" } else { "rows" }
        );
    }
    if model.lost > 0 {
        let _ = writeln!(
            out,
            "\n{} packets not counted: the counter map is full (all counts above are low)",
            model.lost
        );
    }
    out
}

/// Which rows of the `stats` table are printed, and how many were not.
struct Shown {
    rows: Rows,
    hidden: usize,
}

impl Shown {
    /// Whether a row with these counts is printed; counts the ones that are not.
    fn row(&mut self, counts: &[u64]) -> bool {
        let show = self.rows == Rows::All || counts.iter().any(|&count| count > 0);
        if !show {
            self.hidden += 1;
        }
        show
    }
}

/// One line per interface, direction and port: packets, bytes, TCP events, drops.
fn traffic_table(model: &Model, shown: &mut Shown) -> Table {
    let mut header = vec!["interface", "direction", "port", "packets", "bytes"];
    header.extend(TcpEvent::ALL.iter().map(|event| event.as_str()));
    header.push("drops");
    let mut traffic = Table::new(2, &header);
    for (name, interface) in &model.interfaces {
        for (key, flow) in &interface.flows {
            let total = flow.total();
            let mut counts = vec![total.packets, total.bytes];
            counts.extend(TcpEvent::ALL.iter().map(|&event| flow.event(event)));
            counts.push(flow.get(Verdict::Drop).packets);
            if !shown.row(&counts) {
                continue;
            }
            let mut row = vec![
                name.clone(),
                key.direction.as_str().to_owned(),
                key.port.to_string(),
            ];
            row.extend(counts.iter().map(u64::to_string));
            traffic.row(row);
        }
    }
    traffic
}

/// One line per interface: policy drops by reason, inbound connection attempts, the other
/// classes.
fn other_table(model: &Model, shown: &mut Shown) -> Table {
    let mut header = vec!["interface".to_owned()];
    header.extend(
        DropReason::ALL
            .iter()
            .map(|reason| format!("{}_drops", reason.as_str())),
    );
    // Inbound connection attempts, dropped or (monitor mode) passed.
    header.push("inbound_opens".to_owned());
    header.extend(OTHER_CLASSES.map(|c| c.as_str().to_owned()));
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut other = Table::new(1, &header);
    for (name, interface) in &model.interfaces {
        let mut counts: Vec<u64> = interface.policy_drops.values().copied().collect();
        counts.push(interface.inbound_opens.values().sum());
        counts.extend(interface.other.values());
        if !shown.row(&counts) {
            continue;
        }
        let mut row = vec![name.clone()];
        row.extend(counts.iter().map(u64::to_string));
        other.row(row);
    }
    other
}

/// One line per `redirect` interface: how its APNs packets left.
fn paths_table(model: &Model, shown: &mut Shown) -> Table {
    let mut header = vec!["interface"];
    header.extend(RedirectPath::ALL.iter().map(|path| path.as_str()));
    header.push("stack by reason");
    let mut paths = Table::new(1, &header);
    for (name, interface) in &model.interfaces {
        let Some(totals) = &interface.paths else {
            continue;
        };
        let packets: Vec<u64> = RedirectPath::ALL
            .iter()
            .map(|&path| totals.packets(path))
            .collect();
        if !shown.row(&packets) {
            continue;
        }
        let mut row = vec![name.clone()];
        row.extend(packets.iter().map(u64::to_string));
        row.push(fallback_words(|reason| totals.counters.fallback(reason)));
        paths.row(row);
    }
    paths
}

/// `stats --watch`: packets/s and bytes/s per interface, direction and port between two
/// models taken `elapsed` apart. A total that went down (the datapath was reloaded in
/// between) counts from zero, as Prometheus' `rate()` does.
/// "ttl 1, frag_needed 2": the fallback reasons with `packets`, or "-" (the stats table's
/// and `status`' words for where redirect packets were left to the stack).
pub fn fallback_words(packets: impl Fn(Fallback) -> u64) -> String {
    let words: Vec<String> = Fallback::ALL
        .iter()
        .map(|&reason| (reason, packets(reason)))
        .filter(|&(_, packets)| packets > 0)
        .map(|(reason, packets)| format!("{} {packets}", reason.as_str()))
        .collect();
    if words.is_empty() {
        "-".to_owned()
    } else {
        words.join(", ")
    }
}

pub fn render_rates(before: &Model, after: &Model, elapsed: Duration) -> String {
    let mut out = String::new();
    let seconds = elapsed.as_secs_f64();
    let _ = writeln!(out, "rates over the last {seconds:.1} s");
    if seconds <= 0.0 {
        return out;
    }
    let mut table = Table::new(
        2,
        &["interface", "direction", "port", "packets/s", "bytes/s"],
    );
    for (name, interface) in &after.interfaces {
        for (key, flow) in &interface.flows {
            let now = flow.total();
            let then = before
                .interfaces
                .get(name)
                .and_then(|i| i.flows.get(key))
                .map(|flow| flow.total())
                .unwrap_or_default();
            let rate = |now: u64, then: u64| {
                let delta = now.checked_sub(then).unwrap_or(now);
                format!("{:.1}", delta as f64 / seconds)
            };
            let FlowKey { direction, port } = key;
            table.row(vec![
                name.clone(),
                direction.as_str().to_owned(),
                port.to_string(),
                rate(now.packets, then.packets),
                rate(now.bytes, then.bytes),
            ]);
        }
    }
    if table.is_empty() {
        out.push_str("no APNs traffic counted yet\n");
    } else {
        table.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::model::tests::sample_model;

    #[test]
    fn redirect_paths_in_json_and_table() {
        use apns_common::fastpath::Fallback;

        use crate::telemetry::model::tests::sample_paths;

        let mut model = sample_model();
        model.interfaces.get_mut("eth2").unwrap().paths =
            Some(sample_paths(10, Fallback::FragNeeded, 3));
        let json: serde_json::Value = serde_json::from_str(&render_json(&model).unwrap()).unwrap();
        let fastpath = &json["interfaces"][1]["fastpath"];
        assert_eq!(fastpath["xdp_redirect"], 10);
        assert_eq!(fastpath["tc_redirect"], 2);
        assert_eq!(fastpath["stack"], 3);
        assert_eq!(fastpath["stack_by_reason"]["frag_needed"], 3);
        assert_eq!(fastpath["stack_by_reason"]["ttl"], 0);
        assert_eq!(
            fastpath["stack_by_reason"].as_object().unwrap().len(),
            Fallback::ALL.len()
        );
        assert_eq!(
            fastpath["tc_handoffs"],
            serde_json::json!({"forwarded": 2, "refused": 0})
        );
        let table = render_table(&model);
        let row = table
            .lines()
            .find(|line| line.starts_with("eth2") && line.contains("frag_needed 3"))
            .unwrap_or_else(|| panic!("no path row for eth2 in:\n{table}"));
        assert!(row.contains("10") && row.contains(" 2 "), "{row}");
    }

    #[test]
    fn json_fields() {
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&sample_model()).unwrap()).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["lost"], 11);
        let eth1 = &json["interfaces"][0];
        assert_eq!(eth1["interface"], "eth1");
        // Outbound first, then by port.
        let first = &eth1["traffic"][0];
        assert_eq!(first["direction"], "outbound");
        assert_eq!(first["port"], 443);
        let provider = &eth1["traffic"][1];
        assert_eq!(provider["port"], 2197);
        assert_eq!(
            provider["packets"],
            serde_json::json!({"pass": 3, "drop": 4, "fastpath": 0, "fastpath_tc": 0})
        );
        assert_eq!(
            provider["bytes"],
            serde_json::json!({"pass": 300, "drop": 240, "fastpath": 0, "fastpath_tc": 0})
        );
        assert_eq!(
            eth1["traffic"][4]["tcp"],
            serde_json::json!({"syn": 0, "synack": 3, "rst": 0, "fin": 1})
        );
        assert_eq!(eth1["traffic"][4]["direction"], "inbound");
        // Gateway-wide, at the top level only.
        assert_eq!(
            json["reachability"],
            serde_json::json!([{"port": 5223, "ratio": 0.5}])
        );
        assert_eq!(eth1.get("reachability"), None);
        assert_eq!(
            eth1["policy_drops"],
            serde_json::json!({"pinhole": 6, "provider": 4, "inbound_open": 3, "unfinished": 0})
        );
        // Attempts from Apple's side, kept out of `traffic`.
        assert_eq!(
            eth1["inbound_opens"],
            serde_json::json!([{"port": 5223, "packets": {"pass": 0, "drop": 3}}])
        );
        assert_eq!(
            eth1["other"],
            serde_json::json!({"not_ip": 9, "not_apns": 100, "fragment": 0, "malformed": 1, "unfinished": 0})
        );
        // Not a redirect interface.
        assert_eq!(eth1["fastpath"], serde_json::Value::Null);
        let eth2 = &json["interfaces"][1];
        assert_eq!(eth2["interface"], "eth2");
        assert_eq!(eth2.get("reachability"), None);
        assert_eq!(
            eth2["inbound_opens"],
            serde_json::json!([{"port": 443, "packets": {"pass": 2, "drop": 0}}])
        );
        assert_eq!(eth2["traffic"].as_array().unwrap().len(), 2);
        assert_eq!(json["interfaces"].as_array().unwrap().len(), 2);
        // Top-level fields in this order.
        assert_eq!(
            serde_json::to_string(&Stats::from_model(&Model::default())).unwrap(),
            r#"{"schema":1,"lost":0,"reachability":[],"interfaces":[]}"#
        );
    }

    /// The table's rows for [`sample_model`], whose rows are all non-zero.
    const SAMPLE_ROWS: &str = "\
interface  direction  port  packets  bytes  syn  synack  rst  fin  drops
eth1       outbound    443       10   1500    2       0    0    0      0
eth1       outbound   2197        7    540    5       0    0    0      4
eth1       outbound   5223        7    700    4       0    1    2      0
eth1       inbound     443       12   6000    0       2    1    0      0
eth1       inbound    5223        5    900    0       3    0    1      0
eth2       outbound   5223        2    140    2       0    0    0      0
eth2       inbound    5223        1     74    0       1    0    0      0

interface  pinhole_drops  provider_drops  inbound_open_drops  unfinished_drops  inbound_opens  not_ip  not_apns  fragment  malformed  unfinished
eth1                   6               4                   3                 0              3       9       100         0          1           0
eth2                   0               0                   0                 0              2       0         0         8          0           0
";

    #[test]
    fn table() {
        let expected = format!(
            "{SAMPLE_ROWS}\n11 packets not counted: the counter map is full (all counts above are low)\n"
        );
        assert_eq!(render_table(&sample_model()), expected);
        assert_eq!(
            render_table(&Model::default()),
            "no counters yet (nothing attached, or no traffic)\n"
        );
    }

    /// The sample with what a gateway's table mostly holds: series of attached interfaces
    /// and APNs ports that saw nothing (eth2's 443 both ways; eth3, a `redirect` interface
    /// with no traffic at all).
    fn model_with_zero_rows() -> Model {
        use apns_common::fastpath::Fallback;

        use crate::telemetry::model::tests::sample_paths;

        let mut model = sample_model();
        let zero = |direction| FlowKey {
            direction,
            port: 443,
        };
        let eth2 = model.interfaces.get_mut("eth2").unwrap();
        for direction in [
            apns_common::counters::Direction::Outbound,
            apns_common::counters::Direction::Inbound,
        ] {
            eth2.flows.insert(zero(direction), Default::default());
        }
        let eth3 = model.interfaces.entry("eth3".to_owned()).or_default();
        eth3.flows.insert(
            zero(apns_common::counters::Direction::Outbound),
            Default::default(),
        );
        let mut idle = sample_paths(0, Fallback::Ttl, 0);
        idle.tc_redirect = 0;
        idle.counters = Default::default();
        eth3.paths = Some(idle);
        model
    }

    #[test]
    fn the_table_leaves_out_all_zero_rows_and_counts_them() {
        let model = model_with_zero_rows();
        let expected = format!(
            "{SAMPLE_ROWS}\n5 all-zero rows not shown (`stats --all` shows every row)\n\n\
             11 packets not counted: the counter map is full (all counts above are low)\n"
        );
        assert_eq!(render_table_rows(&model, Rows::NonZero), expected);
        // --all: every row, and no note.
        let all = render_table_rows(&model, Rows::All);
        for row in [
            "eth2       outbound    443        0      0    0       0    0    0      0",
            "eth2       inbound     443        0      0    0       0    0    0      0",
            "eth3       outbound    443        0      0    0       0    0    0      0",
            "eth3                   0               0                   0                 0              0       0         0         0          0           0",
            "eth3                  0            0      0                -",
        ] {
            assert!(all.lines().any(|line| line == row), "no {row:?} in:\n{all}");
        }
        assert!(!all.contains("not shown"), "{all}");
        assert_eq!(all, render_table(&model));
        // JSON keeps every series.
        let json: serde_json::Value = serde_json::from_str(&render_json(&model).unwrap()).unwrap();
        assert_eq!(
            json["interfaces"][1]["traffic"].as_array().unwrap().len(),
            4
        );
        assert_eq!(json["interfaces"][2]["interface"], "eth3");
        assert_eq!(json["interfaces"][2]["fastpath"]["xdp_redirect"], 0);
        // Nothing but zeros: only the note.
        let mut quiet = Model::default();
        quiet
            .interfaces
            .insert("eth3".to_owned(), model.interfaces["eth3"].clone());
        assert_eq!(
            render_table_rows(&quiet, Rows::NonZero),
            "3 all-zero rows not shown (`stats --all` shows every row)\n"
        );
    }

    #[test]
    fn rates() {
        let before = sample_model();
        let mut after = sample_model();
        let eth1 = after.interfaces.get_mut("eth1").unwrap();
        let key = FlowKey {
            direction: apns_common::counters::Direction::Outbound,
            port: 5223,
        };
        let pass = eth1
            .flows
            .get_mut(&key)
            .unwrap()
            .volume
            .get_mut(&Verdict::Pass)
            .unwrap();
        pass.packets += 20;
        pass.bytes += 3000;
        // A reset: eth2's inbound total went down from 1 to 0 packets.
        let eth2 = after.interfaces.get_mut("eth2").unwrap();
        let inbound = FlowKey {
            direction: apns_common::counters::Direction::Inbound,
            port: 5223,
        };
        *eth2.flows.get_mut(&inbound).unwrap() = Default::default();
        let text = render_rates(&before, &after, Duration::from_secs(4));
        let expected = "\
rates over the last 4.0 s
interface  direction  port  packets/s  bytes/s
eth1       outbound    443        0.0      0.0
eth1       outbound   2197        0.0      0.0
eth1       outbound   5223        5.0    750.0
eth1       inbound     443        0.0      0.0
eth1       inbound    5223        0.0      0.0
eth2       outbound   5223        0.0      0.0
eth2       inbound    5223        0.0      0.0
";
        assert_eq!(text, expected);
        assert_eq!(
            render_rates(&Model::default(), &Model::default(), Duration::from_secs(1)),
            "rates over the last 1.0 s\nno APNs traffic counted yet\n"
        );
    }
}
