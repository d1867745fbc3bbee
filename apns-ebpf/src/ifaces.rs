//! The interface entries (`APNS_IFACES`, an array by ifindex the agent writes): the counter
//! slot, the fast path and the flags of the interface a packet entered or leaves by. Read by
//! every program for every packet.

use apns_common::{
    counters::{usable_slot, OVERFLOW_SLOT},
    fastpath::{flags, IfaceConfig},
};

use crate::maps::APNS_IFACES;

/// The entry of `ifindex` (counter slot and fast path); `None` past the array. An interface
/// the agent never attached reads as zeroes: overflow slot, fast path `pass`.
#[inline(always)]
pub fn interface(ifindex: u32) -> Option<&'static IfaceConfig> {
    APNS_IFACES.get(ifindex)
}

/// The counter slot of an interface's entry (the overflow slot without one), bounded.
#[inline(always)]
pub fn counter_slot(iface: Option<&IfaceConfig>) -> u32 {
    usable_slot(iface.map_or(OVERFLOW_SLOT, |config| u32::from(config.counter_slot)))
}

/// Whether an interface faces the devices (config `[roles]`).
#[inline(always)]
pub fn faces_devices(iface: Option<&IfaceConfig>) -> bool {
    iface.is_some_and(|config| config.flags & flags::DEVICES != 0)
}
