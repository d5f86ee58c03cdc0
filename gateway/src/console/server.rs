//! The console's listener and connections: start-up and SCRAM through the gateway's own
//! [`ClientHandshake`] (the same verifiers, decoys and refusals as the data path), then
//! pgwire for the query side, simple and extended protocol.
//!
//! pgwire's own start-up handlers cannot check a password against our stored
//! verifiers, so the handshake runs first on the raw socket (TLS included, with
//! `[server] tls`), and the authenticated stream, with any bytes already read, is handed
//! to pgwire's codec and message dispatch.

use std::fmt::Debug;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use futures_util::{Sink, StreamExt};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, DefaultClient, NoopHandler, PgWireConnectionState, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::tokio::server::{PgWireMessageServerCodec, process_error, process_message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::{Framed, FramedParts};
use tracing::{Instrument, debug, info, warn};

use super::command::{self, Command};
use super::exec::{Console, ExecError, Login, Session};
use super::table::{Cell, Column, Kind, Table, columns_of};
use crate::protocol::backend::{self as be, Severity, error_response};
use crate::protocol::sqlstate;
use crate::session::handshake::{ClientHandshake, Step};

/// The console's one database.
pub const DATABASE: &str = "portcullis";
/// Console connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// SQLSTATE 3D000.
const INVALID_CATALOG_NAME: &str = "3D000";

/// An accepted connection, before or after TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    fn tls_version(&self) -> Option<&'static str> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.get_ref().1.protocol_version().map(|v| match v {
                rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
                rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
                _ => "TLS",
            }),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Accepts console clients until the runtime stops, each on its own task.
pub async fn serve(listener: std::net::TcpListener, console: Arc<Console>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            warn!(target: "portcullis::console", "cannot use the console listener: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(target: "portcullis::console", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let console = console.clone();
        let span = tracing::info_span!("console", %peer);
        tokio::spawn(
            async move {
                let _permit = permit;
                if let Err(e) = connection(console, tcp, peer).await {
                    debug!("console connection: {e}");
                }
            }
            .instrument(span),
        );
    }
}

/// A start-up that did not end in a console session, for the log and the audit record.
#[derive(Debug)]
struct Refused(String);

async fn connection(console: Arc<Console>, tcp: TcpStream, peer: SocketAddr) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + console.shared.handshake_timeout;
    let mut user = None;
    let started = tokio::time::timeout_at(deadline, start(&console, tcp, &mut user)).await;
    let (mut stream, buf, login) = match started {
        Ok(Ok(Ok(s))) => s,
        Ok(Ok(Err(Refused(why)))) => {
            info!(
                user = user.as_deref().unwrap_or(""),
                "console login refused: {why}"
            );
            refused(&console, user.as_deref(), peer, None, &why);
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            refused(
                &console,
                user.as_deref(),
                peer,
                None,
                "start-up took too long",
            );
            return Ok(());
        }
    };
    let login = Login {
        identity: login,
        peer,
        tls: stream.tls_version(),
    };
    let name = login.identity.name.clone();
    info!(identity = %name, "console login");
    if let Some(log) = &console.shared.audit {
        log.record(&crate::audit::Body::ConsoleLogin {
            identity: &name,
            client_addr: peer.ip().to_string(),
            client_port: peer.port(),
            tls: login.tls,
        });
    }
    let mut hello = BytesMut::new();
    for (k, v) in [
        ("server_version", "15.0 (Portcullis admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("is_superuser", "off"),
        ("session_authorization", name.as_str()),
    ] {
        hello.extend_from_slice(&be::parameter_status(k, v));
    }
    // Cancel requests are not served here (console commands do not run long): the key
    // only completes the start-up clients expect.
    hello.extend_from_slice(&be::backend_key_data(
        rand::random::<i32>() & i32::MAX,
        rand::random(),
    ));
    hello.extend_from_slice(&be::ready_for_query(b'I'));
    stream.write_all(&hello).await?;
    let tls = login.tls.is_some();
    let session = Arc::new(Handler {
        session: Session::new(console, login),
    });

    let mut parts = FramedParts::new(
        stream,
        PgWireMessageServerCodec::new(DefaultClient::new(peer, tls)),
    );
    parts.read_buf = buf;
    let mut socket = Framed::from_parts(parts);
    socket.set_state(PgWireConnectionState::ReadyForQuery);
    let noop = Arc::new(NoopHandler);
    while let Some(msg) = socket.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                // Bytes that are not the protocol: say so and close, as PostgreSQL does.
                let _ = socket
                    .get_mut()
                    .write_all(&error_response(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("invalid message: {e}"),
                        None,
                        None,
                    ))
                    .await;
                break;
            }
        };
        match msg {
            PgWireFrontendMessage::Terminate(_) => break,
            // Start-up messages only belong before the session.
            PgWireFrontendMessage::Startup(_)
            | PgWireFrontendMessage::SslNegotiation(_)
            | PgWireFrontendMessage::CancelRequest(_)
            | PgWireFrontendMessage::PasswordMessageFamily(_) => {
                let _ = socket
                    .get_mut()
                    .write_all(&error_response(
                        Severity::Fatal,
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected start-up message in an established session",
                        None,
                        None,
                    ))
                    .await;
                break;
            }
            msg => {
                let extended = msg.is_extended_query();
                if let Err(e) = process_message(
                    msg,
                    &mut socket,
                    noop.clone(),
                    session.clone(),
                    session.clone(),
                    noop.clone(),
                    noop.clone(),
                )
                .await
                {
                    let fatal = e.is_fatal();
                    process_error(&mut socket, e, extended).await?;
                    if fatal {
                        break;
                    }
                }
            }
        }
    }
    debug!(identity = %name, "console session ended");
    Ok(())
}

/// The audit record of a refused console login.
fn refused(console: &Console, user: Option<&str>, peer: SocketAddr, tls: Option<&str>, why: &str) {
    if let Some(log) = &console.shared.audit {
        log.record(&crate::audit::Body::LoginRefused {
            identity: user,
            auth: "console scram-sha-256",
            client_addr: peer.ip().to_string(),
            client_port: peer.port(),
            tls,
            reason: why,
        });
    }
}

type Started = (Stream, BytesMut, Arc<crate::auth::Identity>);

/// Start-up and authentication, then the console's own checks: an identity with a
/// console role, the console's database.
async fn start(
    console: &Console,
    tcp: TcpStream,
    user: &mut Option<String>,
) -> io::Result<Result<Started, Refused>> {
    let shared = &console.shared;
    let mut stream = Stream::Plain(tcp);
    // No token logins here: console logins are static keys with SCRAM.
    let mut hs = ClientHandshake::new(shared.identities.load_full(), shared.tls_offer);
    let mut buf = BytesMut::with_capacity(1024);
    let mut steps = Vec::new();
    let agent = 'auth: loop {
        steps.clear();
        hs.on_bytes(&mut buf, &mut steps);
        if user.is_none() {
            *user = hs.user().map(str::to_owned);
        }
        for step in steps.drain(..) {
            match step {
                Step::Send(b) => stream.write_all(&b).await?,
                Step::StartTls => {
                    // Bytes sent after SSLRequest and before the TLS handshake would be
                    // read as if they came inside it.
                    let (Stream::Plain(tcp), Some(cfg), true) =
                        (stream, shared.server_tls.clone(), buf.is_empty())
                    else {
                        return Ok(Err(Refused("TLS requested twice, not configured, or data sent before the TLS handshake".into())));
                    };
                    let tls = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await?;
                    stream = Stream::Tls(Box::new(tls));
                    hs.tls_established();
                }
                Step::Cancel { .. } => return Ok(Err(Refused("a cancel request".into()))),
                Step::VerifyToken { .. } => {
                    let message =
                        "the console takes static keys only (SCRAM-SHA-256), not access tokens";
                    stream
                        .write_all(&error_response(
                            Severity::Fatal,
                            sqlstate::INVALID_AUTHORIZATION,
                            message,
                            None,
                            None,
                        ))
                        .await?;
                    return Ok(Err(Refused(message.into())));
                }
                Step::Authenticated(agent) => break 'auth agent,
                Step::Reject(frame) => {
                    let (code, msg) = be::error_summary(frame.get(5..).unwrap_or_default());
                    stream.write_all(&frame).await?;
                    return Ok(Err(Refused(format!("{msg} ({code})"))));
                }
                Step::Close(why) => return Ok(Err(Refused(why))),
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(Err(Refused("the client left during start-up".into())));
        }
    };
    let identity = agent.identity;
    let refuse = |code: &'static str, message: String, hint: String| async move {
        let frame = error_response(Severity::Fatal, code, &message, None, Some(&hint));
        (frame, message, code)
    };
    // Roles first: an identity that may not use the console learns nothing more.
    if !identity.roles.iter().any(|r| console.roles.contains(r)) {
        let (frame, message, code) = refuse(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "identity \"{}\" may not use the admin console: it holds none of the console roles ({})",
                identity.name,
                console.roles.join(", ")
            ),
            "Console logins are [[identity]] entries whose roles include one of [console] roles; agents connect to the gateway's main port.".into(),
        )
        .await;
        stream.write_all(&frame).await?;
        return Ok(Err(Refused(format!("{message} ({code})"))));
    }
    if agent.database != DATABASE {
        let (frame, message, code) = refuse(
            INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", agent.database),
            format!("The admin console has one database, \"{DATABASE}\": psql -h HOST -p PORT -U {} {DATABASE}", identity.name),
        )
        .await;
        stream.write_all(&frame).await?;
        return Ok(Err(Refused(format!("{message} ({code})"))));
    }
    Ok(Ok((stream, buf, identity)))
}

/// pgwire's handlers for one connection.
struct Handler {
    session: Session,
}

fn user_error(code: &str, message: String, hint: Option<String>) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".into(), code.into(), message);
    info.hint = hint;
    PgWireError::UserError(Box::new(info))
}

fn command_error(e: command::CommandError) -> PgWireError {
    user_error(e.code, e.message, Some(e.hint))
}

fn exec_error(e: ExecError) -> PgWireError {
    let mut info = ErrorInfo::new(
        if e.fatal { "FATAL" } else { "ERROR" }.into(),
        e.code.into(),
        e.message,
    );
    info.hint = e.hint;
    PgWireError::UserError(Box::new(info))
}

fn pg_type(kind: Kind) -> Type {
    match kind {
        Kind::Text => Type::TEXT,
        Kind::Int => Type::INT8,
        Kind::Bool => Type::BOOL,
    }
}

/// The row description of `columns` in the formats the client asked for; a format list
/// whose length matches neither one nor the columns is refused, as PostgreSQL does.
fn fields(columns: &[Column], format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    if let Format::Individual(codes) = format
        && codes.len() != columns.len()
    {
        return Err(user_error(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "bind message has {} result formats but query has {} columns",
                codes.len(),
                columns.len()
            ),
            None,
        ));
    }
    Ok(columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            FieldInfo::new(
                c.name.into(),
                None,
                None,
                pg_type(c.kind),
                format.format_for(i),
            )
        })
        .collect())
}

fn response(table: Table, format: &Format) -> PgWireResult<Response> {
    let schema = Arc::new(fields(table.columns, format)?);
    let mut enc = DataRowEncoder::new(schema.clone());
    let mut rows = Vec::with_capacity(table.rows.len());
    for row in &table.rows {
        for cell in row {
            match cell {
                Cell::Text(v) => enc.encode_field(v)?,
                Cell::Int(v) => enc.encode_field(v)?,
                Cell::Bool(v) => enc.encode_field(v)?,
            }
        }
        rows.push(Ok(enc.take_row()));
    }
    let mut r = QueryResponse::new(schema, futures_util::stream::iter(rows));
    r.set_command_tag(table.tag);
    Ok(Response::Query(r))
}

#[async_trait]
impl SimpleQueryHandler for Handler {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let cmd = command::parse(query).map_err(command_error)?;
        let table = self.session.run(&cmd).await.map_err(exec_error)?;
        Ok(vec![response(table, &Format::UnifiedText)?])
    }
}

/// Parses a `Parse`'s text into a console command, so a mistake is reported there.
#[derive(Debug, Default)]
struct Parser;

#[async_trait]
impl QueryParser for Parser {
    type Statement = Command;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Command>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        if !types.is_empty() {
            return Err(user_error(
                sqlstate::PROTOCOL_VIOLATION,
                "console commands take no parameters".into(),
                Some(command::HELP[0].0.to_owned() + " lists the commands."),
            ));
        }
        command::parse(sql).map(Some).map_err(command_error)
    }

    fn get_parameter_types(&self, _stmt: &Command) -> PgWireResult<Vec<Type>> {
        Ok(Vec::new())
    }

    fn get_result_schema(
        &self,
        stmt: &Command,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        fields(
            columns_of(stmt),
            column_format.unwrap_or(&Format::UnifiedText),
        )
    }
}

#[async_trait]
impl ExtendedQueryHandler for Handler {
    type Statement = Command;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::new(Parser)
    }

    async fn do_query<C>(
        &self,
        _client: &mut C,
        portal: &Portal<Command>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Command>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !portal.parameters.is_empty() {
            return Err(user_error(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "bind message supplies {} parameters, but console commands take none",
                    portal.parameters.len()
                ),
                None,
            ));
        }
        let cmd: &Command = &portal.statement.statement;
        // Checked before the command runs: a RELOAD must not happen for an answer the
        // client cannot take.
        fields(columns_of(cmd), &portal.result_column_format)?;
        let table = self.session.run(cmd).await.map_err(exec_error)?;
        response(table, &portal.result_column_format)
    }
}

/// Binds the listener now, so a taken port fails start-up.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, super::ConsoleError> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|source| super::ConsoleError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| super::ConsoleError::Bind { addr, source })?;
    Ok(l)
}
