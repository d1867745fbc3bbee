//! Reading a capture for `replay`: pcap or pcapng (either byte order, any time resolution,
//! several pcapng sections and interfaces), every frame turned into the Ethernet frame the
//! XDP program would have seen. Link types: Ethernet as it is; Linux cooked captures (SLL,
//! SLL2, what `tcpdump -i any` writes) get an Ethernet header in place of theirs, and their
//! outgoing frames are left out: XDP runs on receive only, so the datapath never sees them.
//!
//! The whole file is read and checked before anything is run, so a truncated, corrupt or
//! unsupported file fails with the frame it stopped at, and nothing is half-reported.

use std::{collections::BTreeSet, fs::File, path::Path};

use anyhow::{bail, Context as _};
use pcap_parser::{
    create_reader, traits::PcapNGPacketBlock as _, Block, Linktype, PcapBlockOwned, PcapError,
};

/// The read buffer; a block larger than this is taken for corruption (Linux's largest
/// snaplen is 262144).
const BUFFER: usize = 1 << 20;
/// Ethernet header: two MACs and the EtherType.
const ETH_HLEN: usize = 14;
/// `struct sll_header` and `struct sll2_header` (pcap-linktype(7)).
const SLL_HLEN: usize = 16;
const SLL2_HLEN: usize = 20;
/// `sll_pkttype` of a frame this host sent (PACKET_OUTGOING).
const PACKET_OUTGOING: u16 = 4;
/// `sll_pkttype` of a broadcast frame.
const PACKET_BROADCAST: u16 = 1;

/// One frame of the capture, as Ethernet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its number in the file, from 1, counting every packet record (as Wireshark does).
    pub number: usize,
    pub data: Vec<u8>,
    /// The capture kept less than the wire had (snaplen): the counted bytes are short.
    pub cut: bool,
}

/// A capture, read whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// "pcap" or "pcapng".
    pub format: &'static str,
    pub frames: Vec<Frame>,
    /// Link types met, by name.
    pub link_types: BTreeSet<&'static str>,
    /// Frames of a cooked capture that this host sent, left out.
    pub outgoing: usize,
}

/// Reads the capture at `path`.
pub fn read(path: &Path) -> anyhow::Result<Capture> {
    let file = File::open(path).with_context(|| format!("opening capture {}", path.display()))?;
    read_from(file).with_context(|| format!("capture {}", path.display()))
}

/// Reads a capture from any reader (the file, or bytes in tests).
pub fn read_from(input: impl std::io::Read + Send) -> anyhow::Result<Capture> {
    let mut reader = match create_reader(BUFFER, input) {
        Ok(reader) => reader,
        Err(PcapError::Eof) => bail!("the file is empty"),
        Err(PcapError::HeaderNotRecognized) => {
            bail!("not a pcap or pcapng file (its first bytes are no capture header)")
        }
        Err(PcapError::Incomplete(_)) => bail!("the file ends inside its header"),
        Err(err) => bail!("reading its header: {err}"),
    };
    let mut capture = Capture::default();
    // pcapng: the link type of each interface of the current section, by interface id.
    let mut interfaces: Vec<Linktype> = Vec::new();
    // pcap: the one link type of the file.
    let mut legacy: Option<Linktype> = None;
    let mut records = 0usize;
    // Bytes of the file read and accepted so far: where a corrupt block starts.
    let mut position = 0usize;
    loop {
        let next = records + 1;
        match reader.next() {
            Ok((consumed, block)) => {
                let packet = match block {
                    PcapBlockOwned::LegacyHeader(header) => {
                        capture.format = "pcap";
                        legacy = Some(header.network);
                        None
                    }
                    PcapBlockOwned::Legacy(block) => {
                        let linktype = legacy.context("a frame before the file header")?;
                        Some((linktype, block.data.to_vec(), block.caplen < block.origlen))
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                        capture.format = "pcapng";
                        interfaces.clear();
                        None
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(interface)) => {
                        interfaces.push(interface.linktype);
                        None
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(block)) => {
                        let linktype =
                            *interfaces.get(block.if_id as usize).with_context(|| {
                                format!(
                                    "frame {next}: interface {} was never described (corrupt file)",
                                    block.if_id
                                )
                            })?;
                        Some((
                            linktype,
                            block.packet_data().to_vec(),
                            block.caplen < block.origlen,
                        ))
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(block)) => {
                        let linktype = *interfaces.first().with_context(|| {
                            format!("frame {next}: no interface was described (corrupt file)")
                        })?;
                        let data = block.packet_data().to_vec();
                        let cut = data.len() < block.origlen as usize;
                        Some((linktype, data, cut))
                    }
                    // Statistics, name resolution, comments, ...: nothing to replay.
                    PcapBlockOwned::NG(_) => None,
                };
                if let Some((linktype, data, cut)) = packet {
                    records = next;
                    capture.link_types.insert(linktype_name(linktype));
                    match ethernet(linktype, &data).with_context(|| format!("frame {next}"))? {
                        Some(data) => capture.frames.push(Frame {
                            number: next,
                            data,
                            cut,
                        }),
                        None => capture.outgoing += 1,
                    }
                }
                reader.consume(consumed);
                position += consumed;
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if let Err(err) = reader.refill() {
                    bail!("reading frame {next}: {err}");
                }
            }
            Err(PcapError::UnexpectedEof) => bail!(
                "truncated: the file ends inside frame {next} (after {records} complete frames)"
            ),
            Err(PcapError::BufferTooSmall) => {
                bail!("frame {next} claims more than {BUFFER} bytes: the file is corrupt")
            }
            Err(err) => bail!(
                "frame {next} is corrupt (the block at byte {position} {}; after {records} good frames)",
                describe(&err)
            ),
        }
    }
    if capture.format.is_empty() {
        capture.format = "pcap";
    }
    Ok(capture)
}

fn describe(err: &PcapError<&[u8]>) -> String {
    match err {
        PcapError::NomError(_, kind) | PcapError::OwnedNomError(_, kind) => {
            format!("fails the parser's {kind:?} check")
        }
        other => format!("cannot be read: {other}"),
    }
}

fn linktype_name(linktype: Linktype) -> &'static str {
    match linktype {
        Linktype::ETHERNET => "ethernet",
        Linktype::LINUX_SLL => "linux_sll",
        Linktype::LINUX_SLL2 => "linux_sll2",
        _ => "other",
    }
}

/// The Ethernet frame the datapath would have received for a packet of `linktype`; `None`
/// for a frame this host sent (cooked captures say so).
fn ethernet(linktype: Linktype, data: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let short = |header: usize, what: &str| {
        anyhow::anyhow!(
            "{} bytes, shorter than {what} ({header} bytes): the capture is corrupt",
            data.len()
        )
    };
    match linktype {
        Linktype::ETHERNET => {
            if data.len() < ETH_HLEN {
                return Err(short(ETH_HLEN, "an Ethernet header"));
            }
            Ok(Some(data.to_vec()))
        }
        Linktype::LINUX_SLL => {
            if data.len() < SLL_HLEN {
                return Err(short(SLL_HLEN, "a Linux cooked (SLL) header"));
            }
            let field = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
            let cooked = Cooked {
                pkttype: field(0),
                address_len: field(4),
                address: &data[6..14],
                protocol: field(14),
            };
            Ok(cooked.to_ethernet(&data[SLL_HLEN..]))
        }
        Linktype::LINUX_SLL2 => {
            if data.len() < SLL2_HLEN {
                return Err(short(SLL2_HLEN, "a Linux cooked v2 (SLL2) header"));
            }
            let cooked = Cooked {
                protocol: u16::from_be_bytes([data[0], data[1]]),
                pkttype: u16::from(data[10]),
                address_len: u16::from(data[11]),
                address: &data[12..20],
            };
            Ok(cooked.to_ethernet(&data[SLL2_HLEN..]))
        }
        Linktype(other) => bail!(
            "link type {other} is not supported: replay reads Ethernet and Linux cooked (SLL, SLL2) captures (`tcpdump -i IFACE` or `-i any`)"
        ),
    }
}

/// The fields of a Linux cooked header replay needs (both versions carry them).
struct Cooked<'a> {
    pkttype: u16,
    address_len: u16,
    /// The sender's link-layer address, `address_len` bytes of these 8.
    address: &'a [u8],
    /// The EtherType of the payload.
    protocol: u16,
}

impl Cooked<'_> {
    /// An Ethernet header (the sender's MAC when it has one, the destination unknown: zero,
    /// or broadcast) before the payload. The datapath reads addresses and ports, never MACs.
    fn to_ethernet(&self, payload: &[u8]) -> Option<Vec<u8>> {
        if self.pkttype == PACKET_OUTGOING {
            return None;
        }
        let mut frame = Vec::with_capacity(ETH_HLEN + payload.len());
        let destination = if self.pkttype == PACKET_BROADCAST {
            [0xff; 6]
        } else {
            [0; 6]
        };
        frame.extend_from_slice(&destination);
        if self.address_len == 6 {
            frame.extend_from_slice(&self.address[..6]);
        } else {
            frame.extend_from_slice(&[0; 6]);
        }
        frame.extend_from_slice(&self.protocol.to_be_bytes());
        frame.extend_from_slice(payload);
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian pcap header of `linktype`.
    fn pcap_header(linktype: u32) -> Vec<u8> {
        let mut header = Vec::new();
        header.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        header.extend_from_slice(&2u16.to_le_bytes());
        header.extend_from_slice(&4u16.to_le_bytes());
        header.extend_from_slice(&[0; 8]);
        header.extend_from_slice(&65535u32.to_le_bytes());
        header.extend_from_slice(&linktype.to_le_bytes());
        header
    }

    fn record(data: &[u8]) -> Vec<u8> {
        let mut record = vec![0; 8];
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(data);
        record
    }

    fn ipv4_payload() -> Vec<u8> {
        vec![0x45; 20]
    }

    #[test]
    fn cooked_frames_become_ethernet_and_outgoing_ones_are_left_out() {
        let mut sll_in = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 7, 0, 0, 0x08, 0x00];
        sll_in.extend(ipv4_payload());
        let mut sll_out = sll_in.clone();
        sll_out[1] = 4;
        let mut file = pcap_header(113);
        file.extend(record(&sll_in));
        file.extend(record(&sll_out));
        let capture = read_from(&file[..]).unwrap();
        assert_eq!(capture.format, "pcap");
        assert_eq!(capture.outgoing, 1);
        assert_eq!(capture.frames.len(), 1);
        let frame = &capture.frames[0];
        assert_eq!(frame.number, 1);
        assert_eq!(
            &frame.data[..14],
            &[0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 7, 0x08, 0x00]
        );
        assert_eq!(&frame.data[14..], &ipv4_payload()[..]);
    }

    #[test]
    fn bad_files_name_the_frame() {
        let frame = [0u8; 60];
        let mut file = pcap_header(1);
        file.extend(record(&frame));
        file.extend(record(&frame));
        let cut = &file[..file.len() - 10];
        let err = format!("{:#}", read_from(cut).unwrap_err());
        assert!(
            err.contains("ends inside frame 2 (after 1 complete frames)"),
            "{err}"
        );

        let mut usb = pcap_header(189);
        usb.extend(record(&frame));
        let err = format!("{:#}", read_from(&usb[..]).unwrap_err());
        assert!(
            err.starts_with("frame 1: link type 189 is not supported"),
            "{err}"
        );

        let mut runt = pcap_header(1);
        runt.extend(record(&[0; 10]));
        let err = format!("{:#}", read_from(&runt[..]).unwrap_err());
        assert!(
            err.starts_with("frame 1: 10 bytes, shorter than an Ethernet header"),
            "{err}"
        );

        let err = format!("{:#}", read_from(&b"hello, not a capture"[..]).unwrap_err());
        assert!(err.contains("not a pcap or pcapng file"), "{err}");
        let err = format!("{:#}", read_from(&b""[..]).unwrap_err());
        assert!(err.contains("empty"), "{err}");
    }
}
