//! `cargo xtask quickstart`: a throwaway PostgreSQL with the sample financial dataset in
//! database `bank`, a release-built gateway in front, and a URI to paste. Runs until Ctrl-C,
//! then stops both and removes their directories, leaving nothing behind. A gateway that
//! exits meanwhile is reaped, reported and started again on Enter.
//!
//! It runs the way a deployment should: the gateway logs in upstream as a least-privilege
//! login (`portcullis_agent`: no privileges of its own) and switches each session to the
//! agent's role (`portcullis_write`, or `portcullis_read` for the auditor), and applies
//! the example statement policy, so what the demo shows is what the README recommends.

use std::io::BufRead;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use portcullis_tests::{
    Engine, Gateway, GatewayOptions, PgCluster, PgOptions, QUICKSTART_APPROVALS,
    QUICKSTART_MASK_POLICY, QUICKSTART_REVIEWER_TOKEN, QUICKSTART_ROLES,
    QUICKSTART_STATEMENT_POLICY, create_gateway_role, load_financial,
};

const DB: &str = "bank";
const SEED: u64 = 42;
/// The console's login: named like the demo reviewer, so it may APPROVE and DENY there.
const CONSOLE_USER: &str = "reviewer";
const CONSOLE_SECRET: &str = "reviewer-secret";

#[derive(clap::Args)]
pub struct Args {
    /// Accounts to generate (transactions get a quarter of that).
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Port the gateway listens on (0: any free port).
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// I/O engine: auto, uring or epoll.
    #[arg(long, default_value = "auto")]
    io_engine: String,
    /// Serve raw values to every identity (no `[mask]` policy; the statement policy stays).
    #[arg(long)]
    no_mask: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let engine = match args.io_engine.as_str() {
        "auto" => Engine::Auto,
        "uring" => Engine::Uring,
        "epoll" => Engine::Epoll,
        other => anyhow::bail!("--io-engine must be auto, uring or epoll, not {other:?}"),
    };
    crate::setup::ensure(false)?;
    // An installed or prebuilt gateway can be used as is; otherwise build this checkout's.
    let bin = match std::env::var_os("PORTCULLIS_BIN") {
        Some(b) => std::path::PathBuf::from(b),
        None => {
            let root = portcullis_tests::gateway::workspace_root();
            println!("quickstart: building the gateway (release)");
            crate::setup::sh(Command::new("cargo").current_dir(&root).args([
                "build",
                "--release",
                "--package",
                "portcullis",
                "--bin",
                "portcullis",
            ]))?;
            std::env::var_os("CARGO_TARGET_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| root.join("target"))
                .join("release/portcullis")
        }
    };

    println!("quickstart: starting PostgreSQL 15");
    let pg = PgCluster::start(PgOptions::default()).context("starting PostgreSQL")?;
    println!("quickstart: loading {} accounts into `{DB}`", args.rows);
    load_financial(&pg, DB, args.rows, SEED).context("loading the financial dataset")?;

    let (role, password) =
        create_gateway_role(&pg, DB).context("creating the gateway's upstream role")?;

    let mut opts = GatewayOptions::new(&pg, DB)
        .engine(engine)
        .admin_socket()
        .upstream_login(&role, &password)
        .policy(QUICKSTART_STATEMENT_POLICY)
        .extra_toml(QUICKSTART_ROLES);
    let page_port =
        portcullis_tests::free_port().context("picking a port for the reviewers' page")?;
    opts = opts.approvals(&format!(
        "{QUICKSTART_APPROVALS}\n[approvals.http]\nlisten = \"127.0.0.1:{page_port}\"\n"
    ));
    // The admin console, logged in to as the reviewer (an identity with the admin role
    // and the reviewer's name, so APPROVE and DENY work there too).
    let console_port =
        portcullis_tests::free_port().context("picking a port for the admin console")?;
    opts.identities.push(portcullis_tests::Identity::new(
        CONSOLE_USER,
        CONSOLE_SECRET,
        &["admin"],
    ));
    opts = opts.extra_toml(&format!(
        "[console]\nlisten = \"127.0.0.1:{console_port}\"\n"
    ));
    if !args.no_mask {
        opts = opts.extra_toml(QUICKSTART_MASK_POLICY);
    }
    let metrics_port =
        portcullis_tests::free_port().context("picking a port for the metrics listener")?;
    opts = opts.extra_toml(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\nprobe_database = \"{DB}\"\n"
    ));
    opts = opts.audit_signed("params = \"hash\"\n");
    opts.binary = Some(bin.clone());
    opts.port = args.port;
    let mut gw = Gateway::start(opts).context("starting the gateway")?;

    let uri = gw.agent_uri();
    println!();
    println!(
        "Portcullis is up ({} engine), in front of PostgreSQL on port {}.",
        engine, pg.port
    );
    println!();
    println!("  URI:    {uri}");
    println!(
        "  psql:   psql '{uri}' -c 'SELECT id, full_name, ssn, card_number FROM accounts LIMIT 5'"
    );
    println!("  held:   psql '{uri}' -c 'DELETE FROM transactions'   (waits for a reviewer)");
    println!("  review: http://127.0.0.1:{page_port}/   token: {QUICKSTART_REVIEWER_TOKEN}");
    println!(
        "  metrics: http://127.0.0.1:{metrics_port}/metrics   health: /healthz   ready: /readyz"
    );
    if let Some(sock) = gw.admin_socket() {
        println!(
            "          or: {} approvals list --admin-socket {}",
            bin.display(),
            sock.display()
        );
        println!(
            "              {} approvals approve ID --admin-socket {}   (deny ID --reason ..., edit ID --sql ...)",
            bin.display(),
            sock.display()
        );
    }
    println!(
        "  console: psql 'postgresql://{CONSOLE_USER}:{CONSOLE_SECRET}@127.0.0.1:{console_port}/portcullis' -c 'SHOW SESSIONS'"
    );
    println!(
        "           SHOW HELP lists the rest: SHOW STATS, SHOW APPROVALS, APPROVE ID, RELOAD, ..."
    );
    let audit = gw.audit_dir();
    println!(
        "  audit:  {}   (signed checkpoints, copies in {})",
        audit.display(),
        gw.audit_witness().display()
    );
    println!(
        "          public key: {}",
        gw.audit_public_key().unwrap_or("?")
    );
    println!(
        "          verify: {} audit verify {} --public-key '{}' --witness {}",
        bin.display(),
        audit.display(),
        gw.audit_public_key().unwrap_or("?"),
        gw.audit_witness().display()
    );
    println!(
        "          search: {} audit search {} --identity agent   (--table accounts, --masked, --json, ...)",
        bin.display(),
        audit.display()
    );
    println!("  config: {}", gw.config_path().display());
    println!("  log:    {}", gw.log_path().display());
    println!(
        "  pid:    {}   (stop it by hand and the quickstart says so; Enter starts it again)",
        gw.pid()
    );
    if let Some(sock) = gw.admin_socket() {
        println!(
            "  reload: edit the config, then: {} reload --admin-socket {}",
            bin.display(),
            sock.display()
        );
    }
    println!(
        "  direct: psql '{}'   (superuser, bypasses the gateway)",
        pg.superuser_uri(DB)
    );
    println!();
    println!(
        "Identities: agent / agent-secret, auditor / auditor-secret; {CONSOLE_USER} / {CONSOLE_SECRET} on the console. Ctrl-C stops everything."
    );
    // Wrapped by hand at about 90 columns so the summary reads in an ordinary terminal.
    println!(
        "Upstream the gateway logs in as `{role}` (CONNECT on `{DB}`, no privileges of its\n  \
         own) and runs each session as its [[role]]: the agent as `portcullis_write`\n  \
         (SELECT/INSERT/UPDATE/DELETE on accounts and transactions), the auditor as\n  \
         `portcullis_read` (SELECT on them); the server refuses anything else."
    );
    println!(
        "Statement policy (deploy/quickstart.toml): the agent reads and writes rows, the\n  \
         auditor reads; DROP, TRUNCATE, ALTER and DELETE/UPDATE without a restricting WHERE\n  \
         wait in the agent's session until a reviewer approves, denies or edits them\n  \
         (`held:` shows it; approve on the page or with the CLI under `review:`);\n  \
         built-in denials (COPY ... PROGRAM, server files, SET ROLE, ...) and anything no\n  \
         rule allows are refused."
    );
    if !args.no_mask {
        println!(
            "Masking: the agent sees SSNs, card and routing numbers, IBANs and e-mails masked\n  \
             (deploy/quickstart.toml); the auditor sees raw values."
        );
    }

    let sig = supervise(&mut gw, &bin);
    println!("\nquickstart: got signal {sig}, stopping the gateway and PostgreSQL");
    drop(gw);
    drop(pg);
    println!("quickstart: stopped; temporary directories removed");
    Ok(())
}

/// How often the quickstart looks at its gateway while it waits for a signal.
const WATCH: Duration = Duration::from_millis(200);

/// Blocks until SIGINT, SIGTERM or SIGHUP and returns it, watching the gateway meanwhile:
/// one that exits on its own (stopped by hand, or failed) is reaped at once, so no zombie
/// is left, and the quickstart says so, where its log is and how to start it again;
/// Enter starts it again with the same configuration and port.
///
/// The signals are blocked and taken with `sigtimedwait` instead of a handler, so
/// shutdown runs as ordinary code with destructors. They are blocked only now, after the
/// children started (a blocked mask is inherited), and before the thread that reads
/// standard input starts, so that thread never takes one.
fn supervise(gw: &mut Gateway, bin: &Path) -> i32 {
    // SAFETY: plain libc signal-set calls on a local, zero-initialised sigset_t.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let (tx, enter) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() || tx.send(()).is_err() {
                break;
            }
        }
    });
    let mut down = false;
    loop {
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: WATCH.as_nanos() as libc::c_long,
        };
        // SAFETY: `set` is initialised above; no siginfo is asked for.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            return sig;
        }
        if !down && let Some(status) = gw.exit_status() {
            down = true;
            println!();
            println!(
                "quickstart: the gateway exited on its own ({status}); PostgreSQL is still up."
            );
            println!("  its log:   {}", gw.log_path().display());
            println!(
                "  press Enter to start it again (same configuration and port), Ctrl-C to stop everything"
            );
            println!(
                "  or run it yourself: {} serve --config {}   (the quickstart removes that directory when it stops)",
                bin.display(),
                gw.config_path().display()
            );
        }
        let pressed = enter.try_iter().count() > 0;
        if down && pressed {
            println!("quickstart: starting the gateway again");
            match gw.restart() {
                Ok(()) => {
                    down = false;
                    println!("quickstart: the gateway is up again: {}", gw.agent_uri());
                }
                Err(e) => println!("quickstart: it did not start: {e}\n  press Enter to try again"),
            }
        }
    }
}
