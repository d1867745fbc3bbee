//! Reading a capture for `replay`: pcap or pcapng (either byte order, any time resolution,
//! several pcapng sections and interfaces), every frame turned into the Ethernet frame the
//! XDP program would have seen. Link types: Ethernet as it is; Linux cooked captures (SLL,
//! SLL2, what `tcpdump -i any` writes) get an Ethernet header in place of theirs, and their
//! outgoing frames are left out: XDP runs on receive only, so the datapath never sees them.
//!
//! The file is streamed, one frame at a time: `replay` runs as root on captures that may come
//! from anywhere, so its memory is the parser's buffer ([`BUFFER`]) and one frame, whatever
//! the file's size. A truncated, corrupt or unsupported file fails at the frame it stopped
//! at, naming the byte its record starts at; the caller reports nothing until the last frame
//! is read.

use std::{collections::BTreeSet, fs::File, io::Read, path::Path};

use anyhow::{bail, Context as _};
use pcap_parser::{
    create_reader, traits::PcapNGPacketBlock as _, traits::PcapReaderIterator, Block, Linktype,
    PcapBlockOwned, PcapError,
};

/// The read buffer, the most of the file held in memory at once; a block larger than this
/// is taken for corruption (Linux's largest snaplen is 262144).
pub const BUFFER: usize = 1 << 20;
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

/// What the frames read so far were: the whole capture's once [`Reader`] has ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// "pcap" or "pcapng".
    pub format: &'static str,
    /// Link types met, by name.
    pub link_types: BTreeSet<&'static str>,
    /// Frames handed out.
    pub frames: usize,
    /// Of those, the ones cut short by the capture's snap length.
    pub cut_frames: usize,
    /// Frames of a cooked capture that this host sent, left out.
    pub outgoing: usize,
}

/// A capture being read: an iterator of its frames, each read from the file when asked for.
/// It ends after the last frame or the first error.
pub struct Reader<'r> {
    /// The file's name, for errors.
    name: String,
    parser: Box<dyn PcapReaderIterator + Send + 'r>,
    summary: Summary,
    /// pcapng: the link type of each interface of the current section, by interface id.
    interfaces: Vec<Linktype>,
    /// pcap: the one link type of the file.
    legacy: Option<Linktype>,
    /// Packet records read, those left out included.
    records: usize,
    /// Bytes of the file read and accepted so far: where the next record starts.
    position: usize,
    ended: bool,
}

impl Reader<'static> {
    /// Opens the capture at `path` and reads its header.
    pub fn open(path: &Path) -> anyhow::Result<Reader<'static>> {
        let name = format!("capture {}", path.display());
        let file = File::open(path).with_context(|| format!("opening {name}"))?;
        Reader::new(file, name)
    }
}

impl<'r> Reader<'r> {
    /// Reads the header of a capture from any reader (a file, or bytes in tests); `name`
    /// starts every error.
    pub fn new(input: impl Read + Send + 'r, name: String) -> anyhow::Result<Reader<'r>> {
        let parser = match create_reader(BUFFER, input) {
            Ok(parser) => parser,
            Err(PcapError::Eof) => bail!("{name}: the file is empty"),
            Err(PcapError::HeaderNotRecognized) => {
                bail!("{name}: not a pcap or pcapng file (its first bytes are no capture header)")
            }
            Err(PcapError::Incomplete(_)) => bail!("{name}: the file ends inside its header"),
            Err(err) => bail!("{name}: reading its header: {err}"),
        };
        Ok(Reader {
            name,
            parser,
            summary: Summary::default(),
            interfaces: Vec::new(),
            legacy: None,
            records: 0,
            position: 0,
            ended: false,
        })
    }

    /// What the frames read so far were.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The next frame the datapath would receive, reading (and skipping) blocks until one.
    fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        loop {
            let next = self.records + 1;
            let position = self.position;
            // The error of a record that is there but wrong.
            let bad = |err: anyhow::Error| {
                anyhow::anyhow!("frame {next}: {err:#}; its record starts at byte {position}")
            };
            // A block still incomplete in a full buffer can never be read whole (the parser
            // says Incomplete without a size for some).
            let buffer_full = self.parser.data().len() >= BUFFER;
            let read = match self.parser.next() {
                Ok((consumed, block)) => {
                    let packet = match &block {
                        PcapBlockOwned::LegacyHeader(header) => {
                            self.summary.format = "pcap";
                            self.legacy = Some(header.network);
                            None
                        }
                        PcapBlockOwned::Legacy(block) => {
                            let linktype = self
                                .legacy
                                .context("a frame before the file header")
                                .map_err(bad)?;
                            Some((linktype, block.data, block.caplen < block.origlen))
                        }
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => {
                            self.summary.format = "pcapng";
                            self.interfaces.clear();
                            None
                        }
                        PcapBlockOwned::NG(Block::InterfaceDescription(interface)) => {
                            self.interfaces.push(interface.linktype);
                            None
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(block)) => {
                            let linktype = *self
                                .interfaces
                                .get(block.if_id as usize)
                                .with_context(|| {
                                    format!(
                                        "interface {} was never described (corrupt file)",
                                        block.if_id
                                    )
                                })
                                .map_err(bad)?;
                            Some((
                                linktype,
                                block.packet_data(),
                                block.caplen < block.origlen,
                            ))
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(block)) => {
                            let linktype = *self
                                .interfaces
                                .first()
                                .context("no interface was described (corrupt file)")
                                .map_err(bad)?;
                            let data = block.packet_data();
                            Some((linktype, data, data.len() < block.origlen as usize))
                        }
                        // Statistics, name resolution, comments, ...: nothing to replay.
                        PcapBlockOwned::NG(_) => None,
                    };
                    let frame = match packet {
                        Some((linktype, data, cut)) => {
                            self.records = next;
                            self.summary.link_types.insert(linktype_name(linktype));
                            match ethernet(linktype, data).map_err(bad)? {
                                Some(data) => Some(Frame {
                                    number: next,
                                    data,
                                    cut,
                                }),
                                None => {
                                    self.summary.outgoing += 1;
                                    None
                                }
                            }
                        }
                        None => None,
                    };
                    self.parser.consume(consumed);
                    self.position += consumed;
                    frame
                }
                Err(PcapError::Eof) => {
                    if self.summary.format.is_empty() {
                        self.summary.format = "pcap";
                    }
                    return Ok(None);
                }
                Err(PcapError::Incomplete(_)) if buffer_full => {
                    bail!(too_large(next, position))
                }
                Err(PcapError::Incomplete(_)) => {
                    if let Err(err) = self.parser.refill() {
                        bail!("reading frame {next} at byte {position}: {err}");
                    }
                    None
                }
                Err(PcapError::UnexpectedEof) => bail!(
                    "truncated: the file ends inside frame {next} (after {} complete frames), \
                     whose record starts at byte {position}",
                    self.records
                ),
                Err(PcapError::BufferTooSmall) => bail!(too_large(next, position)),
                Err(err) => bail!(
                    "frame {next} is corrupt (the block at byte {position} {}; after {} good frames)",
                    describe(&err),
                    self.records
                ),
            };
            if let Some(frame) = read {
                self.summary.frames += 1;
                if frame.cut {
                    self.summary.cut_frames += 1;
                }
                return Ok(Some(frame));
            }
        }
    }
}

impl Iterator for Reader<'_> {
    type Item = anyhow::Result<Frame>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let next = self
            .next_frame()
            .with_context(|| self.name.clone())
            .transpose();
        if !matches!(next, Some(Ok(_))) {
            self.ended = true;
        }
        next
    }
}

fn too_large(number: usize, position: usize) -> String {
    format!(
        "frame {number} (the record at byte {position}) claims more than {BUFFER} bytes: \
         the file is corrupt"
    )
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

    /// Every frame of `file` and the summary, or the first error.
    fn read_all(file: &[u8]) -> anyhow::Result<(Vec<Frame>, Summary)> {
        let mut reader = Reader::new(file, "capture t.pcap".to_owned())?;
        let frames = reader.by_ref().collect::<anyhow::Result<Vec<_>>>()?;
        Ok((frames, reader.summary().clone()))
    }

    fn error(file: &[u8]) -> String {
        format!("{:#}", read_all(file).unwrap_err())
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
        let (frames, summary) = read_all(&file).unwrap();
        assert_eq!(summary.format, "pcap");
        assert_eq!(summary.outgoing, 1);
        assert_eq!(summary.frames, 1);
        assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        assert_eq!(frame.number, 1);
        assert_eq!(
            &frame.data[..14],
            &[0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 7, 0x08, 0x00]
        );
        assert_eq!(&frame.data[14..], &ipv4_payload()[..]);
    }

    #[test]
    fn a_capture_larger_than_the_buffer_streams_whole() {
        // Frames of every length from 60 to 1513 bytes, each filled with its number, until
        // the file is three buffers long.
        let mut file = pcap_header(1);
        let mut sent = Vec::new();
        while file.len() < 3 * BUFFER {
            let number = sent.len() + 1;
            let frame = vec![number as u8; 60 + number % 1454];
            file.extend(record(&frame));
            sent.push(frame);
        }
        let (frames, summary) = read_all(&file).unwrap();
        assert_eq!(summary.frames, sent.len());
        assert_eq!(frames.len(), sent.len());
        for (index, (frame, data)) in frames.iter().zip(&sent).enumerate() {
            assert_eq!(frame.number, index + 1);
            assert_eq!(&frame.data, data, "frame {}", index + 1);
        }
        assert_eq!(summary.link_types, BTreeSet::from(["ethernet"]));
        assert_eq!((summary.cut_frames, summary.outgoing), (0, 0));
    }

    #[test]
    fn bad_files_name_the_file_the_frame_and_where_its_record_starts() {
        let frame = [0u8; 60];
        let mut file = pcap_header(1);
        file.extend(record(&frame));
        file.extend(record(&frame));
        // The header is 24 bytes, a record 16 and its frame: the second starts at 100.
        assert_eq!(
            error(&file[..file.len() - 10]),
            "capture t.pcap: truncated: the file ends inside frame 2 (after 1 complete frames), \
             whose record starts at byte 100"
        );

        let mut usb = pcap_header(189);
        usb.extend(record(&frame));
        assert!(
            error(&usb).starts_with("capture t.pcap: frame 1: link type 189 is not supported"),
            "{}",
            error(&usb)
        );
        assert!(error(&usb).ends_with("; its record starts at byte 24"));

        let mut runt = pcap_header(1);
        runt.extend(record(&frame));
        runt.extend(record(&[0; 10]));
        assert_eq!(
            error(&runt),
            "capture t.pcap: frame 2: 10 bytes, shorter than an Ethernet header (14 bytes): \
             the capture is corrupt; its record starts at byte 100"
        );

        // A record claiming 16 MiB, more than the buffer holds: refused, never allocated.
        let mut huge = pcap_header(1);
        huge.extend(record(&frame));
        let mut claim = record(&frame);
        claim[8..16].copy_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        huge.extend(claim);
        huge.extend(vec![0; 2 * BUFFER]);
        assert_eq!(
            error(&huge),
            format!(
                "capture t.pcap: frame 2 (the record at byte 100) claims more than {BUFFER} \
                 bytes: the file is corrupt"
            )
        );

        assert!(error(b"hello, not a capture").contains("not a pcap or pcapng file"));
        assert_eq!(error(b""), "capture t.pcap: the file is empty");
    }
}
