//! The data path as tokio-postgres drives it: the extended protocol with prepared
//! statements and binary results, cancellation through the gateway, pipelining, COPY in
//! both directions, errors inside transactions and notifications between sessions.

mod common;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{Env, connect, rt};
use futures_util::{SinkExt, StreamExt, TryStreamExt, future::join_all, pin_mut};
use portcullis_tests::{Engine, per_engine};
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};

per_engine!(
    prepared_statements_reused,
    binary_results_of_several_types,
    cancel_long_query,
    pipelined_queries,
    copy_in_and_out,
    error_in_transaction_then_recover,
    notifications_between_sessions,
    many_sessions_at_once,
);

fn prepared_statements_reused(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let st = c
            .prepare("SELECT $1::int8 * 2, $2::text || '!'")
            .await
            .unwrap();
        for i in 0..200i64 {
            let row = c.query_one(&st, &[&i, &format!("n{i}")]).await.unwrap();
            assert_eq!(row.get::<_, i64>(0), i * 2);
            assert_eq!(row.get::<_, String>(1), format!("n{i}!"));
        }
        // Unnamed statements (query with params, no explicit prepare) also work.
        let row = c
            .query_one("SELECT $1::int4 + $2::int4", &[&40i32, &2i32])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    });
}

fn binary_results_of_several_types(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let row = c
            .query_one(
                "SELECT true, 7::int2, -8::int4, 9000000000::int8, 1.5::float4, \
                 2.25::float8, 'text ü'::text, '\\x00ff10'::bytea, \
                 ARRAY[1, 2, NULL]::int4[], NULL::text, \
                 '2024-02-29 12:00:00+00'::timestamptz, '10.1.2.3'::inet, 'x'::\"char\"",
                &[],
            )
            .await
            .unwrap();
        assert!(row.get::<_, bool>(0));
        assert_eq!(row.get::<_, i16>(1), 7);
        assert_eq!(row.get::<_, i32>(2), -8);
        assert_eq!(row.get::<_, i64>(3), 9_000_000_000);
        assert_eq!(row.get::<_, f32>(4), 1.5);
        assert_eq!(row.get::<_, f64>(5), 2.25);
        assert_eq!(row.get::<_, &str>(6), "text ü");
        assert_eq!(row.get::<_, Vec<u8>>(7), vec![0, 255, 16]);
        assert_eq!(
            row.get::<_, Vec<Option<i32>>>(8),
            vec![Some(1), Some(2), None]
        );
        assert_eq!(row.get::<_, Option<&str>>(9), None);
        let t = row.get::<_, SystemTime>(10);
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_709_208_000
        );
        assert_eq!(
            row.get::<_, std::net::IpAddr>(11),
            "10.1.2.3".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(row.get::<_, i8>(12), b'x' as i8);
        // Binary parameters round-trip too.
        let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let row = c
            .query_one("SELECT $1::bytea, length($1::bytea)", &[&blob])
            .await
            .unwrap();
        assert_eq!(row.get::<_, Vec<u8>>(0), blob);
        assert_eq!(row.get::<_, i32>(1), 100_000);
    });
}

fn cancel_long_query(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let token = c.cancel_token();
        let started = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await
        });
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            c.simple_query("SELECT pg_sleep(30)"),
        )
        .await
        .expect("the cancelled query still ran after 20s");
        canceller
            .await
            .unwrap()
            .expect("CancelRequest through the gateway");
        let e = r.expect_err("pg_sleep(30) was not cancelled");
        assert_eq!(e.code(), Some(&SqlState::QUERY_CANCELED), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // The session survives its cancelled query.
        let row = c.query_one("SELECT 1::int4", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 1);
    });
}

fn pipelined_queries(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let st = c
            .prepare("SELECT $1::int4, repeat('y', $1::int4)")
            .await
            .unwrap();
        // All futures are polled together, so tokio-postgres sends every Bind/Execute before
        // reading any result: the gateway sees a deep pipeline.
        let futs = (0..300i32).map(|i| {
            let c = &c;
            let st = &st;
            async move { c.query_one(st, &[&i]).await }
        });
        let rows = join_all(futs).await;
        for (i, r) in rows.into_iter().enumerate() {
            let r = r.unwrap();
            assert_eq!(r.get::<_, i32>(0), i as i32);
            assert_eq!(r.get::<_, &str>(1).len(), i);
        }
    });
}

fn copy_in_and_out(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        c.batch_execute("CREATE TABLE cp (id int, body text)")
            .await
            .unwrap();
        let sink = c.copy_in("COPY cp FROM STDIN").await.unwrap();
        pin_mut!(sink);
        let mut expected = Vec::new();
        for chunk in 0..50 {
            let mut buf = String::new();
            for i in 0..1000 {
                let id = chunk * 1000 + i;
                buf.push_str(&format!("{id}\tline {id} with\\ttab and ünïcode\n"));
            }
            expected.extend_from_slice(buf.as_bytes());
            sink.send(Bytes::from(buf)).await.unwrap();
        }
        let n = sink.finish().await.unwrap();
        assert_eq!(n, 50_000);

        let stream = c
            .copy_out("COPY (SELECT * FROM cp ORDER BY id) TO STDOUT")
            .await
            .unwrap();
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        let got: Vec<u8> = chunks.concat();
        assert!(got == expected, "COPY out differs from what went in");

        // A failing COPY IN (bad data) reports the error and leaves the session usable.
        let sink = c.copy_in("COPY cp FROM STDIN").await.unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from_static(b"not-a-number\tx\n"))
            .await
            .unwrap();
        let e = sink.finish().await.expect_err("bad COPY data accepted");
        assert_eq!(e.code(), Some(&SqlState::INVALID_TEXT_REPRESENTATION));
        let row = c.query_one("SELECT count(*) FROM cp", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 50_000);
    });
}

fn error_in_transaction_then_recover(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let mut c = connect(&env.conninfo()).await;
        c.batch_execute("CREATE TABLE u (id int PRIMARY KEY)")
            .await
            .unwrap();
        let tx = c.transaction().await.unwrap();
        tx.execute("INSERT INTO u VALUES (1)", &[]).await.unwrap();
        let e = tx
            .execute("INSERT INTO u VALUES (1)", &[])
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::UNIQUE_VIOLATION));
        let e = tx.execute("SELECT 1", &[]).await.unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
        tx.rollback().await.unwrap();
        let row = c.query_one("SELECT count(*) FROM u", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 0);
        // An error in the middle of a simple-query batch stops the rest of the batch only.
        let e = c
            .batch_execute("INSERT INTO u VALUES (5); SELECT 1/0; INSERT INTO u VALUES (6)")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO));
        let row = c.query_one("SELECT count(*) FROM u", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 0, "implicit transaction rolled back");
    });
}

fn notifications_between_sessions(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let (listener, mut conn) = tokio_postgres::connect(&env.conninfo(), NoTls)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(msg)) = stream.next().await {
                if let AsyncMessage::Notification(n) = msg {
                    let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
                }
            }
        });
        listener.batch_execute("LISTEN jobs").await.unwrap();
        let sender = connect(&env.conninfo()).await;
        for i in 0..5 {
            sender
                .execute("SELECT pg_notify('jobs', $1)", &[&format!("job-{i}")])
                .await
                .unwrap();
        }
        for i in 0..5 {
            let (ch, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("notification delivered within 10s while the listener is idle")
                .unwrap();
            assert_eq!((ch.as_str(), payload), ("jobs", format!("job-{i}")));
        }
    });
}

fn many_sessions_at_once(engine: Engine) {
    let env = Env::start(engine);
    rt().block_on(async {
        let info = env.conninfo();
        let clients = join_all((0..40).map(|_| connect(&info))).await;
        join_all(clients.iter().enumerate().map(|(i, c)| async move {
            let row = c
                .query_one("SELECT $1::int4, pg_sleep(0.2)::text", &[&(i as i32)])
                .await
                .unwrap();
            assert_eq!(row.get::<_, i32>(0), i as i32);
        }))
        .await;
    });
}
