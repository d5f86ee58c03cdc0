//! HTTP sinks: Splunk's HTTP Event Collector, Elasticsearch (or OpenSearch) `_bulk`, and
//! a generic signed JSON webhook. One POST per batch; a batch is acknowledged when the
//! receiver answered 2xx and, where the body says more, the body agrees.
//!
//! - `splunk_hec`: one envelope per record, concatenated, to the configured URL
//!   (`…/services/collector/event`): `{"time": <epoch seconds.micros>, "host":
//!   <gateway>, "source": "portcullis", "sourcetype": "portcullis:audit", "index"?,
//!   "event": <record>}`, with `Authorization: Splunk <token>` and, if configured,
//!   `X-Splunk-Request-Channel`. The answer must be 2xx with `"code": 0`.
//! - `elasticsearch_bulk`: NDJSON to `<url>/_bulk` (unless the URL already ends in
//!   `/_bulk`), a `create` of `_id` = `<gateway>-<seq>` per record, the record with
//!   `@timestamp` added in front. `create` makes redelivery harmless: a record already
//!   there answers 409, which counts as delivered. Any other item error fails the
//!   batch, which is sent again whole (the items that did go in answer 409 then).
//! - `json`: the batch as a JSON array of records, signed as the approvals webhooks
//!   are (`X-Portcullis-Timestamp`, `X-Portcullis-Signature: sha256=<hex HMAC-SHA256
//!   (secret, timestamp "." body)>`), with `X-Portcullis-Delivery:
//!   <gateway>-<first seq>-<last seq>` the same on every retry so a receiver can drop
//!   one it already has.

use std::time::Duration;

use axum::http::{self, HeaderValue, Method, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::config::{HttpFormat, HttpTarget};
use super::record::{Record, format_rfc3339_us, now_us};
use crate::control::webhook::{error_chain, signature};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("{host}: {why}")]
    Send { host: String, why: String },
    #[error("{host}: no answer within {}s", .after.as_secs_f32())]
    Timeout { host: String, after: Duration },
    #[error("{host} answered {status}: {body}")]
    Status {
        host: String,
        status: StatusCode,
        body: String,
    },
    #[error("{host} did not take the batch: {why}")]
    Refused { host: String, why: String },
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// What a receiver's answer may be: enough for an error message or a bulk response,
/// not a way to fill our memory.
const ANSWER_MAX: usize = 4 << 20;

pub struct Http {
    target: HttpTarget,
    client: HttpClient,
    /// Where the POST goes (for bulk, `<url>/_bulk`).
    post_to: http::Uri,
    timeout: Duration,
    host: String,
}

/// What one POST carries.
pub struct Body {
    pub bytes: Bytes,
    pub content_type: &'static str,
    /// `X-Portcullis-Event` and `X-Portcullis-Delivery` for the `json` format.
    pub event: &'static str,
    pub delivery: String,
}

impl Http {
    pub fn new(
        target: HttpTarget,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Http, HttpError> {
        let tls = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| HttpError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1();
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(tls.wrap_connector(connector));
        let post_to = match target.format {
            HttpFormat::ElasticsearchBulk => bulk_url(&target.url),
            _ => target.url.clone(),
        };
        Ok(Http {
            // Host and port, never the whole URL: it may carry credentials.
            host: match target.url.port_u16() {
                Some(p) => format!("{}:{p}", target.url.host().unwrap_or("?")),
                None => target.url.host().unwrap_or("?").to_owned(),
            },
            target,
            client,
            post_to,
            timeout,
        })
    }

    pub fn format(&self) -> HttpFormat {
        self.target.format
    }

    /// The POST body for a batch; `docs[i]` is `batch[i]` as the sink's schema has it.
    pub fn batch_body(&self, batch: &[Record], docs: &[&[u8]]) -> Body {
        let t = &self.target;
        match t.format {
            HttpFormat::SplunkHec => Body {
                bytes: hec_body(batch, docs, t.index.as_deref()).into(),
                content_type: "application/json",
                event: "audit",
                delivery: delivery(batch),
            },
            HttpFormat::ElasticsearchBulk => Body {
                bytes: bulk_body(
                    batch,
                    docs,
                    t.index.as_deref().unwrap_or("portcullis-audit"),
                )
                .into(),
                content_type: "application/x-ndjson",
                event: "audit",
                delivery: delivery(batch),
            },
            HttpFormat::Json => Body {
                bytes: json_array(docs).into(),
                content_type: "application/json",
                event: "audit",
                delivery: delivery(batch),
            },
        }
    }

    /// The POST body for one text blob (a checkpoint for a witness).
    pub fn text_body(&self, text: &str, host: &str) -> Body {
        let t = &self.target;
        let now = now_us();
        let digest = hex::encode(Sha256::digest(text.as_bytes()));
        let doc = serde_json::json!({
            "kind": "checkpoint",
            "time": format_rfc3339_us(now),
            "text": text,
        });
        match t.format {
            HttpFormat::SplunkHec => {
                let mut env = serde_json::json!({
                    "time": epoch_seconds(now),
                    "host": host,
                    "source": "portcullis",
                    "sourcetype": "portcullis:checkpoint",
                    "event": doc,
                });
                if let Some(i) = &t.index {
                    env["index"] = i.as_str().into();
                }
                Body {
                    bytes: serde_json::to_vec(&env).expect("JSON").into(),
                    content_type: "application/json",
                    event: "checkpoint",
                    delivery: digest,
                }
            }
            HttpFormat::ElasticsearchBulk => {
                let action = serde_json::json!({"create": {
                    "_index": t.index.as_deref().unwrap_or("portcullis-audit"),
                    "_id": format!("checkpoint-{digest}"),
                }});
                let mut doc = doc;
                doc["@timestamp"] = doc["time"].clone();
                let mut out = serde_json::to_vec(&action).expect("JSON");
                out.push(b'\n');
                serde_json::to_writer(&mut out, &doc).expect("JSON");
                out.push(b'\n');
                Body {
                    bytes: out.into(),
                    content_type: "application/x-ndjson",
                    event: "checkpoint",
                    delivery: digest,
                }
            }
            HttpFormat::Json => Body {
                bytes: Bytes::copy_from_slice(text.as_bytes()),
                content_type: "text/plain; charset=utf-8",
                event: "checkpoint",
                delivery: digest,
            },
        }
    }

    /// One attempt: POST, then read and judge the answer.
    pub async fn post(&self, body: &Body) -> Result<(), HttpError> {
        let host = self.host.clone();
        let timestamp = (now_us() / 1_000_000).to_string();
        let mut req = http::Request::builder()
            .method(Method::POST)
            .uri(self.post_to.clone())
            .header(header::CONTENT_TYPE, body.content_type)
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.target.authorization {
            let mut auth = auth.clone();
            auth.set_sensitive(true);
            req = req.header(header::AUTHORIZATION, auth);
        }
        if let Some(channel) = &self.target.channel {
            req = req.header("x-splunk-request-channel", channel.as_str());
        }
        if self.target.format == HttpFormat::Json {
            req = req
                .header("x-portcullis-event", body.event)
                .header("x-portcullis-delivery", body.delivery.as_str())
                .header("x-portcullis-timestamp", timestamp.as_str());
            if let Some(secret) = &self.target.secret {
                let sig = signature(secret, &timestamp, &body.bytes);
                req = req.header(
                    "x-portcullis-signature",
                    HeaderValue::from_str(&sig).expect("hex is a header value"),
                );
            }
        }
        let req = req
            .body(Full::new(body.bytes.clone()))
            .map_err(|e| HttpError::Send {
                host: host.clone(),
                why: e.to_string(),
            })?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HttpError::Send {
                    host: host.clone(),
                    why: error_chain(&e),
                })?;
            let status = resp.status();
            let answer = Limited::new(resp.into_body(), ANSWER_MAX)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| HttpError::Send {
                    host: host.clone(),
                    why: format!("reading the answer: {e}"),
                })?;
            Ok::<_, HttpError>((status, answer))
        };
        let (status, answer) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout {
                host: host.clone(),
                after: self.timeout,
            })??;
        if !status.is_success() {
            return Err(HttpError::Status {
                host,
                status,
                body: snippet(&answer),
            });
        }
        let verdict = match self.target.format {
            HttpFormat::SplunkHec => check_hec(&answer),
            HttpFormat::ElasticsearchBulk => check_bulk(&answer),
            HttpFormat::Json => Ok(()),
        };
        verdict.map_err(|why| HttpError::Refused { host, why })
    }
}

/// The start of an answer, for an error message.
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(300)]);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn delivery(batch: &[Record]) -> String {
    match (batch.first(), batch.last()) {
        (Some(a), Some(b)) => format!("{}-{}", a.id(), b.index),
        _ => String::new(),
    }
}

/// `<url>/_bulk`, keeping a path prefix (a proxy's) and not doubling `/_bulk`.
fn bulk_url(url: &http::Uri) -> http::Uri {
    let path = url.path().trim_end_matches('/');
    if path.ends_with("/_bulk") {
        return url.clone();
    }
    let mut parts = url.clone().into_parts();
    let pq = match url.query() {
        Some(q) => format!("{path}/_bulk?{q}"),
        None => format!("{path}/_bulk"),
    };
    parts.path_and_query = Some(pq.parse().expect("a path of a valid URL plus /_bulk"));
    http::Uri::from_parts(parts).expect("only the path changed")
}

/// Epoch seconds with microseconds, as HEC's `time` takes them.
fn epoch_seconds(us: i64) -> serde_json::Value {
    let s = format!(
        "{}.{:06}",
        us.div_euclid(1_000_000),
        us.rem_euclid(1_000_000)
    );
    serde_json::Value::Number(s.parse().expect("a decimal number"))
}

/// HEC envelopes, one per record, concatenated (HEC's batch format).
pub fn hec_body(batch: &[Record], docs: &[&[u8]], index: Option<&str>) -> Vec<u8> {
    let mut out = Vec::new();
    for (r, doc) in batch.iter().zip(docs) {
        // Written as digits, not through an f64, so no microsecond is rounded away.
        let us = r.time_us;
        let time = format!(
            "{{\"time\":{}.{:06}",
            us.div_euclid(1_000_000),
            us.rem_euclid(1_000_000)
        );
        out.extend_from_slice(time.as_bytes());
        out.extend_from_slice(b",\"host\":");
        let host = if r.gateway.is_empty() {
            "portcullis"
        } else {
            &r.gateway
        };
        serde_json::to_writer(&mut out, host).expect("a string");
        out.extend_from_slice(b",\"source\":\"portcullis\",\"sourcetype\":\"portcullis:audit\"");
        if let Some(i) = index {
            out.extend_from_slice(b",\"index\":");
            serde_json::to_writer(&mut out, i).expect("a string");
        }
        // The record goes in as it is: no parse and re-serialise, no reordered fields.
        out.extend_from_slice(b",\"event\":");
        out.extend_from_slice(doc);
        out.extend_from_slice(b"}\n");
    }
    out
}

/// NDJSON `create` actions with `_id` = `<gateway>-<seq>`, each record with `@timestamp`.
pub fn bulk_body(batch: &[Record], docs: &[&[u8]], index: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (r, doc) in batch.iter().zip(docs) {
        let action = serde_json::json!({"create": {"_index": index, "_id": r.id()}});
        serde_json::to_writer(&mut out, &action).expect("JSON");
        out.push(b'\n');
        // Data streams need @timestamp; spliced in front so the record stays as it is.
        out.extend_from_slice(b"{\"@timestamp\":");
        serde_json::to_writer(&mut out, &r.time).expect("a string");
        let rest = doc.strip_prefix(b"{").unwrap_or(doc);
        if rest.first() != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(rest);
        out.push(b'\n');
    }
    out
}

pub fn json_array(docs: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(d);
    }
    out.push(b']');
    out
}

#[derive(Deserialize)]
struct HecAnswer {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    text: Option<String>,
}

/// HEC says `{"text":"Success","code":0}`; anything else is not a delivery.
pub fn check_hec(answer: &[u8]) -> Result<(), String> {
    if answer.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let a: HecAnswer = serde_json::from_slice(answer)
        .map_err(|e| format!("unreadable HEC answer ({e}): {}", snippet(answer)))?;
    match a.code {
        None | Some(0) => Ok(()),
        Some(code) => Err(format!(
            "HEC code {code}: {}",
            a.text.as_deref().unwrap_or("")
        )),
    }
}

#[derive(Deserialize)]
struct BulkAnswer {
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default, rename = "_id")]
    id: Option<String>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// A bulk answer is 200 even when items failed: each item has its own status. 409 (the
/// document is already there: an earlier delivery of it went in) counts as delivered.
pub fn check_bulk(answer: &[u8]) -> Result<(), String> {
    let a: BulkAnswer = serde_json::from_slice(answer)
        .map_err(|e| format!("unreadable bulk answer ({e}): {}", snippet(answer)))?;
    if !a.errors {
        return Ok(());
    }
    let mut failed = 0usize;
    let mut first = None;
    for item in a.items.iter().flat_map(|m| m.values()) {
        if (200..300).contains(&item.status) || item.status == 409 {
            continue;
        }
        failed += 1;
        if first.is_none() {
            let reason = item
                .error
                .as_ref()
                .map(|e| match (e.get("type"), e.get("reason")) {
                    (Some(t), Some(r)) => {
                        format!("{} {}", t.as_str().unwrap_or(""), r.as_str().unwrap_or(""))
                    }
                    _ => e.to_string(),
                })
                .unwrap_or_default();
            first = Some(format!(
                "{} {}: {}",
                item.id.as_deref().unwrap_or("?"),
                item.status,
                reason
            ));
        }
    }
    match first {
        None => Ok(()),
        Some(first) => Err(format!("{failed} item(s) failed, first {first}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        [
            r#"{"v":1,"seq":0,"kind":"session_start","time":"2026-12-01T14:00:00.123456Z","gateway":"gw1"}"#,
            r#"{"v":1,"seq":1,"kind":"statement","time":"2026-12-01T14:00:01.000001Z","gateway":"gw1","sql":"SELECT 1"}"#,
        ]
        .iter()
        .enumerate()
        .map(|(i, s)| Record::from_log(i as u64, s.as_bytes().to_vec()))
        .collect()
    }

    fn docs(batch: &[Record]) -> Vec<&[u8]> {
        batch.iter().map(|r| r.json.as_slice()).collect()
    }

    #[test]
    fn hec_envelopes_carry_time_host_source_and_the_record() {
        let batch = records();
        let body = hec_body(&batch, &docs(&batch), Some("audit"));
        let lines: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&body)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["time"].to_string(), "1796133600.123456");
        assert_eq!(lines[1]["time"].to_string(), "1796133601.000001");
        assert_eq!(lines[0]["host"], "gw1");
        assert_eq!(lines[0]["source"], "portcullis");
        assert_eq!(lines[0]["sourcetype"], "portcullis:audit");
        assert_eq!(lines[0]["index"], "audit");
        assert_eq!(lines[1]["event"]["sql"], "SELECT 1");
        // The record is embedded byte for byte.
        let text = String::from_utf8(body).unwrap();
        assert!(text.contains(&format!(
            "\"event\":{}}}",
            String::from_utf8_lossy(&batch[1].json)
        )));
    }

    #[test]
    fn bulk_bodies_create_with_stable_ids_and_a_timestamp() {
        let batch = records();
        let body = String::from_utf8(bulk_body(&batch, &docs(&batch), "pc-audit")).unwrap();
        let lines: Vec<serde_json::Value> = body
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(
            lines[0],
            serde_json::json!({"create": {"_index": "pc-audit", "_id": "gw1-0"}})
        );
        assert_eq!(lines[2]["create"]["_id"], "gw1-1");
        assert_eq!(lines[1]["@timestamp"], "2026-12-01T14:00:00.123456Z");
        assert_eq!(lines[3]["sql"], "SELECT 1");
        assert!(body.ends_with('\n'), "bulk bodies end with a newline");
    }

    #[test]
    fn bulk_answers_fail_on_item_errors_but_not_on_conflicts() {
        assert!(
            check_bulk(
                br#"{"took":3,"errors":false,"items":[{"create":{"_id":"gw1-0","status":201}}]}"#
            )
            .is_ok()
        );
        let conflict = br#"{"errors":true,"items":[
            {"create":{"_id":"gw1-0","status":409,"error":{"type":"version_conflict_engine_exception","reason":"document already exists"}}},
            {"create":{"_id":"gw1-1","status":201}}]}"#;
        assert!(check_bulk(conflict).is_ok());
        let rejected = br#"{"errors":true,"items":[
            {"create":{"_id":"gw1-0","status":409}},
            {"create":{"_id":"gw1-1","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"_id":"gw1-2","status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}}]}"#;
        let e = check_bulk(rejected).unwrap_err();
        assert_eq!(
            e,
            "2 item(s) failed, first gw1-1 429: es_rejected_execution_exception queue full"
        );
        assert!(check_bulk(b"<html>proxy error</html>").is_err());
    }

    #[test]
    fn hec_answers_need_code_zero() {
        assert!(check_hec(br#"{"text":"Success","code":0}"#).is_ok());
        assert!(check_hec(b"").is_ok());
        assert_eq!(
            check_hec(br#"{"text":"Server is busy","code":9}"#).unwrap_err(),
            "HEC code 9: Server is busy"
        );
    }

    #[test]
    fn the_bulk_endpoint_is_added_once() {
        let u = |s: &str| bulk_url(&s.parse().unwrap()).to_string();
        assert_eq!(u("http://es:9200"), "http://es:9200/_bulk");
        assert_eq!(u("https://proxy/es/"), "https://proxy/es/_bulk");
        assert_eq!(u("http://es:9200/_bulk"), "http://es:9200/_bulk");
        assert_eq!(
            u("http://es:9200/?refresh=true"),
            "http://es:9200/_bulk?refresh=true"
        );
    }

    #[test]
    fn json_batches_are_arrays_of_the_records() {
        let batch = records();
        let v: serde_json::Value = serde_json::from_slice(&json_array(&docs(&batch))).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(v[0]["kind"], "session_start");
        assert_eq!(json_array(&[]), b"[]");
    }
}
