//! `cargo xtask setup`: installs, idempotently, what the build and the tests need.
//!
//! 1. `rust-src` for the installed nightly (the eBPF crate is built with `-Z build-std=core`).
//! 2. bpf-linker 0.13.0 built against the nightly toolchain's own libLLVM (docs/platform.md).
//! 3. cargo-deb, which `cargo xtask dist` packages the agent with; and, only for the commands
//!    that use them ([`checkers`]: `setup`, `test`, `deny`, `fuzz`), cargo-deny, the
//!    supply-chain checks of `cargo xtask test`, and cargo-fuzz, which builds and runs the
//!    fuzz targets of `fuzz/`: they take minutes to build, which `demo` need not wait for.
//! 4. The Debian packages in [`APT_PACKAGES`].
//!
//! and, for the kernel matrix ([`guests`]: `cargo xtask setup`, `test` and `vm` call it),
//! 5. virtme-ng [`vm::VIRTME_NG_VERSION`] in a Python venv ([`vm::virtme_ng_venv`]);
//! 6. the Debian kernels of [`vm::GUEST_KERNELS`], downloaded with `apt-get download` (from the
//!    system's sources, or from a suite they lack through a private source list and apt state
//!    in `target/kernels/apt-<suite>/`, never touching the system's), unpacked into
//!    `target/kernels/<release>/` and indexed with `depmod`.
//!
//! Each step first checks what is there and says so; a second run takes about a second.
//! It never runs `rustup update` and never installs another nightly: bpf-linker is tied to
//! the installed nightly's LLVM.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{self, cargo, command, elapsed, output, step, tilde};
use crate::vm::{self, GuestKernel};

/// The bpf-linker release that fits the pinned aya family and the nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// A cargo subcommand `cargo install` builds from crates.io, pinned, so that what it does
/// (and what the tests check of it) does not change under us.
pub struct CargoTool {
    /// The crate, and the binary it installs.
    pub name: &'static str,
    pub version: &'static str,
    /// More arguments for `cargo install`.
    install_args: &'static [&'static str],
    /// How long installing it took here, for the progress line.
    takes: &'static str,
}

/// cargo-deb, which `cargo xtask dist` packages the agent with: pinned, so the maintainer
/// scripts it generates (and the package test checks) do not change. Built without its
/// default features (the bundled liblzma and debug-id support), so there is less to compile:
/// `dist` compresses with the system's `xz` (`--compress-system`) instead.
pub const CARGO_DEB: CargoTool = CargoTool {
    name: "cargo-deb",
    version: "3.8.0",
    install_args: &["--no-default-features"],
    takes: "40 to 90 s on 2 cores",
};

/// cargo-deny, the licence, ban, source and advisory checks of `cargo xtask test`
/// (deny.toml, `deny.rs`). 0.20.2 declares rust-version 1.88: it builds with the stable
/// toolchain.
pub const CARGO_DENY: CargoTool = CargoTool {
    name: "cargo-deny",
    version: "0.20.2",
    install_args: &[],
    takes: "about 20 min on 2 cores shared with other builds",
};

/// cargo-fuzz, which builds the fuzz targets of `fuzz/` with the nightly toolchain's
/// sanitizers and runs them under libFuzzer (`fuzz.rs`).
pub const CARGO_FUZZ: CargoTool = CargoTool {
    name: "cargo-fuzz",
    version: "0.13.2",
    install_args: &[],
    takes: "about 4 min on 2 cores",
};

/// The cargo subcommands of [`checkers`].
const CHECKERS: &[&CargoTool] = &[&CARGO_DENY, &CARGO_FUZZ];

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
    // The kernel matrix (xtask/src/vm.rs): QEMU for the guests; kmod's depmod for the unpacked
    // kernels' modules; busybox-static, which virtme-ng puts in the initramfs that Debian's
    // kernels need (their 9p is a module); python3-venv for virtme-ng's venv (virtme-ng is
    // not in Debian 12, and pip refuses system-wide installs there).
    "qemu-system-x86",
    "kmod",
    "busybox-static",
    "python3-venv",
];

pub fn run() -> Result<()> {
    let start = Instant::now();
    if !util::is_root() {
        step("not root: rust-src and bpf-linker install into your home and need no root; installing Debian packages needs root");
    }
    rust_src()?;
    bpf_linker()?;
    cargo_tool(&CARGO_DEB)?;
    apt_packages()?;
    step(format!("setup done ({})", elapsed(start.elapsed())));
    Ok(())
}

/// [`run`], then the checkers of `cargo xtask test` (`deny`, `fuzz`): cargo-deny and
/// cargo-fuzz.
pub fn checkers() -> Result<()> {
    run()?;
    for tool in CHECKERS {
        cargo_tool(tool)?;
    }
    Ok(())
}

/// `cargo xtask setup`: [`checkers`], then what the guests of every kernel need.
pub fn all() -> Result<()> {
    checkers()?;
    let kernels: Vec<&GuestKernel> = vm::GUEST_KERNELS.iter().collect();
    guests(&kernels)
}

/// What booting `kernels` in guests needs: virtme-ng and the kernels, unpacked. Needs the
/// Debian packages of [`run`] (QEMU, kmod, busybox-static, python3-venv).
pub fn guests(kernels: &[&GuestKernel]) -> Result<()> {
    let start = Instant::now();
    virtme_ng()?;
    for kernel in kernels {
        guest_kernel(kernel)?;
    }
    step(format!(
        "guests ready: {} ({})",
        kernels
            .iter()
            .map(|kernel| kernel.name)
            .collect::<Vec<_>>()
            .join(", "),
        elapsed(start.elapsed())
    ));
    Ok(())
}

/// virtme-ng [`vm::VIRTME_NG_VERSION`] in its venv, made with Debian's python3 (whose venv
/// module python3-venv provides; another python3 earlier on PATH, such as pyenv's, may come
/// and go).
fn virtme_ng() -> Result<()> {
    let venv = vm::virtme_ng_venv()?;
    let vng = venv.join("bin/vng");
    let wanted = format!("virtme-ng {}", vm::VIRTME_NG_VERSION);
    if vng.is_file() {
        match output(std::process::Command::new(&vng).arg("--version")) {
            Ok(found) if found.trim() == wanted => {
                step(format!("{wanted}: already installed ({})", tilde(&venv)));
                return Ok(());
            }
            Ok(found) => step(format!(
                "{} is {}, not {wanted}: reinstalling",
                tilde(&vng),
                found.trim()
            )),
            Err(err) => step(format!(
                "{} does not run ({err:#}): reinstalling",
                tilde(&vng)
            )),
        }
    }
    step(format!(
        "installing {wanted} into a venv at {} (about 10 s)",
        tilde(&venv)
    ));
    util::run(
        std::process::Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )
    .context("making virtme-ng's venv needs Debian's python3 and python3-venv")?;
    util::run(
        std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("virtme-ng=={}", vm::VIRTME_NG_VERSION)),
    )?;
    let found = output(std::process::Command::new(&vng).arg("--version"))
        .with_context(|| format!("the freshly installed {} does not run", vng.display()))?;
    if found.trim() != wanted {
        bail!(
            "installed {wanted}, but {} says {}",
            vng.display(),
            found.trim()
        );
    }
    step(format!("{wanted} installed ({})", tilde(&venv)));
    Ok(())
}

/// One kernel of the matrix, unpacked into [`GuestKernel::dir`] with its modules indexed.
/// It is unpacked beside its place first and moved there once complete, so a tree that is
/// there is whole.
fn guest_kernel(kernel: &GuestKernel) -> Result<()> {
    let dir = kernel.dir();
    let package = kernel.package();
    if kernel.vmlinuz().is_file() && kernel.modules().join("modules.dep").is_file() {
        step(format!(
            "kernel {} ({package}): already installed ({})",
            kernel.name,
            tilde(&dir)
        ));
        return Ok(());
    }
    let kernels = vm::kernels_dir();
    let download = kernels.join(format!(".download-{}", kernel.release));
    let partial = kernels.join(format!(".partial-{}", kernel.release));
    for stale in [&download, &partial] {
        if stale.exists() {
            fs::remove_dir_all(stale)
                .with_context(|| format!("cannot remove {}", stale.display()))?;
        }
    }
    fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    let start = Instant::now();
    match kernel.suite {
        None => {
            step(format!(
                "downloading kernel {} ({package}, 60 to 110 MB)",
                kernel.name
            ));
            let mut get = apt_get();
            get.args(["-o", "APT::Sandbox::User=root", "download", &package])
                .current_dir(&download);
            if util::run(&mut get).is_err() {
                step(format!(
                    "apt-get download {package} failed: apt-get update, then once more"
                ));
                util::run(apt_get().arg("update"))?;
                util::run(&mut get).with_context(|| {
                    format!(
                        "the system's sources have no {package}: if Debian has moved on to a new                          ABI, change its release in GUEST_KERNELS (xtask/src/vm.rs);                          `apt-cache search linux-image-{}` lists what there is",
                        kernel.name
                    )
                })?;
            }
        }
        Some(suite) => {
            let options = private_suite(suite)?;
            step(format!(
                "downloading kernel {} ({package}, 60 to 110 MB) from {suite}",
                kernel.name
            ));
            util::run(
                apt_get()
                    .args(&options)
                    .args(["download", &package])
                    .current_dir(&download),
            )
            .with_context(|| {
                format!(
                    "{suite} has no {package}: if Debian has moved on to a new ABI, change its                      release in GUEST_KERNELS (xtask/src/vm.rs)"
                )
            })?;
        }
    }
    let deb = single_deb(&download)?;
    step(format!(
        "unpacking {} into {} and indexing its modules",
        deb.file_name().unwrap_or_default().to_string_lossy(),
        tilde(&dir)
    ));
    util::run(command("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let modules = vm::modules_dir(&partial, kernel.release);
    // depmod's base is the folder holding lib/modules.
    let base = modules
        .ancestors()
        .nth(3)
        .context("the modules folder has no base")?;
    util::run(command("depmod").arg("-b").arg(base).arg(kernel.release))?;
    let vmlinuz = partial
        .join("boot")
        .join(format!("vmlinuz-{}", kernel.release));
    if !vmlinuz.is_file() || !modules.join("modules.dep").is_file() {
        bail!(
            "{} unpacked without {} or {}",
            deb.display(),
            vmlinuz.display(),
            modules.join("modules.dep").display()
        );
    }
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::rename(&partial, &dir)
        .with_context(|| format!("cannot move {} to {}", partial.display(), dir.display()))?;
    fs::remove_dir_all(&download)
        .with_context(|| format!("cannot remove {}", download.display()))?;
    step(format!(
        "kernel {} installed ({}, {})",
        kernel.name,
        tilde(&dir),
        elapsed(start.elapsed())
    ));
    Ok(())
}

/// The one .deb `apt-get download` left in `dir`.
fn single_deb(dir: &Path) -> Result<PathBuf> {
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    match debs.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one .deb in {} after apt-get download, found {}",
            dir.display(),
            debs.len()
        ),
    }
}

/// apt options that read `suite` of the system's Debian mirror, with the system's keyring,
/// through a source list and apt state of their own in `target/kernels/apt-<suite>/` (updated
/// here): the system's sources and lists stay as they are.
fn private_suite(suite: &str) -> Result<Vec<String>> {
    let state = vm::kernels_dir().join(format!("apt-{suite}"));
    let lists = state.join("lists");
    let cache = state.join("cache");
    for dir in [lists.join("partial"), cache.join("archives/partial")] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let archive = debian_archive()?;
    let list = state.join("sources.list");
    let line = format!(
        "deb [signed-by={}] {} {suite} main\n",
        archive.keyring.display(),
        archive.uri
    );
    fs::write(&list, &line).with_context(|| format!("cannot write {}", list.display()))?;
    let options = vec![
        "-o".to_owned(),
        format!("Dir::Etc::SourceList={}", list.display()),
        "-o".to_owned(),
        "Dir::Etc::SourceParts=/dev/null".to_owned(),
        "-o".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".to_owned(),
        format!("Dir::Cache={}", cache.display()),
        // Downloads land in a folder apt's sandbox user cannot write.
        "-o".to_owned(),
        "APT::Sandbox::User=root".to_owned(),
    ];
    step(format!(
        "apt-get update of a private {suite} list ({} {suite} main, keyring {})",
        archive.uri,
        archive.keyring.display()
    ));
    util::run(apt_get().args(&options).arg("update"))?;
    Ok(options)
}

/// The Debian archive the system's sources use for its own release, and its keyring.
struct Archive {
    uri: String,
    keyring: PathBuf,
}

/// Debian's keyring, which holds the archive keys of earlier releases too.
const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Reads /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources} for the entry of
/// the system's release (`VERSION_CODENAME` of /etc/os-release, e.g. `bookworm`); Debian's
/// own mirror and keyring when there is none.
fn debian_archive() -> Result<Archive> {
    let os_release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os_release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|name| name.trim_matches('"').to_owned())
        .unwrap_or_default();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        let found = if name.ends_with(".sources") {
            deb822_archive(&text, &codename)
        } else if name.ends_with(".list") {
            one_line_archive(&text, &codename)
        } else {
            None
        };
        if let Some(archive) = found {
            return Ok(archive);
        }
    }
    step(format!(
        "no {codename} entry in the system's apt sources: using http://deb.debian.org/debian"
    ));
    Ok(Archive {
        uri: "http://deb.debian.org/debian".to_owned(),
        keyring: PathBuf::from(DEBIAN_KEYRING),
    })
}

/// A keyring named by `Signed-By`/`signed-by=` if it is a file, else Debian's.
fn keyring(signed_by: Option<&str>) -> PathBuf {
    signed_by
        .map(str::trim)
        .filter(|path| path.starts_with('/') && Path::new(path).is_file())
        .map_or_else(|| PathBuf::from(DEBIAN_KEYRING), PathBuf::from)
}

/// The first enabled `Types: deb` stanza of a deb822 .sources file whose Suites name
/// `codename` exactly.
fn deb822_archive(text: &str, codename: &str) -> Option<Archive> {
    // Stanzas are separated by blank lines; a field continues on lines that start with a
    // space (an inline key), which only the first line of matters here.
    let mut stanzas = vec![BTreeMap::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            stanzas.push(BTreeMap::new());
        } else if !line.starts_with(['#', ' ', '\t']) {
            if let (Some((key, value)), Some(fields)) = (line.split_once(':'), stanzas.last_mut()) {
                fields.insert(key.trim().to_lowercase(), value.trim().to_owned());
            }
        }
    }
    stanzas.into_iter().find_map(|fields| {
        let has = |key: &str, word: &str| {
            fields
                .get(key)
                .is_some_and(|value| value.split_whitespace().any(|w| w == word))
        };
        if !has("types", "deb")
            || !has("suites", codename)
            || fields.get("enabled").is_some_and(|v| v == "no")
        {
            return None;
        }
        Some(Archive {
            uri: fields.get("uris")?.split_whitespace().next()?.to_owned(),
            keyring: keyring(fields.get("signed-by").map(String::as_str)),
        })
    })
}

/// The first `deb [options] URI SUITE COMPONENTS...` line with SUITE `codename`.
fn one_line_archive(text: &str, codename: &str) -> Option<Archive> {
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let (options, rest) = match rest.strip_prefix('[') {
            Some(inner) => inner.split_once(']')?,
            None => ("", rest),
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if suite != codename {
            continue;
        }
        let signed_by = options
            .split_whitespace()
            .find_map(|option| option.strip_prefix("signed-by="));
        return Some(Archive {
            uri: uri.to_owned(),
            keyring: keyring(signed_by),
        });
    }
    None
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

/// `tool`, installed with `cargo install` unless the one on PATH is that version.
fn cargo_tool(tool: &CargoTool) -> Result<()> {
    let CargoTool { name, version, .. } = tool;
    if let Some(path) = util::which(name) {
        match tool_version(&path) {
            Ok(found) if found == *version => {
                step(format!(
                    "{name} {found}: already installed ({})",
                    tilde(&path)
                ));
                return Ok(());
            }
            Ok(found) => step(format!(
                "{name} at {} is {found}, not {version}: reinstalling",
                tilde(&path)
            )),
            Err(err) => step(format!(
                "{name} at {} does not run ({err:#}): reinstalling",
                tilde(&path)
            )),
        }
    }
    step(format!("installing {name} {version} ({})", tool.takes));
    let home = util::home()?;
    util::run(
        cargo()
            .args(["install", name, "--version", version, "--locked", "--force"])
            .args(tool.install_args)
            // Away from the workspace, so none of its cargo configuration applies.
            .current_dir(&home),
    )?;
    let path = util::which(name)
        .with_context(|| format!("`cargo install` finished but no {name} is on PATH"))?;
    let found = tool_version(&path)
        .with_context(|| format!("the freshly installed {} does not run", path.display()))?;
    if found != *version {
        bail!(
            "installed {name} {version}, but the one found first on PATH ({}) is {found}",
            path.display()
        );
    }
    step(format!("{name} {found} installed ({})", tilde(&path)));
    Ok(())
}

/// The version `<tool> --version` reports (`cargo-deb 3.8.0` → `3.8.0`; older releases of
/// cargo-deb print `cargo-deb v3.8.0`).
fn tool_version(path: &Path) -> Result<String> {
    let out = output(command(&path.to_string_lossy()).arg("--version"))?;
    out.split_whitespace()
        .nth(1)
        .map(|version| version.trim_start_matches('v').to_owned())
        .with_context(|| {
            format!(
                "unexpected `{} --version` output: {}",
                path.display(),
                out.trim()
            )
        })
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
    fn finds_the_release_archive_in_deb822_sources() {
        let sources = "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\n";
        let archive = deb822_archive(sources, "bookworm").unwrap();
        assert_eq!(archive.uri, "http://deb.debian.org/debian");
        assert_eq!(archive.keyring, Path::new(DEBIAN_KEYRING));
        assert!(deb822_archive(sources, "trixie").is_none());
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://x/debian\nSuites: bookworm\n";
        assert!(deb822_archive(disabled, "bookworm").is_none());
    }

    #[test]
    fn finds_the_release_archive_in_one_line_sources() {
        let list = "# deb http://old/debian bookworm main\ndeb-src http://src/debian bookworm main\ndeb [arch=amd64 signed-by=/nonexistent.gpg] http://mirror/debian bookworm main contrib\n";
        let archive = one_line_archive(list, "bookworm").unwrap();
        assert_eq!(archive.uri, "http://mirror/debian");
        // A keyring that is not there falls back to Debian's.
        assert_eq!(archive.keyring, Path::new(DEBIAN_KEYRING));
        assert!(one_line_archive(list, "bullseye").is_none());
    }

    #[test]
    fn reads_llvm_major() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv).unwrap(), 22);
        assert!(llvm_major("rustc 1.0\n").is_err());
    }
}
