//! The statements the scenarios send, as data: the leaks and escapes of the issue with
//! what each refusal must say, and reads whose results must match a direct connection.

use crate::{HELD, MASKED, REFUSED};

/// The leaks and escapes of the issue: statement, how the refusal's message starts, and
/// what its message, detail and hint must name between them.
pub const LEAKS: &[(&str, &str, &[&str])] = &[
    (
        "SELECT translate(ssn, '0123456789', 'abcdefghij') FROM accounts",
        MASKED,
        &["ssn is masked", "rule \"ssn\"", "accounts.ssn", "function"],
    ),
    (
        "SELECT encode(convert_to(ssn, 'UTF8'), 'hex') FROM accounts",
        MASKED,
        &["rule \"ssn\"", "accounts.ssn"],
    ),
    (
        "SELECT reverse(ssn) FROM accounts",
        MASKED,
        &["rule \"ssn\"", "accounts.ssn"],
    ),
    (
        "SELECT split_part(ssn, '-', 1) FROM accounts",
        MASKED,
        &["rule \"ssn\"", "accounts.ssn"],
    ),
    (
        "SELECT substr(card_number, 1, 8) FROM accounts",
        MASKED,
        &[
            "card_number is masked",
            "rule \"card\"",
            "accounts.card_number",
        ],
    ),
    (
        "SELECT id FROM accounts WHERE ssn LIKE '485-58%'",
        MASKED,
        &[
            "rule \"ssn\"",
            "matches it against a pattern",
            "\"pattern\"",
        ],
    ),
    (
        "SELECT ssn::text FROM accounts",
        MASKED,
        &["rule \"ssn\"", "cast"],
    ),
    (
        "SELECT id FROM accounts ORDER BY ssn",
        MASKED,
        &["rule \"ssn\"", "sorts by it"],
    ),
    (
        "CREATE TABLE exf AS SELECT ssn AS a, card_number AS b FROM accounts",
        MASKED,
        &["rule \"ssn\"", "stores what it reads"],
    ),
    (
        "INSERT INTO transactions (id, account_id, amount, booked_at, memo) \
         SELECT id + 100000, id, 0, now(), ssn FROM accounts",
        MASKED,
        &["rule \"ssn\"", "stores what it reads"],
    ),
    (
        "UPDATE accounts SET full_name = ssn WHERE id = 1",
        MASKED,
        &["rule \"ssn\"", "stores what it reads"],
    ),
    // A rename hides the name, not the column: `s` stands for accounts.ssn.
    (
        "WITH x AS (SELECT ssn AS s FROM accounts) SELECT upper(s) FROM x",
        MASKED,
        &[
            "column s is masked",
            "rule \"ssn\"",
            "s stands for accounts.ssn",
        ],
    ),
    (
        "SELECT upper(s) FROM (SELECT ssn AS s FROM accounts) q",
        MASKED,
        &["rule \"ssn\"", "accounts.ssn"],
    ),
    (
        "SELECT pg_read_file('/etc/hostname')",
        "portcullis refused this statement: server-file functions",
        &["server_file is denied to every agent", "built-in denial"],
    ),
    (
        "COPY accounts TO PROGRAM 'cat'",
        "portcullis refused this statement: COPY to or from a program",
        &["copy_program"],
    ),
    (
        "DROP TABLE transactions",
        HELD,
        &["DROP TABLE transactions", "class ddl; drop"],
    ),
    (
        "DELETE FROM transactions",
        HELD,
        &["DELETE FROM transactions", "no_where, unbounded"],
    ),
    ("TRUNCATE transactions", HELD, &["truncate"]),
    (
        "UPDATE transactions SET memo = 'gone' WHERE true",
        HELD,
        &["unbounded"],
    ),
    (
        "SET ROLE postgres",
        "portcullis refused this statement: SET ROLE and SET SESSION AUTHORIZATION",
        &["identity_change"],
    ),
    (
        "DO $$ BEGIN DELETE FROM transactions; END $$",
        "portcullis refused this statement: no policy rule allows DO (unknown statements)",
        &["for agent", "opaque"],
    ),
    (
        "SELECT portcullis_no_such_function(1)",
        "portcullis refused this statement: no policy rule allows SELECT (unknown statements)",
        &["for agent", "opaque"],
    ),
    (
        "SELECT portcullis_no_such_function(ssn) FROM accounts",
        REFUSED,
        &[],
    ),
    (
        "EXECUTE never_prepared",
        "portcullis refused this statement: prepared statement \"never_prepared\" is not known",
        &["PREPARE"],
    ),
    // Preparing a refused statement is refused…
    (
        "PREPARE leak AS SELECT reverse(ssn) FROM accounts",
        MASKED,
        &["rule \"ssn\""],
    ),
    (
        "PREPARE wipe AS DELETE FROM transactions",
        HELD,
        &["PREPARE DELETE"],
    ),
    // …so its name stays unknown.
    (
        "EXECUTE leak",
        "portcullis refused this statement: prepared statement \"leak\"",
        &[],
    ),
    (
        "EXECUTE wipe",
        "portcullis refused this statement: prepared statement \"wipe\"",
        &[],
    ),
];

/// Reads without masked values in their results: the same rows as directly.
pub const SAME_AS_DIRECT: &[&str] = &[
    "SELECT count(*) FROM accounts",
    "SELECT account_id, count(*), sum(amount) FROM transactions \
     GROUP BY account_id ORDER BY account_id",
    "SELECT a.id, a.full_name, count(t.id), coalesce(sum(t.amount), 0) FROM accounts a \
     LEFT JOIN transactions t ON t.account_id = a.id GROUP BY a.id, a.full_name \
     HAVING count(t.id) > 0 ORDER BY 4 DESC, a.id LIMIT 10",
    "SELECT id, sum(amount) OVER (PARTITION BY account_id ORDER BY id) FROM transactions \
     ORDER BY id LIMIT 20",
    "SELECT count(DISTINCT ssn), count(ssn) FROM accounts",
    "SELECT a.id FROM accounts a JOIN accounts b ON a.ssn = b.ssn ORDER BY a.id LIMIT 5",
    "SELECT count(*) FROM (SELECT ssn FROM accounts GROUP BY ssn) g",
    "SELECT id, balance FROM accounts \
     WHERE id IN (SELECT account_id FROM transactions WHERE amount > 100) ORDER BY id",
    "SELECT date_trunc('year', booked_at), count(*) FROM transactions GROUP BY 1 ORDER BY 1",
    "EXPLAIN (COSTS off) SELECT * FROM accounts WHERE id = 1",
    "SHOW search_path",
];
