//! Helpers shared by the subcommands: progress lines, running commands, where cargo puts
//! binaries, and the PATH that child processes get.

use std::env;
use std::ffi::OsString;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Prints one progress line to stderr: `==> message`.
pub fn step(msg: impl Display) {
    eprintln!("==> {msg}");
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `$HOME`, which must be set: cargo, rustup and the LLVM prefix all live under it.
pub fn home() -> Result<PathBuf> {
    match env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home)),
        _ => bail!("HOME is not set"),
    }
}

/// The workspace root (the folder holding the workspace Cargo.toml).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
}

/// The folders `cargo install` (and rustup) put binaries in, most specific first:
/// `$CARGO_INSTALL_ROOT/bin`, `$CARGO_HOME/bin`, `$HOME/.cargo/bin`. They need not exist yet.
pub fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["CARGO_INSTALL_ROOT", "CARGO_HOME"] {
        if let Some(root) = env::var_os(var).filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(root).join("bin"));
        }
    }
    if let Ok(home) = home() {
        dirs.push(home.join(".cargo").join("bin"));
    }
    let mut unique: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// The PATH every child process gets: the cargo bin folders first (so a fresh shell whose
/// PATH lacks `~/.cargo/bin` still finds rustup and bpf-linker, and so the bpf-linker that
/// setup checked is the one the build uses), then the inherited PATH.
pub fn child_path() -> OsString {
    let mut dirs = cargo_bin_dirs();
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    env::join_paths(dirs).expect("PATH entries contain no ':'")
}

/// The file `name` resolves to on [`child_path`], if any.
pub fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&child_path())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A command for `program` (looked up on [`child_path`]) whose environment has that PATH.
pub fn command(program: &str) -> Command {
    let resolved = which(program).unwrap_or_else(|| PathBuf::from(program));
    let mut cmd = Command::new(resolved);
    cmd.env("PATH", child_path());
    cmd
}

/// The cargo that runs this xtask (`$CARGO`, set by `cargo run`), so children use the same
/// toolchain; plain `cargo` when run some other way.
pub fn cargo() -> Command {
    let mut cmd = match env::var_os("CARGO") {
        Some(cargo) => Command::new(cargo),
        None => command("cargo"),
    };
    cmd.env("PATH", child_path());
    cmd
}

/// How a command reads in messages: program and arguments separated by spaces.
pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command with inherited stdout/stderr (stdin closed: CI has none) and fails unless
/// it exits with 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Shows a command as a step, then [`run`]s it; a failure also says `what_next` (what to
/// look at, how to fix it).
pub fn run_step(cmd: &mut Command, what_next: &str) -> Result<()> {
    step(describe(cmd));
    run(cmd).with_context(|| what_next.to_owned())
}

/// Runs a command and returns its stdout; fails with its stderr unless it exits with 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

/// `1.2 s`, `95 s`, `3 min 12 s`.
pub fn elapsed(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 120.0 {
        format!("{secs:.0} s")
    } else {
        let whole = d.as_secs();
        format!("{} min {} s", whole / 60, whole % 60)
    }
}

/// `~/…` for paths under $HOME, to keep progress lines short.
pub fn tilde(path: &Path) -> String {
    if let Ok(home) = home() {
        if let Ok(rest) = path.strip_prefix(&home) {
            return Path::new("~").join(rest).display().to_string();
        }
    }
    path.display().to_string()
}

/// Cargo's target directory (CARGO_TARGET_DIR or `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Builds the agent and one binary of the tests crate (`apns-demo`, `apns-bench`) in release
/// mode and returns the latter's path.
pub fn build_release_with_agent(binary: &str) -> Result<PathBuf> {
    let mut build = cargo();
    build
        .args(["build", "--release", "-p", "apns-agent", "-p", "apns-tests"])
        .args(["--bin", "apns-agent", "--bin", binary])
        .current_dir(workspace_root())
        .stdin(Stdio::null());
    step(format!(
        "{} (the first build takes a few minutes)",
        describe(&build)
    ));
    let status = build
        .status()
        .with_context(|| format!("could not start `{}`", describe(&build)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(&build));
    }
    Ok(target_dir().join("release").join(binary))
}
