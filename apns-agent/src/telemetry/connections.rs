//! What /metrics clients may hold of the agent: at most [`MAX_CONNECTIONS`] connections,
//! each for at most [`CONNECTION_LIFETIME`]. When the cap is reached, the oldest connection
//! that has not sent a request yet makes room (a half-open or idle client is what a flood
//! is made of, and a real scrape sends its request at once); a connection whose request is
//! being served is never cut. If every connection is serving one, the new one is closed.
//!
//! So a flood of half-open connections costs the agent at most [`MAX_CONNECTIONS`]
//! connections' buffers, and cannot starve a scrape: each new connection evicts the oldest
//! idle one, and a scraper's connection sends its request before many more arrive.

use std::{
    collections::{HashSet, VecDeque},
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

/// The table of admitted connections, shared by the accept loop and the connections.
#[derive(Clone, Default)]
pub struct Connections(Arc<Mutex<Table>>);

#[derive(Default)]
struct Table {
    next: u64,
    /// Admitted, no request yet, oldest first, with the way to cut each.
    idle: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Admitted and past their first request.
    serving: HashSet<u64>,
}

/// One admitted connection: its id, and what fires when it is evicted. Dropping it (the
/// connection ended) frees its place.
pub struct Admitted {
    pub id: u64,
    pub evicted: oneshot::Receiver<()>,
    connections: Connections,
}

impl Connections {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding this lock leaves the table consistent (every change is one
        // statement), so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection, evicting the oldest idle one when the cap is reached; `None`
    /// when every admitted connection is serving a request.
    pub fn admit(&self) -> Option<Admitted> {
        let mut table = self.table();
        if table.idle.len() + table.serving.len() >= MAX_CONNECTIONS {
            let (_, cut) = table.idle.pop_front()?;
            // The connection may have ended meanwhile; then there is nobody to tell.
            let _ = cut.send(());
        }
        let id = table.next;
        table.next += 1;
        let (cut, evicted) = oneshot::channel();
        table.idle.push_back((id, cut));
        Some(Admitted {
            id,
            evicted,
            connections: self.clone(),
        })
    }

    /// Connection `id` sent a request: from now on it is not evicted.
    pub fn serving(&self, id: u64) {
        let mut table = self.table();
        if let Some(at) = table.idle.iter().position(|(idle, _)| *idle == id) {
            table.idle.remove(at);
            table.serving.insert(id);
        }
    }

    /// How many connections are admitted now.
    #[cfg(test)]
    fn admitted(&self) -> usize {
        let table = self.table();
        table.idle.len() + table.serving.len()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut table = self.connections.table();
        table.idle.retain(|(idle, _)| *idle != self.id);
        table.serving.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_idle_connection_makes_room_and_serving_ones_are_kept() {
        let connections = Connections::default();
        let mut admitted: Vec<Admitted> = (0..MAX_CONNECTIONS)
            .map(|_| connections.admit().unwrap())
            .collect();
        // The first two send their requests.
        connections.serving(admitted[0].id);
        connections.serving(admitted[1].id);
        let newcomer = connections.admit().unwrap();
        assert_eq!(connections.admitted(), MAX_CONNECTIONS);
        // The oldest idle one (the third) was cut, not the serving ones.
        assert!(admitted[2].evicted.try_recv().is_ok());
        for serving in &mut admitted[..2] {
            assert!(serving.evicted.try_recv().is_err());
        }
        // Ended connections free their places.
        drop(admitted.split_off(2));
        assert_eq!(connections.admitted(), 3);
        drop(newcomer);
        assert_eq!(connections.admitted(), 2);
    }

    #[test]
    fn when_every_connection_is_serving_a_new_one_is_refused() {
        let connections = Connections::default();
        let admitted: Vec<Admitted> = (0..MAX_CONNECTIONS)
            .map(|_| connections.admit().unwrap())
            .collect();
        for connection in &admitted {
            connections.serving(connection.id);
        }
        assert!(connections.admit().is_none());
        drop(admitted);
        assert!(connections.admit().is_some());
    }
}
