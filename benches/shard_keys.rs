//! Micro-benchmarks of shard-key routing per statement: planning the
//! statement (`Analyzer::plan`: cache hit with varying literals, or
//! a full sqlparser analysis with the cache off), resolving the key values
//! and looking them up in the shard map (xxhash64 ring, 3 shards x 256
//! virtual nodes), the same steps a sharded session takes before it picks a
//! shard. Run with `cargo bench -p shardgate --bench shard_keys`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::config::Config;
use shardgate_router::shard::{KeyFilter, ShardPlan, ShardedTable, TableLookup, ValueSource};
use shardgate_router::{Analyzer, Classifier};
use shardgate_shardmap::{Function, ShardKey, ShardMap};

/// Three equally weighted shards; hash-sharded tables as in the demo and in
/// the sharded pgbench target.
const CONFIG: &str = r#"
[[users]]
name = "app"
password = "secret"

[[shards]]
primary = "127.0.0.1:5432"
[[shards]]
primary = "127.0.0.1:5433"
[[shards]]
primary = "127.0.0.1:5434"

[[sharded_tables]]
table = "pgbench_accounts"
column = "aid"

[[sharded_tables]]
table = "customers"
column = "id"

[[sharded_tables]]
table = "orders"
column = "customer_id"

[[reference_tables]]
table = "countries"
"#;

/// Statement shapes; `{k}` is replaced by varying keys (`{k1}`: the next key).
const SHAPES: &[(&str, &str)] = &[
    (
        "point_select",
        "SELECT abalance FROM pgbench_accounts WHERE aid = {k}",
    ),
    (
        "insert",
        "INSERT INTO orders (id, customer_id, amount, status) VALUES ({k}, {k1}, 9.99, 'new')",
    ),
    (
        "update",
        "UPDATE pgbench_accounts SET abalance = abalance + 17 WHERE aid = {k}",
    ),
    (
        "in_list_8",
        "SELECT id, name FROM customers WHERE id IN ({k}, {k1}, {k2}, {k3}, {k4}, {k5}, {k6}, {k7})",
    ),
    (
        "colocated_join",
        "SELECT c.name, o.amount FROM customers c JOIN orders o ON o.customer_id = c.id \
         WHERE c.id = {k} AND o.status = 'paid'",
    ),
];

/// The shard map as the planner sees it (what the session's `MapLookup` does).
struct Lookup<'a>(&'a ShardMap);

impl TableLookup for Lookup<'_> {
    fn sharded(&self, schema: Option<&str>, name: &str) -> Option<ShardedTable> {
        self.0.table(schema, name).map(|r| ShardedTable {
            column: r.column.clone(),
            ranged: matches!(r.function, Function::Range(_)),
        })
    }

    fn is_reference(&self, schema: Option<&str>, name: &str) -> bool {
        self.0.is_reference(schema, name)
    }

    fn version(&self) -> u64 {
        self.0.version()
    }
}

/// The shards a statement goes to: plan, resolve literals (and `$n` from
/// `params`, text format), parse the keys, look them up.
fn route(
    planner: &Analyzer,
    map: &ShardMap,
    sql: &str,
    params: &[&str],
    shards: &mut Vec<usize>,
) -> usize {
    shards.clear();
    let (plan, literals) = planner.plan(sql, &Lookup(map));
    let (table, values): (&(Option<String>, String), Vec<ValueSource>) = match &*plan {
        ShardPlan::Keyed {
            table,
            filter: KeyFilter::Eq(values),
        } => (table, values.iter().map(|v| v.resolve(&literals)).collect()),
        ShardPlan::Insert(ins) => {
            let rule = map.table(ins.table.0.as_deref(), &ins.table.1).unwrap();
            let cols = ins.columns.as_ref().expect("a column list");
            let i = cols.iter().position(|c| *c == rule.column).unwrap();
            let values = ins
                .rows
                .iter()
                .map(|r| r.values[i].resolve(&literals))
                .collect();
            (&ins.table, values)
        }
        other => panic!("unexpected plan {other:?} for {sql}"),
    };
    let rule = map.table(table.0.as_deref(), &table.1).unwrap();
    for v in &values {
        let text = match v {
            ValueSource::Literal(t) => t.as_str(),
            ValueSource::Param(n) => params[n - 1],
            other => panic!("no key value in {other:?}"),
        };
        let key = ShardKey::parse_text(rule.key_type, text).unwrap();
        let shard = map.shard_for(rule, &key).unwrap();
        if !shards.contains(&shard) {
            shards.push(shard);
        }
    }
    shards.len()
}

/// 1024 texts of `shape` with pseudo-random keys.
fn texts(shape: &str) -> Vec<String> {
    (0..1024u64)
        .map(|i| {
            let k = (i.wrapping_mul(2_654_435_761) % 1_000_000) + 1;
            let mut s = shape.to_owned();
            for j in (1..8).rev() {
                s = s.replace(&format!("{{k{j}}}"), &(k + j).to_string());
            }
            s.replace("{k}", &k.to_string())
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let map = Config::parse(CONFIG, "bench")
        .expect("valid config")
        .shard_map()
        .expect("valid shard map");
    let cached = Analyzer::new(Classifier::default(), 10_000);
    let uncached = Analyzer::new(Classifier::default(), 0);
    let mut shards = Vec::with_capacity(8);

    let mut g = c.benchmark_group("shard_route");
    for (name, shape) in SHAPES {
        let texts = texts(shape);
        for (mode, planner) in [("cached", &cached), ("uncached", &uncached)] {
            let mut i = 0usize;
            g.bench_function(format!("{name}/{mode}"), |b| {
                b.iter(|| {
                    i = (i + 1) % texts.len();
                    black_box(route(planner, &map, black_box(&texts[i]), &[], &mut shards))
                })
            });
        }
    }
    // Extended protocol: one statement text, the key arrives as a text
    // parameter (the plan is cached once; only the key varies).
    let prepared = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
    let keys: Vec<String> = (0..1024u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) % 1_000_000) + 1).to_string())
        .collect();
    for (mode, planner) in [("cached", &cached), ("uncached", &uncached)] {
        let mut i = 0usize;
        g.bench_function(format!("point_select_param/{mode}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(route(
                    planner,
                    &map,
                    black_box(prepared),
                    &[keys[i].as_str()],
                    &mut shards,
                ))
            })
        });
    }
    g.finish();

    // The shard map alone: key parsing plus the ring lookup.
    let mut g = c.benchmark_group("shard_map");
    let rule = map.table(None, "pgbench_accounts").unwrap().clone();
    let mut i = 0usize;
    g.bench_function("parse_text+shard_for/bigint", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let key = ShardKey::parse_text(rule.key_type, black_box(&keys[i])).unwrap();
            black_box(map.shard_for(&rule, &key).unwrap())
        })
    });
    let mut k = 0i64;
    g.bench_function("hash_shard/bigint", |b| {
        b.iter(|| {
            k = k.wrapping_add(0x9E37_79B9);
            black_box(map.hash_shard(&ShardKey::Int(black_box(k))))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
