//! Policy as the datapath sees it: two generations of (mode, ports, allow-list, providers)
//! and one switch, [`crate::maps::ACTIVE`], that selects the generation in force.
//!
//! The agent writes a whole new policy into the inactive generation, then flips the switch,
//! so every packet is judged by one complete policy, never a half-written one.

/// Number of policy generations kept side by side.
pub const GENERATIONS: u32 = 2;

/// [`PolicyConfig::mode`] values. Never renumber.
pub mod mode {
    /// Classify and count; every packet passes.
    pub const MONITOR: u32 = 0;
    /// Drop pinhole and provider violations and inbound connection attempts on APNs ports.
    pub const ENFORCE: u32 = 1;
}

/// The policy mode of a generation: [`mode`]'s codes as a type.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Classify and count; every packet passes.
    #[default]
    Monitor = mode::MONITOR,
    /// Drop pinhole and provider violations and inbound connection attempts on APNs ports.
    Enforce = mode::ENFORCE,
}

impl Mode {
    pub const fn code(self) -> u32 {
        self as u32
    }

    pub const fn from_code(code: u32) -> Option<Mode> {
        match code {
            mode::MONITOR => Some(Mode::Monitor),
            mode::ENFORCE => Some(Mode::Enforce),
            _ => None,
        }
    }
}

impl crate::label::Label for Mode {
    const WHAT: &'static str = "policy mode";
    const ALL: &'static [Mode] = &[Mode::Monitor, Mode::Enforce];
    fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

/// A port's entry in [`GenerationTables::ports`]: its roles in one generation and its counter
/// slot (`crate::counters`), which the agent keeps the same in both generations so that a
/// port's counters do not move when the policy changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEntry {
    /// [`role`] bits; 0 means the port is not in this generation's table.
    pub roles: u8,
    /// Counter slot, 1 to `crate::counters::LAST_ASSIGNABLE_SLOT`; 0 (the overflow slot)
    /// when every slot is taken.
    pub slot: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<PortEntry>() == 4);
const _: () = assert!(crate::counters::LAST_ASSIGNABLE_SLOT <= u8::MAX as u32);

/// Role bits stored in [`PortEntry::roles`]. A port with no bit set is not in the table.
/// Never renumber.
pub mod role {
    /// Traffic to or from Apple on this port is counted as APNs.
    pub const APNS: u8 = 1 << 0;
    /// The port exists for APNs only: in enforce mode, TCP to this port toward an address
    /// outside the allow-list is dropped.
    pub const PINHOLE: u8 = 1 << 1;
    /// Provider (MDM server) port: in enforce mode, once the provider list is non-empty,
    /// traffic to Apple on this port from a source outside that list is dropped.
    pub const PROVIDER: u8 = 1 << 2;
    /// All bits defined so far; anything else in a pinned map is corruption.
    pub const ALL: u8 = APNS | PINHOLE | PROVIDER;
}

/// One port role: [`role`]'s bits as a type (a port's roles are a set of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Apns,
    Pinhole,
    Provider,
}

impl Role {
    pub const fn bit(self) -> u8 {
        match self {
            Role::Apns => role::APNS,
            Role::Pinhole => role::PINHOLE,
            Role::Provider => role::PROVIDER,
        }
    }

    /// The roles whose bits are set in `bits`, in [`Label::ALL`](crate::label::Label::ALL)
    /// order.
    pub fn of(bits: u8) -> impl Iterator<Item = Role> {
        <Role as crate::label::Label>::ALL
            .iter()
            .copied()
            .filter(move |role| bits & role.bit() != 0)
    }
}

impl crate::label::Label for Role {
    const WHAT: &'static str = "port role";
    const ALL: &'static [Role] = &[Role::Apns, Role::Pinhole, Role::Provider];
    fn as_str(self) -> &'static str {
        match self {
            Role::Apns => "apns",
            Role::Pinhole => "pinhole",
            Role::Provider => "provider",
        }
    }
}

/// Most ports one policy generation can hold in its port table.
pub const MAX_PORTS: usize = 64;

/// [`PolicyConfig::port_count`] of a generation the agent is rewriting.
pub const PORT_LIST_DIRTY: u32 = u32::MAX;

/// One generation's settings (value of [`crate::maps::POLICY`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// A [`mode`] value.
    pub mode: u32,
    /// Number of provider prefixes (both families) in this generation. Zero means "no
    /// provider list", which disables the provider rule.
    pub provider_prefixes: u32,
    /// How many entries of `ports` are used, or [`PORT_LIST_DIRTY`] while the agent rewrites
    /// this generation (a generation found so was left half-written: it is never read back
    /// as a policy).
    pub port_count: u32,
    pub _pad: u32,
    /// The ports (host byte order) with roles in this generation's port table, and their
    /// roles. The XDP program never reads them: they let the agent read a generation's policy
    /// back without reading the whole table.
    pub ports: [u16; MAX_PORTS],
    pub roles: [u8; MAX_PORTS],
}
const _: () = assert!(size_of::<PolicyConfig>() == 16 + 3 * MAX_PORTS);

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            mode: mode::MONITOR,
            provider_prefixes: 0,
            port_count: 0,
            _pad: 0,
            ports: [0; MAX_PORTS],
            roles: [0; MAX_PORTS],
        }
    }
}

/// Bits of an LPM key spent on the generation byte that prefixes every address.
pub const GENERATION_PREFIX_BITS: u32 = 8;

/// LPM-trie key data for IPv4 (`aya::maps::lpm_trie::Key<PrefixV4>`): the generation, then
/// the address in network byte order. The key's prefix length is
/// `GENERATION_PREFIX_BITS + prefix length of the address`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrefixV4 {
    pub generation: u8,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<PrefixV4>() == 5);

/// LPM-trie key data for IPv6, laid out like [`PrefixV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrefixV6 {
    pub generation: u8,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<PrefixV6>() == 17);

/// Port numbers, and so entries of a port table.
pub const PORT_NUMBERS: usize = 1 << 16;

/// Value of [`crate::maps::TABLES`], one per generation: every table the XDP program reads
/// for a TCP packet, so that one array lookup serves both ports and the address prefilter.
/// Written whole by the agent (inactive generation only); about 352 KiB.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GenerationTables {
    /// Indexed by port (host byte order).
    pub ports: [PortEntry; PORT_NUMBERS],
    /// The address prefilter, indexed by [`crate::prefilter::table`] ids.
    pub prefilter: [crate::prefilter::PrefixTable; crate::prefilter::table::PER_GENERATION],
    /// Each list's long prefixes when it has few, indexed by [`crate::prefilter::short`] ids.
    pub short: [crate::prefilter::ShortList; crate::prefilter::short::PER_GENERATION],
    /// Each list's prefix lengths when its long prefixes are hashed, by the same ids.
    pub hashed: [crate::prefilter::HashedLengths; crate::prefilter::short::PER_GENERATION],
}
const _: () = assert!(
    size_of::<GenerationTables>()
        == 4 * PORT_NUMBERS
            + 6 * 16 * 1024
            + 4 * size_of::<crate::prefilter::ShortList>()
            + 4 * size_of::<crate::prefilter::HashedLengths>()
);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::PolicyConfig {}
    unsafe impl aya::Pod for super::PortEntry {}
    unsafe impl aya::Pod for super::GenerationTables {}
    unsafe impl aya::Pod for super::PrefixV4 {}
    unsafe impl aya::Pod for super::PrefixV6 {}
}
