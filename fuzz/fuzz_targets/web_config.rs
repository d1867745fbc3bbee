//! The web config file of /metrics (YAML, exporter-toolkit's format) on any bytes, through
//! `WebConfig::load` as the agent reads it: a config or an error, never a panic. The input
//! is written to a file in a folder of its own beside the fuzz binary (in the fuzz build's
//! target directory, so nothing is left elsewhere); files it names are looked up there.

#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use apns_agent::telemetry::web_config::WebConfig;
use libfuzzer_sys::fuzz_target;

/// This process's input file.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let exe = std::env::current_exe().expect("the fuzz binary's path");
        let dir = exe.with_file_name("web_config-inputs");
        std::fs::create_dir_all(&dir).expect("a folder for the inputs");
        dir.join(format!("{}.yml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(file(), data).expect("writing the input");
    let _ = WebConfig::load(file());
});
