//! What a counter entry is, for reporting: the one place an [`Outcome`] becomes a verdict, a
//! drop reason ([`DropReason`], apns-common's) or an other-class, and the label words of each
//! ([`Label`]). The model and the reachability window both read counters through it.

use apns_common::{
    counters::{CounterKey, CounterValue, Direction, DropReason, Outcome},
    label::Label,
};

/// What happened to APNs traffic (the `verdict` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Pass,
    Drop,
    /// Forwarded by the XDP program (XDP_REDIRECT).
    Fastpath,
    /// Forwarded by the TC step of the redirect fast path (`bpf_redirect_neigh`: the next
    /// hop's neighbour was not resolved when the packet arrived).
    FastpathTc,
}

impl Label for Verdict {
    const WHAT: &'static str = "verdict";
    const ALL: &'static [Verdict] = &[
        Verdict::Pass,
        Verdict::Drop,
        Verdict::Fastpath,
        Verdict::FastpathTc,
    ];

    fn as_str(self) -> &'static str {
        match self {
            // The datapath's own words where they are the verdict's.
            Verdict::Pass => Outcome::Pass.as_str(),
            Verdict::Fastpath => Outcome::Fastpath.as_str(),
            Verdict::FastpathTc => Outcome::FastpathTc.as_str(),
            // The only APNs drop is the provider rule; its reason is a separate label, so
            // the verdict says just "drop" (see `classify`).
            Verdict::Drop => "drop",
        }
    }
}

/// TCP flags the datapath counts on APNs traffic (the `event` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcpEvent {
    /// SYN without ACK: a connection attempt.
    Syn,
    /// SYN with ACK: an answered attempt.
    Synack,
    Rst,
    Fin,
}

impl Label for TcpEvent {
    const WHAT: &'static str = "TCP event";
    const ALL: &'static [TcpEvent] = &[
        TcpEvent::Syn,
        TcpEvent::Synack,
        TcpEvent::Rst,
        TcpEvent::Fin,
    ];

    fn as_str(self) -> &'static str {
        match self {
            TcpEvent::Syn => "syn",
            TcpEvent::Synack => "synack",
            TcpEvent::Rst => "rst",
            TcpEvent::Fin => "fin",
        }
    }
}

impl TcpEvent {
    /// This event's count in a counter value.
    pub const fn count_in(self, value: &CounterValue) -> u64 {
        match self {
            TcpEvent::Syn => value.syn,
            TcpEvent::Synack => value.synack,
            TcpEvent::Rst => value.rst,
            TcpEvent::Fin => value.fin,
        }
    }
}

/// Outcomes that are neither APNs traffic nor a policy drop (the `class` label is their
/// [`Outcome::as_str`]).
pub const OTHER_CLASSES: [Outcome; 5] = [
    Outcome::NotIp,
    Outcome::NotApns,
    Outcome::Fragment,
    Outcome::Malformed,
    Outcome::Unfinished,
];

/// What a counter entry is, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// APNs traffic: `direction` is outbound or inbound.
    Apns {
        direction: Direction,
        port: u16,
        verdict: Verdict,
    },
    /// Dropped by a rule that judges no APNs flow (no direction): the pinhole rule (the peer
    /// is not Apple) or the unfinished-headers rule (no ports were read).
    Dropped(DropReason),
    /// An inbound connection attempt on an APNs `port` (a SYN from Apple's side: APNs never
    /// opens a connection inbound), passed (monitor) or dropped (enforce). Not APNs traffic:
    /// kept out of the APNs flows.
    InboundOpen { port: u16, verdict: Verdict },
    /// One of [`OTHER_CLASSES`].
    Other(Outcome),
}

/// The one place an [`Outcome`] becomes a verdict, a drop reason or an other-class.
///
/// Mapped explicitly, without a wildcard, so a new outcome in apns-common fails to compile
/// here instead of being reported under the wrong label. `None` for codes this agent does not
/// know or combinations the datapath never writes (APNs outcomes without a direction): those
/// are skipped rather than guessed at.
pub fn classify(key: &CounterKey) -> Option<Class> {
    let outcome = Outcome::from_u8(key.outcome)?;
    let direction = Direction::from_u8(key.direction)?;
    let apns = |verdict| match direction {
        Direction::Outbound | Direction::Inbound => Some(Class::Apns {
            direction,
            port: key.port,
            verdict,
        }),
        Direction::None => None,
    };
    match outcome {
        Outcome::Pass => apns(Verdict::Pass),
        // Verdict "drop"; the reason ("provider") is counted by `Model::build`.
        Outcome::DropProvider => apns(Verdict::Drop),
        Outcome::Fastpath => apns(Verdict::Fastpath),
        Outcome::FastpathTc => apns(Verdict::FastpathTc),
        Outcome::DropPinhole => Some(Class::Dropped(DropReason::Pinhole)),
        Outcome::DropUnfinished => Some(Class::Dropped(DropReason::Unfinished)),
        Outcome::InboundOpen | Outcome::DropInboundOpen => match direction {
            Direction::Inbound => Some(Class::InboundOpen {
                port: key.port,
                verdict: if outcome == Outcome::InboundOpen {
                    Verdict::Pass
                } else {
                    Verdict::Drop
                },
            }),
            Direction::Outbound | Direction::None => None,
        },
        Outcome::NotIp
        | Outcome::NotApns
        | Outcome::Fragment
        | Outcome::Malformed
        | Outcome::Unfinished => Some(Class::Other(outcome)),
    }
}
