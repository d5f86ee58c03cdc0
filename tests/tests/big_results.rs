//! Large results through the gateway. Names start with `big_` because these load a million
//! rows or stream gigabytes; `cargo xtask test` runs them like any other test.
//!
//! - a 1M-row `SELECT *` of the financial dataset arrives complete and byte-identical to
//!   the direct connection, and its count and checksum match what PostgreSQL computes;
//! - a ~1.6 GB result streams through without the gateway buffering it: its resident memory
//!   stays within a fixed bound of where it started (a correctness bound, not a speed one);
//! - a 70 MB `bytea` goes up as one `Bind` and comes back, byte for byte, for the masked
//!   agent at the default limits (PostgreSQL's own).

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Env, connect, rt};
use futures_util::{StreamExt, pin_mut};
use portcullis_tests::{Engine, PgOptions, load_financial, per_engine};

per_engine!(
    big_select_1m_rows_matches_direct,
    big_result_memory_bounded,
    big_bytea_round_trips_at_the_default_limits
);

const ROWS: u64 = 1_000_000;
/// How far above its idle level the gateway's RSS may go while relaying 1.6 GB.
const RSS_BOUND_KIB: u64 = 64 * 1024;

/// Row count, byte count and FNV-1a hash of `psql -At` output for `sql`, streamed so the
/// test itself does not hold the result.
fn digest(mut cmd: std::process::Command, sql: &str) -> (u64, u64, u64) {
    let mut child = cmd
        .args(["-At", "-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let (mut rows, mut bytes, mut hash) = (0u64, 0u64, 0xcbf2_9ce4_8422_2325u64);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        rows += 1;
        bytes += line.len() as u64;
        for b in &line {
            hash = (hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (rows, bytes, hash)
}

fn big_select_1m_rows_matches_direct(engine: Engine) {
    let env = Env::start_with(
        engine,
        PgOptions {
            bench_tuning: true,
            ..PgOptions::default()
        },
        |o| o,
    );
    load_financial(&env.pg, common::DB, ROWS, 2026).unwrap();
    let sql = "SELECT * FROM accounts ORDER BY id";
    let via_gw = digest(env.psql_gw(), sql);
    let direct = digest(env.psql_direct(), sql);
    assert_eq!(via_gw.0, ROWS, "row count through the gateway");
    assert_eq!(
        via_gw, direct,
        "(rows, bytes, hash) through the gateway vs direct"
    );

    // The server's own checksum against one computed from rows streamed by a driver.
    let expected = env
        .pg
        .psql(
            common::DB,
            "SELECT count(*) || ' ' || sum(length(a::text)) FROM accounts a",
        )
        .unwrap();
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        let params: [i32; 0] = [];
        let rows = c
            .query_raw("SELECT a::text FROM accounts a", params)
            .await
            .unwrap();
        pin_mut!(rows);
        let (mut n, mut len) = (0u64, 0u64);
        while let Some(r) = rows.next().await {
            let r = r.unwrap();
            n += 1;
            len += r.get::<_, &str>(0).chars().count() as u64;
        }
        assert_eq!(format!("{n} {len}"), expected.trim());
    });
}

fn big_result_memory_bounded(engine: Engine) {
    let env = Env::start(engine);
    let pid = env.gw.pid();
    rt().block_on(async {
        let c = connect(&env.conninfo()).await;
        // Warm up: a first session and query settle allocator pools and buffers.
        c.simple_query("SELECT repeat('x', 8000) FROM generate_series(1, 1000)")
            .await
            .unwrap();
        let before = portcullis_tests::gateway::rss_kib(pid).expect("gateway RSS");
        let peak = Arc::new(AtomicU64::new(before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Some(kib) = portcullis_tests::gateway::rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let params: [i32; 0] = [];
        let rows = c
            .query_raw(
                "SELECT repeat('x', 8000) FROM generate_series(1, 200000)",
                params,
            )
            .await
            .unwrap();
        pin_mut!(rows);
        let (mut n, mut bytes) = (0u64, 0u64);
        while let Some(r) = rows.next().await {
            let r = r.unwrap();
            n += 1;
            bytes += r.get::<_, &str>(0).len() as u64;
        }
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        assert_eq!(n, 200_000);
        assert_eq!(bytes, 1_600_000_000);
        let peak = peak.load(Ordering::Relaxed);
        eprintln!("gateway RSS {before} KiB before, peak {peak} KiB while relaying 1.6 GB");
        assert!(
            peak <= before + RSS_BOUND_KIB,
            "gateway RSS grew by {} KiB (bound {RSS_BOUND_KIB} KiB): it buffers results",
            peak - before
        );
    });
}

fn big_bytea_round_trips_at_the_default_limits(engine: Engine) {
    let env = Env::with_dataset(engine, portcullis_tests::QUICKSTART_MASK_POLICY, 10, 7);
    env.pg
        .psql(common::DB, "CREATE TABLE blobs (id int, b bytea)")
        .expect("create table");
    let blob: Vec<u8> = (0..70_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    rt().block_on(async {
        let client = connect(&env.conninfo()).await;
        client
            .execute("INSERT INTO blobs VALUES (1, $1)", &[&blob])
            .await
            .expect("a 70 MB Bind goes through");
        let back: Vec<u8> = client
            .query_one("SELECT b FROM blobs WHERE id = 1", &[])
            .await
            .expect("and comes back")
            .get(0);
        assert!(back == blob, "the bytea came back changed");
        let echoed: Vec<u8> = client
            .query_one("SELECT $1::bytea", &[&blob])
            .await
            .unwrap()
            .get(0);
        assert!(echoed == blob, "the echoed bytea came back changed");
        // Masking still applies in the same session.
        let ssn: String = client
            .query_one("SELECT ssn FROM accounts WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert!(!portcullis_tests::ssn_valid(&ssn), "{ssn}");
    });
    let direct = env
        .pg
        .psql(common::DB, "SELECT length(b) FROM blobs")
        .expect("read back directly");
    assert_eq!(direct.trim(), "70000000", "stored whole");
}
