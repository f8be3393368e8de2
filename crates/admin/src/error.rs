//! Errors of the admin SQL engine, each with the SQLSTATE a Postgres client
//! gets for it.

use shardgate_protocol::PgError;

/// Why an admin query, a value conversion or a parameter failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// A value that does not fit its type: `22P02` (bad text), `22P03` (bad
    /// binary), `22003` (out of range), `22008` (timestamp out of range) or
    /// `22021` (invalid UTF-8).
    #[error("{message}")]
    Value {
        /// SQLSTATE.
        code: &'static str,
        /// Postgres-style message.
        message: String,
    },
    /// SQL that does not parse, or more than one statement (`42601`).
    #[error("{0}")]
    Syntax(String),
    /// A table that does not exist (`42P01`); `known` lists the admin tables.
    #[error("{message}")]
    UndefinedTable {
        /// Postgres-style message.
        message: String,
        /// The admin tables there are, for the hint.
        known: Vec<String>,
    },
    /// A column that does not exist (`42703`).
    #[error("{0}")]
    UndefinedColumn(String),
    /// A function that does not exist or takes other arguments (`42883`).
    #[error("{0}")]
    UndefinedFunction(String),
    /// A statement that would change something (`25006`).
    #[error(
        "the admin tables are read-only; use the admin commands (SHOW HELP) to change the proxy"
    )]
    ReadOnly,
    /// The statement used up its work budget (`57014`).
    #[error("query ran too long")]
    TooLong,
    /// A statement or result above a size limit (`54000`).
    #[error("{0}")]
    TooLarge(String),
    /// Fewer parameter values than the statement uses (`08P01`).
    #[error(
        "bind message supplies {supplied} parameters, but prepared statement requires {required}"
    )]
    ParamCount {
        /// Values given.
        supplied: usize,
        /// Highest `$n` in the statement.
        required: usize,
    },
    /// A `$n` placeholder with an impossible number (`42P02`).
    #[error("there is no parameter {0}")]
    UndefinedParam(String),
    /// A Postgres feature the admin tables do not translate (`0A000`).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else, with SQLite's message (`XX000`).
    #[error("{0}")]
    Internal(String),
}

impl AdminError {
    /// A `Value` error with the given code and message.
    pub(crate) fn value(code: &'static str, message: impl Into<String>) -> Self {
        AdminError::Value {
            code,
            message: message.into(),
        }
    }

    /// `invalid input syntax for type <pg_type>: "<input>"` (`22P02`).
    pub(crate) fn invalid_input(pg_type: &str, input: &str) -> Self {
        Self::value(
            "22P02",
            format!("invalid input syntax for type {pg_type}: \"{input}\""),
        )
    }

    /// The SQLSTATE of this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            AdminError::Value { code, .. } => code,
            AdminError::Syntax(_) => "42601",
            AdminError::UndefinedTable { .. } => "42P01",
            AdminError::UndefinedColumn(_) => "42703",
            AdminError::UndefinedFunction(_) => "42883",
            AdminError::ReadOnly => "25006",
            AdminError::TooLong => "57014",
            AdminError::TooLarge(_) => "54000",
            AdminError::ParamCount { .. } => "08P01",
            AdminError::UndefinedParam(_) => "42P02",
            AdminError::Unsupported(_) => "0A000",
            AdminError::Internal(_) => "XX000",
        }
    }

    /// A line telling the user what to do, if there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            AdminError::UndefinedTable { known, .. } if known.is_empty() => {
                Some("SHOW HELP lists the admin tables.".to_string())
            }
            AdminError::UndefinedTable { known, .. } => Some(format!(
                "The admin tables are {}; SHOW HELP lists them.",
                known.join(", ")
            )),
            _ => None,
        }
    }

    /// The ErrorResponse for this error.
    pub fn to_pg_error(&self) -> PgError {
        let err = PgError::error(self.sqlstate(), self.to_string());
        match self.hint() {
            Some(hint) => err.with_hint(hint),
            None => err,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_messages_and_hints() {
        let e = AdminError::ParamCount {
            supplied: 1,
            required: 2,
        };
        assert_eq!(e.sqlstate(), "08P01");
        assert_eq!(
            e.to_string(),
            "bind message supplies 1 parameters, but prepared statement requires 2"
        );
        let e = AdminError::UndefinedTable {
            message: "relation \"x\" does not exist".into(),
            known: vec!["shardgate.nodes".into(), "shardgate.shards".into()],
        };
        let pg = e.to_pg_error();
        assert_eq!(pg.code, "42P01");
        assert_eq!(pg.message, "relation \"x\" does not exist");
        assert_eq!(
            pg.hint.as_deref(),
            Some("The admin tables are shardgate.nodes, shardgate.shards; SHOW HELP lists them.")
        );
        let pg = AdminError::ReadOnly.to_pg_error();
        assert_eq!(pg.code, "25006");
        assert!(pg.message.contains("SHOW HELP"));
        assert_eq!(pg.hint, None);
        assert_eq!(AdminError::invalid_input("bigint", "x").sqlstate(), "22P02");
        assert_eq!(AdminError::TooLong.sqlstate(), "57014");
    }
}
