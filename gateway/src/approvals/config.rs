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
