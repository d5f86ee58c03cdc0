//! One issuer's signing keys: fetched from its discovery document and JWKS over HTTPS,
//! cached, refetched (at most every `jwks_refetch_min_secs`) when a token names a key the
//! cache lacks, refreshed in the background every `jwks_refresh_secs`, and still served
//! from the cache while the provider cannot be reached.
//!
//! Fetches run on the control runtime (the handle given at start), never on a data-path
//! worker; a session that needs fresh keys awaits the fetch's result.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tracing::{info, warn};

use super::config::OidcConfig;
use super::jwt::{Key, keys_from_jwks};
use crate::control::webhook::error_chain;

/// Largest discovery document or JWKS read.
const MAX_DOCUMENT: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The keys of one fetch.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// `None`: never fetched successfully.
    pub fetched: Option<Instant>,
}

pub struct IssuerKeys {
    pub cfg: OidcConfig,
    current: ArcSwap<KeySet>,
    /// When the last fetch was tried (successful or not): bounds refetches.
    last_try: Mutex<Option<Instant>>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    client: HttpClient,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IssuerKeys({})", self.cfg.issuer)
    }
}

impl IssuerKeys {
    pub fn new(cfg: OidcConfig) -> Result<Self, String> {
        let client = client(&cfg)?;
        Ok(IssuerKeys {
            cfg,
            current: ArcSwap::from_pointee(KeySet::default()),
            last_try: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            client,
        })
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Whether a token naming an unknown key may trigger a fetch now.
    pub fn may_refetch(&self) -> bool {
        let last = *self.last_try.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.jwks_refetch_min_secs))
    }

    /// Whether the cache is old enough for a background refresh.
    pub fn stale(&self) -> bool {
        let last = *self.last_try.lock().unwrap_or_else(|p| p.into_inner());
        last.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.jwks_refresh_secs))
    }

    /// Fetches the keys unless another fetch finished since `seen` was loaded. The cache
    /// is replaced only by a successful fetch: keys the provider withdrew go with it, and
    /// a provider that is down leaves the cache as it was.
    pub async fn refetch(&self, seen: &Arc<KeySet>) -> Result<(), String> {
        let _one = self.fetching.lock().await;
        if !Arc::ptr_eq(seen, &self.current.load_full()) {
            return Ok(());
        }
        *self.last_try.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        match tokio::time::timeout(FETCH_TIMEOUT * 2, self.fetch()).await {
            Ok(Ok(keys)) => {
                info!(issuer = %self.cfg.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                self.current.store(Arc::new(KeySet {
                    keys,
                    fetched: Some(Instant::now()),
                }));
                Ok(())
            }
            Ok(Err(e)) => {
                warn!(issuer = %self.cfg.issuer, "cannot fetch the issuer's signing keys: {e}");
                Err(e)
            }
            Err(_) => {
                let e = "the identity provider did not answer in time".to_string();
                warn!(issuer = %self.cfg.issuer, "cannot fetch the issuer's signing keys: {e}");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<Key>, String> {
        #[derive(serde::Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let doc = self.get(&self.cfg.discovery()).await?;
        let d: Discovery = serde_json::from_slice(&doc)
            .map_err(|e| format!("the discovery document is not what OpenID Connect says: {e}"))?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name the issuer it is for.
        if d.issuer.trim_end_matches('/') != self.cfg.issuer.trim_end_matches('/') {
            return Err(format!(
                "the discovery document is for issuer {}, not {}",
                d.issuer, self.cfg.issuer
            ));
        }
        let uri: hyper::Uri = d
            .jwks_uri
            .parse()
            .map_err(|e| format!("jwks_uri {} is not a URL: {e}", d.jwks_uri))?;
        let issuer_http = self.cfg.issuer.starts_with("http://");
        if uri.scheme_str() != Some("https") && !(issuer_http && uri.scheme_str() == Some("http")) {
            return Err(format!("jwks_uri {} is not https", d.jwks_uri));
        }
        let jwks = self.get(&d.jwks_uri).await?;
        let keys = keys_from_jwks(&jwks)?;
        if keys.is_empty() {
            return Err("the JWKS holds no signing key the gateway can use".into());
        }
        Ok(keys)
    }

    async fn get(&self, url: &str) -> Result<Bytes, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let req = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("{url}: no answer within {FETCH_TIMEOUT:?}"))?
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT);
        let bytes = tokio::time::timeout(FETCH_TIMEOUT, body.collect())
            .await
            .map_err(|_| format!("{url}: the body did not arrive within {FETCH_TIMEOUT:?}"))?
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        Ok(bytes)
    }
}

fn client(cfg: &OidcConfig) -> Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let tls = match &cfg.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} holds no certificate", ca.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .with_root_certificates(rustls::RootCertStore::from_iter(
                webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
            ))
            .with_no_client_auth(),
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(FETCH_TIMEOUT));
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https.wrap_connector(http)))
}
