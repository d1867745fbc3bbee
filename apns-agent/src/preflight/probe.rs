//! `doctor --probe HOST:PORT`: one TCP connection attempt, e.g. to an APNs courier on 5223.
//! The only check that sends anything (and the name lookup before it, when HOST is a name).

use std::{
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::Check;

/// The whole probe, name lookup included.
pub const TIMEOUT: Duration = Duration::from_millis(1500);

pub fn probe(target: &str) -> Check {
    let check = format!("probe {target}");
    let started = Instant::now();
    let addrs = match resolve(target, TIMEOUT) {
        Ok(addrs) => addrs,
        Err(err) => {
            return Check::fail(
                check,
                err,
                "give HOST:PORT with a resolvable name or an address (e.g. 17.57.144.10:5223)",
            )
        }
    };
    let mut last_error = String::new();
    for addr in &addrs {
        let left = TIMEOUT.saturating_sub(started.elapsed());
        if left.is_zero() {
            last_error = format!("no answer within {} ms", TIMEOUT.as_millis());
            break;
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(stream) => {
                drop(stream);
                return Check::ok(
                    check,
                    format!(
                        "connected to {addr} in {} ms",
                        started.elapsed().as_millis()
                    ),
                );
            }
            Err(err) => last_error = format!("{addr}: {err}"),
        }
    }
    Check::fail(
        check,
        format!("no TCP connection ({last_error})"),
        "check the routes and firewall rules toward Apple (17.0.0.0/8 and Apple's IPv6 /48s, TCP 5223, 443, 2197) on this host and upstream",
    )
}

/// Resolves `target` in a thread: getaddrinfo has no timeout of its own.
fn resolve(target: &str, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let (tx, rx) = mpsc::channel();
    let name = target.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(name.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
        Ok(Ok(_)) => Err(format!("{target} resolves to no address")),
        Ok(Err(err)) => Err(format!("cannot resolve {target}: {err}")),
        Err(_) => Err(format!(
            "resolving {target} took more than {} ms",
            timeout.as_millis()
        )),
    }
}
