//! `EXPLAIN` of a statement over several shards: the plan describes itself
//! as Postgres-style lines, the operators from the one the client reads
//! down to the query every shard runs.

use shardgate_merge::expr::{CmpOp, Literal, Node, Op};

use super::{
    AggSlot, FinalKey, GroupPlan, GroupValue, MergeMode, MergePlan, OutputColumn, ProxyExpr,
    RowCount, SortKey,
};

impl MergePlan {
    /// The plan as `QUERY PLAN` lines for a statement sent to `shards`.
    pub fn describe(&self, shards: &[usize]) -> Vec<String> {
        let list = shards
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut ops: Vec<(String, Vec<String>)> = Vec::new();
        if self.limit.is_some() || self.offset.is_some() {
            let mut text = String::from("Limit");
            if let Some(l) = &self.limit {
                text.push_str(&format!(" {}", count(l)));
            }
            if let Some(o) = &self.offset {
                text.push_str(&format!(" offset {}", count(o)));
            }
            ops.push((text, Vec::new()));
        }
        if let Some(w) = &self.window {
            ops.push((
                format!(
                    "WindowAgg at the proxy: {} call(s), partitions by the first {} sort key(s), peers by the next {}",
                    w.calls.len(),
                    w.partition_keys,
                    w.order_keys
                ),
                w.calls
                    .iter()
                    .map(|c| format!("column {}: {:?}", c.output + 1, c.func))
                    .collect(),
            ));
        }
        match &self.mode {
            MergeMode::Concat => {
                ops.push(("Append shard rows as they arrive".to_owned(), Vec::new()))
            }
            MergeMode::Sorted { keys, distinct_on } => {
                if *distinct_on > 0 {
                    ops.push((
                        format!("Unique: first row per value of the first {distinct_on} sort keys (DISTINCT ON)"),
                        Vec::new(),
                    ));
                }
                ops.push((
                    if keys.is_empty() {
                        "Append shard rows as they arrive".to_owned()
                    } else {
                        format!("Merge sorted shard streams by {}", sort_keys(keys))
                    },
                    Vec::new(),
                ));
            }
            MergeMode::Grouped(g) => grouped(g, &mut ops),
        }
        let mut out = vec![format!("Shardgate Merge  (shards: {list})")];
        if self.hidden > 0 {
            out.push(format!(
                "  Hidden columns: {} after the visible ones (stripped before the client)",
                self.hidden
            ));
        }
        let mut indent = 2;
        for (op, details) in ops {
            out.push(format!("{}->  {op}", " ".repeat(indent)));
            for d in details {
                out.push(format!("{}      {d}", " ".repeat(indent)));
            }
            indent += 6;
        }
        out.push(format!(
            "{}->  Shard query (each shard):",
            " ".repeat(indent)
        ));
        out.push(format!("{}      {}", " ".repeat(indent), self.shard_sql));
        out
    }
}

fn count(c: &RowCount) -> String {
    match c {
        RowCount::Literal(n) => n.to_string(),
        RowCount::Param(i) => format!("${}", i + 1),
    }
}

fn direction(desc: bool, nulls_first: bool) -> String {
    format!(
        "{} NULLS {}",
        if desc { "DESC" } else { "ASC" },
        if nulls_first { "FIRST" } else { "LAST" }
    )
}

fn sort_keys(keys: &[SortKey]) -> String {
    keys.iter()
        .map(|k| format!("col{} {}", k.column + 1, direction(k.desc, k.nulls_first)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn grouped(g: &GroupPlan, ops: &mut Vec<(String, Vec<String>)>) {
    let outputs = g
        .outputs
        .iter()
        .enumerate()
        .map(|(j, o)| match o {
            OutputColumn::Group => format!("col{} (per group)", j + 1),
            OutputColumn::Aggregate(s) => agg(&g.aggregates[*s], *s),
            OutputColumn::Expr(n) => expr(&g.exprs[*n], g),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(n) = g.repeat {
        ops.push((
            format!(
                "Repeat each row {} times (INTERSECT/EXCEPT ALL)",
                expr(&g.exprs[n], g)
            ),
            Vec::new(),
        ));
    }
    if !g.final_sort.is_empty() {
        let keys = g
            .final_sort
            .iter()
            .map(|k: &FinalKey| {
                format!("{} {}", value(k.value, g), direction(k.desc, k.nulls_first))
            })
            .collect::<Vec<_>>()
            .join(", ");
        ops.push((
            format!("Sort groups by {keys}"),
            vec![
                "Memory: within merge_memory_limit; with a LIMIT only the best rows are kept"
                    .to_owned(),
            ],
        ));
    }
    if let Some(h) = g.having {
        ops.push((format!("Filter: {}", expr(&g.exprs[h], g)), Vec::new()));
    }
    let mut details = vec![format!("Output: {outputs}")];
    if !g.group_columns.is_empty() {
        details.push(format!(
            "Group key: {}",
            g.group_columns
                .iter()
                .map(|c| format!("col{}", c + 1))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(c) = g.distinct_value {
        details.push(format!(
            "DISTINCT aggregates: each value of col{} counted once per group",
            c + 1
        ));
    }
    ops.push((
        if g.single_row {
            "Aggregate shard partials into one row".to_owned()
        } else {
            "Combine adjacent rows of each group".to_owned()
        },
        details,
    ));
    if !g.merge_keys.is_empty() {
        ops.push((
            format!("Merge sorted shard streams by {}", sort_keys(&g.merge_keys)),
            Vec::new(),
        ));
    }
}

fn agg(slot: &AggSlot, n: usize) -> String {
    let cols = slot
        .partials
        .iter()
        .map(|c| format!("col{}", c + 1))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "{}{}#{n}({cols})",
        format!("{:?}", slot.func).to_ascii_lowercase(),
        if slot.distinct { " distinct" } else { "" }
    )
}

fn value(v: GroupValue, g: &GroupPlan) -> String {
    match v {
        GroupValue::Column(c) => format!("col{}", c + 1),
        GroupValue::Aggregate(s) => agg(&g.aggregates[s], s),
        GroupValue::Expr(n) => expr(&g.exprs[n], g),
    }
}

fn expr(x: &ProxyExpr, g: &GroupPlan) -> String {
    node(&x.tree, x, g)
}

fn node(n: &Node, x: &ProxyExpr, g: &GroupPlan) -> String {
    match n {
        Node::Input(i) => x.inputs.get(*i).map_or("?".into(), |v| value(*v, g)),
        Node::Const(Literal::Null) => "NULL".into(),
        Node::Const(Literal::Number(t)) => t.clone(),
        Node::Const(Literal::Text(t)) => format!("'{}'", t.replace('\'', "''")),
        Node::Const(Literal::Bool(b)) => b.to_string(),
        Node::Op { op, args, .. } => {
            let a: Vec<String> = args.iter().map(|a| node(a, x, g)).collect();
            let infix = |sym: &str| format!("({})", a.join(&format!(" {sym} ")));
            match op {
                Op::Add => infix("+"),
                Op::Sub => infix("-"),
                Op::Mul => infix("*"),
                Op::Div => infix("/"),
                Op::Mod => infix("%"),
                Op::Concat => infix("||"),
                Op::And => infix("AND"),
                Op::Or => infix("OR"),
                Op::Neg => format!("(-{})", a.join("")),
                Op::Not => format!("(NOT {})", a.join("")),
                Op::Cmp(c) => infix(match c {
                    CmpOp::Eq => "=",
                    CmpOp::NotEq => "<>",
                    CmpOp::Lt => "<",
                    CmpOp::LtEq => "<=",
                    CmpOp::Gt => ">",
                    CmpOp::GtEq => ">=",
                }),
                Op::IsDistinct(d) => infix(if *d {
                    "IS DISTINCT FROM"
                } else {
                    "IS NOT DISTINCT FROM"
                }),
                Op::IsNull(is) => {
                    format!("({} IS {}NULL)", a.join(""), if *is { "" } else { "NOT " })
                }
                Op::InList(neg) => format!(
                    "({} {}IN ({}))",
                    a[0],
                    if *neg { "NOT " } else { "" },
                    a[1..].join(", ")
                ),
                Op::Cast(t) => format!("({})::oid{}", a.join(""), t.oid),
                Op::Case { .. } => format!("CASE({})", a.join(", ")),
                other => format!(
                    "{}({})",
                    format!("{other:?}").to_ascii_lowercase(),
                    a.join(", ")
                ),
            }
        }
    }
}
