//! Sections 1 and 2: what one packet costs, measured by the kernel itself through
//! BPF_PROG_TEST_RUN, for our classifier, the floor program and xdp-filter on the very same
//! frames; and how the cost of an APNs packet grows with the allow-list.
//!
//! The figure is the kernel's own per-run duration (total time / repeat, whole
//! nanoseconds), never wall time: with repeat > 1 the kernel swaps the XDP dispatcher around
//! each call, a fixed ~16 ms per call that would swamp a per-packet figure. The calling
//! thread is pinned to one CPU so the runs of one figure share caches and frequency, and the
//! programs take turns within each run (rotating who goes first), so drift over the run hits
//! them alike.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use apns_agent::datapath::{
    counters::CounterMaps,
    interfaces::{FastPath, InterfaceMaps},
    object,
    policy::{Mode, Policy, DEFAULT_PORTS},
    policy_maps::PolicyMaps,
};
use apns_common::programs;
use aya::{
    maps::{Map, PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    Ebpf, EbpfLoader,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::{
    sched::{sched_setaffinity, CpuSet},
    unistd::Pid,
};
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use super::{
    report::{Section, Table},
    stats::{median, num, range, ratio, times},
    xdp_filter::XdpFilter,
    Plan,
};
use crate::{
    lab::{APPLE, CLIENT, OTHER},
    packets::{self, Addrs, Frame, Transport, ACK, PSH, SYN, TPID_8021Q},
    reference,
    xdp::{map_handle, TEST_RUN_IFINDEX, XDP_DROP, XDP_PASS},
};

/// Name of the floor's program and counter in `BENCH_FLOOR_OBJECT`.
const FLOOR_PROGRAM: &str = "floor_xdp";
const FLOOR_COUNTER: &str = "FLOOR_PACKETS";

/// Allow-list sizes of section 2.
pub const ALLOW_LIST_SIZES: [usize; 4] = [1, 100, 10_000, 100_000];

/// The prefixes that match the APNs SYNs' destinations (17.249.1.10, 2620:149:a44::10) in
/// section 2: a /24 and a /64, longer than the prefilter settles (16 bits; 32 for IPv6), so
/// that every list size, one prefix included, needs the LPM trie: like is compared with like.
const MATCHING_V4: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(17, 249, 1, 0), 24) {
    Ok(net) => net,
    Err(_) => panic!("valid prefix"),
};
const MATCHING_V6: Ipv6Net =
    match Ipv6Net::new(Ipv6Addr::new(0x2620, 0x149, 0xa44, 0, 0, 0, 0, 0), 64) {
        Ok(net) => net,
        Err(_) => panic!("valid prefix"),
    };

/// One kind of packet a gateway sees, as the frame every program gets.
pub struct PacketClass {
    pub key: &'static str,
    pub label: &'static str,
    /// Classified as APNs (counted as `pass` with a direction and port).
    pub apns: bool,
    /// Share of the "gateway mix" (percent, see [`GATEWAY_MIX`]).
    pub mix_percent: u32,
    pub frame: Vec<u8>,
}

/// What the gateway mix figure stands for: a weighted mean of the per-class figures with the
/// classes' `mix_percent` as weights.
pub const GATEWAY_MIX: &str = "90 % non-Apple HTTPS (45 % device → :443, 45 % its replies), \
    5 % APNs (3 % established data, 1 % IPv4 SYN, 1 % IPv6 SYN), 5 % other (2 % UDP, 2 % ICMP, \
    1 % ARP)";

/// The packet classes. Addresses are the lab's: the device 192.0.2.10, Apple's 17.249.1.10
/// (inside 17.0.0.0/8) and a non-Apple host 203.0.113.130.
pub fn classes() -> Vec<PacketClass> {
    let syn = packets::tcp_v4(CLIENT.v4, APPLE.v4, 50_000, 5223, SYN);
    let class = |key, label, apns, mix_percent, frame| PacketClass {
        key,
        label,
        apns,
        mix_percent,
        frame,
    };
    vec![
        class(
            "apns_v4_syn",
            "APNs IPv4 SYN (device → Apple :5223)",
            true,
            1,
            syn.bytes(),
        ),
        class(
            "apns_v6_syn",
            "APNs IPv6 SYN (device → Apple :5223)",
            true,
            1,
            packets::tcp_v6(CLIENT.v6, APPLE.v6, 50_000, 5223, SYN).bytes(),
        ),
        class(
            "apns_vlan_syn",
            "VLAN-tagged APNs IPv4 SYN (802.1Q)",
            true,
            0,
            syn.clone().vlan(TPID_8021Q).bytes(),
        ),
        class(
            "apns_v4_data",
            // A push arriving: the direction the bulk of APNs bytes takes.
            "established APNs data (Apple :5223 → device, ACK+PSH, 100 B)",
            true,
            3,
            packets::tcp_v4(APPLE.v4, CLIENT.v4, 5223, 50_000, ACK | PSH)
                .payload(100)
                .bytes(),
        ),
        class(
            "https_out",
            // HTTPS to anyone but Apple: the commonest gateway traffic. 443 is an APNs port,
            // so it walks the port table and the destination's prefix lookup.
            "TCP to a non-Apple :443 (device → 203.0.113.130, ACK+PSH, 100 B)",
            false,
            45,
            packets::tcp_v4(CLIENT.v4, OTHER.v4, 50_000, 443, ACK | PSH)
                .payload(100)
                .bytes(),
        ),
        class(
            "https_in",
            // Its reply: the source port is the APNs port this time.
            "its reply from a non-Apple :443 (203.0.113.130 → device, ACK+PSH, 100 B)",
            false,
            45,
            packets::tcp_v4(OTHER.v4, CLIENT.v4, 443, 50_000, ACK | PSH)
                .payload(100)
                .bytes(),
        ),
        class(
            "tcp_other_port",
            "TCP on a non-APNs port (device → 203.0.113.130 :22, ACK+PSH, 100 B)",
            false,
            0,
            packets::tcp_v4(CLIENT.v4, OTHER.v4, 50_000, 22, ACK | PSH)
                .payload(100)
                .bytes(),
        ),
        class(
            "udp",
            "UDP (device → non-Apple :53, 40 B)",
            false,
            2,
            packets::udp_v4(CLIENT.v4, OTHER.v4, 50_000, 53)
                .payload(40)
                .bytes(),
        ),
        class(
            "icmp",
            "ICMP echo request (device → non-Apple, 56 B)",
            false,
            2,
            Frame::new(Addrs::V4(CLIENT.v4, OTHER.v4), Transport::Echo)
                .payload(56)
                .bytes(),
        ),
        class("arp", "ARP request", false, 1, packets::arp_request()),
        class(
            "later_fragment",
            "later IPv4 fragment (offset 1480 B, to Apple)",
            false,
            0,
            syn.payload(64).fragment(185, false).bytes(),
        ),
    ]
}

/// Pins the calling thread (only it: pid 0 is the caller) to `cpu`.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)
        .with_context(|| format!("CPU {cpu} is out of range"))?;
    sched_setaffinity(Pid::from_raw(0), &set)
        .with_context(|| format!("sched_setaffinity to CPU {cpu}"))
}

/// Runs `program` `repeat` times on `frame`: the XDP action and the kernel's mean ns per run.
pub fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    let result = program.test_run(options).with_context(|| {
        format!(
            "BPF_PROG_TEST_RUN on a {}-byte frame, repeat {repeat}",
            frame.len()
        )
    })?;
    Ok((result.return_value, result.duration.as_nanos() as f64))
}

/// Runs the TC `program` `repeat` times on `frame`: its return value and the kernel's mean ns
/// per run.
pub fn tc_test_run(program: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<(i32, f64)> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    let result = program.test_run(options).with_context(|| {
        format!(
            "BPF_PROG_TEST_RUN of a TC program on a {}-byte frame, repeat {repeat}",
            frame.len()
        )
    })?;
    Ok((
        result.return_value as i32,
        result.duration.as_nanos() as f64,
    ))
}

/// The TC program `name` of a loaded object.
pub fn tc_program<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a SchedClassifier> {
    Ok(ebpf
        .program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()?)
}

/// The XDP program of a loaded datapath object.
pub fn xdp_program(ebpf: &Ebpf) -> Result<&Xdp> {
    Ok(ebpf
        .program(programs::XDP)
        .context("no XDP program")?
        .try_into()?)
}

/// The value of the environment variable `name`, or `default` (the examples' RUNS, REPEAT).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Runs each of `frames` through each of `programs` `runs` times, `repeat` times a call, the
/// programs taking turns within a run (the first rotating from run to run, so drift hits
/// them alike); every call must pass. Returns the kernel's ns per packet,
/// `samples[frame][program]`, one per run: for the same-run comparisons of
/// `tests/examples/`.
pub fn in_turns(
    programs: &[&Xdp],
    frames: &[(&str, &[u8])],
    runs: usize,
    repeat: u32,
) -> Result<Vec<Vec<Vec<f64>>>> {
    let mut samples = vec![vec![Vec::new(); programs.len()]; frames.len()];
    for run in 0..runs {
        for (f, (name, frame)) in frames.iter().enumerate() {
            for turn in 0..programs.len() {
                let p = (turn + run) % programs.len();
                let (action, ns) = test_run(programs[p], frame, repeat)?;
                ensure!(action == XDP_PASS, "{name}: program {p} returned {action}");
                samples[f][p].push(ns);
            }
        }
    }
    Ok(samples)
}

/// Our classifier, loaded fresh and unpinned, with typed handles on its maps.
pub struct OurProgram {
    ebpf: Ebpf,
    pub policy: PolicyMaps,
    pub counters: CounterMaps,
}

impl OurProgram {
    /// Loads the object and registers the interface BPF_PROG_TEST_RUN reports, as an attach
    /// would (so packets are counted under its own counter slot); the policy maps are empty
    /// until [`OurProgram::apply`].
    pub fn load() -> Result<OurProgram> {
        let ebpf = object::load_unpinned()?;
        let open = |name: &'static str| map_handle(&ebpf, name);
        let policy = PolicyMaps::open(open)?;
        let counters = CounterMaps::open(open)?;
        InterfaceMaps::open(open)?.register(TEST_RUN_IFINDEX, FastPath::Pass)?;
        Ok(OurProgram {
            ebpf,
            policy,
            counters,
        })
    }

    /// A handle of its own on one of the program's maps.
    pub fn map(&self, name: &'static str) -> Result<Map> {
        map_handle(&self.ebpf, name)
    }

    /// Loads the object and applies `policy`.
    pub fn with_policy(policy: &Policy) -> Result<OurProgram> {
        let mut program = OurProgram::load()?;
        program.apply(policy)?;
        Ok(program)
    }

    /// Applies `policy` and returns how long `PolicyMaps::apply` took (wall time: it is a
    /// string of syscalls in this process).
    pub fn apply(&mut self, policy: &Policy) -> Result<Duration> {
        let started = Instant::now();
        self.policy.apply(policy)?;
        Ok(started.elapsed())
    }

    pub fn xdp(&self) -> Result<&Xdp> {
        self.ebpf
            .program(programs::XDP)
            .context("the object has no XDP program")?
            .try_into()
            .context("not an XDP program")
    }

    /// The ids of the maps the program uses (for bpftool and for second handles).
    pub fn map_ids(&self) -> Result<Vec<u32>> {
        let info = self.xdp()?.info().context("reading the program's info")?;
        Ok(info
            .map_ids()
            .context("reading the program's map ids")?
            .unwrap_or_default())
    }
}

/// The floor: `floor_xdp` from `BENCH_FLOOR_OBJECT`, which bumps one per-CPU counter and
/// passes. What any attached program costs at least.
pub struct FloorProgram {
    ebpf: Ebpf,
}

impl FloorProgram {
    pub fn load() -> Result<FloorProgram> {
        let mut ebpf = EbpfLoader::new()
            .load(object::BENCH_FLOOR_OBJECT)
            .context("loading the bench-floor object")?;
        let program: &mut Xdp = ebpf
            .program_mut(FLOOR_PROGRAM)
            .with_context(|| format!("the floor object has no program {FLOOR_PROGRAM}"))?
            .try_into()
            .with_context(|| format!("{FLOOR_PROGRAM} is not an XDP program"))?;
        program
            .load()
            .with_context(|| format!("loading {FLOOR_PROGRAM} (the verifier log follows)"))?;
        Ok(FloorProgram { ebpf })
    }

    pub fn xdp(&self) -> Result<&Xdp> {
        self.ebpf
            .program(FLOOR_PROGRAM)
            .with_context(|| format!("no program {FLOOR_PROGRAM}"))?
            .try_into()
            .with_context(|| format!("{FLOOR_PROGRAM} is not an XDP program"))
    }

    pub fn xdp_mut(&mut self) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(FLOOR_PROGRAM)
            .with_context(|| format!("no program {FLOOR_PROGRAM}"))?
            .try_into()
            .with_context(|| format!("{FLOOR_PROGRAM} is not an XDP program"))
    }

    /// Packets the floor has seen, summed over CPUs: proof that it really ran.
    pub fn packets(&self) -> Result<u64> {
        let map = self
            .ebpf
            .map(FLOOR_COUNTER)
            .with_context(|| format!("the floor object has no map {FLOOR_COUNTER}"))?;
        let counter: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).with_context(|| format!("{FLOOR_COUNTER}'s type"))?;
        let values: PerCpuValues<u64> = counter
            .get(&0, 0)
            .with_context(|| format!("reading {FLOOR_COUNTER}"))?;
        Ok(values.iter().sum())
    }
}

/// Checks that our program classifies each frame as the reference classifier says, so each
/// figure measures the path its label names.
fn check_classes(ours: &OurProgram, classes: &[PacketClass]) -> Result<Vec<&'static str>> {
    let policy = reference::Policy::apple_defaults();
    let mut outcomes = Vec::new();
    for class in classes {
        let expected = reference::classify(&class.frame, &policy);
        let before = ours.counters.snapshot()?;
        let (action, _) = test_run(ours.xdp()?, &class.frame, 1)?;
        let after = ours.counters.snapshot()?;
        let moved: Vec<u8> = after
            .entries
            .iter()
            .filter(|(key, value)| before.get(key).packets < value.packets)
            .map(|(key, _)| key.outcome)
            .collect();
        ensure!(
            action == XDP_PASS && moved == [expected.outcome as u8],
            "{}: the datapath returned action {action} and counted outcomes {moved:?}; the reference says {} (pass)",
            class.label,
            expected.outcome.as_str()
        );
        ensure!(
            class.apns == (expected.outcome == apns_common::counters::Outcome::Pass),
            "{}: the reference classifies it as {}",
            class.label,
            expected.outcome.as_str()
        );
        outcomes.push(expected.outcome.as_str());
    }
    Ok(outcomes)
}

/// One row of section 1: medians of one packet class.
#[derive(Clone, Debug)]
pub struct ClassCost {
    pub key: &'static str,
    pub label: &'static str,
    pub apns: bool,
    pub agent_ns: f64,
    pub floor_ns: f64,
    pub filter_ns: f64,
}

/// Section 1's numbers that the goals look at.
#[derive(Clone, Debug, Default)]
pub struct PerPacket {
    pub rows: Vec<ClassCost>,
    /// The gateway mix ([`GATEWAY_MIX`]): (agent, floor, xdp-filter) weighted means.
    pub mix: Option<(f64, f64, f64)>,
}

fn xdp_action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "?",
    }
}

/// Section 1: ns per packet for every class, ours against the floor and xdp-filter.
pub fn per_packet(plan: &Plan, cpu: usize) -> Result<(Section, PerPacket)> {
    let classes = classes();
    let ours = OurProgram::with_policy(&Policy::apple_defaults())?;
    let outcomes = check_classes(&ours, &classes)?;
    let floor = FloorProgram::load()?;
    let xdp_filter = XdpFilter::load()?;
    let floor_before = floor.packets()?;

    const PROGRAMS: [&str; 3] = ["floor", "agent", "xdp-filter"];
    let programs: [&Xdp; 3] = [floor.xdp()?, ours.xdp()?, xdp_filter.xdp()];
    // samples[class][program]: one median input per run.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; classes.len()];
    let mut actions = vec![[0u32; 3]; classes.len()];
    for run in 0..plan.test_runs {
        for (c, class) in classes.iter().enumerate() {
            for turn in 0..PROGRAMS.len() {
                let p = (turn + run) % PROGRAMS.len();
                let (action, ns) = test_run(programs[p], &class.frame, plan.repeat)
                    .with_context(|| format!("{} on {}", PROGRAMS[p], class.label))?;
                samples[c][p].push(ns);
                actions[c][p] = action;
            }
        }
    }
    let floor_runs = floor.packets()? - floor_before;
    let expected_runs = plan.test_runs as u64 * classes.len() as u64 * u64::from(plan.repeat);
    if floor_runs < expected_runs {
        bail!("the floor counted {floor_runs} packets, expected at least {expected_runs}: it did not run every time");
    }

    let how = format!(
        "BPF_PROG_TEST_RUN via aya, repeat {}, median of {} runs, thread pinned to CPU {cpu}",
        plan.repeat, plan.test_runs
    );
    let mut section = Section::new("per_packet", "Per-packet cost through BPF_PROG_TEST_RUN");
    section.method = vec![
        format!(
            "Each figure is the kernel's own duration per run (total / repeat, whole nanoseconds) \
             of one BPF_PROG_TEST_RUN call with repeat {}, the median of {} calls; the thread is \
             pinned to CPU {cpu}. The three programs run the same frame in turn within each run.",
            group(plan.repeat),
            plan.test_runs
        ),
        "- **agent**: apns-agent's XDP classifier (the embedded object), Apple's default policy \
         (17.0.0.0/8, the four IPv6 /48s, ports 5223 443 2197 2195 2196), monitor mode."
            .to_owned(),
        format!(
            "- **floor**: `{FLOOR_PROGRAM}` from the bench-floor object: bumps one per-CPU counter and \
             returns XDP_PASS (it counted {} packets here, so every run really ran it).",
            group(floor_runs)
        ),
        format!(
            "- **xdp-filter**: Debian's xdp-tools {} (program `{}`, id {}), loaded in a scratch \
             network namespace with `{}` and run by its program id. Its closest rules: a port \
             and one exact address (it has no prefixes), default features (all) and policy \
             (allow: it drops what matches). It checks the MAC addresses, then the IP addresses, \
             then the ports, so an APNs packet to 17.249.1.10 walks every lookup before its \
             port matches.",
            xdp_tools_version(),
            xdp_filter.program_name,
            xdp_filter.program_id,
            XdpFilter::commands().join("`, `")
        ),
    ];
    let mut table = Table::new(
        "ns per packet (median) and ratio to the floor:",
        &[
            "packet class",
            "frame",
            "agent outcome",
            "floor ns",
            "agent ns",
            "agent / floor",
            "xdp-filter ns",
            "xdp-filter / floor",
            "xdp-filter / agent",
            "xdp-filter action",
            "agent ns range",
        ],
    );
    let mut result = PerPacket::default();
    for (c, class) in classes.iter().enumerate() {
        let [floor_ns, agent_ns, filter_ns] = [0, 1, 2].map(|p| median(&samples[c][p]));
        let key = |what: &str| format!("per_packet.{}.{what}", class.key);
        section.figure(key("floor_ns"), floor_ns, "ns", &how);
        section.figure(key("agent_ns"), agent_ns, "ns", &how);
        section.figure(key("xdp_filter_ns"), filter_ns, "ns", &how);
        let agent_ratio = section.figure(
            key("agent_per_floor"),
            ratio(agent_ns, floor_ns),
            "x",
            "agent ns / floor ns",
        );
        let filter_ratio = section.figure(
            key("xdp_filter_per_floor"),
            ratio(filter_ns, floor_ns),
            "x",
            "xdp-filter ns / floor ns",
        );
        let filter_per_agent = section.figure(
            key("xdp_filter_per_agent"),
            ratio(filter_ns, agent_ns),
            "x",
            "xdp-filter ns / agent ns (how many times cheaper the agent is)",
        );
        let (lo, hi) = range(&samples[c][1]);
        table.row(vec![
            class.label.to_owned(),
            format!("{} B", class.frame.len()),
            outcomes[c].to_owned(),
            num(floor_ns),
            num(agent_ns),
            times(agent_ratio),
            num(filter_ns),
            times(filter_ratio),
            times(filter_per_agent),
            xdp_action_name(actions[c][2]).to_owned(),
            format!("{}–{}", num(lo), num(hi)),
        ]);
        result.rows.push(ClassCost {
            key: class.key,
            label: class.label,
            apns: class.apns,
            agent_ns,
            floor_ns,
            filter_ns,
        });
    }
    // The gateway mix: the per-class medians weighted by the mix's shares.
    let weighted = |program: usize| {
        let total: u32 = classes.iter().map(|c| c.mix_percent).sum();
        classes
            .iter()
            .enumerate()
            .map(|(c, class)| f64::from(class.mix_percent) * median(&samples[c][program]))
            .sum::<f64>()
            / f64::from(total)
    };
    let [floor_mix, agent_mix, filter_mix] = [0, 1, 2].map(weighted);
    let how_mix = format!("weighted mean of the per-class medians: {GATEWAY_MIX}");
    section.figure(
        "per_packet.gateway_mix.floor_ns".into(),
        floor_mix,
        "ns",
        &how_mix,
    );
    section.figure(
        "per_packet.gateway_mix.agent_ns".into(),
        agent_mix,
        "ns",
        &how_mix,
    );
    section.figure(
        "per_packet.gateway_mix.xdp_filter_ns".into(),
        filter_mix,
        "ns",
        &how_mix,
    );
    let mix_ratio = section.figure(
        "per_packet.gateway_mix.agent_per_floor".into(),
        ratio(agent_mix, floor_mix),
        "x",
        "agent ns / floor ns, gateway mix",
    );
    let mix_filter_ratio = section.figure(
        "per_packet.gateway_mix.xdp_filter_per_floor".into(),
        ratio(filter_mix, floor_mix),
        "x",
        "xdp-filter ns / floor ns, gateway mix",
    );
    let mix_filter_per_agent = section.figure(
        "per_packet.gateway_mix.xdp_filter_per_agent".into(),
        ratio(filter_mix, agent_mix),
        "x",
        "xdp-filter ns / agent ns, gateway mix",
    );
    table.row(vec![
        "**gateway mix** (weighted, see below)".to_owned(),
        "—".to_owned(),
        "—".to_owned(),
        num(floor_mix),
        num(agent_mix),
        times(mix_ratio),
        num(filter_mix),
        times(mix_filter_ratio),
        times(mix_filter_per_agent),
        "—".to_owned(),
        "—".to_owned(),
    ]);
    result.mix = Some((agent_mix, floor_mix, filter_mix));
    section.tables.push(table);
    section.notes.push(
        "The kernel reports whole nanoseconds per run, so a ratio between two small figures \
         carries ±1 ns of rounding on each side."
            .to_owned(),
    );
    section.notes.push(format!(
        "Gateway mix: {GATEWAY_MIX}. Each class runs on its own (hot caches, one frame \
         repeated), so the mix is the weighted mean of the per-class medians of each program, \
         not a run of mixed frames."
    ));
    drop(xdp_filter);
    Ok((section, result))
}

/// `n` IPv4 prefixes: [`MATCHING_V4`] and `n - 1` other /24s drawn from a fixed seed, none
/// inside 17.0.0.0/8, so the APNs packet is matched by the /24 whatever the size.
pub fn allow_list(n: usize) -> BTreeSet<IpNet> {
    let mut set = BTreeSet::from([IpNet::V4(MATCHING_V4)]);
    let mut rng = ChaCha8Rng::seed_from_u64(0x0a11_0715);
    // Bounded: each draw adds a prefix unless it collides, and collisions are rare even at
    // 100,000 prefixes out of millions of possible ones.
    for _ in 0..n.saturating_mul(4) {
        if set.len() >= n {
            break;
        }
        let addr = Ipv4Addr::from(rng.random::<u32>());
        let first = addr.octets()[0];
        if matches!(first, 0 | 17 | 127) || first >= 224 {
            continue;
        }
        let net = Ipv4Net::new(addr, 24).expect("length 24").trunc();
        set.insert(IpNet::V4(net));
    }
    assert_eq!(set.len(), n, "could not draw {n} distinct prefixes");
    set
}

/// `n` IPv6 prefixes: [`MATCHING_V6`] and `n - 1` other /64s in 2000::/3 drawn from a fixed
/// seed, none in 2620::/16 (so none covers an Apple address).
pub fn allow_list_v6(n: usize) -> BTreeSet<IpNet> {
    let mut set = BTreeSet::from([IpNet::V6(MATCHING_V6)]);
    let mut rng = ChaCha8Rng::seed_from_u64(0x0a11_0716);
    for _ in 0..n.saturating_mul(4) {
        if set.len() >= n {
            break;
        }
        let raw: u128 = rng.random();
        let addr = Ipv6Addr::from((raw >> 3) | (1u128 << 125));
        if addr.segments()[0] == 0x2620 {
            continue;
        }
        let net = Ipv6Net::new(addr, 64).expect("length 64").trunc();
        set.insert(IpNet::V6(net));
    }
    assert_eq!(set.len(), n, "could not draw {n} distinct prefixes");
    set
}

/// Apple's ports in monitor mode with `allow` as the allow-list.
pub fn policy_with(allow: BTreeSet<IpNet>) -> Policy {
    Policy {
        mode: Mode::Monitor,
        ports: DEFAULT_PORTS.into_iter().collect(),
        allow,
        providers: BTreeSet::new(),
    }
}

/// An address family of section 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub const fn key(self) -> &'static str {
        match self {
            Family::V4 => "v4",
            Family::V6 => "v6",
        }
    }

    fn list(self, n: usize) -> BTreeSet<IpNet> {
        match self {
            Family::V4 => allow_list(n),
            Family::V6 => allow_list_v6(n),
        }
    }

    /// The APNs SYN and the non-Apple HTTPS packet of this family.
    fn frames(self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Family::V4 => (
                packets::tcp_v4(CLIENT.v4, APPLE.v4, 50_000, 5223, SYN).bytes(),
                packets::tcp_v4(CLIENT.v4, OTHER.v4, 50_000, 443, ACK | PSH)
                    .payload(100)
                    .bytes(),
            ),
            Family::V6 => (
                packets::tcp_v6(CLIENT.v6, APPLE.v6, 50_000, 5223, SYN).bytes(),
                packets::tcp_v6(CLIENT.v6, OTHER.v6, 50_000, 443, ACK | PSH)
                    .payload(100)
                    .bytes(),
            ),
        }
    }

    /// Whether the prefilter sends the non-Apple host's address to the trie with `list`
    /// (some prefix longer than the prefilter's reach shares its leading bits).
    fn other_asks_trie(self, list: &BTreeSet<IpNet>) -> bool {
        match self {
            Family::V4 => {
                let other = u32::from(OTHER.v4);
                list.iter().any(|net| match net {
                    IpNet::V4(net) => u32::from(net.network()) >> 16 == other >> 16,
                    IpNet::V6(_) => false,
                })
            }
            Family::V6 => {
                let other = u128::from(OTHER.v6);
                let first = list.iter().any(|net| match net {
                    IpNet::V6(net) => u128::from(net.network()) >> 112 == other >> 112,
                    IpNet::V4(_) => false,
                });
                let next = list.iter().any(|net| match net {
                    IpNet::V6(net) => {
                        (u128::from(net.network()) >> 96) as u16 == (other >> 96) as u16
                    }
                    IpNet::V4(_) => false,
                });
                first && next
            }
        }
    }
}

/// Section 2's numbers the goals and section 4 look at.
#[derive(Clone, Debug, Default)]
pub struct Scaling {
    /// (family, prefixes, APNs SYN ns, non-Apple HTTPS ns) medians.
    pub cost: Vec<(Family, usize, f64, f64)>,
    /// (prefixes, apply into an empty generation), IPv4.
    pub apply: Vec<(usize, Duration)>,
    /// The same for IPv6.
    pub apply_v6: Vec<(usize, Duration)>,
    /// Map memory (bytes_memlock summed) of the IPv4 datapath with the most prefixes.
    pub largest_maps_bytes: u64,
}

impl Scaling {
    /// APNs SYN ns with the fewest and the most prefixes of `family`.
    pub fn ends(&self, family: Family) -> (f64, f64) {
        let costs: Vec<f64> = self
            .cost
            .iter()
            .filter(|c| c.0 == family)
            .map(|c| c.2)
            .collect();
        (
            costs.first().copied().unwrap_or(f64::NAN),
            costs.last().copied().unwrap_or(f64::NAN),
        )
    }
}

/// Section 2: the APNs SYN (and a non-Apple HTTPS packet) with 1 to 100,000 long prefixes
/// (IPv4 /24s, IPv6 /64s) in the allow-list.
pub fn allow_list_scaling(plan: &Plan, cpu: usize) -> Result<(Section, Scaling)> {
    let floor = FloorProgram::load()?;
    let mut scaling = Scaling::default();
    let mut section = Section::new("allow_list", "Allow-list scaling");
    section.method = vec![format!(
        "The APNs SYN (IPv4 to 17.249.1.10, IPv6 to 2620:149:a44::10) through datapaths whose \
         allow-list holds 1 to 100,000 distinct long prefixes of one family, applied with \
         `PolicyMaps::apply`: IPv4 /24s (the packet matched by 17.249.1.0/24, the others drawn \
         from a fixed seed outside 17.0.0.0/8), IPv6 /64s (matched by 2620:149:a44::/64, the \
         others drawn in 2000::/3 outside 2620::/16). Every prefix is longer than the \
         prefilter settles, so each size, one prefix included, pays for an LPM trie lookup. \
         The non-Apple HTTPS packet (to 203.0.113.130:443 / 2001:db8:ff::10:443) runs through \
         the same datapaths: whether its address reaches the trie depends on whether a drawn \
         prefix shares its leading bits (column \"non-Apple HTTPS\"). Same method as section 1 \
         ({} runs of {} repeats, the floor in the same turns).",
        plan.test_runs,
        group(plan.repeat)
    )];
    for family in Family::ALL {
        let (apns_frame, other_frame) = family.frames();
        let mut loaded = Vec::new();
        let mut asks = Vec::new();
        for n in ALLOW_LIST_SIZES {
            let mut program = OurProgram::load()?;
            let list = family.list(n);
            asks.push(family.other_asks_trie(&list));
            let took = program
                .apply(&policy_with(list))
                .with_context(|| format!("applying {n} {family:?} prefixes"))?;
            match family {
                Family::V4 => scaling.apply.push((n, took)),
                Family::V6 => scaling.apply_v6.push((n, took)),
            }
            loaded.push(program);
        }
        if family == Family::V4 {
            if let Some(largest) = loaded.last() {
                scaling.largest_maps_bytes = super::control::maps_memlock(&largest.map_ids()?)?;
            }
        }
        // samples[0] the floor, then (APNs, HTTPS) per size.
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); 1 + 2 * loaded.len()];
        for run in 0..plan.test_runs {
            for turn in 0..samples.len() {
                let i = (turn + run) % samples.len();
                let (program, frame) = match i {
                    0 => (floor.xdp()?, &apns_frame),
                    _ => {
                        let program = loaded[(i - 1) / 2].xdp()?;
                        (
                            program,
                            if i % 2 == 1 {
                                &apns_frame
                            } else {
                                &other_frame
                            },
                        )
                    }
                };
                let (action, ns) = test_run(program, frame, plan.repeat)?;
                ensure!(
                    action == XDP_PASS,
                    "a {family:?} frame was not passed (action {action})"
                );
                samples[i].push(ns);
            }
        }
        let how = format!(
            "BPF_PROG_TEST_RUN via aya, APNs {family:?} SYN, repeat {}, median of {} runs, CPU {cpu}",
            plan.repeat, plan.test_runs
        );
        let floor_ns = median(&samples[0]);
        let fkey = family.key();
        section.figure(format!("allow_list.{fkey}.floor_ns"), floor_ns, "ns", &how);
        let mut table = Table::new(
            format!(
                "ns per packet by {} allow-list size ({}):",
                match family {
                    Family::V4 => "IPv4",
                    Family::V6 => "IPv6",
                },
                match family {
                    Family::V4 => "/24s",
                    Family::V6 => "/64s",
                }
            ),
            &[
                "prefixes",
                "APNs SYN ns",
                "vs 1 prefix",
                "vs floor",
                "non-Apple HTTPS ns",
                "apply time (empty generation)",
            ],
        );
        let base = median(&samples[1]);
        for (i, n) in ALLOW_LIST_SIZES.into_iter().enumerate() {
            let ns = median(&samples[1 + 2 * i]);
            let https = median(&samples[2 + 2 * i]);
            scaling.cost.push((family, n, ns, https));
            section.figure(format!("allow_list.{fkey}.{n}.agent_ns"), ns, "ns", &how);
            section.figure(
                format!("allow_list.{fkey}.{n}.https_ns"),
                https,
                "ns",
                &how.replace("APNs", "non-Apple HTTPS"),
            );
            let vs_one = section.figure(
                format!("allow_list.{fkey}.{n}.per_one_prefix"),
                ratio(ns, base),
                "x",
                "agent ns / agent ns with 1 prefix",
            );
            let apply = match family {
                Family::V4 => scaling.apply[i].1,
                Family::V6 => scaling.apply_v6[i].1,
            };
            section.figure(
                format!("allow_list.{fkey}.{n}.apply_ms"),
                apply.as_secs_f64() * 1e3,
                "ms",
                "wall time of PolicyMaps::apply into a freshly loaded datapath",
            );
            table.row(vec![
                group(n as u64),
                num(ns),
                times(vs_one),
                times(ratio(ns, floor_ns)),
                format!(
                    "{} ({})",
                    num(https),
                    if asks[i] { "trie" } else { "prefilter" }
                ),
                format!("{} ms", num(apply.as_secs_f64() * 1e3)),
            ]);
        }
        section.tables.push(table);
        section.notes.push(format!(
            "{family:?}: floor in the same turns {} ns.",
            num(floor_ns)
        ));
    }
    Ok((section, scaling))
}

/// Median wall time of applying `n` prefixes into freshly loaded datapaths (section 4).
pub fn apply_time(n: usize, runs: usize) -> Result<Vec<Duration>> {
    let policy = policy_with(allow_list(n));
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut program = OurProgram::load()?;
        times.push(program.apply(&policy)?);
    }
    Ok(times)
}

/// `1000000` as `1,000,000`.
fn group(n: impl Into<u64>) -> String {
    super::stats::group_thousands(i64::try_from(n.into()).unwrap_or(i64::MAX))
}

/// The installed xdp-tools version (`dpkg-query`), or "(version unknown)".
fn xdp_tools_version() -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "xdp-tools"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "(version unknown)".to_owned())
}
