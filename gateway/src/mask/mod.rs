//! Column and value masking over result rows (`DataRow`) and `COPY` data.
//!
//! Everything here is sans-IO: it works on whole protocol frames handed in as
//! [`bytes::Bytes`] and returns frames to forward. The session core owns the sockets,
//! fetches catalog rows over the upstream connection, and calls in at three points:
//!
//! 1. At start-up and on reload: [`Policy::compile`] turns the `[mask]` config
//!    ([`MaskConfig`]) into a validated policy, with errors naming the offending rule.
//! 2. On each `RowDescription`: [`parse_row_description`] then [`Policy::plan`] give a
//!    [`RowPlan`] for the result set. `plan` may fail with [`MaskError::NeedCatalog`]:
//!    run [`Catalog::start_fill`]'s SQL upstream, feed the rows back, and plan again.
//! 3. On each `DataRow`: [`RowPlan::mask_data_row`]; on `CopyOutResponse`:
//!    [`Policy::plan_copy`] and then [`CopyPlan::mask_copy_data`] per `CopyData`.
//!
//! Module map: [`config`] (TOML types), [`pattern`] (globs over names), [`catalog`]
//! (table OID to names cache), [`wire`] (frame parsing), [`detect`] (value detectors and
//! their validators), [`strategy`] (how a value is masked), [`policy`] (compiled rules,
//! plans, the `DataRow` hot path), [`copy`] (`COPY` streams).
//!
//! Failure policy: when in doubt, refuse. A column that a rule may cover but whose source
//! cannot be resolved, a binary value the strategy cannot rewrite safely, or a malformed
//! frame is an error, never a silent pass.

pub mod binary;
pub mod catalog;
pub mod config;
pub mod copy;
pub mod detect;
pub mod pattern;
pub mod policy;
pub mod strategy;
pub mod wire;

pub use binary::{TypeFill, TypeKind, TypeKinds};
pub use catalog::{Catalog, CatalogFill, Layered, TableNames};
pub use config::{DetectorKind, MaskConfig, Permit, RuleConfig, StrategyKind, Unattributed};
pub use copy::{CopyFormat, CopyPlan};
pub use policy::{MaskStats, Policy, QueryRule, RowPlan, Subject};
pub use wire::{ColumnDesc, apply_result_formats, parse_row_description};

/// Everything that can go wrong while compiling a policy or masking a stream.
///
/// Variants carry the rule name where one is involved, so an operator reading the log
/// knows which `[[mask.rule]]` to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskError {
    /// The configuration is invalid; `rule` is the rule's name or its position.
    #[error("mask rule {rule}: {problem}")]
    InvalidRule { rule: String, problem: String },
    /// A problem with the `[mask]` section outside any one rule (hash key, ...).
    #[error("mask config: {0}")]
    InvalidConfig(String),
    /// Not an error of the data: the plan needs these table OIDs in the catalog. Fetch
    /// them with [`Catalog::start_fill`] and call [`Policy::plan`] again.
    #[error("need catalog entries for table OIDs {oids:?}")]
    NeedCatalog { oids: Vec<u32> },
    /// Not an error of the data: binary values of these types hold text, and the plan
    /// needs their layout from the catalog ([`TypeFill`]) to scan it.
    #[error("need catalog entries for type OIDs {oids:?}")]
    NeedTypes { oids: Vec<u32> },
    /// A binary value of a type whose layout the gateway does not know or read: it may
    /// hold text that cannot be scanned.
    #[error(
        "a binary value of type OID {type_oid} may hold text the gateway cannot read; refusing"
    )]
    UnknownType { type_oid: u32 },
    /// A rule may cover this column but its source table/column cannot be resolved, so
    /// masking cannot be decided: the result set must not be forwarded.
    #[error(
        "mask rule {rule}: cannot resolve the source of column {column:?} (table OID {table_oid}, attnum {attnum})"
    )]
    Unresolvable {
        rule: String,
        column: String,
        table_oid: u32,
        attnum: i16,
    },
    /// A whole-row value (`SELECT a FROM accounts a`) of a table a rule covers.
    #[error(
        "mask rule {rule}: column {column:?} is a whole table row, which would carry the masked columns unmasked; select the columns instead"
    )]
    WholeRow { rule: String, column: String },
    /// The rule applies to a column whose wire format cannot be rewritten with this
    /// strategy (e.g. a binary `int8` under `redact`).
    #[error(
        "mask rule {rule}: column {column:?} has binary type OID {type_oid}, which strategy {strategy} cannot mask; use strategy \"null\" or text format"
    )]
    UnsafeBinary {
        rule: String,
        column: String,
        type_oid: u32,
        strategy: &'static str,
    },
    /// `[mask] unattributed = "refuse"` and the result has a computed text-like column
    /// that no rule covers.
    #[error(
        "column {column:?} is computed or comes from a view, so the gateway cannot tell whether it carries a masked value ([mask] unattributed = \"refuse\"); select the table's columns instead"
    )]
    Unattributed { column: String },
    /// The built-in scan of computed columns met a binary value it cannot read.
    #[error(
        "mask rule unattributed: column {column:?} is computed or comes from a view, so the gateway scans it for sensitive values, but its binary type (OID {type_oid}) cannot be read; request text results or cast it to text"
    )]
    UnattributedBinary { column: String, type_oid: u32 },
    /// A `COPY` whose columns the gateway could not map while masking rules apply.
    #[error("COPY columns cannot be mapped to their sources while masking rules apply; refusing")]
    CopyColumnsUnknown,
    /// A `COPY` statement whose layout the gateway cannot read with certainty (options it
    /// does not understand, a non-UTF8 encoding, …) while masking rules apply.
    #[error("COPY cannot be masked safely: {0}; refusing")]
    CopyStatement(String),
    /// Bytes from the server that do not form the expected message.
    #[error("malformed {what}: {problem}")]
    Malformed {
        what: &'static str,
        problem: &'static str,
    },
    /// Row or copy data with a different column count than the plan.
    #[error("{what} has {got} columns, the plan has {expected}")]
    ColumnCount {
        what: &'static str,
        got: usize,
        expected: usize,
    },
    /// A single `COPY` row larger than the carry buffer allows.
    #[error("COPY row exceeds the {limit}-byte carry limit")]
    CopyRowTooLarge { limit: usize },
    /// A format-preserving value could not be made invalid (not expected to happen).
    #[error("mask rule {rule}: could not produce a non-valid format-preserving value")]
    Unspoilable { rule: String },
}

impl MaskError {
    /// The OIDs to fetch when this is [`MaskError::NeedCatalog`].
    pub fn needed_oids(&self) -> Option<&[u32]> {
        match self {
            MaskError::NeedCatalog { oids } => Some(oids),
            _ => None,
        }
    }

    pub(crate) fn malformed(what: &'static str, problem: &'static str) -> Self {
        MaskError::Malformed { what, problem }
    }
}
