//! The sample financial dataset: customer accounts full of the identifiers masking must
//! catch (SSNs, card numbers, ABA routing numbers, IBANs, e-mail addresses), some of them
//! hidden in free-text notes next to look-alikes that must *not* be caught (16-digit order
//! ids that fail Luhn). Rows are a pure function of `(seed, id)`, so any test can regenerate
//! the row it expects, and the validators here tell masked output from real identifiers.

use std::io::{BufWriter, Write};
use std::process::Stdio;

use rand::{Rng, RngCore};

use crate::pg::{PgCluster, PgError};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("COPY into {table}: {detail}")]
    Copy { table: &'static str, detail: String },
}

/// The schema; the primary key is added after loading because building it once is much
/// faster than maintaining it row by row.
const SCHEMA: &str = "
DROP TABLE IF EXISTS transactions, accounts, portcullis_dataset;
CREATE TABLE accounts (
    id bigint NOT NULL,
    full_name text NOT NULL,
    email text NOT NULL,
    ssn text NOT NULL,
    card_number text NOT NULL,
    routing_number text NOT NULL,
    iban text NOT NULL,
    balance numeric(14,2) NOT NULL,
    opened_at timestamptz NOT NULL,
    notes text NOT NULL
);
CREATE TABLE transactions (
    id bigint NOT NULL,
    account_id bigint NOT NULL,
    amount numeric(12,2) NOT NULL,
    booked_at timestamptz NOT NULL,
    memo text NOT NULL
);
";

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Radia",
    "Leslie",
    "Margaret",
    "John",
    "Shafi",
    "Tim",
    "Hedy",
    "Dennis",
    "Katherine",
    "Niklaus",
    "Sophie",
    "Yukihiro",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Perlman",
    "Lamport",
    "Hamilton",
    "McCarthy",
    "Goldwasser",
    "Berners-Lee",
    "Lamarr",
    "Ritchie",
    "Johnson",
    "Wirth",
    "Wilson",
    "Matsumoto",
];
const DOMAINS: &[&str] = &[
    "example.com",
    "example.org",
    "mail.example.net",
    "bank.example",
];
/// (country, total IBAN length, BBAN layout): `n` digit, `a` upper-case letter, `c` either.
const IBAN_FORMATS: &[(&str, usize, &str)] = &[
    ("DE", 22, "nnnnnnnnnnnnnnnnnn"),
    ("GB", 22, "aaaannnnnnnnnnnnnn"),
    ("FR", 27, "nnnnnnnnnncccccccccccnn"),
    ("NL", 18, "aaaannnnnnnnnn"),
    ("ES", 24, "nnnnnnnnnnnnnnnnnnnn"),
    ("BE", 16, "nnnnnnnnnnnn"),
    ("CH", 21, "nnnnncccccccccccc"),
    ("IT", 27, "annnnnnnnnncccccccccccc"),
];

/// One `accounts` row, already as the text PostgreSQL would print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub full_name: String,
    pub email: String,
    pub ssn: String,
    pub card_number: String,
    pub routing_number: String,
    pub iban: String,
    pub balance: String,
    pub opened_at: String,
    pub notes: String,
}

/// The row with this id for this seed; the same on every machine and every run.
pub fn account(seed: u64, id: i64) -> Account {
    let mut r = row_rng(seed, id, 0xacc0);
    let first = FIRST[r.gen_range(0..FIRST.len())];
    let last = LAST[r.gen_range(0..LAST.len())];
    let email = format!(
        "{}.{}{}@{}",
        first.to_lowercase(),
        last.to_lowercase(),
        r.gen_range(1..1000),
        DOMAINS[r.gen_range(0..DOMAINS.len())]
    );
    let ssn = gen_ssn(&mut r);
    let card_number = gen_card(&mut r);
    let routing_number = gen_routing(&mut r);
    let iban = gen_iban(&mut r);
    let balance = format!(
        "{}.{:02}",
        r.gen_range(0..5_000_000u64),
        r.gen_range(0..100)
    );
    let opened_at = format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        r.gen_range(2000..2026),
        r.gen_range(1..13),
        r.gen_range(1..29),
        r.gen_range(0..24),
        r.gen_range(0..60),
        r.gen_range(0..60)
    );
    let notes = gen_note(&mut r, first);
    Account {
        id,
        full_name: format!("{first} {last}"),
        email,
        ssn,
        card_number,
        routing_number,
        iban,
        balance,
        opened_at,
        notes,
    }
}

impl Account {
    /// The row as one line of `COPY … FROM STDIN` text format. No generated field holds a
    /// tab, newline or backslash, so nothing needs escaping.
    pub fn copy_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            self.id,
            self.full_name,
            self.email,
            self.ssn,
            self.card_number,
            self.routing_number,
            self.iban,
            self.balance,
            self.opened_at,
            self.notes
        )
    }
}

/// SplitMix64: tiny, fast even unoptimised, and fixed by this file rather than by a `rand`
/// release, so a seed means the same rows forever.
pub struct RowRng(u64);

impl RngCore for RowRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

fn row_rng(seed: u64, id: i64, table: u64) -> RowRng {
    // Mixing with distinct odd constants keeps (seed, id) pairs from colliding.
    let mixed = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add((id as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
        ^ table;
    RowRng(mixed)
}

fn gen_ssn(r: &mut RowRng) -> String {
    let area = loop {
        let a = r.gen_range(1..900);
        if a != 666 {
            break a;
        }
    };
    format!(
        "{area:03}-{:02}-{:04}",
        r.gen_range(1..100),
        r.gen_range(1..10000)
    )
}

fn luhn_check_digit(payload: &[u8]) -> u8 {
    // Doubling starts from the digit next to where the check digit will go.
    let sum: u32 = payload
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(*d);
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

/// The digits of a Luhn-valid card number with a real issuer prefix.
fn gen_card_digits(r: &mut RowRng) -> Vec<u8> {
    let (prefix, len): (&[u8], usize) = match r.gen_range(0..6) {
        0 | 1 => (&[4], 16),
        2 => (&[5, r.gen_range(1..6)], 16),
        3 => (&[3, 4], 15),
        4 => (&[3, 7], 15),
        _ => (&[6, 0, 1, 1], 16),
    };
    let mut d = prefix.to_vec();
    while d.len() < len - 1 {
        d.push(r.gen_range(0..10));
    }
    d.push(luhn_check_digit(&d));
    d
}

fn gen_card(r: &mut RowRng) -> String {
    let d = gen_card_digits(r);
    let s: String = d.iter().map(|x| char::from(b'0' + x)).collect();
    let groups: Vec<&str> = if d.len() == 15 {
        vec![&s[..4], &s[4..10], &s[10..]]
    } else {
        vec![&s[..4], &s[4..8], &s[8..12], &s[12..]]
    };
    match r.gen_range(0..4) {
        0 => groups.join(" "),
        1 => groups.join("-"),
        _ => s,
    }
}

/// 16 digits that look like a card but fail Luhn: the false positive masking must leave alone.
fn gen_order_id(r: &mut RowRng) -> String {
    let mut d: Vec<u8> = (0..15).map(|_| r.gen_range(0..10)).collect();
    d[0] = r.gen_range(1..10);
    let wrong = (luhn_check_digit(&d) + 1 + r.gen_range(0..9)) % 10;
    d.push(wrong);
    d.iter().map(|x| char::from(b'0' + x)).collect()
}

fn gen_routing(r: &mut RowRng) -> String {
    // The first two digits are a Federal Reserve routing symbol: 01-12, 21-32, 61-72 or 80.
    let lead: u8 = match r.gen_range(0..4) {
        0 => r.gen_range(1..13),
        1 => r.gen_range(21..33),
        2 => r.gen_range(61..73),
        _ => 80,
    };
    let mut d = vec![lead / 10, lead % 10];
    while d.len() < 8 {
        d.push(r.gen_range(0..10));
    }
    let w = [3u32, 7, 1, 3, 7, 1, 3, 7];
    let s: u32 = d.iter().zip(w).map(|(x, w)| u32::from(*x) * w).sum();
    d.push(((10 - s % 10) % 10) as u8);
    d.iter().map(|x| char::from(b'0' + x)).collect()
}

fn gen_iban(r: &mut RowRng) -> String {
    let (cc, _, layout) = IBAN_FORMATS[r.gen_range(0..IBAN_FORMATS.len())];
    let bban: String = layout
        .chars()
        .map(|k| match k {
            'n' => char::from(b'0' + r.gen_range(0..10u8)),
            'a' => char::from(b'A' + r.gen_range(0..26u8)),
            _ => {
                if r.gen_bool(0.5) {
                    char::from(b'0' + r.gen_range(0..10u8))
                } else {
                    char::from(b'A' + r.gen_range(0..26u8))
                }
            }
        })
        .collect();
    let check = 98 - iban_mod97(&format!("{bban}{cc}00"));
    format!("{cc}{check:02}{bban}")
}

fn gen_note(r: &mut RowRng, first: &str) -> String {
    match r.gen_range(0..10) {
        0 => format!("Card on file {} verified by phone", gen_card(r)),
        1 => format!("Identity check: SSN {} matched", gen_ssn(r)),
        2 => format!(
            "Prefers contact at {}.alt@{}",
            first.to_lowercase(),
            DOMAINS[r.gen_range(0..DOMAINS.len())]
        ),
        3 => format!("Outgoing wire to {} approved", gen_iban(r)),
        4 | 5 => format!("Order {} shipped, no action", gen_order_id(r)),
        6 => format!("Routing {} confirmed with branch", gen_routing(r)),
        _ => format!("{first} asked about overdraft fees; follow up next week"),
    }
}

/// A `transactions` row for this seed and id, as a COPY text line.
fn transaction_line(seed: u64, id: i64, accounts: i64) -> String {
    let mut r = row_rng(seed, id, 0x7a11);
    let memo = match r.gen_range(0..4) {
        0 => format!("Card purchase {}", gen_card(&mut r)),
        1 => format!("Order {}", gen_order_id(&mut r)),
        _ => "Monthly fee".to_string(),
    };
    format!(
        "{id}\t{}\t{}{}.{:02}\t2024-{:02}-{:02} 12:00:00+00\t{memo}\n",
        r.gen_range(1..=accounts),
        if r.gen_bool(0.3) { "-" } else { "" },
        r.gen_range(0..10_000),
        r.gen_range(0..100),
        r.gen_range(1..13),
        r.gen_range(1..29),
    )
}

/// Loads `rows` accounts (and `rows / 4 + 1` transactions) generated from `seed` into `db`,
/// creating it if needed. A marker row records what was loaded, so a second call with the
/// same arguments returns at once and a different one reloads from scratch.
pub fn load_financial(
    cluster: &PgCluster,
    db: &str,
    rows: u64,
    seed: u64,
) -> Result<(), DatasetError> {
    cluster.create_database(db)?;
    // Two steps because a query naming a missing table fails at parse time.
    let has_marker = cluster.psql(
        db,
        "SELECT to_regclass('portcullis_dataset') IS NOT NULL \
         AND to_regclass('accounts') IS NOT NULL",
    )?;
    if has_marker.trim() == "t" {
        let marker = cluster.psql(
            db,
            "SELECT rows || ':' || seed || ':' || (SELECT count(*) FROM accounts) \
             FROM portcullis_dataset",
        )?;
        if marker.trim() == format!("{rows}:{seed}:{rows}") {
            return Ok(());
        }
    }
    cluster.psql(db, SCHEMA)?;
    let n = rows as i64;
    copy_in(
        cluster,
        db,
        "accounts",
        (1..=n).map(|id| account(seed, id).copy_line()),
    )?;
    let tx = n / 4 + 1;
    copy_in(
        cluster,
        db,
        "transactions",
        (1..=tx).map(|id| transaction_line(seed, id, n.max(1))),
    )?;
    cluster.psql(
        db,
        &format!(
            "ALTER TABLE accounts ADD PRIMARY KEY (id);
             ALTER TABLE transactions ADD PRIMARY KEY (id);
             CREATE TABLE portcullis_dataset (rows bigint, seed bigint);
             INSERT INTO portcullis_dataset VALUES ({rows}, {seed});
             ANALYZE accounts; ANALYZE transactions;"
        ),
    )?;
    Ok(())
}

/// The login role a gateway in front of the sample dataset uses upstream when it should
/// hold no more than agents need (the quickstart's): it holds no privileges of its own
/// (NOINHERIT) and sessions `SET ROLE` to [`GATEWAY_READ_ROLE`] or [`GATEWAY_WRITE_ROLE`].
pub const GATEWAY_ROLE: &str = "portcullis_agent";
/// Reads the sample tables: the quickstart's auditor.
pub const GATEWAY_READ_ROLE: &str = "portcullis_read";
/// Reads and writes rows of the sample tables: the quickstart's agent.
pub const GATEWAY_WRITE_ROLE: &str = "portcullis_write";

/// The sample tables, the only relations the agent roles are granted.
const SAMPLE_TABLES: &str = "accounts, transactions";

/// Creates [`GATEWAY_ROLE`] for `db` (loaded with [`load_financial`]) and returns its
/// `(user, password)`: LOGIN NOINHERIT with a fresh generated password stored as a SCRAM
/// verifier, no attribute beyond that, CONNECT on `db`, no privilege on any relation,
/// and membership in the two agent roles: [`GATEWAY_READ_ROLE`] (SELECT on the sample
/// tables) and [`GATEWAY_WRITE_ROLE`] (row access to them and their sequences), both with
/// USAGE on `public`. PUBLIC's default CONNECT and TEMPORARY are revoked on every
/// database of the cluster (superusers, the harness's own upstream role among them, are
/// not affected). Roles that exist are reset, so a second call is fine.
///
/// The gateway's built-in denials keep agents off server files and programs whatever its
/// upstream role may do; these roles make the server refuse them too, should a
/// statement ever get past the gateway, and the read-only role refuses writes.
pub fn create_gateway_role(cluster: &PgCluster, db: &str) -> Result<(String, String), PgError> {
    let password: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    // Sent already hashed: the cleartext never reaches the server or its log.
    let verifier = crate::scram::verifier(&password);
    let role = GATEWAY_ROLE;
    let (read, write) = (GATEWAY_READ_ROLE, GATEWAY_WRITE_ROLE);
    let db_ident = format!("\"{}\"", db.replace('"', "\"\""));
    cluster.psql(
        "postgres",
        &format!(
            "DO $$ DECLARE r text; BEGIN
               FOREACH r IN ARRAY ARRAY['{role}', '{read}', '{write}'] LOOP
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
                   EXECUTE format('CREATE ROLE %I', r);
                 END IF;
               END LOOP;
             END $$;
             ALTER ROLE {role} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE
               NOREPLICATION NOBYPASSRLS PASSWORD '{verifier}';
             ALTER ROLE {read} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
             ALTER ROLE {write} NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
             GRANT {read}, {write} TO {role};
             -- PUBLIC may CONNECT to every database and create TEMPORARY tables in it by
             -- default: revoked everywhere, so the grant below is the role's only way in.
             DO $$ DECLARE d name; BEGIN
               FOR d IN SELECT datname FROM pg_database WHERE datallowconn LOOP
                 EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', d);
               END LOOP;
             END $$;
             GRANT CONNECT ON DATABASE {db_ident} TO {role};"
        ),
    )?;
    cluster.psql(
        db,
        &format!(
            // PostgreSQL 15 no longer lets PUBLIC create in `public`; USAGE is all it needs.
            "GRANT USAGE ON SCHEMA public TO {read}, {write};
             GRANT SELECT ON {SAMPLE_TABLES} TO {read};
             GRANT SELECT, INSERT, UPDATE, DELETE ON {SAMPLE_TABLES} TO {write};
             -- Sequences owned by the sample tables' columns (serial, identity), if any.
             DO $$ DECLARE s regclass; BEGIN
               FOR s IN SELECT d.objid::regclass FROM pg_depend d
                        JOIN pg_class c ON c.oid = d.objid AND c.relkind = 'S'
                        WHERE d.classid = 'pg_class'::regclass
                          AND d.refobjid = ANY ('{{{SAMPLE_TABLES}}}'::regclass[])
                          AND d.deptype IN ('a', 'i')
               LOOP
                 EXECUTE format('GRANT USAGE, SELECT ON SEQUENCE %s TO {write}', s);
               END LOOP;
             END $$;"
        ),
    )?;
    Ok((role.to_owned(), password))
}

fn copy_in(
    cluster: &PgCluster,
    db: &str,
    table: &'static str,
    lines: impl Iterator<Item = String>,
) -> Result<(), DatasetError> {
    let err = |detail: String| DatasetError::Copy { table, detail };
    let mut child = cluster
        .psql_command(db)
        .args(["-c", &format!("COPY {table} FROM STDIN")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    {
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut w = BufWriter::with_capacity(1 << 20, stdin);
        for line in lines {
            // A write error means psql died; its stderr below says why.
            if w.write_all(line.as_bytes()).is_err() {
                break;
            }
        }
        let _ = w.flush();
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(())
}

fn digits(s: &str) -> Option<Vec<u8>> {
    s.chars()
        .filter(|c| *c != ' ' && *c != '-')
        .map(|c| c.to_digit(10).map(|d| d as u8))
        .collect()
}

/// Whether `s` (digits, optionally grouped with spaces or dashes) passes the Luhn check and
/// has a card number's length (12 to 19 digits).
pub fn luhn_valid(s: &str) -> bool {
    match digits(s) {
        Some(d) if (12..=19).contains(&d.len()) => {
            luhn_check_digit(&d[..d.len() - 1]) == d[d.len() - 1]
        }
        _ => false,
    }
}

/// Whether `s` is a 9-digit ABA routing number with a valid 3-7-1 checksum.
pub fn aba_valid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 9 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let w = [3u32, 7, 1, 3, 7, 1, 3, 7, 1];
    let sum: u32 = b.iter().zip(w).map(|(c, w)| u32::from(c - b'0') * w).sum();
    sum.is_multiple_of(10)
}

/// Whether `s` is an SSN in `AAA-GG-SSSS` form that the SSA could have issued: area not
/// 000, 666 or 900-999, group not 00, serial not 0000.
pub fn ssn_valid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 11 || b[3] != b'-' || b[6] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    match (num(0..3), num(4..6), num(7..11)) {
        (Some(a), Some(g), Some(sr)) => a != 0 && a != 666 && a < 900 && g != 0 && sr != 0,
        _ => false,
    }
}

/// Whether `s` (spaces allowed) is an IBAN of a country this dataset uses, with that
/// country's length and a valid mod-97 check.
pub fn iban_valid(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| *c != ' ').collect();
    if compact.len() < 4 || !compact.is_ascii() {
        return false;
    }
    let Some(&(_, len, _)) = IBAN_FORMATS.iter().find(|f| compact.starts_with(f.0)) else {
        return false;
    };
    if compact.len() != len
        || !compact[2..4].bytes().all(|c| c.is_ascii_digit())
        || !compact
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return false;
    }
    let rearranged = format!("{}{}", &compact[4..], &compact[..4]);
    iban_mod97(&rearranged) == 1
}

/// The remainder mod 97 of an alphanumeric string with letters read as 10..35 (ISO 13616).
fn iban_mod97(s: &str) -> u32 {
    s.bytes().fold(0u32, |acc, c| {
        if c.is_ascii_digit() {
            (acc * 10 + u32::from(c - b'0')) % 97
        } else {
            (acc * 100 + u32::from(c - b'A' + 10)) % 97
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_accept_known_good() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("3782-822463-10005"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
        assert!(aba_valid("011000015"));
        assert!(!aba_valid("011000016"));
        assert!(iban_valid("GB82WEST12345698765432"));
        assert!(iban_valid("DE89 3704 0044 0532 0130 00"));
        assert!(!iban_valid("GB82WEST12345698765433"));
        assert!(ssn_valid("123-45-6789"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
        ] {
            assert!(!ssn_valid(bad), "{bad}");
        }
    }

    #[test]
    fn generated_rows_are_valid_and_deterministic() {
        for id in 1..2000 {
            let a = account(7, id);
            assert_eq!(a, account(7, id));
            assert!(ssn_valid(&a.ssn), "{a:?}");
            assert!(luhn_valid(&a.card_number), "{a:?}");
            assert!(aba_valid(&a.routing_number), "{a:?}");
            assert!(iban_valid(&a.iban), "{a:?}");
            assert!(!a.copy_line()[..a.copy_line().len() - 1].contains(['\n', '\\']));
        }
        assert_ne!(account(7, 1), account(8, 1));
    }

    #[test]
    fn iban_layouts_match_country_lengths() {
        for (cc, len, layout) in IBAN_FORMATS {
            assert_eq!(layout.len() + 4, *len, "{cc}");
        }
    }

    #[test]
    fn order_ids_fail_luhn() {
        let mut r = RowRng(1);
        for _ in 0..1000 {
            let o = gen_order_id(&mut r);
            assert_eq!(o.len(), 16);
            assert!(!luhn_valid(&o), "{o}");
        }
    }

    #[test]
    fn rows_are_about_200_bytes() {
        let total: usize = (1..=1000).map(|id| account(3, id).copy_line().len()).sum();
        let avg = total / 1000;
        assert!((150..=260).contains(&avg), "average row {avg} bytes");
    }
}
