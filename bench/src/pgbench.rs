//! pgbench as an outside witness: the same targets measured by PostgreSQL's own tool, so the
//! bench's client is not the only judge.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::target::ConnInfo;

#[derive(Debug, thiserror::Error)]
pub enum PgbenchError {
    #[error("could not run {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("pgbench failed: {0}")]
    Failed(String),
    #[error("pgbench printed no `{0}` line")]
    Parse(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgbenchResult {
    pub tps: f64,
    pub transactions: u64,
    pub latency_avg_ms: f64,
    pub elapsed: Duration,
}

/// `pgbench -n -S` (select-only, no vacuum) with `clients` clients, `tx` transactions each.
pub async fn run(
    bin: &str,
    conn: &ConnInfo,
    clients: u32,
    connect: bool,
    tx: u32,
) -> Result<PgbenchResult, PgbenchError> {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "-n",
        "-S",
        "-c",
        &clients.to_string(),
        "-j",
        "2",
        "-t",
        &tx.to_string(),
    ])
    .envs(conn.libpq_env())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if connect {
        cmd.arg("-C");
    }
    let t0 = Instant::now();
    let out = cmd.output().await.map_err(|source| PgbenchError::Spawn {
        bin: bin.into(),
        source,
    })?;
    let elapsed = t0.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        return Err(PgbenchError::Failed(last));
    }
    let mut r = parse(&stdout)?;
    r.elapsed = elapsed;
    Ok(r)
}

fn parse(out: &str) -> Result<PgbenchResult, PgbenchError> {
    let field = |prefix: &'static str| -> Result<f64, PgbenchError> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| {
                rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .next()?
                    .parse()
                    .ok()
            })
            .ok_or(PgbenchError::Parse(prefix))
    };
    Ok(PgbenchResult {
        tps: field("tps = ")?,
        transactions: field("number of transactions actually processed: ")? as u64,
        latency_avg_ms: field("latency average = ")?,
        elapsed: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg15_output() {
        let out = "transaction type: <builtin: select only>\nscaling factor: 1\n\
                   number of transactions actually processed: 800/800\n\
                   latency average = 0.412 ms\ninitial connection time = 12.3 ms\n\
                   tps = 19417.5 (without initial connection time)\n";
        let r = parse(out).unwrap();
        assert_eq!(r.transactions, 800);
        assert!((r.tps - 19417.5).abs() < 1e-9);
        assert!((r.latency_avg_ms - 0.412).abs() < 1e-9);
    }
}
