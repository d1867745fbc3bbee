//! `cargo xtask setup`: installs, idempotently, what the build and the tests need.
//!
//! 1. `rust-src` for the installed nightly (the eBPF crate is built with `-Z build-std=core`).
//! 2. bpf-linker 0.13.0 built against the nightly toolchain's own libLLVM (docs/platform.md).
//! 3. cargo-deb [`CARGO_DEB_VERSION`], which `cargo xtask dist` packages the agent with.
//! 4. The Debian packages in [`APT_PACKAGES`].
//!
//! Each step first checks what is there and says so; a second run takes about a second.
//! It never runs `rustup update` and never installs another nightly: bpf-linker is tied to
//! the installed nightly's LLVM.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{self, cargo, command, elapsed, output, step, tilde};

/// The bpf-linker release that fits the pinned aya family and the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The cargo-deb release `cargo xtask dist` uses: pinned, so the maintainer scripts it
/// generates (and the package test checks) do not change under us. Built without its default
/// features (the bundled liblzma and debug-id support), so there is less to compile: `dist`
/// compresses with the system's `xz` (`--compress-system`) instead.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// Debian packages the tests and the demo use, grouped by who uses them.
const APT_PACKAGES: &[&str] = &[
    // Network namespaces, veth pairs, VLANs, tc (clsact): every kernel test and the demo.
    "iproute2",
    // Inspecting loaded programs and maps (`bpftool prog/map`) in tests and when debugging;
    // `xdp-filter` is the peer the benchmark compares against.
    "bpftool",
    "xdp-tools",
    // The netfilter side: the demo gateway's NAT and the nftables baseline the benchmark
    // compares against.
    "nftables",
    "iptables",
    // Traffic inside the test namespaces: load (iperf3), crafted packets (hping3, scapy),
    // TCP/UDP endpoints (socat), and capture to check what crossed the gateway (tcpdump).
    "iperf3",
    "tcpdump",
    "hping3",
    "socat",
    "python3-scapy",
    // Resolving the gateway's neighbours before the fast-path tests (`ping`).
    "iputils-ping",
    // `promtool check metrics`: the test that validates the agent's Prometheus output.
    "prometheus",
    // Offload settings (GRO/TSO/checksum) on the veths of the tests and the demo.
    "ethtool",
    // The package (`cargo xtask dist` and its test): dpkg-shlibdeps for the Depends line,
    // lintian for Debian's checks, man-db for `man -l` on the installed pages, xz-utils for
    // cargo-deb's --compress-system.
    "dpkg-dev",
    "lintian",
    "man-db",
    "xz-utils",
    // The Ansible role and its test: Debian's ansible-core and ansible-lint rather than pip's
    // (bookworm refuses system-wide pip installs; a venv would be a second package manager
    // to keep idempotent), and python3-apt, which ansible's apt module needs on the host.
    "ansible-core",
    "ansible-lint",
    "python3-apt",
];

pub fn run() -> Result<()> {
    let start = Instant::now();
    if !util::is_root() {
        step("not root: rust-src and bpf-linker install into your home and need no root; installing Debian packages needs root");
    }
    rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    apt_packages()?;
    step(format!("setup done ({})", elapsed(start.elapsed())));
    Ok(())
}

/// The nightly toolchain must already be installed; this is the message when it is not.
fn nightly_missing(err: anyhow::Error) -> anyhow::Error {
    err.context(
        "the `nightly` toolchain is not usable (see `rustup toolchain list`); the eBPF build \
         needs the nightly this machine ships with, and setup does not install one because \
         bpf-linker must match its LLVM",
    )
}

fn rust_src() -> Result<()> {
    let installed = output(command("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .map_err(nightly_missing)?;
    // Lines look like `rust-src` or `rust-std-x86_64-unknown-linux-gnu`.
    if installed.lines().any(|line| line.trim() == "rust-src") {
        step("rust-src for nightly: already installed");
        return Ok(());
    }
    step("installing rust-src for nightly (about 10 s)");
    util::run(command("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let version = output(command("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .map_err(nightly_missing)?;
    let major = llvm_major(&version)?;
    let sysroot = output(command("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .map_err(nightly_missing)?;
    let libllvm = find_libllvm(Path::new(sysroot.trim()), major)?;
    let prefix = util::home()?
        .join(".local/share/apns-agent")
        .join(format!("llvm-{major}"));
    llvm_prefix(&prefix, &libllvm)?;

    if let Some(path) = util::which("bpf-linker") {
        match linker_version(&path) {
            Ok(found) if found == BPF_LINKER_VERSION => {
                step(format!(
                    "bpf-linker {found}: already installed ({})",
                    tilde(&path)
                ));
                return Ok(());
            }
            Ok(found) => step(format!(
                "bpf-linker at {} is {found}, not {BPF_LINKER_VERSION}: reinstalling",
                tilde(&path)
            )),
            Err(err) => step(format!(
                "bpf-linker at {} does not run ({err:#}): reinstalling",
                tilde(&path)
            )),
        }
    }

    step(format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (about 90 s on 2 cores)"
    ));
    util::run(
        cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            // Away from the workspace, so none of its cargo configuration applies.
            .current_dir(&prefix),
    )?;

    let Some(path) = util::which("bpf-linker") else {
        bail!(
            "`cargo install` finished but no bpf-linker is in {}",
            util::cargo_bin_dirs()
                .iter()
                .map(|dir| tilde(dir))
                .collect::<Vec<_>>()
                .join(" or ")
        );
    };
    let found = linker_version(&path)
        .with_context(|| format!("the freshly installed {} does not run", path.display()))?;
    if found != BPF_LINKER_VERSION {
        bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but the one found first on PATH ({}) is {found}",
            path.display()
        );
    }
    step(format!("bpf-linker {found} installed ({})", tilde(&path)));
    Ok(())
}

/// The LLVM major version from `rustc -vV` output (`LLVM version: 22.1.4` → 22).
fn llvm_major(rustc_vv: &str) -> Result<u32> {
    let line = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .context("`rustup run nightly rustc -vV` printed no `LLVM version:` line")?;
    let major = line.trim().split('.').next().unwrap_or_default();
    major
        .parse()
        .with_context(|| format!("cannot read the LLVM major from `{}`", line.trim()))
}

/// The nightly sysroot's `lib/libLLVM.so.<major>…` (e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`),
/// which exports the LLVM C API and the BPF target bpf-linker needs.
fn find_libllvm(sysroot: &Path, major: u32) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let prefix = format!("libLLVM.so.{major}");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("cannot list {}", lib.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // `libLLVM.so.22…` but not `libLLVM.so.221…`.
            name.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    match found.as_slice() {
        [] => bail!(
            "no {prefix}* in {}: this nightly does not ship the shared libLLVM bpf-linker links against",
            lib.display()
        ),
        [one] => Ok(one.clone()),
        [first, ..] => {
            step(format!(
                "several {prefix}* in {}: using {}",
                lib.display(),
                first.display()
            ));
            Ok(first.clone())
        }
    }
}

/// Makes `<prefix>/lib` hold two links to the nightly's libLLVM:
/// - `libLLVM.so`, which bpf-linker's build script looks for under `LLVM_PREFIX`;
/// - the library's own name (its soname, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`), which is
///   what the built binary asks the loader for, in its runpath `<prefix>/lib`. Without it
///   the installed bpf-linker does not start.
///
/// Links to other libLLVM files (a previous nightly) are removed, so a bpf-linker built
/// against one of them stops loading and gets rebuilt.
fn llvm_prefix(prefix: &Path, libllvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    let mut changed = Vec::new();

    for entry in fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let stale = name.to_string_lossy().starts_with("libLLVM.so.") && name != soname;
        if stale && entry.file_type()?.is_symlink() {
            fs::remove_file(entry.path())?;
            changed.push(format!("removed {}", name.to_string_lossy()));
        }
    }
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname.as_os_str()] {
        let link = lib.join(name);
        match fs::read_link(&link) {
            Ok(target) if target == libllvm => continue,
            Ok(_) => fs::remove_file(&link)?,
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("{} exists and is not a symlink", link.display()))
            }
        }
        symlink(libllvm, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), libllvm.display()))?;
        changed.push(format!("linked {}", name.to_string_lossy()));
    }

    if changed.is_empty() {
        step(format!(
            "LLVM prefix {}: present (-> {})",
            tilde(prefix),
            tilde(libllvm)
        ));
    } else {
        step(format!(
            "LLVM prefix {}: {} (-> {})",
            tilde(prefix),
            changed.join(", "),
            tilde(libllvm)
        ));
    }
    Ok(())
}

/// The version `bpf-linker --version` reports (`bpf-linker 0.13.0` → `0.13.0`).
fn linker_version(path: &Path) -> Result<String> {
    let out = output(command(&path.to_string_lossy()).arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("unexpected `bpf-linker --version` output: {}", out.trim()))
}

fn cargo_deb() -> Result<()> {
    if let Some(path) = util::which("cargo-deb") {
        match cargo_deb_version(&path) {
            Ok(found) if found == CARGO_DEB_VERSION => {
                step(format!(
                    "cargo-deb {found}: already installed ({})",
                    tilde(&path)
                ));
                return Ok(());
            }
            Ok(found) => step(format!(
                "cargo-deb at {} is {found}, not {CARGO_DEB_VERSION}: reinstalling",
                tilde(&path)
            )),
            Err(err) => step(format!(
                "cargo-deb at {} does not run ({err:#}): reinstalling",
                tilde(&path)
            )),
        }
    }
    step(format!(
        "installing cargo-deb {CARGO_DEB_VERSION} (40 to 90 s on 2 cores)"
    ));
    let home = util::home()?;
    util::run(
        cargo()
            .args(["install", "cargo-deb", "--version", CARGO_DEB_VERSION])
            .args(["--locked", "--force", "--no-default-features"])
            // Away from the workspace, so none of its cargo configuration applies.
            .current_dir(&home),
    )?;
    let path =
        util::which("cargo-deb").context("`cargo install` finished but no cargo-deb is on PATH")?;
    let found = cargo_deb_version(&path)
        .with_context(|| format!("the freshly installed {} does not run", path.display()))?;
    if found != CARGO_DEB_VERSION {
        bail!(
            "installed cargo-deb {CARGO_DEB_VERSION}, but the one found first on PATH ({}) is {found}",
            path.display()
        );
    }
    step(format!("cargo-deb {found} installed ({})", tilde(&path)));
    Ok(())
}

/// The version `cargo-deb --version` reports (`cargo-deb 3.8.0` → `3.8.0`; older releases
/// print `cargo-deb v3.8.0`).
fn cargo_deb_version(path: &Path) -> Result<String> {
    let out = output(command(&path.to_string_lossy()).arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(|version| version.trim_start_matches('v').to_owned())
        .with_context(|| format!("unexpected `cargo-deb --version` output: {}", out.trim()))
}

fn apt_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        step(format!(
            "Debian packages: all {} present ({})",
            APT_PACKAGES.len(),
            APT_PACKAGES.join(" ")
        ));
        return Ok(());
    }
    let list = missing.join(" ");
    if !util::is_root() {
        bail!(
            "Debian packages missing: {list}. Installing them needs root: run `sudo -E cargo xtask setup` \
             (or `sudo apt-get install {list}`)"
        );
    }
    step(format!("apt-get update (missing: {list})"));
    util::run(apt_get().arg("update"))?;
    step(format!("installing Debian packages: {list}"));
    util::run(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!(
            "apt-get install succeeded but these are still not installed: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn apt_get() -> std::process::Command {
    let mut cmd = command("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        // Wait for another apt (another shell, unattended upgrades) instead of failing.
        .args(["-q", "-o", "DPkg::Lock::Timeout=300"]);
    cmd
}

/// The packages of [`APT_PACKAGES`] that dpkg does not report as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    if util::which("dpkg-query").is_none() {
        bail!(
            "dpkg-query not found: setup installs packages on Debian/Ubuntu only; install these yourself: {}",
            APT_PACKAGES.join(" ")
        );
    }
    // One call for all; packages dpkg has never heard of are simply absent from the output
    // (and make it exit 1, which is why the status is not checked).
    let out = command("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(APT_PACKAGES)
        .stdin(std::process::Stdio::null())
        .output()
        .context("could not run dpkg-query")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.ends_with(" install ok installed"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|pkg| pkg.split(':').next().unwrap_or(pkg))
        .collect();
    Ok(APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !installed.contains(pkg))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llvm_major() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv).unwrap(), 22);
        assert!(llvm_major("rustc 1.0\n").is_err());
    }
}
