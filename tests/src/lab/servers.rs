//! The echo servers of the WAN hosts: one listener per port and address family, bound inside
//! the host's namespace; every accepted connection is recorded (so tests can see the source
//! address after NAT) and echoed back until the peer closes. Dropping a server stops it.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context as _, Result};
use nix::{
    errno::Errno,
    poll::{poll, PollFd, PollFlags},
};

use super::{netns::Namespace, Addrs};

/// How often the accept loop and the connection threads look at the stop flag: the bound on
/// how long dropping a server takes.
const TICK: Duration = Duration::from_millis(50);
const TICK_MS: u16 = 50;

/// One connection a WAN server accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The server's address and port the connection came to.
    pub local: SocketAddr,
    /// Where it came from, as the server sees it (the gateway's WAN address under NAT).
    pub peer: SocketAddr,
}

type Log = Arc<Mutex<Vec<Accepted>>>;

pub(super) struct EchoServer {
    stop: Arc<AtomicBool>,
    accepted: Log,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Listens on `ports` at both of `addrs` inside `ns` and serves from a background thread.
    pub(super) fn start(ns: &Namespace, addrs: Addrs, ports: &[u16]) -> Result<EchoServer> {
        let listeners = ns
            .run_on_thread(|| -> Result<Vec<TcpListener>> {
                let mut listeners = Vec::with_capacity(ports.len() * 2);
                for port in ports {
                    for ipv6 in [false, true] {
                        let addr = addrs.socket(ipv6, *port);
                        let listener = TcpListener::bind(addr)
                            .with_context(|| format!("listening on {addr}"))?;
                        // The accept loop polls, then drains each ready listener.
                        listener.set_nonblocking(true).with_context(|| {
                            format!("making the listener on {addr} non-blocking")
                        })?;
                        listeners.push(listener);
                    }
                }
                Ok(listeners)
            })
            .map_err(anyhow::Error::from)
            .flatten()
            .with_context(|| format!("starting echo servers in namespace {}", ns.name()))?;

        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Log::default();
        let thread = thread::Builder::new()
            .name("lab-echo".into())
            .spawn({
                let (stop, accepted) = (Arc::clone(&stop), Arc::clone(&accepted));
                move || serve(&listeners, &stop, &accepted)
            })
            .with_context(|| format!("starting the echo thread for {}", ns.name()))?;
        Ok(EchoServer {
            stop,
            accepted,
            thread: Some(thread),
        })
    }

    /// Every connection accepted so far, oldest first.
    pub(super) fn accepted(&self) -> Vec<Accepted> {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                eprintln!("apns lab: an echo server thread panicked");
            }
        }
    }
}

/// The accept loop: returns once `stop` is set and every connection thread has ended.
fn serve(listeners: &[TcpListener], stop: &Arc<AtomicBool>, log: &Log) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut fds: Vec<PollFd> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, TICK_MS) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("apns lab: echo server poll failed, stopping: {e}");
                break;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|fd| fd.any().unwrap_or(false)).collect();
        drop(fds);
        for (listener, _) in listeners.iter().zip(ready).filter(|(_, ready)| *ready) {
            accept_all(listener, stop, log, &mut connections);
        }
        connections.retain(|c| !c.is_finished());
    }
    for connection in connections {
        if connection.join().is_err() {
            eprintln!("apns lab: an echo connection thread panicked");
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    stop: &Arc<AtomicBool>,
    log: &Log,
    connections: &mut Vec<JoinHandle<()>>,
) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // ECONNABORTED and friends: the next poll retries.
                eprintln!("apns lab: accept failed: {e}");
                return;
            }
        };
        if let Ok(local) = stream.local_addr() {
            // Recorded before the first echo, so a client that got its echo back always finds
            // its connection in the log.
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Accepted { local, peer });
        }
        let stop = Arc::clone(stop);
        match thread::Builder::new()
            .name("lab-echo-conn".into())
            .spawn(move || echo_until_closed(stream, &stop))
        {
            Ok(handle) => connections.push(handle),
            Err(e) => eprintln!("apns lab: cannot start a thread for {peer}: {e}"),
        }
    }
}

/// Echoes until the peer closes, an error, or `stop`.
fn echo_until_closed(mut stream: TcpStream, stop: &AtomicBool) {
    // Accepted sockets are blocking; the timeouts bound each wait so `stop` is seen.
    if stream.set_read_timeout(Some(TICK)).is_err() || stream.set_write_timeout(Some(TICK)).is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if !write_all_until_stop(&mut stream, &buf[..n], stop) {
                    return;
                }
            }
            Err(e) if is_tick(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// `write_all` that gives up on `stop` or an error; false if everything was not written.
fn write_all_until_stop(stream: &mut TcpStream, mut data: &[u8], stop: &AtomicBool) -> bool {
    while !data.is_empty() {
        match stream.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if is_tick(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// A socket timeout or an interrupted call: look at the stop flag and go on.
fn is_tick(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
