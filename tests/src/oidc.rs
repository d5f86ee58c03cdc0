//! A real OpenID provider for the token tests: the certified `oidc-provider` package run
//! by node (`tests/oidc/provider.mjs`), serving HTTPS with a test CA's certificate and
//! issuing RFC 9068 JWT access tokens to `client_credentials` clients. Its signing keys
//! live in a file the tests can read, to sign tokens the provider would never issue
//! (`forge.mjs`), and remove, to make the provider rotate its keys at its next start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::Certs;
use crate::gateway::workspace_root;
use crate::net::free_port;

/// The audience the provider issues tokens for.
pub const AUDIENCE: &str = "urn:portcullis";

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("node: {0}")]
    Node(std::io::Error),
    #[error("the OpenID provider did not start within 20s\n--- its output ---\n{0}")]
    Timeout(String),
    #[error("{what} failed: {stderr}")]
    Script { what: &'static str, stderr: String },
    #[error(transparent)]
    Port(#[from] crate::net::NetError),
}

/// A client the provider knows.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub secret: String,
    pub groups: Vec<String>,
    /// Bytes of padding claim: a large token.
    pub pad: usize,
}

impl Client {
    pub fn new(id: &str, groups: &[&str]) -> Client {
        Client {
            id: id.into(),
            secret: format!("{id}-secret"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            pad: 0,
        }
    }
}

pub struct OidcProvider {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    clients: Vec<Client>,
    ttl: u64,
}

fn script(name: &str) -> PathBuf {
    workspace_root().join("tests/oidc").join(name)
}

impl OidcProvider {
    /// Starts a provider on a free port serving `certs`' server certificate.
    pub fn start(certs: &Certs, clients: Vec<Client>, ttl: u64) -> Result<Self, OidcError> {
        let mut p = OidcProvider {
            child: None,
            dir: tempfile::tempdir().map_err(OidcError::Node)?,
            port: free_port()?,
            cert: certs.path("server.pem"),
            key: certs.path("server.key"),
            ca: certs.path("ca.pem"),
            clients,
            ttl,
        };
        p.spawn()?;
        Ok(p)
    }

    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The provider's private keys (a JWKS with `d`).
    pub fn keys_file(&self) -> PathBuf {
        self.dir.path().join("keys.json")
    }

    pub fn ca(&self) -> &Path {
        &self.ca
    }

    fn spawn(&mut self) -> Result<(), OidcError> {
        let ready = self.dir.path().join("ready");
        let _ = std::fs::remove_file(&ready);
        let clients: Vec<serde_json::Value> = self
            .clients
            .iter()
            .map(|c| {
                serde_json::json!({
                    "client_id": c.id, "client_secret": c.secret,
                    "groups": c.groups, "pad": c.pad,
                })
            })
            .collect();
        let log = self.dir.path().join("provider.log");
        let out = std::fs::File::create(&log).map_err(OidcError::Node)?;
        let child = Command::new("node")
            .arg(script("provider.mjs"))
            .current_dir(script(""))
            .env("PORT", self.port.to_string())
            .env("TLS_CERT", &self.cert)
            .env("TLS_KEY", &self.key)
            .env("KEYS", self.keys_file())
            .env("TTL", self.ttl.to_string())
            .env("AUDIENCE", AUDIENCE)
            .env("CLIENTS", serde_json::Value::Array(clients).to_string())
            .env("READY_FILE", &ready)
            .stdout(out.try_clone().map_err(OidcError::Node)?)
            .stderr(out)
            .spawn()
            .map_err(OidcError::Node)?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if Instant::now() > deadline {
                return Err(OidcError::Timeout(
                    std::fs::read_to_string(&log).unwrap_or_default(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the provider: it is "down" until [`OidcProvider::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port; `rotate`: with new signing keys (new `kid`s).
    pub fn restart(&mut self, rotate: bool) -> Result<(), OidcError> {
        self.stop();
        if rotate {
            let _ = std::fs::remove_file(self.keys_file());
        }
        self.spawn()
    }

    /// An access token for `client`, from the token endpoint.
    pub fn token(&self, client: &str) -> Result<String, OidcError> {
        let c = self
            .clients
            .iter()
            .find(|c| c.id == client)
            .expect("a configured client");
        let out = Command::new("node")
            .arg(script("token.mjs"))
            .args([&self.issuer(), &c.id, &c.secret, AUDIENCE])
            .env("NODE_EXTRA_CA_CERTS", &self.ca)
            .output()
            .map_err(OidcError::Node)?;
        if !out.status.success() {
            return Err(OidcError::Script {
                what: "getting a token",
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A token signed as `request` says (see `tests/oidc/forge.mjs`); `keys` is filled in.
    pub fn forge(&self, mut request: serde_json::Value) -> Result<String, OidcError> {
        request["keys"] = self.keys_file().display().to_string().into();
        let mut child = Command::new("node")
            .arg(script("forge.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(OidcError::Node)?;
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(request.to_string().as_bytes())
            .map_err(OidcError::Node)?;
        let out = child.wait_with_output().map_err(OidcError::Node)?;
        if !out.status.success() {
            return Err(OidcError::Script {
                what: "forging a token",
                stderr: String::from_utf8_lossy(&out.stderr).into(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The claims the provider would put in a token for `sub`, valid for `secs`.
    pub fn claims(&self, sub: &str, secs: i64) -> serde_json::Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        serde_json::json!({
            "iss": self.issuer(), "aud": AUDIENCE, "sub": sub,
            "iat": now, "exp": now + secs, "groups": ["db-writers"],
        })
    }

    /// The `[[oidc]]` section a gateway needs to accept this provider's tokens.
    pub fn gateway_toml(&self) -> String {
        format!(
            "[[oidc]]\nissuer = \"{}\"\naudiences = [\"{AUDIENCE}\"]\nca = \"{}\"\nrole_map = {{ \"db-writers\" = \"writer\" }}\nroles = [\"agent\"]\njwks_refetch_min_secs = 1\n",
            self.issuer(),
            self.ca.display()
        )
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}
