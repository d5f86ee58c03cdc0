//! Denials no rule can lift: what reaches outside the database's data (shell commands,
//! server files, other servers, other backends, server configuration) or changes who the
//! session is. The gateway's upstream role may well be able to do these; an agent never
//! may through the gateway.

use crate::analysis::{Property, Statement};

/// Why `stmt` is refused whatever the rules say, if it is.
pub fn denial(stmt: &Statement) -> Option<(Property, &'static str)> {
    const DENIED: [(Property, &str); 10] = [
        (
            Property::CopyProgram,
            "COPY to or from a program runs a shell command on the database host",
        ),
        (
            Property::CopyFile,
            "COPY to or from a server file reads or writes the database host's files",
        ),
        (
            Property::ServerFile,
            "server-file functions read or list the database host's files",
        ),
        (
            Property::LargeObjectFile,
            "lo_import and lo_export move server files in and out of the database",
        ),
        (
            Property::RemoteConnection,
            "dblink, foreign servers and user mappings open connections to other servers",
        ),
        (
            Property::SignalBackend,
            "signalling functions cancel, terminate or reconfigure other backends",
        ),
        (
            Property::AlterSystem,
            "ALTER SYSTEM changes the server's configuration",
        ),
        (
            Property::IdentityChange,
            "SET ROLE and SET SESSION AUTHORIZATION change who the session is (so do RESET ROLE, DISCARD ALL and set_config('role', ...)); the gateway decides the session's database role",
        ),
        (
            Property::RoleManagement,
            "creating, altering, granting and dropping roles changes who may do what",
        ),
        (
            Property::Load,
            "LOAD loads a shared library into the server",
        ),
    ];
    DENIED.into_iter().find(|(p, _)| stmt.has(*p))
}
