//! A private instance of the datapath: the real XDP program with fresh, unpinned maps,
//! loaded (verified) but attached nowhere and pinned nowhere, driven through
//! BPF_PROG_TEST_RUN. `replay` runs captures through it; the kernel tests and benchmarks
//! use it too, one instance per test so tests in parallel never share maps. It all goes when
//! the instance is dropped.

use anyhow::Context as _;
use apns_common::{events::EventConfig, programs};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};

use super::{
    counters::{CounterMaps, Snapshot},
    events::EventMaps,
    object,
    policy::Policy,
    policy_maps::PolicyMaps,
};

/// Interface index BPF_PROG_TEST_RUN reports for XDP without a context: the loopback device
/// of the caller's network namespace. The counters of an instance are keyed by it.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// XDP actions (`enum xdp_action`) as BPF_PROG_TEST_RUN returns them.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;

    /// The action's name, as `xdp_action` spells it (lowercase, without `XDP_`).
    pub fn name(action: u32) -> &'static str {
        match action {
            ABORTED => "aborted",
            DROP => "drop",
            PASS => "pass",
            TX => "tx",
            REDIRECT => "redirect",
            _ => "unknown",
        }
    }
}

pub struct Instance {
    ebpf: Ebpf,
    pub policy: PolicyMaps,
    pub counters: CounterMaps,
    pub events: EventMaps,
}

impl Instance {
    /// Loads a fresh instance and applies `policy` (drop events at their defaults).
    pub fn load(policy: &Policy) -> anyhow::Result<Instance> {
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
        Ok(Instance {
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

    /// The program runner and the policy maps at once, for callers that change the policy
    /// on one thread while packets run on another.
    pub fn split(&mut self) -> (Runner<'_>, &mut PolicyMaps) {
        (Runner { ebpf: &self.ebpf }, &mut self.policy)
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        self.counters.snapshot()
    }
}

/// Runs an instance's program through BPF_PROG_TEST_RUN.
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
