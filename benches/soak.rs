//! Soak (issue 19): a mixed workload through one shardgate process for a long
//! time, with the proxy's resident memory and open file descriptors sampled
//! every 10 s. A benchmark, not a test: it prints the curve and the error
//! counts and fails nothing.
//!
//! Run with `cargo bench -p shardgate --bench soak` (see `benches/README.md`).
//! It starts a harness cluster of [`SHARDS`] shards with a streaming replica
//! each, loads the pgbench tables through the proxy with them sharded by
//! their keys, and runs at once, each in rounds of at most [`ROUND`]:
//! TPC-B (pgbench's built-in script; its transactions span shards, so they
//! commit with two-phase commit), `-S` selects at `eventual` consistency
//! (on the replicas), cross-shard aggregates (a custom script), clients
//! that reconnect for every transaction (`-C -S`), and an admin client
//! running `SHOW POOLS`, `SHOW CLIENTS`, `SHOW SERVERS`, `SHOW REPLICATION`
//! and `SHOW QUERY_STATS` once a second, reconnecting every 10 rounds.
//!
//! Environment (defaults in brackets): `SOAK_SECONDS` [1800] (or the first
//! argument that is a number), `SOAK_SCALE` [2] pgbench scale, `SOAK_POOL`
//! [10] server connections per node.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use shardgate_harness::ClusterSpec;
use support::*;

/// Shards of the cluster, each with one replica.
const SHARDS: usize = 2;
/// Longest single pgbench run of a workload: a client pgbench aborted on an
/// error is back at the next round.
const ROUND: Duration = Duration::from_secs(60);
/// How often the proxy's RSS and file descriptors are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// Samples before this are the warm-up.
const WARM_UP: Duration = Duration::from_secs(120);

/// The cross-shard aggregates: no shard key, so every shard answers and the
/// proxy merges (a grouped aggregate over a key range, a global one).
const AGGREGATES: &str = "\\set a random(1, 100000 * :scale - 1000)\n\
    SELECT bid, count(*), sum(abalance) FROM pgbench_accounts \
    WHERE aid BETWEEN :a AND :a + 1000 GROUP BY bid ORDER BY bid;\n\
    SELECT sum(tbalance), max(tbalance) FROM pgbench_tellers;\n";

/// One pgbench workload: its name, clients and options.
struct Workload {
    name: &'static str,
    args: Vec<String>,
}

/// What a workload did over all its rounds.
#[derive(Debug, Default, Clone)]
struct Outcome {
    rounds: u64,
    transactions: u64,
    /// Failed transactions pgbench counted.
    failed: u64,
    /// Clients pgbench aborted on an error.
    aborted: u64,
    /// Rounds pgbench ended with a non-zero status.
    bad_exits: u64,
    /// First lines of the errors seen, by text (up to 10 kinds).
    errors: BTreeMap<String, u64>,
}

/// One sample of the proxy.
struct Sample {
    at: Duration,
    rss_kb: u64,
    fds: usize,
}

fn main() {
    let seconds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u64>().ok())
        .or_else(|| std::env::var("SOAK_SECONDS").ok()?.parse().ok())
        .unwrap_or(1800);
    let duration = Duration::from_secs(seconds);
    let scale: u32 = env_or("SOAK_SCALE", 2);
    let pool: u32 = env_or("SOAK_POOL", 10);

    eprintln!("soak: starting {SHARDS} shards with a replica each");
    let c = cluster(ClusterSpec::new(SHARDS, 1).setting("max_connections", "200"));
    let port = free_port();
    let two_phase_log = c.dir().join("soak-2pc.log");
    let cfg = config(
        &c,
        port,
        &format!(
            "pool_mode = \"transaction\"\npool_size = {pool}\ntwo_phase_commit = true\n\
             two_phase_log = {:?}",
            two_phase_log.display().to_string()
        ),
        &format!(
            "\n[[users]]\nname = \"ops\"\npassword = \"ops\"\nadmin = true\n\
             server_user = \"app\"\nserver_password = \"{APP_PASSWORD}\"\n\
             \n[routing]\ndefault_consistency = \"eventual\"\n{}",
            pgbench_sharded_tables!()
        ),
    );
    let proxy = Proxy::start(c.dir(), port, &cfg);
    eprintln!("soak: pgbench -i -s {scale} through the proxy");
    let init = run(
        pgbench(&proxy.app())
            .args(["-i", "-q", "-s", &scale.to_string()])
            .command(),
        Duration::from_secs(1200),
    );
    assert_success(&init, "pgbench -i");
    c.wait_replicas_caught_up(Duration::from_secs(300))
        .expect("replicas catch up");
    let script = c.dir().join("soak-aggregates.sql");
    std::fs::write(&script, AGGREGATES).expect("write the aggregates script");
    let workloads = vec![
        Workload {
            name: "tpcb-2pc",
            args: strings(&["-c", "4", "-j", "1"]),
        },
        Workload {
            name: "select-eventual",
            args: strings(&["-c", "4", "-j", "1", "-S"]),
        },
        Workload {
            name: "aggregates",
            args: vec![
                "-c".into(),
                "2".into(),
                "-j".into(),
                "1".into(),
                "-s".into(),
                scale.to_string(),
                "-f".into(),
                script.display().to_string(),
            ],
        },
        Workload {
            name: "reconnecting",
            args: strings(&["-c", "2", "-j", "1", "-C", "-S"]),
        },
    ];

    eprintln!("soak: running for {duration:?}");
    let started = Instant::now();
    let deadline = started + duration;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pid) = (stop.clone(), proxy.pid());
        thread::spawn(move || sample(pid, started, &stop))
    };
    let admin = {
        let (stop, conninfo) = (stop.clone(), proxy.conninfo("ops", "ops", "shardgate"));
        thread::spawn(move || admin_queries(&conninfo, &stop))
    };
    let runners: Vec<_> = workloads
        .into_iter()
        .map(|w| {
            let conninfo = proxy.app();
            thread::spawn(move || (w.name, run_workload(&w, &conninfo, deadline)))
        })
        .collect();
    let outcomes: Vec<(&str, Outcome)> = runners
        .into_iter()
        .map(|t| t.join().expect("workload thread"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let admin = admin.join().expect("admin thread");
    let samples = sampler.join().expect("sampler thread");
    let alive = proxy_answers(&proxy.app());
    report(&samples, &outcomes, &admin, seconds, alive);
    let decisions = std::fs::metadata(&two_phase_log).map_or(0, |m| m.len());
    println!("two-phase commit decision log: {decisions} bytes");
}

/// `name`'s value parsed, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Runs `w` in rounds of at most [`ROUND`] until `deadline`.
fn run_workload(w: &Workload, conninfo: &str, deadline: Instant) -> Outcome {
    let mut out = Outcome::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_secs(1) {
            return out;
        }
        let secs = left.min(ROUND).as_secs().to_string();
        let mut bench = pgbench(conninfo);
        bench.args(&w.args).args(["-n", "-T", &secs]);
        let r = run(bench.command(), left + Duration::from_secs(120));
        out.rounds += 1;
        let stdout = String::from_utf8_lossy(&r.stdout);
        let stderr = String::from_utf8_lossy(&r.stderr);
        out.transactions += number_after(&stdout, "number of transactions actually processed:");
        out.failed += number_after(&stdout, "number of failed transactions:");
        if !r.status.success() {
            out.bad_exits += 1;
        }
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            if line.contains("aborted") {
                out.aborted += 1;
            }
            if out.errors.len() < 10 || out.errors.contains_key(line) {
                *out.errors.entry(line.to_owned()).or_default() += 1;
            }
        }
        eprintln!(
            "soak: {} round {}: {} transactions so far, {} failed, {} clients aborted",
            w.name, out.rounds, out.transactions, out.failed, out.aborted
        );
    }
}

/// The first number after `prefix` on a line of `text` (0 when absent).
fn number_after(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Samples the proxy's RSS and open file descriptors every [`SAMPLE_EVERY`]
/// until `stop`, and once more then.
fn sample(pid: u32, started: Instant, stop: &AtomicBool) -> Vec<Sample> {
    let take = || Sample {
        at: started.elapsed(),
        rss_kb: rss_kb(pid),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count),
    };
    let mut samples = Vec::new();
    let mut next = started;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            samples.push(take());
            next += SAMPLE_EVERY;
        }
        thread::sleep(Duration::from_millis(100));
    }
    samples.push(take());
    samples
}

/// The admin console's queries, once a second until `stop`, reconnecting
/// every 10 rounds; returns (queries run, errors by message).
fn admin_queries(conninfo: &str, stop: &AtomicBool) -> (u64, BTreeMap<String, u64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("admin runtime");
    rt.block_on(async {
        let mut ok = 0;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    for _ in 0..10 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        for sql in [
                            "SHOW POOLS",
                            "SHOW CLIENTS",
                            "SHOW SERVERS",
                            "SHOW REPLICATION",
                            "SHOW QUERY_STATS",
                        ] {
                            match client.simple_query(sql).await {
                                Ok(_) => ok += 1,
                                Err(e) => *errors.entry(format!("{sql}: {e}")).or_default() += 1,
                            }
                        }
                        round += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Err(e) => {
                    *errors.entry(format!("connect: {e}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        eprintln!("soak: admin client ran {round} rounds");
        (ok, errors)
    })
}

/// Whether the proxy still answers a query after the run.
fn proxy_answers(conninfo: &str) -> bool {
    let out = run(
        psql(conninfo).args(["-A", "-t", "-c", "SELECT 1"]),
        Duration::from_secs(30),
    );
    out.status.success()
}

/// Prints the curve, its summary and the error counts.
fn report(
    samples: &[Sample],
    outcomes: &[(&str, Outcome)],
    admin: &(u64, BTreeMap<String, u64>),
    seconds: u64,
    alive: bool,
) {
    println!("## soak: {seconds} s\n\n| t (s) | RSS (kB) | open fds |\n|---|---|---|");
    for s in samples {
        println!("| {} | {} | {} |", s.at.as_secs(), s.rss_kb, s.fds);
    }
    let first = samples.first();
    let warm = samples.iter().find(|s| s.at >= WARM_UP).or(first);
    let last = samples.last();
    let after_warm = samples.iter().filter(|s| s.at >= WARM_UP);
    let max_rss = after_warm.clone().map(|s| s.rss_kb).max().unwrap_or(0);
    let (min_fds, max_fds) = after_warm.fold((usize::MAX, 0), |(lo, hi), s| {
        (lo.min(s.fds), hi.max(s.fds))
    });
    let show = |s: Option<&Sample>| {
        s.map_or("-".to_owned(), |s| {
            format!("{} kB, {} fds at {} s", s.rss_kb, s.fds, s.at.as_secs())
        })
    };
    println!(
        "\nRSS start: {}; after warm-up: {}; end: {}; largest after warm-up: {max_rss} kB; fds after warm-up: {}-{}",
        show(first),
        show(warm),
        show(last),
        if max_fds == 0 { 0 } else { min_fds },
        max_fds,
    );
    println!("\n| workload | rounds | transactions | failed | clients aborted | bad exits |\n|---|---|---|---|---|---|");
    for (name, o) in outcomes {
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            o.rounds, o.transactions, o.failed, o.aborted, o.bad_exits
        );
    }
    println!(
        "| admin queries | - | {} | {} | - | - |",
        admin.0,
        admin.1.values().sum::<u64>()
    );
    println!("\nproxy answers after the run: {alive}");
    for (name, o) in outcomes {
        for (line, n) in &o.errors {
            println!("{name}: {n} x {line}");
        }
    }
    for (line, n) in &admin.1 {
        println!("admin: {n} x {line}");
    }
}
