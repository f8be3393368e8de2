//! Rows per second of the proxy's merge operators (issue 18), over fake
//! shard values built here: decoding sort keys from binary format and
//! comparing them as the k-way merge does, combining aggregate partials,
//! evaluating an expression over a combined group, and `DISTINCT ON`'s
//! first-row-per-key filter.
//!
//! ```sh
//! cargo bench -p shardgate-merge --bench merge_operators -- --warm-up-time 0.5 --measurement-time 2
//! ```
//!
//! The key and aggregate operators predate the expression evaluator and
//! `ops::FirstPerKey`, which the block between the `BEGIN` and `END` marker
//! lines below benches. Without that block
//! (`sed '/^\/\/ BEGIN new-in/,/^\/\/ END new-in/d'`) the file builds against
//! older commits of the crate, for before/after figures.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardgate_merge::{decode_key, oid, AggKind, AggState, Key, Numeric};

/// Rows per measured iteration.
const ROWS: usize = 4096;

/// A spread of integers (Knuth's multiplicative hash of the row number).
fn ints() -> Vec<i64> {
    (0..ROWS as i64)
        .map(|i| (i * 2_654_435_761) % 1_000_003)
        .collect()
}

fn int8_binary() -> Vec<Vec<u8>> {
    ints().iter().map(|v| v.to_be_bytes().to_vec()).collect()
}

/// `numeric` values with two decimals, in binary format.
fn numeric_binary() -> Vec<Vec<u8>> {
    ints()
        .iter()
        .map(|v| {
            let n = Numeric::parse_text(&format!("{}.{:02}", v, v % 100)).expect("numeric");
            let mut out = BytesMut::new();
            n.to_binary(&mut out);
            out.to_vec()
        })
        .collect()
}

/// 32-character hex strings (like `md5(...)`), as text in binary format.
fn text_binary() -> Vec<Vec<u8>> {
    ints()
        .iter()
        .map(|v| format!("{:016x}{:016x}", v * 31, v ^ 0x5bd1e995).into_bytes())
        .collect()
}

fn decoded(type_oid: u32, values: &[Vec<u8>]) -> Vec<Key> {
    values
        .iter()
        .map(|v| decode_key(type_oid, Some(v)).expect("decode"))
        .collect()
}

/// `decode_key` and `Key::cmp_sort` per type.
fn keys(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    g.throughput(Throughput::Elements(ROWS as u64));
    for (name, type_oid, values) in [
        ("int8", oid::INT8, int8_binary()),
        ("numeric", oid::NUMERIC, numeric_binary()),
        ("text", oid::TEXT, text_binary()),
    ] {
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| {
                for v in &values {
                    black_box(decode_key(type_oid, Some(black_box(v))).expect("decode"));
                }
            })
        });
        let keys = decoded(type_oid, &values);
        g.bench_function(format!("cmp_sort/{name}"), |b| {
            b.iter(|| {
                for pair in keys.windows(2) {
                    black_box(black_box(&pair[0]).cmp_sort(&pair[1], true, true));
                }
            })
        });
    }
    g.finish();
}

/// `AggState::add` of one shard row's partials, per aggregate.
fn aggregates(c: &mut Criterion) {
    let int8 = int8_binary();
    let numeric = numeric_binary();
    let mut g = c.benchmark_group("agg_add");
    g.throughput(Throughput::Elements(ROWS as u64));
    let cases: [(&str, AggKind, u32, Vec<u32>); 4] = [
        ("count", AggKind::Count, oid::INT8, vec![oid::INT8]),
        ("sum_int8", AggKind::Sum, oid::INT8, vec![oid::INT8]),
        (
            "sum_numeric",
            AggKind::Sum,
            oid::NUMERIC,
            vec![oid::NUMERIC],
        ),
        (
            "avg_int",
            AggKind::Avg,
            oid::NUMERIC,
            vec![oid::INT8, oid::INT8, oid::NUMERIC],
        ),
    ];
    for (name, kind, output, partial_oids) in cases {
        let rows: Vec<Vec<Option<&[u8]>>> = (0..ROWS)
            .map(|i| {
                partial_oids
                    .iter()
                    .map(|t| {
                        Some(if *t == oid::NUMERIC {
                            &numeric[i][..]
                        } else {
                            &int8[i][..]
                        })
                    })
                    .collect()
            })
            .collect();
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut state = AggState::new(kind, output, &partial_oids).expect("state");
                for row in &rows {
                    state.add(black_box(row)).expect("add");
                }
                black_box(state)
            })
        });
    }
    g.finish();
}

/// The bench groups: this one, without the block below, builds against
/// commits before issue 18.
#[allow(unused_macros)]
macro_rules! groups {
    () => {
        criterion_group!(benches, keys, aggregates);
    };
}

// BEGIN new-in-issue-18
/// `Bound::eval` of expressions over combined aggregates (bound once), and
/// `FirstPerKey::admit`.
fn new_operators(c: &mut Criterion) {
    use shardgate_merge::expr::{CmpOp, Literal, Node, Op};
    use shardgate_merge::ops::FirstPerKey;

    let sums = decoded(oid::NUMERIC, &numeric_binary());
    let counts: Vec<Key> = ints().iter().map(|v| Key::Int(v + 1)).collect();
    let groups: Vec<[Key; 2]> = sums
        .iter()
        .zip(&counts)
        .map(|(s, c)| [s.clone(), c.clone()])
        .collect();
    let mut g = c.benchmark_group("expr_eval");
    g.throughput(Throughput::Elements(ROWS as u64));
    // sum(x) / count(*), sum numeric and count bigint: numeric division.
    let div = Node::Op {
        op: Op::Div,
        args: vec![Node::Input(0), Node::Input(1)],
        probe: Some(0),
    };
    // HAVING count(*) > 100
    let having = Node::Op {
        op: Op::Cmp(CmpOp::Gt),
        args: vec![Node::Input(1), Node::Const(Literal::Number("100".into()))],
        probe: None,
    };
    for (name, node) in [("sum_div_count", div), ("having_count_gt", having)] {
        let bound = node
            .bind(&[oid::NUMERIC, oid::INT8], &[oid::NUMERIC])
            .expect("bind");
        g.bench_function(name, |b| {
            b.iter(|| {
                for inputs in &groups {
                    black_box(bound.eval(black_box(inputs)).expect("eval"));
                }
            })
        });
    }
    g.finish();

    // DISTINCT ON (a): runs of four rows with the same leading key.
    let rows: Vec<[Key; 2]> = ints()
        .iter()
        .enumerate()
        .map(|(i, v)| [Key::Int(i as i64 / 4), Key::Int(*v)])
        .collect();
    let mut g = c.benchmark_group("ops");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("first_per_key", |b| {
        b.iter(|| {
            let mut first = FirstPerKey::new(1);
            for row in &rows {
                black_box(first.admit(black_box(row)));
            }
        })
    });
    g.finish();
}

/// All bench groups (shadows the `groups!` above).
macro_rules! groups {
    () => {
        criterion_group!(benches, keys, aggregates, new_operators);
    };
}
// END new-in-issue-18

groups!();
criterion_main!(benches);
