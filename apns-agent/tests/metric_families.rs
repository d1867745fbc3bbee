//! The one table of metric families (`telemetry::families::ALL`) is what the agent exports
//! and what docs/metrics.md lists: the exposition of a model with a sample of every family
//! writes exactly the table's families, in its order, with its types and label names; the
//! docs' table has one row per family with the same type and labels, and every other metric
//! table in docs/ names only families of it. (packaging.rs holds the Prometheus rules and
//! Grafana dashboards to the same table.)

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use apns_agent::{
    datapath::{
        features::Feature,
        policy::Policy,
        status::{InterfaceStatus, LinkState},
    },
    telemetry::{
        class::Verdict,
        clients::Finding,
        families::{self, Family, Kind},
        metrics,
        model::{Flow, FlowKey, InterfaceModel, Model},
    },
};
use apns_common::{counters::Direction, label::Label as _};

/// One family as a table or an exposition states it: name, type word, label names.
type Row = (String, String, Vec<String>);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds apns-agent/")
        .to_owned()
}

fn table() -> Vec<Row> {
    families::ALL.iter().map(|family| row(family)).collect()
}

fn row(family: &Family) -> Row {
    (
        family.name.to_owned(),
        family.kind.as_str().to_owned(),
        family
            .labels
            .iter()
            .map(|&label| label.to_owned())
            .collect(),
    )
}

/// An exposition with a sample of every family.
fn exposition() -> String {
    let mut interface = InterfaceModel::default();
    let key = FlowKey {
        direction: Direction::Outbound,
        port: 5223,
    };
    interface.flows.insert(key, Flow::default());
    interface.inbound_opens.insert((5223, Verdict::Drop), 0);
    interface.paths = Some(Default::default());
    let mut model = Model::default();
    model.interfaces.insert("eth1".to_owned(), interface);
    model.reachability.insert(5223, 1.0);
    let status = InterfaceStatus {
        attached: true,
        state: LinkState::Attached,
        xdp_mode: "native",
        ..InterfaceStatus::missing("eth1".to_owned())
    };
    let mut info = metrics::Info::new("0123456789abcdef", &Policy::apple_defaults(), vec![status]);
    // Every kernel feature, whatever this process could probe (a normal user probes none).
    info.kernel_features = Feature::ALL
        .iter()
        .map(|&feature| (feature.as_str(), true))
        .collect();
    info.config.applied_at = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    info.connections = Some(metrics::Connections {
        open: [(("eth1".to_owned(), 5223), 1)].into(),
        ended: [("fin_device", 1)].into(),
        lifetimes: (vec![(1.0, 1), (f64::INFINITY, 0)], 0.5),
        handshake_failures: [((5223, "refused"), 1)].into(),
        port443: [("fallback", 1)].into(),
        unhealthy: [(Finding::NoAnswer, 1)].into(),
        ..metrics::Connections::default()
    });
    metrics::render(&model, &info).expect("the exposition renders")
}

/// The families an exposition writes, in its order: each `# TYPE`'s name and type, and the
/// label names of its first sample (a histogram's `le` left out). The exposition writes an
/// info family as a gauge; a name ending in `_info` is read back as an info.
fn emitted(text: &str) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let mut labelled = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            let kind = if name.ends_with("_info") && kind == "gauge" {
                Kind::Info.as_str()
            } else {
                kind
            };
            rows.push((name.to_owned(), kind.to_owned(), Vec::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let (name, labels) = line.split_once('{').unwrap_or(("", ""));
            let Some(last) = rows.last_mut() else {
                panic!("a sample before any # TYPE: {line}");
            };
            assert!(line.starts_with(&last.0), "{line} is not of {}", last.0);
            if labels.is_empty() || !labelled.insert(name.to_owned()) {
                continue;
            }
            let labels = labels.rsplit_once('}').expect("closed label set").0;
            last.2 = labels
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(label, _)| label.to_owned()))
                .filter(|label| label != "le")
                .collect();
        }
    }
    rows
}

#[test]
fn the_exposition_writes_the_table() {
    let text = exposition();
    assert_eq!(
        emitted(&text),
        table(),
        "the exposition (left) is not families::ALL (right):\n{text}"
    );
}

/// The rows of the markdown tables of `text` whose header starts with `| metric |`: each
/// row's cells, backticks removed.
fn metric_tables(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("| metric |") {
            inside = true;
        } else if !line.starts_with('|') {
            inside = false;
        } else if inside && !line.starts_with("|---") {
            let cells = line.trim_matches('|').split(" | ");
            rows.push(cells.map(|cell| cell.trim().replace('`', "")).collect());
        }
    }
    rows
}

/// docs/metrics.md's table as rows; `—` is no labels.
fn documented(text: &str) -> Vec<Row> {
    metric_tables(text)
        .into_iter()
        .map(|cells| {
            let labels = match cells.get(2).map(String::as_str) {
                None | Some("—") => Vec::new(),
                Some(labels) => labels.split(", ").map(str::to_owned).collect(),
            };
            (
                cells[0].clone(),
                cells.get(1).cloned().unwrap_or_default(),
                labels,
            )
        })
        .collect()
}

/// What `documented` and `table` disagree on, in words: families missing from the docs,
/// extra ones, and rows that differ.
fn differences(documented: &[Row], table: &[Row]) -> Vec<String> {
    let mut found = Vec::new();
    for row in table {
        match documented.iter().find(|doc| doc.0 == row.0) {
            None => found.push(format!("missing family {}", row.0)),
            Some(doc) if doc != row => found.push(format!("{doc:?} should be {row:?}")),
            Some(_) => {}
        }
    }
    for doc in documented {
        if !table.iter().any(|row| row.0 == doc.0) {
            found.push(format!("extra family {}", doc.0));
        }
    }
    found
}

#[test]
fn the_docs_table_is_the_table() {
    let path = root().join("docs/metrics.md");
    let text = std::fs::read_to_string(&path).expect("reading docs/metrics.md");
    let documented = documented(&text);
    let differences = differences(&documented, &table());
    assert!(
        differences.is_empty(),
        "docs/metrics.md's metric table is not families::ALL: {differences:#?}"
    );
    let names: Vec<&String> = documented.iter().map(|row| &row.0).collect();
    let in_order: Vec<String> = families::ALL.iter().map(|f| f.name.to_owned()).collect();
    assert_eq!(
        names,
        in_order.iter().collect::<Vec<_>>(),
        "docs/metrics.md's order"
    );
}

#[test]
fn other_metric_tables_in_docs_name_families() {
    let names: BTreeSet<&str> = families::ALL.iter().map(|family| family.name).collect();
    let mut unknown = Vec::new();
    for entry in std::fs::read_dir(root().join("docs")).expect("reading docs/") {
        let path = entry.expect("a docs/ entry").path();
        if path.extension().is_none_or(|ext| ext != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("reading a page of docs/");
        for cells in metric_tables(&text) {
            for name in cells[0].split(", ") {
                if !names.contains(name) {
                    unknown.push(format!("{}: {name}", path.display()));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "not metric families: {unknown:?}");
}

#[test]
fn a_missing_or_extra_family_is_named() {
    let table = table();
    let mut documented = table.clone();
    documented.remove(0);
    documented.push(("apns_made_up_total".into(), "counter".into(), Vec::new()));
    documented[0].2.pop();
    let found = differences(&documented, &table);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0], format!("missing family {}", table[0].0));
    assert!(found[1].contains(&table[1].0), "{found:?}");
    assert_eq!(found[2], "extra family apns_made_up_total");
}
