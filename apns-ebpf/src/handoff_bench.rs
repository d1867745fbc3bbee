//! A benchmark build of the datapath whose `redirect` fast path hands every packet it would
//! forward to the TC step (`bpf_redirect_neigh`), as if its next hop had no resolved
//! neighbour: the cost of the TC step per packet, against XDP redirect, on a steady flow
//! (`tests/examples/redirect_first_packet.rs`). Maps and every other behaviour as `main.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn apns_xdp(ctx: XdpContext) -> u32 {
    apns_ebpf::handle_with::<true, true>(&ctx)
}

apns_ebpf::tc_programs!();

#[cfg(not(target_arch = "bpf"))]
fn main() {}
