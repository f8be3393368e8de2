//! Admin tables as the proxy hands them over: a static schema and rows.

use crate::value::{ColType, Value};

/// One column of an admin table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name (lower case, as users type it).
    pub name: &'static str,
    /// Postgres type.
    pub ty: ColType,
}

impl Column {
    /// A column, usable in `const` schemas:
    /// `const COLS: &[Column] = &[Column::new("node", ColType::Text)];`.
    pub const fn new(name: &'static str, ty: ColType) -> Column {
        Column { name, ty }
    }
}

/// Declares a `&'static [Column]` tersely:
/// `columns![node: Text, port: Int4, healthy: Bool]`.
#[macro_export]
macro_rules! columns {
    ($($name:ident : $ty:ident),* $(,)?) => {
        {
            const COLUMNS: &[$crate::Column] =
                &[$($crate::Column::new(stringify!($name), $crate::ColType::$ty)),*];
            COLUMNS
        }
    };
}

/// An admin table: its name (created as `shardgate.<name>`), its columns and
/// the rows the caller produced (each row has one value per column).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Table name, without the `shardgate.` schema.
    pub name: &'static str,
    /// Columns in order.
    pub columns: &'static [Column],
    /// Rows, each `columns.len()` long.
    pub rows: Vec<Vec<Value>>,
}

impl Table {
    /// The column called `name` (ASCII case-insensitive), if any.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &[Column] = columns![node: Text, port: Int4, healthy: Bool];

    #[test]
    fn macro_and_lookup() {
        assert_eq!(NODES.len(), 3);
        assert_eq!(NODES[1], Column::new("port", ColType::Int4));
        let t = Table {
            name: "nodes",
            columns: NODES,
            rows: vec![],
        };
        assert_eq!(t.column("HEALTHY").map(|c| c.ty), Some(ColType::Bool));
        assert_eq!(t.column("nope"), None);
    }
}
