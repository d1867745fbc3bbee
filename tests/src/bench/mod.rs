//! `cargo xtask bench`: apns-agent measured side by side with a floor, xdp-filter and
//! nftables, on one machine in one run (issue 7). The binary is `src/bin/apns-bench.rs`; this
//! module holds the sections:
//!
//! 1. [`testrun`]: ns per packet through BPF_PROG_TEST_RUN for eleven packet classes and a gateway mix, for our
//!    classifier, the floor program and xdp-filter (loaded in a scratch namespace, see
//!    [`xdp_filter`]), and how the cost grows with the allow-list.
//! 2. [`forward`]: packets per second through the lab gateway with no program, a floor, the
//!    agent and an nftables ruleset, interleaved A B A B.
//! 3. [`control`]: policy apply time, counter read time, agent memory after a soak with
//!    /metrics scraped every second, memory of the pinned maps.
//!
//! [`report`] turns the figures into a markdown and a JSON report, with the goals of the
//! issue shown as met or not met. Nothing here asserts a timing: a benchmark only reports.

pub mod control;
pub mod forward;
pub mod report;
pub mod stats;
pub mod testrun;
pub mod xdp_filter;

use std::time::Duration;

/// How much work each section does: the full plan is what the issue asks for, the quick one
/// only checks that every figure can be produced (CI runs it in well under two minutes).
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// BPF_PROG_TEST_RUN calls per program and packet class; the median is reported.
    pub test_runs: usize,
    /// Repeats per BPF_PROG_TEST_RUN call. Large on purpose: each call with repeat > 1 pays a
    /// fixed ~16 ms in the kernel (it swaps the XDP dispatcher), which the kernel's per-run
    /// duration leaves out but wall time would not.
    pub repeat: u32,
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
            test_runs: 5,
            repeat: 1_000_000,
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
            test_runs: 3,
            repeat: 20_000,
            forward_rounds: 2,
            forward_packets: [(64, 20_000), (1400, 10_000)],
            apply_runs: 1,
            snapshot_reads: 21,
            soak,
        }
    }
}
