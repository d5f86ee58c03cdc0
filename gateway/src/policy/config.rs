//! The `[policy]` section of the gateway configuration, exactly as written in TOML.
//!
//! ```toml
//! [policy]
//! enforce = true              # false: observe only (log what would be refused)
//! default = "deny"            # no rule decided: "allow", "deny" or "hold"
//! search_path = ["$user", "public"]
//!
//! [policy.role_defaults]      # per identity role, instead of `default`
//! auditor = "allow"
//!
//! [[policy.rule]]
//! name = "hold-destructive"
//! roles = ["agent"]           # identity roles it applies to (none: everyone)
//! class = ["write"]
//! properties = ["unbounded"]  # any of these
//! action = "hold"
//! message = "a write without a restricting WHERE needs a reviewer"
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::analysis::{Class, Property};

/// What a rule (or the default) does with a statement it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    /// A person decides (approvals); until that machinery runs, refused with a message
    /// saying approval is required.
    Hold,
    /// Logged, and the next rule decides.
    Log,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Hold => "hold",
            Action::Log => "log",
        }
    }
}

fn yes() -> bool {
    true
}

fn default_search_path() -> Vec<String> {
    vec!["$user".into(), "public".into()]
}

fn default_max_statement() -> usize {
    1 << 20
}

fn default_action() -> Action {
    Action::Deny
}

/// `[policy]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `false` turns statement analysis off entirely: every statement is relayed as it
    /// is, and masking can be read around with SQL. For measuring what the policy costs;
    /// logged as a warning whenever it is loaded.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `false` runs the rules in observe-only mode: what they would refuse or hold is
    /// logged and forwarded. Built-in denials, masked-column checks and statements that
    /// do not parse are refused either way.
    #[serde(default = "yes")]
    pub enforce: bool,
    /// What a statement no rule decides gets.
    #[serde(default = "default_action")]
    pub default: Action,
    /// Per identity role, what a statement no rule decides gets; an identity with several
    /// such roles gets the strictest.
    #[serde(default)]
    pub role_defaults: BTreeMap<String, Action>,
    /// The `search_path` sessions start with, to qualify unqualified names (the server's
    /// default unless the database or role sets another); `SET search_path` is followed.
    #[serde(default = "default_search_path")]
    pub search_path: Vec<String>,
    /// Longest statement text analysed, in bytes; longer ones are refused (54000). The
    /// parse tree of a statement is ~7x its text and takes ~50 ms per MB to build, so
    /// this bounds what one `Query` can cost the gateway. Bulk loads belong in
    /// `COPY ... FROM STDIN`, whose data streams and is not analysed.
    #[serde(default = "default_max_statement")]
    pub max_statement_bytes: usize,
    /// Rules in order: the first `allow`, `deny` or `hold` that matches decides.
    #[serde(default, rename = "rule")]
    pub rules: Vec<PolicyRuleConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            enabled: true,
            enforce: true,
            default: Action::Deny,
            role_defaults: BTreeMap::new(),
            search_path: default_search_path(),
            max_statement_bytes: default_max_statement(),
            rules: Vec::new(),
        }
    }
}

/// One `[[policy.rule]]`: conditions (all that are given must hold; a list holds when any
/// entry matches) and an action.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRuleConfig {
    /// Named in refusals and logs.
    pub name: String,
    /// Identity roles the rule applies to; with `identities`, either matches. Neither:
    /// every identity.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub identities: Vec<String>,
    /// Statement classes: `read`, `write`, `ddl`, `dcl`, `txn`, `session`, `utility`,
    /// `admin`, `unknown`.
    #[serde(default)]
    pub class: Vec<Class>,
    /// `schema.relation` globs (a glob without a dot matches the relation name in any
    /// schema) on the relations the statement reads or writes.
    #[serde(default)]
    pub relations: Vec<String>,
    /// The same, on the relations the statement writes only.
    #[serde(default)]
    pub writes: Vec<String>,
    /// `schema.function` or `function` globs on the functions it calls.
    #[serde(default)]
    pub functions: Vec<String>,
    /// `schema.table.column` globs on the columns it references.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Statement properties (see the README's list): any of them.
    #[serde(default)]
    pub properties: Vec<Property>,
    pub action: Action,
    /// Shown to the agent when the rule refuses or holds.
    #[serde(default)]
    pub message: Option<String>,
    /// `hold` only: distinct reviewers who must approve (default 1).
    #[serde(default)]
    pub approvers: Option<u32>,
    /// `hold` only: how long the statement waits for a decision before it fails
    /// (default `[approvals] timeout_secs`).
    #[serde(default)]
    pub approval_timeout_secs: Option<u64>,
    /// `hold` only: run a held `INSERT`/`UPDATE`/`DELETE`/`MERGE` sent as a simple query
    /// inside a transaction (or a savepoint of the agent's) while the reviewer decides,
    /// and show them how many rows it changed; approval commits (releases) it, anything
    /// else rolls it back. It holds its row locks while the reviewer decides.
    #[serde(default)]
    pub preview: bool,
}
