//! The optional kernel features the datapath uses, probed the way `bpftool feature probe`
//! does: a tiny program that calls a helper is loaded, and the verifier's answer says whether
//! the kernel offers that helper to that program type; attachments are tried for real, in a
//! network namespace of the probe's own that vanishes with it.
//!
//! Kernels differ even under one version string (a build of 6.18 refuses
//! `bpf_xdp_adjust_meta` to XDP; docs/platform.md): nothing here looks at the version. The
//! result decides the load-time constant the programs get (`apns_common::features`) and how
//! the TC programs are attached (TCX links, or netlink filters before Linux 6.6); `status`,
//! `doctor` and `/metrics` list it.
//!
//! `APNS_AGENT_FEATURES_OFF=xdp_meta,tcx` makes the agent act as if the kernel lacked the
//! features named (the tests use it to prove each fallback; an operator can use it to step
//! around a kernel bug).

use std::{io, sync::OnceLock};

use anyhow::bail;
use apns_common::{fastpath::FastPath, features::bits, label::Label};

use super::sys::{self, Insn};

/// The environment variable that switches features off; see the module documentation.
pub const FEATURES_OFF_VAR: &str = "APNS_AGENT_FEATURES_OFF";

/// `enum bpf_prog_type` values (stable UAPI).
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type` values (stable UAPI).
const BPF_XDP: u32 = 37;
const BPF_TCX_INGRESS: u32 = 46;
/// XDP_FLAGS_SKB_MODE: generic XDP, which every device has (the probe attaches to `lo`).
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// The loopback device of a new network namespace.
const LOOPBACK_IFINDEX: u32 = 1;
/// Return values of the probes' programs: XDP_PASS and TCX_NEXT.
const XDP_PASS: i32 = 2;
const TCX_NEXT: i32 = -1;
/// `enum bpf_func_id` values of the helpers probed (stable UAPI).
const HELPER_XDP_ADJUST_META: i32 = 54;
const HELPER_FIB_LOOKUP: i32 = 69;
const HELPER_REDIRECT_NEIGH: i32 = 152;
const HELPER_KTIME_GET_COARSE_NS: i32 = 160;

/// One optional kernel feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// `bpf_xdp_adjust_meta` in XDP programs.
    XdpMeta,
    /// `bpf_fib_lookup` in XDP programs (Linux 4.18+).
    FibLookup,
    /// `bpf_redirect_neigh` in TC programs (Linux 5.10+).
    RedirectNeigh,
    /// `bpf_ktime_get_coarse_ns` (Linux 5.11+).
    CoarseClock,
    /// bpf_link attachment of XDP programs (Linux 5.9+).
    XdpLink,
    /// TCX: bpf_link attachment of TC programs (Linux 6.6+).
    Tcx,
}

impl Label for Feature {
    const WHAT: &'static str = "kernel feature";
    const ALL: &'static [Feature] = &[
        Feature::XdpMeta,
        Feature::FibLookup,
        Feature::RedirectNeigh,
        Feature::CoarseClock,
        Feature::XdpLink,
        Feature::Tcx,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Feature::XdpMeta => "xdp_meta",
            Feature::FibLookup => "fib_lookup",
            Feature::RedirectNeigh => "redirect_neigh",
            Feature::CoarseClock => "coarse_clock",
            Feature::XdpLink => "xdp_link",
            Feature::Tcx => "tcx",
        }
    }
}

/// How TC programs are attached to an interface: TCX links (6.6+), else a netlink clsact
/// qdisc with a direct-action filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcAttachment {
    Tcx,
    Netlink,
}

impl Label for TcAttachment {
    const WHAT: &'static str = "TC attachment";
    const ALL: &'static [TcAttachment] = &[TcAttachment::Tcx, TcAttachment::Netlink];
    fn as_str(self) -> &'static str {
        match self {
            TcAttachment::Tcx => "tcx",
            TcAttachment::Netlink => "netlink",
        }
    }
}

impl Feature {
    /// What the feature is, in the kernel's terms.
    pub fn what(self) -> &'static str {
        match self {
            Feature::XdpMeta => "bpf_xdp_adjust_meta in XDP programs",
            Feature::FibLookup => "bpf_fib_lookup in XDP programs",
            Feature::RedirectNeigh => "bpf_redirect_neigh in TC programs",
            Feature::CoarseClock => "bpf_ktime_get_coarse_ns",
            Feature::XdpLink => "bpf_link attachment of XDP programs",
            Feature::Tcx => "TCX (bpf_link attachment of TC programs)",
        }
    }

    /// What the datapath does without it.
    pub fn without(self) -> &'static str {
        match self {
            Feature::XdpMeta => {
                "the TC ingress program classifies mark and redirect packets itself (a TC pass per packet on those interfaces)"
            }
            Feature::FibLookup => "the redirect fast path is refused; pass and mark work",
            Feature::RedirectNeigh => {
                "redirect forwards only to resolved neighbours; the stack gets the first packets"
            }
            Feature::CoarseClock => "the connection table reads bpf_ktime_get_ns",
            Feature::XdpLink => "nothing attaches: the agent needs Linux 5.9 or later",
            Feature::Tcx => "TC programs are attached as netlink (clsact) filters",
        }
    }

    fn probe(self) -> bool {
        match self {
            Feature::XdpMeta => has_helper(BPF_PROG_TYPE_XDP, HELPER_XDP_ADJUST_META),
            Feature::FibLookup => has_helper(BPF_PROG_TYPE_XDP, HELPER_FIB_LOOKUP),
            Feature::RedirectNeigh => has_helper(BPF_PROG_TYPE_SCHED_CLS, HELPER_REDIRECT_NEIGH),
            Feature::CoarseClock => has_helper(BPF_PROG_TYPE_XDP, HELPER_KTIME_GET_COARSE_NS),
            Feature::XdpLink => attaches(BPF_PROG_TYPE_XDP, XDP_PASS, BPF_XDP, XDP_FLAGS_SKB_MODE),
            Feature::Tcx => attaches(BPF_PROG_TYPE_SCHED_CLS, TCX_NEXT, BPF_TCX_INGRESS, 0),
        }
    }
}

/// The features this kernel has (less those switched off).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// Bit `1 << index in Feature::ALL` per feature present.
    present: u32,
    /// Likewise, for the features `APNS_AGENT_FEATURES_OFF` switched off.
    switched_off: u32,
}

impl Features {
    /// This kernel's features, probed once per process; `APNS_AGENT_FEATURES_OFF` applied.
    pub fn probe() -> anyhow::Result<Features> {
        static PROBED: OnceLock<Result<Features, String>> = OnceLock::new();
        PROBED
            .get_or_init(|| {
                let off = std::env::var(FEATURES_OFF_VAR).unwrap_or_default();
                Features::probe_with(&off).map_err(|err| format!("{err:#}"))
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn probe_with(off: &str) -> anyhow::Result<Features> {
        let mut features = Features::default();
        for word in off
            .split(',')
            .map(str::trim)
            .filter(|word| !word.is_empty())
        {
            let Some(feature) = Feature::from_label(word) else {
                bail!(
                    "{FEATURES_OFF_VAR}: {word:?} is no {} (expected {})",
                    Feature::WHAT,
                    Feature::expected()
                );
            };
            features.switched_off |= bit(feature);
        }
        // Without the right to load programs every probe fails: say so instead of reporting a
        // kernel without features.
        let trivial = [Insn::return_value(XDP_PASS), Insn::exit()];
        if let Err((err, _)) = sys::load_program(BPF_PROG_TYPE_XDP, &trivial) {
            bail!("probing the kernel's features needs CAP_BPF and CAP_NET_ADMIN (or root): a two-instruction XDP program did not load ({err})");
        }
        for &feature in Feature::ALL {
            if feature.probe() {
                features.present |= bit(feature);
            }
        }
        tracing::debug!(?features, "kernel features probed");
        Ok(features)
    }

    /// Whether the datapath may use `feature`: the kernel has it and it is not switched off.
    pub fn has(self, feature: Feature) -> bool {
        (self.present & !self.switched_off) & bit(feature) != 0
    }

    /// Whether `feature` was switched off by `APNS_AGENT_FEATURES_OFF`.
    pub fn switched_off(self, feature: Feature) -> bool {
        self.switched_off & bit(feature) != 0
    }

    /// The load-time constant of the programs (`apns_common::features::bits`).
    pub fn program_bits(self) -> u32 {
        let mut program = 0;
        if self.has(Feature::XdpMeta) {
            program |= bits::XDP_META;
        }
        if self.has(Feature::CoarseClock) {
            program |= bits::COARSE_CLOCK;
        }
        program
    }

    /// Why `fastpath` cannot work on this kernel, if it cannot: the missing feature and what
    /// still works.
    pub fn refusal(self, fastpath: FastPath) -> Option<String> {
        match fastpath {
            FastPath::Redirect => self.missing(Feature::FibLookup, "the redirect fast path"),
            FastPath::Pass | FastPath::Mark => None,
        }
    }

    /// Why nothing can be attached on this kernel, if it cannot.
    pub fn attach_refusal(self) -> Option<String> {
        self.missing(Feature::XdpLink, "attaching the XDP program")
    }

    /// What `needing` cannot do without `feature`, if this kernel lacks it (or it is switched
    /// off).
    fn missing(self, feature: Feature, needing: &str) -> Option<String> {
        (!self.has(feature)).then(|| {
            let state = if self.switched_off(feature) {
                format!("has, but {FEATURES_OFF_VAR} switched off")
            } else {
                "lacks".to_owned()
            };
            format!(
                "{needing} needs {} (kernel feature {}), which this kernel {state}: {}",
                feature.what(),
                feature.as_str(),
                feature.without()
            )
        })
    }

    /// How TC programs are attached here.
    pub fn tc_attachment(self) -> TcAttachment {
        if self.has(Feature::Tcx) {
            TcAttachment::Tcx
        } else {
            TcAttachment::Netlink
        }
    }

    /// The way each fast path takes on this kernel, or why it cannot, in words.
    pub fn fastpath_ways(self) -> [(&'static str, String); 2] {
        let tc = self.tc_attachment().as_str();
        let mark = if self.has(Feature::XdpMeta) {
            format!("XDP metadata, copied into skb->mark by TC ingress ({tc})")
        } else {
            format!("TC ingress ({tc}) classifies and marks (no XDP metadata)")
        };
        let redirect = if !self.has(Feature::FibLookup) {
            "refused: no bpf_fib_lookup in XDP programs".to_owned()
        } else if !self.has(Feature::RedirectNeigh) {
            "XDP redirect to resolved neighbours only (no bpf_redirect_neigh)".to_owned()
        } else if self.has(Feature::XdpMeta) {
            format!(
                "XDP redirect; unresolved neighbours handed to TC ingress ({tc}) in XDP metadata"
            )
        } else {
            format!("XDP redirect; unresolved neighbours forwarded by TC ingress ({tc}), which classifies them again")
        };
        [
            (FastPath::Mark.as_str(), mark),
            (FastPath::Redirect.as_str(), redirect),
        ]
    }
}

fn bit(feature: Feature) -> u32 {
    let index = Feature::ALL
        .iter()
        .position(|&known| known == feature)
        .unwrap_or_default();
    1 << index
}

/// Whether programs of `prog_type` may call `helper`: the verifier refuses an unknown or
/// forbidden helper by name before it checks the arguments, which the probe leaves unset.
fn has_helper(prog_type: u32, helper: i32) -> bool {
    let program = [Insn::call(helper), Insn::return_value(0), Insn::exit()];
    match sys::load_program(prog_type, &program) {
        Ok(_) => true,
        Err((err, log)) => {
            let refused = ["unknown func", "invalid func", "cannot use helper"]
                .iter()
                .any(|words| log.contains(words));
            if log.is_empty() {
                tracing::debug!(prog_type, helper, error = %err, "helper probe could not load");
            }
            !refused && !log.is_empty()
        }
    }
}

/// Whether a program of `prog_type` returning `verdict` attaches as `attach_type` with a
/// bpf_link. Tried on the loopback device of a network namespace made for the probe on a
/// thread of its own: nothing of the host's is touched, and the namespace goes with the
/// thread.
fn attaches(prog_type: u32, verdict: i32, attach_type: u32, flags: u32) -> bool {
    let attempt = move || -> io::Result<()> {
        // SAFETY: unshare has no memory-safety preconditions; CLONE_NEWNET moves only this
        // thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let program = [Insn::return_value(verdict), Insn::exit()];
        let fd = sys::load_program(prog_type, &program).map_err(|(err, _)| err)?;
        sys::link_create(&fd, LOOPBACK_IFINDEX, attach_type, flags).map(drop)
    };
    match std::thread::spawn(attempt).join() {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::debug!(attach_type, error = %err, "attachment probe refused");
            false
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_off_names_the_bad_word() {
        let err = Features::probe_with("xdp_meta, tcxx").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("\"tcxx\""), "{text}");
        assert!(text.contains("xdp_meta, fib_lookup"), "{text}");
    }

    #[test]
    fn switched_off_features_are_not_used() {
        let features = Features {
            present: bit(Feature::XdpMeta) | bit(Feature::CoarseClock) | bit(Feature::Tcx),
            switched_off: bit(Feature::XdpMeta),
        };
        assert!(!features.has(Feature::XdpMeta));
        assert!(features.switched_off(Feature::XdpMeta));
        assert!(features.has(Feature::Tcx));
        assert_eq!(features.program_bits(), bits::COARSE_CLOCK);
        assert_eq!(features.tc_attachment(), TcAttachment::Tcx);
    }
}
