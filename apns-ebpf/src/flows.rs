//! The `redirect` fast path's flow table (`APNS_FLOWS`, documented in
//! `apns_common::maps::FLOWS`): the fast path forwards an inbound packet only if it belongs
//! to a flow a device behind the gateway opened, as nftables' flowtables offload only what
//! conntrack saw established. Everything else goes to the stack, where the operator's
//! firewall judges it (docs/fastpath.md, "Trust"). (The `mark` fast path marks the device's
//! packets only; its flows pass the stack's conntrack.)
//!
//! A device's packet (outbound) entering a `redirect` interface opens its flow
//! there, from the first packet on, so the reply to a device's first SYN already finds it.
//! An inbound packet is admitted only if its flow was opened on another interface than the
//! one it enters: a source address forged on the outside cannot open the flow its own
//! forged replies would then use. Entries leave only when the LRU evicts them (every lookup
//! refreshes one), never at a FIN: the last segments of a closing connection may still be
//! in flight, and after a fast path the stack's conntrack never saw the connection.

use apns_common::{conns::ConnKey, counters::Direction, fastpath::Fallback};
use aya_ebpf::bindings::BPF_ANY;

use crate::maps::APNS_FLOWS;

/// Whether the packet of flow `key`, entering `ingress` in `direction`, may take the fast
/// path: `Ok(None)` for a device's packet (its flow is opened here if it was not),
/// `Ok(Some(ifindex))` for an inbound packet of a flow opened on `ifindex` (a `redirect` sends
/// it nowhere else), or [`Fallback::Unsolicited`].
#[inline(always)]
pub fn admit(key: &ConnKey, direction: Direction, ingress: u32) -> Result<Option<u32>, Fallback> {
    let opened_on = APNS_FLOWS.get_ptr(key).map(|value| {
        // SAFETY: a map value pointer stays valid for the whole program run.
        unsafe { *value }
    });
    if direction == Direction::Outbound {
        if opened_on != Some(ingress) {
            // A failed insert (the map full of entries being inserted at once) only means
            // the replies go to the stack.
            let _ = APNS_FLOWS.insert(key, ingress, u64::from(BPF_ANY));
        }
        return Ok(None);
    }
    match opened_on {
        Some(ifindex) if ifindex != ingress => Ok(Some(ifindex)),
        _ => Err(Fallback::Unsolicited),
    }
}
