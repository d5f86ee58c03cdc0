//! The shared approvals store against a real PostgreSQL 15: compare-and-set updates,
//! ids unique across gateways, and two hubs on one database, where a request held by one
//! gateway is decided through another and reaches its waiting session through
//! LISTEN/NOTIFY, also after the listener lost its connection.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::connect;
use portcullis::approvals::hub::Resolution;
use portcullis::approvals::store::{PostgresStore, Store};
use portcullis::approvals::{Action, Approvals, NewRequest, Origin, Settings, Status, Ticket};
use portcullis_tests::{PgCluster, PgOptions};

const DB: &str = "approvals";

fn cluster(opts: PgOptions) -> PgCluster {
    let pg = PgCluster::start(opts).expect("start PostgreSQL");
    pg.create_database(DB).expect("create database");
    pg
}

fn url(pg: &PgCluster) -> String {
    pg.direct_uri(DB)
}

fn new(gateway: &str, sql: &str) -> NewRequest {
    NewRequest {
        origin: Origin {
            gateway: gateway.into(),
            session: format!("{gateway}-s1"),
            identity: "agent".into(),
            roles: vec!["agent".into()],
            source: "127.0.0.1:40000".into(),
            application_name: "psql".into(),
            database: "app".into(),
        },
        sql: sql.into(),
        params: vec![],
        protocol: "simple".into(),
        rule: Some("hold-deletes".into()),
        message: "deletes need a reviewer".into(),
        recent: vec!["SELECT 1".into()],
        estimate: None,
        preview: None,
        approvers: 1,
        timeout_secs: 120,
        grant: None,
    }
}

async fn open(pg: &PgCluster) -> PostgresStore {
    PostgresStore::open(&url(pg), None)
        .await
        .unwrap_or_else(|e| panic!("open the store: {e}"))
}

/// A hub named `gateway` on the cluster's database, running on this runtime.
async fn hub(pg: &PgCluster, gateway: &str) -> Approvals {
    let store = Store::Postgres(open(pg).await);
    let (handle, hub) = Approvals::new(
        Settings {
            gateway: gateway.into(),
            notice_interval: Duration::from_secs(10),
            default_timeout: Duration::from_secs(120),
            preview_max: Duration::from_secs(120),
            recent: 3,
            page_url: None,
        },
        store,
    );
    tokio::spawn(hub.run());
    handle
}

/// The superuser's client, for looking at and breaking the store's connections.
async fn admin(pg: &PgCluster, db: &str) -> tokio_postgres::Client {
    connect(&pg.direct_uri(db)).await
}

async fn outcome(t: Ticket, within: Duration) -> Resolution {
    match tokio::time::timeout(within, t.outcome).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => panic!("the ticket's hub went away"),
        Err(_) => panic!("the ticket did not resolve within {within:?}"),
    }
}

async fn approve(through: &Approvals, t: &Ticket, reviewer: &str) {
    let r = through
        .decide(
            t.request.id,
            reviewer,
            Action::Approve {
                reason: Some("looks right".into()),
            },
            Some(t.request.digest.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("approve #{}: {e}", t.request.id));
    assert_eq!(r.status, Status::Approved);
}

/// Terminates the backends of `application` and waits until they are gone; returns how
/// many there were.
async fn terminate(admin: &tokio_postgres::Client, application: &str) -> usize {
    let pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
            &[&application],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) pid",
            &[&pids],
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            Instant::now() < deadline,
            "backends of {application} outlived their termination"
        );
        if left == 0 {
            return pids.len();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn compare_and_set_and_ids_unique_across_gateways() {
    let pg = cluster(PgOptions::default());
    // Four gateways starting at once on an empty database: one creates the table, the
    // others wait on the advisory lock and find it there.
    let (a, b, c, d) = tokio::join!(open(&pg), open(&pg), open(&pg), open(&pg));
    drop((c, d));
    let (mut a, mut b) = (Store::Postgres(a), Store::Postgres(b));

    let r1 = a.insert(&new("gw-a", "DELETE FROM t")).await.unwrap();
    let r2 = b.insert(&new("gw-b", "DELETE FROM u")).await.unwrap();
    assert_ne!(r1.id, r2.id);
    assert_eq!(r1.status, Status::Pending);
    assert_eq!(b.get(r1.id).await.unwrap().as_ref(), Some(&r1));

    // Both gateways read version 0; the first write wins, the second is refused.
    let approved = r1
        .apply("alice", &Action::Approve { reason: None }, Some(&r1.digest))
        .unwrap();
    let denied = r1
        .apply(
            "bob",
            &Action::Deny {
                reason: "no".into(),
            },
            None,
        )
        .unwrap();
    assert!(b.update(&approved).await.unwrap());
    assert!(!a.update(&denied).await.unwrap(), "a stale write won");
    let stored = a.get(r1.id).await.unwrap().unwrap();
    assert_eq!(stored.status, Status::Approved);
    assert_eq!(stored.version, 1);
    assert_eq!(stored.votes[0].reviewer, "alice");
    assert!(a.get(r1.id + 1_000_000).await.unwrap().is_none());

    // Ids from two gateways inserting at once never collide.
    let many = |mut s: Store, g: &'static str| async move {
        let mut ids = Vec::new();
        for i in 0..40 {
            ids.push(
                s.insert(&new(g, &format!("DELETE FROM t{i}")))
                    .await
                    .unwrap()
                    .id,
            );
        }
        ids
    };
    let (ia, ib) = tokio::join!(
        many(Store::Postgres(open(&pg).await), "gw-a"),
        many(Store::Postgres(open(&pg).await), "gw-b")
    );
    let all: HashSet<i64> = ia.iter().chain(&ib).copied().collect();
    assert_eq!(all.len(), 80, "duplicate ids across gateways");

    // Newest first; the queue is only what is pending.
    let pending = a.list(true, 1000).await.unwrap();
    assert_eq!(pending.len(), 81);
    assert!(pending.windows(2).all(|w| w[0].id > w[1].id));
    assert!(pending.iter().all(|r| r.status == Status::Pending));
    assert!(!pending.iter().any(|r| r.id == r1.id));
    let everything = b.list(false, 1000).await.unwrap();
    assert_eq!(everything.len(), 82);
    assert_eq!(b.list(false, 5).await.unwrap().len(), 5);

    // The stored document carries its row's id and is JSON a DBA can query.
    let su = admin(&pg, DB).await;
    let wrong: i64 = su
        .query_one(
            "SELECT count(*) FROM portcullis.approval_requests
             WHERE (body::jsonb->>'id')::bigint <> id OR body::jsonb->>'status' <> status",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_decision_through_another_gateway_reaches_the_waiting_session() {
    let pg = cluster(PgOptions::default());
    let a = hub(&pg, "gw-a").await;
    let b = hub(&pg, "gw-b").await;
    let mut a_events = a.subscribe();

    let t = a
        .submit(new("gw-a", "DELETE FROM accounts WHERE id = 7"))
        .await
        .unwrap();
    // B's reviewer sees A's request in the shared queue.
    let queue = b.list(true, 10).await.unwrap();
    assert_eq!(
        queue.iter().map(|r| r.id).collect::<Vec<_>>(),
        [t.request.id]
    );
    assert_eq!(queue[0].new.origin.gateway, "gw-a");

    let started = Instant::now();
    let id = t.request.id;
    approve(&b, &t, "alice").await;
    match outcome(t, Duration::from_secs(5)).await {
        Resolution::Run {
            sql,
            edited,
            reviewers,
        } => {
            assert_eq!(sql, "DELETE FROM accounts WHERE id = 7");
            assert!(!edited);
            assert_eq!(reviewers, ["alice"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}: not pushed by NOTIFY",
        started.elapsed()
    );
    // A's subscribers (its page, its webhooks) hear of the decision made elsewhere.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), a_events.recv())
            .await
            .expect("no decided event on gateway A")
            .unwrap();
        if ev.request.id == id && ev.request.status == Status::Approved {
            break;
        }
    }

    // A denial and an edit travel the same way.
    let t = a.submit(new("gw-a", "DROP TABLE accounts")).await.unwrap();
    b.decide(
        t.request.id,
        "bob",
        Action::Deny {
            reason: "not in production".into(),
        },
        Some(t.request.digest.clone()),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome(t, Duration::from_secs(5)).await,
        Resolution::Denied {
            reviewer: "bob".into(),
            reason: "not in production".into()
        }
    );
    let t = a.submit(new("gw-a", "DELETE FROM accounts")).await.unwrap();
    b.decide(
        t.request.id,
        "carol",
        Action::Edit {
            sql: "DELETE FROM accounts WHERE closed".into(),
            reason: None,
        },
        Some(t.request.digest.clone()),
    )
    .await
    .unwrap();
    assert!(matches!(
        outcome(t, Duration::from_secs(5)).await,
        Resolution::Run { edited: true, sql, .. } if sql == "DELETE FROM accounts WHERE closed"
    ));

    // A stale digest from another gateway's page is refused there too.
    let t = a.submit(new("gw-a", "TRUNCATE accounts")).await.unwrap();
    let stale = b
        .decide(
            t.request.id,
            "alice",
            Action::Approve { reason: None },
            Some("00".repeat(32)),
        )
        .await;
    assert!(stale.is_err(), "{stale:?}");
    assert_eq!(
        a.get(t.request.id).await.unwrap().unwrap().status,
        Status::Pending
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_listener_that_lost_its_connection_reconnects_and_catches_up() {
    let pg = cluster(PgOptions::default());
    let a = hub(&pg, "gw-a").await;
    let b = hub(&pg, "gw-b").await;
    let su = admin(&pg, "postgres").await;

    let t = a
        .submit(new("gw-a", "DELETE FROM t WHERE id = 1"))
        .await
        .unwrap();
    // No listener can come back until the database lets connections in again, so the
    // decision below is made while nobody listens: only the catch-up can deliver it.
    su.batch_execute(&format!("ALTER DATABASE {DB} WITH ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    let killed = terminate(&su, "portcullis approvals listener").await;
    assert_eq!(killed, 2, "one listener per hub");
    approve(&b, &t, "alice").await;
    let mut outcome_fut = Box::pin(tokio::time::timeout(Duration::from_secs(30), t.outcome));
    assert!(
        tokio::time::timeout(Duration::from_millis(700), &mut outcome_fut)
            .await
            .is_err(),
        "resolved while no listener was connected"
    );
    su.batch_execute(&format!("ALTER DATABASE {DB} WITH ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let r = outcome_fut
        .await
        .expect("the catch-up after reconnecting never delivered the decision")
        .unwrap();
    assert!(matches!(r, Resolution::Run { .. }), "{r:?}");

    // Listening again: the next decision is pushed as before.
    let t = a
        .submit(new("gw-a", "DELETE FROM t WHERE id = 2"))
        .await
        .unwrap();
    let started = Instant::now();
    approve(&b, &t, "alice").await;
    outcome(t, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The writers too: each hub's next operation finds its connection gone and opens
    // another (a read is retried on the fresh one).
    assert_eq!(terminate(&su, "portcullis approvals").await, 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.list(true, 10).await.unwrap().len(), 0);
    let t = a
        .submit(new("gw-a", "DELETE FROM t WHERE id = 3"))
        .await
        .unwrap();
    let _ = b.list(true, 10).await;
    approve(&b, &t, "alice").await;
    outcome(t, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_and_refused_stores_say_what_failed() {
    let pg = cluster(PgOptions::default());
    let err = |url: String| async move {
        match PostgresStore::open(&url, None).await {
            Ok(_) => panic!("opened {url}"),
            Err(e) => e.to_string(),
        }
    };
    let wrong_password = format!(
        "postgresql://{}:not-the-password@{}:{}/{DB}?sslmode=disable",
        pg.upstream_user, pg.host, pg.port
    );
    let e = err(wrong_password).await;
    assert!(
        e.starts_with(&format!(
            "approvals store (PostgreSQL): {}:{}/{DB}: cannot connect: ",
            pg.host, pg.port
        )),
        "{e}"
    );
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("not-the-password"), "{e}");

    let e = err(pg.direct_uri("no_such_db")).await;
    assert!(e.contains("database \"no_such_db\" does not exist"), "{e}");

    // A role that may not create the schema is told what it needs.
    let su = admin(&pg, DB).await;
    su.batch_execute(
        "CREATE ROLE limited LOGIN PASSWORD 'limited-pw'; REVOKE CREATE ON DATABASE approvals FROM PUBLIC",
    )
    .await
    .unwrap();
    let limited = format!(
        "postgresql://limited:limited-pw@{}:{}/{DB}?sslmode=disable",
        pg.host, pg.port
    );
    let e = err(limited.clone()).await;
    assert!(e.contains("creating portcullis.approval_requests"), "{e}");
    assert!(e.contains("needs CREATE on the database"), "{e}");
    // Once a DBA made it and granted what the docs say, that role runs the store.
    open(&pg).await;
    su.batch_execute(
        "GRANT USAGE ON SCHEMA portcullis TO limited;
         GRANT SELECT, INSERT, UPDATE ON portcullis.approval_requests TO limited;
         GRANT USAGE ON SEQUENCE portcullis.approval_requests_id_seq TO limited",
    )
    .await
    .unwrap();
    let mut s = PostgresStore::open(&limited, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r = s.insert(&new("gw-a", "DELETE FROM t")).await.unwrap();
    assert_eq!(s.get(r.id).await.unwrap().unwrap().id, r.id);
}

/// A throwaway CA and a server certificate for 127.0.0.1 / localhost, readable by the
/// server.
fn certs(dir: &Path) {
    let sh = format!(
        "set -e; cd {d}
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=store-test-ca 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other-ca.pem -days 2 -subj /CN=someone-else 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null
chmod 600 server.key
if [ \"$(id -u)\" = 0 ]; then chown postgres server.key server.pem; fi
chmod 755 .",
        d = dir.display()
    );
    let out = Command::new("sh")
        .args(["-c", &sh])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn tls_to_the_store_is_verified_against_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let pg = cluster(PgOptions {
        extra_conf: vec![
            "ssl = on".into(),
            format!(
                "ssl_cert_file = '{}'",
                dir.path().join("server.pem").display()
            ),
            format!(
                "ssl_key_file = '{}'",
                dir.path().join("server.key").display()
            ),
        ],
        ..PgOptions::default()
    });
    let plain = pg.direct_uri(DB);
    let tls_url = plain.replace("?sslmode=disable", "");
    let ca = dir.path().join("ca.pem");

    let mut s = PostgresStore::open(&tls_url, Some(&ca))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.insert(&new("gw-a", "DELETE FROM t")).await.unwrap();
    let su = admin(&pg, DB).await;
    let over_tls: Vec<bool> = su
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name LIKE 'portcullis approvals%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(over_tls, [true, true], "writer and listener both on TLS");

    // A server whose certificate another CA signed is refused, and said to be.
    let e = match PostgresStore::open(&tls_url, Some(&dir.path().join("other-ca.pem"))).await {
        Ok(_) => panic!("a certificate from the wrong CA was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("cannot connect: error performing TLS handshake"),
        "{e}"
    );
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // sslmode=require without a CA encrypts without checking, as libpq does.
    PostgresStore::open(&format!("{tls_url}?sslmode=require"), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}
