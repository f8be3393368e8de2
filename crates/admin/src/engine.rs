//! The engine: one in-memory SQLite connection with the admin tables in the
//! `shardgate` schema, and read-only, bounded evaluation of user SQL on them.

use std::sync::Arc;

use rusqlite::config::DbConfig;
use rusqlite::limits::Limit;
use rusqlite::{Connection, Statement};
use shardgate_router::lexer::first_keyword;

use crate::analyze;
use crate::error::AdminError;
use crate::guard::Guard;
use crate::sqlite::{from_sqlite, map_error, size_of, Bind};
use crate::table::Table;
use crate::translate;
use crate::value::{ColType, Value};

/// Longest SQL text accepted (also SQLite's `SQLITE_LIMIT_SQL_LENGTH`).
pub const MAX_SQL_LEN: usize = 1 << 20;

/// Longest string or blob SQLite may build (`SQLITE_LIMIT_LENGTH`).
const MAX_VALUE_LEN: i32 = 16 << 20;

/// Largest result (approximate bytes) a query may return.
pub const MAX_RESULT_BYTES: usize = 64 << 20;

/// What a statement takes and returns, known without running it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// A probable type for each `$1..$n` (Text where nothing tells).
    pub params: Vec<ColType>,
    /// Result columns; the type is `None` for an expression (no decltype).
    pub columns: Vec<(String, Option<ColType>)>,
}

/// The rows of a query, each value of its column's type (or NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    /// Column names and types.
    pub columns: Vec<(String, ColType)>,
    /// Rows, each `columns.len()` long.
    pub rows: Vec<Vec<Value>>,
}

/// An embedded SQLite holding the admin tables (see the crate docs).
pub struct Engine {
    conn: Connection,
    guard: Arc<Guard>,
    /// `shardgate.<name>` of every known table, for the 42P01 hint.
    catalog: Vec<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

/// `"name"` with embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Engine {
    /// An engine with no tables loaded yet; `catalog` names the admin tables
    /// there are (for the hint when a query names another one).
    pub fn new(catalog: &[&str]) -> Result<Engine, AdminError> {
        let conn = Connection::open_in_memory().map_err(|e| map_error(e, &[]))?;
        let setup = || -> rusqlite::Result<()> {
            conn.execute_batch("ATTACH DATABASE ':memory:' AS shardgate")?;
            conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_LEN as i32)?;
            conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_LEN)?;
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
            Ok(())
        };
        setup().map_err(|e| map_error(e, &[]))?;
        let guard = Guard::install(&conn);
        Ok(Engine {
            conn,
            guard,
            catalog: catalog.iter().map(|n| format!("shardgate.{n}")).collect(),
        })
    }

    /// Which of the `known` table names `sql` mentions (words and quoted
    /// identifiers, ASCII case-insensitive): the tables to [`load`](Self::load)
    /// before running it.
    pub fn referenced_tables(sql: &str, known: &[&str]) -> Vec<String> {
        analyze::referenced_tables(sql, known)
    }

    /// (Re)creates `shardgate.<name>` with the table's columns and rows, in
    /// one transaction: a failure leaves the previous contents.
    pub fn load(&mut self, table: &Table) -> Result<(), AdminError> {
        let err = |e| map_error(e, &[]);
        let name = quote_ident(table.name);
        let cols: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(c.name), c.ty.sqlite_decl()))
            .collect();
        let marks = vec!["?"; table.columns.len()].join(", ");
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute_batch(&format!(
            "DROP TABLE IF EXISTS shardgate.{name}; CREATE TABLE shardgate.{name} ({})",
            cols.join(", ")
        ))
        .map_err(err)?;
        {
            let mut insert = tx
                .prepare(&format!("INSERT INTO shardgate.{name} VALUES ({marks})"))
                .map_err(err)?;
            for row in &table.rows {
                if row.len() != table.columns.len() {
                    return Err(AdminError::Internal(format!(
                        "admin table {} has a row of {} values for {} columns",
                        table.name,
                        row.len(),
                        table.columns.len()
                    )));
                }
                for (i, (v, c)) in row.iter().zip(table.columns).enumerate() {
                    let v = v.clone().into_type(c.ty)?;
                    insert.raw_bind_parameter(i + 1, Bind(&v)).map_err(err)?;
                }
                insert.raw_execute().map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        let qualified = format!("shardgate.{}", table.name);
        if !self.catalog.contains(&qualified) {
            self.catalog.push(qualified);
        }
        Ok(())
    }

    /// Prepares the one statement in `sql` (translated for SQLite) and checks
    /// that it only reads; also returns the statement as the user wrote it.
    fn prepare<'s>(&self, sql: &'s str) -> Result<(Statement<'_>, &'s str), AdminError> {
        if sql.len() > MAX_SQL_LEN {
            return Err(AdminError::TooLarge(format!(
                "statement of {} bytes exceeds the admin limit of {MAX_SQL_LEN} bytes",
                sql.len()
            )));
        }
        if sql.contains('\0') {
            return Err(AdminError::value(
                "22021",
                "invalid byte sequence for encoding \"UTF8\": 0x00",
            ));
        }
        let source = translate::single_statement(sql)?;
        let translated = translate::translate(source)?;
        let stmt = self
            .conn
            .prepare(&translated)
            .map_err(|e| map_error(e, &self.catalog))?;
        // Belt and braces: some statements that change things (REINDEX)
        // pass both the authorizer and readonly().
        let query = first_keyword(source).is_some_and(|k| {
            ["select", "with", "values"]
                .iter()
                .any(|q| k.eq_ignore_ascii_case(q))
        });
        if !query || !stmt.readonly() {
            return Err(AdminError::ReadOnly);
        }
        Ok((stmt, source))
    }

    /// Parameter and result column types of `sql` without running it; the
    /// tables it reads must be loaded, and `tables` are the ones whose
    /// columns may tell parameter types (`col = $1`: the type of `col`).
    pub fn describe(&mut self, sql: &str, tables: &[&Table]) -> Result<Described, AdminError> {
        let _user = self.guard.enter();
        let (stmt, source) = self.prepare(sql)?;
        let params = analyze::param_types(source, tables)?;
        let columns = declared_columns(&stmt);
        Ok(Described { params, columns })
    }

    /// Runs the one statement in `sql` with `params` bound to `$1..$n`.
    /// Column types come from `fixed` (as promised by an earlier Describe)
    /// when given, else from the table columns, else from the values
    /// (all integers: Int8, numbers with a real: Float8, otherwise Text).
    pub fn query(
        &mut self,
        sql: &str,
        params: &[Value],
        fixed: Option<&[ColType]>,
    ) -> Result<ResultSet, AdminError> {
        let _user = self.guard.enter();
        let err = |e| map_error(e, &self.catalog);
        let (mut stmt, source) = self.prepare(sql)?;
        let required = analyze::param_count(source)?;
        if params.len() < required {
            return Err(AdminError::ParamCount {
                supplied: params.len(),
                required,
            });
        }
        for (n, value) in params.iter().enumerate().take(required) {
            if let Some(idx) = stmt.parameter_index(&format!("${}", n + 1)).map_err(err)? {
                stmt.raw_bind_parameter(idx, Bind(value)).map_err(err)?;
            }
        }
        let decls = declared_columns(&stmt);
        if fixed.is_some_and(|f| f.len() != decls.len()) {
            return Err(AdminError::Internal(format!(
                "{} column types given for a statement with {} columns",
                fixed.map_or(0, <[ColType]>::len),
                decls.len()
            )));
        }
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut cursor = stmt.raw_query();
        while let Some(row) = cursor.next().map_err(err)? {
            let mut values = Vec::with_capacity(decls.len());
            for i in 0..decls.len() {
                let v = row.get_ref(i).map_err(err)?;
                bytes += size_of(v);
                if bytes > MAX_RESULT_BYTES {
                    return Err(AdminError::TooLarge(format!(
                        "admin query result exceeds {} MiB",
                        MAX_RESULT_BYTES >> 20
                    )));
                }
                values.push(from_sqlite(v));
            }
            rows.push(values);
        }
        let mut columns = Vec::with_capacity(decls.len());
        for (i, (name, decl)) in decls.into_iter().enumerate() {
            let ty = match (fixed, decl) {
                (Some(f), _) => f[i],
                (None, Some(ty)) => ty,
                (None, None) => infer(&rows, i),
            };
            for row in &mut rows {
                row[i] = std::mem::replace(&mut row[i], Value::Null).into_type(ty)?;
            }
            columns.push((name, ty));
        }
        Ok(ResultSet { columns, rows })
    }
}

/// The type of expression column `i` from its values: Int8 when all are
/// integers, Float8 when all are numbers and one is a real, else Text.
fn infer(rows: &[Vec<Value>], i: usize) -> ColType {
    let mut ty = None;
    for v in rows.iter().map(|r| &r[i]) {
        ty = match (ty, v) {
            (_, Value::Null) => ty,
            (None | Some(ColType::Int8), Value::Int(_)) => Some(ColType::Int8),
            (None | Some(ColType::Int8 | ColType::Float8), Value::Float(_))
            | (Some(ColType::Float8), Value::Int(_)) => Some(ColType::Float8),
            _ => return ColType::Text,
        };
    }
    ty.unwrap_or(ColType::Text)
}

/// Each result column's name and, when SQLite knows it, its declared type.
fn declared_columns(stmt: &Statement<'_>) -> Vec<(String, Option<ColType>)> {
    stmt.columns()
        .iter()
        .map(|c| {
            (
                c.name().to_string(),
                c.decl_type().and_then(ColType::from_decl),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columns;
    use crate::value::parse_timestamptz;

    fn t(s: &str) -> Value {
        Value::Time(parse_timestamptz(s).unwrap())
    }

    fn nodes() -> Table {
        let row = |node: &str, port, healthy, weight, since: &str| {
            vec![
                Value::Text(node.into()),
                Value::Int(port),
                Value::Bool(healthy),
                Value::Float(weight),
                t(since),
            ]
        };
        Table {
            name: "nodes",
            columns: columns![node: Text, port: Int4, healthy: Bool, weight: Float8, since: Timestamptz],
            rows: vec![
                row("a", 5432, true, 1.0, "2026-01-01 00:00:00+00"),
                row("b", 5433, false, 0.5, "2026-03-01 12:00:00.25+00"),
                row("c", 5434, true, 2.0, "2025-12-31 23:59:59+00"),
            ],
        }
    }

    fn shards() -> Table {
        let rows = [
            (1, "a", 10),
            (2, "a", 20),
            (3, "b", 5),
            (4, "c", 7),
            (5, "c", 1),
        ]
        .iter()
        .map(|&(s, n, r)| vec![Value::Int(s), Value::Text(n.into()), Value::Int(r)])
        .collect();
        Table {
            name: "shards",
            columns: columns![shard: Int8, node: Text, rows: Int8],
            rows,
        }
    }

    fn engine() -> Engine {
        let mut e = Engine::new(&["nodes", "shards"]).unwrap();
        e.load(&nodes()).unwrap();
        e.load(&shards()).unwrap();
        e
    }

    fn q(e: &mut Engine, sql: &str) -> ResultSet {
        e.query(sql, &[], None).unwrap()
    }

    fn err(e: &mut Engine, sql: &str) -> AdminError {
        e.query(sql, &[], None).unwrap_err()
    }

    fn col(rs: &ResultSet, i: usize) -> Vec<Value> {
        rs.rows.iter().map(|r| r[i].clone()).collect()
    }

    #[test]
    fn where_order_limit_and_decltypes() {
        let mut e = engine();
        let rs = q(
            &mut e,
            "SELECT node, port, healthy, weight, since FROM shardgate.nodes \
             WHERE healthy ORDER BY since DESC LIMIT 1",
        );
        assert_eq!(
            rs.columns,
            [
                ("node".to_string(), ColType::Text),
                ("port".to_string(), ColType::Int4),
                ("healthy".to_string(), ColType::Bool),
                ("weight".to_string(), ColType::Float8),
                ("since".to_string(), ColType::Timestamptz),
            ]
        );
        assert_eq!(
            rs.rows,
            [vec![
                Value::Text("a".into()),
                Value::Int(5432),
                Value::Bool(true),
                Value::Float(1.0),
                t("2026-01-01 00:00:00+00"),
            ]]
        );
        // Timestamps compare with literals in their text form, both spellings.
        let rs = q(
            &mut e,
            "SELECT node FROM nodes WHERE since > '2026-01-01T00:00:00Z'::timestamptz ORDER BY node",
        );
        assert_eq!(col(&rs, 0), [Value::Text("b".into())]);
        let rs = q(
            &mut e,
            "SELECT node FROM nodes WHERE since < '2026-01-01' ORDER BY 1",
        );
        assert_eq!(col(&rs, 0), [Value::Text("c".into())]);
    }

    #[test]
    fn group_by_aggregates_and_inferred_types() {
        let mut e = engine();
        let rs = q(
            &mut e,
            "SELECT node, count(*) AS n, sum(rows) AS total, avg(rows) AS mean \
             FROM shards GROUP BY node ORDER BY node",
        );
        let types: Vec<ColType> = rs.columns.iter().map(|c| c.1).collect();
        assert_eq!(
            types,
            [ColType::Text, ColType::Int8, ColType::Int8, ColType::Float8]
        );
        assert_eq!(col(&rs, 1), [Value::Int(2), Value::Int(1), Value::Int(2)]);
        assert_eq!(col(&rs, 2), [Value::Int(30), Value::Int(5), Value::Int(8)]);
        assert_eq!(
            col(&rs, 3),
            [Value::Float(15.0), Value::Float(5.0), Value::Float(4.0)]
        );
        let rs = q(&mut e, "SELECT count(*) FROM shards WHERE shard > 100");
        assert_eq!(rs.columns[0].1, ColType::Int8);
        assert_eq!(rs.rows, [vec![Value::Int(0)]]);
        let rs = q(&mut e, "SELECT 'x' || node, NULL FROM shards WHERE 0");
        assert_eq!(rs.columns[0].1, ColType::Text);
        assert_eq!(rs.columns[1].1, ColType::Text);
        let rs = q(&mut e, "SELECT 1 UNION ALL SELECT 2.5");
        assert_eq!(rs.columns[0].1, ColType::Float8);
        assert_eq!(col(&rs, 0), [Value::Float(1.0), Value::Float(2.5)]);
    }

    #[test]
    fn join_using_and_params_by_name() {
        let mut e = engine();
        let rs = q(
            &mut e,
            "SELECT s.shard, n.port FROM shards s JOIN nodes n USING (node) \
             WHERE n.healthy ORDER BY s.shard",
        );
        assert_eq!(col(&rs, 0), [1, 2, 4, 5].map(Value::Int));
        assert_eq!(col(&rs, 1), [5432, 5432, 5434, 5434].map(Value::Int));
        let rs = e
            .query(
                "SELECT node FROM shards WHERE shard = $1",
                &[Value::Int(3)],
                None,
            )
            .unwrap();
        assert_eq!(rs.rows, [vec![Value::Text("b".into())]]);
        // $2 used twice, $1 a timestamp compared with the stored text.
        let rs = e
            .query(
                "SELECT node FROM nodes WHERE since >= $1 AND (port = $2 OR port = $2 + 2) ORDER BY node",
                &[t("2026-01-01 00:00:00+00"), Value::Int(5432)],
                None,
            )
            .unwrap();
        assert_eq!(col(&rs, 0), [Value::Text("a".into())]);
        let e2 = e
            .query("SELECT $1, $2", &[Value::Int(1)], None)
            .unwrap_err();
        assert_eq!(e2.sqlstate(), "08P01");
        assert_eq!(
            e2.to_string(),
            "bind message supplies 1 parameters, but prepared statement requires 2"
        );
    }

    #[test]
    fn fixed_types_convert_values() {
        let mut e = engine();
        let fixed = [ColType::Text, ColType::Int4, ColType::Bool];
        let rs = e
            .query("SELECT count(*), '7', 1 FROM shards", &[], Some(&fixed))
            .unwrap();
        let types: Vec<ColType> = rs.columns.iter().map(|c| c.1).collect();
        assert_eq!(types, fixed);
        assert_eq!(
            rs.rows,
            [vec![
                Value::Text("5".into()),
                Value::Int(7),
                Value::Bool(true)
            ]]
        );
        let bad = e
            .query("SELECT 'x'", &[], Some(&[ColType::Int8]))
            .unwrap_err();
        assert_eq!(bad.sqlstate(), "22P02");
        let bad = e.query("SELECT 1", &[], Some(&[])).unwrap_err();
        assert_eq!(bad.sqlstate(), "XX000");
    }

    #[test]
    fn describe_reports_types() {
        let mut e = engine();
        let (n, s) = (nodes(), shards());
        let d = e
            .describe(
                "SELECT s.shard, count(*) FROM shards s JOIN nodes n USING (node) \
                 WHERE n.port = $1 AND s.shard IN ($2, 9) AND n.node ILIKE $3 GROUP BY 1;",
                &[&n, &s],
            )
            .unwrap();
        assert_eq!(d.params, [ColType::Int4, ColType::Int8, ColType::Text]);
        assert_eq!(
            d.columns,
            [
                ("shard".to_string(), Some(ColType::Int8)),
                ("count(*)".to_string(), None)
            ]
        );
        assert_eq!(
            e.describe("DELETE FROM nodes", &[]).unwrap_err().sqlstate(),
            "25006"
        );
    }

    #[test]
    fn undefined_things() {
        let mut e = engine();
        let x = err(&mut e, "SELECT * FROM shardgate.pools");
        assert_eq!(x.sqlstate(), "42P01");
        assert_eq!(x.to_string(), "relation \"shardgate.pools\" does not exist");
        let hint = x.hint().unwrap();
        assert!(hint.contains("shardgate.nodes, shardgate.shards"), "{hint}");
        assert!(hint.contains("SHOW HELP"));
        assert_eq!(err(&mut e, "SELECT nope FROM nodes").sqlstate(), "42703");
        assert_eq!(err(&mut e, "SELECT now()").sqlstate(), "42883");
        assert_eq!(err(&mut e, "SELEC * FROM nodes").sqlstate(), "42601");
        assert_eq!(err(&mut e, "SELECT * FROM").sqlstate(), "42601");
        assert_eq!(err(&mut e, "SELECT 1; SELECT 2").sqlstate(), "42601");
        assert_eq!(err(&mut e, "").sqlstate(), "42601");
        assert_eq!(err(&mut e, "SELECT x::regclass").sqlstate(), "0A000");
        assert_eq!(err(&mut e, "SELECT $0").sqlstate(), "42P02");
    }

    #[test]
    fn writes_are_refused() {
        let mut e = engine();
        for sql in [
            "DELETE FROM shardgate.nodes",
            "UPDATE nodes SET port = 1",
            "INSERT INTO shards VALUES (9, 'z', 0)",
            "CREATE TABLE x(a)",
            "CREATE TEMP TABLE x(a)",
            "DROP TABLE shardgate.nodes",
            "ATTACH DATABASE ':memory:' AS y",
            "ATTACH DATABASE '/tmp/admin-escape.db' AS y",
            "DETACH DATABASE shardgate",
            "PRAGMA writable_schema=1",
            "PRAGMA shardgate.table_info(nodes)",
            "BEGIN",
            "SAVEPOINT s",
            "VACUUM",
            "ANALYZE",
            "REINDEX",
            "EXPLAIN DELETE FROM nodes",
            "WITH x AS (SELECT 1) DELETE FROM nodes",
            "SELECT load_extension('x')",
        ] {
            let x = e.query(sql, &[], None).expect_err(sql);
            assert_eq!(x.sqlstate(), "25006", "{sql}: {x}");
            assert!(x.to_string().contains("SHOW HELP"));
        }
        assert_eq!(
            q(&mut e, "SELECT count(*) FROM nodes").rows,
            [vec![Value::Int(3)]]
        );
        assert!(!std::path::Path::new("/tmp/admin-escape.db").exists());
    }

    #[test]
    fn runaway_query_is_interrupted() {
        let mut e = engine();
        let x = err(
            &mut e,
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM r) SELECT count(*) FROM r",
        );
        assert_eq!(x.sqlstate(), "57014");
        assert_eq!(x.to_string(), "query ran too long");
        // The budget is per query: the next one runs.
        let rs = q(
            &mut e,
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM r WHERE x < 1000) \
             SELECT count(*) FROM r",
        );
        assert_eq!(rs.rows, [vec![Value::Int(1000)]]);
        // Loading still works after an interrupted query.
        e.load(&nodes()).unwrap();
    }

    #[test]
    fn translated_casts_and_ilike() {
        let mut e = engine();
        let rs = q(
            &mut e,
            "SELECT port::text, weight::int8 FROM nodes WHERE node ILIKE 'B';",
        );
        assert_eq!(rs.columns[0].1, ColType::Text);
        assert_eq!(rs.rows, [vec![Value::Text("5433".into()), Value::Int(0)]]);
        let rs = q(
            &mut e,
            "SELECT count(*)::int4 FROM nodes WHERE healthy = 't'::bool",
        );
        assert_eq!(rs.rows, [vec![Value::Int(2)]]);
        let rs = q(&mut e, "SELECT 'it''s ::int' AS \"a::b\"");
        assert_eq!(rs.columns[0].0, "a::b");
        assert_eq!(rs.rows, [vec![Value::Text("it's ::int".into())]]);
    }

    #[test]
    fn load_replaces_and_checks_rows() {
        let mut e = engine();
        let mut s = shards();
        s.rows.truncate(1);
        e.load(&s).unwrap();
        assert_eq!(
            q(&mut e, "SELECT count(*) FROM shards").rows,
            [vec![Value::Int(1)]]
        );
        s.rows.push(vec![Value::Int(1)]);
        assert_eq!(e.load(&s).unwrap_err().sqlstate(), "XX000");
        s.rows[1] = vec![Value::Text("x".into()), Value::Null, Value::Null];
        assert_eq!(e.load(&s).unwrap_err().sqlstate(), "22P02");
        // A failed load leaves the previous contents.
        assert_eq!(
            q(&mut e, "SELECT count(*) FROM shards").rows,
            [vec![Value::Int(1)]]
        );
        // Converted on the way in: text "9" into an int8 column.
        s.rows[1] = vec![Value::Text("9".into()), Value::Null, Value::Null];
        e.load(&s).unwrap();
        let rs = q(&mut e, "SELECT shard, node FROM shards WHERE shard = 9");
        assert_eq!(rs.rows, [vec![Value::Int(9), Value::Null]]);
    }

    #[test]
    fn referenced_tables_and_limits() {
        assert_eq!(
            Engine::referenced_tables(
                "SELECT * FROM Nodes n JOIN shardgate.\"shards\" s ON true",
                &["nodes", "shards", "pools"]
            ),
            ["nodes", "shards"]
        );
        let mut e = engine();
        let long = format!("SELECT '{}'", "x".repeat(MAX_SQL_LEN));
        assert_eq!(err(&mut e, &long).sqlstate(), "54000");
        assert_eq!(err(&mut e, "SELECT 1\0").sqlstate(), "22021");
        assert_eq!(
            err(&mut e, "SELECT randomblob(100000000)").sqlstate(),
            "54000"
        );
        let many = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM r WHERE x < 100) \
                    SELECT hex(zeroblob(1000000)) FROM r";
        assert_eq!(err(&mut e, many).sqlstate(), "54000");
    }
}
