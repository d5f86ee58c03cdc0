//! The harness shared by end-to-end tests, the quickstart and the bench: throwaway
//! PostgreSQL clusters, the sample financial dataset, gateway processes.
//!
//! Everything here talks to real processes (PostgreSQL 15, the `portcullis` binary, `psql`),
//! so a test exercises what a user would run. Nothing builds anything: the caller builds the
//! gateway first (`cargo xtask test` does).

pub mod browser;
pub mod certs;
pub mod dataset;
pub mod gateway;
pub mod metrics;
pub mod net;
pub mod oidc;
pub mod pg;
pub mod policy;
pub mod scram;
pub mod syslog;

pub use browser::Browser;
pub use certs::Certs;
pub use dataset::{
    GATEWAY_READ_ROLE, GATEWAY_ROLE, GATEWAY_WRITE_ROLE, aba_valid, create_gateway_role,
    iban_valid, load_financial, luhn_valid, ssn_valid,
};
pub use gateway::{ALLOW_ALL_POLICY, Engine, Gateway, GatewayOptions, Identity, workspace_root};
pub use net::{NetNs, free_port};
pub use pg::{PgCluster, PgOptions};
pub use policy::{
    QUICKSTART_APPROVALS, QUICKSTART_MASK_POLICY, QUICKSTART_REVIEWER_TOKEN, QUICKSTART_ROLES,
    QUICKSTART_STATEMENT_POLICY, result_side_only,
};

/// Generates one `#[test]` per I/O engine from a function taking an [`Engine`], so every
/// data-path scenario runs on both io_uring and epoll under its own name
/// (`scenario::uring`, `scenario::epoll`).
#[macro_export]
macro_rules! per_engine {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn uring() {
                    super::$name($crate::Engine::Uring)
                }
                #[test]
                fn epoll() {
                    super::$name($crate::Engine::Epoll)
                }
            }
        )+
    };
}
