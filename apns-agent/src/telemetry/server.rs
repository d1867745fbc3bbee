//! The `/metrics` endpoint `run` serves to Prometheus.
//!
//! hyper 1 with hyper-util's tokio glue rather than axum: one route needs no router, and
//! axum would add tower, its middleware layers and a router to the agent for a `match` on
//! the path. It runs on `run`'s current-thread runtime next to the signal handling.
//!
//! What clients may hold of the agent is bounded (`admission`): a cap on connections, at
//! which the one with least claim makes room (refused and slow clients first, authenticated
//! scrapers last), a lifetime, and hyper's header read timeout. Basic auth (`auth`) runs
//! bcrypt on a thread of its own and throttles sources of failed logins. The web config is
//! re-read on SIGHUP ([`Web::reload`]).
//!
//! GET (and HEAD) `/metrics` answer 200 with the exposition, any other method there 405,
//! any other path 404. A failed render answers 500 with the error text and logs it. With
//! basic auth configured, a request without the right credentials gets 401, or 429 while its
//! source has failed too many logins lately (503 while too many logins wait for a check).

use std::{
    convert::Infallible,
    future::Future,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    pin::pin,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::{GracefulShutdown, Watcher},
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::telemetry::{
    admission::{Admission, Standing, CONNECTION_LIFETIME},
    auth::{Authenticator, Verdict, FAILED_LOGIN_REFILL, MAX_WAITING},
    metrics::CONTENT_TYPE,
    web_config::WebConfig,
};

/// A client that has not sent its request headers by then is dropped, so idle or slow
/// connections cannot pile up in the agent.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for scrapes in flight before it drops them: the agent's exit
/// must not hang on a stuck client.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, typically), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Binds the metrics endpoint; the error names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("listening for /metrics on {addr} (is the port taken? choose another with --metrics-addr)")
    })
}

/// How /metrics is secured: the web config in force, read at start and again by
/// [`Web::reload`], and the authenticator, whose thread and failure records outlive reloads.
/// Clones share them.
#[derive(Clone)]
pub struct Web(Arc<WebState>);

struct WebState {
    file: Option<PathBuf>,
    config: RwLock<Arc<WebConfig>>,
    auth: Authenticator,
}

impl Web {
    /// Reads the web config `file` (none: plain HTTP without authentication); a bad file is
    /// an error that names it.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Web> {
        let config = match file {
            Some(file) => WebConfig::load(file)?,
            None => WebConfig::default(),
        };
        Ok(Web(Arc::new(WebState {
            file: file.map(Path::to_owned),
            config: RwLock::new(Arc::new(config)),
            auth: Authenticator::start()?,
        })))
    }

    /// Re-reads the web config file, if `run` was given one (SIGHUP): connections made from
    /// now on get its TLS setup, and every request its users (credentials that passed under
    /// the old file are checked again). A bad file is logged, naming it, and the config in
    /// force stays.
    pub fn reload(&self) {
        let Some(file) = &self.0.file else {
            return;
        };
        match WebConfig::load(file) {
            Ok(config) => {
                tracing::info!(
                    "web config reloaded from {}: serving /metrics ({})",
                    file.display(),
                    security(&config)
                );
                *self
                    .0
                    .config
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
            }
            Err(err) => {
                tracing::error!("web config not reloaded, the one in force stays: {err:#}")
            }
        }
    }

    fn current(&self) -> Arc<WebConfig> {
        self.0
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// "http", "https", with ", basic auth" when users are configured.
fn security(config: &WebConfig) -> String {
    let scheme = if config.tls().is_some() {
        "https"
    } else {
        "http"
    };
    let auth = if config.requires_auth() {
        ", basic auth"
    } else {
        ""
    };
    format!("{scheme}{auth}")
}

/// Serves `/metrics` on `listener` until `shutdown` completes, then lets requests in flight
/// finish for up to 5 s. With `web`'s TLS, connections are TLS; with its users, requests
/// need basic auth.
///
/// `render` produces the exposition (typically: snapshot the counters, build the model,
/// `metrics::render`). It runs on tokio's blocking pool, since it reads the kernel's maps,
/// so a large map never stalls the runtime's one thread (and with it signal handling).
pub async fn serve<R>(
    listener: TcpListener,
    render: R,
    web: Web,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn() -> anyhow::Result<String> + Clone + Send + 'static,
{
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics ({})", security(&web.current()));
    }
    let graceful = GracefulShutdown::new();
    let admission = Admission::default();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("accepting a /metrics connection: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(mut admitted) = admission.admit() else {
            tracing::debug!(%peer, "/metrics: every connection is answering a request; closing this one");
            continue;
        };
        let connection = Connection {
            admission: admission.clone(),
            id: admitted.id,
            peer: peer.ip(),
            web: web.clone(),
        };
        let service = {
            let render = render.clone();
            service_fn(move |request: Request<Incoming>| {
                let (connection, render) = (connection.clone(), render.clone());
                async move { Ok::<_, Infallible>(connection.respond(&request, render).await) }
            })
        };
        let tls = web.current().tls().cloned();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            // `admitted` is held until the connection ends: dropping it frees the place.
            tokio::select! {
                served = plain_or_tls(stream, tls, service, watcher) => if let Err(err) = served {
                    tracing::debug!(%peer, "/metrics connection: {err:#}");
                },
                Ok(()) = &mut admitted.evicted => tracing::debug!(%peer, "/metrics connection cut to make room (at the cap)"),
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    tracing::debug!(%peer, "/metrics connection closed after {CONNECTION_LIFETIME:?}");
                }
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::debug!("/metrics connections still open at exit, dropped");
        }
    }
}

/// Serves HTTP/1.1 on `stream`, after a TLS handshake with `tls` if given, until it ends
/// or shutdown.
async fn plain_or_tls<S>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    service: S,
    watcher: Watcher,
) -> anyhow::Result<()>
where
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(acceptor) = tls else {
        return http(TokioIo::new(stream), service, watcher).await;
    };
    let tls = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| anyhow::anyhow!("no TLS handshake within {HEADER_READ_TIMEOUT:?}"))?
        .context("TLS handshake")?;
    http(TokioIo::new(tls), service, watcher).await
}

/// Serves HTTP/1.1 on one connection, plain or TLS, until it ends or shutdown.
async fn http<I, S>(io: I, service: S, watcher: Watcher) -> anyhow::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Full<Bytes>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(io, service);
    watcher.watch(connection).await.map_err(anyhow::Error::from)
}

/// What answering a request on one admitted connection needs.
#[derive(Clone)]
struct Connection {
    admission: Admission,
    id: u64,
    peer: IpAddr,
    web: Web,
}

impl Connection {
    /// Authenticates the request, then answers it; the connection's standing in the
    /// admission table follows (refused, checking, answering, trusted).
    async fn respond<B, R>(&self, request: &Request<B>, render: R) -> Response<Full<Bytes>>
    where
        R: Fn() -> anyhow::Result<String> + Send + 'static,
    {
        self.admission.stand(self.id, Standing::Checking);
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let config = self.web.current();
        let verdict = self.web.0.auth.check(&config, authorization, self.peer);
        if let Some(refusal) = refusal(verdict.await) {
            self.admission.stand(self.id, Standing::Refused);
            return refusal;
        }
        self.admission.stand(self.id, Standing::Answering);
        let response = answer(request, render).await;
        self.admission.stand(self.id, Standing::Trusted);
        response
    }
}

/// The answer to a request whose credentials got `verdict`, unless they passed.
fn refusal(verdict: Verdict) -> Option<Response<Full<Bytes>>> {
    let (mut response, name, value) = match verdict {
        Verdict::Allowed => return None,
        Verdict::Denied => (
            text(StatusCode::UNAUTHORIZED, "unauthorized\n"),
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"apns-agent\""),
        ),
        Verdict::Throttled => (
            text(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; retry later\n",
            ),
            header::RETRY_AFTER,
            HeaderValue::from(FAILED_LOGIN_REFILL.as_secs()),
        ),
        Verdict::Busy => (
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_WAITING} logins wait for a check; retry later\n"),
            ),
            header::RETRY_AFTER,
            HeaderValue::from(1),
        ),
    };
    response.headers_mut().insert(name, value);
    Some(response)
}

/// The answer to an authenticated request.
async fn answer<B, R>(request: &Request<B>, render: R) -> Response<Full<Bytes>>
where
    R: Fn() -> anyhow::Result<String> + Send + 'static,
{
    if request.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    // HEAD too: it is GET without the body (hyper leaves the body out).
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let rendered = tokio::task::spawn_blocking(render)
        .await
        .context("the metrics renderer panicked")
        .and_then(|result| result);
    match rendered {
        Ok(body) => {
            let mut response = Response::new(Full::from(body));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(err) => {
            tracing::error!("rendering /metrics: {err:#}");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}\n"))
        }
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
    };

    use super::*;

    /// Sends `request` with a plain blocking socket and returns the whole response.
    async fn fetch(addr: SocketAddr, request: &'static str) -> String {
        tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).unwrap();
            response
        })
        .await
        .unwrap()
    }

    fn get(path: &str) -> &'static str {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        Box::leak(request.into_boxed_str())
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let failing = Arc::new(AtomicBool::new(false));
        let render = {
            let failing = failing.clone();
            move || {
                anyhow::ensure!(!failing.load(Ordering::SeqCst), "reading map APNS_COUNTERS");
                Ok("apns_uncounted_packets_total 0\n".to_owned())
            }
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, render, Web::load(None).unwrap(), async {
            let _ = stopped.await;
        }));

        let ok = fetch(addr, get("/metrics")).await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(
            ok.ends_with("\r\n\r\napns_uncounted_packets_total 0\n"),
            "{ok}"
        );

        let query = fetch(addr, get("/metrics?name[]=x")).await;
        assert!(query.starts_with("HTTP/1.1 200 OK\r\n"), "{query}");

        let head = fetch(
            addr,
            "HEAD /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");

        for path in ["/", "/metricsx", "/metrics/"] {
            let missing = fetch(addr, get(path)).await;
            assert!(
                missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{missing}"
            );
        }

        let post = fetch(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("\r\nallow: GET, HEAD\r\n"), "{post}");

        failing.store(true, Ordering::SeqCst);
        let error = fetch(addr, get("/metrics")).await;
        assert!(
            error.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{error}"
        );
        assert!(
            error.ends_with("\r\n\r\nreading map APNS_COUNTERS\n"),
            "{error}"
        );

        stop.send(()).unwrap();
        server.await.unwrap();
        // The listener is closed once serve returns.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    /// GET /metrics over TLS, trusting `cert_pem`, with an Authorization header if given; an
    /// error when the handshake fails.
    async fn fetch_tls(
        addr: SocketAddr,
        cert_pem: &str,
        authorization: Option<&str>,
    ) -> std::io::Result<String> {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, ServerName};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server = ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(server, tcp).await?;
        let header =
            authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\n{header}Connection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        // The server closes without close_notify at times; what arrived is the answer.
        let _ = tls.read_to_end(&mut response).await;
        Ok(String::from_utf8_lossy(&response).into_owned())
    }

    #[tokio::test]
    async fn tls_and_basic_auth_from_a_web_config_file() {
        use crate::telemetry::web_config::tests::{basic, self_signed};
        let dir = std::env::temp_dir().join(format!("apns-web-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self_signed();
        std::fs::write(dir.join("metrics.crt"), &cert).unwrap();
        std::fs::write(dir.join("metrics.key"), &key).unwrap();
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        std::fs::write(
            dir.join("web.yml"),
            format!("tls_server_config:\n  cert_file: metrics.crt\n  key_file: metrics.key\nbasic_auth_users:\n  prom: '{hash}'\n"),
        )
        .unwrap();
        let web = Web::load(Some(&dir.join("web.yml"))).unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let render = || Ok("apns_uncounted_packets_total 0\n".to_owned());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, render, web, async {
            let _ = stopped.await;
        }));

        let denied = fetch_tls(addr, &cert, None).await.unwrap();
        assert!(
            denied.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
            "{denied}"
        );
        assert!(
            denied.contains("\r\nwww-authenticate: Basic realm=\"apns-agent\"\r\n"),
            "{denied}"
        );
        let wrong = fetch_tls(addr, &cert, Some(&basic("prom", "guess")))
            .await
            .unwrap();
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let ok = fetch_tls(addr, &cert, Some(&basic("prom", "s3cret")))
            .await
            .unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.ends_with("\r\n\r\napns_uncounted_packets_total 0\n"),
            "{ok}"
        );
        // Plain HTTP gets no answer from a TLS endpoint.
        let plain = tokio::time::timeout(Duration::from_secs(15), fetch(addr, get("/metrics")))
            .await
            .unwrap();
        assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");

        stop.send(()).unwrap();
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_reload_rotates_the_certificate_and_the_users_and_a_bad_file_changes_nothing() {
        use crate::telemetry::web_config::tests::{basic, self_signed};
        let dir = std::env::temp_dir().join(format!("apns-web-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("web.yml");
        let write = |cert: &str, key: &str, password: &str| {
            std::fs::write(dir.join("metrics.crt"), cert).unwrap();
            std::fs::write(dir.join("metrics.key"), key).unwrap();
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(
                &file,
                format!("tls_server_config:\n  cert_file: metrics.crt\n  key_file: metrics.key\nbasic_auth_users:\n  prom: '{hash}'\n"),
            )
            .unwrap();
        };
        let (old_cert, old_key) = self_signed();
        write(&old_cert, &old_key, "old");
        let web = Web::load(Some(&file)).unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let render = || Ok("apns_uncounted_packets_total 0\n".to_owned());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, render, web.clone(), async {
            let _ = stopped.await;
        }));
        let (old, new) = (basic("prom", "old"), basic("prom", "new"));
        let ok = fetch_tls(addr, &old_cert, Some(&old)).await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");

        let (new_cert, new_key) = self_signed();
        write(&new_cert, &new_key, "new");
        web.reload();
        // A client that trusts only the old certificate no longer completes a handshake.
        assert!(fetch_tls(addr, &old_cert, Some(&old)).await.is_err());
        // The old password passed before, and is checked again under the new file.
        let refused = fetch_tls(addr, &new_cert, Some(&old)).await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
        let ok = fetch_tls(addr, &new_cert, Some(&new)).await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");

        // A bad file (here: a hash that is not bcrypt) changes nothing.
        std::fs::write(&file, "basic_auth_users:\n  prom: plain\n").unwrap();
        web.reload();
        let ok = fetch_tls(addr, &new_cert, Some(&new)).await.unwrap();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        let refused = fetch_tls(addr, &new_cert, Some(&old)).await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

        stop.send(()).unwrap();
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_taken_port_is_named() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = format!("{:#}", bind(addr).await.unwrap_err());
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
