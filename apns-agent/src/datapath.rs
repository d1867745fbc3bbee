//! The XDP object built from apns-ebpf (by build.rs) and how to load it.

use anyhow::Context as _;
use aya::{programs::Xdp, Ebpf, EbpfLoader};

/// The eBPF object, embedded at build time.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apns"));

/// The same classifier with other instructions (another program tag) and identical maps and
/// behaviour: lets tests exercise an upgrade through the pinned links.
#[cfg(feature = "test-objects")]
pub static UPGRADE_PROBE_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apns-probe"));

/// The benchmarks' floor: an XDP program (`floor_xdp`) that bumps one per-CPU counter
/// (`FLOOR_PACKETS`) and passes.
#[cfg(feature = "test-objects")]
pub static BENCH_FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-floor"));

/// Name of the TC ingress program of the mark fast path in [`OBJECT`].
pub const TC_MARK_PROGRAM: &str = "apns_tc_mark";

/// Name of the XDP entry point in [`OBJECT`].
pub const XDP_PROGRAM: &str = "apns_xdp";

/// Loads the object with fresh, unpinned maps and loads (verifies) the XDP program, without
/// attaching it anywhere. Used by tests and benchmarks that drive the program through
/// BPF_PROG_TEST_RUN.
pub fn load_unpinned() -> anyhow::Result<Ebpf> {
    let mut ebpf = EbpfLoader::new()
        .load(OBJECT)
        .context("loading the apns-ebpf object (maps and BTF)")?;
    xdp_program(&mut ebpf)?
        .load()
        .with_context(|| format!("loading XDP program {XDP_PROGRAM} (the verifier log follows)"))?;
    Ok(ebpf)
}

/// The XDP program of a loaded object.
pub fn xdp_program(ebpf: &mut Ebpf) -> anyhow::Result<&mut Xdp> {
    ebpf.program_mut(XDP_PROGRAM)
        .with_context(|| format!("the object has no program named {XDP_PROGRAM}"))?
        .try_into()
        .with_context(|| format!("program {XDP_PROGRAM} is not an XDP program"))
}
