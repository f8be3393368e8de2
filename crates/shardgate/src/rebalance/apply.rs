//! Caught-up changes bound for one target (docs/ARCHITECTURE.md §10),
//! collapsed to the last change per primary key and applied as one
//! `DELETE` per table and one multi-row upsert per table and column list:
//! a statement per change cost the target more than the change itself.
//! Every change replaces a key's whole row (or removes it), so only the
//! last one per key matters, and keys are independent of each other.

use std::collections::BTreeMap;

use shardgate_shardmap::TableName;

use super::logical::{Change, Column, Op};
use super::RebalanceError;

/// The changes of one stage table, the last per key.
struct TableChanges {
    table: TableName,
    key_columns: Vec<String>,
    /// By the key's literals.
    last: BTreeMap<Vec<String>, Change>,
}

/// Changes for one target, not yet applied.
#[derive(Default)]
pub(super) struct Batch {
    tables: Vec<TableChanges>,
    /// Rough size of the statements they make.
    bytes: usize,
}

/// A column's value as a typed SQL literal.
fn literal(c: &Column) -> String {
    match &c.value {
        Some(v) => format!("{v}::{}", c.type_name),
        None => "NULL".to_owned(),
    }
}

impl Batch {
    /// Adds `change` of `table` (primary key `key_columns`): it replaces
    /// any earlier change of the same key; TOASTed values an update left
    /// alone are taken from the earlier change when it had them.
    pub fn add(
        &mut self,
        table: &TableName,
        key_columns: &[String],
        mut change: Change,
    ) -> Result<(), RebalanceError> {
        let key = key_columns
            .iter()
            .map(|k| {
                change.column(k).map(literal).ok_or_else(|| {
                    RebalanceError::Invalid(format!(
                        "a decoded change of {table} lacks its key column {k}"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.bytes += change
            .columns
            .iter()
            .map(|c| c.name.len() + c.value.as_ref().map_or(4, String::len) + 8)
            .sum::<usize>();
        let at = match self.tables.iter().position(|t| t.table == *table) {
            Some(i) => i,
            None => {
                self.tables.push(TableChanges {
                    table: table.clone(),
                    key_columns: key_columns.to_vec(),
                    last: BTreeMap::new(),
                });
                self.tables.len() - 1
            }
        };
        let last = &mut self.tables[at].last;
        if let Some(before) = last.get(&key) {
            if change.op != Op::Delete && before.op != Op::Delete {
                for c in change.columns.iter_mut().filter(|c| c.unchanged) {
                    if let Some(b) = before.column(c.name.trim_matches('"')) {
                        if !b.unchanged {
                            *c = b.clone();
                        }
                    }
                }
            }
        }
        last.insert(key, change);
        Ok(())
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Rough size of the statements the changes make.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The statements that apply every change (deletes first: each key
    /// has one change), and empties the batch.
    pub fn take_sql(&mut self) -> String {
        let mut sql = String::new();
        for t in std::mem::take(&mut self.tables) {
            let keys: Vec<String> = t
                .key_columns
                .iter()
                .map(|k| TableName::new(None, k).to_string())
                .collect();
            let deleted: Vec<String> = t
                .last
                .iter()
                .filter(|(_, c)| c.op == Op::Delete)
                .map(|(k, _)| format!("({})", k.join(", ")))
                .collect();
            if !deleted.is_empty() {
                sql.push_str(&format!(
                    "DELETE FROM {} WHERE ({}) IN ({});\n",
                    t.table,
                    keys.join(", "),
                    deleted.join(", ")
                ));
            }
            // Upserts grouped by the columns they give.
            let mut groups: BTreeMap<Vec<&str>, Vec<String>> = BTreeMap::new();
            for c in t.last.values().filter(|c| c.op != Op::Delete) {
                let given: Vec<&Column> = c.columns.iter().filter(|c| !c.unchanged).collect();
                let names = given.iter().map(|c| c.name.as_str()).collect();
                let row = given.iter().map(|c| literal(c)).collect::<Vec<_>>();
                groups
                    .entry(names)
                    .or_default()
                    .push(format!("({})", row.join(", ")));
            }
            for (names, rows) in groups {
                let set: Vec<String> = names
                    .iter()
                    .filter(|n| !t.key_columns.iter().any(|k| k == n.trim_matches('"')))
                    .map(|n| format!("{n} = EXCLUDED.{n}"))
                    .collect();
                let action = if set.is_empty() {
                    "NOTHING".to_owned()
                } else {
                    format!("UPDATE SET {}", set.join(", "))
                };
                sql.push_str(&format!(
                    "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO {action};\n",
                    t.table,
                    names.join(", "),
                    rows.join(", "),
                    keys.join(", ")
                ));
            }
        }
        self.bytes = 0;
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebalance::logical::parse_change;

    fn batch(lines: &[&str]) -> String {
        let table = TableName::new(Some("shardgate_stage"), "j1_0");
        let mut b = Batch::default();
        for l in lines {
            b.add(
                &table,
                &["id".to_owned()],
                parse_change(l).expect("a change"),
            )
            .expect("added");
        }
        b.take_sql()
    }

    #[test]
    fn the_last_change_of_a_key_wins_and_rows_share_one_upsert() {
        let sql = batch(&[
            "table public.accounts: INSERT: id[bigint]:1 balance[bigint]:10",
            "table public.accounts: UPDATE: id[bigint]:1 balance[bigint]:11",
            "table public.accounts: INSERT: id[bigint]:2 balance[bigint]:20",
            "table public.accounts: DELETE: id[bigint]:3",
            "table public.accounts: INSERT: id[bigint]:3 balance[bigint]:30",
            "table public.accounts: DELETE: id[bigint]:4",
        ]);
        assert_eq!(
            sql,
            "DELETE FROM shardgate_stage.j1_0 WHERE (id) IN ((4::bigint));\n\
             INSERT INTO shardgate_stage.j1_0 (id, balance) VALUES (1::bigint, 11::bigint), (2::bigint, 20::bigint), (3::bigint, 30::bigint) \
             ON CONFLICT (id) DO UPDATE SET balance = EXCLUDED.balance;\n"
        );
    }

    #[test]
    fn a_toasted_value_left_alone_comes_from_the_earlier_change() {
        let sql = batch(&[
            "table public.docs: INSERT: id[bigint]:1 body[text]:'long' n[integer]:1",
            "table public.docs: UPDATE: id[bigint]:1 body[text]:unchanged-toast-datum n[integer]:2",
            "table public.docs: UPDATE: id[bigint]:2 body[text]:unchanged-toast-datum n[integer]:5",
        ]);
        assert!(
            sql.contains("(id, body, n) VALUES (1::bigint, 'long'::text, 2::integer)"),
            "{sql}"
        );
        assert!(
            sql.contains("(id, n) VALUES (2::bigint, 5::integer) ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n"),
            "{sql}"
        );
    }
}
