//! `cargo xtask dist`: setup, a release build of the agent, its man pages and completions
//! (`apns-agent generate`), then the Debian package by cargo-deb into
//! `target/dist/apns-agent_<version>_<arch>.deb`.
//!
//! What goes into the package, and where, is declared once in apns-agent/Cargo.toml
//! (`[package.metadata.deb]`); docs/operations.md describes it for operators.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{
    self, cargo, command, describe, elapsed, output, step, target_dir, workspace_root,
};

/// Where the generated man pages and completions go: under `target/release/`, the prefix
/// cargo-deb resolves to the real target directory (apns-agent/Cargo.toml's assets name it).
const GENERATED: &str = "deb-gen";

pub fn run() -> Result<()> {
    crate::setup::run()?;
    let deb = build()?;
    step(format!("package: {}", deb.display()));
    Ok(())
}

/// Builds the package (setup must have run) and returns its path.
pub fn build() -> Result<PathBuf> {
    let start = Instant::now();
    let root = workspace_root();
    util::run(
        cargo()
            .args(["build", "--release", "-p", "apns-agent"])
            .current_dir(root),
    )?;
    let release = target_dir().join("release");
    let agent = release.join("apns-agent");

    // Man pages carry a date: the last commit's, so a rebuild of the same commit makes the
    // same pages (reproducible builds' SOURCE_DATE_EPOCH, which cargo-deb honours too).
    let epoch = source_date_epoch(root);
    let generated = release.join(GENERATED);
    if generated.exists() {
        std::fs::remove_dir_all(&generated)
            .with_context(|| format!("removing the previous {}", generated.display()))?;
    }
    let generate = |args: &[&str], dir: &Path| -> Result<()> {
        let mut cmd = Command::new(&agent);
        cmd.arg("generate").args(args).arg(dir);
        if let Some(epoch) = &epoch {
            cmd.env("SOURCE_DATE_EPOCH", epoch);
        }
        let written = output(&mut cmd)?;
        step(format!(
            "{}: {} files",
            describe(&cmd),
            written.lines().count()
        ));
        Ok(())
    };
    generate(&["man"], &generated.join("man"))?;
    gzip_pages(&generated.join("man"))?;
    for shell in ["bash", "zsh", "fish"] {
        generate(&["completions", shell], &generated.join("completions"))?;
    }

    let out_dir = target_dir().join("dist");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut deb = command("cargo-deb");
    deb.args([
        "-p",
        "apns-agent",
        "--no-build",
        "--compress-system",
        "--output",
    ])
    .arg(&out_dir)
    .current_dir(root);
    if let Some(epoch) = &epoch {
        deb.env("SOURCE_DATE_EPOCH", epoch);
    }
    step(describe(&deb));
    // cargo-deb prints the path of the package it wrote as its last line.
    let printed = output(&mut deb)?;
    let path = printed
        .lines()
        .rev()
        .map(str::trim)
        .find(|line| line.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo-deb printed no .deb path: {printed}"))?;
    if !path.is_file() {
        bail!(
            "cargo-deb says it wrote {}, which is not there",
            path.display()
        );
    }
    step(format!(
        "built {} ({})",
        path.display(),
        elapsed(start.elapsed())
    ));
    Ok(path)
}

/// Compresses every page in `dir` as Debian wants them (`gzip -9n`: no name or time stamp in
/// the header, so the same page compresses to the same bytes). cargo-deb would gzip assets
/// named one by one, but not those its glob finds.
fn gzip_pages(dir: &Path) -> Result<()> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "8"))
        .collect();
    pages.sort();
    if pages.is_empty() {
        bail!(
            "apns-agent generate man wrote no page into {}",
            dir.display()
        );
    }
    util::run(command("gzip").args(["-9n", "--force"]).args(&pages))
}

/// The last commit's time in seconds since the epoch, if this is a git checkout.
fn source_date_epoch(root: &Path) -> Option<String> {
    let out = output(
        command("git")
            .args(["log", "-1", "--format=%ct"])
            .current_dir(root),
    )
    .ok()?;
    let epoch = out.trim();
    (!epoch.is_empty()).then(|| epoch.to_owned())
}
