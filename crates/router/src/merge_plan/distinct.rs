//! When `count/sum/avg(DISTINCT x)` computed by each shard is exact.
//!
//! A shard's `count(DISTINCT x)` counts the values it holds; the combined
//! count is their sum only when no value of `x` is on two shards within one
//! group. That holds when
//!
//! - every group lives on one shard: the statement is grouped by a set of
//!   keys that includes the shard key column of a sharded table of the FROM
//!   clause (no shard holds a NULL key, and the table is not on the
//!   NULL-extended side of an outer join, where NULL keys would appear on
//!   every shard); or
//! - `x` is the shard key column itself: a key value lives on one shard.
//!   NULLs (from outer joins) are ignored by the aggregate.

use sqlparser::ast::{Expr, JoinOperator, Select, TableFactor};

use super::aggregate::strip_nested;
use super::{ident_name, name_parts};
use crate::shard::TableLookup;

/// A sharded table of the top-level FROM clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyBinding {
    /// The name its columns are qualified with (the alias, or the table's
    /// name).
    name: String,
    /// Its shard key column.
    key: String,
    /// On the NULL-extended side of an outer join.
    nullable: bool,
}

/// The sharded tables of the top-level FROM clause with their shard keys.
/// Tables inside parenthesised joins, derived tables and CTEs are left out
/// (no pushdown is decided from them).
pub(super) fn key_bindings(
    select: &Select,
    tables: &dyn TableLookup,
    ctes: &[String],
) -> Vec<KeyBinding> {
    let binding = |f: &TableFactor| -> Option<KeyBinding> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = f
        else {
            return None;
        };
        let parts = name_parts(name);
        let (sharded, table) = match parts.as_slice() {
            [t] if ctes.contains(t) => return None,
            [t] => (tables.sharded(None, t)?, t.clone()),
            [s, t] => (tables.sharded(Some(s), t)?, t.clone()),
            _ => return None,
        };
        Some(KeyBinding {
            name: alias.as_ref().map_or(table, |a| ident_name(&a.name)),
            key: sharded.column,
            nullable: false,
        })
    };
    let mut out = Vec::new();
    for twj in &select.from {
        let mut these: Vec<Option<KeyBinding>> = vec![binding(&twj.relation)];
        for j in &twj.joins {
            let mut right = binding(&j.relation);
            let set = |b: &mut Option<KeyBinding>| {
                if let Some(b) = b {
                    b.nullable = true;
                }
            };
            match &j.join_operator {
                JoinOperator::Join(_)
                | JoinOperator::Inner(_)
                | JoinOperator::CrossJoin(_)
                | JoinOperator::StraightJoin(_) => {}
                JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => set(&mut right),
                JoinOperator::Right(_) | JoinOperator::RightOuter(_) => {
                    these.iter_mut().for_each(set)
                }
                // FULL and anything else: every side may be NULL-extended.
                _ => {
                    these.iter_mut().for_each(set);
                    set(&mut right);
                }
            }
            these.push(right);
        }
        out.extend(these.into_iter().flatten());
    }
    out
}

/// The binding whose shard key column `e` names (through parentheses):
/// `key` when some FROM table's shard key is `key` (a name other tables
/// also have would be ambiguous to Postgres), `q.key` when `q` names a
/// table sharded by `key`.
fn key_of<'b>(e: &Expr, bindings: &'b [KeyBinding]) -> Option<&'b KeyBinding> {
    match strip_nested(e) {
        Expr::Identifier(c) => {
            let c = ident_name(c);
            bindings.iter().find(|b| b.key == c)
        }
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [q, c] => {
                let (q, c) = (ident_name(q), ident_name(c));
                bindings.iter().find(|b| b.name == q && b.key == c)
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether a row's group keys place all the rows of its group on one shard:
/// one of them is the shard key of a table not NULL-extended by an outer
/// join.
pub(super) fn groups_on_one_shard(group_exprs: &[Expr], bindings: &[KeyBinding]) -> bool {
    group_exprs.iter().any(|g| match strip_nested(g) {
        Expr::Identifier(c) => {
            // Every table with that key name must be non-nullable (more
            // than one is Postgres's ambiguity error anyway).
            let c = ident_name(c);
            let found: Vec<_> = bindings.iter().filter(|b| b.key == c).collect();
            !found.is_empty() && found.iter().all(|b| !b.nullable)
        }
        g => key_of(g, bindings).is_some_and(|b| !b.nullable),
    })
}

/// Whether `arg` (a DISTINCT aggregate's argument) is a shard key column,
/// so its distinct values never repeat across shards.
pub(super) fn is_shard_key(arg: &Expr, bindings: &[KeyBinding]) -> bool {
    key_of(arg, bindings).is_some()
}
