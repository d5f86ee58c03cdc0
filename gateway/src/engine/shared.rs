//! What every worker and session reads: settings derived from the configuration once at
//! start-up (TLS contexts, identities, limits), the cancel-key registry and the
//! lifecycle. Identities sit behind an `ArcSwap` so a reload swaps them without locks.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Lifecycle;
use super::cancel::CancelRegistry;
use crate::auth::IdentityStore;
use crate::config::{Config, UpstreamTls};
use crate::mask::{Catalog, Policy};
use crate::policy::StatementPolicy;
use crate::session::handshake::TlsOffer;
use crate::session::relay::RelayLimits;

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("{key}: {problem}")]
    Tls { key: &'static str, problem: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Mask(#[from] crate::mask::MaskError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Credential(#[from] crate::secrets::SecretError),
}

/// How the gateway reaches the real server.
#[derive(Debug)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    /// The login role.
    pub user: String,
    /// Its credential, fetched fresh as the source changes (`crate::secrets`).
    pub credential: crate::secrets::Credential,
    pub tls: UpstreamTls,
    pub tls_config: Option<Arc<rustls::ClientConfig>>,
    pub server_name: String,
    pub connect_timeout: Duration,
    /// PBKDF2 results for the gateway's credential, reused across logins.
    pub scram_cache: Arc<crate::auth::SaltedCache>,
}

pub struct Shared {
    pub identities: ArcSwap<IdentityStore>,
    /// Access-token logins (`[[oidc]]`); `None` without issuers. Set once the control
    /// runtime runs, where key fetches go.
    pub tokens: Option<Arc<crate::auth::oidc::Tokens>>,
    pub token_auth: crate::session::handshake::TokenAuth,
    /// Which upstream role a session's roles run as; swapped whole on reload.
    pub roles: ArcSwap<crate::roles::RoleMap>,
    pub upstream: Upstream,
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    pub tls_offer: TlsOffer,
    pub limits: RelayLimits,
    pub read_buffer: usize,
    /// `[server] busy_poll_us`: how long an epoll worker looks before it sleeps.
    pub busy_poll: Duration,
    /// `[server] read_batch_bytes`: see [`super::batch`].
    pub read_batch: usize,
    pub handshake_timeout: Duration,
    pub cancels: CancelRegistry,
    pub lifecycle: Arc<Lifecycle>,
    /// The masking policy; swapped whole on reload.
    pub mask: Arc<ArcSwap<Policy>>,
    /// The statement policy; swapped whole on reload.
    pub policy: Arc<ArcSwap<StatementPolicy>>,
    /// Held statements wait here; `None` without `[approvals]` (holds are refused).
    pub approvals: Option<Arc<crate::approvals::Approvals>>,
    /// The just-in-time grants in force, published by the approvals hub (empty
    /// without `[approvals]`).
    pub grants: Arc<crate::grants::Registry>,
    /// Every session's evidence goes here; `None` without `[audit]`.
    pub audit: Option<crate::audit::AuditLog>,
    pub audit_params: crate::audit::config::Params,
    /// Table OID → names, one cache per upstream database, shared by its sessions.
    catalogs: Mutex<HashMap<String, Arc<Mutex<Catalog>>>>,
    /// How long catalog entries are trusted (`[mask] catalog_ttl_secs`), in seconds.
    catalog_ttl: AtomicU64,
    /// The upstream connections reserved for the gateway's own questions.
    pub side: super::side::SidePool,
    /// Each worker thread's share of `[pool]`.
    pub pool_settings: crate::pool::config::Settings,
    /// The upstream pools' counts (the connections themselves are per worker).
    pub pools: Arc<crate::pool::PoolStats>,
    /// What `/metrics` shows; sessions bump resolved handles of it.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The agent sessions open now (`SHOW SESSIONS`).
    pub sessions: Arc<crate::sessions::Registry>,
}

impl Shared {
    pub fn from_config(cfg: &Config) -> Result<Self, SharedError> {
        let (server_tls, tls_offer) = match &cfg.server.tls {
            None => (None, TlsOffer::None),
            Some(t) => (
                Some(Arc::new(server_tls(&t.cert, &t.key)?)),
                if t.required {
                    TlsOffer::Required
                } else {
                    TlsOffer::Optional
                },
            ),
        };
        let up = &cfg.upstream;
        let tls_config = match up.tls {
            UpstreamTls::Disable => None,
            mode => Some(Arc::new(client_tls(
                mode,
                up.ca.as_deref(),
                up.client_cert.as_deref().zip(up.client_key.as_deref()),
            )?)),
        };
        Ok(Self {
            identities: ArcSwap::from_pointee(IdentityStore::new(cfg.identities())),
            tokens: None,
            token_auth: crate::session::handshake::TokenAuth {
                enabled: !cfg.oidc.is_empty(),
                oauthbearer: cfg.server.token_mechanism
                    == crate::config::TokenMechanism::Oauthbearer,
                plaintext: cfg.server.plaintext_tokens,
                discovery: cfg.oidc.first().map(|o| (o.discovery(), o.scope.clone())),
            },
            roles: ArcSwap::from_pointee(crate::roles::RoleMap::new(&cfg.roles)),
            upstream: Upstream {
                host: up.host.clone(),
                port: up.port,
                user: up.user.clone(),
                credential: crate::secrets::Credential::start(cfg.upstream_secret()?)?,
                tls: up.tls,
                tls_config,
                server_name: up
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| up.host.clone()),
                connect_timeout: Duration::from_millis(up.connect_timeout_ms),
                scram_cache: Arc::default(),
            },
            server_tls,
            tls_offer,
            limits: RelayLimits {
                max_message: cfg.server.max_message_bytes,
            },
            read_buffer: cfg.server.read_buffer_bytes,
            busy_poll: Duration::from_micros(cfg.server.busy_poll_us),
            read_batch: cfg.server.read_batch_bytes,
            handshake_timeout: Duration::from_secs(cfg.server.handshake_timeout_secs),
            cancels: CancelRegistry::default(),
            lifecycle: Arc::new(Lifecycle::default()),
            mask: Arc::new(ArcSwap::from_pointee(Policy::compile(&cfg.mask)?)),
            policy: Arc::new(ArcSwap::from_pointee({
                let p = StatementPolicy::compile(cfg.policy.as_ref())?;
                warn_policy(&p);
                p
            })),
            approvals: None,
            grants: crate::grants::Registry::new(),
            audit: None,
            audit_params: cfg.audit.as_ref().map(|a| a.params).unwrap_or_default(),
            catalogs: Mutex::new(HashMap::new()),
            catalog_ttl: AtomicU64::new(catalog_ttl(&cfg.mask).as_secs()),
            side: super::side::SidePool::new(up.reserved_connections, &up.reserve_databases),
            pool_settings: cfg.pool.per_worker(super::worker_count(cfg.server.workers)),
            pools: Arc::default(),
            metrics: Arc::default(),
            sessions: Arc::default(),
        })
    }

    /// The catalog cache of one upstream database.
    pub fn catalog(&self, database: &str) -> Arc<Mutex<Catalog>> {
        let ttl = Duration::from_secs(self.catalog_ttl.load(Ordering::Relaxed));
        let mut all = self.catalogs.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(database.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(Catalog::with_ttl(ttl))))
            .clone()
    }

    /// Applies what a reload may change: identities, roles, masking rules and the
    /// statement policy. Sessions pick up new rules at their next statement or result,
    /// and new roles at their next session.
    pub fn reload(&self, cfg: &Config) -> Result<(), SharedError> {
        let policy = Policy::compile(&cfg.mask)?;
        let statements = StatementPolicy::compile(cfg.policy.as_ref())?;
        warn_policy(&statements);
        self.identities
            .store(Arc::new(IdentityStore::new(cfg.identities())));
        self.roles
            .store(Arc::new(crate::roles::RoleMap::new(&cfg.roles)));
        self.mask.store(Arc::new(policy));
        self.policy.store(Arc::new(statements));
        let ttl = catalog_ttl(&cfg.mask);
        self.catalog_ttl.store(ttl.as_secs(), Ordering::Relaxed);
        for c in self
            .catalogs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            c.lock().unwrap_or_else(|p| p.into_inner()).set_ttl(ttl);
        }
        Ok(())
    }
}

fn catalog_ttl(mask: &crate::mask::MaskConfig) -> Duration {
    mask.catalog_ttl_secs
        .map_or(crate::mask::catalog::DEFAULT_TTL, Duration::from_secs)
}

/// A gateway that analyses nothing, or refuses everything, says so at every load.
fn warn_policy(p: &StatementPolicy) {
    if !p.is_configured() {
        tracing::warn!("no [policy] section: every statement will be refused until one is added");
    } else if !p.is_enabled() {
        tracing::warn!(
            "[policy] enabled = false: statements are relayed unanalysed and masking can be read around with SQL"
        );
    } else if !p.enforces() {
        tracing::warn!(
            "[policy] enforce = false: observe-only, refusals and holds are only logged"
        );
    }
}

pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key from PEM files; `keys` names the two settings in errors.
fn cert_and_key(
    cert: &std::path::Path,
    key: &std::path::Path,
    keys: (&'static str, &'static str),
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    SharedError,
> {
    let tls_err = |key: &'static str, problem: String| SharedError::Tls { key, problem };
    let certs = {
        let f = std::fs::File::open(cert)
            .map_err(|e| tls_err(keys.0, format!("{}: {e}", cert.display())))?;
        rustls_pemfile::certs(&mut std::io::BufReader::new(f))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(keys.0, format!("{}: {e}", cert.display())))?
    };
    if certs.is_empty() {
        return Err(tls_err(
            keys.0,
            format!("{} holds no PEM certificate", cert.display()),
        ));
    }
    let key_der = {
        let f = std::fs::File::open(key)
            .map_err(|e| tls_err(keys.1, format!("{}: {e}", key.display())))?;
        rustls_pemfile::private_key(&mut std::io::BufReader::new(f))
            .map_err(|e| tls_err(keys.1, format!("{}: {e}", key.display())))?
            .ok_or_else(|| {
                tls_err(
                    keys.1,
                    format!("{} holds no PEM private key", key.display()),
                )
            })?
    };
    Ok((certs, key_der))
}

fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, SharedError> {
    let tls_err = |key: &'static str, problem: String| SharedError::Tls { key, problem };
    let (certs, key_der) = cert_and_key(cert, key, ("server.tls.cert", "server.tls.key"))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("server.tls", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| tls_err("server.tls.key", e.to_string()))
}

fn client_tls(
    mode: UpstreamTls,
    ca: Option<&std::path::Path>,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<rustls::ClientConfig, SharedError> {
    // The gateway's own certificate, presented when the server asks (clientcert=...).
    let client = client
        .map(|(cert, key)| cert_and_key(cert, key, ("upstream.client_cert", "upstream.client_key")))
        .transpose()?;
    let with_auth = |b: rustls::ConfigBuilder<
        rustls::ClientConfig,
        rustls::client::WantsClientCert,
    >| {
        match client {
                Some((certs, key)) => {
                    b.with_client_auth_cert(certs, key)
                        .map_err(|e| SharedError::Tls {
                            key: "upstream.client_key",
                            problem: format!(
                                "{e} (client_cert must be an X.509 v3 certificate, e.g. signed with an extendedKeyUsage=clientAuth extension, and client_key its private key)"
                            ),
                        })
                }
                None => Ok(b.with_no_client_auth()),
            }
    };
    let tls_err = |problem: String| SharedError::Tls {
        key: "upstream.ca",
        problem,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?;
    let config = if mode == UpstreamTls::VerifyFull {
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            Some(path) => {
                let f = std::fs::File::open(path)
                    .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
                for c in rustls_pemfile::certs(&mut std::io::BufReader::new(f)) {
                    let c = c.map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
                    roots.add(c).map_err(|e| tls_err(e.to_string()))?;
                }
            }
            None => {
                return Err(tls_err(
                    "upstream.tls = \"verify-full\" needs a CA bundle: set upstream.ca".into(),
                ));
            }
        }
        with_auth(builder.with_root_certificates(roots))?
    } else {
        // `prefer`/`require` encrypt without authenticating the server, as libpq does.
        with_auth(
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider()))),
        )?
    };
    Ok(config)
}

/// Accepts any server certificate: for `require`, which promises encryption only.
#[derive(Debug)]
pub(crate) struct NoVerify(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
