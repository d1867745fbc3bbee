//! Prefix list files (allow_files, provider_files) on any text: prefixes or an error naming
//! the line, never a panic, and every prefix one the datapath can hold (no host bits).

#![no_main]

use apns_agent::settings::config::parse_list;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_list(text, "list") {
        Ok(prefixes) => {
            for net in prefixes {
                assert_eq!(net.trunc(), net, "{net} has host bits");
            }
        }
        Err(err) => assert!(format!("{err:#}").starts_with("list line "), "{err:#}"),
    }
});
