//! `apns-agent fastpath IFACE pass|mark|redirect`.

use apns_common::{fastpath::FastPath, label::Label as _};

use crate::{cli::Global, cmd::live, settings::Settings};

pub fn fastpath(global: &Global, interface: &str, mode: FastPath) -> anyhow::Result<()> {
    let settings = Settings::resolve(&global.into())?;
    live::change(&settings, "apns-agent fastpath", |desired| {
        match desired.interfaces.get_mut(interface) {
            Some(fastpath) => *fastpath = mode,
            None => anyhow::bail!("{interface} is not attached (see `apns-agent status`)"),
        }
        desired.mark = settings.config.mark;
        Ok(())
    })?;
    println!("{interface}: fast path {}", mode.as_str());
    Ok(())
}
