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

use anyhow::{ensure, Context as _, Result};
use apns_agent::datapath::policy::{Policy, APPLE_V6, DEFAULT_PORTS};
use apns_tests::{
    bench::{
        stats::{median, ratio},
        testrun::{self, FloorProgram, OurProgram},
    },
    xdp::XDP_PASS,
};
use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap,
    },
    programs::Xdp,
    Ebpf, EbpfLoader,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/apns-layout2.o");

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The layout-2 object with Apple's defaults in generation 0 (active), monitor mode, and the
/// fast-path entry an attach of the test-run interface would have made.
fn layout2() -> Result<Ebpf> {
    let object = std::fs::read(FIXTURE).with_context(|| format!("reading {FIXTURE}"))?;
    let off = 0u8;
    let mut ebpf = EbpfLoader::new()
        .override_global("AYA_LOG_LEVEL", &off, true)
        .load(&object)
        .context("loading the layout-2 object")?;
    let mut map = |name: &str| {
        ebpf.take_map(name)
            .with_context(|| format!("no map {name} in the fixture"))
    };
    // Layout 2: port roles as one byte per (generation, port); tries keyed by a generation
    // byte and the address.
    let mut ports: Array<_, u8> = Array::try_from(map("APNS_PORTS")?)?;
    for (port, roles) in DEFAULT_PORTS {
        ports.set(u32::from(port), roles, 0)?;
    }
    let mut v4: LpmTrie<_, [u8; 5], u8> = LpmTrie::try_from(map("APNS_ALLOW_V4")?)?;
    v4.insert(&Key::new(8 + 8, [0, 17, 0, 0, 0]), 1, 0)?;
    let mut v6: LpmTrie<_, [u8; 17], u8> = LpmTrie::try_from(map("APNS_ALLOW_V6")?)?;
    for prefix in APPLE_V6 {
        let net: ipnet::Ipv6Net = prefix.parse()?;
        let mut key = [0u8; 17];
        key[1..].copy_from_slice(&net.network().octets());
        v6.insert(&Key::new(8 + u32::from(net.prefix_len()), key), 1, 0)?;
    }
    let mut ifaces: HashMap<_, u32, [u32; 4]> = HashMap::try_from(map("APNS_IFACES")?)?;
    ifaces.insert(1, [0, 0x0020_0000, 0x0020_0000, 0], 0)?;
    let program: &mut Xdp = ebpf
        .program_mut("apns_xdp")
        .context("no apns_xdp")?
        .try_into()?;
    program.load().context("loading the layout-2 program")?;
    Ok(ebpf)
}

fn main() -> Result<()> {
    let runs: usize = env_or("RUNS", 11);
    let repeat: u32 = env_or("REPEAT", 1_000_000);
    testrun::pin_current_thread(1)?;
    let old = layout2()?;
    let old_xdp: &Xdp = old.program("apns_xdp").context("no apns_xdp")?.try_into()?;
    let ours = OurProgram::with_policy(&Policy::apple_defaults())?;
    let floor = FloorProgram::load()?;
    let programs: [&Xdp; 3] = [floor.xdp()?, old_xdp, ours.xdp()?];
    let classes = testrun::classes();
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; classes.len()];
    for run in 0..runs {
        for (c, class) in classes.iter().enumerate() {
            for turn in 0..programs.len() {
                let p = (turn + run) % programs.len();
                let (action, ns) = testrun::test_run(programs[p], &class.frame, repeat)?;
                ensure!(
                    action == XDP_PASS,
                    "{}: program {p} returned {action}",
                    class.key
                );
                samples[c][p].push(ns);
            }
        }
    }
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
