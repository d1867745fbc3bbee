//! The TOML config file (`/etc/apns-agent/config.toml` by default; `packaging/config.toml`
//! documents every key). Every value is checked while parsing, so an error names the line
//! and key, and nothing touches the kernel before the whole file is valid.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use std::time::Duration;

use anyhow::Context as _;
use apns_common::{
    events::EventConfig,
    maps::CONNS_DEFAULT_ENTRIES,
    policy::{role, Role},
};
use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    datapath::{
        interfaces::{FastPath, InterfaceRole, MarkBits},
        links::{check_interface_name, XdpMode},
        multiprog::{Multiprog, Sharing},
        pins::DEFAULT_PIN_DIR,
        policy::{parse_prefix, ApplePreset, Mode, Policy, DEFAULT_PORTS},
    },
    label::{self, Labeled},
    telemetry::clients::Rules,
};

pub const DEFAULT_CONFIG: &str = "/etc/apns-agent/config.toml";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    /// Fast path per interface; interfaces not listed use `pass`.
    pub fastpath: BTreeMap<String, FastPath>,
    /// The bits the `mark` fast path sets in `skb->mark`.
    pub mark: MarkBits,
    pub xdp_mode: XdpMode,
    /// `xdp_multiprog` and `xdp_priority`.
    pub sharing: Sharing,
    pub pin_dir: String,
    pub policy: Policy,
    /// Where the policy's prefix lists came from.
    pub sources: PrefixSources,
    /// The drop events' rate limit and sampling.
    pub events: EventConfig,
    /// Role per interface (config `[roles]`); interfaces not listed are upstream.
    pub roles: BTreeMap<String, InterfaceRole>,
    /// The connection table and the rules `clients` applies to it.
    pub clients: ClientsConfig,
}

/// The config's `[clients]` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientsConfig {
    /// Connections the table holds (`APNS_CONNS`'s size when the datapath is made).
    pub table_size: u32,
    pub rules: Rules,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            table_size: CONNS_DEFAULT_ENTRIES,
            rules: Rules::default(),
        }
    }
}

/// Bounds of `[clients] table_size`: at least a few entries per CPU (the kernel's LRU keeps
/// per-CPU free lists), at most what a gateway's memory should give it (240 bytes an entry:
/// 960 MiB).
pub const TABLE_SIZE_MIN: u32 = 256;
pub const TABLE_SIZE_MAX: u32 = 4 * 1024 * 1024;

/// Where the allow-list and the provider list came from: the Apple preset, and the list
/// files merged with the config's inline lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixSources {
    pub apple: ApplePreset,
    pub allow_files: Vec<PathBuf>,
    pub provider_files: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interfaces: Vec::new(),
            fastpath: BTreeMap::new(),
            mark: MarkBits::default(),
            xdp_mode: XdpMode::Auto,
            sharing: Sharing::default(),
            pin_dir: DEFAULT_PIN_DIR.to_owned(),
            policy: Policy::apple_defaults(),
            sources: PrefixSources::default(),
            events: EventConfig::default(),
            roles: BTreeMap::new(),
            clients: ClientsConfig::default(),
        }
    }
}

/// The file as written. Missing keys take the defaults of [`Config::default`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    interfaces: Vec<String>,
    /// monitor | enforce; default monitor.
    #[serde(default)]
    mode: Option<Labeled<Mode>>,
    /// auto | native | skb; default auto.
    #[serde(default)]
    xdp_mode: Option<Labeled<XdpMode>>,
    /// auto | never | always; default auto.
    #[serde(default)]
    xdp_multiprog: Option<Labeled<Multiprog>>,
    /// Our component's priority in a libxdp dispatcher; default 50.
    #[serde(default)]
    xdp_priority: Option<u32>,
    /// Default /sys/fs/bpf/apns-agent.
    #[serde(default)]
    pin_dir: Option<String>,
    /// Which of Apple's lists the allow-list starts from: all | narrow | none; default all.
    #[serde(default)]
    apple: Option<Labeled<ApplePreset>>,
    /// More allow-list prefixes, added to the preset's; default none.
    #[serde(default)]
    allow: Vec<Prefix>,
    /// Files of allow-list prefixes (one per line, `#` comments), added too.
    #[serde(default)]
    allow_files: Vec<PathBuf>,
    /// MDM server source prefixes; default none (provider rule off).
    #[serde(default)]
    providers: Vec<Prefix>,
    /// Files of provider prefixes, added to `providers`.
    #[serde(default)]
    provider_files: Vec<PathBuf>,
    /// Port number to roles; default 5223, 443, 2197, 2195, 2196 (see policy::DEFAULT_PORTS).
    #[serde(default)]
    ports: Option<BTreeMap<PortNumber, Vec<Labeled<Role>>>>,
    /// Interface to fast path (pass | mark | redirect); default pass everywhere.
    #[serde(default)]
    fastpath: BTreeMap<String, Labeled<FastPath>>,
    /// `skb->mark` bits of the mark fast path; default 0x200000/0x200000.
    #[serde(default)]
    mark: Option<MarkFile>,
    /// Drop-event limits; default 100 per CPU and second, every drop considered.
    #[serde(default)]
    events: Option<EventsFile>,
    /// Interface to role (devices | upstream); default upstream everywhere.
    #[serde(default)]
    roles: BTreeMap<String, Labeled<InterfaceRole>>,
    /// The connection table and the `clients` rules; defaults in [`ClientsConfig`].
    #[serde(default)]
    clients: Option<ClientsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    table_size: Option<TableSize>,
    window: Option<Seconds>,
    handshake_timeout: Option<Seconds>,
    idle_cut_min: Option<Seconds>,
    idle_cut_repeat: Option<Repeat>,
    fallback_window: Option<Seconds>,
    stale_after: Option<Seconds>,
}

/// `[clients] table_size`: within [`TABLE_SIZE_MIN`] and [`TABLE_SIZE_MAX`].
#[derive(Deserialize)]
#[serde(try_from = "u32")]
struct TableSize(u32);

impl TryFrom<u32> for TableSize {
    type Error = String;
    fn try_from(size: u32) -> Result<Self, String> {
        if !(TABLE_SIZE_MIN..=TABLE_SIZE_MAX).contains(&size) {
            return Err(format!(
                "table_size {size} is out of range ({TABLE_SIZE_MIN} to {TABLE_SIZE_MAX} connections)"
            ));
        }
        Ok(TableSize(size))
    }
}

/// A duration in whole seconds, 1 or more.
#[derive(Deserialize)]
#[serde(try_from = "u64")]
struct Seconds(Duration);

impl TryFrom<u64> for Seconds {
    type Error = String;
    fn try_from(seconds: u64) -> Result<Self, String> {
        if seconds == 0 {
            return Err("a duration of 0 s: give 1 or more seconds".to_owned());
        }
        Ok(Seconds(Duration::from_secs(seconds)))
    }
}

/// `[clients] idle_cut_repeat`: 1 or more.
#[derive(Deserialize)]
#[serde(try_from = "u32")]
struct Repeat(u32);

impl TryFrom<u32> for Repeat {
    type Error = String;
    fn try_from(count: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("idle_cut_repeat must be 1 or more".to_owned());
        }
        Ok(Repeat(count))
    }
}

impl ClientsFile {
    fn resolve(self) -> ClientsConfig {
        let defaults = ClientsConfig::default();
        let rules = defaults.rules;
        let or = |value: Option<Seconds>, default: Duration| value.map_or(default, |s| s.0);
        ClientsConfig {
            table_size: self.table_size.map_or(defaults.table_size, |size| size.0),
            rules: Rules {
                window: or(self.window, rules.window),
                handshake_timeout: or(self.handshake_timeout, rules.handshake_timeout),
                idle_cut_min: or(self.idle_cut_min, rules.idle_cut_min),
                idle_cut_repeat: self
                    .idle_cut_repeat
                    .map_or(rules.idle_cut_repeat, |repeat| repeat.0),
                fallback_window: or(self.fallback_window, rules.fallback_window),
                stale_after: or(self.stale_after, rules.stale_after),
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    per_cpu_per_second: Option<u32>,
    sample_every: Option<SampleEvery>,
}

/// Every Nth drop: 1 or more.
#[derive(Deserialize)]
#[serde(try_from = "u32")]
struct SampleEvery(u32);

impl TryFrom<u32> for SampleEvery {
    type Error = String;
    fn try_from(every: u32) -> Result<Self, String> {
        if every == 0 {
            return Err("sample_every must be 1 or more (1 considers every drop)".to_owned());
        }
        Ok(SampleEvery(every))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, try_from = "MarkFields")]
struct MarkFile(MarkBits);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarkFields {
    value: u32,
    mask: u32,
}

impl TryFrom<MarkFields> for MarkFile {
    type Error = String;
    fn try_from(fields: MarkFields) -> Result<Self, String> {
        MarkBits {
            value: fields.value,
            mask: fields.mask,
        }
        .validate()
        .map(MarkFile)
        .map_err(|err| format!("{err:#}"))
    }
}

#[derive(Deserialize)]
#[serde(try_from = "String")]
struct Prefix(IpNet);

impl TryFrom<String> for Prefix {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        parse_prefix(&text)
            .map(Prefix)
            .map_err(|err| format!("{err:#}"))
    }
}

#[derive(Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(try_from = "String")]
struct PortNumber(u16);

impl TryFrom<String> for PortNumber {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        parse_port(&text)
            .map(PortNumber)
            .map_err(|err| format!("{err:#}"))
    }
}

/// Parses a TCP port for the port table: 1 to 65535.
pub fn parse_port(text: &str) -> anyhow::Result<u16> {
    match text.trim().parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(port) => anyhow::bail!("port {port} is out of range (1 to 65535)"),
        Err(_) => anyhow::bail!("{text:?} is not a port number (1 to 65535)"),
    }
}

/// Parses role names (`apns`, `pinhole`, `provider`) into role bits. `apns` is implied: a
/// port in the table is always counted as APNs.
pub fn parse_roles(names: &[&str]) -> anyhow::Result<u8> {
    names.iter().try_fold(role::APNS, |bits, name| {
        let role: Role = label::parse(name).map_err(anyhow::Error::msg)?;
        Ok(bits | role.bit())
    })
}

/// Role names of `bits`, for listings.
pub fn role_names(bits: u8) -> Vec<&'static str> {
    use apns_common::label::Label as _;
    Role::of(bits).map(Role::as_str).collect()
}

impl Config {
    /// Reads and validates `path`, and the prefix list files it names (relative paths are
    /// relative to its folder).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Config::parse_in(&text, dir).with_context(|| format!("config file {}", path.display()))
    }

    /// [`Config::load`] of a text; list files are relative to the current folder.
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse_in(text, Path::new("."))
    }

    fn parse_in(text: &str, dir: &Path) -> anyhow::Result<Config> {
        let file: File = toml::from_str(text).map_err(|err| one_line(&err, text))?;
        let defaults = Config::default();
        let ports = match file.ports {
            Some(ports) => ports
                .into_iter()
                .map(|(port, roles)| {
                    let bits = roles
                        .iter()
                        .fold(role::APNS, |bits, role| bits | role.0.bit());
                    (port.0, bits)
                })
                .collect(),
            None => DEFAULT_PORTS.into_iter().collect(),
        };
        let sources = PrefixSources {
            apple: file.apple.map_or(ApplePreset::All, |apple| apple.0),
            allow_files: file.allow_files.iter().map(|f| dir.join(f)).collect(),
            provider_files: file.provider_files.iter().map(|f| dir.join(f)).collect(),
        };
        let mut allow = sources.apple.prefixes();
        allow.extend(file.allow.into_iter().map(|p| p.0));
        for path in &sources.allow_files {
            allow.extend(read_list("allow_files", path)?);
        }
        let mut providers: BTreeSet<IpNet> = file.providers.into_iter().map(|p| p.0).collect();
        for path in &sources.provider_files {
            providers.extend(read_list("provider_files", path)?);
        }
        let policy = Policy {
            mode: file.mode.map_or(Mode::Monitor, |mode| mode.0),
            ports,
            allow,
            providers,
        };
        policy.validate()?;
        for interface in file
            .interfaces
            .iter()
            .chain(file.fastpath.keys())
            .chain(file.roles.keys())
        {
            check_interface_name(interface)?;
        }
        Ok(Config {
            interfaces: file.interfaces,
            fastpath: file
                .fastpath
                .into_iter()
                .map(|(interface, fastpath)| (interface, fastpath.0))
                .collect(),
            xdp_mode: file.xdp_mode.map_or(XdpMode::Auto, |mode| mode.0),
            sharing: Sharing {
                multiprog: file
                    .xdp_multiprog
                    .map_or(defaults.sharing.multiprog, |multiprog| multiprog.0),
                priority: file.xdp_priority.unwrap_or(defaults.sharing.priority),
            },
            pin_dir: file.pin_dir.unwrap_or(defaults.pin_dir),
            mark: file.mark.map_or(defaults.mark, |mark| mark.0),
            policy,
            sources,
            events: match file.events {
                Some(events) => EventConfig {
                    per_cpu_per_second: events
                        .per_cpu_per_second
                        .unwrap_or(defaults.events.per_cpu_per_second),
                    sample_every: events
                        .sample_every
                        .map_or(defaults.events.sample_every, |every| every.0),
                },
                None => defaults.events,
            },
            roles: file
                .roles
                .into_iter()
                .map(|(interface, role)| (interface, role.0))
                .collect(),
            clients: file.clients.map_or(defaults.clients, ClientsFile::resolve),
        })
    }
}

/// The one key of the file that `unload` reads: every other key, valid or not, is ignored.
#[derive(Deserialize)]
struct PinDirOnly {
    pin_dir: Option<String>,
}

/// The `pin_dir` of the config file at `path` (the default when it has none), without
/// reading or checking anything else in it: `unload` must work with a config whose lists or
/// prefixes are broken (a package removal must not leave the datapath attached because an
/// allow-list file is gone). A file that is not TOML, or whose `pin_dir` is not a string,
/// is an error naming its line.
pub fn load_pin_dir(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let file: PinDirOnly = toml::from_str(&text)
        .map_err(|err| one_line(&err, &text))
        .with_context(|| format!("config file {}: reading pin_dir", path.display()))?;
    Ok(file.pin_dir.unwrap_or_else(|| DEFAULT_PIN_DIR.to_owned()))
}

/// Reads a prefix list file ([`parse_list`]); errors name the key that listed it.
fn read_list(key: &str, path: &Path) -> anyhow::Result<Vec<IpNet>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{key}: reading {}", path.display()))?;
    parse_list(&text, &format!("{key}: {}", path.display()))
}

/// Parses a prefix list: one prefix per line; `#` starts a comment, blank lines are skipped
/// (the shape cron jobs and configuration management write). Any bad line fails the whole
/// list, naming `origin` and the line.
pub fn parse_list(text: &str, origin: &str) -> anyhow::Result<Vec<IpNet>> {
    let mut prefixes = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let prefix = line.split('#').next().unwrap_or("").trim();
        if prefix.is_empty() {
            continue;
        }
        let net = parse_prefix(prefix).with_context(|| format!("{origin} line {}", index + 1))?;
        prefixes.push(net);
    }
    Ok(prefixes)
}

/// toml's own message quotes the file over several lines; an operator's terminal and a log
/// line want one: "line L, column C, key K: message".
fn one_line(err: &toml::de::Error, text: &str) -> anyhow::Error {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else {
        return anyhow::anyhow!("{message}");
    };
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_number = text[..start].matches('\n').count() + 1;
    let column = start - line_start + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(key, _)| key.trim().trim_matches('"'))
        .filter(|key| !key.is_empty() && !key.starts_with('['));
    match key {
        Some(key) => anyhow::anyhow!("line {line_number}, column {column}, key {key}: {message}"),
        None => anyhow::anyhow!("line {line_number}, column {column}: {message}"),
    }
}

#[cfg(test)]
mod tests;
