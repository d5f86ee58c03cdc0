//! `approval-latency`: how long an approval takes to reach the agent. A throwaway
//! PostgreSQL and a gateway with approvals (the embedded store) hold the agent's
//! `DELETE`; each round runs `portcullis approvals approve ID` and times from just before
//! the CLI starts until the agent's answer has arrived (for a `DELETE` the answer is two
//! small frames in one packet, so that is its first byte), and, apart, the CLI's own run.
//!
//! ```sh
//! cargo build --release -p portcullis -p portcullis-bench
//! PORTCULLIS_BIN=target/release/portcullis target/release/approval-latency [ROUNDS]
//! ```

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use portcullis_bench::target::ConnInfo;
use portcullis_bench::wire::Conn;
use portcullis_tests::{Gateway, GatewayOptions, PgCluster, PgOptions};

const POLICY: &str = r#"[policy]
default = "allow"

[[policy.rule]]
name = "hold-deletes"
class = ["write"]
properties = ["unbounded"]
action = "hold"
"#;

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()
        .context("ROUNDS must be a number")?
        .unwrap_or(30);
    let pg = PgCluster::start(PgOptions::default())?;
    pg.create_database("app")?;
    pg.psql("app", "CREATE TABLE t (id int)")?;
    let gw = Gateway::start(
        GatewayOptions::new(&pg, "app")
            .policy(POLICY)
            .approvals("")
            .admin_socket(),
    )?;
    let socket = gw.admin_socket().context("admin socket")?.to_owned();
    let bin = portcullis_tests::gateway::binary()?;
    let id = &gw.opts.identities[0];
    let info = ConnInfo {
        host: gw.host(),
        port: gw.port(),
        user: id.name.clone(),
        password: id.secret.clone(),
        dbname: "app".into(),
    };
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&bin)
            .arg("approvals")
            .args(args)
            .arg("--admin-socket")
            .arg(&socket)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "approvals {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // The agent: its own thread and runtime (its socket belongs to that runtime's
    // reactor), a DELETE each time it is told to go, the moment its answer arrived back.
    let (go, rounds_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel::<anyhow::Result<Instant>>();
    let agent = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut conn = match Conn::connect(&info).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = done_tx.send(Err(e.into()));
                    return;
                }
            };
            while rounds_rx.recv().is_ok() {
                let r = conn.simple_query("DELETE FROM t").await;
                let _ = done_tx.send(r.map(|_| Instant::now()).map_err(Into::into));
            }
        })
    });
    let mut total = Vec::with_capacity(rounds);
    let mut cli_only = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        go.send(()).context("the agent thread ended")?;
        let pending = loop {
            let list: serde_json::Value = serde_json::from_str(cli(&["list", "--json"])?.trim())?;
            if let Some(r) = list.as_array().and_then(|a| a.first()) {
                break r["id"].as_i64().context("request id")?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let start = Instant::now();
        cli(&["approve", &pending.to_string(), "--reviewer", "bench"])?;
        let cli_done = start.elapsed();
        let arrived = done
            .recv()
            .context("the agent thread ended")?
            .with_context(|| format!("round {round}: the approved DELETE"))?;
        total.push(arrived - start);
        cli_only.push(cli_done);
    }
    drop(go);
    let _ = agent.join();
    let show = |name: &str, v: &mut Vec<Duration>| {
        v.sort();
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!(
            "{name:<34} p50 {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms",
            q(0.5).as_secs_f64() * 1e3,
            q(0.9).as_secs_f64() * 1e3,
            q(1.0).as_secs_f64() * 1e3
        );
    };
    println!("{rounds} approvals through `portcullis approvals approve` (SQLite store, fsync on)");
    show("decision to the agent's answer", &mut total);
    show("the CLI process alone", &mut cli_only);
    Ok(())
}
