//! Checks that the caller holds the capabilities a command needs, so that it fails up front
//! with the capability's name instead of half-way with EPERM.

use caps::{CapSet, Capability};

/// What reading or changing a pinned datapath needs: bpf syscalls on pinned objects.
pub const READ: &[Capability] = &[Capability::CAP_BPF];
/// Changing maps, links and pins; attaching needs CAP_NET_ADMIN; mounting bpffs and pinning
/// CAP_SYS_ADMIN.
pub const CHANGE: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_ADMIN,
];

/// Fails naming every capability of `needed` missing from the effective set.
pub fn require(needed: &[Capability], action: &str) -> anyhow::Result<()> {
    let missing = missing(needed);
    if !missing.is_empty() {
        anyhow::bail!(
            "{action} needs {} (missing from this process): run it as root or grant the capabilities",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The capabilities of `needed` missing from the effective set, by name.
pub fn missing(needed: &[Capability]) -> Vec<String> {
    needed
        .iter()
        .filter(|cap| !caps::has_cap(None, CapSet::Effective, **cap).unwrap_or(false))
        .map(|cap| cap.to_string())
        .collect()
}
