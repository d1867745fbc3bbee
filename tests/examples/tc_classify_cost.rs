//! What the fast paths' TC ingress program (`apns_tc`) costs per packet where the kernel lets
//! XDP write metadata (it reads the metadata, here none) and where it does not (it classifies
//! the packet itself: parse, policy, and for `redirect` a FIB lookup), on the benchmark's
//! packet classes, on a `mark` and on a `redirect` interface (issue 22). Both objects run in
//! the same turns. Prints a markdown table (BENCHMARKS.md quotes it). Needs root:
//!
//! ```text
//! cargo build --release -p apns-tests --example tc_classify_cost
//! sudo target/release/examples/tc_classify_cost        # RUNS=11 REPEAT=1000000 by default
//! ```

use anyhow::{Context as _, Result};
use apns_agent::datapath::{
    interfaces::{FastPath, InterfaceMaps},
    object::{self, Constants, OBJECT},
    policy::Policy,
    policy_maps::PolicyMaps,
};
use apns_common::{features::bits, programs};
use apns_tests::{
    bench::{stats::median, testrun},
    xdp::{map_handle, TEST_RUN_IFINDEX},
};
use aya::Ebpf;

/// A fresh datapath with the TC program loaded with `features`, Apple's default policy, the
/// test-run interface registered with `fastpath` (the interface a TC test run reports).
fn datapath(features: u32, fastpath: FastPath) -> Result<Ebpf> {
    let constants = Constants { log: 0, features };
    let mut ebpf = object::loader(&constants).load(OBJECT)?;
    object::tc_program(&mut ebpf)?
        .load()
        .context("loading the TC ingress program")?;
    let open = |name: &'static str| map_handle(&ebpf, name);
    PolicyMaps::open(open)?.apply(&Policy::apple_defaults())?;
    let mut interfaces = InterfaceMaps::open(open)?;
    interfaces.register(TEST_RUN_IFINDEX, FastPath::Pass)?;
    interfaces.set_fastpath(TEST_RUN_IFINDEX, fastpath, None)?;
    Ok(ebpf)
}

fn main() -> Result<()> {
    let runs: usize = testrun::env_or("RUNS", 11);
    let repeat: u32 = testrun::env_or("REPEAT", 1_000_000);
    testrun::pin_current_thread(1)?;
    let classes = testrun::classes();
    let setups = [
        ("mark, from metadata", bits::XDP_META, FastPath::Mark),
        ("mark, classifying", 0, FastPath::Mark),
        (
            "redirect, from metadata",
            bits::XDP_META,
            FastPath::Redirect,
        ),
        ("redirect, classifying", 0, FastPath::Redirect),
    ];
    let datapaths: Vec<Ebpf> = setups
        .iter()
        .map(|&(_, features, fastpath)| datapath(features, fastpath))
        .collect::<Result<_>>()?;
    let mut samples = vec![vec![Vec::new(); setups.len()]; classes.len()];
    for _ in 0..runs {
        for (class, per_setup) in classes.iter().zip(&mut samples) {
            for (ebpf, column) in datapaths.iter().zip(per_setup.iter_mut()) {
                column.push(
                    testrun::tc_test_run(
                        testrun::tc_program(ebpf, programs::TC)?,
                        &class.frame,
                        repeat,
                    )?
                    .1,
                );
            }
        }
    }
    println!("BPF_PROG_TEST_RUN of apns_tc, repeat {repeat}, median of {runs} runs, CPU 1\n");
    let header: Vec<&str> = setups.iter().map(|(label, ..)| *label).collect();
    println!("| class | {} |", header.join(" | "));
    println!("|---|{}", "---:|".repeat(setups.len()));
    for (class, per_setup) in classes.iter().zip(&samples) {
        let cells: Vec<String> = per_setup
            .iter()
            .map(|column| format!("{:.1} ns", median(column)))
            .collect();
        println!("| {} | {} |", class.label, cells.join(" | "));
    }
    Ok(())
}
