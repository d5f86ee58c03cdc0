//! Operating the gateway process: a second gateway on a port a running one holds must
//! fail loudly, not quietly share the port (SO_REUSEPORT would split sessions between
//! the two).

mod common;

use std::process::Command;

use common::Env;
use portcullis_tests::{Engine, per_engine};

fn second_gateway_on_a_taken_port_fails(engine: Engine) {
    let env = Env::start(engine);
    let out = Command::new(portcullis_tests::gateway::binary().expect("gateway binary"))
        .args(["serve", "--config"])
        .arg(env.gw.config_path())
        .args(["--listen", &env.gw.addr.to_string()])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run a second gateway");
    assert!(
        !out.status.success(),
        "a second gateway started on a taken port"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Address already in use"), "{err}");
    // The first one is untouched.
    assert_eq!(env.query_gw("SELECT 'still mine'").trim(), "still mine");
}

per_engine!(second_gateway_on_a_taken_port_fails);
