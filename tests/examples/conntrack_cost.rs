//! What the connection table costs per packet (issue 13), in one run: the XDP program on
//! every packet class of the benchmark with the test-run interface upstream (the table never
//! touched: today's cost of a gateway's other interfaces, and of every non-APNs packet
//! anywhere) and with it facing the devices (the device's APNs packets update their entry),
//! against the floor; and the TC egress half (`apns_tc_conns`) on the same frames, on a
//! device-facing interface and on an upstream one (where it returns at once). Each instance
//! saw the APNs SYN once before timing, so its connection is in the table and the figures are
//! those of an update (a new connection's entry is made once, on its SYN). With
//! `BEFORE=FILE`, another build of the datapath object runs in the same turns on a
//! device-facing interface too, for a same-run comparison (its `/ floor` column). Prints markdown tables (BENCHMARKS.md quotes them).
//! Needs root:
//!
//! ```text
//! cargo build --release -p apns-tests --example conntrack_cost
//! sudo target/release/examples/conntrack_cost        # RUNS=11 REPEAT=1000000 by default
//! sudo BEFORE=/tmp/apns-main.o target/release/examples/conntrack_cost
//! ```

use anyhow::{ensure, Context as _, Result};
use apns_agent::{
    datapath::{
        conns::ConnMaps,
        interfaces::{FastPath, InterfaceMaps, InterfaceRole},
        object,
        policy::Policy,
        policy_maps::PolicyMaps,
    },
    telemetry::clients::{Report, Rules},
};
use apns_common::programs;
use apns_tests::{
    bench::{
        stats::{median, ratio},
        testrun::{self, FloorProgram, PacketClass},
    },
    lab::{APPLE, CLIENT},
    packets::{self, ACK, PSH, SYN},
    xdp::{map_handle, TEST_RUN_IFINDEX},
};
use aya::{programs::Xdp, Ebpf};

/// A fresh datapath (XDP and the TC egress half loaded), Apple's default policy, the test-run
/// interface registered with `role`.
fn datapath(role: InterfaceRole) -> Result<Ebpf> {
    let mut ebpf = object::load_unpinned()?;
    object::tc_conns_program(&mut ebpf)?
        .load()
        .context("loading the TC egress program")?;
    let open = |name: &'static str| map_handle(&ebpf, name);
    PolicyMaps::open(open)?.apply(&Policy::apple_defaults())?;
    let mut interfaces = InterfaceMaps::open(open)?;
    interfaces.register(TEST_RUN_IFINDEX, FastPath::Pass)?;
    interfaces.set_role(TEST_RUN_IFINDEX, role)?;
    Ok(ebpf)
}

/// Another build of the datapath object (`BEFORE`), Apple's default policy, the test-run
/// interface registered and facing the devices, as [`datapath`] does for the new build.
fn before(path: &str) -> Result<Ebpf> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    // An older build: it may predate the load-time constants but the log level.
    let off = 0u8;
    let mut ebpf = aya::EbpfLoader::new()
        .override_global("AYA_LOG_LEVEL", &off, true)
        .load(&bytes)
        .with_context(|| format!("loading {path}"))?;
    object::xdp_program(&mut ebpf)?.load()?;
    let open = |name: &'static str| map_handle(&ebpf, name);
    PolicyMaps::open(open)?.apply(&Policy::apple_defaults())?;
    let mut interfaces = InterfaceMaps::open(open)?;
    interfaces.register(TEST_RUN_IFINDEX, FastPath::Pass)?;
    interfaces.set_role(TEST_RUN_IFINDEX, InterfaceRole::Devices)?;
    Ok(ebpf)
}

/// The connection table's TC program's mean ns per run on `frame` (TC_ACT_UNSPEC, -1, is its
/// only answer).
fn conns_run(ebpf: &Ebpf, frame: &[u8], repeat: u32) -> Result<f64> {
    let program = testrun::tc_program(ebpf, programs::TC_CONNS)?;
    let (verdict, ns) = testrun::tc_test_run(program, frame, repeat)?;
    ensure!(verdict == -1, "TC returned {verdict}");
    Ok(ns)
}

fn main() -> Result<()> {
    let runs: usize = testrun::env_or("RUNS", 11);
    let repeat: u32 = testrun::env_or("REPEAT", 1_000_000);
    testrun::pin_current_thread(1)?;
    let mut classes = testrun::classes();
    // The device's established data toward Apple: the packet the table sees most of at XDP.
    classes.insert(
        4,
        PacketClass {
            key: "apns_v4_data_out",
            label: "established APNs data (device → Apple :5223, ACK+PSH, 100 B)",
            apns: true,
            mix_percent: 0,
            frame: packets::tcp_v4(CLIENT.v4, APPLE.v4, 50_000, 5223, ACK | PSH)
                .payload(100)
                .bytes(),
        },
    );
    let upstream = datapath(InterfaceRole::Upstream)?;
    let devices = datapath(InterfaceRole::Devices)?;
    let floor = FloorProgram::load()?;
    let previous = std::env::var("BEFORE")
        .ok()
        .map(|path| before(&path))
        .transpose()?;
    // The connections exist before timing: each SYN once, on every instance.
    for ebpf in [&upstream, &devices].into_iter().chain(previous.as_ref()) {
        for class in classes.iter().filter(|c| c.key.ends_with("_syn")) {
            testrun::test_run(testrun::xdp_program(ebpf)?, &class.frame, 1)?;
        }
    }
    let mut programs: Vec<&Xdp> = vec![
        floor.xdp()?,
        testrun::xdp_program(&upstream)?,
        testrun::xdp_program(&devices)?,
    ];
    if let Some(previous) = &previous {
        programs.push(testrun::xdp_program(previous)?);
    }
    let tcs: [&Ebpf; 2] = [&upstream, &devices];
    let frames: Vec<(&str, &[u8])> = classes.iter().map(|c| (c.key, &c.frame[..])).collect();
    let samples = testrun::in_turns(&programs, &frames, runs, repeat)?;
    let mut tc_samples = vec![[Vec::new(), Vec::new()]; classes.len()];
    for run in 0..runs {
        for (c, class) in classes.iter().enumerate() {
            for turn in 0..tcs.len() {
                let p = (turn + run) % tcs.len();
                tc_samples[c][p].push(conns_run(tcs[p], &class.frame, repeat)?);
            }
        }
    }
    println!("BPF_PROG_TEST_RUN, repeat {repeat}, median of {runs} runs, CPU 1\n");
    println!("XDP program, ns per packet:\n");
    println!("| packet class | floor | BEFORE, device-facing | / floor | upstream interface | / floor | device-facing interface | / floor | added by the table |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (c, class) in classes.iter().enumerate() {
        let [floor, up, dev] = [0, 1, 2].map(|p| median(&samples[c][p]));
        let old = samples[c].get(3).map_or(f64::NAN, |s| median(s));
        println!(
            "| {} | {floor:.1} | {old:.1} | {:.2}x | {up:.1} | {:.2}x | {dev:.1} | {:.2}x | {:+.1} ns |",
            class.key,
            ratio(old, floor),
            ratio(up, floor),
            ratio(dev, floor),
            dev - up
        );
    }
    let mix = |p: usize| -> f64 {
        classes
            .iter()
            .enumerate()
            .map(|(c, class)| {
                samples[c].get(p).map_or(f64::NAN, |s| {
                    median(s) * f64::from(class.mix_percent) / 100.0
                })
            })
            .sum()
    };
    println!(
        "| gateway mix | {:.1} | {:.1} | {:.2}x | {:.1} | {:.2}x | {:.1} | {:.2}x | {:+.1} ns |",
        mix(0),
        mix(3),
        ratio(mix(3), mix(0)),
        mix(1),
        ratio(mix(1), mix(0)),
        mix(2),
        ratio(mix(2), mix(0)),
        mix(2) - mix(1)
    );
    println!("\nTC egress program (apns_tc_conns), ns per packet:\n");
    println!("| packet class | upstream interface (returns at once) | device-facing interface | difference |");
    println!("|---|---|---|---|");
    for (c, class) in classes.iter().enumerate() {
        let [up, dev] = [0, 1].map(|p| median(&tc_samples[c][p]));
        println!(
            "| {} | {up:.1} | {dev:.1} | {:+.1} ns |",
            class.key,
            dev - up
        );
    }
    full_table(&devices)
}

/// What the agent's read of a full table costs (every /metrics scrape, every `clients`):
/// the device-facing instance's table filled with one connection per source port and
/// address, then read and judged, median of 5.
fn full_table(devices: &Ebpf) -> Result<()> {
    let conns = ConnMaps::open(|name| map_handle(devices, name))?;
    let size = conns.size();
    let program = testrun::xdp_program(devices)?;
    let mut made = 0u32;
    'fill: for host in 1..=255u8 {
        for port in 1024..=65535u16 {
            if made >= size {
                break 'fill;
            }
            let device = std::net::Ipv4Addr::new(192, 0, 2, host);
            let frame = packets::tcp_v4(device, APPLE.v4, port, 5223, SYN).bytes();
            testrun::test_run(program, &frame, 1)?;
            made += 1;
        }
    }
    let mut reads = Vec::new();
    let mut judged = Vec::new();
    let mut entries = 0;
    for _ in 0..5 {
        let started = std::time::Instant::now();
        let table = conns.read()?;
        reads.push(started.elapsed().as_secs_f64() * 1000.0);
        let started = std::time::Instant::now();
        let report = Report::build(&table, &Rules::default(), |index| index.to_string());
        judged.push(started.elapsed().as_secs_f64() * 1000.0);
        entries = report.table.entries;
    }
    println!(
        "\nReading a full table ({entries} of {size} entries): {:.0} ms, judging it: {:.0} ms (median of 5)",
        median(&reads),
        median(&judged)
    );
    Ok(())
}
