//! Cross-shard latency benchmark (issue 18): one client, a 3-shard
//! aggregate and a 3-shard ordered LIMIT through shardgate, against the
//! slowest shard answering its part directly.
//!
//! Three primaries, each holding a third of table `t` (`BENCH_ROWS` rows in
//! all, range-sharded on `id` so each shard is loaded directly with its own
//! range) and of `ti`, the same rows with an index on `v`. shardgate runs
//! with its shipped defaults. For each query the bench asks the proxy for
//! `EXPLAIN <query>`, whose last line is the query every shard runs, then
//! times, round after round:
//!
//! - `proxy`: the query through shardgate, from send to the last row;
//! - `together`: the shard query on all three shards at once, one
//!   connection each (what the proxy makes them do), the slowest shard's time;
//! - `alone`: the shard query on each shard in turn, the slowest one's time
//!   (each shard has the machine to itself).
//!
//! Two reference cases measure what one proxy hop costs on the machine,
//! which no fan-out can go below: a single-shard point query (`point`,
//! `point-simple`) through shardgate and the same through PgBouncer
//! (`point-pgbouncer`, transaction pooling in front of shard 0), each
//! against shard 0 answering it directly. The `added` column is the proxy's
//! median minus the direct one, in µs.
//!
//! Within a round the three measurements of a query follow each other, in
//! an order that rotates from round to round, so machine noise hits them
//! alike. Extended-protocol queries are prepared once and executed each
//! time (binary results, as tokio-postgres asks); simple-protocol ones go
//! through `simple_query` (text). The report gives the median and p95 of
//! each, the ratio of the medians `proxy ÷ together` and `proxy ÷ alone`
//! (with the 25th–75th percentile of the per-round ratios), and the proxy's
//! CPU time per query (all its threads, from `/proc/<pid>/task/*/schedstat`;
//! PgBouncer's for `point-pgbouncer`).
//!
//! ```sh
//! SHARDGATE_HARNESS_DIR=/dev/shm/sgh-bench cargo bench -p shardgate --bench cross_shard_latency
//! ```
//!
//! Environment: `BENCH_ROWS` [1000000] rows of `t` (and of `ti`),
//! `BENCH_GROUPS` [50] distinct values of `g`, `BENCH_ROUNDS` [60] measured
//! rounds (after `BENCH_WARMUP` [3]), `BENCH_ONLY` [all] a comma-separated
//! list of query names to run, `BENCH_WORKERS` [the shipped default] the
//! proxy's runtime threads.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec};
use tokio_postgres::{Client, Statement};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The protocol a query is sent in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Prepared once, executed each time; binary results.
    Extended,
    /// `simple_query`; text results.
    Simple,
}

/// What a query goes through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// shardgate, merging the shards' answers.
    Merge,
    /// shardgate, to the one shard that holds the row.
    Single,
    /// PgBouncer in front of shard 0 (the reference hop).
    PgBouncer,
}

/// One query of the bench.
struct Case {
    name: &'static str,
    sql: &'static str,
    protocol: Protocol,
    via: Via,
}

const CASES: &[Case] = &[
    Case {
        name: "group-agg",
        sql: "SELECT g, count(*), sum(v), avg(v) FROM t GROUP BY g",
        protocol: Protocol::Extended,
        via: Via::Merge,
    },
    Case {
        name: "group-agg-simple",
        sql: "SELECT g, count(*), sum(v), avg(v) FROM t GROUP BY g",
        protocol: Protocol::Simple,
        via: Via::Merge,
    },
    Case {
        name: "total-agg",
        sql: "SELECT count(*), sum(v), avg(v) FROM t",
        protocol: Protocol::Extended,
        via: Via::Merge,
    },
    Case {
        name: "top10-noindex",
        sql: "SELECT * FROM t ORDER BY v DESC LIMIT 10",
        protocol: Protocol::Extended,
        via: Via::Merge,
    },
    Case {
        name: "top10-index",
        sql: "SELECT * FROM ti ORDER BY v DESC LIMIT 10",
        protocol: Protocol::Extended,
        via: Via::Merge,
    },
    Case {
        name: "top10-index-simple",
        sql: "SELECT * FROM ti ORDER BY v DESC LIMIT 10",
        protocol: Protocol::Simple,
        via: Via::Merge,
    },
    Case {
        name: "point",
        sql: "SELECT * FROM ti WHERE id = 5",
        protocol: Protocol::Extended,
        via: Via::Single,
    },
    Case {
        name: "point-simple",
        sql: "SELECT * FROM ti WHERE id = 5",
        protocol: Protocol::Simple,
        via: Via::Single,
    },
    Case {
        name: "point-pgbouncer",
        sql: "SELECT * FROM ti WHERE id = 5",
        protocol: Protocol::Extended,
        via: Via::PgBouncer,
    },
];

/// A query ready to run on one connection.
enum Ready {
    Prepared(Statement),
    Simple(String),
}

impl Ready {
    async fn prepare(client: &Client, sql: &str, protocol: Protocol) -> Ready {
        match protocol {
            Protocol::Extended => Ready::Prepared(
                client
                    .prepare(sql)
                    .await
                    .unwrap_or_else(|e| panic!("prepare {sql}: {e}")),
            ),
            Protocol::Simple => Ready::Simple(sql.to_owned()),
        }
    }

    /// Runs it to the last row; returns how long that took and the rows.
    async fn run(&self, client: &Client) -> (Duration, usize) {
        let start = Instant::now();
        let rows = match self {
            Ready::Prepared(stmt) => client.query(stmt, &[]).await.expect("query").len(),
            Ready::Simple(sql) => client
                .simple_query(sql)
                .await
                .expect("simple query")
                .iter()
                .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                .count(),
        };
        (start.elapsed(), rows)
    }
}

/// Nanoseconds the process `pid` has run on a CPU, all threads together.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Loads shard `i`'s third of `t` and `ti` straight into its primary.
fn load_shard(cluster: &Cluster, i: usize, bounds: &[i64], groups: u64) {
    let (from, to) = (bounds[i], bounds[i + 1] - 1);
    let sql = format!(
        "CREATE TABLE t (id bigint PRIMARY KEY, g int NOT NULL, v int NOT NULL, note text NOT NULL);
         INSERT INTO t SELECT i, i % {groups}, (i * 7919) % 1000003, md5(i::text)
           FROM generate_series({from}::bigint, {to}) i;
         CREATE TABLE ti (LIKE t INCLUDING ALL);
         INSERT INTO ti SELECT * FROM t;
         CREATE INDEX ON ti (v);
         ALTER TABLE t OWNER TO app;
         ALTER TABLE ti OWNER TO app;
         VACUUM ANALYZE t;
         VACUUM ANALYZE ti;"
    );
    cluster.shard(i).primary.psql("app", &sql).expect("load");
}

/// The query each shard runs for `sql`: the last line of the proxy's `EXPLAIN`.
async fn shard_query(proxy: &Client, sql: &str) -> String {
    let plan = proxy
        .simple_query(&format!("EXPLAIN {sql}"))
        .await
        .expect("EXPLAIN through the proxy");
    let lines: Vec<String> = plan
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("Shardgate Merge")),
        "not merged by the proxy: {lines:?}"
    );
    lines.last().expect("plan lines").trim().to_owned()
}

/// The times of one query over all rounds, in milliseconds.
#[derive(Default)]
struct Series {
    proxy: Vec<f64>,
    together: Vec<f64>,
    alone: Vec<f64>,
    proxy_cpu: Vec<f64>,
}

/// The `p` quantile (0..=1) of `values` (nearest rank).
fn quantile(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The per-round ratios `a[i] / b[i]`.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("cross_shard_latency bench: skipped (run it with `cargo bench`)");
        return;
    }
    let rows = env_number("BENCH_ROWS", 1_000_000) as i64;
    let groups = env_number("BENCH_GROUPS", 50);
    let rounds = env_number("BENCH_ROUNDS", 60) as usize;
    let warmup = env_number("BENCH_WARMUP", 3) as usize;
    let only = std::env::var("BENCH_ONLY").ok();
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == c.name))
        })
        .collect();

    eprintln!("starting 3 shards");
    let cluster = support::cluster(ClusterSpec::new(3, 0));
    let bounds = [1, rows / 3 + 1, 2 * rows / 3 + 1, rows + 1];
    let started = Instant::now();
    std::thread::scope(|s| {
        for i in 0..3 {
            let cluster = &cluster;
            s.spawn(move || load_shard(cluster, i, &bounds, groups));
        }
    });
    eprintln!(
        "loaded {rows} rows into t and ti in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let ranges = (0..3)
        .map(|i| {
            format!(
                "{{ shard = {i}, start = {}, end = {} }}",
                bounds[i],
                bounds[i + 1]
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let tables = ["t", "ti"]
        .iter()
        .map(|t| {
            format!("\n[[sharded_tables]]\ntable = \"{t}\"\ncolumn = \"id\"\nfunction = \"range\"\nranges = [{ranges}]\n")
        })
        .collect::<String>();
    let port = support::free_port();
    // The shipped defaults, unless `BENCH_WORKERS` sets the runtime threads.
    let proxy_extra = std::env::var("BENCH_WORKERS")
        .map(|w| format!("workers = {w}"))
        .unwrap_or_default();
    let config = support::config(&cluster, port, &proxy_extra, "") + &tables;
    let proxy = support::Proxy::start(cluster.dir(), port, &config);
    let pid = proxy.pid();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = support::connect(&proxy.app()).await;
        let pgbouncer = cases.iter().any(|c| c.via == Via::PgBouncer).then(|| {
            let port = cluster.shard(0).primary.port();
            common::start_pgbouncer(cluster.dir(), port, 1, 10)
        });
        let bouncer_client = match &pgbouncer {
            Some((port, _)) => Some(
                support::connect(&format!(
                    "host=127.0.0.1 port={port} user={} password={} dbname={}",
                    common::USER,
                    common::PASSWORD,
                    common::DATABASE
                ))
                .await,
            ),
            None => None,
        };
        let mut shards = Vec::new();
        for shard in cluster.shards() {
            shards.push(
                support::connect(&shard.primary.conninfo("app", support::APP_PASSWORD, "app"))
                    .await,
            );
        }
        let mut prepared = Vec::new();
        for case in &cases {
            let (shard_sql, direct_shards) = match case.via {
                Via::Merge => (shard_query(&client, case.sql).await, &shards[..]),
                // The point's row is in shard 0's range.
                Via::Single | Via::PgBouncer => (case.sql.to_owned(), &shards[..1]),
            };
            eprintln!(
                "{}: {}\n  each shard runs: {shard_sql}",
                case.name, case.sql
            );
            let via = match case.via {
                Via::PgBouncer => bouncer_client.as_ref().expect("PgBouncer started"),
                Via::Merge | Via::Single => &client,
            };
            let through = Ready::prepare(via, case.sql, case.protocol).await;
            let mut direct = Vec::new();
            for shard in direct_shards {
                direct.push(Ready::prepare(shard, &shard_sql, case.protocol).await);
            }
            prepared.push((via, through, direct));
        }
        let mut series: Vec<Series> = cases.iter().map(|_| Series::default()).collect();
        let started = Instant::now();
        for round in 0..warmup + rounds {
            for (c, (via, through, direct)) in prepared.iter().enumerate() {
                let pid = match cases[c].via {
                    Via::PgBouncer => pgbouncer.as_ref().expect("PgBouncer started").1.pid,
                    Via::Merge | Via::Single => pid,
                };
                let mut proxy_ms = 0.0;
                let mut cpu_ms = 0.0;
                let mut together_ms = 0.0;
                let mut alone_ms = 0.0;
                // Rotate which measurement goes first.
                for step in 0..3 {
                    match (round + step) % 3 {
                        0 => {
                            let cpu = cpu_ns(pid);
                            let (d, n) = through.run(via).await;
                            cpu_ms = (cpu_ns(pid) - cpu) as f64 / 1e6;
                            proxy_ms = ms(d);
                            assert!(n > 0, "{}: no rows through the proxy", cases[c].name);
                        }
                        1 => {
                            let runs = futures_util::future::join_all(
                                direct.iter().zip(&shards).map(|(q, s)| q.run(s)),
                            )
                            .await;
                            let slowest = runs.iter().map(|r| r.0).max().unwrap_or_default();
                            together_ms = ms(slowest);
                        }
                        _ => {
                            let mut slowest = Duration::ZERO;
                            for (q, s) in direct.iter().zip(&shards) {
                                slowest = slowest.max(q.run(s).await.0);
                            }
                            alone_ms = ms(slowest);
                        }
                    }
                }
                if round >= warmup {
                    let s = &mut series[c];
                    s.proxy.push(proxy_ms);
                    s.proxy_cpu.push(cpu_ms);
                    s.together.push(together_ms);
                    s.alone.push(alone_ms);
                }
            }
            if (round + 1).is_multiple_of(10) {
                eprintln!(
                    "round {}/{} ({:.0} s)",
                    round + 1,
                    warmup + rounds,
                    started.elapsed().as_secs_f64()
                );
            }
        }
        report(&cases, &series, rows, groups, rounds);
    });
    drop(proxy);
}

/// Prints the markdown table of the run.
fn report(cases: &[&Case], series: &[Series], rows: i64, groups: u64, rounds: usize) {
    println!(
        "\n{rows} rows over 3 shards, {groups} groups, {rounds} rounds; ms median / p95; \
         ratio of medians [25th–75th percentile of the per-round ratios]\n"
    );
    println!("| query | through | protocol | proxy | shards together (slowest) | shards alone (slowest) | proxy ÷ together | proxy ÷ alone | added µs | proxy CPU ms/query |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (case, s) in cases.iter().zip(series) {
        let cell = |v: &[f64]| format!("{:.2} / {:.2}", quantile(v, 0.5), quantile(v, 0.95));
        let ratio = |a: &[f64], b: &[f64]| {
            let r = ratios(a, b);
            format!(
                "{:.2} [{:.2}–{:.2}]",
                quantile(a, 0.5) / quantile(b, 0.5),
                quantile(&r, 0.25),
                quantile(&r, 0.75)
            )
        };
        println!(
            "| `{}` | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2} |",
            case.sql,
            match case.via {
                Via::Merge => "shardgate, 3 shards",
                Via::Single => "shardgate, 1 shard",
                Via::PgBouncer => "PgBouncer",
            },
            match case.protocol {
                Protocol::Extended => "extended",
                Protocol::Simple => "simple",
            },
            cell(&s.proxy),
            cell(&s.together),
            cell(&s.alone),
            ratio(&s.proxy, &s.together),
            ratio(&s.proxy, &s.alone),
            (quantile(&s.proxy, 0.5) - quantile(&s.together, 0.5)) * 1e3,
            quantile(&s.proxy_cpu, 0.5),
        );
    }
}
