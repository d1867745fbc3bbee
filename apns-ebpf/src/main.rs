//! The XDP program apns-agent attaches to every interface.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn apns_xdp(ctx: XdpContext) -> u32 {
    apns_ebpf::handle(&ctx)
}

/// TC ingress program of the mark and redirect fast paths (see `apns_ebpf::tc`).
#[classifier]
pub fn apns_tc(ctx: TcContext) -> i32 {
    apns_ebpf::tc::handle(&ctx)
}

/// TC egress half of the connection table, on device-facing interfaces (see
/// `apns_ebpf::tc_conns`).
#[classifier]
pub fn apns_tc_conns(ctx: TcContext) -> i32 {
    apns_ebpf::tc_conns::handle(&ctx)
}

/// The crate is also compiled for the host by `cargo clippy --workspace`; there it is empty.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
