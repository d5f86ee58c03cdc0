//! The compiled `[policy]`: rules matched against a statement's reading, in order.

use std::sync::Arc;

use crate::analysis::{Class, Function, Property, Relation, Statement, functions};
use crate::mask::Subject;
use crate::mask::pattern::Glob;

use super::PolicyError;
use super::config::{Action, PolicyConfig, PolicyRuleConfig};

/// How unqualified names resolve in the session: its `search_path` and the upstream role
/// (for `$user`).
#[derive(Debug, Clone, Copy)]
pub struct Resolver<'a> {
    pub search_path: &'a [String],
    pub user: &'a str,
    /// Schemas of paths the session had before (the default, earlier `SET`s): a
    /// `SET LOCAL` or a `SET` rolled back leaves the server on one of those, which the
    /// gateway does not follow, so deny rules and masking look in them too.
    pub also: &'a [String],
}

impl Resolver<'_> {
    /// Every schema an unqualified relation may live in: `pg_catalog` (searched first
    /// unless listed), the temporary schema, then the path.
    pub fn candidates(&self, schema: Option<&str>) -> Vec<String> {
        if let Some(s) = schema {
            return vec![s.to_owned()];
        }
        let mut v = vec!["pg_catalog".to_owned(), "pg_temp".to_owned()];
        for s in self.search_path.iter().chain(self.also) {
            let s = if s == "$user" { self.user } else { s };
            if !v.iter().any(|x| x == s) {
                v.push(s.to_owned());
            }
        }
        v
    }

    /// The schema an unqualified relation is taken to be in for `allow` rules: system
    /// relations (`pg_*`) are in `pg_catalog`; otherwise the first schema of the path
    /// other than `$user` (which rarely exists).
    pub fn primary(&self, schema: Option<&str>, name: &str) -> String {
        if let Some(s) = schema {
            return s.to_owned();
        }
        if name.starts_with("pg_") {
            return "pg_catalog".to_owned();
        }
        self.search_path
            .iter()
            .find(|s| *s != "$user" && *s != "pg_catalog" && *s != "pg_temp")
            .cloned()
            .unwrap_or_else(|| "public".to_owned())
    }

    /// Whether `pg_catalog` is searched before any other schema, so an unqualified
    /// function name is the built-in.
    pub fn catalog_first(&self) -> bool {
        match self.search_path.iter().position(|s| s == "pg_catalog") {
            None | Some(0) => true,
            Some(_) => false,
        }
    }
}

/// `schema.name` glob, or a name glob for any schema.
#[derive(Debug, Clone)]
pub(crate) struct NameGlob {
    schema: Option<Glob>,
    name: Glob,
}

impl NameGlob {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        match s.split('.').collect::<Vec<_>>().as_slice() {
            [n] if !n.is_empty() => Ok(NameGlob {
                schema: None,
                name: Glob::new(n),
            }),
            [sc, n] if !sc.is_empty() && !n.is_empty() => Ok(NameGlob {
                schema: Some(Glob::new(sc)),
                name: Glob::new(n),
            }),
            _ => Err(format!("{s:?} must be name or schema.name (globs allowed)")),
        }
    }

    pub(crate) fn matches(&self, schemas: &[String], name: &str) -> bool {
        self.name.matches(name.as_bytes())
            && self
                .schema
                .as_ref()
                .is_none_or(|g| schemas.iter().any(|s| g.matches(s.as_bytes())))
    }
}

#[derive(Debug, Clone)]
struct ColumnGlob {
    table: NameGlob,
    column: Glob,
}

#[derive(Debug, Clone)]
struct Rule {
    name: Arc<str>,
    roles: Vec<String>,
    identities: Vec<String>,
    class: Vec<Class>,
    relations: Vec<NameGlob>,
    writes: Vec<NameGlob>,
    functions: Vec<NameGlob>,
    columns: Vec<ColumnGlob>,
    properties: Vec<Property>,
    action: Action,
    message: Option<String>,
    approvers: u32,
    approval_timeout_secs: Option<u64>,
    preview: bool,
}

#[derive(Debug)]
struct Inner {
    configured: bool,
    enabled: bool,
    enforce: bool,
    default: Action,
    role_defaults: Vec<(String, Action)>,
    search_path: Vec<String>,
    max_statement: usize,
    rules: Vec<Rule>,
}

/// A validated `[policy]`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StatementPolicy {
    inner: Arc<Inner>,
}

/// What the rules decided for one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `Allow`, `Deny` or `Hold`.
    pub action: Action,
    /// The rule that decided; `None` for the default.
    pub rule: Option<Arc<str>>,
    pub message: Option<String>,
    /// `log` rules that matched on the way.
    pub logged: Vec<Arc<str>>,
    /// For a hold: reviewers needed, and how long it may wait (`None`: the default).
    pub approvers: u32,
    pub approval_timeout_secs: Option<u64>,
    /// For a hold: preview the write inside a transaction while the reviewer decides.
    pub preview: bool,
}

fn strictness(a: Action) -> u8 {
    match a {
        Action::Allow | Action::Log => 0,
        Action::Hold => 1,
        Action::Deny => 2,
    }
}

impl StatementPolicy {
    /// No `[policy]` in the configuration: every statement is refused until one is added.
    pub fn missing() -> Self {
        StatementPolicy {
            inner: Arc::new(Inner {
                configured: false,
                enabled: true,
                enforce: true,
                default: Action::Deny,
                role_defaults: Vec::new(),
                search_path: vec!["$user".into(), "public".into()],
                max_statement: 1 << 20,
                rules: Vec::new(),
            }),
        }
    }

    pub fn compile(cfg: Option<&PolicyConfig>) -> Result<Self, PolicyError> {
        let Some(cfg) = cfg else {
            return Ok(Self::missing());
        };
        if cfg.default == Action::Log {
            return Err(PolicyError::Invalid {
                key: "policy.default".into(),
                problem: "must be allow, deny or hold (log only goes on a rule)".into(),
            });
        }
        let mut role_defaults = Vec::new();
        for (role, a) in &cfg.role_defaults {
            if *a == Action::Log {
                return Err(PolicyError::Invalid {
                    key: format!("policy.role_defaults.{role}"),
                    problem: "must be allow, deny or hold".into(),
                });
            }
            role_defaults.push((role.clone(), *a));
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (i, rc) in cfg.rules.iter().enumerate() {
            let rule = compile_rule(rc).map_err(|problem| PolicyError::Invalid {
                key: format!("policy.rule[{}] ({})", i + 1, rc.name),
                problem,
            })?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(PolicyError::Invalid {
                    key: format!("policy.rule[{}]", i + 1),
                    problem: format!("duplicate rule name {:?}", rc.name),
                });
            }
            rules.push(rule);
        }
        Ok(StatementPolicy {
            inner: Arc::new(Inner {
                configured: true,
                enabled: cfg.enabled,
                enforce: cfg.enforce,
                default: cfg.default,
                role_defaults,
                search_path: cfg.search_path.clone(),
                max_statement: cfg.max_statement_bytes,
                rules,
            }),
        })
    }

    pub fn is_configured(&self) -> bool {
        self.inner.configured
    }

    /// `false`: `[policy] enabled = false`, statements are relayed unanalysed.
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    /// `false`: observe-only mode.
    pub fn enforces(&self) -> bool {
        self.inner.enforce
    }

    pub fn search_path(&self) -> &[String] {
        &self.inner.search_path
    }

    /// `[policy] max_statement_bytes`.
    pub fn max_statement(&self) -> usize {
        self.inner.max_statement
    }

    /// What the default gives `who`: the strictest of its roles' defaults, else `default`.
    fn default_for(&self, who: &Subject) -> Action {
        self.inner
            .role_defaults
            .iter()
            .filter(|(r, _)| who.roles.contains(r))
            .map(|(_, a)| *a)
            .max_by_key(|a| strictness(*a))
            .unwrap_or(self.inner.default)
    }

    /// Runs the rules over one statement (built-in denials and masking are checked by
    /// the caller, before).
    pub fn decide(&self, who: &Subject, stmt: &Statement, res: &Resolver) -> Decision {
        let mut logged = Vec::new();
        for rule in &self.inner.rules {
            if !rule.matches(who, stmt, res) {
                continue;
            }
            if rule.action == Action::Log {
                logged.push(rule.name.clone());
                continue;
            }
            return Decision {
                action: rule.action,
                rule: Some(rule.name.clone()),
                message: rule.message.clone(),
                logged,
                approvers: rule.approvers,
                approval_timeout_secs: rule.approval_timeout_secs,
                preview: rule.preview,
            };
        }
        Decision {
            action: self.default_for(who),
            rule: None,
            message: None,
            logged,
            approvers: 1,
            approval_timeout_secs: None,
            preview: false,
        }
    }
}

fn compile_rule(rc: &PolicyRuleConfig) -> Result<Rule, String> {
    if rc.name.is_empty() {
        return Err("name is empty".into());
    }
    let globs = |v: &[String], what: &str| -> Result<Vec<NameGlob>, String> {
        v.iter()
            .map(|s| NameGlob::parse(s).map_err(|e| format!("{what}: {e}")))
            .collect()
    };
    let columns = rc
        .columns
        .iter()
        .map(|c| match c.rsplit_once('.') {
            Some((t, col)) if !col.is_empty() => Ok(ColumnGlob {
                table: NameGlob::parse(t).map_err(|e| format!("columns: {e}"))?,
                column: Glob::new(col),
            }),
            _ => Err(format!(
                "columns: {c:?} must be table.column or schema.table.column"
            )),
        })
        .collect::<Result<_, _>>()?;
    if (rc.approvers.is_some() || rc.approval_timeout_secs.is_some()) && rc.action != Action::Hold {
        return Err(
            "approvers and approval_timeout_secs only go on a rule whose action is hold".into(),
        );
    }
    if rc.approvers == Some(0) {
        return Err("approvers must be at least 1".into());
    }
    if rc.approval_timeout_secs == Some(0) {
        return Err("approval_timeout_secs must be at least 1".into());
    }
    Ok(Rule {
        name: rc.name.as_str().into(),
        roles: rc.roles.clone(),
        identities: rc.identities.clone(),
        class: rc.class.clone(),
        relations: globs(&rc.relations, "relations")?,
        writes: globs(&rc.writes, "writes")?,
        functions: globs(&rc.functions, "functions")?,
        columns,
        properties: rc.properties.clone(),
        action: rc.action,
        message: rc.message.clone(),
        approvers: rc.approvers.unwrap_or(1),
        approval_timeout_secs: rc.approval_timeout_secs,
        preview: rc.preview,
    })
}

impl Rule {
    fn matches(&self, who: &Subject, stmt: &Statement, res: &Resolver) -> bool {
        let applies = (self.roles.is_empty() && self.identities.is_empty())
            || self.identities.contains(&who.identity)
            || who.roles.iter().any(|r| self.roles.contains(r));
        if !applies {
            return false;
        }
        if !self.class.is_empty() && !self.class.contains(&stmt.class) {
            return false;
        }
        if !self.properties.is_empty() && !self.properties.iter().any(|p| stmt.has(*p)) {
            return false;
        }
        // An `allow` rule matches a name only as it most likely resolves; the others on
        // any schema it may resolve to, so a deny or hold is not dodged by search_path.
        let schemas = |schema: Option<&str>, name: &str| -> Vec<String> {
            if self.action == Action::Allow {
                vec![res.primary(schema, name)]
            } else {
                res.candidates(schema)
            }
        };
        let rel_match = |globs: &[NameGlob], pick: &dyn Fn(&Relation) -> bool| {
            stmt.relations.iter().filter(|r| pick(r)).any(|r| {
                globs
                    .iter()
                    .any(|g| g.matches(&schemas(r.schema.as_deref(), &r.name), &r.name))
            })
        };
        if !self.relations.is_empty() && !rel_match(&self.relations, &|_| true) {
            return false;
        }
        if !self.writes.is_empty() && !rel_match(&self.writes, &|r| r.write) {
            return false;
        }
        if !self.functions.is_empty()
            && !stmt.functions.iter().any(|f| {
                let s = function_schemas(f, res, self.action == Action::Allow);
                self.functions.iter().any(|g| g.matches(&s, &f.name))
            })
        {
            return false;
        }
        if !self.columns.is_empty()
            && !stmt.columns.iter().any(|u| {
                u.sources.iter().any(|src| {
                    let r = &stmt.relations[src.relation];
                    let s = schemas(r.schema.as_deref(), &r.name);
                    self.columns.iter().any(|g| {
                        g.table.matches(&s, &r.name)
                            && match &src.column {
                                Some(c) => g.column.matches(c.as_bytes()),
                                // A whole row holds every column; for allow, none known.
                                None => self.action != Action::Allow,
                            }
                    })
                })
            })
        {
            return false;
        }
        true
    }
}

fn function_schemas(f: &Function, res: &Resolver, primary: bool) -> Vec<String> {
    match &f.schema {
        Some(s) => vec![s.clone()],
        None if functions::known_safe(None, &f.name) && (primary || res.catalog_first()) => {
            vec!["pg_catalog".into()]
        }
        None if primary => vec![res.primary(None, &f.name)],
        None => res.candidates(None),
    }
}
