//! The prefix (CIDR) parser of config files, list files and the prefix arguments of the CLI, on
//! any text: a prefix or an error, never a panic; a prefix it accepts has no host bits and
//! reads back as itself.

#![no_main]

use apns_agent::datapath::policy::parse_prefix;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(net) = parse_prefix(text) {
        assert_eq!(net.trunc(), net, "{text:?} gave {net}, with host bits");
        assert_eq!(
            parse_prefix(&net.to_string()).ok(),
            Some(net),
            "{text:?} gave {net}"
        );
    }
});
