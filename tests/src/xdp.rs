//! Runs the real XDP program in the kernel through BPF_PROG_TEST_RUN: one freshly loaded,
//! unpinned instance per test, so tests in parallel never share maps.

use anyhow::Context as _;
use apns_agent::datapath::{
    counters::{CounterMaps, Snapshot},
    events::EventMaps,
    object,
    policy::{Mode, Policy},
    policy_maps::PolicyMaps,
};
use apns_common::events::EventConfig;
use apns_common::programs;
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};

/// `XDP_DROP` and `XDP_PASS` as BPF_PROG_TEST_RUN reports them.
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// Interface index BPF_PROG_TEST_RUN reports for XDP without a context: the loopback device
/// of the caller's network namespace.
pub const TEST_RUN_IFINDEX: u32 = 1;

pub struct Classifier {
    ebpf: Ebpf,
    pub policy: PolicyMaps,
    pub counters: CounterMaps,
    pub events: EventMaps,
}

impl Classifier {
    /// Loads a fresh instance and applies `policy`.
    pub fn load(policy: &Policy) -> anyhow::Result<Self> {
        let mut ebpf = object::load_unpinned()?;
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .with_context(|| format!("the object has no map {name}"))
        };
        let mut policy_maps = PolicyMaps::open(&mut take)?;
        let counters = CounterMaps::open(&mut take)?;
        let mut events = EventMaps::open(&mut take)?;
        policy_maps.apply(policy)?;
        events.set_config(EventConfig::default())?;
        Ok(Self {
            ebpf,
            policy: policy_maps,
            counters,
            events,
        })
    }

    /// Runs the program once on `frame` and returns its XDP action.
    pub fn run(&self, frame: &[u8]) -> anyhow::Result<u32> {
        self.runner()
            .run_repeated(frame, 1)
            .map(|(action, _)| action)
    }

    pub fn runner(&self) -> Runner<'_> {
        Runner { ebpf: &self.ebpf }
    }

    /// The program runner and the policy maps at once, for tests that change the policy on
    /// one thread while packets run on another.
    pub fn split(&mut self) -> (Runner<'_>, &mut PolicyMaps) {
        (Runner { ebpf: &self.ebpf }, &mut self.policy)
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        self.counters.snapshot()
    }
}

/// Runs the loaded program through BPF_PROG_TEST_RUN.
pub struct Runner<'a> {
    ebpf: &'a Ebpf,
}

impl Runner<'_> {
    /// Runs the program `repeat` times on `frame`: the XDP action and the kernel's mean time
    /// per run.
    pub fn run_repeated(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, std::time::Duration)> {
        let program: &Xdp = self
            .ebpf
            .program(programs::XDP)
            .context("the object has no XDP program")?
            .try_into()
            .context("not an XDP program")?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat;
        let result = program
            .test_run(options)
            .with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?;
        Ok((result.return_value, result.duration))
    }
}

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
