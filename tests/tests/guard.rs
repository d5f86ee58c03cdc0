//! End-to-end: the eBPF guard on a database host. Each test builds three hosts from network
//! namespaces joined by a bridge (itself in a fourth namespace, so nothing touches the
//! machine's own network):
//!
//! ```text
//!   db    10.210.N.1  fd00:210:N::1   PostgreSQL on its veth address and loopback + the guard
//!   gw    10.210.N.2  fd00:210:N::2   the portcullis gateway (allowlisted)
//!   agent 10.210.N.3  fd00:210:N::3   someone trying to go around it
//! ```
//!
//! Scenarios 1-4, 8 and 9 run once with XDP and once with TC (scenario 7). Tests of an
//! interface without a link-layer header use a single namespace instead, with a tun device
//! the test holds open (`guard/tun.rs`) standing in for a WireGuard link. Everything is torn down by
//! `Drop` guards even when an assertion fails: namespaces, bpffs pins, cgroups, processes.
//! Needs root, bpffs (mounted if missing), cgroup v2, and `portcullis-guard` + `portcullis`
//! built (`cargo build -p portcullis-guard -p portcullis`).

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use portcullis_tests::{
    GatewayOptions, PgCluster, PgOptions,
    gateway::{binary as gateway_binary, workspace_root},
};

#[path = "guard/tun.rs"]
mod tun;

// --- topology -------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Host {
    Db,
    Gw,
    Agent,
}

impl Host {
    fn short(self) -> &'static str {
        match self {
            Host::Db => "db",
            Host::Gw => "gw",
            Host::Agent => "ag",
        }
    }

    fn octet(self) -> u8 {
        match self {
            Host::Db => 1,
            Host::Gw => 2,
            Host::Agent => 3,
        }
    }
}

/// Three hosts on one bridged segment. `n` picks the subnet and the names, so tests running
/// in parallel never share anything.
struct Lan {
    n: u8,
}

impl Lan {
    fn new(n: u8) -> Lan {
        let lan = Lan { n };
        // A crashed earlier run may have left these behind.
        lan.remove();
        sh(Command::new("ip").args(["netns", "add", &lan.bridge()]));
        sh(Command::new("ip").args(["-n", &lan.bridge(), "link", "add", "br0", "type", "bridge"]));
        sh(Command::new("ip").args(["-n", &lan.bridge(), "link", "set", "br0", "up"]));
        for h in [Host::Db, Host::Gw, Host::Agent] {
            let ns = lan.ns(h);
            let ifname = lan.iface(h);
            let peer = format!("{ifname}p");
            sh(Command::new("ip").args(["netns", "add", &ns]));
            sh(Command::new("ip").args([
                "link", "add", &ifname, "type", "veth", "peer", "name", &peer,
            ]));
            sh(Command::new("ip").args(["link", "set", &ifname, "netns", &ns]));
            sh(Command::new("ip").args(["link", "set", &peer, "netns", &lan.bridge()]));
            sh(Command::new("ip").args([
                "-n",
                &lan.bridge(),
                "link",
                "set",
                &peer,
                "master",
                "br0",
            ]));
            sh(Command::new("ip").args(["-n", &lan.bridge(), "link", "set", &peer, "up"]));
            let v4 = format!("{}/24", lan.v4(h));
            let v6 = format!("{}/64", lan.v6(h));
            sh(Command::new("ip").args(["-n", &ns, "addr", "add", &v4, "dev", &ifname]));
            // nodad: the address is usable at once instead of after duplicate detection.
            sh(Command::new("ip").args(["-n", &ns, "addr", "add", &v6, "dev", &ifname, "nodad"]));
            sh(Command::new("ip").args(["-n", &ns, "link", "set", &ifname, "up"]));
            sh(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
        }
        lan
    }

    fn bridge(&self) -> String {
        format!("pcg{}br", self.n)
    }

    fn ns(&self, h: Host) -> String {
        format!("pcg{}{}", self.n, h.short())
    }

    fn iface(&self, h: Host) -> String {
        format!("pcg{}{}", self.n, h.short())
    }

    fn v4(&self, h: Host) -> Ipv4Addr {
        Ipv4Addr::new(10, 210, self.n, h.octet())
    }

    fn v6(&self, h: Host) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0x210,
            u16::from(self.n),
            0,
            0,
            0,
            0,
            u16::from(h.octet()),
        )
    }

    /// `program` run inside `h`'s network namespace only: unlike `ip netns exec`, nsenter
    /// leaves /sys (and so bpffs and cgroupfs) as the host has them.
    fn cmd(&self, h: Host, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns(h)))
            .arg("--")
            .arg(program);
        c
    }

    /// Whether a TCP connection from `from` to `addr:port` is established within 3 s.
    fn can_connect(&self, from: Host, addr: IpAddr, port: u16) -> bool {
        self.connect_from_cgroup(from, None, addr, port)
    }

    /// As [`Self::can_connect`], from a shell placed in `cgroup` first.
    fn connect_from_cgroup(
        &self,
        from: Host,
        cgroup: Option<&Path>,
        addr: IpAddr,
        port: u16,
    ) -> bool {
        let join = cgroup
            .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
            .unwrap_or_default();
        let script = format!("{join}exec 3<>/dev/tcp/{addr}/{port}");
        self.cmd(from, "timeout")
            .args(["3", "bash", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run bash")
            .success()
    }

    fn remove(&self) {
        for ns in [
            self.ns(Host::Db),
            self.ns(Host::Gw),
            self.ns(Host::Agent),
            self.bridge(),
        ] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it, and with them their peers.
        self.remove();
    }
}

/// Panics with the command's stderr unless it succeeded.
fn succeeded(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "portcullis-guard {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// --- the database ---------------------------------------------------------------------------

fn start_db(lan: &Lan) -> PgCluster {
    PgCluster::start(PgOptions {
        listen_addresses: format!("{},{},127.0.0.1", lan.v4(Host::Db), lan.v6(Host::Db)),
        netns: Some(lan.ns(Host::Db)),
        ..Default::default()
    })
    .expect("start PostgreSQL in the db namespace")
}

// --- the guard ------------------------------------------------------------------------------

fn guard_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_GUARD_BIN") {
        return p.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("portcullis-guard"))
        .filter(|p| p.exists())
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "portcullis-guard is not built under {}: run `cargo build -p portcullis-guard` \
                 (or set PORTCULLIS_GUARD_BIN)",
                target.display()
            )
        })
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Xdp,
    Tc,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Xdp => "xdp",
            Mode::Tc => "tc",
        }
    }
}

/// A `portcullis-guard run` on the db host, its pins, and its event log. Dropping it kills
/// the process and detaches, so no program outlives the test.
struct Guard {
    child: Option<Child>,
    pin_dir: PathBuf,
    dir: tempfile::TempDir,
    runs: u32,
}

impl Guard {
    fn pin_dir(n: u8) -> PathBuf {
        PathBuf::from(format!(
            "/sys/fs/bpf/portcullis-e2e-{}-{n}",
            std::process::id()
        ))
    }

    fn start(lan: &Lan, port: u16, mode: Mode, extra: &[String]) -> Guard {
        let mut g = Guard {
            child: None,
            pin_dir: Self::pin_dir(lan.n),
            dir: tempfile::tempdir().unwrap(),
            runs: 0,
        };
        g.run(lan, port, mode, extra);
        g
    }

    /// Starts `run` (again) with the standard arguments and waits for it to report.
    fn run(&mut self, lan: &Lan, port: u16, mode: Mode, extra: &[String]) {
        let mut args: Vec<String> = [
            "--mode",
            mode.as_str(),
            "--interface",
            &lan.iface(Host::Db),
            "--port",
            &port.to_string(),
            "--allow",
            &format!("{}/32", lan.v4(Host::Gw)),
            "--allow",
            &format!("{}/128", lan.v6(Host::Gw)),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().cloned());
        self.spawn(&lan.ns(Host::Db), &args);
    }

    /// A guard with only the given `run` arguments, inside namespace `ns`.
    fn start_in(ns: &str, n: u8, args: &[String]) -> Guard {
        let mut g = Guard {
            child: None,
            pin_dir: Self::pin_dir(n),
            dir: tempfile::tempdir().unwrap(),
            runs: 0,
        };
        g.spawn(ns, args);
        g
    }

    /// `run --mount-bpffs ARGS` in `ns`, then waits for its start line.
    fn spawn(&mut self, ns: &str, args: &[String]) {
        self.runs += 1;
        let log = self.log_path();
        let out = fs::File::create(&log).unwrap();
        let err = fs::File::create(log.with_extension("err")).unwrap();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(guard_binary())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(["run", "--mount-bpffs"])
            .args(args)
            .stdout(out)
            .stderr(err);
        let mut child = cmd.spawn().expect("spawn portcullis-guard");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains("guard_started") {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "portcullis-guard run exited with {status}:\n{}\n{}",
                    self.log(),
                    fs::read_to_string(log.with_extension("err")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "portcullis-guard did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("run{}.log", self.runs))
    }

    /// Everything the current `run` printed on stdout: the start line, then events.
    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(guard_binary())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(args)
            .output()
            .expect("run portcullis-guard")
    }

    /// [`Self::cli`] that must succeed; its stderr is the failure message.
    fn cli_ok(&self, args: &[&str]) {
        succeeded(&self.cli(args), args);
    }

    /// [`Self::cli_in`] that must succeed.
    fn cli_in_ok(&self, ns: &str, args: &[&str]) {
        succeeded(&self.cli_in(ns, args), args);
    }

    /// As [`Self::cli`], inside namespace `ns` (interface names resolve there).
    fn cli_in(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(guard_binary())
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .args(args)
            .output()
            .expect("run portcullis-guard")
    }

    fn status(&self) -> String {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as systemd stops it, and waits for the exit (nsenter execs the guard, so
    /// the child is the guard itself).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("the guard is running");
        sh(Command::new("kill").args(["-TERM", &c.id().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("the guard did not exit on SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that the counters and at least one event name `addr`.
    fn assert_recorded(&self, addr: IpAddr, port: u16) {
        let status = self.status();
        assert!(
            status.contains(&format!("\"source\": \"{addr}\"")),
            "status names no drop from {addr}:\n{status}"
        );
        let want = format!("\"address\":\"{addr}\",\"dport\":{port}");
        wait_until(&format!("a bypass event for {addr}"), 10, || {
            self.log().contains(&want)
        });
        let line = self
            .log()
            .lines()
            .find(|l| l.contains(&want))
            .unwrap()
            .to_owned();
        assert!(line.contains("\"event\":\"bypass\""), "{line}");
        assert!(line.contains("\"reason\":\"syn\""), "{line}");
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
        if self.pin_dir.exists() {
            let _ = self.cli(&["detach"]);
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
    }
}

// --- the gateway, in its own namespace -------------------------------------------------------

struct NsGateway {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl NsGateway {
    fn start(lan: &Lan, db: &PgCluster) -> NsGateway {
        let mut opts = GatewayOptions::new(db, "postgres");
        opts.upstream_host = lan.v4(Host::Db).to_string();
        opts.listen_host = lan.v4(Host::Gw).to_string();
        let addr = SocketAddr::new(IpAddr::V4(lan.v4(Host::Gw)), 6432);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("portcullis.toml");
        fs::write(&config, opts.to_toml(addr)).unwrap();
        let log = fs::File::create(dir.path().join("gateway.log")).unwrap();
        let bin =
            gateway_binary().expect("the portcullis gateway binary (cargo build -p portcullis)");
        let child = lan
            .cmd(Host::Gw, bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn portcullis");
        let mut gw = NsGateway { child, dir, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lan.can_connect(Host::Gw, addr.ip(), addr.port()) {
            if let Ok(Some(status)) = gw.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", gw.log());
            }
            assert!(
                Instant::now() < deadline,
                "gateway never listened:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        gw
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for NsGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn psql_via_gateway(lan: &Lan, gw: &NsGateway, sql: &str) -> Output {
    let conninfo = format!(
        "host={} port={} user=agent password=agent-secret dbname=postgres sslmode=disable connect_timeout=10",
        gw.addr.ip(),
        gw.addr.port()
    );
    lan.cmd(Host::Agent, "psql")
        .args(["-X", "-At", "-d", &conninfo, "-c", sql])
        .output()
        .expect("run psql")
}

// --- cgroups for local mode ----------------------------------------------------------------

/// A cgroup v2 subtree for one test, removed on drop.
struct TestCgroup {
    root: PathBuf,
}

impl TestCgroup {
    fn new(n: u8) -> TestCgroup {
        let mount = portcullis_guard_cgroup2_root();
        let root = mount.join(format!("portcullis-e2e-{}-{n}", std::process::id()));
        for sub in ["", "allowed", "other"] {
            fs::create_dir_all(root.join(sub)).expect("create test cgroup");
        }
        TestCgroup { root }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Children first; a cgroup with processes cannot go, but ours only held short shells.
        for sub in ["allowed", "other", ""] {
            let _ = fs::remove_dir(self.root.join(sub));
        }
    }
}

/// Where cgroup v2 is mounted (`/sys/fs/cgroup` or, on hybrid hosts, `.../unified`).
fn portcullis_guard_cgroup2_root() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4))?
        })
        .map(PathBuf::from)
        .expect("a cgroup v2 mount (local mode needs one)")
}

// --- scenarios ------------------------------------------------------------------------------

/// 1. The agent dialling the database directly times out, and the guard names it.
fn direct_agent_is_dropped_and_recorded(n: u8, mode: Mode) {
    let lan = Lan::new(n);
    let db = start_db(&lan);
    let dbaddr = IpAddr::V4(lan.v4(Host::Db));
    assert!(
        lan.can_connect(Host::Agent, dbaddr, db.port),
        "without the guard the agent reaches the database (topology sanity)"
    );
    let guard = Guard::start(&lan, db.port, mode, &[]);
    assert!(
        !lan.can_connect(Host::Agent, dbaddr, db.port),
        "the agent reached the database directly with the guard attached ({mode:?})"
    );
    assert!(
        lan.can_connect(Host::Gw, dbaddr, db.port),
        "the allowlisted gateway host must still reach the database"
    );
    guard.assert_recorded(IpAddr::V4(lan.v4(Host::Agent)), db.port);
}

/// 2. The same agent through the gateway runs queries normally.
fn agent_through_gateway_runs_queries(n: u8, mode: Mode) {
    let lan = Lan::new(n);
    let db = start_db(&lan);
    let _guard = Guard::start(&lan, db.port, mode, &[]);
    let gw = NsGateway::start(&lan, &db);
    let out = psql_via_gateway(
        &lan,
        &gw,
        "SELECT count(*), sum(i) FROM generate_series(1, 10000) i",
    );
    assert!(
        out.status.success(),
        "query through the gateway failed ({mode:?}): {}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10000|50005000"
    );
    assert!(
        !lan.can_connect(Host::Agent, IpAddr::V4(lan.v4(Host::Db)), db.port),
        "direct access must stay closed while the gateway path works"
    );
}

/// 3. IPv6 from the agent is dropped too.
fn ipv6_agent_is_dropped(n: u8, mode: Mode) {
    let lan = Lan::new(n);
    let db = start_db(&lan);
    let dbaddr = IpAddr::V6(lan.v6(Host::Db));
    assert!(
        lan.can_connect(Host::Agent, dbaddr, db.port),
        "without the guard the agent reaches the database over IPv6 (topology sanity)"
    );
    let guard = Guard::start(&lan, db.port, mode, &[]);
    assert!(
        !lan.can_connect(Host::Agent, dbaddr, db.port),
        "the agent reached the database over IPv6 ({mode:?})"
    );
    assert!(
        lan.can_connect(Host::Gw, dbaddr, db.port),
        "the allowlisted gateway reaches it over IPv6"
    );
    guard.assert_recorded(IpAddr::V6(lan.v6(Host::Agent)), db.port);
}

/// 4. `allow add` lets the agent in and `allow remove` shuts it out, on the running guard.
fn allow_add_remove_without_restart(n: u8, mode: Mode) {
    let lan = Lan::new(n);
    let db = start_db(&lan);
    let mut guard = Guard::start(&lan, db.port, mode, &[]);
    let dbaddr = IpAddr::V4(lan.v4(Host::Db));
    let agent = format!("{}/32", lan.v4(Host::Agent));
    assert!(!lan.can_connect(Host::Agent, dbaddr, db.port));
    let pid = guard.child.as_ref().unwrap().id();

    guard.cli_ok(&["allow", "add", &agent]);
    assert!(
        lan.can_connect(Host::Agent, dbaddr, db.port),
        "allow add did not let the agent in ({mode:?})"
    );
    assert!(guard.status().contains(&format!("\"{agent}\"")));

    guard.cli_ok(&["allow", "remove", &agent]);
    assert!(
        !lan.can_connect(Host::Agent, dbaddr, db.port),
        "allow remove did not shut the agent out ({mode:?})"
    );
    let out = guard.cli(&["allow", "remove", &agent]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("{agent} is not in the allowlist (map ALLOW_V4)"))
            && stderr.contains("allow list"),
        "removing an absent entry must say what was wrong: {stderr}"
    );
    let agent6 = format!("{}/128", lan.v6(Host::Agent));
    let out = guard.cli(&["allow", "remove", &agent6]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(&format!("{agent6} is not in the allowlist (map ALLOW_V6)")),
        "the IPv6 branch must name the IPv6 map: {stderr}"
    );

    let child = guard.child.as_mut().unwrap();
    assert_eq!(child.id(), pid);
    assert!(
        child.try_wait().unwrap().is_none(),
        "the guard restarted or died"
    );
}

/// A namespace of its own for tests whose topology is not the bridged [`Lan`], removed on
/// drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(Command::new("ip").args(["netns", "add", &name]));
        sh(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Scenario 8: an interface with no link-layer header (tun, as WireGuard and Tailscale are): the guard
/// reads the packet from its IP header, so a SYN from outside the allowlist is dropped (and
/// recorded) while the allowlisted peer's SYN is answered by PostgreSQL. An interface whose
/// type the parser cannot read (here a tun device reporting itself as an ipip tunnel) is
/// refused before anything is attached.
/// A tun device `iface` in `ns` carrying `db_addr`/24, up, and PostgreSQL listening on
/// that address behind it.
fn db_behind_tun(ns: &Netns, iface: &str, db_addr: Ipv4Addr) -> (tun::Tun, PgCluster) {
    let dev = tun::Tun::create(&ns.0, iface, None);
    sh(Command::new("ip").args([
        "-n",
        &ns.0,
        "addr",
        "add",
        &format!("{db_addr}/24"),
        "dev",
        iface,
    ]));
    sh(Command::new("ip").args(["-n", &ns.0, "link", "set", iface, "up"]));
    let db = PgCluster::start(PgOptions {
        listen_addresses: format!("{db_addr}"),
        netns: Some(ns.0.clone()),
        ..Default::default()
    })
    .expect("start PostgreSQL behind the tun device");
    (dev, db)
}

fn tun_interface_is_guarded_from_its_ip_header(n: u8, mode: Mode) {
    let ns = Netns::new(format!("pcg15-tun{n}"));
    let iface = format!("pcg15tun{n}");
    let db_addr = Ipv4Addr::new(10, 215, n, 1);
    let peer = Ipv4Addr::new(10, 215, n, 2);
    let stranger = Ipv4Addr::new(10, 215, n, 3);
    let (mut dev, db) = db_behind_tun(&ns, &iface, db_addr);
    dev.send(&tun::syn(stranger, 40001, db_addr, db.port));
    assert!(
        dev.syn_ack(stranger, 40001, db.port, 10),
        "without the guard PostgreSQL answers a SYN written into the tun device (topology sanity)"
    );

    let guard = Guard::start_in(
        &ns.0,
        n,
        &[
            "--mode".into(),
            mode.as_str().into(),
            "--interface".into(),
            iface.clone(),
            "--port".into(),
            db.port.to_string(),
            "--allow".into(),
            format!("{peer}/32"),
        ],
    );
    assert!(
        guard.log().contains(&format!("[\"{iface}\",\"raw_ip\"]")),
        "the start line does not say the tun device is read from its IP header: {}",
        guard.log()
    );
    dev.send(&tun::syn(stranger, 40002, db_addr, db.port));
    assert!(
        !dev.syn_ack(stranger, 40002, db.port, 3),
        "a SYN from outside the allowlist reached PostgreSQL through the tun device ({mode:?})"
    );
    guard.assert_recorded(IpAddr::V4(stranger), db.port);
    dev.send(&tun::syn(peer, 40003, db_addr, db.port));
    assert!(
        dev.syn_ack(peer, 40003, db.port, 10),
        "the allowlisted peer's SYN was not answered through the tun device ({mode:?})"
    );

    // The same device type with another link type: refused, nothing attached.
    let odd = format!("pcg15odd{n}");
    let _odd_dev = tun::Tun::create(&ns.0, &odd, Some(768));
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/portcullis-e2e-{}-{n}odd",
        std::process::id()
    ));
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.0))
        .arg("--")
        .arg(guard_binary())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .args([
            "run",
            "--no-follow",
            "--mode",
            mode.as_str(),
            "--interface",
            &odd,
        ])
        .output()
        .expect("run portcullis-guard");
    let links = fs::read_dir(pin_dir.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    let _ = Command::new(guard_binary())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("detach")
        .output();
    let _ = fs::remove_dir_all(&pin_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an ipip-typed interface was accepted"
    );
    assert!(
        stderr.contains(&format!(
            "interface `{odd}` has link type 768 (ipip tunnel)"
        )) && stderr.contains("cannot parse"),
        "{stderr}"
    );
    assert_eq!(links, 0, "something was attached to a refused interface");
}

/// A flood keeps its evidence: with the event budget at zero (no burst, no refill), 3 SYNs
/// from each of 30 sources leave exactly one event per source (its first drop) while the
/// counters see all 90.
#[test]
fn flood_leaves_one_event_per_new_source() {
    let n = 17;
    let ns = Netns::new(format!("pcg15-fl{n}"));
    let iface = format!("pcg15tun{n}");
    let db_addr = Ipv4Addr::new(10, 215, n, 1);
    let (mut dev, db) = db_behind_tun(&ns, &iface, db_addr);
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("guard.toml");
    fs::write(&config, "event_rate = 0\nevent_burst = 0\n").unwrap();
    let guard = Guard::start_in(
        &ns.0,
        n,
        &[
            "--config".into(),
            config.display().to_string(),
            "--interface".into(),
            iface.clone(),
        ],
    );
    let sources: Vec<Ipv4Addr> = (10..40).map(|h| Ipv4Addr::new(10, 215, n, h)).collect();
    for round in 0..3u16 {
        for (i, src) in sources.iter().enumerate() {
            dev.send(&tun::syn(
                *src,
                41000 + round * 100 + i as u16,
                db_addr,
                db.port,
            ));
        }
    }
    let counter = |name: &str| -> u64 {
        let status: serde_json::Value = serde_json::from_str(&guard.status()).unwrap();
        status["counters"][name].as_u64().unwrap()
    };
    wait_until("the guard to drop all 90 SYNs", 20, || {
        counter("dropped") == 90
    });
    assert_eq!(counter("events_sent"), 30);
    assert_eq!(counter("events_rate_limited"), 60);
    let bypass_lines = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("\"event\":\"bypass\""))
            .map(String::from)
            .collect()
    };
    wait_until("30 bypass events on stdout", 10, || {
        bypass_lines(&guard.log()).len() == 30
    });
    let lines = bypass_lines(&guard.log());
    for src in &sources {
        let want = format!("\"address\":\"{src}\"");
        assert_eq!(
            lines.iter().filter(|l| l.contains(&want)).count(),
            1,
            "not exactly one event for {src}:\n{}",
            lines.join("\n")
        );
    }
}

/// PostgreSQL listening on two ports (two clusters) is protected on both without any
/// `--port`; the start warns about an interface that carries an address PostgreSQL listens
/// on but is not guarded; when a cluster goes away, the next start says loudly that its port
/// is no longer protected.
#[test]
fn every_port_postgres_listens_on_is_protected_by_default() {
    let lan = Lan::new(16);
    let first = start_db(&lan);
    // The second listens everywhere, including on an interface the guard is not told about.
    let db_ns = lan.ns(Host::Db);
    sh(Command::new("ip").args([
        "-n", &db_ns, "link", "add", "pcg16x0", "type", "veth", "peer", "name", "pcg16x1",
    ]));
    sh(Command::new("ip").args([
        "-n",
        &db_ns,
        "addr",
        "add",
        "10.216.0.1/24",
        "dev",
        "pcg16x0",
    ]));
    let mut second = PgCluster::start(PgOptions {
        listen_addresses: "*".into(),
        netns: Some(db_ns.clone()),
        ..Default::default()
    })
    .expect("start the second PostgreSQL");
    let dbaddr = IpAddr::V4(lan.v4(Host::Db));
    let args: Vec<String> = [
        "--mode",
        "xdp",
        "--interface",
        &lan.iface(Host::Db),
        "--allow",
        &format!("{}/32", lan.v4(Host::Gw)),
    ]
    .map(String::from)
    .to_vec();
    let mut guard = Guard::start_in(&lan.ns(Host::Db), lan.n, &args);
    let start: serde_json::Value =
        serde_json::from_str(guard.log().lines().next().unwrap()).unwrap();
    let mut both = vec![first.port, second.port];
    both.sort();
    assert_eq!(start["ports"], serde_json::json!(both), "{start}");
    assert_eq!(
        start["port_sources"]["discovered"],
        serde_json::json!(both),
        "{start}"
    );
    assert_eq!(
        start["unguarded_interfaces"],
        serde_json::json!(["pcg16x0"]),
        "{start}"
    );
    let stderr = fs::read_to_string(guard.log_path().with_extension("err")).unwrap();
    assert!(
        stderr.contains("WARNING: PostgreSQL is reachable through interface(s) pcg16x0"),
        "{stderr}"
    );
    for port in [first.port, second.port] {
        assert!(
            !lan.can_connect(Host::Agent, dbaddr, port),
            "the agent reached PostgreSQL on port {port}, which no --port named"
        );
        assert!(
            lan.can_connect(Host::Gw, dbaddr, port),
            "the gateway must reach port {port}"
        );
    }

    second.stop().expect("stop the second cluster");
    guard.terminate();
    guard.spawn(&lan.ns(Host::Db), &args);
    let start: serde_json::Value =
        serde_json::from_str(guard.log().lines().next().unwrap()).unwrap();
    assert_eq!(
        start["ports_no_longer_protected"],
        serde_json::json!([second.port]),
        "{start}"
    );
    let stderr = fs::read_to_string(guard.log_path().with_extension("err")).unwrap();
    assert!(
        stderr.contains(&format!(
            "WARNING: port(s) {} protected by the previous run are NOT protected any more",
            second.port
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("reachable through interface"),
        "the first cluster listens on guarded addresses only: {stderr}"
    );
    assert!(!lan.can_connect(Host::Agent, dbaddr, first.port));
}

/// `h`'s MAC address on the segment.
fn mac_of(lan: &Lan, h: Host) -> String {
    let out =
        sh(Command::new("ip").args(["-n", &lan.ns(h), "-j", "link", "show", "dev", &lan.iface(h)]));
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    links[0]["address"].as_str().unwrap().to_owned()
}

/// Whether a TCP connection from `from`, bound to source address `src`, to `dst:port` is
/// established within 3 s (bash's /dev/tcp cannot choose its source).
fn connect_from_addr(lan: &Lan, from: Host, src: IpAddr, dst: IpAddr, port: u16) -> bool {
    let family = if src.is_ipv4() { "AF_INET" } else { "AF_INET6" };
    let script = format!(
        "import socket,sys\ns=socket.socket(socket.{family})\ns.settimeout(3)\ns.bind(('{src}',0))\n\
         try:\n  s.connect(('{dst}',{port}))\nexcept OSError:\n  sys.exit(1)\n"
    );
    lan.cmd(from, "python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run python3")
        .success()
}

/// Scenario 9: a neighbour claiming the gateway's address: with address-only entries it gets in once the
/// database host's neighbour entry points at it (ARP/ND poisoning, done here directly); with
/// entries that bind the gateway's MAC it is dropped, poisoned or not, and recorded as a
/// binding mismatch, while the real gateway still gets in. An entry bound to an interface
/// admits its source only there.
fn neighbour_claiming_the_gateways_address(n: u8, mode: Mode) {
    let lan = Lan::new(n);
    let db = start_db(&lan);
    let guard = Guard::start(&lan, db.port, mode, &[]);
    let gw_mac = mac_of(&lan, Host::Gw);
    let agent_mac = mac_of(&lan, Host::Agent);
    let (db_ns, db_if) = (lan.ns(Host::Db), lan.iface(Host::Db));
    let neigh = |addr: IpAddr, mac: &str, state: &str| {
        sh(Command::new("ip").args([
            "-n",
            &db_ns,
            "neigh",
            "replace",
            &addr.to_string(),
            "lladdr",
            mac,
            "dev",
            &db_if,
            "nud",
            state,
        ]));
    };
    let targets = [
        (
            IpAddr::V4(lan.v4(Host::Gw)),
            IpAddr::V4(lan.v4(Host::Db)),
            "32",
        ),
        (
            IpAddr::V6(lan.v6(Host::Gw)),
            IpAddr::V6(lan.v6(Host::Db)),
            "128",
        ),
    ];
    // The agent takes the gateway's addresses besides its own.
    sh(Command::new("ip").args([
        "-n",
        &lan.ns(Host::Agent),
        "addr",
        "add",
        &format!("{}/32", targets[0].0),
        "dev",
        &lan.iface(Host::Agent),
    ]));
    sh(Command::new("ip").args([
        "-n",
        &lan.ns(Host::Agent),
        "addr",
        "add",
        &format!("{}/128", targets[1].0),
        "dev",
        &lan.iface(Host::Agent),
        "nodad",
    ]));

    for (gw, dst, _) in targets {
        neigh(gw, &agent_mac, "reachable");
        assert!(
            connect_from_addr(&lan, Host::Agent, gw, dst, db.port),
            "with an address-only entry and a poisoned neighbour entry the spoof gets in \
             (the weakness this binding closes; topology sanity) ({gw}, {mode:?})"
        );
    }
    for (gw, _, len) in targets {
        guard.cli_ok(&["allow", "add", &format!("{gw}/{len},mac={gw_mac}")]);
    }
    let status = guard.status();
    assert!(
        status.contains(&format!("\"mac\": \"{gw_mac}\"")),
        "{status}"
    );
    for (gw, dst, _) in targets {
        neigh(gw, &agent_mac, "reachable");
        assert!(
            !connect_from_addr(&lan, Host::Agent, gw, dst, db.port),
            "a neighbour claiming {gw} got in although the entry binds the gateway's MAC \
             (poisoned neighbour entry, {mode:?})"
        );
        // The deployment premise: a static neighbour entry for the gateway.
        neigh(gw, &gw_mac, "permanent");
        assert!(
            !connect_from_addr(&lan, Host::Agent, gw, dst, db.port),
            "a neighbour claiming {gw} got in (static neighbour entry, {mode:?})"
        );
        assert!(
            connect_from_addr(&lan, Host::Gw, gw, dst, db.port),
            "the real gateway must still get in from {gw} ({mode:?})"
        );
    }
    wait_until("a binding_mismatch event", 10, || {
        guard.log().lines().any(|l| {
            l.contains("\"reason\":\"binding_mismatch\"")
                && l.contains(&format!("\"address\":\"{}\"", targets[0].0))
        })
    });

    // Interface binding: the agent's own address, allowed only on loopback, then on its
    // real ingress interface.
    let agent = IpAddr::V4(lan.v4(Host::Agent));
    let dbaddr = IpAddr::V4(lan.v4(Host::Db));
    guard.cli_in_ok(
        &db_ns,
        &["allow", "add", &format!("{agent}/32,interface=lo")],
    );
    assert!(
        !lan.can_connect(Host::Agent, dbaddr, db.port),
        "an entry bound to lo admitted a packet arriving on {db_if} ({mode:?})"
    );
    guard.cli_in_ok(
        &db_ns,
        &["allow", "add", &format!("{agent}/32,interface={db_if}")],
    );
    assert!(
        lan.can_connect(Host::Agent, dbaddr, db.port),
        "an entry bound to {db_if} refused a packet arriving there ({mode:?})"
    );
    let out = guard.cli_in(
        &db_ns,
        &["allow", "add", &format!("{agent}/32,interface=pcg-nope0")],
    );
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("`pcg-nope0` does not exist"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

macro_rules! per_mode {
    ($($name:ident: $xdp_n:expr, $tc_n:expr;)+) => {
        $(
            mod $name {
                #[test]
                fn xdp() {
                    super::$name($xdp_n, super::Mode::Xdp)
                }
                #[test]
                fn tc() {
                    super::$name($tc_n, super::Mode::Tc)
                }
            }
        )+
    };
}

// 7. XDP and TC both pass 1-4 (and 8, 9).
per_mode! {
    direct_agent_is_dropped_and_recorded: 1, 5;
    agent_through_gateway_runs_queries: 2, 6;
    ipv6_agent_is_dropped: 3, 7;
    allow_add_remove_without_restart: 4, 8;
    tun_interface_is_guarded_from_its_ip_header: 13, 14;
    neighbour_claiming_the_gateways_address: 18, 19;
}

/// The allowlist is the configuration's: an entry taken out of the config file is revoked by
/// the next start, while one added with `allow add` is marked as such, shown in `status`, and
/// kept until `allow remove`.
#[test]
fn restart_revokes_entries_removed_from_the_config() {
    let lan = Lan::new(15);
    let db = start_db(&lan);
    let dbaddr = IpAddr::V4(lan.v4(Host::Db));
    let agent = format!("{}/32", lan.v4(Host::Agent));
    let runtime = "192.0.2.77/32";
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("guard.toml");
    let config_arg = ["--config".to_string(), config.display().to_string()];
    fs::write(&config, format!("allow = [{agent:?}]\n")).unwrap();
    let mut guard = Guard::start(&lan, db.port, Mode::Xdp, &config_arg);
    assert!(
        lan.can_connect(Host::Agent, dbaddr, db.port),
        "the agent is in the config and must get in"
    );
    guard.cli_ok(&["allow", "add", runtime]);
    let origin_of = |guard: &Guard, cidr: &str| -> Option<String> {
        let status: serde_json::Value = serde_json::from_str(&guard.status()).unwrap();
        status["allowlist"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["cidr"] == cidr)
            .map(|e| e["origin"].as_str().unwrap().to_owned())
    };
    assert_eq!(origin_of(&guard, &agent).as_deref(), Some("config"));
    assert_eq!(origin_of(&guard, runtime).as_deref(), Some("runtime"));
    let out = guard.cli(&["allow", "list"]);
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with(runtime) && l.ends_with("added at run time")),
        "{list}"
    );

    // The agent leaves the config; the guard is restarted as systemd would.
    guard.terminate();
    fs::write(&config, "allow = []\n").unwrap();
    guard.run(&lan, db.port, Mode::Xdp, &config_arg);
    let started = guard.log();
    let start: serde_json::Value = serde_json::from_str(started.lines().next().unwrap()).unwrap();
    assert_eq!(
        start["allowlist"]["revoked"],
        serde_json::json!([agent]),
        "{start}"
    );
    assert_eq!(
        start["allowlist"]["runtime"],
        serde_json::json!([runtime]),
        "{start}"
    );
    let stderr = fs::read_to_string(guard.log_path().with_extension("err")).unwrap();
    assert!(
        stderr.contains(&format!("revoked {agent}: no longer in the configuration")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("kept {runtime}, added at run time")),
        "{stderr}"
    );
    assert!(
        !lan.can_connect(Host::Agent, dbaddr, db.port),
        "the agent still gets in after leaving the config and a restart"
    );
    assert!(
        lan.can_connect(Host::Gw, dbaddr, db.port),
        "the gateway (still configured) must get in"
    );
    assert_eq!(origin_of(&guard, &agent), None);
    assert_eq!(origin_of(&guard, runtime).as_deref(), Some("runtime"));
}

/// Scenario 5: killing the guard leaves enforcement in place; a new run adopts it instead of
/// attaching twice; detach removes it and the agent gets through again.
#[test]
fn enforcement_survives_the_loader_and_detach_removes_it() {
    let lan = Lan::new(9);
    let db = start_db(&lan);
    let dbaddr = IpAddr::V4(lan.v4(Host::Db));
    let mut guard = Guard::start(&lan, db.port, Mode::Xdp, &[]);
    assert!(
        guard.log().contains("\"attached\":[{\"interface\""),
        "{}",
        guard.log()
    );

    guard.kill();
    assert!(
        !lan.can_connect(Host::Agent, dbaddr, db.port),
        "enforcement went away with the loader"
    );

    guard.run(&lan, db.port, Mode::Xdp, &[]);
    let started = guard.log();
    assert!(
        started.contains("\"adopted\":[{\"interface\"") && started.contains("\"attached\":[]"),
        "the new run attached again instead of adopting: {started}"
    );
    let status = guard.status();
    assert_eq!(status.matches("\"kind\": \"xdp\"").count(), 1, "{status}");
    assert!(!lan.can_connect(Host::Agent, dbaddr, db.port));
    // The pinned ring buffer survived too: the new run still has the map the old one filled.
    guard.assert_recorded(IpAddr::V4(lan.v4(Host::Agent)), db.port);

    guard.cli_ok(&["detach"]);
    assert!(
        lan.can_connect(Host::Agent, dbaddr, db.port),
        "the agent is still blocked after detach"
    );
    let child = guard.child.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "run did not exit after detach");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        guard.log().contains("\"why\":\"detached\""),
        "{}",
        guard.log()
    );
    assert!(!guard.pin_dir.exists(), "detach left pins behind");
}

/// Scenario 6, local mode: on the db host, a process outside the allowed cgroup cannot connect
/// to 127.0.0.1 (nor to the host's own address); one inside can.
#[test]
fn local_mode_refuses_connects_outside_allowed_cgroups() {
    let lan = Lan::new(10);
    let db = start_db(&lan);
    let cg = TestCgroup::new(10);
    let allowed = cg.root.join("allowed");
    let other = cg.root.join("other");
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let own = IpAddr::V4(lan.v4(Host::Db));
    assert!(lan.connect_from_cgroup(Host::Db, Some(&other), lo, db.port));

    // Without the flag local mode stays off.
    let guard = Guard::start(&lan, db.port, Mode::Xdp, &[]);
    assert!(
        lan.connect_from_cgroup(Host::Db, Some(&other), lo, db.port),
        "local mode must be off by default"
    );
    drop(guard);

    // The hooks go on the test's cgroup subtree rather than the root, so the test cannot
    // disturb anything else on this machine; in production the default is the root.
    let guard = Guard::start(
        &lan,
        db.port,
        Mode::Xdp,
        &[
            "--local".into(),
            "--local-cgroup".into(),
            cg.root.display().to_string(),
            "--local-allow-cgroup".into(),
            allowed.display().to_string(),
        ],
    );
    assert!(
        !lan.connect_from_cgroup(Host::Db, Some(&other), lo, db.port),
        "a process outside the allowed cgroup connected to 127.0.0.1"
    );
    assert!(
        !lan.connect_from_cgroup(Host::Db, Some(&other), own, db.port),
        "a process outside the allowed cgroup connected to the host's own address"
    );
    assert!(
        lan.connect_from_cgroup(Host::Db, Some(&allowed), lo, db.port),
        "a process in the allowed cgroup was refused"
    );
    wait_until("a local_connect_refused event", 10, || {
        guard.log().contains("\"event\":\"local_connect_refused\"")
    });
    let status = guard.status();
    assert!(status.contains("\"local_denied\": 2"), "{status}");
    assert!(status.contains("\"local_allowed\": 1"), "{status}");
}

/// The guard's own audit log: the agent's attempts become aggregated `guard_bypass` records
/// between `guard_start` and `guard_stop` (on SIGTERM), with exact counts, and the
/// gateway's `portcullis audit verify` calls the log intact.
#[test]
fn bypass_attempts_land_in_the_guards_verifiable_audit_log() {
    let lan = Lan::new(12);
    let db = start_db(&lan);
    let dbaddr = IpAddr::V4(lan.v4(Host::Db));
    let agent = IpAddr::V4(lan.v4(Host::Agent));
    let files = tempfile::tempdir().unwrap();
    let key = files.path().join("guard.key");
    let log = files.path().join("audit");
    let witness = files.path().join("witness.txt");
    let origin = "portcullis-guard/e2e-db";
    let portcullis = gateway_binary().expect("the portcullis binary (cargo build -p portcullis)");
    let out = sh(Command::new(&portcullis).args([
        "audit",
        "keygen",
        "--out",
        key.to_str().unwrap(),
        "--origin",
        origin,
    ]));
    let vkey = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let config = files.path().join("guard.toml");
    fs::write(
        &config,
        format!(
            "[audit]\ndir = {log:?}\nsigning_key = {key:?}\norigin = {origin:?}\n\
             aggregate_ms = 2000\ncheckpoint_every_records = 3\nwitnesses = [{witness:?}]\n"
        ),
    )
    .unwrap();

    let mut guard = Guard::start(
        &lan,
        db.port,
        Mode::Xdp,
        &["--config".into(), config.display().to_string()],
    );
    assert!(
        guard.log().contains("\"signed\":true"),
        "the start line does not report a signed audit log: {}",
        guard.log()
    );
    // Three attempts at once: their SYNs (and retransmissions) land in the same windows.
    std::thread::scope(|s| {
        let tries: Vec<_> = (0..3)
            .map(|_| s.spawn(|| lan.can_connect(Host::Agent, dbaddr, db.port)))
            .collect();
        for t in tries {
            assert!(
                !t.join().unwrap(),
                "the agent reached the database directly"
            );
        }
    });
    guard.assert_recorded(agent, db.port);
    let src = format!("\"src\":\"{agent}\"");
    wait_until("a guard_bypass record in the guard's audit log", 10, || {
        segments_text(&log).contains(&src)
    });
    let status = guard.terminate();
    assert!(status.success(), "the guard exited with {status}");
    let stdout = guard.log();
    assert!(stdout.contains("\"event\":\"guard_stopped\""), "{stdout}");

    let records: Vec<serde_json::Value> = segments_text(&log)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["v"], 1, "{r}");
        assert_eq!(r["seq"], i as u64, "seq is not the log position: {r}");
        assert_eq!(r["gateway"], origin, "{r}");
    }
    let first = &records[0];
    assert_eq!(first["kind"], "guard_start", "{first}");
    assert_eq!(first["interfaces"][0], lan.iface(Host::Db), "{first}");
    assert_eq!(first["ports"][0], db.port, "{first}");
    assert_eq!(first["config_sha256"].as_str().map(str::len), Some(64));
    let last = records.last().unwrap();
    assert_eq!(last["kind"], "guard_stop", "{last}");
    assert_eq!(last["reason"], "signalled", "{last}");

    let bypass: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "guard_bypass" && r["src"] == agent.to_string())
        .collect();
    assert!(!bypass.is_empty(), "no guard_bypass record for {agent}");
    for r in &bypass {
        assert_eq!(r["dst"], lan.iface(Host::Db), "{r}");
        assert_eq!(r["dport"], db.port, "{r}");
        assert_eq!(
            (
                r["proto"].as_str(),
                r["hook"].as_str(),
                r["reason"].as_str()
            ),
            (Some("tcp"), Some("xdp"), Some("syn")),
            "{r}"
        );
        assert!(r["first"].as_str() <= r["last"].as_str(), "{r}");
        assert!(r.get("pid").is_none(), "{r}");
    }
    // Exact counts: every event printed on stdout for the agent is counted once in the log.
    let printed = stdout
        .lines()
        .filter(|l| l.contains(&format!("\"address\":\"{agent}\"")))
        .count() as u64;
    let counted: u64 = bypass.iter().map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, printed, "{records:#?}");
    let all_events = stdout
        .lines()
        .filter(|l| l.contains("\"event\":\"bypass\""))
        .count();
    assert_eq!(last["events"], all_events as u64, "{last}");
    // Aggregated: the SYN retries of two connection attempts are far fewer records.
    assert!(
        bypass.len() < printed as usize || printed == 1,
        "{records:#?}"
    );

    let out = Command::new(&portcullis)
        .args(["audit", "verify"])
        .arg(&log)
        .args(["--public-key", &vkey, "--witness"])
        .arg(&witness)
        .output()
        .expect("run portcullis audit verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with(&format!("intact: {} records", records.len())),
        "portcullis audit verify: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every segment of an audit log, in order.
fn segments_text(dir: &Path) -> String {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
    });
    names.sort();
    names
        .iter()
        .map(|p| fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// When XDP cannot attach (here: the interface already has an XDP program, in another pin
/// directory) the error says to use TC, and TC mode then attaches beside it.
#[test]
fn xdp_conflict_points_to_tc_mode() {
    let lan = Lan::new(11);
    let _first = Guard::start(&lan, 5432, Mode::Xdp, &[]);
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/portcullis-e2e-{}-11b",
        std::process::id()
    ));
    let second = |mode: &str| {
        lan.cmd(Host::Db, guard_binary())
            .arg("--pin-dir")
            .arg(&pin_dir)
            .args(["run", "--no-follow", "--mode", mode])
            .args(["--interface", &lan.iface(Host::Db)])
            .output()
            .expect("run portcullis-guard")
    };
    let out = second("xdp");
    let _ = Command::new(guard_binary())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("detach")
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second XDP attach succeeded");
    assert!(stderr.contains("use TC mode instead"), "{stderr}");
    let out = second("tc");
    let _ = Command::new(guard_binary())
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("detach")
        .output();
    let _ = fs::remove_dir_all(&pin_dir);
    assert!(
        out.status.success(),
        "TC mode did not attach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
