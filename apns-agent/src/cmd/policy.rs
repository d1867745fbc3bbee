//! `allow`, `providers`, `ports` and `mode`: read the live policy, change it, apply it as a
//! whole (one generation switch, through `live::change`). Every argument is checked before
//! anything is written.

use std::collections::BTreeSet;

use apns_common::label::Label as _;
use ipnet::IpNet;

use crate::{
    cli::{Global, PortAction, PrefixAction},
    cmd::live,
    datapath::{
        policy::{parse_prefix, Mode, Policy},
        Datapath,
    },
    privileges,
    settings::{
        config::{parse_port, parse_roles, role_names},
        Settings,
    },
};

#[derive(Clone, Copy)]
pub enum PrefixList {
    Allow,
    Providers,
}

impl PrefixList {
    fn name(self) -> &'static str {
        match self {
            PrefixList::Allow => "allow-list",
            PrefixList::Providers => "provider list",
        }
    }

    fn prefixes_mut(self, policy: &mut Policy) -> &mut BTreeSet<IpNet> {
        match self {
            PrefixList::Allow => &mut policy.allow,
            PrefixList::Providers => &mut policy.providers,
        }
    }
}

pub fn prefixes(global: &Global, list: PrefixList, action: &PrefixAction) -> anyhow::Result<()> {
    let settings = Settings::resolve(&global.into())?;
    match action {
        PrefixAction::List => {
            let mut policy = read_policy(&settings)?;
            for net in list.prefixes_mut(&mut policy).iter() {
                println!("{net}");
            }
            Ok(())
        }
        PrefixAction::Add { prefixes } | PrefixAction::Del { prefixes } => {
            let adding = matches!(action, PrefixAction::Add { .. });
            let nets = parse_unique(prefixes)?;
            change(&settings, |policy| {
                let set = list.prefixes_mut(policy);
                for net in &nets {
                    match (adding, set.contains(net)) {
                        (true, true) => anyhow::bail!("{net} is already in the {}", list.name()),
                        (false, false) => anyhow::bail!("{net} is not in the {}", list.name()),
                        (true, false) => set.insert(*net),
                        (false, true) => set.remove(net),
                    };
                }
                Ok(())
            })
        }
    }
}

/// Parses every argument; duplicates within one command are an error.
fn parse_unique(texts: &[String]) -> anyhow::Result<Vec<IpNet>> {
    let mut seen = BTreeSet::new();
    let mut nets = Vec::new();
    for text in texts {
        let net = parse_prefix(text)?;
        anyhow::ensure!(seen.insert(net), "{net} is given twice");
        nets.push(net);
    }
    Ok(nets)
}

pub fn ports(global: &Global, action: &PortAction) -> anyhow::Result<()> {
    let settings = Settings::resolve(&global.into())?;
    match action {
        PortAction::List => {
            let policy = read_policy(&settings)?;
            for (port, roles) in &policy.ports {
                println!("{port} {}", role_names(*roles).join(","));
            }
            Ok(())
        }
        PortAction::Add { ports } => {
            let mut parsed = Vec::new();
            let mut seen = BTreeSet::new();
            for text in ports {
                let (port, roles) = match text.split_once('=') {
                    Some((port, roles)) => (
                        parse_port(port)?,
                        parse_roles(&roles.split(',').collect::<Vec<_>>())?,
                    ),
                    None => (parse_port(text)?, parse_roles(&[])?),
                };
                anyhow::ensure!(seen.insert(port), "port {port} is given twice");
                parsed.push((port, roles));
            }
            change(&settings, |policy| {
                for &(port, roles) in &parsed {
                    anyhow::ensure!(
                        policy.ports.get(&port) != Some(&roles),
                        "port {port} is already in the port table with roles {}",
                        role_names(roles).join(",")
                    );
                    policy.ports.insert(port, roles);
                }
                Ok(())
            })
        }
        PortAction::Del { ports } => {
            let mut parsed = BTreeSet::new();
            for text in ports {
                let port = parse_port(text)?;
                anyhow::ensure!(parsed.insert(port), "port {port} is given twice");
            }
            change(&settings, |policy| {
                for port in &parsed {
                    anyhow::ensure!(
                        policy.ports.remove(port).is_some(),
                        "port {port} is not in the port table"
                    );
                }
                Ok(())
            })
        }
    }
}

pub fn mode(global: &Global, mode: Mode) -> anyhow::Result<()> {
    change(&Settings::resolve(&global.into())?, |policy| {
        policy.mode = mode;
        Ok(())
    })
}

/// The live policy, for the listings.
fn read_policy(settings: &Settings) -> anyhow::Result<Policy> {
    privileges::require(privileges::READ, "listing the policy")?;
    Datapath::open(&settings.pins)?.policy.read_active()
}

/// Lets `edit` change a copy of the live policy, applies the copy as a whole and records it.
/// An `edit` error or an invalid result writes nothing.
fn change(
    settings: &Settings,
    edit: impl FnOnce(&mut Policy) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut applied = None;
    live::change(settings, "changing the policy", |desired| {
        edit(&mut desired.policy)?;
        applied = Some(desired.policy.clone());
        Ok(())
    })?;
    let policy = applied.expect("the edit ran");
    println!(
        "applied: mode {}, {} allow-list prefixes, {} provider prefixes, {} ports",
        policy.mode.as_str(),
        policy.allow.len(),
        policy.providers.len(),
        policy.ports.len()
    );
    Ok(())
}
