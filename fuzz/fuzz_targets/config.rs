//! The TOML config file on any text: a config or an error, never a panic. (List files it
//! names are read relative to the folder the fuzzer runs in; the list target covers them.)

#![no_main]

use apns_agent::settings::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::parse(text);
});
