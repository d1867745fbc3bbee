//! Builds the eBPF crate (apns-ebpf) for bpfel-unknown-none with the nightly toolchain and
//! leaves its objects (one per binary of the crate) in OUT_DIR, where `src/datapath/object.rs`
//! embeds them.

fn main() -> anyhow::Result<()> {
    // aya-build's own failure when bpf-linker is missing is a page of cargo output; say the fix
    // in one line instead.
    if which::which("bpf-linker").is_err() {
        println!("cargo::error=bpf-linker not found on PATH: run `cargo xtask setup` (it installs the nightly-matched build)");
        return Ok(());
    }
    // aya-build watches the eBPF crate's own folder only; the types it shares with user space
    // live in apns-common, and a stale object would disagree with them on every layout.
    println!("cargo::rerun-if-changed=../apns-common");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "apns-ebpf",
            root_dir: "../apns-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
