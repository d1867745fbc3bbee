//! The redirect fast path's egress map (`APNS_TX_PORTS`): a `BPF_MAP_TYPE_DEVMAP_HASH` whose
//! values are a bare ifindex (4 bytes), not aya-ebpf's `DevMapHash` with 8-byte
//! `bpf_devmap_val`s. Linux before 5.14 refuses to run a program in generic (skb) mode when
//! it uses a devmap whose entries could carry a program of their own (8-byte values:
//! `generic_xdp_install`, EINVAL), so with aya-ebpf's map the datapath could not attach in
//! skb mode on Debian 11's 5.10. The agent never gives an entry a program.

use core::{cell::UnsafeCell, ffi::c_void};

use aya_ebpf::{
    bindings::{bpf_map_def, bpf_map_type::BPF_MAP_TYPE_DEVMAP_HASH, xdp_action},
    helpers::{bpf_map_lookup_elem, bpf_redirect_map},
};

/// The egress interfaces the fast path may forward to, keyed and valued by ifindex.
#[repr(transparent)]
pub struct EgressDevices(UnsafeCell<bpf_map_def>);

// SAFETY: the definition is only read, by the loader; the kernel owns the map itself.
unsafe impl Sync for EgressDevices {}

impl EgressDevices {
    pub const fn with_max_entries(max_entries: u32) -> EgressDevices {
        EgressDevices(UnsafeCell::new(bpf_map_def {
            type_: BPF_MAP_TYPE_DEVMAP_HASH,
            key_size: size_of::<u32>() as u32,
            value_size: size_of::<u32>() as u32,
            max_entries,
            map_flags: 0,
            id: 0,
            // Not pinned by the loader: the agent pins its maps itself.
            pinning: 0,
        }))
    }

    fn as_ptr(&self) -> *mut c_void {
        self.0.get().cast()
    }

    /// Whether `ifindex` is in the map.
    #[inline(always)]
    pub fn contains(&self, ifindex: u32) -> bool {
        // SAFETY: a lookup with a key of the map's key size; the value is not read.
        let value = unsafe { bpf_map_lookup_elem(self.as_ptr(), (&raw const ifindex).cast()) };
        !value.is_null()
    }

    /// Redirects the frame to `ifindex`: `XDP_REDIRECT`, or the action the helper returned
    /// instead (the entry is missing).
    #[inline(always)]
    pub fn redirect(&self, ifindex: u32) -> Result<u32, u32> {
        // SAFETY: the map pointer is this map's definition, which the loader relocates.
        let action = unsafe { bpf_redirect_map(self.as_ptr(), u64::from(ifindex), 0) };
        match action as u32 {
            xdp_action::XDP_REDIRECT => Ok(xdp_action::XDP_REDIRECT),
            other => Err(other),
        }
    }
}
