//! The API over a real socket, in front of a real hub with a SQLite store: what a
//! reviewer's client sends, what it gets back, and what the held session is told.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;
use crate::approvals::Resolution;
use crate::approvals::testkit::{held, hub, settings, store};

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789";
/// A reviewer who happens to share the agent's name: never allowed to review it.
const AGENT: &str = "agent-reviewer-token";

fn reviewer(name: &str, token: &str) -> ReviewerConfig {
    ReviewerConfig {
        name: name.into(),
        token_sha256: hex::encode(Sha256::digest(token.as_bytes())),
    }
}

struct Api {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    async fn start(approvals: Arc<Approvals>) -> Api {
        let listener = bind(&HttpConfig {
            listen: "127.0.0.1:0".into(),
            public_url: None,
        })
        .unwrap();
        let addr = listener.local_addr().unwrap();
        let reviewers = [
            reviewer("alice", ALICE),
            reviewer("bob", BOB),
            reviewer("agent", AGENT),
        ];
        tokio::spawn(serve(listener, router(approvals, &reviewers)));
        Api {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> hyper::Response<hyper::body::Incoming> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
        self.client.request(req.body(body).unwrap()).await.unwrap()
    }

    /// Status and JSON body of one call.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        let resp = self.send(method, path, token, body.as_deref()).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{method} {path}: {status}, not JSON ({e}): {bytes:?}"));
        (status, value)
    }
}

fn error_of(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"))
}

#[tokio::test(flavor = "current_thread")]
async fn every_api_route_needs_a_reviewers_token() {
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(hub(dir.path(), None)).await;

    for path in [
        "/api/me",
        "/api/requests",
        "/api/requests/1",
        "/api/nowhere",
    ] {
        let resp = api.send("GET", path, None, None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"portcullis\""
        );
        let (status, body) = api.call("GET", path, Some("wrong"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            error_of(&body).contains("no [[approvals.reviewer]]"),
            "{body}"
        );
    }
    let (status, body) = api
        .call("POST", "/api/requests/1/approve", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(error_of(&body).contains("Authorization: Bearer"), "{body}");

    // Another scheme, or the right token's hash instead of the token, is not a token.
    let resp = api
        .client
        .request(
            hyper::Request::get(format!("{}/api/me", api.base))
                .header("authorization", format!("Basic {ALICE}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let hash = hex::encode(Sha256::digest(ALICE.as_bytes()));
    let (status, _) = api.call("GET", "/api/me", Some(&hash), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, body) = api.call("GET", "/api/me", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "reviewer": "alice" }));
    let (_, body) = api.call("GET", "/api/me", Some(BOB), None).await;
    assert_eq!(body["reviewer"], "bob");

    // The page itself holds no data and needs no token; its script is pinned by hash.
    let resp = api.send("GET", "/", None, None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let html = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(html.starts_with(b"<!doctype html>"));
    let script = inline(PAGE, "script").expect("the page has its script inline");
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script));
    assert!(
        csp.contains(&format!("script-src 'sha256-{hash}'")),
        "{csp}"
    );
    assert!(csp.contains("default-src 'none'"), "{csp}");
}

#[tokio::test(flavor = "current_thread")]
async fn an_approval_over_http_lets_the_held_statement_run() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = hub(dir.path(), None);
    let api = Api::start(approvals.clone()).await;
    let older = approvals.submit(held(1)).await.unwrap();
    let ticket = approvals.submit(held(1)).await.unwrap();
    let id = ticket.request.id;

    let (status, list) = api
        .call("GET", "/api/requests?status=pending", Some(ALICE), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<i64> = list["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [id, older.request.id], "newest first");
    assert!(list["now_ms"].as_u64().unwrap() >= ticket.request.created_ms);

    let (status, shown) = api
        .call("GET", &format!("/api/requests/{id}"), Some(ALICE), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["sql"], "DROP TABLE accounts");
    assert_eq!(shown["origin"]["identity"], "agent");
    assert_eq!(shown["recent"][0], "SELECT count(*) FROM accounts");
    let digest = shown["digest"].as_str().unwrap();

    let (status, after) = api
        .call(
            "POST",
            &format!("/api/requests/{id}/approve"),
            Some(ALICE),
            Some(json!({ "digest": digest, "reason": "planned migration" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["status"], "approved");
    assert_eq!(after["votes"][0]["reviewer"], "alice");
    assert_eq!(after["votes"][0]["reason"], "planned migration");
    assert_eq!(
        ticket.outcome.await.unwrap(),
        Resolution::Run {
            sql: "DROP TABLE accounts".into(),
            edited: false,
            reviewers: vec!["alice".into()],
        }
    );

    let (_, pending) = api.call("GET", "/api/requests", Some(BOB), None).await;
    assert_eq!(pending["requests"].as_array().unwrap().len(), 1);
    let (_, all) = api
        .call("GET", "/api/requests?status=all&limit=1", Some(BOB), None)
        .await;
    assert_eq!(all["requests"][0]["id"], id);
}

#[tokio::test(flavor = "current_thread")]
async fn denials_need_a_reason_and_edits_run_instead() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = hub(dir.path(), None);
    let api = Api::start(approvals.clone()).await;

    let t = approvals.submit(held(1)).await.unwrap();
    let path = format!("/api/requests/{}/deny", t.request.id);
    let digest = t.request.digest.clone();
    for body in [
        json!({ "digest": digest }),
        json!({ "digest": digest, "reason": "  " }),
    ] {
        let (status, e) = api.call("POST", &path, Some(BOB), Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(error_of(&e).contains("reason"), "{e}");
    }
    let (status, after) = api
        .call(
            "POST",
            &path,
            Some(BOB),
            Some(json!({ "digest": digest, "reason": "not on a Friday" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["status"], "denied");
    assert_eq!(
        t.outcome.await.unwrap(),
        Resolution::Denied {
            reviewer: "bob".into(),
            reason: "not on a Friday".into()
        }
    );

    let t = approvals.submit(held(1)).await.unwrap();
    let path = format!("/api/requests/{}/edit", t.request.id);
    let digest = t.request.digest.clone();
    let (status, e) = api
        .call(
            "POST",
            &path,
            Some(ALICE),
            Some(json!({ "digest": digest })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&e).contains("sql"), "{e}");
    let (status, e) = api
        .call(
            "POST",
            &path,
            Some(ALICE),
            Some(json!({ "digest": digest, "sql": " " })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let edited = "ALTER TABLE accounts RENAME TO accounts_old";
    let (status, after) = api
        .call(
            "POST",
            &path,
            Some(ALICE),
            Some(json!({ "digest": digest, "sql": edited, "reason": "keep the data" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{after}");
    assert_eq!(after["status"], "edited");
    assert_eq!(after["effective_sql"], edited);
    assert_eq!(
        t.outcome.await.unwrap(),
        Resolution::Run {
            sql: edited.into(),
            edited: true,
            reviewers: vec!["alice".into()],
        }
    );
}

#[tokio::test(flavor = "current_thread")]
async fn errors_have_statuses_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = hub(dir.path(), None);
    let api = Api::start(approvals.clone()).await;
    let t = approvals.submit(held(2)).await.unwrap();
    let id = t.request.id;
    let digest = t.request.digest.clone();
    let approve = format!("/api/requests/{id}/approve");
    let ok_body = || Some(json!({ "digest": digest }));

    let cases: Vec<(&str, String, Option<Value>, StatusCode, &str)> = vec![
        (
            "GET",
            "/api/requests/9999".into(),
            None,
            StatusCode::NOT_FOUND,
            "no request #9999",
        ),
        (
            "POST",
            "/api/requests/9999/approve".into(),
            ok_body(),
            StatusCode::NOT_FOUND,
            "no request #9999",
        ),
        (
            "GET",
            "/api/requests/abc".into(),
            None,
            StatusCode::BAD_REQUEST,
            "is a number",
        ),
        (
            "GET",
            "/api/requests?status=done".into(),
            None,
            StatusCode::BAD_REQUEST,
            "status=pending",
        ),
        (
            "GET",
            "/api/requests?limit=-1".into(),
            None,
            StatusCode::BAD_REQUEST,
            "query string",
        ),
        (
            "POST",
            approve.clone(),
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            "digest",
        ),
        (
            "POST",
            approve.clone(),
            Some(json!({ "digest": digest, "sq": "x" })),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "POST",
            approve.clone(),
            Some(json!({ "digest": "00" })),
            StatusCode::CONFLICT,
            "changed since it was shown",
        ),
        (
            "GET",
            approve.clone(),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
        (
            "GET",
            "/api/nowhere".into(),
            None,
            StatusCode::NOT_FOUND,
            "no such API route",
        ),
        (
            "GET",
            "/nowhere".into(),
            None,
            StatusCode::NOT_FOUND,
            "reviewers' page is at /",
        ),
    ];
    for (method, path, body, want, says) in cases {
        let (status, e) = api.call(method, &path, Some(ALICE), body).await;
        assert_eq!(status, want, "{method} {path}: {e}");
        assert!(error_of(&e).contains(says), "{method} {path}: {e}");
    }

    // Not JSON at all, and a body over the cap.
    let resp = api
        .send("POST", &approve, Some(ALICE), Some("{digest"))
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let huge = format!("{{\"digest\":\"{}\"}}", "a".repeat(MAX_BODY));
    let resp = api.send("POST", &approve, Some(ALICE), Some(&huge)).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let e: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(error_of(&e).contains("bytes"), "{e}");

    // The agent's own name cannot approve its request.
    let (status, e) = api.call("POST", &approve, Some(AGENT), ok_body()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&e).contains("own identity"), "{e}");
    // One of two approvals; the same reviewer cannot give the second.
    let (status, after) = api.call("POST", &approve, Some(ALICE), ok_body()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["status"], "pending");
    let (status, e) = api.call("POST", &approve, Some(ALICE), ok_body()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&e).contains("another reviewer"), "{e}");
    let (status, after) = api.call("POST", &approve, Some(BOB), ok_body()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after["status"], "approved");
    assert!(matches!(t.outcome.await.unwrap(), Resolution::Run { .. }));
    // Decided: any later decision is refused, whoever sends it.
    let deny = format!("/api/requests/{id}/deny");
    let (status, e) = api
        .call(
            "POST",
            &deny,
            Some(BOB),
            Some(json!({ "digest": digest, "reason": "late" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(error_of(&e).contains("approved already"), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_stopped_hub_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let (approvals, hub) = Approvals::new(settings(None), store(dir.path()));
    drop(hub);
    let api = Api::start(Arc::new(approvals)).await;
    let (status, e) = api.call("GET", "/api/requests", Some(ALICE), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(error_of(&e).contains("not running"), "{e}");
}

#[tokio::test(flavor = "current_thread")]
async fn the_event_stream_tells_requests_and_decisions_as_they_happen() {
    let dir = tempfile::tempdir().unwrap();
    let approvals = hub(dir.path(), None);
    let api = Api::start(approvals.clone()).await;
    let resp = api.send("GET", "/api/events", Some(ALICE), None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();

    // Reads until `n` whole events (blocks ending in a blank line) have come.
    let mut text = String::new();
    let mut read_events = async |n: usize| -> Vec<(String, Value)> {
        loop {
            let blocks: Vec<&str> = text
                .split("\n\n")
                .filter(|b| b.contains("event:"))
                .collect();
            if text.ends_with("\n\n") && blocks.len() >= n {
                let out = blocks
                    .iter()
                    .map(|b| {
                        let field = |name: &str| {
                            b.lines()
                                .find_map(|l| l.strip_prefix(name))
                                .unwrap_or("")
                                .trim()
                                .to_owned()
                        };
                        let data = field("data:");
                        (field("event:"), serde_json::from_str(&data).unwrap())
                    })
                    .collect();
                text.clear();
                return out;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .expect("an event within 10s")
                .expect("the stream is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    };
    let first = read_events(1).await;
    assert_eq!(first[0].0, "ready");

    let t = approvals.submit(held(1)).await.unwrap();
    let ev = read_events(1).await;
    assert_eq!(ev[0].0, "requested");
    assert_eq!(ev[0].1["request"]["id"], t.request.id);
    assert_eq!(ev[0].1["kind"], "requested");

    approvals
        .decide(
            t.request.id,
            "bob",
            Action::Deny {
                reason: "no".into(),
            },
            Some(t.request.digest.clone()),
        )
        .await
        .unwrap();
    let ev = read_events(1).await;
    assert_eq!(ev[0].0, "decided");
    assert_eq!(ev[0].1["request"]["status"], "denied");
}

#[test]
fn a_taken_port_is_an_error_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let e = bind(&HttpConfig {
        listen: listen.clone(),
        public_url: None,
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with(&format!(
            "approvals.http.listen: cannot listen on {listen}:"
        )),
        "{e}"
    );
}
