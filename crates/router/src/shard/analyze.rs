//! Planning a statement sqlparser understood: table instances, scopes, key
//! filters, co-location links and the final decision (see the module
//! documentation of [`super`] for the rules).
//!
//! Model. Every table reference is an *instance*; every `SELECT` level (and
//! `UPDATE`/`DELETE`/`INSERT`/`MERGE`) is a *scope* with *bindings* (FROM
//! items: instances, derived tables exposing key columns, opaque items).
//! A condition `x.k = y.k` on key columns in an AND chain *links* x and y
//! (union-find: co-location) and adds *edges* `x → y` meaning "the rows of
//! x that matter all have a key some used row of y has"; it is added when x
//! is *restricted* by the condition (x's rows are only used when it holds).
//! A key filter on instance I applies to the whole group when every member
//! reaches I along edges.

use std::collections::HashSet;

use sqlparser::ast::{
    AccessExpr, AssignmentTarget, BinaryOperator, Distinct, Expr, FromTable, Function, FunctionArg,
    FunctionArgExpr, FunctionArgumentClause, FunctionArguments, GroupByExpr, InTarget, Insert,
    JoinConstraint, JoinOperator, JsonPathElem, LimitClause, ObjectName, ObjectNamePart,
    OnConflictAction, OnInsert, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, SetOperator, SetQuantifier, Statement, Subscript,
    TableFactor, TableObject, TableWithJoins, UnaryOperator, Value, WindowType,
};

use super::insert;
use super::{InsertPlan, InsertRow, KeyFilter, ShardPlan, ShardedTable, TableLookup, ValueSource};

/// Subquery nesting beyond this gives up (lexer fallback).
const MAX_DEPTH: usize = 48;
/// Scopes analysed beyond this give up (CTEs referenced many times are
/// analysed once per reference).
const MAX_SCOPES: usize = 5_000;

/// Names of aggregate functions (last component, lower case). Any function
/// with `FILTER`, `WITHIN GROUP` or `DISTINCT` arguments also counts.
pub(crate) const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "bit_xor",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "json_agg_strict",
    "jsonb_agg_strict",
    "json_objectagg",
    "json_arrayagg",
    "xmlagg",
    "range_agg",
    "range_intersect_agg",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "regr_avgx",
    "regr_avgy",
    "regr_count",
    "regr_intercept",
    "regr_r2",
    "regr_slope",
    "regr_sxx",
    "regr_sxy",
    "regr_syy",
    "mode",
    "percentile_cont",
    "percentile_disc",
    "any_value",
];

/// Plans one parsed statement. `None` when the statement holds a construct
/// the analysis does not know (the caller then uses the lexer fallback).
pub(super) fn plan_statement(
    stmt: &Statement,
    sql: &str,
    tables: &dyn TableLookup,
    base: Option<usize>,
) -> Option<ShardPlan> {
    match stmt {
        Statement::Query(q) => {
            if let SetExpr::Insert(Statement::Insert(ins)) = &*q.body {
                if let Some(p) = sharded_insert(ins, sql, tables, base) {
                    return Some(p);
                }
            }
            let mut a = Analyzer::new(tables, base);
            a.root_query(q);
            a.finish()
        }
        Statement::Insert(ins) => {
            if let Some(p) = sharded_insert(ins, sql, tables, base) {
                return Some(p);
            }
            let mut a = Analyzer::new(tables, base);
            a.insert(ins, None, Pos::Root);
            a.finish()
        }
        Statement::Update(_) | Statement::Delete(_) | Statement::Merge(_) => {
            let mut a = Analyzer::new(tables, base);
            a.dml(stmt, None, Pos::Root);
            a.finish()
        }
        Statement::Explain { statement, .. } => plan_statement(statement, sql, tables, base),
        Statement::Copy { source, to, .. } => match source {
            sqlparser::ast::CopySource::Table { table_name, .. } => {
                let (schema, name) = object_name(table_name)?;
                Some(table_access_plan(tables, schema, name, !*to))
            }
            sqlparser::ast::CopySource::Query(q) => {
                let mut a = Analyzer::new(tables, base);
                a.root_query(q);
                a.finish()
            }
        },
        Statement::Prepare { statement, .. } => {
            Some(match plan_statement(statement, sql, tables, base)? {
                ShardPlan::Unsharded | ShardPlan::NoTable => ShardPlan::Unsharded,
                _ => ShardPlan::Unsupported {
                    construct: "SQL-level PREPARE of a statement on sharded or reference tables \
                                (use the extended query protocol)"
                        .into(),
                },
            })
        }
        Statement::Execute { .. } | Statement::Call(_) => Some(ShardPlan::Unsharded),
        Statement::Declare { stmts, .. } => {
            match stmts.iter().find_map(|d| d.for_query.as_deref()) {
                Some(q) => {
                    let mut a = Analyzer::new(tables, base);
                    a.root_query(q);
                    a.finish()
                }
                None => Some(ShardPlan::NoTable),
            }
        }
        Statement::Lock(l) => {
            let any = l.tables.iter().any(|t| {
                object_name(&t.name).is_some_and(|(s, n)| {
                    tables.sharded(s.as_deref(), &n).is_some()
                        || tables.is_reference(s.as_deref(), &n)
                })
            });
            Some(if any {
                ShardPlan::Broadcast
            } else {
                ShardPlan::Unsharded
            })
        }
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Set(_)
        | Statement::Reset(_)
        | Statement::Discard { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::Deallocate { .. }
        | Statement::LISTEN { .. }
        | Statement::UNLISTEN { .. }
        | Statement::NOTIFY { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Some(ShardPlan::NoTable),
        Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::AlterTable(_)
        | Statement::Drop { .. }
        | Statement::Truncate(_)
        | Statement::Vacuum(_)
        | Statement::Analyze(_)
        | Statement::Comment { .. }
        | Statement::Grant(_)
        | Statement::Revoke(_)
        | Statement::RefreshMaterializedView(_) => Some(ShardPlan::Broadcast),
        _ => Some(ShardPlan::Unsharded),
    }
}

/// Plan of a statement that reads (`write == false`) or writes every row of
/// one table (COPY, `TABLE t`).
pub(super) fn table_access_plan(
    tables: &dyn TableLookup,
    schema: Option<String>,
    name: String,
    write: bool,
) -> ShardPlan {
    if tables.sharded(schema.as_deref(), &name).is_some() {
        ShardPlan::NoKey {
            table: display_name(&schema, &name),
        }
    } else if tables.is_reference(schema.as_deref(), &name) {
        if write {
            ShardPlan::ReferenceWrite
        } else {
            ShardPlan::ReferenceRead
        }
    } else {
        ShardPlan::Unsharded
    }
}

pub(super) fn display_name(schema: &Option<String>, name: &str) -> String {
    match schema {
        Some(s) => format!("{s}.{name}"),
        None => name.to_owned(),
    }
}

/// `INSERT` into a sharded table (top level): its [`InsertPlan`]. `None`
/// when the target is not a sharded table.
fn sharded_insert(
    ins: &Insert,
    sql: &str,
    tables: &dyn TableLookup,
    base: Option<usize>,
) -> Option<ShardPlan> {
    let TableObject::TableName(name) = &ins.table else {
        return None;
    };
    let (schema, table) = object_name(name)?;
    let sharded = tables.sharded(schema.as_deref(), &table)?;
    if let Some(OnInsert::OnConflict(oc)) = &ins.on {
        if let OnConflictAction::DoUpdate(du) = &oc.action {
            if du
                .assignments
                .iter()
                .any(|a| assigns_column(&a.target, &sharded.column))
            {
                return Some(ShardPlan::Unsupported {
                    construct: format!(
                        "ON CONFLICT DO UPDATE of shard key column {} of {}",
                        sharded.column,
                        display_name(&schema, &table)
                    ),
                });
            }
        }
    }
    let columns = (!ins.columns.is_empty()).then(|| {
        ins.columns
            .iter()
            .filter_map(|c| object_name(c).map(|(_, n)| n))
            .collect::<Vec<_>>()
    });
    let whole = 0..sql.len();
    let end = sql.len()..sql.len();
    let mut plan = InsertPlan {
        table: (schema, table),
        columns,
        rows: Vec::new(),
        prefix: whole,
        suffix: end,
        from_select: false,
        returning: ins.returning.is_some(),
    };
    match &ins.source {
        None => {}
        Some(q) => match &*q.body {
            SetExpr::Values(v)
                if q.with.is_none()
                    && q.order_by.is_none()
                    && q.limit_clause.is_none()
                    && q.fetch.is_none() =>
            {
                let cannot = || ShardPlan::Unsupported {
                    construct: "INSERT ... VALUES in a form the router cannot split".into(),
                };
                let Some(spans) = insert::locate(sql) else {
                    return Some(cannot());
                };
                if spans.rows.len() != v.rows.len() {
                    return Some(cannot());
                }
                plan.prefix = spans.prefix;
                plan.suffix = spans.suffix;
                plan.rows = spans
                    .rows
                    .into_iter()
                    .zip(&v.rows)
                    .map(|(span, row)| InsertRow {
                        span,
                        values: row.content.iter().map(|e| value_source(e, base)).collect(),
                    })
                    .collect();
            }
            _ => plan.from_select = true,
        },
    }
    Some(ShardPlan::Insert(plan))
}

fn assigns_column(t: &AssignmentTarget, column: &str) -> bool {
    let names: &[ObjectName] = match t {
        AssignmentTarget::ColumnName(n) => std::slice::from_ref(n),
        AssignmentTarget::Tuple(v) => v,
    };
    names
        .iter()
        .any(|n| object_name(n).is_some_and(|(_, c)| c == column))
}

/// An identifier as PostgreSQL sees it: lower-cased unless quoted.
pub(crate) fn ident_name(id: &sqlparser::ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    }
}

/// `(schema, name)` of a possibly qualified name (`db.schema.name` keeps
/// schema and name). `None` for names with function parts.
pub(crate) fn object_name(n: &ObjectName) -> Option<(Option<String>, String)> {
    let mut parts = n.0.iter().map(|p| match p {
        ObjectNamePart::Identifier(id) => Some(ident_name(id)),
        ObjectNamePart::Function(_) => None,
    });
    let all: Vec<Option<String>> = parts.by_ref().collect();
    let mut all: Vec<String> = all.into_iter().collect::<Option<Vec<_>>>()?;
    let name = all.pop()?;
    Some((all.pop(), name))
}

/// Where a value comes from (`base`: placeholders above it are normalised
/// literals, see [`crate::Analyzer`]).
pub(super) fn value_source(e: &Expr, base: Option<usize>) -> ValueSource {
    match e {
        Expr::Nested(x) => value_source(x, base),
        Expr::Cast { expr, .. } => value_source(expr, base),
        Expr::Value(v) => value_of(&v.value, base),
        Expr::TypedString(ts) => value_of(&ts.value.value, base),
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => value_source(expr, base),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match value_source(expr, base) {
            ValueSource::Literal(s) if s.starts_with(|c: char| c.is_ascii_digit() || c == '.') => {
                ValueSource::Literal(format!("-{s}"))
            }
            ValueSource::Literal(s) if s.starts_with('-') => {
                ValueSource::Literal(s[1..].to_owned())
            }
            _ => ValueSource::Other,
        },
        _ => ValueSource::Other,
    }
}

fn value_of(v: &Value, base: Option<usize>) -> ValueSource {
    match v {
        Value::Number(s, _) => ValueSource::Literal(s.clone()),
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s)
        | Value::HexStringLiteral(s)
        | Value::SingleQuotedByteStringLiteral(s) => ValueSource::Literal(s.clone()),
        Value::DollarQuotedString(d) => ValueSource::Literal(d.value.clone()),
        Value::Boolean(b) => ValueSource::Literal(if *b { "true" } else { "false" }.into()),
        Value::Null => ValueSource::Null,
        Value::Placeholder(p) => match p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => match base {
                Some(b) if n > b => ValueSource::LiteralIndex(n - b - 1),
                _ => ValueSource::Param(n),
            },
            None => ValueSource::Other,
        },
        _ => ValueSource::Other,
    }
}

fn strip(mut e: &Expr) -> &Expr {
    loop {
        match e {
            Expr::Nested(x) => e = x,
            Expr::Cast { expr, .. } => e = expr,
            _ => return e,
        }
    }
}

fn strip_nested(mut e: &Expr) -> &Expr {
    while let Expr::Nested(x) = e {
        e = x;
    }
    e
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// The statement itself.
    Root,
    /// A subquery whose rows restrict the outer rows: `EXISTS`/`IN` in a
    /// top-level conjunct, a `LATERAL` item joined inner.
    Semi,
    /// Anything else (scalar subquery, `NOT EXISTS`, derived table, CTE).
    Other,
}

enum Kind {
    Sharded(ShardedTable),
    Reference,
    Unsharded,
}

struct Inst {
    schema: Option<String>,
    name: String,
    kind: Kind,
    scope: usize,
    filters: Vec<KeyFilter>,
}

impl Inst {
    fn display(&self) -> String {
        display_name(&self.schema, &self.name)
    }

    fn sharded(&self) -> Option<&ShardedTable> {
        match &self.kind {
            Kind::Sharded(t) => Some(t),
            _ => None,
        }
    }
}

struct Scope {
    parent: Option<usize>,
    pos: Pos,
    bindings: Vec<Binding>,
    /// Row-limiting operator (LIMIT, DISTINCT ON, window function): per-shard
    /// results cannot be merged, whatever the partitioning.
    limiting: Option<&'static str>,
    /// Grouping operator (GROUP BY, aggregate, DISTINCT, set operation):
    /// harmless when `partitioned` by the key.
    grouping: Option<&'static str>,
    partitioned: bool,
    /// A key link connects an instance inside this scope's subtree with one
    /// outside: evaluated per outer row, on co-located rows.
    correlated: bool,
}

struct Binding {
    /// Visible name: the alias, or the table name.
    name: String,
    /// Schema, when referenced qualified and without alias.
    schema: Option<String>,
    target: Target,
}

enum Target {
    Inst(usize),
    /// Derived table or CTE: key columns it passes through (name → instance).
    Derived(Vec<(String, usize)>),
    Opaque,
}

/// A resolved reference to the key column of a sharded instance.
#[derive(Debug, Clone, Copy)]
struct Res {
    inst: usize,
    /// Scope and index of the binding it was resolved through.
    scope: usize,
    binding: usize,
}

enum Ctx<'c> {
    Where,
    Inner,
    Outer {
        nullable: &'c [usize],
    },
    Full {
        left: &'c [usize],
        right: &'c [usize],
    },
}

/// Columns a subquery exposes: per output position, its name and the
/// instance whose key it passes through. `positional` is false when a
/// wildcard made positions unknown (names still valid).
struct Exposed {
    cols: Vec<(Option<String>, Option<usize>)>,
    positional: bool,
}

impl Exposed {
    fn none() -> Exposed {
        Exposed {
            cols: Vec::new(),
            positional: false,
        }
    }

    fn named(&self, alias_cols: &[String]) -> Vec<(String, usize)> {
        if !alias_cols.is_empty() {
            if !self.positional {
                return Vec::new();
            }
            return alias_cols
                .iter()
                .zip(&self.cols)
                .filter_map(|(a, (_, i))| i.map(|i| (a.clone(), i)))
                .collect();
        }
        self.cols
            .iter()
            .filter_map(|(n, i)| Some((n.clone()?, (*i)?)))
            .collect()
    }
}

struct CteDef<'a> {
    name: String,
    query: &'a Query,
    alias_cols: Vec<String>,
    /// Environment (previous visible CTE) at its definition.
    prev: Option<usize>,
    parent: Option<usize>,
    recursive: bool,
    modifying: bool,
    in_progress: bool,
}

#[derive(Default, Clone, Copy)]
struct Flags {
    aggregate: bool,
    window: bool,
}

struct Analyzer<'a> {
    tables: &'a dyn TableLookup,
    base: Option<usize>,
    insts: Vec<Inst>,
    scopes: Vec<Scope>,
    uf: Vec<usize>,
    edges: Vec<(usize, usize)>,
    ctes: Vec<CteDef<'a>>,
    env: Option<usize>,
    writes: Vec<usize>,
    opaque: bool,
    unsupported: Option<String>,
    /// An outer join keeps rows that hold no sharded row unmatched: every
    /// shard would answer them once.
    keeps_unsharded: bool,
    select_into: bool,
    /// The statement's top-level SELECTs: one, or the branches of a
    /// top-level set operation (the merge layer combines their rows).
    root_selects: Vec<usize>,
    depth: usize,
}

impl<'a> Analyzer<'a> {
    fn new(tables: &'a dyn TableLookup, base: Option<usize>) -> Analyzer<'a> {
        Analyzer {
            tables,
            base,
            insts: Vec::new(),
            scopes: Vec::new(),
            uf: Vec::new(),
            edges: Vec::new(),
            ctes: Vec::new(),
            env: None,
            writes: Vec::new(),
            opaque: false,
            unsupported: None,
            keeps_unsharded: false,
            select_into: false,
            root_selects: Vec::new(),
            depth: 0,
        }
    }

    fn unsupported(&mut self, construct: String) {
        self.unsupported.get_or_insert(construct);
    }

    fn new_scope(&mut self, parent: Option<usize>, pos: Pos) -> usize {
        if self.scopes.len() >= MAX_SCOPES {
            self.opaque = true;
        }
        self.scopes.push(Scope {
            parent,
            pos,
            bindings: Vec::new(),
            limiting: None,
            grouping: None,
            partitioned: false,
            correlated: false,
        });
        self.scopes.len() - 1
    }

    fn new_inst(&mut self, schema: Option<String>, name: String, scope: usize) -> usize {
        let kind = match self.tables.sharded(schema.as_deref(), &name) {
            Some(t) => Kind::Sharded(t),
            None if self.tables.is_reference(schema.as_deref(), &name) => Kind::Reference,
            None => Kind::Unsharded,
        };
        self.insts.push(Inst {
            schema,
            name,
            kind,
            scope,
            filters: Vec::new(),
        });
        self.uf.push(self.uf.len());
        self.insts.len() - 1
    }

    fn bind(
        &mut self,
        scope: usize,
        name: String,
        schema: Option<String>,
        target: Target,
    ) -> usize {
        let b = &mut self.scopes[scope].bindings;
        b.push(Binding {
            name,
            schema,
            target,
        });
        b.len() - 1
    }

    // ----- queries -------------------------------------------------------

    /// The statement's query; its `SELECT` (through parentheses) is the root
    /// select, whose combining operators are the merge layer's business.
    fn root_query(&mut self, q: &'a Query) {
        let (scopes, _) = self.query(q, None, Pos::Root);
        let mut body = &*q.body;
        while let SetExpr::Query(inner) = body {
            body = &inner.body;
        }
        if matches!(body, SetExpr::Select(_) | SetExpr::SetOperation { .. }) {
            self.root_selects = scopes;
        }
    }

    /// Analyses a query in a new scope (or several, for set operations);
    /// returns its body's scopes and the key columns it exposes.
    fn query(&mut self, q: &'a Query, parent: Option<usize>, pos: Pos) -> (Vec<usize>, Exposed) {
        if self.opaque || self.depth >= MAX_DEPTH {
            self.opaque = true;
            return (Vec::new(), Exposed::none());
        }
        self.depth += 1;
        let saved_env = self.env;
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let modifying = matches!(
                    &*cte.query.body,
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                );
                let prev = self.env;
                self.ctes.push(CteDef {
                    name: ident_name(&cte.alias.name),
                    query: &cte.query,
                    alias_cols: cte
                        .alias
                        .columns
                        .iter()
                        .map(|c| ident_name(&c.name))
                        .collect(),
                    prev,
                    parent,
                    recursive: with.recursive,
                    modifying,
                    in_progress: false,
                });
                self.env = Some(self.ctes.len() - 1);
                if modifying {
                    // Runs exactly once, whether referenced or not.
                    let here = self.env;
                    self.env = prev;
                    self.query(&cte.query, parent, Pos::Other);
                    self.env = here;
                }
            }
        }
        let (scopes, mut exposed) = self.set_expr(&q.body, parent, pos);
        let limiting = match &q.limit_clause {
            Some(LimitClause::LimitOffset { limit, offset, .. }) => {
                let limit = limit
                    .as_ref()
                    .filter(|l| !matches!(l, Expr::Value(v) if v.value == Value::Null));
                if limit.is_some() {
                    Some("LIMIT")
                } else if offset.is_some() {
                    Some("OFFSET")
                } else {
                    None
                }
            }
            Some(LimitClause::OffsetCommaLimit { .. }) => Some("LIMIT"),
            None => q.fetch.as_ref().map(|_| "FETCH FIRST"),
        };
        if let Some(l) = limiting {
            for &s in &scopes {
                self.scopes[s].limiting.get_or_insert(l);
            }
            exposed = Exposed::none();
        }
        if let Some(walk_scope) = scopes.first().copied().or(parent) {
            if let Some(ob) = &q.order_by {
                if let OrderByKind::Expressions(v) = &ob.kind {
                    for o in v {
                        self.walk(&o.expr, walk_scope);
                    }
                }
            }
            match &q.limit_clause {
                Some(LimitClause::LimitOffset { limit, offset, .. }) => {
                    if let Some(l) = limit {
                        self.walk(l, walk_scope);
                    }
                    if let Some(o) = offset {
                        self.walk(&o.value, walk_scope);
                    }
                }
                Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                    self.walk(offset, walk_scope);
                    self.walk(limit, walk_scope);
                }
                None => {}
            }
        }
        if !q.locks.is_empty() || q.for_clause.is_some() || !q.pipe_operators.is_empty() {
            // Locking clauses are fine; the others are not PostgreSQL.
            if q.for_clause.is_some() || !q.pipe_operators.is_empty() {
                self.opaque = true;
            }
        }
        self.env = saved_env;
        self.depth -= 1;
        (scopes, exposed)
    }

    fn set_expr(
        &mut self,
        body: &'a SetExpr,
        parent: Option<usize>,
        pos: Pos,
    ) -> (Vec<usize>, Exposed) {
        match body {
            SetExpr::Select(s) => {
                let (sc, ex) = self.select(s, parent, pos);
                (vec![sc], ex)
            }
            SetExpr::Query(q) => self.query(q, parent, pos),
            SetExpr::SetOperation { .. } => {
                let mut leaves = Vec::new();
                let mut label = None;
                let mut stack = vec![body];
                while let Some(e) = stack.pop() {
                    match e {
                        SetExpr::SetOperation {
                            left,
                            op,
                            set_quantifier,
                            right,
                        } => {
                            let all = matches!(
                                set_quantifier,
                                SetQuantifier::All | SetQuantifier::AllByName
                            );
                            if !(all && *op == SetOperator::Union) {
                                label.get_or_insert(match op {
                                    SetOperator::Union => "UNION",
                                    SetOperator::Intersect => "INTERSECT",
                                    _ => "EXCEPT",
                                });
                            }
                            stack.push(right);
                            stack.push(left);
                        }
                        other => leaves.push(other),
                    }
                }
                let mut scopes = Vec::new();
                for leaf in leaves {
                    let (s, _) = self.set_expr(leaf, parent, pos);
                    scopes.extend(s);
                }
                if let Some(l) = label {
                    for &s in &scopes {
                        self.scopes[s].grouping.get_or_insert(l);
                    }
                }
                (scopes, Exposed::none())
            }
            SetExpr::Values(v) => {
                let sc = self.new_scope(parent, pos);
                for row in &v.rows {
                    for e in &row.content {
                        self.walk(e, sc);
                    }
                }
                (vec![sc], Exposed::none())
            }
            SetExpr::Table(t) => {
                let sc = self.new_scope(parent, pos);
                let mut exposed = Exposed::none();
                if let Some(name) = &t.table_name {
                    let name = ident_name(name);
                    let schema = t.schema_name.as_ref().map(ident_name);
                    let i = self.new_inst(schema.clone(), name.clone(), sc);
                    self.bind(sc, name, schema, Target::Inst(i));
                    if let Some(st) = self.insts[i].sharded() {
                        exposed.cols.push((Some(st.column.clone()), Some(i)));
                    }
                }
                (vec![sc], exposed)
            }
            SetExpr::Insert(stmt)
            | SetExpr::Update(stmt)
            | SetExpr::Delete(stmt)
            | SetExpr::Merge(stmt) => {
                let sc = self.dml(stmt, parent, pos);
                (vec![sc], Exposed::none())
            }
        }
    }

    fn select(&mut self, s: &'a Select, parent: Option<usize>, pos: Pos) -> (usize, Exposed) {
        let sc = self.new_scope(parent, pos);
        for twj in &s.from {
            self.table_with_joins(twj, sc);
        }
        if !s.lateral_views.is_empty() || s.prewhere.is_some() || s.qualify.is_some() {
            self.opaque = true;
        }
        if let Some(w) = &s.selection {
            self.condition(w, sc, &Ctx::Where);
        }
        let mut flags = Flags::default();
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e)
                | SelectItem::ExprWithAlias { expr: e, .. }
                | SelectItem::ExprWithAliases { expr: e, .. }
                | SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    let f = self.walk(e, sc);
                    flags.aggregate |= f.aggregate;
                    flags.window |= f.window;
                }
                _ => {}
            }
        }
        if let Some(h) = &s.having {
            let f = self.walk(h, sc);
            flags.aggregate |= f.aggregate;
            self.scopes[sc].grouping.get_or_insert("HAVING");
        }
        let mut group_insts: Option<HashSet<usize>> = None;
        match &s.group_by {
            GroupByExpr::Expressions(exprs, _) => {
                if !exprs.is_empty() {
                    let mut set = HashSet::new();
                    for e in exprs {
                        self.walk(e, sc);
                        if let Some(r) = self.key_ref(e, sc).filter(|r| r.scope == sc) {
                            set.insert(r.inst);
                        }
                    }
                    let scope = &mut self.scopes[sc];
                    scope.grouping = Some("GROUP BY");
                    scope.partitioned = !set.is_empty();
                    group_insts = Some(set);
                }
            }
            GroupByExpr::All(_) => {
                self.scopes[sc].grouping = Some("GROUP BY");
                group_insts = Some(HashSet::new());
            }
        }
        if flags.aggregate {
            self.scopes[sc].grouping.get_or_insert("aggregate");
            if group_insts.is_none() {
                group_insts = Some(HashSet::new());
            }
        }
        match &s.distinct {
            Some(Distinct::Distinct) => {
                self.scopes[sc].grouping.get_or_insert("DISTINCT");
            }
            Some(Distinct::On(exprs)) => {
                for e in exprs {
                    self.walk(e, sc);
                }
                self.scopes[sc].limiting.get_or_insert("DISTINCT ON");
            }
            _ => {}
        }
        if flags.window {
            self.scopes[sc].limiting.get_or_insert("window function");
        }
        if s.into.is_some() {
            self.select_into = true;
        }
        if self.scopes[sc].limiting.is_some() {
            return (sc, Exposed::none());
        }
        let mut exposed = Exposed {
            cols: Vec::new(),
            positional: true,
        };
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let name = match strip(e) {
                        Expr::Identifier(id) => Some(ident_name(id)),
                        Expr::CompoundIdentifier(v) => v.last().map(ident_name),
                        _ => None,
                    };
                    let inst = self
                        .key_ref(e, sc)
                        .filter(|r| r.scope == sc)
                        .map(|r| r.inst);
                    exposed.cols.push((name, inst));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let inst = self
                        .key_ref(expr, sc)
                        .filter(|r| r.scope == sc)
                        .map(|r| r.inst);
                    exposed.cols.push((Some(ident_name(alias)), inst));
                }
                SelectItem::Wildcard(_) => {
                    exposed.positional = false;
                    for bi in 0..self.scopes[sc].bindings.len() {
                        for (n, i) in self.binding_keys(sc, bi) {
                            exposed.cols.push((Some(n), Some(i)));
                        }
                    }
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    exposed.positional = false;
                    if let Some((schema, name)) = object_name(n) {
                        let found = self.scopes[sc].bindings.iter().position(|b| {
                            b.name == name && (schema.is_none() || b.schema == schema)
                        });
                        if let Some(bi) = found {
                            for (n, i) in self.binding_keys(sc, bi) {
                                exposed.cols.push((Some(n), Some(i)));
                            }
                        }
                    }
                }
                _ => exposed.cols.push((None, None)),
            }
        }
        if let Some(set) = group_insts {
            for c in &mut exposed.cols {
                if c.1.is_some_and(|i| !set.contains(&i)) {
                    c.1 = None;
                }
            }
        }
        if matches!(s.distinct, Some(Distinct::Distinct))
            && exposed.cols.iter().any(|c| c.1.is_some())
        {
            self.scopes[sc].partitioned = true;
        }
        (sc, exposed)
    }

    // ----- FROM ----------------------------------------------------------

    fn table_with_joins(&mut self, twj: &'a TableWithJoins, sc: usize) -> Vec<usize> {
        // A comma-separated FROM item is an inner join (LATERAL sees the
        // items before it).
        let start = self.insts.len();
        let mut left = self.factor(&twj.relation, sc, Pos::Semi);
        let mut left_sharded = self.sharded_since(start);
        for j in &twj.joins {
            #[derive(PartialEq)]
            enum K {
                Inner,
                Left,
                Right,
                Full,
            }
            let (kind, constraint) = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c) => (K::Inner, Some(c)),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (K::Left, Some(c)),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (K::Right, Some(c)),
                JoinOperator::FullOuter(c) => (K::Full, Some(c)),
                _ => {
                    self.opaque = true;
                    (K::Full, None)
                }
            };
            let lateral_pos = if kind == K::Inner {
                Pos::Semi
            } else {
                Pos::Other
            };
            let before = self.insts.len();
            let right = self.factor(&j.relation, sc, lateral_pos);
            let right_sharded = self.sharded_since(before);
            self.keeps_unsharded |= match kind {
                K::Inner => false,
                K::Left => right_sharded && !left_sharded,
                K::Right => left_sharded && !right_sharded,
                K::Full => left_sharded != right_sharded,
            };
            left_sharded |= right_sharded;
            let ctx = match kind {
                K::Inner => Ctx::Inner,
                K::Left => Ctx::Outer { nullable: &right },
                K::Right => Ctx::Outer { nullable: &left },
                K::Full => Ctx::Full {
                    left: &left,
                    right: &right,
                },
            };
            match constraint {
                Some(JoinConstraint::On(e)) => self.condition(e, sc, &ctx),
                Some(JoinConstraint::Using(names)) | Some(JoinConstraint::UsingAlias(names, _)) => {
                    for n in names {
                        let Some((_, col)) = object_name(n) else {
                            continue;
                        };
                        let l = left.iter().find_map(|&b| self.binding_key(sc, b, &col));
                        let r = right.iter().find_map(|&b| self.binding_key(sc, b, &col));
                        if let (Some(l), Some(r)) = (l, r) {
                            self.link(l, r, sc, &ctx);
                        }
                    }
                }
                Some(JoinConstraint::Natural) => {
                    let mut pairs = Vec::new();
                    for &lb in &left {
                        for (col, _) in self.binding_keys(sc, lb) {
                            if let Some(r) =
                                right.iter().find_map(|&b| self.binding_key(sc, b, &col))
                            {
                                if let Some(l) = self.binding_key(sc, lb, &col) {
                                    pairs.push((l, r));
                                }
                            }
                        }
                    }
                    for (l, r) in pairs {
                        self.link(l, r, sc, &ctx);
                    }
                }
                _ => {}
            }
            left.extend(right);
        }
        left
    }

    /// Whether a sharded instance was created from index `start` on.
    fn sharded_since(&self, start: usize) -> bool {
        self.insts[start..].iter().any(|i| i.sharded().is_some())
    }

    fn factor(&mut self, f: &'a TableFactor, sc: usize, lateral_pos: Pos) -> Vec<usize> {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let alias_name = alias.as_ref().map(|a| ident_name(&a.name));
                if let Some(args) = args {
                    self.walk_fn_args(&args.args, sc);
                    let n = alias_name
                        .or_else(|| object_name(name).map(|(_, n)| n))
                        .unwrap_or_default();
                    return vec![self.bind(sc, n, None, Target::Opaque)];
                }
                let Some((schema, tname)) = object_name(name) else {
                    self.opaque = true;
                    return Vec::new();
                };
                if schema.is_none() {
                    if let Some(cte) = self.cte_lookup(&tname) {
                        let alias_cols: Vec<String> = alias
                            .as_ref()
                            .map(|a| a.columns.iter().map(|c| ident_name(&c.name)).collect())
                            .unwrap_or_default();
                        let target = self.cte_ref(cte, &alias_cols);
                        let n = alias_name.unwrap_or(tname);
                        return vec![self.bind(sc, n, None, target)];
                    }
                }
                let i = self.new_inst(schema.clone(), tname.clone(), sc);
                let b = match alias_name {
                    Some(a) => self.bind(sc, a, None, Target::Inst(i)),
                    None => self.bind(sc, tname, schema, Target::Inst(i)),
                };
                vec![b]
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let pos = if *lateral { lateral_pos } else { Pos::Other };
                let (_, ex) = self.query(subquery, Some(sc), pos);
                let alias_cols: Vec<String> = alias
                    .as_ref()
                    .map(|a| a.columns.iter().map(|c| ident_name(&c.name)).collect())
                    .unwrap_or_default();
                let cols = ex.named(&alias_cols);
                let n = alias
                    .as_ref()
                    .map(|a| ident_name(&a.name))
                    .unwrap_or_default();
                vec![self.bind(sc, n, None, Target::Derived(cols))]
            }
            TableFactor::TableFunction { expr, alias } => {
                self.walk(expr, sc);
                let n = alias
                    .as_ref()
                    .map(|a| ident_name(&a.name))
                    .unwrap_or_default();
                vec![self.bind(sc, n, None, Target::Opaque)]
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                self.walk_fn_args(args, sc);
                let n = alias
                    .as_ref()
                    .map(|a| ident_name(&a.name))
                    .or_else(|| object_name(name).map(|(_, n)| n))
                    .unwrap_or_default();
                vec![self.bind(sc, n, None, Target::Opaque)]
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for e in array_exprs {
                    self.walk(e, sc);
                }
                let n = alias
                    .as_ref()
                    .map(|a| ident_name(&a.name))
                    .unwrap_or_default();
                vec![self.bind(sc, n, None, Target::Opaque)]
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut b = self.table_with_joins(table_with_joins, sc);
                if let Some(a) = alias {
                    b.push(self.bind(sc, ident_name(&a.name), None, Target::Opaque));
                }
                b
            }
            _ => {
                self.opaque = true;
                Vec::new()
            }
        }
    }

    fn walk_fn_args(&mut self, args: &'a [FunctionArg], sc: usize) {
        for a in args {
            let (FunctionArg::Named { arg, .. }
            | FunctionArg::ExprNamed { arg, .. }
            | FunctionArg::Unnamed(arg)) = a;
            if let FunctionArgExpr::Expr(e) = arg {
                self.walk(e, sc);
            }
        }
    }

    fn cte_lookup(&self, name: &str) -> Option<usize> {
        let mut cur = self.env;
        while let Some(i) = cur {
            if self.ctes[i].name == name {
                return Some(i);
            }
            cur = self.ctes[i].prev;
        }
        None
    }

    /// A reference to a CTE: its body analysed afresh (each reference reads
    /// its own rows), exposing the key columns it passes through.
    fn cte_ref(&mut self, idx: usize, alias_cols: &[String]) -> Target {
        let def = &self.ctes[idx];
        if def.modifying || def.in_progress {
            return Target::Opaque;
        }
        let (query, parent) = (def.query, def.parent);
        let saved = self.env;
        self.env = if def.recursive { Some(idx) } else { def.prev };
        let def_cols = def.alias_cols.clone();
        self.ctes[idx].in_progress = true;
        let (_, ex) = self.query(query, parent, Pos::Other);
        self.ctes[idx].in_progress = false;
        self.env = saved;
        let cols = if alias_cols.is_empty() {
            &def_cols
        } else {
            alias_cols
        };
        Target::Derived(ex.named(cols))
    }

    fn binding_key(&self, sc: usize, bi: usize, col: &str) -> Option<Res> {
        let inst = match &self.scopes[sc].bindings.get(bi)?.target {
            Target::Inst(i) => {
                Some(*i).filter(|&i| self.insts[i].sharded().is_some_and(|t| t.column == col))
            }
            Target::Derived(cols) => cols.iter().find(|(n, _)| n == col).map(|(_, i)| *i),
            Target::Opaque => None,
        }?;
        Some(Res {
            inst,
            scope: sc,
            binding: bi,
        })
    }

    fn binding_keys(&self, sc: usize, bi: usize) -> Vec<(String, usize)> {
        match &self.scopes[sc].bindings[bi].target {
            Target::Inst(i) => self.insts[*i]
                .sharded()
                .map(|t| vec![(t.column.clone(), *i)])
                .unwrap_or_default(),
            Target::Derived(cols) => cols.clone(),
            Target::Opaque => Vec::new(),
        }
    }

    // ----- DML -----------------------------------------------------------

    fn dml(&mut self, stmt: &'a Statement, parent: Option<usize>, pos: Pos) -> usize {
        match stmt {
            Statement::Insert(ins) => self.insert(ins, parent, pos),
            Statement::Update(u) => {
                let sc = self.new_scope(parent, pos);
                let targets = self.table_with_joins(&u.table, sc);
                let target = targets.first().and_then(|&b| self.binding_inst(sc, b));
                if let Some(t) = target {
                    self.writes.push(t);
                }
                if let Some(sqlparser::ast::UpdateTableFromKind::BeforeSet(v))
                | Some(sqlparser::ast::UpdateTableFromKind::AfterSet(v)) = &u.from
                {
                    for twj in v {
                        self.table_with_joins(twj, sc);
                    }
                }
                if let Some(w) = &u.selection {
                    self.condition(w, sc, &Ctx::Where);
                }
                for a in &u.assignments {
                    if let Some(t) = target {
                        if let Some(st) = self.insts[t].sharded() {
                            if assigns_column(&a.target, &st.column) {
                                let msg = format!(
                                    "UPDATE of shard key column {} of {}",
                                    st.column,
                                    self.insts[t].display()
                                );
                                self.unsupported(msg);
                            }
                        }
                    }
                    self.walk(&a.value, sc);
                }
                self.walk_returning(u.returning.as_deref(), sc);
                sc
            }
            Statement::Delete(d) => {
                let sc = self.new_scope(parent, pos);
                let (FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v)) = &d.from;
                for twj in v {
                    let b = self.table_with_joins(twj, sc);
                    if let Some(t) = b.first().and_then(|&b| self.binding_inst(sc, b)) {
                        self.writes.push(t);
                    }
                }
                if let Some(using) = &d.using {
                    for twj in using {
                        self.table_with_joins(twj, sc);
                    }
                }
                if let Some(w) = &d.selection {
                    self.condition(w, sc, &Ctx::Where);
                }
                self.walk_returning(d.returning.as_deref(), sc);
                sc
            }
            Statement::Merge(m) => {
                let sc = self.new_scope(parent, pos);
                let b = self.factor(&m.table, sc, Pos::Other);
                if let Some(t) = b.first().and_then(|&b| self.binding_inst(sc, b)) {
                    self.writes.push(t);
                    if self.insts[t].sharded().is_some() {
                        let msg = format!("MERGE into sharded table {}", self.insts[t].display());
                        self.unsupported(msg);
                    }
                }
                self.factor(&m.source, sc, Pos::Other);
                self.condition(&m.on, sc, &Ctx::Inner);
                sc
            }
            _ => {
                self.opaque = true;
                self.new_scope(parent, pos)
            }
        }
    }

    /// `INSERT` that is not the top-level insert into a sharded table.
    fn insert(&mut self, ins: &'a Insert, parent: Option<usize>, pos: Pos) -> usize {
        let sc = self.new_scope(parent, pos);
        match &ins.table {
            TableObject::TableName(name) => match object_name(name) {
                Some((schema, tname)) => {
                    let i = self.new_inst(schema, tname.clone(), sc);
                    self.bind(sc, tname, None, Target::Inst(i));
                    self.writes.push(i);
                    if self.insts[i].sharded().is_some() {
                        let msg = format!(
                            "INSERT into sharded table {} inside another statement",
                            self.insts[i].display()
                        );
                        self.unsupported(msg);
                    }
                }
                None => self.opaque = true,
            },
            _ => self.opaque = true,
        }
        if let Some(q) = &ins.source {
            self.query(q, Some(sc), Pos::Other);
        }
        self.walk_returning(ins.returning.as_deref(), sc);
        sc
    }

    fn walk_returning(&mut self, items: Option<&'a [SelectItem]>, sc: usize) {
        for item in items.unwrap_or_default() {
            if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
                self.walk(e, sc);
            }
        }
    }

    fn binding_inst(&self, sc: usize, bi: usize) -> Option<usize> {
        match self.scopes[sc].bindings.get(bi)?.target {
            Target::Inst(i) => Some(i),
            _ => None,
        }
    }

    // ----- conditions ----------------------------------------------------

    /// The conjuncts of the top-level AND chain of `e`, in order.
    fn condition(&mut self, e: &'a Expr, sc: usize, ctx: &Ctx<'_>) {
        let mut stack = vec![e];
        while let Some(e) = stack.pop() {
            match strip_nested(e) {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::And,
                    right,
                } => {
                    stack.push(right);
                    stack.push(left);
                }
                other => self.conjunct(other, sc, ctx),
            }
        }
    }

    fn conjunct(&mut self, e: &'a Expr, sc: usize, ctx: &Ctx<'_>) {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } => match (strip_nested(left), strip_nested(right)) {
                // Row comparison: (a, b) = (x, y) is a = x AND b = y.
                (Expr::Tuple(l), Expr::Tuple(r)) if l.len() == r.len() => {
                    for (l, r) in l.iter().zip(r) {
                        self.equality(l, r, sc, ctx);
                    }
                }
                _ => self.equality(left, right, sc, ctx),
            },
            Expr::BinaryOp { left, op, right }
                if matches!(
                    op,
                    BinaryOperator::Lt
                        | BinaryOperator::LtEq
                        | BinaryOperator::Gt
                        | BinaryOperator::GtEq
                ) =>
            {
                // key < v  → upper; v < key → lower.
                let (key, val, key_on_left) =
                    match (self.key_ref(left, sc), self.key_ref(right, sc)) {
                        (Some(k), None) => (Some(k), &**right, true),
                        (None, Some(k)) => (Some(k), &**left, false),
                        _ => (None, &**right, true),
                    };
                if let Some(k) = key {
                    let v = value_source(val, self.base);
                    if v != ValueSource::Other {
                        let inclusive = matches!(op, BinaryOperator::LtEq | BinaryOperator::GtEq);
                        let less = matches!(op, BinaryOperator::Lt | BinaryOperator::LtEq);
                        let bound = Some((v, inclusive));
                        let f = if less == key_on_left {
                            KeyFilter::Range {
                                lower: None,
                                upper: bound,
                            }
                        } else {
                            KeyFilter::Range {
                                lower: bound,
                                upper: None,
                            }
                        };
                        self.filter(k, f, sc, ctx);
                    }
                }
                self.walk(left, sc);
                self.walk(right, sc);
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } => {
                if let Some(k) = self.key_ref(expr, sc) {
                    let lo = value_source(low, self.base);
                    let hi = value_source(high, self.base);
                    if lo != ValueSource::Other && hi != ValueSource::Other {
                        let f = KeyFilter::Range {
                            lower: Some((lo, true)),
                            upper: Some((hi, true)),
                        };
                        self.filter(k, f, sc, ctx);
                    }
                }
                self.walk(e, sc);
            }
            Expr::In {
                expr,
                target: InTarget::List(list),
                negated: false,
                ..
            } => {
                if let Some(k) = self.key_ref(expr, sc) {
                    self.eq_filter(k, list, sc, ctx);
                }
                self.walk(e, sc);
            }
            Expr::In {
                expr,
                target: InTarget::Subquery(q),
                negated,
                ..
            } => self.in_subquery(expr, q, *negated, sc, ctx),
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => {
                if let (Some(k), Expr::Array(arr)) = (self.key_ref(left, sc), strip(right)) {
                    self.eq_filter(k, &arr.elem, sc, ctx);
                }
                self.walk(e, sc);
            }
            Expr::Exists { subquery, negated } => {
                let pos = if !*negated && matches!(ctx, Ctx::Where | Ctx::Inner) {
                    Pos::Semi
                } else {
                    Pos::Other
                };
                self.query(subquery, Some(sc), pos);
            }
            _ => {
                self.walk(e, sc);
            }
        }
    }

    /// `left = right`: a link between key columns, or a key filter.
    fn equality(&mut self, left: &'a Expr, right: &'a Expr, sc: usize, ctx: &Ctx<'_>) {
        let l = self.key_ref(left, sc);
        let r = self.key_ref(right, sc);
        match (l, r) {
            (Some(a), Some(b)) => self.link(a, b, sc, ctx),
            (Some(a), None) => self.eq_filter(a, std::slice::from_ref(right), sc, ctx),
            (None, Some(b)) => self.eq_filter(b, std::slice::from_ref(left), sc, ctx),
            (None, None) => {}
        }
        self.walk(left, sc);
        self.walk(right, sc);
    }

    fn eq_filter(&mut self, k: Res, values: &[Expr], sc: usize, ctx: &Ctx<'_>) {
        if values.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(values.len());
        for v in values {
            match value_source(v, self.base) {
                ValueSource::Other => return,
                s => out.push(s),
            }
        }
        self.filter(k, KeyFilter::Eq(out), sc, ctx);
    }

    fn in_subquery(
        &mut self,
        expr: &'a Expr,
        q: &'a Query,
        negated: bool,
        sc: usize,
        ctx: &Ctx<'_>,
    ) {
        let a = self.key_ref(expr, sc);
        self.walk(expr, sc);
        let semi = !negated && matches!(ctx, Ctx::Where | Ctx::Inner);
        let (_, exposed) = self.query(q, Some(sc), if semi { Pos::Semi } else { Pos::Other });
        if let (Some(a), [(_, Some(b))]) = (a, exposed.cols.as_slice()) {
            if exposed.positional {
                let ra = semi && self.restricted(a, sc, ctx);
                self.link_insts(a.inst, *b, ra, true, false);
            }
        }
    }

    /// Whether the rows of `r` are only used where a condition in scope `sc`
    /// (in context `ctx`) holds.
    fn restricted(&self, r: Res, sc: usize, ctx: &Ctx<'_>) -> bool {
        if r.scope == sc {
            match ctx {
                Ctx::Where | Ctx::Inner => true,
                Ctx::Outer { nullable } => nullable.contains(&r.binding),
                Ctx::Full { .. } => false,
            }
        } else {
            matches!(ctx, Ctx::Where | Ctx::Inner) && self.semi_chain(sc, r.scope)
        }
    }

    /// Every scope from `from` up to (not including) `to` is a semi-join.
    fn semi_chain(&self, from: usize, to: usize) -> bool {
        let mut s = from;
        loop {
            if s == to {
                return true;
            }
            if self.scopes[s].pos != Pos::Semi {
                return false;
            }
            match self.scopes[s].parent {
                Some(p) => s = p,
                None => return false,
            }
        }
    }

    fn filter(&mut self, k: Res, f: KeyFilter, sc: usize, ctx: &Ctx<'_>) {
        if !self.restricted(k, sc, ctx) {
            return;
        }
        let Some(t) = self.insts[k.inst].sharded() else {
            return;
        };
        if matches!(f, KeyFilter::Range { .. }) && !t.ranged {
            return;
        }
        self.insts[k.inst].filters.push(f);
    }

    fn link(&mut self, a: Res, b: Res, sc: usize, ctx: &Ctx<'_>) {
        if a.inst == b.inst {
            return;
        }
        if let Ctx::Full { left, right } = ctx {
            let across = a.scope == sc
                && b.scope == sc
                && ((left.contains(&a.binding) && right.contains(&b.binding))
                    || (right.contains(&a.binding) && left.contains(&b.binding)));
            if across {
                self.link_insts(a.inst, b.inst, false, false, true);
            }
            return;
        }
        let ra = self.restricted(a, sc, ctx);
        let rb = self.restricted(b, sc, ctx);
        self.link_insts(a.inst, b.inst, ra, rb, false);
    }

    /// Co-locates x and y; `rx`: x's rows are only used together with
    /// matching y rows (edge x → y), and vice versa.
    fn link_insts(&mut self, x: usize, y: usize, rx: bool, ry: bool, force: bool) {
        if x == y || !(rx || ry || force) {
            return;
        }
        let (fx, fy) = (self.find(x), self.find(y));
        if fx != fy {
            self.uf[fx] = fy;
        }
        if rx {
            self.edges.push((x, y));
        }
        if ry {
            self.edges.push((y, x));
        }
        self.mark_correlated(x, y);
        self.mark_correlated(y, x);
    }

    fn mark_correlated(&mut self, from: usize, to: usize) {
        let target = self.insts[to].scope;
        let mut s = Some(self.insts[from].scope);
        while let Some(id) = s {
            if self.is_ancestor_or_self(id, target) {
                return;
            }
            self.scopes[id].correlated = true;
            s = self.scopes[id].parent;
        }
    }

    fn is_ancestor_or_self(&self, anc: usize, mut s: usize) -> bool {
        loop {
            if s == anc {
                return true;
            }
            match self.scopes[s].parent {
                Some(p) => s = p,
                None => return false,
            }
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.uf[x] != x {
            self.uf[x] = self.uf[self.uf[x]];
            x = self.uf[x];
        }
        x
    }

    // ----- column resolution ----------------------------------------------

    /// `e` (casts and parentheses stripped) names the key column of a
    /// sharded instance (directly or through a derived table / CTE).
    fn key_ref(&self, e: &Expr, sc: usize) -> Option<Res> {
        match strip(e) {
            Expr::Identifier(id) => {
                let col = ident_name(id);
                (0..self.scopes[sc].bindings.len()).find_map(|b| self.binding_key(sc, b, &col))
            }
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
                let n = parts.len();
                let col = ident_name(&parts[n - 1]);
                let table = ident_name(&parts[n - 2]);
                let schema = (n >= 3).then(|| ident_name(&parts[n - 3]));
                let mut s = Some(sc);
                while let Some(id) = s {
                    let scope = &self.scopes[id];
                    if let Some(bi) = scope
                        .bindings
                        .iter()
                        .position(|b| b.name == table && (schema.is_none() || b.schema == schema))
                    {
                        return self.binding_key(id, bi, &col);
                    }
                    s = scope.parent;
                }
                None
            }
            _ => None,
        }
    }

    // ----- expressions -----------------------------------------------------

    /// Finds the subqueries in `e` (analysed as scopes below `sc`, position
    /// Other) and reports aggregates and window functions at this level.
    fn walk(&mut self, e: &'a Expr, sc: usize) -> Flags {
        let mut flags = Flags::default();
        let mut stack: Vec<&'a Expr> = vec![e];
        while let Some(e) = stack.pop() {
            if self.opaque {
                break;
            }
            match e {
                Expr::Identifier(_)
                | Expr::CompoundIdentifier(_)
                | Expr::Value(_)
                | Expr::TypedString(_)
                | Expr::Wildcard(_)
                | Expr::QualifiedWildcard(..)
                | Expr::MatchAgainst { .. } => {}
                Expr::CompoundFieldAccess { root, access_chain } => {
                    stack.push(root);
                    for a in access_chain {
                        match a {
                            AccessExpr::Dot(x) => stack.push(x),
                            AccessExpr::Subscript(Subscript::Index { index }) => stack.push(index),
                            AccessExpr::Subscript(Subscript::Slice {
                                lower_bound,
                                upper_bound,
                                stride,
                            }) => {
                                stack.extend(lower_bound.iter());
                                stack.extend(upper_bound.iter());
                                stack.extend(stride.iter());
                            }
                        }
                    }
                }
                Expr::JsonAccess { value, path } => {
                    stack.push(value);
                    for p in &path.path {
                        if let JsonPathElem::Bracket { key } | JsonPathElem::ColonBracket { key } =
                            p
                        {
                            stack.push(key);
                        }
                    }
                }
                Expr::IsFalse(x)
                | Expr::IsNotFalse(x)
                | Expr::IsTrue(x)
                | Expr::IsNotTrue(x)
                | Expr::IsNull(x)
                | Expr::IsNotNull(x)
                | Expr::IsUnknown(x)
                | Expr::IsNotUnknown(x)
                | Expr::Nested(x)
                | Expr::OuterJoin(x)
                | Expr::Prior(x) => stack.push(x),
                Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                    stack.push(a);
                    stack.push(b);
                }
                Expr::IsJson { expr, .. } | Expr::IsNormalized { expr, .. } => stack.push(expr),
                Expr::In { expr, target, .. } => {
                    stack.push(expr);
                    match target {
                        InTarget::List(l) => stack.extend(l.iter()),
                        InTarget::Subquery(q) => {
                            self.query(q, Some(sc), Pos::Other);
                        }
                        InTarget::Unnest(x) => stack.push(x),
                        InTarget::Table { .. } => self.opaque = true,
                    }
                }
                Expr::Between {
                    expr, low, high, ..
                } => {
                    stack.push(expr);
                    stack.push(low);
                    stack.push(high);
                }
                Expr::BinaryOp { left, right, .. }
                | Expr::AnyOp { left, right, .. }
                | Expr::AllOp { left, right, .. } => {
                    stack.push(right);
                    stack.push(left);
                }
                Expr::Like {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::ILike {
                    expr,
                    pattern,
                    escape_char,
                    ..
                }
                | Expr::SimilarTo {
                    expr,
                    pattern,
                    escape_char,
                    ..
                } => {
                    stack.push(expr);
                    stack.push(pattern);
                    stack.extend(escape_char.as_deref());
                }
                Expr::RLike { expr, pattern, .. } => {
                    stack.push(expr);
                    stack.push(pattern);
                }
                Expr::UnaryOp { expr, .. }
                | Expr::Cast { expr, .. }
                | Expr::Extract { expr, .. }
                | Expr::Ceil { expr, .. }
                | Expr::Floor { expr, .. }
                | Expr::Collate { expr, .. }
                | Expr::Named { expr, .. } => stack.push(expr),
                Expr::Prefixed { value, .. } => stack.push(value),
                Expr::Convert { expr, styles, .. } => {
                    stack.push(expr);
                    stack.extend(styles.iter());
                }
                Expr::AtTimeZone {
                    timestamp,
                    time_zone,
                } => {
                    stack.push(timestamp);
                    stack.push(time_zone);
                }
                Expr::Position { expr, r#in } => {
                    stack.push(expr);
                    stack.push(r#in);
                }
                Expr::Substring {
                    expr,
                    substring_from,
                    substring_for,
                    ..
                } => {
                    stack.push(expr);
                    stack.extend(substring_from.as_deref());
                    stack.extend(substring_for.as_deref());
                }
                Expr::Trim {
                    expr,
                    trim_what,
                    trim_characters,
                    ..
                } => {
                    stack.push(expr);
                    stack.extend(trim_what.as_deref());
                    if let Some(c) = trim_characters {
                        stack.extend(c.iter());
                    }
                }
                Expr::Overlay {
                    expr,
                    overlay_what,
                    overlay_from,
                    overlay_for,
                } => {
                    stack.push(expr);
                    stack.push(overlay_what);
                    stack.push(overlay_from);
                    stack.extend(overlay_for.as_deref());
                }
                Expr::Function(f) => self.function(f, sc, &mut stack, &mut flags),
                Expr::Case {
                    operand,
                    conditions,
                    else_result,
                    ..
                } => {
                    stack.extend(operand.as_deref());
                    for c in conditions {
                        stack.push(&c.condition);
                        stack.push(&c.result);
                    }
                    stack.extend(else_result.as_deref());
                }
                Expr::Exists { subquery, .. } => {
                    self.query(subquery, Some(sc), Pos::Other);
                }
                Expr::Subquery(q) => {
                    self.query(q, Some(sc), Pos::Other);
                }
                Expr::GroupingSets(v) | Expr::Cube(v) | Expr::Rollup(v) => {
                    for inner in v {
                        stack.extend(inner.iter());
                    }
                }
                Expr::Tuple(v) => stack.extend(v.iter()),
                Expr::Struct { values, .. } => stack.extend(values.iter()),
                Expr::Array(a) => stack.extend(a.elem.iter()),
                Expr::Interval(i) => stack.push(&i.value),
                Expr::Lambda(l) => stack.push(&l.body),
                Expr::MemberOf(m) => {
                    stack.push(&m.value);
                    stack.push(&m.array);
                }
                _ => self.opaque = true,
            }
        }
        flags
    }

    fn function(
        &mut self,
        f: &'a Function,
        sc: usize,
        stack: &mut Vec<&'a Expr>,
        flags: &mut Flags,
    ) {
        let name = f
            .name
            .0
            .last()
            .and_then(|p| match p {
                ObjectNamePart::Identifier(id) => Some(ident_name(id)),
                ObjectNamePart::Function(_) => None,
            })
            .unwrap_or_default();
        let mut distinct_args = false;
        for args in [&f.parameters, &f.args] {
            match args {
                FunctionArguments::None => {}
                FunctionArguments::Subquery(q) => {
                    self.query(q, Some(sc), Pos::Other);
                }
                FunctionArguments::List(l) => {
                    distinct_args |= matches!(
                        l.duplicate_treatment,
                        Some(sqlparser::ast::DuplicateTreatment::Distinct)
                    );
                    for a in &l.args {
                        let (FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg)) = a;
                        if let FunctionArgExpr::Expr(e) = arg {
                            stack.push(e);
                        }
                    }
                    for c in &l.clauses {
                        match c {
                            FunctionArgumentClause::OrderBy(v) => {
                                stack.extend(v.iter().map(|o| &o.expr));
                            }
                            FunctionArgumentClause::Limit(e) | FunctionArgumentClause::Where(e) => {
                                stack.push(e)
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        stack.extend(f.filter.as_deref());
        stack.extend(f.within_group.iter().map(|o| &o.expr));
        match &f.over {
            Some(w) => {
                flags.window = true;
                if let WindowType::WindowSpec(spec) = w {
                    stack.extend(spec.partition_by.iter());
                    stack.extend(spec.order_by.iter().map(|o| &o.expr));
                }
            }
            None => {
                if f.filter.is_some()
                    || !f.within_group.is_empty()
                    || distinct_args
                    || AGGREGATES.contains(&name.as_str())
                {
                    flags.aggregate = true;
                }
            }
        }
    }

    // ----- decision --------------------------------------------------------

    fn finish(mut self) -> Option<ShardPlan> {
        if self.opaque {
            return None;
        }
        if let Some(u) = self.unsupported.take() {
            return Some(ShardPlan::Unsupported { construct: u });
        }
        if self.select_into {
            return Some(ShardPlan::Broadcast);
        }
        Some(self.decide())
    }

    fn decide(&mut self) -> ShardPlan {
        let unsupported = |construct: String| ShardPlan::Unsupported { construct };
        let sharded: Vec<usize> = (0..self.insts.len())
            .filter(|&i| self.insts[i].sharded().is_some())
            .collect();
        let write_of = |k: fn(&Kind) -> bool| {
            self.writes
                .iter()
                .copied()
                .find(|&w| k(&self.insts[w].kind))
        };
        let ref_write = write_of(|k| matches!(k, Kind::Reference));
        // An unsharded table's rows are on the default shard only.
        let unsharded = self
            .insts
            .iter()
            .position(|i| matches!(i.kind, Kind::Unsharded));
        let unsharded_write = write_of(|k| matches!(k, Kind::Unsharded));
        let sharded_write = write_of(|k| matches!(k, Kind::Sharded(_)));
        if let Some(r) = ref_write {
            if let Some(s) = sharded_write {
                return unsupported(format!(
                    "writes to reference table {} and sharded table {} in one statement",
                    self.insts[r].display(),
                    self.insts[s].display()
                ));
            }
            if let Some(&s) = sharded.first() {
                return unsupported(format!(
                    "write to reference table {} using sharded table {}",
                    self.insts[r].display(),
                    self.insts[s].display()
                ));
            }
            if let Some(u) = unsharded_write {
                return unsupported(format!(
                    "writes to reference table {} and unsharded table {} in one statement",
                    self.insts[r].display(),
                    self.insts[u].display()
                ));
            }
            if let Some(u) = unsharded {
                return unsupported(format!(
                    "write to reference table {} using unsharded table {}",
                    self.insts[r].display(),
                    self.insts[u].display()
                ));
            }
            return ShardPlan::ReferenceWrite;
        }
        if let Some(u) = unsharded_write {
            if let Some(s) = sharded_write {
                return unsupported(format!(
                    "writes to sharded table {} and unsharded table {} in one statement",
                    self.insts[s].display(),
                    self.insts[u].display()
                ));
            }
            if let Some(&s) = sharded.first() {
                return unsupported(format!(
                    "write to unsharded table {} using sharded table {}",
                    self.insts[u].display(),
                    self.insts[s].display()
                ));
            }
            return ShardPlan::Unsharded;
        }
        let Some(&first) = sharded.first() else {
            let reference = self.insts.iter().any(|i| matches!(i.kind, Kind::Reference));
            return if reference && unsharded.is_none() {
                ShardPlan::ReferenceRead
            } else {
                ShardPlan::Unsharded
            };
        };
        if let Some(u) = unsharded {
            return unsupported(format!(
                "unsharded table {} (its rows are on the default shard only) with sharded table {}",
                self.insts[u].display(),
                self.insts[first].display()
            ));
        }
        // Branches of a top-level set operation are separate queries: each
        // must be co-located within itself, and together they run on
        // every shard.
        let branches: Vec<Option<usize>> = sharded
            .iter()
            .map(|&i| {
                self.root_selects
                    .iter()
                    .position(|&r| self.is_ancestor_or_self(r, self.insts[i].scope))
            })
            .collect();
        let several_branches =
            self.root_selects.len() > 1 && branches.iter().any(|b| *b != branches[0]);
        let mut stranger = None;
        for (n, &i) in sharded.iter().enumerate() {
            let lead = if several_branches {
                let m = branches.iter().position(|b| *b == branches[n]).unwrap_or(0);
                sharded[m]
            } else {
                first
            };
            if self.find(i) != self.find(lead) {
                stranger = Some((lead, i));
                break;
            }
        }
        if let Some((first, other)) = stranger {
            let (sa, sb) = (self.insts[first].scope, self.insts[other].scope);
            let nested =
                sa != sb && (self.is_ancestor_or_self(sa, sb) || self.is_ancestor_or_self(sb, sa));
            let (a, b) = (self.insts[first].display(), self.insts[other].display());
            return unsupported(if nested {
                format!("{a} and {b} (in a subquery) not joined on their shard keys")
            } else {
                format!("join of {a} and {b} not on their shard keys")
            });
        }
        let keyed = if several_branches {
            None
        } else {
            self.keyed(&sharded)
        };
        let plan = match keyed {
            Some((i, filter)) => ShardPlan::Keyed {
                table: (self.insts[i].schema.clone(), self.insts[i].name.clone()),
                filter,
            },
            None => ShardPlan::NoKey {
                table: self.insts[sharded_write.unwrap_or(first)].display(),
            },
        };
        let single =
            matches!(&plan, ShardPlan::Keyed { filter: KeyFilter::Eq(v), .. } if v.len() == 1);
        if !single {
            if self.keeps_unsharded {
                return unsupported(
                    "an outer join that keeps rows of a reference table unmatched by a sharded table"
                        .into(),
                );
            }
            if let Some(msg) = self.cross_shard_combining(&sharded) {
                return unsupported(msg);
            }
        }
        plan
    }

    /// The instance whose filter restricts the whole (single) group, and the
    /// filter: equality preferred over ranges, then statement order.
    fn keyed(&self, group: &[usize]) -> Option<(usize, KeyFilter)> {
        let candidates: Vec<(usize, KeyFilter)> = group
            .iter()
            .filter_map(|&i| combine_filters(&self.insts[i].filters).map(|f| (i, f)))
            .collect();
        let eq_first = candidates
            .iter()
            .filter(|(_, f)| matches!(f, KeyFilter::Eq(_)))
            .chain(
                candidates
                    .iter()
                    .filter(|(_, f)| matches!(f, KeyFilter::Range { .. })),
            );
        for (i, f) in eq_first {
            let reach = self.reaching(*i);
            if group.iter().all(|g| reach.contains(g)) {
                return Some((*i, f.clone()));
            }
        }
        None
    }

    /// Instances that reach `target` along edges (including itself).
    fn reaching(&self, target: usize) -> HashSet<usize> {
        let mut seen = HashSet::from([target]);
        let mut todo = vec![target];
        while let Some(t) = todo.pop() {
            for &(from, to) in &self.edges {
                if to == t && seen.insert(from) {
                    todo.push(from);
                }
            }
        }
        seen
    }

    /// A subquery over a sharded table that combines rows across shards.
    fn cross_shard_combining(&self, sharded: &[usize]) -> Option<String> {
        for (si, scope) in self.scopes.iter().enumerate() {
            if self.root_selects.contains(&si) || scope.correlated {
                continue;
            }
            let label = scope.limiting.or(if scope.partitioned {
                None
            } else {
                scope.grouping
            });
            let Some(label) = label else { continue };
            let inside = sharded
                .iter()
                .find(|&&i| self.is_ancestor_or_self(si, self.insts[i].scope));
            if let Some(&i) = inside {
                return Some(if scope.pos == Pos::Root {
                    format!(
                        "{label} of queries over {} across shards",
                        self.insts[i].display()
                    )
                } else {
                    format!(
                        "{label} in a subquery over {} across shards",
                        self.insts[i].display()
                    )
                });
            }
        }
        None
    }
}

/// One instance's filters combined: the first equality (narrowed to the
/// intersection with later all-literal equalities when both are all
/// literals and the intersection is not empty), else the ranges merged
/// (first lower and first upper bound).
fn combine_filters(filters: &[KeyFilter]) -> Option<KeyFilter> {
    let all_literal = |v: &[ValueSource]| v.iter().all(|s| matches!(s, ValueSource::Literal(_)));
    let mut eq: Option<Vec<ValueSource>> = None;
    for f in filters {
        if let KeyFilter::Eq(v) = f {
            match &mut eq {
                None => eq = Some(v.clone()),
                Some(cur) => {
                    if all_literal(cur) && all_literal(v) {
                        let inter: Vec<ValueSource> =
                            cur.iter().filter(|s| v.contains(s)).cloned().collect();
                        if !inter.is_empty() {
                            *cur = inter;
                        }
                    }
                }
            }
        }
    }
    if let Some(v) = eq {
        return Some(KeyFilter::Eq(v));
    }
    let (mut lower, mut upper) = (None, None);
    for f in filters {
        if let KeyFilter::Range { lower: l, upper: u } = f {
            if lower.is_none() {
                lower = l.clone();
            }
            if upper.is_none() {
                upper = u.clone();
            }
        }
    }
    (lower.is_some() || upper.is_some()).then_some(KeyFilter::Range { lower, upper })
}
