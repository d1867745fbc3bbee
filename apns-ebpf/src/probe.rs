//! A second build of the same classifier whose instructions differ from `main.rs` (so its
//! program tag differs) while its maps and behaviour are identical. The upgrade tests swap
//! between the two through the pinned links, as an agent upgrade would.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn apns_xdp(ctx: XdpContext) -> u32 {
    // black_box forces a stack round trip of the action: a few extra instructions, no effect.
    core::hint::black_box(apns_ebpf::handle(&ctx))
}

apns_ebpf::tc_programs!();

#[cfg(not(target_arch = "bpf"))]
fn main() {}
