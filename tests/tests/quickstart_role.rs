//! The quickstart's upstream roles (`create_gateway_role`): the server shows the login
//! holds nothing of its own and the two agent roles only the grants the sample schema
//! needs, and a gateway logged in as it with the quickstart's roles and policies runs the
//! agent as the writer and the auditor as the reader, serves ordinary reads and writes,
//! and refuses what reaches outside the database before it runs.

mod common;

use common::{Env, psql_at, run_timed, stderr, stdout};
use portcullis_tests::dataset::account;
use portcullis_tests::{
    Engine, GATEWAY_READ_ROLE, GATEWAY_ROLE, GATEWAY_WRITE_ROLE, Gateway, GatewayOptions,
    PgCluster, PgOptions, QUICKSTART_MASK_POLICY, QUICKSTART_ROLES, QUICKSTART_STATEMENT_POLICY,
    create_gateway_role, load_financial, ssn_valid,
};

/// The quickstart's database name, so the grants are checked where it makes them.
const DB: &str = "bank";
const ROWS: u64 = 40;
const SEED: u64 = 11;

/// A cluster with the dataset and the role; returns `(cluster, user, password)`.
fn cluster() -> (PgCluster, String, String) {
    let pg = PgCluster::start(PgOptions::default()).expect("start PostgreSQL");
    load_financial(&pg, DB, ROWS, SEED).expect("load the financial dataset");
    let (user, password) = create_gateway_role(&pg, DB).expect("create the gateway role");
    (pg, user, password)
}

/// `psql` as the role itself, straight to the server (no gateway).
fn role_uri(pg: &PgCluster, user: &str, password: &str, db: &str) -> String {
    format!(
        "postgresql://{user}:{password}@{}:{}/{db}?sslmode=disable",
        pg.host, pg.port
    )
}

/// Runs `sql` through `uri` and returns stderr, failing unless psql reports an error.
fn refused(uri: &str, sql: &str) -> String {
    let out = run_timed(psql_at(uri).args(["-At", "-c", sql]));
    assert!(
        !out.status.success(),
        "{sql} succeeded: {}",
        stdout(&out).trim()
    );
    stderr(&out)
}

#[test]
fn role_holds_only_the_sample_grants() {
    let (pg, user, password) = cluster();
    assert_eq!(user, GATEWAY_ROLE);
    let q = |sql: &str| pg.psql(DB, sql).expect(sql).trim().to_owned();

    // Attributes: a login that inherits nothing, its password stored as a SCRAM verifier.
    assert_eq!(
        q(&format!(
            "SELECT rolcanlogin, rolinherit, rolsuper, rolcreatedb, rolcreaterole, \
                    rolreplication, rolbypassrls, rolpassword LIKE 'SCRAM-SHA-256$%' \
             FROM pg_authid WHERE rolname = '{user}'"
        )),
        "t|f|f|f|f|f|f|t"
    );
    // Member of the two agent roles and nothing else, which are members of nothing: none
    // of the predefined roles that reach the host.
    assert_eq!(
        q(&format!(
            "SELECT string_agg(g.rolname, ',' ORDER BY g.rolname) FROM pg_auth_members m \
             JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid \
             WHERE r.rolname = '{user}'"
        )),
        format!("{GATEWAY_READ_ROLE},{GATEWAY_WRITE_ROLE}")
    );
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member \
             WHERE r.rolname IN ('{GATEWAY_READ_ROLE}', '{GATEWAY_WRITE_ROLE}')"
        )),
        "0"
    );
    for predefined in [
        "pg_read_server_files",
        "pg_write_server_files",
        "pg_execute_server_program",
        "pg_signal_backend",
        "pg_read_all_data",
        "pg_write_all_data",
    ] {
        assert_eq!(
            q(&format!(
                "SELECT pg_has_role('{user}', '{predefined}', 'USAGE')"
            )),
            "f",
            "{predefined}"
        );
    }
    // Databases: CONNECT on the sample one only (PUBLIC's CONNECT and TEMPORARY revoked;
    // template0 takes no connections whatever its ACL says).
    assert_eq!(
        q(&format!(
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database \
             WHERE datallowconn AND has_database_privilege('{user}', oid, 'CONNECT')"
        )),
        DB
    );
    assert_eq!(
        q(&format!(
            "SELECT count(*) FROM pg_database \
             WHERE has_database_privilege('{user}', oid, 'CREATE') \
                OR has_database_privilege('{user}', oid, 'TEMPORARY')"
        )),
        "0"
    );
    // Schema public: USAGE, and PostgreSQL 15 no longer grants CREATE there to PUBLIC.
    assert_eq!(
        q(&format!(
            "SELECT has_schema_privilege('{user}', 'public', 'USAGE'), \
                    has_schema_privilege('{user}', 'public', 'CREATE')"
        )),
        "t|f"
    );
    // Tables: none for the login; reads for the reader, row access for the writer, to the
    // two sample tables only: not TRUNCATE, REFERENCES, TRIGGER, nor the marker table.
    let grants = |grantee: &str| {
        q(&format!(
            "SELECT coalesce(string_agg(t, E'\\n' ORDER BY t), '') FROM ( \
               SELECT table_name || ':' || string_agg(privilege_type, ',' ORDER BY privilege_type) t \
               FROM information_schema.table_privileges WHERE grantee = '{grantee}' \
               GROUP BY table_name) g"
        ))
    };
    assert_eq!(grants(&user), "");
    assert_eq!(
        grants(GATEWAY_READ_ROLE),
        "accounts:SELECT\ntransactions:SELECT"
    );
    assert_eq!(
        grants(GATEWAY_WRITE_ROLE),
        "accounts:DELETE,INSERT,SELECT,UPDATE\ntransactions:DELETE,INSERT,SELECT,UPDATE"
    );

    // The server agrees: straight to it as the role, the escapes fail on privileges.
    let uri = role_uri(&pg, &user, &password, DB);
    let err = refused(&uri, "SELECT pg_read_file('/etc/hostname')");
    assert!(
        err.contains("permission denied for function pg_read_file"),
        "{err}"
    );
    let err = refused(&uri, "COPY accounts TO PROGRAM 'cat'");
    assert!(err.contains("pg_execute_server_program"), "{err}");
    let err = refused(&uri, "CREATE TABLE public.scratch (a int)");
    assert!(err.contains("permission denied for schema public"), "{err}");
    let err = refused(&role_uri(&pg, &user, &password, "postgres"), "SELECT 1");
    assert!(err.contains("permission denied for database"), "{err}");
    // The login alone reads nothing; as the reader it reads and cannot write.
    let err = refused(&uri, "SELECT count(*) FROM accounts");
    assert!(
        err.contains("permission denied for table accounts"),
        "{err}"
    );
    let as_reader = |sql: &str| format!("SET ROLE {GATEWAY_READ_ROLE}; {sql}");
    assert_eq!(
        stdout(&run_timed(psql_at(&uri).args([
            "-At",
            "-c",
            &as_reader("SELECT count(*) FROM accounts")
        ])))
        .lines()
        .last(),
        Some(ROWS.to_string().as_str())
    );
    let err = refused(&uri, &as_reader("DELETE FROM transactions"));
    assert!(
        err.contains("permission denied for table transactions"),
        "{err}"
    );

    // A second call re-keys the same role instead of failing.
    let (_, again) = create_gateway_role(&pg, DB).expect("create the gateway role again");
    assert_ne!(again, password);
    assert_eq!(
        stdout(&run_timed(
            psql_at(&role_uri(&pg, &user, &again, DB)).args(["-At", "-c", "SELECT 1"])
        ))
        .trim(),
        "1"
    );
}

#[test]
fn gateway_on_the_role_serves_rows_and_refuses_escapes() {
    let (pg, user, password) = cluster();
    let gw = Gateway::start(
        GatewayOptions::new(&pg, DB)
            .engine(Engine::Auto)
            .upstream_login(&user, &password)
            .policy(QUICKSTART_STATEMENT_POLICY)
            .extra_toml(QUICKSTART_ROLES)
            .extra_toml(QUICKSTART_MASK_POLICY),
    )
    .expect("start the gateway");
    let env = Env { gw, pg };
    let uri = env.uri();
    // The first row (psql adds the command tag after a RETURNING list).
    let one = |sql: &str| env.rows(&uri, sql)[0].join("|");

    // The agent's upstream session runs as the writer, logged in as the login role, and
    // ordinary reads and writes work.
    assert_eq!(one("SELECT current_user"), GATEWAY_WRITE_ROLE);
    assert_eq!(one("SELECT session_user"), GATEWAY_ROLE);
    let auditor = env.gw.uri("auditor", "auditor-secret", DB);
    assert_eq!(
        env.rows(&auditor, "SELECT current_user")[0].join(""),
        GATEWAY_READ_ROLE
    );
    assert_eq!(one("SELECT count(*) FROM accounts"), ROWS.to_string());
    let ssn = one("SELECT ssn FROM accounts WHERE id = 1");
    assert_ne!(ssn, account(SEED, 1).ssn);
    assert!(!ssn_valid(&ssn), "the agent read a valid SSN: {ssn}");
    assert_eq!(
        one("INSERT INTO transactions VALUES (100000, 1, 9.99, now(), 'coffee') RETURNING id"),
        "100000"
    );
    assert_eq!(
        one("UPDATE transactions SET amount = 10.49 WHERE id = 100000 RETURNING amount::text"),
        "10.49"
    );
    assert_eq!(
        one("DELETE FROM transactions WHERE id = 100000 RETURNING id"),
        "100000"
    );

    // Refused by the gateway, not the server: its message, before anything ran.
    let err = refused(&uri, "SELECT pg_read_file('/etc/hostname')");
    assert!(
        err.contains("portcullis refused this statement: server-file functions"),
        "{err}"
    );
    let err = refused(&uri, "COPY accounts TO PROGRAM 'cat'");
    assert!(
        err.contains("portcullis refused this statement: COPY to or from a program"),
        "{err}"
    );
    // The quickstart's example of a held statement.
    let before = env
        .pg
        .psql(DB, "SELECT count(*) FROM transactions")
        .unwrap();
    let err = refused(&uri, "DELETE FROM transactions");
    assert!(err.contains("approval required"), "{err}");
    assert_eq!(
        env.pg
            .psql(DB, "SELECT count(*) FROM transactions")
            .unwrap(),
        before
    );
}
