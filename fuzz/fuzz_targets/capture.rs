//! `replay`'s capture reader (pcap and pcapng, Ethernet and Linux cooked) on any bytes: it
//! ends in frames or an error, never a panic, a hang or an allocation the file only claims,
//! every frame it hands out is at least an Ethernet header, and its summary counts them all.

#![no_main]

use apns_agent::capture::Reader;
use libfuzzer_sys::fuzz_target;

/// Ethernet header: two MACs and the EtherType.
const ETH_HLEN: usize = 14;

fuzz_target!(|data: &[u8]| {
    let Ok(mut reader) = Reader::new(data, "capture".to_owned()) else {
        return;
    };
    let (mut frames, mut cut) = (0, 0);
    for frame in reader.by_ref() {
        let Ok(frame) = frame else {
            break;
        };
        assert!(
            frame.data.len() >= ETH_HLEN,
            "a frame without its Ethernet header"
        );
        frames += 1;
        cut += usize::from(frame.cut);
    }
    assert_eq!(reader.summary().frames, frames);
    assert_eq!(reader.summary().cut_frames, cut);
});
