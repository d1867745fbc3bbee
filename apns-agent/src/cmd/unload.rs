//! `apns-agent unload`: detach everywhere, remove every pin and the live-state record.

use crate::{
    cli::Global,
    datapath, privileges,
    settings::{state, Settings},
};

pub fn unload(global: &Global) -> anyhow::Result<()> {
    privileges::require(privileges::CHANGE, "apns-agent unload")?;
    let settings = Settings::resolve(global)?;
    let pins = &settings.pins;
    if !pins.root().exists() {
        state::remove(pins)?;
        println!("nothing to unload at {}", pins.root().display());
        return Ok(());
    }
    let lock = pins.lock()?;
    datapath::unload(pins, &lock)?;
    state::remove(pins)?;
    println!(
        "unloaded: no program, link or pin left at {}",
        pins.root().display()
    );
    Ok(())
}
