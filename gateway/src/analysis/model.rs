//! What the analysis says about a statement: plain data, cheap to share and to match
//! rules against.

use serde::Deserialize;

/// What a statement does, as a policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Transaction control (`BEGIN`, `COMMIT`, savepoints, `PREPARE TRANSACTION`).
    Txn,
    /// Session settings and channels (`SET`, `SHOW`, `RESET`, `DISCARD`, `LISTEN`).
    Session,
    /// Cursor and prepared-statement housekeeping (`FETCH`, `CLOSE`, `DEALLOCATE`).
    Utility,
    /// Reads relations of this database, no side effect.
    Read,
    /// Changes rows (DML, row locks, `TRUNCATE`, large objects).
    Write,
    /// Changes the schema (`CREATE`, `ALTER`, `DROP`, `CREATE TABLE AS`, ...).
    Ddl,
    /// Privileges, roles, ownership, row security.
    Dcl,
    /// Server maintenance and configuration (`VACUUM`, `CHECKPOINT`, `ALTER SYSTEM`).
    Admin,
    /// Opaque: `DO`, `CALL`, a function not known to be free of side effects, a
    /// statement type the gateway has no reading of.
    Unknown,
}

impl Class {
    /// Every class, in declaration order.
    pub const ALL: [Class; 9] = [
        Class::Txn,
        Class::Session,
        Class::Utility,
        Class::Read,
        Class::Write,
        Class::Ddl,
        Class::Dcl,
        Class::Admin,
        Class::Unknown,
    ];
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Txn => "txn",
            Class::Session => "session",
            Class::Utility => "utility",
            Class::Read => "read",
            Class::Write => "write",
            Class::Ddl => "ddl",
            Class::Dcl => "dcl",
            Class::Admin => "admin",
            Class::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! properties {
    ($($(#[doc = $doc:literal])* $name:ident = $text:literal,)*) => {
        /// A fact about a statement that rules can match (`properties = [...]`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
        pub enum Property {
            $($(#[doc = $doc])* #[serde(rename = $text)] $name,)*
        }

        impl Property {
            pub const ALL: &'static [Property] = &[$(Property::$name,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Property::$name => $text,)*
                }
            }
        }
    };
}

properties! {
    /// `UPDATE` or `DELETE` with no `WHERE` clause.
    NoWhere = "no_where",
    /// `UPDATE`/`DELETE` whose `WHERE` does not restrict rows (none, `WHERE true`,
    /// `id = id`, `x LIKE $1`, an `OR` with an unrestricted branch), and `TRUNCATE`.
    Unbounded = "unbounded",
    /// A `WITH` query that changes data (it runs whether or not it is referenced).
    WritableCte = "writable_cte",
    /// `FOR UPDATE` / `FOR SHARE` and their variants, `LOCK TABLE`.
    RowLock = "row_lock",
    /// The statement stores what it reads: a write, `CREATE TABLE AS`, `SELECT INTO`, a
    /// view or rule definition.
    Persists = "persists",
    /// `COPY ... TO/FROM PROGRAM`: a shell command on the database host.
    CopyProgram = "copy_program",
    /// `COPY ... TO/FROM 'file'` on the database host.
    CopyFile = "copy_file",
    /// `COPY ... TO STDOUT`.
    CopyOut = "copy_out",
    /// `COPY ... FROM STDIN`.
    CopyIn = "copy_in",
    /// `EXPLAIN ANALYZE`: the statement under it runs.
    ExplainAnalyze = "explain_analyze",
    /// Reads, lists or writes server files (`pg_read_file`, `pg_ls_dir`, ...).
    ServerFile = "server_file",
    /// `lo_import` / `lo_export` between large objects and server files.
    LargeObjectFile = "large_object_file",
    /// Opens connections to other servers (`dblink*`, foreign servers, user mappings).
    RemoteConnection = "remote_connection",
    /// Signals other backends or the server (`pg_cancel_backend`, `pg_terminate_backend`,
    /// `pg_reload_conf`, ...).
    SignalBackend = "signal_backend",
    /// Runs SQL text built at run time (`query_to_xml`, `DO ... EXECUTE`).
    DynamicSql = "dynamic_sql",
    /// Code the gateway cannot see into: `DO`, `CALL`, a function not known to be free
    /// of side effects.
    Opaque = "opaque",
    /// `SET [LOCAL] ROLE`, `RESET ROLE`, `[RE]SET SESSION AUTHORIZATION`, `DISCARD ALL`
    /// (which resets both), `set_config('role', ...)` or `set_config` of a setting it
    /// cannot read, a function or database made to `SET role`.
    IdentityChange = "identity_change",
    /// `CREATE/ALTER/DROP ROLE`, `GRANT role`, `REASSIGN OWNED`.
    RoleManagement = "role_management",
    /// `ALTER SYSTEM`.
    AlterSystem = "alter_system",
    /// `LOAD` of a shared library.
    Load = "load",
    /// Changes how later statements are lexed (`standard_conforming_strings`,
    /// `client_encoding`).
    LexerSetting = "lexer_setting",
    /// Changes a setting that guards data (`session_replication_role`, read-only
    /// defaults, `row_security`, session transaction characteristics).
    ProtectedSetting = "protected_setting",
    /// `RESET ALL` drops every session setting (not `role`, which PostgreSQL keeps:
    /// `DISCARD ALL` resets that and is an [`Property::IdentityChange`]).
    ResetAll = "reset_all",
    /// `DROP` of any object, `ALTER TABLE ... DROP`.
    Drop = "drop",
    /// `TRUNCATE`.
    Truncate = "truncate",
    /// `ALTER` of any object.
    Alter = "alter",
    /// Takes an exclusive lock that blocks readers (`VACUUM FULL`, `CLUSTER`, non-concurrent
    /// `REINDEX`, `REFRESH MATERIALIZED VIEW` without `CONCURRENTLY`).
    ExclusiveLock = "exclusive_lock",
    /// `PREPARE TRANSACTION` / `COMMIT PREPARED` / `ROLLBACK PREPARED`.
    TwoPhase = "two_phase",
    /// A statement that names a prepared statement the gateway must look up (`EXECUTE`).
    Execute = "execute",
}

/// A set of [`Property`], as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Properties(u64);

impl Properties {
    fn bit(p: Property) -> u64 {
        1u64 << (p as u32)
    }

    pub fn insert(&mut self, p: Property) {
        self.0 |= Self::bit(p);
    }

    pub fn contains(&self, p: Property) -> bool {
        self.0 & Self::bit(p) != 0
    }

    pub fn union(&mut self, other: Properties) {
        self.0 |= other.0;
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Property> + '_ {
        Property::ALL.iter().copied().filter(|p| self.contains(*p))
    }
}

/// A relation named by a statement, as written (qualification comes from the session's
/// `search_path` when rules are matched).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Relation {
    pub schema: Option<String>,
    pub name: String,
    /// Written (target of DML, `TRUNCATE`, `COPY FROM`, created or altered by DDL).
    pub write: bool,
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A function called by a statement (lower-case unless quoted otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Function {
    pub schema: Option<String>,
    pub name: String,
}

impl std::fmt::Display for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where a column's value is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Use {
    /// Selected as itself (`SELECT ssn`, `RETURNING ssn`, `SELECT *`).
    Output,
    /// `GROUP BY`, `DISTINCT ON`, `PARTITION BY`.
    Group,
    /// The argument of `count(...)`.
    Count,
    /// Compared for equality with another column (`a.ssn = b.ssn`, `USING (ssn)`,
    /// `x IN (SELECT ssn ...)`).
    Join,
    /// Compared with a constant, a parameter or an expression, or tested for `NULL`.
    Compare,
    /// Matched against a pattern (`LIKE`, `ILIKE`, `SIMILAR TO`, `~`).
    Pattern,
    /// `ORDER BY`, an aggregate's or a window's ordering.
    Order,
    /// The argument of a function or operator, a cast, `CASE`, `COALESCE`, ...
    Function,
}

impl Use {
    pub fn as_str(self) -> &'static str {
        match self {
            Use::Output => "output",
            Use::Group => "group",
            Use::Count => "count",
            Use::Join => "join",
            Use::Compare => "compare",
            Use::Pattern => "pattern",
            Use::Order => "order",
            Use::Function => "function",
        }
    }
}

/// A table column a use may read: `column: None` is a whole row (or a column the gateway
/// cannot name, behind a column alias list).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// Index into [`Statement::relations`].
    pub relation: usize,
    pub column: Option<String>,
}

/// One column reference and where its value goes. `sources` are every table column it
/// may stand for: an unqualified name may come from any relation in scope, a subquery's
/// or CTE's output leads back to the columns it selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnUse {
    /// As written (`a.ssn`), or `(subquery)`.
    pub name: String,
    pub sources: Vec<Source>,
    pub usage: Use,
    /// In a `RETURNING` list: output of a write, not a read by it.
    pub returning: bool,
    /// For [`Use::Join`]: the index (in [`Statement::columns`]) of the other side.
    pub partner: Option<usize>,
}

/// What a statement does to the session, for the session layer to track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `PREPARE name AS ...`: the statement's reading is that of the prepared one.
    Prepare(String),
    /// `DEALLOCATE name` (`None`: `DEALLOCATE ALL`).
    Deallocate(Option<String>),
    /// `DISCARD ALL` (prepared statements go too).
    DiscardAll,
    /// `SET search_path` (`None`: back to the default: `RESET`, `SET ... DEFAULT`).
    SearchPath(Option<Vec<String>>),
    /// `SET standard_conforming_strings` (`None`: reset to default; `Some(false)` for
    /// any value other than on).
    StandardConformingStrings(Option<bool>),
    /// `RESET ALL`: settings go back to their defaults.
    ResetAll,
}

/// The reading of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// Byte range of this statement in the analysed text.
    pub span: (usize, usize),
    /// `SELECT`, `DELETE`, `DROP TABLE`, ... for messages.
    pub command: String,
    pub class: Class,
    pub properties: Properties,
    pub relations: Vec<Relation>,
    pub functions: Vec<Function>,
    pub columns: Vec<ColumnUse>,
    pub effect: Option<Effect>,
    /// A prepared statement this one runs (`EXECUTE p`, `EXPLAIN ANALYZE EXECUTE p`,
    /// `CREATE TABLE t AS EXECUTE p`): its reading is merged in by the session.
    pub executes: Option<String>,
    /// Calls functions by unqualified name: they resolve through `search_path`, so they
    /// are only known built-ins while `pg_catalog` is searched first.
    pub unqualified_functions: bool,
    /// The reading depends on the value of a literal (a `LIKE` pattern's prefix, a
    /// position in `ORDER BY 1`, the setting `set_config` names), so it holds for this
    /// text only and not for the same statement with other constants.
    pub reads_literals: bool,
    /// Calls `pg_cancel_backend` or `pg_terminate_backend` with anything but
    /// `pg_backend_pid()`, so it may signal another session's backend.
    pub signals_others: bool,
}

impl Statement {
    pub fn new(span: (usize, usize)) -> Self {
        Statement {
            span,
            command: String::new(),
            class: Class::Unknown,
            properties: Properties::default(),
            relations: Vec::new(),
            functions: Vec::new(),
            columns: Vec::new(),
            effect: None,
            executes: None,
            unqualified_functions: false,
            reads_literals: false,
            signals_others: false,
        }
    }

    pub fn has(&self, p: Property) -> bool {
        self.properties.contains(p)
    }

    /// The index of `rel` in [`Statement::relations`], added if new.
    pub(crate) fn relation(&mut self, schema: Option<String>, name: String, write: bool) -> usize {
        if let Some(i) = self
            .relations
            .iter()
            .position(|r| r.schema == schema && r.name == name && r.write == write)
        {
            return i;
        }
        self.relations.push(Relation {
            schema,
            name,
            write,
        });
        self.relations.len() - 1
    }
}

/// The reading of a whole text: one `Query` message (any number of statements) or the
/// text of one `Parse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub statements: Vec<Statement>,
    /// PostgreSQL's fingerprint of the text (literal values ignored), computed when
    /// audit first asks; a reading cached by shape stands for texts that share it.
    pub fingerprint: std::cell::OnceCell<Option<String>>,
}

impl Analysis {
    /// The fingerprint of `text`, which this is the reading of.
    pub fn fingerprint(&self, text: &str) -> Option<&str> {
        self.fingerprint
            .get_or_init(|| super::parser::fingerprint(text))
            .as_deref()
    }
}
