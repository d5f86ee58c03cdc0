//! The shipped example configs stay valid for the gateway that ships with them.

use std::process::Command;

fn check(path: &str) -> std::process::Output {
    let bin = portcullis_tests::gateway::binary().expect("portcullis binary");
    let root = portcullis_tests::gateway::workspace_root();
    Command::new(bin)
        .args(["check-config", "--config"])
        .arg(root.join(path))
        .env("PORTCULLIS_UPSTREAM_PASSWORD", "example")
        .output()
        .expect("run portcullis check-config")
}

#[test]
fn quickstart_config_passes_check_config() {
    let out = check("deploy/quickstart.toml");
    assert!(out.status.success(), "{out:?}");
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
