//! The reviewers' HTTP API and page: where a person sees what an agent's session is
//! waiting for and approves, denies or edits it.
//!
//! Served on the control thread's runtime when `[approvals.http]` is set, never on the
//! data-path workers: a slow reviewer or a flood of requests here costs the control
//! thread, not a session's latency. Every change goes through the hub
//! ([`Approvals::decide`]), which applies the same rules as the admin socket.
//!
//! # API
//!
//! Every `/api` route needs `Authorization: Bearer <token>`; the token's SHA-256 must be
//! one `[[approvals.reviewer]] token_sha256`, and that reviewer's name is recorded with
//! the decision. Answers are JSON; an error is `{"error": "..."}` with a status that says
//! what kind (401 no or unknown token, 404 no such request, 409 the request is not
//! pending, changed since it was shown, is the reviewer's own, or has their approval
//! already, 400 bad input, 413 a body over [`MAX_BODY`], 415 a body not sent as JSON,
//! 503 the hub has stopped).
//!
//! - `GET /api/me`: `{"reviewer": name}`, to check a token.
//! - `GET /api/requests?status=pending|all&limit=N`: `{"requests": [...], "now_ms"}`,
//!   newest first (`now_ms` is the gateway's clock, for how long each has waited).
//! - `GET /api/requests/{id}`: one request.
//! - `POST /api/requests/{id}/approve` `{"digest", "reason"?}`,
//!   `POST /api/requests/{id}/deny` `{"digest", "reason"}`,
//!   `POST /api/requests/{id}/edit` `{"digest", "sql", "reason"?}`: the request as it is
//!   afterwards. `digest` is the request's `digest` as the reviewer was shown it: a
//!   decision about a statement that has since been edited is refused (409), never
//!   applied to the new one.
//! - `POST /api/grants` `{"identity", "roles", "for", "reason", "databases"?,
//!   "classes"?, "tables"?}`: asks for a just-in-time grant, requested by the signed-in
//!   reviewer (who then cannot approve it); it is an approval request like any other.
//!   `GET /api/grants?status=live|all`: `{"grants": [...], "now_ms"}`.
//!   `POST /api/grants/{id}/revoke` `{"reason"?}`: ends it; the identity's next
//!   statement is judged without it.
//! - `GET /api/events`: Server-Sent Events. `ready` when the stream starts (re-read the
//!   list then: nothing before it is replayed), then `requested`, `voted` and `decided`
//!   with `{"kind", "request"}`, and `resync` when this stream fell behind and missed
//!   events. The page reads it with `fetch`, since `EventSource` cannot send a header.
//!
//! # The page
//!
//! `GET /` serves `reviewer.html`: one file, no build step, no external resources. Its
//! script and style are pinned by hash in the `Content-Security-Policy`, so nothing an
//! agent put into a statement can run there even if it were rendered as markup (the page
//! only ever sets text).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, broadcast};
use tracing::{debug, info, warn};

use crate::approvals::config::{HttpConfig, ReviewerConfig};
use crate::approvals::model::{Action, Request as Held, VoteError, now_ms};
use crate::approvals::{ApprovalError, Approvals};
use crate::auth::scram::constant_time_eq;
use crate::control::admin_grants::{self, RequestArgs};
use crate::grants::{Grant, GrantError, GrantStatus};

/// Largest request body: an edited statement up to the policy's default
/// `max_statement_bytes` (1 MiB) with its JSON around it.
pub const MAX_BODY: usize = 2 << 20;
/// Connections served at once; the next waits in the kernel's backlog. Each open page
/// keeps one for its event stream.
const MAX_CONNECTIONS: usize = 128;
/// Time a client has to send a request's headers, so idle or stuck connections do not
/// keep their slot.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests one list answers at most.
const MAX_LIST: usize = 1000;
const DEFAULT_LIST: usize = 100;

const PAGE: &str = include_str!("reviewer.html");

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("approvals.http.listen: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("approvals.http.listen: {0}")]
    Address(String),
}

/// Binds the listener now, so a taken port fails start-up instead of leaving the
/// gateway running with no page.
pub fn bind(cfg: &HttpConfig) -> Result<std::net::TcpListener, HttpError> {
    let addr = cfg
        .listen_addr()
        .map_err(|e| HttpError::Address(e.problem))?;
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| HttpError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| HttpError::Bind { addr, source })?;
    Ok(listener)
}

/// Serves the API and the page on `listener` (from [`bind`]) until the runtime stops.
pub async fn serve(listener: std::net::TcpListener, app: Router) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(target: "portcullis::approvals", "reviewers' page: cannot use the listener: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(target: "portcullis::approvals", "reviewers' page: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            tower_service::Service::call(&mut app, req)
        });
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(target: "portcullis::approvals", %peer, "reviewers' page connection: {e}");
            }
        });
    }
}

/// The routes, with the reviewers allowed to use them.
pub fn router(approvals: Arc<Approvals>, reviewers: &[ReviewerConfig]) -> Router {
    let state = AppState {
        approvals,
        reviewers: Arc::new(Reviewers::new(reviewers)),
    };
    let api = Router::new()
        .route("/me", get(me))
        .route("/requests", get(list))
        .route("/requests/{id}", get(one))
        .route("/requests/{id}/approve", post(approve))
        .route("/requests/{id}/deny", post(deny))
        .route("/requests/{id}/edit", post(edit))
        .route("/events", get(events))
        .route("/grants", get(grants_list).post(grant_request))
        .route("/grants/{id}/revoke", post(grant_revoke))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::map_response(no_store));
    Router::new()
        .route("/", get(page))
        .nest("/api", api)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such page; the reviewers' page is at /",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[derive(Clone)]
struct AppState {
    approvals: Arc<Approvals>,
    reviewers: Arc<Reviewers>,
}

/// Reviewers by the SHA-256 of their token.
struct Reviewers(Vec<(String, [u8; 32])>);

impl Reviewers {
    fn new(cfg: &[ReviewerConfig]) -> Reviewers {
        // Validated at load; an entry that is not a hash could never match anyway.
        Reviewers(
            cfg.iter()
                .filter_map(|r| Some((r.name.clone(), r.token_hash()?)))
                .collect(),
        )
    }

    /// The reviewer whose token this is. Every entry is compared, in constant time, so
    /// the answer's timing says nothing about which hash came close.
    fn identify(&self, token: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (name, want) in &self.0 {
            if constant_time_eq(&hash, want) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Who is signed in, for the handlers.
#[derive(Clone)]
struct Reviewer(Arc<str>);

async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return unauthorized(
            "sign in: send your reviewer token as `Authorization: Bearer <token>`",
        );
    };
    let Some(name) = state.reviewers.identify(token) else {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        warn!(target: "portcullis::approvals", %peer, path = %req.uri().path(), "reviewers' API: unknown token refused");
        return unauthorized(
            "this token belongs to no [[approvals.reviewer]]; check it, or ask an operator for one",
        );
    };
    let name: Arc<str> = name.into();
    req.extensions_mut().insert(Reviewer(name));
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"portcullis\""),
    );
    r
}

/// API answers describe a moment of the queue: never cached.
async fn no_store(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An API error: its status and a message a person can act on.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> ApiError {
        let status = match &e {
            ApprovalError::NotFound(_) => StatusCode::NOT_FOUND,
            ApprovalError::Vote(v) => match v {
                VoteError::NoReason | VoteError::EmptyEdit | VoteError::GrantEdit { .. } => {
                    StatusCode::BAD_REQUEST
                }
                VoteError::NotPending { .. }
                | VoteError::SelfReview { .. }
                | VoteError::OwnGrant { .. }
                | VoteError::AlreadyVoted { .. }
                | VoteError::Stale { .. } => StatusCode::CONFLICT,
            },
            ApprovalError::Contended(_) => StatusCode::CONFLICT,
            ApprovalError::Grant(g) => match g {
                GrantError::NotFound(_) => StatusCode::NOT_FOUND,
                GrantError::NotRevocable { .. } => StatusCode::CONFLICT,
                GrantError::Duration(_) | GrantError::Invalid(_) => StatusCode::BAD_REQUEST,
            },
            ApprovalError::NoGrants => StatusCode::SERVICE_UNAVAILABLE,
            ApprovalError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            ApprovalError::Store(_) => {
                warn!(target: "portcullis::approvals", "reviewers' API: {e}");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let status = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        };
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => format!("the body is over {MAX_BODY} bytes"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                "send the body as JSON, with `Content-Type: application/json`".into()
            }
            _ => format!(
                "the body is not the JSON this route takes: {}",
                r.body_text()
            ),
        };
        ApiError::new(status, message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> ApiError {
        ApiError::bad("a request id is a number, as in /api/requests/42")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad(format!(
            "the query string: {} (status=pending|all, limit=N)",
            r.body_text()
        ))
    }
}

/// The page's `Content-Security-Policy`: its one inline script and one style, by hash.
static PAGE_CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = |tag: &str| {
        let body = inline(PAGE, tag).unwrap_or("");
        let digest = Sha256::digest(body.as_bytes());
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("script"),
        hash("style")
    )
});

/// The text between `<tag>` and `</tag>`, as the browser hashes it.
fn inline<'a>(html: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = html.find(&open)? + open.len();
    let len = html[start..].find(&format!("</{tag}>"))?;
    Some(&html[start..start + len])
}

async fn page() -> Response {
    let mut headers = HeaderMap::new();
    let csp = HeaderValue::from_str(&PAGE_CSP).expect("the policy is ASCII");
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, PAGE).into_response()
}

async fn me(Extension(who): Extension<Reviewer>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "reviewer": &*who.0 }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ListBody {
    requests: Vec<Held>,
    /// The gateway's clock, Unix milliseconds: how long a request has waited is
    /// `now_ms - created_ms`, whatever the reviewer's own clock says.
    now_ms: u64,
}

async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListBody>, ApiError> {
    let Query(q) = query?;
    let pending_only = match q.status.as_deref() {
        None | Some("pending") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "status={other}: say status=pending or status=all"
            )));
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
    let requests = state.approvals.list(pending_only, limit).await?;
    Ok(Json(ListBody {
        requests,
        now_ms: now_ms(),
    }))
}

async fn one(
    State(state): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<Held>, ApiError> {
    let Path(id) = id?;
    match state.approvals.get(id).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApprovalError::NotFound(id).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantsQuery {
    status: Option<String>,
}

#[derive(Serialize)]
struct GrantsBody {
    grants: Vec<Grant>,
    now_ms: u64,
}

async fn grants_list(
    State(state): State<AppState>,
    query: Result<Query<GrantsQuery>, QueryRejection>,
) -> Result<Json<GrantsBody>, ApiError> {
    let Query(q) = query?;
    let live_only = match q.status.as_deref() {
        None | Some("live") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "status={other}: say status=live (pending and active) or status=all"
            )));
        }
    };
    let list = state.approvals.grants(live_only, MAX_LIST).await?;
    let mut grants = admin_grants::grants_of(&list);
    if live_only {
        grants.retain(|g| matches!(g.status, GrantStatus::Pending | GrantStatus::Active));
    }
    Ok(Json(GrantsBody {
        grants,
        now_ms: now_ms(),
    }))
}

/// `POST /api/grants`: the signed-in reviewer asks; someone else must approve.
async fn grant_request(
    State(state): State<AppState>,
    Extension(who): Extension<Reviewer>,
    body: Result<Json<RequestArgs>, JsonRejection>,
) -> Result<Json<Grant>, ApiError> {
    let Json(args) = body?;
    if args.requested_by.is_some() {
        return Err(ApiError::bad(
            "requested_by is who is signed in; leave it out",
        ));
    }
    let spec = args.spec(who.0.to_string()).map_err(ApiError::bad)?;
    info!(target: "portcullis::grants", identity = %args.identity, requested_by = %who.0, "grant requested through the API");
    let r = state
        .approvals
        .request_grant(args.identity.trim(), spec, &format!("http ({})", who.0))
        .await?;
    Grant::of(&r, now_ms()).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the stored request is not a grant",
        )
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    reason: Option<String>,
}

async fn grant_revoke(
    State(state): State<AppState>,
    Extension(who): Extension<Reviewer>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Json<Grant>, ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    info!(target: "portcullis::grants", grant = id, by = %who.0, "grant revoked through the API");
    let r = state
        .approvals
        .revoke(id, &who.0, body.reason.filter(|r| !r.trim().is_empty()))
        .await?;
    Grant::of(&r, now_ms()).map(Json).ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the stored request is not a grant",
        )
    })
}

/// The body of a decision; which fields a verb needs is checked by the verb.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    digest: Option<String>,
    reason: Option<String>,
    sql: Option<String>,
}

enum Verb {
    Approve,
    Deny,
    Edit,
}

async fn approve(
    state: State<AppState>,
    who: Extension<Reviewer>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<Decision>, JsonRejection>,
) -> Result<Json<Held>, ApiError> {
    decide(state, who, id, body, Verb::Approve).await
}

async fn deny(
    state: State<AppState>,
    who: Extension<Reviewer>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<Decision>, JsonRejection>,
) -> Result<Json<Held>, ApiError> {
    decide(state, who, id, body, Verb::Deny).await
}

async fn edit(
    state: State<AppState>,
    who: Extension<Reviewer>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<Decision>, JsonRejection>,
) -> Result<Json<Held>, ApiError> {
    decide(state, who, id, body, Verb::Edit).await
}

async fn decide(
    State(state): State<AppState>,
    Extension(who): Extension<Reviewer>,
    id: Result<Path<i64>, PathRejection>,
    body: Result<Json<Decision>, JsonRejection>,
    verb: Verb,
) -> Result<Json<Held>, ApiError> {
    let Path(id) = id?;
    let Json(body) = body?;
    // Over HTTP the digest is required: the reviewer decides about what they were shown,
    // and only the admin socket, whose client reads the request just before, may omit it.
    let digest = body
        .digest
        .filter(|d| !d.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad(format!(
                "send the request's digest as you were shown it (GET /api/requests/{id})"
            ))
        })?;
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    let action = match verb {
        Verb::Approve => Action::Approve { reason },
        Verb::Deny => Action::Deny {
            reason: reason
                .ok_or_else(|| ApiError::from(ApprovalError::Vote(VoteError::NoReason)))?,
        },
        Verb::Edit => Action::Edit {
            sql: body
                .sql
                .ok_or_else(|| ApiError::bad("an edit needs the statement to run, as \"sql\""))?,
            reason,
        },
    };
    let after = state
        .approvals
        .decide(id, &who.0, action, Some(digest))
        .await?;
    Ok(Json(after))
}

async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>> {
    let rx = state.approvals.subscribe();
    let ready = sse::Event::default().event("ready").data("{}");
    let rest = stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(ev) => {
                let kind = match serde_json::to_value(ev.kind) {
                    Ok(serde_json::Value::String(s)) => s,
                    _ => "event".into(),
                };
                match serde_json::to_string(&ev) {
                    Ok(data) => sse::Event::default().event(kind).data(data),
                    Err(e) => sse::Event::default()
                        .event("resync")
                        .data(serde_json::json!({ "error": e.to_string() }).to_string()),
                }
            }
            // This reader was too slow for the hub's buffer: tell it to re-read the list
            // rather than show a queue with holes in it.
            Err(broadcast::error::RecvError::Lagged(missed)) => sse::Event::default()
                .event("resync")
                .data(serde_json::json!({ "missed": missed }).to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream::once(async { Ok(ready) }).chain(rest)).keep_alive(KeepAlive::default())
}

/// Starts the page on the control runtime and logs where reviewers open it.
pub fn start(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    approvals: Arc<Approvals>,
    reviewers: &[ReviewerConfig],
) {
    let bound = listener.local_addr().ok();
    let url = approvals.settings().page_url.clone();
    let app = router(approvals, reviewers);
    rt.spawn(serve(listener, app));
    info!(
        target: "portcullis::approvals",
        listen = %bound.map(|a| a.to_string()).unwrap_or_default(),
        url = url.as_deref().unwrap_or(""),
        reviewers = reviewers.len(),
        "reviewers' page ready"
    );
}

#[cfg(test)]
mod tests;
