//! The long-prefix table: a list's prefixes longer than /16 (up to /64) in a hash table the
//! XDP program reads without a helper call, for lists too long for a
//! [`crate::prefilter::ShortList`].
//!
//! Why not a BPF hash map: its lookup is a call into the kernel that calls `memcmp` again,
//! and on kernels that mitigate return-address speculation in software (SRSO's return thunk,
//! retpolines) every call costs about 15 ns (BENCHMARKS.md): a hash map lookup cost 38 ns a
//! length, more than an LPM trie of 100 prefixes. This table lives in one array map value per
//! generation, so a lookup is arithmetic and the verifier's inlined array accesses; the XDP
//! program makes it in one global BPF function (`apns_long_prefix`, apns-ebpf's classify.rs),
//! a single call whatever the list's lengths.
//!
//! It is a bucketized cuckoo hash: [`BUCKETS`] buckets of [`SLOTS`] slots; a prefix sits in
//! one of two buckets ([`bucket_of`] with [`FIRST`] and [`SECOND`]), so a lookup reads two
//! buckets (a cache line each) and compares at most eight slots, whatever the list's size.
//! The agent builds a generation's whole table at once ([`LongPrefixTable::insert`]); a list
//! that does not fit leaves its [`crate::prefilter::HashedLengths`] incomplete, and the LPM
//! trie answers for it.

/// Buckets per generation.
pub const BUCKETS: usize = 1 << BUCKET_BITS;
const BUCKET_BITS: u32 = 15;
/// Slots per bucket: one 64-byte cache line.
pub const SLOTS: usize = 4;
/// Prefixes one generation's table takes at most (all lists together): 7/8 of its slots,
/// where a cuckoo table of 4-slot buckets still fills in a few moves per prefix.
pub const CAPACITY: usize = BUCKETS * SLOTS / 8 * 7;

/// One prefix: its leading 64 bits masked to its length, and its [`tag`] (0: empty).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub network: u64,
    pub tag: u64,
}
const _: () = assert!(size_of::<Slot>() == 16);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub slots: [Slot; SLOTS],
}
const _: () = assert!(size_of::<Bucket>() == 64);

/// Value of `APNS_LONG_PFX`, one per generation: 2 MiB.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LongPrefixTable {
    pub buckets: [Bucket; BUCKETS],
}
const _: () = assert!(size_of::<LongPrefixTable>() == 2 * 1024 * 1024);

/// Which of a prefix's two buckets.
pub const FIRST: u64 = 0x9e37_79b9_7f4a_7c15;
pub const SECOND: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// What tells prefixes of one network apart: the list (a [`crate::prefilter::short`] id)
/// and the length. Never 0, since a long prefix is longer than /16.
#[inline(always)]
pub fn tag(list: u8, len: u8) -> u64 {
    (u64::from(list) << 8) | u64::from(len)
}

/// The bucket of (`network`, `tag`) under the multiplier `which` ([`FIRST`], [`SECOND`]):
/// the address bits folded so that IPv4's (the upper half) reach the low half too, then
/// multiply-shift.
#[inline(always)]
pub fn bucket_of(network: u64, tag: u64, which: u64) -> usize {
    let folded = network ^ (network >> 32) ^ tag.wrapping_mul(FIRST);
    (folded.wrapping_mul(which) >> (64 - BUCKET_BITS)) as usize
}

/// Moves [`LongPrefixTable::insert`] makes before it gives up on a prefix.
const MAX_MOVES: usize = 512;

impl LongPrefixTable {
    /// Whether the table holds (`network`, `tag`).
    #[inline(always)]
    pub fn contains(&self, network: u64, tag: u64) -> bool {
        for which in [FIRST, SECOND] {
            let bucket = &self.buckets[bucket_of(network, tag, which) & (BUCKETS - 1)];
            for slot in &bucket.slots {
                if slot.network == network && slot.tag == tag {
                    return true;
                }
            }
        }
        false
    }

    /// Adds (`network`, `tag`), moving others to their other bucket where both of its own
    /// are full. Returns the prefix left without a slot after [`MAX_MOVES`] moves (the one
    /// given, or one moved out for it), `None` once everything has a slot. Adding one
    /// already present changes nothing.
    pub fn insert(&mut self, network: u64, tag: u64) -> Option<Slot> {
        if self.contains(network, tag) {
            return None;
        }
        let mut homeless = Slot { network, tag };
        let mut bucket = bucket_of(network, tag, FIRST);
        for moves in 0..MAX_MOVES {
            let other = other_bucket(&homeless, bucket);
            for candidate in [bucket, other] {
                if let Some(free) = self.buckets[candidate]
                    .slots
                    .iter_mut()
                    .find(|slot| slot.tag == 0)
                {
                    *free = homeless;
                    return None;
                }
            }
            // Both full: take a slot of the other bucket (a different one each move) and
            // send its prefix on to its own other bucket.
            let victim = &mut self.buckets[other].slots[moves % SLOTS];
            core::mem::swap(victim, &mut homeless);
            bucket = other;
        }
        Some(homeless)
    }
}

/// A slot's bucket other than `bucket`.
fn other_bucket(slot: &Slot, bucket: usize) -> usize {
    let first = bucket_of(slot.network, slot.tag, FIRST);
    if bucket == first {
        bucket_of(slot.network, slot.tag, SECOND)
    } else {
        first
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for LongPrefixTable {}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty table, made on the heap (2 MiB would not fit a test thread's stack).
    fn empty() -> Box<LongPrefixTable> {
        // SAFETY: all zeroes is an empty table (plain integers, tag 0 everywhere).
        unsafe { Box::<LongPrefixTable>::new_zeroed().assume_init() }
    }

    #[test]
    fn a_full_table_holds_every_prefix_and_nothing_else() {
        let mut table = empty();
        let v4_24 = |i: u64| ((0x0100_0000 + (i << 8)) & 0xffff_ff00) << 32;
        for i in 0..CAPACITY as u64 {
            assert_eq!(table.insert(v4_24(i), tag(0, 24)), None, "prefix {i}");
        }
        for i in 0..CAPACITY as u64 {
            assert!(table.contains(v4_24(i), tag(0, 24)), "prefix {i}");
            // The same network under another length or list is another prefix.
            assert!(!table.contains(v4_24(i), tag(0, 25)));
            assert!(!table.contains(v4_24(i), tag(1, 24)));
        }
        assert!(!table.contains(v4_24(CAPACITY as u64), tag(0, 24)));
        // Every prefix is counted once: the table holds exactly CAPACITY.
        let used = table
            .buckets
            .iter()
            .flat_map(|bucket| &bucket.slots)
            .filter(|slot| slot.tag != 0)
            .count();
        assert_eq!(used, CAPACITY);
        assert_eq!(table.insert(v4_24(7), tag(0, 24)), None);
    }

    #[test]
    fn an_overfull_table_hands_back_what_it_cannot_hold() {
        let mut table = empty();
        let v6_64 = |i: u64| 0x2001_0000_0000_0000 | (i << 12);
        let left = (0..(BUCKETS * SLOTS) as u64 + 1)
            .filter_map(|i| table.insert(v6_64(i), tag(2, 64)))
            .count();
        assert!(left >= 1);
    }
}
