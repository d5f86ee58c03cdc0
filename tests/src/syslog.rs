//! A throwaway `rsyslogd` (Debian's `rsyslog`) for tests of the audit log's syslog export:
//! the real daemon, with its own configuration, listening on loopback ports and a socket in
//! a temporary directory, writing what it parsed to a file.

use std::path::PathBuf;

use serde_json::Value;

/// A throwaway rsyslogd: UDP and TCP on loopback ports, a unix socket, all into one
/// file, one line per message with the input's name and the parsed RFC 5424 fields.
pub struct Rsyslogd {
    dir: tempfile::TempDir,
    pub udp: u16,
    pub tcp: u16,
    child: Option<std::process::Child>,
}

impl Default for Rsyslogd {
    fn default() -> Self {
        Self::new()
    }
}

impl Rsyslogd {
    pub fn binary() -> PathBuf {
        let found = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd", "/usr/bin/rsyslogd"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        found.expect(
            "rsyslogd not found: this test runs a real rsyslog (apt-get install rsyslog; `cargo xtask setup` installs it)",
        )
    }

    pub fn new() -> Rsyslogd {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let r = Rsyslogd {
            dir: tempfile::tempdir().unwrap(),
            udp: udp.local_addr().unwrap().port(),
            tcp: tcp.port(),
            child: None,
        };
        let d = r.dir.path().display();
        let conf = format!(
            r#"global(workDirectory="{d}" maxMessageSize="64k")
module(load="imudp")
module(load="imtcp")
module(load="imuxsock" SysSock.Use="off")
input(type="imudp" address="127.0.0.1" port="{udp}")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imuxsock" Socket="{d}/log.sock" UseSpecialParser="off" ParseHostname="on")
template(name="fields" type="string" string="%inputname% %pri% %protocol-version% %hostname% %app-name% %procid% %msgid% %msg%\n")
action(type="omfile" file="{d}/out.log" template="fields")
"#,
            udp = r.udp,
            tcp = r.tcp,
        );
        std::fs::write(r.dir.path().join("rsyslog.conf"), conf).unwrap();
        r
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("log.sock")
    }

    /// Starts it and waits until it listens (it can be started again after [`Rsyslogd::stop`]).
    pub fn start(&mut self) {
        let child = std::process::Command::new(Self::binary())
            .arg("-n")
            .arg("-f")
            .arg(self.dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let tcp = self.tcp;
        let sock = self.socket();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !(sock.exists() && std::net::TcpStream::connect(("127.0.0.1", tcp)).is_ok()) {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd did not start listening"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// SIGTERM (so it flushes its file) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            child.wait().unwrap();
        }
    }

    /// `(input, seq)` of every message received, and every line for other checks.
    pub fn received(&self) -> (Vec<(String, u64)>, Vec<String>) {
        let text = std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let seqs = lines
            .iter()
            .filter_map(|l| {
                let input = l.split(' ').next()?.to_owned();
                let json = &l[l.find('{')?..];
                let v: Value = serde_json::from_str(json).ok()?;
                Some((input, v["seq"].as_u64()?))
            })
            .collect();
        (seqs, lines)
    }

    pub fn seqs(&self, input: &str) -> Vec<u64> {
        self.received()
            .0
            .into_iter()
            .filter(|(i, _)| i == input)
            .map(|(_, s)| s)
            .collect()
    }
}

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        self.stop();
    }
}
