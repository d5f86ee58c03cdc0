//! What the bench points at: a named endpoint, how to log in, and which processes to watch.

use std::fmt;

use crate::procstat::ProcSet;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` is not a postgres:// or postgresql:// URL")]
    Scheme(String),
    #[error("bad port in `{0}`")]
    Port(String),
    #[error("`{0}` has no user")]
    User(String),
}

/// Where and as whom to connect. Plain TCP only: the bench compares data paths, not TLS.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl ConnInfo {
    /// Parses `postgres://user:password@host:port/db`; query parameters are ignored.
    pub fn parse(url: &str) -> Result<ConnInfo, TargetError> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or_else(|| TargetError::Scheme(url.into()))?;
        let rest = rest.split_once('?').map_or(rest, |(a, _)| a);
        let (auth, hostpart) = rest
            .rsplit_once('@')
            .ok_or_else(|| TargetError::User(url.into()))?;
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (hostport, db) = hostpart.split_once('/').unwrap_or((hostpart, ""));
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| TargetError::Port(url.into()))?),
            None => (hostport, 5432),
        };
        if user.is_empty() {
            return Err(TargetError::User(url.into()));
        }
        let user = percent_decode(user);
        Ok(ConnInfo {
            host: if host.is_empty() {
                "127.0.0.1".into()
            } else {
                host.trim_matches(['[', ']']).into()
            },
            port,
            dbname: if db.is_empty() {
                user.clone()
            } else {
                percent_decode(db)
            },
            user,
            password: percent_decode(password),
        })
    }

    /// The URL with the password hidden, for reports.
    pub fn redacted(&self) -> String {
        format!(
            "postgres://{}:***@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }

    /// libpq environment for outside tools (pgbench), so the password stays off the command line.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGPASSWORD", self.password.clone()),
            ("PGDATABASE", self.dbname.clone()),
            ("PGSSLMODE", "disable".into()),
        ]
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What sits between the client and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Direct,
    Pgbouncer,
    Gateway,
}

/// One endpoint under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Stable name used in tables, JSON and charts: `direct`, `pgbouncer`, `gateway-masked`...
    pub name: String,
    pub kind: Kind,
    pub conn: ConnInfo,
    /// Masking is on: only the large-result workloads run against it.
    pub masked: bool,
    /// A gateway's statement analysis and policy: on (`Some(true)`), off (`[policy]
    /// enabled = false`, the pass-through the policy's cost is measured against), or not a
    /// gateway (`None`).
    pub policy: Option<bool>,
    /// A gateway's configured I/O engine (`epoll`, `uring`, `auto`); `None` when not a
    /// gateway or not known (an existing deployment). Policy on and off are compared only
    /// on the same engine.
    pub engine: Option<String>,
    /// The proxy process (gateway or pgbouncer), for CPU time and peak RSS.
    pub proxy: Option<ProcSet>,
    /// The postmaster; its children are the backends.
    pub postgres: Option<ProcSet>,
}

/// A target the run wanted but could not have, reported instead of silently dropped.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Unavailable {
    pub name: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c =
            ConnInfo::parse("postgres://bob:p%40ss@10.0.0.1:6432/bank?sslmode=disable").unwrap();
        assert_eq!((c.host.as_str(), c.port), ("10.0.0.1", 6432));
        assert_eq!(
            (c.user.as_str(), c.password.as_str(), c.dbname.as_str()),
            ("bob", "p@ss", "bank")
        );
        let d = ConnInfo::parse("postgresql://alice@localhost").unwrap();
        assert_eq!(
            (d.port, d.dbname.as_str(), d.password.as_str()),
            (5432, "alice", "")
        );
        assert!(ConnInfo::parse("mysql://x@y").is_err());
    }
}
