//! Optional kernel features the datapath's code depends on. The agent probes them before it
//! loads the programs (`apns-agent`'s `datapath::features`) and hands the result to the
//! programs as the load-time constant [`GLOBAL`] (aya global data in `.rodata`, frozen
//! before the programs load). The verifier then knows the value, follows only the branches
//! the kernel can run and removes the others, so it never meets a helper the kernel lacks.
//!
//! A bit that is 0 is always safe: the programs then take the way every kernel of the
//! matrix has (docs/platform.md, "Kernel matrix"). Never renumber.

/// The name of the `u32` global the programs read the [`bits`] from.
pub const GLOBAL: &str = "APNS_FEATURES";

/// The bits of [`GLOBAL`].
pub mod bits {
    /// XDP programs may call `bpf_xdp_adjust_meta` (some kernel builds refuse it): the XDP
    /// program hands the `mark` and `redirect` fast paths' decisions to the TC ingress
    /// program as XDP metadata. Without it, the TC ingress program classifies APNs packets
    /// itself.
    pub const XDP_META: u32 = 1 << 0;
    /// `bpf_ktime_get_coarse_ns` (Linux 5.11+): the connection table's clock. Without it,
    /// `bpf_ktime_get_ns` (about 10 ns more per recorded packet).
    pub const COARSE_CLOCK: u32 = 1 << 1;
}
