//! Names of the programs in the datapath object (the functions' names in apns-ebpf's
//! `main.rs`). The agent loads them by these names; a user-space test checks that the built
//! object has each, of the right program type, next to the map-name check.

/// The XDP classifier: parse, judge, count, verdict (and the fast paths' XDP half).
pub const XDP: &str = "apns_xdp";

/// The TC ingress program of the fast paths, attached to every `mark` and `redirect`
/// interface: copies the `mark` path's metadata into `skb->mark`, and forwards the packets
/// the `redirect` path hands it (next hop not resolved) with `bpf_redirect_neigh`; where XDP
/// can write no metadata, it classifies those interfaces' packets itself to do both.
pub const TC: &str = "apns_tc";

/// The TC egress half of the connection table, on device-facing interfaces: records Apple's
/// APNs packets as they leave toward a device (after NAT is undone).
pub const TC_CONNS: &str = "apns_tc_conns";

/// The XDP classifier as a component of libxdp's multiprog dispatcher: the agent loads it as
/// an extension program (`BPF_PROG_TYPE_EXT`) in place of one of the dispatcher's slots on
/// interfaces it shares with other XDP programs. Built without `bpf_xdp_adjust_meta` calls,
/// so it hands no metadata to [`TC`]. At most 15 bytes, the kernel's name length.
pub const XDP_COMPONENT: &str = "apns_xdp_libxdp";
