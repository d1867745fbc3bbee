//! Settings, resolved once and the same way for every subcommand: command-line flags over
//! the config file over the built-in defaults, the pin directory included. From them `run`
//! computes the state it wants of the datapath ([`Settings::desired`]); [`state`] says which
//! live changes made since stay in force.
//!
//! The flags come in as plain values ([`Flags`], [`RunFlags`]): `cmd` converts clap's types
//! at its edge, so this module knows nothing of the command line's parser.

pub mod config;
pub mod state;

use std::path::{Path, PathBuf};

use apns_common::{fastpath::FastPath, policy::Mode};

use crate::datapath::{
    interfaces::InterfaceRole,
    links::XdpMode,
    multiprog::{Multiprog, Sharing},
    pins::DEFAULT_PIN_DIR,
    reconcile::Desired,
    PinDir,
};

use self::{
    config::{Config, DEFAULT_CONFIG},
    state::State,
};

/// What every subcommand's flags say of the settings.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// The config file to read instead of the default one.
    pub config: Option<PathBuf>,
    /// The pin directory, over the config's `pin_dir`.
    pub pin_dir: Option<PathBuf>,
}

/// What `run`'s flags say of the datapath, over the config.
#[derive(Clone, Debug, Default)]
pub struct RunFlags {
    /// Replace the config's interfaces when not empty.
    pub interfaces: Vec<String>,
    pub mode: Option<Mode>,
    pub xdp_mode: Option<XdpMode>,
    pub xdp_multiprog: Option<Multiprog>,
    pub xdp_priority: Option<u32>,
    /// Added to the config's `[fastpath]` table.
    pub fastpath: Vec<(String, FastPath)>,
    /// Added to the config's `[roles]` table.
    pub roles: Vec<(String, InterfaceRole)>,
    pub events_per_second: Option<u32>,
    pub events_sample_every: Option<u32>,
}

/// What every subcommand works with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The config file read: `--config`, else the default path when it exists, else none
    /// (the built-in defaults).
    pub config_file: Option<PathBuf>,
    pub config: Config,
    /// `--pin-dir`, else the config's `pin_dir`.
    pub pins: PinDir,
    /// The live-state record of the datapath at `pins` ([`state`]).
    pub state_file: PathBuf,
}

impl Settings {
    /// Reads the config (if any) and resolves the pin directory.
    pub fn resolve(flags: &Flags) -> anyhow::Result<Settings> {
        let config_file = config_file(flags);
        let config = match &config_file {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let pins = pin_dir(flags, || Ok(config.pin_dir.clone()))?;
        let state_file = state::path(&pins);
        Ok(Settings {
            config_file,
            config,
            pins,
            state_file,
        })
    }

    /// The pin directory alone, as [`Settings::resolve`] finds it, reading nothing of the
    /// config but its `pin_dir` (and not even that under `--pin-dir`): what `unload` needs.
    pub fn resolve_pins(flags: &Flags) -> anyhow::Result<PinDir> {
        pin_dir(flags, || match config_file(flags) {
            Some(path) => config::load_pin_dir(&path),
            None => Ok(DEFAULT_PIN_DIR.to_owned()),
        })
    }

    /// What the config says of the datapath, with `run`'s flags over it.
    pub fn desired(&self, run: &RunFlags) -> Desired {
        let config = &self.config;
        let interfaces = if run.interfaces.is_empty() {
            &config.interfaces
        } else {
            &run.interfaces
        };
        let mut fastpaths = config.fastpath.clone();
        fastpaths.extend(run.fastpath.iter().cloned());
        let mut roles = config.roles.clone();
        roles.extend(run.roles.iter().cloned());
        let mut policy = config.policy.clone();
        if let Some(mode) = run.mode {
            policy.mode = mode;
        }
        let mut events = config.events;
        if let Some(per_second) = run.events_per_second {
            events.per_cpu_per_second = per_second;
        }
        if let Some(every) = run.events_sample_every {
            events.sample_every = every;
        }
        Desired {
            interfaces: interfaces
                .iter()
                .map(|name| {
                    let fastpath = fastpaths.get(name).copied().unwrap_or_default();
                    (name.clone(), fastpath)
                })
                .collect(),
            devices: interfaces
                .iter()
                .filter(|name| roles.get(*name) == Some(&InterfaceRole::Devices))
                .cloned()
                .collect(),
            xdp_mode: run.xdp_mode.unwrap_or(config.xdp_mode),
            sharing: Sharing {
                multiprog: run.xdp_multiprog.unwrap_or(config.sharing.multiprog),
                priority: run.xdp_priority.unwrap_or(config.sharing.priority),
            },
            mark: config.mark,
            policy,
            events,
        }
    }

    pub fn config_file(&self) -> Option<&Path> {
        self.config_file.as_deref()
    }

    pub fn load_state(&self) -> anyhow::Result<State> {
        State::load(&self.state_file)
    }

    pub fn save_state(&self, state: &State) -> anyhow::Result<()> {
        state.save(&self.state_file)
    }
}

/// The config file to read: `--config`, else the default path when it exists.
fn config_file(flags: &Flags) -> Option<PathBuf> {
    match &flags.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|path| path.exists()),
    }
}

/// `--pin-dir`, else the config's `pin_dir` (read only when needed).
fn pin_dir(
    flags: &Flags,
    from_config: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<PinDir> {
    let dir = match &flags.pin_dir {
        Some(dir) => dir.clone(),
        None => PathBuf::from(from_config()?),
    };
    Ok(PinDir::new(dir))
}
