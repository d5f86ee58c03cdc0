//! The `portcullis` binary: `serve`, `reload`, `status`, `approvals`, `hash-secret`,
//! `check-config`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use portcullis::approvals::Request;
use portcullis::auth::{Verifier, scram};
use portcullis::config::{Config, IoEngine, LogFormat};
use portcullis::control::admin::{self, AdminSocket, Control, Trigger};
use portcullis::control::admin_approvals::{
    self as review, ApprovalsCommand, ListArgs, Verb, VoteArgs,
};
use portcullis::control::{http, webhook};
use portcullis::engine::{self, Phase, Shared};
use tracing::{info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "PostgreSQL gateway for AI agents"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
        /// Overrides server.listen.
        #[arg(long, env = "PORTCULLIS_LISTEN")]
        listen: Option<String>,
        /// Overrides server.io_engine.
        #[arg(long, value_enum, env = "PORTCULLIS_IO_ENGINE")]
        io_engine: Option<IoEngine>,
        /// Overrides server.workers.
        #[arg(long, env = "PORTCULLIS_WORKERS")]
        workers: Option<usize>,
        /// Overrides log.format.
        #[arg(long, value_enum, env = "PORTCULLIS_LOG_FORMAT")]
        log_format: Option<LogFormat>,
    },
    /// Ask the running gateway to re-read its configuration file (as SIGHUP does) and
    /// print its answer. Exits non-zero when the new file was refused; the gateway then
    /// keeps the configuration it was running.
    Reload {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Print what the running gateway is doing: engine, sessions, last reload.
    Status {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Review held statements through the running gateway's admin socket. A vote is
    /// recorded as `unix:<your user>` unless --reviewer names someone.
    /// The audit log: verify, prove, search and replay it (offline, from its directory).
    Audit {
        #[command(subcommand)]
        cmd: portcullis::audit::cli::AuditCmd,
    },
    Approvals {
        #[command(subcommand)]
        cmd: ApprovalsCmd,
    },
    /// Just-in-time grants through the running gateway's admin socket: extra roles for
    /// an identity, for a while, once a reviewer approves (`portcullis approvals
    /// approve ID`).
    Grants {
        #[command(subcommand)]
        cmd: GrantsCmd,
    },
    /// Print the SCRAM-SHA-256 verifier of an agent secret, for an [[identity]] entry.
    /// Reads the secret from standard input when not given.
    HashSecret {
        secret: Option<String>,
        #[arg(long, default_value_t = scram::DEFAULT_ITERATIONS)]
        iterations: u32,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// The pending requests, newest first (--all: decided ones too).
    List {
        #[arg(long)]
        all: bool,
        /// Print JSON (an array of requests) instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = review::DEFAULT_LIMIT)]
        limit: usize,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Everything about one request: who, from where, the statement and its parameters,
    /// the rule, recent statements, the estimate, votes, digest.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Approve a request: prints what it approves and sends the digest of exactly that,
    /// so a request edited meanwhile is not approved unseen.
    Approve {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
        /// Record the vote under this name instead of `unix:<user>`.
        #[arg(long)]
        reviewer: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Deny a request; the agent gets an error with your name and reason.
    Deny {
        id: i64,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        reviewer: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Replace the statement with yours (`--sql -` reads it from standard input); it runs
    /// once the request has its approvals, yours counting as one.
    Edit {
        id: i64,
        #[arg(long)]
        sql: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        reviewer: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Make a reviewer's API token (32 random bytes, base64url) or take the one given
    /// (`-` reads it from standard input), and print its `token_sha256` line for the
    /// reviewer's [[approvals.reviewer]] entry.
    HashToken { token: Option<String> },
}

#[derive(Subcommand)]
enum GrantsCmd {
    /// Ask for a grant; it waits for its reviewers like a held statement. Recorded as
    /// requested by `unix:<your user>` unless --requested-by names someone, who then
    /// cannot approve it.
    Request {
        /// The identity that gets the roles.
        #[arg(long)]
        identity: String,
        /// A role to add (repeat for several).
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// How long, from the approval: 90s, 30m, 2h, 1h30m.
        #[arg(long = "for")]
        duration: String,
        /// Why; the reviewer reads it and the audit log keeps it.
        #[arg(long)]
        reason: String,
        /// Only in this database (repeat for several; default: any).
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Only statements of this class: read, write, ddl, … (repeat; default: any).
        #[arg(long = "class")]
        classes: Vec<String>,
        /// Only statements every relation of which matches one of these globs
        /// (`public.accounts`, `public.*`; repeat; default: any).
        #[arg(long = "table")]
        tables: Vec<String>,
        #[arg(long)]
        requested_by: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Pending and active grants, newest first (--all: ended and denied ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// End a grant now (or withdraw a pending one): sessions judge their next statement
    /// without it.
    Revoke {
        id: i64,
        #[arg(long)]
        reason: Option<String>,
        /// Record the revocation under this name instead of `unix:<user>`.
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Which gateway `reload` and `status` talk to.
#[derive(clap::Args)]
#[group(required = true, multiple = true)]
struct AdminTarget {
    /// The gateway's configuration file; the admin socket is its `[admin] socket`.
    #[arg(long, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// The admin socket itself; wins over the one in --config.
    #[arg(long, env = "PORTCULLIS_ADMIN_SOCKET")]
    admin_socket: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::HashSecret { secret, iterations } => {
            let secret = match secret {
                Some(s) => s,
                None => {
                    let mut s = String::new();
                    std::io::stdin().read_to_string(&mut s)?;
                    s.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            if secret.is_empty() {
                bail!("the secret is empty");
            }
            if iterations < 4096 {
                bail!("--iterations must be at least 4096");
            }
            println!("{}", Verifier::generate(&secret, iterations));
            Ok(())
        }
        Cmd::Reload { target } => ask(target, "reload"),
        Cmd::Approvals { cmd } => approvals(cmd),
        Cmd::Grants { cmd } => grants(cmd),
        Cmd::Audit { cmd } => match portcullis::audit::cli::run(cmd) {
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            Err(e) => bail!("{e}"),
        },
        Cmd::Status { target } => ask(target, "status"),
        Cmd::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            Shared::from_config(&cfg)?;
            match &cfg.audit {
                Some(a) => {
                    let signed = match &a.signing_key {
                        Some(k) => {
                            portcullis_auditlog::checkpoint::load_signing_key(k)
                                .with_context(|| format!("audit.signing_key {}", k.display()))?;
                            "signed checkpoints"
                        }
                        None => "NO signing_key: checkpoints are not signed",
                    };
                    println!("audit: {} ({signed})", a.dir.display());
                }
                None => println!("audit: no [audit] section, no evidence is kept"),
            }
            for o in &cfg.oidc {
                println!(
                    "tokens: issuer {} (audiences {}; algorithms {}; typ {})",
                    o.issuer,
                    o.audiences.join(", "),
                    o.algorithms
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    if o.require_typ.is_empty() {
                        "not checked"
                    } else {
                        &o.require_typ
                    }
                );
            }
            match &cfg.policy {
                Some(p) => println!(
                    "{}: ok ({} identities, {} masking rules, {} policy rules{})",
                    config.display(),
                    cfg.identities.len(),
                    cfg.mask.rules.len(),
                    p.rules.len(),
                    if p.enforce { "" } else { ", observe-only" }
                ),
                None => println!(
                    "{}: ok ({} identities, {} masking rules), but no [policy]: every statement will be refused",
                    config.display(),
                    cfg.identities.len(),
                    cfg.mask.rules.len()
                ),
            }
            Ok(())
        }
        Cmd::Serve {
            config,
            listen,
            io_engine,
            workers,
            log_format,
        } => {
            let mut cfg = Config::load(&config)?;
            // What the flags and environment set, for the console's SHOW CONFIG.
            let mut overrides = Vec::new();
            if let Some(l) = listen {
                overrides.push(("server.listen".to_owned(), format!("{l:?}")));
                cfg.server.listen = l;
            }
            if let Some(e) = io_engine {
                overrides.push((
                    "server.io_engine".to_owned(),
                    format!("{:?}", format!("{e:?}").to_lowercase()),
                ));
                cfg.server.io_engine = e;
            }
            if let Some(w) = workers {
                overrides.push(("server.workers".to_owned(), w.to_string()));
                cfg.server.workers = w;
            }
            if let Some(f) = log_format {
                overrides.push((
                    "log.format".to_owned(),
                    format!("{:?}", format!("{f:?}").to_lowercase()),
                ));
                cfg.log.format = f;
            }
            portcullis::telemetry::init(cfg.log.format, &cfg.log.level);
            serve(cfg, config, overrides)
        }
    }
}

/// Where reviewers open the page when `public_url` is not set: the listen address, or
/// this host's name for a wildcard one (`0.0.0.0` is no address to open).
fn page_url(listen: &str) -> String {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => format!("http://{}:{}", host_name(), a.port()),
        _ => format!("http://{listen}"),
    }
}

fn hex_sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// This gateway's name in a shared approvals queue when `gateway_id` is not set.
fn default_gateway_id(listen: std::net::SocketAddr) -> String {
    format!("{}:{}", host_name(), listen.port())
}

fn socket_of(target: &AdminTarget) -> anyhow::Result<PathBuf> {
    Ok(match (&target.admin_socket, &target.config) {
        (Some(socket), _) => socket.clone(),
        (None, Some(config)) => admin::socket_from_config(config)?,
        (None, None) => bail!("give --config or --admin-socket"),
    })
}

/// Sends one admin command and relays the answer: stdout and exit 0 for `ok:`, stderr
/// and exit 1 for `error:`.
fn ask(target: AdminTarget, command: &str) -> anyhow::Result<()> {
    let answer = admin::request(&socket_of(&target)?, command)?;
    if answer.ok {
        println!("{}", answer.line);
        Ok(())
    } else {
        eprintln!("{}", answer.line);
        std::process::exit(1)
    }
}

/// One approvals command: the JSON of its `ok:` answer, or exit 1 with the gateway's
/// `error:` line on stderr.
fn call<T: serde::de::DeserializeOwned>(
    target: &AdminTarget,
    cmd: &ApprovalsCommand,
) -> anyhow::Result<T> {
    call_line(target, cmd.to_line())
}

fn call_line<T: serde::de::DeserializeOwned>(
    target: &AdminTarget,
    line: String,
) -> anyhow::Result<T> {
    if line.len() > review::MAX_LINE {
        bail!(
            "the command is longer than the admin socket takes ({} bytes)",
            review::MAX_LINE
        );
    }
    let answer = admin::request(&socket_of(target)?, &line)?;
    if !answer.ok {
        eprintln!("{}", answer.line);
        std::process::exit(1);
    }
    let json = answer.line.strip_prefix("ok:").unwrap_or_default().trim();
    serde_json::from_str(json).with_context(|| {
        format!(
            "the gateway's answer is not what this portcullis expects (is it another version?): {}",
            json.chars().take(200).collect::<String>()
        )
    })
}

fn now_ms() -> u64 {
    portcullis::approvals::model::now_ms()
}

/// `-` is standard input (without its final line break).
fn arg_or_stdin(value: String) -> anyhow::Result<String> {
    if value != "-" {
        return Ok(value);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading standard input")?;
    Ok(s.trim_end_matches(['\n', '\r']).to_owned())
}

fn approvals(cmd: ApprovalsCmd) -> anyhow::Result<()> {
    match cmd {
        ApprovalsCmd::List {
            all,
            json,
            limit,
            target,
        } => {
            let list: Vec<Request> = call(
                &target,
                &ApprovalsCommand::List(ListArgs {
                    all,
                    limit: Some(limit),
                }),
            )?;
            let now = now_ms();
            if json {
                let flat: Vec<_> = list.iter().map(|r| review::flat_json(r, now)).collect();
                println!("{}", serde_json::to_string_pretty(&flat)?);
            } else {
                print!("{}", review::render_table(&list, all, now));
            }
        }
        ApprovalsCmd::Show { id, json, target } => {
            let r: Request = call(&target, &ApprovalsCommand::Show(id))?;
            if json {
                let flat = review::flat_json(&r, now_ms());
                println!("{}", serde_json::to_string_pretty(&flat)?);
            } else {
                print!("{}", review::render_request(&r, now_ms()));
            }
        }
        ApprovalsCmd::Approve {
            id,
            reason,
            reviewer,
            target,
        } => vote(&target, Verb::Approve, id, reviewer, reason, None)?,
        ApprovalsCmd::Deny {
            id,
            reason,
            reviewer,
            target,
        } => vote(&target, Verb::Deny, id, reviewer, Some(reason), None)?,
        ApprovalsCmd::Edit {
            id,
            sql,
            reason,
            reviewer,
            target,
        } => {
            let sql = arg_or_stdin(sql)?;
            vote(&target, Verb::Edit, id, reviewer, reason, Some(sql))?
        }
        ApprovalsCmd::HashToken { token } => {
            let token = match token {
                Some(t) => arg_or_stdin(t)?,
                None => review::new_token(),
            };
            if token.is_empty() {
                bail!("the token is empty");
            }
            println!("token: {token}");
            println!("token_sha256 = \"{}\"", review::token_sha256(&token));
            eprintln!(
                "give the token to the reviewer; the gateway keeps only the token_sha256 line, in their [[approvals.reviewer]] entry"
            );
        }
    }
    Ok(())
}

fn grants(cmd: GrantsCmd) -> anyhow::Result<()> {
    use portcullis::control::admin_grants::{
        self as g, GrantsCommand, ListArgs as GrantList, RequestArgs, RevokeArgs,
    };
    use portcullis::grants::Grant;
    match cmd {
        GrantsCmd::Request {
            identity,
            roles,
            duration,
            reason,
            databases,
            classes,
            tables,
            requested_by,
            json,
            target,
        } => {
            let cmd = GrantsCommand::Request(RequestArgs {
                identity,
                roles,
                databases,
                classes,
                tables,
                duration,
                reason,
                requested_by,
            });
            let grant: Grant = call_line(&target, cmd.to_line())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&grant)?);
            } else {
                print!("{}", g::render_one(&grant));
            }
        }
        GrantsCmd::List { all, json, target } => {
            let list: Vec<Grant> =
                call_line(&target, GrantsCommand::List(GrantList { all }).to_line())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", g::render_table(&list, now_ms()));
            }
        }
        GrantsCmd::Revoke {
            id,
            reason,
            by,
            target,
        } => {
            let cmd = GrantsCommand::Revoke {
                id,
                args: RevokeArgs { reason, by },
            };
            let grant: Grant = call_line(&target, cmd.to_line())?;
            print!("{}", g::render_one(&grant));
        }
    }
    Ok(())
}

/// Fetches the request, prints what the vote acts on, and sends the vote bound to the
/// digest of what was printed.
fn vote(
    target: &AdminTarget,
    verb: Verb,
    id: i64,
    reviewer: Option<String>,
    reason: Option<String>,
    sql: Option<String>,
) -> anyhow::Result<()> {
    let shown: Request = call(target, &ApprovalsCommand::Show(id))?;
    print!("{}", review::render_preview(&shown, verb));
    let after: Request = call(
        target,
        &ApprovalsCommand::Vote {
            verb,
            id,
            args: VoteArgs {
                reviewer,
                reason,
                sql,
                digest: Some(shown.digest),
            },
        },
    )?;
    print!("{}", review::render_outcome(&after));
    Ok(())
}

fn serve(cfg: Config, path: PathBuf, overrides: Vec<(String, String)>) -> anyhow::Result<()> {
    let addr = cfg.listen_addr()?;
    let mut shared = Shared::from_config(&cfg)?;
    let choice = engine::choose(cfg.server.io_engine)?;
    let workers = engine::worker_count(cfg.server.workers);

    // The control thread's runtime: signals, the admin socket, the approvals hub and the
    // reviewers' HTTP API; never the data path.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    let hub = match &cfg.approvals {
        Some(a) => {
            let store = rt
                .block_on(portcullis::approvals::store::Store::open(a))
                .context("opening the approvals store")?;
            let settings = portcullis::approvals::Settings {
                gateway: a
                    .gateway_id
                    .clone()
                    .unwrap_or_else(|| default_gateway_id(addr)),
                notice_interval: Duration::from_secs(a.notice_interval_secs.max(1)),
                default_timeout: Duration::from_secs(a.timeout_secs),
                preview_max: Duration::from_secs(a.preview_max_secs.max(1)),
                recent: a.recent_statements,
                page_url: a
                    .http
                    .as_ref()
                    .map(|h| h.public_url.clone().unwrap_or_else(|| page_url(&h.listen))),
            };
            let (handle, hub) = portcullis::approvals::Approvals::new(settings, store);
            shared.approvals = Some(Arc::new(handle));
            Some(hub)
        }
        None => None,
    };
    if !cfg.oidc.is_empty() {
        let tokens = portcullis::auth::oidc::Tokens::new(&cfg.oidc, rt.handle().clone())
            .map_err(|e| anyhow::anyhow!("[[oidc]]: {e}"))?;
        // The first logins need no fetch; a provider that is down now is tried again
        // when a token arrives.
        rt.block_on(tokens.prefetch());
        shared.tokens = Some(Arc::new(tokens));
    }
    let mut sinks = Vec::new();
    if let Some(a) = &cfg.audit {
        let gateway = a
            .gateway_id
            .clone()
            .unwrap_or_else(|| default_gateway_id(addr));
        let witnesses = portcullis::audit::seal::sink_witnesses(a, rt.handle())
            .context("setting up the audit witness sinks")?;
        let log = portcullis::audit::AuditLog::open_with(a, &gateway, witnesses)
            .context("opening the audit log")?;
        let config_sha256 = std::fs::read(&path)
            .map(|b| hex_sha256(&b))
            .unwrap_or_default();
        let t = log.record(&portcullis::audit::Body::GatewayStart {
            version: env!("CARGO_PKG_VERSION"),
            config_sha256,
            pid: std::process::id(),
        });
        // A gateway that cannot write its first record would refuse every statement.
        log.durable_blocking(t)
            .context("writing the audit log's first record")?;
        info!(dir = %a.dir.display(), gateway = %gateway, "audit log open");
        sinks = portcullis::audit::sinks::spawn(rt.handle(), &a.sinks, &a.dir, log.written())
            .context("starting the audit sinks")?;
        shared.audit = Some(log);
    } else {
        warn!("no [audit] section: this gateway keeps no evidence of what agents run");
    }
    // Bound now, before the workers: a taken port fails start-up instead of leaving a
    // gateway that holds statements nobody can reach.
    let page_listener = match cfg.approvals.as_ref().and_then(|a| a.http.as_ref()) {
        Some(h) => Some(http::bind(h)?),
        None => None,
    };
    let metrics_listener = match &cfg.metrics {
        Some(m) => Some(portcullis::control::metrics::bind(m)?),
        None => None,
    };
    let engine_name = match choice.engine {
        portcullis::config::IoEngine::Uring => "uring",
        _ => "epoll",
    };
    shared.metrics.set_engine(engine_name);
    let console_listener = match &cfg.console {
        Some(c) => Some(portcullis::console::server::bind(c.listen_addr()?)?),
        None => None,
    };
    let shared = Arc::new(shared);
    if let (Some(m), Some(listener)) = (&cfg.metrics, metrics_listener) {
        // Subscribed to approvals before the hub runs, as the webhooks are.
        portcullis::control::metrics::start(
            &rt,
            listener,
            shared.clone(),
            m,
            engine_name,
            portcullis::control::metrics::probe_database(m, &cfg.upstream.reserve_databases),
        );
    }
    if let (Some(a), Some(approvals)) = (&cfg.approvals, &shared.approvals) {
        // Subscribed before the hub runs, so its first events (requests a previous run
        // left pending, withdrawn) are sent too.
        webhook::spawn(
            rt.handle(),
            &a.webhooks,
            approvals,
            webhook::Policy::default(),
        )?;
        if let Some(listener) = page_listener {
            http::start(&rt, listener, approvals.clone(), &a.reviewers);
        }
    }
    if let (Some(mut hub), Some(a)) = (hub, &cfg.approvals) {
        hub = hub.with_grants(portcullis::approvals::hub::GrantTerms {
            registry: shared.grants.clone(),
            audit: shared.audit.clone(),
            approvers: a.grant_approvers,
            timeout: Duration::from_secs(a.grant_timeout_secs.unwrap_or(a.timeout_secs)),
            max: Duration::from_secs(a.grant_max_secs),
        });
        rt.spawn(hub.run());
    }
    // Before the workers: the admin socket's bind narrows the process-wide umask, and a
    // SIGHUP that arrived before its handler was installed would kill the process. Before
    // the listeners too, so a gateway that accepts connections also answers `reload`.
    let (signals, admin) = {
        let _rt = rt.enter();
        use tokio::signal::unix::{SignalKind, signal};
        let signals = (
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        );
        let admin = match &cfg.admin {
            Some(a) => Some(AdminSocket::bind(&a.socket)?),
            None => None,
        };
        (signals, admin)
    };
    // After the admin socket's bind (it narrows the umask while no other thread runs),
    // before the listeners: databases named in reserve_databases have their reserved
    // connections before anyone can connect.
    engine::side::start(shared.clone()).context("starting the reserved connections")?;
    let listeners = engine::bind_listeners(addr, workers)?;
    let bound = listeners[0].local_addr()?;
    info!(
        engine = ?choice.engine,
        reason = %choice.reason,
        workers,
        "io engine selected"
    );
    let handles = engine::start(&choice, shared.clone(), listeners)?;
    info!(listen = %bound, upstream = %format!("{}:{}", cfg.upstream.host, cfg.upstream.port), "portcullis is listening");
    if let Some(a) = &admin {
        info!(path = %a.path().display(), "admin socket ready");
    }
    let control = Arc::new(Control::new(
        shared.clone(),
        &cfg,
        path,
        choice.engine,
        workers,
        bound.to_string(),
    ));
    if let (Some(c), Some(listener)) = (&cfg.console, console_listener) {
        let at = listener.local_addr()?;
        portcullis::console::start(
            &rt,
            listener,
            Arc::new(portcullis::console::Console {
                shared: shared.clone(),
                control: control.clone(),
                roles: c.roles.clone(),
                reviewers: cfg
                    .approvals
                    .iter()
                    .flat_map(|a| a.reviewers.iter().map(|r| r.name.clone()))
                    .collect(),
                overrides: overrides.clone(),
            }),
        );
        info!(listen = %at, "admin console ready (psql -h {} -p {} -U <admin identity> portcullis)", at.ip(), at.port());
    }

    let grace = Duration::from_secs(cfg.server.shutdown_grace_secs);
    let (how, signalled) = rt.block_on(control_loop(
        &shared,
        &control,
        admin.as_ref(),
        signals,
        grace,
    ));
    // Gone before the exit, which may skip destructors: the file goes with the socket.
    drop(admin);
    let cut = shared.lifecycle.sessions();
    // Workers end once their sessions have; one that cannot (a start-up stalled in the
    // kernel) is left to the process's exit.
    let deadline = Instant::now() + Duration::from_secs(2);
    while handles.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let finished = handles.iter().all(|h| h.is_finished());
    if finished {
        for h in handles {
            let _ = h.join();
        }
        info!(
            since_signal_ms = signalled.elapsed().as_millis() as u64,
            "listeners closed"
        );
    }
    if let Some(log) = &shared.audit {
        log.record(&portcullis::audit::Body::GatewayStop {
            reason: how.reason(),
        });
        // Syncs what is queued, the cut sessions' session_end records with it.
        log.close();
        // What the log holds now is sent before the process ends (a sink that is down
        // catches up from its cursor at the next start).
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while sinks.iter().any(|s| s.status().lag > 0) && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for s in sinks {
                s.stop().await;
            }
        });
    }
    if !finished || cut > 0 {
        warn!(connections = cut, "exiting with connections still open");
        info!("stopped");
        std::process::exit(0);
    }
    info!("stopped");
    Ok(())
}

/// How the gateway came to stop: its `gateway_stop` record's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// Every session ended within the grace period.
    Drained,
    /// The grace period ended with sessions open; they were sent 57P01.
    GraceOver,
    /// SIGINT or a second SIGTERM: sessions were sent 57P01 without waiting.
    Fast,
}

impl Stopped {
    fn reason(self) -> &'static str {
        match self {
            Stopped::Drained => "signal",
            Stopped::GraceOver => "grace period over, sessions cut",
            Stopped::Fast => "fast shutdown (SIGINT or a second SIGTERM), sessions cut",
        }
    }
}

/// After the cut, how long the sessions have to send their 57P01 and write their
/// `session_end` records before the process goes anyway.
const CUT_WAIT: Duration = Duration::from_secs(3);

/// Signals and the admin socket until the gateway has drained, as PostgreSQL's
/// shutdown modes go: SIGTERM stops new sessions (they are refused with 57P03) and lets
/// open ones finish within `grace`, then sends them FATAL 57P01; SIGINT, or SIGTERM
/// again, sends it at once (pg_ctl's fast mode); another signal after that exits
/// without waiting for anyone. Returns how it stopped and when the first signal came.
async fn control_loop(
    shared: &Shared,
    control: &Arc<Control>,
    admin: Option<&AdminSocket>,
    signals: (
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    ),
    grace: Duration,
) -> (Stopped, Instant) {
    let (mut term, mut int, mut hup) = signals;
    let admin_loop = async {
        match admin {
            Some(a) => a.serve(control.clone()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(admin_loop);
    let lifecycle = &shared.lifecycle;
    let mut signalled = Instant::now();
    let mut grace_end = tokio::time::Instant::now();
    let mut cut_at = tokio::time::Instant::now();
    let mut how = Stopped::Drained;
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cut = |how: Stopped, cut_at: &mut tokio::time::Instant| {
        warn!(
            sessions = lifecycle.sessions(),
            "{}: sending 57P01 to the sessions still open",
            match how {
                Stopped::GraceOver => "grace period over",
                _ => "fast shutdown",
            }
        );
        *cut_at = tokio::time::Instant::now();
        lifecycle.advance(Phase::Cutting);
    };
    loop {
        let phase = lifecycle.phase();
        tokio::select! {
            _ = term.recv() => match phase {
                Phase::Running => {
                    signalled = Instant::now();
                    grace_end = tokio::time::Instant::now() + grace;
                    lifecycle.advance(Phase::Draining);
                    info!(
                        sessions = lifecycle.sessions(),
                        grace_secs = grace.as_secs(),
                        "SIGTERM: draining, new connections are refused (57P03)"
                    );
                }
                Phase::Draining => {
                    how = Stopped::Fast;
                    cut(how, &mut cut_at);
                }
                _ => break,
            },
            _ = int.recv() => match phase {
                Phase::Running | Phase::Draining => {
                    if phase == Phase::Running {
                        signalled = Instant::now();
                    }
                    how = Stopped::Fast;
                    cut(how, &mut cut_at);
                }
                _ => break,
            },
            _ = hup.recv() => {
                // The outcome is logged inside; a signal has nobody to answer.
                let _ = control.reload(Trigger::Signal);
            }
            never = &mut admin_loop => match never {},
            () = tokio::time::sleep_until(grace_end), if phase == Phase::Draining => {
                how = Stopped::GraceOver;
                cut(how, &mut cut_at);
            }
            _ = poll.tick(), if phase >= Phase::Draining => {
                if lifecycle.sessions() == 0 {
                    info!(
                        since_signal_ms = signalled.elapsed().as_millis() as u64,
                        "last session closed"
                    );
                    break;
                }
                if phase == Phase::Cutting && cut_at.elapsed() >= CUT_WAIT {
                    break;
                }
            }
        }
    }
    lifecycle.advance(Phase::Exiting);
    (how, signalled)
}
