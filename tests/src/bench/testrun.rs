//! Sections 1 and 2: what one packet costs through BPF_PROG_TEST_RUN, for our classifier,
//! the floor program and xdp-filter on the very same frames; and how the cost of an APNs
//! packet grows with the allow-list.
//!
//! The programs take turns in many short rounds (each program once per frame a round, the
//! first rotating from round to round), so that the programs of one round see the same
//! machine; each ratio (agent / floor, ...) is taken within its round, and the report gives
//! the median of the rounds with its 95 % interval. On a shared machine the absolute figures
//! move with the load; the within-round ratios much less. The calling thread is pinned to one
//! CPU, and every timed program is held in the kernel's XDP dispatcher
//! ([`DispatcherHold`]) so that a call costs microseconds, not the dispatcher's rebuild.
//!
//! A figure is the calling thread's CPU time across one BPF_PROG_TEST_RUN call divided by
//! its repeat count ([`cpu_timed_run`]).

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
    charts::{BarChart, Chart, LineChart, Series, Value},
    report::{Section, Table},
    stats::{num, ratio, Estimate},
    xdp_filter::{DispatcherHold, XdpFilter},
    Plan, Rounds,
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
/// that every list size, one prefix included, is answered past the prefilter (one prefix by
/// the list's short list, 100 and more by the long-prefix table).
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

/// Runs `program` `repeat` times on `frame`: the XDP action and the nanoseconds per packet
/// as the calling thread's CPU time across the call (CLOCK_THREAD_CPUTIME_ID) divided by
/// `repeat`. Finer than the kernel's own figure ([`test_run`]), which is whole nanoseconds
/// rounded down: a ±1 ns step on a floor of about 30 ns. The CPU time also holds the
/// syscall's own cost, a few microseconds a call (a fraction of a nanosecond per packet at
/// the repeat counts used here, the same for every program), and leaves out time the thread
/// spent switched out.
pub fn cpu_timed_run(program: &Xdp, frame: &[u8], repeat: u32) -> Result<(u32, f64)> {
    let before = thread_cpu_ns()?;
    let (action, _) = test_run(program, frame, repeat)?;
    let spent = thread_cpu_ns()? - before;
    Ok((action, spent / f64::from(repeat)))
}

/// The calling thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> Result<f64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .context("clock_gettime(CLOCK_THREAD_CPUTIME_ID)")?;
    Ok(now.tv_sec() as f64 * 1e9 + now.tv_nsec() as f64)
}

/// Runs `round(i)` for i = 0, 1, ... until at least `rounds.min` rounds are done and
/// `rounds.budget` is spent; returns how many ran.
fn run_rounds(rounds: &Rounds, mut round: impl FnMut(usize) -> Result<()>) -> Result<usize> {
    let started = Instant::now();
    let mut done = 0;
    while done < rounds.min || started.elapsed() < rounds.budget {
        round(done)?;
        done += 1;
    }
    Ok(done)
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

    pub fn xdp_mut(&mut self) -> Result<&mut Xdp> {
        object::xdp_program(&mut self.ebpf)
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

/// The three programs of section 1, in the order of their samples.
const PROGRAMS: [&str; 3] = ["floor", "agent", "xdp-filter"];

/// One program's figures against another's: both medians and the round-by-round ratio.
#[derive(Clone, Copy, Debug)]
pub struct Costs {
    pub floor: Estimate,
    pub agent: Estimate,
    pub filter: Estimate,
    pub agent_per_floor: Estimate,
    pub filter_per_floor: Estimate,
    pub filter_per_agent: Estimate,
}

impl Costs {
    /// From per-round samples `[floor, agent, xdp-filter]` of one class (or of the mix),
    /// round r on instance r % `instances` of each program.
    fn of(samples: &[Vec<f64>; 3], instances: usize) -> Costs {
        let per_round = |a: usize, b: usize| -> Vec<f64> {
            samples[a]
                .iter()
                .zip(&samples[b])
                .map(|(x, y)| ratio(*x, *y))
                .collect()
        };
        let estimate = |values: &[f64]| Estimate::of_rotating(values, instances);
        Costs {
            floor: estimate(&samples[0]),
            agent: estimate(&samples[1]),
            filter: estimate(&samples[2]),
            agent_per_floor: estimate(&per_round(1, 0)),
            filter_per_floor: estimate(&per_round(2, 0)),
            filter_per_agent: estimate(&per_round(2, 1)),
        }
    }
}

/// One row of section 1: one packet class.
#[derive(Clone, Debug)]
pub struct ClassCost {
    pub key: &'static str,
    pub label: &'static str,
    pub apns: bool,
    pub costs: Costs,
}

/// Section 1's numbers that the goals look at.
#[derive(Clone, Debug, Default)]
pub struct PerPacket {
    pub rows: Vec<ClassCost>,
    /// The gateway mix ([`GATEWAY_MIX`]).
    pub mix: Option<Costs>,
    pub rounds: usize,
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
    let rounds = &plan.per_packet;
    let classes = classes();
    let instances = rounds.instances.max(1);
    // xdp-filter is attached by its own loader, so it is in the dispatcher already.
    let xdp_filter = XdpFilter::load(instances)?;
    let mut hold = DispatcherHold::new()?;
    let mut floors = Vec::new();
    let mut ours = Vec::new();
    let mut outcomes = Vec::new();
    for _ in 0..instances {
        let mut floor = FloorProgram::load()?;
        hold.hold(floor.xdp_mut()?)?;
        floors.push(floor);
        let mut agent = OurProgram::with_policy(&Policy::apple_defaults())?;
        outcomes = check_classes(&agent, &classes)?;
        hold.hold(agent.xdp_mut()?)?;
        ours.push(agent);
    }
    let floor_before = floors
        .iter()
        .map(FloorProgram::packets)
        .sum::<Result<u64>>()?;

    // programs[instance]: [floor, agent, xdp-filter].
    let programs = floors
        .iter()
        .zip(&ours)
        .enumerate()
        .map(|(i, (floor, agent))| Ok([floor.xdp()?, agent.xdp()?, xdp_filter.xdp(i)]))
        .collect::<Result<Vec<[&Xdp; 3]>>>()?;
    // samples[class][program]: one per round.
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; classes.len()];
    let mut actions = vec![[0u32; 3]; classes.len()];
    let started = Instant::now();
    let done = run_rounds(rounds, |round| {
        let programs = programs[round % programs.len()];
        for (c, class) in classes.iter().enumerate() {
            for turn in 0..PROGRAMS.len() {
                let p = (turn + round) % PROGRAMS.len();
                let (action, ns) = cpu_timed_run(programs[p], &class.frame, rounds.repeat)
                    .with_context(|| format!("{} on {}", PROGRAMS[p], class.label))?;
                samples[c][p].push(ns);
                actions[c][p] = action;
            }
        }
        Ok(())
    })?;
    let took = started.elapsed();
    let floor_runs = floors
        .iter()
        .map(FloorProgram::packets)
        .sum::<Result<u64>>()?
        - floor_before;
    let expected_runs = done as u64 * classes.len() as u64 * u64::from(rounds.repeat);
    if floor_runs < expected_runs {
        bail!("the floor counted {floor_runs} packets, expected at least {expected_runs}: it did not run every time");
    }
    drop(hold);

    let how = format!(
        "BPF_PROG_TEST_RUN via aya, thread CPU time / repeat {}, median of {done} rounds with its 95 % interval, thread pinned to CPU {cpu}",
        rounds.repeat
    );
    let mut section = Section::new("per_packet", "Per-packet cost through BPF_PROG_TEST_RUN");
    section.method = vec![
        format!(
            "{done} rounds in {:.0} s (at least {} rounds, and until {} s had passed); in each \
             round every packet class runs through the three programs in turn (the first \
             rotating from round to round), one BPF_PROG_TEST_RUN call of repeat {} each, on the \
             same frame. Each of the three programs is loaded {instances} times (ours with \
             fresh maps and Apple's default policy), and the rounds take the instances in \
             turn: two loads of one object differ by a few percent per packet (where the kernel \
             placed their code and maps), which the rounds of one load would not show; each \
             interval is widened, where needed, to take in a 95 % interval for the instances \
             (from their own medians: the extremes with 6 or more, Student's t with fewer). A \
             figure is the calling thread's CPU time across the call divided by the repeat count (sub-nanosecond; the kernel's own figure is whole nanoseconds \
             rounded down, and they agree within about 1 ns); the thread is pinned to CPU \
             {cpu}. Ratios are taken within each round (the same machine state for the three \
             programs), and every figure is the median over the rounds with its 95 % \
             confidence interval (order statistics: distribution-free). An interval wider \
             than ±5 % is marked \"too noisy\": the machine moved too much for that figure \
             to decide a goal. The floor and our program are held in the kernel's XDP \
             dispatcher for the run (attached in generic mode to a veth of a scratch \
             namespace, as xdp-filter is by its loader), so a call does not rebuild the \
             dispatcher (a wait of about 20 ms each otherwise).",
            took.as_secs_f64(),
            rounds.min,
            rounds.budget.as_secs(),
            group(rounds.repeat),
        ),
        "- **agent**: apns-agent's XDP classifier (the embedded object), Apple's default policy \
         (17.0.0.0/8, the four IPv6 /48s, ports 5223 443 2197 2195 2196), monitor mode."
            .to_owned(),
        format!(
            "- **floor**: `{FLOOR_PROGRAM}` from the bench-floor object: bumps one per-CPU counter and \
             returns XDP_PASS (its instances counted {} packets here, so every run really ran it).",
            group(floor_runs)
        ),
        format!(
            "- **xdp-filter**: Debian's xdp-tools {} (program `{}`, ids {}), loaded in a scratch \
             network namespace with `{}` (a veth and a load per instance) and run by its \
             program ids. Its closest rules: a port \
             and one exact address (it has no prefixes), default features (all) and policy \
             (allow: it drops what matches). It checks the MAC addresses, then the IP addresses, \
             then the ports, so an APNs packet to 17.249.1.10 walks every lookup before its \
             port matches.",
            xdp_tools_version(),
            xdp_filter.program_name,
            xdp_filter
                .program_ids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            XdpFilter::commands().join("`, `")
        ),
    ];
    let mut table = Table::new(
        "ns per packet and ratios to the floor (medians of the rounds; the ratios' 95 % intervals in brackets):",
        &[
            "packet class",
            "frame",
            "agent outcome",
            "floor ns",
            "agent ns",
            "agent / floor",
            "its interval",
            "xdp-filter ns",
            "xdp-filter / floor",
            "xdp-filter / agent",
            "xdp-filter action",
        ],
    );
    let mut result = PerPacket {
        rounds: done,
        ..PerPacket::default()
    };
    let record = |section: &mut Section, key: &str, costs: &Costs| {
        let key = |what: &str| format!("per_packet.{key}.{what}");
        section.estimate(key("floor_ns"), costs.floor, "ns", &how);
        section.estimate(key("agent_ns"), costs.agent, "ns", &how);
        section.estimate(key("xdp_filter_ns"), costs.filter, "ns", &how);
        section.estimate(
            key("agent_per_floor"),
            costs.agent_per_floor,
            "x",
            "agent ns / floor ns, round by round",
        );
        section.estimate(
            key("xdp_filter_per_floor"),
            costs.filter_per_floor,
            "x",
            "xdp-filter ns / floor ns, round by round",
        );
        section.estimate(
            key("xdp_filter_per_agent"),
            costs.filter_per_agent,
            "x",
            "xdp-filter ns / agent ns, round by round (how many times cheaper the agent is)",
        );
    };
    let ratio_cell = |e: &Estimate| e.show(|v| format!("{v:.2}"));
    // A row: the class, its frame's size, its outcome, the costs, xdp-filter's action.
    let row = |label: String, size: String, outcome: &str, costs: &Costs, action: &str| {
        vec![
            label,
            size,
            outcome.to_owned(),
            num(costs.floor.median),
            num(costs.agent.median),
            ratio_cell(&costs.agent_per_floor),
            costs.agent_per_floor.show_half_width(),
            num(costs.filter.median),
            ratio_cell(&costs.filter_per_floor),
            ratio_cell(&costs.filter_per_agent),
            action.to_owned(),
        ]
    };
    for (c, class) in classes.iter().enumerate() {
        let costs = Costs::of(&samples[c], instances);
        record(&mut section, class.key, &costs);
        table.row(row(
            class.label.to_owned(),
            format!("{} B", class.frame.len()),
            outcomes[c],
            &costs,
            xdp_action_name(actions[c][2]),
        ));
        result.rows.push(ClassCost {
            key: class.key,
            label: class.label,
            apns: class.apns,
            costs,
        });
    }
    // The gateway mix, round by round: each program's per-class figures of the round
    // weighted by the mix's shares.
    let total: u32 = classes.iter().map(|c| c.mix_percent).sum();
    let mix_samples: [Vec<f64>; 3] = [0, 1, 2].map(|p| {
        (0..done)
            .map(|round| {
                classes
                    .iter()
                    .enumerate()
                    .map(|(c, class)| f64::from(class.mix_percent) * samples[c][p][round])
                    .sum::<f64>()
                    / f64::from(total)
            })
            .collect()
    });
    let mix = Costs::of(&mix_samples, instances);
    record(&mut section, "gateway_mix", &mix);
    table.row(row(
        "**gateway mix** (weighted, see below)".to_owned(),
        "—".to_owned(),
        "—",
        &mix,
        "—",
    ));
    result.mix = Some(mix);
    section.tables.push(table);
    section.charts.push(per_class_chart(&result));
    section.notes.push(format!(
        "Gateway mix: {GATEWAY_MIX}. Each class runs on its own (hot caches, one frame \
         repeated), so the mix is the weighted mean of the classes' figures of each round, \
         not a run of mixed frames."
    ));
    drop(xdp_filter);
    Ok((section, result))
}

/// Section 1's picture: ns per class for the three programs, with their intervals.
fn per_class_chart(result: &PerPacket) -> Chart {
    let series: Vec<Series> = PROGRAMS
        .iter()
        .enumerate()
        .map(|(i, name)| Series::new(*name, i))
        .collect();
    let mut groups: Vec<(String, Vec<Option<Value>>)> = result
        .rows
        .iter()
        .map(|row| {
            (
                row.key.to_owned(),
                [row.costs.floor, row.costs.agent, row.costs.filter]
                    .into_iter()
                    .map(|e| Some(Value::from(e)))
                    .collect(),
            )
        })
        .collect();
    if let Some(mix) = &result.mix {
        groups.push((
            "gateway mix".to_owned(),
            [mix.floor, mix.agent, mix.filter]
                .into_iter()
                .map(|e| Some(Value::from(e)))
                .collect(),
        ));
    }
    let title = format!(
        "ns per packet through BPF_PROG_TEST_RUN (medians of {} rounds, 95 % intervals)",
        result.rounds
    );
    Chart {
        file: "ns_per_class.svg".to_owned(),
        svg: BarChart {
            title: title.clone(),
            unit: "ns per packet (thread CPU time / repeat)".to_owned(),
            series,
            groups,
        }
        .svg(),
        title,
    }
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

    /// Whether the prefilter sends the non-Apple host's address on (to the list's short list
    /// or long-prefix table) with `list`: some prefix longer than the prefilter's reach shares
    /// its leading bits.
    fn other_asks_past_prefilter(self, list: &BTreeSet<IpNet>) -> bool {
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

/// One point of section 2: a family and allow-list size.
#[derive(Clone, Copy, Debug)]
pub struct ScalingPoint {
    pub family: Family,
    pub prefixes: usize,
    /// The APNs SYN's ns.
    pub apns: Estimate,
    /// The non-Apple HTTPS packet's ns.
    pub https: Estimate,
    /// The APNs SYN against the same family with 1 prefix, round by round.
    pub per_one: Estimate,
    /// The APNs SYN against the floor, round by round.
    pub per_floor: Estimate,
}

/// Section 2's numbers the goals and section 4 look at.
#[derive(Clone, Debug, Default)]
pub struct Scaling {
    pub points: Vec<ScalingPoint>,
    /// The floor's ns in the same rounds, per family.
    pub floor: Vec<(Family, Estimate)>,
    /// Rounds per family.
    pub rounds: usize,
    /// (prefixes, apply into an empty generation), IPv4.
    pub apply: Vec<(usize, Duration)>,
    /// The same for IPv6.
    pub apply_v6: Vec<(usize, Duration)>,
    /// Map memory (bytes_memlock summed) of the IPv4 datapath with the most prefixes.
    pub largest_maps_bytes: u64,
}

impl Scaling {
    /// The APNs SYN with the most prefixes of `family` against 1 prefix.
    pub fn growth(&self, family: Family) -> Option<&ScalingPoint> {
        self.points.iter().rfind(|p| p.family == family)
    }
}

/// Section 2: the APNs SYN (and a non-Apple HTTPS packet) with 1 to 100,000 long prefixes
/// (IPv4 /24s, IPv6 /64s) in the allow-list.
pub fn allow_list_scaling(plan: &Plan, cpu: usize) -> Result<(Section, Scaling)> {
    let rounds = &plan.scaling;
    let instances = rounds.instances.max(1);
    let mut hold = DispatcherHold::new()?;
    let mut floors = Vec::new();
    for _ in 0..instances {
        let mut floor = FloorProgram::load()?;
        hold.hold(floor.xdp_mut()?)?;
        floors.push(floor);
    }
    let mut scaling = Scaling::default();
    let mut section = Section::new("allow_list", "Allow-list scaling");
    let mut took = Duration::ZERO;
    for family in Family::ALL {
        let (apns_frame, other_frame) = family.frames();
        // loaded[instance][size].
        let mut loaded: Vec<Vec<OurProgram>> = Vec::new();
        let mut asks = Vec::new();
        for instance in 0..instances {
            let mut sizes = Vec::new();
            for n in ALLOW_LIST_SIZES {
                let mut program = OurProgram::load()?;
                let list = family.list(n);
                if instance == 0 {
                    asks.push(family.other_asks_past_prefilter(&list));
                }
                let took = program
                    .apply(&policy_with(list))
                    .with_context(|| format!("applying {n} {family:?} prefixes"))?;
                if instance == 0 {
                    match family {
                        Family::V4 => scaling.apply.push((n, took)),
                        Family::V6 => scaling.apply_v6.push((n, took)),
                    }
                }
                hold.hold(program.xdp_mut()?)?;
                sizes.push(program);
            }
            loaded.push(sizes);
        }
        if family == Family::V4 {
            if let Some(largest) = loaded.first().and_then(|sizes| sizes.last()) {
                scaling.largest_maps_bytes = super::control::maps_memlock(&largest.map_ids()?)?;
            }
        }
        // samples[0] the floor, then (APNs, HTTPS) per size; one per round.
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); 1 + 2 * ALLOW_LIST_SIZES.len()];
        let started = Instant::now();
        let done = run_rounds(rounds, |round| {
            let (floor, loaded) = (&floors[round % instances], &loaded[round % instances]);
            for turn in 0..samples.len() {
                let i = (turn + round) % samples.len();
                let (program, frame) = match i {
                    0 => (floor.xdp()?, &apns_frame),
                    _ => (
                        loaded[(i - 1) / 2].xdp()?,
                        if i % 2 == 1 {
                            &apns_frame
                        } else {
                            &other_frame
                        },
                    ),
                };
                let (action, ns) = cpu_timed_run(program, frame, rounds.repeat)?;
                ensure!(
                    action == XDP_PASS,
                    "a {family:?} frame was not passed (action {action})"
                );
                samples[i].push(ns);
            }
            Ok(())
        })?;
        took += started.elapsed();
        scaling.rounds = done;
        let per_round = |a: &[f64], b: &[f64]| -> Vec<f64> {
            a.iter().zip(b).map(|(x, y)| ratio(*x, *y)).collect()
        };
        let estimate = |values: &[f64]| Estimate::of_rotating(values, instances);
        let how = format!(
            "BPF_PROG_TEST_RUN via aya, APNs {family:?} SYN, thread CPU time / repeat {}, median of {done} rounds with its 95 % interval, CPU {cpu}",
            rounds.repeat
        );
        let fkey = family.key();
        let floor_ns = section.estimate(
            format!("allow_list.{fkey}.floor_ns"),
            estimate(&samples[0]),
            "ns",
            &how,
        );
        scaling.floor.push((family, floor_ns));
        let mut table = Table::new(
            format!(
                "ns per packet by {} allow-list size ({}), medians of {done} rounds; ratios with their 95 % intervals:",
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
                "its interval",
                "vs floor",
                "non-Apple HTTPS ns",
                "apply time (empty generation)",
            ],
        );
        for (i, n) in ALLOW_LIST_SIZES.into_iter().enumerate() {
            let apns = &samples[1 + 2 * i];
            let key = |what: &str| format!("allow_list.{fkey}.{n}.{what}");
            let point = ScalingPoint {
                family,
                prefixes: n,
                apns: section.estimate(key("agent_ns"), estimate(apns), "ns", &how),
                https: section.estimate(
                    key("https_ns"),
                    estimate(&samples[2 + 2 * i]),
                    "ns",
                    &how.replace("APNs", "non-Apple HTTPS"),
                ),
                per_one: section.estimate(
                    key("per_one_prefix"),
                    estimate(&per_round(apns, &samples[1])),
                    "x",
                    "agent ns / agent ns with 1 prefix, round by round",
                ),
                per_floor: section.estimate(
                    key("per_floor"),
                    estimate(&per_round(apns, &samples[0])),
                    "x",
                    "agent ns / floor ns, round by round",
                ),
            };
            let apply = match family {
                Family::V4 => scaling.apply[i].1,
                Family::V6 => scaling.apply_v6[i].1,
            };
            section.figure(
                key("apply_ms"),
                apply.as_secs_f64() * 1e3,
                "ms",
                "wall time of PolicyMaps::apply into a freshly loaded datapath",
            );
            table.row(vec![
                group(n as u64),
                num(point.apns.median),
                point.per_one.show(|v| format!("{v:.2}")),
                point.per_one.show_half_width(),
                point.per_floor.show(|v| format!("{v:.2}")),
                format!(
                    "{} ({})",
                    num(point.https.median),
                    if asks[i] { "table" } else { "prefilter" }
                ),
                format!("{} ms", num(apply.as_secs_f64() * 1e3)),
            ]);
            scaling.points.push(point);
        }
        section.tables.push(table);
        section.notes.push(format!(
            "{family:?}: floor in the same rounds {} ns.",
            floor_ns.show(num)
        ));
    }
    section.method = vec![format!(
        "The APNs SYN (IPv4 to 17.249.1.10, IPv6 to 2620:149:a44::10) through datapaths whose \
         allow-list holds 1 to 100,000 distinct long prefixes of one family, applied with \
         `PolicyMaps::apply`: IPv4 /24s (the packet matched by 17.249.1.0/24, the others drawn \
         from a fixed seed outside 17.0.0.0/8), IPv6 /64s (matched by 2620:149:a44::/64, the \
         others drawn in 2000::/3 outside 2620::/16). Every prefix is longer than the \
         prefilter settles: with one prefix the list's short list answers (a compare), from 100 \
         on the long-prefix table does (a cuckoo hash in an array: two buckets, the list uses \
         one length). \
         The non-Apple HTTPS packet (to 203.0.113.130:443 / 2001:db8:ff::10:443) runs through \
         the same datapaths: whether its address reaches the table depends on whether a drawn \
         prefix shares its leading bits (column \"non-Apple HTTPS\"). Same method as section 1: \
         per family, rounds of the floor and the four datapaths on both packets in turn \
         (repeat {}, at least {} rounds and until {} s had passed; {:.0} s for both \
         families; {instances} instance(s) of each datapath and of the floor, taken in turn), \
         ratios within each round, medians with their 95 % intervals (widened to take in \
         the instances', as in section 1).",
        group(rounds.repeat),
        rounds.min,
        rounds.budget.as_secs(),
        took.as_secs_f64()
    )];
    section.charts.push(scaling_chart(&scaling));
    drop(hold);
    Ok((section, scaling))
}

/// Section 2's picture: ns per packet against the allow-list's size.
fn scaling_chart(scaling: &Scaling) -> Chart {
    let mut series = Vec::new();
    let mut points = Vec::new();
    for (s, (family, packet)) in [
        (Family::V4, "APNs SYN"),
        (Family::V6, "APNs SYN"),
        (Family::V4, "non-Apple HTTPS"),
        (Family::V6, "non-Apple HTTPS"),
    ]
    .into_iter()
    .enumerate()
    {
        let name = match family {
            Family::V4 => "IPv4 /24s",
            Family::V6 => "IPv6 /64s",
        };
        series.push(Series::new(format!("{packet}, {name}"), s + 1));
        points.push(
            scaling
                .points
                .iter()
                .filter(|p| p.family == family)
                .map(|p| {
                    let estimate = if packet == "APNs SYN" {
                        p.apns
                    } else {
                        p.https
                    };
                    (p.prefixes as f64, Value::from(estimate))
                })
                .collect(),
        );
    }
    // One floor line: the two families' floors differ by the frame only.
    if let Some((family, floor)) = scaling.floor.first() {
        series.push(Series::new(format!("floor ({family:?} rounds)"), 0));
        points.push(
            ALLOW_LIST_SIZES
                .iter()
                .map(|&n| (n as f64, Value::from(*floor)))
                .collect(),
        );
    }
    let title = format!(
        "ns per packet against the allow-list's size (medians of {} rounds, 95 % intervals)",
        scaling.rounds
    );
    Chart {
        file: "prefix_scaling.svg".to_owned(),
        svg: LineChart {
            title: title.clone(),
            x_unit: "prefixes in the allow-list (logarithmic)".to_owned(),
            y_unit: "ns per packet".to_owned(),
            series,
            points,
        }
        .svg(),
        title,
    }
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
