//! `SHOW CONFIG`: the running configuration as key, value and source rows, with every
//! secret redacted.
//!
//! The rows come from the running file's TOML (what the last reload applied, the
//! restart-only sections as the gateway started), then the settings the command line or
//! environment gave, which win over the file, then the defaults that matter most to an
//! operator when the file leaves them out.

/// What a redacted value shows.
pub const REDACTED: &str = "(redacted)";

/// Defaults worth showing when the file does not set them: `(key, value)`.
const DEFAULTS: &[(&str, &str)] = &[
    ("server.listen", "\"127.0.0.1:6432\""),
    ("server.io_engine", "\"auto\""),
    ("server.workers", "0"),
    ("server.max_message_bytes", "1073741824"),
    ("server.read_buffer_bytes", "131072"),
    ("server.busy_poll_us", "0"),
    ("server.read_batch_bytes", "524288"),
    ("server.handshake_timeout_secs", "15"),
    ("server.shutdown_grace_secs", "10"),
    ("upstream.port", "5432"),
    ("upstream.tls", "\"disable\""),
    ("upstream.connect_timeout_ms", "5000"),
    ("upstream.reserved_connections", "2"),
    ("log.format", "\"human\""),
    ("log.level", "\"info\""),
];

/// Whether a key holds something that must never be shown. Names of variables and
/// files that hold secrets are shown; the values themselves, URLs that may carry
/// credentials (webhooks, the shared store), and hashes of tokens are not.
pub fn is_secret(key: &str) -> bool {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    if leaf.ends_with("_env") || leaf.ends_with("_file") {
        return false;
    }
    const WORDS: [&str; 6] = [
        "password",
        "secret",
        "token",
        "credential",
        "url",
        "private",
    ];
    if WORDS.iter().any(|w| leaf.contains(w)) && leaf != "public_url" {
        return true;
    }
    // `key` alone is a path to key material (`server.tls.key`): the path is fine, but a
    // literal key inline is not, so anything that looks like PEM is redacted below.
    false
}

/// Renders one value as TOML would, redacting it when its key is secret or it looks like
/// key material.
fn render(key: &str, v: &toml::Value) -> String {
    if is_secret(key) {
        return REDACTED.into();
    }
    let text = v.to_string();
    if text.contains("-----BEGIN") || text.contains("SCRAM-SHA-256$") {
        return REDACTED.into();
    }
    text
}

fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String, String)>) {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
            {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(inner) = item {
                        flatten(&format!("{key}[{i}]"), inner, out);
                    }
                }
            }
            other => {
                let value = render(&key, other);
                out.push((key, value, "file".into()));
            }
        }
    }
}

/// The rows, in file order, then overrides and defaults not in the file.
pub fn rows(file: &toml::Table, overrides: &[(String, String)]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    flatten("", file, &mut out);
    for (key, value) in overrides {
        let value = if is_secret(key) {
            REDACTED.to_owned()
        } else {
            value.clone()
        };
        match out.iter_mut().find(|r| &r.0 == key) {
            Some(r) if r.1 == value => {}
            Some(r) => {
                r.1 = value;
                r.2 = "command line or environment".into();
            }
            None => out.push((key.clone(), value, "command line or environment".into())),
        }
    }
    for (key, value) in DEFAULTS {
        if !out.iter().any(|r| r.0 == *key) {
            out.push(((*key).into(), (*value).into(), "default".into()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn secrets_never_show() {
        let t = table(
            r#"
[server]
listen = "127.0.0.1:7000"
[server.tls]
cert = "/etc/p/cert.pem"
key = "/etc/p/key.pem"
[upstream]
host = "db"
user = "gw"
password = "hunter2"
password_env = "PGPASS"
[[identity]]
name = "ops"
secret = "SCRAM-SHA-256$4096:abc$def:ghi"
roles = ["admin"]
[approvals]
postgres_url = "postgres://u:pw@h/db"
[[approvals.reviewer]]
name = "alice"
token_sha256 = "00ff"
[[approvals.webhook]]
url = "https://hooks.example/T000/B000/XXXX"
secret = "whsec"
[audit]
dir = "/var/lib/p"
signing_key = "/etc/p/audit.pem"
"#,
        );
        let rows = rows(&t, &[]);
        let text = format!("{rows:?}");
        for secret in ["hunter2", "SCRAM-SHA-256$", "pw@h", "00ff", "XXXX", "whsec"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        let get = |k: &str| rows.iter().find(|r| r.0 == k).map(|r| r.1.clone());
        assert_eq!(get("upstream.password").as_deref(), Some(REDACTED));
        assert_eq!(get("upstream.password_env").as_deref(), Some("\"PGPASS\""));
        assert_eq!(get("server.tls.key").as_deref(), Some("\"/etc/p/key.pem\""));
        assert_eq!(get("identity[0].name").as_deref(), Some("\"ops\""));
        assert_eq!(get("identity[0].roles").as_deref(), Some("[\"admin\"]"));
        assert_eq!(
            get("approvals.reviewer[0].name").as_deref(),
            Some("\"alice\"")
        );
        assert_eq!(
            get("audit.signing_key").as_deref(),
            Some("\"/etc/p/audit.pem\"")
        );
    }

    #[test]
    fn overrides_and_defaults_say_where_they_come_from() {
        let t = table("[server]\nlisten = \"127.0.0.1:7000\"\nworkers = 2\n");
        let rows = rows(
            &t,
            &[
                ("server.listen".into(), "\"127.0.0.1:7001\"".into()),
                ("server.workers".into(), "2".into()),
            ],
        );
        let get = |k: &str| rows.iter().find(|r| r.0 == k).cloned().unwrap();
        assert_eq!(get("server.listen").1, "\"127.0.0.1:7001\"");
        assert_eq!(get("server.listen").2, "command line or environment");
        assert_eq!(get("server.workers").2, "file");
        assert_eq!(get("log.level").2, "default");
    }
}
