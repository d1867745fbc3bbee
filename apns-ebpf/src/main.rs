//! The XDP program apns-agent attaches to every interface, and its TC programs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn apns_xdp(ctx: XdpContext) -> u32 {
    apns_ebpf::handle(&ctx)
}

apns_ebpf::tc_programs!();

/// The crate is also compiled for the host by `cargo clippy --workspace`; there it is empty.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
