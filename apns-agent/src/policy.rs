//! The policy an operator asks for, validated before anything touches the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use anyhow::{bail, Context as _};
use apns_common::{
    maps::{ALLOW_PREFIXES_PER_GENERATION, PROVIDER_PREFIXES_PER_GENERATION},
    policy::{role, MAX_PORTS},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Monitor classifies and counts; enforce also drops pinhole and provider violations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

impl Mode {
    pub const fn code(self) -> u32 {
        match self {
            Mode::Monitor => apns_common::policy::mode::MONITOR,
            Mode::Enforce => apns_common::policy::mode::ENFORCE,
        }
    }

    pub fn from_code(code: u32) -> anyhow::Result<Mode> {
        match code {
            apns_common::policy::mode::MONITOR => Ok(Mode::Monitor),
            apns_common::policy::mode::ENFORCE => Ok(Mode::Enforce),
            other => bail!("unknown policy mode code {other} in the policy map"),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

impl FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Mode> {
        match s {
            "monitor" => Ok(Mode::Monitor),
            "enforce" => Ok(Mode::Enforce),
            other => bail!("unknown mode {other:?}: expected monitor or enforce"),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Apple's IPv4 prefix (DOMAIN.md: allow the whole /8, it is load-balanced).
pub const APPLE_V4: &str = "17.0.0.0/8";
/// Apple's published APNs IPv6 prefixes.
pub const APPLE_V6: [&str; 4] = [
    "2620:149:a44::/48",
    "2403:300:a42::/48",
    "2403:300:a51::/48",
    "2a01:b740:a42::/48",
];

/// Default port table. 443 is APNs (device fallback) but deliberately neither a pinhole nor a
/// provider port: every Apple HTTPS service shares 17.0.0.0/8 and devices fall back to 443, so
/// restricting it would break far more than APNs.
pub const DEFAULT_PORTS: [(u16, u8); 5] = [
    (5223, role::APNS | role::PINHOLE),
    (443, role::APNS),
    (2197, role::APNS | role::PINHOLE | role::PROVIDER),
    (2195, role::APNS | role::PINHOLE | role::PROVIDER),
    (2196, role::APNS | role::PINHOLE | role::PROVIDER),
];

/// A complete policy: what one generation of the datapath maps holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Port (host byte order) to role bits (`apns_common::policy::role`).
    pub ports: BTreeMap<u16, u8>,
    /// Apple's prefixes.
    pub allow: BTreeSet<IpNet>,
    /// MDM provider source prefixes; empty disables the provider rule.
    pub providers: BTreeSet<IpNet>,
}

impl Policy {
    /// Apple's prefixes and ports from DOMAIN.md, monitor mode, no provider list.
    pub fn apple_defaults() -> Policy {
        let allow = std::iter::once(APPLE_V4)
            .chain(APPLE_V6)
            .map(|prefix| prefix.parse().expect("built-in prefix is valid"))
            .collect();
        Policy {
            mode: Mode::Monitor,
            ports: DEFAULT_PORTS.into_iter().collect(),
            allow,
            providers: BTreeSet::new(),
        }
    }

    /// Checks everything the maps cannot hold, so that applying cannot fail half-way on input.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.ports.len() > MAX_PORTS {
            bail!(
                "{} ports in the port table; at most {MAX_PORTS} are supported",
                self.ports.len()
            );
        }
        for (&port, &roles) in &self.ports {
            if port == 0 {
                bail!("port 0 cannot be an APNs port");
            }
            if roles == 0 || roles & !role::ALL != 0 {
                bail!("port {port}: invalid role bits {roles:#04x}");
            }
        }
        check_capacity("allow-list", &self.allow, ALLOW_PREFIXES_PER_GENERATION)?;
        check_capacity(
            "provider list",
            &self.providers,
            PROVIDER_PREFIXES_PER_GENERATION,
        )?;
        for net in self.allow.iter().chain(&self.providers) {
            if net.trunc() != *net {
                bail!(
                    "prefix {net} has host bits set (did you mean {}?)",
                    net.trunc()
                );
            }
        }
        Ok(())
    }

    pub fn allow_v4(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        v4(&self.allow)
    }
    pub fn allow_v6(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        v6(&self.allow)
    }
    pub fn providers_v4(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        v4(&self.providers)
    }
    pub fn providers_v6(&self) -> impl Iterator<Item = Ipv6Net> + '_ {
        v6(&self.providers)
    }
}

fn check_capacity(what: &str, nets: &BTreeSet<IpNet>, per_family: u32) -> anyhow::Result<()> {
    let v4 = v4(nets).count();
    let v6 = v6(nets).count();
    for (family, count) in [("IPv4", v4), ("IPv6", v6)] {
        if count > per_family as usize {
            bail!("{what}: {count} {family} prefixes; at most {per_family} are supported");
        }
    }
    Ok(())
}

fn v4(nets: &BTreeSet<IpNet>) -> impl Iterator<Item = Ipv4Net> + '_ {
    nets.iter().filter_map(|net| match net {
        IpNet::V4(net) => Some(*net),
        IpNet::V6(_) => None,
    })
}

fn v6(nets: &BTreeSet<IpNet>) -> impl Iterator<Item = Ipv6Net> + '_ {
    nets.iter().filter_map(|net| match net {
        IpNet::V6(net) => Some(*net),
        IpNet::V4(_) => None,
    })
}

/// Parses an IPv4 or IPv6 CIDR prefix; a prefix with host bits set is an error, not a silent
/// fix (`17.1.2.3/8` is refused, `17.0.0.0/8` accepted). A bare address is a host prefix.
pub fn parse_prefix(text: &str) -> anyhow::Result<IpNet> {
    let net = if text.contains('/') {
        text.parse::<IpNet>()
            .with_context(|| format!("{text:?} is not an IPv4 or IPv6 prefix (e.g. 17.0.0.0/8)"))?
    } else if let Ok(addr) = text.parse::<Ipv4Addr>() {
        IpNet::V4(Ipv4Net::from(addr))
    } else if let Ok(addr) = text.parse::<Ipv6Addr>() {
        IpNet::V6(Ipv6Net::from(addr))
    } else {
        bail!("{text:?} is not an IPv4 or IPv6 prefix (e.g. 17.0.0.0/8)");
    };
    if net.trunc() != net {
        bail!(
            "prefix {text} has host bits set (did you mean {}?)",
            net.trunc()
        );
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let policy = Policy::apple_defaults();
        policy.validate().unwrap();
        assert_eq!(policy.allow_v4().count(), 1);
        assert_eq!(policy.allow_v6().count(), 4);
    }

    #[test]
    fn prefix_with_host_bits_is_refused() {
        let err = parse_prefix("17.1.2.3/8").unwrap_err().to_string();
        assert!(
            err.contains("host bits") && err.contains("17.0.0.0/8"),
            "{err}"
        );
        assert!(parse_prefix("2620:149:a44::1/48").is_err());
    }

    #[test]
    fn prefixes_parse() {
        assert_eq!(
            parse_prefix("17.0.0.0/8").unwrap().to_string(),
            "17.0.0.0/8"
        );
        assert_eq!(parse_prefix("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_prefix("2620:149:a44::/48").unwrap().prefix_len(), 48);
        for bad in [
            "",
            "17.0.0.0/33",
            "17.0.0/8",
            "apple",
            "::/129",
            "17.0.0.0/-1",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn invalid_ports_are_refused() {
        let mut policy = Policy::apple_defaults();
        policy.ports.insert(0, role::APNS);
        assert!(policy.validate().is_err());
        let mut policy = Policy::apple_defaults();
        policy.ports.insert(80, 0);
        assert!(policy.validate().is_err());
        let mut policy = Policy::apple_defaults();
        policy.ports.insert(80, 0x80);
        assert!(policy.validate().is_err());
        let mut policy = Policy::apple_defaults();
        policy.ports = (1..=MAX_PORTS as u16 + 1)
            .map(|p| (p, role::APNS))
            .collect();
        assert!(policy.validate().is_err());
    }
}
