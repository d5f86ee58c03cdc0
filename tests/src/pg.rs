//! Throwaway PostgreSQL 15 clusters: one `initdb` per test in a temporary directory, SCRAM on
//! TCP, trust on its private Unix socket, a login role for the gateway's upstream credential,
//! and `pg_ctl stop -m immediate` plus directory removal on drop.
//!
//! PostgreSQL refuses to run as root, so when the harness runs as root (CI does) every server
//! command goes through `runuser -u postgres --` in a directory owned by `postgres`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use rand::distributions::Alphanumeric;

use crate::net::{NetError, free_port};

/// Where Debian puts PostgreSQL 15's server binaries; `PG_BINDIR` overrides it.
pub const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// The login role the gateway uses upstream.
pub const UPSTREAM_USER: &str = "portcullis";

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Port(#[from] NetError),
    #[error("could not run `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("PostgreSQL did not start on port {port}: {reason}\n--- server log (tail) ---\n{log}")]
    Start {
        port: u16,
        reason: String,
        log: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How to set a cluster up; `Default` gives a loopback server on a free port.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// 0 picks a free port.
    pub port: u16,
    pub listen_addresses: String,
    /// Run the server inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Durability off and bigger buffers: for benches, never for anything kept.
    pub bench_tuning: bool,
    /// Appended to postgresql.conf verbatim, one setting per entry.
    pub extra_conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            port: 0,
            listen_addresses: "127.0.0.1".into(),
            netns: None,
            bench_tuning: false,
            extra_conf: Vec::new(),
        }
    }
}

/// A running throwaway cluster. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct PgCluster {
    dir: tempfile::TempDir,
    opts: PgOptions,
    bindir: PathBuf,
    /// The address clients (and the gateway) dial: the first of `listen_addresses`.
    pub host: String,
    pub port: u16,
    pub upstream_user: String,
    pub upstream_password: String,
    running: bool,
}

impl PgCluster {
    pub fn start(opts: PgOptions) -> Result<PgCluster, PgError> {
        let bindir = std::env::var_os("PG_BINDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BINDIR));
        let port = if opts.port == 0 {
            free_port()?
        } else {
            opts.port
        };
        sweep_orphans();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .map_err(PgError::TempDir)?;
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .map_err(PgError::TempDir)?;
        // The server user must be able to reach its own directory.
        std::fs::create_dir(dir.path().join("sock")).map_err(PgError::TempDir)?;
        set_mode(dir.path(), 0o755)?;
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()))?;
        }
        let host = opts
            .listen_addresses
            .split(',')
            .map(str::trim)
            .find(|a| !a.is_empty() && *a != "*")
            .unwrap_or("127.0.0.1")
            .to_string();
        let upstream_password: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let mut cluster = PgCluster {
            dir,
            opts,
            bindir,
            host,
            port,
            upstream_user: UPSTREAM_USER.into(),
            upstream_password,
            running: false,
        };
        cluster.init()?;
        let mut tries = 0;
        loop {
            match cluster.start_server() {
                Ok(()) => break,
                // Another test bound the free port first (clusters start in parallel):
                // a later `port` line in the configuration overrides the first.
                Err(PgError::Start { log, .. })
                    if cluster.opts.port == 0
                        && tries < 5
                        && log.contains("Address already in use") =>
                {
                    tries += 1;
                    cluster.port = free_port()?;
                    append(
                        &cluster.data_dir().join("postgresql.conf"),
                        &format!("port = {}", cluster.port),
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
        cluster.create_upstream_role()?;
        Ok(cluster)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// A libpq URI as the `postgres` superuser over the private Unix socket (trust auth):
    /// for set-up and for checking what the gateway did, never through the gateway.
    pub fn superuser_uri(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@/{db}?host={}&port={}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// A libpq URI straight to the server over TCP with the upstream credential: the
    /// "direct connection" baseline tests compare the gateway against.
    pub fn direct_uri(&self, db: &str) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{db}?sslmode=disable",
            self.upstream_user, self.upstream_password, self.host, self.port
        )
    }

    /// Runs SQL with `psql` as the superuser and returns unaligned, tuples-only output.
    /// Multi-statement strings are fine; the first error fails the call.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, PgError> {
        let out = run(self
            .psql_command(db)
            .args(["-At", "-c", sql])
            .stdin(Stdio::null()))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A `psql` command (superuser, socket, `ON_ERROR_STOP`, no psqlrc) for callers that pipe.
    pub fn psql_command(&self, db: &str) -> Command {
        let mut c = Command::new("psql");
        c.args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &self.superuser_uri(db),
        ]);
        c
    }

    /// Creates `name` unless it exists.
    pub fn create_database(&self, name: &str) -> Result<(), PgError> {
        let exists = self.psql(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = '{}'",
                name.replace('\'', "''")
            ),
        )?;
        if exists.trim().is_empty() {
            self.psql(
                "postgres",
                &format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\"")),
            )?;
        }
        Ok(())
    }

    /// Stops the server at once (`-m immediate`: backends die mid-result, as in a crash).
    pub fn kill(&mut self) -> Result<(), PgError> {
        self.stop_mode("immediate")
    }

    /// Stops the server cleanly (`-m fast`).
    pub fn stop(&mut self) -> Result<(), PgError> {
        self.stop_mode("fast")
    }

    /// Starts a stopped cluster again on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), PgError> {
        if self.running {
            self.stop()?;
        }
        self.start_server()
    }

    pub fn is_running(&self) -> bool {
        self.running
    }

    fn stop_mode(&mut self, mode: &str) -> Result<(), PgError> {
        if !self.running {
            return Ok(());
        }
        let data = self.data_dir();
        let mut c = self.server_cmd("pg_ctl");
        c.args(["stop", "-w", "-t", "30", "-m", mode, "-D"])
            .arg(&data);
        run(&mut c)?;
        self.running = false;
        Ok(())
    }

    fn init(&self) -> Result<(), PgError> {
        let data = self.data_dir();
        let mut c = self.server_cmd("initdb");
        c.args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "-D",
        ])
        .arg(&data);
        run(&mut c)?;

        let mut conf = vec![
            format!("port = {}", self.port),
            format!("listen_addresses = '{}'", self.opts.listen_addresses),
            format!(
                "unix_socket_directories = '{}'",
                self.socket_dir().display()
            ),
            "password_encryption = 'scram-sha-256'".into(),
            // Tests start dozens of clusters on two cores: keep each small and quiet.
            "max_wal_size = '1GB'".into(),
            "log_min_messages = warning".into(),
            "log_connections = off".into(),
        ];
        if self.opts.bench_tuning {
            conf.extend(
                [
                    "fsync = off",
                    "synchronous_commit = off",
                    "full_page_writes = off",
                    "shared_buffers = '1GB'",
                    "max_connections = 300",
                ]
                .map(String::from),
            );
        }
        conf.extend(self.opts.extra_conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"))?;
        // initdb only lets loopback in; a server in a namespace is dialled from its peer.
        append(
            &data.join("pg_hba.conf"),
            "host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256",
        )?;
        Ok(())
    }

    fn start_server(&mut self) -> Result<(), PgError> {
        let data = self.data_dir();
        let log = self.log_path();
        let mut c = self.server_cmd("pg_ctl");
        c.args(["start", "-w", "-t", "60", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(&log);
        if let Err(e) = run(&mut c) {
            return Err(self.start_error(e.to_string()));
        }
        // pg_ctl -w waits for the postmaster, but poll the socket too so "started" means
        // "accepts queries" even on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = Command::new(self.bindir.join("pg_isready"))
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                return Err(self.start_error("pg_isready never succeeded".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.running = true;
        Ok(())
    }

    fn start_error(&self, reason: String) -> PgError {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        PgError::Start {
            port: self.port,
            reason,
            log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        }
    }

    fn create_upstream_role(&self) -> Result<(), PgError> {
        // Superuser so tests can cancel, terminate and COPY anything through the gateway.
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{}'",
                self.upstream_user, self.upstream_password
            ),
        )?;
        Ok(())
    }

    /// A server-side command: as `postgres` when we are root, inside the namespace if any.
    fn server_cmd(&self, program: &str) -> Command {
        let bin = self.bindir.join(program);
        let mut argv: Vec<String> = Vec::new();
        if let Some(ns) = &self.opts.netns {
            argv.extend(["ip", "netns", "exec", ns].map(String::from));
        }
        if is_root() {
            argv.extend(["runuser", "-u", "postgres", "--"].map(String::from));
        }
        argv.push(bin.display().to_string());
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self.kill();
        }
    }
}

const DIR_PREFIX: &str = "portcullis-pg-";
/// Holds the pid of the process that made the cluster, for [`sweep_orphans`].
const OWNER_FILE: &str = "owner.pid";

/// Stops and deletes clusters whose creating process is gone. `Drop` never runs in a test
/// killed by a timeout (nextest sends SIGKILL), so without this each such kill would leave
/// a PostgreSQL running until the machine goes away. Returns how many it removed.
pub fn sweep_orphans() -> usize {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let dir = e.path();
        let is_ours = dir
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        // Clusters without an owner file predate it or are still being created: leave them.
        let Some(owner) = is_ours
            .then(|| std::fs::read_to_string(dir.join(OWNER_FILE)).ok())
            .flatten()
            .and_then(|p| p.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let data = dir.join("data");
        if data.join("postmaster.pid").exists() {
            let bin = std::env::var_os("PG_BINDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BINDIR))
                .join("pg_ctl");
            let mut c = if is_root() {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin);
                c
            } else {
                Command::new(bin)
            };
            let _ = c
                .args(["stop", "-w", "-t", "30", "-m", "immediate", "-D"])
                .arg(&data)
                .output();
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub(crate) fn run(c: &mut Command) -> Result<Output, PgError> {
    let cmd = format!("{c:?}");
    let out = c.output().map_err(|source| PgError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(PgError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PgError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        PgError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

fn append(path: &Path, text: &str) -> Result<(), PgError> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| PgError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    writeln!(f, "\n{text}").map_err(|source| PgError::Write {
        path: path.to_path_buf(),
        source,
    })
}
