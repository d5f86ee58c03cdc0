//! A cache from table OID to `(schema, table, attnum -> column name)`, so `column`
//! rules can follow a `RowDescription`'s table OID and attribute number back to the
//! source column whatever alias the query used.
//!
//! The cache is filled over the upstream connection by the session core:
//!
//! ```text
//! Err(MaskError::NeedCatalog { oids }) = policy.plan(..)
//! let mut fill = catalog.start_fill(&oids);
//! run fill.sql() as a simple Query (text results); for each DataRow: fill.ingest_data_row(frame)?
//! catalog.complete(fill);
//! policy.plan(..) again
//! ```
//!
//! OIDs the query did not return are not kept in the shared cache: a table the
//! gateway's connection cannot see may be one a session created in its open
//! transaction, visible to everyone after its `COMMIT`. The session keeps such misses
//! for the statement at hand ([`Catalog::mark_missing`]), so the retry resolves instead
//! of asking again and a rule that may apply to such a column fails closed.
//!
//! What a session's own transaction created or changed is visible only on its own
//! connection: the session looks those tables up there, by the names its statement uses
//! ([`CatalogFill::named`]), into a catalog of its own that sits over the shared one
//! ([`Layered`]) until the transaction ends.
//!
//! Call [`Catalog::invalidate`] after DDL (`ALTER`, `DROP`, `CREATE` command tags) seen
//! through the gateway, and again when the transaction that ran it ends. DDL that does
//! not pass through it (a migration run directly) cannot be seen, so entries also expire
//! after [`Catalog::ttl`] and are fetched again: a rename is noticed within that time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::MaskError;
use super::binary::{TypeFill, TypeKind, TypeKinds};
use super::wire::data_row_fields;

/// One table's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableInfo {
    pub schema: String,
    pub table: String,
    /// Sorted by attnum (system columns have negative numbers).
    columns: Vec<(i16, String)>,
    /// A view or materialized view: its columns are computed from other relations, so
    /// a value's real source is not known from the name alone.
    pub derived: bool,
}

impl TableInfo {
    pub fn column(&self, attnum: i16) -> Option<&str> {
        self.columns
            .binary_search_by_key(&attnum, |(n, _)| *n)
            .ok()
            .map(|i| self.columns[i].1.as_str())
    }

    fn insert(&mut self, attnum: i16, name: String) {
        match self.columns.binary_search_by_key(&attnum, |(n, _)| *n) {
            Ok(i) => self.columns[i].1 = name,
            Err(i) => self.columns.insert(i, (attnum, name)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Known(TableInfo),
    /// Asked for and not found: the table was dropped or is not visible.
    Missing,
}

/// What the catalog says about one `(table_oid, attnum)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Never fetched: the plan must ask for it.
    Unknown,
    /// Fetched, but the table or the column does not exist (anymore).
    Unresolvable,
    Column {
        schema: &'a str,
        table: &'a str,
        column: &'a str,
    },
}

/// Table names and type layouts as a plan reads them: [`Catalog`] itself, or a
/// session's [`Layered`] view.
pub trait TableNames: TypeKinds {
    /// Every fetched type kind, for a plan that walks binary values row by row.
    fn known_types(&self) -> HashMap<u32, TypeKind>;
    /// Whether this OID has been fetched (found or not) and has not expired.
    fn contains(&self, table_oid: u32) -> bool;
    fn lookup(&self, table_oid: u32, attnum: i16) -> Lookup<'_>;
    /// Whether this OID is known to be a view or materialized view.
    fn is_derived(&self, table_oid: u32) -> bool;
}

/// A session's view: its own entries (tables of its open transaction, misses of the
/// statement at hand) before the gateway's shared cache.
#[derive(Debug, Clone, Copy)]
pub struct Layered<'a> {
    pub session: &'a Catalog,
    pub shared: &'a Catalog,
}

impl Layered<'_> {
    fn pick(&self, table_oid: u32) -> &Catalog {
        if self.session.contains(table_oid) {
            self.session
        } else {
            self.shared
        }
    }
}

impl TypeKinds for Layered<'_> {
    fn type_kind(&self, oid: u32) -> Option<TypeKind> {
        self.session
            .type_kind(oid)
            .or_else(|| self.shared.type_kind(oid))
    }
}

impl TypeKinds for Catalog {
    fn type_kind(&self, oid: u32) -> Option<TypeKind> {
        super::binary::builtin(oid).or_else(|| {
            self.types
                .get(&oid)
                .filter(|(_, at)| at.elapsed() < self.ttl)
                .map(|(k, _)| *k)
        })
    }
}

impl TableNames for Layered<'_> {
    fn known_types(&self) -> HashMap<u32, TypeKind> {
        let mut all = self.shared.known_types();
        all.extend(self.session.known_types());
        all
    }

    fn contains(&self, table_oid: u32) -> bool {
        self.pick(table_oid).contains(table_oid)
    }

    fn lookup(&self, table_oid: u32, attnum: i16) -> Lookup<'_> {
        self.pick(table_oid).lookup(table_oid, attnum)
    }

    fn is_derived(&self, table_oid: u32) -> bool {
        self.pick(table_oid).is_derived(table_oid)
    }
}

impl TableNames for Catalog {
    fn known_types(&self) -> HashMap<u32, TypeKind> {
        self.types
            .iter()
            .filter(|(_, (_, at))| at.elapsed() < self.ttl)
            .map(|(oid, (k, _))| (*oid, *k))
            .collect()
    }

    fn contains(&self, table_oid: u32) -> bool {
        Catalog::contains(self, table_oid)
    }

    fn lookup(&self, table_oid: u32, attnum: i16) -> Lookup<'_> {
        Catalog::lookup(self, table_oid, attnum)
    }

    fn is_derived(&self, table_oid: u32) -> bool {
        Catalog::is_derived(self, table_oid)
    }
}

/// The table-name cache. Cheap to clone per session if wanted; one per upstream
/// database is the intended use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    tables: HashMap<u32, (Entry, Instant)>,
    /// How binary values of user and other non-fixed types hold text.
    types: HashMap<u32, (TypeKind, Instant)>,
    ttl: Duration,
}

/// How long a fetched table's names are trusted without seeing DDL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            tables: HashMap::new(),
            types: HashMap::new(),
            ttl: DEFAULT_TTL,
        }
    }
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A catalog whose entries expire after `ttl`.
    pub fn with_ttl(ttl: Duration) -> Self {
        Catalog {
            tables: HashMap::new(),
            types: HashMap::new(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Changes how long entries are trusted (a reload's `[mask] catalog_ttl_secs`).
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl = ttl;
    }

    fn entry(&self, table_oid: u32) -> Option<&Entry> {
        self.tables
            .get(&table_oid)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(e, _)| e)
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Whether this OID has been fetched (found or not) and has not expired.
    pub fn contains(&self, table_oid: u32) -> bool {
        self.entry(table_oid).is_some()
    }

    pub fn lookup(&self, table_oid: u32, attnum: i16) -> Lookup<'_> {
        match self.entry(table_oid) {
            None => Lookup::Unknown,
            Some(Entry::Missing) => Lookup::Unresolvable,
            Some(Entry::Known(t)) => match t.column(attnum) {
                Some(column) => Lookup::Column {
                    schema: &t.schema,
                    table: &t.table,
                    column,
                },
                None => Lookup::Unresolvable,
            },
        }
    }

    /// Inserts one column directly (tests, or a gateway that learns names elsewhere).
    pub fn insert_column(
        &mut self,
        table_oid: u32,
        schema: &str,
        table: &str,
        attnum: i16,
        column: &str,
    ) {
        let (entry, at) = self
            .tables
            .entry(table_oid)
            .or_insert((Entry::Missing, Instant::now()));
        *at = Instant::now();
        if let Entry::Missing = entry {
            *entry = Entry::Known(TableInfo {
                schema: schema.to_owned(),
                table: table.to_owned(),
                columns: Vec::new(),
                derived: false,
            });
        }
        if let Entry::Known(t) = entry {
            t.schema = schema.to_owned();
            t.table = table.to_owned();
            t.insert(attnum, column.to_owned());
        }
    }

    /// Whether this OID is known to be a view or materialized view.
    pub fn is_derived(&self, table_oid: u32) -> bool {
        matches!(self.entry(table_oid), Some(Entry::Known(t)) if t.derived)
    }

    /// Marks a known table as a view (tests, or a gateway that learns kinds elsewhere).
    pub fn set_derived(&mut self, table_oid: u32, derived: bool) {
        if let Some((Entry::Known(t), _)) = self.tables.get_mut(&table_oid) {
            t.derived = derived;
        }
    }

    /// Forgets everything.
    pub fn invalidate(&mut self) {
        self.tables.clear();
        self.types.clear();
    }

    /// Applies a finished type fetch; returns the requested OIDs that came back empty.
    pub fn complete_types(&mut self, fill: TypeFill) -> Vec<u32> {
        let requested = fill.oids().to_vec();
        let found = fill.into_found();
        let now = Instant::now();
        let missing = requested
            .into_iter()
            .filter(|oid| !found.contains_key(oid))
            .collect();
        for (oid, kind) in found {
            self.types.insert(oid, (kind, now));
        }
        missing
    }

    /// Remembers types as unreadable (a session's misses: a binary value of one is refused).
    pub fn mark_types_unreadable(&mut self, oids: &[u32]) {
        let now = Instant::now();
        for &oid in oids {
            self.types.insert(oid, (TypeKind::Unsupported, now));
        }
    }

    /// Remembers these OIDs as not found (a session's misses; see the module docs).
    pub fn mark_missing(&mut self, oids: &[u32]) {
        let now = Instant::now();
        for &oid in oids {
            self.tables.insert(oid, (Entry::Missing, now));
        }
    }

    /// Forgets the OIDs remembered as not found.
    pub fn forget_missing(&mut self) {
        self.tables.retain(|_, (e, _)| !matches!(e, Entry::Missing));
        self.types.retain(|_, (k, _)| *k != TypeKind::Unsupported);
    }

    /// Forgets one table.
    pub fn invalidate_oid(&mut self, table_oid: u32) {
        self.tables.remove(&table_oid);
    }

    /// Starts fetching these OIDs; nothing changes until [`Catalog::complete`].
    pub fn start_fill(&self, oids: &[u32]) -> CatalogFill {
        let mut requested = oids.to_vec();
        requested.sort_unstable();
        requested.dedup();
        CatalogFill {
            asked: Asked::Oids(requested),
            tables: HashMap::new(),
        }
    }

    /// Applies a finished fill: returned tables replace their old entries. Returns the
    /// requested OIDs that came back empty, which are not stored (see the module docs).
    pub fn complete(&mut self, fill: CatalogFill) -> Vec<u32> {
        let missing = fill
            .oids()
            .iter()
            .copied()
            .filter(|oid| !fill.tables.contains_key(oid))
            .collect();
        let now = Instant::now();
        let tables = fill.tables;
        for (oid, t) in tables {
            self.tables.insert(oid, (Entry::Known(t), now));
        }
        missing
    }
}

/// Most relations one by-name lookup asks for; a statement naming more is looked up by
/// its first ones (the rest fall back to the shared cache, and fail closed there).
const MAX_NAMED: usize = 64;

/// `name` quoted as an identifier inside an `E''` literal, which reads the same whatever
/// the session's `standard_conforming_strings`.
fn quoted_identifier_literal(out: &mut String, name: &str) {
    out.push('"');
    for ch in name.chars() {
        match ch {
            '"' => out.push_str("\"\""),
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("''"),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// An in-progress catalog fetch for a set of OIDs, or for relations by name.
#[derive(Debug, Clone)]
pub struct CatalogFill {
    asked: Asked,
    tables: HashMap<u32, TableInfo>,
}

/// What a fill asks for.
#[derive(Debug, Clone)]
enum Asked {
    /// These OIDs, sorted: a row for any other is an error.
    Oids(Vec<u32>),
    /// Relations by name: `to_regclass` calls, comma-separated. Any OID may come back.
    Names(String),
}

impl CatalogFill {
    /// A lookup of relations by the names a statement uses (`(schema, name)` as the
    /// parser read them), resolved as the session resolves them: run it on the
    /// session's own connection, where its open transaction's tables are visible. Names
    /// that resolve to nothing return no rows; the query never fails on them.
    pub fn named<'a>(relations: impl IntoIterator<Item = (Option<&'a str>, &'a str)>) -> Self {
        let mut list = String::new();
        for (i, (schema, name)) in relations.into_iter().take(MAX_NAMED).enumerate() {
            if i > 0 {
                list.push(',');
            }
            list.push_str("pg_catalog.to_regclass(E'");
            if let Some(schema) = schema {
                quoted_identifier_literal(&mut list, schema);
                list.push('.');
            }
            quoted_identifier_literal(&mut list, name);
            list.push_str("')::pg_catalog.oid");
        }
        CatalogFill {
            asked: Asked::Names(list),
            tables: HashMap::new(),
        }
    }

    /// The OIDs being fetched, sorted (none for a lookup by name).
    pub fn oids(&self) -> &[u32] {
        match &self.asked {
            Asked::Oids(oids) => oids,
            Asked::Names(_) => &[],
        }
    }

    /// The query to run (simple Query protocol, text results). Columns: table OID,
    /// schema, table, attnum, column name, relation kind. System columns are included
    /// so `ctid` and friends resolve; dropped columns are not. The OID list is formatted
    /// from integers; names go in as quoted identifiers inside `E''` literals, so nothing
    /// from a client is read as SQL.
    pub fn sql(&self) -> String {
        let set = match &self.asked {
            Asked::Oids(oids) => {
                let list = oids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                format!("'{{{list}}}'")
            }
            Asked::Names(calls) => format!("ARRAY[{calls}]"),
        };
        format!(
            "SELECT c.oid, n.nspname, c.relname, a.attnum, a.attname, c.relkind \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid \
             WHERE c.oid = ANY ({set}::pg_catalog.oid[]) AND NOT a.attisdropped"
        )
    }

    /// Adds one result row given as text fields: the five of [`CatalogFill::sql`] with
    /// or without the relation kind after them.
    pub fn ingest_row(&mut self, fields: &[Option<&[u8]>]) -> Result<(), MaskError> {
        const WHAT: &str = "catalog row";
        let (names, relkind) = match fields {
            [names @ .., Some(kind)] if fields.len() == 6 => (names, Some(*kind)),
            _ => (fields, None),
        };
        let [
            Some(oid),
            Some(schema),
            Some(table),
            Some(attnum),
            Some(column),
        ] = names
        else {
            return Err(MaskError::malformed(WHAT, "expected 5 non-null fields"));
        };
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| MaskError::malformed(WHAT, "name is not UTF-8"))
        };
        let oid: u32 = std::str::from_utf8(oid)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| MaskError::malformed(WHAT, "bad table OID"))?;
        let attnum: i16 = std::str::from_utf8(attnum)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| MaskError::malformed(WHAT, "bad attnum"))?;
        if let Asked::Oids(asked) = &self.asked
            && asked.binary_search(&oid).is_err()
        {
            return Err(MaskError::malformed(
                WHAT,
                "row for an OID that was not asked for",
            ));
        }
        let t = self.tables.entry(oid).or_insert_with(|| TableInfo {
            schema: String::new(),
            table: String::new(),
            columns: Vec::new(),
            derived: false,
        });
        // 'v' view, 'm' materialized view.
        t.derived = matches!(relkind, Some(b"v" | b"m"));
        t.schema = text(schema)?;
        t.table = text(table)?;
        t.insert(attnum, text(column)?);
        Ok(())
    }

    /// Adds one whole `DataRow` frame of the [`CatalogFill::sql`] result.
    pub fn ingest_data_row(&mut self, frame: &[u8]) -> Result<(), MaskError> {
        const WHAT: &str = "catalog DataRow";
        match frame.get(5..7) {
            Some(&[0, 6]) => self.ingest_row(&data_row_fields::<6>(frame, WHAT)?),
            _ => self.ingest_row(&data_row_fields::<5>(frame, WHAT)?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(fields: &[&[u8]]) -> Vec<u8> {
        let mut body = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            body.extend_from_slice(&(f.len() as i32).to_be_bytes());
            body.extend_from_slice(f);
        }
        let mut frame = vec![b'D'];
        frame.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    #[test]
    fn fill_resolves_and_marks_missing() {
        let mut cat = Catalog::new();
        let mut fill = cat.start_fill(&[16390, 16384, 16384]);
        assert_eq!(fill.oids(), &[16384, 16390]);
        assert!(fill.sql().contains("'{16384,16390}'::pg_catalog.oid[]"));
        fill.ingest_data_row(&data_row(&[b"16384", b"public", b"accounts", b"3", b"ssn"]))
            .unwrap();
        fill.ingest_data_row(&data_row(&[
            b"16384",
            b"public",
            b"accounts",
            b"-1",
            b"ctid",
        ]))
        .unwrap();
        assert!(cat.is_empty(), "nothing changes before complete");
        assert_eq!(
            cat.complete(fill),
            vec![16390],
            "the miss is returned, not kept"
        );
        assert_eq!(
            cat.lookup(16384, 3),
            Lookup::Column {
                schema: "public",
                table: "accounts",
                column: "ssn"
            }
        );
        assert!(matches!(
            cat.lookup(16384, -1),
            Lookup::Column { column: "ctid", .. }
        ));
        assert_eq!(cat.lookup(16384, 9), Lookup::Unresolvable);
        assert_eq!(cat.lookup(16390, 1), Lookup::Unknown);
        assert_eq!(cat.lookup(1, 1), Lookup::Unknown);

        // A session keeps its misses over the shared cache, for one statement.
        let mut session = Catalog::new();
        session.mark_missing(&[16390]);
        let view = Layered {
            session: &session,
            shared: &cat,
        };
        assert_eq!(view.lookup(16390, 1), Lookup::Unresolvable);
        assert!(matches!(
            view.lookup(16384, 3),
            Lookup::Column { column: "ssn", .. }
        ));
        session.forget_missing();
        assert!(session.is_empty());
        cat.invalidate_oid(16384);
        assert_eq!(cat.lookup(16384, 3), Lookup::Unknown);
        cat.invalidate();
        assert!(cat.is_empty());
    }

    #[test]
    fn entries_expire_so_unseen_ddl_is_noticed() {
        // Relation kind in the sixth column: a view's columns count as computed.
        let row = data_row(&[b"16384", b"public", b"v", b"1", b"x", b"v"]);
        let mut fresh = Catalog::new();
        let mut fill = fresh.start_fill(&[16384]);
        fill.ingest_data_row(&row).unwrap();
        fresh.complete(fill);
        assert!(fresh.contains(16384) && fresh.is_derived(16384));

        let mut stale = Catalog::with_ttl(Duration::ZERO);
        let mut fill = stale.start_fill(&[16384]);
        fill.ingest_data_row(&row).unwrap();
        stale.complete(fill);
        assert!(!stale.contains(16384), "expired: the plan asks again");
        assert_eq!(stale.lookup(16384, 1), Lookup::Unknown);
        assert!(!stale.is_derived(16384));
    }

    #[test]
    fn a_lookup_by_name_quotes_every_name_and_takes_any_oid() {
        let fill = CatalogFill::named([(Some("public"), "t"), (None, "Odd\"na'me\\")]);
        let sql = fill.sql();
        assert!(
            sql.contains(r#"pg_catalog.to_regclass(E'"public"."t"')::pg_catalog.oid"#),
            "{sql}"
        );
        assert!(sql.contains(r#"to_regclass(E'"Odd""na''me\\"')"#), "{sql}");
        let mut fill = fill;
        fill.ingest_data_row(&data_row(&[b"99999", b"public", b"t", b"1", b"ssn", b"r"]))
            .unwrap();
        let mut own = Catalog::new();
        assert!(own.complete(fill).is_empty());
        assert!(matches!(
            own.lookup(99999, 1),
            Lookup::Column { column: "ssn", .. }
        ));
    }

    #[test]
    fn fill_rejects_bad_rows() {
        let cat = Catalog::new();
        let mut fill = cat.start_fill(&[1]);
        assert!(
            fill.ingest_data_row(&data_row(&[b"2", b"s", b"t", b"1", b"c"]))
                .is_err()
        );
        assert!(
            fill.ingest_data_row(&data_row(&[b"x", b"s", b"t", b"1", b"c"]))
                .is_err()
        );
        assert!(
            fill.ingest_data_row(&data_row(&[b"1", b"s", b"t", b"1"]))
                .is_err()
        );
        let good = data_row(&[b"1", b"s", b"t", b"1", b"c"]);
        for cut in 0..good.len() {
            assert!(fill.ingest_data_row(&good[..cut]).is_err());
        }
    }
}
