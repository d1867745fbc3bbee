//! What the kernel programs (apns-ebpf) and user space (apns-agent) share: map names and
//! sizes, the key and value layouts of every map, and the numeric codes stored in them.
//!
//! Rules for everything in this crate:
//! - `#[repr(C)]`, fixed-width integers, explicit padding, no `bool`; every struct's size is
//!   asserted at compile time so a change shows up here and not as a verifier or
//!   `EINVAL` surprise.
//! - Codes (outcomes, directions, modes, role bits) are never renumbered; retired ones stay
//!   reserved. Each concept has one type here with its code and its label
//!   ([`label::Label`]); user space prints and parses through it, never a mirror type.
//! - Any change to a key or value layout, a map's type or its size bumps [`LAYOUT_VERSION`],
//!   so an agent never silently reuses pinned maps of another layout.
#![cfg_attr(not(test), no_std)]

pub mod conns;
pub mod counters;
pub mod events;
pub mod fastpath;
pub mod features;
pub mod ip;
pub mod label;
pub mod long_prefixes;
pub mod maps;
pub mod policy;
pub mod prefilter;
pub mod programs;

/// Version of the map layout described by this crate. The agent stores it in the
/// [`maps::META`] map when it creates the maps and checks it before adopting pinned ones.
///
/// History: 2 keyed the counters by a per-CPU hash; 3 (datapath v2) counts in a per-CPU
/// array by (interface slot, port slot, cell), makes `APNS_IFACES` an array by ifindex,
/// replaces `APNS_PORTS` by `APNS_TABLES` (per generation: port entries with a counter slot,
/// and the address prefilter), lists port roles in `APNS_POLICY`, and adds `APNS_CNT_SLOTS`,
/// `APNS_CNT_CARRIED` (counts carried over by a migration), `APNS_FP_PATHS` (the redirect
/// fast path's paths), the connection table (`APNS_CONNS`, `APNS_CONN_STATS`, the
/// `apns_tc_conns` program), and the redirect fast path's flow table (`APNS_FLOWS`). Layout 3
/// is not released yet; maps added to it since need no migration from an earlier layout 3.
pub const LAYOUT_VERSION: u32 = 3;

/// The map layout the agent migrates from in place (the previous release's; the agent's
/// `datapath::migrate::previous` reads it). Older and newer layouts are refused.
pub const PREVIOUS_LAYOUT_VERSION: u32 = 2;
