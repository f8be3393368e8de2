//! `INSERT INTO <sharded table> ... SELECT ...`: where the source query is
//! in the text, what its output columns are, and whether the statement can
//! run on each shard as it is (the source rows and the rows they become
//! live on the same shard: *co-located pushdown*). Otherwise the proxy runs
//! the source query and sends each row to the shard that owns its key; the
//! rows travel as COPY text ([`copy_text_row`]).

use std::ops::Range;

use sqlparser::ast::{
    Expr, JoinOperator, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    TableFactor,
};

use super::analyze::{ident_name, object_name};
use super::TableLookup;
use crate::lexer::{closing_paren, Lexer, Token, TokenKind};

/// The parts of an `INSERT ... <query>` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertSource {
    /// Byte span of the source query (`SELECT ...`, `VALUES ...`,
    /// `WITH ...`, `TABLE ...`, `(...)`), without what follows it.
    pub query: Range<usize>,
    /// The statement has an `ON CONFLICT` clause.
    pub on_conflict: bool,
    /// The statement has a `RETURNING` clause.
    pub returning: bool,
    /// Byte span of what follows the query (`ON CONFLICT ...`,
    /// `RETURNING ...`), without a trailing `;`; possibly empty.
    pub rest: Range<usize>,
    /// A `$n` parameter appears in that rest.
    pub rest_has_params: bool,
}

/// Finds the source query of a top-level `INSERT INTO name [AS alias]
/// [(columns)] <query> [ON CONFLICT ...] [RETURNING ...]`. `None` for any
/// other shape (`WITH ... INSERT`, `OVERRIDING ...`, `DEFAULT VALUES`).
pub fn locate_source(sql: &str) -> Option<InsertSource> {
    let toks: Vec<Token<'_>> = Lexer::new(sql)
        .filter(|t| t.kind != TokenKind::BlockComment)
        .collect();
    let mut i = 0;
    let word = |i: usize, k: &str| toks.get(i).is_some_and(|t| t.is_keyword(k));
    if !word(0, "insert") || !word(1, "into") {
        return None;
    }
    i += 2;
    // The table name: name, or schema.name.
    let name = |t: &Token<'_>| matches!(t.kind, TokenKind::Word | TokenKind::QuotedIdent);
    if !toks.get(i).is_some_and(name) {
        return None;
    }
    i += 1;
    while toks.get(i).is_some_and(|t| t.is_punct(".")) && toks.get(i + 1).is_some_and(name) {
        i += 2;
    }
    if word(i, "as") && toks.get(i + 1).is_some_and(name) {
        i += 2;
    }
    if toks.get(i).is_some_and(|t| t.is_punct("(")) {
        // The column list, unless the query itself starts with `(`.
        let starts_query = word(i + 1, "select") || word(i + 1, "with") || word(i + 1, "values");
        if !starts_query {
            i = closing_paren(&toks, i)? + 1;
        }
    }
    let first = toks.get(i)?;
    let starts = ["select", "with", "values", "table"]
        .iter()
        .any(|k| first.is_keyword(k))
        || first.is_punct("(");
    if !starts {
        return None;
    }
    let start = first.offset;
    let mut end = sql.len();
    let mut on_conflict = false;
    let mut returning = false;
    let mut depth = 0usize;
    let mut last = None;
    let mut rest_end = start;
    let mut rest_has_params = false;
    for (j, t) in toks.iter().enumerate().skip(i) {
        if t.is_punct("(") {
            depth += 1;
        } else if t.is_punct(")") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && t.kind == TokenKind::Word {
            let conflict = t.is_keyword("on") && word(j + 1, "conflict");
            if conflict || t.is_keyword("returning") {
                if end == sql.len() {
                    end = t.offset;
                }
                on_conflict |= conflict;
                returning |= t.is_keyword("returning");
            }
        }
        if t.kind != TokenKind::Semicolon {
            if end == sql.len() {
                last = Some(t.offset + t.text.len());
            } else {
                rest_end = t.offset + t.text.len();
                rest_has_params |= t.kind == TokenKind::Param;
            }
        }
    }
    let rest = if end == sql.len() {
        sql.len()..sql.len()
    } else {
        end..rest_end.max(end)
    };
    if end == sql.len() {
        end = last?;
    }
    let query = start..sql[..end].trim_end().len().max(start);
    Some(InsertSource {
        query,
        on_conflict,
        returning,
        rest,
        rest_has_params,
    })
}

/// What one output column of a source query is, as far as co-location goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceColumn {
    /// A plain reference to the shard key column of sharded table
    /// `(schema, name)` (as written in the query).
    Key(Option<String>, String),
    /// Anything else: an expression, a cast, another column.
    Other,
}

/// The output columns of an INSERT's source query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceShape {
    /// One entry per output column of a plain `SELECT` over tables joined
    /// by inner joins.
    Columns(Vec<SourceColumn>),
    /// `SELECT *` (or `t.*`) from one sharded table `(schema, name)`: its
    /// columns, in table order.
    Star(Option<String>, String),
    /// Not a plain `SELECT` (set operation, `VALUES`, `WITH`, `LIMIT`, an
    /// outer join, ...), or text the parser does not take.
    Opaque,
}

/// One `FROM` item: the name it is referred to by, and the sharded table
/// it is (if it is one).
struct Binding {
    name: String,
    table: Option<(Option<String>, String, String)>,
}

/// The shape of `query` (the text of an INSERT's source query). Never
/// panics.
pub fn source_shape(query: &str, tables: &dyn TableLookup) -> SourceShape {
    if query.len() > crate::classify::MAX_PARSE_BYTES {
        return SourceShape::Opaque;
    }
    let toks: Vec<Token<'_>> = Lexer::new(query).collect();
    if crate::classify::too_complex_to_parse(&toks) {
        return SourceShape::Opaque;
    }
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shape_inner(query, tables)))
        .unwrap_or(SourceShape::Opaque)
}

fn shape_inner(query: &str, tables: &dyn TableLookup) -> SourceShape {
    let Ok(mut stmts) = crate::sql_parse::parse_statements(query) else {
        return SourceShape::Opaque;
    };
    let (Some(Statement::Query(q)), true) = (stmts.pop(), stmts.is_empty()) else {
        return SourceShape::Opaque;
    };
    if q.with.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
        return SourceShape::Opaque;
    }
    let SetExpr::Select(s) = &*q.body else {
        return SourceShape::Opaque;
    };
    if matches!(s.distinct, Some(sqlparser::ast::Distinct::On(_))) {
        return SourceShape::Opaque;
    }
    let mut bindings = Vec::new();
    for twj in &s.from {
        let mut factors = vec![&twj.relation];
        for j in &twj.joins {
            if !matches!(
                j.join_operator,
                JoinOperator::Join(_) | JoinOperator::Inner(_) | JoinOperator::CrossJoin(_)
            ) {
                return SourceShape::Opaque;
            }
            factors.push(&j.relation);
        }
        for f in factors {
            bindings.push(binding(f, tables));
        }
    }
    if let [one] = s.projection.as_slice() {
        let star_of = match one {
            SelectItem::Wildcard(_) if bindings.len() == 1 => Some(&bindings[0]),
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), _)
                if bindings.len() == 1 =>
            {
                let (_, q) = object_name(n).unwrap_or_default();
                bindings.iter().find(|b| b.name == q)
            }
            _ => None,
        };
        if let Some(b) = star_of {
            return match &b.table {
                Some((schema, name, _)) => SourceShape::Star(schema.clone(), name.clone()),
                None => SourceShape::Opaque,
            };
        }
    }
    let mut columns = Vec::with_capacity(s.projection.len());
    for item in &s.projection {
        let e = match item {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
            _ => return SourceShape::Opaque,
        };
        columns.push(column_of(e, &bindings));
    }
    SourceShape::Columns(columns)
}

fn binding(f: &TableFactor, tables: &dyn TableLookup) -> Binding {
    let alias = |a: &Option<sqlparser::ast::TableAlias>| a.as_ref().map(|a| ident_name(&a.name));
    match f {
        TableFactor::Table { name, alias: a, .. } => match object_name(name) {
            Some((schema, table)) => {
                let key = tables.sharded(schema.as_deref(), &table).map(|s| s.column);
                Binding {
                    name: alias(a).unwrap_or_else(|| table.clone()),
                    table: key.map(|k| (schema, table, k)),
                }
            }
            None => Binding {
                name: String::new(),
                table: None,
            },
        },
        TableFactor::Derived { alias: a, .. } => Binding {
            name: alias(a).unwrap_or_default(),
            table: None,
        },
        _ => Binding {
            name: String::new(),
            table: None,
        },
    }
}

fn column_of(mut e: &Expr, bindings: &[Binding]) -> SourceColumn {
    while let Expr::Nested(x) = e {
        e = x;
    }
    let (qualifier, column) = match e {
        Expr::Identifier(id) => (None, ident_name(id)),
        Expr::CompoundIdentifier(ids) if ids.len() >= 2 => (
            Some(ident_name(&ids[ids.len() - 2])),
            ident_name(&ids[ids.len() - 1]),
        ),
        _ => return SourceColumn::Other,
    };
    let keyed = bindings.iter().filter(|b| match &qualifier {
        Some(q) => &b.name == q,
        None => b.table.as_ref().is_some_and(|(_, _, k)| *k == column),
    });
    let found: Vec<&Binding> = keyed.collect();
    match found.as_slice() {
        [b] => match &b.table {
            Some((schema, name, key)) if *key == column => {
                SourceColumn::Key(schema.clone(), name.clone())
            }
            _ => SourceColumn::Other,
        },
        _ => SourceColumn::Other,
    }
}

/// Whether a query whose output holds a shard key column (a
/// [`SourceShape`] that is not opaque: no `LIMIT`, set operation or
/// `DISTINCT ON`) gives, shard by shard, exactly the rows it gives over all
/// shards: rows that share a key share a shard, so grouping, `DISTINCT`,
/// `HAVING` and `ORDER BY` stay within a shard. Not so with window
/// functions or grouping sets (`ROLLUP`, `CUBE`, `GROUPING SETS`), which
/// combine rows of different keys (judged by their keywords).
pub fn rows_stay_per_shard(query: &str) -> bool {
    !Lexer::new(query).any(|t| {
        ["over", "window", "rollup", "cube", "grouping"]
            .iter()
            .any(|k| t.is_keyword(k))
    })
}

/// Whether `INSERT INTO target ... <source>` can run on each shard as it
/// is: the source's output column at `key_index` (the target's shard key
/// among the inserted columns) is the shard key of a sharded table
/// co-located with `target` ([`TableLookup::co_located`]). `star_key`: for
/// [`SourceShape::Star`], the position of the source table's key among its
/// columns.
pub fn pushdown(
    shape: &SourceShape,
    key_index: usize,
    star_key: Option<usize>,
    target: (Option<&str>, &str),
    tables: &dyn TableLookup,
) -> bool {
    match shape {
        SourceShape::Columns(cols) => match cols.get(key_index) {
            Some(SourceColumn::Key(schema, name)) => {
                tables.co_located(target, (schema.as_deref(), name))
            }
            _ => false,
        },
        SourceShape::Star(schema, name) => {
            star_key == Some(key_index) && tables.co_located(target, (schema.as_deref(), name))
        }
        SourceShape::Opaque => false,
    }
}

/// Appends one row as a parenthesised list of string literals (`NULL` for
/// NULL), after a comma unless `out` is empty: a row of `INSERT ... VALUES`
/// whose values the target columns read with their input functions, as
/// COPY does. Escape-string syntax, so the text means the same whatever
/// `standard_conforming_strings` is.
pub fn values_row<'a>(fields: impl IntoIterator<Item = Option<&'a [u8]>>, out: &mut Vec<u8>) {
    if !out.is_empty() {
        out.extend_from_slice(b", ");
    }
    out.push(b'(');
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        match f {
            None => out.extend_from_slice(b"NULL"),
            Some(v) => {
                out.extend_from_slice(b"E'");
                for &b in v {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\'' => out.extend_from_slice(b"''"),
                        _ => out.push(b),
                    }
                }
                out.push(b'\'');
            }
        }
    }
    out.push(b')');
}

/// Appends one row in COPY text format (tab-separated, `\N` for NULL,
/// backslash escapes, newline-terminated) from the text-format values of a
/// row: what `COPY ... FROM STDIN` reads back as the same values.
pub fn copy_text_row<'a>(fields: impl IntoIterator<Item = Option<&'a [u8]>>, out: &mut Vec<u8>) {
    for (i, f) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match f {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => {
                for &b in v {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        _ => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardedTable;

    /// orders and items (hash, co-located), ranged (not co-located), ref.
    struct Tables;

    impl TableLookup for Tables {
        fn sharded(&self, _: Option<&str>, name: &str) -> Option<ShardedTable> {
            let column = match name {
                "orders" | "orders_copy" => "customer_id",
                "items" => "order_customer",
                "ranged" => "id",
                _ => return None,
            };
            Some(ShardedTable {
                column: column.into(),
                ranged: name == "ranged",
            })
        }

        fn is_reference(&self, _: Option<&str>, name: &str) -> bool {
            name == "countries"
        }

        fn co_located(&self, a: (Option<&str>, &str), b: (Option<&str>, &str)) -> bool {
            let group = |n: &str| (n != "ranged").then_some(0);
            self.sharded(a.0, a.1).is_some()
                && self.sharded(b.0, b.1).is_some()
                && group(a.1) == group(b.1)
        }
    }

    fn src(sql: &str) -> (String, bool, bool) {
        let s = locate_source(sql).expect("an INSERT ... SELECT");
        (sql[s.query].to_owned(), s.on_conflict, s.returning)
    }

    #[test]
    fn the_rest_after_the_query_is_found() {
        let sql = "INSERT INTO t SELECT a FROM u ON CONFLICT (a) DO UPDATE SET b = $1 ;";
        let s = locate_source(sql).unwrap();
        assert_eq!(&sql[s.rest], "ON CONFLICT (a) DO UPDATE SET b = $1");
        assert!(s.rest_has_params && s.on_conflict && !s.returning);
        let sql = "INSERT INTO t SELECT $1 ON CONFLICT DO NOTHING";
        let s = locate_source(sql).unwrap();
        assert_eq!(&sql[s.rest.clone()], "ON CONFLICT DO NOTHING");
        assert!(!s.rest_has_params);
        let s = locate_source("INSERT INTO t SELECT 1;").unwrap();
        assert!(s.rest.is_empty());
    }

    #[test]
    fn values_rows_quote_every_value() {
        let mut out = Vec::new();
        values_row([Some(&b"1"[..]), None], &mut out);
        values_row([Some(&b"it's a \\ b"[..]), Some(b"")], &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "(E'1', NULL), (E'it''s a \\\\ b', E'')"
        );
    }

    #[test]
    fn the_source_query_is_found() {
        assert_eq!(
            src("INSERT INTO t SELECT 1;"),
            ("SELECT 1".into(), false, false)
        );
        assert_eq!(
            src("/* x */ insert into s.\"T\" AS x (a, b) select a, b from u join v on u.a = v.a ON CONFLICT (a) DO NOTHING RETURNING a"),
            ("select a, b from u join v on u.a = v.a".into(), true, true)
        );
        assert_eq!(
            src("INSERT INTO t (SELECT 1) RETURNING *"),
            ("(SELECT 1)".into(), false, true)
        );
        assert_eq!(
            src("INSERT INTO t (a) WITH w AS (SELECT 1) SELECT * FROM w"),
            ("WITH w AS (SELECT 1) SELECT * FROM w".into(), false, false)
        );
        assert_eq!(
            src("INSERT INTO t SELECT 'on conflict' WHERE (1 = 1)  ;  "),
            ("SELECT 'on conflict' WHERE (1 = 1)".into(), false, false)
        );
        assert!(locate_source("INSERT INTO t DEFAULT VALUES").is_none());
        assert!(locate_source("WITH w AS (SELECT 1) INSERT INTO t SELECT * FROM w").is_none());
        assert!(locate_source("INSERT INTO t OVERRIDING SYSTEM VALUE SELECT 1").is_none());
        assert!(locate_source("INSERT INTO t (a").is_none());
    }

    #[test]
    fn output_columns_that_are_shard_keys() {
        use SourceColumn::*;
        let shape = |q: &str| source_shape(q, &Tables);
        let orders = || Key(None, "orders".into());
        assert_eq!(
            shape("SELECT customer_id, total * 2 FROM orders WHERE total > 5"),
            SourceShape::Columns(vec![orders(), Other])
        );
        assert_eq!(
            shape("SELECT o.customer_id AS c, (o.id) FROM orders o JOIN countries c ON c.id = o.country"),
            SourceShape::Columns(vec![Key(None, "orders".into()), Other])
        );
        assert_eq!(
            shape("SELECT i.order_customer, o.customer_id::bigint FROM orders o, items i WHERE o.customer_id = i.order_customer"),
            SourceShape::Columns(vec![Key(None, "items".into()), Other])
        );
        assert_eq!(
            shape("SELECT * FROM public.orders"),
            SourceShape::Star(Some("public".into()), "orders".into())
        );
        assert_eq!(
            shape("SELECT o.* FROM orders o"),
            SourceShape::Star(None, "orders".into())
        );
        for q in [
            "SELECT customer_id FROM orders LIMIT 5",
            "SELECT customer_id FROM orders UNION SELECT 1",
            "SELECT o.customer_id FROM orders o LEFT JOIN items i ON true",
            "VALUES (1)",
            "WITH w AS (SELECT 1) SELECT * FROM w",
            "SELECT * FROM orders o, items i",
            "SELECT FROM WHERE",
        ] {
            assert_eq!(shape(q), SourceShape::Opaque, "{q}");
        }
        assert_eq!(
            shape("SELECT g, 'x' || g FROM generate_series(1, 10) g"),
            SourceShape::Columns(vec![Other, Other])
        );
    }

    #[test]
    fn pushdown_needs_the_key_of_a_co_located_table() {
        let target = (None, "orders_copy");
        let shape = |q: &str| source_shape(q, &Tables);
        let yes = |q: &str, k: usize| pushdown(&shape(q), k, None, target, &Tables);
        assert!(yes("SELECT customer_id, id FROM orders", 0));
        assert!(!yes("SELECT customer_id, id FROM orders", 1));
        assert!(!yes("SELECT customer_id + 0 FROM orders", 0));
        assert!(!yes("SELECT id FROM ranged", 0));
        assert!(yes("SELECT order_customer FROM items", 0));
        let star = shape("SELECT * FROM orders");
        assert!(pushdown(&star, 1, Some(1), target, &Tables));
        assert!(!pushdown(&star, 0, Some(1), target, &Tables));
        assert!(!pushdown(&star, 0, None, target, &Tables));
    }

    #[test]
    fn grouped_rows_stay_per_shard_but_windows_do_not() {
        assert!(rows_stay_per_shard(
            "SELECT customer_id, sum(total) FROM orders GROUP BY customer_id HAVING sum(total) > 5 ORDER BY 2"
        ));
        assert!(rows_stay_per_shard(
            "SELECT DISTINCT customer_id FROM orders"
        ));
        for q in [
            "SELECT customer_id, row_number() OVER () FROM orders",
            "SELECT customer_id, sum(x) FROM orders GROUP BY ROLLUP (customer_id)",
            "SELECT customer_id FROM orders GROUP BY GROUPING SETS ((customer_id), ())",
        ] {
            assert!(!rows_stay_per_shard(q), "{q}");
        }
        assert_eq!(
            source_shape(
                "SELECT DISTINCT ON (total) customer_id FROM orders",
                &Tables
            ),
            SourceShape::Opaque
        );
    }

    #[test]
    fn copy_text_escapes_what_copy_reads_specially() {
        let mut out = Vec::new();
        copy_text_row(
            [Some(&b"1"[..]), None, Some(b"a\tb\\c\nd\re"), Some(b"")],
            &mut out,
        );
        assert_eq!(out, b"1\t\\N\ta\\tb\\\\c\\nd\\re\t\n");
    }
}
