//! Test support for apns-agent: frames to feed the datapath and an independent user-space
//! reference of what the datapath must make of them (`docs/classification.md`).

pub mod agent;
pub mod bench;
pub mod lab;
pub mod layout2;
pub mod ledger;
pub mod occupants;
pub mod packets;
pub mod reference;
pub mod root_only;
pub mod scratch;
pub mod xdp;

/// Returns from a root-only test, after a line saying why, where it cannot run
/// ([`root_only`]): the first line of every test that loads programs, makes network
/// namespaces or pins.
#[macro_export]
macro_rules! require_root {
    () => {
        if $crate::root_only::skip() {
            return;
        }
    };
}

/// How many times longer than on the host the tests' waits may last: `APNS_TEST_TIME_SCALE`
/// (a whole number, 1 when unset). The kernel matrix sets it for its guests, whose emulated
/// CPUs (QEMU's TCG) verify programs and build namespaces several times slower.
pub fn time_scale() -> u32 {
    std::env::var("APNS_TEST_TIME_SCALE")
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|&scale| scale >= 1)
        .unwrap_or(1)
}
