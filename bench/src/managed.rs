//! The set-up `cargo xtask bench` does itself: a throwaway PostgreSQL tuned for benching, the
//! financial dataset, pgbench's tables, pgbouncer twice (defaults, and `pkt_buf = 65536`) and
//! the gateway (epoll, io_uring, io_uring with the statement policy off, and with the
//! quickstart's masking policy), each on its port. Every gateway but `gateway-nopolicy` runs
//! the quickstart's statement policy, so the figures include what analysing each statement
//! costs; `gateway-nopolicy` is the same gateway with `[policy] enabled = false`.
//!
//! Anything that cannot start (no pgbouncer installed, no gateway binary, no masking policy
//! yet) becomes an [`Unavailable`] entry with the reason, and the run goes on without it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_tests::{Engine, Gateway, GatewayOptions, PgCluster, PgOptions};

use crate::procstat::ProcSet;
use crate::target::{ConnInfo, Kind, Target, Unavailable};

pub const DB: &str = "bench";

/// A masking section to append, or why there is none.
type MaskSpec = Result<String, String>;

#[derive(Debug, thiserror::Error)]
pub enum ManagedError {
    #[error(transparent)]
    Pg(#[from] portcullis_tests::pg::PgError),
    #[error(transparent)]
    Dataset(#[from] portcullis_tests::dataset::DatasetError),
    #[error("pgbench -i: {0}")]
    PgbenchInit(String),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no target named `{0}` (a managed run has {names})", names = TARGETS.join(", "))]
    UnknownTarget(String),
}

/// The targets of a managed run, in the order they start. Reports, goals and `--targets`
/// name them; keep them stable.
pub const TARGETS: [&str; 12] = [
    "direct",
    "pgbouncer",
    "pgbouncer-pktbuf",
    "gateway-epoll",
    "gateway-uring",
    "gateway-nopool",
    "gateway-nopolicy",
    "gateway-masked",
    "gateway-approvals",
    "gateway-audit",
    "gateway-audit-os",
    "gateway-variant",
];

/// `[policy]` of the pass-through target: no statement analysis at all, so its figures
/// are the baseline the policy's cost is taken against.
pub const POLICY_OFF: &str = "[policy]\nenabled = false\n";

/// One gateway the managed set-up starts.
#[derive(Debug, Clone)]
struct GatewaySpec {
    name: &'static str,
    engine: Engine,
    /// The `[policy]` section it is started with.
    policy: &'static str,
    policy_on: bool,
    /// `Some` for the masked target: the section to append, or why there is none.
    mask: Option<MaskSpec>,
    /// `[approvals]` on (the quickstart's): what holding costs statements that are not
    /// held, against `gateway-uring`.
    approvals: bool,
    /// `[audit]` on with this durability (`fsync`, `os`): what evidence before action
    /// costs, against `gateway-uring`.
    audit: Option<&'static str>,
    /// `[pool] enabled = false`: a new upstream session per agent session, what reuse
    /// saves against `gateway-uring`.
    pool_off: bool,
    /// `gateway-epoll` with the `--variant` lines added to `[server]` (on
    /// `--variant-engine`): one setting measured against the default in the same run.
    variant: bool,
}

/// The gateways, policy on unless named otherwise. Agents log in as `agent` (the harness's
/// first identity), which the quickstart statement policy lets read and write; the bench's
/// DDL (the dataset, `pgbench -i`) goes to the cluster directly. `gateway-nopolicy` runs
/// on io_uring, paired with `gateway-uring` in the goals; `gateway-masked` runs `auto`
/// (epoll), paired with `gateway-epoll`.
fn gateway_specs(mask: MaskSpec) -> Vec<GatewaySpec> {
    let on = portcullis_tests::QUICKSTART_STATEMENT_POLICY;
    let spec = |name, engine, policy_on, mask| GatewaySpec {
        name,
        engine,
        policy: if policy_on { on } else { POLICY_OFF },
        policy_on,
        mask,
        approvals: false,
        audit: None,
        pool_off: false,
        variant: false,
    };
    vec![
        spec("gateway-epoll", Engine::Epoll, true, None),
        spec("gateway-uring", Engine::Uring, true, None),
        GatewaySpec {
            pool_off: true,
            ..spec("gateway-nopool", Engine::Uring, true, None)
        },
        spec("gateway-nopolicy", Engine::Uring, false, None),
        spec("gateway-masked", Engine::Auto, true, Some(mask)),
        GatewaySpec {
            approvals: true,
            ..spec("gateway-approvals", Engine::Uring, true, None)
        },
        GatewaySpec {
            audit: Some("fsync"),
            ..spec("gateway-audit", Engine::Uring, true, None)
        },
        GatewaySpec {
            audit: Some("os"),
            ..spec("gateway-audit-os", Engine::Uring, true, None)
        },
        GatewaySpec {
            variant: true,
            ..spec("gateway-variant", Engine::Epoll, true, None)
        },
    ]
}

/// Whether a config fragment has `[policy…]` tables of its own.
fn brings_policy(toml: &str) -> bool {
    toml.lines().any(|l| {
        let t = l.trim_start();
        t.starts_with('[') && t.trim_start_matches('[').trim_start().starts_with("policy")
    })
}

/// What the set-up is asked for.
#[derive(Debug, Clone)]
pub struct ManagedOptions {
    pub rows: u64,
    pub seed: u64,
    pub pgbench_scale: u32,
    pub pgbouncer_bin: PathBuf,
    /// A config file whose `[mask…]` tables replace the quickstart's masking policy.
    pub mask_policy: Option<PathBuf>,
    pub gateway: bool,
    /// Only these targets (names from [`TARGETS`]); empty: all. `direct` always runs, as
    /// every ratio is taken against it.
    pub targets: Vec<String>,
    /// `[server]` lines of `gateway-variant`, which runs only when there are some.
    pub variant: Vec<String>,
    pub variant_engine: Engine,
}

impl ManagedOptions {
    fn wants(&self, name: &str) -> bool {
        if name == "gateway-variant" && self.variant.is_empty() {
            return false;
        }
        name == "direct" || self.targets.is_empty() || self.targets.iter().any(|t| t == name)
    }
}

/// Everything started; dropping it stops the lot.
pub struct Deployment {
    pub targets: Vec<Target>,
    pub unavailable: Vec<Unavailable>,
    pub pgbench_ready: bool,
    // Drop order: proxies before the cluster they point at.
    _gateways: Vec<Gateway>,
    _bouncers: Vec<Pgbouncer>,
    _cluster: PgCluster,
}

pub fn start(o: &ManagedOptions, log: &dyn Fn(&str)) -> Result<Deployment, ManagedError> {
    // Checked before anything starts: a typo should not cost a dataset load.
    if let Some(bad) = o.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
        return Err(ManagedError::UnknownTarget(bad.clone()));
    }
    log("starting PostgreSQL (bench tuning: no fsync waits)");
    let cluster = PgCluster::start(PgOptions {
        bench_tuning: true,
        // Two pgbouncers and four gateways may each hold 128 sessions at once.
        extra_conf: vec!["max_connections = 1000".into()],
        ..PgOptions::default()
    })?;
    log(&format!(
        "loading the financial dataset: {} rows, seed {}",
        o.rows, o.seed
    ));
    portcullis_tests::load_financial(&cluster, DB, o.rows, o.seed)?;
    log(&format!("pgbench tables, scale {}", o.pgbench_scale));
    let pgbench_ready = init_pgbench(&cluster, o.pgbench_scale).is_ok();
    let postmaster = postmaster_pid(&cluster.data_dir())?;
    let postgres = Some(ProcSet {
        pid: postmaster,
        with_children: true,
    });
    let upstream = ConnInfo {
        host: cluster.host.clone(),
        port: cluster.port,
        user: cluster.upstream_user.clone(),
        password: cluster.upstream_password.clone(),
        dbname: DB.into(),
    };
    let mut targets = vec![Target {
        name: "direct".into(),
        kind: Kind::Direct,
        conn: upstream.clone(),
        masked: false,
        policy: None,
        engine: None,
        proxy: None,
        postgres,
    }];
    let mut unavailable = Vec::new();

    // pgbouncer gets the server's own SCRAM verifier, as in production: it then passes the
    // client's proof through to the server and never sees or stretches a plain password.
    let verifier = cluster
        .psql(
            "postgres",
            &format!(
                "SELECT rolpassword FROM pg_authid WHERE rolname = '{}'",
                upstream.user.replace('\'', "''")
            ),
        )?
        .trim()
        .to_string();
    let mut bouncers = Vec::new();
    for (name, pkt_buf) in [("pgbouncer", None), ("pgbouncer-pktbuf", Some(65536))] {
        if !o.wants(name) {
            continue;
        }
        log(&format!("starting {name}"));
        match Pgbouncer::start(&o.pgbouncer_bin, &upstream, &verifier, pkt_buf) {
            Ok(b) => {
                targets.push(Target {
                    name: name.into(),
                    kind: Kind::Pgbouncer,
                    conn: ConnInfo {
                        port: b.port,
                        ..upstream.clone()
                    },
                    masked: false,
                    policy: None,
                    engine: None,
                    proxy: Some(ProcSet {
                        pid: b.pid(),
                        with_children: false,
                    }),
                    postgres,
                });
                bouncers.push(b);
            }
            Err(reason) => unavailable.push(Unavailable {
                name: name.into(),
                reason,
            }),
        }
    }

    let mut gateways = Vec::new();
    // The quickstart's policy lives in the harness, next to the dataset it is written for; a
    // file given on the command line replaces it.
    let mask: MaskSpec = match &o.mask_policy {
        None => Ok(portcullis_tests::QUICKSTART_MASK_POLICY.to_string()),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(text) => {
                mask_section(&text).ok_or_else(|| format!("{} has no [mask] section", p.display()))
            }
            Err(e) => Err(format!("no masking policy at {}: {e}", p.display())),
        },
    };
    for spec in gateway_specs(mask) {
        let name = spec.name;
        if !o.wants(name) {
            continue;
        }
        let masked = spec.mask.is_some();
        if !o.gateway {
            unavailable.push(Unavailable {
                name: name.into(),
                reason: "gateway disabled".into(),
            });
            continue;
        }
        let extra = match spec.mask {
            None => String::new(),
            Some(Ok(t)) => t,
            Some(Err(reason)) => {
                unavailable.push(Unavailable {
                    name: name.into(),
                    reason,
                });
                continue;
            }
        };
        log(&format!("starting {name}"));
        let engine = if spec.variant {
            o.variant_engine
        } else {
            spec.engine
        };
        let mut opts = GatewayOptions::new(&cluster, DB).engine(engine);
        if spec.variant {
            for line in &o.variant {
                opts = opts.server_line(line);
            }
        }
        opts.log_level = "warn".into();
        // A masking file with its own `[policy]` replaces ours: two would not parse.
        opts = if brings_policy(&extra) {
            opts.no_policy()
        } else {
            opts.policy(spec.policy)
        };
        if !extra.is_empty() {
            opts = opts.extra_toml(&extra);
        }
        if spec.approvals {
            opts = opts.approvals(portcullis_tests::QUICKSTART_APPROVALS);
        }
        if spec.pool_off {
            opts = opts.extra_toml("[pool]\nenabled = false\n");
        }
        if let Some(durability) = spec.audit {
            // Signed checkpoints as a deployment has them; the log in the gateway's
            // temporary directory (the machine's disk, not a tmpfs).
            opts = opts.audit_signed(&format!("durability = \"{durability}\"\n"));
        }
        match Gateway::start(opts) {
            Ok(gw) => {
                let id = &gw.opts.identities[0];
                targets.push(Target {
                    name: name.into(),
                    kind: Kind::Gateway,
                    conn: ConnInfo {
                        host: gw.host(),
                        port: gw.port(),
                        user: id.name.clone(),
                        password: id.secret.clone(),
                        dbname: DB.into(),
                    },
                    masked,
                    policy: Some(spec.policy_on),
                    engine: Some(engine.as_str().into()),
                    proxy: Some(ProcSet {
                        pid: gw.pid(),
                        with_children: false,
                    }),
                    postgres,
                });
                gateways.push(gw);
            }
            Err(e) => unavailable.push(Unavailable {
                name: name.into(),
                reason: first_line(&e.to_string()),
            }),
        }
    }
    Ok(Deployment {
        targets,
        unavailable,
        pgbench_ready,
        _gateways: gateways,
        _bouncers: bouncers,
        _cluster: cluster,
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

/// The masking part of a gateway config: every table from the first `[mask…]` header on
/// (`[mask]`, `[[mask.rule]]`, …) up to the next table that is not about masking.
fn mask_section(config: &str) -> Option<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in config.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[').trim_start();
            inside =
                name.starts_with("mask") || name.starts_with("role") || name.starts_with("policy");
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    if out.trim().is_empty() {
        return None;
    }
    // The quickstart may read its hashing key from the environment; the bench supplies a fixed
    // throwaway key instead so the gateway starts the same way everywhere.
    let out: String = out
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("hash_key_env") {
                "hash_key = \"portcullis-bench-throwaway-key\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    Some(out + "\n")
}

fn postmaster_pid(data_dir: &Path) -> Result<u32, ManagedError> {
    let path = data_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&path).map_err(|source| ManagedError::Read {
        path: path.clone(),
        source,
    })?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| ManagedError::Read {
            path,
            source: std::io::Error::other("no pid"),
        })
}

fn init_pgbench(cluster: &PgCluster, scale: u32) -> Result<(), ManagedError> {
    let have = cluster.psql(
        DB,
        "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_accounts'",
    )?;
    if have.trim() == "1" {
        return Ok(());
    }
    let out = Command::new("pgbench")
        .args(["-i", "-q", "-s", &scale.to_string(), "-h"])
        .arg(cluster.socket_dir())
        .args(["-p", &cluster.port.to_string(), "-U", "postgres", DB])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ManagedError::PgbenchInit(e.to_string()))?;
    if !out.status.success() {
        return Err(ManagedError::PgbenchInit(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// A pgbouncer in session mode in front of the cluster, killed on drop.
pub struct Pgbouncer {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Pgbouncer {
    /// `secret` goes into the auth file: a SCRAM verifier or a plain password.
    pub fn start(
        bin: &Path,
        upstream: &ConnInfo,
        secret: &str,
        pkt_buf: Option<u32>,
    ) -> Result<Pgbouncer, String> {
        if !bin.exists() {
            return Err(format!(
                "{} not found (apt-get install -y pgbouncer)",
                bin.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("portcullis-pgbouncer-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let port = portcullis_tests::free_port().map_err(|e| e.to_string())?;
        let d = dir.path().display();
        let mut ini = format!(
            "[databases]\n{db} = host={host} port={pgport} dbname={db}\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {d}/userlist.txt\npool_mode = session\n\
             max_client_conn = 2000\ndefault_pool_size = 300\nlogfile = {d}/pgbouncer.log\n\
             log_connections = 0\nlog_disconnections = 0\n",
            db = upstream.dbname,
            host = upstream.host,
            pgport = upstream.port,
        );
        if let Some(b) = pkt_buf {
            ini.push_str(&format!("pkt_buf = {b}\n"));
        }
        let q = |s: &str| s.replace('"', "\"\"");
        std::fs::write(dir.path().join("pgbouncer.ini"), ini).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.path().join("userlist.txt"),
            format!("\"{}\" \"{}\"\n", q(&upstream.user), q(secret)),
        )
        .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg(dir.path().join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // pgbouncer refuses to run as root: drop to the postgres user for this process only.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let (uid, gid) =
                user_ids("postgres").ok_or("no `postgres` user to run pgbouncer as")?;
            chown_tree(dir.path(), uid, gid)?;
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        let mut b = Pgbouncer {
            child,
            _dir: dir,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(st)) = b.child.try_wait() {
                let log = std::fs::read_to_string(b._dir.path().join("pgbouncer.log"))
                    .unwrap_or_default();
                return Err(format!(
                    "pgbouncer exited ({st}): {}",
                    log.lines().last().unwrap_or("")
                ));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(b);
            }
            if Instant::now() > deadline {
                return Err("pgbouncer did not listen within 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Pgbouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    for e in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let p = e.map_err(|e| e.to_string())?.path();
        std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_mask_tables_only() {
        let cfg = "[server]\nlisten = \"x\"\n\n[mask]\ndefault = \"none\"\n\n[[mask.rule]]\ncolumn = \"ssn\"\n\n[log]\nlevel = \"info\"\n";
        let m = mask_section(cfg).unwrap();
        assert!(m.contains("[mask]") && m.contains("[[mask.rule]]") && m.contains("column"));
        assert!(!m.contains("listen") && !m.contains("level"));
        assert!(mask_section("[server]\n").is_none());
        let keyed = mask_section("[mask]\nhash_key_env = \"K\"\n").unwrap();
        assert!(keyed.contains("hash_key = ") && !keyed.contains("hash_key_env"));
    }

    fn mask() -> MaskSpec {
        Ok(portcullis_tests::QUICKSTART_MASK_POLICY.to_string())
    }

    #[test]
    fn gateway_names_are_the_published_ones() {
        let names: Vec<&str> = gateway_specs(mask()).iter().map(|s| s.name).collect();
        let published: Vec<&str> = TARGETS
            .iter()
            .copied()
            .filter(|n| n.starts_with("gateway"))
            .collect();
        assert_eq!(names, published);
    }

    #[test]
    fn one_policy_off_gateway_paired_on_its_engine() {
        let specs = gateway_specs(mask());
        let off: Vec<&GatewaySpec> = specs.iter().filter(|s| !s.policy_on).collect();
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].name, "gateway-nopolicy");
        assert!(off[0].mask.is_none());
        let partner = specs
            .iter()
            .find(|s| s.policy_on && s.mask.is_none() && s.engine == off[0].engine)
            .expect("a policy-on gateway on the same engine");
        assert_eq!(partner.name, "gateway-uring");
    }

    #[test]
    fn every_gateway_config_parses_with_its_policy() {
        for s in gateway_specs(mask()) {
            let mut text = s.policy.to_string();
            if let Some(Ok(m)) = &s.mask {
                text.push('\n');
                text.push_str(m);
            }
            let doc: toml::Table =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", s.name));
            let policy = doc["policy"].as_table().expect("[policy]");
            let enabled = policy
                .get("enabled")
                .and_then(|v| v.as_bool())
                .unwrap_or(true);
            assert_eq!(enabled, s.policy_on, "{}", s.name);
            if s.policy_on {
                // The bench logs in as `agent`: the policy must let that role read.
                assert_eq!(policy["default"].as_str(), Some("deny"), "{}", s.name);
                let rules = policy["rule"].as_array().expect("rules");
                assert!(
                    rules.iter().any(|r| {
                        let has = |k: &str, v: &str| {
                            r.get(k)
                                .and_then(|x| x.as_array())
                                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(v)))
                        };
                        has("roles", "agent")
                            && has("class", "read")
                            && r["action"].as_str() == Some("allow")
                    }),
                    "{}: no rule lets agents read",
                    s.name
                );
            }
        }
    }

    #[test]
    fn a_masking_file_with_its_own_policy_is_seen() {
        assert!(brings_policy("[mask]\n\n[policy]\ndefault = \"allow\"\n"));
        assert!(brings_policy("[[ policy.rule ]]\nname = \"x\"\n"));
        assert!(!brings_policy(
            "[mask]\n# [policy] in a comment\n[[mask.rule]]\n"
        ));
    }

    #[test]
    fn target_selection_keeps_direct_and_refuses_unknown_names() {
        let mut o = ManagedOptions {
            rows: 1,
            seed: 1,
            pgbench_scale: 1,
            pgbouncer_bin: PathBuf::from("/nonexistent"),
            mask_policy: None,
            gateway: true,
            targets: Vec::new(),
            variant: Vec::new(),
            variant_engine: Engine::Epoll,
        };
        // The variant runs only with a setting to vary.
        assert!(
            TARGETS
                .iter()
                .all(|t| o.wants(t) == (*t != "gateway-variant"))
        );
        o.variant = vec!["read_batch_bytes = 0".into()];
        assert!(TARGETS.iter().all(|t| o.wants(t)));
        o.variant.clear();
        o.targets = vec!["gateway-uring".into(), "gateway-nopolicy".into()];
        let wanted: Vec<&str> = TARGETS.iter().copied().filter(|t| o.wants(t)).collect();
        assert_eq!(wanted, ["direct", "gateway-uring", "gateway-nopolicy"]);
        // Refused before PostgreSQL starts.
        o.targets = vec!["gateway".into()];
        match start(&o, &|_| {}) {
            Err(ManagedError::UnknownTarget(t)) => assert_eq!(t, "gateway"),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("started with an unknown target"),
        }
    }
}
