//! `cargo xtask bench`: apns-agent measured side by side with a floor, xdp-filter and
//! nftables, on one machine in one run (issue 7). The binary is `src/bin/apns-bench.rs`; this
//! module holds the sections:
//!
//! 1. [`testrun`]: ns per packet through BPF_PROG_TEST_RUN for eleven packet classes and a
//!    gateway mix, for our classifier, the floor program and xdp-filter (loaded in a scratch
//!    namespace, see [`xdp_filter`]), in many short rounds with a 95 % interval per figure
//!    ([`stats::Estimate`]); and how the cost grows with the allow-list.
//! 2. [`forward`]: packets per second through the lab gateway with no program, a floor, the
//!    agent and an nftables ruleset, interleaved A B A B.
//! 3. [`control`]: policy apply time, counter read time, agent memory after a soak with
//!    /metrics scraped every second and its peak through start, reload, upgrade and
//!    migration, memory of the pinned maps.
//!
//! [`report`] turns the figures into a markdown and a JSON report, with the goals of the
//! issue shown as met, not met or undecided (an interval straddling the goal), and
//! [`charts`] draws its pictures. Nothing here asserts a timing: a benchmark only reports.

pub mod charts;
pub mod control;
pub mod forward;
pub mod report;
pub mod stats;
pub mod testrun;
pub mod xdp_filter;

use std::time::Duration;

/// How sections 1 and 2 take turns: short rounds, each running every program once on the
/// same frames, until the time budget is spent.
#[derive(Clone, Debug)]
pub struct Rounds {
    /// Repeats per BPF_PROG_TEST_RUN call: small enough that a round is short and its
    /// programs see the same machine, large enough that a call's fixed cost (a few µs) is a
    /// fraction of a nanosecond per packet.
    pub repeat: u32,
    /// Rounds run whatever the budget (a 95 % interval of a median needs 6).
    pub min: usize,
    /// No round starts after this much time, once `min` are done.
    pub budget: Duration,
    /// Separately loaded instances of each program (ours, the floor, xdp-filter) that the
    /// rounds take in turn: two loads of one object differ by a few percent per packet
    /// (where the kernel put their code and maps), a difference no number of rounds on one
    /// load would show; the intervals take in a 95 % interval for the instances
    /// (`stats::Estimate::of_rotating`).
    pub instances: usize,
}

/// How much work each section does: the full plan is what the issue asks for; the quick one
/// (CI, and a quick look) takes about a minute, its per-packet figures from 8 s of rounds.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Section 1's rounds (every packet class through the three programs).
    pub per_packet: Rounds,
    /// Section 2's rounds, per address family (the floor and four datapaths on two packets).
    pub scaling: Rounds,
    /// Rounds of the forwarding benchmark; each round runs every configuration once, so each
    /// round gives one (configuration, no program) pair.
    pub forward_rounds: usize,
    /// UDP datagrams the client sends per forwarding run, by payload size.
    pub forward_packets: [(usize, u64); 2],
    /// Fresh datapaths the 10,000-prefix apply is timed on.
    pub apply_runs: usize,
    /// Full counter reads timed.
    pub snapshot_reads: usize,
    /// How long the agent runs with /metrics scraped every second before its RSS is read.
    pub soak: Duration,
}

impl Plan {
    pub fn full(soak: Duration) -> Plan {
        Plan {
            quick: false,
            per_packet: Rounds {
                repeat: 100_000,
                min: 30,
                budget: Duration::from_secs(90),
                instances: 8,
            },
            scaling: Rounds {
                repeat: 100_000,
                min: 30,
                budget: Duration::from_secs(30),
                instances: 3,
            },
            forward_rounds: 10,
            forward_packets: [(64, 300_000), (1400, 200_000)],
            apply_runs: 5,
            snapshot_reads: 201,
            soak,
        }
    }

    pub fn quick(soak: Duration) -> Plan {
        Plan {
            quick: true,
            per_packet: Rounds {
                repeat: 20_000,
                min: 20,
                budget: Duration::from_secs(8),
                instances: 6,
            },
            scaling: Rounds {
                repeat: 20_000,
                min: 20,
                budget: Duration::from_secs(2),
                instances: 3,
            },
            forward_rounds: 2,
            forward_packets: [(64, 10_000), (1400, 5_000)],
            apply_runs: 1,
            snapshot_reads: 21,
            soak,
        }
    }
}
