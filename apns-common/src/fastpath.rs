//! Per-interface fast-path settings: what the XDP program does with APNs traffic it passes.

/// [`IfaceConfig::fastpath`] values. Never renumber.
pub mod mode {
    /// Classify and count only; the kernel stack forwards the packet.
    pub const PASS: u32 = 0;
    /// Code reserved for marking APNs packets for netfilter and policy routing (not built yet).
    pub const MARK: u32 = 1;
    /// Forward APNs packets from XDP (FIB lookup, MAC rewrite, TTL/hop limit decrement,
    /// XDP_REDIRECT), past netfilter. Falls back to the stack whenever the FIB cannot settle.
    pub const REDIRECT: u32 = 2;
}

/// Value of `APNS_IFACES`, keyed by ingress ifindex: written by the agent when it attaches
/// an interface or changes its fast path; read by the XDP program for APNs packets only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceConfig {
    /// A [`mode`] value.
    pub fastpath: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<IfaceConfig>() == 8);

#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceConfig {}
