//! A throwaway CA with a server certificate for `localhost` / 127.0.0.1 and a client
//! certificate for the gateway's upstream user, made with `openssl`: for TLS to the
//! gateway, from it to PostgreSQL, and to the tests' identity provider.

use std::path::PathBuf;
use std::process::Command;

pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// Panics when openssl fails: no test can go on without its certificates.
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let sh = format!(
            "set -e; cd {d}
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=portcullis-test-ca 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN={user} 2>/dev/null
printf 'extendedKeyUsage=clientAuth\\n' > client.ext
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
chmod 600 server.key client.key
chown postgres server.key server.pem ca.pem
chmod 755 .",
            d = d.display(),
            user = crate::pg::UPSTREAM_USER,
        );
        let out = Command::new("sh")
            .args(["-c", &sh])
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Certs {
    fn default() -> Self {
        Certs::new()
    }
}
