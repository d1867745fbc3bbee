//! What running as a component of libxdp's dispatcher costs per packet (issue 16): the
//! datapath's `apns_xdp` alone against its libxdp component (`apns_xdp_libxdp`, the same
//! maps) in a dispatcher, through BPF_PROG_TEST_RUN on the dispatcher: alone in it (libxdp
//! then replaces the dispatcher's own function) and in the first of two slots (the second
//! an empty stub: the dispatcher's loop and the call into the component). The three run in
//! the same turns on the benchmark's packet classes. Prints a markdown table (BENCHMARKS.md
//! quotes it). Needs root and a kernel that loads extension programs, which this project's
//! host kernel does not: run it in a guest of the kernel matrix (TCG there: the ratios mean
//! something, the nanoseconds are the emulator's):
//!
//! ```text
//! cargo build --release -p apns-tests --example multiprog_cost
//! cargo xtask vm --kernel 6.1 -- target/release/examples/multiprog_cost   # RUNS=7 REPEAT=20000
//! ```

use anyhow::{Context as _, Result};
use apns_agent::datapath::{
    interfaces::FastPath, multiprog, object, policy::Policy, Datapath, EbpfLog,
};
use apns_common::programs;
use apns_tests::{
    agent::{bpffs_mounted, TestPins},
    bench::{stats::median, testrun},
    xdp::TEST_RUN_IFINDEX,
};
use aya::programs::{loaded_programs, Extension, Xdp};
use aya_obj::programs::XdpAttachType;

/// Our component loaded as an extension of a dispatcher of `slots` slots, attached to it:
/// the dispatcher (to test-run) and what keeps the component attached.
fn dispatched(pins: &TestPins, slots: usize) -> Result<(Xdp, aya::Ebpf)> {
    let (dispatcher, id, function) = multiprog::unattached_dispatcher(slots)?;
    let mut ebpf = object::load_component(pins.dir(), EbpfLog::Off)?;
    let component: &mut Extension = ebpf
        .program_mut(programs::XDP_COMPONENT)
        .context("the component object has no program")?
        .try_into()?;
    component
        .load(dispatcher.try_clone()?, function)
        .with_context(|| format!("loading the component as an extension of {function}"))?;
    component.attach().context("attaching the component")?;
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == id)
        .context("the dispatcher is not loaded")?;
    let xdp = Xdp::from_program_info(info, "xdp_dispatcher".into(), XdpAttachType::Interface)?;
    Ok((xdp, ebpf))
}

fn main() -> Result<()> {
    let runs: usize = testrun::env_or("RUNS", 7);
    let repeat: u32 = testrun::env_or("REPEAT", 20_000);
    testrun::pin_current_thread(1)?;
    bpffs_mounted();
    let pins = TestPins::new();
    pins.dir().prepare()?;
    let lock = pins.dir().lock()?;
    let (mut datapath, _) = Datapath::install(pins.dir(), &lock, None, 1024)?;
    datapath.policy.apply(&Policy::apple_defaults())?;
    datapath
        .interfaces
        .register(TEST_RUN_IFINDEX, FastPath::Pass)?;
    let alone = Xdp::from_pin(pins.dir().program(), XdpAttachType::Interface)?;
    let (lone, _lone_component) = dispatched(&pins, 1)?;
    let (shared, _shared_component) = dispatched(&pins, 2)?;
    let setups = [
        ("apns_xdp alone", &alone),
        ("component, alone in a dispatcher", &lone),
        ("component, slot 1 of 2", &shared),
    ];
    let classes = testrun::classes();
    let mut samples = vec![vec![Vec::new(); setups.len()]; classes.len()];
    for _ in 0..runs {
        for (class, per_setup) in classes.iter().zip(&mut samples) {
            for ((_, program), column) in setups.iter().zip(per_setup.iter_mut()) {
                column.push(testrun::cpu_timed_run(program, &class.frame, repeat)?.1);
            }
        }
    }
    println!(
        "BPF_PROG_TEST_RUN, repeat {repeat}, median of {runs} runs, CPU 1, kernel {}\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim()
    );
    let header: Vec<&str> = setups.iter().map(|(label, _)| *label).collect();
    println!(
        "| class | {} | lone / alone | slot / alone |",
        header.join(" | ")
    );
    println!("|---|{}---:|---:|", "---:|".repeat(setups.len()));
    let (mut lone_ratios, mut slot_ratios) = (Vec::new(), Vec::new());
    for (class, per_setup) in classes.iter().zip(&samples) {
        let medians: Vec<f64> = per_setup.iter().map(|column| median(column)).collect();
        let cells: Vec<String> = medians.iter().map(|ns| format!("{ns:.1} ns")).collect();
        lone_ratios.push(medians[1] / medians[0]);
        slot_ratios.push(medians[2] / medians[0]);
        println!(
            "| {} | {} | {:.2}x | {:.2}x |",
            class.label,
            cells.join(" | "),
            medians[1] / medians[0],
            medians[2] / medians[0]
        );
    }
    println!(
        "| median over the classes | | | | {:.2}x | {:.2}x |",
        median(&lone_ratios),
        median(&slot_ratios)
    );
    drop(datapath);
    apns_agent::datapath::unload(pins.dir(), &lock)?;
    Ok(())
}
