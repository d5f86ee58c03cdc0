//! The life of one agent connection, written once for both engines.
//!
//! Start-up (TLS, authentication, the upstream login) runs as straight-line async code
//! around the sans-IO handshakes. The established session then runs two halves in one
//! task, one reading each socket, meeting in the relay core. A half feeds what it read to
//! the core and then writes what the core queued before it reads again, so no half ever
//! holds more than one read's worth of output: back-pressure reaches both ends and
//! memory per session is bounded by the read buffers.
//!
//! A shutdown reaches a connection here too: one that arrives during the drain is
//! answered with 57P03 after its start-up packet and never counts as a session; a session
//! still open when the grace period ends is cut at a frame boundary with 57P01, its
//! statement cancelled on the server, and ends with its audit record like any other.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tracing::{Instrument, debug, error, info, warn};

use super::batch::{Batching, Mark};
use super::cancel::{CancelGuard, CancelTarget, SessionCancel};
use super::hold::{self, HoldContext};
use super::transport::{MaybeTls, TlsTransport, Transport};
use super::{Phase, Shared};
use crate::config::UpstreamTls;
use crate::mask::Subject;
use crate::protocol::backend::{self as be, Severity, error_response};
use crate::protocol::{frontend as fe, sqlstate};
use crate::session::drain::{self, DrainGreeter, DrainStep, SHUTTING_DOWN};

/// The reason a connection refused during the drain is recorded with, as refused logins are.
const REFUSED_DRAINING: &str = "the database system is shutting down (57P03)";
use crate::pool::reset::{Reset, ResetDone};
use crate::pool::{Checkout, LocalPool, PoolKey};
use crate::session::handshake::{Agent, ClientHandshake, Step};
use crate::session::hooks::Hooks;
use crate::session::relay::Relay;
use crate::session::stages::Stages;
use crate::session::upstream::{UpStep, UpstreamError, UpstreamHandshake, UpstreamSession};

/// One worker's upstream connections, for an engine's streams.
pub type UpstreamPool<C> = LocalPool<MaybeTls<<C as Connect>::Stream>>;

/// Output queued towards a side that another half is already writing, above which the
/// half that produced it waits before reading more.
const HIGH_WATER: usize = 1 << 20;
/// Small frames queued together are written with one system call up to this size.
const COALESCE: usize = 64 * 1024;

/// How an engine opens outgoing connections.
pub trait Connect: 'static {
    type Stream: Transport + 'static;
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>>;
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("client i/o: {0}")]
    ClientIo(io::Error),
    #[error("upstream i/o: {0}")]
    UpstreamIo(io::Error),
    #[error("client closed the connection during start-up")]
    ClientGone,
    #[error("start-up refused: {0}")]
    Rejected(String),
    #[error("start-up timed out")]
    Timeout,
    #[error("upstream TLS: {0}")]
    UpstreamTls(String),
    #[error("the gateway has no upstream credential: {0}")]
    Credential(#[from] crate::secrets::SecretError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Serves one accepted connection to its end. Never panics on peer input; logs how the
/// session ended, at a level matching whether anything went wrong.
pub async fn serve<C: Connect>(
    shared: Arc<Shared>,
    pool: Rc<UpstreamPool<C>>,
    stream: C::Stream,
    peer: SocketAddr,
) {
    if shared.lifecycle.is_stopping() {
        // Not counted as a session: a client that never sends its start-up must not
        // hold the drain up.
        let span = tracing::info_span!("refused", %peer);
        refuse_draining::<C>(&shared, stream, peer)
            .instrument(span)
            .await;
        return;
    }
    let _count = shared.lifecycle.session_started();
    let span = tracing::info_span!("session", %peer, identity = tracing::field::Empty, database = tracing::field::Empty);
    async move {
        match run::<C>(&shared, &pool, stream, peer).await {
            Ok(()) => debug!("connection closed"),
            Err(ConnError::ClientGone) => debug!("client left during start-up"),
            Err(e @ (ConnError::Rejected(_) | ConnError::Timeout)) => info!("{e}"),
            Err(e @ (ConnError::ClientIo(_) | ConnError::UpstreamIo(_))) => {
                info!("session ended: {e}")
            }
            Err(e) => error!("session failed: {e}"),
        }
    }
    .instrument(span)
    .await
}

async fn run<C: Connect>(
    shared: &Shared,
    pool: &UpstreamPool<C>,
    stream: C::Stream,
    peer: SocketAddr,
) -> Result<(), ConnError> {
    let mut client = MaybeTls::Plain(stream);
    let mut buf = BytesMut::with_capacity(4096);
    let mut hs = ClientHandshake::with_tokens(
        shared.identities.load_full(),
        shared.tls_offer,
        shared.token_auth.clone(),
    );
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout;
    let (agent, mut owed) = loop {
        match tokio::time::timeout_at(
            deadline,
            client_startup::<C>(shared, &client, &mut hs, &mut buf),
        )
        .await
        {
            Ok(Ok(Startup::Agent(agent, owed))) => break (agent, Owed(owed)),
            Ok(Ok(Startup::CancelDone)) => return Ok(()),
            Ok(Ok(Startup::StartTls)) => {
                let (MaybeTls::Plain(plain), Some(cfg)) = (client, shared.server_tls.clone())
                else {
                    return Err(ConnError::Rejected(
                        "TLS requested twice or not configured".into(),
                    ));
                };
                let tls = TlsTransport::server(plain, cfg).map_err(ConnError::ClientIo)?;
                tokio::time::timeout_at(deadline, tls.handshake())
                    .await
                    .map_err(|_| ConnError::Timeout)?
                    .map_err(ConnError::ClientIo)?;
                client = MaybeTls::Tls(Box::new(tls));
                hs.tls_established();
            }
            Ok(Err(e)) => {
                if let ConnError::Rejected(why) = &e {
                    log_refused(shared, hs.user(), peer, &client, why);
                }
                return Err(e);
            }
            Err(_) => {
                log_refused(
                    shared,
                    hs.user(),
                    peer,
                    &client,
                    "start-up and authentication took too long",
                );
                let _ = client
                    .write_all(error_response(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        "start-up and authentication took too long",
                        None,
                        None,
                    ))
                    .await;
                return Err(ConnError::Timeout);
            }
        }
    };
    let span = tracing::Span::current();
    span.record("identity", agent.identity.name.as_str());
    span.record("database", agent.database.as_str());

    // Authenticated after the drain began: refused as PostgreSQL refuses it, before the
    // server is asked for anything.
    if shared.lifecycle.is_stopping() {
        log_refused(
            shared,
            Some(&agent.identity.name),
            peer,
            &client,
            REFUSED_DRAINING,
        );
        let _ = client.write_all(owed.then(drain::shutting_down())).await;
        return Err(ConnError::Rejected(SHUTTING_DOWN.into()));
    }

    // Only `[[role]]` decides who the upstream session is: not the agent's start-up.
    if let Some(param) = crate::roles::identity_parameter(&agent.params) {
        let message = format!(
            "portcullis refused the start-up parameter \"{param}\": the gateway decides the session's database role"
        );
        log_refused(shared, Some(&agent.identity.name), peer, &client, &message);
        let _ = client
            .write_all(owed.then(error_response(
                Severity::Fatal,
                sqlstate::INSUFFICIENT_PRIVILEGE,
                &message,
                None,
                Some("Connect without role, session_authorization or options naming them."),
            )))
            .await;
        return Err(ConnError::Rejected(message));
    }
    // The grants active as the session opens count for its upstream role too (a writer
    // grant must be able to write in PostgreSQL as well); their scope and their end are
    // the policy's business at each statement.
    let grants = shared
        .approvals
        .is_some()
        .then(|| shared.grants.session(&agent.identity.name, &agent.database));
    let mut roles = agent.identity.roles.clone();
    for r in grants.iter().flat_map(|g| g.roles()) {
        if !roles.iter().any(|have| have == r) {
            roles.push(r.to_owned());
        }
    }
    let upstream_role = shared.roles.load().upstream_role(&roles).map(str::to_owned);
    let key = PoolKey::new(&agent.database, upstream_role.as_deref(), &agent.params);
    let (upstream, session, addr, opened, lease) = match pool.checkout(&key).await {
        Checkout::Reused(kept, lease) => (kept.conn, kept.session, kept.addr, kept.opened, lease),
        Checkout::Open(mut lease) => match connect_upstream::<C>(
            shared,
            &agent.database,
            &agent.params,
            upstream_role.as_deref(),
        )
        .await
        {
            Ok((upstream, session, addr)) => {
                lease.opened();
                (upstream, session, addr, std::time::Instant::now(), lease)
            }
            Err(e) => {
                let frame = upstream_refusal(&e);
                let (code, _) = be::error_summary(frame.get(5..).unwrap_or_default());
                shared.metrics.login_refused("upstream_unavailable");
                shared.metrics.refusal(&code);
                let _ = client.write_all(owed.then(frame)).await;
                return Err(e.into());
            }
        },
        Checkout::Full => {
            let message = format!(
                "the gateway's pool of connections to database \"{}\" is full: no connection freed up within {} s",
                agent.database,
                shared.pool_settings.wait_timeout.as_secs()
            );
            log_refused(
                shared,
                Some(&agent.identity.name),
                peer,
                &client,
                &format!("{message} ({})", sqlstate::TOO_MANY_CONNECTIONS),
            );
            let _ = client
                .write_all(owed.then(error_response(
                    Severity::Fatal,
                    sqlstate::TOO_MANY_CONNECTIONS,
                    &message,
                    None,
                    Some(
                        "Retry later; an operator can raise [pool] pool_size or wait_timeout_secs.",
                    ),
                )))
                .await;
            return Err(ConnError::Rejected(message));
        }
    };

    // The database's reserved connections are claimed before the session is answered:
    // from here on it never needs a free slot on the server.
    let _reservation = match shared.side.reserve(&agent.database).await {
        Ok(r) => r,
        Err(e) => {
            warn!("{e}");
            log_refused(
                shared,
                Some(&agent.identity.name),
                peer,
                &client,
                &format!("{e} ({})", e.sqlstate()),
            );
            let _ = upstream.write_all(fe::terminate()).await;
            let message = format!(
                "the gateway could not reserve its connection for this session's catalog lookups: {e}"
            );
            let _ = client
                .write_all(owed.then(error_response(
                    Severity::Fatal,
                    e.sqlstate(),
                    &message,
                    Some("The gateway keeps [upstream] reserved_connections per database open for masking and approvals, so that open sessions never need a free slot."),
                    Some("Retry later; an operator can raise the server's max_connections or lower reserved_connections."),
                )))
                .await;
            return Err(ConnError::Rejected(message));
        }
    };

    // The agent gets the server's pid with a secret of the gateway's own; the
    // server's secret stays here.
    let signal = Arc::new(SessionCancel::default());
    let guard = session.cancel_key.map(|(pid, secret)| {
        let key = shared.cancels.register(CancelTarget {
            upstream: addr,
            pid,
            secret,
            session: signal.clone(),
        });
        CancelGuard {
            registry: &shared.cancels,
            key,
        }
    });
    let (pid, secret) = guard.as_ref().map(|g| g.key).unwrap_or((0, 0));
    // What start-up still owed the agent goes in the same write as the server's answer.
    let mut hello = std::mem::take(&mut owed.0);
    for f in session.parameter_status.iter().chain(&session.notices) {
        hello.extend_from_slice(f);
    }
    hello.extend_from_slice(&be::backend_key_data(pid, secret));
    hello.extend_from_slice(&be::ready_for_query(b'I'));
    // Counted before the agent can know it is in: a scrape after its ReadyForQuery sees it.
    let _counted = shared.metrics.session(&agent.identity.name);
    client
        .write_all(hello.freeze())
        .await
        .map_err(ConnError::ClientIo)?;
    info!("session established");

    let mut stages = Stages::new(
        shared.policy.clone(),
        shared.mask.clone(),
        Subject::new(agent.identity.name.clone(), agent.identity.roles.clone()),
        upstream_role.as_deref().unwrap_or(&shared.upstream.user),
        shared.catalog(&agent.database),
    );
    for f in &session.parameter_status {
        stages.parameter_status(f);
    }
    let mut stages = stages.with_approvals(shared.approvals.is_some());
    if let Some(g) = grants {
        stages = stages.with_grants(g);
    }
    let recent = shared.approvals.as_ref().map_or(0, |a| a.settings().recent);
    let mut relay = Relay::new(shared.limits, stages)
        .with_recent(recent)
        .with_expiry(agent.identity.expires_at_ms)
        .keeping_server(pool.enabled())
        .with_metrics(crate::metrics::SessionMetrics::new(shared.metrics.clone()));
    let started = std::time::Instant::now();
    let session_id: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
    // Listed for `SHOW SESSIONS` until this guard drops with the session.
    let listed = shared.sessions.register(crate::sessions::Info {
        id: session_id.clone(),
        identity: agent.identity.name.clone(),
        database: agent.database.clone(),
        client: peer,
        application_name: agent.application_name().unwrap_or_default().to_owned(),
        engine: crate::sessions::engine_name::<C>(),
        worker: std::thread::current().name().unwrap_or("").to_owned(),
        upstream_role: upstream_role
            .clone()
            .unwrap_or_else(|| shared.upstream.user.clone()),
        tls: client.tls_version().map(str::to_owned),
        started_ms: crate::approvals::model::now_ms(),
    });
    relay = relay.with_live(listed.live());
    if let Some(log) = &shared.audit {
        let app = agent.application_name();
        log.record(&crate::audit::Body::SessionStart {
            session: &session_id,
            identity: &agent.identity.name,
            auth: agent.identity.method.as_str(),
            client_addr: peer.ip().to_string(),
            client_port: peer.port(),
            tls: client.tls_version(),
            application_name: app,
            database: &agent.database,
            upstream_role: upstream_role.as_deref().unwrap_or(&shared.upstream.user),
        });
        relay = relay.with_audit(crate::audit::Trail::new(
            log.clone(),
            session_id.clone(),
            &agent.identity.name,
            shared.audit_params,
        ));
    }
    let upstream_key = session.cancel_key.map(|(pid, secret)| (addr, pid, secret));
    let ctx = HoldContext::new(shared, &agent, peer, signal, upstream_key)
        .with_upstream_role(upstream_role.as_deref())
        .with_reuse(pool.enabled());
    let (reason, statements, reset) = relay_session::<C, _>(
        shared,
        &agent.database,
        &client,
        &upstream,
        relay,
        buf,
        &ctx,
    )
    .await;
    if let Some(log) = &shared.audit {
        log.record(&crate::audit::Body::SessionEnd {
            session: &session_id,
            reason,
            duration_ms: started.elapsed().as_millis() as u64,
            statements,
        });
    }
    // The agent's cancel key goes before the connection can serve anyone else.
    drop(guard);
    match reset {
        // A stopping gateway keeps nothing: its workers are about to close what is idle.
        Some(_) if shared.lifecycle.is_stopping() => {
            let _ = tokio::time::timeout(CUT_WRITE, upstream.write_all(fe::terminate())).await;
            drop(lease);
        }
        Some(done) => {
            let mut session = session;
            session.notices.clear();
            crate::pool::reset::apply_parameter_status(
                &mut session.parameter_status,
                done.parameter_status,
            );
            pool.put_back(
                key,
                crate::pool::Kept {
                    conn: upstream,
                    session,
                    addr,
                    opened,
                },
                lease,
            );
        }
        None => drop(lease),
    }
    Ok(())
}

/// What the agent is told when its upstream session could not be opened.
fn upstream_refusal(e: &UpstreamStartError) -> Bytes {
    match e {
        UpstreamStartError::Refused(frame) => frame.clone(),
        UpstreamStartError::Other(ConnError::Upstream(UpstreamError::SetRole {
            role,
            sqlstate,
            message,
        })) => error_response(
            Severity::Fatal,
            sqlstate,
            &format!(
                "the gateway could not switch this session to its database role \"{role}\": {message}"
            ),
            None,
            Some(
                "An operator should check the [[role]] settings: the gateway's login role must be a member of each upstream_role (GRANT role TO login).",
            ),
        ),
        _ => error_response(
            Severity::Fatal,
            sqlstate::CONNECTION_FAILURE,
            "the gateway could not open a session on the database",
            None,
            Some(
                "An operator should check the gateway's [upstream] settings; the gateway's log has the details.",
            ),
        ),
    }
}

/// The audit record of a connection refused before it became a session, when the
/// gateway keeps an audit log.
fn log_refused<S: Transport>(
    shared: &Shared,
    user: Option<&str>,
    peer: SocketAddr,
    client: &MaybeTls<S>,
    why: &str,
) {
    // The agent was sent the SQLSTATE that ends `why` ("... (28P01)").
    let code = why
        .strip_suffix(')')
        .and_then(|w| w.rsplit_once('('))
        .map(|(_, c)| c)
        .filter(|c| c.len() == 5);
    let reason = match code {
        Some(c) => crate::metrics::login_reason(c),
        None if why.contains("took too long") => "timeout",
        None if why.contains("start-up parameter") => "forbidden_parameter",
        None => "other",
    };
    shared.metrics.login_refused(reason);
    shared.metrics.refusal(match (code, reason) {
        (Some(c), _) => c,
        (None, "timeout") => sqlstate::PROTOCOL_VIOLATION,
        (None, _) => sqlstate::INSUFFICIENT_PRIVILEGE,
    });
    let Some(log) = &shared.audit else {
        return;
    };
    log.record(&crate::audit::Body::LoginRefused {
        identity: user,
        auth: "scram-sha-256",
        client_addr: peer.ip().to_string(),
        client_port: peer.port(),
        tls: client.tls_version(),
        reason: why,
    });
}

/// Longest a connection that arrives during the drain may take to send its start-up.
const DRAIN_STARTUP: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection that arrived during the drain: its start-up is answered with FATAL
/// 57P03, after TLS when the gateway offers it; a cancel request is forwarded.
async fn refuse_draining<C: Connect>(shared: &Shared, stream: C::Stream, peer: SocketAddr) {
    let mut client = MaybeTls::Plain(stream);
    let mut greeter = DrainGreeter::new(shared.server_tls.is_some());
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + shared.handshake_timeout.min(DRAIN_STARTUP);
    loop {
        let step = tokio::time::timeout_at(deadline, greet(&client, &mut greeter, &mut buf)).await;
        let step = match step {
            Ok(Ok(step)) => step,
            Ok(Err(e)) => return debug!("during the drain: {e}"),
            Err(_) => return debug!("during the drain: no start-up in time"),
        };
        match step {
            DrainStep::StartTls => {
                let (MaybeTls::Plain(plain), Some(cfg)) = (client, shared.server_tls.clone())
                else {
                    return;
                };
                if plain.write_all(Bytes::from_static(b"S")).await.is_err() {
                    return;
                }
                let Ok(tls) = TlsTransport::server(plain, cfg) else {
                    return;
                };
                match tokio::time::timeout_at(deadline, tls.handshake()).await {
                    Ok(Ok(())) => {}
                    _ => return debug!("during the drain: TLS handshake failed"),
                }
                client = MaybeTls::Tls(Box::new(tls));
                greeter.tls_established();
            }
            DrainStep::Cancel { pid, secret } => return cancel::<C>(shared, pid, secret).await,
            DrainStep::Refuse { frame, user } => {
                log_refused(shared, user.as_deref(), peer, &client, REFUSED_DRAINING);
                info!(
                    user = user.as_deref().unwrap_or(""),
                    "refused: {SHUTTING_DOWN}"
                );
                let _ = client.write_all(frame).await;
                return;
            }
            DrainStep::Close(why) => return debug!("during the drain: {why}"),
            DrainStep::Send(_) => {}
        }
    }
}

/// Reads until the greeter has a step other than bytes to send (those it writes).
async fn greet<S: Transport>(
    client: &MaybeTls<S>,
    greeter: &mut DrainGreeter,
    buf: &mut BytesMut,
) -> io::Result<DrainStep> {
    loop {
        while let Some(step) = greeter.on_bytes(buf) {
            match step {
                DrainStep::Send(b) => client.write_all(b).await?,
                other => return Ok(other),
            }
        }
        let (res, b) = client.read(std::mem::take(buf), 1024).await;
        *buf = b;
        if res? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "client left"));
        }
    }
}

enum Startup {
    /// Authenticated; what the handshake asked to send last (SASL final,
    /// AuthenticationOk) is not sent yet but owed.
    Agent(Agent, BytesMut),
    StartTls,
    CancelDone,
}

/// Runs the agent's start-up until it authenticates, asks for TLS or was a cancel.
async fn client_startup<C: Connect>(
    shared: &Shared,
    client: &MaybeTls<C::Stream>,
    hs: &mut ClientHandshake,
    buf: &mut BytesMut,
) -> Result<Startup, ConnError> {
    let mut steps = std::collections::VecDeque::new();
    // Consecutive `Send`s go out as one write, and those before `Authenticated` go out
    // with the session's first answer: a login costs one send per round trip.
    let mut out = BytesMut::new();
    loop {
        let (res, b) = client.read(std::mem::take(buf), 4096).await;
        *buf = b;
        if res.map_err(ConnError::ClientIo)? == 0 {
            return Err(ConnError::ClientGone);
        }
        let mut fresh = Vec::new();
        hs.on_bytes(buf, &mut fresh);
        steps.extend(fresh);
        while let Some(step) = steps.pop_front() {
            match step {
                Step::Send(b) => out.extend_from_slice(&b),
                Step::Authenticated(agent) => return Ok(Startup::Agent(*agent, out)),
                Step::Reject(frame) => {
                    let (code, msg) = be::error_summary(frame.get(5..).unwrap_or_default());
                    out.extend_from_slice(&frame);
                    let _ = client.write_all(out.freeze()).await;
                    return Err(ConnError::Rejected(format!("{msg} ({code})")));
                }
                Step::StartTls => {
                    flush(client, &mut out).await?;
                    return Ok(Startup::StartTls);
                }
                Step::Cancel { pid, secret } => {
                    cancel::<C>(shared, pid, secret).await;
                    return Ok(Startup::CancelDone);
                }
                Step::VerifyToken { token, mechanism } => {
                    flush(client, &mut out).await?;
                    let result = match &shared.tokens {
                        Some(t) => t.verify(&token, mechanism).await,
                        None => Err(crate::auth::oidc::TokenError::Issuer),
                    };
                    // A token may not stand for a static key's identity: rules and masking
                    // permits name identities, and a subject chosen at the provider must not
                    // pick up another identity's.
                    let result = result.and_then(|id| {
                        if shared.identities.load().get(&id.name).is_some() {
                            Err(crate::auth::oidc::TokenError::Claim(format!(
                                "it names identity \"{}\", which is a static key of this gateway",
                                id.name
                            )))
                        } else {
                            Ok(id)
                        }
                    });
                    if let Err(e) = &result {
                        info!(user = hs.user().unwrap_or(""), "token refused: {e}");
                    }
                    // The check's own steps come next, before anything queued after it.
                    let mut more = Vec::new();
                    hs.token_checked(result, &mut more);
                    for m in more.into_iter().rev() {
                        steps.push_front(m);
                    }
                }
                Step::Close(why) => {
                    let _ = flush(client, &mut out).await;
                    return Err(ConnError::Rejected(why));
                }
            }
        }
        flush(client, &mut out).await?;
    }
}

async fn flush<S: Transport>(client: &MaybeTls<S>, out: &mut BytesMut) -> Result<(), ConnError> {
    if out.is_empty() {
        return Ok(());
    }
    client
        .write_all(out.split().freeze())
        .await
        .map_err(ConnError::ClientIo)
}

/// What start-up owes an authenticated agent, sent in front of whatever it is told next:
/// the session's first answer, or why it cannot have one.
struct Owed(BytesMut);

impl Owed {
    fn then(&mut self, frame: Bytes) -> Bytes {
        if self.0.is_empty() {
            return frame;
        }
        let mut out = std::mem::take(&mut self.0);
        out.extend_from_slice(&frame);
        out.freeze()
    }
}

/// Forwards a cancel request to the upstream backend it maps to. Unknown keys are
/// ignored silently, as PostgreSQL does.
async fn cancel<C: Connect>(shared: &Shared, pid: i32, secret: i32) {
    let Some(target) = shared.cancels.lookup(pid, secret) else {
        debug!("cancel request with an unknown key");
        return;
    };
    // A session holding a statement has nothing running on the server: the cancel
    // withdraws the approval request instead.
    if target.session.cancel_hold() {
        info!("cancel request withdrew a held statement");
        return;
    }
    match C::connect(target.upstream).await {
        Ok(s) => {
            if let Err(e) = s
                .write_all(fe::cancel_request(target.pid, target.secret))
                .await
            {
                warn!("forwarding cancel request failed: {e}");
            } else {
                info!("cancel request forwarded");
                // PostgreSQL closes after reading the request; wait for that so the
                // request is not cut off by our own close.
                let _ = s.read(BytesMut::with_capacity(16), 16).await;
            }
        }
        Err(e) => warn!("cannot reach the database to forward a cancel request: {e}"),
    }
}

pub(super) enum UpstreamStartError {
    Refused(Bytes),
    Other(ConnError),
}

impl From<UpstreamStartError> for ConnError {
    fn from(e: UpstreamStartError) -> Self {
        match e {
            UpstreamStartError::Refused(_) => {
                ConnError::Rejected("the database refused the session".into())
            }
            UpstreamStartError::Other(e) => e,
        }
    }
}

impl From<ConnError> for UpstreamStartError {
    fn from(e: ConnError) -> Self {
        UpstreamStartError::Other(e)
    }
}

/// Opens an upstream session as the login role, switched to `role` when given. A login
/// the database refuses (28P01, 28000) is tried once more if the credential's source has
/// a fresh value by then (a rotated file, a command that prints a new one).
pub(super) async fn connect_upstream<C: Connect>(
    shared: &Shared,
    database: &str,
    params: &[(String, String)],
    role: Option<&str>,
) -> Result<(MaybeTls<C::Stream>, UpstreamSession, SocketAddr), UpstreamStartError> {
    let credential = &shared.upstream.credential;
    let secret = credential.current().map_err(ConnError::Credential)?;
    let first = login::<C>(shared, database, params, role, &secret).await;
    if !matches!(
        &first,
        Err(UpstreamStartError::Other(ConnError::Upstream(
            UpstreamError::AuthRejected { .. }
        )))
    ) {
        return first;
    }
    match credential.refused(&secret).await {
        Some(fresh) => {
            info!(
                "the database refused the gateway's credential; trying again with the fresh value from {}",
                credential.source().key()
            );
            login::<C>(shared, database, params, role, &fresh).await
        }
        None => first,
    }
}

async fn login<C: Connect>(
    shared: &Shared,
    database: &str,
    params: &[(String, String)],
    role: Option<&str>,
    secret: &crate::secrets::Secret,
) -> Result<(MaybeTls<C::Stream>, UpstreamSession, SocketAddr), UpstreamStartError> {
    let up = &shared.upstream;
    let addr = tokio::net::lookup_host((up.host.as_str(), up.port))
        .await
        .map_err(ConnError::UpstreamIo)?
        .next()
        .ok_or_else(|| {
            ConnError::UpstreamIo(io::Error::other(format!("{} does not resolve", up.host)))
        })?;
    let stream = tokio::time::timeout(up.connect_timeout, C::connect(addr))
        .await
        .map_err(|_| {
            ConnError::UpstreamIo(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            ))
        })?
        .map_err(ConnError::UpstreamIo)?;
    let server = negotiate_upstream_tls(shared, stream).await?;

    let mut hs = UpstreamHandshake::new(
        &up.user,
        secret.expose(),
        server.is_tls(),
        up.scram_cache.clone(),
    )
    .with_role(role);
    server
        .write_all(hs.startup_message(database, params))
        .await
        .map_err(ConnError::UpstreamIo)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut steps = Vec::new();
    loop {
        let (res, b) = server.read(buf, 4096).await;
        buf = b;
        if res.map_err(ConnError::UpstreamIo)? == 0 {
            return Err(ConnError::UpstreamIo(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the database closed the connection during start-up",
            ))
            .into());
        }
        match hs.on_bytes(&mut buf, &mut steps) {
            Ok(()) => {}
            Err(UpstreamError::Refused {
                frame,
                sqlstate,
                message,
            }) => {
                info!(%sqlstate, "database refused the session: {message}");
                return Err(UpstreamStartError::Refused(frame));
            }
            Err(e) => {
                error!("upstream start-up failed: {e}");
                return Err(ConnError::Upstream(e).into());
            }
        }
        for step in steps.drain(..) {
            match step {
                UpStep::Send(b) => server.write_all(b).await.map_err(ConnError::UpstreamIo)?,
                UpStep::Ready(session) => return Ok((server, *session, addr)),
            }
        }
    }
}

async fn negotiate_upstream_tls<S: Transport>(
    shared: &Shared,
    stream: S,
) -> Result<MaybeTls<S>, ConnError> {
    let up = &shared.upstream;
    let Some(cfg) = up.tls_config.clone() else {
        return Ok(MaybeTls::Plain(stream));
    };
    stream
        .write_all(fe::ssl_request())
        .await
        .map_err(ConnError::UpstreamIo)?;
    let (res, answer) = stream.read(BytesMut::with_capacity(8), 8).await;
    res.map_err(ConnError::UpstreamIo)?;
    match &answer[..] {
        b"S" => {
            let name =
                rustls::pki_types::ServerName::try_from(up.server_name.clone()).map_err(|e| {
                    ConnError::UpstreamTls(format!("invalid server name {}: {e}", up.server_name))
                })?;
            let tls = TlsTransport::client(stream, cfg, name)
                .map_err(|e| ConnError::UpstreamTls(e.to_string()))?;
            tls.handshake()
                .await
                .map_err(|e| ConnError::UpstreamTls(e.to_string()))?;
            Ok(MaybeTls::Tls(Box::new(tls)))
        }
        b"N" if up.tls == UpstreamTls::Prefer => Ok(MaybeTls::Plain(stream)),
        b"N" => Err(ConnError::UpstreamTls(
            "the database does not accept TLS but upstream.tls requires it".into(),
        )),
        _ => Err(ConnError::UpstreamTls(
            "unexpected answer to SSLRequest".into(),
        )),
    }
}

/// Where the two halves of a session meet.
pub(super) struct Flow<H: Hooks> {
    pub(super) relay: RefCell<Relay<H>>,
    client_done: Cell<bool>,
    pub(super) server_done: Cell<bool>,
    /// A drain of that side's queue is under way (its writer owns the socket's writes).
    writing_client: Cell<bool>,
    writing_server: Cell<bool>,
    /// Signalled by a drainer after each write, for parties waiting on its progress.
    progress_client: tokio::sync::Notify,
    progress_server: tokio::sync::Notify,
    audit: Option<crate::audit::AuditLog>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The server's side ended first.
    server_ended: Cell<bool>,
    /// Signalled by the server half after each read it handled, for a client half
    /// whose messages wait on an answer ([`Relay::client_waits`]).
    answered: tokio::sync::Notify,
    /// The gateway's shutdown is ending the session: nothing more is written, and the
    /// halves stop once the writer in progress has finished its chunk.
    cut: Cell<bool>,
    /// The agent is gone and the server session is being reset for the next one: what
    /// the server sends goes here, not to the relay.
    reset: RefCell<Option<Reset>>,
    /// The reset worked: the server session can be kept.
    reset_done: RefCell<Option<ResetDone>>,
    reset_started: tokio::sync::Notify,
}

impl<H: Hooks> Flow<H> {
    fn writing(&self, side: Side) -> &Cell<bool> {
        match side {
            Side::Client => &self.writing_client,
            Side::Server => &self.writing_server,
        }
    }

    /// Writes what the core queued for `side`, unless a drain of that side is already
    /// under way (it will pick this up: it loops until the queue is empty). Whoever
    /// produced output drains it, so a round trip costs no task hand-over, order holds
    /// (one drainer per socket, taking chunks in queue order) and a reader that is
    /// draining does not read more: that is the back-pressure.
    pub(super) async fn drain<T: Transport>(&self, side: Side, socket: &T) -> io::Result<()> {
        if self.cut.get() {
            return Ok(());
        }
        // Evidence before action: what the server is about to receive is recorded first.
        if let Some(log) = &self.audit {
            // Statement records are taken only by whoever writes to the server, so no
            // other writer can find them gone and send the statements unrecorded.
            let taken = match side {
                Side::Server => self.relay.borrow_mut().take_audit(),
                Side::Client => self.relay.borrow_mut().take_audit_outcomes(),
            };
            if let Some((records, gate)) = taken {
                // Outcomes alone are not waited for: they ride with the next batch.
                let ticket = if gate {
                    log.submit(records)
                } else {
                    log.submit_lazy(records)
                };
                let waited = gate.then(std::time::Instant::now);
                let durable = if gate {
                    log.durable(ticket).await
                } else {
                    Ok(())
                };
                if let (Some(t0), Some(m)) = (waited, &self.metrics) {
                    m.audit_wait.observe(t0.elapsed());
                }
                if let Err(e) = durable {
                    if log.fails_open() {
                        warn!("{e}: forwarding anyway (audit.on_failure = \"continue\")");
                    } else {
                        error!("{e}: the statements just sent are refused, not run");
                        let refusal = crate::audit::trail::refusal(&e);
                        self.relay.borrow_mut().fail_unrecorded(&refusal);
                    }
                }
            }
        }
        let writing = self.writing(side);
        let progress = match side {
            Side::Client => &self.progress_client,
            Side::Server => &self.progress_server,
        };
        if writing.replace(true) {
            // Someone else is writing this side: wait until the queue is back under the
            // mark so this half does not read (and queue) without bound meanwhile.
            loop {
                let notified = progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !writing.get() || self.pending(side) < HIGH_WATER {
                    return Ok(());
                }
                notified.await;
            }
        }
        let mut result = Ok(());
        while !self.cut.get()
            && let Some(chunk) = next_chunk(&self.relay, side)
        {
            let r = socket.write_all(chunk).await;
            progress.notify_waiters();
            if let Err(e) = r {
                result = Err(e);
                break;
            }
        }
        writing.set(false);
        progress.notify_waiters();
        result
    }

    fn pending(&self, side: Side) -> usize {
        let r = self.relay.borrow();
        match side {
            Side::Client => r.pending_to_client(),
            Side::Server => r.pending_to_server(),
        }
    }
}

async fn relay_session<C: Connect, H: Hooks>(
    shared: &Shared,
    database: &str,
    client: &MaybeTls<C::Stream>,
    server: &MaybeTls<C::Stream>,
    relay: Relay<H>,
    client_buf: BytesMut,
    ctx: &HoldContext,
) -> (&'static str, u64, Option<ResetDone>) {
    let reuse = ctx.reset_role();
    let flow = Flow {
        relay: RefCell::new(relay),
        client_done: Cell::new(false),
        server_done: Cell::new(false),
        writing_client: Cell::new(false),
        writing_server: Cell::new(false),
        progress_client: tokio::sync::Notify::new(),
        progress_server: tokio::sync::Notify::new(),
        audit: shared.audit.clone(),
        metrics: Some(shared.metrics.clone()),
        server_ended: Cell::new(false),
        answered: tokio::sync::Notify::new(),
        cut: Cell::new(false),
        reset: RefCell::new(None),
        reset_done: RefCell::new(None),
        reset_started: tokio::sync::Notify::new(),
    };
    let read_size = shared.read_buffer;

    let client_half = async {
        let mut buf = client_buf;
        // Bytes that arrived with the last start-up message belong to the session.
        let mut first = !buf.is_empty();
        loop {
            if !first {
                let (res, b) = client.read(buf, read_size).await;
                buf = b;
                match res {
                    Ok(0) => break,
                    Ok(n) => {
                        shared.metrics.client_bytes.inc_by(n as u64);
                    }
                    Err(e) => {
                        debug!("client read: {e}");
                        break;
                    }
                }
            }
            let res = flow.relay.borrow_mut().on_client_bytes(&mut buf);
            if let Err(e) = flow.drain(Side::Server, server).await {
                debug!("server write: {e}");
                break;
            }
            if let Err(e) = flow.drain(Side::Client, client).await {
                debug!("client write: {e}");
                break;
            }
            park_if_cut(&flow).await;
            if let Err(e) = res {
                warn!("{e}");
                break;
            }
            // A held statement: this half waits for the decision (reading nothing more
            // from the client) while the server half goes on delivering earlier results.
            let mut gone = false;
            while flow.relay.borrow().held().is_some() {
                if hold::wait::<C, H>(shared, database, &flow, client, server, &mut buf, ctx)
                    .await
                    .is_err()
                {
                    gone = true;
                    break;
                }
            }
            if gone || flow.relay.borrow().is_terminated() || flow.server_done.get() {
                break;
            }
            // A statement whose result may be refused is in flight: what the client sent
            // after it stays in `buf` until its answer is judged, then is fed again.
            // What the core queues for the server meanwhile (a failing placeholder, its
            // own COMMIT or ROLLBACK) is written from here: this half is the only writer
            // towards the server, so its records are always durable first.
            if flow.relay.borrow().client_waits() {
                let mut gone = false;
                while flow.relay.borrow().client_waits() && !flow.server_done.get() {
                    flow.answered.notified().await;
                    if flow.pending(Side::Server) > 0
                        && flow.drain(Side::Server, server).await.is_err()
                    {
                        gone = true;
                        break;
                    }
                }
                if gone
                    || flow.pending(Side::Server) > 0
                        && flow.drain(Side::Server, server).await.is_err()
                {
                    break;
                }
            }
            // Frames left waiting are fed again before anything more is read, also when
            // their wait ended while this half was still writing.
            first = flow.relay.borrow().client_parked() && !buf.is_empty();
        }
        // What the agent's last messages queued goes out first; the server session is
        // then either reset for the next agent or closed.
        let drained = flow.drain(Side::Server, server).await.is_ok();
        let reset = match reuse {
            Some(role)
                if drained
                    && !flow.server_done.get()
                    && !flow.cut.get()
                    && flow.relay.borrow().server_reusable() =>
            {
                let (reset, bytes) = Reset::start(role);
                *flow.reset.borrow_mut() = Some(reset);
                Some(bytes)
            }
            _ => None,
        };
        flow.client_done.set(true);
        match reset {
            Some(bytes) => {
                flow.reset_started.notify_one();
                if server.write_all(bytes).await.is_err() {
                    flow.reset.borrow_mut().take();
                    server.shutdown();
                }
            }
            None => {
                // The agent's Terminate was kept back for a reuse that cannot happen: the
                // server hears it now, so it logs a clean exit rather than a lost client.
                if reuse.is_some() && flow.relay.borrow().is_terminated() && !flow.server_done.get()
                {
                    let _ = server.write_all(fe::terminate()).await;
                }
                // Wakes the other half out of its read: the session is over.
                server.shutdown();
            }
        }
    };

    let server_half = async {
        let mut buf = BytesMut::with_capacity(read_size);
        let mut clean = true;
        let mut batching = Batching::new(shared.read_batch);
        loop {
            let reading = server.read(buf, batching.read_room(read_size));
            let (res, b) = match batching.deadline() {
                None => reading.await,
                Some(deadline) => {
                    let mut read = std::pin::pin!(reading);
                    tokio::select! {
                        biased;
                        r = &mut read => r,
                        () = tokio::time::sleep(deadline) => {
                            // The end of a result, or a producer gone slow: lowering the
                            // mark wakes this read with what has arrived.
                            batching.timed_out();
                            server.set_low_water(1);
                            read.await
                        }
                    }
                }
            };
            buf = b;
            let read = match res {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    debug!("server read: {e}");
                    break;
                }
            };
            shared.metrics.server_bytes.inc_by(read as u64);
            // The agent has gone: this is the answer to the reset (and anything the
            // server sent unasked before it, which nobody is there to hear).
            let resetting = flow.reset.borrow_mut().take();
            if let Some(mut reset) = resetting {
                match reset.on_bytes(&mut buf) {
                    Ok(None) => {
                        *flow.reset.borrow_mut() = Some(reset);
                        continue;
                    }
                    Ok(Some(done)) => *flow.reset_done.borrow_mut() = Some(done),
                    Err(e) => warn!("closing the upstream connection instead of reusing it: {e}"),
                }
                break;
            }
            let mut res = flow.relay.borrow_mut().on_server_bytes(&mut buf);
            // Set after the bytes are taken in, which says whether the result is complete.
            match batching.after_read(read, flow.relay.borrow().is_idle()) {
                Some(Mark::Raise { bytes, fresh }) => {
                    server.set_low_water(bytes);
                    if fresh {
                        shared.metrics.read_batches.inc();
                    }
                }
                Some(Mark::Lower) => server.set_low_water(1),
                None => {}
            }
            // Masking needs catalog rows first: fetch them on the side, then go on.
            while res.is_ok() {
                let Some(sql) = flow.relay.borrow_mut().take_side_query() else {
                    break;
                };
                if flow.drain(Side::Client, client).await.is_err() {
                    break;
                }
                let rows = side_query(shared, database, &sql).await;
                res = flow
                    .relay
                    .borrow_mut()
                    .resume_after_side_query(rows, &mut buf);
            }
            if let Err(e) = flow.drain(Side::Client, client).await {
                debug!("client write: {e}");
                break;
            }
            park_if_cut(&flow).await;
            // A permit is kept when nobody waits: no wake-up is lost.
            flow.answered.notify_one();
            if let Err(e) = res {
                error!("{e}");
                clean = false;
                break;
            }
            if flow.client_done.get() && flow.reset.borrow().is_none() {
                break;
            }
        }
        // A pooled connection goes to its next session with the kernel's default mark.
        if batching.stop() {
            server.set_low_water(1);
        }
        if !flow.client_done.get() {
            flow.server_ended.set(true);
            let parsable = flow.relay.borrow_mut().on_server_eof(!buf.is_empty()) && clean;
            if parsable {
                let _ = flow.drain(Side::Client, client).await;
            }
            let relay = flow.relay.borrow();
            if relay.server_ended_session() {
                info!("the database ended the session");
            } else if !relay.is_terminated() {
                warn!("the database closed the connection");
            }
        }
        flow.server_done.set(true);
        flow.answered.notify_one();
        // The agent's reader must stop too: nothing it sends can be answered.
        client.shutdown();
    };

    // A session whose credential expires is closed at that moment if it is idle, else as
    // soon as it is (its statements are refused from then on anyway).
    let expires_at = flow.relay.borrow().expires_at();
    let expiry = async {
        let Some(at) = expires_at else {
            return std::future::pending::<()>().await;
        };
        let left = at.saturating_sub(crate::approvals::model::now_ms());
        tokio::time::sleep(std::time::Duration::from_millis(left)).await;
        let idle = || {
            flow.relay.borrow().is_idle()
                && !flow.writing_client.get()
                && !flow.writing_server.get()
        };
        if idle() {
            return;
        }
        // Busy at expiry: the agent is waiting for an answer and will send its next
        // statement as soon as it has it. That one gets the clear refusal (the relay's
        // check) before the session goes.
        while !idle() {
            tokio::time::sleep(EXPIRY_RECHECK).await;
        }
        tokio::time::sleep(EXPIRED_GRACE).await;
        while !idle() {
            tokio::time::sleep(EXPIRY_RECHECK).await;
        }
    };
    // A server that does not answer the reset in time is closed, not waited for.
    let reset_timeout = async {
        flow.reset_started.notified().await;
        tokio::time::sleep(RESET_TIMEOUT).await;
    };
    let mut both = Box::pin(async { tokio::join!(client_half, server_half) });
    let mut expired = false;
    let mut finished = false;
    let cut = tokio::select! {
        _ = &mut both => {
            finished = true;
            false
        }
        () = shared.lifecycle.reached(Phase::Cutting) => true,
        () = expiry => {
            expired = true;
            false
        }
        () = reset_timeout => {
            warn!("the database did not answer the reset in time; closing the connection instead of reusing it");
            false
        }
    };
    if expired {
        drop(both);
        info!("closing the session: its credential expired");
        shared.metrics.refusal(sqlstate::INVALID_AUTHORIZATION);
        let at = expires_at.unwrap_or_default();
        let _ = tokio::time::timeout(CUT_WRITE, server.write_all(fe::terminate())).await;
        let _ = tokio::time::timeout(
            CUT_WRITE,
            client.write_all(error_response(
                Severity::Fatal,
                sqlstate::INVALID_AUTHORIZATION,
                &format!(
                    "terminating connection: the credential this session logged in with expired at {}",
                    crate::auth::rfc3339_ms(at)
                ),
                None,
                Some("Reconnect with a fresh token (or a new key)."),
            )),
        )
        .await;
        server.shutdown();
        client.shutdown();
        return (
            "credential expired",
            close_trail(shared, flow.relay.into_inner()),
            None,
        );
    }
    if cut {
        flow.cut.set(true);
        // The writer towards the client finishes the chunk it is writing (half a frame
        // would leave the client nothing it can parse), then the halves are dropped.
        let settled = async {
            loop {
                let notified = flow.progress_client.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if !flow.writing_client.get() {
                    return;
                }
                notified.await;
            }
        };
        tokio::select! {
            _ = &mut both => {}
            () = settled => {}
            () = tokio::time::sleep(CUT_WRITE) => {}
        }
        let (busy, tail) = {
            let mut r = flow.relay.borrow_mut();
            let busy = !r.is_idle();
            let mut tail = BytesMut::new();
            if !flow.writing_client.get() && r.client_at_frame_boundary() {
                while let Some(b) = r.pop_to_client() {
                    tail.extend_from_slice(&b);
                }
                tail.extend_from_slice(&drain::terminating());
                shared.metrics.refusal(sqlstate::ADMIN_SHUTDOWN);
            }
            (busy, tail)
        };
        // What the server runs for this session stops too, as a fast shutdown's backends
        // do; closing the connection alone would not interrupt a long statement.
        if busy && let Some((addr, pid, secret)) = ctx.upstream() {
            let _ = tokio::time::timeout(CUT_WRITE, send_cancel::<C>(addr, pid, secret)).await;
        }
        if !tail.is_empty() {
            let _ = tokio::time::timeout(CUT_WRITE, client.write_all(tail.freeze())).await;
        }
        drop(both);
        server.shutdown();
        client.shutdown();
    } else {
        drop(both);
    }
    // Only a session whose halves both ended on their own hands its connection on.
    let reset = flow.reset_done.into_inner().filter(|_| finished);
    let r = flow.relay.into_inner();
    let reason = if cut {
        "gateway shutdown"
    } else if r.is_terminated() {
        "client terminated"
    } else if flow.server_ended.get() {
        "server closed"
    } else {
        "client disconnected"
    };
    (reason, close_trail(shared, r), reset)
}

/// Ends the session's audit trail (its open statements closed, its last records handed
/// to the log) and returns how many statements it recorded.
fn close_trail<H: Hooks>(shared: &Shared, mut relay: Relay<H>) -> u64 {
    match relay.audit_mut() {
        Some(t) => {
            t.close_all();
            let n = t.statements();
            if let (Some(log), Some((records, _))) = (&shared.audit, t.take()) {
                log.submit(records);
            }
            n
        }
        None => 0,
    }
}

/// Longest the database may take to answer the reset of a connection kept for reuse.
const RESET_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often an expired session that is still busy is looked at again.
const EXPIRY_RECHECK: std::time::Duration = std::time::Duration::from_millis(200);
/// How long a session that was busy when its credential expired stays open once idle,
/// so that its next statement is answered with the refusal rather than a closed socket.
const EXPIRED_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a cut session's last writes (the chunk in progress, then the queue and the
/// 57P01) may take: a client that reads nothing is closed without them.
const CUT_WRITE: std::time::Duration = std::time::Duration::from_secs(1);

/// Once the session is being cut a half waits here to be dropped, so it neither reads
/// more nor closes a socket the 57P01 still has to go through.
async fn park_if_cut<H: Hooks>(flow: &Flow<H>) {
    if flow.cut.get() {
        std::future::pending::<()>().await;
    }
}

/// Sends a cancel request for one server backend (no connection slot needed: the
/// server reads it before any limit applies) and waits until the server closed it.
pub(super) async fn send_cancel<C: Connect>(addr: SocketAddr, pid: i32, secret: i32) {
    match C::connect(addr).await {
        Ok(s) => {
            if let Err(e) = s.write_all(fe::cancel_request(pid, secret)).await {
                warn!("sending a cancel request failed: {e}");
            } else {
                // PostgreSQL closes after reading the request; wait for that so the
                // request is not cut off by our own close.
                let _ = s.read(BytesMut::with_capacity(16), 16).await;
            }
        }
        Err(e) => warn!("cannot reach the database to send a cancel request: {e}"),
    }
}

#[derive(Clone, Copy)]
pub(super) enum Side {
    Client,
    Server,
}

/// Takes the next chunk for one side, gluing small frames together so a burst of small
/// messages costs one write.
fn next_chunk<H: Hooks>(relay: &RefCell<Relay<H>>, side: Side) -> Option<Bytes> {
    let mut r = relay.borrow_mut();
    let pop = |r: &mut Relay<H>| match side {
        Side::Client => r.pop_to_client(),
        Side::Server => r.pop_to_server(),
    };
    let first = pop(&mut r)?;
    let queued = match side {
        Side::Client => r.pending_to_client(),
        Side::Server => r.pending_to_server(),
    };
    if queued == 0 || first.len() >= COALESCE {
        return Some(first);
    }
    let mut acc = BytesMut::with_capacity((first.len() + queued).min(COALESCE));
    acc.extend_from_slice(&first);
    while acc.len() < COALESCE {
        let Some(next) = pop(&mut r) else { break };
        acc.extend_from_slice(&next);
    }
    Some(acc.freeze())
}

/// Runs a catalog query on one of the database's reserved connections, so the session's
/// connection (busy streaming a result) is never interleaved and a full server does not
/// stop the session.
async fn side_query(shared: &Shared, database: &str, sql: &str) -> Result<Vec<Bytes>, String> {
    shared
        .side
        .query(database, sql)
        .await
        .map_err(|e| e.to_string())
}
