//! How long /metrics takes to refuse an unknown user name and a known one with a wrong
//! password, as a client measures it: whether the time tells user names (BENCHMARKS.md).
//!
//! ```text
//! cargo run --release -p apns-agent --example metrics_auth_timing [-- PAIRS [COST]]
//! ```
//!
//! Serves /metrics in this process the way `run` does (`server::serve`, a current-thread
//! runtime, basic auth from a web config file with one user whose bcrypt hash has cost COST,
//! default 10 as `htpasswd -nBC 10` makes) and sends PAIRS (default 200) pairs of requests,
//! an unknown user and a known user's wrong password, the order alternating from pair to
//! pair. Each request comes from a loopback address of its own (127.1.x.y), so no source
//! runs out of failed logins, over a connection made before the clock starts; the time is
//! from sending the request to reading the whole 401. A request without credentials (no
//! bcrypt) is measured alongside for scale. Needs no root.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use apns_agent::telemetry::server::{bind, serve, Web};
use base64::Engine as _;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpSocket,
};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args
        .next()
        .map_or(Ok(200), |n| n.parse())
        .context("PAIRS")?;
    let cost: u32 = args.next().map_or(Ok(10), |n| n.parse()).context("COST")?;

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("web.yml");
    let hash = bcrypt::hash("the right password", cost)?;
    std::fs::write(
        &file,
        format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    )?;
    let web = Web::load(Some(&file))?;
    let listener_ready = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let listener = bind("127.0.0.1:0".parse().unwrap()).await.expect("bound");
            listener_ready
                .0
                .send(listener.local_addr().unwrap())
                .unwrap();
            serve(listener, || Ok(String::new()), web, std::future::pending()).await;
        });
    });
    let server = listener_ready.1.recv()?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let unknown = basic("nobody", "a guess");
    let known = basic("prometheus", "a guess");
    let (mut unknown_times, mut known_times, mut none_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut source = u32::from(Ipv4Addr::new(127, 1, 0, 1));
    let mut next_source = || {
        source += 1;
        Ipv4Addr::from(source)
    };
    runtime.block_on(async {
        for pair in 0..pairs {
            let first_unknown = pair % 2 == 0;
            for unknown_turn in [first_unknown, !first_unknown] {
                let (credentials, times) = if unknown_turn {
                    (&unknown, &mut unknown_times)
                } else {
                    (&known, &mut known_times)
                };
                times.push(refusal(server, next_source(), Some(credentials)).await?);
            }
            none_times.push(refusal(server, next_source(), None).await?);
        }
        anyhow::Ok(())
    })?;

    println!("bcrypt cost {cost}, {pairs} pairs; time to a 401, from the client:");
    println!("| request | median | p10 | p90 | mean |");
    println!("|---|---|---|---|---|");
    for (name, times) in [
        ("unknown user", &mut unknown_times),
        ("known user, wrong password", &mut known_times),
        ("no credentials (no bcrypt)", &mut none_times),
    ] {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!(
            "| {name} | {:.2?} | {:.2?} | {:.2?} | {:.2?} |",
            at(0.5),
            at(0.1),
            at(0.9),
            mean
        );
    }
    Ok(())
}

/// Sends GET /metrics from `from` over a fresh connection and returns how long the 401
/// took, from the request's first byte to the answer's last.
async fn refusal(
    server: SocketAddr,
    from: Ipv4Addr,
    authorization: Option<&str>,
) -> anyhow::Result<Duration> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((from, 0)))
        .with_context(|| format!("binding {from}"))?;
    let mut stream = socket.connect(server).await?;
    let header = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{header}Connection: close\r\n\r\n");
    let started = Instant::now();
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let took = started.elapsed();
    ensure!(
        response.starts_with(b"HTTP/1.1 401"),
        "expected a 401: {}",
        String::from_utf8_lossy(&response)
    );
    Ok(took)
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}
