//! Settings, resolved once and the same way for every subcommand: command-line flags over
//! the config file over the built-in defaults, the pin directory included. From them `run`
//! computes the state it wants of the datapath ([`Settings::desired`]); [`state`] says which
//! live changes made since stay in force.

pub mod config;
pub mod state;

use std::path::{Path, PathBuf};

use crate::{
    cli::{Global, RunArgs},
    datapath::{interfaces::InterfaceRole, pins::DEFAULT_PIN_DIR, reconcile::Desired, PinDir},
};

use self::{
    config::{Config, DEFAULT_CONFIG},
    state::State,
};

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
    pub fn resolve(global: &Global) -> anyhow::Result<Settings> {
        let config_file = config_file(global);
        let config = match &config_file {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        let pins = pin_dir(global, || Ok(config.pin_dir.clone()))?;
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
    pub fn resolve_pins(global: &Global) -> anyhow::Result<PinDir> {
        pin_dir(global, || match config_file(global) {
            Some(path) => config::load_pin_dir(&path),
            None => Ok(DEFAULT_PIN_DIR.to_owned()),
        })
    }

    /// What the config says of the datapath, with `run`'s flags over it.
    pub fn desired(&self, run: &RunArgs) -> Desired {
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
fn config_file(global: &Global) -> Option<PathBuf> {
    match &global.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|path| path.exists()),
    }
}

/// `--pin-dir`, else the config's `pin_dir` (read only when needed).
fn pin_dir(
    global: &Global,
    from_config: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<PinDir> {
    let dir = match &global.pin_dir {
        Some(dir) => dir.clone(),
        None => PathBuf::from(from_config()?),
    };
    Ok(PinDir::new(dir))
}
