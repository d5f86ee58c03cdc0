//! The audit log under faults: the gateway killed with SIGKILL during load, and the log's
//! file system full. What an examiner would check: every statement the server ran has
//! its record (evidence before action held), a torn record is reported and set aside,
//! statements are refused with a clear error while nothing can be recorded, and the
//! gateway carries on by itself once space returns.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Env, rt};
use portcullis_auditlog::segment::{Item, Reader};
use portcullis_tests::Engine;
use serde_json::Value;

fn records(dir: &Path) -> (Vec<Value>, Vec<Item>) {
    let mut recs = Vec::new();
    let mut other = Vec::new();
    for item in Reader::open(dir, 0).expect("open the log") {
        match item.expect("read the log") {
            Item::Record { bytes, .. } => recs.push(serde_json::from_slice(&bytes).unwrap()),
            i => other.push(i),
        }
    }
    (recs, other)
}

/// The ids in `INSERT INTO k VALUES (<id>)` statements the log recorded.
fn recorded_ids(recs: &[Value]) -> HashSet<i64> {
    recs.iter()
        .filter(|r| r["kind"] == "statement")
        .filter_map(|r| {
            r["sql"]
                .as_str()?
                .strip_prefix("INSERT INTO k VALUES (")?
                .strip_suffix(')')?
                .parse()
                .ok()
        })
        .collect()
}

fn ids_in_database(env: &Env) -> Vec<i64> {
    let out = env.ok(env.psql_direct().args(["-At", "-c", "SELECT id FROM k"]));
    common::stdout(&out)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn sigkill_under_load_leaves_a_record_of_everything_that_ran() {
    let mut env = Env::start_with(Engine::Auto, Default::default(), |o| {
        o.audit_signed("checkpoint_every_records = 200\n")
    });
    env.ok(env
        .psql_direct()
        .args(["-c", "CREATE TABLE k (id bigint primary key)"]));
    let conninfo = env.conninfo();
    // Eight sessions insert as fast as they can; the gateway dies under them.
    let runtime = rt();
    let tasks: Vec<_> = (0..8i64)
        .map(|c| {
            let conninfo = conninfo.clone();
            runtime.spawn(async move {
                let client = common::connect(&conninfo).await;
                for i in 0.. {
                    let id = c * 1_000_000 + i;
                    if client
                        .simple_query(&format!("INSERT INTO k VALUES ({id})"))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            })
        })
        .collect();
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        env.gw
            .stop_with(libc::SIGKILL, Duration::from_secs(10))
            .expect("the gateway dies on SIGKILL");
        for t in tasks {
            let _ = t.await;
        }
    });
    let dir = env.gw.audit_dir();
    let in_db = ids_in_database(&env);
    assert!(in_db.len() > 100, "the load ran: {} rows", in_db.len());
    let (recs, _) = records(&dir);
    let recorded = recorded_ids(&recs);
    let unrecorded: Vec<_> = in_db.iter().filter(|id| !recorded.contains(id)).collect();
    assert!(
        unrecorded.is_empty(),
        "{} of {} rows the server inserted have no statement record: {unrecorded:?}",
        unrecorded.len(),
        in_db.len()
    );

    // A kill cannot tear one write(2) on a local file system; a power loss can. Tear the
    // last record as that would, then check verify reports it and a restart sets it aside.
    let seg = portcullis_auditlog::segment::list(&dir)
        .unwrap()
        .pop()
        .unwrap()
        .path;
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, br#"{"v":1,"seq":"#).unwrap();
    drop(f);
    let key = env.gw.audit_public_key().unwrap().to_owned();
    let verify = |dir: &Path, key: &str| {
        common::run_timed(&mut common::portcullis(&[
            "audit",
            "verify",
            dir.to_str().unwrap(),
            "--public-key",
            key,
        ]))
    };
    let out = verify(&dir, &key);
    let text = common::stdout(&out);
    assert!(
        text.contains("without a newline") && text.contains("cut short by a crash"),
        "verify does not report the torn record:\n{text}"
    );

    // The same configuration again: the torn bytes are moved aside and recorded.
    env.gw.restart().expect("restart the gateway");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (recs, _) = records(&dir);
        if recs.iter().any(|r| r["kind"] == "log_recovered") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log_recovered record after the restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    env.gw.stop_with(libc::SIGTERM, Duration::from_secs(30));
    let out = verify(&dir, &key);
    let text = common::stdout(&out);
    assert!(
        out.status.success(),
        "the log is not intact after recovery:\n{text}"
    );
}

/// A tmpfs of `mib` MiB mounted at `at` (removed when dropped).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u32) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m"),
                "portcullis-audit-test",
            ])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(
            ok.success(),
            "mount a tmpfs at {} (the tests run as root)",
            at.display()
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_audit_disk_refuses_statements_until_space_returns() {
    let mnt = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(mnt.path(), 2);
    let dir = fs.0.join("audit");
    let env = Env::start_with(Engine::Auto, Default::default(), |o| {
        o.audit(&format!("dir = {:?}\n", dir.display().to_string()))
    });
    env.ok(env
        .psql_direct()
        .args(["-c", "CREATE TABLE k (id bigint primary key)"]));
    let conninfo = env.conninfo();
    // Leave a few KiB free.
    let filler = fs.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    }
    // One session throughout: refusals keep it.
    let runtime = rt();
    let client = runtime.block_on(common::connect(&conninfo));
    let refused = runtime.block_on(async {
        let mut errors = Vec::new();
        for id in 0..2000i64 {
            if let Err(e) = client
                .simple_query(&format!("INSERT INTO k VALUES ({id})"))
                .await
            {
                let d = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("the session did not survive the refusal: {e}"));
                assert_eq!(d.severity(), "ERROR", "{}", d.message());
                errors.push((d.code().code().to_owned(), d.message().to_owned()));
                if errors.len() >= 3 {
                    break;
                }
            }
        }
        errors
    });
    assert!(
        !refused.is_empty(),
        "nothing was refused with the audit disk full"
    );
    for (code, message) in &refused {
        assert_eq!(code, "58030", "{refused:?}");
        assert!(message.contains(&dir.display().to_string()), "{message}");
    }
    // Nothing ran unrecorded.
    std::fs::remove_file(&filler).unwrap();
    let (recs, _) = records(&dir);
    let recorded = recorded_ids(&recs);
    let in_db = ids_in_database(&env);
    for id in &in_db {
        assert!(recorded.contains(id), "row {id} ran without a record");
    }
    // Space is back: the gateway records and runs statements again, by itself, in the
    // same session.
    let deadline = Instant::now() + Duration::from_secs(10);
    runtime.block_on(async {
        loop {
            match client.simple_query("INSERT INTO k VALUES (999999)").await {
                Ok(_) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "still refused after space returned: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let (recs, _) = records(&dir);
    assert!(
        recs.iter().any(|r| r["kind"] == "records_lost"),
        "the gap is not recorded"
    );
    assert!(recorded_ids(&recs).contains(&999999));
    drop(env);
}

/// pgbench's built-in select-only script through the gateway for a minute while the
/// syslog collector (a real rsyslogd) is down; then it comes up and everything in the
/// log arrives, in order, and every transaction pgbench counted has its statement record.
#[test]
fn a_syslog_collector_down_for_a_minute_under_load_gets_everything_after() {
    let mut rs = portcullis_tests::syslog::Rsyslogd::new();
    let sink = format!(
        "[[audit.sinks]]\nname = \"siem\"\nkind = \"syslog\"\naddress = \"tcp:127.0.0.1:{}\"\nretry_max_ms = 1000\n",
        rs.tcp
    );
    let env = Env::start_with(Engine::Auto, Default::default(), |o| o.audit(&sink));
    let mut init = Command::new("pgbench");
    init.args([
        "-i",
        "-q",
        "-s",
        "1",
        "-d",
        &env.pg.superuser_uri(common::DB),
    ]);
    env.ok(&mut init);
    let mut bench = Command::new("pgbench");
    bench
        .args(["-n", "-S", "-c", "4", "-j", "2", "-T", "60"])
        .arg(env.uri());
    let out = common::stdout(&env.ok(&mut bench));
    let processed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{out}"));
    assert!(processed > 1000, "{out}");

    let dir = env.gw.audit_dir();
    let (recs, _) = records(&dir);
    let selects = recs
        .iter()
        .filter(|r| {
            r["kind"] == "statement"
                && r["sql"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("SELECT abalance"))
        })
        .count() as u64;
    assert!(
        (processed..=processed + 4).contains(&selects),
        "pgbench ran {processed} transactions, the log has {selects} of its statements"
    );

    rs.start();
    let total = records(&dir).0.len();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = rs.seqs("imtcp");
        if got.len() >= total {
            let want: Vec<u64> = (0..got.len() as u64).collect();
            assert_eq!(got, want, "records arrived out of order or twice");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {total} records reached the collector",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
