//! A sharded table read whole so that a statement the shards cannot run
//! over their own rows becomes one they can: a join not on the shard keys
//! (`orders o JOIN events e ON e.value = o.qty`), an unsharded table read
//! with a sharded one, reference rows kept by an outer join or filtered by
//! `EXISTS` over a sharded table.
//!
//! The proxy gathers the table's rows from every shard (only the columns
//! the statement names, filtered by the statement's own conditions on that
//! table alone), then runs the statement with the table replaced by those
//! rows (`(SELECT * FROM unnest($a, $b, ...) AS __shardgate_rows(...)) AS
//! alias`, see [`crate::materialize::outer_sql`]). The rows stand where the
//! table stood, complete on every server: when the rest of the statement
//! still reads a sharded table, every shard runs it over its own rows and
//! the results merge as for any statement (a broadcast join); otherwise it
//! runs on the default shard. Postgres evaluates the join itself.
//!
//! [`candidates`] lists each table of the statement's top-level `FROM` that
//! can be gathered so; the caller picks one (the smallest) and builds the
//! gathering read with [`Gather::inner_sql`] once it knows the table's
//! columns.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, BinaryOperator, Expr, InTarget, JoinConstraint, JoinOperator, Select,
    SetExpr, Statement, TableFactor, Visit, VisitMut, Visitor, VisitorMut,
};
use sqlparser::tokenizer::Location;

use crate::lexer::{Lexer, TokenKind};
use crate::materialize::ROWS;
use crate::shard::{ident_name, object_name, ShardPlan, TableLookup, AGGREGATES};

/// One sharded table of a statement that can be gathered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    /// The table as written (schema-qualified or not).
    pub table: String,
    /// The name the statement reads it under (its alias, or the table's
    /// name), as written.
    pub binding: String,
    /// The statement's conditions on this table alone, AND-ed; the
    /// gathering read applies them (the statement keeps them too).
    pub filter: Option<String>,
    /// The statement with the table replaced by `(SELECT * FROM
    /// __shardgate_rows) AS binding` (see [`crate::materialize::outer_sql`]).
    pub outer: String,
    /// Every column is needed: a wildcard, a whole-row reference or a
    /// `NATURAL` join.
    pub all_columns: bool,
    /// The statement's words (unquoted ones lower-cased): a column named by
    /// none of them is not needed.
    pub words: HashSet<String>,
}

impl Gather {
    /// The columns of `table_columns` (the table's, in order) to gather.
    pub fn needed<'c>(&self, table_columns: &'c [String]) -> Vec<&'c String> {
        let mut out: Vec<&String> = table_columns
            .iter()
            .filter(|c| self.all_columns || self.words.contains(c.as_str()))
            .collect();
        if out.is_empty() {
            // unnest needs one column even when the statement reads none.
            out.extend(table_columns.first());
        }
        out
    }

    /// The gathering read over `columns`.
    pub fn inner_sql(&self, columns: &[&String]) -> String {
        let cols: Vec<String> = columns.iter().map(|c| crate::quote_ident(c)).collect();
        let mut sql = format!(
            "SELECT {} FROM {} AS {}",
            cols.join(", "),
            self.table,
            self.binding
        );
        if let Some(f) = &self.filter {
            sql.push_str(" WHERE ");
            sql.push_str(f);
        }
        sql
    }
}

/// One query's sharded tables, in statement order, and its words.
struct TablesRead {
    statement: Statement,
    factors: Vec<(Location, TableFactor)>,
    words: HashSet<String>,
}

impl TablesRead {
    /// `sql` when it is one query that locks no rows (gathered rows
    /// cannot be locked: `FOR UPDATE` is not gathered).
    fn of(sql: &str, tables: &dyn TableLookup) -> Option<TablesRead> {
        let mut statements = crate::sql_parse::parse_statements(sql).ok()?;
        if statements.len() != 1
            || !matches!(&statements[0], Statement::Query(q) if q.locks.is_empty())
        {
            return None;
        }
        let statement = statements.pop()?;
        let mut found = ShardedFactors {
            tables,
            factors: Vec::new(),
        };
        let _ = statement.visit(&mut found);
        found.factors.sort_by_key(|(at, _)| (at.line, at.column));
        Some(TablesRead {
            statement,
            factors: found.factors,
            words: statement_words(sql),
        })
    }

    /// The top-level `SELECT` (none under a set operation).
    fn root(&self) -> Option<&Select> {
        match &self.statement {
            Statement::Query(q) => match q.body.as_ref() {
                SetExpr::Select(select) => Some(select.as_ref()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The sharded tables of `sql` (a query the shards cannot run as it is,
/// or whose answer they cannot merge) whose gathering makes the statement
/// one the shards (or the default shard) can run, in statement order.
pub fn candidates(sql: &str, tables: &dyn TableLookup) -> Vec<Gather> {
    let Some(tables_read) = TablesRead::of(sql, tables) else {
        return Vec::new();
    };
    let (root, words) = (tables_read.root(), &tables_read.words);
    let mut out = Vec::new();
    for (at, factor) in &tables_read.factors {
        let Some(g) = table_gather(factor, *at, root, (sql, words)) else {
            continue;
        };
        let Some(outer) = replaced(sql, *at, &g.binding, tables) else {
            continue;
        };
        if !runnable(&outer, tables) {
            continue;
        }
        out.push(Gather { outer, ..g });
    }
    out
}

/// Every sharded table of `sql` (a query) gathered, so that the statement
/// reads none and one server answers it: the tables in statement order,
/// and the statement with each replaced by a placeholder (in the same
/// order). For what no single table's gathering answers (a `FULL JOIN` of
/// two sharded tables not on their keys, a set operation over two).
pub fn gather_all(sql: &str, tables: &dyn TableLookup) -> Option<(Vec<Gather>, String)> {
    let tables_read = TablesRead::of(sql, tables)?;
    let (root, words) = (tables_read.root(), &tables_read.words);
    let each: Vec<(Location, Gather)> = tables_read
        .factors
        .iter()
        .map(|(at, f)| table_gather(f, *at, root, (sql, words)).map(|g| (*at, g)))
        .collect::<Option<_>>()?;
    if each.len() < 2 {
        return None;
    }
    let at: Vec<(Location, &str)> = each.iter().map(|(l, g)| (*l, g.binding.as_str())).collect();
    let outer = replaced_all(sql, &at, tables)?;
    if !matches!(
        crate::shard::plan(&crate::materialize::probe_sql(&outer), tables),
        ShardPlan::Unsharded | ShardPlan::NoTable | ShardPlan::ReferenceRead
    ) {
        return None;
    }
    Some((each.into_iter().map(|(_, g)| g).collect(), outer))
}

/// What gathering the sharded table `factor` (named at `at`) reads; its
/// `outer` is left empty.
fn table_gather(
    factor: &TableFactor,
    at: Location,
    root: Option<&Select>,
    (sql, words): (&str, &HashSet<String>),
) -> Option<Gather> {
    let TableFactor::Table { name, alias, .. } = factor else {
        return None;
    };
    let (_, table) = object_name(name)?;
    if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
        return None;
    }
    let (binding, bound) = match alias {
        Some(a) => (a.name.to_string(), ident_name(&a.name)),
        None => (crate::quote_ident(&table), table.clone()),
    };
    let filter = root
        .map(|select| own_filter(select, at, &bound))
        .unwrap_or_default();
    Some(Gather {
        table: name.to_string(),
        binding,
        filter: (!filter.is_empty()).then(|| filter.join(" AND ")),
        outer: String::new(),
        all_columns: words.contains("natural") || whole_rows(sql, &bound),
        words: words.clone(),
    })
}

/// Where a table is named in the statement's text: it tells the table's
/// occurrences apart.
fn location(f: &TableFactor) -> Option<Location> {
    match f {
        TableFactor::Table { name, .. } => name.0.last()?.as_ident().map(|i| i.span.start),
        _ => None,
    }
}

/// Whether `f` names a sharded table (not a function call).
fn is_sharded_table(f: &TableFactor, tables: &dyn TableLookup) -> bool {
    match f {
        TableFactor::Table {
            name, args: None, ..
        } => object_name(name)
            .is_some_and(|(schema, table)| tables.sharded(schema.as_deref(), &table).is_some()),
        _ => false,
    }
}

/// The sharded tables of a statement, with where each is named.
struct ShardedFactors<'t> {
    tables: &'t dyn TableLookup,
    factors: Vec<(Location, TableFactor)>,
}

impl Visitor for ShardedFactors<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, f: &TableFactor) -> ControlFlow<()> {
        if is_sharded_table(f, self.tables) {
            if let Some(at) = location(f) {
                self.factors.push((at, f.clone()));
            }
        }
        ControlFlow::Continue(())
    }
}

/// The conditions of the statement on the table named at `at`, when it is
/// one of the top-level `select`'s, alone: those of its own `ON` when its join does not keep it
/// unmatched, and those of `WHERE` when no join keeps rows unmatched.
fn own_filter(select: &Select, at: Location, bound: &str) -> Vec<String> {
    let outer_joins = select
        .from
        .iter()
        .any(|twj| twj.joins.iter().any(|j| !is_inner(&j.join_operator)));
    let mut filter = Vec::new();
    for twj in &select.from {
        let position = if location(&twj.relation) == Some(at) {
            Some(None)
        } else {
            twj.joins
                .iter()
                .find(|j| location(&j.relation) == Some(at))
                .map(|j| Some(&j.join_operator))
        };
        let Some(op) = position else {
            continue;
        };
        if let Some(
            op @ (JoinOperator::Join(_)
            | JoinOperator::Inner(_)
            | JoinOperator::Left(_)
            | JoinOperator::LeftOuter(_)),
        ) = op
        {
            if let Some(JoinConstraint::On(e)) = constraint(op) {
                filter.extend(own_conditions(e, bound));
            }
        }
        if !outer_joins {
            if let Some(w) = &select.selection {
                filter.extend(own_conditions(w, bound));
            }
        }
    }
    filter
}

/// The constraint of a join operator.
fn constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::CrossJoin(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c) => Some(c),
        _ => None,
    }
}

/// Whether a join keeps no unmatched rows.
fn is_inner(op: &JoinOperator) -> bool {
    matches!(
        op,
        JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
    )
}

/// `sql` with the sharded table named at `at` replaced by the
/// materialized rows' placeholder.
fn replaced(sql: &str, at: Location, binding: &str, tables: &dyn TableLookup) -> Option<String> {
    replaced_all(sql, &[(at, binding)], tables)
}

/// `sql` with each sharded table named at one of `at` replaced by the
/// materialized rows' placeholder under its binding.
fn replaced_all(sql: &str, at: &[(Location, &str)], tables: &dyn TableLookup) -> Option<String> {
    let mut statements = crate::sql_parse::parse_statements(sql).ok()?;
    let statement = statements.first_mut()?;
    let mut replace = Replace {
        tables,
        placeholders: at
            .iter()
            .map(|(l, b)| Some((*l, placeholder_factor(b)?)))
            .collect::<Option<Vec<_>>>()?,
    };
    let _ = statement.visit(&mut replace);
    replace
        .placeholders
        .is_empty()
        .then(|| statement.to_string())
}

/// Replaces each sharded table named at a location of `placeholders` by
/// its placeholder.
struct Replace<'t> {
    tables: &'t dyn TableLookup,
    placeholders: Vec<(Location, TableFactor)>,
}

impl VisitorMut for Replace<'_> {
    type Break = ();

    fn pre_visit_table_factor(&mut self, f: &mut TableFactor) -> ControlFlow<()> {
        if is_sharded_table(f, self.tables) {
            let at = location(f);
            if let Some(i) = self.placeholders.iter().position(|(l, _)| Some(*l) == at) {
                *f = self.placeholders.swap_remove(i).1;
            }
        }
        ControlFlow::Continue(())
    }
}

/// `(SELECT * FROM __shardgate_rows) AS binding`, parsed.
fn placeholder_factor(binding: &str) -> Option<TableFactor> {
    let sql = format!("SELECT * FROM (SELECT * FROM {ROWS}) AS {binding}");
    let mut statements = crate::sql_parse::parse_statements(&sql).ok()?;
    let Statement::Query(query) = statements.pop()? else {
        return None;
    };
    let SetExpr::Select(select) = *query.body else {
        return None;
    };
    select.from.into_iter().next().map(|twj| twj.relation)
}

/// Whether the shards can run `outer` once its placeholder reads
/// parameters: its shard plan is not refused, and when it runs on several
/// shards its results merge.
fn runnable(outer: &str, tables: &dyn TableLookup) -> bool {
    let sql = crate::materialize::probe_sql(outer);
    match crate::shard::plan(&sql, tables) {
        ShardPlan::Unsharded | ShardPlan::NoTable | ShardPlan::ReferenceRead => true,
        ShardPlan::Keyed { .. } | ShardPlan::NoKey { .. } => {
            crate::merge_plan::plan_merge(&sql, tables).is_ok()
        }
        _ => false,
    }
}

/// The top-level AND-ed conditions of `e` that read only columns of
/// `binding` (qualified), no subquery, aggregate, window or volatile
/// function, rendered.
fn own_conditions(e: &Expr, binding: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(inner) => stack.push(inner),
            _ if reads_only(e, binding) => out.push(format!("({e})")),
            _ => {}
        }
    }
    out
}

/// Functions whose value changes between calls: a condition calling one
/// is not evaluated twice.
const VOLATILE: &[&str] = &[
    "random",
    "nextval",
    "setval",
    "currval",
    "lastval",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v4",
    "setseed",
    "txid_current",
];

/// Whether `e` reads columns of `binding` and nothing else.
fn reads_only(e: &Expr, binding: &str) -> bool {
    let mut reads = false;
    let flow = visit_expressions(e, |x| {
        let ok = match x {
            Expr::Identifier(_) => false,
            Expr::CompoundIdentifier(parts) => {
                let own = parts.len() == 2 && ident_name(&parts[0]) == binding;
                reads |= own;
                own
            }
            Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::In {
                target: InTarget::Subquery(_),
                ..
            } => false,
            Expr::Function(f) => {
                let name = f.name.to_string().to_ascii_lowercase();
                let base = name.rsplit('.').next().unwrap_or(&name);
                f.over.is_none()
                    && f.filter.is_none()
                    && f.within_group.is_empty()
                    && !AGGREGATES.contains(&base)
                    && !VOLATILE.contains(&base)
            }
            _ => true,
        };
        if ok {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    });
    reads && flow.is_continue()
}

/// The words of `sql`: unquoted ones lower-cased, quoted ones as written.
fn statement_words(sql: &str) -> HashSet<String> {
    Lexer::new(sql)
        .filter_map(|t| match t.kind {
            TokenKind::Word => Some(t.text.to_ascii_lowercase()),
            TokenKind::QuotedIdent => Some(t.text.trim_matches('"').replace("\"\"", "\"")),
            _ => None,
        })
        .collect()
}

/// Whether `sql` may read whole rows of `binding`: a `*` that is not a
/// multiplication or `count(*)`, or the name used other than before a `.`
/// more than once (its declaration is one use).
fn whole_rows(sql: &str, binding: &str) -> bool {
    let tokens: Vec<_> = Lexer::new(sql)
        .filter(|t| t.kind != TokenKind::BlockComment)
        .collect();
    let mut bare_uses = 0;
    for (i, t) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1);
        match t.kind {
            TokenKind::Word | TokenKind::QuotedIdent => {
                let name = match t.kind {
                    TokenKind::Word => t.text.to_ascii_lowercase(),
                    _ => t.text.trim_matches('"').replace("\"\"", "\""),
                };
                if name == binding && !next.is_some_and(|n| n.text.starts_with('.')) {
                    bare_uses += 1;
                }
            }
            TokenKind::Punct if t.text.contains('*') => {
                let prev = i.checked_sub(1).map(|p| tokens[p]);
                let after_operand = prev.is_some_and(|p| {
                    matches!(
                        p.kind,
                        TokenKind::Word
                            | TokenKind::QuotedIdent
                            | TokenKind::Number
                            | TokenKind::Param
                            | TokenKind::String
                    ) && !p.text.eq_ignore_ascii_case("select")
                        && !p.text.eq_ignore_ascii_case("distinct")
                        && !p.text.eq_ignore_ascii_case("all")
                });
                let counted = t.text.trim() == "(*)"
                    || (t.text.trim() == "*"
                        && prev.is_some_and(|p| p.text.ends_with('('))
                        && next.is_some_and(|n| n.text.starts_with(')')));
                let multiplied = t.text.trim() == "*" && after_operand
                    || prev.is_some_and(|p| p.text.ends_with(')') && t.text.trim() == "*");
                if !(counted || multiplied) {
                    return true;
                }
            }
            _ => {}
        }
    }
    bare_uses > 1
}

#[cfg(test)]
mod tests;
