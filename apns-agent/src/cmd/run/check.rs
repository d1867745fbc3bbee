//! `run`'s check of the interfaces and pins, every few seconds (see [`interfaces`]).

use std::collections::{BTreeMap, BTreeSet};

use super::Running;
use crate::datapath::{
    interfaces::FastPath,
    links,
    status::{InterfaceStatus, LinkState},
};

/// What an operator's day does to a running datapath, checked every few seconds:
/// - pins removed by hand are re-pinned from the open handles (else no other command could
///   reach the datapath, and no later `run` adopt it);
/// - an interface whose link state changed is reported (deleted, renamed, missing, back);
/// - the link of an interface that was re-created (or whose name another device took) moves
///   to the device that has the name now;
/// - an interface that should be attached but whose link pin was removed by hand (which
///   detaches it), or that was missing and has appeared, is attached. What "should" means is
///   what `run` applies: the config with the live changes still in force
///   (`settings::state`), so a `detach` stays detached.
pub(super) fn interfaces(
    running: &mut Running,
    reported: &mut BTreeMap<String, LinkState>,
) -> anyhow::Result<()> {
    let datapath = &mut *running.datapath;
    // The whole pin directory may have been removed: the lock lives on it.
    datapath.pins().prepare()?;
    // Another command is changing the datapath: look again at the next tick rather than
    // stall the agent (and /metrics, on the same thread) behind it.
    let Some(lock) = datapath.pins().try_lock()? else {
        tracing::debug!("the pin directory is locked by another command; checking later");
        return Ok(());
    };
    for pin in datapath.repair_pins(&lock)? {
        tracing::warn!("{pin} was removed by hand; pinned again from the running datapath");
    }
    let wanted = running
        .settings
        .load_state()?
        .effective(&running.config)?
        .interfaces;
    let mut statuses = datapath.interface_status()?;
    let missing = datapath.missing(wanted.keys())?;
    statuses.extend(missing.into_iter().map(InterfaceStatus::missing));
    let mut moved = false;
    for status in &statuses {
        if reported.get(&status.interface) != Some(&status.state) {
            match status.state {
                LinkState::Attached if reported.contains_key(&status.interface) => {
                    tracing::info!("{}", crate::cmd::status::interface_line(status))
                }
                LinkState::Attached => {}
                _ => tracing::warn!("{}", crate::cmd::status::interface_line(status)),
            }
            reported.insert(status.interface.clone(), status.state);
        }
        let named_now = links::ifindex(&status.interface).ok();
        moved |= named_now.is_some() && named_now != status.ifindex;
    }
    if moved {
        for change in datapath.move_stale_links(&lock)?.0 {
            tracing::info!("{change}");
        }
    }
    // The link pins alone tell what is lost; the rest of the live state is read only then.
    let pinned: BTreeSet<String> = datapath
        .pins()
        .links()?
        .into_iter()
        .map(|link| link.interface)
        .collect();
    let lost: BTreeMap<String, FastPath> = wanted
        .into_iter()
        .filter(|(interface, _)| !pinned.contains(interface) && links::ifindex(interface).is_ok())
        .collect();
    if !lost.is_empty() {
        // Missing until now (or not seen yet), or last seen with a link pin.
        let (appeared, unpinned): (Vec<&str>, Vec<&str>) =
            lost.keys().map(String::as_str).partition(|interface| {
                matches!(reported.get(*interface), None | Some(LinkState::Missing))
            });
        if !appeared.is_empty() {
            tracing::info!(
                "{}: the interface is here now; attaching it",
                appeared.join(", ")
            );
        }
        if !unpinned.is_empty() {
            tracing::warn!(
                "the link pin of {} was removed by hand (which detaches it); attaching again",
                unpinned.join(", ")
            );
        }
        let mut live = datapath.live()?;
        // Roles come from the config alone (`live` knows only the attached interfaces').
        live.devices.extend(
            lost.keys()
                .filter(|interface| running.config.devices.contains(*interface))
                .cloned(),
        );
        live.interfaces.extend(lost);
        live.xdp_mode = running.config.xdp_mode;
        live.sharing = running.config.sharing;
        for change in datapath.reconcile(&lock, &live)?.0 {
            tracing::info!("{change}");
        }
    }
    Ok(())
}
