//! The benchmarks' floor: an XDP program that bumps one per-CPU counter and passes. What
//! any attached program costs at least; apns-agent's classifier is reported against it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// Packets seen; written here, read by the benchmark.
#[map]
static FLOOR_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn floor_xdp(_ctx: XdpContext) -> u32 {
    if let Some(count) = FLOOR_PACKETS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, and XDP runs with preemption disabled.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_PASS
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // This program does not use the classifier library (and its panic handler) on purpose.
    loop {}
}
