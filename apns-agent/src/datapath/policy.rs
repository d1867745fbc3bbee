//! The policy an operator asks for, validated before anything touches the kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use anyhow::bail;
pub use apns_common::policy::Mode;
use apns_common::{
    label::Label,
    maps::{ALLOW_PREFIXES_PER_GENERATION, PROVIDER_PREFIXES_PER_GENERATION},
    policy::{role, MAX_PORTS},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Which of Apple's published prefix lists the allow-list starts from (docs/apns.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ApplePreset {
    /// The whole of 17.0.0.0/8, as Apple asks (its servers are load-balanced across it with
    /// no static list), and Apple's IPv6 /48s.
    #[default]
    All,
    /// Apple's narrower IPv4 list, for networks that cannot open all of 17.0.0.0/8, and the
    /// same IPv6 /48s.
    Narrow,
    /// None: the allow-list is only what the config lists.
    None,
}

impl Label for ApplePreset {
    const WHAT: &'static str = "Apple prefix preset";
    const ALL: &'static [ApplePreset] = &[ApplePreset::All, ApplePreset::Narrow, ApplePreset::None];
    fn as_str(self) -> &'static str {
        match self {
            ApplePreset::All => "all",
            ApplePreset::Narrow => "narrow",
            ApplePreset::None => "none",
        }
    }
}

impl ApplePreset {
    /// The preset's prefixes.
    pub fn prefixes(self) -> BTreeSet<IpNet> {
        let v4: &[&str] = match self {
            ApplePreset::All => &APPLE_V4,
            ApplePreset::Narrow => &APPLE_NARROW_V4,
            ApplePreset::None => return BTreeSet::new(),
        };
        v4.iter()
            .chain(APPLE_V6.iter())
            .map(|prefix| prefix.parse().expect("built-in prefix is valid"))
            .collect()
    }
}

/// Apple's IPv4 prefix: the whole /8.
pub const APPLE_V4: [&str; 1] = ["17.0.0.0/8"];
/// Apple's narrower IPv4 list.
pub const APPLE_NARROW_V4: [&str; 5] = [
    "17.249.0.0/16",
    "17.252.0.0/16",
    "17.57.144.0/22",
    "17.188.128.0/18",
    "17.188.20.0/23",
];
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
    /// Apple's prefixes and ports (docs/classification.md), monitor mode, no provider list.
    pub fn apple_defaults() -> Policy {
        Policy {
            mode: Mode::Monitor,
            ports: DEFAULT_PORTS.into_iter().collect(),
            allow: ApplePreset::All.prefixes(),
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

/// Parses an IPv4 or IPv6 CIDR prefix; a bare address is a host prefix. The error says which
/// part is wrong (the address, the length, host bits) and refuses prefixes that can never
/// match a packet the datapath judges: IPv4-mapped and IPv4-compatible IPv6 (the datapath
/// sees IPv4 traffic as IPv4), multicast and loopback. Host bits are an error, not a silent
/// fix (`17.1.2.3/8` is refused, `17.0.0.0/8` accepted).
pub fn parse_prefix(text: &str) -> anyhow::Result<IpNet> {
    let (addr_text, len_text) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let Ok(addr) = addr_text.parse::<IpAddr>() else {
        bail!("{text:?} is not an IPv4 or IPv6 prefix: {addr_text:?} is not an address (e.g. 17.0.0.0/8)");
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(len) => match len.parse::<u8>() {
            Ok(len) if len <= max => len,
            _ => bail!(
                "{text:?}: prefix length {len:?} is out of range for {} (0 to {max})",
                if addr.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        },
    };
    let net = IpNet::new(addr, len).expect("length checked above");
    if net.trunc() != net {
        bail!(
            "prefix {text} has host bits set (did you mean {}?)",
            net.trunc()
        );
    }
    if let Some(reason) = never_matches(&net) {
        bail!("prefix {net} never matches: {reason}");
    }
    Ok(net)
}

/// Why `net` can never match a packet the datapath judges, if it cannot.
fn never_matches(net: &IpNet) -> Option<String> {
    let within = |outer: &str| {
        outer
            .parse::<IpNet>()
            .is_ok_and(|outer| outer.contains(net))
    };
    if let IpNet::V6(v6) = net {
        if within("::ffff:0:0/96") || (within("::/96") && v6.prefix_len() > 96) {
            let v4 = Ipv4Net::new(
                Ipv4Addr::from_bits(v6.network().to_bits() as u32),
                v6.prefix_len() - 96,
            )
            .expect("a /96 or longer leaves a valid IPv4 length");
            return Some(format!(
                "an IPv4-mapped or IPv4-compatible IPv6 prefix; IPv4 traffic is judged as IPv4, so write {v4}"
            ));
        }
    }
    if within("224.0.0.0/4") || within("ff00::/8") {
        return Some("it is multicast; APNs is unicast TCP".to_owned());
    }
    if within("127.0.0.0/8") || within("::1/128") {
        return Some("it is loopback, which never crosses a gateway".to_owned());
    }
    None
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
    fn presets_hold_apples_lists() {
        let narrow = ApplePreset::Narrow.prefixes();
        assert_eq!(narrow.len(), 5 + 4);
        assert!(narrow.contains(&"17.249.0.0/16".parse().unwrap()));
        assert!(!narrow.contains(&"17.0.0.0/8".parse().unwrap()));
        assert_eq!(ApplePreset::All.prefixes(), Policy::apple_defaults().allow);
        assert!(ApplePreset::None.prefixes().is_empty());
        let mut policy = Policy::apple_defaults();
        policy.allow = narrow;
        policy.validate().unwrap();
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
        for (bad, says) in [
            ("", "is not an address"),
            (
                "17.0.0.0/33",
                "prefix length \"33\" is out of range for IPv4 (0 to 32)",
            ),
            ("17.0.0/8", "\"17.0.0\" is not an address"),
            ("apple", "is not an address"),
            ("::/129", "out of range for IPv6 (0 to 128)"),
            ("17.0.0.0/-1", "prefix length \"-1\" is out of range"),
            ("::ffff:17.0.0.0/104", "write 17.0.0.0/8"),
            ("::ffff:11.0.0.1", "write 11.0.0.1/32"),
            ("224.0.0.0/24", "multicast"),
            ("ff02::/16", "multicast"),
            ("127.0.0.1", "loopback"),
        ] {
            let err = format!("{:#}", parse_prefix(bad).unwrap_err());
            assert!(err.contains(says), "{bad:?}: {err}");
        }
        // Prefixes that merely contain the special ranges still match ordinary traffic.
        for good in ["::/0", "0.0.0.0/0", "2000::/3"] {
            parse_prefix(good).unwrap();
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
