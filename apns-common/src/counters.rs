//! The counters: the key every reader sees, the value of one counter, the codes in the key,
//! and how the datapath stores them without a hash lookup.
//!
//! Every packet is counted exactly once, under the key that says what the datapath made of
//! it: `(interface, port, direction, outcome)`. APNs traffic is keyed by its APNs port and
//! direction; a pinhole drop by the pinhole port; everything else by its class alone
//! (port 0, no direction).
//!
//! ## Storage (layout 3)
//!
//! The XDP program never hashes a key. `APNS_COUNTERS` is a per-CPU *array* of
//! [`CounterBlock`]s indexed by [`block_index`]`(interface slot, port slot)`; a block holds
//! one [`CounterValue`] per *cell*, a (direction, outcome) pair numbered by [`cell_of`]. The
//! agent hands out the slots (`APNS_CNT_SLOTS`, a [`CounterSlots`] table): an interface gets
//! its slot when it is attached (the slot is stored in its `APNS_IFACES` entry), a port when a
//! policy first lists it (stored in its port entry in `APNS_TABLES`, the same in both
//! generations).
//! User space turns slots back into ifindexes and ports with the same table and sums the
//! per-CPU values, so every reader still sees [`CounterKey`]s.
//!
//! Nothing is ever dropped for want of a slot:
//! - **overflow**: a packet of an interface without a slot (an ifindex past `APNS_IFACES`,
//!   more attached interfaces than slots, an interface the agent did not attach) is counted
//!   in interface slot [`OVERFLOW_SLOT`]; an APNs packet on a port without a slot (more
//!   ports than slots) in port slot [`OVERFLOW_SLOT`]. Readers report them under ifindex 0
//!   and port 0 respectively (with the packet's real direction and outcome).
//! - **retired**: when the agent needs a slot and none is free, it recycles the slot of an
//!   interface that is no longer attached, or of a port in neither policy generation: it
//!   first adds that slot's counters into [`RETIRED_SLOT`] (which only the agent writes,
//!   so the move races with no packet) and zeroes them. Readers report the retired slot
//!   like the overflow one (ifindex 0, port 0): totals never go down, and a port's or an
//!   interface's counts are never attributed to another.
//!
//! Memory: [`IFACE_SLOTS`] x [`PORT_SLOTS`] blocks of [`CELLS_PER_BLOCK`] x 48 bytes, i.e.
//! [`COUNTER_BYTES_PER_CPU`] (768 KiB) per CPU, preallocated.

/// What the datapath made of a packet. Stored in [`CounterKey::outcome`]; never renumber,
/// keep retired values reserved. Label strings come from [`Outcome::as_str`]; the metrics
/// code in apns-agent must change with this enum.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// APNs traffic, passed.
    Pass = 0,
    /// APNs traffic to a provider port from a source outside the provider list (enforce).
    DropProvider = 1,
    /// TCP to a pinhole port of an address outside the allow-list (enforce).
    DropPinhole = 2,
    /// APNs traffic forwarded by the `redirect` fast path (XDP_REDIRECT), past the stack.
    Fastpath = 3,
    /// Not IPv4 or IPv6 (ARP, LLDP, a third VLAN tag, ...).
    NotIp = 4,
    /// IP traffic that touches no rule (including ICMP, ICMPv6 neighbour discovery, UDP).
    NotApns = 5,
    /// A non-first IP fragment: it carries no L4 header, so it is counted and passed.
    Fragment = 6,
    /// Truncated or inconsistent headers that no receiver would take either (a packet
    /// truncated inside its headers, a TCP header length past the IP payload).
    Malformed = 7,
    /// An inbound connection attempt on an APNs port (a SYN without ACK from the allow-list,
    /// from an APNs port or to one inside), counted and passed (monitor mode). APNs
    /// connections are opened from inside only: Apple never opens one toward a device.
    InboundOpen = 8,
    /// The same attempt, dropped (enforce mode).
    DropInboundOpen = 9,
    /// APNs traffic of the `redirect` fast path whose next hop had no resolved neighbour: the
    /// XDP program handed it to the TC ingress program (XDP metadata), which forwarded it
    /// with `bpf_redirect_neigh` (the kernel resolves the neighbour, queueing the packet
    /// meanwhile). Counted here, by XDP, once; see docs/fastpath.md.
    FastpathTc = 10,
    /// Headers the parser cannot finish that a receiver would still take, so they could hide
    /// an APNs-port packet from the policy: a first fragment that does not hold the whole
    /// TCP header (or, for IPv6, the whole header chain), or an IPv6 header chain longer
    /// than the parser follows. Counted and passed (monitor mode).
    Unfinished = 11,
    /// The same packet, dropped (enforce mode): no legitimate sender splits the headers
    /// (RFC 7112 forbids it for IPv6; RFC 1858 advises dropping tiny fragments).
    DropUnfinished = 12,
}

impl Outcome {
    pub const ALL: [Outcome; 13] = [
        Outcome::Pass,
        Outcome::DropProvider,
        Outcome::DropPinhole,
        Outcome::Fastpath,
        Outcome::NotIp,
        Outcome::NotApns,
        Outcome::Fragment,
        Outcome::Malformed,
        Outcome::InboundOpen,
        Outcome::DropInboundOpen,
        Outcome::FastpathTc,
        Outcome::Unfinished,
        Outcome::DropUnfinished,
    ];

    pub const fn from_u8(code: u8) -> Option<Outcome> {
        match code {
            0 => Some(Outcome::Pass),
            1 => Some(Outcome::DropProvider),
            2 => Some(Outcome::DropPinhole),
            3 => Some(Outcome::Fastpath),
            4 => Some(Outcome::NotIp),
            5 => Some(Outcome::NotApns),
            6 => Some(Outcome::Fragment),
            7 => Some(Outcome::Malformed),
            8 => Some(Outcome::InboundOpen),
            9 => Some(Outcome::DropInboundOpen),
            10 => Some(Outcome::FastpathTc),
            11 => Some(Outcome::Unfinished),
            12 => Some(Outcome::DropUnfinished),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::DropProvider => "drop_provider",
            Outcome::DropPinhole => "drop_pinhole",
            Outcome::Fastpath => "fastpath",
            Outcome::NotIp => "not_ip",
            Outcome::NotApns => "not_apns",
            Outcome::Fragment => "fragment",
            Outcome::Malformed => "malformed",
            Outcome::InboundOpen => "inbound_open",
            Outcome::DropInboundOpen => "drop_inbound_open",
            Outcome::FastpathTc => "fastpath_tc",
            Outcome::Unfinished => "unfinished",
            Outcome::DropUnfinished => "drop_unfinished",
        }
    }

    /// Whether the packet was dropped.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Outcome::DropProvider
                | Outcome::DropPinhole
                | Outcome::DropInboundOpen
                | Outcome::DropUnfinished
        )
    }
}

impl crate::label::Label for Outcome {
    const WHAT: &'static str = "outcome";
    const ALL: &'static [Outcome] = &Outcome::ALL;
    fn as_str(self) -> &'static str {
        Outcome::as_str(self)
    }
}

/// Why the policy dropped a packet: the four drop [`Outcome`]s as one word each (the
/// `reason` label of the policy-drop metrics, `stats`, `replay` and drop events). Never
/// stored: derived from the outcome ([`DropReason::of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// TCP to a pinhole port of an address outside the allow-list (`drop_pinhole`).
    Pinhole,
    /// APNs traffic to a provider port from outside the provider list (`drop_provider`).
    Provider,
    /// An inbound connection attempt on an APNs port (`drop_inbound_open`).
    InboundOpen,
    /// Headers the parser cannot finish, which could hide an APNs-port packet
    /// (`drop_unfinished`).
    Unfinished,
}

impl DropReason {
    /// The reason of a drop outcome; `None` for outcomes that do not drop. Without a
    /// wildcard: a new outcome must say here whether it drops.
    pub const fn of(outcome: Outcome) -> Option<DropReason> {
        match outcome {
            Outcome::DropPinhole => Some(DropReason::Pinhole),
            Outcome::DropProvider => Some(DropReason::Provider),
            Outcome::DropInboundOpen => Some(DropReason::InboundOpen),
            Outcome::DropUnfinished => Some(DropReason::Unfinished),
            Outcome::Pass
            | Outcome::Fastpath
            | Outcome::FastpathTc
            | Outcome::NotIp
            | Outcome::NotApns
            | Outcome::Fragment
            | Outcome::Malformed
            | Outcome::Unfinished
            | Outcome::InboundOpen => None,
        }
    }
}

impl crate::label::Label for DropReason {
    const WHAT: &'static str = "drop reason";
    const ALL: &'static [DropReason] = &[
        DropReason::Pinhole,
        DropReason::Provider,
        DropReason::InboundOpen,
        DropReason::Unfinished,
    ];
    fn as_str(self) -> &'static str {
        match self {
            DropReason::Pinhole => "pinhole",
            DropReason::Provider => "provider",
            DropReason::InboundOpen => "inbound_open",
            DropReason::Unfinished => "unfinished",
        }
    }
}

/// Direction of APNs traffic. Stored in [`CounterKey::direction`]; never renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Not APNs traffic (other classes, pinhole drops).
    None = 0,
    /// Toward Apple: destination in the allow-list, destination port in the port table.
    Outbound = 1,
    /// From Apple: source in the allow-list, source port in the port table (or, for an
    /// inbound connection attempt, the destination port).
    Inbound = 2,
}

impl Direction {
    pub const ALL: [Direction; 3] = [Direction::None, Direction::Outbound, Direction::Inbound];

    pub const fn from_u8(code: u8) -> Option<Direction> {
        match code {
            0 => Some(Direction::None),
            1 => Some(Direction::Outbound),
            2 => Some(Direction::Inbound),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::None => "none",
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

impl crate::label::Label for Direction {
    const WHAT: &'static str = "direction";
    const ALL: &'static [Direction] = &Direction::ALL;
    fn as_str(self) -> &'static str {
        Direction::as_str(self)
    }
}

/// What a counter counts, as every reader sees it (the datapath stores it as slots and a
/// cell, see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// Interface the packet arrived on (`ingress_ifindex`); 0 for interfaces without a
    /// counter slot, and for the counters of recycled interface slots.
    pub ifindex: u32,
    /// APNs port (host byte order); 0 for classes that have no port, and, with a direction or
    /// a drop outcome, for ports without a counter slot and recycled port slots.
    pub port: u16,
    /// A [`Direction`] code.
    pub direction: u8,
    /// An [`Outcome`] code.
    pub outcome: u8,
}
const _: () = assert!(size_of::<CounterKey>() == 8);

/// One counter: a cell of a [`CounterBlock`] (per CPU), or a reader's sum. Plain adds in the
/// kernel: each CPU owns its copy, and XDP runs with preemption off, so no atomics are needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValue {
    pub packets: u64,
    /// Frame bytes from the Ethernet header on (what XDP sees), not IP bytes.
    pub bytes: u64,
    /// TCP segments with SYN and without ACK (connection attempts).
    pub syn: u64,
    /// TCP segments with SYN and ACK (answered attempts).
    pub synack: u64,
    /// TCP segments with RST.
    pub rst: u64,
    /// TCP segments with FIN.
    pub fin: u64,
}
const _: () = assert!(size_of::<CounterValue>() == 48);

impl CounterValue {
    /// Adds `other` field by field (user space sums per-CPU values with it).
    pub fn add(&mut self, other: &CounterValue) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.syn += other.syn;
        self.synack += other.synack;
        self.rst += other.rst;
        self.fin += other.fin;
    }

    /// What was added since `earlier` (counters only grow; a field that went down reads 0).
    pub fn since(&self, earlier: &CounterValue) -> CounterValue {
        CounterValue {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            syn: self.syn.saturating_sub(earlier.syn),
            synack: self.synack.saturating_sub(earlier.synack),
            rst: self.rst.saturating_sub(earlier.rst),
            fin: self.fin.saturating_sub(earlier.fin),
        }
    }
}

/// Interface slots of the counter array: slot [`OVERFLOW_SLOT`], the assignable slots
/// `1..=`[`LAST_ASSIGNABLE_SLOT`], and [`RETIRED_SLOT`].
pub const IFACE_SLOTS: u32 = 32;
/// Port slots of every interface's counters, laid out like the interface slots. Slot
/// [`OVERFLOW_SLOT`] also holds the packets that have no port (the classes other than APNs).
pub const PORT_SLOTS: u32 = 32;
/// Where the datapath counts what has no slot of its own (see the module docs).
pub const OVERFLOW_SLOT: u32 = 0;
/// Where the agent moves the counters of a recycled slot; the datapath never writes it.
pub const RETIRED_SLOT: u32 = 31;
/// The highest slot the agent assigns (the same bound for interfaces and ports).
pub const LAST_ASSIGNABLE_SLOT: u32 = RETIRED_SLOT - 1;
const _: () = assert!(RETIRED_SLOT == IFACE_SLOTS - 1 && RETIRED_SLOT == PORT_SLOTS - 1);

/// Cells of one [`CounterBlock`]: [`CELLS`] uses the first ones, the rest are room for
/// outcomes to come (adding one is a new [`Outcome`] code and a row in [`CELLS`], within
/// this bound no layout change).
pub const CELLS_PER_BLOCK: usize = 16;

/// The (direction, outcome) pair each cell of a block counts, by cell number. Never reorder:
/// append. Outcomes without a port ([`Outcome::NotIp`] ...) only occur in port slot
/// [`OVERFLOW_SLOT`], the others in any port slot. Every cell is named now: the two cells
/// the unfinished outcomes took were the last unused ones.
pub const CELLS: [(Direction, Outcome); 16] = [
    (Direction::None, Outcome::NotIp),
    (Direction::None, Outcome::NotApns),
    (Direction::None, Outcome::Fragment),
    (Direction::None, Outcome::Malformed),
    (Direction::Outbound, Outcome::Pass),
    (Direction::Outbound, Outcome::DropProvider),
    (Direction::Outbound, Outcome::Fastpath),
    (Direction::Inbound, Outcome::Pass),
    (Direction::Inbound, Outcome::Fastpath),
    (Direction::None, Outcome::DropPinhole),
    (Direction::Inbound, Outcome::InboundOpen),
    (Direction::Inbound, Outcome::DropInboundOpen),
    (Direction::Outbound, Outcome::FastpathTc),
    (Direction::Inbound, Outcome::FastpathTc),
    (Direction::None, Outcome::Unfinished),
    (Direction::None, Outcome::DropUnfinished),
];
const _: () = assert!(CELLS.len() <= CELLS_PER_BLOCK);

/// The cell counting `(direction, outcome)`. A pair the datapath never produces (say an
/// inbound pinhole drop) lands in the malformed cell ([`INCONSISTENT_CELL`]), so even a bug
/// is counted and visible.
#[inline(always)]
pub const fn cell_of(direction: Direction, outcome: Outcome) -> usize {
    match (direction, outcome) {
        (Direction::None, Outcome::NotIp) => 0,
        (Direction::None, Outcome::NotApns) => 1,
        (Direction::None, Outcome::Fragment) => 2,
        (Direction::None, Outcome::Malformed) => 3,
        (Direction::Outbound, Outcome::Pass) => 4,
        (Direction::Outbound, Outcome::DropProvider) => 5,
        (Direction::Outbound, Outcome::Fastpath) => 6,
        (Direction::Inbound, Outcome::Pass) => 7,
        (Direction::Inbound, Outcome::Fastpath) => 8,
        (Direction::None, Outcome::DropPinhole) => 9,
        (Direction::Inbound, Outcome::InboundOpen) => 10,
        (Direction::Inbound, Outcome::DropInboundOpen) => 11,
        (Direction::Outbound, Outcome::FastpathTc) => 12,
        (Direction::Inbound, Outcome::FastpathTc) => 13,
        (Direction::None, Outcome::Unfinished) => 14,
        (Direction::None, Outcome::DropUnfinished) => 15,
        _ => INCONSISTENT_CELL,
    }
}

/// The cell of pairs that should not happen (see [`cell_of`]): the malformed one.
pub const INCONSISTENT_CELL: usize = 3;

/// The (direction, outcome) pair of `cell`, for readers. A cell past [`CELLS`] (none today)
/// reads as `(None, Malformed)`.
pub const fn cell_key(cell: usize) -> (Direction, Outcome) {
    if cell < CELLS.len() {
        CELLS[cell]
    } else {
        (Direction::None, Outcome::Malformed)
    }
}

/// Value of `APNS_COUNTERS`, one per CPU: the cells of one (interface slot, port slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterBlock {
    pub cells: [CounterValue; CELLS_PER_BLOCK],
}
const _: () = assert!(size_of::<CounterBlock>() == 48 * CELLS_PER_BLOCK);

impl CounterBlock {
    /// Adds `other` cell by cell.
    pub fn add(&mut self, other: &CounterBlock) {
        for (mine, theirs) in self.cells.iter_mut().zip(&other.cells) {
            mine.add(theirs);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.cells
            .iter()
            .all(|cell| *cell == CounterValue::default())
    }
}

/// Index of the block of (`iface_slot`, `port_slot`) in `APNS_COUNTERS`.
#[inline(always)]
pub const fn block_index(iface_slot: u32, port_slot: u32) -> u32 {
    iface_slot * PORT_SLOTS + port_slot
}

/// Entries of `APNS_COUNTERS`.
pub const COUNTER_BLOCKS: u32 = IFACE_SLOTS * PORT_SLOTS;
/// Memory of `APNS_COUNTERS` per CPU.
pub const COUNTER_BYTES_PER_CPU: usize = COUNTER_BLOCKS as usize * size_of::<CounterBlock>();
const _: () = assert!(COUNTER_BYTES_PER_CPU == 768 * 1024);

/// A slot as the datapath may use it: anything beyond the assignable range (a corrupt map)
/// reads as [`OVERFLOW_SLOT`], so the datapath never writes the retired slot.
#[inline(always)]
pub const fn usable_slot(slot: u32) -> u32 {
    if slot > LAST_ASSIGNABLE_SLOT {
        OVERFLOW_SLOT
    } else {
        slot
    }
}

/// Value of `APNS_CNT_SLOTS` (one entry): which interface and port each slot belongs to.
/// Written by the agent only, under the pin directory's lock; read by every counter reader.
/// The XDP program never reads it (the slots it needs are in `APNS_IFACES` and
/// `APNS_TABLES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CounterSlots {
    /// A sequence lock: odd while the agent is moving counters between slots, bumped on
    /// every change. A reader that sees it odd, or changed by the end of its read, reads
    /// again.
    pub sequence: u32,
    pub _pad: u32,
    /// Interface slot → ifindex; 0 = free. A slot stays with its ifindex after a detach (so
    /// its counters stay readable and a re-attach continues them) until it is recycled.
    pub ifindex: [u32; IFACE_SLOTS as usize],
    /// Port slot → port (host byte order); 0 = free. Kept when the port leaves the policy,
    /// until recycled.
    pub port: [u16; PORT_SLOTS as usize],
}
const _: () = assert!(size_of::<CounterSlots>() == 8 + 4 * 32 + 2 * 32);

impl Default for CounterSlots {
    fn default() -> Self {
        CounterSlots {
            sequence: 0,
            _pad: 0,
            ifindex: [0; IFACE_SLOTS as usize],
            port: [0; PORT_SLOTS as usize],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::CounterKey {}
    unsafe impl aya::Pod for super::CounterValue {}
    unsafe impl aya::Pod for super::CounterBlock {}
    unsafe impl aya::Pod for super::CounterSlots {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_cell_of_agree() {
        for (cell, &(direction, outcome)) in CELLS.iter().enumerate() {
            assert_eq!(
                cell_of(direction, outcome),
                cell,
                "{direction:?} {outcome:?}"
            );
            assert_eq!(cell_key(cell), (direction, outcome));
        }
        assert_eq!(
            cell_of(Direction::Inbound, Outcome::DropPinhole),
            INCONSISTENT_CELL
        );
        assert_eq!(
            CELLS[INCONSISTENT_CELL],
            (Direction::None, Outcome::Malformed)
        );
    }

    #[test]
    fn a_drop_reason_is_its_drop_outcome_without_drop() {
        use crate::label::Label as _;
        for outcome in Outcome::ALL {
            let reason = DropReason::of(outcome);
            assert_eq!(reason.is_some(), outcome.is_drop(), "{outcome:?}");
            if let Some(reason) = reason {
                assert_eq!(format!("drop_{}", reason.as_str()), outcome.as_str());
            }
        }
    }

    #[test]
    fn every_outcome_has_a_cell() {
        for outcome in Outcome::ALL {
            assert!(
                CELLS.iter().any(|&(_, o)| o == outcome),
                "{outcome:?} has no counter cell"
            );
        }
    }

    #[test]
    fn usable_slots_never_reach_the_retired_slot() {
        assert_eq!(usable_slot(RETIRED_SLOT), OVERFLOW_SLOT);
        assert_eq!(usable_slot(u32::MAX), OVERFLOW_SLOT);
        assert_eq!(usable_slot(LAST_ASSIGNABLE_SLOT), LAST_ASSIGNABLE_SLOT);
        assert_eq!(
            block_index(IFACE_SLOTS - 1, PORT_SLOTS - 1),
            COUNTER_BLOCKS - 1
        );
    }
}
