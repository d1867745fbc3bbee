//! `apns-agent unload`: detach everywhere, remove every pin and the live-state record. Of
//! the config it reads only `pin_dir` (the package's prerm relies on it: a config whose
//! lists are broken must not leave the datapath attached after a removal).

use crate::{
    cli::Global,
    datapath, privileges,
    settings::{state, Settings},
};

pub fn unload(global: &Global) -> anyhow::Result<()> {
    privileges::require(privileges::CHANGE, "apns-agent unload")?;
    let pins = &Settings::resolve_pins(&global.into())?;
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
