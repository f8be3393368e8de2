//! Table names and the sharding rule of one table.

use std::fmt;

use crate::key::{KeyType, ShardKey};

/// A table's name, optionally schema-qualified.
///
/// Parts are stored as Postgres stores them: lower-cased unless the user
/// quoted them. A configured part that contains no ASCII upper-case letter
/// matches references case-insensitively (an unquoted reference may arrive
/// unfolded, e.g. `ORDERS`); a part with upper-case letters came from a quoted
/// identifier and matches only exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// The schema, if the configuration named one.
    pub schema: Option<String>,
    /// The table name.
    pub name: String,
}

impl TableName {
    /// A table name from its (already folded) parts.
    pub fn new(schema: Option<&str>, name: &str) -> TableName {
        TableName {
            schema: schema.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// Whether the reference `schema.name` denotes this table: the names
    /// match, and if both this name and the reference carry a schema, the
    /// schemas match too (an unqualified reference matches any schema, a
    /// qualified one matches a configured name without schema).
    pub fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        ident_matches(&self.name, name)
            && match (self.schema.as_deref(), schema) {
                (Some(configured), Some(reference)) => ident_matches(configured, reference),
                _ => true,
            }
    }

    /// The key under which lookups find this table: the name with ASCII
    /// letters lower-cased.
    pub(crate) fn lookup_key(&self) -> String {
        self.name.to_ascii_lowercase()
    }
}

impl fmt::Display for TableName {
    /// `schema.name`, double-quoting a part that is not a plain lower-case
    /// identifier (reserved words are not detected).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(schema) = &self.schema {
            write_ident(f, schema)?;
            f.write_str(".")?;
        }
        write_ident(f, &self.name)
    }
}

/// Compares a configured identifier with a reference (see [`TableName`]).
fn ident_matches(configured: &str, reference: &str) -> bool {
    if configured.bytes().any(|b| b.is_ascii_uppercase()) {
        configured == reference
    } else {
        configured.eq_ignore_ascii_case(reference)
    }
}

/// Writes an identifier, quoted if Postgres would need quotes for it.
fn write_ident(f: &mut fmt::Formatter<'_>, ident: &str) -> fmt::Result {
    if needs_quotes(ident) {
        write!(f, "\"{}\"", ident.replace('"', "\"\""))
    } else {
        f.write_str(ident)
    }
}

/// Whether an identifier is not a plain unquoted Postgres identifier.
fn needs_quotes(ident: &str) -> bool {
    let mut chars = ident.chars();
    let plain_start = |c: char| c.is_ascii_lowercase() || c == '_' || !c.is_ascii();
    match chars.next() {
        Some(c) if plain_start(c) => {}
        _ => return true,
    }
    !chars.all(|c| plain_start(c) || c.is_ascii_digit() || c == '$')
}

/// One range of a range-sharded table: bigint keys in `[start, end)` live on
/// `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RangeEntry {
    /// The shard holding the range.
    pub shard: usize,
    /// The first key of the range (inclusive).
    pub start: i64,
    /// The end of the range (exclusive).
    pub end: i64,
}

impl RangeEntry {
    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: i64) -> bool {
        self.start <= key && key < self.end
    }
}

/// One entry of a list-sharded table: rows whose key is one of `values` live
/// on `shard`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListEntry {
    /// The shard holding these values.
    pub shard: usize,
    /// The key values (of the table's key type).
    pub values: Vec<ShardKey>,
}

/// How a sharded table's key picks its shard.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Function {
    /// Consistent hashing of the key on the map's ring.
    Hash,
    /// Explicit `[start, end)` ranges of bigint keys.
    Range(Vec<RangeEntry>),
    /// Explicit value lists.
    List(Vec<ListEntry>),
}

impl Function {
    /// `hash`, `range` or `list`.
    pub fn name(&self) -> &'static str {
        match self {
            Function::Hash => "hash",
            Function::Range(_) => "range",
            Function::List(_) => "list",
        }
    }
}

/// The sharding rule of one table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRule {
    /// The sharded table.
    pub table: TableName,
    /// Its shard key column.
    pub column: String,
    /// The key column's type.
    pub key_type: KeyType,
    /// How keys map to shards.
    pub function: Function,
}

impl TableRule {
    /// Whether equal key values of this table and of `other` always live on
    /// the same shard of one map: the same key type and the same placement
    /// (both hashed on the map's ring, or identical ranges or lists).
    pub fn co_located(&self, other: &TableRule) -> bool {
        self.key_type == other.key_type && self.function == other.function
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn co_location_needs_the_same_key_type_and_placement() {
        let rule = |name: &str, key_type, function| TableRule {
            table: TableName::new(None, name),
            column: "k".into(),
            key_type,
            function,
        };
        let range = |end| {
            Function::Range(vec![RangeEntry {
                start: 0,
                end,
                shard: 0,
            }])
        };
        let a = rule("a", KeyType::BigInt, Function::Hash);
        assert!(a.co_located(&rule("b", KeyType::BigInt, Function::Hash)));
        assert!(!a.co_located(&rule("b", KeyType::Text, Function::Hash)));
        assert!(!a.co_located(&rule("b", KeyType::BigInt, range(10))));
        let r = rule("r", KeyType::BigInt, range(10));
        assert!(r.co_located(&rule("s", KeyType::BigInt, range(10))));
        assert!(!r.co_located(&rule("s", KeyType::BigInt, range(20))));
    }

    #[test]
    fn unquoted_configured_names_match_case_insensitively() {
        let t = TableName::new(None, "orders");
        assert!(t.matches(None, "orders"));
        assert!(t.matches(None, "ORDERS"));
        assert!(t.matches(Some("public"), "Orders"));
        assert!(!t.matches(None, "order"));
    }

    #[test]
    fn quoted_configured_names_match_exactly() {
        let t = TableName::new(Some("Sales"), "Orders");
        assert!(t.matches(Some("Sales"), "Orders"));
        assert!(t.matches(None, "Orders"));
        assert!(!t.matches(None, "orders"));
        assert!(!t.matches(Some("sales"), "Orders"));
    }

    #[test]
    fn configured_schema_must_match_a_qualified_reference() {
        let t = TableName::new(Some("public"), "orders");
        assert!(t.matches(Some("PUBLIC"), "orders"));
        assert!(t.matches(None, "orders"));
        assert!(!t.matches(Some("archive"), "orders"));
    }

    #[test]
    fn display_quotes_when_needed() {
        assert_eq!(TableName::new(None, "orders").to_string(), "orders");
        assert_eq!(
            TableName::new(Some("public"), "order_items2").to_string(),
            "public.order_items2"
        );
        assert_eq!(
            TableName::new(Some("Sales"), "Or\"ders").to_string(),
            "\"Sales\".\"Or\"\"ders\""
        );
        assert_eq!(TableName::new(None, "2x").to_string(), "\"2x\"");
        assert_eq!(TableName::new(None, "").to_string(), "\"\"");
        assert_eq!(TableName::new(None, "città").to_string(), "città");
    }

    #[test]
    fn range_entry_is_half_open() {
        let e = RangeEntry {
            shard: 0,
            start: 1,
            end: 10,
        };
        assert!(!e.contains(0));
        assert!(e.contains(1));
        assert!(e.contains(9));
        assert!(!e.contains(10));
    }
}
