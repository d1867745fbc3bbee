//! Test hooks: with the `test-hooks` feature (which only the test crate turns on), a fault
//! test can stop the agent exactly between two steps of a change and kill it there, to show
//! that the next agent finds a consistent datapath. Without the feature they compile to
//! nothing.

/// The environment variable that names the point to stop at.
pub const PAUSE_AT: &str = "APNS_AGENT_PAUSE_AT";

/// Between writing a policy into the inactive generation and switching to it.
pub const BEFORE_POLICY_SWITCH: &str = "before-policy-switch";
/// After the first of several links runs the new program, before the others do.
pub const AFTER_FIRST_LINK_SWAP: &str = "after-first-link-swap";

/// Holding the lock of bpffs's mount point, having found bpffs not mounted, before mounting it.
pub const BEFORE_BPFFS_MOUNT: &str = "before-bpffs-mount";

/// Stops this process (SIGSTOP) when [`PAUSE_AT`] names `point`, after saying so on stderr.
#[cfg(feature = "test-hooks")]
pub fn pause_at(point: &str) {
    if std::env::var(PAUSE_AT).is_ok_and(|wanted| wanted == point) {
        eprintln!("test hook: stopped at {point}");
        // SAFETY: raising a signal at ourselves has no memory effects.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn pause_at(_point: &str) {}
