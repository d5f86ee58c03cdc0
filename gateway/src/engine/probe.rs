//! The readiness check's question to the database: can the gateway log in now? A full
//! start-up as sessions do it (TLS, the credential, SCRAM), then `Terminate`. Runs on
//! the control runtime through the epoll engine's connector, never on a worker.

use super::Shared;
use super::conn::{UpstreamStartError, connect_upstream};
use super::epoll::Epoll;
use super::transport::Transport;
use crate::protocol::frontend as fe;

/// `Err` says why the database cannot be reached or refused the gateway.
pub async fn upstream(shared: &Shared, database: &str) -> Result<(), String> {
    let timeout = shared.upstream.connect_timeout * 2;
    let login = connect_upstream::<Epoll>(shared, database, &[], None);
    match tokio::time::timeout(timeout, login).await {
        Err(_) => Err(format!(
            "no answer from {}:{} within {} ms",
            shared.upstream.host,
            shared.upstream.port,
            timeout.as_millis()
        )),
        Ok(Err(UpstreamStartError::Refused(frame))) => {
            let (code, message) =
                crate::protocol::backend::error_summary(frame.get(5..).unwrap_or_default());
            Err(format!(
                "the database refused the login: {message} ({code})"
            ))
        }
        Ok(Err(UpstreamStartError::Other(e))) => Err(e.to_string()),
        Ok(Ok((server, _, _))) => {
            let _ = server.write_all(fe::terminate()).await;
            server.shutdown();
            Ok(())
        }
    }
}
