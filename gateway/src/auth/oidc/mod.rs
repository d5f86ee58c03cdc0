//! Access tokens from the organisation's identity providers as an agent's credential.
//!
//! - [`config`]: the `[[oidc]]` sections.
//! - [`jwt`]: checking one token against one issuer's keys (pure).
//! - [`keys`]: fetching and caching each issuer's keys.
//!
//! [`Tokens::verify`] is what a session's start-up awaits: it finds the token's issuer,
//! its key (fetching the issuer's keys when the cache lacks it), checks it and returns
//! the identity it stands for.

pub mod config;
pub mod jwt;
pub mod keys;

use std::sync::Arc;

pub use config::OidcConfig;
use keys::IssuerKeys;

use crate::auth::Identity;

/// Why a token was not accepted. `Display` is for the gateway's log and the agent's
/// error detail: it never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's issuer is not one this gateway accepts")]
    Issuer,
    #[error("the token is not for this gateway (its audience is none of: {0})")]
    Audience(String),
    #[error("the token's algorithm is refused: {0}")]
    Algorithm(String),
    #[error("the token's type (typ) is {}, not {want}", found.as_deref().unwrap_or("missing"))]
    Typ { found: Option<String>, want: String },
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired{}", at(*.0))]
    Expired(u64),
    #[error("the token is not valid yet{}", from(*.0))]
    NotYetValid(u64),
    #[error("the token's claims are not usable: {0}")]
    Claim(String),
    #[error("the token names a signing key ({0}) its issuer does not publish")]
    UnknownKey(String),
    /// The issuer's keys could not be fetched and none are cached: not the agent's fault.
    #[error("the gateway cannot check this issuer's tokens right now: {0}")]
    KeysUnavailable(String),
}

fn at(secs: u64) -> String {
    if secs == 0 {
        String::new()
    } else {
        format!(" (at {})", crate::auth::rfc3339_ms(secs * 1000))
    }
}

fn from(secs: u64) -> String {
    if secs == 0 {
        String::new()
    } else {
        format!(" (from {})", crate::auth::rfc3339_ms(secs * 1000))
    }
}

impl TokenError {
    /// The provider, not the agent, is at fault: worth retrying.
    pub fn is_transient(&self) -> bool {
        matches!(self, TokenError::KeysUnavailable(_))
    }
}

/// Every configured issuer.
pub struct Tokens {
    issuers: Vec<Arc<IssuerKeys>>,
    /// Where fetches run: the control runtime.
    rt: tokio::runtime::Handle,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.issuers).finish()
    }
}

impl Tokens {
    pub fn new(cfgs: &[OidcConfig], rt: tokio::runtime::Handle) -> Result<Self, String> {
        let issuers = cfgs
            .iter()
            .map(|c| IssuerKeys::new(c.clone()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Tokens { issuers, rt })
    }

    /// Fetches every issuer's keys once (at start-up, so the first logins need no fetch);
    /// an issuer that cannot be reached is only logged, and tried again on demand.
    pub async fn prefetch(&self) {
        for i in &self.issuers {
            let seen = i.current();
            let i = i.clone();
            let _ = self.rt.spawn(async move { i.refetch(&seen).await }).await;
        }
    }

    /// Checks `token` and returns the identity it stands for. `mechanism` names how it
    /// was given, for the audit record.
    pub async fn verify(
        &self,
        token: &str,
        mechanism: &'static str,
    ) -> Result<Identity, TokenError> {
        let seen = jwt::peek(token)?;
        let issuer = match (&seen.iss, self.issuers.as_slice()) {
            (Some(iss), all) => all
                .iter()
                .find(|i| i.cfg.issuer.trim_end_matches('/') == iss.trim_end_matches('/'))
                .ok_or(TokenError::Issuer)?,
            (None, _) => return Err(TokenError::Claim("it has no iss claim".into())),
        };
        let now = crate::approvals::model::now_ms() / 1000;
        let mut keys = issuer.current();
        if issuer.stale() && keys.fetched.is_some() {
            // Served from the cache now; the refresh replaces it for later logins.
            let (i, seen) = (issuer.clone(), keys.clone());
            self.rt.spawn(async move { i.refetch(&seen).await });
        }
        loop {
            if let Some(key) = jwt::find(&keys.keys, seen.kid.as_deref()) {
                return jwt::verify(token, &seen, key, &issuer.cfg, now, mechanism);
            }
            let kid = seen.kid.clone().unwrap_or_else(|| "no kid".into());
            if !issuer.may_refetch() {
                return Err(if keys.fetched.is_none() {
                    TokenError::KeysUnavailable(format!(
                        "no keys of {} could be fetched yet",
                        issuer.cfg.issuer
                    ))
                } else {
                    TokenError::UnknownKey(kid)
                });
            }
            let (i, before) = (issuer.clone(), keys.clone());
            let fetched = self
                .rt
                .spawn(async move { i.refetch(&before).await })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            let after = issuer.current();
            match fetched {
                Err(e) if after.fetched.is_none() => return Err(TokenError::KeysUnavailable(e)),
                Err(_) => return Err(TokenError::UnknownKey(kid)),
                Ok(()) if Arc::ptr_eq(&after, &keys) => return Err(TokenError::UnknownKey(kid)),
                Ok(()) => keys = after,
            }
        }
    }
}
