//! The walk over one statement's parse tree.
//!
//! It keeps PostgreSQL's scoping: each query level has the relations of its `FROM`, CTE
//! names shadow tables inside their `WITH`, and subqueries see the levels around them.
//! Column references resolve to every table column they may stand for (without the
//! catalog an unqualified name may belong to any relation in scope, so all of them are
//! taken); a subquery's or CTE's output leads back to the columns it selected as they are.
//!
//! Node types the walker has no rule for are not skipped: their children are walked
//! generically with every column reference counted as a function argument (the most
//! restricted use) and every function call recorded.

use std::rc::Rc;

use super::functions;
use super::model::{
    Class, ColumnUse, Effect, Function, Properties, Property, Source, Statement, Use,
};
use super::tree::J;

/// A relation or derived table visible in a query level.
struct Item {
    /// The name it is referred to by (alias, or the relation name).
    alias: String,
    src: Src,
    /// Column aliases rename its columns by position (`FROM t AS x(a, b)`).
    renamed: bool,
}

enum Src {
    Base(usize),
    Derived(Rc<Derived>),
    /// A function's output: no table column behind it; its column names, where known.
    Opaque(Vec<String>),
}

/// The output columns of a subquery or CTE, as far as they are table columns.
#[derive(Default, Clone)]
struct Derived {
    cols: Vec<(Option<String>, Vec<Source>)>,
    /// Whole-row expansions (`SELECT *`): any column of these relations, by its own name.
    stars: Vec<Source>,
    /// Whole-row expansions whose column names are not the relation's (`*` over
    /// `t AS x(a, b)`): any name may be any of their columns.
    anonymous: Vec<Source>,
}

impl Derived {
    fn first(&self) -> Vec<Source> {
        match self.cols.first() {
            Some((_, s)) => s.clone(),
            None => self.stars.iter().chain(&self.anonymous).cloned().collect(),
        }
    }

    fn all(&self) -> Vec<Source> {
        let mut v: Vec<Source> = self.cols.iter().flat_map(|(_, s)| s.clone()).collect();
        v.extend(self.stars.iter().cloned());
        v.extend(self.anonymous.iter().cloned());
        v
    }

    /// Positional renaming by a column alias list: names are new, sources stay; past a
    /// star, positions are unknown, so every later name may be any starred column.
    fn rename(&self, names: &[String]) -> Derived {
        if names.is_empty() {
            return self.clone();
        }
        let mut out = Derived::default();
        let positional = self.stars.is_empty() && self.anonymous.is_empty();
        for (i, n) in names.iter().enumerate() {
            let sources = match (positional, self.cols.get(i)) {
                (true, Some((_, s))) => s.clone(),
                _ => self.all_whole(),
            };
            out.cols.push((Some(n.clone()), sources));
        }
        out.cols.extend(self.cols.iter().skip(names.len()).cloned());
        out.stars = self.stars.clone();
        out.anonymous = self.anonymous.clone();
        out
    }

    fn all_whole(&self) -> Vec<Source> {
        self.all()
            .into_iter()
            .map(|s| Source {
                relation: s.relation,
                column: None,
            })
            .collect()
    }
}

impl Item {
    fn lookup(&self, name: &str) -> Vec<Source> {
        match &self.src {
            Src::Base(r) => vec![Source {
                relation: *r,
                column: (!self.renamed).then(|| name.to_owned()),
            }],
            Src::Derived(d) => {
                let mut v: Vec<Source> = d
                    .cols
                    .iter()
                    .filter(|(n, _)| n.as_deref() == Some(name))
                    .flat_map(|(_, s)| s.clone())
                    .collect();
                for s in &d.stars {
                    v.push(Source {
                        relation: s.relation,
                        column: Some(name.to_owned()),
                    });
                }
                v.extend(d.anonymous.iter().cloned());
                v
            }
            Src::Opaque(_) => Vec::new(),
        }
    }

    /// Column names the item is known to have (for `NATURAL JOIN`): a derived table's
    /// output names, a function's column aliases; a table's are not known here.
    fn known_names(&self) -> Vec<String> {
        match &self.src {
            Src::Base(_) => Vec::new(),
            Src::Derived(d) => d.cols.iter().filter_map(|(n, _)| n.clone()).collect(),
            Src::Opaque(names) => names.clone(),
        }
    }

    fn whole(&self) -> Vec<Source> {
        match &self.src {
            Src::Base(r) => vec![Source {
                relation: *r,
                column: None,
            }],
            // A derived table's row is its columns, each what it is.
            Src::Derived(d) => d.all(),
            Src::Opaque(_) => Vec::new(),
        }
    }

    /// What `*` over this item produces in a derived table.
    fn star(&self, into: &mut Derived) {
        match &self.src {
            Src::Base(r) if self.renamed => into.anonymous.push(Source {
                relation: *r,
                column: None,
            }),
            Src::Base(r) => into.stars.push(Source {
                relation: *r,
                column: None,
            }),
            Src::Derived(d) => {
                into.cols.extend(d.cols.iter().cloned());
                into.stars.extend(d.stars.iter().cloned());
                into.anonymous.extend(d.anonymous.iter().cloned());
            }
            Src::Opaque(_) => {}
        }
    }
}

pub(crate) struct Walker<'s> {
    pub(crate) stmt: &'s mut Statement,
    scopes: Vec<Vec<Item>>,
    ctes: Vec<Vec<(String, Rc<Derived>)>>,
    /// Inside `RETURNING`.
    returning: bool,
}

/// The name parts of a list of `String` nodes (`funcname`, `names`, `fields`).
fn names(list: &[J]) -> Vec<String> {
    list.iter()
        .filter_map(|n| n.as_node("String").map(|s| s.text("sval").to_owned()))
        .collect()
}

fn last_name(list: &[J]) -> String {
    names(list).pop().unwrap_or_default()
}

/// Whether a node is a plain column (or a scalar subquery's value): the operand of a join
/// equality rather than of a computation.
fn bare(n: &J) -> bool {
    if let Some(c) = n.as_node("ColumnRef") {
        return !c
            .list("fields")
            .iter()
            .any(|f| f.as_node("A_Star").is_some());
    }
    n.as_node("SubLink")
        .is_some_and(|s| s.text("subLinkType") == "EXPR_SUBLINK")
}

/// Whether an expression contains no column reference and no subquery: a constant, a
/// parameter, or a computation of them.
fn constant(n: &J, params_ok: bool) -> bool {
    match n.node() {
        Some(("A_Const", _)) => true,
        Some(("ParamRef", _)) => params_ok,
        Some(("ColumnRef" | "SubLink" | "SelectStmt", _)) => false,
        Some((_, f)) => f.fields().iter().all(|(_, v)| match v {
            J::Arr(items) => items.iter().all(|i| constant(i, params_ok)),
            J::Obj(_) if v.node().is_some() => constant(v, params_ok),
            _ => true,
        }),
        None => match n {
            J::Arr(items) => items.iter().all(|i| constant(i, params_ok)),
            _ => true,
        },
    }
}

/// Whether any node under `n` is an `A_Expr` of this kind.
fn mentions(n: &J, kind: &str) -> bool {
    match n.node() {
        Some(("A_Expr", f)) if f.text("kind") == kind => true,
        Some((_, f)) => f.fields().iter().any(|(_, v)| mentions(v, kind)),
        None => match n {
            J::Arr(items) => items.iter().any(|i| mentions(i, kind)),
            J::Obj(f) => f.iter().any(|(_, v)| mentions(v, kind)),
            _ => false,
        },
    }
}

fn has_column(n: &J) -> bool {
    match n.node() {
        Some(("ColumnRef", _)) => true,
        Some((_, f)) => f.fields().iter().any(|(_, v)| has_column(v)),
        None => match n {
            J::Arr(items) => items.iter().any(has_column),
            J::Obj(f) => f.iter().any(|(_, v)| has_column(v)),
            _ => false,
        },
    }
}

/// Whether a `WHERE` clause restricts which rows a write touches. Conservative: only
/// comparisons of a column with a constant (or, for equality, a parameter), `IS NULL`,
/// `CURRENT OF`, a subquery that is itself restricted or limited, combined with `AND`
/// (one restricting term suffices) or `OR` (every branch must restrict).
pub(crate) fn restricts(n: &J) -> bool {
    let Some((ty, f)) = n.node() else {
        return false;
    };
    match ty {
        "BoolExpr" => match f.text("boolop") {
            "AND_EXPR" => f.list("args").iter().any(restricts),
            "OR_EXPR" => {
                let a = f.list("args");
                !a.is_empty() && a.iter().all(restricts)
            }
            // `NOT flag` filters as `flag` does; a negated comparison may match anything.
            _ => f
                .list("args")
                .first()
                .is_some_and(|a| a.as_node("ColumnRef").is_some()),
        },
        // A boolean column (`WHERE archived`) filters rows.
        "ColumnRef" => !f
            .list("fields")
            .iter()
            .any(|x| x.as_node("A_Star").is_some()),
        "BooleanTest" => f.get("arg").is_some_and(has_column),
        "CurrentOfExpr" => true,
        "NullTest" => f.text("nulltesttype") == "IS_NULL" && f.get("arg").is_some_and(has_column),
        "A_Expr" => {
            let (Some(l), r) = (f.get("lexpr"), f.get("rexpr")) else {
                return false;
            };
            let op = last_name(f.list("name"));
            let col = has_column(l);
            match f.text("kind") {
                "AEXPR_OP" => {
                    let Some(r) = r else { return false };
                    let (c, k) = if col { (l, r) } else { (r, l) };
                    if !has_column(c) || has_column(k) {
                        return false;
                    }
                    match op.as_str() {
                        "=" => constant(k, true),
                        "<" | ">" | "<=" | ">=" | "<>" | "!=" => constant(k, false),
                        _ => false,
                    }
                }
                "AEXPR_OP_ANY" | "AEXPR_IN" => {
                    op == "=" && col && r.is_some_and(|r| constant(r, true))
                }
                "AEXPR_LIKE" | "AEXPR_ILIKE" | "AEXPR_SIMILAR" => {
                    col && r.is_some_and(|r| {
                        constant(r, false)
                            && r.as_node("A_Const")
                                .and_then(|c| c.get("sval"))
                                .map(|s| s.text("sval"))
                                .is_some_and(|p| !p.is_empty() && !p.starts_with(['%', '_']))
                    }) && !op.starts_with('!')
                }
                "AEXPR_BETWEEN" | "AEXPR_BETWEEN_SYM" => {
                    col && r.is_some_and(|r| constant(r, false))
                }
                _ => false,
            }
        }
        "SubLink" => {
            let Some(sub) = f.get("subselect").and_then(|s| s.as_node("SelectStmt")) else {
                return false;
            };
            let inner =
                sub.get("limitCount").is_some() || sub.get("whereClause").is_some_and(restricts);
            match f.text("subLinkType") {
                "ANY_SUBLINK" => f.get("testexpr").is_some_and(has_column) && inner,
                "EXISTS_SUBLINK" => sub.get("whereClause").is_some_and(restricts),
                _ => false,
            }
        }
        _ => false,
    }
}

impl<'s> Walker<'s> {
    pub(crate) fn new(stmt: &'s mut Statement) -> Self {
        Walker {
            stmt,
            scopes: Vec::new(),
            ctes: Vec::new(),
            returning: false,
        }
    }

    /// Marks the last two recorded uses as the two sides of one join equality.
    fn pair(&mut self, a: usize, b: usize) {
        self.stmt.columns[a].partner = Some(b);
        self.stmt.columns[b].partner = Some(a);
    }

    fn prop(&mut self, p: Property) {
        self.stmt.properties.insert(p);
    }

    fn record(&mut self, name: String, sources: Vec<Source>, usage: Use) {
        self.stmt.columns.push(ColumnUse {
            name,
            sources,
            usage,
            returning: self.returning,
            partner: None,
        });
    }

    // ------------------------------------------------------------------ queries

    /// Any statement that returns rows or writes them (`SELECT`, DML); others are walked
    /// generically. Returns its output columns.
    fn query(&mut self, n: &J) -> Derived {
        match n.node() {
            Some(("SelectStmt", f)) => self.select(f),
            Some(("InsertStmt", f)) => self.insert(f),
            Some(("UpdateStmt", f)) => self.update(f),
            Some(("DeleteStmt", f)) => self.delete(f),
            Some(("MergeStmt", f)) => self.merge(f),
            _ => {
                self.generic(n);
                Derived::default()
            }
        }
    }

    /// A query used inside another one (CTE body, subquery): its writes are writable CTEs.
    fn sub_query(&mut self, n: &J) -> Derived {
        if matches!(
            n.node().map(|(t, _)| t),
            Some("InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt")
        ) {
            self.prop(Property::WritableCte);
            self.prop(Property::Persists);
        }
        // A subquery sees the levels around it but adds its own.
        self.query(n)
    }

    fn with(&mut self, f: &J) -> bool {
        let Some(w) = f
            .get("withClause")
            .and_then(|w| w.as_node("WithClause").or(Some(w)))
        else {
            return false;
        };
        let recursive = w.flag("recursive");
        self.ctes.push(Vec::new());
        for cte in w.list("ctes") {
            let Some(c) = cte.as_node("CommonTableExpr") else {
                continue;
            };
            let name = c.text("ctename").to_owned();
            if recursive {
                // Visible inside itself; its columns are what its body selects, so the
                // first pass stands in with no columns and the reference is refined below.
                self.ctes
                    .last_mut()
                    .expect("pushed above")
                    .push((name.clone(), Rc::new(Derived::default())));
            }
            let mut d = match c.get("ctequery") {
                Some(q) => self.sub_query(q),
                None => Derived::default(),
            };
            d = d.rename(&names(c.list("aliascolnames")));
            let frame = self.ctes.last_mut().expect("pushed above");
            frame.retain(|(n, _)| n != &name);
            frame.push((name, Rc::new(d)));
        }
        true
    }

    fn cte(&self, name: &str) -> Option<Rc<Derived>> {
        self.ctes.iter().rev().find_map(|frame| {
            frame
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, d)| d.clone())
        })
    }

    fn select(&mut self, f: &J) -> Derived {
        let with = self.with(f);
        let out = if matches!(
            f.text("op"),
            "SETOP_UNION" | "SETOP_INTERSECT" | "SETOP_EXCEPT"
        ) {
            let l = f.get("larg").map(|l| self.select(l)).unwrap_or_default();
            let r = f.get("rarg").map(|r| self.select(r)).unwrap_or_default();
            let mut d = l;
            for (i, (_, s)) in r.cols.into_iter().enumerate() {
                match d.cols.get_mut(i) {
                    Some((_, ls)) => ls.extend(s),
                    None => d.cols.push((None, s)),
                }
            }
            d.stars.extend(r.stars);
            // Sorting a set operation: by output names or positions.
            self.scopes.push(Vec::new());
            self.ordering(f, "sortClause", &d, Use::Order);
            self.scopes.pop();
            self.limits(f);
            d
        } else {
            self.simple_select(f)
        };
        if with {
            self.ctes.pop();
        }
        out
    }

    fn simple_select(&mut self, f: &J) -> Derived {
        self.scopes.push(Vec::new());
        for item in f.list("fromClause") {
            self.range_item(item);
        }
        let mut out = Derived::default();
        let values = f.list("valuesLists");
        for row in values {
            for (i, v) in row
                .as_node("List")
                .map(|l| l.list("items"))
                .unwrap_or(row.arr())
                .iter()
                .enumerate()
            {
                let sources = self.value(v, Use::Output);
                match out.cols.get_mut(i) {
                    Some((_, s)) => s.extend(sources),
                    None => out.cols.push((Some(format!("column{}", i + 1)), sources)),
                }
            }
        }
        for t in f.list("targetList") {
            if t.as_node("ResTarget").is_none() {
                self.expr(t, Use::Function);
            }
        }
        self.targets(f.list("targetList"), &mut out);
        if let Some(w) = f.get("whereClause") {
            self.expr(w, Use::Compare);
        }
        self.ordering(f, "groupClause", &out, Use::Group);
        if let Some(h) = f.get("havingClause") {
            self.expr(h, Use::Compare);
        }
        for w in f.list("windowClause") {
            self.window(w);
        }
        // `DISTINCT` alone is a list holding one empty node; `DISTINCT ON` lists its keys.
        for d in f.list("distinctClause") {
            if d.node().is_some() {
                self.group_key(d, &out, Use::Group);
            }
        }
        self.ordering(f, "sortClause", &out, Use::Order);
        self.limits(f);
        if !f.list("lockingClause").is_empty() {
            self.prop(Property::RowLock);
        }
        if let Some(into) = f.get("intoClause") {
            self.select_into(into);
        }
        self.scopes.pop();
        out
    }

    /// A target or `RETURNING` list: each entry's value goes out as itself, and becomes
    /// an output column of the level (a star expands to what it covers).
    fn targets(&mut self, list: &[J], out: &mut Derived) {
        for t in list {
            let Some(rt) = t.as_node("ResTarget") else {
                continue;
            };
            let Some(val) = rt.get("val") else { continue };
            if let Some(c) = val.as_node("ColumnRef") {
                let fields = c.list("fields");
                if fields.last().is_some_and(|x| x.as_node("A_Star").is_some()) {
                    self.star(fields, out);
                    continue;
                }
            }
            let sources = self.value(val, Use::Output);
            // PostgreSQL names an unaliased column after the column or function.
            let name = Some(rt.text("name").to_owned())
                .filter(|n| !n.is_empty())
                .or_else(|| {
                    val.as_node("ColumnRef")
                        .map(|c| last_name(c.list("fields")))
                })
                .or_else(|| {
                    val.as_node("FuncCall")
                        .map(|fc| last_name(fc.list("funcname")))
                });
            out.cols.push((name, sources));
        }
    }

    fn select_into(&mut self, into: &J) {
        let into = into.as_node("IntoClause").unwrap_or(into);
        if let Some(rel) = into.get("rel") {
            let rel = rel.as_node("RangeVar").unwrap_or(rel);
            self.range_var_write(rel);
        }
        self.prop(Property::Persists);
    }

    fn limits(&mut self, f: &J) {
        for k in ["limitOffset", "limitCount"] {
            if let Some(e) = f.get(k) {
                self.expr(e, Use::Function);
            }
        }
    }

    /// `GROUP BY`/`ORDER BY` items: a position or an output name refers to the target
    /// list, anything else is an expression of the level.
    fn ordering(&mut self, f: &J, key: &str, out: &Derived, usage: Use) {
        for item in f.list(key) {
            let node = item
                .as_node("SortBy")
                .and_then(|s| s.get("node"))
                .unwrap_or(item);
            if let Some(g) = node.as_node("GroupingSet") {
                for c in g.list("content") {
                    self.group_key(c, out, usage);
                }
                continue;
            }
            self.group_key(node, out, usage);
        }
    }

    fn group_key(&mut self, node: &J, out: &Derived, usage: Use) {
        if node.as_node("A_Const").is_some() {
            // `ORDER BY 2` means the second column: the number is part of the reading.
            self.stmt.reads_literals = true;
        }
        if let Some(c) = node.as_node("A_Const")
            && let Some(i) = c.get("ival")
        {
            let pos = i.int("ival");
            if let Some((name, s)) = usize::try_from(pos - 1).ok().and_then(|p| out.cols.get(p)) {
                self.record(
                    name.clone().unwrap_or_else(|| pos.to_string()),
                    s.clone(),
                    usage,
                );
            } else if !out.stars.is_empty() {
                // A position past the named columns of `SELECT *`: any starred column.
                self.record(pos.to_string(), out.all_whole(), usage);
            }
            return;
        }
        if let Some(c) = node.as_node("ColumnRef") {
            let fields = names(c.list("fields"));
            if fields.len() == 1 {
                let alias: Vec<Source> = out
                    .cols
                    .iter()
                    .filter(|(n, _)| n.as_deref() == Some(&fields[0]))
                    .flat_map(|(_, s)| s.clone())
                    .collect();
                if !alias.is_empty() {
                    self.record(fields[0].clone(), alias, usage);
                }
            }
        }
        self.expr(node, usage);
    }

    fn window(&mut self, w: &J) {
        let w = w.as_node("WindowDef").unwrap_or(w);
        for p in w.list("partitionClause") {
            self.expr(p, Use::Group);
        }
        for o in w.list("orderClause") {
            let node = o.as_node("SortBy").and_then(|s| s.get("node")).unwrap_or(o);
            self.expr(node, Use::Order);
        }
        for k in ["startOffset", "endOffset"] {
            if let Some(e) = w.get(k) {
                self.expr(e, Use::Function);
            }
        }
    }

    /// `*` or `q.*` in a target list.
    fn star(&mut self, fields: &[J], out: &mut Derived) {
        let quals = names(fields);
        let mut sources = Vec::new();
        {
            let scope = self.scopes.last();
            let items: Vec<&Item> = match quals.last() {
                None => scope.map(|s| s.iter().collect()).unwrap_or_default(),
                Some(q) => self
                    .scopes
                    .iter()
                    .rev()
                    .find_map(|s| s.iter().find(|i| &i.alias == q))
                    .into_iter()
                    .collect(),
            };
            for i in items {
                i.star(out);
                sources.extend(i.whole());
            }
        }
        let mut name = quals.join(".");
        name.push_str(if name.is_empty() { "*" } else { ".*" });
        self.record(name, sources, Use::Output);
    }

    // ------------------------------------------------------------------ FROM

    fn range_var_write(&mut self, rv: &J) -> usize {
        let schema = Some(rv.text("schemaname"))
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        self.stmt
            .relation(schema, rv.text("relname").to_owned(), true)
    }

    /// A relation that a DML statement writes, visible in its own scope.
    fn target(&mut self, rv: Option<&J>) -> Option<usize> {
        let rv = rv?;
        let rv = rv.as_node("RangeVar").unwrap_or(rv);
        let r = self.range_var_write(rv);
        let alias = rv
            .get("alias")
            .map(|a| a.as_node("Alias").unwrap_or(a).text("aliasname").to_owned())
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| rv.text("relname").to_owned());
        self.scopes.last_mut()?.push(Item {
            alias,
            src: Src::Base(r),
            renamed: false,
        });
        Some(r)
    }

    fn alias_of(n: &J) -> (Option<String>, Vec<String>) {
        match n.get("alias") {
            Some(a) => {
                let a = a.as_node("Alias").unwrap_or(a);
                (
                    Some(a.text("aliasname").to_owned()).filter(|s| !s.is_empty()),
                    names(a.list("colnames")),
                )
            }
            None => (None, Vec::new()),
        }
    }

    fn push_item(&mut self, item: Item) {
        if let Some(s) = self.scopes.last_mut() {
            s.push(item);
        }
    }

    fn range_item(&mut self, n: &J) {
        match n.node() {
            Some(("RangeVar", rv)) => {
                let schema = rv.text("schemaname");
                let relname = rv.text("relname").to_owned();
                let (alias, cols) = Self::alias_of(rv);
                let alias_name = alias.unwrap_or_else(|| relname.clone());
                if schema.is_empty()
                    && let Some(d) = self.cte(&relname)
                {
                    let d = if cols.is_empty() {
                        d
                    } else {
                        Rc::new(d.rename(&cols))
                    };
                    self.push_item(Item {
                        alias: alias_name,
                        src: Src::Derived(d),
                        renamed: false,
                    });
                    return;
                }
                let schema = Some(schema).filter(|s| !s.is_empty()).map(str::to_owned);
                let r = self.stmt.relation(schema, relname, false);
                self.push_item(Item {
                    alias: alias_name,
                    src: Src::Base(r),
                    renamed: !cols.is_empty(),
                });
            }
            Some(("RangeSubselect", rs)) => {
                let d = match rs.get("subquery") {
                    Some(q) => self.sub_query(q),
                    None => Derived::default(),
                };
                let (alias, cols) = Self::alias_of(rs);
                self.push_item(Item {
                    alias: alias.unwrap_or_default(),
                    src: Src::Derived(Rc::new(d.rename(&cols))),
                    renamed: false,
                });
            }
            Some(("JoinExpr", j)) => {
                let before = self.scopes.last().map_or(0, Vec::len);
                if let Some(l) = j.get("larg") {
                    self.range_item(l);
                }
                let mid = self.scopes.last().map_or(0, Vec::len);
                if let Some(r) = j.get("rarg") {
                    self.range_item(r);
                }
                let mut using = names(j.list("usingClause"));
                if j.flag("isNatural") {
                    // The common column names decide; those of tables are not known here,
                    // but a table joined with a table is a join of columns anyway. What
                    // matters is a constant side (VALUES, a function) named like a column.
                    let scope = self.scopes.last().map(Vec::as_slice).unwrap_or(&[]);
                    using.extend(
                        scope[before.min(scope.len())..]
                            .iter()
                            .flat_map(Item::known_names),
                    );
                }
                for col in using {
                    let (left, right) = {
                        let scope = self.scopes.last().map(Vec::as_slice).unwrap_or(&[]);
                        let mid = mid.min(scope.len());
                        let left: Vec<Source> = scope[before.min(mid)..mid]
                            .iter()
                            .flat_map(|i| i.lookup(&col))
                            .collect();
                        let right: Vec<Source> =
                            scope[mid..].iter().flat_map(|i| i.lookup(&col)).collect();
                        (left, right)
                    };
                    // Equal to a column of another table is a join; equal to a value that
                    // no table holds (VALUES, a function) is a comparison with a constant.
                    let usage = if left.is_empty() || right.is_empty() {
                        Use::Compare
                    } else {
                        Use::Join
                    };
                    self.record(col.clone(), left, usage);
                    self.record(col, right, usage);
                    if usage == Use::Join {
                        let n = self.stmt.columns.len();
                        self.pair(n - 2, n - 1);
                    }
                }
                if let Some(q) = j.get("quals") {
                    self.expr(q, Use::Compare);
                }
                let (alias, _) = Self::alias_of(j);
                if let Some(alias) = alias {
                    let mut d = Derived::default();
                    if let Some(scope) = self.scopes.last() {
                        for i in &scope[before..] {
                            i.star(&mut d);
                        }
                    }
                    self.push_item(Item {
                        alias,
                        src: Src::Derived(Rc::new(d)),
                        renamed: false,
                    });
                }
            }
            Some(("RangeFunction", rf)) => {
                for f in rf.list("functions") {
                    // Each entry is a list: the call, then its column definitions.
                    for part in f
                        .as_node("List")
                        .map(|l| l.list("items"))
                        .unwrap_or(f.arr())
                    {
                        self.expr(part, Use::Function);
                    }
                }
                let (alias, cols) = Self::alias_of(rf);
                let known = if cols.is_empty() {
                    alias.iter().cloned().collect()
                } else {
                    cols
                };
                self.push_item(Item {
                    alias: alias.unwrap_or_default(),
                    src: Src::Opaque(known),
                    renamed: false,
                });
            }
            Some(("RangeTableSample", ts)) => {
                if let Some(r) = ts.get("relation") {
                    self.range_item(r);
                }
                for a in ts.list("args") {
                    self.expr(a, Use::Function);
                }
                if let Some(r) = ts.get("repeatable") {
                    self.expr(r, Use::Function);
                }
            }
            _ => {
                self.generic(n);
                let (alias, _) = n.node().map(|(_, f)| Self::alias_of(f)).unwrap_or_default();
                self.push_item(Item {
                    alias: alias.unwrap_or_default(),
                    src: Src::Opaque(Vec::new()),
                    renamed: false,
                });
            }
        }
    }

    // ------------------------------------------------------------------ DML

    fn returning(&mut self, f: &J) -> Derived {
        let mut out = Derived::default();
        let was = self.returning;
        self.returning = true;
        self.targets(f.list("returningList"), &mut out);
        self.returning = was;
        out
    }

    /// A data-changing statement's frame: it stores what it reads, its `WITH` and its own
    /// query level (the target relation and what `body` adds) open around `body`.
    fn dml(&mut self, f: &J, body: impl FnOnce(&mut Self) -> Derived) -> Derived {
        self.prop(Property::Persists);
        let with = self.with(f);
        self.scopes.push(Vec::new());
        let out = body(self);
        self.scopes.pop();
        if with {
            self.ctes.pop();
        }
        out
    }

    fn insert(&mut self, f: &J) -> Derived {
        self.dml(f, |w| {
            let target = w.target(f.get("relation"));
            if let Some(s) = f.get("selectStmt") {
                // The rows to insert are read into the table: a sub-level of its own.
                let saved = w.scopes.pop();
                w.query(s);
                if let Some(saved) = saved {
                    w.scopes.push(saved);
                }
            }
            if let Some(oc) = f.get("onConflictClause") {
                let oc = oc.as_node("OnConflictClause").unwrap_or(oc);
                // EXCLUDED is the row the statement itself proposes: its values are the
                // agent's own, not read from the table.
                if target.is_some() {
                    w.push_item(Item {
                        alias: "excluded".into(),
                        src: Src::Opaque(Vec::new()),
                        renamed: false,
                    });
                }
                if let Some(infer) = oc.get("infer") {
                    w.generic(infer);
                }
                w.assignments(oc.list("targetList"));
                if let Some(c) = oc.get("whereClause") {
                    w.expr(c, Use::Compare);
                }
            }
            w.returning(f)
        })
    }

    /// `SET col = expr` lists: the values go into the table.
    fn assignments(&mut self, list: &[J]) {
        for t in list {
            if let Some(v) = t.as_node("ResTarget").and_then(|r| r.get("val")) {
                self.expr(v, Use::Output);
            }
        }
    }

    fn where_of_write(&mut self, f: &J) {
        match f.get("whereClause") {
            None => {
                self.prop(Property::NoWhere);
                self.prop(Property::Unbounded);
            }
            Some(w) => {
                if !restricts(w) {
                    self.prop(Property::Unbounded);
                }
                // A LIKE pattern's prefix decides whether it restricts.
                if mentions(w, "AEXPR_LIKE")
                    || mentions(w, "AEXPR_ILIKE")
                    || mentions(w, "AEXPR_SIMILAR")
                {
                    self.stmt.reads_literals = true;
                }
                self.expr(w, Use::Compare);
            }
        }
    }

    fn update(&mut self, f: &J) -> Derived {
        self.dml(f, |w| {
            w.target(f.get("relation"));
            for item in f.list("fromClause") {
                w.range_item(item);
            }
            w.assignments(f.list("targetList"));
            w.where_of_write(f);
            w.returning(f)
        })
    }

    fn delete(&mut self, f: &J) -> Derived {
        self.dml(f, |w| {
            w.target(f.get("relation"));
            for item in f.list("usingClause") {
                w.range_item(item);
            }
            w.where_of_write(f);
            w.returning(f)
        })
    }

    fn merge(&mut self, f: &J) -> Derived {
        self.dml(f, |w| {
            w.target(f.get("relation"));
            if let Some(s) = f.get("sourceRelation") {
                w.range_item(s);
            }
            if let Some(c) = f.get("joinCondition") {
                w.expr(c, Use::Compare);
            }
            for clause in f.list("mergeWhenClauses") {
                let clause = clause.as_node("MergeWhenClause").unwrap_or(clause);
                if let Some(c) = clause.get("condition") {
                    w.expr(c, Use::Compare);
                }
                w.assignments(clause.list("targetList"));
                for v in clause.list("values") {
                    w.expr(v, Use::Output);
                }
            }
            Derived::default()
        })
    }

    // ------------------------------------------------------------------ expressions

    /// An expression whose value goes somewhere as itself (a target, a scalar subquery):
    /// records it with `usage` and returns the table columns it is, if it is one.
    fn value(&mut self, n: &J, usage: Use) -> Vec<Source> {
        if let Some(c) = n.as_node("ColumnRef") {
            let (name, sources) = self.resolve(c.list("fields"));
            self.record(name, sources.clone(), usage);
            return sources;
        }
        if let Some(s) = n.as_node("SubLink")
            && s.text("subLinkType") == "EXPR_SUBLINK"
        {
            let d = s
                .get("subselect")
                .map(|q| self.sub_query(q))
                .unwrap_or_default();
            let sources = d.first();
            self.record("(subquery)".into(), sources.clone(), usage);
            return sources;
        }
        self.expr(n, usage);
        Vec::new()
    }

    fn expr(&mut self, n: &J, usage: Use) {
        let Some((ty, f)) = n.node() else {
            for item in n.arr() {
                self.expr(item, usage);
            }
            return;
        };
        match ty {
            "ColumnRef" | "SubLink"
                if ty == "ColumnRef" || f.text("subLinkType") == "EXPR_SUBLINK" =>
            {
                self.value(n, usage);
            }
            "A_Const" | "ParamRef" | "A_Star" | "SQLValueFunction" | "SetToDefault"
            | "CurrentOfExpr" | "String" | "Integer" | "Float" | "Boolean" | "TypeName" => {}
            "A_Expr" => self.a_expr(f),
            "BoolExpr" => {
                for a in f.list("args") {
                    self.expr(a, Use::Compare);
                }
            }
            "NullTest" | "BooleanTest" => {
                if let Some(a) = f.get("arg") {
                    self.expr(a, Use::Compare);
                }
            }
            "FuncCall" => self.func_call(f),
            "SubLink" => self.sublink(f),
            "List" => {
                for i in f.list("items") {
                    self.expr(i, usage);
                }
            }
            "ResTarget" => {
                if let Some(v) = f.get("val") {
                    self.expr(v, usage);
                }
            }
            "SortBy" => {
                if let Some(v) = f.get("node") {
                    self.expr(v, usage);
                }
            }
            "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" => {
                self.sub_query(n);
            }
            _ => self.generic(n),
        }
    }

    fn a_expr(&mut self, f: &J) {
        let op = last_name(f.list("name"));
        let (l, r) = (f.get("lexpr"), f.get("rexpr"));
        let sides = |w: &mut Self, u: Use| {
            if let Some(l) = l {
                w.expr(l, u);
            }
            if let Some(r) = r {
                w.expr(r, u);
            }
        };
        // Equality of two columns is a join when both are table columns; a column equal
        // to a subquery's constant or a VALUES list's value is a comparison with it.
        let join_or_compare = |w: &mut Self| match (l, r) {
            (Some(l), Some(r)) if bare(l) && bare(r) => {
                let ls = w.value(l, Use::Join);
                let li = w.stmt.columns.len() - 1;
                let rs = w.value(r, Use::Join);
                let ri = w.stmt.columns.len() - 1;
                if ls.is_empty() || rs.is_empty() {
                    w.stmt.columns[li].usage = Use::Compare;
                    w.stmt.columns[ri].usage = Use::Compare;
                } else {
                    w.pair(li, ri);
                }
            }
            _ => sides(w, Use::Compare),
        };
        match f.text("kind") {
            "AEXPR_OP" if l.is_none() => sides(self, Use::Function),
            "AEXPR_OP" => match op.as_str() {
                "=" => join_or_compare(self),
                "<>" | "!=" | "<" | ">" | "<=" | ">=" => sides(self, Use::Compare),
                "~~" | "~~*" | "!~~" | "!~~*" | "~" | "~*" | "!~" | "!~*" => {
                    sides(self, Use::Pattern)
                }
                _ => sides(self, Use::Function),
            },
            "AEXPR_DISTINCT" | "AEXPR_NOT_DISTINCT" => join_or_compare(self),
            "AEXPR_LIKE" | "AEXPR_ILIKE" | "AEXPR_SIMILAR" => sides(self, Use::Pattern),
            "AEXPR_OP_ANY"
            | "AEXPR_OP_ALL"
            | "AEXPR_IN"
            | "AEXPR_BETWEEN"
            | "AEXPR_NOT_BETWEEN"
            | "AEXPR_BETWEEN_SYM"
            | "AEXPR_NOT_BETWEEN_SYM" => sides(self, Use::Compare),
            _ => sides(self, Use::Function),
        }
    }

    fn func_call(&mut self, f: &J) {
        let parts = names(f.list("funcname"));
        let (schema, name) = match parts.as_slice() {
            [] => (None, String::new()),
            [n] => (None, n.clone()),
            [.., s, n] => (Some(s.clone()), n.clone()),
        };
        if schema.is_none() {
            self.stmt.unqualified_functions = true;
        }
        let count = name == "count" && matches!(schema.as_deref(), None | Some("pg_catalog"));
        let args = f.list("args");
        // Signalling the session's own backend ends or interrupts only the agent's own
        // session: the one signal a driver sends itself, and no one else's.
        if matches!(name.as_str(), "pg_cancel_backend" | "pg_terminate_backend")
            && !(matches!(schema.as_deref(), None | Some("pg_catalog"))
                && matches!(args, [a] if is_own_backend_pid(a)))
        {
            self.stmt.signals_others = true;
        }
        if name == "set_config" {
            self.stmt.reads_literals = true;
        }
        if name == "set_config" {
            match args
                .first()
                .and_then(|a| a.as_node("A_Const"))
                .and_then(|c| c.get("sval"))
            {
                Some(setting) => {
                    let s = setting.text("sval").to_ascii_lowercase();
                    if let Some(p) = functions::setting_property(&s) {
                        self.prop(p);
                    }
                    if s == "search_path" {
                        self.prop(Property::ProtectedSetting);
                    }
                }
                // A setting named by a parameter, an expression, a cast or a named
                // argument could be `role`: what cannot be read is taken as the worst.
                None => self.prop(Property::IdentityChange),
            }
        }
        let function = Function { schema, name };
        if !self.stmt.functions.contains(&function) {
            self.stmt.functions.push(function);
        }
        for a in args {
            self.expr(a, if count { Use::Count } else { Use::Function });
        }
        for o in f.list("agg_order") {
            self.expr(o, Use::Order);
        }
        if let Some(filter) = f.get("agg_filter") {
            self.expr(filter, Use::Compare);
        }
        if let Some(w) = f.get("over") {
            self.window(w);
        }
    }

    fn sublink(&mut self, f: &J) {
        let d = f
            .get("subselect")
            .map(|q| self.sub_query(q))
            .unwrap_or_default();
        match f.text("subLinkType") {
            "EXISTS_SUBLINK" => {}
            "ARRAY_SUBLINK" => self.record("(subquery)".into(), d.first(), Use::Function),
            "ANY_SUBLINK" | "ALL_SUBLINK" => {
                let sub = d.first();
                match f.get("testexpr") {
                    Some(t) if bare(t) => {
                        let ts = self.value(t, Use::Join);
                        let ti = self.stmt.columns.len() - 1;
                        let usage = if ts.is_empty() || sub.is_empty() {
                            Use::Compare
                        } else {
                            Use::Join
                        };
                        self.stmt.columns[ti].usage = usage;
                        self.record("(subquery)".into(), sub, usage);
                        if usage == Use::Join {
                            let si = self.stmt.columns.len() - 1;
                            self.pair(ti, si);
                        }
                    }
                    test => {
                        if let Some(t) = test {
                            self.expr(t, Use::Compare);
                        }
                        self.record("(subquery)".into(), sub, Use::Compare);
                    }
                }
            }
            _ => {
                if let Some(t) = f.get("testexpr") {
                    self.expr(t, Use::Compare);
                }
                self.record("(subquery)".into(), d.all(), Use::Compare);
            }
        }
    }

    /// Every node under `n` with no rule of its own: column references count as function
    /// arguments, queries are walked as queries, functions are recorded.
    fn generic(&mut self, n: &J) {
        match n.node() {
            Some(("ColumnRef", c)) => {
                let (name, sources) = self.resolve(c.list("fields"));
                self.record(name, sources, Use::Function);
            }
            Some((
                "FuncCall" | "SubLink" | "SelectStmt" | "InsertStmt" | "UpdateStmt" | "DeleteStmt"
                | "MergeStmt" | "A_Expr" | "BoolExpr" | "NullTest" | "BooleanTest",
                _,
            )) => self.expr(n, Use::Function),
            Some(("RangeVar", rv)) => {
                let schema = Some(rv.text("schemaname"))
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
                let name = rv.text("relname").to_owned();
                if schema.is_none() && self.cte(&name).is_some() {
                    return;
                }
                self.stmt.relation(schema, name, false);
            }
            Some((_, f)) => {
                for (_, v) in f.fields() {
                    self.generic(v);
                }
            }
            None => match n {
                J::Arr(items) => {
                    for i in items {
                        self.generic(i);
                    }
                }
                // A typed field holding a RangeVar is printed without its type key.
                J::Obj(_) if n.get("relname").is_some() && n.get("inh").is_some() => {
                    let schema = Some(n.text("schemaname"))
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned);
                    self.stmt
                        .relation(schema, n.text("relname").to_owned(), false);
                }
                J::Obj(fields) => {
                    for (_, v) in fields {
                        self.generic(v);
                    }
                }
                _ => {}
            },
        }
    }

    /// The table columns a column reference may stand for.
    fn resolve(&mut self, fields: &[J]) -> (String, Vec<Source>) {
        let parts = names(fields);
        let star = fields.last().is_some_and(|f| f.as_node("A_Star").is_some());
        let display = {
            let mut d = parts.join(".");
            if star {
                d.push_str(if d.is_empty() { "*" } else { ".*" });
            }
            d
        };
        let all_items = |name: Option<&str>, scopes: &[Vec<Item>]| -> Vec<Source> {
            scopes
                .iter()
                .flatten()
                .flat_map(|i| match name {
                    Some(n) => i.lookup(n),
                    None => i.whole(),
                })
                .collect()
        };
        let sources = match (parts.as_slice(), star) {
            ([], true) => all_items(
                None,
                self.scopes.last().map(std::slice::from_ref).unwrap_or(&[]),
            ),
            ([col], false) => {
                // A column of any relation in scope, or a whole row named by its alias.
                let mut v = all_items(Some(col), &self.scopes);
                for i in self.scopes.iter().flatten().filter(|i| &i.alias == col) {
                    v.extend(i.whole());
                }
                v
            }
            (quals, _) => {
                let (col, quals) = if star {
                    (None, quals)
                } else {
                    (quals.last().map(String::as_str), &quals[..quals.len() - 1])
                };
                let table = quals.last().map(String::as_str).unwrap_or("");
                let schema = (quals.len() >= 2).then(|| quals[quals.len() - 2].as_str());
                let found = self.scopes.iter().rev().find_map(|s| {
                    s.iter().find(|i| {
                        i.alias == table
                            && schema.is_none_or(|sc| match i.src {
                                Src::Base(r) => {
                                    self.stmt.relations[r].schema.as_deref() == Some(sc)
                                }
                                _ => false,
                            })
                    })
                });
                match (found, col) {
                    (Some(i), Some(c)) => i.lookup(c),
                    (Some(i), None) => i.whole(),
                    // Unknown qualifier (NEW/OLD of a rule, a typo the server will reject):
                    // any relation in scope.
                    (None, Some(c)) => all_items(Some(c), &self.scopes),
                    (None, None) => all_items(None, &self.scopes),
                }
            }
        };
        (display, sources)
    }
}

/// Classifies and walks one top-level statement.
pub(crate) fn statement(node: &J, stmt: &mut Statement) {
    let Some((ty, f)) = node.node() else {
        stmt.command = "EMPTY".into();
        stmt.class = Class::Utility;
        return;
    };
    let mut w = Walker::new(stmt);
    let (class, command): (Class, &str) = match ty {
        "SelectStmt" => {
            w.query(node);
            let c = if f.get("intoClause").is_some() {
                Class::Ddl
            } else {
                Class::Read
            };
            (
                c,
                if f.get("intoClause").is_some() {
                    "SELECT INTO"
                } else {
                    "SELECT"
                },
            )
        }
        "InsertStmt" => {
            w.query(node);
            (Class::Write, "INSERT")
        }
        "UpdateStmt" => {
            w.query(node);
            (Class::Write, "UPDATE")
        }
        "DeleteStmt" => {
            w.query(node);
            (Class::Write, "DELETE")
        }
        "MergeStmt" => {
            w.query(node);
            (Class::Write, "MERGE")
        }
        _ => {
            drop(w);
            return utility(ty, f, stmt);
        }
    };
    stmt.class = class;
    stmt.command = command.into();
    finish(stmt, true);
}

/// `pg_backend_pid()` (or `pg_catalog.pg_backend_pid()`), with no arguments.
fn is_own_backend_pid(arg: &J) -> bool {
    let Some(call) = arg.as_node("FuncCall") else {
        return false;
    };
    let name = names(call.list("funcname"));
    let plain = call.list("args").is_empty()
        && call.get("agg_filter").is_none()
        && call.get("over").is_none()
        && !call.flag("agg_star")
        && !call.flag("func_variadic");
    plain
        && matches!(
            name.iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            ["pg_backend_pid"] | ["pg_catalog", "pg_backend_pid"]
        )
}

/// Raises the class for what the walk found: writes hidden in a query, row locks, and
/// functions that are not known built-ins.
fn finish(stmt: &mut Statement, executes: bool) {
    let mut props = Properties::default();
    let mut opaque = false;
    let mut writes = false;
    for f in &stmt.functions {
        let own_backend = matches!(
            f.name.as_str(),
            "pg_cancel_backend" | "pg_terminate_backend"
        ) && !stmt.signals_others;
        if let Some(p) = functions::property(&f.name)
            && !own_backend
        {
            props.insert(p);
        }
        if functions::writes(f.schema.as_deref(), &f.name) {
            writes = true;
        } else if !functions::known_safe(f.schema.as_deref(), &f.name) {
            opaque = true;
        }
    }
    stmt.properties.union(props);
    if !executes {
        return;
    }
    if stmt.class == Class::Read
        && (writes || stmt.has(Property::WritableCte) || stmt.has(Property::RowLock))
    {
        stmt.class = Class::Write;
    }
    if writes {
        stmt.properties.insert(Property::Persists);
    }
    if opaque {
        stmt.properties.insert(Property::Opaque);
        stmt.class = Class::Unknown;
    }
}

fn defelem_true(d: &J) -> bool {
    match d.get("arg") {
        None => true,
        Some(a) => {
            if let Some(s) = a.as_node("String") {
                return !matches!(
                    s.text("sval").to_ascii_lowercase().as_str(),
                    "off" | "false" | "0" | "no"
                );
            }
            if let Some(c) = a.as_node("A_Const") {
                if let Some(b) = c.get("boolval") {
                    return b.flag("boolval");
                }
                if let Some(i) = c.get("ival") {
                    return i.int("ival") != 0;
                }
                if let Some(s) = c.get("sval") {
                    return !matches!(
                        s.text("sval").to_ascii_lowercase().as_str(),
                        "off" | "false" | "0" | "no"
                    );
                }
            }
            if let Some(b) = a.as_node("Boolean") {
                return b.flag("boolval");
            }
            if let Some(i) = a.as_node("Integer") {
                return i.int("ival") != 0;
            }
            true
        }
    }
}

fn option_on(f: &J, key: &str, name: &str) -> bool {
    f.list(key).iter().any(|o| {
        o.as_node("DefElem")
            .is_some_and(|d| d.text("defname").eq_ignore_ascii_case(name) && defelem_true(d))
    })
}

/// The text of a `SET` value (`a`, `'a'`, `1`, `on`).
fn set_value(n: &J) -> Option<String> {
    let c = n.as_node("A_Const")?;
    if let Some(s) = c.get("sval") {
        return Some(s.text("sval").to_owned());
    }
    if let Some(i) = c.get("ival") {
        return Some(i.int("ival").to_string());
    }
    c.get("boolval").map(|b| b.flag("boolval").to_string())
}

fn utility(ty: &str, f: &J, stmt: &mut Statement) {
    use Class::*;
    let p = |stmt: &mut Statement, p: Property| stmt.properties.insert(p);
    let (class, command): (Class, String) = match ty {
        "ExplainStmt" => {
            let analyze = option_on(f, "options", "analyze");
            let mut inner = Statement::new(stmt.span);
            if let Some(q) = f.get("query") {
                statement(q, &mut inner);
            }
            let class = if analyze {
                stmt.properties.union(inner.properties);
                stmt.properties.insert(Property::ExplainAnalyze);
                inner.class
            } else if (inner.class == Unknown && inner.has(Property::Opaque))
                || inner.executes.is_some()
            {
                // Planning folds immutable functions on constants: user code can run.
                Unknown
            } else {
                Read
            };
            if !analyze {
                // Nothing executes: only what names imply (a denied function) carries over.
                for pr in inner.properties.iter() {
                    if matches!(
                        pr,
                        Property::ServerFile
                            | Property::LargeObjectFile
                            | Property::RemoteConnection
                            | Property::SignalBackend
                            | Property::DynamicSql
                            | Property::Opaque
                    ) {
                        stmt.properties.insert(pr);
                    }
                }
            }
            stmt.relations = inner.relations;
            stmt.functions = inner.functions;
            stmt.signals_others |= inner.signals_others;
            stmt.columns = inner.columns;
            stmt.executes = inner.executes;
            stmt.unqualified_functions = inner.unqualified_functions;
            if stmt.executes.is_some() {
                stmt.properties.insert(Property::Execute);
            }
            stmt.class = class;
            stmt.command = format!(
                "EXPLAIN{} {}",
                if analyze { " ANALYZE" } else { "" },
                inner.command
            );
            return;
        }
        "CreateTableAsStmt" => {
            let mut w = Walker::new(stmt);
            if let Some(into) = f.get("into") {
                w.scopes.push(Vec::new());
                w.select_into(into);
                w.scopes.pop();
            }
            match f.get("query") {
                Some(q) if q.as_node("ExecuteStmt").is_some() => {
                    let name = q.as_node("ExecuteStmt").map(|e| e.text("name").to_owned());
                    stmt.executes = name;
                    stmt.properties.insert(Property::Execute);
                }
                Some(q) => {
                    w.query(q);
                }
                None => {}
            }
            stmt.properties.insert(Property::Persists);
            let mv = f.text("objtype") == "OBJECT_MATVIEW";
            stmt.class = Ddl;
            stmt.command = if mv {
                "CREATE MATERIALIZED VIEW".into()
            } else {
                "CREATE TABLE AS".into()
            };
            finish(stmt, true);
            if stmt.class == Unknown {
                return;
            }
            stmt.class = Ddl;
            return;
        }
        "ViewStmt" => {
            let mut w = Walker::new(stmt);
            if let Some(v) = f.get("view") {
                w.range_var_write(v.as_node("RangeVar").unwrap_or(v));
            }
            if let Some(q) = f.get("query") {
                w.query(q);
            }
            stmt.properties.insert(Property::Persists);
            (Ddl, "CREATE VIEW".into())
        }
        "RuleStmt" => {
            let mut w = Walker::new(stmt);
            w.generic(f);
            stmt.properties.insert(Property::Persists);
            (Ddl, "CREATE RULE".into())
        }
        "CopyStmt" => {
            let mut w = Walker::new(stmt);
            let from = f.flag("is_from");
            if let Some(rv) = f.get("relation") {
                let rv = rv.as_node("RangeVar").unwrap_or(rv);
                let schema = Some(rv.text("schemaname"))
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
                let r = w.stmt.relation(schema, rv.text("relname").to_owned(), from);
                let cols = names(f.list("attlist"));
                // COPY TO reads the columns as they are; COPY FROM only writes them.
                if !from && cols.is_empty() {
                    let sources = vec![Source {
                        relation: r,
                        column: None,
                    }];
                    w.record(rv.text("relname").to_owned(), sources, Use::Output);
                } else if !from {
                    for c in cols {
                        let sources = vec![Source {
                            relation: r,
                            column: Some(c.clone()),
                        }];
                        w.record(c, sources, Use::Output);
                    }
                }
                if let Some(wh) = f.get("whereClause") {
                    w.scopes.push(vec![Item {
                        alias: rv.text("relname").to_owned(),
                        src: Src::Base(r),
                        renamed: false,
                    }]);
                    w.expr(wh, Use::Compare);
                    w.scopes.pop();
                }
            }
            let mut inner_class = None;
            if let Some(q) = f.get("query") {
                let mut inner = Statement::new(stmt.span);
                statement(q, &mut inner);
                inner_class = Some(inner.class);
                stmt.properties.union(inner.properties);
                stmt.relations = inner.relations;
                stmt.functions = inner.functions;
                stmt.signals_others |= inner.signals_others;
                stmt.columns = inner.columns;
                stmt.unqualified_functions = inner.unqualified_functions;
            }
            if f.flag("is_program") {
                p(stmt, Property::CopyProgram);
            } else if !f.text("filename").is_empty() {
                p(stmt, Property::CopyFile);
            } else if from {
                p(stmt, Property::CopyIn);
            } else {
                p(stmt, Property::CopyOut);
            }
            if from {
                p(stmt, Property::Persists);
            }
            let class = match inner_class {
                Some(c) if c != Read => c,
                _ if from => Write,
                _ => Read,
            };
            stmt.class = class;
            stmt.command = if from {
                "COPY FROM".into()
            } else {
                "COPY TO".into()
            };
            return;
        }
        "PrepareStmt" => {
            let name = f.text("name").to_owned();
            if let Some(q) = f.get("query") {
                statement(q, stmt);
            }
            stmt.command = format!("PREPARE {}", stmt.command);
            stmt.effect = Some(Effect::Prepare(name));
            return;
        }
        "ExecuteStmt" => {
            stmt.executes = Some(f.text("name").to_owned());
            let mut w = Walker::new(stmt);
            for a in f.list("params") {
                w.expr(a, Use::Function);
            }
            p(stmt, Property::Execute);
            stmt.class = Unknown;
            stmt.command = "EXECUTE".into();
            finish(stmt, false);
            return;
        }
        "DeclareCursorStmt" => {
            if let Some(q) = f.get("query") {
                statement(q, stmt);
            }
            stmt.command = "DECLARE CURSOR".into();
            return;
        }
        "DeallocateStmt" => {
            let name = f.text("name");
            stmt.effect = Some(Effect::Deallocate(
                Some(name.to_owned()).filter(|n| !n.is_empty()),
            ));
            (Utility, "DEALLOCATE".into())
        }
        "FetchStmt" => (Read, "FETCH".into()),
        "ClosePortalStmt" => (Utility, "CLOSE".into()),
        "TransactionStmt" => {
            let kind = f.text("kind");
            if matches!(
                kind,
                "TRANS_STMT_PREPARE"
                    | "TRANS_STMT_COMMIT_PREPARED"
                    | "TRANS_STMT_ROLLBACK_PREPARED"
            ) {
                p(stmt, Property::TwoPhase);
            }
            (
                Txn,
                kind.trim_start_matches("TRANS_STMT_").replace('_', " "),
            )
        }
        "ConstraintsSetStmt" => (Txn, "SET CONSTRAINTS".into()),
        "VariableSetStmt" => {
            let name = f.text("name").to_ascii_lowercase();
            let kind = f.text("kind");
            if kind == "VAR_RESET_ALL" {
                p(stmt, Property::ResetAll);
                stmt.effect = Some(Effect::ResetAll);
            } else if let Some(pr) = functions::setting_property(&name) {
                p(stmt, pr);
            }
            if name == "transaction" || name == "session characteristics" {
                let rw = f.list("args").iter().any(|a| {
                    a.as_node("DefElem").is_some_and(|d| {
                        d.text("defname") == "transaction_read_only" && !defelem_true(d)
                    })
                });
                if rw && name == "session characteristics" {
                    p(stmt, Property::ProtectedSetting);
                }
            }
            let reset = matches!(kind, "VAR_RESET" | "VAR_SET_DEFAULT");
            if name == "search_path" {
                stmt.effect = Some(Effect::SearchPath(if reset {
                    None
                } else {
                    Some(f.list("args").iter().filter_map(set_value).collect())
                }));
            }
            if name == "standard_conforming_strings" {
                stmt.effect = Some(Effect::StandardConformingStrings(if reset {
                    None
                } else {
                    let v = f
                        .list("args")
                        .first()
                        .and_then(set_value)
                        .unwrap_or_default();
                    Some(matches!(
                        v.to_ascii_lowercase().as_str(),
                        "on" | "true" | "1" | "yes"
                    ))
                }));
            }
            let mut w = Walker::new(stmt);
            for a in f.list("args") {
                w.generic(a);
            }
            (
                Session,
                if kind.starts_with("VAR_RESET") {
                    "RESET".into()
                } else {
                    "SET".into()
                },
            )
        }
        "VariableShowStmt" => (Session, "SHOW".into()),
        "DiscardStmt" => {
            if f.text("target") == "DISCARD_ALL" {
                stmt.effect = Some(Effect::DiscardAll);
                // It runs SET SESSION AUTHORIZATION DEFAULT: the role the gateway set goes.
                p(stmt, Property::IdentityChange);
            }
            (Session, "DISCARD".into())
        }
        "ListenStmt" => (Session, "LISTEN".into()),
        "UnlistenStmt" => (Session, "UNLISTEN".into()),
        "NotifyStmt" => (Session, "NOTIFY".into()),
        "LoadStmt" => {
            p(stmt, Property::Load);
            (Admin, "LOAD".into())
        }
        "AlterSystemStmt" => {
            p(stmt, Property::AlterSystem);
            (Admin, "ALTER SYSTEM".into())
        }
        "VacuumStmt" => {
            if option_on(f, "options", "full") {
                p(stmt, Property::ExclusiveLock);
            }
            let mut w = Walker::new(stmt);
            w.generic(f);
            (
                Admin,
                if f.flag("is_vacuumcmd") {
                    "VACUUM".into()
                } else {
                    "ANALYZE".into()
                },
            )
        }
        "ClusterStmt" => {
            p(stmt, Property::ExclusiveLock);
            Walker::new(stmt).generic(f);
            (Admin, "CLUSTER".into())
        }
        "ReindexStmt" => {
            if !option_on(f, "params", "concurrently") {
                p(stmt, Property::ExclusiveLock);
            }
            Walker::new(stmt).generic(f);
            (Admin, "REINDEX".into())
        }
        "CheckPointStmt" => (Admin, "CHECKPOINT".into()),
        "CreateTableSpaceStmt" | "DropTableSpaceStmt" | "AlterTableSpaceOptionsStmt" => {
            Walker::new(stmt).generic(f);
            (Admin, "TABLESPACE".into())
        }
        "DoStmt" => {
            p(stmt, Property::Opaque);
            p(stmt, Property::DynamicSql);
            (Unknown, "DO".into())
        }
        "CallStmt" => {
            p(stmt, Property::Opaque);
            let mut w = Walker::new(stmt);
            w.generic(f);
            (Unknown, "CALL".into())
        }
        "LockStmt" => {
            p(stmt, Property::RowLock);
            relations_written(stmt, f);
            (Write, "LOCK".into())
        }
        "TruncateStmt" => {
            p(stmt, Property::Truncate);
            p(stmt, Property::Unbounded);
            p(stmt, Property::Persists);
            relations_written(stmt, f);
            (Write, "TRUNCATE".into())
        }
        "RefreshMatViewStmt" => {
            if !f.flag("concurrent") {
                p(stmt, Property::ExclusiveLock);
            }
            relations_written(stmt, f);
            (Write, "REFRESH MATERIALIZED VIEW".into())
        }
        "GrantStmt" => {
            Walker::new(stmt).generic(f);
            (
                Dcl,
                if f.flag("is_grant") {
                    "GRANT".into()
                } else {
                    "REVOKE".into()
                },
            )
        }
        "GrantRoleStmt" | "CreateRoleStmt" | "AlterRoleStmt" | "AlterRoleSetStmt"
        | "DropRoleStmt" | "ReassignOwnedStmt" => {
            p(stmt, Property::RoleManagement);
            if ty == "DropRoleStmt" {
                p(stmt, Property::Drop);
            }
            (Dcl, words(ty))
        }
        "DropOwnedStmt" => {
            p(stmt, Property::Drop);
            (Dcl, "DROP OWNED".into())
        }
        "AlterDefaultPrivilegesStmt"
        | "AlterOwnerStmt"
        | "CreatePolicyStmt"
        | "AlterPolicyStmt" => {
            Walker::new(stmt).generic(f);
            (Dcl, words(ty))
        }
        "AlterTableStmt" => {
            p(stmt, Property::Alter);
            let cmds: Vec<&str> = f
                .list("cmds")
                .iter()
                .filter_map(|c| c.as_node("AlterTableCmd").map(|c| c.text("subtype")))
                .collect();
            if cmds
                .iter()
                .any(|c| c.starts_with("AT_Drop") || c.starts_with("AT_Detach"))
            {
                p(stmt, Property::Drop);
            }
            relations_written(stmt, f);
            Walker::new(stmt).generic(f);
            let dcl = !cmds.is_empty()
                && cmds.iter().all(|c| {
                    matches!(
                        *c,
                        "AT_ChangeOwner"
                            | "AT_EnableRowSecurity"
                            | "AT_DisableRowSecurity"
                            | "AT_ForceRowSecurity"
                            | "AT_NoForceRowSecurity"
                    )
                });
            (if dcl { Dcl } else { Ddl }, "ALTER TABLE".into())
        }
        "DropStmt" => {
            p(stmt, Property::Drop);
            let ty = f.text("removeType").trim_start_matches("OBJECT_");
            if matches!(
                ty,
                "TABLE" | "VIEW" | "MATVIEW" | "FOREIGN_TABLE" | "SEQUENCE" | "INDEX"
            ) {
                for obj in f.list("objects") {
                    let parts = obj
                        .as_node("List")
                        .map(|l| names(l.list("items")))
                        .unwrap_or_default();
                    if let [.., name] = parts.as_slice() {
                        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].clone());
                        stmt.relation(schema, name.clone(), true);
                    }
                }
            }
            (Ddl, format!("DROP {}", ty.replace('_', " ")))
        }
        "DropdbStmt" => {
            p(stmt, Property::Drop);
            (Ddl, "DROP DATABASE".into())
        }
        "DropSubscriptionStmt" | "DropUserMappingStmt" => {
            p(stmt, Property::Drop);
            Walker::new(stmt).generic(f);
            (Ddl, words(ty))
        }
        "CreateForeignServerStmt"
        | "AlterForeignServerStmt"
        | "CreateUserMappingStmt"
        | "AlterUserMappingStmt"
        | "ImportForeignSchemaStmt"
        | "CreateSubscriptionStmt"
        | "AlterSubscriptionStmt" => {
            p(stmt, Property::RemoteConnection);
            Walker::new(stmt).generic(f);
            (Ddl, words(ty))
        }
        t if t.starts_with("Create")
            || t.starts_with("Alter")
            || t.starts_with("Define")
            || t.starts_with("Comment")
            || t.starts_with("Rename")
            || t.starts_with("SecLabel")
            || t == "IndexStmt"
            || t == "CompositeTypeStmt"
            || t == "CreateEnumStmt"
            || t == "RuleStmt" =>
        {
            if t.starts_with("Alter") || t.starts_with("Rename") {
                p(stmt, Property::Alter);
            }
            // `ALTER DATABASE ... SET role`, `CREATE FUNCTION ... SET role = x`: a
            // session or a call that would start as another role.
            if sets_identity(f) {
                p(stmt, Property::IdentityChange);
            }
            if t == "CreatedbStmt"
                || t == "AlterDatabaseStmt"
                || t == "AlterDatabaseSetStmt"
                || t == "AlterDatabaseRefreshCollStmt"
            {
                Walker::new(stmt).generic(f);
            } else {
                relations_written(stmt, f);
                Walker::new(stmt).generic(f);
            }
            (Ddl, words(t))
        }
        other => {
            p(stmt, Property::Opaque);
            Walker::new(stmt).generic(f);
            (Unknown, words(other))
        }
    };
    stmt.class = class;
    stmt.command = command;
    finish(stmt, false);
}

/// A node type as command words: `CreateTrigStmt` → `CREATE TRIG`, `IndexStmt` →
/// `CREATE INDEX`.
fn words(ty: &str) -> String {
    let ty = ty.trim_end_matches("Stmt");
    if ty == "Index" {
        return "CREATE INDEX".into();
    }
    let mut out = String::new();
    for (i, c) in ty.char_indices() {
        if c.is_ascii_uppercase() && i > 0 && !ty[..i].ends_with(|p: char| p.is_ascii_uppercase()) {
            out.push(' ');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The relations a utility statement names directly are what it changes.
fn relations_written(stmt: &mut Statement, f: &J) {
    let mut rels = Vec::new();
    for key in ["relation", "relations", "rels"] {
        match f.get(key) {
            Some(J::Arr(items)) => rels.extend(items.iter()),
            Some(v) => rels.push(v),
            None => {}
        }
    }
    for r in rels {
        let rv = r
            .as_node("RangeVar")
            .or_else(|| {
                r.as_node("VacuumRelation")
                    .and_then(|v| v.get("relation"))
                    .map(|x| x.as_node("RangeVar").unwrap_or(x))
            })
            .unwrap_or(r);
        if !rv.text("relname").is_empty() {
            let schema = Some(rv.text("schemaname"))
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            stmt.relation(schema, rv.text("relname").to_owned(), true);
        }
    }
}

/// Whether a `VariableSetStmt` anywhere under `j` sets `role` or `session_authorization`.
fn sets_identity(j: &J) -> bool {
    if let Some(v) = j.as_node("VariableSetStmt")
        && functions::setting_property(&v.text("name").to_ascii_lowercase())
            == Some(Property::IdentityChange)
    {
        return true;
    }
    match j {
        J::Obj(fields) => fields.iter().any(|(_, v)| sets_identity(v)),
        J::Arr(items) => items.iter().any(sets_identity),
        _ => false,
    }
}
