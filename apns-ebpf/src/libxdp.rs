//! The classifier as a component of libxdp's multiprog dispatcher, for interfaces the agent
//! shares with other XDP programs (docs/multiprog.md): the agent loads `apns_xdp_libxdp` as an
//! extension program in place of one of the dispatcher's slots, with the maps pinned by the
//! datapath (the same statics as `main.rs`, so the same maps). An object of its own, so that
//! the main object's code stays as it is.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn apns_xdp_libxdp(ctx: XdpContext) -> u32 {
    apns_ebpf::handle_component(&ctx)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
