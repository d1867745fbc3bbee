//! The supply-chain checks `cargo xtask test` runs with cargo-deny, by the policy of
//! deny.toml: licences, bans (duplicate majors, banned crates) and sources always; the
//! advisories check wherever the RustSec advisory database is at hand.
//!
//! These machines reach the package registries only, not the database's git host, so it is
//! never fetched here. A copy given in `APNS_ADVISORY_DB` (a git clone of the database) is
//! linked where cargo-deny looks for it (deny.toml's `db-path`), and checked with
//! `--offline`; a database already there (a connected machine's `cargo deny check
//! advisories` fetches it there) is used the same way. With neither, the check is skipped
//! with one line. cargo-deny refuses a copy last updated more than 90 days ago.

use std::{os::unix::fs::symlink, path::PathBuf};

use anyhow::{bail, Context, Result};

use crate::util::{cargo, run_step, step, tilde, workspace_root};

/// The environment variable that names a copy of the RustSec advisory database.
pub const ADVISORY_DB_VAR: &str = "APNS_ADVISORY_DB";

/// deny.toml's `db-path`, relative to the workspace root.
const DB_PATH: &str = "target/advisory-dbs";

/// The folder cargo-deny reads the RustSec database from under `db-path`: its name for the
/// default database URL (the URL's last segment and a hash of it).
const DB_DIR: &str = "advisory-db-3157b0e258782691";

/// `cargo xtask deny`: setup, then [`check`].
pub fn run() -> Result<()> {
    crate::setup::checkers().context("setup failed")?;
    check()
}

/// `cargo deny check licenses bans sources`, then the advisories check if a database is at
/// hand.
pub fn check() -> Result<()> {
    cargo_deny(&[], &["licenses", "bans", "sources"])?;
    let Some(db) = advisory_db()? else {
        step(format!(
            "SKIPPING cargo deny's advisories check: no RustSec advisory database here (these \
             machines cannot fetch it; set {ADVISORY_DB_VAR} to a git clone of it, or see the \
             README's \"Supply chain and fuzzing\")"
        ));
        return Ok(());
    };
    step(format!("advisory database: {}", tilde(&db)));
    cargo_deny(&["--offline"], &["advisories"])?;
    Ok(())
}

fn cargo_deny(options: &[&str], checks: &[&str]) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("deny")
        .args(options)
        .arg("check")
        .args(checks)
        .current_dir(workspace_root());
    run_step(
        &mut cmd,
        "cargo-deny said why above (deny.toml holds the rules, each with its reason)",
    )
}

/// The advisory database cargo-deny will read, if there is one: the copy `APNS_ADVISORY_DB`
/// names, linked into place, or one already in place.
fn advisory_db() -> Result<Option<PathBuf>> {
    let root = workspace_root().join(DB_PATH);
    let place = root.join(DB_DIR);
    let Some(copy) = std::env::var_os(ADVISORY_DB_VAR).map(PathBuf::from) else {
        return Ok(place.join(".git").exists().then_some(place));
    };
    if !copy.join(".git").exists() {
        bail!(
            "{ADVISORY_DB_VAR}={} is no git clone of the RustSec advisory database (it has no \
             .git)",
            copy.display()
        );
    }
    let copy = copy
        .canonicalize()
        .with_context(|| format!("{ADVISORY_DB_VAR}={}", copy.display()))?;
    match place.symlink_metadata() {
        Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(&place)
            .with_context(|| format!("cannot replace the link {}", place.display()))?,
        Ok(_) => bail!(
            "{} already holds an advisory database (fetched by cargo-deny): unset \
             {ADVISORY_DB_VAR} to use it, or remove it to use {}",
            place.display(),
            copy.display()
        ),
        Err(_) => std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create {}", root.display()))?,
    }
    symlink(&copy, &place)
        .with_context(|| format!("cannot link {} to {}", place.display(), copy.display()))?;
    Ok(Some(copy))
}
