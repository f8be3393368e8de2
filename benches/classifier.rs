//! Micro-benchmarks of statement classification: cache hits with varying
//! literals versus full classification (sqlparser), for typical statements.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate_router::{Analyzer, Classifier};

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = ";
const SHORT_SELECT: &str = "SELECT 1";
const TPCB_UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;";
const THREE_STATEMENTS: &str =
    "SET application_name = 'bench'; SELECT abalance FROM pgbench_accounts WHERE aid = 42; SELECT now()";

fn pgbench_selects() -> Vec<String> {
    (0..1024u32)
        .map(|i| {
            format!(
                "{PGBENCH_SELECT}{}",
                i.wrapping_mul(2_654_435_761) % 100_000
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let cached = Analyzer::new(Classifier::new(&[]), 10_000);
    let uncached = Analyzer::new(Classifier::new(&[]), 0);
    let selects = pgbench_selects();

    let mut g = c.benchmark_group("classify");
    let mut i = 0usize;
    g.bench_function("pgbench_select/cached", |b| {
        b.iter(|| {
            i = (i + 1) % selects.len();
            black_box(cached.classify(black_box(&selects[i]), None))
        })
    });
    g.bench_function("pgbench_select/uncached", |b| {
        b.iter(|| {
            i = (i + 1) % selects.len();
            black_box(uncached.classify(black_box(&selects[i]), None))
        })
    });
    for (name, sql) in [
        ("short_select", SHORT_SELECT),
        ("tpcb_update", TPCB_UPDATE),
        ("three_statements", THREE_STATEMENTS),
    ] {
        g.bench_function(format!("{name}/cached"), |b| {
            b.iter(|| black_box(cached.classify(black_box(sql), None)))
        });
        g.bench_function(format!("{name}/uncached"), |b| {
            b.iter(|| black_box(uncached.classify(black_box(sql), None)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
