//! The operators' HTTP listener (`[metrics] listen`): `/metrics` for Prometheus,
//! `/healthz` and `/readyz` for the orchestrator. On the control runtime, never on a
//! data-path worker.
//!
//! `/readyz` answers from checks that are cheap to read: the lifecycle, the policy, the
//! audit writer's state, and the result of the last upstream login, which a loop here
//! repeats every `probe_interval_secs`, so however often the orchestrator probes, the
//! database sees one login per interval.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::engine::Shared;
use crate::metrics::MetricsConfig;
use crate::metrics::scrape::Scraped;

#[derive(Debug, thiserror::Error)]
pub enum MetricsHttpError {
    #[error("{0}")]
    Config(#[from] crate::metrics::config::MetricsConfigError),
    #[error("metrics.listen: cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the listener now, so a taken port fails start-up.
pub fn bind(cfg: &MetricsConfig) -> Result<std::net::TcpListener, MetricsHttpError> {
    let addr = cfg.listen_addr()?;
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    bind().map_err(|source| MetricsHttpError::Bind { addr, source })
}

/// The database the readiness check logs in to.
pub fn probe_database(cfg: &MetricsConfig, reserve_databases: &[String]) -> String {
    cfg.probe_database
        .clone()
        .or_else(|| reserve_databases.first().cloned())
        .unwrap_or_else(|| "postgres".into())
}

struct AppState {
    shared: Arc<Shared>,
    scraped: Registry,
    /// The last upstream login: `Ok`, or why it failed; `None` before the first.
    upstream: Mutex<Option<Result<(), String>>>,
}

/// Serves the listener (and, with approvals, keeps the pending count) on `rt` until it
/// stops; the readiness loop runs on a thread of its own.
pub fn start(
    rt: &tokio::runtime::Runtime,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    cfg: &MetricsConfig,
    engine: &'static str,
    database: String,
) {
    let bound = listener.local_addr().ok();
    let mut scraped = Registry::with_prefix("portcullis");
    scraped.register_collector(Box::new(Scraped::new(shared.clone(), engine)));
    let state = Arc::new(AppState {
        shared: shared.clone(),
        scraped,
        upstream: Mutex::new(None),
    });
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state.clone());
    let interval = Duration::from_secs(cfg.probe_interval_secs.max(1));
    // Its own thread: an upstream connection belongs to the runtime that opened it and
    // is not `Send`, and a slow login must not hold up a scrape.
    let probing = state.clone();
    let db = database.clone();
    let spawned = std::thread::Builder::new()
        .name("portcullis-probe".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(probe_rt) => probe_rt.block_on(probe_loop(probing, db, interval)),
                Err(e) => warn!("readiness: cannot start the probe's runtime: {e}"),
            }
        });
    if let Err(e) = spawned {
        warn!("readiness: cannot start the probe thread: {e}; /readyz stays unready");
    }
    if let Some(approvals) = &shared.approvals {
        rt.spawn(count_approvals(
            approvals.subscribe(),
            shared.metrics.clone(),
        ));
    }
    rt.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return warn!("metrics listener: {e}"),
        };
        if let Err(e) = axum::serve(listener, app).await {
            warn!("metrics listener stopped: {e}");
        }
    });
    info!(
        listen = %bound.map(|a| a.to_string()).unwrap_or_default(),
        probe_database = %database,
        "metrics and health endpoints ready (/metrics, /healthz, /readyz)"
    );
}

async fn probe_loop(state: Arc<AppState>, database: String, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let r = crate::engine::probe::upstream(&state.shared, &database).await;
        let mut last = state.upstream.lock().unwrap_or_else(|p| p.into_inner());
        match (&*last, &r) {
            (Some(Ok(())) | None, Err(e)) => warn!("readiness: the database is unreachable: {e}"),
            (Some(Err(_)), Ok(())) => info!("readiness: the database is reachable again"),
            _ => {}
        }
        *last = Some(r);
        drop(last);
        // Kept current for the gauge too, not only when someone asks.
        let ready = checks(&state).0;
        state.shared.metrics.ready.set(i64::from(ready));
    }
}

/// Whether every check passes, and each check's answer.
fn checks(state: &AppState) -> (bool, serde_json::Value) {
    let shared = &state.shared;
    let lifecycle = if shared.lifecycle.is_stopping() {
        Err("draining: the gateway is shutting down".to_string())
    } else {
        Ok(())
    };
    let upstream = state
        .upstream
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| Err("not checked yet".into()));
    let policy = if shared.policy.load().is_configured() {
        Ok(())
    } else {
        Err("no [policy] is loaded: every statement would be refused".to_string())
    };
    let audit = match &shared.audit {
        None => Ok(()),
        Some(log) if !log.healthy() => Err(format!(
            "the audit log cannot be written: {}",
            log.last_error().unwrap_or_else(|| "write failed".into())
        )),
        Some(log) => log.accepting().map_err(|e| e.to_string()),
    };
    let all = [
        ("lifecycle", lifecycle),
        ("upstream", upstream),
        ("policy", policy),
        ("audit", audit),
    ];
    let ready = all.iter().all(|(_, r)| r.is_ok());
    let mut body = serde_json::Map::new();
    body.insert("ready".into(), ready.into());
    let mut each = serde_json::Map::new();
    for (name, r) in all {
        each.insert(
            name.into(),
            match r {
                Ok(()) => "ok".into(),
                Err(e) => e.into(),
            },
        );
    }
    body.insert("checks".into(), each.into());
    (ready, body.into())
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.shared.metrics.render(&state.scraped) {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    if state.shared.lifecycle.is_stopping() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (ready, body) = checks(&state);
    state.shared.metrics.ready.set(i64::from(ready));
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Keeps `portcullis_approvals_pending` and the decision latencies from the hub's
/// events (requests a previous run left pending are among the first).
async fn count_approvals(
    mut events: tokio::sync::broadcast::Receiver<crate::approvals::Event>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    use crate::approvals::{EventKind, Status};
    use tokio::sync::broadcast::error::RecvError;
    let mut pending = std::collections::HashSet::new();
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                warn!(
                    "metrics: {n} approval events missed; approvals_pending may be off until they end"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let r = &ev.request;
        match ev.kind {
            EventKind::Requested | EventKind::Voted => {
                if r.status == Status::Pending {
                    pending.insert(r.id);
                }
            }
            EventKind::Decided => {
                pending.remove(&r.id);
                let after = r
                    .decided_ms
                    .unwrap_or_else(crate::approvals::model::now_ms)
                    .saturating_sub(r.created_ms);
                metrics.decided(r.status.as_str(), Duration::from_millis(after));
            }
        }
        metrics
            .approvals_pending
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
    }
}
