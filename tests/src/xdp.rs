//! Runs the real XDP program in the kernel through BPF_PROG_TEST_RUN: one freshly loaded,
//! unpinned instance per test (the agent's `datapath::instance`, which `replay` uses too),
//! so tests in parallel never share maps.

use apns_agent::datapath::{
    instance::action,
    policy::{Mode, Policy},
};

pub use apns_agent::datapath::instance::{
    map_handle, Instance as Classifier, Runner, TEST_RUN_IFINDEX,
};

/// `XDP_DROP` and `XDP_PASS` as BPF_PROG_TEST_RUN reports them.
pub const XDP_DROP: u32 = action::DROP;
pub const XDP_PASS: u32 = action::PASS;

/// The agent's policy equivalent to a reference-classifier policy, so the kernel and the
/// reference judge by the same rules.
pub fn agent_policy(reference: &crate::reference::Policy) -> Policy {
    use ipnet::{IpNet, Ipv4Net, Ipv6Net};
    let v4 = |list: &[(std::net::Ipv4Addr, u8)]| {
        list.iter()
            .map(|&(addr, len)| IpNet::V4(Ipv4Net::new(addr, len).expect("valid prefix length")))
            .collect::<Vec<_>>()
    };
    let v6 = |list: &[(std::net::Ipv6Addr, u8)]| {
        list.iter()
            .map(|&(addr, len)| IpNet::V6(Ipv6Net::new(addr, len).expect("valid prefix length")))
            .collect::<Vec<_>>()
    };
    Policy {
        mode: if reference.enforce {
            Mode::Enforce
        } else {
            Mode::Monitor
        },
        ports: reference.ports.clone(),
        allow: v4(&reference.allow_v4)
            .into_iter()
            .chain(v6(&reference.allow_v6))
            .collect(),
        providers: v4(&reference.providers_v4)
            .into_iter()
            .chain(v6(&reference.providers_v6))
            .collect(),
    }
}
