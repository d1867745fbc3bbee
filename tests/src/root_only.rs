//! What the root-only tests need, said instead of failed. A test that loads programs, makes
//! network namespaces or pins begins with [`require_root!`](crate::require_root): where
//! doctor's own checks say the agent cannot work in this process (`capabilities`: not root;
//! `bpffs`: none at /sys/fs/bpf and none to mount), it returns at once, after one line on the
//! terminal saying why. So `cargo test` as a normal user passes, with every root-only test
//! reported as skipped.
//!
//! As root nothing may be skipped unnoticed: `APNS_TESTS_NO_SKIP=1` (which `cargo xtask test`
//! and the kernel matrix set) turns the skip into a failure.
//!
//! apns-agent's kernel tests (`apns-agent/tests/object.rs`) include this file as a module:
//! they cannot depend on this crate, which depends on apns-agent.

use std::io::Write as _;

use apns_agent::preflight::{host, Level};

/// Set to 1, a root-only test that cannot run fails instead of skipping.
pub const NO_SKIP: &str = "APNS_TESTS_NO_SKIP";

/// Why the root-only tests cannot run in this process, if they cannot: the first of doctor's
/// capabilities and bpffs checks that is not ok.
pub fn unavailable() -> Option<String> {
    [host::capabilities(), host::bpffs()]
        .into_iter()
        .find(|check| check.status != Level::Ok)
        .map(|check| format!("{}: {}", check.check, check.detail))
}

/// Whether the calling test must return now (see the module documentation); panics instead
/// under [`NO_SKIP`].
pub fn skip() -> bool {
    let Some(why) = unavailable() else {
        return false;
    };
    // libtest runs each test on a thread named after it.
    let test = std::thread::current()
        .name()
        .unwrap_or("a root-only test")
        .to_owned();
    if std::env::var_os(NO_SKIP).is_some_and(|value| value == "1") {
        panic!("{test} needs root and bpffs ({why}), and {NO_SKIP}=1 forbids skipping it");
    }
    // Straight to the terminal: libtest hides what a passing test prints with eprintln!.
    let _ = writeln!(
        std::io::stderr(),
        "skipped {test}: needs root and bpffs ({why})"
    );
    true
}
