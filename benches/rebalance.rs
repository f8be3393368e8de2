//! Rebalancing benchmark (issue 17): a job over a loaded table while
//! clients update random keys through the proxy.
//!
//! - `BENCH_JOB=add_shard` (default): `ADD SHARD` 2 → 3 of a hash-sharded
//!   table (every shard is a source or the target).
//! - `BENCH_JOB=move_range`: 3 shards of a range-sharded table, the first
//!   half of shard 0's range moved to shard 1; shard 2 is not involved.
//!   Each client writes the keys of one shard only, so the TPS of shard
//!   2's clients is the TPS of a shard the job does not touch.
//!
//! Prints the copy's throughput (MB/s of COPY data read from the sources,
//! rows/s moved), how long each phase took, the writes' latency during the
//! job split into keys that move and keys that stay (the longest write of a
//! moving key is its pause), and the clients' TPS during the job as a ratio
//! of before it, in all and per shard.
//!
//! ```sh
//! SHARDGATE_HARNESS_DIR=/dev/shm/shardgate-harness cargo bench -p shardgate --bench rebalance
//! ```
//!
//! Environment: `BENCH_ROWS` [1000000] rows of about 100 bytes, `BENCH_CLIENTS` [8]
//! writing clients, `BENCH_MAX_MB_S` [0] (`sharding.rebalance_max_mb_s`),
//! `BENCH_WAL_LEVEL` [logical] (`replica` gives mode block_writes),
//! `BENCH_JOB` [add_shard], `BENCH_RATE` [0: as fast as they can] updates/s
//! of all clients together (a load the machine has room for).

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_harness::{pg_bin, Cluster, ClusterSpec};
use shardgate_shardmap::{
    Function, KeyType, ShardKey, ShardMap, ShardMapConfig, TableName, TableRule,
};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn map(shards: usize) -> ShardMap {
    ShardMap::new(
        ShardMapConfig {
            weights: vec![1; shards],
            vnodes: 256,
            default_shard: 0,
            tables: vec![TableRule {
                table: TableName::new(None, "accounts"),
                column: "id".into(),
                key_type: KeyType::BigInt,
                function: Function::Hash,
            }],
            reference_tables: vec![],
            arcs: Vec::new(),
        },
        1,
    )
    .expect("valid map")
}

/// The proxy process; killed on drop.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(conn);
    client
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The job benchmarked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Job {
    /// `ADD SHARD` 2 → 3, hash.
    AddShard,
    /// `MOVE RANGE` of half of shard 0's keys to shard 1, of 3.
    MoveRange,
}

impl Job {
    /// The shards the proxy starts with.
    fn shards(self) -> usize {
        match self {
            Job::AddShard => 2,
            Job::MoveRange => 3,
        }
    }

    /// The `[[sharded_tables]]` entry of `accounts` for `rows` keys.
    fn table_config(self, rows: i64) -> String {
        match self {
            Job::AddShard => "[[sharded_tables]]\ntable = \"accounts\"\ncolumn = \"id\"\n".into(),
            Job::MoveRange => {
                let b = range_bounds(rows);
                format!(
                    "[[sharded_tables]]\ntable = \"accounts\"\ncolumn = \"id\"\nfunction = \"range\"\n\
                     ranges = [{{ shard = 0, start = 1, end = {} }}, {{ shard = 1, start = {}, end = {} }}, {{ shard = 2, start = {}, end = {} }}]\n",
                    b[1], b[1], b[2], b[2], b[3]
                )
            }
        }
    }

    /// Where key `k` is before and after the job (`maps`: the hash maps of
    /// 2 and 3 shards).
    fn shard_of(self, maps: &(ShardMap, ShardMap), rows: i64, k: i64) -> (usize, usize) {
        match self {
            Job::AddShard => (
                maps.0.hash_shard(&ShardKey::Int(k)),
                maps.1.hash_shard(&ShardKey::Int(k)),
            ),
            Job::MoveRange => {
                let b = range_bounds(rows);
                let now = (0..3).find(|s| k < b[s + 1]).unwrap_or(2);
                let moved = k < (b[0] + b[1]) / 2;
                (now, if moved { 1 } else { now })
            }
        }
    }

    /// The keys client `w` writes: all, or (move_range) one shard's.
    fn client_keys(self, rows: i64, w: usize) -> (i64, i64) {
        match self {
            Job::AddShard => (1, rows + 1),
            Job::MoveRange => {
                let b = range_bounds(rows);
                (b[w % 3], b[w % 3 + 1])
            }
        }
    }
}

/// Bounds of the three ranges of `rows` keys: `[b0, b1)`, `[b1, b2)`, `[b2, b3)`.
fn range_bounds(rows: i64) -> [i64; 4] {
    [1, rows / 3 + 1, 2 * rows / 3 + 1, rows + 1]
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("rebalance bench: skipped (run it with `cargo bench`)");
        return;
    }
    let rows = env_number("BENCH_ROWS", 1_000_000) as i64;
    let clients = env_number("BENCH_CLIENTS", 8) as usize;
    let rate = env_number("BENCH_RATE", 0);
    let max_mb_s = env_number("BENCH_MAX_MB_S", 0);
    let wal_level = std::env::var("BENCH_WAL_LEVEL").unwrap_or_else(|_| "logical".into());
    let job = match std::env::var("BENCH_JOB").as_deref() {
        Ok("move_range") => Job::MoveRange,
        _ => Job::AddShard,
    };
    eprintln!("starting 3 shards (wal_level = {wal_level})");
    // Postgres's own defaults for memory and WAL (the harness keeps test
    // nodes smaller: 32 MB of shared buffers, checkpoints every 64 MB of
    // WAL, in which a moved table's stage did not fit and catch-up's
    // upserts slowed tenfold).
    let cluster = Cluster::start(
        ClusterSpec::new(3, 0)
            .setting("wal_level", wal_level.as_str())
            .setting("shared_buffers", "128MB")
            .setting("max_wal_size", "1GB"),
    )
    .expect("cluster");
    cluster
        .execute_on_primaries("CREATE ROLE app LOGIN SUPERUSER PASSWORD 'secret'")
        .expect("role");
    cluster
        .execute_on_primaries("CREATE DATABASE app OWNER app")
        .expect("database");
    let port = free_port();
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_size = 20\n\n\
         [[users]]\nname = \"app\"\npassword = \"secret\"\n\n\
         [[users]]\nname = \"ops\"\npassword = \"ops\"\nadmin = true\nserver_user = \"app\"\nserver_password = \"secret\"\n\n\
         [sharding]\nrebalance_database = \"app\"\nrebalance_max_mb_s = {max_mb_s}\n\n{}\n{}",
        job.table_config(rows),
        (0..job.shards())
            .map(|s| format!("[[shards]]\nprimary = {:?}\n\n", cluster.shard(s).primary.addr()))
            .collect::<String>()
    );
    let path = cluster.dir().join("rebalance-bench.toml");
    std::fs::write(&path, config).expect("config");
    let log = std::fs::File::create(cluster.dir().join("rebalance-bench.log")).expect("log");
    let _proxy = Proxy(
        Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("--config")
            .arg(&path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start shardgate"),
    );
    let app = format!("host=127.0.0.1 port={port} user=app password=secret dbname=app");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "shardgate did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let psql = |sql: &str, input: Option<&[u8]>| {
        let mut child = Command::new(pg_bin("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &app, "-c", sql])
            .stdin(Stdio::piped())
            .spawn()
            .expect("psql");
        if let Some(data) = input {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(data)
                .expect("write");
        }
        drop(child.stdin.take());
        assert!(child.wait().expect("psql").success(), "{sql}");
    };
    psql(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text NOT NULL)",
        None,
    );
    eprintln!("loading {rows} rows");
    let note = "x".repeat(72);
    let mut data = Vec::with_capacity(rows as usize * 100);
    for k in 1..=rows {
        writeln!(data, "{k}\t0\t{note}").expect("row");
    }
    psql("COPY accounts FROM STDIN", Some(&data));
    drop(data);
    psql("VACUUM ANALYZE accounts", None);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let maps = (map(2), map(3));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let writers: Vec<_> = (0..clients)
            .map(|w| {
                let app = app.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let c = connect(&app).await;
                    let update = c
                        .prepare("UPDATE accounts SET balance = balance + 1 WHERE id = $1")
                        .await
                        .expect("prepare");
                    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1);
                    let mut out: Vec<(Instant, Duration, i64)> = Vec::new();
                    let (low, high) = job.client_keys(rows, w);
                    let mut pace = (rate > 0).then(|| {
                        let every = Duration::from_secs_f64(clients as f64 / rate as f64);
                        let mut i = tokio::time::interval(every);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        i
                    });
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(p) = pace.as_mut() {
                            p.tick().await;
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = (x % (high - low) as u64) as i64 + low;
                        let t = Instant::now();
                        c.execute(&update, &[&k]).await.expect("update");
                        out.push((t, t.elapsed(), k));
                    }
                    out
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let admin = connect(&format!(
            "host=127.0.0.1 port={port} user=ops password=ops dbname=shardgate"
        ))
        .await;
        let job_start = Instant::now();
        let command = match job {
            Job::AddShard => format!("ADD SHARD '{}'", cluster.shard(2).primary.addr()),
            Job::MoveRange => {
                let b = range_bounds(rows);
                format!("MOVE RANGE accounts [{}, {}) TO SHARD 1", b[0], (b[0] + b[1]) / 2)
            }
        };
        admin.batch_execute(&command).await.expect("the job starts");
        let mut phases: Vec<(String, Instant)> = Vec::new();
        let mut mode: String;
        let (bytes, moved) = loop {
            let row = admin
                .query_one(
                    "SELECT state, phase, bytes_copied, rows_copied, error, mode FROM shardgate.jobs ORDER BY id DESC LIMIT 1",
                    &[],
                )
                .await
                .expect("jobs");
            let (state, phase): (String, String) = (row.get(0), row.get(1));
            mode = row.get(5);
            if phases.last().is_none_or(|(p, _)| *p != phase) {
                phases.push((phase.clone(), Instant::now()));
            }
            if state != "running" {
                assert_eq!(state, "done", "job failed: {:?}", row.get::<_, Option<String>>(4));
                break (row.get::<_, i64>(2), row.get::<_, i64>(3));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let job_end = Instant::now();
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(true, Ordering::Relaxed);
        let mut writes = Vec::new();
        for w in writers {
            writes.extend(w.await.expect("writer"));
        }
        let copy_start = phases.iter().find(|(p, _)| p == "copy").map(|(_, t)| *t);
        let copy_end = phases.iter().find(|(p, _)| p == "catch-up" || p == "prepare" || p == "cutover" || p == "done").map(|(_, t)| *t);
        let pace = if rate > 0 {
            format!(" at {rate} updates/s in all")
        } else {
            " as fast as they can".to_owned()
        };
        println!("\n## {command}, mode {mode}: {rows} rows of about 100 bytes, {clients} clients updating random keys{pace}");
        for (p, t) in &phases {
            println!("- phase {p} seen at +{:?}", t.duration_since(job_start));
        }
        println!("- job: {:?} in all; {moved} rows and {bytes} bytes of COPY data read from the sources", job_end - job_start);
        if let (Some(a), Some(b)) = (copy_start, copy_end) {
            let secs = (b - a).as_secs_f64();
            println!(
                "- copy phase: {:.1} s, {:.1} MB/s read from the sources, {:.0} rows/s moved (sharding.rebalance_max_mb_s = {max_mb_s})",
                secs,
                bytes as f64 / 1e6 / secs,
                moved as f64 / secs
            );
        }
        let moves = |k: i64| {
            let (now, then) = job.shard_of(&maps, rows, k);
            now != then
        };
        let during = |t: &Instant| *t >= job_start && *t <= job_end;
        let mut by_kind: HashMap<bool, Vec<Duration>> = HashMap::new();
        for (t, d, k) in &writes {
            if during(t) {
                by_kind.entry(moves(*k)).or_default().push(*d);
            }
        }
        for (moving, name) in [(true, "moving keys"), (false, "staying keys")] {
            let mut v = by_kind.remove(&moving).unwrap_or_default();
            v.sort();
            println!(
                "- writes of {name} during the job: {}, p50 {:?}, p99 {:?}, max {:?}",
                v.len(),
                percentile(&v, 0.5),
                percentile(&v, 0.99),
                v.last().copied().unwrap_or_default()
            );
        }
        let tps = |from: Instant, to: Instant| {
            writes.iter().filter(|(t, _, _)| *t >= from && *t < to).count() as f64
                / (to - from).as_secs_f64()
        };
        let before_tps = tps(started, job_start);
        let during_tps = tps(job_start, job_end);
        let after_tps = tps(job_end, job_end + Duration::from_secs(5));
        println!(
            "- clients' TPS: before {before_tps:.0}, during {during_tps:.0} ({:.2}x), after {after_tps:.0}",
            during_tps / before_tps
        );
        for shard in 0..3 {
            let on = |from: Instant, to: Instant| {
                writes
                    .iter()
                    .filter(|(t, _, k)| *t >= from && *t < to && job.shard_of(&maps, rows, *k).0 == shard)
                    .count() as f64
                    / (to - from).as_secs_f64()
            };
            let (b, d) = (on(started, job_start), on(job_start, job_end));
            if b > 0.0 {
                println!(
                    "- TPS of writes to keys on shard {shard} (before the job): before {b:.0}, during {d:.0} ({:.2}x)",
                    d / b
                );
            }
        }
    });
}
