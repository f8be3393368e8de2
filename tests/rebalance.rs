//! Online rebalancing (issue 17): `ADD SHARD` while 16 clients write and
//! read back through the proxy; afterwards every row is on the shard that
//! owns it under the new map, the data equals the clients' ledger of what
//! they committed, no client saw an error, and a restarted proxy routes by
//! the new map.

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
    let rule = |t: &str, c: &str| TableRule {
        table: TableName::new(None, t),
        column: c.into(),
        key_type: KeyType::BigInt,
        function: Function::Hash,
    };
    ShardMap::new(
        ShardMapConfig {
            weights: vec![1; shards],
            vnodes: VNODES,
            default_shard: 0,
            tables: vec![rule("accounts", "id"), rule("entries", "account_id")],
            reference_tables: vec![],
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_shard_under_writes_loses_nothing() {
    let c = cluster(ClusterSpec::new(3, 0));
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config_over(&c, port, 2));
    let ci = proxy.app();
    let setup = connect(&ci).await;
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

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|me| tokio::spawn(client(ci.clone(), me, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    let started = Instant::now();
    admin
        .batch_execute(&format!("ADD SHARD '{}'", c.shard(2).primary.addr()))
        .await
        .expect("ADD SHARD starts a job");
    let (state, phase, error) = loop {
        let row = admin
            .query_one(
                "SELECT state, phase, error FROM shardgate.jobs ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .expect("jobs table");
        let state: String = row.get(0);
        if state != "running" {
            break (
                state,
                row.get::<_, String>(1),
                row.get::<_, Option<String>>(2),
            );
        }
        assert!(
            started.elapsed() < LONG,
            "the job did not finish: {}",
            proxy.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let job_time = started.elapsed();
    assert_eq!(
        state,
        "done",
        "job ended in phase {phase}: {error:?}\n{}",
        proxy.log_tail()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ledger = Ledger::new();
    let mut errors = Vec::new();
    let mut writes = Vec::new();
    for h in clients {
        let o = tokio::time::timeout(LONG, h)
            .await
            .expect("client ends")
            .expect("client task");
        ledger.extend(o.ledger);
        errors.extend(o.errors);
        writes.extend(o.writes);
    }

    // The writes' latency during the run.
    let mut all: Vec<Duration> = writes.iter().map(|w| w.0).collect();
    all.sort();
    let moving_max = writes
        .iter()
        .filter(|w| w.1)
        .map(|w| w.0)
        .max()
        .unwrap_or_default();
    let staying_max = writes
        .iter()
        .filter(|w| !w.1)
        .map(|w| w.0)
        .max()
        .unwrap_or_default();
    eprintln!(
        "ADD SHARD took {job_time:?}; {} writes: p50 {:?}, p99 {:?}, max {:?}; longest write of a moving key {moving_max:?}, of a staying key {staying_max:?}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or_default()
    );
    assert!(
        errors.is_empty(),
        "client errors: {:?}",
        &errors[..errors.len().min(10)]
    );

    // Every row is on the shard that owns it under the new map, once.
    let after = map(3);
    let mut balances: HashMap<i64, i64> = HashMap::new();
    let mut entries: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut on_new_shard = 0;
    for s in 0..3 {
        for r in rows_on(&c, s, "SELECT id, balance FROM accounts") {
            let id: i64 = r[0].parse().expect("id");
            assert_eq!(
                after.hash_shard(&ShardKey::Int(id)),
                s,
                "account {id} is on shard {s}"
            );
            assert!(
                balances
                    .insert(id, r[1].parse().expect("balance"))
                    .is_none(),
                "account {id} twice"
            );
            on_new_shard += usize::from(s == 2);
        }
        for r in rows_on(
            &c,
            s,
            "SELECT account_id, count(*), sum(amount) FROM entries GROUP BY 1",
        ) {
            let id: i64 = r[0].parse().expect("id");
            assert_eq!(
                after.hash_shard(&ShardKey::Int(id)),
                s,
                "entries of {id} are on shard {s}"
            );
            assert!(
                entries
                    .insert(id, (r[1].parse().expect("n"), r[2].parse().expect("sum")))
                    .is_none(),
                "entries of {id} on two shards"
            );
        }
    }
    assert!(
        on_new_shard > ACCOUNTS as usize / 5,
        "the new shard got {on_new_shard} accounts"
    );
    assert_eq!(
        balances.len(),
        ledger.len(),
        "accounts on the shards vs the ledger"
    );
    for (id, (balance, n, sum)) in &ledger {
        assert_eq!(balances.get(id), Some(balance), "balance of {id}");
        let got = entries.get(id).copied().unwrap_or((0, 0));
        assert_eq!(got, (*n, *sum), "entries of {id}");
    }
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

    // A proxy restarted with the old file routes by the new map (from the metadata).
    drop(admin);
    drop(setup);
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
        .find(|k| after.hash_shard(&ShardKey::Int(*k)) == 2)
        .expect("a key on the new shard");
    let balance: i64 = app
        .query_one("SELECT balance FROM accounts WHERE id = $1", &[&moved])
        .await
        .expect("a moved key through the restarted proxy")
        .get(0);
    assert_eq!(balance, ledger[&moved].0);
}
