//! The redirect fast path's TC step (issue 17), measured: the first-packet latency through a
//! gateway whose forward chain drops APNs, with the gateway's neighbour caches flushed
//! (every connection's SYN and SYN-ACK take the TC step, which resolves the next hop) against
//! warm caches (XDP redirect only); the TC program's own cost per skb through
//! BPF_PROG_TEST_RUN; and the forwarding cost of the TC step per packet against XDP
//! redirect on a steady TCP stream (the `bench-handoff` object, whose fast path hands every
//! packet to TC, swapped in behind the same links). Prints markdown (BENCHMARKS.md quotes
//! it). Needs root and a built agent:
//!
//! ```text
//! cargo build --release -p apns-agent -p apns-tests --example redirect_first_packet
//! sudo target/release/examples/redirect_first_packet
//! # PAIRS=20 RUNS=11 REPEAT=1000000 ROUNDS=6 BYTES=1000000000 by default
//! ```
//!
//! BPF_PROG_TEST_RUN cannot give a TC program XDP metadata (the kernel refuses a
//! `data_meta` in the test context), so the test run measures the branch every packet that
//! is *not* handed off pays on a redirect interface now that the TC program is attached
//! there; the hand-off itself is in the cold-cache latency and the stream.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use apns_agent::datapath::object;
use apns_tests::{
    agent::{run_lan_wan, spawn_run, TestPins},
    bench::{
        forward::{self, TcpRun},
        stats::median,
        testrun,
    },
    lab::{self, Lab, LabOptions, Role, APPLE, CLIENT_IF, GW_IF_CLIENT},
};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};
use etherparse::PacketBuilder;

fn in_ns(lab: &Lab, role: Role, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", lab.ns_name(role)]).args(args);
    lab::run(&mut cmd)
}

/// Milliseconds `connect()` from the client to Apple:5223 took.
fn connect_ms(lab: &Lab, ipv6: bool) -> Result<f64> {
    let start = Instant::now();
    let stream = lab.connect(
        Role::Client,
        APPLE.socket(ipv6, 5223),
        Duration::from_secs(5),
    )?;
    let took = start.elapsed().as_secs_f64() * 1e3;
    drop(stream);
    Ok(took)
}

fn latency(pairs: usize) -> Result<()> {
    let lab = Lab::new(LabOptions::default())?;
    for role in lab.roles() {
        lab.wait_settled(role, Duration::from_secs(5))?;
    }
    lab.nft(Role::Gw, lab::APNS_FORWARD_DROP)?;
    lab.redirect_offloads()?;
    let pins = TestPins::new();
    let _agent = spawn_run(
        &lab,
        &pins,
        &run_lan_wan(&["--fastpath", "lan0=redirect", "--fastpath", "wan0=redirect"]),
    )?;
    println!("First connection through the gateway (forward chain drops 5223 both ways; redirect on lan0 and wan0): `connect()` time from the client namespace, ms, {pairs} pairs per family, cold and warm alternating\n");
    println!("| family | cold caches: median ms | range | warm caches: median ms | range | cold - warm (median of pairs) |");
    println!("|---|---|---|---|---|---|");
    for ipv6 in [false, true] {
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for pair in 0..pairs {
            for turn in 0..2 {
                let is_cold = (turn + pair) % 2 == 0;
                if is_cold {
                    // The gateway forgets every neighbour: the SYN (next hop) and the SYN-ACK
                    // (the client) are handed to TC, which resolves them.
                    in_ns(&lab, Role::Gw, &["ip", "-4", "neigh", "flush", "all"])?;
                    in_ns(&lab, Role::Gw, &["ip", "-6", "neigh", "flush", "all"])?;
                } else {
                    // Both resolved by the previous connection or refreshed here.
                    connect_ms(&lab, ipv6)?;
                }
                let ms = connect_ms(&lab, ipv6)?;
                if is_cold {
                    cold.push(ms)
                } else {
                    warm.push(ms)
                }
            }
        }
        let handed = pins
            .snapshot()?
            .paths(apns_tests::agent::gw_ifindex(&lab, GW_IF_CLIENT.name)?)
            .tc_redirect;
        let diffs: Vec<f64> = cold.iter().zip(&warm).map(|(c, w)| c - w).collect();
        let range = |v: &[f64]| {
            let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = v.iter().cloned().fold(0.0, f64::max);
            format!("{min:.3}–{max:.3}")
        };
        println!(
            "| {} | {:.3} | {} | {:.3} | {} | {:.3} |",
            if ipv6 { "IPv6" } else { "IPv4" },
            median(&cold),
            range(&cold),
            median(&warm),
            range(&warm),
            median(&diffs)
        );
        eprintln!("lan0 fastpath_tc so far: {handed}");
    }
    Ok(())
}

/// A 54-byte TCP SYN to Apple:5223.
fn syn() -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_IF.mac, GW_IF_CLIENT.mac)
        .ipv4([192, 0, 2, 10], APPLE.v4.octets(), 64)
        .tcp(40_000, 5223, 1, 64_240)
        .syn()
        .write(&mut frame, &[])
        .expect("frame");
    frame
}

fn tc_run(program: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<f64> {
    let mut options = TestRunOptions::new();
    options.data_in = Some(frame);
    options.repeat = repeat;
    let result = program
        .test_run(options)
        .context("BPF_PROG_TEST_RUN (TC)")?;
    Ok(result.duration.as_nanos() as f64)
}

fn tc_cost(runs: usize, repeat: u32) -> Result<()> {
    testrun::pin_current_thread(1)?;
    let mut ours = object::load_unpinned()?;
    let tc = object::tc_program(&mut ours)?;
    tc.load().context("loading apns_tc")?;
    let old = apns_tests::layout2::load(None)?;
    // The fixture's loader loads its programs.
    let old_tc: &SchedClassifier = old
        .program("apns_tc_mark")
        .context("no apns_tc_mark")?
        .try_into()?;
    let new_tc: &SchedClassifier = ours
        .program(apns_common::programs::TC)
        .context("no apns_tc")?
        .try_into()?;
    let frame = syn();
    let (mut old_ns, mut new_ns) = (Vec::new(), Vec::new());
    for run in 0..runs {
        for turn in 0..2 {
            if (turn + run) % 2 == 0 {
                old_ns.push(tc_run(old_tc, &frame, repeat)?);
            } else {
                new_ns.push(tc_run(new_tc, &frame, repeat)?);
            }
        }
    }
    println!("\nTC program on a 54-byte TCP SYN skb without metadata (BPF_PROG_TEST_RUN, repeat {repeat}, median of {runs} runs, CPU 1)\n");
    println!("| program | ns per run |");
    println!("|---|---|");
    println!(
        "| apns_tc_mark (layout-2 fixture: the mark path's program before issue 17) | {:.1} |",
        median(&old_ns)
    );
    println!("| apns_tc (mark and hand-off) | {:.1} |", median(&new_ns));
    Ok(())
}

/// A steady APNs TCP stream through the gateway forwarded by XDP redirect, and the same with
/// every packet handed to the TC step (the `bench-handoff` object behind the same links).
fn tc_step_forwarding(rounds: usize, bytes: u64) -> Result<()> {
    let lab = Lab::new(LabOptions::default())?;
    for role in lab.roles() {
        lab.wait_settled(role, Duration::from_secs(5))?;
    }
    let pins = TestPins::new();
    let config_dir = tempfile::tempdir()?;
    let config = forward::write_agent_config(config_dir.path())?;
    let pairs =
        forward::tc_step_forwarding(&lab, &pins, &config.display().to_string(), rounds, bytes)?;
    for (xdp, tc) in &pairs {
        ensure!(
            xdp.fastpath_packets > 0 && xdp.fastpath_tc_packets == 0,
            "the XDP redirect run took another path: {xdp:?}"
        );
        ensure!(
            tc.fastpath_tc_packets > 0 && tc.fastpath_packets == 0,
            "the TC step run took another path: {tc:?}"
        );
    }
    let column = |tc_step: bool, f: fn(&TcpRun) -> f64| -> Vec<f64> {
        pairs
            .iter()
            .map(|(xdp, tc)| f(if tc_step { tc } else { xdp }))
            .collect()
    };
    let ratios = |f: fn(&TcpRun) -> f64| -> Vec<f64> {
        pairs.iter().map(|(xdp, tc)| f(tc) / f(xdp)).collect()
    };
    let spread = |v: &[f64]| {
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = v.iter().cloned().fold(0.0, f64::max);
        format!("{:.2}x (pairs {min:.2}–{max:.2})", median(v))
    };
    let mbit = |r: &TcpRun| r.bits_per_second / 1e6;
    let pps = |r: &TcpRun| r.pps;
    // The stream's CPU time is not quoted: the client's share (reaped child time) did not
    // show in this process's accounting, so the figure would understate both paths.
    println!("\nOne APNs TCP stream of {bytes} bytes per run, client → Apple :5223 through lan0 → wan0, redirect on both; {rounds} rounds of (XDP redirect, every packet handed to the TC step), order alternating; medians, ratios pair by pair\n");
    println!("| path | Mbit/s | pps (ISP gw0) | packets counted (fastpath / fastpath_tc) |");
    println!("|---|---|---|---|");
    for tc_step in [false, true] {
        let counted: (u64, u64) = pairs.iter().fold((0, 0), |sum, (xdp, tc)| {
            let r = if tc_step { tc } else { xdp };
            (sum.0 + r.fastpath_packets, sum.1 + r.fastpath_tc_packets)
        });
        println!(
            "| {} | {:.0} | {:.0} | {} / {} |",
            if tc_step {
                "TC step (bpf_redirect_neigh)"
            } else {
                "XDP redirect"
            },
            median(&column(tc_step, mbit)),
            median(&column(tc_step, pps)),
            counted.0,
            counted.1
        );
    }
    println!(
        "| TC step / XDP redirect | {} | {} | |",
        spread(&ratios(mbit)),
        spread(&ratios(pps))
    );
    Ok(())
}

fn main() -> Result<()> {
    let pairs: usize = testrun::env_or("PAIRS", 20);
    let runs: usize = testrun::env_or("RUNS", 11);
    let repeat: u32 = testrun::env_or("REPEAT", 1_000_000);
    let rounds: usize = testrun::env_or("ROUNDS", 6);
    let bytes: u64 = testrun::env_or("BYTES", 1_000_000_000);
    latency(pairs)?;
    tc_cost(runs, repeat)?;
    tc_step_forwarding(rounds, bytes)?;
    Ok(())
}
