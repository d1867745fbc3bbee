//! TLS and basic auth for /metrics, for operators who serve it off loopback, configured the
//! way Prometheus exporters are: a web config file in exporter-toolkit's format, given with
//! `run --web-config-file FILE`:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: metrics.crt            # PEM: the certificate chain, leaf first
//!   key_file: metrics.key             # PEM: its private key (PKCS#8, PKCS#1 or SEC1)
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, the default
//!   client_ca_file: clients.crt       # PEM: the CAs client certificates must chain to
//! basic_auth_users:
//!   prometheus: $2y$10$...            # bcrypt hashes (`htpasswd -nBC 10 prometheus`)
//! ```
//!
//! Relative paths are relative to the file's folder. The file is read when `run` starts (a
//! bad one stops it with the key named) and again on SIGHUP (`server::Web::reload`).
//!
//! This module decides what credentials need ([`WebConfig::judge`]); `auth` runs the checks.
//! bcrypt is slow on purpose (tens of milliseconds a check), so a scrape load would burn CPU
//! on it: a successful check is remembered (at most [`AUTH_CACHE`] credentials), a failed
//! one never is, so wrong passwords cannot fill the memory. An unknown user name costs the
//! same check as a known one with a wrong password ([`Check`]), so the time to refuse tells
//! no user names, as exporter-toolkit's dummy hash intends.

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::{bail, Context as _};
use base64::Engine as _;
use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

/// Successful credentials remembered at most (a handful of scrapers use /metrics).
pub const AUTH_CACHE: usize = 64;

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    client_ca_file: Option<PathBuf>,
}

/// exporter-toolkit's client_auth_type values this agent supports.
#[derive(Deserialize, Default, PartialEq, Eq)]
enum ClientAuth {
    #[default]
    NoClientCert,
    RequireAndVerifyClientCert,
}

/// What /metrics does about TLS and authentication.
#[derive(Default)]
pub struct WebConfig {
    tls: Option<TlsAcceptor>,
    /// User to bcrypt hash; empty: no authentication.
    users: BTreeMap<String, String>,
    /// The hash an unknown user's password is checked against: the configured hash of the
    /// highest cost, so refusing an unknown user costs what refusing a known one costs.
    /// `None` exactly when there are no users.
    stand_in: Option<String>,
    /// `Authorization` header values that passed.
    passed: Mutex<HashSet<String>>,
}

/// What a request's `Authorization` header needs before the request is answered.
pub enum Judgement {
    /// Let in: no authentication is configured, or these credentials passed before.
    Allowed,
    /// Refused without a check: no header, or not basic credentials (no user name, so
    /// nothing to tell by timing).
    Refused,
    /// bcrypt decides.
    Check(Check),
}

/// One bcrypt check of a user's password: the same work whether the user is known or not.
pub struct Check {
    password: String,
    hash: String,
    known_user: bool,
}

/// bcrypt's costs (the crate does not export its bounds): 2^4 to 2^31 rounds.
const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=31;

impl WebConfig {
    /// Reads and checks `path` (certificates and key included).
    pub fn load(path: &Path) -> anyhow::Result<WebConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading web config file {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        WebConfig::parse(&text, dir).with_context(|| format!("web config file {}", path.display()))
    }

    fn parse(text: &str, dir: &Path) -> anyhow::Result<WebConfig> {
        // Without the multi-line source snippet: the error is one log line, naming line and column.
        let options = serde_saphyr::options! { with_snippet: false };
        let file: File =
            serde_saphyr::from_str_with_options(text, options).context("not a web config")?;
        let mut stand_in: Option<(u32, &String)> = None;
        for (user, hash) in &file.basic_auth_users {
            // A hash that is not bcrypt would deny every request: refuse it now. Parsing it
            // is the check bcrypt::verify makes first, without the hashing (a SIGHUP re-reads
            // this file on the thread that serves /metrics).
            let cost = hash
                .parse::<bcrypt::HashParts>()
                .map_err(anyhow::Error::from)
                .map(|parts| parts.get_cost())
                .and_then(|cost| {
                    anyhow::ensure!(BCRYPT_COSTS.contains(&cost), "cost {cost} is out of range");
                    Ok(cost)
                })
                .with_context(|| {
                    format!("basic_auth_users: {user}: not a bcrypt hash (make one with `htpasswd -nBC 10 {user}`)")
                })?;
            if stand_in.is_none_or(|(highest, _)| cost > highest) {
                stand_in = Some((cost, hash));
            }
        }
        let stand_in = stand_in.map(|(_, hash)| hash.clone());
        let tls = match file.tls_server_config {
            Some(tls) => Some(acceptor(&tls, dir).context("tls_server_config")?),
            None => None,
        };
        Ok(WebConfig {
            tls,
            users: file.basic_auth_users,
            stand_in,
            passed: Mutex::default(),
        })
    }

    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    pub fn requires_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// What a request's `Authorization` header (absent: `None`) needs. Fast: the bcrypt
    /// check, if any, is left to the caller ([`Check::passes`]).
    pub fn judge(&self, authorization: Option<&str>) -> Judgement {
        let Some(stand_in) = &self.stand_in else {
            // No users: no authentication.
            return Judgement::Allowed;
        };
        let Some(header) = authorization else {
            return Judgement::Refused;
        };
        if self.passed().contains(header) {
            return Judgement::Allowed;
        }
        let Some((user, password)) = credentials(header) else {
            return Judgement::Refused;
        };
        let (hash, known_user) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (stand_in.clone(), false),
        };
        Judgement::Check(Check {
            password,
            hash,
            known_user,
        })
    }

    /// `header` passed its check: later requests with it need none.
    pub fn remember(&self, header: &str) {
        let mut passed = self.passed();
        if passed.len() >= AUTH_CACHE {
            passed.clear();
        }
        passed.insert(header.to_owned());
    }

    fn passed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.passed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Check {
    /// Runs bcrypt (slow on purpose: off the runtime's thread): true for a known user's
    /// right password only.
    pub fn passes(&self) -> bool {
        let matches = bcrypt::verify(&self.password, &self.hash).unwrap_or(false);
        matches && self.known_user
    }
}

/// (user, password) of a `Basic` authorization header.
fn credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// A TLS acceptor for `tls` (paths relative to `dir`).
fn acceptor(tls: &TlsFile, dir: &Path) -> anyhow::Result<TlsAcceptor> {
    let cert_file = dir.join(&tls.cert_file);
    let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(&cert_file)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("cert_file {}", cert_file.display()))?;
    if certs.is_empty() {
        bail!("cert_file {}: no certificate in it", cert_file.display());
    }
    let key_file = dir.join(&tls.key_file);
    let key = PrivateKeyDer::from_pem_file(&key_file)
        .with_context(|| format!("key_file {}: no private key read", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let builder = match (&tls.client_auth_type, &tls.client_ca_file) {
        (ClientAuth::NoClientCert, _) => builder.with_no_client_auth(),
        (ClientAuth::RequireAndVerifyClientCert, None) => {
            bail!("client_auth_type RequireAndVerifyClientCert needs client_ca_file")
        }
        (ClientAuth::RequireAndVerifyClientCert, Some(ca_file)) => {
            let ca_file = dir.join(ca_file);
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&ca_file)
                .with_context(|| format!("client_ca_file {}", ca_file.display()))?
            {
                let cert = cert.with_context(|| format!("client_ca_file {}", ca_file.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("client_ca_file {}", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .with_context(|| format!("client_ca_file {}", ca_file.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).with_context(|| {
        format!(
            "the key in {} does not fit the certificate",
            key_file.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    pub(crate) fn self_signed() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    /// A config with one user whose password is `password` (bcrypt's cheapest cost).
    pub(crate) fn basic_auth(user: &str, password: &str) -> WebConfig {
        let hash = bcrypt::hash(password, 4).unwrap();
        WebConfig::parse(
            &format!("basic_auth_users:\n  {user}: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap()
    }

    pub(crate) fn basic(user: &str, password: &str) -> String {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    /// What `authorization` gets, with bcrypt run when needed (and a pass remembered, as
    /// `auth` does).
    fn outcome(config: &WebConfig, authorization: Option<&str>) -> &'static str {
        match config.judge(authorization) {
            Judgement::Allowed => "allowed",
            Judgement::Refused => "refused",
            Judgement::Check(check) if check.passes() => {
                config.remember(authorization.unwrap());
                "passed"
            }
            Judgement::Check(_) => "failed",
        }
    }

    #[test]
    fn basic_auth_allows_the_right_password_only() {
        let config = basic_auth("prom", "s3cret");
        assert_eq!(outcome(&config, None), "refused");
        assert_eq!(outcome(&config, Some("Bearer x")), "refused");
        assert_eq!(outcome(&config, Some("Basic !!")), "refused");
        assert_eq!(outcome(&config, Some(&basic("prom", "wrong"))), "failed");
        assert_eq!(outcome(&config, Some(&basic("other", "s3cret"))), "failed");
        assert_eq!(outcome(&config, Some(&basic("prom", "s3cret"))), "passed");
        // Remembered: the second time needs no bcrypt.
        assert_eq!(outcome(&config, Some(&basic("prom", "s3cret"))), "allowed");
        // Failures are never remembered.
        assert_eq!(config.passed().len(), 1);
        assert_eq!(outcome(&config, Some(&basic("prom", "wrong"))), "failed");
        // Without users, everything is allowed.
        assert_eq!(outcome(&WebConfig::default(), None), "allowed");
    }

    #[test]
    fn an_unknown_user_costs_the_check_of_the_costliest_known_one() {
        let cheap = bcrypt::hash("cheap", 4).unwrap();
        let costly = bcrypt::hash("costly", 5).unwrap();
        let config = WebConfig::parse(
            &format!("basic_auth_users:\n  a: '{cheap}'\n  b: '{costly}'\n  c: '{cheap}'\n"),
            Path::new("."),
        )
        .unwrap();
        let Judgement::Check(check) = config.judge(Some(&basic("nobody", "costly"))) else {
            panic!("an unknown user is checked");
        };
        assert_eq!(check.hash, costly);
        assert!(!check.known_user);
        // Even the stand-in hash's own password lets no unknown user in.
        assert!(!check.passes());
        assert_eq!(outcome(&config, Some(&basic("b", "costly"))), "passed");
    }

    #[test]
    fn bad_files_name_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("apns-web-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = self_signed();
        std::fs::write(dir.join("c.pem"), cert).unwrap();
        std::fs::write(dir.join("k.pem"), key).unwrap();
        let ok = "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n";
        assert!(WebConfig::parse(ok, &dir).unwrap().tls().is_some());
        for (text, says) in [
            ("basic_auth_users:\n  prom: plain\n", "not a bcrypt hash"),
            (
                "basic_auth_users:\n  prom: $2y$99$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi\n",
                "cost 99 is out of range",
            ),
            ("tls_server_config:\n  cert_file: missing.pem\n  key_file: k.pem\n", "missing.pem"),
            ("tls_server_config:\n  cert_file: k.pem\n  key_file: k.pem\n", "no certificate"),
            (
                "tls_server_config:\n  cert_file: c.pem\n  key_file: c.pem\n",
                "no private key",
            ),
            (
                "tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_auth_type: RequireAndVerifyClientCert\n",
                "needs client_ca_file",
            ),
            ("http_server_config:\n  http2: false\n", "unknown field"),
        ] {
            let err = format!("{:#}", WebConfig::parse(text, &dir).err().expect(text));
            assert!(err.contains(says), "{text:?}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
