//! Sharding on three shards (each a primary with one replica): placement of
//! rows written every way, pgbench over sharded tables, range and list
//! sharding, reference tables, hints, cross-shard transactions, replica
//! routing within a shard.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use shardgate::config::Config;
use shardgate_harness::{Cluster, ClusterSpec};
use shardgate_shardmap::{ShardKey, ShardMap};
use support::*;
use tokio_postgres::SimpleQueryMessage;

const LONG: Duration = Duration::from_secs(600);

const SHARDED: &str = concat!(
    r#"
[sharding]
vnodes = 256
default_shard = 0

[[sharded_tables]]
table = "items"
column = "id"
function = "hash"
key_type = "bigint"

[[sharded_tables]]
table = "labels"
column = "name"
function = "hash"
key_type = "text"

[[sharded_tables]]
table = "tokens"
column = "id"
function = "hash"
key_type = "uuid"

[[sharded_tables]]
table = "events"
column = "id"
function = "range"
key_type = "bigint"
ranges = [{ shard = 0, start = 1, end = 1000 }, { shard = 1, start = 1000, end = 2000 }, { shard = 2, start = 2000, end = 3000 }]

[[sharded_tables]]
table = "customers"
column = "region"
function = "list"
key_type = "text"
lists = [{ shard = 0, values = ["US", "CA"] }, { shard = 1, values = ["DE", "FR"] }, { shard = 2, values = ["JP"] }]

[[sharded_tables]]
table = "users"
column = "id"
function = "hash"
key_type = "bigint"
"#,
    pgbench_sharded_tables!(),
    r#"
[[reference_tables]]
table = "countries"
"#
);

/// A 3-shard cluster (primary + 1 replica each) with the proxy in front.
fn sharded(routing: &str) -> (Cluster, Proxy, ShardMap) {
    let c = cluster(ClusterSpec::new(3, 1));
    let port = free_port();
    let extra = format!("{SHARDED}\n[routing]\n{routing}\n");
    let text = config(&c, port, "pool_size = 20", &extra);
    let map = Config::parse(&text, "test")
        .expect("valid config")
        .shard_map()
        .expect("valid shard map");
    let proxy = Proxy::start(c.dir(), port, &text);
    (c, proxy, map)
}

fn shard_of(map: &ShardMap, table: &str, key: ShardKey) -> usize {
    let rule = map.table(None, table).expect("sharded table");
    map.shard_for(rule, &key).expect("key has a shard")
}

async fn one_value(client: &tokio_postgres::Client, sql: &str) -> String {
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error()))
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

/// Item 2: rows written every way land on exactly the shard the map assigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_on_their_shard_however_written() {
    let (c, proxy, map) = sharded("default_consistency = \"strong\"");
    let client = connect(&proxy.app()).await;
    client
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text);
             CREATE TABLE labels (name text PRIMARY KEY, n int);
             CREATE TABLE tokens (id uuid PRIMARY KEY, n int)",
        )
        .await
        .expect("DDL on every shard");
    for shard in c.shards() {
        assert_eq!(
            shard
                .primary
                .psql(
                    "app",
                    "SELECT count(*) FROM pg_tables WHERE tablename IN ('items','labels','tokens')"
                )
                .unwrap(),
            "3"
        );
    }
    // Literal SQL, one row per statement.
    for id in 1..=60i64 {
        client
            .batch_execute(&format!("INSERT INTO items VALUES ({id}, 'literal')"))
            .await
            .unwrap();
    }
    // Extended protocol, binary parameters (tokio-postgres sends int8 in binary).
    for id in 61..=120i64 {
        client
            .execute("INSERT INTO items (id, name) VALUES ($1, 'binary')", &[&id])
            .await
            .unwrap();
    }
    // Extended protocol, text parameters (psycopg sends them as text).
    run_client_script(
        "psycopg_insert.py",
        vec![proxy.app(), "121".into(), "180".into()],
    )
    .await;
    // A multi-row INSERT whose rows belong to different shards, with RETURNING.
    let values: Vec<String> = (181..=240).map(|id| format!("({id}, 'multi')")).collect();
    let rows = client
        .simple_query(&format!(
            "INSERT INTO items VALUES {} RETURNING id",
            values.join(", ")
        ))
        .await
        .unwrap();
    let returned: Vec<i64> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    let mut sorted = returned.clone();
    sorted.sort();
    assert_eq!(sorted, (181..=240).collect::<Vec<i64>>());
    // COPY in text, CSV and binary.
    let dir = c.dir();
    let text_file = dir.join("items.txt");
    std::fs::write(
        &text_file,
        (241..=300)
            .map(|i| format!("{i}\tcopy-text\n"))
            .collect::<String>(),
    )
    .unwrap();
    let csv_file = dir.join("items.csv");
    std::fs::write(
        &csv_file,
        (301..=360)
            .map(|i| format!("{i},\"copy, csv\"\n"))
            .collect::<String>(),
    )
    .unwrap();
    for (file, opts) in [(&text_file, ""), (&csv_file, " (format csv)")] {
        let out = run(
            psql(&proxy.app()).args([
                "-c",
                &format!("\\copy items from '{}'{opts}", file.display()),
            ]),
            LONG,
        );
        assert_success(&out, "\\copy into a sharded table");
    }
    let bin_file = dir.join("items.bin");
    let staging = &c.shard(0).primary;
    staging
        .psql(
            "app",
            &format!(
                "CREATE TABLE staging (id bigint, name text); INSERT INTO staging SELECT g, 'copy-binary' FROM generate_series(361, 420) g; COPY staging TO '{}' (FORMAT binary)",
                bin_file.display()
            ),
        )
        .unwrap();
    let out = run(
        psql(&proxy.app()).args([
            "-c",
            &format!("\\copy items from '{}' (format binary)", bin_file.display()),
        ]),
        LONG,
    );
    assert_success(&out, "binary \\copy into a sharded table");

    // Text and uuid keys, literal and parameter forms.
    for i in 0..30 {
        let name = format!("label-{i}-é");
        if i % 2 == 0 {
            client
                .batch_execute(&format!("INSERT INTO labels VALUES ('{name}', {i})"))
                .await
                .unwrap();
        } else {
            client
                .execute("INSERT INTO labels VALUES ($1, $2)", &[&name, &i])
                .await
                .unwrap();
        }
    }
    let uuids: Vec<String> = (0..30)
        .map(|i| format!("{:08x}-1234-4abc-8def-{:012x}", i * 7919, i * 104729))
        .collect();
    for (i, u) in uuids.iter().enumerate() {
        client
            .batch_execute(&format!("INSERT INTO tokens VALUES ('{u}', {i})"))
            .await
            .unwrap();
    }

    // Every row is on exactly its shard.
    let placed = per_shard(&c, "SELECT id FROM items ORDER BY id");
    let mut seen = BTreeMap::new();
    for (shard, ids) in placed.iter().enumerate() {
        for id in ids {
            let id: i64 = id.parse().unwrap();
            assert!(seen.insert(id, shard).is_none(), "id {id} on two shards");
            assert_eq!(
                shard,
                shard_of(&map, "items", ShardKey::Int(id)),
                "id {id} on the wrong shard"
            );
        }
    }
    assert_eq!(seen.len(), 420, "rows lost or duplicated");
    let counts: Vec<usize> = placed.iter().map(Vec::len).collect();
    assert!(
        counts.iter().all(|&n| n > 80),
        "suspicious spread {counts:?}"
    );
    for (shard, names) in per_shard(&c, "SELECT name FROM labels").iter().enumerate() {
        for n in names {
            assert_eq!(
                shard,
                shard_of(&map, "labels", ShardKey::Text(n.clone())),
                "label {n}"
            );
        }
    }
    let labels: usize = per_shard(&c, "SELECT name FROM labels")
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(labels, 30);
    for (shard, ids) in per_shard(&c, "SELECT id FROM tokens").iter().enumerate() {
        for u in ids {
            let key = ShardKey::parse_text(shardgate_shardmap::KeyType::Uuid, u).unwrap();
            assert_eq!(shard, shard_of(&map, "tokens", key), "token {u}");
        }
    }
    // Reads by key come back from the right shard through the proxy.
    for id in [1i64, 100, 200, 300, 400] {
        let row = client
            .query_one("SELECT name FROM items WHERE id = $1", &[&id])
            .await
            .unwrap();
        let name: String = row.get(0);
        assert!(!name.is_empty());
    }
}

/// Item 3: pgbench -i and every pgbench mode over sharded pgbench tables.
#[test]
fn pgbench_over_sharded_tables() {
    let (c, proxy, _map) = sharded("default_consistency = \"strong\"");
    let ci = proxy.app();
    let init = run(pgbench(&ci).args(["-i", "-s", "3", "-q"]).command(), LONG);
    assert_success(&init, "pgbench -i through the proxy");
    let accounts: usize = per_shard(&c, "SELECT count(*) FROM pgbench_accounts")
        .iter()
        .map(|v| v[0].parse::<usize>().unwrap())
        .sum();
    assert_eq!(accounts, 300_000);
    for mode in [
        &["-S", "-M", "simple"][..],
        &["-S", "-M", "extended"][..],
        &["-S", "-M", "prepared"][..],
        &["-M", "prepared"][..],
    ] {
        let out = run(
            pgbench(&ci)
                .args(["-c", "16", "-j", "2", "-T", "30", "-n"])
                .args(mode)
                .command(),
            LONG,
        );
        assert_success(&out, &format!("pgbench {mode:?}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("number of failed transactions: 0 (0.000%)"),
            "pgbench {mode:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sum = |sql: &str| -> i64 {
        per_shard(&c, sql)
            .iter()
            .map(|v| v.first().and_then(|x| x.parse::<i64>().ok()).unwrap_or(0))
            .sum()
    };
    let a = sum("SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts");
    let h = sum("SELECT coalesce(sum(delta), 0) FROM pgbench_history");
    let b = sum("SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches");
    let t = sum("SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers");
    println!("sum(abalance) = {a}, sum(delta) = {h}, sum(bbalance) = {b}, sum(tbalance) = {t}");
    assert!(h != 0, "TPC-B did not run");
    assert_eq!((a, b, t), (h, h, h));
}

/// Item 4: range and list sharding, and keys no shard accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_and_list_sharding() {
    let (c, proxy, map) = sharded("default_consistency = \"strong\"");
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE events (id bigint PRIMARY KEY, v text); CREATE TABLE customers (id int, region text)")
        .await
        .unwrap();
    for id in [1i64, 999, 1000, 1500, 1999, 2000, 2999] {
        client
            .execute("INSERT INTO events VALUES ($1, 'e')", &[&id])
            .await
            .unwrap();
    }
    for (id, region) in [(1, "US"), (2, "CA"), (3, "DE"), (4, "FR"), (5, "JP")] {
        client
            .batch_execute(&format!("INSERT INTO customers VALUES ({id}, '{region}')"))
            .await
            .unwrap();
    }
    assert_eq!(
        per_shard(&c, "SELECT id FROM events ORDER BY id"),
        vec![
            vec!["1", "999"],
            vec!["1000", "1500", "1999"],
            vec!["2000", "2999"]
        ]
    );
    assert_eq!(
        per_shard(&c, "SELECT region FROM customers ORDER BY region"),
        vec![vec!["CA", "US"], vec!["DE", "FR"], vec!["JP"]]
    );
    assert_eq!(shard_of(&map, "events", ShardKey::Int(1500)), 1);
    // Keys no range or list accepts: a clear error, nothing written.
    for bad in [
        "INSERT INTO events VALUES (5000, 'x')",
        "INSERT INTO events VALUES (0, 'x')",
        "INSERT INTO customers VALUES (9, 'XX')",
    ] {
        let err = client.batch_execute(bad).await.expect_err(bad);
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "23514", "{bad}: {db:?}");
        assert!(
            db.message().contains("events") || db.message().contains("customers"),
            "{}",
            db.message()
        );
    }
    let err = client
        .execute("INSERT INTO events VALUES ($1, 'x')", &[&7000i64])
        .await
        .expect_err("out of range parameter");
    assert_eq!(sqlstate(&err).as_deref(), Some("23514"));
    let total: usize = per_shard(&c, "SELECT count(*) FROM events WHERE id >= 3000 OR id < 1")
        .iter()
        .map(|v| v[0].parse::<usize>().unwrap())
        .sum();
    assert_eq!(total, 0);
    // Range predicates prune to the shards that can hold the keys.
    let n = one_value(
        &client,
        "SELECT count(*) FROM events WHERE id BETWEEN 1000 AND 1600",
    )
    .await;
    assert_eq!(n, "2");
}

/// Item 5: reference tables are written everywhere and join locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_tables_everywhere() {
    let (c, proxy, _map) = sharded("default_consistency = \"strong\"");
    let client = connect(&proxy.app()).await;
    client
        .batch_execute(
            "CREATE TABLE countries (code text PRIMARY KEY, name text);
             CREATE TABLE users (id bigint PRIMARY KEY, country text)",
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan'), ('br', 'Brazil')",
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE countries SET name = $1 WHERE code = 'br'",
            &[&"Brasil"],
        )
        .await
        .unwrap();
    for shard in c.shards() {
        assert_eq!(
            shard
                .primary
                .psql(
                    "app",
                    "SELECT string_agg(code || '=' || name, ',' ORDER BY code) FROM countries"
                )
                .unwrap(),
            "br=Brasil,fr=France,jp=Japan"
        );
    }
    for (id, cc) in [(1i64, "fr"), (2, "jp"), (3, "br"), (4, "fr")] {
        client
            .execute("INSERT INTO users VALUES ($1, $2)", &[&id, &cc])
            .await
            .unwrap();
    }
    for (id, want) in [(1i64, "France"), (2, "Japan"), (3, "Brasil"), (4, "France")] {
        let row = client
            .query_one(
                "SELECT c.name FROM users u JOIN countries c ON c.code = u.country WHERE u.id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), want);
    }
    let n = one_value(&client, "SELECT count(*) FROM countries").await;
    assert_eq!(n, "3");
}

/// Item 6: hints, and cross-shard transactions that roll back or commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_and_cross_shard_transactions() {
    let (c, proxy, map) = sharded("default_consistency = \"strong\"");
    let ports: HashMap<u16, usize> = c
        .shards()
        .iter()
        .enumerate()
        .map(|(i, s)| (s.primary.port(), i))
        .collect();
    let mut client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    for shard in 0..3usize {
        let port: u16 = one_value(
            &client,
            &format!("/* shardgate: shard={shard} */ SELECT inet_server_port()"),
        )
        .await
        .parse()
        .unwrap();
        assert_eq!(ports[&port], shard);
    }
    client
        .batch_execute("SET shardgate.shard = 2")
        .await
        .unwrap();
    assert_eq!(one_value(&client, "SHOW shardgate.shard").await, "2");
    let port: u16 = one_value(&client, "SELECT inet_server_port()")
        .await
        .parse()
        .unwrap();
    assert_eq!(ports[&port], 2);
    client.batch_execute("RESET shardgate.shard").await.unwrap();
    client
        .batch_execute("SET shardgate.sharding_key = '42'")
        .await
        .unwrap();
    let port: u16 = one_value(&client, "SELECT inet_server_port()")
        .await
        .parse()
        .unwrap();
    assert_eq!(ports[&port], shard_of(&map, "items", ShardKey::Int(42)));
    client
        .batch_execute("RESET shardgate.sharding_key")
        .await
        .unwrap();
    let err = client
        .batch_execute("SET shardgate.shard = 7")
        .await
        .expect_err("no shard 7");
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"));

    // Two keys on different shards.
    let (a, b) = (1..1000i64)
        .flat_map(|a| (1..1000i64).map(move |b| (a, b)))
        .find(|&(a, b)| {
            shard_of(&map, "items", ShardKey::Int(a)) != shard_of(&map, "items", ShardKey::Int(b))
        })
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO items VALUES ($1, 'rolled back')", &[&a])
        .await
        .unwrap();
    tx.execute("INSERT INTO items VALUES ($1, 'rolled back')", &[&b])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let count = |c: &Cluster| -> usize {
        per_shard(c, "SELECT count(*) FROM items")
            .iter()
            .map(|v| v[0].parse::<usize>().unwrap())
            .sum()
    };
    assert_eq!(
        count(&c),
        0,
        "a rolled back cross-shard transaction left rows"
    );
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO items VALUES ($1, 'committed')", &[&a])
        .await
        .unwrap();
    tx.execute("INSERT INTO items VALUES ($1, 'committed')", &[&b])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(count(&c), 2);
    // An error on one shard fails the whole transaction.
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO items VALUES ($1, 'x')", &[&(a + 100_000)])
        .await
        .unwrap();
    assert!(tx
        .execute("INSERT INTO items VALUES ($1, 'dup')", &[&b])
        .await
        .is_err());
    assert!(tx.commit().await.is_err() || count(&c) == 2);
    assert_eq!(count(&c), 2);
    // Without a key: every shard, with the counts summed.
    let n = client
        .execute("UPDATE items SET name = 'all'", &[])
        .await
        .unwrap();
    assert_eq!(n, 2);
    // Gathered aggregates combine across shards.
    let row = client
        .query_one("SELECT string_agg(name, ',' ORDER BY id) FROM items", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "all,all");
    // An aggregate the shards' results cannot combine: the table is
    // gathered and the aggregate runs once over all its rows.
    let row = client
        .query_one(
            "SELECT json_object_agg(id, name)::jsonb::text FROM items",
            &[],
        )
        .await
        .unwrap();
    let object: String = row.get(0);
    assert!(object.contains(&format!("\"{a}\": \"all\"")), "{object}");
    assert!(object.contains(&format!("\"{b}\": \"all\"")), "{object}");
    // A full join not on the shard key: both sides gathered, one server
    // joins them (both rows are named 'all': four pairs).
    let rows = client
        .query(
            "SELECT a.id FROM items a FULL JOIN items b ON a.name = b.name",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    // What cannot be answered exactly across shards is refused, naming it.
    let err = client
        .batch_execute(
            "UPDATE items SET name = 'x' WHERE name IN (SELECT name FROM items WHERE id > 0)",
        )
        .await
        .expect_err("a write whose subquery is not on the shard key");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000");
    assert!(
        db.message().contains("not joined on their shard keys"),
        "{}",
        db.message()
    );
}

/// Item 7: replica routing works within each shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_shard_reads_use_that_shards_replica() {
    let (c, proxy, map) = sharded("default_consistency = \"eventual\"");
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
        .await
        .unwrap();
    for id in 1..=30i64 {
        client
            .execute("INSERT INTO items VALUES ($1, 'x')", &[&id])
            .await
            .unwrap();
    }
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    for id in 1..=30i64 {
        let shard = shard_of(&map, "items", ShardKey::Int(id));
        let row = client
            .query_one(
                "SELECT inet_server_port(), name FROM items WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let port = row.get::<_, i32>(0) as u16;
        assert_eq!(
            port,
            c.shard(shard).replicas[0].port(),
            "id {id} read from the wrong node"
        );
        assert_eq!(row.get::<_, String>(1), "x");
    }
}

/// asyncpg, which prepares with Parse/Describe/Flush, binds without a Sync in
/// between and fetches single rows with a row-limited Execute, on sharded
/// tables with replicas: keyed reads and writes, merged results, COPY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_on_sharded_tables_with_replicas() {
    let (_c, proxy, _map) = sharded("default_consistency = \"eventual\"");
    let dsn = format!("postgresql://app:secret@127.0.0.1:{}/app", proxy.port);
    let out = run_client_script("asyncpg_client.py", vec![dsn]).await;
    assert!(out.contains("ok"), "asyncpg on sharded tables: {out}");
}

/// Rows of `users` with `filter` on each shard's primary, read directly.
fn users_per_shard(c: &Cluster, filter: &str) -> Vec<String> {
    c.shards()
        .iter()
        .map(|s| {
            s.primary
                .psql(
                    "app",
                    &format!("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM users WHERE {filter}"),
                )
                .unwrap()
        })
        .collect()
}

/// The rows of `keys` as the shard map places them: the ids on each shard.
fn placed(map: &ShardMap, keys: &[i64]) -> Vec<String> {
    (0..3)
        .map(|shard| {
            keys.iter()
                .filter(|&&k| shard_of(map, "users", ShardKey::Int(k)) == shard)
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// A query string whose statements go to different places (DDL on every
/// shard, rows split by key, an unsharded table on the default shard, a
/// merged read) runs as Postgres runs one: each statement's answer in
/// turn, in one transaction, the first error undoing the whole string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_strings_whose_statements_go_to_different_places() {
    let (c, proxy, map) = sharded("default_consistency = \"strong\"");
    let client = connect(&proxy.app()).await;
    let answer = client
        .simple_query(
            "CREATE TABLE ms_local (id int, v text); INSERT INTO ms_local VALUES (1, 'a'), (2, 'b');
             CREATE TABLE users (id bigint PRIMARY KEY, name text);
             INSERT INTO users (id, name) VALUES (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four');
             SELECT count(*) FROM users; SELECT v FROM ms_local ORDER BY id",
        )
        .await
        .unwrap_or_else(|e| panic!("{e} {:?}", e.as_db_error()));
    let rows: Vec<&str> = answer
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    let counts: Vec<u64> = answer
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(rows, ["4", "a", "b"]);
    assert_eq!(counts, [0, 2, 0, 4, 1, 2]);
    assert_eq!(users_per_shard(&c, "true"), placed(&map, &[1, 2, 3, 4]));

    // Answers larger than the proxy's buffers stream through: a 300 kB
    // value from one shard (relayed in pieces), then 2,000 merged rows.
    let answer = client
        .simple_query(
            "SELECT repeat('x', 300000) FROM ms_local WHERE id = 1;
             SELECT u.id, g, repeat('y', 500) FROM users u, generate_series(1, 500) g ORDER BY u.id, g",
        )
        .await
        .unwrap_or_else(|e| panic!("{e} {:?}", e.as_db_error()));
    let rows: Vec<&tokio_postgres::SimpleQueryRow> = answer
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 1 + 2000);
    assert_eq!(rows[0].get(0).map(str::len), Some(300_000));
    assert_eq!(rows[2000].get(0), Some("4"));

    // An error stops the string and undoes what it did on every shard.
    let e = client
        .simple_query(
            "INSERT INTO users VALUES (10, 'x'), (11, 'y'), (12, 'z'), (13, 'w');
             INSERT INTO ms_local VALUES (3, 'c'); SELECT 1 / 0; INSERT INTO users VALUES (14, 'v')",
        )
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"), "{e:?}");
    assert_eq!(users_per_shard(&c, "id >= 10"), ["", "", ""]);
    assert_eq!(
        one_value(&client, "SELECT count(*) FROM ms_local").await,
        "2"
    );

    // A string with its own transaction commits it on every shard.
    client
        .batch_execute(
            "BEGIN; INSERT INTO users VALUES (20, 'a'), (21, 'b'), (22, 'c'), (23, 'd');
             INSERT INTO ms_local VALUES (5, 'e'); COMMIT",
        )
        .await
        .unwrap_or_else(|e| panic!("{e} {:?}", e.as_db_error()));
    assert_eq!(
        users_per_shard(&c, "id >= 20"),
        placed(&map, &[20, 21, 22, 23])
    );
    assert_eq!(
        one_value(&client, "SELECT count(*) FROM ms_local").await,
        "3"
    );

    // A COMMIT in the string ends its implicit block (with Postgres's
    // warning); the error after it undoes only what followed.
    let e = client
        .simple_query(
            "INSERT INTO users VALUES (40, 'a'), (41, 'b'), (42, 'c'); COMMIT;
             INSERT INTO users VALUES (43, 'd'), (44, 'e'), (45, 'f'); SELECT 1 / 0",
        )
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&e).as_deref(), Some("22012"), "{e:?}");
    assert_eq!(users_per_shard(&c, "id >= 40"), placed(&map, &[40, 41, 42]));

    // Inside the client's transaction: part of it, rolled back with it.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .batch_execute("INSERT INTO users VALUES (30, 'a'), (31, 'b'), (32, 'c'); INSERT INTO ms_local VALUES (6, 'f')")
        .await
        .unwrap();
    assert_eq!(
        one_value(
            &client,
            "SELECT count(*) FROM users WHERE id BETWEEN 30 AND 39"
        )
        .await,
        "3"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(users_per_shard(&c, "id BETWEEN 30 AND 39"), ["", "", ""]);
    assert_eq!(
        one_value(&client, "SELECT count(*) FROM ms_local").await,
        "3"
    );
}
