//! Operating a running cluster (issue 16): the admin schema's tables
//! against the cluster's real state, the admin commands, reloads under
//! load, `/metrics` through a real Prometheus parser, the slow-query log.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec};
use support::*;
use tokio_postgres::SimpleQueryMessage;

const LONG: Duration = Duration::from_secs(300);

const OPS: &str = "\n[[users]]\nname = \"ops\"\npassword = \"ops\"\nadmin = true\nserver_user = \"app\"\nserver_password = \"secret\"\n";

const SHARDED: &str = r#"
[sharding]
vnodes = 8

[[sharded_tables]]
table = "customers"
column = "id"

[[sharded_tables]]
table = "events"
column = "id"
function = "range"
ranges = [{ shard = 0, start = 0, end = 1000 }, { shard = 1, start = 1000, end = 2000 }]

[[sharded_tables]]
table = "regions"
column = "code"
function = "list"
key_type = "text"
lists = [{ shard = 0, values = ["eu"] }, { shard = 1, values = ["us", "ca"] }]

[[reference_tables]]
table = "countries"
"#;

type Row = HashMap<String, Option<String>>;

async fn ops(proxy: &Proxy) -> tokio_postgres::Client {
    connect(&proxy.conninfo("ops", "ops", "shardgate")).await
}

/// Rows of `sql` (simple protocol) as column name -> text.
async fn rows(c: &tokio_postgres::Client, sql: &str) -> Vec<Row> {
    let msgs = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error()));
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn get<'a>(r: &'a Row, col: &str) -> &'a str {
    r.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {r:?}"))
        .as_deref()
        .unwrap_or("")
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    let r = rows(c, sql).await;
    assert_eq!(r.len(), 1, "{sql}: {r:?}");
    r[0].values().next().cloned().flatten().unwrap_or_default()
}

async fn sqlstate_of(c: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let e = c.simple_query(sql).await.expect_err(sql);
    let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Polls an async condition until it holds or `timeout` passes.
async fn until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_row<'a>(nodes: &'a [Row], addr: &str) -> &'a Row {
    nodes
        .iter()
        .find(|r| get(r, "node") == addr)
        .unwrap_or_else(|| panic!("{addr} not in {nodes:?}"))
}

/// Every table holds what the cluster really is: nodes and their roles,
/// replication lag while a replica's replay is paused, shards and their
/// data, the shard map, clients and the server connections they hold,
/// counters that move with traffic, statement statistics, the slow-query
/// log, prepared transactions in doubt; the issue's join; errors; and
/// psycopg and node-postgres running typed, parameterised queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_show_the_live_cluster() {
    let c = cluster(ClusterSpec::new(2, 1));
    let port = free_port();
    let log = c.dir().join("shardgate-2pc.log");
    let extra = format!(
        "pool_size = 7\nslow_query_ms = 200\ntwo_phase_commit = true\ntwo_phase_log = {:?}",
        log.display().to_string()
    );
    let proxy = Proxy::start(
        c.dir(),
        port,
        &config(&c, port, &extra, &format!("{OPS}{SHARDED}")),
    );
    let app = connect(&proxy.app()).await;
    app.batch_execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY, name text);
         CREATE TABLE events (id bigint PRIMARY KEY, what text);
         CREATE TABLE regions (code text PRIMARY KEY, name text);
         CREATE TABLE countries (code text PRIMARY KEY, name text);",
    )
    .await
    .unwrap();
    for i in 1..=200 {
        app.batch_execute(&format!("INSERT INTO customers VALUES ({i}, 'c{i}')"))
            .await
            .unwrap();
    }
    app.batch_execute("ANALYZE customers").await.unwrap();
    let admin = ops(&proxy).await;

    // nodes: every node with its role, recovery state and address.
    until(Duration::from_secs(10), "every node up", || async {
        rows(&admin, "SELECT * FROM shardgate.nodes")
            .await
            .iter()
            .all(|r| get(r, "state") == "up" && !get(r, "in_recovery").is_empty())
    })
    .await;
    let nodes = rows(&admin, "SELECT * FROM shardgate.nodes ORDER BY shard, role").await;
    assert_eq!(nodes.len(), 4, "{nodes:?}");
    for (i, shard) in c.shards().iter().enumerate() {
        let p = node_row(&nodes, &shard.primary.addr());
        assert_eq!(
            (get(p, "shard"), get(p, "role"), get(p, "in_recovery")),
            (&*i.to_string(), "primary", "f")
        );
        let r = node_row(&nodes, &shard.replicas[0].addr());
        assert_eq!(
            (get(r, "shard"), get(r, "role"), get(r, "in_recovery")),
            (&*i.to_string(), "replica", "t")
        );
        assert!(get(p, "lsn").contains('/'));
    }

    // Lag: replay paused on shard 1's replica while its primary writes.
    let replica = &c.shard(1).replicas[0];
    replica.psql("app", "SELECT pg_wal_replay_pause()").unwrap();
    c.shard(1)
        .primary
        .psql("app", "CREATE TABLE lag_filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 20000) g")
        .unwrap();
    let q = format!(
        "SELECT lag_bytes, lag_ms FROM shardgate.nodes WHERE node = '{}'",
        replica.addr()
    );
    until(
        Duration::from_secs(10),
        "lag on the paused replica",
        || async {
            let r = rows(&admin, &q).await;
            get(&r[0], "lag_bytes").parse::<u64>().unwrap() > 100_000
                && get(&r[0], "lag_ms").parse::<u64>().unwrap() > 0
        },
    )
    .await;
    replica
        .psql("app", "SELECT pg_wal_replay_resume()")
        .unwrap();
    until(
        Duration::from_secs(20),
        "the replica catching up",
        || async { get(&rows(&admin, &q).await[0], "lag_bytes") == "0" },
    )
    .await;

    // shards: weights, nodes, and the sharded data on each.
    let shards = rows(&admin, "SELECT * FROM shardgate.shards ORDER BY shard").await;
    assert_eq!(shards.len(), 2);
    let mut share_sum = 0.0;
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(get(s, "weight"), "1");
        assert_eq!(get(s, "primary_node"), c.shard(i).primary.addr());
        assert_eq!(get(s, "replicas"), c.shard(i).replicas[0].addr());
        assert!(get(s, "tables_bytes").parse::<i64>().unwrap() > 0, "{s:?}");
        let rows_estimate: i64 = get(s, "rows_estimate").parse().unwrap();
        assert!((40..=160).contains(&rows_estimate), "{s:?}");
        assert_eq!(get(s, "ideal_share"), "0.5");
        let share: f64 = get(s, "share").parse().unwrap();
        let imbalance: f64 = get(s, "imbalance").parse().unwrap();
        assert!((imbalance - (share / 0.5 - 1.0)).abs() < 1e-9, "{s:?}");
        share_sum += share;
    }
    assert!((share_sum - 1.0).abs() < 1e-9);

    // The configured tables and the shard map.
    let t = rows(
        &admin,
        "SELECT * FROM shardgate.sharded_tables ORDER BY \"table\"",
    )
    .await;
    let described: Vec<(String, String, String, String)> = t
        .iter()
        .map(|r| {
            (
                get(r, "table").into(),
                get(r, "column").into(),
                get(r, "function").into(),
                get(r, "key_type").into(),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            (
                "customers".into(),
                "id".into(),
                "hash".into(),
                "bigint".into()
            ),
            (
                "events".into(),
                "id".into(),
                "range".into(),
                "bigint".into()
            ),
            (
                "regions".into(),
                "code".into(),
                "list".into(),
                "text".into()
            ),
        ]
    );
    assert_eq!(
        one(&admin, "SELECT \"table\" FROM shardgate.reference_tables").await,
        "countries"
    );
    assert_eq!(
        one(
            &admin,
            "SELECT count(*) FROM shardgate.shard_map WHERE \"table\" = '(ring)' AND version = 1"
        )
        .await,
        "16",
        "8 virtual nodes per shard"
    );
    let ranges = rows(&admin, "SELECT \"from\", \"to\", shard FROM shardgate.shard_map WHERE \"table\" = 'events' ORDER BY shard").await;
    assert_eq!(
        ranges
            .iter()
            .map(|r| (get(r, "from"), get(r, "to"), get(r, "shard")))
            .collect::<Vec<_>>(),
        [("0", "1000", "0"), ("1000", "2000", "1")]
    );
    assert_eq!(
        one(&admin, "SELECT group_concat(value || ':' || shard, ',') FROM (SELECT value, shard FROM shardgate.shard_map WHERE \"table\" = 'regions' ORDER BY value)").await,
        "ca:1,eu:0,us:1"
    );

    // The issue's join between nodes and pools, with an aggregate.
    let joined = rows(
        &admin,
        "SELECT n.shard, sum(p.cl_waiting) AS waiting, count(*) AS pools FROM shardgate.nodes n JOIN shardgate.pools p USING (node) GROUP BY n.shard ORDER BY n.shard",
    )
    .await;
    assert_eq!(joined.len(), 2, "{joined:?}");
    assert!(joined.iter().all(|r| get(r, "waiting") == "0"));

    // clients and servers: a client inside a transaction holds a server
    // connection whose backend pid the admin tables show.
    let client = connect(&format!("{} application_name=admin-test", proxy.app())).await;
    client.batch_execute("BEGIN").await.unwrap();
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid() FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    let me = rows(
        &admin,
        "SELECT * FROM shardgate.clients WHERE application_name = 'admin-test'",
    )
    .await;
    assert_eq!(me.len(), 1, "{me:?}");
    let id = get(&me[0], "id").to_owned();
    assert_eq!(
        (get(&me[0], "user"), get(&me[0], "database")),
        ("app", "app")
    );
    assert_eq!(
        (get(&me[0], "in_transaction"), get(&me[0], "state")),
        ("t", "active")
    );
    assert_eq!(get(&me[0], "addr"), "127.0.0.1");
    assert!(get(&me[0], "connect_time").starts_with("20"));
    // (Its transaction may hold a connection on each shard it touched.)
    let held = rows(
        &admin,
        &format!("SELECT * FROM shardgate.servers WHERE client_id = {id}"),
    )
    .await;
    assert!(
        held.iter().any(|r| get(r, "remote_pid") == pid.to_string()),
        "{held:?}"
    );
    assert!(held.iter().all(|r| get(r, "state") == "active"), "{held:?}");
    client.batch_execute("COMMIT").await.unwrap();
    until(Duration::from_secs(5), "the connection back in its pool", || async {
        rows(&admin, &format!("SELECT 1 FROM shardgate.servers WHERE client_id = {id}")).await.is_empty()
            && rows(&admin, &format!("SELECT 1 FROM shardgate.clients WHERE id = {id} AND NOT in_transaction AND state = 'idle'")).await.len() == 1
    })
    .await;
    assert!(!rows(
        &admin,
        &format!("SELECT 1 FROM shardgate.servers WHERE state = 'idle' AND remote_pid = {pid}")
    )
    .await
    .is_empty());

    // Counters move with traffic.
    let xacts = || async {
        one(&admin, "SELECT sum(xact_count) FROM shardgate.stats")
            .await
            .parse::<i64>()
            .unwrap()
    };
    let before = xacts().await;
    for i in 0..20 {
        app.simple_query(&format!(
            "SELECT name FROM customers WHERE id = {}",
            100 + i
        ))
        .await
        .unwrap();
    }
    let after = xacts().await;
    assert!(after >= before + 20, "{before} -> {after}");
    let pools = rows(&admin, "SHOW POOLS").await;
    assert!(
        pools
            .iter()
            .all(|r| get(r, "pool_size") == "7" && get(r, "pool_mode") == "transaction"),
        "{pools:?}"
    );
    for col in [
        "database",
        "user",
        "cl_active",
        "cl_waiting",
        "sv_active",
        "sv_idle",
        "sv_used",
        "maxwait",
        "maxwait_us",
    ] {
        assert!(pools[0].contains_key(col), "SHOW POOLS lacks {col}");
    }
    let stats = rows(&admin, "SHOW STATS").await;
    for col in [
        "total_xact_count",
        "total_query_count",
        "total_received",
        "total_sent",
        "total_xact_time",
        "total_wait_time",
        "bytes_received",
        "errors",
    ] {
        assert!(stats[0].contains_key(col), "SHOW STATS lacks {col}");
    }

    // Statement statistics: literals removed, calls counted, routes named.
    let qs = rows(&admin, "SELECT * FROM shardgate.query_stats WHERE query = 'select name from customers where id = ?'").await;
    assert_eq!(qs.len(), 1, "{qs:?}");
    assert!(get(&qs[0], "calls").parse::<i64>().unwrap() >= 20);
    assert!(get(&qs[0], "route").starts_with("shard "), "{qs:?}");
    assert!(get(&qs[0], "rows").parse::<i64>().unwrap() >= 20);
    app.simple_query("SELECT count(*) FROM customers")
        .await
        .unwrap();
    let fan = rows(&admin, "SELECT route, shards FROM shardgate.query_stats WHERE query = 'select count ( * ) from customers'").await;
    assert_eq!(
        fan.len(),
        1,
        "{:?}",
        rows(&admin, "SELECT query FROM shardgate.query_stats").await
    );
    assert_eq!(
        (get(&fan[0], "route"), get(&fan[0], "shards")),
        ("fan-out", "0,1")
    );
    assert!(
        rows(
            &admin,
            "SELECT 1 FROM shardgate.query_stats WHERE query LIKE '%c1%'"
        )
        .await
        .is_empty(),
        "no literal in the statistics"
    );

    // The slow-query log.
    app.simple_query("SELECT pg_sleep(0.3)").await.unwrap();
    let slow = rows(
        &admin,
        "SELECT * FROM shardgate.slow_queries WHERE query = 'select pg_sleep ( ? )'",
    )
    .await;
    assert_eq!(slow.len(), 1, "{slow:?}");
    assert!(get(&slow[0], "duration_ms").parse::<f64>().unwrap() >= 300.0);
    assert_eq!(get(&slow[0], "route"), "shard 0");
    // A read: on shard 0's replica (eventual consistency).
    assert_eq!(get(&slow[0], "node"), c.shard(0).replicas[0].addr());
    assert_eq!(get(&slow[0], "user"), "app");
    assert!(proxy.log_text().contains("slow query"), "logged at warn");

    // A prepared transaction left in doubt by an earlier shardgate.
    c.shard(1)
        .primary
        .psql("app", "BEGIN; INSERT INTO events VALUES (1500, 'x'); PREPARE TRANSACTION 'shardgate_deadbeef_7';")
        .unwrap();
    let tx = rows(&admin, "SELECT * FROM shardgate.transactions").await;
    assert_eq!(tx.len(), 1, "{tx:?}");
    assert_eq!(
        (
            get(&tx[0], "gid"),
            get(&tx[0], "shard"),
            get(&tx[0], "state"),
            get(&tx[0], "decision")
        ),
        ("shardgate_deadbeef_7", "1", "in doubt", "rollback")
    );
    c.shard(1)
        .primary
        .psql("app", "ROLLBACK PREPARED 'shardgate_deadbeef_7'")
        .unwrap();
    assert!(rows(&admin, "SELECT * FROM shardgate.transactions")
        .await
        .is_empty());

    // jobs (filled by rebalancing), config, version, help.
    assert_eq!(
        one(&admin, "SELECT count(*) FROM shardgate.jobs").await,
        "0"
    );
    assert_eq!(
        rows(
            &admin,
            "SELECT id, kind, state, phase, progress, started_at, error FROM shardgate.jobs"
        )
        .await
        .len(),
        0
    );
    let cfg = rows(&admin, "SELECT * FROM shardgate.config WHERE key IN ('proxy.pool_size', 'proxy.listen', 'proxy.pool_timeout') ORDER BY key").await;
    assert_eq!(
        cfg.iter()
            .map(|r| (
                get(r, "key"),
                get(r, "value"),
                get(r, "reloadable"),
                get(r, "source")
            ))
            .collect::<Vec<_>>(),
        [
            ("proxy.listen", &*format!("127.0.0.1:{port}"), "f", "file"),
            ("proxy.pool_size", "7", "t", "file"),
            ("proxy.pool_timeout", "5s", "t", "default"),
        ]
    );
    assert!(one(&admin, "SHOW VERSION").await.starts_with("shardgate "));
    assert!(!rows(
        &admin,
        "SELECT * FROM shardgate.help WHERE command = 'RELOAD'"
    )
    .await
    .is_empty());
    for name in [
        "nodes",
        "pools",
        "clients",
        "servers",
        "stats",
        "databases",
        "shards",
        "config",
        "query_stats",
        "slow_queries",
    ] {
        let shown = rows(&admin, &format!("SHOW {name}")).await;
        let selected = rows(&admin, &format!("SELECT * FROM shardgate.{name}")).await;
        assert_eq!(
            shown.first().map(|r| {
                let mut k: Vec<_> = r.keys().cloned().collect();
                k.sort();
                k
            }),
            selected.first().map(|r| {
                let mut k: Vec<_> = r.keys().cloned().collect();
                k.sort();
                k
            }),
            "SHOW {name} is shardgate.{name}"
        );
    }
    assert_eq!(rows(&admin, "SHOW REPLICATION").await.len(), 4);

    // Mistakes get clear errors; others are refused.
    assert_eq!(
        sqlstate_of(&admin, "SELECT * FROM shardgate.nodez").await.0,
        "42P01"
    );
    assert_eq!(
        sqlstate_of(&admin, "SELECT nope FROM shardgate.nodes")
            .await
            .0,
        "42703"
    );
    assert_eq!(sqlstate_of(&admin, "SHOW nodez").await.0, "42704");
    assert_eq!(
        sqlstate_of(&admin, "DELETE FROM shardgate.nodes").await.0,
        "42601"
    );
    assert_eq!(
        sqlstate_of(&admin, "WITH x AS (SELECT 1) DELETE FROM shardgate.nodes")
            .await
            .0,
        "25006"
    );
    let refused = tokio_postgres::connect(
        &proxy.conninfo("app", "secret", "shardgate"),
        tokio_postgres::NoTls,
    )
    .await;
    let e = refused.err().expect("a non-admin user is refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("42501"), "{e}");
    assert_eq!(
        one(&admin, "SELECT count(*) FROM shardgate.nodes").await,
        "4",
        "still serving"
    );

    // Drivers: psycopg 3 and node-postgres, typed and parameterised.
    let conninfo = proxy.conninfo("ops", "ops", "shardgate");
    let out = run_client_script("admin_queries.py", vec![conninfo, "1".into()]).await;
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("psycopg JSON");
    let expected_nodes = serde_json::json!([
        [c.shard(1).primary.addr(), 1, "primary", 0, false, 0],
        [c.shard(1).replicas[0].addr(), 1, "replica", 0, true, 0],
    ]);
    assert_eq!(v["nodes"], expected_nodes, "{v}");
    assert_eq!(v["binary"], expected_nodes, "{v}");
    let types = serde_json::json!([
        ["str", "int", "str", "int", "bool", "int"],
        ["str", "int", "str", "int", "bool", "int"]
    ]);
    assert_eq!(v["types"], types);
    assert_eq!(v["binary_types"], types);
    assert_eq!(v["prepared"], 1);
    for (i, r) in v["join"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            (r[0].as_i64(), r[1].as_i64()),
            (Some(i as i64), Some(0)),
            "{v}"
        );
        assert!(r[2].as_i64().unwrap() >= 1);
    }
    assert!(v["in_tx"].as_str().unwrap().starts_with("shardgate"));
    let node_dir = format!("{}/../../tests/clients/node", env!("CARGO_MANIFEST_DIR"));
    let out = run(
        Command::new("node").current_dir(&node_dir).args([
            "admin_queries.js",
            "127.0.0.1",
            &port.to_string(),
            "ops",
            "ops",
            "1",
        ]),
        Duration::from_secs(120),
    );
    assert_success(&out, "node admin_queries.js");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("node JSON");
    assert_eq!(v["oids"], serde_json::json!([25, 23, 25, 20, 16]), "{v}");
    assert_eq!(v["nodes"][0]["node"], c.shard(1).primary.addr());
    assert_eq!(v["nodes"][0]["shard"], 1);
    assert_eq!(v["nodes"][1]["in_recovery"], true);
    assert_eq!(
        v["prepared"], "1",
        "count(*) is int8, a string in node-postgres"
    );
    assert_eq!(v["missing"], "42P01");
}

async fn port_of(client: &tokio_postgres::Client) -> u16 {
    let r = client
        .simple_query("SELECT inet_server_port()")
        .await
        .unwrap();
    r.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .unwrap()
}

/// BAN / UNBAN, DRAIN, KILL CLIENT, PAUSE / RESUME, SET, RELOAD (good,
/// invalid, refused, restart-only, user removed), SIGHUP and SHUTDOWN, each
/// checked in what clients and the admin tables see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_change_the_running_proxy() {
    let c = cluster(ClusterSpec::new(1, 2));
    let port = free_port();
    let users = format!("{OPS}\n[[users]]\nname = \"temp\"\npassword = \"temp\"\nserver_user = \"app\"\nserver_password = \"secret\"\n\n[routing]\ndefault_consistency = \"eventual\"\n");
    let text = config(&c, port, "pool_size = 5", &users);
    let mut proxy = Proxy::start(c.dir(), port, &text);
    let admin = ops(&proxy).await;
    let app = connect(&proxy.app()).await;
    app.batch_execute("CREATE TABLE t (id int)").await.unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    let (r1, r2) = (&c.shard(0).replicas[0], &c.shard(0).replicas[1]);
    let state = |addr: String| {
        let admin = &admin;
        async move {
            get(
                &rows(
                    admin,
                    &format!("SELECT state FROM shardgate.nodes WHERE node = '{addr}'"),
                )
                .await[0],
                "state",
            )
            .to_owned()
        }
    };
    until(Duration::from_secs(10), "replicas up", || async {
        state(r1.addr()).await == "up" && state(r2.addr()).await == "up"
    })
    .await;

    // BAN: no reads go there; UNBAN: they do again.
    admin
        .simple_query(&format!("BAN '{}' FOR '60s'", r1.addr()))
        .await
        .unwrap();
    assert_eq!(state(r1.addr()).await, "banned");
    assert!(get(
        &rows(
            &admin,
            &format!(
                "SELECT last_error FROM shardgate.nodes WHERE node = '{}'",
                r1.addr()
            )
        )
        .await[0],
        "last_error"
    )
    .contains("operator"));
    for _ in 0..20 {
        assert_eq!(
            port_of(&app).await,
            r2.port(),
            "reads avoid the banned replica"
        );
    }
    admin
        .simple_query(&format!("UNBAN '{}'", r1.addr()))
        .await
        .unwrap();
    assert_eq!(state(r1.addr()).await, "up");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        seen.insert(port_of(&app).await);
    }
    assert!(
        seen.contains(&r1.port()),
        "reads reach the unbanned replica: {seen:?}"
    );

    // DRAIN: no new work; once idle its pools close; UNBAN takes it back.
    admin
        .simple_query(&format!("DRAIN '{}'", r2.addr()))
        .await
        .unwrap();
    assert_eq!(state(r2.addr()).await, "draining");
    for _ in 0..20 {
        assert_ne!(
            port_of(&app).await,
            r2.port(),
            "reads avoid the draining replica"
        );
    }
    until(
        Duration::from_secs(10),
        "the drained node's pools closed",
        || async {
            rows(
                &admin,
                &format!("SELECT 1 FROM shardgate.pools WHERE node = '{}'", r2.addr()),
            )
            .await
            .is_empty()
        },
    )
    .await;
    let (code, msg) = sqlstate_of(&admin, &format!("DRAIN '{}'", c.shard(0).primary.addr())).await;
    assert_eq!(code, "55000", "{msg}");
    assert_eq!(sqlstate_of(&admin, "BAN '127.0.0.1:1'").await.0, "42704");
    assert_eq!(sqlstate_of(&admin, "BAN 'nowhere'").await.0, "22023");
    admin
        .simple_query(&format!("UNBAN '{}'", r2.addr()))
        .await
        .unwrap();
    assert_eq!(state(r2.addr()).await, "up");

    // KILL CLIENT: the client's open transaction is rolled back.
    let victim = connect(&format!("{} application_name=victim", proxy.app())).await;
    victim
        .batch_execute("BEGIN; INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    let id = one(
        &admin,
        "SELECT id FROM shardgate.clients WHERE application_name = 'victim'",
    )
    .await;
    admin
        .simple_query(&format!("KILL CLIENT {id}"))
        .await
        .unwrap();
    let e = victim.simple_query("COMMIT").await.expect_err("killed");
    assert!(
        e.as_db_error().is_some_and(|d| d.code().code() == "57P01") || victim.is_closed(),
        "{e:?}"
    );
    assert_eq!(
        c.shard(0)
            .primary
            .psql("app", "SELECT count(*) FROM t")
            .unwrap()
            .trim(),
        "0"
    );
    assert_eq!(sqlstate_of(&admin, "KILL CLIENT 999999").await.0, "42704");
    until(Duration::from_secs(5), "the killed client gone", || async {
        rows(
            &admin,
            "SELECT 1 FROM shardgate.clients WHERE application_name = 'victim'",
        )
        .await
        .is_empty()
    })
    .await;

    // PAUSE waits for running transactions; new ones wait for RESUME.
    let running = connect(&proxy.app()).await;
    running
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let pause_client = ops(&proxy).await;
    let pause = tokio::spawn(async move { pause_client.simple_query("PAUSE").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returns only once the running transaction ended"
    );
    running.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returned")
        .unwrap()
        .unwrap();
    assert_eq!(
        one(&admin, "SELECT paused FROM shardgate.shards").await,
        "t"
    );
    let waiting = tokio::spawn({
        let app = connect(&proxy.app()).await;
        async move { app.batch_execute("INSERT INTO t VALUES (2)").await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a new transaction waits while paused"
    );
    assert_eq!(
        one(
            &admin,
            "SELECT count(*) FROM shardgate.clients WHERE state = 'waiting'"
        )
        .await,
        "1"
    );
    admin.simple_query("RESUME").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("resumed")
        .unwrap()
        .unwrap();
    assert_eq!(
        c.shard(0)
            .primary
            .psql("app", "SELECT count(*) FROM t")
            .unwrap()
            .trim(),
        "2"
    );
    assert_eq!(sqlstate_of(&admin, "PAUSE SHARD 3").await.0, "22023");

    // SET: reloadable settings only, validated, shown with source SET.
    admin.simple_query("SET pool_size = 3").await.unwrap();
    let cfg = |key: &'static str| {
        let admin = &admin;
        async move {
            let r = rows(
                admin,
                &format!("SELECT value, source FROM shardgate.config WHERE key = '{key}'"),
            )
            .await;
            (
                get(&r[0], "value").to_owned(),
                get(&r[0], "source").to_owned(),
            )
        }
    };
    assert_eq!(cfg("proxy.pool_size").await, ("3".into(), "SET".into()));
    app.simple_query("SELECT 1").await.unwrap();
    assert!(rows(&admin, "SELECT pool_size FROM shardgate.pools")
        .await
        .iter()
        .all(|r| get(r, "pool_size") == "3"));
    assert_eq!(sqlstate_of(&admin, "SET pool_size = 0").await.0, "22023");
    assert_eq!(
        sqlstate_of(&admin, "SET pool_size = 'lots'").await.0,
        "22023"
    );
    assert_eq!(
        sqlstate_of(&admin, "SET listen = '127.0.0.1:1'").await.0,
        "55P02"
    );
    assert_eq!(
        sqlstate_of(&admin, "SET no_such_setting = 1").await.0,
        "42704"
    );
    assert_eq!(
        cfg("proxy.pool_size").await.0,
        "3",
        "failed SETs change nothing"
    );

    // RELOAD of a good file: applied, SET values dropped.
    let text2 = text.replace("pool_size = 5", "pool_size = 9\npool_timeout = \"3s\"");
    write_config(&proxy, &text2);
    let msgs = admin.simple_query("RELOAD").await.unwrap();
    assert!(matches!(
        msgs.last(),
        Some(SimpleQueryMessage::CommandComplete(_))
    ));
    assert_eq!(cfg("proxy.pool_size").await, ("9".into(), "file".into()));
    assert_eq!(
        cfg("proxy.pool_timeout").await,
        ("3s".into(), "file".into())
    );

    // An invalid file: the error names the key and its line; nothing changes.
    let bad = text2.replace("pool_size = 9", "pool_size = \"many\"");
    let line = bad.lines().position(|l| l.contains("\"many\"")).unwrap() + 1;
    write_config(&proxy, &bad);
    let (code, msg) = sqlstate_of(&admin, "RELOAD").await;
    assert_eq!(code, "F0000", "{msg}");
    assert!(
        msg.contains("pool_size") && msg.contains(&format!(":{line}:")),
        "{msg}"
    );
    assert_eq!(cfg("proxy.pool_size").await.0, "9");

    // Changes that would move data are refused, naming what.
    let more = format!("{text2}\n[[shards]]\nprimary = \"127.0.0.1:1\"\n");
    write_config(&proxy, &more);
    let (code, msg) = sqlstate_of(&admin, "RELOAD").await;
    assert_eq!(code, "0A000");
    assert!(
        msg.contains("number of [[shards]] changes from 1 to 2"),
        "{msg}"
    );

    // A restart-only setting: reported, the running value stays.
    let other_port = free_port();
    write_config(
        &proxy,
        &text2.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{other_port}"),
        ),
    );
    let out = psql_ok(&proxy.conninfo("ops", "ops", "shardgate"), "RELOAD");
    assert!(out.is_empty() || out.contains("RELOAD"), "{out}");
    let log = proxy.log_text();
    assert!(log.contains("proxy.listen changed to"), "{log}");
    assert_eq!(cfg("proxy.listen").await.0, format!("127.0.0.1:{port}"));

    // Removing a user: its idle session ends, new logins fail.
    let temp = connect(&proxy.conninfo("temp", "temp", "app")).await;
    temp.simple_query("SELECT 1").await.unwrap();
    let without = text2.replace(
        "name = \"temp\"\npassword = \"temp\"",
        "name = \"temp2\"\npassword = \"temp\"",
    );
    write_config(&proxy, &without);
    admin.simple_query("RELOAD").await.unwrap();
    until(
        Duration::from_secs(5),
        "the removed user's session ended",
        || async { temp.simple_query("SELECT 1").await.is_err() },
    )
    .await;
    assert!(tokio_postgres::connect(
        &proxy.conninfo("temp", "temp", "app"),
        tokio_postgres::NoTls
    )
    .await
    .is_err());

    // A password change: new logins need the new one; open sessions stay.
    let kept = connect(&proxy.app()).await;
    let changed = without.replace(
        "name = \"app\"\npassword = \"secret\"",
        "name = \"app\"\npassword = \"secret2\"\nserver_password = \"secret\"",
    );
    assert_ne!(changed, without);
    write_config(&proxy, &changed);
    admin.simple_query("RELOAD").await.unwrap();
    let old = tokio_postgres::connect(&proxy.app(), tokio_postgres::NoTls).await;
    assert_eq!(
        sqlstate(&old.err().expect("old password refused")).as_deref(),
        Some("28P01")
    );
    let new = connect(&proxy.conninfo("app", "secret2", "app")).await;
    new.simple_query("SELECT 1").await.unwrap();
    kept.simple_query("SELECT 1")
        .await
        .expect("an open session is not dropped");

    // SIGHUP reads the file too.
    write_config(&proxy, &without.replace("pool_size = 9", "pool_size = 11"));
    send_signal(proxy.pid(), "-HUP");
    until(Duration::from_secs(10), "SIGHUP applied", || async {
        cfg("proxy.pool_size").await.0 == "11"
    })
    .await;

    // SHUTDOWN stops the proxy.
    admin.simple_query("SHUTDOWN").await.unwrap();
    let status = proxy
        .wait_exit(Duration::from_secs(40))
        .expect("exited after SHUTDOWN");
    assert!(status.success(), "{status:?}");
}

/// One reload of the pgbench test: pool size, max_lag_ms, default
/// consistency, and the replicas listed for shard 0 and shard 1.
type Step = (usize, u64, &'static str, &'static [usize], &'static [usize]);

/// 10 RELOADs changing pool sizes and routing settings, a replica added
/// and another drained and removed, and a PAUSE/RESUME of one shard, all
/// while pgbench runs TPC-B over two shards with 16 clients: no
/// transaction fails, the money adds up, and the admin tables show the
/// changes.
#[test]
fn reloads_under_pgbench_lose_nothing() {
    let c = cluster(ClusterSpec::new(2, 2));
    let port = free_port();
    let log = c.dir().join("shardgate-2pc.log");
    let tables = pgbench_sharded_tables!();
    // Shard 0 starts with its first replica only; shard 1 with both.
    let shards = |s0: &[usize], s1: &[usize]| {
        let list = |shard: usize, idx: &[usize]| {
            idx.iter()
                .map(|&i| format!("{:?}", c.shard(shard).replicas[i].addr()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "\n[[shards]]\nprimary = {:?}\nreplicas = [{}]\n\n[[shards]]\nprimary = {:?}\nreplicas = [{}]\n",
            c.shard(0).primary.addr(),
            list(0, s0),
            c.shard(1).primary.addr(),
            list(1, s1)
        )
    };
    let make = |pool: usize, lag: u64, consistency: &str, s0: &[usize], s1: &[usize]| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_size = {pool}\ntwo_phase_commit = true\ntwo_phase_log = {:?}\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n{OPS}\n[routing]\ndefault_consistency = \"{consistency}\"\nmax_lag_ms = {lag}\n{tables}{}",
            log.display().to_string(),
            shards(s0, s1)
        )
    };
    let first = make(20, 1000, "eventual", &[0], &[0, 1]);
    let proxy = Proxy::start(c.dir(), port, &first);
    let ci = proxy.app();
    let init = run(pgbench(&ci).args(["-i", "-s", "2", "-q"]).command(), LONG);
    assert_success(&init, "pgbench -i through the proxy");
    let admin = proxy.conninfo("ops", "ops", "shardgate");
    let bench = std::thread::spawn({
        let ci = ci.clone();
        move || {
            run(
                pgbench(&ci)
                    .args(["-M", "prepared", "-c", "16", "-j", "2", "-T", "30", "-n"])
                    .command(),
                LONG,
            )
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let plan: [Step; 10] = [
        (10, 500, "eventual", &[0], &[0, 1]),
        (20, 1000, "strong", &[0], &[0, 1]),
        (12, 800, "bounded", &[0, 1], &[0, 1]), // shard 0's second replica added
        (16, 600, "eventual", &[0, 1], &[0, 1]),
        (8, 1000, "session", &[0, 1], &[1]), // shard 1's first replica removed
        (20, 900, "eventual", &[0, 1], &[1]),
        (10, 1000, "strong", &[0, 1], &[1]),
        (18, 700, "bounded", &[0, 1], &[1]),
        (14, 1000, "eventual", &[0, 1], &[1]),
        (15, 750, "bounded", &[0, 1], &[1]),
    ];
    for (i, (pool, lag, consistency, s0, s1)) in plan.iter().enumerate() {
        write_config(&proxy, &make(*pool, *lag, consistency, s0, s1));
        let out = psql_ok(&admin, "RELOAD");
        assert!(!out.contains("ERROR"), "RELOAD {i}: {out}");
        if i == 5 {
            psql_ok(&admin, "PAUSE SHARD 1");
            assert_eq!(
                psql_ok(
                    &admin,
                    "SELECT paused FROM shardgate.shards WHERE shard = 1"
                ),
                "t"
            );
            std::thread::sleep(Duration::from_millis(500));
            psql_ok(&admin, "RESUME SHARD 1");
        }
        std::thread::sleep(Duration::from_millis(1500));
    }
    let out = bench.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_success(&out, "pgbench TPC-B");
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "pgbench:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        proxy.log_tail()
    );
    // The last plan is in force.
    assert_eq!(
        psql_ok(
            &admin,
            "SELECT value FROM shardgate.config WHERE key = 'proxy.pool_size'"
        ),
        "15"
    );
    assert_eq!(
        psql_ok(
            &admin,
            "SELECT value FROM shardgate.config WHERE key = 'routing.max_lag_ms'"
        ),
        "750"
    );
    assert_eq!(
        psql_ok(
            &admin,
            "SELECT value FROM shardgate.config WHERE key = 'routing.default_consistency'"
        ),
        "bounded"
    );
    assert_eq!(
        psql_ok(
            &admin,
            "SELECT count(*) FROM shardgate.pools WHERE pool_size <> 15"
        ),
        "0"
    );
    // Shard 0's added replica serves; shard 1's removed one is gone.
    assert!(eventually(Duration::from_secs(10), || psql_ok(
        &admin,
        &format!(
            "SELECT state FROM shardgate.nodes WHERE node = '{}'",
            c.shard(0).replicas[1].addr()
        )
    ) == "up"));
    assert!(eventually(Duration::from_secs(10), || psql_ok(
        &admin,
        &format!(
            "SELECT count(*) FROM shardgate.nodes WHERE node = '{}'",
            c.shard(1).replicas[0].addr()
        )
    ) == "0"));
    assert_eq!(
        psql_ok(
            &admin,
            "SELECT count(*) FROM shardgate.nodes WHERE state = 'up'"
        ),
        "5"
    );
    // Nothing lost or duplicated.
    let sum = |sql: &str| -> i64 {
        c.shards()
            .iter()
            .map(|s| {
                s.primary
                    .psql("app", sql)
                    .unwrap()
                    .trim()
                    .parse::<i64>()
                    .unwrap()
            })
            .sum()
    };
    let a = sum("SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts");
    let h = sum("SELECT coalesce(sum(delta), 0) FROM pgbench_history");
    let b = sum("SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches");
    let t = sum("SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers");
    println!("sum(abalance) = {a}, sum(delta) = {h}, sum(bbalance) = {b}, sum(tbalance) = {t}");
    assert!(h != 0, "TPC-B did not run");
    assert_eq!((a, b, t), (h, h, h));
    assert_eq!(sum("SELECT count(*) FROM pg_prepared_xacts"), 0);
    let _keep: &Cluster = &c;
}

/// `/metrics` parses with Prometheus's reference parser; counters grow
/// with traffic; histograms have buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_grow() {
    let c = cluster(ClusterSpec::new(1, 1));
    let port = free_port();
    let mport = free_port();
    let proxy = Proxy::start(
        c.dir(),
        port,
        &config(
            &c,
            port,
            &format!("metrics_listen = \"127.0.0.1:{mport}\""),
            OPS,
        ),
    );
    let app = connect(&proxy.app()).await;
    let scrape = || -> serde_json::Value {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).expect("metrics port");
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        let script = format!(
            "{}/../../tests/clients/parse_metrics.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = run_with_stdin(Command::new("python3").arg(script), body.as_bytes());
        assert_success(&out, "prometheus_client parser");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let total = |m: &serde_json::Value, family: &str, sample: &str| -> f64 {
        m[family]["samples"]
            .as_array()
            .unwrap_or_else(|| panic!("no family {family}"))
            .iter()
            .filter(|s| s[0] == sample)
            .map(|s| s[2].as_f64().unwrap_or(0.0))
            .sum()
    };
    app.simple_query("SELECT 1").await.unwrap();
    let before = scrape();
    for family in [
        "shardgate_pool_client_active_connections",
        "shardgate_pool_client_waiting_connections",
        "shardgate_pool_server_idle_connections",
        "shardgate_pool_transactions",
        "shardgate_pool_queries",
        "shardgate_node_up",
        "shardgate_node_replication_lag_bytes",
        "shardgate_node_replication_lag_milliseconds",
        "shardgate_node_bans",
        "shardgate_shard_failovers",
        "shardgate_errors",
        "shardgate_statement_duration_seconds",
        "shardgate_shard_statement_duration_seconds",
        "shardgate_fanout_statements",
        "shardgate_two_phase_commits",
        "shardgate_two_phase_recovered",
        "shardgate_job_progress_ratio",
        "shardgate_clients",
    ] {
        assert!(before.get(family).is_some(), "{family} missing");
    }
    for _ in 0..50 {
        app.simple_query("SELECT 1").await.unwrap();
    }
    let _ = app.simple_query("SELECT 1/0").await;
    let after = scrape();
    let grew = |family: &str, sample: &str| {
        let (b, a) = (
            total(&before, family, sample),
            total(&after, family, sample),
        );
        assert!(a >= b + 50.0, "{family}: {b} -> {a}");
    };
    grew(
        "shardgate_pool_transactions",
        "shardgate_pool_transactions_total",
    );
    grew("shardgate_pool_queries", "shardgate_pool_queries_total");
    grew(
        "shardgate_statement_duration_seconds",
        "shardgate_statement_duration_seconds_count",
    );
    let buckets: Vec<&serde_json::Value> = after["shardgate_statement_duration_seconds"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s[0] == "shardgate_statement_duration_seconds_bucket" && s[1]["route"] == "primary"
        })
        .collect();
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(buckets.iter().any(|s| s[1]["le"] == "+Inf"));
    let errors = after["shardgate_errors"]["samples"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|s| s[1]["class"] == "22" && s[1]["source"] == "server"),
        "division by zero counted: {errors:?}"
    );
    let up: Vec<_> = after["shardgate_node_up"]["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[2].as_f64().unwrap())
        .collect();
    assert_eq!(up, [1.0, 1.0]);
    // Not found and wrong method.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}
