//! How a subcommand changes a running datapath: under the pin directory's lock, read the
//! live state, change one part of it, reconcile, and record the change in the state file so
//! that it survives restarts (`settings::state`).

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
/// An `edit` error, or a result the datapath refuses, changes nothing. `action` says what is
/// being done, for the capability check's message.
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
pub fn change_open(
    settings: &Settings,
    datapath: &mut Datapath,
    lock: &Lock,
    edit: impl FnOnce(&mut Desired) -> anyhow::Result<()>,
) -> anyhow::Result<Changes> {
    // Read first: a state file that cannot be read must stop us before the kernel changes.
    let mut state = settings.load_state()?;
    let before = datapath.live()?;
    let mut after = before.clone();
    edit(&mut after)?;
    let changes = datapath.reconcile(lock, &after)?;
    state.record(&before, &after, &command_line(), SystemTime::now());
    settings.save_state(&state)?;
    Ok(changes)
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
