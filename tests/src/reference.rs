//! The user-space reference classifier: what `docs/classification.md` says the XDP program
//! must make of a frame, computed independently of `apns-ebpf`.
//!
//! Headers are parsed with `etherparse`'s slice types over plain byte slices. Where the
//! contract is stricter or laxer than etherparse's own rules, the checks are spelled out here:
//! IPv4 total length against the frame, IPv6 payload length (0 included) bounding what
//! follows, extension headers in any order and position, a fixed walk depth.
//!
//! The differential test feeds the same frames to the kernel program through
//! `BPF_PROG_TEST_RUN` and compares its counter key and verdict with [`classify`].

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use apns_common::counters::{Direction, Outcome};
use apns_common::policy::role;
use etherparse::{
    EtherType, Ethernet2HeaderSlice, IpAuthHeaderSlice, IpNumber, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeaderSlice,
    TcpHeaderSlice, UdpHeaderSlice,
};

/// VLAN tags parsed before the ethertype must be IP (contract §1).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the packet is too deep to judge (contract §3).
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Policy input, independent of the agent's own types.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Enforce mode; `false` is monitor mode.
    pub enforce: bool,
    /// Role bits ([`apns_common::policy::role`]) by port; a missing port has no role.
    pub ports: BTreeMap<u16, u8>,
    pub allow_v4: Vec<(Ipv4Addr, u8)>,
    pub allow_v6: Vec<(Ipv6Addr, u8)>,
    pub providers_v4: Vec<(Ipv4Addr, u8)>,
    pub providers_v6: Vec<(Ipv6Addr, u8)>,
}

impl Policy {
    /// Apple's published APNs ranges and ports, no provider list, monitor mode.
    pub fn apple_defaults() -> Policy {
        let apns_pinhole = role::APNS | role::PINHOLE;
        let provider = role::APNS | role::PINHOLE | role::PROVIDER;
        Policy {
            enforce: false,
            ports: BTreeMap::from([
                (5223, apns_pinhole),
                (443, role::APNS),
                (2197, provider),
                (2195, provider),
                (2196, provider),
            ]),
            allow_v4: vec![(Ipv4Addr::new(17, 0, 0, 0), 8)],
            allow_v6: vec![
                (Ipv6Addr::new(0x2620, 0x149, 0xa44, 0, 0, 0, 0, 0), 48),
                (Ipv6Addr::new(0x2403, 0x300, 0xa42, 0, 0, 0, 0, 0), 48),
                (Ipv6Addr::new(0x2403, 0x300, 0xa51, 0, 0, 0, 0, 0), 48),
                (Ipv6Addr::new(0x2a01, 0xb740, 0xa42, 0, 0, 0, 0, 0), 48),
            ],
            providers_v4: Vec::new(),
            providers_v6: Vec::new(),
        }
    }

    fn roles(&self, port: u16) -> u8 {
        self.ports.get(&port).copied().unwrap_or(0)
    }

    fn allowed(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => covered_v4(&self.allow_v4, a),
            IpAddr::V6(a) => covered_v6(&self.allow_v6, a),
        }
    }

    fn provider(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => covered_v4(&self.providers_v4, a),
            IpAddr::V6(a) => covered_v6(&self.providers_v6, a),
        }
    }

    /// The kernel's `provider_prefixes > 0`: one count over both families.
    fn has_providers(&self) -> bool {
        !self.providers_v4.is_empty() || !self.providers_v6.is_empty()
    }
}

/// Whether any prefix of `list` covers `addr`. Membership is all the contract needs: the
/// kernel's longest-prefix match finds an entry exactly when some entry covers the address.
fn covered_v4(list: &[(Ipv4Addr, u8)], addr: Ipv4Addr) -> bool {
    list.iter().any(|&(net, len)| {
        let mask = prefix_mask(len, 32) as u32;
        let net = u32::from(net);
        assert_eq!(net & !mask, 0, "host bits set in {net:#x}/{len}");
        u32::from(addr) & mask == net
    })
}

fn covered_v6(list: &[(Ipv6Addr, u8)], addr: Ipv6Addr) -> bool {
    list.iter().any(|&(net, len)| {
        let mask = prefix_mask(len, 128);
        let net = u128::from(net);
        assert_eq!(net & !mask, 0, "host bits set in {net:#x}/{len}");
        u128::from(addr) & mask == net
    })
}

/// The `len` leading bits of a `width`-bit address, right-aligned in a u128.
fn prefix_mask(len: u8, width: u32) -> u128 {
    let len = u32::from(len);
    assert!(len <= width, "prefix length {len} exceeds {width}");
    let all = u128::MAX >> (128 - width);
    // A /0 shifts every bit out, which `<<` would reject as an overflow at width 128.
    all & u128::MAX.checked_shl(width - len).unwrap_or(0)
}

/// What the datapath must record for a frame: its counter key (less the interface) and, via
/// [`Expected::drops`], its verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub outcome: Outcome,
    pub direction: Direction,
    pub port: u16,
    /// TCP flag counts, 0 or 1 each; only `pass` and the drops of TCP count them.
    pub syn: u64,
    pub synack: u64,
    pub rst: u64,
    pub fin: u64,
}

impl Expected {
    /// Whether the XDP program returns `XDP_DROP`.
    pub fn drops(&self) -> bool {
        self.outcome.is_drop()
    }

    /// A packet settled before the policy step, or one no rule touched: port 0, no direction,
    /// no flag counts.
    fn unmatched(outcome: Outcome) -> Expected {
        Expected {
            outcome,
            direction: Direction::None,
            port: 0,
            syn: 0,
            synack: 0,
            rst: 0,
            fin: 0,
        }
    }

    /// A TCP segment a rule matched: flags are counted.
    fn matched(outcome: Outcome, direction: Direction, port: u16, seg: &TcpSegment) -> Expected {
        let count = |flag: bool| u64::from(flag);
        Expected {
            outcome,
            direction,
            port,
            syn: count(seg.syn && !seg.ack),
            synack: count(seg.syn && seg.ack),
            rst: count(seg.rst),
            fin: count(seg.fin),
        }
    }
}

/// Classifies one frame (Ethernet header first) under `policy`, per `docs/classification.md`.
pub fn classify(frame: &[u8], policy: &Policy) -> Expected {
    match tcp_segment(frame) {
        Ok(seg) => apply_policy(&seg, policy),
        // Contract §4, unfinished headers: dropped in enforce mode, whatever the addresses.
        Err(Outcome::Unfinished) if policy.enforce => Expected::unmatched(Outcome::DropUnfinished),
        Err(outcome) => Expected::unmatched(outcome),
    }
}

/// Headers that end before the IP payload (or the fragment) does: `unfinished` in a first
/// fragment, whose receiver reads on in the next one; `malformed` anywhere else.
fn cut_short(first_fragment: bool) -> Outcome {
    if first_fragment {
        Outcome::Unfinished
    } else {
        Outcome::Malformed
    }
}

/// The fields of a well-formed TCP segment the policy looks at.
#[derive(Debug)]
struct TcpSegment {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
    rst: bool,
    fin: bool,
}

/// Parsing either reaches a TCP segment or settles the outcome on the way (`Err`): not IP,
/// not APNs, a fragment, malformed, unfinished.
type Parsed<T> = Result<T, Outcome>;

/// Contract §1: Ethernet, at most two VLAN tags, then IPv4 or IPv6.
fn tcp_segment(frame: &[u8]) -> Parsed<TcpSegment> {
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Outcome::Malformed)?;
    let mut ether_type = eth.ether_type();
    let mut rest = &frame[eth.slice().len()..];
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != EtherType::VLAN_TAGGED_FRAME && ether_type != EtherType::PROVIDER_BRIDGING
        {
            break;
        }
        let tag = SingleVlanHeaderSlice::from_slice(rest).map_err(|_| Outcome::Malformed)?;
        ether_type = tag.ether_type();
        rest = &rest[tag.slice().len()..];
    }
    // A third tag lands here as an unknown ethertype, like ARP or an 802.3 length.
    match ether_type {
        EtherType::IPV4 => ipv4(rest),
        EtherType::IPV6 => ipv6(rest),
        _ => Err(Outcome::NotIp),
    }
}

/// Contract §2. `packet` is everything after the L2 headers, Ethernet padding included.
fn ipv4(packet: &[u8]) -> Parsed<TcpSegment> {
    // Checks fewer than 20 bytes, version, IHL below 5 and the IHL*4 header being present.
    let header = Ipv4HeaderSlice::from_slice(packet).map_err(|_| Outcome::Malformed)?;
    // etherparse leaves the total length alone; the contract bounds it on both sides.
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    if total_len < header_len || total_len > packet.len() {
        return Err(Outcome::Malformed);
    }
    // A later fragment carries no L4 header; the MF flag does not matter.
    if u16::from(header.fragments_offset()) != 0 {
        return Err(Outcome::Fragment);
    }
    // The payload ends at the total length, so trailing Ethernet padding never counts as L4.
    let payload = &packet[header_len..total_len];
    let addrs = (
        header.source_addr().into(),
        header.destination_addr().into(),
    );
    transport(header.protocol(), payload, addrs, header.more_fragments())
}

/// Contract §3: the fixed header, then up to [`MAX_IPV6_EXT_HEADERS`] extension headers.
fn ipv6(packet: &[u8]) -> Parsed<TcpSegment> {
    // Checks fewer than 40 bytes and the version.
    let header = Ipv6HeaderSlice::from_slice(packet).map_err(|_| Outcome::Malformed)?;
    let fixed_len = header.slice().len();
    // Payload length 0 (a jumbogram's) gets no special case: the payload is empty, so any
    // extension or L4 header after it does not fit.
    let end = fixed_len + usize::from(header.payload_length());
    let mut payload = packet.get(fixed_len..end).ok_or(Outcome::Malformed)?;
    let mut next = header.next_header();
    // Set by a fragment header of a first fragment (offset 0, M set): what follows it may
    // continue in the next fragment.
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        // Each arm parses one header inside the remaining payload and returns its length.
        // etherparse's chain parser (Ipv6Extensions) would insist on hop-by-hop coming first;
        // the contract walks any order, so each header is parsed on its own.
        let len = match next {
            IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS => {
                let ext = Ipv6RawExtHeaderSlice::from_slice(payload)
                    .map_err(|_| cut_short(first_fragment))?;
                next = ext.next_header();
                ext.slice().len()
            }
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                let frag = Ipv6FragmentHeaderSlice::from_slice(payload)
                    .map_err(|_| cut_short(first_fragment))?;
                if u16::from(frag.fragment_offset()) != 0 {
                    return Err(Outcome::Fragment);
                }
                first_fragment = frag.more_fragments();
                next = frag.next_header();
                frag.slice().len()
            }
            IpNumber::AUTHENTICATION_HEADER => {
                // A length byte of 0 is malformed wherever it is; any other error is a header
                // cut short.
                if payload.len() >= 2 && payload[1] == 0 {
                    return Err(Outcome::Malformed);
                }
                let auth = IpAuthHeaderSlice::from_slice(payload)
                    .map_err(|_| cut_short(first_fragment))?;
                next = auth.next_header();
                auth.slice().len()
            }
            _ => break,
        };
        payload = &payload[len..];
    }
    // Too deep to follow, but a receiver would.
    if is_walked_ext_header(next) {
        return Err(Outcome::Unfinished);
    }
    let addrs = (
        header.source_addr().into(),
        header.destination_addr().into(),
    );
    transport(next, payload, addrs, first_fragment)
}

/// The five extension headers of the contract's table.
fn is_walked_ext_header(next: IpNumber) -> bool {
    matches!(
        next,
        IpNumber::IPV6_HEADER_HOP_BY_HOP
            | IpNumber::IPV6_ROUTE_HEADER
            | IpNumber::IPV6_DESTINATION_OPTIONS
            | IpNumber::IPV6_FRAGMENTATION_HEADER
            | IpNumber::AUTHENTICATION_HEADER
    )
}

/// Contract §4. `payload` is the IP payload after any extension headers: the L4 header must
/// fit in it (or the packet is a `first_fragment` cut short: unfinished).
fn transport(
    protocol: IpNumber,
    payload: &[u8],
    (src, dst): (IpAddr, IpAddr),
    first_fragment: bool,
) -> Parsed<TcpSegment> {
    match protocol {
        IpNumber::TCP => {
            // 20 bytes first; then a data offset below 5 is malformed wherever it is, and
            // data offset * 4 bytes must be present.
            if payload.len() < 20 {
                return Err(cut_short(first_fragment));
            }
            if payload[12] >> 4 < 5 {
                return Err(Outcome::Malformed);
            }
            let tcp = TcpHeaderSlice::from_slice(payload).map_err(|_| cut_short(first_fragment))?;
            Ok(TcpSegment {
                src,
                dst,
                sport: tcp.source_port(),
                dport: tcp.destination_port(),
                syn: tcp.syn(),
                ack: tcp.ack(),
                rst: tcp.rst(),
                fin: tcp.fin(),
            })
        }
        IpNumber::UDP => {
            // Only the 8 bytes matter; the length field is not checked.
            UdpHeaderSlice::from_slice(payload).map_err(|_| Outcome::Malformed)?;
            Err(Outcome::NotApns)
        }
        _ => Err(Outcome::NotApns),
    }
}

/// Contract §5, the rules in order.
fn apply_policy(seg: &TcpSegment, policy: &Policy) -> Expected {
    let dst_roles = policy.roles(seg.dport);
    if dst_roles != 0 && policy.allowed(seg.dst) {
        let provider_violation = policy.enforce
            && dst_roles & role::PROVIDER != 0
            && policy.has_providers()
            && !policy.provider(seg.src);
        let outcome = if provider_violation {
            Outcome::DropProvider
        } else {
            Outcome::Pass
        };
        return Expected::matched(outcome, Direction::Outbound, seg.dport, seg);
    }
    // Contract §5 step 2: from Apple. A SYN without ACK is an inbound connection attempt,
    // and then an APNs destination port counts too.
    let opening = seg.syn && !seg.ack;
    let from_apns_port = policy.roles(seg.sport) != 0;
    if (from_apns_port || (opening && dst_roles != 0)) && policy.allowed(seg.src) {
        let port = if from_apns_port { seg.sport } else { seg.dport };
        let outcome = match (opening, policy.enforce) {
            (false, _) => Outcome::Pass,
            (true, true) => Outcome::DropInboundOpen,
            (true, false) => Outcome::InboundOpen,
        };
        return Expected::matched(outcome, Direction::Inbound, port, seg);
    }
    if policy.enforce && dst_roles & role::PINHOLE != 0 {
        return Expected::matched(Outcome::DropPinhole, Direction::None, seg.dport, seg);
    }
    Expected::unmatched(Outcome::NotApns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{
        arp_request, ethernet_frame, icmpv6_neighbour_solicitation, tcp_v4, tcp_v6, udp_v4, udp_v6,
        Addrs, Ext, Frame, Transport, ACK, FIN, PSH, RST, SYN, TPID_8021AD, TPID_8021Q,
    };

    const APPLE_V4: Ipv4Addr = Ipv4Addr::new(17, 57, 146, 20);
    const APPLE_V6: Ipv6Addr = Ipv6Addr::new(0x2620, 0x149, 0xa44, 0x10, 0, 0, 0, 0x20);
    const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10);
    const OTHER_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 7);
    const PROVIDER_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
    const PROVIDER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 5);

    fn monitor() -> Policy {
        Policy::apple_defaults()
    }

    fn enforce() -> Policy {
        Policy {
            enforce: true,
            ..Policy::apple_defaults()
        }
    }

    /// Enforce mode with one IPv4 provider prefix: `provider_prefixes > 0` for both families.
    fn enforce_with_provider() -> Policy {
        Policy {
            providers_v4: vec![(Ipv4Addr::new(203, 0, 113, 0), 24)],
            ..enforce()
        }
    }

    fn outcome(frame: &Frame, policy: &Policy) -> Outcome {
        classify(&frame.bytes(), policy).outcome
    }

    fn expected(outcome: Outcome, direction: Direction, port: u16) -> Expected {
        Expected {
            direction,
            port,
            ..Expected::unmatched(outcome)
        }
    }

    // ---- Policy rules ----

    #[test]
    fn outbound_to_apple_passes() {
        for policy in [monitor(), enforce(), enforce_with_provider()] {
            let frame = tcp_v4(CLIENT_V4, APPLE_V4, 50000, 5223, SYN).bytes();
            let want = Expected {
                syn: 1,
                ..expected(Outcome::Pass, Direction::Outbound, 5223)
            };
            assert_eq!(classify(&frame, &policy), want);
            let frame = tcp_v6(CLIENT_V6, APPLE_V6, 50000, 443, ACK | PSH).bytes();
            let want = expected(Outcome::Pass, Direction::Outbound, 443);
            assert_eq!(classify(&frame, &policy), want);
        }
    }

    #[test]
    fn provider_rule_drops_only_non_providers_in_enforce_with_a_list() {
        let from_other = tcp_v4(CLIENT_V4, APPLE_V4, 40000, 2197, SYN);
        let from_provider = tcp_v4(PROVIDER_V4, APPLE_V4, 40000, 2197, SYN);
        let want_drop = Expected {
            syn: 1,
            ..expected(Outcome::DropProvider, Direction::Outbound, 2197)
        };
        let got = classify(&from_other.bytes(), &enforce_with_provider());
        assert_eq!(got, want_drop);
        assert!(got.drops());
        let pass = Outcome::Pass;
        assert_eq!(outcome(&from_provider, &enforce_with_provider()), pass);
        // No provider list, or monitor mode: the rule is off.
        assert_eq!(outcome(&from_other, &enforce()), pass);
        let monitored = Policy {
            enforce: false,
            ..enforce_with_provider()
        };
        assert_eq!(outcome(&from_other, &monitored), pass);
        // 5223 and 443 have no provider bit.
        for port in [5223, 443] {
            let frame = tcp_v4(CLIENT_V4, APPLE_V4, 1, port, SYN);
            assert_eq!(outcome(&frame, &enforce_with_provider()), pass);
        }
    }

    #[test]
    fn provider_count_spans_both_families() {
        // Only an IPv4 provider prefix: an IPv6 source can never be a provider, yet the rule
        // is on because provider_prefixes counts both families.
        let frame = tcp_v6(CLIENT_V6, APPLE_V6, 40000, 2195, ACK);
        assert_eq!(
            outcome(&frame, &enforce_with_provider()),
            Outcome::DropProvider
        );
        let v6_list = Policy {
            providers_v6: vec![(Ipv6Addr::new(0x2001, 0xdb8, 0x99, 0, 0, 0, 0, 0), 48)],
            ..enforce()
        };
        let from_provider = tcp_v6(PROVIDER_V6, APPLE_V6, 40000, 2195, ACK);
        assert_eq!(outcome(&from_provider, &v6_list), Outcome::Pass);
        assert_eq!(outcome(&frame, &v6_list), Outcome::DropProvider);
    }

    #[test]
    fn inbound_from_apple_passes_and_never_drops() {
        for policy in [monitor(), enforce_with_provider()] {
            let frame = tcp_v4(APPLE_V4, CLIENT_V4, 5223, 50000, SYN | ACK).bytes();
            let want = Expected {
                synack: 1,
                ..expected(Outcome::Pass, Direction::Inbound, 5223)
            };
            assert_eq!(classify(&frame, &policy), want);
            // A provider port in the source position is inbound traffic, not a violation.
            let frame = tcp_v6(APPLE_V6, CLIENT_V6, 2197, 50000, FIN | ACK).bytes();
            let want = Expected {
                fin: 1,
                ..expected(Outcome::Pass, Direction::Inbound, 2197)
            };
            assert_eq!(classify(&frame, &policy), want);
        }
    }

    #[test]
    fn inbound_connection_attempts_are_counted_apart_and_dropped_in_enforce() {
        // From Apple's APNs port, or to an APNs port inside: both are attempts to open a
        // connection inbound, which APNs never makes.
        for (frame, port) in [
            (tcp_v4(APPLE_V4, CLIENT_V4, 5223, 40000, SYN), 5223),
            (tcp_v6(APPLE_V6, CLIENT_V6, 443, 40000, SYN), 443),
            (tcp_v4(APPLE_V4, CLIENT_V4, 40000, 5223, SYN), 5223),
            (tcp_v6(APPLE_V6, CLIENT_V6, 40000, 2197, SYN | PSH), 2197),
        ] {
            let want = |outcome| Expected {
                syn: 1,
                ..expected(outcome, Direction::Inbound, port)
            };
            let got = classify(&frame.bytes(), &enforce());
            assert_eq!(got, want(Outcome::DropInboundOpen), "{frame:?}");
            assert!(got.drops());
            let got = classify(&frame.bytes(), &monitor());
            assert_eq!(got, want(Outcome::InboundOpen), "{frame:?}");
            assert!(!got.drops());
        }
        // Replies are untouched: SYN-ACK, ACK, RST from Apple's APNs port pass.
        for flags in [SYN | ACK, ACK, RST, FIN | ACK] {
            let frame = tcp_v4(APPLE_V4, CLIENT_V4, 5223, 40000, flags);
            assert_eq!(
                outcome(&frame, &enforce()),
                Outcome::Pass,
                "flags {flags:#x}"
            );
        }
        // Not from Apple: a SYN to an inside APNs port is no business of this rule.
        let frame = tcp_v4(OTHER_V4, CLIENT_V4, 40000, 443, SYN);
        assert_eq!(outcome(&frame, &enforce()), Outcome::NotApns);
        // Neither port an APNs port: not APNs at all.
        let frame = tcp_v4(APPLE_V4, CLIENT_V4, 40000, 80, SYN);
        assert_eq!(outcome(&frame, &enforce()), Outcome::NotApns);
        // A SYN toward Apple is an ordinary outbound open, even from Apple's own range.
        let frame = tcp_v4(Ipv4Addr::new(17, 1, 1, 1), APPLE_V4, 5223, 5223, SYN);
        assert_eq!(outcome(&frame, &enforce()), Outcome::Pass);
    }

    #[test]
    fn outbound_wins_over_inbound() {
        // Apple to Apple, APNs ports on both sides: rule 1 matches first.
        let frame = tcp_v4(Ipv4Addr::new(17, 1, 1, 1), APPLE_V4, 443, 5223, ACK);
        let got = classify(&frame.bytes(), &enforce());
        assert_eq!(got, expected(Outcome::Pass, Direction::Outbound, 5223));
    }

    #[test]
    fn pinhole_drops_only_in_enforce() {
        let frame = tcp_v4(CLIENT_V4, OTHER_V4, 50000, 5223, SYN | FIN | RST);
        let want = Expected {
            syn: 1,
            rst: 1,
            fin: 1,
            ..expected(Outcome::DropPinhole, Direction::None, 5223)
        };
        let got = classify(&frame.bytes(), &enforce());
        assert_eq!(got, want);
        assert!(got.drops());
        assert_eq!(
            classify(&frame.bytes(), &monitor()),
            Expected::unmatched(Outcome::NotApns)
        );
        let frame = tcp_v6(CLIENT_V6, OTHER_V6, 50000, 2196, SYN);
        assert_eq!(outcome(&frame, &enforce()), Outcome::DropPinhole);
        // 443 has no pinhole bit.
        let frame = tcp_v4(CLIENT_V4, OTHER_V4, 50000, 443, SYN);
        assert_eq!(outcome(&frame, &enforce()), Outcome::NotApns);
    }

    #[test]
    fn inbound_wins_over_pinhole() {
        // From Apple's 5223 to some outside host's 5223: rule 2 before rule 3.
        let frame = tcp_v4(APPLE_V4, OTHER_V4, 5223, 5223, ACK);
        let got = classify(&frame.bytes(), &enforce());
        assert_eq!(got, expected(Outcome::Pass, Direction::Inbound, 5223));
    }

    #[test]
    fn unrelated_tcp_is_not_apns_without_flag_counts() {
        let frame = tcp_v4(CLIENT_V4, OTHER_V4, 50000, 80, SYN);
        assert_eq!(
            classify(&frame.bytes(), &enforce()),
            Expected::unmatched(Outcome::NotApns)
        );
        // Allowed address, but a port without roles.
        let frame = tcp_v6(CLIENT_V6, APPLE_V6, 50000, 80, SYN);
        assert_eq!(outcome(&frame, &enforce()), Outcome::NotApns);
    }

    #[test]
    fn flags_count_syn_and_synack_apart() {
        let cases = [
            (SYN, (1, 0, 0, 0)),
            (SYN | ACK, (0, 1, 0, 0)),
            (RST | ACK, (0, 0, 1, 0)),
            (FIN | PSH | ACK, (0, 0, 0, 1)),
            (SYN | ACK | RST | FIN, (0, 1, 1, 1)),
            (0, (0, 0, 0, 0)),
        ];
        for (flags, (syn, synack, rst, fin)) in cases {
            let got = classify(
                &tcp_v4(CLIENT_V4, APPLE_V4, 1, 443, flags).bytes(),
                &monitor(),
            );
            assert_eq!(
                (got.syn, got.synack, got.rst, got.fin),
                (syn, synack, rst, fin),
                "{flags:#x}"
            );
        }
    }

    #[test]
    fn prefix_boundaries() {
        let policy = Policy {
            allow_v4: vec![(Ipv4Addr::new(10, 1, 2, 0), 23), (Ipv4Addr::UNSPECIFIED, 0)],
            ..Policy::default()
        };
        assert!(policy.allowed(Ipv4Addr::new(1, 2, 3, 4).into()));
        let policy = Policy {
            allow_v4: vec![(Ipv4Addr::new(10, 1, 2, 0), 23)],
            allow_v6: vec![(APPLE_V6, 128)],
            ..Policy::default()
        };
        assert!(policy.allowed(Ipv4Addr::new(10, 1, 3, 255).into()));
        assert!(!policy.allowed(Ipv4Addr::new(10, 1, 4, 0).into()));
        assert!(!policy.allowed(Ipv4Addr::new(10, 1, 1, 255).into()));
        assert!(policy.allowed(APPLE_V6.into()));
        assert!(!policy.allowed(Ipv6Addr::from(u128::from(APPLE_V6) + 1).into()));
        assert!(!policy.allowed(Ipv4Addr::new(17, 0, 0, 1).into()));
        let apple = Policy::apple_defaults();
        assert!(apple.allowed(Ipv6Addr::new(0x2403, 0x300, 0xa51, 0xffff, 1, 2, 3, 4).into()));
        assert!(!apple.allowed(Ipv6Addr::new(0x2403, 0x300, 0xa43, 0, 0, 0, 0, 1).into()));
        assert!(apple.allowed(Ipv4Addr::new(17, 255, 255, 255).into()));
        assert!(!apple.allowed(Ipv4Addr::new(18, 0, 0, 0).into()));
    }

    // ---- Layer 2 ----

    #[test]
    fn vlan_tags() {
        let base = tcp_v4(CLIENT_V4, APPLE_V4, 50000, 5223, SYN);
        for tpids in [
            vec![],
            vec![TPID_8021Q],
            vec![TPID_8021AD],
            vec![TPID_8021AD, TPID_8021Q],
            vec![TPID_8021Q, TPID_8021Q],
        ] {
            let frame = Frame {
                vlans: tpids.clone(),
                ..base.clone()
            };
            assert_eq!(outcome(&frame, &monitor()), Outcome::Pass, "{tpids:x?}");
        }
        for tpids in [[TPID_8021Q; 3], [TPID_8021AD, TPID_8021Q, TPID_8021Q]] {
            let frame = Frame {
                vlans: tpids.to_vec(),
                ..base.clone()
            };
            assert_eq!(outcome(&frame, &monitor()), Outcome::NotIp);
        }
        // 0x9100 is not one of the two TPIDs the contract parses.
        let frame = Frame {
            vlans: vec![0x9100],
            ..base.clone()
        };
        assert_eq!(outcome(&frame, &monitor()), Outcome::NotIp);
    }

    #[test]
    fn vlan_tag_cut_short_is_malformed_but_a_third_is_not_ip() {
        for tags in 1..=2 {
            let full = ethernet_frame(&vec![TPID_8021Q; tags], 0x0800, &[]);
            for cut in 1..4 {
                let frame = &full[..full.len() - cut];
                assert_eq!(classify(frame, &monitor()).outcome, Outcome::Malformed);
            }
        }
        // The third tag is never read, so its absence does not matter.
        let frame = ethernet_frame(&[TPID_8021Q; 2], TPID_8021Q, &[]);
        assert_eq!(classify(&frame, &monitor()).outcome, Outcome::NotIp);
    }

    #[test]
    fn non_ip_ethertypes() {
        assert_eq!(
            classify(&arp_request(), &enforce()),
            Expected::unmatched(Outcome::NotIp)
        );
        for ether_type in [0x88cc, 0x0026, 0x05dc, 0x8847] {
            let frame = ethernet_frame(&[TPID_8021Q], ether_type, &[0; 46]);
            assert_eq!(
                classify(&frame, &enforce()).outcome,
                Outcome::NotIp,
                "{ether_type:#x}"
            );
        }
    }

    #[test]
    fn short_frames_are_malformed() {
        for len in 0..14 {
            assert_eq!(
                classify(&arp_request()[..len], &monitor()).outcome,
                Outcome::Malformed
            );
        }
    }

    // ---- IPv4 ----

    #[test]
    fn ipv4_options_are_skipped() {
        for words in [1, 2, 10] {
            let frame =
                tcp_v4(CLIENT_V4, APPLE_V4, 50000, 443, SYN).ipv4_options(vec![1; 4 * words]);
            assert_eq!(outcome(&frame, &monitor()), Outcome::Pass);
        }
    }

    #[test]
    fn ipv4_header_checks() {
        let built = tcp_v4(CLIENT_V4, APPLE_V4, 50000, 443, SYN).build();
        let ip = built.l3;
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = built.bytes.clone();
            edit(&mut bytes);
            classify(&bytes, &monitor()).outcome
        };
        let set_total = |total: u16| {
            move |b: &mut Vec<u8>| b[ip + 2..ip + 4].copy_from_slice(&total.to_be_bytes())
        };
        let frame_ip_len = (built.bytes.len() - ip) as u16;
        assert_eq!(with(&|_| {}), Outcome::Pass);
        // Version 6 under ethertype 0x0800.
        assert_eq!(with(&|b| b[ip] = 0x65), Outcome::Malformed);
        for ihl in 0..5 {
            assert_eq!(
                with(&|b| b[ip] = 0x40 | ihl),
                Outcome::Malformed,
                "ihl {ihl}"
            );
        }
        // IHL 15 claims a 60-byte header; only 40 bytes are there.
        assert_eq!(with(&|b| b[ip] = 0x4f), Outcome::Malformed);
        assert_eq!(with(&set_total(frame_ip_len + 1)), Outcome::Malformed);
        assert_eq!(with(&set_total(19)), Outcome::Malformed);
        assert_eq!(with(&set_total(0)), Outcome::Malformed);
        // Total length 20..40 leaves less than a TCP header as payload.
        assert_eq!(with(&set_total(20)), Outcome::Malformed);
        assert_eq!(with(&set_total(39)), Outcome::Malformed);
        assert_eq!(with(&set_total(40)), Outcome::Pass);
        // The checksum is not checked.
        assert_eq!(with(&|b| b[ip + 10] ^= 0xff), Outcome::Pass);
        // Fewer than 20 bytes after L2.
        assert_eq!(
            classify(&built.bytes[..ip + 19], &monitor()).outcome,
            Outcome::Malformed
        );
        // IHL*4 larger than the bytes present.
        let short = tcp_v4(CLIENT_V4, APPLE_V4, 1, 443, 0)
            .ipv4_options(vec![1; 40])
            .build();
        assert_eq!(
            classify(&short.bytes[..ip + 59], &monitor()).outcome,
            Outcome::Malformed
        );
    }

    #[test]
    fn ethernet_padding_is_not_l4() {
        // A 20-byte IPv4 packet with "TCP" in the padding after its total length.
        let mut bytes = tcp_v4(CLIENT_V4, APPLE_V4, 50000, 443, SYN).bytes();
        let ip = 14;
        bytes[ip + 2..ip + 4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(classify(&bytes, &monitor()).outcome, Outcome::Malformed);
        // Padding after a complete packet changes nothing.
        let mut padded = tcp_v4(CLIENT_V4, APPLE_V4, 50000, 443, SYN).bytes();
        padded.resize(100, 0);
        assert_eq!(classify(&padded, &monitor()).outcome, Outcome::Pass);
        let mut padded = tcp_v6(CLIENT_V6, APPLE_V6, 50000, 443, SYN).bytes();
        padded.resize(200, 0xee);
        assert_eq!(classify(&padded, &monitor()).outcome, Outcome::Pass);
        // A TCP header split by the IPv4 total length: data offset 6, total length covers 20.
        let frame = tcp_v4(CLIENT_V4, APPLE_V4, 1, 443, 0)
            .tcp_option_words(1)
            .payload(8);
        let mut bytes = frame.bytes();
        bytes[ip + 2..ip + 4].copy_from_slice(&(20u16 + 20).to_be_bytes());
        assert_eq!(classify(&bytes, &monitor()).outcome, Outcome::Malformed);
    }

    #[test]
    fn ipv4_fragments() {
        let base = tcp_v4(CLIENT_V4, OTHER_V4, 50000, 5223, SYN);
        // First fragment: classified by its TCP header (here a pinhole drop).
        assert_eq!(
            outcome(&base.clone().fragment(0, true), &enforce()),
            Outcome::DropPinhole
        );
        for (offset, more) in [(1, true), (1, false), (185, true), (0x1fff, false)] {
            let frame = base.clone().fragment(offset, more);
            assert_eq!(
                classify(&frame.bytes(), &enforce()),
                Expected::unmatched(Outcome::Fragment)
            );
        }
        // A later fragment whose payload is too short for any L4 header is still a fragment.
        let frame = Frame {
            transport: Transport::Other(6),
            ..base.clone().fragment(3, false)
        };
        assert_eq!(outcome(&frame, &enforce()), Outcome::Fragment);
        // Header checks come first: a bad total length beats the fragment offset.
        let built = base.fragment(3, true).build();
        let mut bytes = built.bytes.clone();
        bytes[14 + 2..14 + 4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(classify(&bytes, &enforce()).outcome, Outcome::Malformed);
    }

    /// The tiny-fragment evasion (RFC 1858, RFC 7112): a pinhole SYN whose first fragment
    /// ends inside its TCP header, or (IPv6) inside the chain after the fragment header.
    #[test]
    fn first_fragments_cut_inside_their_headers_are_unfinished() {
        for base in [
            tcp_v4(CLIENT_V4, OTHER_V4, 50000, 5223, SYN),
            tcp_v6(CLIENT_V6, OTHER_V6, 50000, 5223, SYN),
        ] {
            let whole = base.clone().fragment(0, true).build();
            for tcp_bytes in [0, 4, 8, 16, 19] {
                let bytes = crate::packets::cut_at(&whole, whole.l4 + tcp_bytes);
                assert_eq!(
                    classify(&bytes, &monitor()).outcome,
                    Outcome::Unfinished,
                    "{tcp_bytes} bytes of TCP"
                );
                assert_eq!(
                    classify(&bytes, &enforce()),
                    Expected::unmatched(Outcome::DropUnfinished)
                );
            }
            // The same cut without more fragments to come is truncated, no receiver takes it.
            let alone = base.clone().fragment(0, false).build();
            let bytes = crate::packets::cut_at(&alone, alone.l4 + 8);
            assert_eq!(classify(&bytes, &enforce()).outcome, Outcome::Malformed);
            // The whole header in the first fragment: judged (a pinhole drop).
            assert_eq!(
                classify(&whole.bytes, &enforce()).outcome,
                Outcome::DropPinhole
            );
        }
        // IPv6: the chain after the fragment header cut short.
        let frame = tcp_v6(CLIENT_V6, OTHER_V6, 50000, 5223, SYN)
            .fragment(0, true)
            .ext(Ext::DestinationOptions(1));
        let built = frame.build();
        let bytes = crate::packets::cut_at(&built, built.l3 + 40 + 8 + 4);
        assert_eq!(
            classify(&bytes, &enforce()).outcome,
            Outcome::DropUnfinished
        );
        // A TCP data offset below 5 is malformed in a first fragment too.
        let built = tcp_v4(CLIENT_V4, OTHER_V4, 50000, 5223, SYN)
            .fragment(0, true)
            .build();
        let mut bytes = built.bytes.clone();
        bytes[built.l4 + 12] = 0x40;
        assert_eq!(classify(&bytes, &enforce()).outcome, Outcome::Malformed);
    }

    #[test]
    fn ipv4_other_protocols_are_not_apns() {
        let icmp = Frame::new(Addrs::V4(CLIENT_V4, APPLE_V4), Transport::Echo);
        assert_eq!(
            classify(&icmp.bytes(), &enforce()),
            Expected::unmatched(Outcome::NotApns)
        );
        let udp = udp_v4(CLIENT_V4, APPLE_V4, 50000, 5223);
        assert_eq!(
            classify(&udp.bytes(), &enforce()),
            Expected::unmatched(Outcome::NotApns)
        );
        let udp = udp_v4(CLIENT_V4, OTHER_V4, 50000, 5223);
        assert_eq!(outcome(&udp, &enforce()), Outcome::NotApns);
        // Seven bytes of UDP header do not fit.
        let mut bytes = udp.bytes();
        bytes.truncate(bytes.len() - 1);
        bytes[14 + 2..14 + 4].copy_from_slice(&27u16.to_be_bytes());
        assert_eq!(classify(&bytes, &enforce()).outcome, Outcome::Malformed);
    }

    // ---- IPv6 ----

    fn all_ext_kinds() -> [Ext; 5] {
        [
            Ext::HopByHop(0),
            Ext::Routing(1),
            Ext::DestinationOptions(2),
            Ext::Fragment {
                offset: 0,
                more: false,
            },
            Ext::Auth(4),
        ]
    }

    #[test]
    fn ipv6_extension_chains_up_to_six_then_unfinished() {
        let kinds = all_ext_kinds();
        for depth in 0..=7 {
            // Every rotation of the kinds, so hop-by-hop also sits in later positions.
            for start in 0..kinds.len() {
                let exts: Vec<Ext> = (0..depth)
                    .map(|i| kinds[(start + i) % kinds.len()].clone())
                    .collect();
                let frame = Frame {
                    ipv6_exts: exts.clone(),
                    ..tcp_v6(CLIENT_V6, APPLE_V6, 50000, 5223, SYN)
                };
                let (monitored, enforced) = if depth <= MAX_IPV6_EXT_HEADERS {
                    (Outcome::Pass, Outcome::Pass)
                } else {
                    (Outcome::Unfinished, Outcome::DropUnfinished)
                };
                assert_eq!(outcome(&frame, &monitor()), monitored, "{exts:?}");
                assert_eq!(outcome(&frame, &enforce()), enforced, "{exts:?}");
            }
        }
        // A seventh header is too deep even if it would have made the packet a fragment.
        let mut exts = vec![Ext::DestinationOptions(0); 6];
        exts.push(Ext::Fragment {
            offset: 8,
            more: true,
        });
        let frame = Frame {
            ipv6_exts: exts,
            ..tcp_v6(CLIENT_V6, APPLE_V6, 1, 443, 0)
        };
        assert_eq!(outcome(&frame, &monitor()), Outcome::Unfinished);
        // Six headers then ICMPv6: not APNs.
        let frame = Frame {
            ipv6_exts: vec![Ext::HopByHop(0); 6],
            ..icmpv6_neighbour_solicitation()
        };
        assert_eq!(outcome(&frame, &monitor()), Outcome::NotApns);
    }

    #[test]
    fn ipv6_extension_header_lengths() {
        let base = tcp_v6(CLIENT_V6, APPLE_V6, 50000, 443, SYN);
        let with_ext = |ext: Ext| Frame {
            ipv6_exts: vec![ext],
            ..base.clone()
        };
        for len in [0, 1, 7, 30] {
            for ext in [
                Ext::HopByHop(len),
                Ext::Routing(len),
                Ext::DestinationOptions(len),
            ] {
                assert_eq!(outcome(&with_ext(ext), &monitor()), Outcome::Pass);
            }
        }
        // AH lengths are in 4-byte units and need not be a multiple of 8 bytes here.
        for len in [1, 2, 3, 11] {
            assert_eq!(
                outcome(&with_ext(Ext::Auth(len)), &monitor()),
                Outcome::Pass
            );
        }
        assert_eq!(
            outcome(&with_ext(Ext::Auth(0)), &monitor()),
            Outcome::Malformed
        );
        // An extension header longer than the payload length, though inside the frame.
        let built = with_ext(Ext::DestinationOptions(0)).build();
        let ext = built.l3 + 40;
        let mut bytes = built.bytes.clone();
        let payload_len = (bytes.len() - ext) as u8;
        bytes[ext + 1] = payload_len / 8;
        assert_eq!(classify(&bytes, &monitor()).outcome, Outcome::Malformed);
        // Also with the frame padded so the header fits in the frame but not the payload.
        bytes.resize(bytes.len() + 64, 0);
        assert_eq!(classify(&bytes, &monitor()).outcome, Outcome::Malformed);
    }

    #[test]
    fn ipv6_header_checks() {
        let built = tcp_v6(CLIENT_V6, APPLE_V6, 50000, 443, SYN).build();
        let ip = built.l3;
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = built.bytes.clone();
            edit(&mut bytes);
            classify(&bytes, &monitor()).outcome
        };
        let set_payload_len =
            |len: u16| move |b: &mut Vec<u8>| b[ip + 4..ip + 6].copy_from_slice(&len.to_be_bytes());
        let tcp_len = (built.bytes.len() - ip - 40) as u16;
        assert_eq!(with(&|_| {}), Outcome::Pass);
        assert_eq!(with(&|b| b[ip] = 0x45), Outcome::Malformed);
        assert_eq!(with(&set_payload_len(tcp_len + 1)), Outcome::Malformed);
        assert_eq!(with(&set_payload_len(19)), Outcome::Malformed);
        assert_eq!(with(&set_payload_len(20)), Outcome::Pass);
        // Payload length 0 (jumbogram): nothing fits after the fixed header...
        assert_eq!(with(&set_payload_len(0)), Outcome::Malformed);
        // ... but a next header that needs no parsing is still judged.
        for next in [58, 59, 50] {
            let got = with(&|b| {
                set_payload_len(0)(b);
                b[ip + 6] = next;
            });
            assert_eq!(got, Outcome::NotApns, "next header {next}");
        }
        let jumbo_hbh = with(&|b| {
            set_payload_len(0)(b);
            b[ip + 6] = 0;
        });
        assert_eq!(jumbo_hbh, Outcome::Malformed);
        assert_eq!(
            classify(&built.bytes[..ip + 39], &monitor()).outcome,
            Outcome::Malformed
        );
    }

    #[test]
    fn ipv6_fragments() {
        let base = tcp_v6(CLIENT_V6, OTHER_V6, 50000, 5223, SYN);
        // First and atomic fragments continue the walk.
        for more in [true, false] {
            assert_eq!(
                outcome(&base.clone().fragment(0, more), &enforce()),
                Outcome::DropPinhole
            );
        }
        for (offset, more) in [(1, true), (1, false), (0x1fff, true)] {
            let frame = base.clone().fragment(offset, more);
            assert_eq!(
                classify(&frame.bytes(), &enforce()),
                Expected::unmatched(Outcome::Fragment)
            );
        }
        // Nothing after a later fragment's header is read, not even a broken AH.
        let frame = Frame {
            ipv6_exts: vec![
                Ext::HopByHop(0),
                Ext::Fragment {
                    offset: 2,
                    more: true,
                },
                Ext::Auth(0),
            ],
            ..base.clone()
        };
        assert_eq!(outcome(&frame, &enforce()), Outcome::Fragment);
        // A fragment header cut short by the payload length.
        let built = base.clone().fragment(5, true).build();
        let ip = built.l3;
        let mut bytes = built.bytes.clone();
        bytes[ip + 4..ip + 6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(classify(&bytes, &enforce()).outcome, Outcome::Malformed);
    }

    #[test]
    fn icmpv6_and_udp_over_ipv6_are_not_apns() {
        let nd = icmpv6_neighbour_solicitation();
        assert_eq!(
            classify(&nd.bytes(), &enforce()),
            Expected::unmatched(Outcome::NotApns)
        );
        let udp = udp_v6(CLIENT_V6, APPLE_V6, 50000, 5223);
        assert_eq!(outcome(&udp, &enforce()), Outcome::NotApns);
    }

    // ---- Layer 4 ----

    #[test]
    fn tcp_data_offset() {
        for (family, built) in [
            (
                "v4",
                tcp_v4(CLIENT_V4, APPLE_V4, 1, 443, SYN)
                    .tcp_option_words(2)
                    .build(),
            ),
            (
                "v6",
                tcp_v6(CLIENT_V6, APPLE_V6, 1, 443, SYN)
                    .tcp_option_words(2)
                    .build(),
            ),
        ] {
            let tcp = built.l4;
            let with_offset = |doff: u8| {
                let mut bytes = built.bytes.clone();
                bytes[tcp + 12] = doff << 4;
                classify(&bytes, &monitor()).outcome
            };
            for doff in 0..5 {
                assert_eq!(
                    with_offset(doff),
                    Outcome::Malformed,
                    "{family} doff {doff}"
                );
            }
            for doff in 5..=7 {
                assert_eq!(with_offset(doff), Outcome::Pass, "{family} doff {doff}");
            }
            // 8 words = 32 bytes, but only 28 are in the IP payload.
            assert_eq!(with_offset(8), Outcome::Malformed, "{family}");
            // Padding does not help: the TCP header must fit in the IP payload.
            let mut padded = built.bytes.clone();
            padded[tcp + 12] = 15 << 4;
            padded.resize(200, 0);
            assert_eq!(classify(&padded, &monitor()).outcome, Outcome::Malformed);
        }
    }

    #[test]
    fn every_truncation_is_malformed() {
        // With no padding, cutting a frame anywhere past the Ethernet header leaves some
        // header or an IP length pointing past the end.
        let frames = [
            tcp_v4(CLIENT_V4, APPLE_V4, 1, 5223, SYN)
                .vlan(TPID_8021AD)
                .vlan(TPID_8021Q)
                .ipv4_options(vec![1; 8])
                .tcp_option_words(3)
                .payload(5),
            tcp_v6(CLIENT_V6, APPLE_V6, 1, 5223, SYN)
                .vlan(TPID_8021Q)
                .ext(Ext::HopByHop(1))
                .ext(Ext::Auth(3))
                .fragment(0, true)
                .payload(3),
            udp_v6(CLIENT_V6, APPLE_V6, 1, 2).payload(0),
            icmpv6_neighbour_solicitation(),
        ];
        for frame in frames {
            let built = frame.build();
            let full = classify(&built.bytes, &monitor()).outcome;
            assert_ne!(full, Outcome::Malformed);
            // The header boundaries first, so a failure names the most telling cut.
            let len = built.bytes.len();
            let boundaries = built.boundaries.iter().copied();
            for cut in boundaries.chain(14..len).filter(|&cut| cut < len) {
                let got = classify(&built.bytes[..cut], &monitor()).outcome;
                assert_eq!(got, Outcome::Malformed, "{frame:?} cut at {cut}");
            }
        }
    }
}
