//! `apns-agent check-config FILE`: validate without touching the kernel.

use std::path::Path;

use apns_common::label::Label as _;

use crate::settings::config::Config;

pub fn check_config(file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    println!(
        "{}: ok ({} interfaces, mode {}, {} allow-list prefixes, {} provider prefixes, {} ports)",
        file.display(),
        config.interfaces.len(),
        config.policy.mode.as_str(),
        config.policy.allow.len(),
        config.policy.providers.len(),
        config.policy.ports.len()
    );
    Ok(())
}
