//! The fast paths for APNs packets: `redirect` (forwarded by XDP itself, past netfilter) and
//! `mark` (tagged for netfilter and policy routing through XDP metadata).
//!
//! For an interface whose fast path is `redirect`, an untagged APNs packet gets a FIB lookup
//! (bpf_fib_lookup, the kernel's own routing table and neighbour cache). Only a plain success
//! is forwarded: new MACs, TTL or hop limit minus one (IPv4 checksum updated incrementally),
//! XDP_REDIRECT through the egress devmap. Whatever the FIB cannot settle — no neighbour yet,
//! fragmentation needed, a local destination, a blackhole/unreachable/prohibit route, a TTL
//! about to expire, an egress interface the agent does not manage — returns `None`, and the
//! caller passes the packet to the stack, which knows how to answer (ICMP, ARP/ND, ...).

use apns_common::fastpath::{IfaceConfig, MarkMeta, MARK_META_MAGIC};
use aya_ebpf::{
    bindings::{bpf_fib_lookup, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_xdp_adjust_meta},
    programs::XdpContext,
    EbpfContext as _,
};

use aya_log_ebpf::debug;

use crate::{
    maps::{APNS_IFACES, APNS_TX_PORTS},
    parse::{Addrs, Cursor, TcpPacket, IPV4_TTL, IPV6_HOP_LIMIT},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPPROTO_TCP: u8 = 6;
/// Offsets inside the IPv4 header (the TTL's and the hop limit's are `parse`'s).
const IPV4_TOS: usize = 1;
const IPV4_CHECKSUM: usize = 10;
/// The Ethernet header's destination and source MACs.
const ETH_ALEN: usize = 6;

/// The entry of `ifindex` (counter slot and fast path); `None` past the array. An interface
/// the agent never attached reads as zeroes: overflow slot, fast path `pass`.
#[inline(always)]
pub fn interface(ifindex: u32) -> Option<&'static IfaceConfig> {
    APNS_IFACES.get(ifindex)
}

/// Puts a [`MarkMeta`] in front of the packet for the TC ingress program to copy into
/// `skb->mark`. Must be the last thing done with the frame: moving the metadata boundary
/// invalidates every packet pointer.
#[inline(always)]
pub fn mark(ctx: &XdpContext, config: &IfaceConfig) {
    // SAFETY: a helper on our own context; a negative delta grows the metadata area.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<MarkMeta>() as i32)) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    if meta + size_of::<MarkMeta>() > ctx.data() {
        return;
    }
    // SAFETY: the bounds were checked just above, in the form the verifier understands.
    unsafe {
        *(meta as *mut MarkMeta) = MarkMeta {
            magic: MARK_META_MAGIC,
            mark: config.mark,
            mask: config.mark_mask,
        };
    }
}

/// Forwards `packet` if the FIB settles it; returns the XDP action (XDP_REDIRECT) and the
/// egress ifindex, or `None` to leave the packet to the stack.
#[inline(always)]
pub fn redirect(
    ctx: &XdpContext,
    cursor: &Cursor,
    ifindex: u32,
    packet: &TcpPacket,
) -> Option<(u32, u32)> {
    if packet.tagged {
        return None;
    }
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.l4_protocol = IPPROTO_TCP;
    params.sport = packet.sport.to_be();
    params.dport = packet.dport.to_be();
    params.__bindgen_anon_1.tot_len = packet.ip_len;
    params.ifindex = ifindex;
    match &packet.addrs {
        Addrs::V4 { src, dst } => {
            let ip = cursor.bytes::<20>(packet.l3).ok()?;
            params.family = AF_INET;
            params.__bindgen_anon_2.tos = ip[IPV4_TOS];
            params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(**src);
            params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(**dst);
        }
        Addrs::V6 { src, dst } => {
            params.family = AF_INET6;
            params.__bindgen_anon_3.ipv6_src = words(src);
            params.__bindgen_anon_4.ipv6_dst = words(dst);
        }
    }
    // The stack sends the ICMP time-exceeded a TTL of 1 deserves.
    if *cursor.bytes::<1>(packet.ttl_offset()).ok()?.first()? <= 1 {
        return None;
    }
    // SAFETY: `params` is a valid, fully initialised bpf_fib_lookup on our stack.
    let result = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if result != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        debug!(
            ctx,
            "fast path: FIB result {} on ifindex {}, passing to the stack", result, ifindex
        );
        return None;
    }
    // Only out of interfaces the agent manages (and the devmap holds).
    APNS_TX_PORTS.get_ifindex(params.ifindex)?;

    match packet.addrs {
        Addrs::V4 { .. } => {
            let ip = cursor.bytes_mut::<20>(packet.l3).ok()?;
            ip[IPV4_TTL] -= 1;
            // RFC 1624: the 16-bit word holding the TTL went down by 0x0100, so the
            // one's-complement checksum goes up by 0x0100, with the end-around carry.
            let check = u32::from(u16::from_be_bytes([
                ip[IPV4_CHECKSUM],
                ip[IPV4_CHECKSUM + 1],
            ]));
            let sum = check + 0x0100;
            let folded = ((sum & 0xffff) + (sum >> 16)) as u16;
            ip[IPV4_CHECKSUM..IPV4_CHECKSUM + 2].copy_from_slice(&folded.to_be_bytes());
        }
        Addrs::V6 { .. } => {
            let ip = cursor.bytes_mut::<8>(packet.l3).ok()?;
            ip[IPV6_HOP_LIMIT] -= 1;
        }
    }
    let eth = cursor.bytes_mut::<{ 2 * ETH_ALEN }>(0).ok()?;
    eth[..ETH_ALEN].copy_from_slice(&params.dmac);
    eth[ETH_ALEN..].copy_from_slice(&params.smac);
    let action = APNS_TX_PORTS.redirect(params.ifindex, 0).ok()?;
    Some((action, params.ifindex))
}

/// An IPv6 address as the four 32-bit words bpf_fib_lookup takes (network byte order).
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([addr[0], addr[1], addr[2], addr[3]]),
        u32::from_ne_bytes([addr[4], addr[5], addr[6], addr[7]]),
        u32::from_ne_bytes([addr[8], addr[9], addr[10], addr[11]]),
        u32::from_ne_bytes([addr[12], addr[13], addr[14], addr[15]]),
    ]
}
