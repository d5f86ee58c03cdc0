//! Notifications: tell people a statement waits for them, and what became of it.
//!
//! Each `[[approvals.webhook]]` gets a POST when a request is made (`requested`) and when
//! it ends (`decided`: approved, edited, denied, timed out or withdrawn). Partial
//! approvals of a request that needs several reviewers are not sent.
//!
//! # Formats
//!
//! - `json`: `{"event", "delivery", "request", "url"}`, where `request` is the same
//!   document as `GET /api/requests/{id}` and `url` links the request on the reviewers'
//!   page (null without `[approvals.http]`).
//! - `slack`: a Slack incoming-webhook message (`{"text": ...}`): who, the statement, the
//!   rule and a link to the page. Decisions are made on the page: interactive message
//!   buttons would need Slack to reach the gateway and an app of its own, which this does
//!   not do.
//!
//! # Signature
//!
//! Every POST with a secret (required for `json`, optional for `slack`) carries
//!
//! ```text
//! X-Portcullis-Event: requested | decided
//! X-Portcullis-Delivery: <request id>-<request version>   (the same on every retry)
//! X-Portcullis-Timestamp: <Unix seconds when this attempt was sent>
//! X-Portcullis-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//! ```
//!
//! A receiver recomputes the HMAC over the timestamp header, a `.`, and the body bytes
//! exactly as received, compares in constant time, and refuses a timestamp more than a
//! few minutes from its own clock (a captured delivery cannot be replayed later), and a
//! delivery id it has already seen (a retry of one that did arrive).
//!
//! # Delivery
//!
//! Each webhook has its own bounded queue ([`Policy::queue`]) and sender, so a slow or
//! dead receiver delays nobody else and never the hub: an event that finds the queue full
//! is dropped and logged. A failed attempt (no connection, no answer within
//! [`Policy::timeout`], a 5xx, 408 or 429) is retried with exponential backoff up to
//! [`Policy::attempts`] times; any other 4xx is the receiver refusing it and is not
//! retried. Logs name a webhook by its index and host, never its URL: a Slack webhook's
//! URL is its credential.

use std::time::Duration;

use axum::http::{self, HeaderValue, Method, StatusCode, Uri, header};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use sha2::Sha256;
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, warn};

use crate::approvals::config::{WebhookConfig, WebhookFormat};
use crate::approvals::model::{Request, Status};
use crate::approvals::{Approvals, Event, EventKind};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("approvals.webhook[{index}].{key}: {problem}")]
    Config {
        index: usize,
        key: &'static str,
        problem: String,
    },
    #[error("webhooks: cannot set up TLS: {0}")]
    Tls(String),
}

/// How hard to try; [`Policy::default`] is what the gateway uses.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts per event, the first included.
    pub attempts: u32,
    /// Wait after the first failure; doubled after each next one.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Time for one attempt: connect, send, and the receiver's answer.
    pub timeout: Duration,
    /// Events waiting per webhook; more are dropped.
    pub queue: usize,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            attempts: 6,
            first_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            queue: 256,
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One configured receiver.
struct Target {
    /// `approvals.webhook[i] (host)`, for logs.
    name: String,
    url: Uri,
    format: WebhookFormat,
    secret: Option<Vec<u8>>,
}

/// One event, ready to send to one receiver.
struct Delivery {
    id: String,
    event: &'static str,
    request: i64,
    body: Bytes,
}

/// Starts one sender per webhook and the task that feeds them from the hub's events.
/// Events from this call on are sent; none before.
pub fn spawn(
    rt: &tokio::runtime::Handle,
    hooks: &[WebhookConfig],
    approvals: &Approvals,
    policy: Policy,
) -> Result<(), WebhookError> {
    if hooks.is_empty() {
        return Ok(());
    }
    let client = client()?;
    let mut queues = Vec::new();
    for (index, hook) in hooks.iter().enumerate() {
        let err = |key, problem: String| WebhookError::Config {
            index,
            key,
            problem,
        };
        let url: Uri = hook
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| err("url", e.to_string()))?;
        let secret = hook
            .secret()
            .map_err(|p| err("secret_env", p))?
            .map(String::into_bytes);
        let target = Target {
            name: format!("approvals.webhook[{index}] ({})", url.host().unwrap_or("?")),
            url,
            format: hook.format,
            secret,
        };
        let (tx, rx) = mpsc::channel(policy.queue.max(1));
        queues.push((target.name.clone(), target.format, tx));
        rt.spawn(send_loop(client.clone(), target, rx, policy.clone()));
    }
    let events = approvals.subscribe();
    let page = approvals.settings().page_url.clone();
    rt.spawn(dispatch(events, queues, page));
    Ok(())
}

fn client() -> Result<HttpClient, WebhookError> {
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| WebhookError::Tls(e.to_string()))?
        .https_or_http()
        .enable_http1();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(tls.wrap_connector(http)))
}

/// Hands each event to every webhook's queue without waiting for any of them.
async fn dispatch(
    mut events: broadcast::Receiver<Event>,
    queues: Vec<(String, WebhookFormat, mpsc::Sender<Delivery>)>,
    page: Option<String>,
) {
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                warn!(target: "portcullis::approvals", missed, "webhooks fell behind the hub; these events were not sent");
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let event = match ev.kind {
            EventKind::Requested => "requested",
            EventKind::Decided => "decided",
            EventKind::Voted => continue,
        };
        let id = format!("{}-{}", ev.request.id, ev.request.version);
        let link = page.as_deref().map(|p| link(p, ev.request.id));
        let mut json = None;
        let mut slack = None;
        for (name, format, tx) in &queues {
            let body = match format {
                WebhookFormat::Json => json
                    .get_or_insert_with(|| json_body(event, &id, &ev.request, link.as_deref()))
                    .clone(),
                WebhookFormat::Slack => slack
                    .get_or_insert_with(|| slack_body(ev.kind, &ev.request, link.as_deref()))
                    .clone(),
            };
            let delivery = Delivery {
                id: id.clone(),
                event,
                request: ev.request.id,
                body,
            };
            if let Err(mpsc::error::TrySendError::Full(d)) = tx.try_send(delivery) {
                warn!(
                    target: "portcullis::approvals",
                    webhook = %name,
                    delivery = %d.id,
                    request = d.request,
                    event = d.event,
                    "webhook queue full (the receiver is slow or down); this notification is dropped"
                );
            }
        }
    }
}

/// Where the page shows request `id`.
pub fn link(page_url: &str, id: i64) -> String {
    format!("{}/#request-{id}", page_url.trim_end_matches('/'))
}

fn json_body(event: &str, delivery: &str, request: &Request, url: Option<&str>) -> Bytes {
    let body = serde_json::json!({
        "event": event,
        "delivery": delivery,
        "request": request,
        "url": url,
    });
    Bytes::from(serde_json::to_vec(&body).expect("a request serialises"))
}

/// Longest statement quoted in a chat message; the page has the rest.
const SLACK_SQL_MAX: usize = 1500;

fn slack_body(kind: EventKind, r: &Request, url: Option<&str>) -> Bytes {
    let who = slack_escape(&r.new.origin.identity);
    let db = slack_escape(&r.new.origin.database);
    let rule = slack_escape(r.new.rule.as_deref().unwrap_or("the policy default"));
    let mut sql: String = r.effective_sql.chars().take(SLACK_SQL_MAX).collect();
    if sql.len() < r.effective_sql.len() {
        sql.push_str(" …");
    }
    // A fence inside the statement would end the code block early.
    let sql = slack_escape(&sql).replace("```", "`\u{200b}``");
    let review = match url {
        Some(u) => format!("<{}|review request #{}>", slack_escape(u), r.id),
        None => format!("request #{}", r.id),
    };
    let text = match kind {
        EventKind::Requested => {
            let preview = match &r.new.preview {
                Some(p) if p.error.is_none() => format!(
                    "\npreview (uncommitted): {}",
                    slack_escape(p.tag.as_deref().unwrap_or("done"))
                ),
                _ => String::new(),
            };
            format!(
                ":hourglass: *{who}* waits for approval on `{db}` ({rule}: {}): {review}{preview}\n```{sql}```",
                slack_escape(&r.new.message)
            )
        }
        _ => {
            let last = r.votes.last();
            let by = last.map(|v| slack_escape(&v.reviewer)).unwrap_or_default();
            let outcome = match r.status {
                Status::Approved => {
                    format!(":white_check_mark: approved by {by}; released to the session")
                }
                Status::Edited => format!(
                    ":pencil2: approved as edited by {by}; the edit is released to the session"
                ),
                Status::Denied => format!(
                    ":no_entry: denied by {by}: {}",
                    slack_escape(last.and_then(|v| v.reason.as_deref()).unwrap_or(""))
                ),
                Status::TimedOut => ":alarm_clock: timed out: it did not run".into(),
                Status::Withdrawn => format!(
                    ":leftwards_arrow_with_hook: withdrawn: {}",
                    slack_escape(r.end_reason.as_deref().unwrap_or(""))
                ),
                Status::Pending => "still pending".into(),
            };
            format!("{review} from *{who}* on `{db}`: {outcome}\n```{sql}```")
        }
    };
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "text": text })).expect("a string"))
}

/// Slack's three control characters in message text.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `sha256=<hex>` over `timestamp.body`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn send_loop(
    client: HttpClient,
    target: Target,
    mut rx: mpsc::Receiver<Delivery>,
    policy: Policy,
) {
    while let Some(d) = rx.recv().await {
        deliver(&client, &target, &d, &policy).await;
    }
}

/// What one attempt came to.
enum Attempt {
    Done,
    /// Worth trying again.
    Failed(String),
    /// The receiver said no; again would be the same.
    Refused(StatusCode),
}

async fn deliver(client: &HttpClient, target: &Target, d: &Delivery, policy: &Policy) {
    let attempts = policy.attempts.max(1);
    for attempt in 1..=attempts {
        let why = match attempt_once(client, target, d, policy.timeout).await {
            Attempt::Done => {
                debug!(target: "portcullis::approvals", webhook = %target.name, delivery = %d.id, attempt, "webhook delivered");
                return;
            }
            Attempt::Refused(status) => {
                warn!(
                    target: "portcullis::approvals",
                    webhook = %target.name,
                    delivery = %d.id,
                    request = d.request,
                    %status,
                    "webhook receiver refused the notification; not retried (check its URL and secret)"
                );
                return;
            }
            Attempt::Failed(why) => why,
        };
        if attempt == attempts {
            warn!(
                target: "portcullis::approvals",
                webhook = %target.name,
                delivery = %d.id,
                request = d.request,
                event = d.event,
                attempts,
                "webhook notification dropped after its last attempt: {why}"
            );
            return;
        }
        let wait = backoff(policy, attempt);
        debug!(target: "portcullis::approvals", webhook = %target.name, delivery = %d.id, attempt, ?wait, "webhook attempt failed, retrying: {why}");
        tokio::time::sleep(wait).await;
    }
}

/// The wait after failed attempt `n` (1-based): doubling from the first, capped, plus up
/// to a quarter more so receivers that came back are not hit by every gateway at once.
fn backoff(policy: &Policy, n: u32) -> Duration {
    let base = policy
        .first_backoff
        .saturating_mul(1u32 << (n - 1).min(20))
        .min(policy.max_backoff);
    let jitter = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

async fn attempt_once(
    client: &HttpClient,
    target: &Target,
    d: &Delivery,
    timeout: Duration,
) -> Attempt {
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs())
        .unwrap_or(0)
        .to_string();
    let mut req = http::Request::builder()
        .method(Method::POST)
        .uri(target.url.clone())
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("portcullis/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-portcullis-event", d.event)
        .header("x-portcullis-delivery", &d.id)
        .header("x-portcullis-timestamp", &timestamp);
    if let Some(secret) = &target.secret {
        let sig = signature(secret, &timestamp, &d.body);
        req = req.header(
            "x-portcullis-signature",
            HeaderValue::from_str(&sig).expect("hex is a header value"),
        );
    }
    let req = match req.body(Full::new(d.body.clone())) {
        Ok(r) => r,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Attempt::Failed(format!("no answer within {}s", timeout.as_secs_f32())),
        Ok(Err(e)) => Attempt::Failed(error_chain(&e)),
        Ok(Ok(resp)) => {
            let status = resp.status();
            if status.is_success() {
                Attempt::Done
            } else if status.is_server_error()
                || status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
            {
                Attempt::Failed(format!("the receiver answered {status}"))
            } else {
                Attempt::Refused(status)
            }
        }
    }
}

/// hyper's errors say little at the top ("client error (Connect)"); the cause is below.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
