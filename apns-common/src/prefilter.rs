//! The prefix prefilter in front of the LPM tries: most addresses are settled by one array
//! read, those near a long prefix of a short list (Apple's IPv6 /48s) by a few compares
//! ([`ShortList`]), those near a long prefix of a longer list by a lookup in the long-prefix
//! table per prefix length it uses ([`HashedLengths`]), and only lists of many lengths or of
//! prefixes longer than /64 pay for a trie lookup.
//!
//! For each policy generation and each prefix list (allow-list, provider list) the agent
//! derives, in the same generation swap as the tries:
//! - IPv4: a table by the address's leading 16 bits (a *bucket*). A prefix of /16 or shorter
//!   makes its buckets [`verdict::ALL`]; a longer one makes its bucket [`verdict::ASK`] (ask
//!   the trie).
//! - IPv6: a first table by the leading 16 bits, the same way (a prefix longer than /16 makes
//!   its bucket `ASK`, meaning "look at the next table"), and a *next* table by bits 16..32
//!   that says whether any prefix longer than /16 reaches those bits: `NONE` settles the
//!   address, `ASK` sends it to the trie. The next table is shared by every first-level
//!   bucket of the list, so it can only say `ASK` too often, never too rarely.
//!
//! Correctness never depends on the prefilter being precise: `NONE` is only written where no
//! prefix of the list can match, `ALL` only where one surely does, and everything else asks
//! the trie, which holds the list itself.
//!
//! Verdicts take 2 bits, packed 32 to a `u64`, so a table is 16 KiB; they are encoded so
//! that a bitwise OR is their maximum (`NONE` < `ASK` < `ALL`), which lets the agent merge
//! prefixes word by word in any order.

/// Buckets of a table: every value of 16 address bits.
pub const BUCKETS: usize = 1 << 16;
/// Verdicts per `u64` word.
const PER_WORD: usize = 32;
/// Words of a table.
pub const WORDS: usize = BUCKETS / PER_WORD;

/// A bucket's verdict. Never renumber: the OR-is-maximum encoding depends on these values.
pub mod verdict {
    /// No prefix of the list matches any address of the bucket.
    pub const NONE: u8 = 0b00;
    /// Some prefix may match: ask the next table (IPv6 first level) or the trie.
    pub const ASK: u8 = 0b01;
    /// A prefix of the list matches every address of the bucket.
    pub const ALL: u8 = 0b11;
}

/// The tables of one generation, by their index in
/// [`crate::policy::GenerationTables::prefilter`].
pub mod table {
    pub const ALLOW_V4: usize = 0;
    pub const PROVIDERS_V4: usize = 1;
    pub const ALLOW_V6: usize = 2;
    pub const ALLOW_V6_NEXT: usize = 3;
    pub const PROVIDERS_V6: usize = 4;
    pub const PROVIDERS_V6_NEXT: usize = 5;
    /// Tables per generation.
    pub const PER_GENERATION: usize = 6;
}

/// The lists of one generation by their index in [`crate::policy::GenerationTables::short`]
/// and [`crate::policy::GenerationTables::hashed`], and in a long-prefix table's
/// [`crate::long_prefixes::tag`].
pub mod short {
    pub const ALLOW_V4: usize = 0;
    pub const PROVIDERS_V4: usize = 1;
    pub const ALLOW_V6: usize = 2;
    pub const PROVIDERS_V6: usize = 3;
    /// Short lists per generation.
    pub const PER_GENERATION: usize = 4;
}

/// Prefixes longer than the first level settles (IPv4 and IPv6 alike: /17 and longer), the
/// ones a bucket's `ASK` stands for.
pub const FIRST_LEVEL_BITS: u8 = 16;

/// Prefixes a [`ShortList`] holds at most.
pub const SHORT_LIST_LEN: usize = 8;

/// The long prefixes of one list and family, matched inline where the prefilter asks: when
/// a list has at most [`SHORT_LIST_LEN`] prefixes longer than /16, all of them within the
/// leading 64 address bits (every IPv4 prefix; IPv6 up to /64), this is the whole answer and
/// the trie is never asked. Apple's IPv6 /48s are such a list: their packets pay a few
/// compares instead of an LPM trie lookup. A list with more, or longer, prefixes leaves the
/// short list incomplete and asks the trie, as before.
///
/// All zeroes (a generation written by nobody yet) is incomplete: the trie decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShortList {
    /// The leading 64 bits of each prefix's network address, host byte order
    /// ([`leading_v4`], [`leading_v6`]).
    pub networks: [u64; SHORT_LIST_LEN],
    /// Each prefix's mask over those 64 bits.
    pub masks: [u64; SHORT_LIST_LEN],
    /// Entries in use.
    pub count: u32,
    /// 1 when `networks` holds every prefix of the list longer than /16; 0: ask the trie.
    pub complete: u32,
}
const _: () = assert!(size_of::<ShortList>() == 8 + 16 * SHORT_LIST_LEN);

/// The leading 64 bits of an IPv4 address as [`ShortList`] compares them: the address in
/// the upper half.
#[inline(always)]
pub fn leading_v4(addr: &[u8; 4]) -> u64 {
    u64::from(u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]])) << 32
}

/// The leading 64 bits of an IPv6 address as [`ShortList`] compares them.
#[inline(always)]
pub fn leading_v6(addr: &[u8; 16]) -> u64 {
    u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ])
}

impl ShortList {
    /// The short list of a list whose prefixes are `(leading 64 bits, length)`: complete if
    /// its prefixes longer than /16 fit, else empty and incomplete.
    pub fn of_prefixes(prefixes: impl IntoIterator<Item = (u64, u8)>) -> Self {
        let mut list = ShortList::default();
        for (network, len) in prefixes {
            if len <= FIRST_LEVEL_BITS {
                continue;
            }
            let index = list.count as usize;
            if len > 64 || index == SHORT_LIST_LEN {
                return ShortList::default();
            }
            let mask = leading_mask(len);
            list.networks[index] = network & mask;
            list.masks[index] = mask;
            list.count += 1;
        }
        list.complete = 1;
        list
    }

    /// Whether a prefix of the list covers the address whose leading 64 bits are `leading`
    /// (meaningful when the list is complete).
    #[inline(always)]
    pub fn covers(&self, leading: u64) -> bool {
        for index in 0..SHORT_LIST_LEN {
            if index as u32 >= self.count {
                return false;
            }
            if leading & self.masks[index] == self.networks[index] {
                return true;
            }
        }
        false
    }
}

/// Prefix lengths a [`HashedLengths`] holds at most: a hash lookup each for an address the
/// list does not cover, so few.
pub const HASHED_LENGTHS: usize = 4;

/// The long prefixes of a list too long for a [`ShortList`], when they use at most
/// [`HASHED_LENGTHS`] prefix lengths, all within the leading 64 address bits: each prefix is
/// in the generation's long-prefix table (`APNS_LONG_PFX`, [`crate::long_prefixes`]), and an
/// address is looked up there once per length in use, whatever the list's size. An
/// allow-list of 100,000 /24s costs one lookup (two buckets) where the LPM trie walks a path
/// that grows with the list. A list with more lengths, or longer prefixes, or one the table
/// has no room for, leaves this incomplete and asks the trie.
///
/// All zeroes (a generation written by nobody yet) is incomplete: the trie decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashedLengths {
    /// The mask over the leading 64 bits of each length in use.
    pub masks: [u64; HASHED_LENGTHS],
    /// The lengths in use (17 to 64), longest first.
    pub lengths: [u8; HASHED_LENGTHS],
    /// Entries in use.
    pub count: u32,
    /// 1 when the generation's long-prefix table holds every prefix of the list longer
    /// than /16; 0: ask the trie.
    pub complete: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<HashedLengths>() == 8 * HASHED_LENGTHS + 16);

/// The mask of a prefix of `len` (1 to 64) bits over the leading 64 bits.
#[inline(always)]
pub const fn leading_mask(len: u8) -> u64 {
    u64::MAX << (64 - len as u32)
}

impl HashedLengths {
    /// The lengths of a list whose prefixes are `(leading 64 bits, length)`: complete if its
    /// prefixes longer than /16 are all at most /64 and use at most [`HASHED_LENGTHS`]
    /// lengths, else empty and incomplete (the table's entries are the agent's to add).
    pub fn of_prefixes(prefixes: impl IntoIterator<Item = (u64, u8)>) -> Self {
        // A bit per length 17 to 64.
        let mut used = 0u64;
        for (_, len) in prefixes {
            if len <= FIRST_LEVEL_BITS {
                continue;
            }
            if len > 64 {
                return HashedLengths::default();
            }
            used |= 1 << (len - 1);
        }
        if used.count_ones() as usize > HASHED_LENGTHS {
            return HashedLengths::default();
        }
        let mut lengths = HashedLengths {
            complete: 1,
            ..HashedLengths::default()
        };
        for len in (FIRST_LEVEL_BITS + 1..=64).rev() {
            if used & (1 << (len - 1)) != 0 {
                let index = lengths.count as usize;
                lengths.lengths[index] = len;
                lengths.masks[index] = leading_mask(len);
                lengths.count += 1;
            }
        }
        lengths
    }
}

/// One table of 65,536 2-bit verdicts (part of a generation's tables, `APNS_TABLES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixTable {
    pub words: [u64; WORDS],
}
const _: () = assert!(size_of::<PrefixTable>() == 16 * 1024);

impl Default for PrefixTable {
    fn default() -> Self {
        PrefixTable { words: [0; WORDS] }
    }
}

/// `ASK` or `ALL` repeated over a whole word.
const fn repeated(verdict: u8) -> u64 {
    let mut word = 0u64;
    let mut i = 0;
    while i < PER_WORD {
        word |= (verdict as u64) << (2 * i);
        i += 1;
    }
    word
}

impl PrefixTable {
    /// The verdict of `bucket`.
    #[inline(always)]
    pub fn get(&self, bucket: u16) -> u8 {
        let word = self.words[(bucket as usize / PER_WORD) & (WORDS - 1)];
        ((word >> (2 * (bucket as usize % PER_WORD))) & 0b11) as u8
    }

    /// Raises the `count` buckets from `first` (an aligned power of two, as a prefix covers)
    /// to at least `verdict`.
    pub fn raise(&mut self, first: usize, count: usize, verdict: u8) {
        debug_assert!(
            count.is_power_of_two() && first.is_multiple_of(count) && first + count <= BUCKETS
        );
        if count >= PER_WORD {
            let pattern = repeated(verdict);
            for word in &mut self.words[first / PER_WORD..(first + count) / PER_WORD] {
                *word |= pattern;
            }
        } else {
            let shift = 2 * (first % PER_WORD);
            let mask = (1u64 << (2 * count)) - 1;
            self.words[first / PER_WORD] |= (repeated(verdict) & mask) << shift;
        }
    }

    /// Adds an IPv4 prefix (`addr` in network byte order, `len` ≤ 32) to a list's table.
    pub fn add_v4(&mut self, addr: [u8; 4], len: u8) {
        let bucket = u16::from_be_bytes([addr[0], addr[1]]) as usize;
        add_first_level(self, bucket, len);
    }

    /// Adds an IPv6 prefix (`len` ≤ 128) to a list's first and next tables.
    pub fn add_v6(first: &mut PrefixTable, next: &mut PrefixTable, addr: [u8; 16], len: u8) {
        let bucket = u16::from_be_bytes([addr[0], addr[1]]) as usize;
        add_first_level(first, bucket, len);
        if len > FIRST_LEVEL_BITS {
            let bucket = u16::from_be_bytes([addr[2], addr[3]]) as usize;
            // Bits 16..32 of a prefix longer than /32 are one bucket; of a /17 to /32, a range.
            let covered = 1usize << (32 - u32::from(len.min(32)));
            next.raise(bucket & !(covered - 1), covered, verdict::ASK);
        }
    }
}

/// Marks a prefix of `len` bits whose leading 16 bits are `bucket`.
fn add_first_level(table: &mut PrefixTable, bucket: usize, len: u8) {
    if len <= FIRST_LEVEL_BITS {
        let covered = 1usize << (16 - u32::from(len));
        table.raise(bucket & !(covered - 1), covered, verdict::ALL);
    } else {
        table.raise(bucket, 1, verdict::ASK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed pseudo-random sequence (no dependencies in this no_std crate).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 11
        }
    }

    fn covers_v4(prefix: u32, len: u8, addr: u32) -> bool {
        len == 0 || (prefix ^ addr) >> (32 - u32::from(len)) == 0
    }

    fn covers_v6(prefix: u128, len: u8, addr: u128) -> bool {
        len == 0 || (prefix ^ addr) >> (128 - u32::from(len)) == 0
    }

    #[test]
    fn raise_is_a_maximum() {
        let mut table = PrefixTable::default();
        table.raise(64, 32, verdict::ALL);
        table.raise(64, 64, verdict::ASK);
        table.raise(7, 1, verdict::ASK);
        table.raise(7, 1, verdict::NONE);
        assert_eq!(table.get(63), verdict::NONE);
        assert_eq!(table.get(64), verdict::ALL);
        assert_eq!(table.get(95), verdict::ALL);
        assert_eq!(table.get(96), verdict::ASK);
        assert_eq!(table.get(127), verdict::ASK);
        assert_eq!(table.get(128), verdict::NONE);
        assert_eq!(table.get(7), verdict::ASK);
        assert_eq!(table.get(6), verdict::NONE);
    }

    #[test]
    fn apple_v4_is_all_by_itself() {
        let mut table = PrefixTable::default();
        table.add_v4([17, 0, 0, 0], 8);
        assert_eq!(table.get(u16::from_be_bytes([17, 0])), verdict::ALL);
        assert_eq!(table.get(u16::from_be_bytes([17, 255])), verdict::ALL);
        assert_eq!(table.get(u16::from_be_bytes([16, 255])), verdict::NONE);
        assert_eq!(table.get(u16::from_be_bytes([18, 0])), verdict::NONE);
        table.add_v4([203, 0, 113, 0], 24);
        assert_eq!(table.get(u16::from_be_bytes([203, 0])), verdict::ASK);
    }

    #[test]
    fn apple_v6_is_a_complete_short_list() {
        let apple: [([u8; 16], u8); 4] = [
            (
                [
                    0x26, 0x20, 0x01, 0x49, 0x0a, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                48,
            ),
            (
                [
                    0x24, 0x03, 0x03, 0x00, 0x0a, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                48,
            ),
            (
                [
                    0x24, 0x03, 0x03, 0x00, 0x0a, 0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                48,
            ),
            (
                [
                    0x2a, 0x01, 0xb7, 0x40, 0x0a, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
                48,
            ),
        ];
        let list = ShortList::of_prefixes(apple.iter().map(|(a, l)| (leading_v6(a), *l)));
        assert_eq!((list.count, list.complete), (4, 1));
        let mut inside = apple[1].0;
        inside[15] = 0x10;
        inside[7] = 0xff;
        assert!(list.covers(leading_v6(&inside)));
        let mut next_door = apple[1].0;
        next_door[5] = 0x43;
        assert!(!list.covers(leading_v6(&next_door)));
    }

    #[test]
    fn a_list_too_long_or_too_precise_asks_the_trie() {
        let nine = (0..9u64).map(|i| ((0xcb00_7100 + (i << 8)) << 32, 24));
        assert_eq!(ShortList::of_prefixes(nine), ShortList::default());
        let v6_host = [(0x2001_0db8_0000_0000u64, 128u8)];
        assert_eq!(ShortList::of_prefixes(v6_host), ShortList::default());
        // Short prefixes are the first level's: they take no entry.
        let list = ShortList::of_prefixes([(17u64 << 56, 8), (0xcb00_7100u64 << 32, 24)]);
        assert_eq!((list.count, list.complete), (1, 1));
        assert!(list.covers(leading_v4(&[203, 0, 113, 9])));
        assert!(!list.covers(leading_v4(&[203, 0, 112, 9])));
    }

    #[test]
    fn hashed_lengths_take_few_lengths_up_to_64_bits() {
        // 100 /24s, 9 /25s, a /17 and a host, and prefixes the first level settles.
        let mut prefixes: Vec<(u64, u8)> = (0..100u64)
            .map(|i| ((0xcb00_0000 + (i << 8)) << 32, 24))
            .chain((0..9u64).map(|i| ((0xc000_0080 + (i << 8)) << 32, 25)))
            .chain([(0x2c80_0000u64 << 32, 17), (0x0a00_0001u64 << 32, 32)])
            .chain([(17u64 << 56, 8), (0xac10_0000u64 << 32, 16)])
            .collect();
        let lengths = HashedLengths::of_prefixes(prefixes.iter().copied());
        assert_eq!((lengths.count, lengths.complete), (4, 1));
        assert_eq!(lengths.lengths, [32, 25, 24, 17]);
        assert_eq!(lengths.masks[2], 0xffff_ff00u64 << 32);
        // A fifth length, or a prefix past 64 bits, leaves the list to the trie.
        prefixes.push((0xc633_6440u64 << 32, 26));
        assert_eq!(
            HashedLengths::of_prefixes(prefixes.iter().copied()),
            HashedLengths::default()
        );
        let v6_host = [
            (0x2001_0db8_0000_0000u64, 128u8),
            (0x2001_0db8_0001_0000, 48),
        ];
        assert_eq!(
            HashedLengths::of_prefixes(v6_host),
            HashedLengths::default()
        );
    }

    /// A complete short list answers exactly as the prefixes do, wherever the first level
    /// asks (the only addresses it is consulted for).
    #[test]
    fn short_list_answers_as_the_prefixes_do() {
        let mut rng = Lcg(0x5407);
        for round in 0..200 {
            let mut table = PrefixTable::default();
            let mut prefixes = Vec::new();
            for _ in 0..(1 + round % SHORT_LIST_LEN) {
                let len = (rng.next() % 33) as u8;
                let addr = (rng.next() as u32) & if len == 0 { 0 } else { u32::MAX << (32 - len) };
                table.add_v4(addr.to_be_bytes(), len);
                prefixes.push((addr, len));
            }
            let list = ShortList::of_prefixes(
                prefixes
                    .iter()
                    .map(|&(a, l)| (leading_v4(&a.to_be_bytes()), l)),
            );
            assert_eq!(list.complete, 1);
            for _ in 0..500 {
                let (near, _) = prefixes[(rng.next() as usize) % prefixes.len()];
                let addr = near ^ (rng.next() as u32 & 0x3ff);
                let bytes = addr.to_be_bytes();
                if table.get(u16::from_be_bytes([bytes[0], bytes[1]])) != verdict::ASK {
                    continue;
                }
                let matched = prefixes.iter().any(|&(p, l)| covers_v4(p, l, addr));
                assert_eq!(list.covers(leading_v4(&bytes)), matched, "{addr:#x}");
            }
        }
    }

    /// Whatever the prefixes, `NONE` never hides a match and `ALL` never invents one.
    #[test]
    fn verdicts_never_contradict_the_prefixes() {
        let mut rng = Lcg(0x5eed);
        for round in 0..20 {
            let mut v4_table = PrefixTable::default();
            let mut v6_first = PrefixTable::default();
            let mut v6_next = PrefixTable::default();
            let mut v4 = Vec::new();
            let mut v6 = Vec::new();
            for _ in 0..(1 + round * 3) {
                let len = (rng.next() % 33) as u8;
                let addr = (rng.next() as u32) & if len == 0 { 0 } else { u32::MAX << (32 - len) };
                v4_table.add_v4(addr.to_be_bytes(), len);
                v4.push((addr, len));
                let len = (rng.next() % 129) as u8;
                let raw = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                let addr = raw
                    & if len == 0 {
                        0
                    } else {
                        u128::MAX << (128 - len)
                    };
                PrefixTable::add_v6(&mut v6_first, &mut v6_next, addr.to_be_bytes(), len);
                v6.push((addr, len));
            }
            for _ in 0..2000 {
                // Half the probes near a prefix, half anywhere.
                let (near, _) = v4[(rng.next() as usize) % v4.len()];
                let addr = if rng.next().is_multiple_of(2) {
                    near ^ (rng.next() as u32 & 0xff)
                } else {
                    rng.next() as u32
                };
                let matched = v4.iter().any(|&(p, l)| covers_v4(p, l, addr));
                let bytes = addr.to_be_bytes();
                match v4_table.get(u16::from_be_bytes([bytes[0], bytes[1]])) {
                    verdict::NONE => assert!(!matched, "v4 {addr:#x}: NONE but matched"),
                    verdict::ALL => assert!(matched, "v4 {addr:#x}: ALL but no match"),
                    _ => {}
                }

                let (near, _) = v6[(rng.next() as usize) % v6.len()];
                let addr = if rng.next().is_multiple_of(2) {
                    near ^ u128::from(rng.next() & 0xffff)
                } else {
                    (u128::from(rng.next()) << 64) | u128::from(rng.next())
                };
                let matched = v6.iter().any(|&(p, l)| covers_v6(p, l, addr));
                let bytes = addr.to_be_bytes();
                let first = v6_first.get(u16::from_be_bytes([bytes[0], bytes[1]]));
                let next = v6_next.get(u16::from_be_bytes([bytes[2], bytes[3]]));
                match (first, next) {
                    (verdict::NONE, _) | (verdict::ASK, verdict::NONE) => {
                        assert!(!matched, "v6 {addr:#x}: settled as no match but matched")
                    }
                    (verdict::ALL, _) => assert!(matched, "v6 {addr:#x}: ALL but no match"),
                    _ => {}
                }
            }
        }
    }
}
