//! The shipped example configs stay valid for the gateway that ships with them.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> std::process::Output {
    let bin = portcullis_tests::gateway::binary().expect("portcullis binary");
    Command::new(bin)
        .args(["check-config", "--config"])
        .arg(path)
        .env("PORTCULLIS_UPSTREAM_PASSWORD", "example")
        .env("PORTCULLIS_MASK_KEY", "example-mask-key-of-enough-bytes")
        .output()
        .expect("run portcullis check-config")
}

/// `check-config`'s verdict line must count every `[[policy.rule]]` of `text`, enforced.
fn assert_policy_counted(out: &std::process::Output, text: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let rules = text.matches("\n[[policy.rule]]\n").count();
    assert!(rules > 0, "no [[policy.rule]] in the file");
    assert!(
        stdout.contains(&format!(", {rules} policy rules)")),
        "expected {rules} enforced policy rules: {stdout}"
    );
}

#[test]
fn quickstart_config_passes_check_config() {
    let root = portcullis_tests::gateway::workspace_root();
    let path = root.join("deploy/quickstart.toml");
    let out = check(&path);
    assert_policy_counted(&out, &std::fs::read_to_string(&path).unwrap());
}

/// The reference config is valid as soon as its placeholders are: real SCRAM verifiers
/// for `<salt>$<StoredKey>:<ServerKey>` and TLS files where it names them.
#[test]
fn example_config_passes_check_config() {
    const PLACEHOLDER: &str = "SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>";
    let root = portcullis_tests::gateway::workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/portcullis.example.toml")).unwrap();
    assert!(
        text.contains(PLACEHOLDER),
        "the example's verifier placeholder changed"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One self-signed certificate serves as the server's and as the upstream CA.
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout"])
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    std::fs::copy(d.join("cert.pem"), d.join("upstream-ca.pem")).unwrap();
    // The audit signing key as the example says to make it, with OpenSSL.
    let out = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(d.join("audit.key"))
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    // The example takes the upstream password from a file a secret store keeps.
    const CREDENTIAL: &str = "/run/credentials/portcullis.service/portcullis-db";
    assert!(
        text.contains(CREDENTIAL),
        "the example's password_file changed"
    );
    std::fs::write(d.join("db-password"), "example\n").unwrap();
    let filled = text
        .replace(CREDENTIAL, &d.join("db-password").display().to_string())
        .replace(PLACEHOLDER, &portcullis_tests::scram::verifier("example"))
        .replace("/etc/portcullis/tls/", &format!("{}/", d.display()))
        .replace(
            "/etc/portcullis/audit.key",
            &d.join("audit.key").display().to_string(),
        );
    let path = d.join("portcullis.toml");
    std::fs::write(&path, &filled).unwrap();
    assert_policy_counted(&check(&path), &filled);
}

/// deploy/quickstart.toml documents what the quickstart runs, masking policy included.
#[test]
fn quickstart_config_carries_the_tested_mask_policy() {
    let root = portcullis_tests::gateway::workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/quickstart.toml")).unwrap();
    assert!(
        text.contains(portcullis_tests::QUICKSTART_MASK_POLICY.trim()),
        "deploy/quickstart.toml's [mask] section differs from tests/src/policy.rs"
    );
    assert!(
        text.contains(portcullis_tests::QUICKSTART_STATEMENT_POLICY.trim()),
        "deploy/quickstart.toml's [policy] section differs from tests/src/policy.rs"
    );
    assert!(
        text.contains(portcullis_tests::QUICKSTART_APPROVALS.trim()),
        "deploy/quickstart.toml's [approvals] section differs from tests/src/policy.rs"
    );
    assert!(
        text.contains(portcullis_tests::QUICKSTART_ROLES.trim()),
        "deploy/quickstart.toml's [[role]]s differ from tests/src/policy.rs"
    );
}

/// `systemctl reload` goes through the admin socket: the unit's runtime directory must be
/// where the example configuration puts the socket.
#[test]
fn systemd_reload_uses_the_example_admin_socket() {
    let root = portcullis_tests::gateway::workspace_root();
    let unit = std::fs::read_to_string(root.join("deploy/portcullis.service")).unwrap();
    let example = std::fs::read_to_string(root.join("deploy/portcullis.example.toml")).unwrap();
    assert!(
        unit.contains(
            "\nExecReload=/usr/local/bin/portcullis reload --config /etc/portcullis/portcullis.toml\n"
        ),
        "ExecReload does not use `portcullis reload`"
    );
    assert!(unit.contains("\nRuntimeDirectory=portcullis\n"));
    assert!(example.contains("\n[admin]\nsocket = \"/run/portcullis/admin.sock\"\n"));
}
