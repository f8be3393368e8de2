//! Online rebalancing (issue 17): jobs run while 16 clients write and read
//! back through the proxy (`ADD SHARD`, `SET SHARD n WEIGHT w`, `REMOVE
//! SHARD` on hash-sharded tables; `MOVE LIST VALUE` and `MOVE RANGE`);
//! after each, every row is on the shard that owns it under the new map;
//! at the end the data equals the clients' ledger of what they committed,
//! no client saw an error, and a restarted proxy routes by the newest map.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec};
use shardgate_shardmap::{
    Function, KeyType, ShardKey, ShardMap, ShardMapConfig, TableName, TableRule,
};
use support::*;

const LONG: Duration = Duration::from_secs(300);
const CLIENTS: i64 = 16;
const ACCOUNTS: i64 = 2000;
const VNODES: u32 = 64;

const OPS: &str = "\n[[users]]\nname = \"ops\"\npassword = \"ops\"\nadmin = true\nserver_user = \"app\"\nserver_password = \"secret\"\n";

const TABLES: &str = r#"
[sharding]
vnodes = 64
rebalance_database = "app"

[[sharded_tables]]
table = "accounts"
column = "id"

[[sharded_tables]]
table = "entries"
column = "account_id"

[[reference_tables]]
table = "currencies"
"#;

/// The proxy's configuration over the first `shards` shards of `c`.
fn config_over(c: &Cluster, port: u16, shards: usize) -> String {
    let mut s = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_size = 20\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n{OPS}{TABLES}"
    );
    for i in 0..shards {
        s.push_str(&format!(
            "\n[[shards]]\nprimary = {:?}\n",
            c.shard(i).primary.addr()
        ));
    }
    s
}

fn map(shards: usize) -> ShardMap {
    map_weighted(&vec![1; shards])
}

fn map_weighted(weights: &[u32]) -> ShardMap {
    let rule = |t: &str, c: &str| TableRule {
        table: TableName::new(None, t),
        column: c.into(),
        key_type: KeyType::BigInt,
        function: Function::Hash,
    };
    ShardMap::new(
        ShardMapConfig {
            weights: weights.to_vec(),
            vnodes: VNODES,
            default_shard: 0,
            tables: vec![rule("accounts", "id"), rule("entries", "account_id")],
            reference_tables: vec![],
            arcs: Vec::new(),
        },
        1,
    )
    .expect("valid map")
}

/// What one client committed: per account, (balance, entries, sum of entries).
type Ledger = HashMap<i64, (i64, i64, i64)>;

/// A client's results.
struct Outcome {
    ledger: Ledger,
    errors: Vec<String>,
    /// Latency of each write transaction and whether its key moves.
    writes: Vec<(Duration, bool)>,
}

/// A small deterministic generator (no dependency for a test's dice).
struct Dice(u64);

impl Dice {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Writes and reads back keys of its own until `stop`: transfers (an
/// UPDATE and an INSERT in one transaction), new accounts, deletes of
/// them, and checks of what it wrote.
async fn client(ci: String, me: i64, stop: Arc<AtomicBool>) -> Outcome {
    let c = connect(&ci).await;
    let before = map(2);
    let after = map(3);
    let moves =
        |k: i64| before.hash_shard(&ShardKey::Int(k)) != after.hash_shard(&ShardKey::Int(k));
    let mut ledger: Ledger = (1..=ACCOUNTS)
        .filter(|k| k % CLIENTS == me)
        .map(|k| (k, (0, 0, 0)))
        .collect();
    let mut created: Vec<i64> = Vec::new();
    let mut next_new = 1_000_000 + me * 1_000_000;
    let mut seq = 0i64;
    let mut dice = Dice(0x9e37_79b9_7f4a_7c15 ^ (me as u64 + 1));
    let mut errors = Vec::new();
    let mut writes = Vec::new();
    let own: Vec<i64> = ledger.keys().copied().collect();
    // The first error ends the client: the test fails on it anyway.
    while !stop.load(Ordering::Relaxed) && errors.is_empty() {
        let op = dice.next(10);
        let k = own[dice.next(own.len() as u64) as usize];
        match op {
            0..=5 => {
                let d = dice.next(100) as i64 + 1;
                seq += 1;
                let t = Instant::now();
                let r = async {
                    c.batch_execute("BEGIN").await?;
                    c.execute(
                        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                        &[&d, &k],
                    )
                    .await?;
                    c.execute(
                        "INSERT INTO entries (account_id, seq, amount) VALUES ($1, $2, $3)",
                        &[&k, &seq, &d],
                    )
                    .await?;
                    c.batch_execute("COMMIT").await
                }
                .await;
                writes.push((t.elapsed(), moves(k)));
                match r {
                    Ok(()) => {
                        let e = ledger.get_mut(&k).expect("own account");
                        e.0 += d;
                        e.1 += 1;
                        e.2 += d;
                        let got: i64 = match c
                            .query_one("SELECT balance FROM accounts WHERE id = $1", &[&k])
                            .await
                        {
                            Ok(row) => row.get(0),
                            Err(e) => {
                                errors.push(format!("read back {k}: {e}"));
                                continue;
                            }
                        };
                        if got != ledger[&k].0 {
                            errors.push(format!("account {k}: read {got}, wrote {}", ledger[&k].0));
                        }
                    }
                    Err(e) => {
                        errors.push(format!("transfer on {k}: {e} {:?}", e.as_db_error()));
                        let _ = c.batch_execute("ROLLBACK").await;
                    }
                }
            }
            6 | 7 => {
                let n = next_new;
                next_new += 1;
                let t = Instant::now();
                let r = c
                    .execute("INSERT INTO accounts (id, balance) VALUES ($1, 0)", &[&n])
                    .await;
                writes.push((t.elapsed(), moves(n)));
                match r {
                    Ok(_) => {
                        ledger.insert(n, (0, 0, 0));
                        created.push(n);
                    }
                    Err(e) => errors.push(format!("insert {n}: {e} {:?}", e.as_db_error())),
                }
            }
            8 => {
                let Some(n) = created.pop() else { continue };
                let t = Instant::now();
                let r = c.execute("DELETE FROM accounts WHERE id = $1", &[&n]).await;
                writes.push((t.elapsed(), moves(n)));
                match r {
                    Ok(1) => {
                        ledger.remove(&n);
                    }
                    Ok(other) => errors.push(format!("delete {n}: {other} rows")),
                    Err(e) => errors.push(format!("delete {n}: {e} {:?}", e.as_db_error())),
                }
            }
            _ => {
                let row = c
                    .query_one(
                        "SELECT count(*), coalesce(sum(amount), 0)::int8 FROM entries WHERE account_id = $1",
                        &[&k],
                    )
                    .await;
                match row {
                    Ok(row) => {
                        let (n, s): (i64, i64) = (row.get(0), row.get(1));
                        let e = ledger[&k];
                        if (n, s) != (e.1, e.2) {
                            errors.push(format!(
                                "entries of {k}: read ({n}, {s}), wrote ({}, {})",
                                e.1, e.2
                            ));
                        }
                    }
                    Err(e) => errors.push(format!("read entries of {k}: {e}")),
                }
            }
        }
    }
    Outcome {
        ledger,
        errors,
        writes,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Rows of `sql` on a node, as text columns split on `|`.
fn rows_on(c: &Cluster, shard: usize, sql: &str) -> Vec<Vec<String>> {
    let out = psql_ok(
        &c.shard(shard).primary.conninfo("app", APP_PASSWORD, "app"),
        sql,
    );
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// Three shards of a primary each, with `wal_level = logical` when asked.
fn three_shards(logical: bool) -> Cluster {
    let spec = ClusterSpec::new(3, 0);
    cluster(if logical {
        spec.setting("wal_level", "logical")
    } else {
        spec
    })
}

/// Starts a job with `command` on the admin console and waits until it is
/// done; returns how long it took.
async fn run_job(admin: &tokio_postgres::Client, proxy: &Proxy, command: &str) -> Duration {
    let started = Instant::now();
    admin
        .batch_execute(command)
        .await
        .unwrap_or_else(|e| panic!("{command} starts a job: {e} {:?}", e.as_db_error()));
    let (state, phase, error) = job_end(admin, proxy).await;
    assert_eq!(
        state,
        "done",
        "{command}: job ended in phase {phase}: {error}\n{}",
        proxy.log_tail()
    );
    started.elapsed()
}

/// Waits until the newest job is no longer running; returns its state,
/// phase and error (empty when none).
async fn job_end(admin: &tokio_postgres::Client, proxy: &Proxy) -> (String, String, String) {
    let deadline = Instant::now() + LONG;
    loop {
        let (state, phase, _, error) = last_job(admin).await;
        if state != "running" {
            return (state, phase, error.unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "the job did not end: {}",
            proxy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every account and entry is on the shard the map of `weights` gives it.
fn check_hash_placement(c: &Cluster, weights: &[u32]) {
    let m = map_weighted(weights);
    for s in 0..weights.len() {
        for (table, column) in [("accounts", "id"), ("entries", "account_id")] {
            for r in rows_on(c, s, &format!("SELECT DISTINCT {column} FROM {table}")) {
                let k: i64 = r[0].parse().expect("key");
                assert_eq!(
                    m.hash_shard(&ShardKey::Int(k)),
                    s,
                    "{table} {k} is on shard {s} under weights {weights:?}"
                );
            }
        }
    }
}

/// Stops the clients and gathers what they did.
async fn stop_clients(
    stop: &AtomicBool,
    clients: Vec<tokio::task::JoinHandle<Outcome>>,
) -> Outcome {
    stop.store(true, Ordering::Relaxed);
    let mut all = Outcome {
        ledger: Ledger::new(),
        errors: Vec::new(),
        writes: Vec::new(),
    };
    for h in clients {
        let o = tokio::time::timeout(LONG, h)
            .await
            .expect("client ends")
            .expect("client task");
        all.ledger.extend(o.ledger);
        all.errors.extend(o.errors);
        all.writes.extend(o.writes);
    }
    all
}

/// Prints the writes' latency: p50, p99, max, and the longest write of a
/// key that moved and of one that stayed.
fn report_latency(what: &str, writes: &[(Duration, bool)]) {
    let mut all: Vec<Duration> = writes.iter().map(|w| w.0).collect();
    all.sort();
    let max_of = |moving: bool| {
        writes
            .iter()
            .filter(|w| w.1 == moving)
            .map(|w| w.0)
            .max()
            .unwrap_or_default()
    };
    eprintln!(
        "{what}: {} writes, p50 {:?}, p99 {:?}, max {:?}; longest write of a moving key {:?}, of a staying key {:?}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or_default(),
        max_of(true),
        max_of(false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_moves_under_writes_lose_nothing() {
    hash_moves(false).await;
}

/// The same with `wal_level = logical`: writes to moving keys go on during
/// the copy and are caught up from a logical decoding slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_moves_with_logical_catch_up_lose_nothing() {
    hash_moves(true).await;
}

/// The bank of the hash scenarios through `ci`: accounts 1..=ACCOUNTS,
/// their entries, and a reference table.
async fn create_bank(ci: &str) {
    let setup = connect(ci).await;
    setup
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE entries (account_id bigint NOT NULL, seq bigint NOT NULL, amount bigint NOT NULL, PRIMARY KEY (account_id, seq));
             CREATE INDEX entries_amount ON entries (amount);
             CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL);
             INSERT INTO currencies VALUES ('EUR', 'euro'), ('USD', 'dollar'), ('JPY', 'yen');",
        )
        .await
        .expect("schema through the proxy");
    let values: Vec<String> = (1..=ACCOUNTS).map(|k| format!("({k}, 0)")).collect();
    setup
        .batch_execute(&format!(
            "INSERT INTO accounts (id, balance) VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("accounts");
}

async fn hash_moves(logical: bool) {
    let c = three_shards(logical);
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config_over(&c, port, 2));
    let ci = proxy.app();
    create_bank(&ci).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_clients(|_| ci.clone(), &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    let add = run_job(
        &admin,
        &proxy,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    check_hash_placement(&c, &[1, 1, 1]);
    let mode: String = admin
        .query_one(
            "SELECT mode FROM shardgate.jobs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .expect("jobs")
        .get(0);
    assert_eq!(mode, if logical { "logical" } else { "block_writes" });
    assert_eq!(
        rows_on(&c, 2, "SELECT code, name FROM currencies ORDER BY 1"),
        rows_on(&c, 0, "SELECT code, name FROM currencies ORDER BY 1"),
        "the reference table is copied whole"
    );
    let indexes = rows_on(
        &c,
        2,
        "SELECT indexname FROM pg_indexes WHERE tablename = 'entries' ORDER BY 1",
    );
    assert_eq!(
        indexes.len(),
        2,
        "the new shard has entries' indexes: {indexes:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let weight = run_job(&admin, &proxy, "SET SHARD 0 WEIGHT 2").await;
    check_hash_placement(&c, &[2, 1, 1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let remove = run_job(&admin, &proxy, "REMOVE SHARD 1").await;
    check_hash_placement(&c, &[2, 0, 1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = stop_clients(&stop, clients).await;
    eprintln!(
        "jobs took: ADD SHARD {add:?}, SET SHARD 0 WEIGHT 2 {weight:?}, REMOVE SHARD 1 {remove:?}"
    );
    report_latency(
        if logical {
            "hash moves, logical"
        } else {
            "hash moves, block_writes"
        },
        &done.writes,
    );
    assert!(
        done.errors.is_empty(),
        "client errors: {:?}",
        &done.errors[..done.errors.len().min(10)]
    );
    let ledger = done.ledger;
    check_bank(&c, &ledger, &[2, 0, 1]);
    assert!(
        rows_on(&c, 1, "SELECT count(*) FROM accounts")[0][0] == "0",
        "the removed shard is empty"
    );
    let last = map_weighted(&[2, 0, 1]);

    // A proxy restarted with the old file routes by the newest map (from the metadata).
    drop(admin);
    drop(proxy);
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config_over(&c, port, 2));
    let app = connect(&proxy.app()).await;
    let n: i64 = app
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("count through the restarted proxy")
        .get(0);
    assert_eq!(n as usize, ledger.len(), "a fan-out read sees every shard");
    let moved = (1..=ACCOUNTS)
        .find(|k| last.hash_shard(&ShardKey::Int(*k)) == 2)
        .expect("a key on the new shard");
    let balance: i64 = app
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&moved])
        .await
        .expect("a moved key through the restarted proxy")
        .get(0);
    assert_eq!(balance, ledger[&moved].0);
}

/// Every account and its entries are on the shard the map of `weights`
/// gives them, once, and the data is what the clients committed (`ledger`).
fn check_bank(c: &Cluster, ledger: &Ledger, weights: &[u32]) {
    let last = map_weighted(weights);
    check_bank_on(c, ledger, weights.len(), &|id| {
        Some(last.hash_shard(&ShardKey::Int(id)))
    });
}

/// [`check_bank`] over `shards` shards, each account on shard `owner(id)`
/// (`None`: placement is checked otherwise).
fn check_bank_on(
    c: &Cluster,
    ledger: &Ledger,
    shards: usize,
    owner: &dyn Fn(i64) -> Option<usize>,
) {
    let mut balances: HashMap<i64, i64> = HashMap::new();
    let mut entries: HashMap<i64, (i64, i64)> = HashMap::new();
    for s in 0..shards {
        for r in rows_on(c, s, "SELECT id, balance FROM accounts") {
            let id: i64 = r[0].parse().expect("id");
            if let Some(o) = owner(id) {
                assert_eq!(o, s, "account {id} is on shard {s}");
            }
            assert!(
                balances
                    .insert(id, r[1].parse().expect("balance"))
                    .is_none(),
                "account {id} twice"
            );
        }
        for r in rows_on(
            c,
            s,
            "SELECT account_id, count(*), sum(amount) FROM entries GROUP BY 1",
        ) {
            let id: i64 = r[0].parse().expect("id");
            assert!(
                entries
                    .insert(id, (r[1].parse().expect("n"), r[2].parse().expect("sum")))
                    .is_none(),
                "entries of {id} on two shards"
            );
        }
    }
    assert_eq!(
        balances.len(),
        ledger.len(),
        "accounts on the shards vs the ledger"
    );
    for (id, (balance, n, sum)) in ledger {
        assert_eq!(balances.get(id), Some(balance), "balance of {id}");
        let got = entries.get(id).copied().unwrap_or((0, 0));
        assert_eq!(got, (*n, *sum), "entries of {id}");
    }
}

/// Two proxies on the same metadata, half the clients writing through
/// each: a job run through one holds the other's writes to the moving keys
/// too. Mode block_writes is the sharp case: a write through the other
/// proxy that the hold missed would land on the source after the copy and
/// be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_writing_during_moves_lose_nothing() {
    two_proxies(false).await;
}

/// The bank's clients, client `me` through `ci(me)`, writing until `stop`.
fn spawn_clients(
    ci: impl Fn(i64) -> String,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    (0..CLIENTS)
        .map(|me| tokio::spawn(client(ci(me), me, stop.clone())))
        .collect()
}

/// [`config_over`] with `settings` (lines) added to `[sharding]`.
fn with_sharding(c: &Cluster, port: u16, settings: &str) -> String {
    config_over(c, port, 2).replacen("[sharding]\n", &format!("[sharding]\n{settings}"), 1)
}

/// Proxies A (with environment `env_a`) and B over `c` (configured by
/// `config(port)`), the bank created, and the clients writing, even ones
/// through A, odd ones through B.
async fn bank_through_two_proxies(
    c: &Cluster,
    port_a: u16,
    port_b: u16,
    config: &dyn Fn(u16) -> String,
    env_a: &[(&str, &str)],
) -> (
    Proxy,
    Proxy,
    Arc<AtomicBool>,
    Vec<tokio::task::JoinHandle<Outcome>>,
) {
    let a = Proxy::start_with_env(c.dir(), port_a, &config(port_a), env_a);
    let b = Proxy::start(c.dir(), port_b, &config(port_b));
    create_bank(&a.app()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (app_a, app_b) = (a.app(), b.app());
    let clients = spawn_clients(
        |me| {
            if me % 2 == 0 {
                app_a.clone()
            } else {
                app_b.clone()
            }
        },
        &stop,
    );
    (a, b, stop, clients)
}

/// Proxy B is stopped (SIGSTOP) while A starts a move: B is alive (its
/// registry connection holds its lock) but cannot hold its writes, so the
/// move waits for it and gives up after `rebalance_hold_timeout_ms`, moving
/// nothing. Once B runs again, the move succeeds, and nothing any client
/// wrote through either proxy is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_proxy_makes_a_move_wait_and_give_up_never_lose_writes() {
    let c = three_shards(false);
    let (port_a, port_b) = (free_port(), free_port());
    let config = |port: u16| {
        with_sharding(
            &c,
            port,
            "rebalance_hold_timeout_ms = 5000\nrebalance_proxy_lease_ms = 3000\n",
        )
    };
    let (a, b, stop, clients) = bank_through_two_proxies(&c, port_a, port_b, &config, &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let signal = |sig: &str| {
        let out = std::process::Command::new("kill")
            .args([sig, &b.pid().to_string()])
            .output()
            .expect("kill runs");
        assert_success(&out, sig);
    };
    signal("-STOP");
    let admin = connect(&a.conninfo("ops", "ops", "shardgate")).await;
    let add = format!("ADD SHARD '{}'", c.shard(2).primary.addr());
    admin.batch_execute(&add).await.expect("the job starts");
    let (state, _, error) = job_end(&admin, &a).await;
    assert_eq!(state, "failed", "{error}");
    assert!(
        error.contains("did not hold their writes") && error.contains(&b.port.to_string()),
        "the job names the proxy it waited for: {error}"
    );
    check_hash_placement(&c, &[1, 1]);
    signal("-CONT");
    tokio::time::sleep(Duration::from_secs(2)).await;
    run_job(&admin, &a, &add).await;
    check_hash_placement(&c, &[1, 1, 1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = stop_clients(&stop, clients).await;
    assert!(
        done.errors.is_empty(),
        "client errors: {:?}\nB: {}",
        &done.errors[..done.errors.len().min(10)],
        b.log_tail()
    );
    check_bank(&c, &done.ledger, &[1, 1, 1]);
}

/// Proxy B dies (`kill -9`) just before A starts a move: its registry lock
/// goes at once, but a proxy whose connection the server dropped cannot
/// tell at once and may still write by the old map until its lease
/// lapses, so the move waits for B's lease before it counts B gone, then
/// completes, and nothing A's clients wrote is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_outwaits_the_lease_of_a_proxy_that_vanished() {
    let c = three_shards(true);
    let (port_a, port_b) = (free_port(), free_port());
    let config = |port: u16| {
        with_sharding(
            &c,
            port,
            "rebalance_hold_timeout_ms = 20000\nrebalance_proxy_lease_ms = 4000\n",
        )
    };
    let a = Proxy::start(c.dir(), port_a, &config(port_a));
    let mut b = Proxy::start(c.dir(), port_b, &config(port_b));
    create_bank(&a.app()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let app_a = a.app();
    let clients = spawn_clients(|_| app_a.clone(), &stop);
    let admin = connect(&a.conninfo("ops", "ops", "shardgate")).await;
    // B is registered once A sees it.
    let deadline = Instant::now() + LONG;
    while rows_on(&c, 0, "SELECT count(*) FROM shardgate_meta.proxies")[0][0] != "2" {
        assert!(Instant::now() < deadline, "B registers: {}", b.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_signal(b.pid(), "-KILL");
    assert!(b.wait_exit(LONG).is_some(), "B is gone");
    run_job(
        &admin,
        &a,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    let log = a.log_text();
    assert!(
        log.contains("until their lease lapses") && log.contains(&format!("{port_b}")),
        "A waited for B's lease: {}",
        a.log_tail()
    );
    let done = stop_clients(&stop, clients).await;
    assert!(
        done.errors.is_empty(),
        "client errors: {:?}",
        &done.errors[..done.errors.len().min(10)]
    );
    check_bank(&c, &done.ledger, &[1, 1, 1]);
}

/// The same with logical catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_writing_during_logical_moves_lose_nothing() {
    two_proxies(true).await;
}

async fn two_proxies(logical: bool) {
    let c = three_shards(logical);
    let (port_a, port_b) = (free_port(), free_port());
    // Logical: the metadata on another node than shard 0's primary.
    let config = |port: u16| {
        if logical {
            let meta = format!("metadata_node = {:?}\n", c.shard(2).primary.addr());
            with_sharding(&c, port, &meta)
        } else {
            config_over(&c, port, 2)
        }
    };
    let (a, b, stop, clients) = bank_through_two_proxies(&c, port_a, port_b, &config, &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin_a = connect(&a.conninfo("ops", "ops", "shardgate")).await;
    let admin_b = connect(&b.conninfo("ops", "ops", "shardgate")).await;
    run_job(
        &admin_a,
        &a,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    check_hash_placement(&c, &[1, 1, 1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Now through B, while A's clients write.
    run_job(&admin_b, &b, "SET SHARD 0 WEIGHT 2").await;
    check_hash_placement(&c, &[2, 1, 1]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = stop_clients(&stop, clients).await;
    report_latency(
        if logical {
            "two proxies, logical"
        } else {
            "two proxies, block_writes"
        },
        &done.writes,
    );
    assert!(
        done.errors.is_empty(),
        "client errors: {:?}\nA: {}\nB: {}",
        &done.errors[..done.errors.len().min(10)],
        a.log_tail(),
        b.log_tail()
    );
    check_bank(&c, &done.ledger, &[2, 1, 1]);
    for (name, proxy) in [("B", &b), ("A", &a)] {
        assert!(
            proxy
                .log_text()
                .contains("holding another proxy's moving keys"),
            "{name} held the other proxy's move: {}",
            proxy.log_tail()
        );
    }
    let meta = if logical { 2 } else { 0 };
    assert_eq!(
        rows_on(&c, meta, "SELECT count(*) FROM shardgate_meta.proxies")[0][0],
        "2",
        "both proxies are registered on the metadata node"
    );
}

/// A logical cutover that cannot apply the last changes within
/// `rebalance_cutover_max_ms` (here: catch-up stalled on purpose) lets the
/// moving keys go, in both proxies, catches up and tries again: the second
/// attempt switches, the retry is counted in `shardgate.jobs`, and nothing
/// any client wrote through either proxy is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_that_cannot_drain_in_time_releases_the_keys_and_tries_again() {
    let c = three_shards(true);
    let (port_a, port_b) = (free_port(), free_port());
    let config = |port: u16| config_over(&c, port, 2);
    let (a, b, stop, clients) = bank_through_two_proxies(
        &c,
        port_a,
        port_b,
        &config,
        &[("SHARDGATE_FAILPOINT", "rebalance-cutover-stall")],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = connect(&a.conninfo("ops", "ops", "shardgate")).await;
    run_job(
        &admin,
        &a,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = stop_clients(&stop, clients).await;
    report_latency("cutover tried twice", &done.writes);
    assert!(
        done.errors.is_empty(),
        "client errors: {:?}\nA: {}\nB: {}",
        &done.errors[..done.errors.len().min(10)],
        a.log_tail(),
        b.log_tail()
    );
    check_bank(&c, &done.ledger, &[1, 1, 1]);
    let retries: i64 = admin
        .query_one(
            "SELECT cutover_retries FROM shardgate.jobs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .expect("shardgate.jobs")
        .get(0);
    assert_eq!(retries, 1, "{}", a.log_tail());
    assert_eq!(
        rows_on(&c, 2, "SELECT count(*) FROM currencies")[0][0],
        "3",
        "the reference table reached the new shard once, through the second attempt's merge"
    );
    assert!(
        a.log_text().contains("moving keys released"),
        "{}",
        a.log_tail()
    );
    assert!(
        b.log_text().matches("hold=copying").count() == 2
            && b.log_text().contains("hold=cutover 2"),
        "B let the keys go with A and held them again for the second attempt: {}",
        b.log_tail()
    );
}

/// The rows of `REBALANCE PLAN`, as text.
async fn rebalance_plan(admin: &tokio_postgres::Client) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for m in admin
        .simple_query("REBALANCE PLAN")
        .await
        .expect("REBALANCE PLAN")
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            rows.push((0..9).map(|i| r.get(i).unwrap_or("").to_owned()).collect());
        }
    }
    rows
}

/// `REBALANCE PLAN` and `REBALANCE` on a cluster skewed by hot keys: the
/// accounts of shard 0 carry 40 entries each, shard 1's none. The plan
/// moves arcs from shard 0 to shard 1 until both are within 20% of half
/// the data; `REBALANCE` does it while 16 clients write, and nothing is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_plans_and_moves_arcs_of_a_skewed_cluster() {
    let c = three_shards(true);
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config_over(&c, port, 2));
    let ci = proxy.app();
    create_bank(&ci).await;
    let app = connect(&ci).await;
    let two = map(2);
    // Hot accounts the clients do not touch, all on shard 0.
    let hot: Vec<i64> = (500_000..)
        .filter(|k| two.hash_shard(&ShardKey::Int(*k)) == 0)
        .take(1000)
        .collect();
    for chunk in hot.chunks(10) {
        let accounts: Vec<String> = chunk.iter().map(|k| format!("({k}, 0)")).collect();
        let mut entries = Vec::new();
        for &k in chunk {
            for seq in 1..=40i64 {
                entries.push(format!("({k}, {seq}, 1)"));
            }
        }
        app.batch_execute(&format!(
            "INSERT INTO accounts (id, balance) VALUES {}; INSERT INTO entries (account_id, seq, amount) VALUES {}",
            accounts.join(", "),
            entries.join(", ")
        ))
        .await
        .expect("hot accounts");
    }
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    let before = rebalance_plan(&admin).await;
    eprintln!(
        "REBALANCE PLAN: {} moves; first {:?}",
        before.len(),
        before.first()
    );
    assert!(before.len() > 1, "a skewed cluster has moves: {before:?}");
    for m in &before {
        assert_eq!(
            (m[2].as_str(), m[3].as_str()),
            ("0", "1"),
            "hot shard 0 gives to shard 1: {m:?}"
        );
        assert_eq!(m[6], "logical", "the mode is named: {m:?}");
    }
    let after: Vec<f64> = before[0][8]
        .split(", ")
        .map(|p| {
            p.split(": ")
                .nth(1)
                .expect("shard: x%")
                .trim_end_matches('%')
                .parse()
                .expect("percent")
        })
        .collect();
    assert!(
        after.iter().all(|p| p.abs() <= 20.0),
        "the plan ends within 20%: {}",
        before[0][8]
    );
    let moved_rows: i64 = before
        .iter()
        .map(|m| m[4].parse::<i64>().expect("rows"))
        .sum();
    assert!(moved_rows > 0);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = spawn_clients(|_| ci.clone(), &stop);
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_job(&admin, &proxy, "REBALANCE").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = stop_clients(&stop, clients).await;
    report_latency("rebalance", &done.writes);
    assert!(
        done.errors.is_empty(),
        "client errors: {:?}",
        &done.errors[..done.errors.len().min(10)]
    );
    let again = rebalance_plan(&admin).await;
    assert!(again.is_empty(), "balanced now: {again:?}");
    let verified = admin
        .simple_query("VERIFY JOB 1")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_eq!(
        verified,
        Ok(()),
        "every row is on the shard the new map gives it"
    );
    // The clients' ledger plus the hot accounts.
    let mut ledger = done.ledger;
    ledger.extend(hot.iter().map(|&k| (k, (0, 40, 40))));
    check_bank_on(&c, &ledger, 2, &|_| None);
    let rows: Vec<i64> = (0..2)
        .map(|s| {
            rows_on(
                &c,
                s,
                "SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM entries)",
            )[0][0]
                .parse()
                .expect("count")
        })
        .collect();
    let (lo, hi) = (rows[0].min(rows[1]) as f64, rows[0].max(rows[1]) as f64);
    assert!(hi / lo < 1.6, "rows per shard after REBALANCE: {rows:?}");
}

/// psycopg 3 (pipeline mode, executemany), asyncpg (prepared statements in
/// transactions, executemany), node-postgres (queued queries, a named
/// prepared statement) and pgjdbc (a batch, autocommit off: BEGIN sent with
/// the first statement) write through the proxy while `ADD SHARD` and `SET
/// SHARD 0 WEIGHT 2` move their rows (mode logical): no driver sees an
/// error, each reads back what it wrote, and the shards hold exactly their
/// ledgers, every row on its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_write_through_moves() {
    let c = three_shards(true);
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config_over(&c, port, 2));
    let app = connect(&proxy.app()).await;
    create_accounts(&app).await;
    let stop = c.dir().join("writers-stop");
    let clients = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/clients");
    // pgjdbc's program is compiled here (Debian's libpostgresql-jdbc-java).
    let jar = "/usr/share/java/postgresql.jar";
    let build = c.dir().join("jdbc-build");
    let javac = std::process::Command::new("javac")
        .arg("-d")
        .arg(&build)
        .arg("-cp")
        .arg(jar)
        .arg(format!("{clients}/jdbc/RebalanceWriter.java"))
        .output()
        .expect("javac runs");
    assert_success(&javac, "javac RebalanceWriter.java");
    let classpath = format!("{}:{jar}", build.display());
    let programs: [(&str, Vec<String>, i64); 3] = [
        (
            "python3",
            vec![format!("{clients}/rebalance_writers.py")],
            10_000,
        ),
        (
            "node",
            vec![format!("{clients}/node/rebalance_writer.js")],
            20_000,
        ),
        (
            "java",
            vec!["-cp".into(), classpath, "RebalanceWriter".into()],
            30_000,
        ),
    ];
    let mut children = Vec::new();
    for (i, (program, args, base)) in programs.iter().enumerate() {
        let script = args.last().cloned().unwrap_or_default();
        let ready = c.dir().join(format!("writers-ready-{i}"));
        let child = std::process::Command::new(program)
            .args(args)
            .env("SG_HOST", "127.0.0.1")
            .env("SG_PORT", port.to_string())
            .env("SG_USER", "app")
            .env("SG_PASSWORD", "secret")
            .env("SG_DATABASE", "app")
            .env("SG_KEY_BASE", base.to_string())
            .env("SG_READY", &ready)
            .env("SG_STOP", &stop)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "{script} did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        children.push((script, child));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    run_job(
        &admin,
        &proxy,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_job(&admin, &proxy, "SET SHARD 0 WEIGHT 2").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(&stop, "stop\n").expect("stop file");
    let mut ledger = Ledger::new();
    for (script, child) in children {
        let out = tokio::time::timeout(
            LONG,
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await
        .expect("the writers end")
        .expect("join")
        .expect("output");
        assert!(
            out.status.success(),
            "{script} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            proxy.log_tail()
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        let errors = v["errors"].as_array().expect("errors");
        assert!(errors.is_empty(), "{script}: driver errors: {errors:?}");
        eprintln!("{script}: transfers during the moves: {}", v["transfers"]);
        for (k, e) in v["ledger"].as_object().expect("ledger") {
            let n = |i: usize| e[i].as_i64().expect("number");
            ledger.insert(k.parse().expect("key"), (n(0), n(1), n(2)));
        }
    }
    assert_eq!(
        ledger.len(),
        800,
        "psycopg, asyncpg, node-postgres and pgjdbc accounts"
    );
    let last = map_weighted(&[2, 1, 1]);
    check_bank_on(&c, &ledger, 3, &|id| {
        Some(last.hash_shard(&ShardKey::Int(id)))
    });
}

const RULED: &str = r#"
[sharding]
rebalance_database = "app"

[[sharded_tables]]
table = "events"
column = "id"
function = "range"
ranges = [{ shard = 0, start = 0, end = 1000 }, { shard = 1, start = 1000, end = 1000000000 }]

[[sharded_tables]]
table = "visits"
column = "region"
function = "list"
key_type = "text"
lists = [{ shard = 0, values = ["DE", "FR"] }, { shard = 1, values = ["US"] }]
"#;

const REGIONS: [&str; 3] = ["DE", "FR", "US"];

/// What one client of the list/range scenario committed.
#[derive(Default)]
struct RuledLedger {
    events: HashMap<i64, i64>,
    visits: HashMap<(String, i64), i64>,
}

/// Updates and reads back its own events and visits, inserts and deletes
/// events of its own, until `stop`.
async fn ruled_client(ci: String, me: i64, stop: Arc<AtomicBool>) -> (RuledLedger, Vec<String>) {
    let c = connect(&ci).await;
    let mut l = RuledLedger {
        events: (0..2000)
            .filter(|k| k % CLIENTS == me)
            .map(|k| (k, 0))
            .collect(),
        visits: REGIONS
            .iter()
            .flat_map(|r| {
                (1..=200)
                    .filter(|k| k % CLIENTS == me)
                    .map(move |k| ((r.to_string(), k), 0))
            })
            .collect(),
    };
    let own_events: Vec<i64> = l.events.keys().copied().collect();
    let own_visits: Vec<(String, i64)> = l.visits.keys().cloned().collect();
    let mut created = Vec::new();
    let mut next_new = 10_000 + me * 10_000;
    let mut dice = Dice(0x2545_f491_4f6c_dd1d ^ (me as u64 + 7));
    let mut errors = Vec::new();
    while !stop.load(Ordering::Relaxed) && errors.is_empty() {
        let d = dice.next(50) as i64 + 1;
        match dice.next(8) {
            0..=2 => {
                let k = own_events[dice.next(own_events.len() as u64) as usize];
                let r = c
                    .execute("UPDATE events SET v = v + $1 WHERE id = $2", &[&d, &k])
                    .await;
                match r {
                    Ok(1) => *l.events.get_mut(&k).expect("own") += d,
                    other => {
                        errors.push(format!("update event {k}: {other:?}"));
                        continue;
                    }
                }
                match c
                    .query_one("SELECT v FROM events WHERE id = $1", &[&k])
                    .await
                {
                    Ok(row) if row.get::<_, i64>(0) == l.events[&k] => {}
                    other => {
                        errors.push(format!("read event {k}: {other:?}, wrote {}", l.events[&k]))
                    }
                }
            }
            3..=5 => {
                let (region, k) = own_visits[dice.next(own_visits.len() as u64) as usize].clone();
                let r = c
                    .execute(
                        "UPDATE visits SET v = v + $1 WHERE region = $2 AND id = $3",
                        &[&d, &region, &k],
                    )
                    .await;
                match r {
                    Ok(1) => *l.visits.get_mut(&(region.clone(), k)).expect("own") += d,
                    other => {
                        errors.push(format!("update visit {region} {k}: {other:?}"));
                        continue;
                    }
                }
                let want = l.visits[&(region.clone(), k)];
                match c
                    .query_one(
                        "SELECT v FROM visits WHERE region = $1 AND id = $2",
                        &[&region, &k],
                    )
                    .await
                {
                    Ok(row) if row.get::<_, i64>(0) == want => {}
                    other => {
                        errors.push(format!("read visit {region} {k}: {other:?}, wrote {want}"))
                    }
                }
            }
            6 => {
                let n = next_new;
                next_new += 1;
                match c
                    .execute("INSERT INTO events (id, v) VALUES ($1, $2)", &[&n, &d])
                    .await
                {
                    Ok(_) => {
                        l.events.insert(n, d);
                        created.push(n);
                    }
                    Err(e) => errors.push(format!("insert event {n}: {e}")),
                }
            }
            _ => {
                let Some(n) = created.pop() else { continue };
                match c.execute("DELETE FROM events WHERE id = $1", &[&n]).await {
                    Ok(1) => {
                        l.events.remove(&n);
                    }
                    other => errors.push(format!("delete event {n}: {other:?}")),
                }
            }
        }
    }
    (l, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_range_moves_under_writes_lose_nothing() {
    let c = cluster(ClusterSpec::new(2, 0));
    let port = free_port();
    let mut config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_size = 20\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n{OPS}{RULED}"
    );
    for i in 0..2 {
        config.push_str(&format!(
            "\n[[shards]]\nprimary = {:?}\n",
            c.shard(i).primary.addr()
        ));
    }
    let proxy = Proxy::start(c.dir(), port, &config);
    let setup = connect(&proxy.app()).await;
    setup
        .batch_execute(
            "CREATE TABLE events (id bigint PRIMARY KEY, v bigint NOT NULL);
             CREATE TABLE visits (region text NOT NULL, id bigint NOT NULL, v bigint NOT NULL, PRIMARY KEY (region, id));",
        )
        .await
        .expect("schema");
    let events: Vec<String> = (0..2000).map(|k| format!("({k}, 0)")).collect();
    setup
        .batch_execute(&format!("INSERT INTO events VALUES {}", events.join(", ")))
        .await
        .expect("events");
    for r in REGIONS {
        let rows: Vec<String> = (1..=200).map(|k| format!("('{r}', {k}, 0)")).collect();
        setup
            .batch_execute(&format!("INSERT INTO visits VALUES {}", rows.join(", ")))
            .await
            .expect("visits");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| tokio::spawn(ruled_client(proxy.app(), me, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    run_job(&admin, &proxy, "MOVE LIST VALUE 'DE' OF visits TO SHARD 1").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run_job(&admin, &proxy, "MOVE RANGE events [500, 1500) TO SHARD 0").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ledger = RuledLedger::default();
    for h in clients {
        let (l, errors) = tokio::time::timeout(LONG, h)
            .await
            .expect("client ends")
            .expect("task");
        assert!(errors.is_empty(), "client errors: {errors:?}");
        ledger.events.extend(l.events);
        ledger.visits.extend(l.visits);
    }
    // Placement under the new rules, and the data the clients committed.
    for (shard, wrong) in [
        (0, "SELECT count(*) FROM visits WHERE region <> 'FR'"),
        (1, "SELECT count(*) FROM visits WHERE region = 'FR'"),
        (0, "SELECT count(*) FROM events WHERE id >= 1500"),
        (1, "SELECT count(*) FROM events WHERE id < 1500"),
    ] {
        assert_eq!(
            rows_on(&c, shard, wrong)[0][0],
            "0",
            "shard {shard}: {wrong}"
        );
    }
    let mut events = HashMap::new();
    let mut visits = HashMap::new();
    for s in 0..2 {
        for r in rows_on(&c, s, "SELECT id, v FROM events") {
            let prev = events.insert(
                r[0].parse::<i64>().expect("id"),
                r[1].parse::<i64>().expect("v"),
            );
            assert!(prev.is_none(), "event {} twice", r[0]);
        }
        for r in rows_on(&c, s, "SELECT region, id, v FROM visits") {
            let prev = visits.insert(
                (r[0].clone(), r[1].parse::<i64>().expect("id")),
                r[2].parse::<i64>().expect("v"),
            );
            assert!(prev.is_none(), "visit {} {} twice", r[0], r[1]);
        }
    }
    assert_eq!(events, ledger.events, "events vs the ledger");
    assert_eq!(visits, ledger.visits, "visits vs the ledger");
    // Through the proxy: a moved key is found where it went.
    let app = connect(&proxy.app()).await;
    let v: i64 = app
        .query_one("SELECT v FROM events WHERE id = $1", &[&1200i64])
        .await
        .expect("a moved event")
        .get(0);
    assert_eq!(v, ledger.events[&1200]);
    let n: i64 = app
        .query_one("SELECT count(*) FROM visits WHERE region = 'DE'", &[])
        .await
        .expect("a moved region")
        .get(0);
    assert_eq!(n, 200);
}

/// The newest job's phase in the metadata on shard 0.
fn last_job_phase(c: &Cluster) -> String {
    rows_on(
        c,
        0,
        "SELECT phase FROM shardgate_meta.jobs ORDER BY id DESC LIMIT 1",
    )
    .first()
    .map(|r| r[0].clone())
    .unwrap_or_default()
}

/// Waits until the newest job in the metadata is done (`what` names it in
/// the failure).
async fn last_job_done(c: &Cluster, proxy: &Proxy, what: &str) {
    let deadline = Instant::now() + LONG;
    while last_job_phase(c) != "done" {
        assert!(
            Instant::now() < deadline,
            "{what}: phase {}\n{}",
            last_job_phase(c),
            proxy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_job_finishes_it_after_a_restart() {
    killed_mid_job(false).await;
}

/// The same in mode logical, killed during the copy, during catch-up and
/// after the decision; the slots go with the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_killed_mid_logical_job_finishes_it_after_a_restart() {
    killed_mid_job(true).await;
}

async fn killed_mid_job(logical: bool) {
    let c = three_shards(logical);
    let port = free_port();
    // With two-phase commit on: its start-up recovery must leave the
    // moves' prepared transactions to the job's takeover.
    let two_phase = |port: u16| {
        config_over(&c, port, 2).replacen(
            "[proxy]\n",
            &format!(
                "[proxy]\ntwo_phase_commit = true\ntwo_phase_log = {:?}\n",
                c.dir().join("2pc.log").display().to_string()
            ),
            1,
        )
    };
    let config = two_phase(port);
    let proxy = Proxy::start(c.dir(), port, &config);
    let setup = connect(&proxy.app()).await;
    setup
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
             CREATE TABLE entries (account_id bigint NOT NULL, seq bigint NOT NULL, amount bigint NOT NULL, PRIMARY KEY (account_id, seq));
             CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL);
             INSERT INTO currencies VALUES ('EUR', 'euro');",
        )
        .await
        .expect("schema");
    let values: Vec<String> = (1..=ACCOUNTS).map(|k| format!("({k}, {k})")).collect();
    setup
        .batch_execute(&format!(
            "INSERT INTO accounts VALUES {}",
            values.join(", ")
        ))
        .await
        .expect("accounts");
    let entries: Vec<String> = (1..=ACCOUNTS).map(|k| format!("({k}, 1, {k})")).collect();
    setup
        .batch_execute(&format!(
            "INSERT INTO entries VALUES {}",
            entries.join(", ")
        ))
        .await
        .expect("entries");
    drop(setup);
    drop(proxy);
    let steps: [(String, &str, &[u32]); 3] = [
        (
            format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
            "rebalance-copy",
            &[1, 1, 1],
        ),
        (
            "SET SHARD 0 WEIGHT 2".into(),
            if logical {
                "rebalance-catch-up"
            } else {
                "rebalance-prepared"
            },
            &[2, 1, 1],
        ),
        (
            "REMOVE SHARD 1".into(),
            // Logical: after the switch, before the sources deleted the
            // rows they gave (the takeover removes them).
            if logical {
                "rebalance-cleanup"
            } else {
                "rebalance-switched"
            },
            &[2, 0, 1],
        ),
    ];
    let want_sum = ACCOUNTS * (ACCOUNTS + 1) / 2;
    for (step, (command, failpoint, weights)) in steps.into_iter().enumerate() {
        let port = free_port();
        let mut doomed = Proxy::start_with_env(
            c.dir(),
            port,
            &two_phase(port),
            &[("SHARDGATE_FAILPOINT", failpoint)],
        );
        let admin = connect(&doomed.conninfo("ops", "ops", "shardgate")).await;
        admin
            .batch_execute(&command)
            .await
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        assert!(
            doomed.wait_exit(LONG).is_some(),
            "the proxy stops at {failpoint}"
        );
        drop(admin);
        // Restarted with the file it started with: the metadata says the rest.
        let port = free_port();
        let proxy = Proxy::start(c.dir(), port, &two_phase(port));
        last_job_done(&c, &proxy, &format!("{command} after {failpoint}")).await;
        check_hash_placement(&c, weights);
        assert_eq!(
            rows_on(&c, 0, "SELECT count(*) FROM shardgate_meta.jobs")[0][0],
            (step + 1).to_string(),
            "{command} after {failpoint}: the job was resumed under its id, not started again"
        );
        if logical && failpoint == "rebalance-copy" {
            // Stopped after the first table's copy from the first source:
            // the resumed job copies only what was left.
            assert!(
                proxy
                    .log_text()
                    .contains("resuming the move from its slots and stages"),
                "{}",
                proxy.log_tail()
            );
            let copied: i64 = rows_on(
                &c,
                0,
                "SELECT rows_copied FROM shardgate_meta.jobs ORDER BY id DESC LIMIT 1",
            )[0][0]
                .parse()
                .expect("rows_copied");
            let moved: i64 = rows_on(
                &c,
                2,
                "SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM entries)",
            )[0][0]
                .parse()
                .expect("rows moved");
            assert!(
                copied > 0 && copied < moved,
                "the resumed job copied {copied} rows, not the {moved} it moves"
            );
        }
        let app = connect(&proxy.app()).await;
        let totals: Vec<String> = app
            .simple_query("SELECT count(*), sum(balance) FROM accounts")
            .await
            .expect("totals through the proxy")
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..2).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
                }
                _ => None,
            })
            .expect("a row");
        assert_eq!(
            totals,
            vec![ACCOUNTS.to_string(), want_sum.to_string()],
            "{command} after {failpoint}"
        );
        let n: i64 = app
            .query_one("SELECT count(*) FROM entries", &[])
            .await
            .expect("entries")
            .get(0);
        assert_eq!(n, ACCOUNTS, "{command} after {failpoint}: entries");
        let prepared = rows_on(&c, 0, "SELECT count(*) FROM pg_prepared_xacts")[0][0].clone()
            + &rows_on(&c, 1, "SELECT count(*) FROM pg_prepared_xacts")[0][0]
            + &rows_on(&c, 2, "SELECT count(*) FROM pg_prepared_xacts")[0][0];
        assert_eq!(prepared, "000", "no prepared transaction is left behind");
        for s in 0..3 {
            assert_eq!(
                rows_on(&c, s, "SELECT count(*) FROM pg_replication_slots")[0][0],
                "0",
                "no slot is left behind on shard {s}"
            );
            assert_eq!(
                rows_on(
                    &c,
                    s,
                    "SELECT count(*) FROM pg_tables WHERE schemaname = 'shardgate_stage' AND tablename <> 'progress'"
                )[0][0],
                "0",
                "no stage table is left behind on shard {s}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_source_backend_makes_the_job_retry() {
    terminated_backend(false).await;
}

/// In mode logical the retry resumes the copy at the chunk it reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_source_backend_makes_a_logical_job_resume_its_copy() {
    terminated_backend(true).await;
}

async fn terminated_backend(logical: bool) {
    let c = three_shards(logical);
    // 1 MB/s: the copy of about 10 MB lasts long enough to be interrupted.
    const ROWS: i64 = 300_000;
    let (proxy, admin) = throttled_accounts(&c, ROWS).await;
    admin
        .batch_execute(&format!("ADD SHARD '{}'", c.shard(2).primary.addr()))
        .await
        .expect("ADD SHARD");
    if logical {
        // Past a few committed chunks of 1 MB.
        let deadline = Instant::now() + LONG;
        while last_job(&admin).await.2 < 3_000_000 {
            assert!(Instant::now() < deadline, "{}", proxy.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Terminate the job's reading backend on a source while it copies.
    let deadline = Instant::now() + LONG;
    let terminated = 'found: loop {
        for s in 0..2 {
            let got = rows_on(
                &c,
                s,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'shardgate-rebalance' AND query LIKE 'COPY (SELECT%'",
            );
            if !got.is_empty() {
                break 'found s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no copy seen: {}",
            proxy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("terminated the copy's backend on shard {terminated}");
    last_job_done(&c, &proxy, "ADD SHARD").await;
    assert!(
        proxy.log_text().contains("trying again"),
        "the job retried: {}",
        proxy.log_tail()
    );
    if logical {
        assert!(
            proxy.log_text().contains("copy resumed where it stopped"),
            "the copy resumed: {}",
            proxy.log_text()
        );
    }
    check_hash_placement(&c, &[1, 1, 1]);
    let mut total = 0;
    for s in 0..3 {
        total += rows_on(&c, s, "SELECT count(*) FROM accounts")[0][0]
            .parse::<i64>()
            .expect("count");
    }
    assert_eq!(total, ROWS, "every row once");
}

/// [`config_over`] the first two shards, copies throttled to 1 MB/s (long
/// enough to act on a job while it copies) in chunks of 1 MB.
fn throttled_config(c: &Cluster, port: u16) -> String {
    config_over(c, port, 2).replace(
        "rebalance_database = \"app\"",
        "rebalance_database = \"app\"\nrebalance_max_mb_s = 1\nrebalance_chunk_mb = 1",
    )
}

/// The tables of the hash scenarios, created through the proxy.
async fn create_accounts(app: &tokio_postgres::Client) {
    app.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE entries (account_id bigint NOT NULL, seq bigint NOT NULL, amount bigint NOT NULL, PRIMARY KEY (account_id, seq));
         CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL);",
    )
    .await
    .expect("schema");
}

/// A proxy copying at 1 MB/s over 2 of `c`'s shards, accounts 1..=rows
/// loaded through it, and its admin console.
async fn throttled_accounts(c: &Cluster, rows: i64) -> (Proxy, tokio_postgres::Client) {
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &throttled_config(c, port));
    create_accounts(&connect(&proxy.app()).await).await;
    load_accounts(&proxy, rows);
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    (proxy, admin)
}

/// Loads accounts 1..=rows (balance `k % 1000`) by COPY through the proxy.
fn load_accounts(proxy: &Proxy, rows: i64) {
    let mut data = String::new();
    for k in 1..=rows {
        data.push_str(&format!("{k}\t{}\n", k % 1000));
    }
    let out = run_with_stdin(
        psql(&proxy.app()).args(["-c", "COPY accounts (id, balance) FROM STDIN"]),
        data.as_bytes(),
    );
    assert_success(&out, "COPY through the proxy");
}

/// One row of the newest job in `shardgate.jobs`: state, phase, bytes copied, error.
async fn last_job(admin: &tokio_postgres::Client) -> (String, String, i64, Option<String>) {
    let row = admin
        .query_one(
            "SELECT state, phase, bytes_copied, error FROM shardgate.jobs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .expect("jobs");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// A target whose copy differs from its source (one balance changed: the
/// same row count, another checksum) fails the job's verification: it is
/// undone, the cluster keeps its map and every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_copy_fails_verification_and_moves_nothing() {
    let c = three_shards(true);
    let port = free_port();
    let proxy = Proxy::start_with_env(
        c.dir(),
        port,
        &config_over(&c, port, 2),
        &[
            ("SHARDGATE_FAILPOINT", "rebalance-corrupt"),
            (
                "SHARDGATE_FAILPOINT_SQL",
                "UPDATE accounts SET balance = balance + 1 WHERE id = (SELECT min(id) FROM accounts)",
            ),
        ],
    );
    let app = connect(&proxy.app()).await;
    create_accounts(&app).await;
    load_accounts(&proxy, 5_000);
    let totals = |c: &Cluster, shards: usize| {
        (0..shards)
            .map(|s| {
                let r = &rows_on(
                    c,
                    s,
                    "SELECT count(*), coalesce(sum(balance), 0) FROM accounts",
                )[0];
                (
                    r[0].parse::<i64>().expect("n"),
                    r[1].parse::<i64>().expect("sum"),
                )
            })
            .collect::<Vec<_>>()
    };
    let before = totals(&c, 2);
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    admin
        .batch_execute(&format!("ADD SHARD '{}'", c.shard(2).primary.addr()))
        .await
        .expect("the job starts");
    let (state, _, error) = job_end(&admin, &proxy).await;
    assert_eq!(state, "failed", "{error}");
    assert!(
        error.contains("verification failed") && error.contains("checksum"),
        "the checksum caught it: {error}"
    );
    let mut after = before.clone();
    after.push((0, 0));
    assert_eq!(totals(&c, 3), after, "nothing moved, nothing changed");
    let n: i64 = app
        .query_one("SELECT count(*) FROM accounts WHERE id = 1", &[])
        .await
        .expect("the old map routes")
        .get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_pause_resume_cancel_and_verify() {
    let c = cluster(ClusterSpec::new(3, 0));
    const ROWS: i64 = 200_000;
    let (proxy, admin) = throttled_accounts(&c, ROWS).await;
    let add = format!("ADD SHARD '{}'", c.shard(2).primary.addr());
    admin.batch_execute(&add).await.expect("ADD SHARD");
    let deadline = Instant::now() + LONG;
    while last_job(&admin).await.2 == 0 {
        assert!(Instant::now() < deadline, "the copy did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin.batch_execute("PAUSE JOB 1").await.expect("PAUSE JOB");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (state, _, at_pause, _) = last_job(&admin).await;
    assert_eq!(state, "paused");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        last_job(&admin).await.2,
        at_pause,
        "a paused job copies nothing"
    );
    let e = admin.batch_execute("RELOAD").await.expect_err("a job runs");
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"), "{e:?}");
    admin
        .batch_execute("RESUME JOB 1")
        .await
        .expect("RESUME JOB");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (state, _, later, _) = last_job(&admin).await;
    assert_eq!(state, "running");
    assert!(later > at_pause, "a resumed job copies again");
    admin
        .batch_execute("CANCEL JOB 1")
        .await
        .expect("CANCEL JOB");
    let (state, _, error) = job_end(&admin, &proxy).await;
    assert_eq!(state, "failed");
    assert!(error.contains("cancelled"));
    // Nothing moved: the new shard is empty, the others hold every row.
    assert_eq!(rows_on(&c, 2, "SELECT count(*) FROM accounts")[0][0], "0");
    let kept: i64 = (0..2)
        .map(|s| {
            rows_on(&c, s, "SELECT count(*) FROM accounts")[0][0]
                .parse::<i64>()
                .expect("n")
        })
        .sum();
    assert_eq!(kept, ROWS);
    check_hash_placement(&c, &[1, 1]);
    for s in 0..3 {
        assert_eq!(
            rows_on(&c, s, "SELECT count(*) FROM pg_prepared_xacts")[0][0],
            "0"
        );
    }
    let e = admin
        .batch_execute("CANCEL JOB 1")
        .await
        .expect_err("finished");
    assert_eq!(sqlstate(&e).as_deref(), Some("55000"));
    let e = admin
        .batch_execute("PAUSE JOB 9")
        .await
        .expect_err("no such job");
    assert_eq!(sqlstate(&e).as_deref(), Some("42704"));

    // Again without the throttle, to the end; then VERIFY.
    admin
        .batch_execute("SET sharding.rebalance_max_mb_s = 0")
        .await
        .expect("SET");
    run_job(&admin, &proxy, &add).await;
    let verified = admin
        .simple_query("VERIFY JOB 2")
        .await
        .expect("VERIFY JOB finds every row in place");
    drop(verified);
    // A row put on the wrong shard behind the proxy's back is found.
    let wrong = (10_000_000..)
        .find(|k| map(3).hash_shard(&ShardKey::Int(*k)) == 0)
        .expect("a key of shard 0");
    psql_ok(
        &c.shard(2).primary.conninfo("app", APP_PASSWORD, "app"),
        &format!("INSERT INTO accounts VALUES ({wrong}, 0)"),
    );
    let e = admin
        .batch_execute("VERIFY JOB 2")
        .await
        .expect_err("misplaced row");
    assert_eq!(sqlstate(&e).as_deref(), Some("XX001"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_appended_to_the_file_joins_on_reload() {
    let c = cluster(ClusterSpec::new(3, 0));
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config_over(&c, port, 2));
    let app = connect(&proxy.app()).await;
    create_accounts(&app).await;
    load_accounts(&proxy, 5_000);
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    write_config(&proxy, &config_over(&c, port, 3));
    let notices = admin.simple_query("RELOAD").await.expect("RELOAD");
    drop(notices);
    last_job_done(&c, &proxy, "the appended shard's job").await;
    check_hash_placement(&c, &[1, 1, 1]);
    assert_ne!(rows_on(&c, 2, "SELECT count(*) FROM accounts")[0][0], "0");
    let n: i64 = app
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 5_000);
    // A shard leaves only through REMOVE SHARD.
    write_config(&proxy, &config_over(&c, port, 2));
    let e = admin.batch_execute("RELOAD").await.expect_err("refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("REMOVE SHARD"), "{message}");
    // The same three shards again: nothing to do.
    write_config(&proxy, &config_over(&c, port, 3));
    admin
        .batch_execute("RELOAD")
        .await
        .expect("RELOAD of the same shards");
    let jobs: i64 = admin
        .query_one("SELECT count(*) FROM shardgate.jobs", &[])
        .await
        .expect("jobs")
        .get(0);
    assert_eq!(jobs, 1, "no second job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_proxy_follows_the_recorded_map() {
    let c = three_shards(false);
    let (port_a, port_b) = (free_port(), free_port());
    let a = Proxy::start(c.dir(), port_a, &config_over(&c, port_a, 2));
    let b = Proxy::start(c.dir(), port_b, &config_over(&c, port_b, 2));
    let app_a = connect(&a.app()).await;
    create_accounts(&app_a).await;
    load_accounts(&a, 5_000);
    let admin = connect(&a.conninfo("ops", "ops", "shardgate")).await;
    run_job(
        &admin,
        &a,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    let moved = (1..=5_000i64)
        .find(|k| map(3).hash_shard(&ShardKey::Int(*k)) == 2)
        .expect("a key of the new shard");
    // Proxy B learns the new map from shardgate_meta within seconds.
    let app_b = connect(&b.app()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = app_b
            .query_one("SELECT count(*) FROM accounts WHERE id = $1", &[&moved])
            .await
            .expect("read through B")
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still routes by the old map: {}",
            b.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app_b
        .execute("UPDATE accounts SET balance = -1 WHERE id = $1", &[&moved])
        .await
        .expect("write through B");
    assert_eq!(
        rows_on(
            &c,
            2,
            &format!("SELECT balance FROM accounts WHERE id = {moved}")
        )[0][0],
        "-1",
        "B's write lands on the new owner"
    );
    assert!(
        b.log_text()
            .contains("holding another proxy's moving keys job=1 hold=cutover"),
        "B held A's moving keys through the cutover: {}",
        b.log_tail()
    );
}

/// Rows numbered by a sequence keep their numbers when they move, and the
/// shard that took them goes on numbering after the highest number any
/// source gave: a new row never reuses one (here it would break the
/// primary key of an account's entries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shard_numbers_rows_after_those_it_took() {
    let c = three_shards(true);
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config_over(&c, port, 2));
    let app = connect(&proxy.app()).await;
    app.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
         CREATE TABLE entries (account_id bigint NOT NULL, seq bigserial, amount bigint NOT NULL, PRIMARY KEY (account_id, seq));
         CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL);",
    )
    .await
    .expect("schema");
    const N: i64 = 300;
    let one_each = format!(
        "INSERT INTO entries (account_id, amount) VALUES {}",
        (1..=N)
            .map(|k| format!("({k}, 1)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for _ in 0..5 {
        app.batch_execute(&one_each).await.expect("entries");
    }
    let highest: i64 = (0..2)
        .map(|s| {
            rows_on(&c, s, "SELECT max(seq) FROM entries")[0][0]
                .parse::<i64>()
                .expect("max")
        })
        .max()
        .expect("two shards");
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    run_job(
        &admin,
        &proxy,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    let moved: i64 = rows_on(&c, 2, "SELECT count(*) FROM entries")[0][0]
        .parse()
        .expect("moved");
    assert!(moved > 0, "entries moved to the new shard");
    app.batch_execute(&one_each)
        .await
        .expect("one more entry per account, numbered by each shard's sequence");
    let on_new: Vec<i64> = rows_on(
        &c,
        2,
        &format!(
            "SELECT count(*) FILTER (WHERE seq > {highest}), count(DISTINCT account_id), count(*) FROM entries"
        ),
    )[0]
    .iter()
    .map(|v| v.parse().expect("count"))
    .collect();
    assert_eq!(
        on_new[0], on_new[1],
        "every new entry on the new shard is numbered after {highest}: {on_new:?}"
    );
    assert_eq!(on_new[2], moved + on_new[1]);
}

/// A write made straight to a source, not through any proxy, after the
/// cutover's final drain and before the switch (no proxy can hold it)
/// reaches the key's new owner: it is not left behind on the source and
/// deleted with the moved rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_straight_to_a_source_during_the_cutover_reaches_the_new_owner() {
    let c = three_shards(true);
    let (before, after) = (map(2), map(3));
    // A new account that moves from shard 0 (the first source) to shard 2.
    let key = (1_000_000..)
        .find(|k| {
            before.hash_shard(&ShardKey::Int(*k)) == 0 && after.hash_shard(&ShardKey::Int(*k)) == 2
        })
        .expect("a moving key");
    let port = free_port();
    let proxy = Proxy::start_with_env(
        c.dir(),
        port,
        &config_over(&c, port, 2),
        &[
            ("SHARDGATE_FAILPOINT", "rebalance-direct-write"),
            (
                "SHARDGATE_FAILPOINT_SQL",
                &format!("INSERT INTO accounts VALUES ({key}, 77)"),
            ),
        ],
    );
    let app = connect(&proxy.app()).await;
    create_accounts(&app).await;
    load_accounts(&proxy, 2_000);
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    run_job(
        &admin,
        &proxy,
        &format!("ADD SHARD '{}'", c.shard(2).primary.addr()),
    )
    .await;
    assert!(
        proxy
            .log_text()
            .contains("were applied to their new owners"),
        "{}",
        proxy.log_tail()
    );
    let on = |s: usize| {
        rows_on(
            &c,
            s,
            &format!("SELECT count(*) FROM accounts WHERE id = {key}"),
        )[0][0]
            .clone()
    };
    assert_eq!((on(0), on(1), on(2)), ("0".into(), "0".into(), "1".into()));
    let balance: i64 = app
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&key])
        .await
        .expect("the row through the proxy")
        .get(0);
    assert_eq!(balance, 77);
}
