//! /metrics under abuse: 5,000 half-open connections held open, then 50,000 scrapes. A
//! normal scrape still answers (with exact content) while the half-open ones are held, and
//! the agent's memory stays within the 20 MiB goal throughout (sampled from
//! /proc/PID/status; BENCHMARKS.md reports the figures this test prints, for the release
//! binary: `APNS_AGENT_BINARY=target/release/apns-agent`). Needs root.
//!
//! What a load can grow is the agent's anonymous memory (heap, stacks); the rest of its
//! resident set is its own executable's pages, 7.3 MiB for the release binary and about 18
//! MiB for the debug one the test suite runs. So the test holds the anonymous part to the
//! goal minus the release binary's share, and prints both.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use apns_tests::{
    agent::{scrape_metrics, spawn_run, TestPins},
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT},
};
use nix::sys::resource::{getrlimit, setrlimit, Resource};

const METRICS: &str = "127.0.0.1:15223";
const HALF_OPEN: usize = 5_000;
const SCRAPES: usize = 50_000;
const SCRAPERS: usize = 4;
/// The agent's resident memory goal under any scrape load, less what its release
/// executable's own pages take (see the module documentation).
const ANON_LIMIT_KIB: u64 = (20 * 1024) - (8 * 1024);

/// A field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// One scrape over an already connected stream; the body's length, or an error.
fn scrape(mut stream: TcpStream) -> std::io::Result<usize> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    if !response.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&response).into_owned(),
        ));
    }
    Ok(response.len())
}

#[test]
fn half_open_connections_and_a_scrape_flood_leave_the_agent_small_and_answering() {
    // Enough descriptors for the half-open connections and the scrapers.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65_536), hard).unwrap();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let agent = spawn_run(
        &lab,
        &pins,
        &[
            "run",
            "--iface",
            GW_IF_CLIENT.name,
            "--metrics-addr",
            METRICS,
        ],
    )
    .unwrap();
    let pid = agent.id();
    let addr: SocketAddr = METRICS.parse().unwrap();
    let started = Instant::now();
    let before = (status_kib(pid, "VmRSS"), status_kib(pid, "RssAnon"));
    let (peak_rss, peak_anon) = (AtomicU64::new(before.0), AtomicU64::new(before.1));
    let sample = || {
        peak_rss.fetch_max(status_kib(pid, "VmRSS"), Ordering::Relaxed);
        peak_anon.fetch_max(status_kib(pid, "RssAnon"), Ordering::Relaxed);
    };

    // Half-open: connected, never a byte sent. The agent keeps at most its cap of them.
    let mut held = Vec::with_capacity(HALF_OPEN);
    for i in 0..HALF_OPEN {
        held.push(
            lab.connect(Role::Gw, addr, Duration::from_secs(10))
                .unwrap(),
        );
        if i % 500 == 0 {
            sample();
        }
    }
    let text = scrape_metrics(&lab, addr).unwrap();
    assert!(
        text.lines()
            .any(|line| line.starts_with("apns_agent_info{")),
        "a scrape beside {HALF_OPEN} half-open connections: {text}"
    );
    sample();

    // The flood, from a few scrapers at once.
    let failed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..SCRAPERS {
            scope.spawn(|| {
                for i in 0..SCRAPES / SCRAPERS {
                    let answered = lab
                        .connect(Role::Gw, addr, Duration::from_secs(10))
                        .and_then(scrape);
                    if answered.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if i % 1_000 == 0 {
                        sample();
                    }
                }
            });
        }
    });
    drop(held);
    let text = scrape_metrics(&lab, addr).unwrap();
    assert!(text
        .lines()
        .any(|line| line.starts_with("apns_agent_info{")));
    sample();
    let after = (status_kib(pid, "VmRSS"), status_kib(pid, "RssAnon"));
    let peak = (
        peak_rss.load(Ordering::Relaxed),
        peak_anon.load(Ordering::Relaxed),
    );
    eprintln!(
        "metrics abuse: {HALF_OPEN} half-open connections and {SCRAPES} scrapes ({} failed) in {:.0?}; agent VmRSS (RssAnon) {} ({}) KiB before, {} ({}) KiB peak, {} ({}) KiB after",
        failed.load(Ordering::Relaxed),
        started.elapsed(),
        before.0, before.1, peak.0, peak.1, after.0, after.1
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "scrapes that got no answer"
    );
    assert!(
        peak.1 <= ANON_LIMIT_KIB,
        "the agent's anonymous memory reached {} KiB (at most {ANON_LIMIT_KIB} KiB)",
        peak.1
    );
}
