//! Names of the programs in the datapath object (the functions' names in apns-ebpf's
//! `main.rs`). The agent loads them by these names; a user-space test checks that the built
//! object has both, of the right program type, next to the map-name check.

/// The XDP classifier: parse, judge, count, verdict (and the fast paths' XDP half).
pub const XDP: &str = "apns_xdp";

/// The TC ingress half of the `mark` fast path: copies the XDP program's metadata into
/// `skb->mark`.
pub const TC_MARK: &str = "apns_tc_mark";

/// The TC egress half of the connection table, on device-facing interfaces: records Apple's
/// APNs packets as they leave toward a device (after NAT is undone).
pub const TC_CONNS: &str = "apns_tc_conns";
