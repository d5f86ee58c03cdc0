//! The `[approvals]` section, exactly as written in TOML.
//!
//! ```toml
//! [approvals]
//! state_dir = "/var/lib/portcullis"   # the embedded store: approvals.sqlite in here
//! # store = "postgres"                # several gateways, one queue:
//! # postgres_url_env = "PORTCULLIS_APPROVALS_URL"
//! # postgres_ca = "/etc/portcullis/store-ca.pem"   # verify the store's certificate
//! timeout_secs = 900                  # per rule: approval_timeout_secs
//! notice_interval_secs = 10
//! grant_approvers = 1                 # just-in-time grants: reviewers per grant
//! grant_max_secs = 86400              # the longest grant that may be asked for
//!
//! [approvals.http]
//! listen = "127.0.0.1:8433"
//! public_url = "https://portcullis.example.com:8433"
//!
//! [[approvals.reviewer]]
//! name = "alice"
//! token_sha256 = "…"                  # `portcullis approvals hash-token`
//!
//! [[approvals.webhook]]
//! url = "https://hooks.example.com/portcullis"
//! format = "json"                     # or "slack"
//! secret_env = "PORTCULLIS_WEBHOOK_SECRET"
//! ```
//!
//! No `[approvals]` section: statements the policy holds are refused with a message
//! saying approval is required, as before approvals existed.
//!
//! [`ApprovalsConfig::validate`] checks what parsing cannot (names, hashes, addresses,
//! URLs, secrets) so a mistake stops `check-config` and start-up, not the first reviewer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// Where pending requests and decisions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// A SQLite file in `state_dir`: one gateway, no server needed.
    #[default]
    Sqlite,
    /// Tables in a PostgreSQL database shared by several gateways; decisions reach the
    /// gateway holding the session through LISTEN/NOTIFY.
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    #[serde(default)]
    pub store: StoreKind,
    /// Directory of the embedded store (created if missing).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// libpq-style connection string of the shared store (`store = "postgres"`), or the
    /// environment variable holding it (preferred: it carries a password).
    #[serde(default)]
    pub postgres_url: Option<String>,
    #[serde(default)]
    pub postgres_url_env: Option<String>,
    /// CA bundle (PEM) that signs the shared store's certificate: TLS is then required
    /// and the server verified (libpq's `verify-full`). Without it the URL's `sslmode`
    /// decides, as libpq reads it (`require` encrypts without checking the server).
    #[serde(default)]
    pub postgres_ca: Option<PathBuf>,
    /// This gateway's name in the shared queue; default: host name and listen port.
    #[serde(default)]
    pub gateway_id: Option<String>,
    /// How long a held statement waits for a decision when its rule does not say.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// Longest a previewed statement (a rule's `preview = true`) waits, holding its row
    /// locks, whatever the rule's timeout.
    #[serde(default = "default_preview_max")]
    pub preview_max_secs: u64,
    /// How often the waiting agent gets a `NoticeResponse` saying why it waits.
    #[serde(default = "default_notice_interval")]
    pub notice_interval_secs: u64,
    /// How many earlier statements of the session the reviewer is shown.
    #[serde(default = "default_recent")]
    pub recent_statements: usize,
    /// Distinct reviewers who must approve a just-in-time grant.
    #[serde(default = "default_grant_approvers")]
    pub grant_approvers: u32,
    /// How long a grant request waits for its approvals; default `timeout_secs`.
    #[serde(default)]
    pub grant_timeout_secs: Option<u64>,
    /// The longest grant that may be asked for.
    #[serde(default = "default_grant_max")]
    pub grant_max_secs: u64,
    #[serde(default)]
    pub http: Option<HttpConfig>,
    #[serde(default, rename = "reviewer")]
    pub reviewers: Vec<ReviewerConfig>,
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of the reviewers' API and page.
    pub listen: String,
    /// The address reviewers reach it by (links in notifications); default
    /// `http://{listen}`.
    #[serde(default)]
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewerConfig {
    /// Recorded with every decision; never the same as the agent identity it reviews.
    pub name: String,
    /// Hex SHA-256 of the reviewer's personal API token.
    pub token_sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// The request or decision as JSON, signed with HMAC-SHA256.
    #[default]
    Json,
    /// A Slack incoming-webhook message with a link to the page.
    Slack,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Key of the `X-Portcullis-Signature` HMAC (JSON format), or the variable that
    /// holds it.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
}

/// A value of the section that cannot work; `key` is its full TOML path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ApprovalsConfigError {
    pub key: String,
    pub problem: String,
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ApprovalsConfigError {
    ApprovalsConfigError {
        key: key.into(),
        problem: problem.into(),
    }
}

impl ApprovalsConfig {
    pub fn validate(&self) -> Result<(), ApprovalsConfigError> {
        if self.timeout_secs == 0 {
            return Err(invalid(
                "approvals.timeout_secs",
                "must be at least 1: a held statement needs time for a person to look at it",
            ));
        }
        if self.grant_approvers == 0 {
            return Err(invalid(
                "approvals.grant_approvers",
                "must be at least 1: a grant is approved by a person",
            ));
        }
        if self.grant_timeout_secs == Some(0) {
            return Err(invalid(
                "approvals.grant_timeout_secs",
                "must be at least 1",
            ));
        }
        if self.grant_max_secs == 0 {
            return Err(invalid("approvals.grant_max_secs", "must be at least 1"));
        }
        if let Some(http) = &self.http {
            http.listen_addr()?;
            if let Some(url) = &http.public_url {
                check_url("approvals.http.public_url", url)?;
            }
            if self.reviewers.is_empty() {
                return Err(invalid(
                    "approvals.http",
                    "no [[approvals.reviewer]] is configured, so nobody could sign in to the page",
                ));
            }
        }
        let mut names = HashMap::new();
        let mut tokens = HashMap::new();
        for (i, r) in self.reviewers.iter().enumerate() {
            let key = |field: &str| format!("approvals.reviewer[{i}].{field}");
            if r.name.trim().is_empty() {
                return Err(invalid(key("name"), "must not be empty"));
            }
            if let Some(first) = names.insert(r.name.as_str(), i) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "\"{}\" is also approvals.reviewer[{first}]: each reviewer is one person, recorded by name",
                        r.name
                    ),
                ));
            }
            let hash = r.token_hash().ok_or_else(|| {
                invalid(
                    key("token_sha256"),
                    "must be 64 hex digits: the SHA-256 of the token, from `portcullis approvals hash-token`",
                )
            })?;
            if let Some(first) = tokens.insert(hash, i) {
                return Err(invalid(
                    key("token_sha256"),
                    format!(
                        "is also the token of approvals.reviewer[{first}]; a token must name one reviewer"
                    ),
                ));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("approvals.webhook[{i}].{field}");
            check_url(&key("url"), &w.url)?;
            if w.secret.is_some() && w.secret_env.is_some() {
                return Err(invalid(
                    key("secret"),
                    "set either secret or secret_env, not both",
                ));
            }
            let secret = w
                .secret()
                .map_err(|problem| invalid(key("secret_env"), problem))?;
            if w.format == WebhookFormat::Json && secret.is_none() {
                return Err(invalid(
                    key("secret"),
                    "a json webhook is signed: set secret_env (or secret) so the receiver can check the signature",
                ));
            }
            if secret.as_deref().is_some_and(str::is_empty) {
                return Err(invalid(key("secret"), "must not be empty"));
            }
        }
        Ok(())
    }
}

impl HttpConfig {
    pub fn listen_addr(&self) -> Result<SocketAddr, ApprovalsConfigError> {
        self.listen.parse().map_err(|_| {
            invalid(
                "approvals.http.listen",
                format!("\"{}\" is not an address:port", self.listen),
            )
        })
    }
}

impl ReviewerConfig {
    /// The configured hash as bytes; `None` unless it is 64 hex digits.
    pub fn token_hash(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(self.token_sha256.trim(), &mut out).ok()?;
        Some(out)
    }
}

impl WebhookConfig {
    /// The signing key, from the file or the named environment variable.
    pub fn secret(&self) -> Result<Option<String>, String> {
        match (&self.secret, &self.secret_env) {
            (Some(s), _) => Ok(Some(s.clone())),
            (None, Some(var)) => std::env::var(var)
                .map(Some)
                .map_err(|_| format!("environment variable {var} is not set")),
            (None, None) => Ok(None),
        }
    }
}

/// An absolute `http` or `https` URL with a host.
fn check_url(key: &str, url: &str) -> Result<(), ApprovalsConfigError> {
    let bad = |why: &str| invalid(key, format!("\"{url}\" {why}"));
    let uri: axum::http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(())
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/portcullis")
}

fn default_timeout() -> u64 {
    15 * 60
}

fn default_preview_max() -> u64 {
    5 * 60
}

fn default_notice_interval() -> u64 {
    10
}

fn default_recent() -> usize {
    5
}

fn default_grant_approvers() -> u32 {
    1
}

fn default_grant_max() -> u64 {
    24 * 3600
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(extra: &str) -> ApprovalsConfig {
        toml::from_str(&format!(
            "state_dir = \"/tmp/x\"\n[http]\nlisten = \"127.0.0.1:8433\"\n[[reviewer]]\nname = \"alice\"\ntoken_sha256 = \"{HASH}\"\n{extra}"
        ))
        .unwrap()
    }

    fn problem(extra: &str) -> ApprovalsConfigError {
        parse(extra).validate().unwrap_err()
    }

    #[test]
    fn a_good_section_validates() {
        let c = parse(
            "[[webhook]]\nurl = \"https://hooks.example.com/p\"\nsecret = \"k\"\n[[webhook]]\nurl = \"http://127.0.0.1:9/s\"\nformat = \"slack\"\n",
        );
        c.validate().unwrap();
        assert_eq!(c.reviewers[0].token_hash().unwrap()[0], 0x9f);
    }

    #[test]
    fn reviewers_need_unique_names_and_real_hashes() {
        let two = |name: &str, hash: &str| {
            problem(&format!(
                "[[reviewer]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\n"
            ))
        };
        let e = two("alice", &HASH.replace('9', "8"));
        assert_eq!(e.key, "approvals.reviewer[1].name");
        assert!(e.problem.contains("approvals.reviewer[0]"), "{e}");
        assert_eq!(
            two(" ", &HASH.replace('9', "8")).key,
            "approvals.reviewer[1].name"
        );
        for bad in ["abc", &HASH[1..], &HASH.replace('9', "g")] {
            assert_eq!(two("bob", bad).key, "approvals.reviewer[1].token_sha256");
        }
        let e = two("bob", &HASH.to_uppercase());
        assert!(e.problem.contains("one reviewer"), "{e}");
    }

    #[test]
    fn the_http_listener_needs_an_address_and_someone_to_sign_in() {
        let mut c = parse("");
        c.http.as_mut().unwrap().listen = "localhost".into();
        assert_eq!(c.validate().unwrap_err().key, "approvals.http.listen");
        let mut c = parse("");
        c.http.as_mut().unwrap().public_url = Some("portcullis.example.com".into());
        assert_eq!(c.validate().unwrap_err().key, "approvals.http.public_url");
        let mut c = parse("");
        c.reviewers.clear();
        assert_eq!(c.validate().unwrap_err().key, "approvals.http");
        // Without the page, reviewers are optional (the admin socket decides too).
        c.http = None;
        c.validate().unwrap();
    }

    #[test]
    fn webhooks_need_http_urls_and_one_secret() {
        let hook = |body: &str| problem(&format!("[[webhook]]\n{body}\n"));
        for url in ["ftp://h/x", "/relative", "https://", "not a url"] {
            let e = hook(&format!("url = \"{url}\"\nsecret = \"k\""));
            assert_eq!(e.key, "approvals.webhook[0].url", "{url}: {e}");
        }
        let e = hook("url = \"https://h/x\"\nsecret = \"k\"\nsecret_env = \"K\"");
        assert_eq!(e.key, "approvals.webhook[0].secret");
        let e = hook("url = \"https://h/x\"");
        assert!(e.problem.contains("signed"), "{e}");
        let e = hook("url = \"https://h/x\"\nsecret_env = \"PORTCULLIS_TEST_UNSET_VARIABLE\"");
        assert_eq!(e.key, "approvals.webhook[0].secret_env");
        assert!(e.problem.contains("PORTCULLIS_TEST_UNSET_VARIABLE"), "{e}");
        let e = hook("url = \"https://h/x\"\nsecret = \"\"");
        assert!(e.problem.contains("empty"), "{e}");
    }
}
