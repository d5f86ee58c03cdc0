//! Webhooks against a local receiver: signed as documented, retried through failures,
//! everything arriving in order; refusals not retried.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use serde_json::Value;

use super::*;
use crate::approvals::Action;
use crate::approvals::testkit::{held, hub};

const SECRET: &str = "webhook-secret";

/// One POST the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    answered: StatusCode,
}

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Answers given in turn, then 200.
    script: Arc<Mutex<Vec<StatusCode>>>,
}

impl Receiver {
    async fn start(script: Vec<StatusCode>) -> (Receiver, String) {
        let r = Receiver {
            got: Arc::default(),
            script: Arc::new(Mutex::new(script)),
        };
        async fn take(
            State(r): State<Receiver>,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> StatusCode {
            let answered = {
                let mut s = r.script.lock().unwrap();
                if s.is_empty() {
                    StatusCode::OK
                } else {
                    s.remove(0)
                }
            };
            r.got.lock().unwrap().push(Received {
                path: uri.path().into(),
                headers,
                body,
                answered,
            });
            answered
        }
        let app = Router::new()
            .route("/{*path}", post(take))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    /// Waits until `n` POSTs answered 200 have arrived.
    async fn delivered(&self, n: usize) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ok: Vec<Received> = self
                .got
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.answered == StatusCode::OK)
                .cloned()
                .collect();
            if ok.len() >= n {
                return ok;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} deliveries arrived: {:?}",
                ok.len(),
                self.got.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn all(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn fast() -> Policy {
    Policy {
        attempts: 4,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        timeout: Duration::from_secs(5),
        queue: 16,
    }
}

fn hook(url: String, format: WebhookFormat, secret: Option<&str>) -> WebhookConfig {
    WebhookConfig {
        url,
        format,
        secret: secret.map(str::to_owned),
        secret_env: None,
    }
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// What a receiver does: recompute the HMAC over `timestamp.body` and compare.
fn verify(r: &Received, secret: &str) {
    let ts = header(r, "x-portcullis-timestamp");
    let sig = header(r, "x-portcullis-signature");
    let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    mac.verify_slice(&hex::decode(hex_sig).unwrap())
        .expect("the signature matches the body and timestamp");
    let sent: u64 = ts.parse().unwrap();
    let now = crate::approvals::model::now_ms() / 1000;
    assert!(
        now.abs_diff(sent) < 60,
        "timestamp {sent} is not now ({now})"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn json_webhooks_are_signed_retried_and_all_arrive() {
    let (rx, url) = Receiver::start(vec![
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::SERVICE_UNAVAILABLE,
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let approvals = hub(dir.path(), Some("https://review.example.com/"));
    spawn(
        &tokio::runtime::Handle::current(),
        &[hook(
            format!("{url}/hook"),
            WebhookFormat::Json,
            Some(SECRET),
        )],
        &approvals,
        fast(),
    )
    .unwrap();

    let t = approvals.submit(held(1)).await.unwrap();
    let id = t.request.id;
    approvals
        .decide(
            id,
            "alice",
            Action::Approve { reason: None },
            Some(t.request.digest.clone()),
        )
        .await
        .unwrap();
    let ok = rx.delivered(2).await;

    let all = rx.all();
    assert_eq!(all.len(), 4, "two failures, then both events: {all:?}");
    // The failed attempts were the first event's: the same delivery, re-signed each time.
    for r in &all {
        assert_eq!(r.path, "/hook");
        assert_eq!(header(r, "content-type"), "application/json");
        verify(r, SECRET);
    }
    assert_eq!(header(&all[0], "x-portcullis-delivery"), format!("{id}-0"));
    assert_eq!(header(&all[1], "x-portcullis-delivery"), format!("{id}-0"));

    let events: Vec<&str> = ok.iter().map(|r| header(r, "x-portcullis-event")).collect();
    assert_eq!(events, ["requested", "decided"]);
    let first: Value = serde_json::from_slice(&ok[0].body).unwrap();
    assert_eq!(first["event"], "requested");
    assert_eq!(first["delivery"], format!("{id}-0"));
    assert_eq!(first["request"]["sql"], "DROP TABLE accounts");
    assert_eq!(first["request"]["status"], "pending");
    assert_eq!(
        first["url"],
        format!("https://review.example.com/#request-{id}")
    );
    let second: Value = serde_json::from_slice(&ok[1].body).unwrap();
    assert_eq!(second["event"], "decided");
    assert_eq!(second["request"]["status"], "approved");
    assert_eq!(second["request"]["votes"][0]["reviewer"], "alice");
}

#[tokio::test(flavor = "current_thread")]
async fn slack_gets_a_message_with_a_link_and_refusals_are_not_retried() {
    let (rx, url) = Receiver::start(vec![StatusCode::BAD_REQUEST]).await;
    let dir = tempfile::tempdir().unwrap();
    let approvals = hub(dir.path(), Some("http://127.0.0.1:8433"));
    spawn(
        &tokio::runtime::Handle::current(),
        &[hook(format!("{url}/slack"), WebhookFormat::Slack, None)],
        &approvals,
        fast(),
    )
    .unwrap();
    let mut new = held(1);
    new.sql = "DELETE FROM t WHERE note = '<b>&```'".into();
    let t = approvals.submit(new).await.unwrap();
    approvals
        .decide(
            t.request.id,
            "bob",
            Action::Deny {
                reason: "not now".into(),
            },
            None,
        )
        .await
        .unwrap();
    // The request's notification was refused (400) and not tried again; the decision's
    // arrived.
    let ok = rx.delivered(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let all = rx.all();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(header(&all[0], "x-portcullis-event"), "requested");
    assert!(all[0].headers.get("x-portcullis-signature").is_none());
    let text = serde_json::from_slice::<Value>(&ok[0].body).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let id = t.request.id;
    assert!(
        text.contains(&format!(
            "<http://127.0.0.1:8433/#request-{id}|review request #{id}>"
        )),
        "{text}"
    );
    assert!(text.contains("denied by bob: not now"), "{text}");
    assert!(text.contains("*agent*"), "{text}");
    assert!(text.contains("&lt;b&gt;&amp;`\u{200b}``"), "{text}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_receiver_delays_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = hub(dir.path(), None);
    let (rx, url) = Receiver::start(vec![]).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/gone", l.local_addr().unwrap())
    };
    spawn(
        &tokio::runtime::Handle::current(),
        &[
            hook(dead, WebhookFormat::Json, Some(SECRET)),
            hook(format!("{url}/live"), WebhookFormat::Json, Some(SECRET)),
        ],
        &approvals,
        fast(),
    )
    .unwrap();
    for _ in 0..5 {
        approvals.submit(held(1)).await.unwrap();
    }
    let ok = rx.delivered(5).await;
    assert!(ok.iter().all(|r| r.path == "/live"));
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_the_event_instead_of_waiting() {
    let (tx, events) = broadcast::channel(16);
    let (queue, mut waiting) = mpsc::channel(1);
    let request = Request::new(1, held(1));
    for kind in [
        EventKind::Requested,
        EventKind::Voted,
        EventKind::Decided,
        EventKind::Decided,
    ] {
        tx.send(Event {
            kind,
            request: request.clone(),
        })
        .unwrap();
    }
    drop(tx);
    // Returns although nobody takes from the queue: it never waits for room.
    dispatch(events, vec![("w".into(), WebhookFormat::Json, queue)], None).await;
    assert_eq!(waiting.try_recv().unwrap().event, "requested");
    assert!(waiting.try_recv().is_err(), "the rest were dropped");
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let p = Policy {
        first_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(1000),
        ..Policy::default()
    };
    for (n, base) in [
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1000),
        (30, 1000),
    ] {
        let d = backoff(&p, n).as_millis() as u64;
        assert!((base..=base + base / 4).contains(&d), "attempt {n}: {d}ms");
    }
}

#[test]
fn links_point_at_the_request_on_the_page() {
    assert_eq!(link("http://h:1", 4), "http://h:1/#request-4");
    assert_eq!(link("http://h:1/", 4), "http://h:1/#request-4");
    assert_eq!(
        signature(b"k", "1", b"{}"),
        signature(b"k", "1", b"{}"),
        "deterministic"
    );
    assert_ne!(signature(b"k", "1", b"{}"), signature(b"k", "2", b"{}"));
}
