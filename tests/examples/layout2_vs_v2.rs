//! The datapath before and after datapath v2, in one run: the layout-2 object kept as a
//! fixture (`tests/fixtures/apns-layout2.o`, Apple's default policy written into its maps by
//! hand), the current object, and the floor, on every packet class of the benchmark, taking
//! turns within each run as `cargo xtask bench` does. Prints a markdown table (BENCHMARKS.md
//! quotes it). Needs root:
//!
//! ```text
//! cargo build --release -p apns-tests --example layout2_vs_v2
//! sudo target/release/examples/layout2_vs_v2        # RUNS=11 REPEAT=1000000 by default
//! ```

use anyhow::{Context as _, Result};
use apns_agent::datapath::policy::Policy;
use apns_tests::bench::{
    stats::{median, ratio},
    testrun::{self, FloorProgram, OurProgram},
};
use aya::{programs::Xdp, Ebpf};

/// The layout-2 object with Apple's defaults in generation 0 (active), monitor mode, and the
/// interface entry an attach of the test-run interface would have made.
fn layout2() -> Result<Ebpf> {
    let mut ebpf = apns_tests::layout2::load(None)?;
    apns_tests::layout2::register(&mut ebpf, apns_tests::xdp::TEST_RUN_IFINDEX)?;
    Ok(ebpf)
}

fn main() -> Result<()> {
    let runs: usize = testrun::env_or("RUNS", 11);
    let repeat: u32 = testrun::env_or("REPEAT", 1_000_000);
    testrun::pin_current_thread(1)?;
    let old = layout2()?;
    let old_xdp: &Xdp = old.program("apns_xdp").context("no apns_xdp")?.try_into()?;
    let ours = OurProgram::with_policy(&Policy::apple_defaults())?;
    let floor = FloorProgram::load()?;
    let programs: [&Xdp; 3] = [floor.xdp()?, old_xdp, ours.xdp()?];
    let classes = testrun::classes();
    let frames: Vec<(&str, &[u8])> = classes.iter().map(|c| (c.key, &c.frame[..])).collect();
    let samples = testrun::in_turns(&programs, &frames, runs, repeat)?;
    println!("BPF_PROG_TEST_RUN, repeat {repeat}, median of {runs} runs, CPU 1\n");
    println!("| packet class | floor ns | layout 2 ns | layout 2 / floor | v2 ns | v2 / floor | layout 2 / v2 |");
    println!("|---|---|---|---|---|---|---|");
    let mut mix = [0.0; 3];
    for (c, class) in classes.iter().enumerate() {
        let m = [0, 1, 2].map(|p| median(&samples[c][p]));
        for (total, ns) in mix.iter_mut().zip(m) {
            *total += ns * f64::from(class.mix_percent) / 100.0;
        }
        row(class.key, m);
    }
    row("gateway mix", mix);
    Ok(())
}

fn row(name: &str, [floor, old, new]: [f64; 3]) {
    println!(
        "| {name} | {floor:.1} | {old:.1} | {:.2}x | {new:.1} | {:.2}x | {:.2}x |",
        ratio(old, floor),
        ratio(new, floor),
        ratio(old, new)
    );
}
