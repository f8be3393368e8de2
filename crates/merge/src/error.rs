//! The error type of the crate.

/// Why a value could not be decoded, compared, combined or encoded.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The type cannot be merged; `what` says for what (e.g. "ORDER BY", "sum").
    #[error("{what} across shards is not supported for type oid {type_oid}")]
    Unsupported {
        /// The PostgreSQL type OID.
        type_oid: u32,
        /// The construct that cannot be merged for this type.
        what: String,
    },
    /// A value (or a partial-column layout) is not what PostgreSQL would send.
    #[error("malformed value of type oid {type_oid} from a shard: {reason}")]
    Malformed {
        /// The PostgreSQL type OID.
        type_oid: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// A result is out of range, with PostgreSQL's message (e.g. "bigint out of range").
    #[error("{0}")]
    Overflow(String),
    /// Numeric division by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// The merge would hold more than `proxy.merge_memory_limit` (53400).
    #[error("{message}")]
    MemoryLimit {
        /// What needs the memory, and the limit.
        message: String,
        /// What the user can do about it.
        hint: &'static str,
    },
    /// Any other PostgreSQL error, with its SQLSTATE and message (e.g.
    /// 22P02 for a literal that is not a valid value of its type).
    #[error("{message}")]
    Sql {
        /// The SQLSTATE.
        sqlstate: &'static str,
        /// Postgres's message.
        message: String,
    },
}

impl MergeError {
    /// The SQLSTATE PostgreSQL would report for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            MergeError::Unsupported { .. } => "0A000",
            MergeError::Malformed { .. } => "XX000",
            MergeError::Overflow(_) => "22003",
            MergeError::DivisionByZero => "22012",
            MergeError::MemoryLimit { .. } => "53400",
            MergeError::Sql { sqlstate, .. } => sqlstate,
        }
    }

    /// A hint for the client, when there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            MergeError::MemoryLimit { hint, .. } => Some(hint),
            _ => None,
        }
    }

    pub(crate) fn malformed(type_oid: u32, reason: impl Into<String>) -> Self {
        MergeError::Malformed {
            type_oid,
            reason: reason.into(),
        }
    }

    pub(crate) fn sql(sqlstate: &'static str, message: impl Into<String>) -> Self {
        MergeError::Sql {
            sqlstate,
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(type_oid: u32, what: impl Into<String>) -> Self {
        MergeError::Unsupported {
            type_oid,
            what: what.into(),
        }
    }
}
