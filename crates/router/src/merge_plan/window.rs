//! Window functions across shards: pushed down when every window's
//! partition lives on one shard, otherwise computed at the proxy.
//!
//! A window whose `PARTITION BY` includes the shard key of a FROM table
//! (not NULL-extended by an outer join) sees all the rows of each of its
//! partitions on one shard, so each shard computes it exactly; the rows
//! are then merged like any others (ORDER BY, LIMIT, DISTINCT). Windows
//! over rows of several shards are computed by the proxy
//! ([`WindowPlan`], see `window_merge.rs`).

use sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, NamedWindowExpr, OrderByExpr,
    Select, SelectItem, WindowType,
};

use super::aggregate::mentions_window;
use super::distinct::{groups_on_one_shard, KeyBinding};
use super::{ident_name, refuse, Unmergeable};

/// How many window function calls the select list and ORDER BY hold, and
/// whether one of them cannot run on each shard alone (the proxy computes
/// them then).
pub(super) fn check_windows(
    select: &Select,
    order: &[OrderByExpr],
    bindings: &[KeyBinding],
) -> Result<(usize, bool), Unmergeable> {
    let mut found = Vec::new();
    for item in &select.projection {
        if let SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } = item {
            collect(e, &mut found)?;
        }
    }
    for o in order {
        collect(&o.expr, &mut found)?;
    }
    let mut merged = false;
    for w in &found {
        let partition = partition_of(w, select, 0)?;
        merged |= !groups_on_one_shard(&partition, bindings);
    }
    Ok((found.len(), merged))
}

/// The PARTITION BY of a window, following named windows.
fn partition_of(w: &WindowType, select: &Select, depth: usize) -> Result<Vec<Expr>, Unmergeable> {
    if depth > 16 {
        return refuse("named windows nested this deep");
    }
    let named = |name: &Ident| -> Result<Vec<Expr>, Unmergeable> {
        let want = ident_name(name);
        let def = select
            .named_window
            .iter()
            .find(|d| ident_name(&d.0) == want)
            .ok_or_else(|| Unmergeable {
                construct: format!("the window {want}, not defined in this SELECT"),
            })?;
        match &def.1 {
            NamedWindowExpr::WindowSpec(spec) => {
                partition_of(&WindowType::WindowSpec(spec.clone()), select, depth + 1)
            }
            NamedWindowExpr::NamedWindow(other) => {
                partition_of(&WindowType::NamedWindow(other.clone()), select, depth + 1)
            }
        }
    };
    match w {
        WindowType::NamedWindow(name) => named(name),
        WindowType::WindowSpec(spec) => match &spec.window_name {
            // `OVER (w ORDER BY ...)` copies w's PARTITION BY.
            Some(base) if spec.partition_by.is_empty() => named(base),
            _ => Ok(spec.partition_by.clone()),
        },
    }
}

/// Collects the windows of the window calls in `e`; an expression the walk
/// does not know that still mentions a window is refused.
fn collect<'e>(e: &'e Expr, out: &mut Vec<&'e WindowType>) -> Result<(), Unmergeable> {
    match e {
        Expr::Function(f) => {
            if let Some(w) = &f.over {
                out.push(w);
            }
            if let FunctionArguments::List(list) = &f.args {
                for a in &list.args {
                    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(x))
                    | FunctionArg::Named {
                        arg: FunctionArgExpr::Expr(x),
                        ..
                    } = a
                    {
                        collect(x, out)?;
                    }
                }
            }
            Ok(())
        }
        Expr::Nested(x)
        | Expr::UnaryOp { expr: x, .. }
        | Expr::Cast { expr: x, .. }
        | Expr::IsNull(x)
        | Expr::IsNotNull(x) => collect(x, out),
        Expr::BinaryOp { left, right, .. } => {
            collect(left, out)?;
            collect(right, out)
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            for x in operand.iter().chain(else_result.iter()) {
                collect(x, out)?;
            }
            for c in conditions {
                collect(&c.condition, out)?;
                collect(&c.result, out)?;
            }
            Ok(())
        }
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) => Ok(()),
        // Subqueries run whole on each shard.
        Expr::Subquery(_) | Expr::Exists { .. } => Ok(()),
        other if mentions_window(&other.to_string()) => {
            refuse(format!("the window function in {other}"))
        }
        _ => Ok(()),
    }
}
