//! What the gateway knows about functions by name.
//!
//! *Known free of side effects*: the built-in functions of PostgreSQL 15 (`pg_catalog`)
//! whose every overload is `IMMUTABLE` or `STABLE` (`pg15_stable_functions.txt`,
//! generated from a PostgreSQL 15 server; the end-to-end test `policy_catalog` checks it
//! against the running server), less those that run SQL text (`query_to_xml` and
//! family), plus a few volatile ones that only read clocks or random numbers. User
//! functions are never in this list whatever their declared volatility: a function can
//! declare itself `IMMUTABLE` and delete rows.
//!
//! *Denied by name*, in any schema: server files, large-object file transfer, remote
//! connections, signalling backends. A same-named function of a user schema is denied
//! too; that errs on the safe side.

use std::collections::HashSet;
use std::sync::OnceLock;

use super::model::Property;

const STABLE_LIST: &str = include_str!("pg15_stable_functions.txt");

/// Volatile built-ins that read a clock or a random source and change nothing.
const HARMLESS_VOLATILE: &[&str] = &[
    "random",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "statement_timestamp",
];

fn stable() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        STABLE_LIST
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .chain(HARMLESS_VOLATILE.iter().copied())
            .collect()
    })
}

/// Whether `schema.name` is a built-in known to have no side effects (an unqualified name
/// is taken as the built-in; the session layer checks `pg_catalog` comes first).
pub fn known_safe(schema: Option<&str>, name: &str) -> bool {
    matches!(schema, None | Some("pg_catalog")) && stable().contains(name)
}

/// Built-ins that change data: large objects created, written or removed.
pub fn writes(schema: Option<&str>, name: &str) -> bool {
    matches!(schema, None | Some("pg_catalog"))
        && matches!(
            name,
            "lo_create"
                | "lo_creat"
                | "lo_from_bytea"
                | "lo_unlink"
                | "lo_put"
                | "lo_truncate"
                | "lo_truncate64"
                | "lowrite"
                | "lo_open"
        )
}

/// The property a function carries by its name alone, if any.
pub fn property(name: &str) -> Option<Property> {
    Some(match name {
        "pg_read_file"
        | "pg_read_binary_file"
        | "pg_ls_dir"
        | "pg_stat_file"
        | "pg_ls_logdir"
        | "pg_ls_waldir"
        | "pg_ls_tmpdir"
        | "pg_ls_archive_statusdir"
        | "pg_ls_logicalsnapdir"
        | "pg_ls_logicalmapdir"
        | "pg_ls_replslotdir"
        | "pg_current_logfile"
        | "pg_file_write"
        | "pg_file_rename"
        | "pg_file_unlink"
        | "pg_file_sync"
        | "pg_logdir_ls" => Property::ServerFile,
        "lo_import" | "lo_export" => Property::LargeObjectFile,
        "pg_cancel_backend"
        | "pg_terminate_backend"
        | "pg_reload_conf"
        | "pg_rotate_logfile"
        | "pg_log_backend_memory_contexts"
        | "pg_promote"
        | "pg_signal_backend" => Property::SignalBackend,
        "query_to_xml"
        | "query_to_xmlschema"
        | "query_to_xml_and_xmlschema"
        | "cursor_to_xml"
        | "cursor_to_xmlschema"
        | "table_to_xml"
        | "table_to_xmlschema"
        | "table_to_xml_and_xmlschema"
        | "schema_to_xml"
        | "schema_to_xmlschema"
        | "schema_to_xml_and_xmlschema"
        | "database_to_xml"
        | "database_to_xmlschema"
        | "database_to_xml_and_xmlschema"
        | "ts_stat" => Property::DynamicSql,
        n if n.starts_with("dblink") || n.starts_with("postgres_fdw_") => {
            Property::RemoteConnection
        }
        _ => return None,
    })
}

/// The property of changing setting `name` (lower case), if it is one a policy should see.
pub fn setting_property(name: &str) -> Option<Property> {
    match name {
        "role" | "session_authorization" => Some(Property::IdentityChange),
        "standard_conforming_strings" | "client_encoding" | "names" => Some(Property::LexerSetting),
        "session_replication_role"
        | "default_transaction_read_only"
        | "transaction_read_only"
        | "row_security"
        | "session characteristics"
        | "allow_system_table_mods"
        | "ignore_system_indexes"
        | "zero_damaged_pages" => Some(Property::ProtectedSetting),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_knows_builtins_and_not_side_effects() {
        for f in [
            "lower",
            "count",
            "format",
            "now",
            "coalesce_is_not_a_function_but",
        ] {
            let _ = known_safe(None, f);
        }
        assert!(known_safe(None, "lower"));
        assert!(known_safe(Some("pg_catalog"), "count"));
        assert!(known_safe(None, "format"));
        assert!(!known_safe(Some("evil"), "lower"));
        for f in [
            "pg_read_file",
            "nextval",
            "setval",
            "set_config",
            "pg_sleep",
            "pg_notify",
            "query_to_xml",
            "table_to_xml",
            "pg_cancel_backend",
            "lo_import",
            "dblink_exec",
            "pg_logical_emit_message",
        ] {
            assert!(!known_safe(None, f), "{f} must not be known safe");
        }
        assert_eq!(property("pg_read_file"), Some(Property::ServerFile));
        assert_eq!(property("dblink_exec"), Some(Property::RemoteConnection));
        assert_eq!(property("lower"), None);
    }
}
