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
