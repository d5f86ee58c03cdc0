//! The SQLSTATE codes the gateway itself answers with.

pub const PROTOCOL_VIOLATION: &str = "08P01";
pub const CONNECTION_FAILURE: &str = "08006";
pub const CONNECTION_EXCEPTION: &str = "08000";
pub const INVALID_PASSWORD: &str = "28P01";
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `sqlserver_rejected_establishment_of_sqlconnection`: the gateway cannot check the
/// agent's credential right now (its identity provider is unreachable); retry later.
pub const REJECTED_CONNECTION: &str = "08004";
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
pub const INTERNAL_ERROR: &str = "XX000";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const CANNOT_CONNECT_NOW: &str = "57P03";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const QUERY_CANCELED: &str = "57014";
/// `io_error`: the audit log cannot be written.
pub const IO_ERROR: &str = "58030";
/// `insufficient_resources`: the audit log's buffer is full.
pub const INSUFFICIENT_RESOURCES: &str = "53000";
