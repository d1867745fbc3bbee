//! Where the live state of a datapath came from, kept on disk so that it survives a crash, a
//! `kill -9`, a restart and a reboot.
//!
//! # The rule
//!
//! `run` applies the config file (with its command-line overrides). The other subcommands
//! change the live datapath (`mode enforce`, `providers add`, `attach`, `fastpath`, ...).
//! Such a live change is an operator's decision and stays in force across restarts **until
//! the config's same setting changes**: each setting ([`Section`]) is either
//!
//! - *from the config*: what the config said when `run` last applied it, or
//! - *overridden*: changed by a subcommand since; it keeps its live value as long as the
//!   config still says what it said when the override was made. Once the operator edits
//!   that setting in the config (and restarts or sends SIGHUP), the config wins and the
//!   override is dropped, with a log line that says so.
//!
//! A setting that a subcommand sets back to the config's value is from the config again.
//!
//! # The file
//!
//! JSON at `/var/lib/apns-agent/<pin dir>.json` (systemd's `StateDirectory=apns-agent`;
//! `<pin dir>` as [`crate::datapath::PinDir::file_stem`] names it), replaced atomically and
//! durably ([`crate::durable`]) on every change. `unload` removes it with the datapath. A
//! file that cannot be read is an error naming it, never silently ignored: ignoring it could
//! change what is enforced.
//!
//! # Intent before action
//!
//! A live change is written here *before* the kernel changes (`cmd::live`): a file that
//! cannot be written (a full or read-only /var/lib) refuses the change, and the datapath
//! stays as it was; the command says so, naming the file. If the kernel then refuses the
//! change, the previous record is written back: a change that failed must not become a
//! decision the next start imposes (an `attach` refused because another XDP program runs
//! there would make every later `run` fail). `run` writes its record first too, but goes on
//! when it cannot: its record is what the config says, which the next start derives again,
//! and refusing would leave a gateway that boots with a read-only /var/lib unenforced.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use anyhow::Context as _;
use apns_common::label::Label;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    datapath::{interfaces::FastPath, policy::Policy, reconcile::Desired, PinDir},
    label::Labeled,
};

/// Where the state files live.
pub const STATE_DIR: &str = "/var/lib/apns-agent";

/// Version of the file's format.
const FORMAT: u32 = 1;

/// A setting that can be overridden on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Mode,
    Allow,
    Providers,
    Ports,
    Interfaces,
    FastPath,
}

impl Label for Section {
    const WHAT: &'static str = "setting";
    const ALL: &'static [Section] = &[
        Section::Mode,
        Section::Allow,
        Section::Providers,
        Section::Ports,
        Section::Interfaces,
        Section::FastPath,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Section::Mode => "mode",
            Section::Allow => "allow",
            Section::Providers => "providers",
            Section::Ports => "ports",
            Section::Interfaces => "interfaces",
            Section::FastPath => "fastpath",
        }
    }
}

impl Section {
    /// This section of `desired`, as a comparable value.
    fn value_in(self, desired: &Desired) -> Value {
        let policy = &desired.policy;
        let value = match self {
            Section::Mode => serde_json::to_value(Labeled(policy.mode)),
            Section::Allow => serde_json::to_value(&policy.allow),
            Section::Providers => serde_json::to_value(&policy.providers),
            Section::Ports => serde_json::to_value(&policy.ports),
            Section::Interfaces => {
                serde_json::to_value(desired.interfaces.keys().collect::<Vec<_>>())
            }
            Section::FastPath => serde_json::to_value(
                desired
                    .interfaces
                    .iter()
                    .filter(|(_, fastpath)| **fastpath != FastPath::Pass)
                    .map(|(interface, fastpath)| (interface, Labeled(*fastpath)))
                    .collect::<BTreeMap<_, _>>(),
            ),
        };
        value.expect("policy values serialize to JSON")
    }

    /// Sets this section of `desired` to `value` (as [`Section::of`] made it).
    fn set(self, desired: &mut Desired, value: &Value) -> anyhow::Result<()> {
        let policy: &mut Policy = &mut desired.policy;
        let value = value.clone();
        match self {
            Section::Mode => policy.mode = serde_json::from_value::<Labeled<_>>(value)?.0,
            Section::Allow => policy.allow = serde_json::from_value(value)?,
            Section::Providers => policy.providers = serde_json::from_value(value)?,
            Section::Ports => policy.ports = serde_json::from_value(value)?,
            Section::Interfaces => set_interfaces(&mut desired.interfaces, value)?,
            Section::FastPath => set_fastpaths(&mut desired.interfaces, value)?,
        }
        Ok(())
    }
}

/// Makes `interfaces` the names of `value` (the [`Section::Interfaces`] value), keeping the
/// fast path of those it had.
fn set_interfaces(interfaces: &mut BTreeMap<String, FastPath>, value: Value) -> anyhow::Result<()> {
    let names: Vec<String> = serde_json::from_value(value)?;
    let previous = std::mem::take(interfaces);
    *interfaces = names
        .into_iter()
        .map(|name| {
            let fastpath = previous.get(&name).copied().unwrap_or_default();
            (name, fastpath)
        })
        .collect();
    Ok(())
}

/// Gives each of `interfaces` its fast path in `value` (the [`Section::FastPath`] value:
/// the interfaces not listed pass).
fn set_fastpaths(interfaces: &mut BTreeMap<String, FastPath>, value: Value) -> anyhow::Result<()> {
    let fastpaths: BTreeMap<String, Labeled<FastPath>> = serde_json::from_value(value)?;
    for (interface, fastpath) in interfaces.iter_mut() {
        *fastpath = fastpaths.get(interface).map_or(FastPath::Pass, |f| f.0);
    }
    Ok(())
}

/// What `run` last applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The config file, or `None` for the built-in defaults.
    pub config: Option<PathBuf>,
    /// RFC 3339, UTC.
    pub at: String,
    /// What the config (with `run`'s flags) said for each section.
    pub sections: BTreeMap<Labeled<Section>, Value>,
}

/// A live change made by a subcommand.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The section's live value.
    pub value: Value,
    /// The command line that set it ("apns-agent mode enforce").
    pub command: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// The state file's content; see the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub applied: Option<Applied>,
    pub overrides: BTreeMap<Labeled<Section>, Override>,
}

/// Where a section's live value came from, for `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Source {
    /// Set by a subcommand after `run` applied the config.
    Command { command: String, at: String },
    /// Applied by `run` from this config file (or the built-in defaults when `None`).
    Config { file: Option<PathBuf>, at: String },
    /// No record: the datapath was made by `attach` (Apple's defaults) or changed by a
    /// subcommand before any `run` applied a config.
    Unrecorded,
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Command { command, at } => format!("set by `{command}` at {at}"),
            Source::Config {
                file: Some(file),
                at,
            } => {
                format!("from {} (applied at {at})", file.display())
            }
            Source::Config { file: None, at } => format!("built-in default (applied at {at})"),
            Source::Unrecorded => "not recorded".to_owned(),
        }
    }
}

/// The state file of the datapath pinned at `pins`.
pub fn path(pins: &PinDir) -> PathBuf {
    Path::new(STATE_DIR).join(format!("{}.json", pins.file_stem()))
}

impl State {
    /// Reads `path`; a file that does not exist is an empty state.
    pub fn load(path: &Path) -> anyhow::Result<State> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(err) => {
                return Err(err).with_context(|| format!("reading state file {}", path.display()))
            }
        };
        let state: State = serde_json::from_str(&text).with_context(|| {
            format!(
                "state file {} is corrupt (remove it to let the config decide every setting again)",
                path.display()
            )
        })?;
        anyhow::ensure!(
            state.format == FORMAT,
            "state file {} has format {}; this agent reads format {FORMAT} (remove it to let the config decide every setting again)",
            path.display(),
            state.format
        );
        Ok(state)
    }

    /// Writes `path` atomically and durably ([`crate::durable`]: the file and its directory
    /// are synced), readable by root only.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let state = State {
            format: FORMAT,
            ..self.clone()
        };
        let text = serde_json::to_string_pretty(&state).expect("the state serializes to JSON");
        crate::durable::write_atomically(path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing state file {}", path.display()))
    }

    /// What `run` applies: the config's `desired` with the overrides still in force. Drops
    /// the overrides whose section the config changed since, records what the config said
    /// (from `config`, at `now`), and returns a note for each override kept or dropped.
    pub fn merge(
        &mut self,
        config: &Desired,
        file: Option<&Path>,
        now: SystemTime,
    ) -> anyhow::Result<(Desired, Vec<String>)> {
        let mut desired = config.clone();
        let mut notes = Vec::new();
        let applied = self.applied.take();
        let mut kept = BTreeMap::new();
        for (section, change) in std::mem::take(&mut self.overrides) {
            let section = section.0;
            let config_now = section.value_in(config);
            let config_then = applied
                .as_ref()
                .and_then(|applied| applied.sections.get(&Labeled(section)));
            if config_then == Some(&config_now) {
                section.set(&mut desired, &change.value)?;
                notes.push(format!(
                    "keeping {} as set by `{}` at {} (the config's {} is unchanged)",
                    section.as_str(),
                    change.command,
                    change.at,
                    section.as_str()
                ));
                kept.insert(Labeled(section), change);
            } else {
                notes.push(format!(
                    "the config's {} changed since `{}` set it at {}: the config applies",
                    section.as_str(),
                    change.command,
                    change.at
                ));
            }
        }
        self.overrides = kept;
        self.applied = Some(Applied {
            config: file.map(Path::to_path_buf),
            at: rfc3339(now),
            sections: Section::ALL
                .iter()
                .map(|&section| (Labeled(section), section.value_in(config)))
                .collect(),
        });
        Ok((desired, notes))
    }

    /// What [`State::merge`] would apply for `config`, without changing the record.
    pub fn effective(&self, config: &Desired) -> anyhow::Result<Desired> {
        let (desired, _) = self.clone().merge(config, None, SystemTime::now())?;
        Ok(desired)
    }

    /// The interfaces, with their fast path, that the datapath should be attached to as this
    /// record stands: what `run` last applied (its config and flags), with the live changes
    /// in force over it. Empty when nothing is recorded. `status`, /metrics and the live
    /// verbs compare it with what is attached to find the interfaces that are missing.
    pub fn wanted_interfaces(&self) -> anyhow::Result<BTreeMap<String, FastPath>> {
        let recorded = |section: Section| {
            self.overrides
                .get(&Labeled(section))
                .map(|change| &change.value)
                .or_else(|| {
                    self.applied
                        .as_ref()
                        .and_then(|applied| applied.sections.get(&Labeled(section)))
                })
        };
        let mut interfaces = BTreeMap::new();
        if let Some(names) = recorded(Section::Interfaces) {
            set_interfaces(&mut interfaces, names.clone()).context("the recorded interfaces")?;
        }
        if let Some(fastpaths) = recorded(Section::FastPath) {
            set_fastpaths(&mut interfaces, fastpaths.clone()).context("the recorded fast paths")?;
        }
        Ok(interfaces)
    }

    /// Records a live change a subcommand (`command`) made, from `before` to `after`.
    pub fn record(&mut self, before: &Desired, after: &Desired, command: &str, now: SystemTime) {
        for &section in Section::ALL {
            let value = section.value_in(after);
            if section.value_in(before) == value {
                continue;
            }
            let config_value = self
                .applied
                .as_ref()
                .and_then(|applied| applied.sections.get(&Labeled(section)));
            if config_value == Some(&value) {
                self.overrides.remove(&Labeled(section));
            } else {
                self.overrides.insert(
                    Labeled(section),
                    Override {
                        value,
                        command: command.to_owned(),
                        at: rfc3339(now),
                    },
                );
            }
        }
    }

    /// Where each section's live value came from.
    pub fn sources(&self) -> BTreeMap<&'static str, Source> {
        Section::ALL
            .iter()
            .map(|&section| {
                let source = match (self.overrides.get(&Labeled(section)), &self.applied) {
                    (Some(change), _) => Source::Command {
                        command: change.command.clone(),
                        at: change.at.clone(),
                    },
                    (None, Some(applied)) => Source::Config {
                        file: applied.config.clone(),
                        at: applied.at.clone(),
                    },
                    (None, None) => Source::Unrecorded,
                };
                (section.as_str(), source)
            })
            .collect()
    }
}

/// Removes the state file of `pins`, if any.
pub fn remove(pins: &PinDir) -> anyhow::Result<()> {
    let path = path(pins);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("removing state file {}", path.display())),
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use apns_common::{events::EventConfig, policy::Mode};

    use super::*;
    use crate::datapath::{interfaces::MarkBits, XdpMode};

    fn desired(mode: Mode, interfaces: &[(&str, FastPath)]) -> Desired {
        Desired {
            interfaces: interfaces
                .iter()
                .map(|(name, fastpath)| (name.to_string(), *fastpath))
                .collect(),
            devices: Default::default(),
            xdp_mode: XdpMode::Auto,
            sharing: Default::default(),
            mark: MarkBits::default(),
            policy: Policy {
                mode,
                ..Policy::apple_defaults()
            },
            events: EventConfig::default(),
        }
    }

    #[test]
    fn a_live_change_survives_until_the_config_changes_that_setting() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let config = desired(Mode::Monitor, &[("lan0", FastPath::Pass)]);
        let mut state = State::default();
        let (applied, _) = state.merge(&config, None, t0).unwrap();
        assert_eq!(applied, config);

        // `mode enforce` and `fastpath lan0 redirect` by hand.
        let edited = desired(Mode::Enforce, &[("lan0", FastPath::Redirect)]);
        state.record(&applied, &edited, "apns-agent mode enforce", t0);
        assert_eq!(state.overrides.len(), 2);

        // A restart with the same config keeps both, through a save and a load.
        let file =
            std::env::temp_dir().join(format!("apns-state-test-{}.json", std::process::id()));
        state.save(&file).unwrap();
        let mut state = State::load(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        let (restarted, notes) = state.merge(&config, None, t0).unwrap();
        assert_eq!(restarted, edited, "{notes:?}");

        // The config's providers change: they apply; the live mode and fast path stay.
        let mut providers_changed = config.clone();
        providers_changed
            .policy
            .providers
            .insert("192.0.2.0/24".parse().unwrap());
        let (after, _) = state.merge(&providers_changed, None, t0).unwrap();
        assert_eq!(after.policy.providers.len(), 1);
        assert_eq!(after.policy.mode, Mode::Enforce);
        assert_eq!(after.interfaces["lan0"], FastPath::Redirect);

        // The config's mode changes: the config wins there, and the override is gone.
        let mut mode_changed = providers_changed.clone();
        mode_changed.policy.mode = Mode::Enforce;
        mode_changed.policy.ports.remove(&443);
        let (after, notes) = state.merge(&mode_changed, None, t0).unwrap();
        assert!(!after.policy.ports.contains_key(&443));
        assert!(
            notes
                .iter()
                .any(|note| note.starts_with("the config's mode changed")),
            "{notes:?}"
        );
        assert!(!state.overrides.contains_key(&Labeled(Section::Mode)));
        assert_eq!(after.interfaces["lan0"], FastPath::Redirect);

        // Setting a section back to the config's value ends its override.
        let back = after;
        let mut reverted = back.clone();
        reverted.interfaces.insert("lan0".into(), FastPath::Pass);
        state.record(&back, &reverted, "apns-agent fastpath lan0 pass", t0);
        assert!(!state.overrides.contains_key(&Labeled(Section::FastPath)));
        assert_eq!(
            state.sources()["fastpath"],
            Source::Config {
                file: None,
                at: rfc3339(t0)
            }
        );
    }

    #[test]
    fn wanted_interfaces_are_the_config_with_the_live_changes_over_it() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut state = State::default();
        assert!(state.wanted_interfaces().unwrap().is_empty());
        let config = desired(
            Mode::Monitor,
            &[("lan0", FastPath::Pass), ("wan0", FastPath::Mark)],
        );
        let (applied, _) = state.merge(&config, None, t0).unwrap();
        assert_eq!(state.wanted_interfaces().unwrap(), config.interfaces);
        // `attach usb0`, then `fastpath usb0 redirect`: both in the record, whether or not
        // usb0 exists when it is read.
        let attached = desired(
            Mode::Monitor,
            &[
                ("lan0", FastPath::Pass),
                ("wan0", FastPath::Mark),
                ("usb0", FastPath::Redirect),
            ],
        );
        state.record(&applied, &attached, "apns-agent attach usb0", t0);
        assert_eq!(state.wanted_interfaces().unwrap(), attached.interfaces);
    }

    #[test]
    fn a_corrupt_file_is_named() {
        let file = std::env::temp_dir().join(format!("apns-state-bad-{}.json", std::process::id()));
        std::fs::write(&file, "{ not json").unwrap();
        let err = format!("{:#}", State::load(&file).unwrap_err());
        std::fs::remove_file(&file).unwrap();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("corrupt"),
            "{err}"
        );
    }
}
