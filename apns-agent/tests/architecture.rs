//! docs/architecture.md is true where a test can tell: every path it names in backticks
//! exists, and it names every module of the crates' top levels and of the agent's
//! `datapath/`, `telemetry/`, `settings/` and `preflight/` (a new module gets its line).
//!
//! A backticked span with a `/` or ending in `.rs` is a path: from the workspace root when
//! its first part is there (`apns-ebpf/src/flows.rs`, `docs/`), else from `apns-agent/src`
//! (`datapath/install.rs`). Spans that start with `/` (`/metrics`) or hold a space are not.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

const CODEMAP: &str = include_str!("../../docs/architecture.md");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The paths `text` names, as written and as files from the workspace root.
fn named(text: &str, root: &Path) -> Vec<(String, PathBuf)> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            (span.contains('/') || span.ends_with(".rs"))
                && !span.starts_with('/')
                && !span.contains(' ')
        })
        .map(|span| {
            let first = span.split('/').next().unwrap_or(span);
            let path = if root.join(first).exists() && span.contains('/') {
                root.join(span)
            } else {
                root.join("apns-agent/src").join(span)
            };
            (span.to_owned(), path)
        })
        .collect()
}

#[test]
fn every_path_the_codemap_names_exists() {
    let root = root();
    let named = named(CODEMAP, &root);
    assert!(named.len() > 50, "too few paths found: {named:?}");
    let missing: Vec<&String> = named
        .iter()
        .filter(|(_, path)| !path.exists())
        .map(|(span, _)| span)
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names what does not exist: {missing:?}"
    );
}

#[test]
fn the_codemap_names_every_module_it_maps() {
    let root = root();
    let named: BTreeSet<PathBuf> = named(CODEMAP, &root)
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    let mut unnamed = Vec::new();
    for dir in [
        "apns-common/src",
        "apns-ebpf/src",
        "apns-agent/src",
        "apns-agent/src/datapath",
        "apns-agent/src/telemetry",
        "apns-agent/src/settings",
        "apns-agent/src/preflight",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let module = entry.unwrap().path();
            let is_module = module.is_dir()
                || (module.extension().is_some_and(|ext| ext == "rs")
                    && module.file_name().is_some_and(|name| name != "mod.rs"));
            if !is_module {
                continue;
            }
            // A folder counts as named by itself or by a file in it.
            let is_named = named.contains(&module)
                || (module.is_dir() && named.iter().any(|n| n.starts_with(&module)));
            if !is_named {
                unnamed.push(module.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    unnamed.sort();
    assert!(
        unnamed.is_empty(),
        "docs/architecture.md does not name these modules: {unnamed:?}"
    );
}

#[test]
fn a_path_that_does_not_exist_is_found() {
    let root = root();
    let named = named(
        "see `datapath/neighbours.rs`, `apns-ebpf/src/flows.rs` and `/metrics`",
        &root,
    );
    let exists: Vec<(&str, bool)> = named
        .iter()
        .map(|(span, path)| (span.as_str(), path.exists()))
        .collect();
    assert_eq!(
        exists,
        [
            ("datapath/neighbours.rs", false),
            ("apns-ebpf/src/flows.rs", true)
        ]
    );
}
