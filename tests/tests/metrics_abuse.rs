//! /metrics under abuse.
//!
//! 5,000 half-open connections held open, then 50,000 scrapes: a normal scrape still answers
//! (with exact content) while the half-open ones are held, and the agent's memory stays
//! within the 20 MiB goal throughout (sampled from /proc/PID/status; BENCHMARKS.md reports
//! the figures this test prints, for the release binary:
//! `APNS_AGENT_BINARY=target/release/apns-agent`).
//!
//! What a load can grow is the agent's anonymous memory (heap, stacks); the rest of its
//! resident set is its own executable's pages, 7.3 MiB for the release binary and about 18
//! MiB for the debug one the test suite runs. So the test holds the anonymous part to the
//! goal minus the release binary's share, and prints both.
//!
//! With basic auth: 64 keep-alive clients without credentials (a request every 2 s) and a
//! flood of wrong passwords cannot lock a scraper out; the test prints the scrapes' latency
//! (BENCHMARKS.md reports it). Needs root.

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use apns_tests::{
    agent::{basic_credentials, get_metrics, scrape_metrics, spawn_run, TestPins},
    lab::{Lab, LabOptions, Role, GW_IF_CLIENT},
    scratch::Scratch,
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
    apns_tests::require_root!();
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

/// Keep-alive clients without credentials, each sending a request every [`SLOW_EVERY`].
const SLOW_CLIENTS: usize = 64;
const SLOW_EVERY: Duration = Duration::from_secs(2);
/// Addresses guessing passwords as fast as they are answered, one connection each.
const GUESSERS: u8 = 4;
/// Scrapes with the right credentials during the attack, a second apart.
const SCRAPES_UNDER_ATTACK: usize = 5;
/// The hashes' bcrypt cost: the debug agent the tests run takes some 40 ms to check one, of
/// the order the release agent takes for cost 10 (BENCHMARKS.md).
const BCRYPT_COST: u32 = 6;
/// The agent's failed logins per source before it throttles the source (auth.rs).
const FAILED_LOGINS_BURST: u64 = 5;
const FAILED_LOGIN_REFILL: Duration = Duration::from_secs(10);

/// HTTP status codes that clients got, by code, and connections they lost.
#[derive(Default)]
struct Tally {
    statuses: Mutex<BTreeMap<u16, u64>>,
    lost: AtomicU64,
}

impl Tally {
    fn count(&self, answer: io::Result<u16>) {
        match answer {
            Ok(status) => *self.statuses.lock().unwrap().entry(status).or_default() += 1,
            Err(_) => {
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn of(&self, status: u16) -> u64 {
        self.statuses
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
    }
}

/// A keep-alive connection to /metrics from a chosen loopback address of the gateway.
struct KeepAlive(BufReader<TcpStream>);

impl KeepAlive {
    fn connect(lab: &Lab, from: Ipv4Addr, to: SocketAddr) -> io::Result<KeepAlive> {
        let stream = lab
            .in_ns(Role::Gw, move || {
                use socket2::{Domain, Socket, Type};
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                socket.bind(&SocketAddr::from((from, 0)).into())?;
                socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
                Ok::<_, io::Error>(TcpStream::from(socket))
            })
            .map_err(io::Error::other)??;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(KeepAlive(BufReader::new(stream)))
    }

    /// GET /metrics on this connection; the status code, once the whole answer is read.
    fn get(&mut self, authorization: Option<&str>) -> io::Result<u16> {
        let header =
            authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
        let request = format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{header}\r\n");
        self.0.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        self.0.read_line(&mut line)?;
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {line:?}")))?;
        let mut length = 0;
        loop {
            line.clear();
            self.0.read_line(&mut line)?;
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().map_err(io::Error::other)?;
                }
            }
        }
        io::copy(&mut self.0.by_ref().take(length), &mut io::sink())?;
        Ok(status)
    }
}

/// A client without credentials: a request every [`SLOW_EVERY`] on one keep-alive
/// connection, a new one when the agent closed it.
fn slow_client(lab: &Lab, to: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut connection = None;
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            connection = KeepAlive::connect(lab, Ipv4Addr::LOCALHOST, to).ok();
        }
        if let Some(open) = &mut connection {
            let answer = open.get(None);
            if answer.is_err() {
                connection = None;
            }
            tally.count(answer);
        }
        let next = Instant::now() + SLOW_EVERY;
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Wrong passwords for the right user from `from`, each sent as soon as the last is
/// answered, reconnecting at once when the agent closed the connection.
fn guesser(lab: &Lab, from: Ipv4Addr, to: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut connection = None;
    let mut guess = 0;
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            connection = KeepAlive::connect(lab, from, to).ok();
        }
        if let Some(open) = &mut connection {
            guess += 1;
            let answer = open.get(Some(&basic_credentials(
                "prometheus",
                &format!("guess{guess}"),
            )));
            if answer.is_err() {
                connection = None;
            }
            tally.count(answer);
        }
    }
}

#[test]
fn unauthenticated_clients_and_a_flood_of_wrong_passwords_cannot_lock_out_a_scraper() {
    apns_tests::require_root!();
    let lab = Lab::new(LabOptions::default()).unwrap();
    let pins = TestPins::new();
    let scratch = Scratch::new("metrics-lockout");
    let hash = bcrypt::hash("s3cret", BCRYPT_COST).unwrap();
    let web = scratch.file(
        "web.yml",
        &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    );
    let _agent = spawn_run(
        &lab,
        &pins,
        &[
            "run",
            "--iface",
            GW_IF_CLIENT.name,
            "--metrics-addr",
            METRICS,
            "--web-config-file",
            &web.display().to_string(),
        ],
    )
    .unwrap();
    let addr: SocketAddr = METRICS.parse().unwrap();
    let right = basic_credentials("prometheus", "s3cret");
    let (stop, slow) = (AtomicBool::new(false), Tally::default());
    let guessers: Vec<(Ipv4Addr, Tally)> = (0..GUESSERS)
        .map(|n| (Ipv4Addr::new(127, 0, 0, 2 + n), Tally::default()))
        .collect();
    let started = Instant::now();
    let scrapes = std::thread::scope(|scope| {
        let (lab, stop, slow) = (&lab, &stop, &slow);
        for _ in 0..SLOW_CLIENTS {
            scope.spawn(move || slow_client(lab, addr, stop, slow));
        }
        for (from, tally) in &guessers {
            scope.spawn(move || guesser(lab, *from, addr, stop, tally));
        }
        // Every slow client holds a connection and was refused on it: the agent's places
        // are taken, and the guesses queue for bcrypt.
        while slow.of(401) < SLOW_CLIENTS as u64 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the slow clients never got their 401s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut scrapes = Vec::new();
        for _ in 0..SCRAPES_UNDER_ATTACK {
            let asked = Instant::now();
            let answer = get_metrics(lab, addr, Some(&right));
            scrapes.push((asked.elapsed(), answer));
            std::thread::sleep(Duration::from_secs(1));
        }
        stop.store(true, Ordering::Relaxed);
        scrapes
    });
    let attack = started.elapsed();
    let latencies: Vec<String> = scrapes
        .iter()
        .map(|(latency, _)| format!("{:.0?}", latency))
        .collect();
    eprintln!(
        "metrics lockout: {SLOW_CLIENTS} clients without credentials ({} answers 401, {} connections lost), {GUESSERS} guessing addresses ({} answers 401, {} answers 429) for {attack:.1?}; scrapes with the right credentials answered in {}",
        slow.of(401),
        slow.lost.load(Ordering::Relaxed),
        guessers.iter().map(|(_, tally)| tally.of(401)).sum::<u64>(),
        guessers.iter().map(|(_, tally)| tally.of(429)).sum::<u64>(),
        latencies.join(", "),
    );
    for (latency, answer) in &scrapes {
        let (status, body) = answer.as_ref().unwrap_or_else(|err| panic!("{err:#}"));
        assert_eq!(*status, 200, "after {latency:?}: {body}");
        assert!(body
            .lines()
            .any(|line| line.starts_with("apns_agent_info{")));
    }
    assert_eq!(
        slow.statuses
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [401]
    );
    // Each guessing address got its first five guesses checked (and refused), then 429s:
    // at most one more check per refill period.
    let refills = (attack.as_secs_f64() / FAILED_LOGIN_REFILL.as_secs_f64()).ceil() as u64;
    for (from, tally) in &guessers {
        let statuses = tally.statuses.lock().unwrap().clone();
        assert_eq!(
            statuses.keys().copied().collect::<Vec<_>>(),
            [401, 429],
            "{from}: {statuses:?}"
        );
        let checked = statuses[&401];
        assert!(
            (FAILED_LOGINS_BURST..=FAILED_LOGINS_BURST + refills).contains(&checked),
            "{from}: {checked} guesses checked in {attack:?}"
        );
    }

    // Guesses from the scraper's own address throttle it too, but credentials that passed
    // are remembered: the scraper is not locked out.
    for n in 0..FAILED_LOGINS_BURST {
        let guess = basic_credentials("prometheus", &format!("local{n}"));
        assert_eq!(get_metrics(&lab, addr, Some(&guess)).unwrap().0, 401);
    }
    assert_eq!(get_metrics(&lab, addr, Some(&right)).unwrap().0, 200);
    let (status, _) =
        get_metrics(&lab, addr, Some(&basic_credentials("prometheus", "local"))).unwrap();
    assert_eq!(status, 429);
    let (status, _) = get_metrics(&lab, addr, Some(&basic_credentials("nobody", "x"))).unwrap();
    assert_eq!(status, 429);
    assert_eq!(get_metrics(&lab, addr, Some(&right)).unwrap().0, 200);
}
