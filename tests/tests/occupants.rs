//! Never clobber, always explain: `attach` onto an interface that runs someone else's XDP
//! program (xdp-filter through libxdp, which falls back to netlink here; a plain program
//! attached by `ip link`; the floor program on a bpf_link) refuses in one line naming the program and the way out, and changes
//! nothing: our links, maps and policy, and the other program still attached. Needs root.

use apns_agent::datapath::{occupants::Occupant, Datapath};
use apns_tests::{
    agent::{self, gw_command, gw_ifindex, Pinned, TestPins},
    lab::{Lab, LabOptions, GW_IF_CLIENT, GW_IF_MDM, GW_IF_TRUNK, GW_IF_WAN},
    occupants::{on, FloorOn, IpLinkOn, XdpFilterOn},
};

/// What a refused attach may not change.
#[derive(Debug, PartialEq)]
struct State {
    pinned: Pinned,
    /// Fast-path entries of the interfaces that carry other programs.
    registered: [bool; 3],
}

fn state(lab: &Lab, pins: &TestPins) -> State {
    let datapath = Datapath::open(pins.dir()).unwrap();
    let registered = [GW_IF_CLIENT.name, GW_IF_MDM.name, GW_IF_TRUNK.name].map(|name| {
        let ifindex = gw_ifindex(lab, name).unwrap();
        datapath.interfaces.fastpath(ifindex).unwrap().is_some()
    });
    State {
        pinned: pins.pinned().unwrap(),
        registered,
    }
}

/// Runs `attach IFACE` and returns its one line of complaint.
fn refused(lab: &Lab, pins: &TestPins, interface: &str) -> String {
    let output = agent::fail(&mut gw_command(lab, pins, &["attach", interface])).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(output.stdout.is_empty(), "nothing on stdout");
    stderr.trim_end().to_owned()
}

/// `attach IFACE` is refused with `expected` (given what runs there), and neither our
/// datapath (`before`) nor the program on the interface changed.
fn assert_refused(
    lab: &Lab,
    pins: &TestPins,
    before: &State,
    interface: &str,
    expected: impl Fn(&Occupant) -> String,
) -> Occupant {
    let theirs = only(on(lab, interface).unwrap());
    assert_eq!(refused(lab, pins, interface), expected(&theirs));
    assert_eq!(
        &state(lab, pins),
        before,
        "the refused attach changed the datapath"
    );
    assert_eq!(
        only(on(lab, interface).unwrap()),
        theirs,
        "the program on {interface} was touched"
    );
    theirs
}

fn only(occupants: Vec<Occupant>) -> Occupant {
    assert_eq!(occupants.len(), 1, "{occupants:?}");
    occupants.into_iter().next().unwrap()
}

#[test]
fn attach_refuses_an_interface_that_runs_another_xdp_program_and_changes_nothing() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    agent::succeed(&mut gw_command(&lab, &pins, &["attach", GW_IF_WAN.name])).unwrap();
    let before = state(&lab, &pins);
    let lan0 = GW_IF_CLIENT.name;
    let lan1 = GW_IF_MDM.name;

    {
        let _filter = XdpFilterOn::load(&lab, lan0).unwrap();
        let theirs = assert_refused(&lab, &pins, &before, lan0, |theirs| {
            format!(
                "apns-agent: {lan0} runs XDP program {} ({}, tag {}, attached by netlink in skb mode, not a libxdp dispatcher): detach it first (`xdp-filter unload {lan0}` / `ip link set dev {lan0} xdpgeneric off`), or run the agent on another interface",
                theirs.program_id, theirs.name, theirs.tag
            )
        });
        assert!(theirs.name.starts_with("xdpfilt_"), "{theirs:?}");
        assert_eq!(
            theirs.link_id, None,
            "xdp-filter falls back to netlink here"
        );

        // Where nothing is loaded yet, the refusal comes before a datapath is made.
        let fresh = TestPins::new();
        let line = refused(&lab, &fresh, lan0);
        assert!(line.contains("xdpfilt_"), "{line}");
        assert!(
            !fresh.path().exists(),
            "{} was made",
            fresh.path().display()
        );
    }

    {
        let _floor = FloorOn::attach(&lab, lan1).unwrap();
        assert_refused(&lab, &pins, &before, lan1, |theirs| {
            let link = theirs.link_id.expect("the floor is attached by a bpf_link");
            format!(
                "apns-agent: {lan1} runs XDP program {} (floor_xdp, tag {}, attached by bpf_link {link} in skb mode, not a libxdp dispatcher): its owner holds it through bpf_link {link}: stop that program or unpin the link (`bpftool link show id {link}`), or run the agent on another interface",
                theirs.program_id, theirs.tag
            )
        });
    }

    {
        let lan2 = GW_IF_TRUNK.name;
        let _plain = IpLinkOn::attach(&lab, lan2).unwrap();
        assert_refused(&lab, &pins, &before, lan2, |theirs| {
            format!(
                "apns-agent: {lan2} runs XDP program {} (xdpdump, tag {}, attached by netlink in skb mode, not a libxdp dispatcher): detach it first (`ip link set dev {lan2} xdpgeneric off`), or run the agent on another interface",
                theirs.program_id, theirs.tag
            )
        });
    }

    // With the interfaces free again, attach works, and only then changes something.
    agent::succeed(&mut gw_command(
        &lab,
        &pins,
        &["attach", lan0, lan1, GW_IF_TRUNK.name],
    ))
    .unwrap();
    let after = state(&lab, &pins);
    assert_eq!(after.registered, [true, true, true]);
    assert_eq!(after.pinned.links.len(), 4);
    let ours = only(on(&lab, lan0).unwrap());
    assert_eq!(Some(ours.program_id), after.pinned.program.map(|p| p.id));
}
