//! Records as OCSF 1.3 events (`schema = "ocsf"`), per the mapping in
//! `docs/audit-siem.md`:
//!
//! - `statement`, `outcome`, `refusal`: Datastore Activity (class 6005, category 6
//!   Application Activity); the activity from the statement's command (Query, Create,
//!   Update, Delete, Other).
//! - `session_start`, `session_end`: Authentication (class 3002, category 3 Identity &
//!   Access Management), Logon and Logoff.
//! - every other kind: Base Event (class 0), activity Other.
//!
//! Whatever OCSF has no attribute for (rows, every table after the first, masking
//! counts, hashes, …) goes under `unmapped`, named as in the record. Every event keeps
//! the record's place: `metadata.uid` = `<gateway>-<seq>`, `metadata.sequence` = seq,
//! `metadata.event_code` = kind, `metadata.original_time` = time.

use serde_json::{Map, Value, json};

use super::record::Record;

/// OCSF's schema version these events follow.
pub const OCSF_VERSION: &str = "1.3.0";

/// The event for a record, as JSON on one line.
pub fn render_bytes(r: &Record) -> Vec<u8> {
    serde_json::to_vec(&render(r)).expect("a JSON value serialises")
}

pub fn render(r: &Record) -> Value {
    let rec: Map<String, Value> = serde_json::from_slice(&r.json).unwrap_or_default();
    let get = |k: &str| rec.get(k).cloned().unwrap_or(Value::Null);
    let mut unmapped = Map::new();
    let mut keep = |k: &str| {
        if let Some(v) = rec.get(k).filter(|v| !v.is_null()) {
            unmapped.insert(k.to_owned(), v.clone());
        }
    };
    let mut ev = match r.kind.as_str() {
        "statement" | "outcome" | "refusal" => {
            let (activity_id, activity_name) = match r.kind.as_str() {
                "refusal" => (99, "Refused".to_owned()),
                "outcome" => {
                    let tag = rec
                        .get("tags")
                        .and_then(|t| t.get(0))
                        .and_then(Value::as_str);
                    activity(tag.unwrap_or(""))
                }
                _ => activity(rec.get("sql").and_then(Value::as_str).unwrap_or("")),
            };
            let mut e = base(
                6005,
                "Datastore Activity",
                6,
                "Application Activity",
                activity_id,
                &activity_name,
            );
            e.insert("actor".into(), actor(&rec));
            let mut db = json!({"type": "PostgreSQL"});
            if let Some(name) = rec.get("database").filter(|v| v.is_string()) {
                db["name"] = name.clone();
            }
            e.insert("database".into(), db);
            e.insert("type_id".into(), json!(1));
            e.insert("type".into(), json!("Database"));
            let mut query = json!({"uid": format!("{}/{}", get("session").as_str().unwrap_or(""), get("stmt"))});
            match r.kind.as_str() {
                "statement" => {
                    query["query_string"] = get("sql");
                    let policy = rec.get("policy").filter(|p| p.is_object());
                    let tables = policy.map(tables).unwrap_or_default();
                    if let Some(first) = tables.first() {
                        e.insert("table".into(), json!({"name": first}));
                    }
                    if let Some(p) = policy {
                        let verdict = p.get("verdict").and_then(Value::as_str).unwrap_or("");
                        let (id, name) = match verdict {
                            "allow" => (1, "Allowed"),
                            "deny" => (2, "Blocked"),
                            "hold" => (14, "Delayed"),
                            _ => (99, verdict),
                        };
                        e.insert("disposition_id".into(), json!(id));
                        e.insert("disposition".into(), json!(name));
                        if let Some(rule) = p.get("rule").filter(|v| !v.is_null()) {
                            e.insert("policy".into(), json!({"name": rule, "is_applied": true}));
                        }
                    }
                    keep("via");
                    keep("params");
                    keep("fingerprint");
                    if let Some(p) = policy {
                        unmapped.insert("policy".into(), p.clone());
                    }
                }
                "outcome" => {
                    let failed = rec.get("sqlstate").is_some_and(|s| !s.is_null());
                    status(&mut e, !failed, rec.get("sqlstate"), None);
                    if let Some(us) = rec.get("duration_us").and_then(Value::as_u64) {
                        e.insert("duration".into(), json!(us / 1000));
                    }
                    if let Some(b) = rec.get("bytes_to_agent").filter(|v| v.is_u64()) {
                        query["bytes"] = b.clone();
                    }
                    for k in ["tags", "rows", "duration_us", "masked", "result_sha256"] {
                        keep(k);
                    }
                }
                _ => {
                    status(&mut e, false, rec.get("sqlstate"), rec.get("message"));
                    e.insert("disposition_id".into(), json!(2));
                    e.insert("disposition".into(), json!("Blocked"));
                }
            }
            e.insert("query_info".into(), query);
            e
        }
        "session_start" | "session_end" | "login_refused" => {
            let refused = r.kind == "login_refused";
            let logon = r.kind == "session_start" || refused;
            let (id, name) = if logon { (1, "Logon") } else { (2, "Logoff") };
            let mut e = base(
                3002,
                "Authentication",
                3,
                "Identity & Access Management",
                id,
                name,
            );
            e.insert("user".into(), user(&rec));
            e.insert("session".into(), json!({"uid": get("session")}));
            e.insert(
                "service".into(),
                json!({"name": "portcullis", "uid": r.gateway}),
            );
            e.insert("is_remote".into(), json!(true));
            if logon {
                let (pid, pname) = match rec.get("auth").and_then(Value::as_str) {
                    Some("oidc") => (4, "OpenID".to_owned()),
                    Some("scram-sha-256") => (99, "SCRAM-SHA-256".to_owned()),
                    Some(other) => (99, other.to_owned()),
                    None => (0, "Unknown".to_owned()),
                };
                e.insert("auth_protocol_id".into(), json!(pid));
                e.insert("auth_protocol".into(), json!(pname));
                let mut src = Map::new();
                if let Some(ip) = rec.get("client_addr").filter(|v| v.is_string()) {
                    src.insert("ip".into(), ip.clone());
                }
                if let Some(port) = rec.get("client_port").filter(|v| v.is_u64()) {
                    src.insert("port".into(), port.clone());
                }
                e.insert("src_endpoint".into(), Value::Object(src));
                e.insert(
                    "is_cleartext".into(),
                    json!(rec.get("tls").is_none_or(Value::is_null)),
                );
                if refused {
                    status(&mut e, false, None, rec.get("reason"));
                } else {
                    status(&mut e, true, None, None);
                }
                for k in ["tls", "application_name", "database", "upstream_role"] {
                    keep(k);
                }
            } else {
                if let Some(ms) = rec.get("duration_ms").filter(|v| v.is_u64()) {
                    e.insert("duration".into(), ms.clone());
                }
                if let Some(reason) = rec.get("reason").filter(|v| v.is_string()) {
                    e.insert("status_detail".into(), reason.clone());
                }
                status(&mut e, true, None, None);
                keep("statements");
            }
            e
        }
        other => {
            let mut e = base(0, "Base Event", 0, "Uncategorized", 99, other);
            let message = match other {
                "gateway_start" => "gateway started",
                "gateway_stop" => "gateway stopped",
                "config_reload" => "configuration reloaded",
                "console_login" => "admin console login",
                "console_command" => "admin console command",
                "approval_request" => "statement held for approval",
                "approval_decision" => "approval decided",
                "guard_bypass" => "traffic around the gateway",
                _ => "",
            };
            if !message.is_empty() {
                e.insert("message".into(), json!(message));
            }
            for (k, v) in &rec {
                if !matches!(k.as_str(), "v" | "seq" | "kind" | "time" | "gateway") {
                    unmapped.insert(k.clone(), v.clone());
                }
            }
            e
        }
    };
    let sev = match r.kind.as_str() {
        "refusal" | "guard_bypass" => 3,
        _ => 1,
    };
    ev.insert("severity_id".into(), json!(sev));
    ev.insert(
        "severity".into(),
        json!(if sev == 3 { "Medium" } else { "Informational" }),
    );
    ev.insert("time".into(), json!(r.time_us.div_euclid(1000)));
    ev.insert(
        "metadata".into(),
        json!({
            "version": OCSF_VERSION,
            "product": {
                "name": "Portcullis",
                "vendor_name": "Portcullis",
                "version": env!("CARGO_PKG_VERSION"),
            },
            "uid": r.id(),
            "sequence": r.index,
            "event_code": r.kind,
            "original_time": r.time,
            "log_name": "portcullis-audit",
        }),
    );
    if !unmapped.is_empty() {
        ev.insert("unmapped".into(), Value::Object(unmapped));
    }
    Value::Object(ev)
}

fn base(
    class_uid: u32,
    class_name: &str,
    category_uid: u32,
    category_name: &str,
    activity_id: u32,
    activity_name: &str,
) -> Map<String, Value> {
    let mut e = Map::new();
    e.insert("class_uid".into(), json!(class_uid));
    e.insert("class_name".into(), json!(class_name));
    e.insert("category_uid".into(), json!(category_uid));
    e.insert("category_name".into(), json!(category_name));
    e.insert("activity_id".into(), json!(activity_id));
    e.insert("activity_name".into(), json!(activity_name));
    e.insert(
        "type_uid".into(),
        json!(u64::from(class_uid) * 100 + u64::from(activity_id)),
    );
    e.insert(
        "type_name".into(),
        json!(format!("{class_name}: {activity_name}")),
    );
    e
}

fn status(e: &mut Map<String, Value>, ok: bool, code: Option<&Value>, detail: Option<&Value>) {
    e.insert("status_id".into(), json!(if ok { 1 } else { 2 }));
    e.insert(
        "status".into(),
        json!(if ok { "Success" } else { "Failure" }),
    );
    if let Some(c) = code.filter(|v| !v.is_null()) {
        e.insert("status_code".into(), c.clone());
    }
    if let Some(d) = detail.filter(|v| !v.is_null()) {
        e.insert("status_detail".into(), d.clone());
    }
}

/// The user, when the record names one (session records carry `identity`).
fn user(rec: &Map<String, Value>) -> Value {
    match rec.get("identity").filter(|v| v.is_string()) {
        Some(name) => json!({"name": name, "type_id": 1, "type": "User"}),
        None => json!({"type_id": 0, "type": "Unknown"}),
    }
}

fn actor(rec: &Map<String, Value>) -> Value {
    let mut a = json!({"session": {"uid": rec.get("session").cloned().unwrap_or(Value::Null)}});
    if rec.get("identity").is_some_and(Value::is_string) {
        a["user"] = user(rec);
    }
    a
}

/// Tables a policy read or wrote, reads first, each once.
fn tables(policy: &Value) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in ["reads", "writes"] {
        for t in policy
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(t) = t.as_str().filter(|t| !out.iter().any(|o| o == t)) {
                out.push(t.to_owned());
            }
        }
    }
    out
}

/// The statement's command (its first keyword, or a command tag's) as a Datastore
/// Activity, and the command itself for `activity_name`.
pub fn activity(sql_or_tag: &str) -> (u32, String) {
    let command = operation_name(sql_or_tag);
    let id = match command.as_str() {
        "SELECT" | "WITH" | "TABLE" | "VALUES" | "SHOW" | "FETCH" => 4,
        "INSERT" | "COPY" => 6,
        "UPDATE" | "MERGE" => 2,
        "DELETE" | "TRUNCATE" => 7,
        _ => 99,
    };
    let name = match id {
        4 => "Query".to_owned(),
        6 => "Create".to_owned(),
        2 => "Update".to_owned(),
        7 => "Delete".to_owned(),
        _ if command.is_empty() => "Other".to_owned(),
        _ => command,
    };
    (id, name)
}

/// The first keyword, upper case, after leading blanks, parentheses and comments: what
/// OpenTelemetry calls `db.operation.name` for a single statement.
pub fn operation_name(sql: &str) -> String {
    let mut s = sql;
    loop {
        s = s.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = s.strip_prefix("/*") {
            s = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    s.chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: &str) -> Value {
        let bytes = json.as_bytes().to_vec();
        let seq = serde_json::from_slice::<Value>(&bytes).unwrap()["seq"]
            .as_u64()
            .unwrap();
        render(&Record::from_log(seq, bytes))
    }

    #[test]
    fn a_statement_is_datastore_activity() {
        let e = event(
            r#"{"v":1,"seq":5,"kind":"statement","time":"2026-12-01T14:00:00.123456Z","gateway":"gw1","session":"s-1","stmt":3,"sql":"/* app */ SELECT * FROM accounts JOIN cards USING (id)","via":"simple","params":null,"fingerprint":"ab12","policy":{"class":"read","reads":["accounts","cards"],"writes":[],"rule":"read-only","verdict":"allow"}}"#,
        );
        assert_eq!(e["class_uid"], 6005);
        assert_eq!(e["category_uid"], 6);
        assert_eq!(
            (e["activity_id"].as_u64(), e["activity_name"].as_str()),
            (Some(4), Some("Query"))
        );
        assert_eq!(e["type_uid"], 600504);
        assert_eq!(e["time"], 1_796_133_600_123i64);
        assert_eq!(e["metadata"]["uid"], "gw1-5");
        assert_eq!(e["metadata"]["sequence"], 5);
        assert_eq!(e["metadata"]["version"], OCSF_VERSION);
        assert_eq!(e["actor"]["session"]["uid"], "s-1");
        assert_eq!(e["query_info"]["uid"], "s-1/3");
        assert_eq!(
            e["query_info"]["query_string"],
            "/* app */ SELECT * FROM accounts JOIN cards USING (id)"
        );
        assert_eq!(e["database"]["type"], "PostgreSQL");
        assert_eq!(e["table"]["name"], "accounts");
        assert_eq!(e["disposition_id"], 1);
        assert_eq!(e["policy"]["name"], "read-only");
        // What OCSF has no place for, in one place.
        assert_eq!(e["unmapped"]["policy"]["reads"][1], "cards");
        assert_eq!(e["unmapped"]["fingerprint"], "ab12");
    }

    #[test]
    fn outcomes_and_refusals_carry_status() {
        let e = event(
            r#"{"v":1,"seq":6,"kind":"outcome","time":"2026-12-01T14:00:00.2Z","gateway":"gw1","session":"s-1","stmt":3,"tags":["DELETE 2"],"rows":2,"sqlstate":null,"duration_us":1500,"bytes_to_agent":120,"masked":{"ssn":2},"result_sha256":"00"}"#,
        );
        assert_eq!(
            (e["activity_id"].as_u64(), e["status_id"].as_u64()),
            (Some(7), Some(1))
        );
        assert_eq!(e["duration"], 1);
        assert_eq!(e["query_info"]["bytes"], 120);
        assert_eq!(e["unmapped"]["rows"], 2);
        assert_eq!(e["unmapped"]["masked"]["ssn"], 2);

        let e = event(
            r#"{"v":1,"seq":7,"kind":"refusal","time":"2026-12-01T14:00:00.3Z","gateway":"gw1","session":"s-1","stmt":4,"sqlstate":"42501","message":"DROP needs approval"}"#,
        );
        assert_eq!(e["class_uid"], 6005);
        assert_eq!(
            (e["status_id"].as_u64(), e["status_code"].as_str()),
            (Some(2), Some("42501"))
        );
        assert_eq!(e["status_detail"], "DROP needs approval");
        assert_eq!(e["disposition"], "Blocked");
    }

    #[test]
    fn sessions_are_authentication() {
        let e = event(
            r#"{"v":1,"seq":1,"kind":"session_start","time":"2026-12-01T14:00:00Z","gateway":"gw1","session":"s-1","identity":"agent","auth":"scram-sha-256","client_addr":"10.0.0.7","client_port":50432,"tls":"TLSv1.3","application_name":"psql","database":"bank","upstream_role":"portcullis_agent"}"#,
        );
        assert_eq!(
            (e["class_uid"].as_u64(), e["activity_id"].as_u64()),
            (Some(3002), Some(1))
        );
        assert_eq!(e["type_uid"], 300201);
        assert_eq!(e["user"]["name"], "agent");
        assert_eq!(e["src_endpoint"]["ip"], "10.0.0.7");
        assert_eq!(e["src_endpoint"]["port"], 50432);
        assert_eq!(e["auth_protocol"], "SCRAM-SHA-256");
        assert_eq!(e["is_cleartext"], false);
        assert_eq!(e["session"]["uid"], "s-1");
        assert_eq!(e["unmapped"]["database"], "bank");

        let e = event(
            r#"{"v":1,"seq":9,"kind":"session_end","time":"2026-12-01T14:00:09Z","gateway":"gw1","session":"s-1","reason":"client closed","duration_ms":9000,"statements":4}"#,
        );
        assert_eq!(
            (e["activity_id"].as_u64(), e["duration"].as_u64()),
            (Some(2), Some(9000))
        );
        assert_eq!(e["status_detail"], "client closed");
        assert_eq!(e["unmapped"]["statements"], 4);
    }

    #[test]
    fn other_kinds_are_base_events_with_everything_unmapped() {
        let e = event(
            r#"{"v":1,"seq":2,"kind":"guard_bypass","time":"2026-12-01T14:00:00Z","gateway":"gw1","src":"10.0.0.9","dst":"10.0.0.5","dport":5432,"proto":"tcp","count":3}"#,
        );
        assert_eq!(
            (e["class_uid"].as_u64(), e["activity_id"].as_u64()),
            (Some(0), Some(99))
        );
        assert_eq!(e["unmapped"]["dport"], 5432);
        assert_eq!(e["severity_id"], 3);
    }

    #[test]
    fn operation_names_skip_comments_and_parentheses() {
        assert_eq!(operation_name("  -- x\n (select 1)"), "SELECT");
        assert_eq!(operation_name("/* a */insert into t values (1)"), "INSERT");
        assert_eq!(operation_name("INSERT 0 1"), "INSERT");
        assert_eq!(operation_name(""), "");
        assert_eq!(activity("DROP TABLE x"), (99, "DROP".into()));
    }

    #[test]
    fn a_refused_login_is_a_failed_logon() {
        let v = event(
            r#"{"v":1,"seq":3,"kind":"login_refused","time":"2026-12-01T14:00:00Z","gateway":"gw1","identity":"mallory","auth":"scram-sha-256","client_addr":"10.0.0.9","client_port":50000,"tls":null,"reason":"password authentication failed (28P01)"}"#,
        );
        assert_eq!(
            (v["class_uid"].as_i64(), v["activity_id"].as_i64()),
            (Some(3002), Some(1))
        );
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["status_detail"], "password authentication failed (28P01)");
        assert_eq!(v["src_endpoint"]["ip"], "10.0.0.9");
    }
}
