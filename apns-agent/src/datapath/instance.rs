//! A private instance of the datapath: the real XDP program with fresh, unpinned maps,
//! loaded (verified) but attached nowhere and pinned nowhere, driven through
//! BPF_PROG_TEST_RUN. `replay` runs captures through it; the kernel tests and benchmarks
//! use it too, one instance per test so tests in parallel never share maps. It all goes when
//! the instance is dropped.

use anyhow::Context as _;
use apns_common::{events::EventConfig, programs};
use aya::{
    maps::{Map, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};

use super::{
    conns::ConnMaps,
    counters::{CounterMaps, Snapshot},
    events::EventMaps,
    interfaces::{FastPath, InterfaceMaps},
    object,
    policy::Policy,
    policy_maps::PolicyMaps,
};

/// Interface index BPF_PROG_TEST_RUN reports for XDP without a context: the loopback device
/// of the caller's network namespace.
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
    pub interfaces: InterfaceMaps,
    pub conns: ConnMaps,
}

impl Instance {
    /// Loads a fresh instance, registers the interface BPF_PROG_TEST_RUN reports
    /// ([`TEST_RUN_IFINDEX`]) as an attach would, and applies `policy`.
    pub fn load(policy: &Policy) -> anyhow::Result<Self> {
        let mut classifier = Self::load_unregistered(policy)?;
        classifier
            .interfaces
            .register(TEST_RUN_IFINDEX, FastPath::Pass)?;
        Ok(classifier)
    }

    /// Like [`Instance::load`], but no interface is registered: every packet is counted in
    /// the overflow slot (interface 0).
    pub fn load_unregistered(policy: &Policy) -> anyhow::Result<Self> {
        let ebpf = object::load_unpinned()?;
        let open = |name: &'static str| map_handle(&ebpf, name);
        let mut policy_maps = PolicyMaps::open(open)?;
        let counters = CounterMaps::open(open)?;
        let mut events = EventMaps::open(open)?;
        let interfaces = InterfaceMaps::open(open)?;
        let conns = ConnMaps::open(open)?;
        policy_maps.apply(policy)?;
        events.set_config(EventConfig::default())?;
        Ok(Self {
            ebpf,
            policy: policy_maps,
            counters,
            events,
            interfaces,
            conns,
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

    /// The program runner and the policy maps at once, for callers that change the policy on
    /// one thread while packets run on another.
    pub fn split(&mut self) -> (Runner<'_>, &mut PolicyMaps) {
        (Runner { ebpf: &self.ebpf }, &mut self.policy)
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        self.counters.snapshot()
    }

    /// Loads (verifies) the connection table's TC egress program too, which the caller then
    /// runs through [`Instance::object`].
    pub fn load_tc_conns(&mut self) -> anyhow::Result<()> {
        object::tc_conns_program(&mut self.ebpf)?
            .load()
            .with_context(|| format!("loading TC program {}", programs::TC_CONNS))
    }

    /// The loaded object, for tests that run a program other than the XDP one or read a map
    /// no typed handle shows ([`map_handle`]).
    pub fn object(&self) -> &Ebpf {
        &self.ebpf
    }
}

/// Runs the loaded program through BPF_PROG_TEST_RUN.
pub struct Runner<'a> {
    ebpf: &'a Ebpf,
}

impl Runner<'_> {
    /// Runs the program once on `frame` as if it had arrived on interface `ifindex` of the
    /// calling thread's network namespace (BPF_PROG_TEST_RUN with an `xdp_md` context).
    pub fn run_on(&self, frame: &[u8], ifindex: u32) -> anyhow::Result<u32> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the kernel wants data 0 and data_end the frame's length.
        let fields = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let ctx: Vec<u8> = fields
            .iter()
            .flat_map(|field| field.to_ne_bytes())
            .collect();
        let program = self.program()?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.ctx_in = Some(&ctx);
        let result = program.test_run(options).with_context(|| {
            format!(
                "BPF_PROG_TEST_RUN on a {}-byte frame arriving on ifindex {ifindex}",
                frame.len()
            )
        })?;
        Ok(result.return_value)
    }

    fn program(&self) -> anyhow::Result<&Xdp> {
        self.ebpf
            .program(programs::XDP)
            .context("the object has no XDP program")?
            .try_into()
            .context("not an XDP program")
    }

    /// Runs the program `repeat` times on `frame`: the XDP action and the kernel's mean time
    /// per run.
    pub fn run_repeated(
        &self,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, std::time::Duration)> {
        let program = self.program()?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(frame);
        options.repeat = repeat;
        let result = program
            .test_run(options)
            .with_context(|| format!("BPF_PROG_TEST_RUN on a {}-byte frame", frame.len()))?;
        Ok((result.return_value, result.duration))
    }
}

/// A handle of its own on map `name` of a loaded object (a second file descriptor for the
/// same kernel map), so that several typed handles (`PolicyMaps`, `CounterMaps`,
/// `InterfaceMaps`) can share a map, as they do when opened from pins.
pub fn map_handle(ebpf: &Ebpf, name: &str) -> anyhow::Result<Map> {
    let map = ebpf
        .map(name)
        .with_context(|| format!("the object has no map {name}"))?;
    let data = match map {
        Map::Array(data)
        | Map::PerCpuArray(data)
        | Map::LpmTrie(data)
        | Map::DevMapHash(data)
        | Map::RingBuf(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuHashMap(data) => data,
        _ => anyhow::bail!("map {name} has a type map_handle does not know"),
    };
    let id = data
        .info()
        .with_context(|| format!("reading the info of map {name}"))?
        .id();
    let fresh = MapData::from_id(id).with_context(|| format!("opening map {name} by id {id}"))?;
    Map::from_map_data(fresh).with_context(|| format!("map {name}: unknown type"))
}
