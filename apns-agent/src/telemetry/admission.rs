//! HTTP admission for /metrics: which connections the agent keeps. At most
//! [`MAX_CONNECTIONS`] at once, each for at most [`CONNECTION_LIFETIME`]. At the cap, a new
//! connection takes the place of the one that has least claim to it, by its [`Standing`]:
//! refused clients first, then connections that have sent nothing yet, then those whose
//! credentials are being checked, then authenticated ones idle between scrapes. A connection
//! whose authenticated request is being answered is never cut; when every connection is
//! answering one, the new connection is closed.
//!
//! A connection counts as authenticated only once a request on it passed the check (with no
//! users configured, every request passes), never merely for sending a request: so clients
//! without credentials, however busy, cannot hold places an authenticated scraper needs, and
//! a flood of half-open connections costs the agent at most [`MAX_CONNECTIONS`] connections'
//! buffers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::oneshot;

/// Connections served at once. Prometheus scrapes a target over one connection at a time;
/// a few dozen leave room for several scrapers, curl and a textfile-less node_exporter
/// alike, while bounding memory (hyper holds a read and a write buffer, some KiB each, per
/// connection).
pub const MAX_CONNECTIONS: usize = 64;

/// The longest a connection lives, whatever it does: a client that reads the response
/// slowly (or never), or keeps a connection alive between scrapes, lets go of it by then.
/// Prometheus' default scrape timeout is 10 s.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Where a connection stands, in the order connections are cut at the cap (the first
/// variant first; within one, the connection that has stood there longest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Its last request was refused (no, wrong or throttled credentials).
    Refused,
    /// No request yet: half-open, slow to send its headers, or about to.
    Fresh,
    /// The credentials of its request are being checked.
    Checking,
    /// Authenticated, no request in flight: idle between scrapes (it reconnects cheaply,
    /// its credentials are remembered).
    Trusted,
    /// An authenticated request is being answered: never cut.
    Answering,
}

/// The table of admitted connections, shared by the accept loop and the connections.
#[derive(Clone, Default)]
pub struct Admission(Arc<Mutex<Seats>>);

#[derive(Default)]
struct Seats {
    next_id: u64,
    /// Counts standing changes: orders connections within a standing.
    clock: u64,
    connections: HashMap<u64, Seat>,
}

struct Seat {
    standing: Standing,
    /// `Seats::clock` when it took this standing.
    since: u64,
    /// Fired to cut the connection.
    cut: oneshot::Sender<()>,
}

/// One admitted connection: its id, and what fires when it is cut. Dropping it (the
/// connection ended) frees its place.
pub struct Admitted {
    pub id: u64,
    pub evicted: oneshot::Receiver<()>,
    admission: Admission,
}

impl Admission {
    fn table(&self) -> std::sync::MutexGuard<'_, Seats> {
        // A panic while holding this lock leaves the table consistent (every change is one
        // statement), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection ([`Standing::Fresh`]), cutting the one with least claim at
    /// the cap; `None` when every admitted connection is answering a request.
    pub fn admit(&self) -> Option<Admitted> {
        let mut table = self.table();
        if table.connections.len() >= MAX_CONNECTIONS {
            let victim = table
                .connections
                .iter()
                .filter(|(_, seat)| seat.standing != Standing::Answering)
                .min_by_key(|(_, seat)| (seat.standing, seat.since))
                .map(|(&id, _)| id)?;
            if let Some(seat) = table.connections.remove(&victim) {
                // The connection may have ended meanwhile; then there is nobody to tell.
                let _ = seat.cut.send(());
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        table.clock += 1;
        let (cut, evicted) = oneshot::channel();
        let since = table.clock;
        table.connections.insert(
            id,
            Seat {
                standing: Standing::Fresh,
                since,
                cut,
            },
        );
        Some(Admitted {
            id,
            evicted,
            admission: self.clone(),
        })
    }

    /// Connection `id` now stands at `standing` (nothing if it was cut meanwhile).
    pub fn stand(&self, id: u64, standing: Standing) {
        let mut table = self.table();
        table.clock += 1;
        let now = table.clock;
        if let Some(seat) = table.connections.get_mut(&id) {
            if seat.standing != standing {
                seat.standing = standing;
                seat.since = now;
            }
        }
    }

    /// How many connections are admitted now.
    #[cfg(test)]
    fn admitted(&self) -> usize {
        self.table().connections.len()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.table().connections.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(admission: &Admission) -> Vec<Admitted> {
        (0..MAX_CONNECTIONS)
            .map(|_| admission.admit().unwrap())
            .collect()
    }

    fn cut(admitted: &mut Admitted) -> bool {
        admitted.evicted.try_recv().is_ok()
    }

    #[test]
    fn refused_clients_go_first_then_the_slow_then_those_being_checked() {
        let admission = Admission::default();
        let mut admitted = full(&admission);
        // 0: refused; 1: being checked; 2 and 3: refused later; 4: authenticated, idle;
        // 5: answering; the rest have sent nothing.
        admission.stand(admitted[0].id, Standing::Refused);
        admission.stand(admitted[1].id, Standing::Checking);
        admission.stand(admitted[2].id, Standing::Refused);
        admission.stand(admitted[3].id, Standing::Refused);
        admission.stand(admitted[4].id, Standing::Trusted);
        admission.stand(admitted[5].id, Standing::Answering);

        // Refused ones first, longest refused first.
        let mut newcomers = vec![admission.admit().unwrap()];
        assert!(cut(&mut admitted[0]));
        newcomers.push(admission.admit().unwrap());
        assert!(cut(&mut admitted[2]));
        // A client refused again moves to the back of the refused.
        admission.stand(admitted[3].id, Standing::Checking);
        admission.stand(admitted[3].id, Standing::Refused);
        newcomers.push(admission.admit().unwrap());
        assert!(cut(&mut admitted[3]));
        assert_eq!(admission.admitted(), MAX_CONNECTIONS);

        // Then those that sent nothing, oldest first (the newcomers are younger).
        for (at, fresh) in admitted.iter_mut().enumerate().skip(6) {
            newcomers.push(admission.admit().unwrap());
            assert!(cut(fresh), "connection {at}");
        }
        for at in [1, 4, 5] {
            assert!(!cut(&mut admitted[at]), "connection {at}");
        }
        // Then the newcomers, which have sent nothing either, then the one being checked,
        // then the authenticated idle one; the answering one never.
        for newcomer in &mut newcomers {
            admission.stand(newcomer.id, Standing::Answering);
        }
        let mut last = admission.admit().unwrap();
        assert!(cut(&mut admitted[1]));
        admission.stand(last.id, Standing::Answering);
        let _after_last = admission.admit().unwrap();
        assert!(cut(&mut admitted[4]));
        assert!(!cut(&mut admitted[5]));
        assert!(!cut(&mut last));
    }

    #[test]
    fn when_every_connection_is_answering_a_new_one_is_refused() {
        let admission = Admission::default();
        let admitted = full(&admission);
        for connection in &admitted {
            admission.stand(connection.id, Standing::Answering);
        }
        assert!(admission.admit().is_none());
        // Ended connections free their places.
        drop(admitted);
        assert_eq!(admission.admitted(), 0);
        assert!(admission.admit().is_some());
    }
}
