//! What the `redirect` fast path's flow table (`APNS_FLOWS`, issue 23) costs per packet: the
//! XDP program on Apple's packets toward a device and on the device's packets toward Apple,
//! with the test-run interface at `pass` (no flow table) and at `redirect`, against the
//! floor. On `redirect`, an inbound packet of no known flow costs the flow lookup (a miss),
//! then goes to the stack (`unsolicited`); one of a known flow, and the device's packets,
//! cost the lookup (a hit) and then the FIB lookup of the fast path itself, which this host's
//! routes answer for the test-run interface (the loopback) with an egress the agent does not
//! manage, so they pass too. Prints a markdown table (BENCHMARKS.md quotes it). Needs root:
//!
//! ```text
//! cargo build --release -p apns-tests --example flow_table_cost
//! sudo target/release/examples/flow_table_cost        # RUNS=11 REPEAT=1000000 by default
//! ```

use anyhow::{Context as _, Result};
use apns_agent::datapath::{
    interfaces::{FastPath, InterfaceMaps},
    object,
    policy::Policy,
    policy_maps::PolicyMaps,
};
use apns_common::{conns::ConnKey, maps::FLOWS};
use apns_tests::{
    bench::{
        stats::{median, ratio},
        testrun::{self, FloorProgram},
    },
    lab::{APPLE, CLIENT},
    packets::{self, ACK, PSH},
    xdp::{map_handle, TEST_RUN_IFINDEX},
};
use aya::{maps::HashMap, Ebpf};

/// The device's port of the flow the table knows, and of the one it does not.
const KNOWN_PORT: u16 = 50_000;
const UNKNOWN_PORT: u16 = 50_001;
/// Where the known flow's device packets enter: any interface but the test-run one.
const LAN_IFINDEX: u32 = 4_242;

/// A fresh datapath, Apple's default policy, the test-run interface registered with
/// `fastpath`, and the flow of [`KNOWN_PORT`] opened on another interface.
fn datapath(fastpath: FastPath) -> Result<Ebpf> {
    let mut ebpf = object::load_unpinned()?;
    let open = |name: &'static str| map_handle(&ebpf, name);
    PolicyMaps::open(open)?.apply(&Policy::apple_defaults())?;
    let mut interfaces = InterfaceMaps::open(open)?;
    interfaces.register(TEST_RUN_IFINDEX, FastPath::Pass)?;
    interfaces.set_fastpath(TEST_RUN_IFINDEX, fastpath, None)?;
    let mut flows: HashMap<_, ConnKey, u32> = HashMap::try_from(
        ebpf.map_mut(FLOWS)
            .with_context(|| format!("the object has no map {FLOWS}"))?,
    )?;
    let mut known = ConnKey {
        device_port: KNOWN_PORT,
        apple_port: 5223,
        ip_version: 4,
        ..ConnKey::default()
    };
    known.device[..4].copy_from_slice(&CLIENT.v4.octets());
    known.apple[..4].copy_from_slice(&APPLE.v4.octets());
    flows.insert(known, LAN_IFINDEX, 0)?;
    Ok(ebpf)
}

fn main() -> Result<()> {
    let runs: usize = testrun::env_or("RUNS", 11);
    let repeat: u32 = testrun::env_or("REPEAT", 1_000_000);
    testrun::pin_current_thread(1)?;
    let data = |src, dst, sport, dport| {
        packets::tcp_v4(src, dst, sport, dport, ACK | PSH)
            .payload(100)
            .bytes()
    };
    let frames: Vec<(&str, Vec<u8>)> = vec![
        (
            "Apple → device, no known flow (forged)",
            data(APPLE.v4, CLIENT.v4, 5223, UNKNOWN_PORT),
        ),
        (
            "Apple → device, a known flow",
            data(APPLE.v4, CLIENT.v4, 5223, KNOWN_PORT),
        ),
        (
            "device → Apple",
            data(CLIENT.v4, APPLE.v4, KNOWN_PORT, 5223),
        ),
    ];
    let pass = datapath(FastPath::Pass)?;
    let redirect = datapath(FastPath::Redirect)?;
    let floor = FloorProgram::load()?;
    let programs = [
        floor.xdp()?,
        testrun::xdp_program(&pass)?,
        testrun::xdp_program(&redirect)?,
    ];
    let borrowed: Vec<(&str, &[u8])> = frames.iter().map(|(k, f)| (*k, &f[..])).collect();
    let samples = testrun::in_turns(&programs, &borrowed, runs, repeat)?;
    println!("BPF_PROG_TEST_RUN, repeat {repeat}, median of {runs} runs, CPU 1\n");
    println!("| APNs data, 100 B | floor | `pass` | / floor | `redirect` | / floor | `redirect` − `pass` |");
    println!("|---|---|---|---|---|---|---|");
    for (f, (label, _)) in frames.iter().enumerate() {
        let [floor, pass, redirect] = [0, 1, 2].map(|p| median(&samples[f][p]));
        println!(
            "| {label} | {floor:.1} | {pass:.1} | {:.2}x | {redirect:.1} | {:.2}x | {:+.1} ns |",
            ratio(pass, floor),
            ratio(redirect, floor),
            redirect - pass
        );
    }
    Ok(())
}
