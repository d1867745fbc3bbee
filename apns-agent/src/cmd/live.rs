//! How a subcommand changes a running datapath: under the pin directory's lock, read the
//! live state, change one part of it, record the change in the state file so that it
//! survives restarts (`settings::state`), and only then reconcile: intent before action.

use std::time::SystemTime;

use anyhow::Context as _;

use crate::{
    datapath::{
        reconcile::{Changes, Desired},
        Datapath, Lock, PinDir,
    },
    privileges,
    settings::Settings,
};

/// Applies `edit` to the live state of the datapath `settings` name, which must be loaded.
/// An `edit` error, a result the datapath refuses, or a state file that cannot be written
/// changes nothing. `action` says what is being done, for the capability check's message.
pub fn change(
    settings: &Settings,
    action: &str,
    edit: impl FnOnce(&mut Desired) -> anyhow::Result<()>,
) -> anyhow::Result<Changes> {
    privileges::require(privileges::CHANGE, action)?;
    let lock = lock_loaded(&settings.pins)?;
    let mut datapath = Datapath::open(&settings.pins)?;
    change_open(settings, &mut datapath, &lock, edit)
}

/// [`change`] on a datapath already open under `lock`.
///
/// The live state `edit` sees holds the interfaces the record wants that are missing here
/// (`Datapath::missing`) too, so that a change of other interfaces keeps them in the record,
/// and `detach` can drop one for good.
pub fn change_open(
    settings: &Settings,
    datapath: &mut Datapath,
    lock: &Lock,
    edit: impl FnOnce(&mut Desired) -> anyhow::Result<()>,
) -> anyhow::Result<Changes> {
    // Read first: a state file that cannot be read must stop us before the kernel changes.
    let recorded = settings.load_state()?;
    let wanted = recorded.wanted_interfaces()?;
    let mut before = datapath.live()?;
    for interface in datapath.missing(wanted.keys())? {
        let fastpath = wanted[&interface];
        before.interfaces.insert(interface, fastpath);
    }
    let mut after = before.clone();
    edit(&mut after)?;
    let mut state = recorded.clone();
    state.record(&before, &after, &command_line(), SystemTime::now());
    if state == recorded {
        return datapath.reconcile(lock, &after);
    }
    settings.save_state(&state).context(
        "nothing changed: a live change is recorded before it is applied, so that a restart keeps it, and it could not be recorded",
    )?;
    datapath.reconcile(lock, &after).map_err(|err| {
        // The change failed: its record goes with it, or the next start would impose what
        // the kernel refused.
        match settings.save_state(&recorded) {
            Ok(()) => err,
            Err(restore) => anyhow::anyhow!(
                "{err:#} (and the previous record could not be written back, so the next start applies the failed change: {restore:#})"
            ),
        }
    })
}

/// Takes the lock of a loaded datapath; refuses when nothing is loaded.
pub fn lock_loaded(pins: &PinDir) -> anyhow::Result<Lock> {
    if !pins.is_loaded() {
        // Datapath::open words the refusal; reuse it.
        Datapath::open(pins)?;
    }
    pins.lock()
        .with_context(|| format!("locking {}", pins.root().display()))
}

/// "apns-agent mode enforce": how the state file says who changed a setting.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("apns-agent {}", args.join(" "))
}
