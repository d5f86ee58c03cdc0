//! The reviewers' page in a real browser (Debian's chromium through playwright-core):
//! signing in, the queue updating live, and approve, deny and edit reaching the session
//! that holds the statement.
//!
//! - `the_page_decides_what_the_hub_holds`: the page, the API and the hub of the gateway
//!   crate in this process, requests submitted as the relay submits them; every kind of
//!   decision and what the held session is told.
//! - `a_held_psql_statement_runs_once_approved_on_the_page`: the whole path with the
//!   `portcullis` binary: psql's `DROP TABLE` waits in its session until the test clicks
//!   Approve, then completes; another, denied on the page, fails with the reason.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{DB, Env, psql_at};
use portcullis::approvals::config::ReviewerConfig;
use portcullis::approvals::model::{Estimate, Origin, Param, Preview};
use portcullis::approvals::store::{SqliteStore, Store};
use portcullis::approvals::{Action, Approvals, NewRequest, Resolution, Settings, Ticket};
use portcullis_tests::{Browser, Engine, PgOptions, free_port};
use sha2::{Digest, Sha256};

const TOKEN: &str = "alice-reviewer-token-4f1c2e";

fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Where screenshots go, to look at after a run: `target/browser-shots`.
fn shot(name: &str) -> std::path::PathBuf {
    let dir = portcullis_tests::gateway::workspace_root().join("target/browser-shots");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.png"))
}

fn browser() -> Browser {
    Browser::start().unwrap_or_else(|e| panic!("start the browser: {e}"))
}

/// Signs in on the page at `base`, first with a wrong token (refused, stays on the
/// form), then with `token`.
fn sign_in(b: &mut Browser, base: &str, token: &str) {
    b.goto(base).unwrap();
    b.wait("#login #token").unwrap();
    b.fill("#token", "not-a-token").unwrap();
    b.click("#sign-in").unwrap();
    b.wait("#login-error:text('belongs to no')").unwrap();
    b.fill("#token", token).unwrap();
    b.click("#sign-in").unwrap();
    b.wait("#whoami:text('Signed in as alice')").unwrap();
    b.wait("#stream-state[data-state=live]").unwrap();
}

fn card(id: i64) -> String {
    format!("#queue article[data-id='{id}']")
}

fn decided(id: i64, status: &str) -> String {
    format!("#decided article[data-id='{id}'][data-status='{status}']")
}

/// No script error and no failed request, except the 401 of [`sign_in`]'s wrong token.
fn assert_no_page_errors(b: &mut Browser) {
    let mut errors = b.page_errors().unwrap();
    if let Some(i) = errors.iter().position(|e| e.contains("status of 401")) {
        errors.remove(i);
    }
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
}

// --- in process: the page against the gateway crate's hub

fn request(sql: &str, approvers: u32) -> NewRequest {
    NewRequest {
        origin: Origin {
            gateway: "g1".into(),
            session: "42".into(),
            identity: "agent".into(),
            roles: vec!["agent".into()],
            source: "127.0.0.1:50123".into(),
            application_name: "nightly-cleanup".into(),
            database: "bank".into(),
        },
        sql: sql.into(),
        params: vec![],
        protocol: "simple".into(),
        rule: Some("hold-destructive".into()),
        message: "a write without a restricting WHERE needs a reviewer".into(),
        recent: vec!["SELECT count(*) FROM transactions".into(), "BEGIN".into()],
        estimate: None,
        preview: None,
        approvers,
        timeout_secs: 300,
        grant: None,
    }
}

struct InProcess {
    rt: tokio::runtime::Runtime,
    approvals: Arc<Approvals>,
    base: String,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start() -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let store = Store::Sqlite(SqliteStore::open(&dir.path().join("a.sqlite")).unwrap());
        let (approvals, hub) = Approvals::new(
            Settings {
                gateway: "g1".into(),
                notice_interval: Duration::from_secs(10),
                default_timeout: Duration::from_secs(300),
                preview_max: Duration::from_secs(300),
                recent: 5,
                page_url: None,
            },
            store,
        );
        let approvals = Arc::new(approvals);
        rt.spawn(hub.run());
        let listener =
            portcullis::control::http::bind(&portcullis::approvals::config::HttpConfig {
                listen: "127.0.0.1:0".into(),
                public_url: None,
            })
            .unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let reviewers = [ReviewerConfig {
            name: "alice".into(),
            token_sha256: token_sha256(TOKEN),
        }];
        let app = portcullis::control::http::router(approvals.clone(), &reviewers);
        rt.spawn(portcullis::control::http::serve(listener, app));
        InProcess {
            rt,
            approvals,
            base,
            _dir: dir,
        }
    }

    fn submit(&self, new: NewRequest) -> Ticket {
        self.rt.block_on(self.approvals.submit(new)).unwrap()
    }

    fn outcome(&self, t: Ticket) -> Resolution {
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), t.outcome).await })
            .expect("the decision reaches the held session within 10s")
            .unwrap()
    }
}

#[test]
fn the_page_decides_what_the_hub_holds() {
    let hub = InProcess::start();
    // Waiting before the page opens.
    let drop_table = hub.submit(request("DROP TABLE accounts", 1));
    let mut b = browser();
    sign_in(&mut b, &hub.base, TOKEN);

    let a = drop_table.request.id;
    b.wait(&format!(
        "{} button[data-action=approve][data-id='{a}']",
        card(a)
    ))
    .unwrap();
    let text = |b: &mut Browser, field: &str| {
        b.text(&format!("{} [data-field={field}]", card(a)))
            .unwrap()
    };
    assert_eq!(text(&mut b, "sql"), "DROP TABLE accounts");
    assert_eq!(text(&mut b, "identity"), "agent");
    assert_eq!(text(&mut b, "application"), "nightly-cleanup");
    assert_eq!(text(&mut b, "database"), "bank");
    assert_eq!(text(&mut b, "session"), "42");
    assert!(text(&mut b, "rule").starts_with("hold-destructive: a write without"));
    assert!(text(&mut b, "recent").contains("SELECT count(*) FROM transactions"));
    assert_eq!(text(&mut b, "approvals"), "Approvals: 0 of 1 required");
    // How long it has waited, counting.
    let waited = b.text(&format!("{} .waited", card(a))).unwrap();
    assert!(waited.starts_with("waiting "), "{waited}");

    // Arrives while the page is open, with parameters and an estimate.
    let mut new = request("DELETE FROM transactions WHERE account_id = $1", 1);
    new.protocol = "extended".into();
    new.params = vec![
        Param {
            value: Some("1042".into()),
            binary: false,
        },
        Param {
            value: None,
            binary: false,
        },
    ];
    new.estimate = Some(Estimate {
        rows: Some(1234.0),
        node: Some("Delete".into()),
        unavailable: None,
    });
    new.preview = Some(Preview {
        rows: Some(12),
        tag: Some("DELETE 12".into()),
        error: None,
        holds_locks_secs: 300,
    });
    let delete = hub.submit(new);
    let d = delete.request.id;
    b.wait(&format!(
        "{} button[data-action=deny][data-id='{d}']",
        card(d)
    ))
    .unwrap();
    let params = b.text(&format!("{} [data-field=params]", card(d))).unwrap();
    assert!(
        params.contains("$1 = 1042") && params.contains("$2 = NULL"),
        "{params}"
    );
    let estimate = b
        .text(&format!("{} [data-field=estimate]", card(d)))
        .unwrap();
    assert_eq!(estimate, "Delete, about 1234 rows");
    let preview = b
        .text(&format!("{} [data-field=preview]", card(d)))
        .unwrap();
    assert_eq!(preview, "DELETE 12, 12 rows");
    assert_eq!(b.text("#pending-count").unwrap(), "2");
    b.screenshot(&shot("queue")).unwrap();

    // Approve: the held session is told to run it, and the card shows the outcome.
    b.click(&format!("button[data-action=approve][data-id='{a}']"))
        .unwrap();
    assert_eq!(
        hub.outcome(drop_table),
        Resolution::Run {
            sql: "DROP TABLE accounts".into(),
            edited: false,
            reviewers: vec!["alice".into()],
        }
    );
    b.wait(&decided(a, "approved")).unwrap();
    assert!(
        b.text(&format!("{} [data-field=outcome]", decided(a, "approved")))
            .unwrap()
            .starts_with("Approved by alice")
    );
    b.wait_gone(&card(a)).unwrap();

    // Deny asks for a reason first.
    b.click(&format!("button[data-action=deny][data-id='{d}']"))
        .unwrap();
    b.wait(&format!("[data-error-for='{d}']:text('needs a reason')"))
        .unwrap();
    b.fill(
        &format!("textarea[data-field=reason][data-id='{d}']"),
        "that account is under audit",
    )
    .unwrap();
    b.click(&format!("button[data-action=deny][data-id='{d}']"))
        .unwrap();
    assert_eq!(
        hub.outcome(delete),
        Resolution::Denied {
            reviewer: "alice".into(),
            reason: "that account is under audit".into(),
        }
    );
    b.wait(&decided(d, "denied")).unwrap();

    // Edit: the reviewer's statement runs instead.
    let truncate = hub.submit(request("DELETE FROM sessions", 1));
    let e = truncate.request.id;
    b.click(&format!("button[data-action=edit][data-id='{e}']"))
        .unwrap();
    let editor = format!("textarea[data-field=sql][data-id='{e}']");
    b.wait(&editor).unwrap();
    let edited = "DELETE FROM sessions WHERE expires_at < now()";
    b.fill(&editor, edited).unwrap();
    b.click(&format!("button[data-action=submit-edit][data-id='{e}']"))
        .unwrap();
    assert_eq!(
        hub.outcome(truncate),
        Resolution::Run {
            sql: edited.into(),
            edited: true,
            reviewers: vec!["alice".into()],
        }
    );
    b.wait(&decided(e, "edited")).unwrap();

    // Someone else's edit shows live and is marked, and approving then approves what is
    // shown (the new digest): the two approvals this one needs are bob's edit and alice's.
    let two = hub.submit(request("UPDATE accounts SET frozen = true", 2));
    let t = two.request.id;
    b.wait(&card(t)).unwrap();
    let rewritten = "UPDATE accounts SET frozen = true WHERE id = 7";
    hub.rt
        .block_on(hub.approvals.decide(
            t,
            "bob",
            Action::Edit {
                sql: rewritten.into(),
                reason: Some("only the one account".into()),
            },
            Some(two.request.digest.clone()),
        ))
        .unwrap();
    b.wait(&format!(
        "{} [data-field=effective-sql]:text('WHERE id = 7')",
        card(t)
    ))
    .unwrap();
    b.wait(&format!("{} p.changed:text('Changed since')", card(t)))
        .unwrap();
    assert_eq!(
        b.text(&format!("{} [data-field=approvals]", card(t)))
            .unwrap(),
        "Approvals: 1 of 2 required"
    );
    b.click(&format!("button[data-action=approve][data-id='{t}']"))
        .unwrap();
    assert_eq!(
        hub.outcome(two),
        Resolution::Run {
            sql: rewritten.into(),
            edited: true,
            reviewers: vec!["bob".into(), "alice".into()],
        }
    );

    // Decided elsewhere (the admin socket, another page): this page follows.
    let elsewhere = hub.submit(request("DROP TABLE audit_log", 1));
    let x = elsewhere.request.id;
    b.wait(&card(x)).unwrap();
    hub.rt
        .block_on(hub.approvals.decide(
            x,
            "bob",
            Action::Deny {
                reason: "never".into(),
            },
            None,
        ))
        .unwrap();
    b.wait(&decided(x, "denied")).unwrap();
    b.wait("#queue-empty").unwrap();
    assert_eq!(b.text("#pending-count").unwrap(), "0");
    b.screenshot(&shot("decided")).unwrap();
    assert_no_page_errors(&mut b);

    // The token is kept for the tab: a reload signs straight in.
    b.goto(&hub.base).unwrap();
    b.wait("#whoami:text('Signed in as alice')").unwrap();
    b.click("#sign-out").unwrap();
    b.wait("#login #token").unwrap();
    assert_no_page_errors(&mut b);
}

// --- the whole path: psql through the gateway binary

const HOLD_DDL: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "hold-ddl"
class = ["ddl"]
action = "hold"
message = "schema changes need a reviewer"
"#;

#[test]
fn a_held_psql_statement_runs_once_approved_on_the_page() {
    let port = free_port().unwrap();
    let approvals = format!(
        "timeout_secs = 120\nnotice_interval_secs = 1\n\n[approvals.http]\nlisten = \"127.0.0.1:{port}\"\n\n[[approvals.reviewer]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n",
        token_sha256(TOKEN)
    );
    let env = Env::start_with(Engine::Auto, PgOptions::default(), |o| {
        o.policy(HOLD_DDL).approvals(&approvals)
    });
    env.ok(env.psql_direct().args([
        "-c",
        "CREATE TABLE doomed (id int); CREATE TABLE kept (id int)",
    ]));
    let base = format!("http://127.0.0.1:{port}/");
    assert!(
        env.gw.log().contains("reviewers' page ready"),
        "{}",
        env.gw.log_tail(20)
    );

    let mut b = browser();
    sign_in(&mut b, &base, TOKEN);

    // The agent's statement waits in its session.
    let started = Instant::now();
    let psql = psql_at(&env.uri())
        .args(["-At", "-c", "DROP TABLE doomed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    let button = "#queue button[data-action=approve]";
    if let Err(e) = b.wait(button) {
        let out = psql.wait_with_output().unwrap();
        panic!(
            "no held statement on the page ({e})\npsql: {}{}\n--- gateway log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            env.gw.log_tail(30)
        );
    }
    let id = b.attr(button, "data-id").unwrap().expect("data-id");
    let id: i64 = id.parse().unwrap();
    assert_eq!(
        b.text(&format!("{} [data-field=sql]", card(id))).unwrap(),
        "DROP TABLE doomed"
    );
    assert_eq!(
        b.text(&format!("{} [data-field=identity]", card(id)))
            .unwrap(),
        "agent"
    );
    assert_eq!(
        b.text(&format!("{} [data-field=database]", card(id)))
            .unwrap(),
        DB
    );
    b.screenshot(&shot("held-psql")).unwrap();
    assert!(
        exists(&env, "doomed"),
        "the statement ran before anyone approved it"
    );

    b.click(&format!("button[data-action=approve][data-id='{id}']"))
        .unwrap();
    b.wait(&decided(id, "approved")).unwrap();
    let out = wait_for(psql, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "psql failed after the approval: {}\n--- gateway log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        env.gw.log_tail(30)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DROP TABLE"),
        "{out:?}"
    );
    assert!(
        !exists(&env, "doomed"),
        "approved, but the table is still there"
    );
    assert!(started.elapsed() < Duration::from_secs(90));

    // A denial on the page: psql gets an error with the reviewer's reason.
    let psql = psql_at(&env.uri())
        .args(["-At", "-c", "DROP TABLE kept"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    let button = "#queue button[data-action=deny]";
    b.wait(button).unwrap();
    let id: i64 = b.attr(button, "data-id").unwrap().unwrap().parse().unwrap();
    b.fill(
        &format!("textarea[data-field=reason][data-id='{id}']"),
        "kept stays",
    )
    .unwrap();
    b.click(&format!("button[data-action=deny][data-id='{id}']"))
        .unwrap();
    b.wait(&decided(id, "denied")).unwrap();
    let out = wait_for(psql, Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a denied statement succeeded: {out:?}"
    );
    assert!(
        err.contains("kept stays"),
        "the reason is not in psql's error: {err}"
    );
    assert!(exists(&env, "kept"), "denied, but the table is gone");
    assert_no_page_errors(&mut b);
}

fn exists(env: &Env, table: &str) -> bool {
    let out = env.ok(env.psql_direct().args([
        "-At",
        "-c",
        &format!("SELECT to_regclass('public.{table}') IS NOT NULL"),
    ]));
    String::from_utf8_lossy(&out.stdout).trim() == "t"
}

/// Waits for a spawned client, killing it after `limit`.
fn wait_for(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
