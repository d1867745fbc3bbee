//! Basic-auth checks for /metrics: where bcrypt runs, who waits for it, and how much a
//! source of failed logins may make it run.
//!
//! bcrypt runs on [`AUTH_THREADS`] threads of its own, never on the pool that renders scrapes
//! nor on the runtime's thread: a flood of logins slows other logins, not scrapes or signal
//! handling. Waiting checks are taken in the order of their source's recent failures (fewest
//! first), then of arrival, so a scraper's first login does not queue behind an attacker's
//! guesses; at most [`MAX_WAITING`] wait.
//!
//! Each source (an IPv4 address, an IPv6 /64) may fail [`FAILED_LOGINS_BURST`] logins, then
//! one more every [`FAILED_LOGIN_REFILL`]; past that its logins are refused without a check
//! ([`Verdict::Throttled`]) until it earns one back. Only failed checks count: a request
//! without credentials costs no bcrypt, and credentials that passed are remembered
//! (`web_config`), so an authenticated scraper is never throttled. The failure records are
//! bounded ([`SOURCES`]): when full, the source with the fewest failures to its name is
//! forgotten.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashMap},
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::sync::oneshot;

use crate::telemetry::{
    admission::MAX_CONNECTIONS,
    web_config::{Check, Judgement, WebConfig},
};

/// Threads that run bcrypt. One: logins are rare (a scraper's credentials pass once and are
/// remembered), and a flood of them then takes at most one CPU of the gateway.
pub const AUTH_THREADS: usize = 1;

/// Checks that may wait for a thread: each admitted connection has at most one request in
/// flight, so more means the connections that asked are gone.
pub const MAX_WAITING: usize = MAX_CONNECTIONS;

/// Failed logins a source may make at once before it is throttled.
pub const FAILED_LOGINS_BURST: u32 = 5;

/// How long a throttled source waits for each further login.
pub const FAILED_LOGIN_REFILL: Duration = Duration::from_secs(10);

/// Sources whose failed logins are remembered at most (some 50 bytes each).
pub const SOURCES: usize = 1024;

/// What a request's credentials get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// No, malformed or wrong credentials.
    Denied,
    /// Not checked: the source failed too many logins lately.
    Throttled,
    /// Not checked: [`MAX_WAITING`] checks wait already.
    Busy,
}

/// Runs the checks; clones share the threads, which end when the last clone is dropped.
#[derive(Clone)]
pub struct Authenticator(Arc<Pool>);

/// Owns the threads' shared state; dropping it tells them to end.
struct Pool(Arc<Shared>);

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a check is queued or the pool closes.
    work: Condvar,
    budgets: Mutex<Budgets>,
}

#[derive(Default)]
struct Queue {
    waiting: BinaryHeap<Waiting>,
    arrivals: u64,
    closed: bool,
}

struct Waiting {
    /// The source's failed logins not yet earned back when the check was queued.
    failures: u32,
    arrival: u64,
    source: Source,
    check: Check,
    passed: oneshot::Sender<bool>,
}

impl Authenticator {
    /// Starts the bcrypt threads.
    pub fn start() -> anyhow::Result<Authenticator> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            work: Condvar::new(),
            budgets: Mutex::default(),
        });
        let pool = Pool(shared.clone());
        for n in 0..AUTH_THREADS {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("metrics-auth".into())
                .spawn(move || shared.work())
                .with_context(|| format!("starting /metrics' authentication thread {n}"))?;
        }
        Ok(Authenticator(Arc::new(pool)))
    }

    /// Checks a request's `Authorization` header (absent: `None`) from `peer` against `web`.
    pub async fn check(
        &self,
        web: &WebConfig,
        authorization: Option<&str>,
        peer: IpAddr,
    ) -> Verdict {
        let check = match web.judge(authorization) {
            Judgement::Allowed => return Verdict::Allowed,
            Judgement::Refused => return Verdict::Denied,
            Judgement::Check(check) => check,
        };
        let shared = &self.0 .0;
        let source = Source::of(peer);
        let Some(failures) = shared.budgets().reserve(source, Instant::now()) else {
            return Verdict::Throttled;
        };
        let (passed, verdict) = oneshot::channel();
        if !shared.enqueue(failures, source, check, passed) {
            shared.budgets().refund(source, Instant::now());
            return Verdict::Busy;
        }
        // The threads end only when the last Authenticator is dropped, and this is one.
        match verdict.await {
            Ok(true) => {
                if let Some(header) = authorization {
                    web.remember(header);
                }
                Verdict::Allowed
            }
            Ok(false) | Err(_) => Verdict::Denied,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.0.queue().closed = true;
        self.0.work.notify_all();
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Every change under these locks is one statement: a poisoned lock is consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn budgets(&self) -> MutexGuard<'_, Budgets> {
        self.budgets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a check; false when [`MAX_WAITING`] checks of connections still open wait.
    fn enqueue(
        &self,
        failures: u32,
        source: Source,
        check: Check,
        passed: oneshot::Sender<bool>,
    ) -> bool {
        let mut queue = self.queue();
        if queue.waiting.len() >= MAX_WAITING {
            // Checks whose connections were cut are answered by nobody.
            let mut gone = Vec::new();
            queue.waiting.retain(|waiting| {
                let open = !waiting.passed.is_closed();
                if !open {
                    gone.push(waiting.source);
                }
                open
            });
            let mut budgets = self.budgets();
            for source in gone {
                budgets.refund(source, Instant::now());
            }
            if queue.waiting.len() >= MAX_WAITING {
                return false;
            }
        }
        queue.arrivals += 1;
        let arrival = queue.arrivals;
        queue.waiting.push(Waiting {
            failures,
            arrival,
            source,
            check,
            passed,
        });
        self.work.notify_one();
        true
    }

    /// A bcrypt thread: takes the first check waiting, runs it unless nobody waits for it any
    /// more, settles the source's budget, answers.
    fn work(&self) {
        loop {
            let waiting = {
                let mut queue = self.queue();
                loop {
                    if queue.closed {
                        return;
                    }
                    if let Some(waiting) = queue.waiting.pop() {
                        break waiting;
                    }
                    queue = self
                        .work
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            // A check run costs its source's token unless it passed, even if nobody waits
            // for the answer any more: hanging up must not buy free guesses.
            let passed = (!waiting.passed.is_closed()).then(|| waiting.check.passes());
            if passed != Some(false) {
                self.budgets().refund(waiting.source, Instant::now());
            }
            if let Some(passed) = passed {
                let _ = waiting.passed.send(passed);
            }
        }
    }
}

/// The first check to run is the greatest: fewest failures of its source, then earliest.
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.failures, other.arrival).cmp(&(self.failures, self.arrival))
    }
}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Waiting {}

/// Where logins come from, as an attacker can vary it: an IPv4 address, or an IPv6 /64 (a
/// host usually has a whole one to pick addresses from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(peer: IpAddr) -> Source {
        match peer.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & (u128::MAX << 64);
                Source(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Source(v4),
        }
    }
}

/// Each source's failed logins, as a token bucket: [`FAILED_LOGINS_BURST`] tokens, one back
/// every [`FAILED_LOGIN_REFILL`]; a check takes one when queued and gives it back unless
/// it fails.
#[derive(Default)]
struct Budgets(HashMap<Source, Budget>);

struct Budget {
    tokens: f64,
    at: Instant,
    /// Told the log that this source is throttled: once until it has earned every failed
    /// login back, so a persistent guesser is one line, not one per refill.
    logged: bool,
}

impl Budget {
    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.at).as_secs_f64()
            / FAILED_LOGIN_REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(f64::from(FAILED_LOGINS_BURST));
        self.at = now;
    }

    /// Failed logins not yet earned back.
    fn failures(&self) -> u32 {
        (f64::from(FAILED_LOGINS_BURST) - self.tokens).ceil() as u32
    }
}

impl Budgets {
    /// Takes a token for a check from `source`: its failures not yet earned back, or `None`
    /// when it has none left.
    fn reserve(&mut self, source: Source, now: Instant) -> Option<u32> {
        if !self.0.contains_key(&source) && self.0.len() >= SOURCES {
            self.forget_one(now);
        }
        let budget = self.0.entry(source).or_insert(Budget {
            tokens: f64::from(FAILED_LOGINS_BURST),
            at: now,
            logged: false,
        });
        budget.refill(now);
        if budget.tokens >= f64::from(FAILED_LOGINS_BURST) {
            budget.logged = false;
        }
        if budget.tokens < 1.0 {
            if !budget.logged {
                budget.logged = true;
                tracing::warn!(
                    "/metrics: {FAILED_LOGINS_BURST} failed logins from {}; its logins are refused (429) without a check, one more allowed every {FAILED_LOGIN_REFILL:?}",
                    source.0
                );
            }
            return None;
        }
        let failures = budget.failures();
        budget.tokens -= 1.0;
        Some(failures)
    }

    /// Gives back the token of a check that did not fail.
    fn refund(&mut self, source: Source, now: Instant) {
        if let Some(budget) = self.0.get_mut(&source) {
            budget.refill(now);
            budget.tokens = (budget.tokens + 1.0).min(f64::from(FAILED_LOGINS_BURST));
        }
    }

    /// Forgets the source with the most tokens (one with all of them is as good as absent).
    fn forget_one(&mut self, now: Instant) {
        let richest = self
            .0
            .iter_mut()
            .map(|(source, budget)| {
                budget.refill(now);
                (*source, budget.tokens)
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(source, _)| source);
        if let Some(source) = richest {
            self.0.remove(&source);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::telemetry::web_config::{self, tests::basic};

    fn web(password: &str) -> WebConfig {
        web_config::tests::basic_auth("prom", password)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn a_source_that_keeps_failing_is_throttled_and_no_other() {
        let web = web("s3cret");
        let auth = Authenticator::start().unwrap();
        let attacker = ip("192.0.2.1");
        for n in 0..FAILED_LOGINS_BURST {
            let guess = basic("prom", &format!("guess{n}"));
            assert_eq!(
                auth.check(&web, Some(&guess), attacker).await,
                Verdict::Denied
            );
        }
        let right = basic("prom", "s3cret");
        // The right password too: the source is not checked any more for now.
        assert_eq!(
            auth.check(&web, Some(&right), attacker).await,
            Verdict::Throttled
        );
        // Unknown users count the same.
        assert_eq!(
            auth.check(&web, Some(&basic("nobody", "x")), attacker)
                .await,
            Verdict::Throttled
        );
        // Requests without credentials never cost a check, so never count.
        for _ in 0..FAILED_LOGINS_BURST * 2 {
            assert_eq!(
                auth.check(&web, None, ip("192.0.2.2")).await,
                Verdict::Denied
            );
        }
        assert_eq!(
            auth.check(&web, Some(&right), ip("192.0.2.2")).await,
            Verdict::Allowed
        );
        // Remembered now: allowed from anywhere, the throttled source too, without a check.
        assert_eq!(
            auth.check(&web, Some(&right), attacker).await,
            Verdict::Allowed
        );
        // An IPv6 /64 is one source; the next /64 is another.
        for n in 0..FAILED_LOGINS_BURST {
            let from = ip(&format!("2001:db8:0:1::{n}"));
            let guess = basic("prom", &format!("guess{n}"));
            assert_eq!(auth.check(&web, Some(&guess), from).await, Verdict::Denied);
        }
        let guess = basic("prom", "again");
        assert_eq!(
            auth.check(&web, Some(&guess), ip("2001:db8:0:1:ffff::1"))
                .await,
            Verdict::Throttled
        );
        assert_eq!(
            auth.check(&web, Some(&guess), ip("2001:db8:0:2::1")).await,
            Verdict::Denied
        );
        // IPv4-mapped IPv6 (a dual-stack listener) is the IPv4 address.
        assert_eq!(
            auth.check(&web, Some(&guess), ip("::ffff:192.0.2.1")).await,
            Verdict::Throttled
        );
    }

    #[test]
    fn a_throttled_source_earns_a_login_back_per_refill() {
        let mut budgets = Budgets::default();
        let source = Source::of(ip("192.0.2.1"));
        let start = Instant::now();
        for failures in 0..FAILED_LOGINS_BURST {
            assert_eq!(budgets.reserve(source, start), Some(failures));
        }
        assert_eq!(budgets.reserve(source, start), None);
        let later = start + FAILED_LOGIN_REFILL;
        assert_eq!(
            budgets.reserve(source, later),
            Some(FAILED_LOGINS_BURST - 1)
        );
        assert_eq!(budgets.reserve(source, later), None);
        // A check that passed (or was never run) gives its token back.
        budgets.refund(source, later);
        assert_eq!(
            budgets.reserve(source, later),
            Some(FAILED_LOGINS_BURST - 1)
        );
    }

    #[test]
    fn failure_records_are_bounded_and_the_least_indebted_is_forgotten() {
        let mut budgets = Budgets::default();
        let now = Instant::now();
        let attacker = Source::of(ip("192.0.2.1"));
        for _ in 0..FAILED_LOGINS_BURST {
            budgets.reserve(attacker, now);
        }
        for n in 0..SOURCES as u32 * 2 {
            let source = Source::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)));
            budgets.reserve(source, now).unwrap();
            assert!(budgets.0.len() <= SOURCES);
        }
        // Every other source owes one failed login; the attacker five: it is still known.
        assert_eq!(budgets.reserve(attacker, now), None);
    }

    #[test]
    fn checks_run_fewest_failures_first_then_in_arrival_order() {
        let web = web("s3cret");
        let mut heap = BinaryHeap::new();
        let mut answers = Vec::new();
        for (failures, arrival) in [(3, 1), (0, 2), (1, 3), (0, 4)] {
            let Judgement::Check(check) = web.judge(Some(&basic("prom", "x"))) else {
                panic!("wrong credentials need a check");
            };
            let (passed, answer) = oneshot::channel();
            answers.push(answer);
            heap.push(Waiting {
                failures,
                arrival,
                source: Source::of(ip("192.0.2.1")),
                check,
                passed,
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|w| w.arrival)).collect();
        assert_eq!(order, [2, 4, 3, 1]);
    }

    #[test]
    fn at_most_max_waiting_checks_wait_and_those_nobody_waits_for_make_room() {
        let web = web("s3cret");
        let shared = Shared {
            queue: Mutex::default(),
            work: Condvar::new(),
            budgets: Mutex::default(),
        };
        let now = Instant::now();
        let mut answers = Vec::new();
        for n in 0..MAX_WAITING as u32 {
            let source = Source::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)));
            let failures = shared.budgets().reserve(source, now).unwrap();
            let Judgement::Check(check) = web.judge(Some(&basic("prom", "x"))) else {
                panic!("wrong credentials need a check");
            };
            let (passed, answer) = oneshot::channel();
            answers.push(answer);
            assert!(shared.enqueue(failures, source, check, passed));
        }
        let late = || {
            let Judgement::Check(check) = web.judge(Some(&basic("prom", "x"))) else {
                panic!("wrong credentials need a check");
            };
            let (passed, answer) = oneshot::channel();
            let source = Source::of(ip("192.0.2.9"));
            (shared.enqueue(0, source, check, passed), answer)
        };
        assert!(!late().0);
        // The first connection hangs up: its check makes room, and its token comes back.
        drop(answers.remove(0));
        let (queued, _answer) = late();
        assert!(queued);
        let first = Source::of(IpAddr::V4(Ipv4Addr::from(0x0a00_0000)));
        assert_eq!(shared.budgets().reserve(first, now), Some(0));
    }
}
