//! `apns-agent attach [--xdp-mode M] [--xdp-multiprog C] [--xdp-priority N] IFACE...`:
//! attach the datapath (loading it with Apple's default policy if nothing is pinned yet).
//! Where an interface runs libxdp's dispatcher (and `xdp_multiprog` is not `never`), the
//! agent joins it as one more component.

use crate::{
    cli::{Global, SharingArgs},
    cmd::live,
    datapath::{
        self, interfaces::InterfaceRole, links, occupants, Datapath, Installed, Sharing, XdpMode,
    },
    privileges,
    settings::Settings,
};

pub fn attach(
    global: &Global,
    xdp_mode: XdpMode,
    sharing: &SharingArgs,
    interfaces: &[String],
) -> anyhow::Result<()> {
    privileges::require(privileges::CHANGE, "apns-agent attach")?;
    let settings = Settings::resolve(&global.into())?;
    let pins = &settings.pins;
    let multiprog = sharing
        .xdp_multiprog
        .unwrap_or(settings.config.sharing.multiprog);
    // Every name first, and what runs there: a typo or someone else's XDP program must not
    // leave a half-made datapath behind.
    for interface in interfaces {
        links::check_interface_name(interface)?;
        let ifindex = links::ifindex(interface)?;
        occupants::check_free(interface, ifindex, pins, multiprog)?;
    }
    pins.prepare()?;
    let lock = pins.lock()?;
    // Keep the pinned program's log level: only `run --ebpf-log` changes it.
    let (mut datapath, installed) =
        Datapath::install(pins, &lock, None, settings.config.clients.table_size)?;
    let attached = live::change_open(&settings, &mut datapath, &lock, |desired| {
        desired.xdp_mode = xdp_mode;
        desired.sharing = Sharing {
            multiprog,
            priority: sharing
                .xdp_priority
                .unwrap_or(settings.config.sharing.priority),
        };
        // As `fastpath` does: a `mark` interface takes the config's mark bits.
        desired.mark = settings.config.mark;
        for interface in interfaces {
            let fastpath = settings
                .config
                .fastpath
                .get(interface)
                .copied()
                .unwrap_or_default();
            // A new interface takes its role from the config too (an attached one keeps its).
            let new = !desired.interfaces.contains_key(interface);
            desired
                .interfaces
                .entry(interface.clone())
                .or_insert(fastpath);
            if new && settings.config.roles.get(interface) == Some(&InterfaceRole::Devices) {
                desired.devices.insert(interface.clone());
            }
        }
        Ok(())
    });
    if let Err(err) = attached {
        // A datapath made for this attach goes with it: a refused command changes nothing.
        if installed == Installed::Fresh {
            drop(datapath);
            if let Err(cleanup) = datapath::unload(pins, &lock) {
                tracing::warn!("removing the datapath made for the failed attach: {cleanup:#}");
            }
        }
        return Err(err);
    }
    for interface in interfaces {
        let mode = pins
            .link_of(interface)?
            .map_or("unknown", |link| link.mode.as_str());
        println!("{interface}: attached ({mode} mode)");
    }
    Ok(())
}
