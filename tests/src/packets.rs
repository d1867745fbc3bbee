//! Test frames: a readable builder for hand-written cases and a seeded generator of diverse,
//! often broken, frames for the differential test.
//!
//! [`Frame`] describes an Ethernet frame carrying IPv4 or IPv6, including the shapes
//! etherparse's `PacketBuilder` cannot make (several VLAN tags with either TPID, IPv4 options,
//! IPv6 extension headers in any order, fragments) and writes it by hand; a unit test checks
//! the output byte for byte against `PacketBuilder` for the shapes both can make. [`Built`]
//! also says where each header ends and which bytes steer parsing, so tests and the generator
//! can truncate or corrupt a frame where it matters.
//!
//! [`Generator`] draws frames from a ChaCha stream, so a seed names the same frames on every
//! machine and every run.

use std::net::{Ipv4Addr, Ipv6Addr};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::reference::Policy;

/// TCP flag bits (byte 13 of the TCP header).
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// VLAN tag protocol identifiers the datapath parses.
pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_ARP: u16 = 0x0806;

/// Ethernet header length; the kernel's test runner rejects shorter frames.
pub const MIN_FRAME: usize = 14;
/// Largest frame the generator makes (a standard MTU's worth).
pub const MAX_FRAME: usize = 1500;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const TTL: u8 = 64;
const TCP_SEQ: u32 = 1;
const TCP_WINDOW: u16 = 64240;

/// Source and destination address; the family picks IPv4 or IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addrs {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

/// An IPv6 extension header. The `u8`s are the length byte as on the wire, so a test can
/// write lengths the contract rejects (`Auth(0)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// (len + 1) * 8 bytes, padded with a PadN option.
    HopByHop(u8),
    /// (len + 1) * 8 bytes, an experimental routing type with no segments left.
    Routing(u8),
    /// (len + 1) * 8 bytes, padded with a PadN option.
    DestinationOptions(u8),
    /// 8 bytes; `offset` in 8-byte units (13 bits), `more` the M flag.
    Fragment { offset: u16, more: bool },
    /// Authentication header, (len + 2) * 4 bytes.
    Auth(u8),
}

impl Ext {
    fn protocol(&self) -> u8 {
        match self {
            Ext::HopByHop(_) => 0,
            Ext::Routing(_) => 43,
            Ext::DestinationOptions(_) => 60,
            Ext::Fragment { .. } => 44,
            Ext::Auth(_) => 51,
        }
    }

    fn bytes(&self, next_header: u8) -> Vec<u8> {
        let padded = |len: u8, body: &[u8]| {
            let total = (usize::from(len) + 1) * 8;
            let mut h = vec![next_header, len];
            h.extend_from_slice(body);
            h.resize(total, 0);
            h
        };
        match *self {
            // One PadN option fills the body: type 1, then its data length.
            Ext::HopByHop(len) | Ext::DestinationOptions(len) => {
                let pad_len = (usize::from(len) + 1) * 8 - 4;
                padded(len, &[1, pad_len as u8])
            }
            // Type 253 is reserved for experiments (RFC 4727); segments left 0.
            Ext::Routing(len) => padded(len, &[253, 0]),
            Ext::Fragment { offset, more } => {
                let mut h = vec![next_header, 0];
                h.extend_from_slice(&(offset << 3 | u16::from(more)).to_be_bytes());
                h.extend_from_slice(&0x1234_5678u32.to_be_bytes());
                h
            }
            Ext::Auth(len) => {
                let mut h = vec![next_header, len, 0, 0];
                h.extend_from_slice(&0x100u32.to_be_bytes()); // SPI
                h.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                                                          // The ICV is zeros; a length byte below 1 cuts even the sequence number.
                h.resize((usize::from(len) + 2) * 4, 0);
                h
            }
        }
    }
}

/// What follows the IP header(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `option_words` (0..=10) 4-byte words of NOP options: data offset 5 + option_words.
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        option_words: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP echo request, or ICMPv6 echo request in an IPv6 frame.
    Echo,
    /// ICMPv6 neighbour solicitation for `target` (IPv6 only).
    NeighbourSolicitation {
        target: Ipv6Addr,
    },
    /// This protocol number and then only the payload.
    Other(u8),
}

/// An Ethernet frame carrying IP, as a plain description; [`Frame::build`] writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// TPIDs of the VLAN tags, outermost first (any value, so tests can write odd ones).
    pub vlans: Vec<u16>,
    pub addrs: Addrs,
    /// IPv4 options: a multiple of 4 bytes, at most 40. IPv4 only.
    pub ipv4_options: Vec<u8>,
    /// IPv4 fragment offset (8-byte units) and MF flag; `None` sets DF instead. IPv4 only.
    pub ipv4_fragment: Option<(u16, bool)>,
    /// IPv6 extension headers in wire order. IPv6 only.
    pub ipv6_exts: Vec<Ext>,
    pub transport: Transport,
    /// Bytes after the L4 header, inside the IP packet.
    pub payload: Vec<u8>,
}

/// A written frame and where its parts are.
#[derive(Clone, Debug)]
pub struct Built {
    pub bytes: Vec<u8>,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the L4 header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// Ascending offsets at which a header ends: Ethernet, each VLAN tag, the fixed IP
    /// header, IPv4 options, each extension header, the L4 header. Cutting the frame at one
    /// of them leaves whole headers only.
    pub boundaries: Vec<usize>,
    /// Offsets of the bytes that steer parsing: ethertypes, version/IHL, IP lengths,
    /// fragment fields, protocol/next-header fields, extension header lengths, TCP data
    /// offset and flags.
    pub steering: Vec<usize>,
}

impl Frame {
    /// A frame with no VLAN tags, options, extension headers or payload.
    pub fn new(addrs: Addrs, transport: Transport) -> Frame {
        Frame {
            vlans: Vec::new(),
            addrs,
            ipv4_options: Vec::new(),
            ipv4_fragment: None,
            ipv6_exts: Vec::new(),
            transport,
            payload: Vec::new(),
        }
    }

    /// Adds a VLAN tag inside the ones already there.
    pub fn vlan(mut self, tpid: u16) -> Frame {
        self.vlans.push(tpid);
        self
    }

    pub fn ipv4_options(mut self, options: Vec<u8>) -> Frame {
        self.ipv4_options = options;
        self
    }

    pub fn ext(mut self, ext: Ext) -> Frame {
        self.ipv6_exts.push(ext);
        self
    }

    /// Makes the packet a fragment: the IPv4 header's fields, or an IPv6 fragment header
    /// appended to the extension headers. `offset` is in 8-byte units.
    pub fn fragment(self, offset: u16, more: bool) -> Frame {
        match self.addrs {
            Addrs::V4(..) => Frame {
                ipv4_fragment: Some((offset, more)),
                ..self
            },
            Addrs::V6(..) => self.ext(Ext::Fragment { offset, more }),
        }
    }

    /// Sets the number of 4-byte TCP option words. Panics for a frame that is not TCP.
    pub fn tcp_option_words(mut self, words: u8) -> Frame {
        match &mut self.transport {
            Transport::Tcp { option_words, .. } => *option_words = words,
            other => panic!("TCP options on {other:?}"),
        }
        self
    }

    /// Sets a payload of `len` bytes (0, 1, 2, ... wrapping at 256).
    pub fn payload(mut self, len: usize) -> Frame {
        self.payload = (0..len).map(|i| i as u8).collect();
        self
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.build().bytes
    }

    pub fn build(&self) -> Built {
        let ether_type = match self.addrs {
            Addrs::V4(..) => ETHERTYPE_IPV4,
            Addrs::V6(..) => ETHERTYPE_IPV6,
        };
        let mut bytes = ethernet_frame(&self.vlans, ether_type, &[]);
        let l3 = bytes.len();
        let (mut boundaries, mut steering) = l2_layout(self.vlans.len());

        let (protocol, mut upper, l4_header_len) = self.transport_bytes();
        self.fill_checksum(&mut upper, protocol);
        let mut mark = |bytes: &[u8], fields: &[usize]| {
            steering.extend(fields.iter().map(|f| bytes.len() + f));
        };
        match self.addrs {
            Addrs::V4(src, dst) => {
                assert!(
                    self.ipv6_exts.is_empty(),
                    "IPv6 extension headers in an IPv4 frame"
                );
                let header = self.ipv4_header(src, dst, protocol, upper.len());
                mark(&bytes, &[0, 2, 3, 6, 7, 9]);
                bytes.extend_from_slice(&header);
                boundaries.extend([l3 + 20, l3 + header.len()]);
            }
            Addrs::V6(src, dst) => {
                assert!(
                    self.ipv4_options.is_empty() && self.ipv4_fragment.is_none(),
                    "IPv4 fields in an IPv6 frame"
                );
                let exts: Vec<Vec<u8>> = self.ext_bytes(protocol);
                let payload_len = exts.iter().map(Vec::len).sum::<usize>() + upper.len();
                let first = self.ipv6_exts.first().map_or(protocol, Ext::protocol);
                mark(&bytes, &[0, 4, 5, 6]);
                bytes.extend_from_slice(&[0x60, 0, 0, 0]);
                bytes.extend_from_slice(&(payload_len as u16).to_be_bytes());
                bytes.extend_from_slice(&[first, TTL]);
                bytes.extend_from_slice(&src.octets());
                bytes.extend_from_slice(&dst.octets());
                boundaries.push(bytes.len());
                for (ext, ext_bytes) in self.ipv6_exts.iter().zip(&exts) {
                    match ext {
                        Ext::Fragment { .. } => mark(&bytes, &[0, 2, 3]),
                        _ => mark(&bytes, &[0, 1]),
                    }
                    bytes.extend_from_slice(ext_bytes);
                    boundaries.push(bytes.len());
                }
            }
        }
        let l4 = bytes.len();
        if matches!(self.transport, Transport::Tcp { .. }) {
            mark(&bytes, &[12, 13]);
        }
        bytes.extend_from_slice(&upper);
        boundaries.push(l4 + l4_header_len);
        boundaries.dedup();
        Built {
            bytes,
            l3,
            l4,
            boundaries,
            steering,
        }
    }

    /// The IPv4 header with options, checksum filled in.
    fn ipv4_header(&self, src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, upper_len: usize) -> Vec<u8> {
        assert!(
            self.ipv4_options.len().is_multiple_of(4) && self.ipv4_options.len() <= 40,
            "IPv4 options must be 4-byte words, at most 40 bytes"
        );
        let header_len = 20 + self.ipv4_options.len();
        let flags_offset = match self.ipv4_fragment {
            None => 0x4000, // DF
            Some((offset, more)) => (offset & 0x1fff) | if more { 0x2000 } else { 0 },
        };
        let mut h = vec![0x40 | (header_len / 4) as u8, 0];
        h.extend_from_slice(&((header_len + upper_len) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]); // identification
        h.extend_from_slice(&flags_offset.to_be_bytes());
        h.extend_from_slice(&[TTL, protocol, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(&self.ipv4_options);
        let sum = internet_checksum(&[&h]);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h
    }

    /// Each extension header's bytes, chained so the last points at `protocol`.
    fn ext_bytes(&self, protocol: u8) -> Vec<Vec<u8>> {
        let nexts = self
            .ipv6_exts
            .iter()
            .skip(1)
            .map(Ext::protocol)
            .chain([protocol]);
        self.ipv6_exts
            .iter()
            .zip(nexts)
            .map(|(ext, next)| ext.bytes(next))
            .collect()
    }

    /// The IP protocol number, the L4 header followed by the payload (checksum zero), and the
    /// L4 header's length.
    fn transport_bytes(&self) -> (u8, Vec<u8>, usize) {
        let v6 = matches!(self.addrs, Addrs::V6(..));
        let (protocol, mut l4) = match self.transport {
            Transport::Tcp {
                sport,
                dport,
                flags,
                option_words,
            } => {
                assert!(option_words <= 10, "TCP data offset is at most 15 words");
                let mut h = ports(sport, dport);
                h.extend_from_slice(&TCP_SEQ.to_be_bytes());
                h.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
                h.extend_from_slice(&[(5 + option_words) << 4, flags]);
                h.extend_from_slice(&TCP_WINDOW.to_be_bytes());
                h.extend_from_slice(&[0; 4]); // checksum, urgent pointer
                h.resize(h.len() + 4 * usize::from(option_words), 1); // NOP options
                (6, h)
            }
            Transport::Udp { sport, dport } => {
                let mut h = ports(sport, dport);
                h.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0, 0]);
                (17, h)
            }
            // Type, code, checksum, identifier 1, sequence 1.
            Transport::Echo if v6 => (58, vec![128, 0, 0, 0, 0, 1, 0, 1]),
            Transport::Echo => (1, vec![8, 0, 0, 0, 0, 1, 0, 1]),
            Transport::NeighbourSolicitation { target } => {
                assert!(v6, "neighbour solicitation in an IPv4 frame");
                let mut h = vec![135, 0, 0, 0, 0, 0, 0, 0];
                h.extend_from_slice(&target.octets());
                // Source link-layer address option.
                h.extend_from_slice(&[1, 1]);
                h.extend_from_slice(&SRC_MAC);
                (58, h)
            }
            Transport::Other(protocol) => (protocol, Vec::new()),
        };
        let header_len = l4.len();
        l4.extend_from_slice(&self.payload);
        (protocol, l4, header_len)
    }

    /// Fills in the L4 checksum so the frames are valid on the wire (the datapath does not
    /// check it). A fragment's checksum is computed as if it were the whole datagram.
    fn fill_checksum(&self, upper: &mut [u8], protocol: u8) {
        let at = match self.transport {
            Transport::Tcp { .. } => 16,
            Transport::Udp { .. } => 6,
            Transport::Echo | Transport::NeighbourSolicitation { .. } => 2,
            Transport::Other(_) => return,
        };
        let len = upper.len();
        let pseudo_header = match self.addrs {
            // ICMP for IPv4 is the one checksum without a pseudo-header.
            Addrs::V4(..) if protocol == 1 => Vec::new(),
            Addrs::V4(src, dst) => {
                let tail = [0, protocol, (len >> 8) as u8, len as u8];
                [&src.octets()[..], &dst.octets(), &tail].concat()
            }
            Addrs::V6(src, dst) => {
                let tail = [&(len as u32).to_be_bytes()[..], &[0, 0, 0, protocol]].concat();
                [&src.octets()[..], &dst.octets(), &tail].concat()
            }
        };
        let sum = internet_checksum(&[&pseudo_header, upper]);
        // In UDP a zero checksum means "none", so a computed zero is sent as all ones.
        let sum = if protocol == 17 && sum == 0 {
            0xffff
        } else {
            sum
        };
        upper[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
}

fn ports(sport: u16, dport: u16) -> Vec<u8> {
    [sport.to_be_bytes(), dport.to_be_bytes()].concat()
}

/// RFC 1071 checksum of the concatenation of `parts`.
fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let bytes = parts.concat();
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Header ends and ethertype fields of an Ethernet header with `vlan_tags` tags.
fn l2_layout(vlan_tags: usize) -> (Vec<usize>, Vec<usize>) {
    let boundaries: Vec<usize> = (0..=vlan_tags).map(|i| MIN_FRAME + 4 * i).collect();
    let ether_types = boundaries
        .iter()
        .flat_map(|&end| [end - 2, end - 1])
        .collect();
    (boundaries, ether_types)
}

/// An Ethernet header, VLAN tags with the given TPIDs (VLAN IDs 10, 20, ...), `ether_type`,
/// then `payload`.
pub fn ethernet_frame(vlans: &[u16], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = [DST_MAC, SRC_MAC].concat();
    for (i, tpid) in vlans.iter().enumerate() {
        bytes.extend_from_slice(&tpid.to_be_bytes());
        bytes.extend_from_slice(&(10 * (i as u16 + 1)).to_be_bytes()); // TCI: priority 0
    }
    bytes.extend_from_slice(&ether_type.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

pub fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Frame {
    let tcp = Transport::Tcp {
        sport,
        dport,
        flags,
        option_words: 0,
    };
    Frame::new(Addrs::V4(src, dst), tcp)
}

pub fn tcp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Frame {
    let tcp = Transport::Tcp {
        sport,
        dport,
        flags,
        option_words: 0,
    };
    Frame::new(Addrs::V6(src, dst), tcp)
}

pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Frame {
    Frame::new(Addrs::V4(src, dst), Transport::Udp { sport, dport })
}

pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Frame {
    Frame::new(Addrs::V6(src, dst), Transport::Udp { sport, dport })
}

/// fe80::1 asking the solicited-node group of fe80::2 for its link-layer address.
pub fn icmpv6_neighbour_solicitation() -> Frame {
    let target = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
    let solicited_node = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 2);
    let src = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    Frame::new(
        Addrs::V6(src, solicited_node),
        Transport::NeighbourSolicitation { target },
    )
}

/// `built`'s IP packet ending at frame offset `at` (inside its IP payload), with the IPv4
/// total length or the IPv6 payload length saying so: the first fragment of a packet split
/// there, when `built` is marked as one (more fragments, offset 0).
pub fn cut_at(built: &Built, at: usize) -> Vec<u8> {
    let mut bytes = built.bytes[..at].to_vec();
    let ip = built.l3;
    if bytes[ip] >> 4 == 4 {
        let total = (at - ip) as u16;
        bytes[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes());
    } else {
        let payload = (at - ip - 40) as u16;
        bytes[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
    }
    bytes
}

/// `built`, an IPv4 packet, as the fragments a sender splitting its payload into `size`-byte
/// pieces (a multiple of 8) sends: each with the IP header (checksum recomputed), its
/// offset, and MF on all but the last. The tiny-fragment attack of RFC 1858 uses 8.
pub fn ipv4_fragments(built: &Built, size: usize) -> Vec<Vec<u8>> {
    assert!(size.is_multiple_of(8) && size > 0, "fragment size {size}");
    let ip = built.l3;
    let header_len = usize::from(built.bytes[ip] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([
        built.bytes[ip + 2],
        built.bytes[ip + 3],
    ]));
    let payload = &built.bytes[ip + header_len..ip + total];
    let pieces = payload.len().div_ceil(size);
    payload
        .chunks(size)
        .enumerate()
        .map(|(index, piece)| {
            let mut header = built.bytes[ip..ip + header_len].to_vec();
            header[2..4].copy_from_slice(&((header_len + piece.len()) as u16).to_be_bytes());
            let more = if index + 1 < pieces { 0x2000 } else { 0 };
            let offset = (index * size / 8) as u16;
            header[6..8].copy_from_slice(&(more | offset).to_be_bytes());
            header[10..12].copy_from_slice(&[0, 0]);
            let sum = internet_checksum(&[&header]);
            header[10..12].copy_from_slice(&sum.to_be_bytes());
            [&built.bytes[..ip], &header[..], piece].concat()
        })
        .collect()
}

/// A little-endian, microsecond pcap file of Ethernet `frames` (link type `linktype`: 1 for
/// Ethernet), every record at time 0.
pub fn pcap_bytes(linktype: u32, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0xa1b2_c3d4u32.to_le_bytes());
    out.extend(2u16.to_le_bytes());
    out.extend(4u16.to_le_bytes());
    out.extend([0; 8]);
    out.extend(262_144u32.to_le_bytes());
    out.extend(linktype.to_le_bytes());
    for frame in frames {
        out.extend([0; 8]);
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend((frame.len() as u32).to_le_bytes());
        out.extend(frame);
    }
    out
}

/// 192.0.2.1 asking who has 192.0.2.2.
pub fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1]; // Ethernet, IPv4, request
    arp.extend_from_slice(&SRC_MAC);
    arp.extend_from_slice(&[192, 0, 2, 1]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[192, 0, 2, 2]);
    ethernet_frame(&[], ETHERTYPE_ARP, &arp)
}

/// Provider prefixes the generator draws source and destination addresses from. The first
/// of each family is in [`Generator::policy`]; the second is a look-alike that is not.
pub const PROVIDER_CANDIDATES_V4: [(Ipv4Addr, u8); 2] = [
    (Ipv4Addr::new(203, 0, 113, 0), 24),
    (Ipv4Addr::new(198, 51, 100, 0), 24),
];
pub const PROVIDER_CANDIDATES_V6: [(Ipv6Addr, u8); 2] = [
    (Ipv6Addr::new(0x2001, 0xdb8, 0xaa, 0, 0, 0, 0, 0), 48),
    (Ipv6Addr::new(0x2001, 0xdb8, 0xbb, 0, 0, 0, 0, 0), 48),
];

const APNS_PORTS: [u16; 5] = [5223, 443, 2197, 2195, 2196];

/// A reproducible stream of frames, 14 to 1500 bytes, that exercises every rule of the
/// contract: mostly well-formed IPv4/IPv6 TCP toward, from and past Apple's ranges, plus
/// UDP, ICMP, non-IP, deep extension chains, fragments, and a good share of frames with
/// truncated, corrupted or padded headers.
pub struct Generator {
    rng: ChaCha8Rng,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The policy the generator is tuned for: Apple's defaults in enforce mode, with one
    /// provider prefix per family from the candidates.
    pub fn policy() -> Policy {
        Policy {
            enforce: true,
            providers_v4: vec![PROVIDER_CANDIDATES_V4[0]],
            providers_v6: vec![PROVIDER_CANDIDATES_V6[0]],
            ..Policy::apple_defaults()
        }
    }

    pub fn next_frame(&mut self) -> Vec<u8> {
        let (mut bytes, boundaries, steering) = if self.percent(5) {
            self.non_ip()
        } else if self.percent(4) {
            let built = self.inbound_open().build();
            (built.bytes, built.boundaries, built.steering)
        } else if self.percent(4) {
            self.evasion()
        } else {
            let built = self.ip_frame().build();
            (built.bytes, built.boundaries, built.steering)
        };
        if self.percent(35) {
            for _ in 0..self.rng.random_range(1..=2) {
                self.mutate(&mut bytes, &boundaries, &steering);
            }
        } else if self.percent(20) && bytes.len() < 60 {
            // Ethernet's minimum frame: the NIC pads short frames with zeros.
            bytes.resize(60, 0);
        }
        assert!(
            (MIN_FRAME..=MAX_FRAME).contains(&bytes.len()),
            "generated a {}-byte frame",
            bytes.len()
        );
        bytes
    }

    fn percent(&mut self, p: u32) -> bool {
        self.rng.random_range(0..100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    fn vlans(&mut self) -> Vec<u16> {
        let count = match self.rng.random_range(0..100) {
            0..50 => 0,
            50..75 => 1,
            75..95 => 2,
            _ => 3,
        };
        (0..count)
            .map(|_| self.pick(&[TPID_8021Q, TPID_8021AD]))
            .collect()
    }

    /// ARP, LLDP, MPLS, an 802.3 length field, a 0x9100 tag; with its boundaries and
    /// steering bytes as in [`Built`].
    fn non_ip(&mut self) -> (Vec<u8>, Vec<usize>, Vec<usize>) {
        let vlans = self.vlans();
        let ether_type = self.pick(&[ETHERTYPE_ARP, 0x88cc, 0x8847, 0x0026, 0x05dc, 0x9100]);
        let body: Vec<u8> = (0..self.rng.random_range(0..64))
            .map(|_| self.rng.random())
            .collect();
        let (boundaries, steering) = l2_layout(vlans.len());
        (
            ethernet_frame(&vlans, ether_type, &body),
            boundaries,
            steering,
        )
    }

    fn ip_frame(&mut self) -> Frame {
        let v6 = self.percent(50);
        let addrs = if v6 {
            Addrs::V6(self.addr_v6(), self.addr_v6())
        } else {
            Addrs::V4(self.addr_v4(), self.addr_v4())
        };
        let transport = match self.rng.random_range(0..100) {
            0..75 => Transport::Tcp {
                sport: self.port(),
                dport: self.port(),
                flags: self.tcp_flags(),
                option_words: if self.percent(60) {
                    0
                } else {
                    self.rng.random_range(1..=10)
                },
            },
            75..85 => Transport::Udp {
                sport: self.port(),
                dport: self.port(),
            },
            85..90 if v6 => Transport::NeighbourSolicitation {
                target: self.addr_v6(),
            },
            85..93 => Transport::Echo,
            // GRE, ESP, no next header, SCTP.
            _ => Transport::Other(self.pick(&[47, 50, 59, 132])),
        };
        let payload_len = if self.percent(80) {
            self.rng.random_range(0..=64)
        } else {
            self.rng.random_range(0..=400)
        };
        let mut frame = Frame::new(addrs, transport).payload(payload_len);
        frame.vlans = self.vlans();
        if v6 {
            let count = if self.percent(45) {
                0
            } else {
                self.rng.random_range(1..=7)
            };
            frame.ipv6_exts = (0..count).map(|_| self.ext()).collect();
        } else {
            if self.percent(15) {
                let words = self.rng.random_range(1..=10);
                frame.ipv4_options = (0..4 * words).map(|_| self.rng.random()).collect();
            }
            if self.percent(12) {
                frame.ipv4_fragment = Some(self.fragment());
            }
        }
        frame
    }

    /// A pinhole SYN (to anyone, on an APNs port) hidden from a parser that stops early
    /// (contract §4, "Unfinished headers"): a first fragment cut inside its TCP header or,
    /// for IPv6, inside the chain after its fragment header; a chain of 7 to 9 extension
    /// headers; or one of its later fragments. With its boundaries and steering bytes (those
    /// of the whole packet: a mutation past the cut is a no-op).
    fn evasion(&mut self) -> (Vec<u8>, Vec<usize>, Vec<usize>) {
        let v6 = self.percent(50);
        let addrs = if v6 {
            Addrs::V6(self.addr_v6(), self.addr_v6())
        } else {
            Addrs::V4(self.addr_v4(), self.addr_v4())
        };
        let option_words = self.rng.random_range(0..=10);
        let syn = Frame::new(
            addrs,
            Transport::Tcp {
                sport: self.rng.random_range(1024..=65535),
                dport: self.pick(&APNS_PORTS),
                flags: SYN,
                option_words,
            },
        );
        let (frame, cut) = match self.rng.random_range(0..3) {
            0 => (syn.fragment(0, true), true),
            1 if v6 => {
                let mut frame = syn;
                frame.ipv6_exts = (0..self.rng.random_range(7..=9))
                    .map(|_| Ext::DestinationOptions(self.rng.random_range(0..2)))
                    .collect();
                (frame, false)
            }
            1 => {
                // IPv4 has no chains: a first fragment cut short instead.
                (syn.fragment(0, true), true)
            }
            _ => (
                syn.fragment(self.rng.random_range(1..=0x1fff), self.rng.random()),
                false,
            ),
        };
        let frame = if cut && v6 && self.percent(50) {
            // A destination options header after the fragment header, so the cut can
            // land inside the chain too.
            Frame {
                ipv6_exts: vec![
                    Ext::Fragment {
                        offset: 0,
                        more: true,
                    },
                    Ext::DestinationOptions(self.rng.random_range(0..2)),
                ],
                ..frame
            }
        } else {
            frame
        };
        let built = frame.build();
        let bytes = if cut {
            let tcp_end = built.l4 + 20 + 4 * usize::from(option_words);
            // From just past the fixed IP header (IPv4) or the fragment header (IPv6).
            let first = if v6 { built.l3 + 40 + 8 } else { built.l4 };
            cut_at(&built, self.rng.random_range(first..tcp_end))
        } else {
            built.bytes
        };
        (bytes, built.boundaries, built.steering)
    }

    /// An inbound connection attempt (contract §5 step 2): a SYN, without ACK most of the
    /// time, from an Apple address toward anyone, from an APNs port or to one; or the same
    /// shape one field off (with ACK, from outside Apple, no APNs port on either side).
    fn inbound_open(&mut self) -> Frame {
        let v6 = self.percent(50);
        let apple = self.percent(90);
        let addrs = if v6 {
            let src = if apple {
                let (net, len) = self.pick(&Policy::apple_defaults().allow_v6);
                Ipv6Addr::from(u128::from(net) | self.rng.random::<u128>() >> len)
            } else {
                self.addr_v6()
            };
            Addrs::V6(src, self.addr_v6())
        } else {
            let src = if apple {
                Ipv4Addr::from(17 << 24 | self.rng.random::<u32>() >> 8)
            } else {
                self.addr_v4()
            };
            Addrs::V4(src, self.addr_v4())
        };
        let ephemeral = self.rng.random_range(1024..=65535);
        let apns = self.pick(&APNS_PORTS);
        let (sport, dport) = match self.rng.random_range(0..10) {
            0..4 => (apns, ephemeral),
            4..8 => (ephemeral, apns),
            8 => (apns, apns),
            _ => (ephemeral, ephemeral),
        };
        let flags = match self.rng.random_range(0..10) {
            0..7 => SYN,
            7 => SYN | PSH,
            8 => SYN | ACK,
            _ => SYN | FIN,
        };
        let tcp = Transport::Tcp {
            sport,
            dport,
            flags,
            option_words: self.rng.random_range(0..=3),
        };
        let mut frame = Frame::new(addrs, tcp);
        frame.vlans = self.vlans();
        frame
    }

    fn ext(&mut self) -> Ext {
        match self.rng.random_range(0..5) {
            0 => Ext::HopByHop(self.rng.random_range(0..=3)),
            1 => Ext::Routing(self.rng.random_range(0..=3)),
            2 => Ext::DestinationOptions(self.rng.random_range(0..=3)),
            3 => {
                let (offset, more) = self.fragment();
                Ext::Fragment { offset, more }
            }
            // Now and then the contract's malformed length 0.
            _ => Ext::Auth(if self.percent(3) {
                0
            } else {
                self.rng.random_range(1..=7)
            }),
        }
    }

    /// Half first (or atomic) fragments, half later ones.
    fn fragment(&mut self) -> (u16, bool) {
        let offset = if self.percent(50) {
            0
        } else {
            self.rng.random_range(1..=0x1fff)
        };
        (offset, self.rng.random())
    }

    fn port(&mut self) -> u16 {
        match self.rng.random_range(0..100) {
            0..55 => self.pick(&APNS_PORTS),
            55..70 => self.pick(&[80, 22, 53, 8080, 0, 65535]),
            _ => self.rng.random(),
        }
    }

    fn tcp_flags(&mut self) -> u8 {
        if self.percent(50) {
            self.pick(&[SYN, SYN | ACK, ACK, PSH | ACK, FIN | ACK, RST, RST | ACK])
        } else {
            self.rng.random()
        }
    }

    /// Inside Apple's 17.0.0.0/8, inside a provider candidate, or anywhere.
    fn addr_v4(&mut self) -> Ipv4Addr {
        let host: u32 = self.rng.random();
        match self.rng.random_range(0..10) {
            0..4 => Ipv4Addr::from(17 << 24 | host >> 8),
            4..6 => {
                let (net, len) = self.pick(&PROVIDER_CANDIDATES_V4);
                Ipv4Addr::from(u32::from(net) | host >> len)
            }
            _ => Ipv4Addr::from(host),
        }
    }

    /// Inside one of Apple's /48s, inside a provider candidate, or anywhere.
    fn addr_v6(&mut self) -> Ipv6Addr {
        let host: u128 = self.rng.random();
        let (net, len) = match self.rng.random_range(0..10) {
            0..4 => self.pick(&Policy::apple_defaults().allow_v6),
            4..6 => self.pick(&PROVIDER_CANDIDATES_V6),
            _ => return Ipv6Addr::from(host),
        };
        Ipv6Addr::from(u128::from(net) | host >> len)
    }

    /// One corruption: a steering byte changed, any header byte overwritten, a cut, or
    /// padding appended.
    fn mutate(&mut self, bytes: &mut Vec<u8>, boundaries: &[usize], steering: &[usize]) {
        let headers_end = boundaries
            .last()
            .copied()
            .unwrap_or(MIN_FRAME)
            .min(bytes.len());
        match self.rng.random_range(0..100) {
            0..45 => {
                let at = self.pick(steering);
                if let Some(byte) = bytes.get_mut(at) {
                    *byte = match self.rng.random_range(0..3) {
                        0 => self.rng.random(),
                        1 => byte.wrapping_add(self.pick(&[1, 2, 4, 8, 0xff, 0xfe, 0xfc, 0xf8])),
                        _ => *byte ^ 1 << self.rng.random_range(0..8),
                    };
                }
            }
            45..60 if headers_end > 12 => {
                let at = self.rng.random_range(12..headers_end);
                bytes[at] = self.rng.random();
            }
            60..85 if bytes.len() > MIN_FRAME => {
                // Half the cuts land on a header boundary or one byte either side of it.
                let cut = if self.percent(50) {
                    let boundary = self.pick(boundaries);
                    self.pick(&[boundary - 1, boundary, boundary + 1])
                } else {
                    self.rng.random_range(MIN_FRAME..bytes.len())
                };
                bytes.truncate(cut.max(MIN_FRAME));
            }
            _ => {
                let pad = self.rng.random_range(1..=64);
                let fill = self.pick(&[0, 0xff, 0x45, 0x60]);
                bytes.resize((bytes.len() + pad).min(MAX_FRAME), fill);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use apns_common::counters::{Direction, Outcome};
    use etherparse::PacketBuilder;

    use super::*;
    use crate::reference::classify;

    #[test]
    fn builder_matches_etherparse_packet_builder() {
        let (src4, dst4) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(17, 1, 2, 3));
        let payload = [1, 2, 3, 4, 5];
        let mut expected = Vec::new();
        PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
            .single_vlan(etherparse::VlanId::try_new(10).expect("valid VLAN id"))
            .ipv4(src4.octets(), dst4.octets(), TTL)
            .tcp(50000, 5223, TCP_SEQ, TCP_WINDOW)
            .syn()
            .ack(0)
            .write(&mut expected, &payload)
            .expect("write to a Vec");
        let frame = tcp_v4(src4, dst4, 50000, 5223, SYN | ACK).vlan(TPID_8021Q);
        assert_eq!(
            Frame {
                payload: payload.to_vec(),
                ..frame
            }
            .bytes(),
            expected
        );

        let (src6, dst6) = (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            Ipv6Addr::LOCALHOST,
        );
        for (sport, dport) in [(53, 5353), (1, 0xfffe)] {
            let mut expected = Vec::new();
            PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                .ipv6(src6.octets(), dst6.octets(), TTL)
                .udp(sport, dport)
                .write(&mut expected, &payload)
                .expect("write to a Vec");
            let frame = Frame {
                payload: payload.to_vec(),
                ..udp_v6(src6, dst6, sport, dport)
            };
            assert_eq!(frame.bytes(), expected);
        }
    }

    #[test]
    fn boundaries_and_steering_point_at_headers() {
        let built = tcp_v6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 1, 2, SYN)
            .vlan(TPID_8021AD)
            .vlan(TPID_8021Q)
            .ext(Ext::HopByHop(1))
            .ext(Ext::Auth(1))
            .fragment(7, true)
            .payload(3)
            .build();
        assert_eq!(built.l3, 22);
        assert_eq!(built.boundaries, [14, 18, 22, 62, 78, 90, 98, 118]);
        assert_eq!(built.l4, 98);
        let at = |offsets: &[usize]| offsets.iter().map(|&i| built.bytes[i]).collect::<Vec<u8>>();
        // TPIDs and the IPv6 ethertype.
        assert_eq!(
            at(&built.steering[..6]),
            [0x88, 0xa8, 0x81, 0x00, 0x86, 0xdd]
        );
        // Version, payload length 59, next header 0; then the chain and the TCP data offset.
        assert_eq!(
            at(&built.steering[6..]),
            [0x60, 0, 59, 0, 51, 1, 44, 1, 6, 0, 57, 0x50, SYN]
        );
    }

    #[test]
    fn generator_is_reproducible_and_sized() {
        let (mut a, mut b) = (Generator::new(7), Generator::new(7));
        let mut differ = Generator::new(8);
        let mut same_as_other_seed = 0;
        for _ in 0..2000 {
            let frame = a.next_frame();
            assert_eq!(frame, b.next_frame());
            assert!((MIN_FRAME..=MAX_FRAME).contains(&frame.len()));
            same_as_other_seed += usize::from(frame == differ.next_frame());
        }
        assert!(same_as_other_seed < 100);
    }

    /// The generator covers the contract: under its policy (enforce) and the same in monitor
    /// mode, every outcome the datapath can produce today (all but the fast path, which
    /// needs a redirect interface) comes up often, and so do both directions.
    #[test]
    fn generator_covers_every_outcome() {
        const FRAMES: usize = 100_000;
        let enforcing = Generator::policy();
        let monitoring = Policy {
            enforce: false,
            ..Generator::policy()
        };
        let mut generator = Generator::new(0x0a9e_5eed);
        let mut outcomes: BTreeMap<Outcome, usize> = BTreeMap::new();
        let mut directions: BTreeMap<Direction, usize> = BTreeMap::new();
        for index in 0..FRAMES {
            let policy = if index % 5 == 0 {
                &monitoring
            } else {
                &enforcing
            };
            let expected = classify(&generator.next_frame(), policy);
            *outcomes.entry(expected.outcome).or_default() += 1;
            *directions.entry(expected.direction).or_default() += 1;
        }
        println!("{FRAMES} generated frames:");
        for (outcome, n) in &outcomes {
            println!("  {:<14} {n:>6}", outcome.as_str());
        }
        for (direction, n) in &directions {
            println!("  direction {:<9} {n:>6}", direction.as_str());
        }
        for outcome in Outcome::ALL
            .into_iter()
            .filter(|&o| !matches!(o, Outcome::Fastpath | Outcome::FastpathTc))
        {
            let n = outcomes.get(&outcome).copied().unwrap_or(0);
            assert!(n >= 100, "{} only {n} times", outcome.as_str());
        }
        assert!(directions.get(&Direction::Outbound).copied().unwrap_or(0) >= 100);
        assert!(directions.get(&Direction::Inbound).copied().unwrap_or(0) >= 100);
    }
}
