//! The kernel features the agent probed, as a load-time constant (`apns_common::features`):
//! a branch on [`has`] is settled by the verifier, which never visits the other side, so a
//! helper the kernel lacks may stand there.

use aya_ebpf::Global;

/// Set by the agent before loading (`apns_common::features::GLOBAL`); 0, the way every kernel
/// has, unless it says otherwise.
#[unsafe(no_mangle)]
static APNS_FEATURES: Global<u32> = Global::new(0);

/// Whether the kernel has the feature `bit` (`apns_common::features::bits`).
#[inline(always)]
pub fn has(bit: u32) -> bool {
    APNS_FEATURES.load() & bit != 0
}
