//! [`GroupAggregate`] and [`GroupOutput`] on hand-built plans and rows.

use crate::expr::{CmpOp, Literal, Node, Op};
use crate::ops::{format_of, GroupAggregate, GroupOutput};
use crate::plan::{AggSlot, GroupPlan, GroupValue, OutputColumn, ProxyExpr, SortKey};
use crate::row::{data_row, DataRow};
use crate::{oid, AggKind};

/// `SELECT g, count(*) ... GROUP BY g [HAVING count(*) > 2]`: the shards
/// send g as text, count(*) as text, then count(*) and g in binary.
fn plan(having: bool) -> GroupPlan {
    let exprs = if having {
        vec![ProxyExpr {
            tree: Node::Op {
                op: Op::Cmp(CmpOp::Gt),
                args: vec![Node::Input(0), Node::Const(Literal::Number("2".into()))],
                probe: None,
            },
            inputs: vec![GroupValue::Aggregate(0)],
            probes: Vec::new(),
        }]
    } else {
        Vec::new()
    };
    GroupPlan {
        merge_keys: vec![SortKey {
            column: 3,
            desc: false,
            nulls_first: false,
        }],
        group_columns: vec![3],
        aggregates: vec![AggSlot {
            func: AggKind::Count,
            partials: vec![2],
            distinct: false,
            order: Vec::new(),
        }],
        outputs: vec![OutputColumn::Group, OutputColumn::Aggregate(0)],
        having: having.then_some(0),
        exprs,
        final_sort: Vec::new(),
        single_row: false,
        repeat: None,
        distinct_value: None,
        gathered: false,
    }
}

const TYPES: [u32; 4] = [oid::INT4, oid::INT8, oid::INT8, oid::INT4];

fn shard_row(g: i32, count: i64) -> bytes::BytesMut {
    let text = g.to_string();
    data_row(&[
        Some(text.as_bytes()),
        Some(b"?"),
        Some(&count.to_be_bytes()),
        Some(&g.to_be_bytes()),
    ])
}

/// Groups of the rows (in group order) through both operators, as text.
fn run(p: &GroupPlan, rows: &[(i32, i64)]) -> Vec<(String, String)> {
    let out = GroupOutput::bind(p, &TYPES, 2).unwrap();
    let mut agg = GroupAggregate::new();
    let mut groups = Vec::new();
    for (g, c) in rows {
        groups.extend(agg.add(p, &TYPES, shard_row(*g, *c)).unwrap());
    }
    groups.extend(agg.finish());
    groups
        .iter()
        .filter_map(|g| out.project(p, &TYPES, g, &[]).unwrap())
        .map(|projected| {
            let view = DataRow::parse(&projected.row).unwrap();
            let text = |c| String::from_utf8(view.field(c).unwrap().to_vec()).unwrap();
            (text(0), text(1))
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn adjacent_rows_of_a_group_combine_their_partials() {
    let got = run(&plan(false), &[(1, 2), (1, 5), (2, 1), (3, 4), (3, 4)]);
    assert_eq!(got, pairs(&[("1", "7"), ("2", "1"), ("3", "8")]));
}

#[test]
fn having_drops_the_groups_it_is_not_true_for() {
    let got = run(&plan(true), &[(1, 1), (1, 1), (2, 3), (3, 1)]);
    assert_eq!(got, pairs(&[("2", "3")]));
}

#[test]
fn no_rows_make_no_groups() {
    assert!(run(&plan(false), &[]).is_empty());
}

#[test]
fn format_codes_follow_the_protocol_rules() {
    assert_eq!(format_of(&[], 3), 0);
    assert_eq!(format_of(&[1], 3), 1);
    assert_eq!(format_of(&[0, 1], 1), 1);
    assert_eq!(format_of(&[0, 1], 5), 0);
}
