//! Bounded header parsing: Ethernet with up to two VLAN tags, IPv4 with options, IPv6 with up
//! to six extension headers, then TCP or UDP (docs/classification.md, sections 1 to 4).
//!
//! Convention: every function returns `Ok` with what the next step needs, or `Err(outcome)`
//! when parsing alone settles the packet (`not_ip`, `not_apns`, `fragment`, `malformed`,
//! `unfinished`). A packet cut short inside its headers is `malformed` when no receiver would
//! take it either, and `unfinished` when one would: a first fragment (the rest of the headers
//! follow in the next one), or an IPv6 chain longer than the parser follows (section 4). Every
//! read goes through [`Cursor::bytes`] / [`Cursor::bytes_within`], which check the frame end
//! and, inside IP, the end of the IP payload. Multi-byte fields are big-endian on the wire and
//! converted with `u16::from_be_bytes`; addresses stay in network byte order.

use apns_common::{counters::Outcome, ip};
use aya_ebpf::programs::{TcContext, XdpContext};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// 802.1Q and 802.1ad tags parsed before the ethertype must name IP.
const MAX_VLAN_TAGS: usize = 2;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV4_MIN_HLEN: usize = 20;
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
const IPV6_HLEN: usize = 40;
/// Offsets of the TTL in the IPv4 header and of the hop limit in the IPv6 header.
pub const IPV4_TTL: usize = 8;
pub const IPV6_HOP_LIMIT: usize = 7;
/// Extension headers walked before the packet is judged too deep (`unfinished`).
const MAX_IPV6_EXT_HEADERS: usize = 6;
const IPV6_FRAG_HLEN: usize = 8;
/// The M (more fragments) bit of the IPv6 fragment header's offset field.
const IPV6_MORE_FRAGMENTS: u16 = 0x0001;

const TCP_MIN_HLEN: usize = 20;

/// Bits of the TCP flags byte ([`TcpPacket::flags`]).
pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}
const UDP_HLEN: usize = 8;

/// The linear packet buffer of one XDP frame, as absolute addresses.
pub struct Cursor {
    start: usize,
    end: usize,
    /// `end - start`, but read separately from the context (see [`Cursor::new`]).
    len: usize,
}

impl Cursor {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        // The IP-length checks compare offsets with the frame length. If that length were
        // `end - start`, LLVM could prove some of the pointer checks below redundant and drop
        // them, and the verifier, which only trusts explicit `ptr > data_end` tests, would then
        // reject the reads. Volatile loads of the context give a length LLVM cannot relate to
        // `start` and `end`.
        // SAFETY: `ctx.ctx` points to the xdp_md the kernel passed to the program.
        let (data, data_end) = unsafe {
            (
                core::ptr::read_volatile(&(*ctx.ctx).data),
                core::ptr::read_volatile(&(*ctx.ctx).data_end),
            )
        };
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
            len: data_end.wrapping_sub(data) as usize,
        }
    }

    /// The packet of a TC program: the linear part of the skb bounds every read, and the
    /// skb's whole length is the frame length the IP-length checks use (a GSO skb's payload
    /// may lie outside the linear part; its headers do not: the caller pulls them in).
    #[inline(always)]
    pub fn from_skb(ctx: &TcContext) -> Self {
        // SAFETY: `skb` points to the __sk_buff the kernel passed to the program.
        let len = unsafe { core::ptr::read_volatile(&(*ctx.skb.skb).len) };
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
            len: len as usize,
        }
    }

    /// Frame length, Ethernet header included.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// The `N` bytes at `offset`, or `malformed` if the frame ends first.
    #[inline(always)]
    pub fn bytes<const N: usize>(&self, offset: usize) -> Result<&[u8; N], Outcome> {
        if self.start + offset + N > self.end {
            return malformed();
        }
        // SAFETY: the N bytes at start + offset lie inside the frame (checked above, in the
        // form the verifier understands), and u8 arrays have no alignment requirement.
        Ok(unsafe { &*((self.start + offset) as *const [u8; N]) })
    }

    /// The `N` bytes at `offset`, writable (the fast path rewrites headers), or `malformed`.
    #[expect(
        clippy::mut_from_ref,
        reason = "the cursor holds addresses of the frame, not a borrow: the kernel lets XDP write it, and no two callers hold the same bytes at once"
    )]
    #[inline(always)]
    pub fn bytes_mut<const N: usize>(&self, offset: usize) -> Result<&mut [u8; N], Outcome> {
        if self.start + offset + N > self.end {
            return malformed();
        }
        // SAFETY: as in `bytes`; XDP may write the frame it is given.
        Ok(unsafe { &mut *((self.start + offset) as *mut [u8; N]) })
    }

    /// Like [`Cursor::bytes`], but the bytes must also end before `limit` (the end of the IP
    /// payload, as an offset into the frame).
    #[inline(always)]
    fn bytes_within<const N: usize>(
        &self,
        offset: usize,
        limit: usize,
    ) -> Result<&[u8; N], Outcome> {
        if offset + N > limit {
            return malformed();
        }
        self.bytes(offset)
    }
}

/// `value` (a port number, an address's leading 16 bits) as an index the verifier can
/// bound. A big-endian field is read with a byte swap (`be16`), and kernels before 6.8 lose a
/// value's bounds through one; a mask restores them, but LLVM, knowing that a `u16` fits,
/// would drop it. So the mask is written in asm (libbpf's `barrier_var` idea), where LLVM
/// cannot remove it, and once more in Rust, so that LLVM knows the range too and indexes
/// without a bounds check: two instructions. (An empty asm statement would not do: it leaves
/// a second line-info record at the same instruction, which the kernel refuses.)
#[inline(always)]
pub fn bounded(value: u16) -> usize {
    #[cfg(target_arch = "bpf")]
    let wide = {
        let mut wide = u64::from(value);
        // SAFETY: one ALU instruction on a register: no memory, no stack.
        unsafe { core::arch::asm!("{0} &= 65535", inout(reg) wide, options(pure, nomem, nostack)) };
        wide
    };
    #[cfg(not(target_arch = "bpf"))]
    let wide = u64::from(value);
    (wide & u64::from(u16::MAX)) as usize
}

/// The verdict on headers that do not add up. Marked cold: real traffic almost never takes
/// it, and without the hint the compiler prepares the error value before every bounds check
/// (two instructions each on the common path).
#[inline(always)]
fn malformed<T>() -> Result<T, Outcome> {
    core::hint::cold_path();
    Err(Outcome::Malformed)
}

/// Source and destination addresses, network byte order: references into the frame, so an
/// address is only read (and only as much of it) as a lookup needs. Copying 8 or 32 address
/// bytes per packet up front cost more than the whole prefilter lookup.
pub enum Addrs<'a> {
    V4 {
        src: &'a [u8; 4],
        dst: &'a [u8; 4],
    },
    V6 {
        src: &'a [u8; 16],
        dst: &'a [u8; 16],
    },
}

/// A well-formed TCP segment (first fragment or unfragmented): what the policy and the fast
/// path need.
pub struct TcpPacket<'a> {
    pub addrs: Addrs<'a>,
    /// Offset of the IP header in the frame.
    pub l3: usize,
    /// Whether the frame carried VLAN tags (the fast path leaves those to the stack).
    pub tagged: bool,
    /// IP total length (IPv4) or 40 + payload length (IPv6): what the FIB checks the MTU with.
    pub ip_len: u16,
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    /// Byte 13 of the TCP header (CWR ECE URG ACK PSH RST SYN FIN).
    pub flags: u8,
}

impl TcpPacket<'_> {
    /// Where the TTL (IPv4) or hop limit (IPv6) is, as an offset into the frame.
    #[inline(always)]
    pub fn ttl_offset(&self) -> usize {
        match self.addrs {
            Addrs::V4 { .. } => self.l3 + IPV4_TTL,
            Addrs::V6 { .. } => self.l3 + IPV6_HOP_LIMIT,
        }
    }
}

/// What L4 parsing needs from the layers below.
struct Payload {
    /// The IP payload as offsets into the frame: `[start, end)`.
    start: usize,
    end: usize,
    l3: usize,
    tagged: bool,
    /// A first fragment: more of the packet follows in other fragments.
    first_fragment: bool,
}

/// The verdict on headers that end before the IP payload (or the fragment) does: a first
/// fragment's receiver would read the rest from the next fragment, so it is `unfinished`;
/// any other packet is `malformed`.
#[inline(always)]
fn cut_short<T>(first_fragment: bool) -> Result<T, Outcome> {
    if first_fragment {
        return Err(Outcome::Unfinished);
    }
    malformed()
}

#[inline(always)]
pub fn parse(cursor: &Cursor) -> Result<TcpPacket<'_>, Outcome> {
    let (ethertype, l3) = parse_ethernet(cursor)?;
    let tagged = l3 != ETH_HLEN;
    match ethertype {
        ETH_P_IP => parse_ipv4(cursor, l3, tagged),
        ETH_P_IPV6 => parse_ipv6(cursor, l3, tagged),
        _ => Err(Outcome::NotIp),
    }
}

/// Returns the ethertype after at most [`MAX_VLAN_TAGS`] tags and the offset of the L3 header.
#[inline(always)]
fn parse_ethernet(cursor: &Cursor) -> Result<(u16, usize), Outcome> {
    let eth = cursor.bytes::<ETH_HLEN>(0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let tag = cursor.bytes::<VLAN_HLEN>(offset)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        offset += VLAN_HLEN;
    }
    Ok((ethertype, offset))
}

#[inline(always)]
fn parse_ipv4(cursor: &Cursor, l3: usize, tagged: bool) -> Result<TcpPacket<'_>, Outcome> {
    let ip = cursor.bytes::<IPV4_MIN_HLEN>(l3)?;
    if ip[0] >> 4 != 4 {
        return malformed();
    }
    let header_len = (ip[0] & 0x0f) as usize * 4;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if header_len < IPV4_MIN_HLEN || total_len < header_len || l3 + total_len > cursor.len() {
        return malformed();
    }
    let fragment = u16::from_be_bytes([ip[6], ip[7]]);
    if fragment & IPV4_FRAG_OFFSET_MASK != 0 {
        return Err(Outcome::Fragment);
    }
    let addrs = Addrs::V4 {
        src: field(ip, 12)?,
        dst: field(ip, 16)?,
    };
    let payload = Payload {
        start: l3 + header_len,
        end: l3 + total_len,
        l3,
        tagged,
        first_fragment: fragment & IPV4_MORE_FRAGMENTS != 0,
    };
    parse_l4(cursor, ip[9], &payload, addrs)
}

#[inline(always)]
fn parse_ipv6(cursor: &Cursor, l3: usize, tagged: bool) -> Result<TcpPacket<'_>, Outcome> {
    let ip = cursor.bytes::<IPV6_HLEN>(l3)?;
    if ip[0] >> 4 != 6 {
        return malformed();
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let end = l3 + IPV6_HLEN + payload_len;
    if end > cursor.len() {
        return malformed();
    }
    let mut next_header = ip[6];
    let mut offset = l3 + IPV6_HLEN;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next_header) {
            break;
        }
        let Ok(ext) = cursor.bytes_within::<2>(offset, end) else {
            return cut_short(first_fragment);
        };
        let ext_len = match next_header {
            ip::FRAGMENT => {
                let Ok(frag) = cursor.bytes_within::<IPV6_FRAG_HLEN>(offset, end) else {
                    return cut_short(first_fragment);
                };
                let offset_and_flags = u16::from_be_bytes([frag[2], frag[3]]);
                if offset_and_flags >> 3 != 0 {
                    return Err(Outcome::Fragment);
                }
                first_fragment = offset_and_flags & IPV6_MORE_FRAGMENTS != 0;
                IPV6_FRAG_HLEN
            }
            ip::AH => {
                if ext[1] == 0 {
                    return malformed();
                }
                (ext[1] as usize + 2) * 4
            }
            _ => (ext[1] as usize + 1) * 8,
        };
        if offset + ext_len > end {
            return cut_short(first_fragment);
        }
        next_header = ext[0];
        offset += ext_len;
    }
    // A receiver follows a longer chain; the policy cannot see what it ends in.
    if is_ipv6_extension(next_header) {
        return Err(Outcome::Unfinished);
    }
    let addrs = Addrs::V6 {
        src: field(ip, 8)?,
        dst: field(ip, 24)?,
    };
    let payload = Payload {
        start: offset,
        end,
        l3,
        tagged,
        first_fragment,
    };
    parse_l4(cursor, next_header, &payload, addrs)
}

#[inline(always)]
fn is_ipv6_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        ip::HOPOPTS | ip::ROUTING | ip::DSTOPTS | ip::FRAGMENT | ip::AH
    )
}

/// The `N` bytes at `at` of a header already read whole. `at` is a constant inside the
/// header at every call, so the `None` case is compiled out; it still settles as malformed
/// rather than panicking.
#[inline(always)]
fn field<const N: usize, const M: usize>(bytes: &[u8; M], at: usize) -> Result<&[u8; N], Outcome> {
    bytes
        .get(at..)
        .and_then(|rest| rest.first_chunk::<N>())
        .ok_or(Outcome::Malformed)
}

#[inline(always)]
fn parse_l4<'a>(
    cursor: &'a Cursor,
    protocol: u8,
    payload: &Payload,
    addrs: Addrs<'a>,
) -> Result<TcpPacket<'a>, Outcome> {
    match protocol {
        ip::TCP => {
            let Ok(tcp) = cursor.bytes_within::<TCP_MIN_HLEN>(payload.start, payload.end) else {
                return cut_short(payload.first_fragment);
            };
            let header_len = (tcp[12] >> 4) as usize * 4;
            if header_len < TCP_MIN_HLEN {
                return malformed();
            }
            if payload.start + header_len > payload.end {
                return cut_short(payload.first_fragment);
            }
            Ok(TcpPacket {
                addrs,
                l3: payload.l3,
                tagged: payload.tagged,
                ip_len: (payload.end - payload.l3) as u16,
                sport: u16::from_be_bytes([tcp[0], tcp[1]]),
                dport: u16::from_be_bytes([tcp[2], tcp[3]]),
                flags: tcp[13],
            })
        }
        ip::UDP => {
            cursor.bytes_within::<UDP_HLEN>(payload.start, payload.end)?;
            Err(Outcome::NotApns)
        }
        _ => Err(Outcome::NotApns),
    }
}
