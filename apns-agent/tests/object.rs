//! The embedded object agrees with apns-common (no kernel needed), and the kernel's verifier
//! accepts it (needs root: skipped, saying so, where doctor says the agent cannot load).

/// The tests crate's skip of root-only tests (this crate cannot depend on that one).
#[path = "../../tests/src/root_only.rs"]
mod root_only;

use apns_agent::datapath::{
    features::Features,
    object::{self, EbpfLog, COMPONENT_OBJECT, OBJECT},
};
use apns_common::programs::{TC as TC_PROGRAM, TC_CONNS, XDP as XDP_PROGRAM, XDP_COMPONENT};
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

/// The libxdp component's object declares only maps of the datapath, each exactly as the
/// main object does (the agent loads it with the datapath's pinned maps), and its one program
/// is XDP code (loaded as an extension of a dispatcher's slot, a BPF_PROG_TYPE_EXT, by the
/// agent).
#[test]
fn component_object_shares_the_datapaths_maps() {
    let main = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
    let component = aya_obj::Object::parse(COMPONENT_OBJECT).expect("the component object parses");
    assert!(!component.maps.is_empty());
    for (name, map) in &component.maps {
        let ours = main
            .maps
            .get(name)
            .unwrap_or_else(|| panic!("the component's map {name} is not the datapath's"));
        assert_eq!(
            (
                map.map_type(),
                map.key_size(),
                map.value_size(),
                map.max_entries()
            ),
            (
                ours.map_type(),
                ours.key_size(),
                ours.value_size(),
                ours.max_entries()
            ),
            "map {name}: (type, key size, value size, max entries)"
        );
    }
    let program = component
        .programs
        .get(XDP_COMPONENT)
        .unwrap_or_else(|| panic!("program {XDP_COMPONENT} missing from the component object"));
    assert!(matches!(program.section, ProgramSection::Xdp { .. }));
    assert_eq!(component.programs.len(), 1);
}

/// Every program loads with every combination of the optional kernel features this kernel
/// has (`apns_common::features`): the load-time constant switches code off, and the verifier
/// must accept each way through (the kernel matrix runs this on 5.10, 6.1, 6.12 and the
/// host's kernel). The libxdp component is checked here as a plain XDP program; as the
/// extension it is on a dispatcher, the multiprog lab tests load it in the kernel matrix.
#[test]
fn verifier_accepts_every_program_in_every_feature_combination() {
    if root_only::skip() {
        return;
    }
    let have = Features::probe().unwrap().program_bits();
    type Get = fn(&mut aya::Ebpf) -> anyhow::Result<&mut dyn Loadable>;
    let programs: [(&str, Get); 3] = [
        (XDP_PROGRAM, |ebpf| Ok(object::xdp_program(ebpf)?)),
        (TC_PROGRAM, |ebpf| Ok(object::tc_program(ebpf)?)),
        (TC_CONNS, |ebpf| Ok(object::tc_conns_program(ebpf)?)),
    ];
    for features in (0..=have).filter(|bits| bits & !have == 0) {
        let constants = object::Constants { log: 0, features };
        let mut ebpf = object::loader(&constants).load(OBJECT).unwrap();
        let mut component = object::loader(&constants).load(COMPONENT_OBJECT).unwrap();
        for (name, get) in programs {
            let program = get(&mut ebpf).unwrap();
            report(name, features, program);
        }
        let program: &mut aya::programs::Xdp = component
            .program_mut(XDP_COMPONENT)
            .unwrap()
            .try_into()
            .unwrap();
        report(XDP_COMPONENT, features, program);
    }
}

/// Loads `program` (`name`, with the `features` bits) and prints its instruction counts.
fn report(name: &str, features: u32, program: &mut dyn Loadable) {
    {
        let (translated, verified) = program
            .load_and_count()
            .unwrap_or_else(|err| panic!("loading {name} with features {features:#x}: {err:?}"));
        // The baseline the closing notes quote: translated (xlated) instructions, and the
        // verifier's processed-instruction count.
        println!(
                "features {features:#x}: {name}: {translated} translated instructions, {verified} instructions processed by the verifier"
            );
    }
}

/// The XDP and TC programs, loaded and measured alike.
trait Loadable {
    /// Loads (verifies) the program: its translated instructions and the verifier's count.
    fn load_and_count(&mut self) -> anyhow::Result<(u32, u32)>;
}

macro_rules! loadable {
    ($program:ty) => {
        impl Loadable for $program {
            fn load_and_count(&mut self) -> anyhow::Result<(u32, u32)> {
                self.load()?;
                let info = self.info()?;
                Ok((
                    info.size_translated().unwrap_or_default() / 8,
                    info.verified_instruction_count().unwrap_or_default(),
                ))
            }
        }
    };
}
loadable!(aya::programs::Xdp);
loadable!(aya::programs::SchedClassifier);

/// Log calls switched off by the log level cost nothing, and switched on they still load:
/// the datapath and the libxdp component (as a plain XDP program) with debug logging, the
/// heaviest way through for the verifier (Linux 5.10 and 6.1 come near their 1,000,000
/// instructions there).
#[test]
fn disabled_log_calls_cost_no_instruction() {
    if root_only::skip() {
        return;
    }
    let translated = |log: EbpfLog, bytes: &[u8], name: &str| {
        let constants = object::Constants::for_this_kernel(log).unwrap();
        let mut ebpf = object::loader(&constants).load(bytes).unwrap();
        let program: &mut aya::programs::Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        program
            .load()
            .unwrap_or_else(|error| panic!("{name} with log level {log:?}: {error:#}"));
        program
            .info()
            .unwrap()
            .size_translated()
            .unwrap_or_default()
            / 8
    };
    for (bytes, name) in [(OBJECT, XDP_PROGRAM), (COMPONENT_OBJECT, XDP_COMPONENT)] {
        let off = translated(EbpfLog::Off, bytes, name);
        let debug = translated(EbpfLog::Debug, bytes, name);
        println!("{name}: {off} translated instructions with logging off, {debug} with debug");
        assert!(
            off < debug,
            "the verifier kept disabled log calls in {name} ({off} >= {debug})"
        );
    }
}
