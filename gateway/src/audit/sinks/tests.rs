//! Delivery against real receivers on loopback: a segment log in a tempdir written by
//! the auditlog crate's writer, sinks following it, and receivers that are down for a
//! while (not listening, then answering 503 or failing items) while records keep being
//! appended. Everything must arrive, in order, none lost, and cursors must survive a
//! restart of the sink. The syslog test drives a throwaway `rsyslogd` (Debian package
//! `rsyslog`) with its own configuration: imudp, imtcp and imuxsock in, omfile out.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use portcullis_auditlog::segment::{Rotation, Writer};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;

use super::*;

/// A real segment log and the count of durable records, as the gateway's writer keeps.
struct Log {
    dir: tempfile::TempDir,
    writer: Writer,
    durable: watch::Sender<u64>,
}

impl Log {
    fn new() -> Log {
        let dir = tempfile::tempdir().unwrap();
        // Small segments, so every test crosses rotations.
        let rot = Rotation {
            max_bytes: 2048,
            max_age: Duration::from_secs(3600),
        };
        let (writer, _) = Writer::open(dir.path(), rot).unwrap();
        let (durable, _) = watch::channel(0);
        Log {
            dir,
            writer,
            durable,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// Appends `n` records, syncs, publishes the new durable count.
    fn append(&mut self, n: u64) {
        let first = self.writer.next_index();
        let recs: Vec<Vec<u8>> = (first..first + n).map(record).collect();
        self.writer.append(recs.iter().map(Vec::as_slice)).unwrap();
        self.writer.sync().unwrap();
        self.durable.send_replace(self.writer.next_index());
    }
}

/// Record `seq` of a plausible session: start, statements and outcomes, a refusal.
fn record(seq: u64) -> Vec<u8> {
    let time = format!(
        "2026-12-01T14:{:02}:{:02}.{:06}Z",
        seq / 60 % 60,
        seq % 60,
        seq
    );
    let common = json!({"v": 1, "seq": seq, "time": time, "gateway": "gw1"});
    let mut r = match seq % 4 {
        0 => {
            json!({"kind": "session_start", "session": format!("s{seq}"), "identity": "agent", "auth": "scram-sha-256", "client_addr": "127.0.0.1", "client_port": 40000, "tls": null, "application_name": "psql", "database": "bank", "upstream_role": "portcullis_agent"})
        }
        1 => {
            json!({"kind": "statement", "session": "s", "stmt": seq, "sql": format!("SELECT * FROM accounts WHERE id = {seq} -- é"), "via": "simple", "params": null, "fingerprint": "f", "policy": {"class": "read", "reads": ["accounts"], "writes": [], "rule": null, "verdict": "allow"}})
        }
        2 => {
            json!({"kind": "outcome", "session": "s", "stmt": seq - 1, "tags": ["SELECT 1"], "rows": 1, "sqlstate": null, "duration_us": 120, "bytes_to_agent": 64, "masked": {}, "result_sha256": "00"})
        }
        _ => {
            json!({"kind": "refusal", "session": "s", "stmt": seq, "sqlstate": "42501", "message": "DROP needs approval"})
        }
    };
    // The writer's field order: common fields first.
    let mut out = common.as_object().unwrap().clone();
    out.insert("kind".into(), r["kind"].take());
    for (k, v) in r.as_object().unwrap() {
        if k != "kind" {
            out.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&Value::Object(out)).unwrap()
}

fn fast(mut c: SinkConfig) -> SinkConfig {
    c.retry_initial_ms = 20;
    c.retry_max_ms = 150;
    c.timeout_ms = 2000;
    c.connect_timeout_ms = 1000;
    c.batch_max = 7;
    c
}

/// Polls `f` until it holds, for up to 10 s.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn one(log: &Log, c: SinkConfig) -> Sink {
    spawn(
        &tokio::runtime::Handle::current(),
        &[c],
        log.path(),
        log.watch(),
    )
    .unwrap()
    .pop()
    .unwrap()
}

/// Records the first occurrence of each seq, in arrival order, checks they are
/// exactly 0..n: complete, in order; repeats (at-least-once) come after their first.
fn assert_all_in_order(seqs: &[u64], n: u64, what: &str) {
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<u64> = seqs.iter().copied().filter(|s| seen.insert(*s)).collect();
    assert_eq!(firsts, (0..n).collect::<Vec<_>>(), "{what}: {seqs:?}");
}

/// An HTTP receiver that answers from a script, then 200, and keeps what it accepted.
#[derive(Clone, Default)]
struct Receiver {
    accepted: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    refused: Arc<Mutex<usize>>,
    script: Arc<Mutex<Vec<(StatusCode, &'static str)>>>,
    /// Elasticsearch-like index: `_id` to document.
    index: Arc<Mutex<BTreeMap<String, Value>>>,
    conflicts: Arc<Mutex<usize>>,
    /// Fail every item after this many in the next bulk request (then clear).
    fail_items_after: Arc<Mutex<Option<usize>>>,
}

impl Receiver {
    async fn serve(self, listener: tokio::net::TcpListener) {
        async fn take(
            State(r): State<Receiver>,
            headers: HeaderMap,
            body: Bytes,
        ) -> (StatusCode, String) {
            let scripted = {
                let mut s = r.script.lock().unwrap();
                (!s.is_empty()).then(|| s.remove(0))
            };
            if let Some((status, answer)) = scripted {
                *r.refused.lock().unwrap() += 1;
                return (status, answer.to_owned());
            }
            r.accepted.lock().unwrap().push((headers, body));
            (StatusCode::OK, r#"{"text":"Success","code":0}"#.into())
        }
        async fn bulk(State(r): State<Receiver>, body: Bytes) -> (StatusCode, String) {
            let text = String::from_utf8(body.to_vec()).unwrap();
            assert!(text.ends_with('\n'));
            let lines: Vec<&str> = text.lines().collect();
            let fail_after = r.fail_items_after.lock().unwrap().take();
            let mut items = Vec::new();
            let mut errors = false;
            for (i, pair) in lines.chunks(2).enumerate() {
                let action: Value = serde_json::from_str(pair[0]).unwrap();
                let doc: Value = serde_json::from_str(pair[1]).unwrap();
                let id = action["create"]["_id"].as_str().unwrap().to_owned();
                let mut index = r.index.lock().unwrap();
                let status = if fail_after.is_some_and(|n| i >= n) {
                    429
                } else if index.contains_key(&id) {
                    *r.conflicts.lock().unwrap() += 1;
                    409
                } else {
                    index.insert(id.clone(), doc);
                    201
                };
                errors |= status != 201;
                items.push(json!({"create": {"_index": "audit", "_id": id, "status": status}}));
            }
            (
                StatusCode::OK,
                json!({"took": 1, "errors": errors, "items": items}).to_string(),
            )
        }
        let app = Router::new()
            .route("/hook", post(take))
            .route("/services/collector/event", post(take))
            .route("/_bulk", post(bulk))
            .with_state(self);
        axum::serve(listener, app).await.unwrap();
    }

    fn accepted_seqs(&self) -> Vec<u64> {
        let mut out = Vec::new();
        for (_, body) in self.accepted.lock().unwrap().iter() {
            // A JSON array (json) or concatenated envelopes (HEC).
            for v in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
                let v = v.unwrap();
                let items = match v {
                    Value::Array(a) => a,
                    env => vec![env["event"].clone()],
                };
                out.extend(items.iter().map(|r| r["seq"].as_u64().unwrap()));
            }
        }
        out
    }
}

/// A loopback address nobody listens on yet.
async fn free_addr() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn verify_signature(headers: &HeaderMap, body: &[u8], secret: &str) {
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    let sig = h("x-portcullis-signature");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(h("x-portcullis-timestamp").as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&hex::decode(sig.strip_prefix("sha256=").unwrap()).unwrap())
        .expect("the signature covers timestamp.body");
    assert_eq!(h("x-portcullis-event"), "audit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_sink_catches_up_after_an_outage_in_order_and_resumes_from_its_cursor() {
    let mut log = Log::new();
    let addr = free_addr().await;
    let mut c = fast(SinkConfig::new("hook", SinkKind::Http));
    c.url = Some(format!("http://{addr}/hook"));
    c.format = Some(HttpFormat::Json);
    c.secret = Some("s3cret".into());

    // Down: nobody listens. Records keep coming; the cursor stays, the lag grows.
    log.append(20);
    let sink = one(&log, c.clone());
    until("a failed attempt", || sink.status().failures >= 2).await;
    log.append(10);
    let s = sink.status();
    assert_eq!((s.cursor, s.durable, s.lag), (0, 30, 30));
    assert!(
        s.last_error.as_deref().unwrap().contains(&addr.to_string()),
        "{s:?}"
    );
    assert_eq!(s.last_success_unix_ms, None);

    // Up, but answering 503 three times; more records meanwhile.
    let rx = Receiver::default();
    *rx.script.lock().unwrap() = vec![(StatusCode::SERVICE_UNAVAILABLE, "busy"); 3];
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(rx.clone().serve(listener));
    log.append(5);
    until("all 35 records", || rx.accepted_seqs().len() >= 35).await;
    assert_eq!(*rx.refused.lock().unwrap(), 3);
    // Only acknowledged batches count as received, so here there are no repeats at all.
    assert_eq!(rx.accepted_seqs(), (0..35).collect::<Vec<_>>());
    for (headers, body) in rx.accepted.lock().unwrap().iter() {
        verify_signature(headers, body, "s3cret");
        let batch: Vec<Value> = serde_json::from_slice(body).unwrap();
        assert!(batch.len() <= 7, "batch_max holds");
        let delivery = headers["x-portcullis-delivery"].to_str().unwrap();
        let (first, last) = (
            batch[0]["seq"].as_u64().unwrap(),
            batch.last().unwrap()["seq"].as_u64().unwrap(),
        );
        assert_eq!(delivery, format!("gw1-{first}-{last}"));
    }
    until("the cursor at 35", || sink.status().cursor == 35).await;
    let s = sink.status();
    assert_eq!((s.lag, s.failures, s.delivered), (0, 0, 35));
    assert!(s.last_success_unix_ms.is_some());

    // Restart: the stored cursor holds, and delivery resumes there.
    sink.stop().await;
    assert_eq!(cursor::load(log.path(), "hook").unwrap(), 35);
    log.append(5);
    let sink = one(&log, c);
    until("records 35..40", || rx.accepted_seqs().len() >= 40).await;
    assert_eq!(rx.accepted_seqs(), (0..40).collect::<Vec<_>>());
    until("the cursor at 40", || sink.status().cursor == 40).await;
    sink.stop().await;
    assert_eq!(cursor::load(log.path(), "hook").unwrap(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_redelivery_is_deduplicated_by_id() {
    let mut log = Log::new();
    let addr = free_addr().await;
    let rx = Receiver::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(rx.clone().serve(listener));
    // The first bulk request takes 3 items and rejects the rest (429 per item, 200
    // overall): the whole batch comes again and its first 3 answer 409.
    *rx.fail_items_after.lock().unwrap() = Some(3);
    let mut c = fast(SinkConfig::new("es", SinkKind::Http));
    c.url = Some(format!("http://{addr}"));
    c.format = Some(HttpFormat::ElasticsearchBulk);
    c.index = Some("audit".into());
    c.token = Some("key".into());
    log.append(30);
    let sink = one(&log, c);
    until("30 documents", || rx.index.lock().unwrap().len() == 30).await;
    until("the cursor at 30", || sink.status().cursor == 30).await;
    assert_eq!(
        *rx.conflicts.lock().unwrap(),
        3,
        "the retried items already in"
    );
    let index = rx.index.lock().unwrap().clone();
    for seq in 0..30u64 {
        let doc = &index[&format!("gw1-{seq}")];
        assert_eq!(doc["seq"], seq);
        assert!(
            doc["@timestamp"]
                .as_str()
                .unwrap()
                .starts_with("2026-12-01T14:")
        );
    }
    assert!(sink.status().last_error.unwrap().contains("429"));
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_gets_envelopes_with_the_token_after_busy_answers() {
    let mut log = Log::new();
    let addr = free_addr().await;
    let rx = Receiver::default();
    *rx.script.lock().unwrap() = vec![
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"text":"Server is busy","code":9}"#,
        ),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"text":"Server is busy","code":9}"#,
        ),
    ];
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(rx.clone().serve(listener));
    let mut c = fast(SinkConfig::new("splunk", SinkKind::Http));
    c.url = Some(format!("http://{addr}/services/collector/event"));
    c.format = Some(HttpFormat::SplunkHec);
    c.token = Some("hec-token".into());
    c.channel = Some("0aecf7a5-2b4b-4e39-9f27-3c1e6c1b5b9e".into());
    c.schema = Schema::Ocsf;
    log.append(12);
    let sink = one(&log, c);
    until("the cursor at 12", || sink.status().cursor == 12).await;
    let accepted = rx.accepted.lock().unwrap().clone();
    let mut seqs = Vec::new();
    for (headers, body) in &accepted {
        assert_eq!(headers["authorization"], "Splunk hec-token");
        assert_eq!(
            headers["x-splunk-request-channel"],
            "0aecf7a5-2b4b-4e39-9f27-3c1e6c1b5b9e"
        );
        for env in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
            let env = env.unwrap();
            assert_eq!(
                (env["source"].as_str(), env["sourcetype"].as_str()),
                (Some("portcullis"), Some("portcullis:audit"))
            );
            assert_eq!(env["host"], "gw1");
            // schema = "ocsf": the event is the OCSF rendering.
            let ev = &env["event"];
            assert!(
                [6005, 3002].contains(&ev["class_uid"].as_u64().unwrap()),
                "{ev}"
            );
            seqs.push(ev["metadata"]["sequence"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, (0..12).collect::<Vec<_>>());
    assert!(sink.status().last_error.unwrap().contains("503"));
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_ends_after_the_writer_is_gone_and_everything_was_sent() {
    let mut log = Log::new();
    let addr = free_addr().await;
    let rx = Receiver::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(rx.clone().serve(listener));
    let mut c = fast(SinkConfig::new("hook", SinkKind::Http));
    c.url = Some(format!("http://{addr}/hook"));
    c.format = Some(HttpFormat::Json);
    c.secret = Some("k".into());
    log.append(9);
    let sink = one(&log, c);
    drop(log.durable);
    tokio::time::timeout(Duration::from_secs(10), sink.finished())
        .await
        .expect("the task ends by itself");
    assert_eq!(rx.accepted_seqs(), (0..9).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_get_checkpoints_signed() {
    let addr = free_addr().await;
    let rx = Receiver::default();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(rx.clone().serve(listener));
    let mut c = SinkConfig::new("witness", SinkKind::Http);
    c.url = Some(format!("http://{addr}/hook"));
    c.format = Some(HttpFormat::Json);
    c.secret = Some("k".into());
    let checkpoint = "portcullis.example/audit\n42\nq2Vs0yTlMQ6y2xZ5H0vY9Q==\n\n— gw1 AAAA\n";
    send_text(&c, checkpoint).await.unwrap();
    let (headers, body) = rx.accepted.lock().unwrap()[0].clone();
    assert_eq!(body, checkpoint.as_bytes());
    assert_eq!(headers["x-portcullis-event"], "checkpoint");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    let ts = headers["x-portcullis-timestamp"].to_str().unwrap();
    assert_eq!(
        headers["x-portcullis-signature"].to_str().unwrap(),
        crate::control::webhook::signature(b"k", ts, checkpoint.as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_everything_over_tcp_unix_and_udp_across_its_restarts() {
    let mut rs = portcullis_tests::syslog::Rsyslogd::new();
    let mut log = Log::new();
    let syslog = |name: &str, address: String| {
        let mut c = fast(SinkConfig::new(name, SinkKind::Syslog));
        c.address = Some(address);
        c.hostname = Some("db-gw-1".into());
        c
    };
    let tcp = syslog("tcp", format!("tcp:127.0.0.1:{}", rs.tcp));
    let unix = syslog("unix", format!("unix:{}", rs.socket().display()));
    let udp = syslog("udp", format!("udp:127.0.0.1:{}", rs.udp));

    // No collector yet: TCP is refused, the socket is missing; the backlog is the log.
    log.append(10);
    let sinks = spawn(
        &tokio::runtime::Handle::current(),
        &[tcp, unix],
        log.path(),
        log.watch(),
    )
    .unwrap();
    until("both failing", || {
        sinks.iter().all(|s| s.status().failures >= 2)
    })
    .await;
    log.append(10);
    rs.start();
    until("20 over tcp and unix", || {
        rs.seqs("imtcp").len() >= 20 && rs.seqs("imuxsock").len() >= 20
    })
    .await;

    // The collector goes away while the sinks are idle, records keep coming, it is back.
    until("sinks idle", || {
        sinks.iter().all(|s| s.status().cursor == 20)
    })
    .await;
    rs.stop();
    log.append(15);
    until("both noticing", || {
        sinks.iter().all(|s| s.status().failures >= 1)
    })
    .await;
    rs.start();
    until("35 over tcp and unix", || {
        rs.seqs("imtcp").len() >= 35 && rs.seqs("imuxsock").len() >= 35
    })
    .await;
    assert_all_in_order(&rs.seqs("imtcp"), 35, "tcp");
    assert_all_in_order(&rs.seqs("imuxsock"), 35, "unix");
    for s in &sinks {
        until("cursor at 35", || s.status().cursor == 35).await;
    }
    for s in sinks {
        s.stop().await;
    }
    assert_eq!(cursor::load(log.path(), "tcp").unwrap(), 35);

    // UDP only knows "sent": started with the collector up, it sends the whole log.
    let sink = one(&log, udp);
    until("35 over udp", || rs.seqs("imudp").len() >= 35).await;
    assert_all_in_order(&rs.seqs("imudp"), 35, "udp");
    sink.stop().await;

    // The header fields as rsyslog parsed them.
    let pid = std::process::id().to_string();
    let (_, lines) = rs.received();
    let statement = lines
        .iter()
        .find(|l| l.starts_with("imtcp ") && l.contains("\"seq\":1,"))
        .unwrap();
    let fields: Vec<&str> = statement.splitn(8, ' ').collect();
    // local0.info = 134, version 1, our hostname, app-name, pid, kind as MSGID.
    assert_eq!(
        &fields[1..7],
        [
            "134",
            "1",
            "db-gw-1",
            "portcullis",
            pid.as_str(),
            "statement"
        ]
    );
    let refusal = lines.iter().find(|l| l.contains("\"seq\":3,")).unwrap();
    assert!(
        refusal.contains(" 132 1 "),
        "refusals are warnings: {refusal}"
    );
    let msg: Value = serde_json::from_str(fields[7]).unwrap();
    assert_eq!(msg["sql"], "SELECT * FROM accounts WHERE id = 1 -- é");

    // A checkpoint for a witness, over TCP, newlines and all.
    let mut c = SinkConfig::new("witness", SinkKind::Syslog);
    c.address = Some(format!("tcp:127.0.0.1:{}", rs.tcp));
    send_text(&c, "origin\n35\nroot").await.unwrap();
    until("the checkpoint", || {
        rs.received().1.iter().any(|l| l.contains(" checkpoint "))
    })
    .await;
}
