//! Conversions between SQLite and this crate: values in both directions and
//! SQLite errors as Postgres errors.

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{ErrorCode, ToSql};

use crate::error::AdminError;
use crate::value::{format_timestamptz, Value};

/// A [`Value`] bound to a SQLite statement: booleans as 0/1, timestamps as
/// their Postgres text (which sorts and compares like the time).
pub(crate) struct Bind<'a>(pub(crate) &'a Value);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Float(f) => ToSqlOutput::Borrowed(ValueRef::Real(*f)),
            Value::Bool(b) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*b))),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Value::Time(t) => ToSqlOutput::Owned(format_timestamptz(*t).into()),
        })
    }
}

/// A SQLite value as a [`Value`]: text that is not UTF-8 is repaired, a blob
/// becomes `\x<hex>` text as Postgres prints bytea.
pub(crate) fn from_sqlite(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(b) => Value::Text(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Blob(b) => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut s = String::with_capacity(2 + 2 * b.len());
            s.push_str("\\x");
            for byte in b {
                s.push(char::from(HEX[usize::from(byte >> 4)]));
                s.push(char::from(HEX[usize::from(byte & 15)]));
            }
            Value::Text(s)
        }
    }
}

/// The size a value adds to a result, for the result size limit.
pub(crate) fn size_of(v: ValueRef<'_>) -> usize {
    match v {
        ValueRef::Text(b) => b.len() + 8,
        ValueRef::Blob(b) => 2 * b.len() + 10,
        _ => 8,
    }
}

/// A SQLite error as the Postgres error a client should see; `known` lists
/// the admin tables for the hint of "no such table".
pub(crate) fn map_error(e: rusqlite::Error, known: &[String]) -> AdminError {
    let (code, msg) = match e {
        rusqlite::Error::SqliteFailure(err, msg) => {
            (Some(err.code), msg.unwrap_or_else(|| err.to_string()))
        }
        rusqlite::Error::SqlInputError { error, msg, .. } => (Some(error.code), msg),
        rusqlite::Error::MultipleStatement => {
            return AdminError::Syntax(
                "cannot insert multiple commands into a prepared statement".into(),
            )
        }
        other => (None, other.to_string()),
    };
    match code {
        Some(ErrorCode::OperationInterrupted) => return AdminError::TooLong,
        Some(ErrorCode::AuthorizationForStatementDenied) => return AdminError::ReadOnly,
        Some(ErrorCode::TooBig) => return AdminError::TooLarge(msg),
        _ => {}
    }
    if msg.starts_with("not authorized") {
        AdminError::ReadOnly
    } else if let Some(name) = msg.strip_prefix("no such table: ") {
        AdminError::UndefinedTable {
            message: format!("relation \"{name}\" does not exist"),
            known: known.to_vec(),
        }
    } else if let Some(name) = msg.strip_prefix("no such column: ") {
        AdminError::UndefinedColumn(format!("column \"{name}\" does not exist"))
    } else if let Some(name) = msg.strip_prefix("no such function: ") {
        AdminError::UndefinedFunction(format!("function {name} does not exist"))
    } else if msg.starts_with("wrong number of arguments to function") {
        AdminError::UndefinedFunction(msg)
    } else if msg.contains("syntax error")
        || msg.starts_with("incomplete input")
        || msg.starts_with("unrecognized token")
    {
        AdminError::Syntax(msg)
    } else {
        AdminError::Internal(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn err(sql: &str) -> AdminError {
        let conn = Connection::open_in_memory().unwrap();
        map_error(conn.prepare(sql).unwrap_err(), &["shardgate.nodes".into()])
    }

    #[test]
    fn maps_sqlite_errors() {
        let e = err("SELECT * FROM nope");
        assert_eq!(e.sqlstate(), "42P01");
        assert_eq!(e.to_string(), "relation \"nope\" does not exist");
        assert!(e.hint().unwrap().contains("shardgate.nodes"));
        let e = err("SELECT nope");
        assert_eq!(
            (e.sqlstate(), e.to_string().as_str()),
            ("42703", "column \"nope\" does not exist")
        );
        assert_eq!(err("SELECT nope(1)").sqlstate(), "42883");
        assert_eq!(err("SELECT abs(1, 2)").sqlstate(), "42883");
        assert_eq!(err("SELEC 1").sqlstate(), "42601");
        assert_eq!(err("SELECT (1").sqlstate(), "42601");
        assert_eq!(err("SELECT 1; SELECT 2").sqlstate(), "42601");
        let other = rusqlite::Error::InvalidColumnIndex(3);
        assert_eq!(map_error(other, &[]).sqlstate(), "XX000");
    }

    #[test]
    fn values_both_ways() {
        let conn = Connection::open_in_memory().unwrap();
        let row: Vec<Value> = conn
            .query_row(
                "SELECT ?1, ?2, ?3, ?4, ?5, ?6, x'00ff'",
                [
                    Bind(&Value::Null),
                    Bind(&Value::Int(7)),
                    Bind(&Value::Float(0.5)),
                    Bind(&Value::Bool(true)),
                    Bind(&Value::Text("t".into())),
                    Bind(&Value::Time(0)),
                ],
                |r| (0..7).map(|i| r.get_ref(i).map(from_sqlite)).collect(),
            )
            .unwrap();
        assert_eq!(
            row,
            [
                Value::Null,
                Value::Int(7),
                Value::Float(0.5),
                Value::Int(1),
                Value::Text("t".into()),
                Value::Text("1970-01-01 00:00:00+00".into()),
                Value::Text("\\x00ff".into()),
            ]
        );
    }
}
