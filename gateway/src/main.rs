//! The `portcullis` binary: `serve`, `hash-secret`, `check-config`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use portcullis::auth::{Verifier, scram};
use portcullis::config::{Config, IoEngine, LogFormat};
use portcullis::engine::{self, Shared};
use tracing::{error, info, warn};

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
        Cmd::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            Shared::from_config(&cfg)?;
            println!(
                "{}: ok ({} identities)",
                config.display(),
                cfg.identities.len()
            );
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
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(e) = io_engine {
                cfg.server.io_engine = e;
            }
            if let Some(w) = workers {
                cfg.server.workers = w;
            }
            if let Some(f) = log_format {
                cfg.log.format = f;
            }
            portcullis::telemetry::init(cfg.log.format, &cfg.log.level);
            serve(cfg, config)
        }
    }
}

fn serve(cfg: Config, path: PathBuf) -> anyhow::Result<()> {
    let addr = cfg.listen_addr()?;
    let shared = Arc::new(Shared::from_config(&cfg)?);
    let choice = engine::choose(cfg.server.io_engine)?;
    let workers = engine::worker_count(cfg.server.workers);
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

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => reload(&shared, &path),
            }
        }
        anyhow::Ok(())
    })?;

    info!(
        sessions = shared.lifecycle.sessions(),
        "stopping: no new connections"
    );
    shared.lifecycle.stop();
    let deadline = Instant::now() + Duration::from_secs(cfg.server.shutdown_grace_secs);
    while shared.lifecycle.sessions() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = shared.lifecycle.sessions();
    if left > 0 {
        warn!(
            sessions = left,
            "grace period over, closing remaining sessions"
        );
        std::process::exit(0);
    }
    for h in handles {
        let _ = h.join();
    }
    info!("stopped");
    Ok(())
}

/// SIGHUP: re-read the file and swap what can change without a restart.
fn reload(shared: &Shared, path: &std::path::Path) {
    match Config::load(path) {
        Ok(cfg) => match shared.reload(&cfg) {
            Ok(()) => info!(
                identities = cfg.identities.len(),
                mask_rules = cfg.mask.rules.len(),
                "configuration reloaded"
            ),
            Err(e) => error!("reload refused, keeping the running configuration: {e}"),
        },
        Err(e) => error!("reload refused, keeping the running configuration: {e}"),
    }
}
