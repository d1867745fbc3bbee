//! `apns-agent detach IFACE...`.

use crate::{cli::Global, cmd::live, settings::Settings};

pub fn detach(global: &Global, interfaces: &[String]) -> anyhow::Result<()> {
    let settings = Settings::resolve(&global.into())?;
    live::change(&settings, "apns-agent detach", |desired| {
        for interface in interfaces {
            anyhow::ensure!(
                desired.interfaces.remove(interface).is_some(),
                "{interface} is not attached (see `apns-agent status`)"
            );
        }
        Ok(())
    })?;
    for interface in interfaces {
        println!("{interface}: detached");
    }
    Ok(())
}
