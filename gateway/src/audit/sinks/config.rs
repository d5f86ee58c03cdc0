//! `[[audit.sinks]]` entries, exactly as written in TOML, and their checked form.
//!
//! ```toml
//! [[audit.sinks]]
//! name = "siem"                      # also the cursor file: <log dir>/cursors/siem
//! kind = "syslog"                    # "stdout" | "syslog" | "http"
//! address = "tcp:siem.example.com:6514"   # "unix:/dev/log" | "udp:host:port" | "tcp:host:port"
//! facility = "local0"
//! app_name = "portcullis"
//!
//! [[audit.sinks]]
//! name = "splunk"
//! kind = "http"
//! url = "https://splunk.example.com:8088/services/collector/event"
//! format = "splunk_hec"              # "splunk_hec" | "elasticsearch_bulk" | "json"
//! token_env = "PORTCULLIS_HEC_TOKEN"
//! schema = "ocsf"                    # records as OCSF events instead of Portcullis' own
//! ```
//!
//! [`SinkConfig::check`] resolves what parsing cannot (addresses, URLs, secrets from the
//! environment) so that a mistake stops `check-config` and start-up, not the first batch.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::{HeaderValue, Uri};
use base64::Engine;
use serde::Deserialize;

/// A value that cannot work; `key` is its full TOML path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct SinkConfigError {
    pub key: String,
    pub problem: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One record a line on the gateway's standard output (containers, journald).
    Stdout,
    Syslog,
    Http,
}

/// The body an `http` sink posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    /// Splunk's HTTP Event Collector: one event envelope per record.
    SplunkHec,
    /// Elasticsearch / OpenSearch `_bulk`, `create` with `_id` = `<gateway>-<seq>`.
    ElasticsearchBulk,
    /// A JSON array of records, signed like the approvals webhooks.
    Json,
}

/// What each record looks like when it leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// The record as it is in the log, byte for byte.
    #[default]
    Portcullis,
    /// An OCSF event (see `docs/audit-siem.md`).
    Ocsf,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    #[serde(default)]
    pub schema: Schema,

    // --- syslog
    #[serde(default)]
    pub address: Option<String>,
    /// RFC 5424 facility name (`kern` … `local7`); `local0` when not set.
    #[serde(default)]
    pub facility: Option<String>,
    #[serde(default)]
    pub app_name: Option<String>,
    /// The HOSTNAME field; the machine's host name when not set.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Longest datagram (unix and udp); longer messages are cut there. TCP is not cut.
    #[serde(default)]
    pub max_message: Option<usize>,

    // --- http
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Option<HttpFormat>,
    /// Splunk: the HEC token. Elasticsearch: an API key (`Authorization: ApiKey …`).
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    /// Elasticsearch basic authentication, instead of a token.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// `json`: key of the `X-Portcullis-Signature` HMAC.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Elasticsearch index (or data stream); Splunk index (the token's default if unset).
    #[serde(default)]
    pub index: Option<String>,
    /// Splunk HEC channel (`X-Splunk-Request-Channel`), needed when the token has
    /// indexer acknowledgement on.
    #[serde(default)]
    pub channel: Option<String>,

    // --- delivery
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// One attempt: connect, send, and the receiver's answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Wait after the first failure; doubled after each next one up to `retry_max_ms`.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_batch_max() -> usize {
    500
}
fn default_batch_bytes() -> usize {
    1 << 20
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_retry_initial_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    60_000
}

/// Where a syslog sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyslogAddress {
    Unix(PathBuf),
    /// `host:port`, resolved at each connect so a moved collector is followed.
    Udp(String),
    Tcp(String),
}

/// A sink ready to run: everything [`SinkConfig`] names, resolved.
#[derive(Debug, Clone)]
pub struct Checked {
    pub name: String,
    pub schema: Schema,
    pub target: Target,
    pub batch_max: usize,
    pub batch_bytes: usize,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

#[derive(Debug, Clone)]
pub enum Target {
    Stdout,
    Syslog(SyslogTarget),
    Http(HttpTarget),
}

#[derive(Debug, Clone)]
pub struct SyslogTarget {
    pub address: SyslogAddress,
    pub facility: u8,
    pub app_name: String,
    pub hostname: String,
    pub max_message: usize,
}

#[derive(Clone)]
pub struct HttpTarget {
    pub url: Uri,
    pub format: HttpFormat,
    pub authorization: Option<HeaderValue>,
    pub secret: Option<Vec<u8>>,
    pub index: Option<String>,
    pub channel: Option<String>,
}

// Credentials stay out of logs and panics.
impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("host", &self.url.host())
            .field("format", &self.format)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Longest UDP payload over IPv4; also the default for unix datagrams.
const DATAGRAM_MAX: usize = 65_507;

impl SinkConfig {
    /// A sink for the tests and for callers that build one in code.
    pub fn new(name: &str, kind: SinkKind) -> SinkConfig {
        SinkConfig {
            name: name.into(),
            kind,
            schema: Schema::default(),
            address: None,
            facility: None,
            app_name: None,
            hostname: None,
            max_message: None,
            url: None,
            format: None,
            token: None,
            token_env: None,
            username: None,
            password: None,
            password_env: None,
            secret: None,
            secret_env: None,
            index: None,
            channel: None,
            batch_max: default_batch_max(),
            batch_bytes: default_batch_bytes(),
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
        }
    }

    /// Checks entry `index` of `[[audit.sinks]]` and resolves it.
    pub fn check(&self, index: usize) -> Result<Checked, SinkConfigError> {
        let key = |field: &str| format!("audit.sinks[{index}].{field}");
        let bad = |field: &str, problem: String| SinkConfigError {
            key: key(field),
            problem,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && !self.name.starts_with('.')
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err(bad(
                "name",
                format!(
                    "\"{}\" must be 1-64 letters, digits, '-', '_' or '.' (not first): it names the sink's cursor file",
                    self.name
                ),
            ));
        }
        if self.batch_max == 0 || self.batch_bytes == 0 {
            return Err(bad(
                "batch_max",
                "batch_max and batch_bytes must be > 0".into(),
            ));
        }
        let foreign = |fields: &[(&str, bool)], kind: &str| -> Result<(), SinkConfigError> {
            match fields.iter().find(|(_, set)| *set) {
                Some((f, _)) => Err(bad(f, format!("is not a setting of a {kind} sink"))),
                None => Ok(()),
            }
        };
        let syslog_fields = [
            ("address", self.address.is_some()),
            ("facility", self.facility.is_some()),
            ("app_name", self.app_name.is_some()),
            ("hostname", self.hostname.is_some()),
            ("max_message", self.max_message.is_some()),
        ];
        let http_fields = [
            ("url", self.url.is_some()),
            ("format", self.format.is_some()),
            ("token", self.token.is_some()),
            ("token_env", self.token_env.is_some()),
            ("username", self.username.is_some()),
            ("password", self.password.is_some()),
            ("password_env", self.password_env.is_some()),
            ("secret", self.secret.is_some()),
            ("secret_env", self.secret_env.is_some()),
            ("index", self.index.is_some()),
            ("channel", self.channel.is_some()),
        ];
        let target = match self.kind {
            SinkKind::Stdout => {
                foreign(&syslog_fields, "stdout")?;
                foreign(&http_fields, "stdout")?;
                Target::Stdout
            }
            SinkKind::Syslog => {
                foreign(&http_fields, "syslog")?;
                Target::Syslog(self.check_syslog(&bad)?)
            }
            SinkKind::Http => {
                foreign(&syslog_fields, "http")?;
                Target::Http(self.check_http(&bad)?)
            }
        };
        Ok(Checked {
            name: self.name.clone(),
            schema: self.schema,
            target,
            batch_max: self.batch_max,
            batch_bytes: self.batch_bytes,
            timeout: Duration::from_millis(self.timeout_ms.max(1)),
            connect_timeout: Duration::from_millis(self.connect_timeout_ms.max(1)),
            retry_initial: Duration::from_millis(self.retry_initial_ms.max(1)),
            retry_max: Duration::from_millis(self.retry_max_ms.max(self.retry_initial_ms).max(1)),
        })
    }

    fn check_syslog(
        &self,
        bad: &dyn Fn(&str, String) -> SinkConfigError,
    ) -> Result<SyslogTarget, SinkConfigError> {
        let raw = self
            .address
            .as_deref()
            .ok_or_else(|| bad("address", "a syslog sink needs an address".into()))?;
        let host_port = |rest: &str| -> Result<String, SinkConfigError> {
            match rest.rsplit_once(':') {
                Some((host, port))
                    if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) =>
                {
                    Ok(rest.to_owned())
                }
                _ => Err(bad(
                    "address",
                    format!("\"{raw}\": expected host:port after the scheme"),
                )),
            }
        };
        let address = if let Some(path) = raw.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(bad(
                    "address",
                    format!("\"{raw}\": the socket path must be absolute"),
                ));
            }
            SyslogAddress::Unix(PathBuf::from(path))
        } else if let Some(rest) = raw.strip_prefix("udp:") {
            SyslogAddress::Udp(host_port(rest)?)
        } else if let Some(rest) = raw.strip_prefix("tcp:") {
            SyslogAddress::Tcp(host_port(rest)?)
        } else {
            return Err(bad(
                "address",
                format!("\"{raw}\": expected unix:/path, udp:host:port or tcp:host:port"),
            ));
        };
        let facility = match self.facility.as_deref() {
            None => 16,
            Some(f) => FACILITIES.iter().position(|n| *n == f).ok_or_else(|| {
                bad(
                    "facility",
                    format!("\"{f}\" is not one of {}", FACILITIES.join(", ")),
                )
            })? as u8,
        };
        let app_name = self.app_name.clone().unwrap_or_else(|| "portcullis".into());
        if !header_field_ok(&app_name, 48) {
            return Err(bad(
                "app_name",
                "must be 1-48 printable ASCII characters without spaces (RFC 5424)".into(),
            ));
        }
        let hostname = match &self.hostname {
            Some(h) => h.clone(),
            None => host_name(),
        };
        if !header_field_ok(&hostname, 255) {
            return Err(bad(
                "hostname",
                "must be 1-255 printable ASCII characters without spaces (RFC 5424)".into(),
            ));
        }
        let max_message = self.max_message.unwrap_or(DATAGRAM_MAX);
        if max_message < 480 {
            return Err(bad(
                "max_message",
                "must be at least 480 (RFC 5426's smallest datagram every receiver takes)".into(),
            ));
        }
        Ok(SyslogTarget {
            address,
            facility,
            app_name,
            hostname,
            max_message,
        })
    }

    fn check_http(
        &self,
        bad: &dyn Fn(&str, String) -> SinkConfigError,
    ) -> Result<HttpTarget, SinkConfigError> {
        let raw = self
            .url
            .as_deref()
            .ok_or_else(|| bad("url", "an http sink needs a url".into()))?;
        let url: Uri = raw
            .parse()
            .map_err(|_| bad("url", format!("\"{raw}\" is not a URL")))?;
        if !matches!(url.scheme_str(), Some("http" | "https"))
            || url.host().is_none_or(str::is_empty)
        {
            return Err(bad(
                "url",
                format!("\"{raw}\" is not an http:// or https:// URL"),
            ));
        }
        let format = self.format.ok_or_else(|| {
            bad(
                "format",
                "an http sink needs a format: splunk_hec, elasticsearch_bulk or json".into(),
            )
        })?;
        let token = either(&self.token, &self.token_env).map_err(|p| bad("token", p))?;
        let password =
            either(&self.password, &self.password_env).map_err(|p| bad("password", p))?;
        let secret = either(&self.secret, &self.secret_env).map_err(|p| bad("secret", p))?;
        let only = |field: &str, set: bool, formats: &str| -> Result<(), SinkConfigError> {
            if set {
                Err(bad(field, format!("only applies to format = {formats}")))
            } else {
                Ok(())
            }
        };
        let header = |v: String| {
            HeaderValue::from_str(&v)
                .map_err(|_| bad("token", "is not a valid header value".into()))
        };
        let authorization = match format {
            HttpFormat::SplunkHec => {
                only(
                    "username",
                    self.username.is_some() || password.is_some(),
                    "elasticsearch_bulk",
                )?;
                only("secret", secret.is_some(), "json")?;
                let token = token
                    .ok_or_else(|| bad("token", "Splunk HEC needs token or token_env".into()))?;
                Some(header(format!("Splunk {token}"))?)
            }
            HttpFormat::ElasticsearchBulk => {
                only("secret", secret.is_some(), "json")?;
                only("channel", self.channel.is_some(), "splunk_hec")?;
                match (token, &self.username, password) {
                    (Some(_), Some(_), _) => {
                        return Err(bad(
                            "token",
                            "set either token (an API key) or username and password, not both"
                                .into(),
                        ));
                    }
                    (Some(t), None, None) => Some(header(format!("ApiKey {t}"))?),
                    (None, Some(u), Some(p)) => {
                        let b =
                            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                        Some(header(format!("Basic {b}"))?)
                    }
                    (None, Some(_), None) => {
                        return Err(bad(
                            "password",
                            "username needs password or password_env".into(),
                        ));
                    }
                    (_, None, Some(_)) => {
                        return Err(bad("username", "password needs a username".into()));
                    }
                    (None, None, None) => None,
                }
            }
            HttpFormat::Json => {
                only("token", token.is_some(), "splunk_hec or elasticsearch_bulk")?;
                only(
                    "username",
                    self.username.is_some() || password.is_some(),
                    "elasticsearch_bulk",
                )?;
                only(
                    "index",
                    self.index.is_some(),
                    "splunk_hec or elasticsearch_bulk",
                )?;
                only("channel", self.channel.is_some(), "splunk_hec")?;
                if secret.is_none() {
                    return Err(bad(
                        "secret",
                        "a json sink is signed: set secret_env (or secret) so the receiver can check it".into(),
                    ));
                }
                None
            }
        };
        if secret.as_deref().is_some_and(str::is_empty) {
            return Err(bad("secret", "must not be empty".into()));
        }
        if format == HttpFormat::ElasticsearchBulk && self.index.is_none() {
            return Err(bad(
                "index",
                "Elasticsearch bulk needs the index to write to".into(),
            ));
        }
        Ok(HttpTarget {
            url,
            format,
            authorization,
            secret: secret.map(String::into_bytes),
            index: self.index.clone(),
            channel: self.channel.clone(),
        })
    }
}

/// Checks a whole `[[audit.sinks]]` list: each entry, and names unique (they name files).
pub fn check_all(sinks: &[SinkConfig]) -> Result<Vec<Checked>, SinkConfigError> {
    let mut out: Vec<Checked> = Vec::with_capacity(sinks.len());
    for (i, s) in sinks.iter().enumerate() {
        let c = s.check(i)?;
        if let Some(first) = out.iter().position(|o| o.name == c.name) {
            return Err(SinkConfigError {
                key: format!("audit.sinks[{i}].name"),
                problem: format!(
                    "\"{}\" is also audit.sinks[{first}]: each sink keeps its own cursor",
                    c.name
                ),
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// A value given in the file or through the named environment variable.
fn either(value: &Option<String>, env: &Option<String>) -> Result<Option<String>, String> {
    match (value, env) {
        (Some(_), Some(_)) => Err("set it or its _env variant, not both".into()),
        (Some(v), None) => Ok(Some(v.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("environment variable {var} is not set")),
        (None, None) => Ok(None),
    }
}

/// PRINTUSASCII without spaces, as RFC 5424 header fields are.
fn header_field_ok(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (33..=126).contains(&b))
}

/// The machine's host name, or `-` (RFC 5424's "unknown") when it has none usable.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it
    // or truncates, and we stop at the first NUL either way.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    if header_field_ok(&name, 255) {
        name
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> SinkConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn a_syslog_sink_resolves_with_defaults() {
        let c = parse("name = \"s\"\nkind = \"syslog\"\naddress = \"tcp:127.0.0.1:514\"")
            .check(0)
            .unwrap();
        let Target::Syslog(s) = c.target else {
            panic!()
        };
        assert_eq!(s.address, SyslogAddress::Tcp("127.0.0.1:514".into()));
        assert_eq!((s.facility, s.app_name.as_str()), (16, "portcullis"));
        assert_eq!(c.batch_max, 500);
    }

    #[test]
    fn mistakes_name_their_key() {
        let e = |t: &str| parse(t).check(2).unwrap_err();
        assert_eq!(
            e("name = \"../x\"\nkind = \"stdout\"").key,
            "audit.sinks[2].name"
        );
        assert_eq!(
            e("name = \"s\"\nkind = \"syslog\"\naddress = \"tcp:host\"").key,
            "audit.sinks[2].address"
        );
        assert_eq!(
            e("name = \"s\"\nkind = \"syslog\"\naddress = \"udp:h:1\"\nfacility = \"local9\"").key,
            "audit.sinks[2].facility"
        );
        assert_eq!(
            e("name = \"s\"\nkind = \"stdout\"\nurl = \"http://x/\"").key,
            "audit.sinks[2].url"
        );
        assert_eq!(
            e("name = \"h\"\nkind = \"http\"\nurl = \"http://x/\"\nformat = \"splunk_hec\"").key,
            "audit.sinks[2].token"
        );
        assert_eq!(
            e("name = \"h\"\nkind = \"http\"\nurl = \"http://x/\"\nformat = \"json\"").key,
            "audit.sinks[2].secret"
        );
        assert_eq!(
            e("name = \"h\"\nkind = \"http\"\nurl = \"http://x/\"\nformat = \"elasticsearch_bulk\"").key,
            "audit.sinks[2].index"
        );
        assert_eq!(
            e("name = \"h\"\nkind = \"http\"\nurl = \"http://x/\"\nformat = \"json\"\nsecret = \"k\"\ntoken_env = \"PORTCULLIS_UNSET_X\"").key,
            "audit.sinks[2].token"
        );
    }

    #[test]
    fn elasticsearch_takes_an_api_key_or_basic_auth() {
        let base = "name = \"es\"\nkind = \"http\"\nurl = \"http://es:9200\"\nformat = \"elasticsearch_bulk\"\nindex = \"audit\"\n";
        let auth = |extra: &str| {
            let Target::Http(h) = parse(&format!("{base}{extra}")).check(0).unwrap().target else {
                panic!()
            };
            h.authorization.map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(auth(""), None);
        assert_eq!(auth("token = \"k\""), Some("ApiKey k".into()));
        assert_eq!(
            auth("username = \"u\"\npassword = \"p\""),
            Some("Basic dTpw".into())
        );
    }

    #[test]
    fn the_documented_example_parses() {
        #[derive(Deserialize)]
        struct Audit {
            sinks: Vec<SinkConfig>,
        }
        let doc = include_str!("../../../../docs/audit-siem.md");
        let start = doc.find("```toml\n").unwrap() + 8;
        let end = start + doc[start..].find("```").unwrap();
        let text = doc[start..end].replace("[[audit.sinks]]", "[[sinks]]");
        let sinks = toml::from_str::<Audit>(&text).unwrap().sinks;
        assert_eq!(sinks.len(), 5);
        assert_eq!(sinks[4].schema, Schema::Ocsf);
        // The two that need no secret from the environment check out as written.
        sinks[0].check(0).unwrap();
        sinks[1].check(1).unwrap();
    }

    #[test]
    fn names_are_unique() {
        let s = parse("name = \"a\"\nkind = \"stdout\"");
        let e = check_all(&[s.clone(), s]).unwrap_err();
        assert_eq!(e.key, "audit.sinks[1].name");
    }
}
