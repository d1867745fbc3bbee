//! The embedded object agrees with apns-common (no kernel needed), and the kernel's verifier
//! accepts it.

use apns_agent::datapath::object::{self, EbpfLog, OBJECT};
use apns_common::programs::{TC as TC_PROGRAM, TC_CONNS, XDP as XDP_PROGRAM};
use aya_obj::ProgramSection;

#[test]
fn object_maps_match_the_shared_layout() {
    let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
    for expected in apns_common::maps::ALL {
        let map = object
            .maps
            .get(expected.name)
            .unwrap_or_else(|| panic!("map {} missing from the object", expected.name));
        assert_eq!(
            (
                map.map_type(),
                map.key_size(),
                map.value_size(),
                map.max_entries()
            ),
            (
                expected.map_type,
                expected.key_size,
                expected.value_size,
                expected.max_entries
            ),
            "map {}: (type, key size, value size, max entries)",
            expected.name
        );
    }
    assert_eq!(
        object.maps.len(),
        apns_common::maps::ALL.len() + apns_common::maps::UNPINNED.len(),
        "the object has maps apns-common does not describe: {:?}",
        object.maps.keys().collect::<Vec<_>>()
    );
    let section = |name: &str| {
        &object
            .programs
            .get(name)
            .unwrap_or_else(|| panic!("program {name} missing from the object"))
            .section
    };
    assert!(
        matches!(section(XDP_PROGRAM), ProgramSection::Xdp { .. }),
        "{XDP_PROGRAM} is not an XDP program"
    );
    for tc in [TC_PROGRAM, TC_CONNS] {
        assert!(
            matches!(section(tc), ProgramSection::SchedClassifier),
            "{tc} is not a TC classifier"
        );
    }
}

#[test]
fn verifier_accepts_the_program() {
    let mut ebpf = object::load_unpinned().unwrap_or_else(|err| panic!("{err:?}"));
    let info = object::xdp_program(&mut ebpf).unwrap().info().unwrap();
    // The baseline the closing notes quote: translated (xlated) instructions are 8 bytes each;
    // verified_insns is the verifier's processed-instruction count.
    println!(
        "{XDP_PROGRAM}: tag {:016x}, {} translated instructions, {} instructions processed by the verifier",
        info.tag(),
        info.size_translated().unwrap_or_default() / 8,
        info.verified_instruction_count().unwrap_or_default()
    );
    // The TC programs too: the connection table's egress half parses and judges like XDP.
    type Get = fn(&mut aya::Ebpf) -> anyhow::Result<&mut aya::programs::SchedClassifier>;
    let programs: [(&str, Get); 2] = [
        (TC_PROGRAM, object::tc_program),
        (TC_CONNS, object::tc_conns_program),
    ];
    for (name, get) in programs {
        let program = get(&mut ebpf).unwrap();
        program
            .load()
            .unwrap_or_else(|err| panic!("loading {name}: {err:?}"));
        let info = program.info().unwrap();
        println!(
            "{name}: {} translated instructions, {} instructions processed by the verifier",
            info.size_translated().unwrap_or_default() / 8,
            info.verified_instruction_count().unwrap_or_default()
        );
    }
}

#[test]
fn disabled_log_calls_cost_no_instruction() {
    let translated = |log: EbpfLog| {
        let constants = object::Constants::for_this_kernel(log).unwrap();
        let mut ebpf = object::loader(&constants).load(OBJECT).unwrap();
        let program = object::xdp_program(&mut ebpf).unwrap();
        program.load().unwrap();
        program
            .info()
            .unwrap()
            .size_translated()
            .unwrap_or_default()
            / 8
    };
    let (off, debug) = (translated(EbpfLog::Off), translated(EbpfLog::Debug));
    println!("{XDP_PROGRAM}: {off} translated instructions with logging off, {debug} with debug");
    assert!(
        off < debug,
        "the verifier kept disabled log calls ({off} >= {debug})"
    );
}
