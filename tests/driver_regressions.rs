//! Regression tests for what real drivers found (issue 15): each replays the
//! exact message sequence a driver sends, through shardgate in front of two
//! shards (a primary and a replica each, eventual reads, like the demo),
//! and checks both the answer and the data on the primaries.

mod support;

use shardgate_harness::{Cluster, ClusterSpec};
use support::*;
use tokio_postgres::SimpleQueryMessage;

/// Eventual reads and the shard map (with [`RAW_USER`]).
const EXTRA: &str = r#"
[routing]
default_consistency = "eventual"

[sharding]
default_shard = 0

[[sharded_tables]]
table = "accounts"
column = "id"
function = "hash"
key_type = "bigint"

[[reference_tables]]
table = "currencies"
"#;

const SCHEMA: &str = "
CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(14, 2) NOT NULL DEFAULT 0);
INSERT INTO currencies VALUES ('USD', 'US dollar'), ('EUR', 'Euro');
";

/// Eventual reads, for a cluster of one shard (with [`RAW_USER`]).
const ONE_SHARD: &str = r#"
[routing]
default_consistency = "eventual"
"#;

/// A cluster, the proxy in front of it, the schema. (The proxy is dropped
/// first: on a failure it prints its log, which lives in the cluster's
/// directory.)
struct Env {
    proxy: Proxy,
    c: Cluster,
}

impl Env {
    /// Two shards of a primary and a replica each.
    fn sharded() -> Env {
        Env::start(ClusterSpec::new(2, 1), "", EXTRA)
    }

    /// One primary and a replica.
    fn replicas() -> Env {
        Env::start(ClusterSpec::new(1, 1), "", ONE_SHARD)
    }

    fn start(spec: ClusterSpec, proxy_extra: &str, extra: &str) -> Env {
        let c = cluster(spec);
        let port = free_port();
        let text = config(&c, port, proxy_extra, &format!("{RAW_USER}{extra}"));
        let proxy = Proxy::start(c.dir(), port, &text);
        let out = run(
            psql(&proxy.app()).arg("-q").arg("-c").arg(SCHEMA),
            std::time::Duration::from_secs(120),
        );
        assert_success(&out, "schema");
        c.wait_replicas_caught_up(std::time::Duration::from_secs(60))
            .expect("replicas catch up");
        Env { proxy, c }
    }

    fn raw(&self) -> Raw {
        Raw::connect(self.proxy.port, "raw", "app")
    }

    /// The rows `sql` returns on every primary, concatenated.
    fn on_primaries(&self, sql: &str) -> Vec<String> {
        self.c
            .shards()
            .iter()
            .flat_map(|s| {
                s.primary
                    .psql("app", sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Defect 1: pgjdbc with `setAutoCommit(false)` sends BEGIN through the
/// extended protocol in the same batch as the transaction's first
/// statement, both on the unnamed portal. The first statement was answered
/// with a second `BEGIN` and never ran.
#[test]
fn jdbc_begin_batched_with_the_first_statement_runs_it() {
    let env = Env::sharded();
    let mut raw = env.raw();
    raw_ok(
        &mut raw,
        "INSERT INTO accounts (id, owner) VALUES (42, 'a'), (43, 'b'), (44, 'c')",
    );
    let update = "UPDATE accounts SET owner = $1 WHERE id = $2";
    for (i, (owner, id)) in [("First", "42"), ("Second", "43")].iter().enumerate() {
        let mut batch = Vec::new();
        if i == 0 {
            batch.extend(parse_msg("", "BEGIN"));
            batch.extend(bind_msg("", "", &[]));
            batch.extend(execute_msg("", 0));
        }
        batch.extend(parse_msg("", update));
        batch.extend(bind_msg("", "", &[owner, id]));
        batch.extend(describe_portal_msg(""));
        batch.extend(execute_msg("", 1));
        batch.extend(sync_msg());
        raw.send(&batch);
        let msgs = raw.until_ready();
        assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
        let expected: &[&str] = if i == 0 {
            &["BEGIN", "UPDATE 1"]
        } else {
            &["UPDATE 1"]
        };
        assert_eq!(command_tags(&msgs), expected, "statement {i}");
        assert!(
            !msgs.iter().any(|(t, _)| *t == b'N'),
            "no 'already a transaction in progress' notice"
        );
        assert_eq!(status(&msgs), b'T');
    }
    // A third key written by a named statement, as pgjdbc does past prepareThreshold.
    let mut batch = parse_msg("S_1", update);
    batch.extend(bind_msg("", "S_1", &["Third", "44"]));
    batch.extend(execute_msg("", 1));
    batch.extend(parse_msg("", "COMMIT"));
    batch.extend(bind_msg("", "", &[]));
    batch.extend(execute_msg("", 0));
    batch.extend(sync_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["UPDATE 1", "COMMIT"]);
    assert_eq!(status(&msgs), b'I');
    let mut rows = env.on_primaries("SELECT id || '=' || owner FROM accounts");
    rows.sort();
    assert_eq!(rows, ["42=First", "43=Second", "44=Third"]);
}

/// Defect 2: pgjdbc with `setFetchSize` inside a transaction reads a
/// portal with a row-limited Execute, then closes the portal and commits in
/// one batch: Close(portal), Parse/Bind/Execute `COMMIT`, Sync. That batch
/// was never answered and the server's transaction stayed open.
#[test]
fn jdbc_close_portal_then_commit_after_a_fetch() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let rows: Vec<String> = (1..=30).map(|i| format!("({i}, 'o{i}')")).collect();
    raw_ok(
        &mut raw,
        &format!(
            "INSERT INTO accounts (id, owner) VALUES {}",
            rows.join(", ")
        ),
    );
    let mut batch = parse_msg("", "BEGIN");
    batch.extend(bind_msg("", "", &[]));
    batch.extend(execute_msg("", 0));
    batch.extend(parse_msg(
        "",
        "UPDATE accounts SET owner = 'x' WHERE id = $1",
    ));
    batch.extend(bind_msg("", "", &["7"]));
    batch.extend(execute_msg("", 0));
    batch.extend(parse_msg(
        "S_2",
        "SELECT id, owner FROM accounts WHERE id = $1",
    ));
    batch.extend(bind_msg("C_3", "S_2", &["7"]));
    batch.extend(describe_portal_msg("C_3"));
    batch.extend(execute_msg("C_3", 1));
    batch.extend(sync_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(first_column(&msgs), ["7"]);
    assert_eq!(status(&msgs), b'T');
    let mut batch = close_msg(b'P', "C_3");
    batch.extend(parse_msg("", "COMMIT"));
    batch.extend(bind_msg("", "", &[]));
    batch.extend(execute_msg("", 0));
    batch.extend(sync_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(tags(&msgs), "312CZ");
    assert_eq!(command_tags(&msgs), ["COMMIT"]);
    assert_eq!(status(&msgs), b'I');
    assert_eq!(
        env.on_primaries("SELECT owner FROM accounts WHERE id = 7"),
        ["x"]
    );
    assert_eq!(
        env.on_primaries(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%'"
        ),
        ["0", "0"]
    );
}

/// Parse, Bind, Describe and Execute of one unnamed statement with text
/// parameters (what psycopg and libpq send for a statement in a pipeline).
fn statement(sql: &str, params: &[&str]) -> Vec<u8> {
    let mut m = parse_msg("", sql);
    m.extend(bind_msg("", "", params));
    m.extend(describe_portal_msg(""));
    m.extend(execute_msg("", 0));
    m
}

/// Defect 3: psycopg ends `executemany` and a `with conn.pipeline()` block
/// with Sync *and then Flush*. The Flush kept the proxy thinking a batch
/// was open, so the next `with conn.transaction()` ran where it should not
/// (its INSERT committed although the block rolled back, or it went to a
/// replica and failed with 25006). Pipelines whose read and write arrive in
/// separate reads, or with a Flush between them, must run the write on the
/// primary too.
fn flush_after_sync_and_pipelines(env: &Env) {
    let mut raw = env.raw();
    let insert = "INSERT INTO accounts (id, owner) VALUES ($1, $2)";
    let mut batch = parse_msg("_pg3_0", insert);
    batch.extend(bind_msg("", "_pg3_0", &["1", "many"]));
    batch.extend(describe_portal_msg(""));
    batch.extend(execute_msg("", 0));
    batch.extend(sync_msg());
    batch.extend(flush_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["INSERT 0 1"]);
    for _ in 0..2 {
        assert_eq!(status(&raw_ok(&mut raw, "BEGIN")), b'T');
        let msgs = raw_ok(
            &mut raw,
            "INSERT INTO accounts (id, owner) VALUES (10, 'rolled back')",
        );
        assert_eq!(
            status(&msgs),
            b'T',
            "the INSERT runs inside the transaction"
        );
        assert_eq!(status(&raw_ok(&mut raw, "ROLLBACK")), b'I');
        // And once more after a pipeline ending in Sync and Flush.
        let mut pipeline = statement("SELECT 1", &[]);
        pipeline.extend(statement(insert, &["2", "pipelined"]));
        pipeline.extend(sync_msg());
        pipeline.extend(flush_msg());
        raw.send(&pipeline);
        let msgs = raw.until_ready();
        let fine = errors(&msgs).is_empty() || errors(&msgs) == ["23505"];
        assert!(fine, "{:?}", errors(&msgs));
    }
    // A read and a write of one pipeline in separate TCP reads.
    raw.send(&statement("SELECT 1", &[]));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut rest = statement(insert, &["3", "split"]);
    rest.extend(sync_msg());
    raw.send(&rest);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["SELECT 1", "INSERT 0 1"]);
    // The same with a Flush after the read, whose answer is read first.
    let mut first = statement("SELECT 1", &[]);
    first.extend(flush_msg());
    raw.send(&first);
    let msgs = raw.until(b'C');
    assert_eq!(command_tags(&msgs), ["SELECT 1"]);
    let mut rest = statement(insert, &["4", "after flush"]);
    rest.extend(sync_msg());
    raw.send(&rest);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["INSERT 0 1"]);
    assert_eq!(status(&msgs), b'I');
    let mut rows = env.on_primaries("SELECT id || '=' || owner FROM accounts");
    rows.sort();
    assert_eq!(rows, ["1=many", "2=pipelined", "3=split", "4=after flush"]);
}

#[test]
fn psycopg_flush_after_sync_with_replicas() {
    flush_after_sync_and_pipelines(&Env::replicas());
}

#[test]
fn psycopg_flush_after_sync_sharded() {
    flush_after_sync_and_pipelines(&Env::sharded());
}

/// Defect 5: `pg_terminate_backend` of one pooled server connection, idle
/// or busy, made every write on the shard fail with "the primary ... is
/// unavailable" for `ban_ms`. One connection's end is not the node's: the
/// dead idle connection is not handed out again, and the node keeps
/// serving everyone.
#[test]
fn a_terminated_backend_is_replaced_and_bans_nothing() {
    let env = Env::start(ClusterSpec::new(1, 0), "", ONE_SHARD);
    let primary = &env.c.shard(0).primary;
    let mut raw = env.raw();
    let pid = first_column(&raw_ok(&mut raw, "SELECT pg_backend_pid()"))[0].clone();
    primary
        .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    for i in 0..5 {
        let msgs = raw.query(&format!(
            "INSERT INTO accounts (id, owner) VALUES ({i}, 'after idle termination')"
        ));
        assert!(
            errors(&msgs).is_empty(),
            "statement {i}: {:?}",
            errors(&msgs)
        );
    }
    // A backend terminated while it runs the client's statement: that
    // statement fails, the next ones (and everyone else's) do not.
    let pid = first_column(&raw_ok(&mut raw, "SELECT pg_backend_pid()"))[0].clone();
    raw.send(&query_msg("SELECT pg_sleep(5)"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    primary
        .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let msgs = raw.until_ready();
    assert_eq!(errors(&msgs).len(), 1, "the running statement fails");
    let mut other = env.raw();
    for i in 5..10 {
        for r in [&mut raw, &mut other] {
            let msgs = r.query(&format!(
                "INSERT INTO accounts (id, owner) VALUES ({i}, 'after busy termination') ON CONFLICT DO NOTHING"
            ));
            assert!(
                errors(&msgs).is_empty(),
                "statement {i}: {:?}",
                errors(&msgs)
            );
        }
    }
    assert_eq!(env.on_primaries("SELECT count(*) FROM accounts"), ["10"]);
}

/// The first column of the first row of a simple query's answer.
async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    let msgs = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Defect 7: startup parameters reach a pooled server connection as `SET`,
/// so the server's `RESET` went back to the server's defaults instead of
/// the values the client connected with (`PGDATESTYLE`, `PGTZ`, `options`,
/// `application_name`), as Postgres itself does.
async fn reset_returns_to_startup_values(pool_mode: &str) {
    let env = Env::start(
        ClusterSpec::new(1, 0),
        &format!("pool_mode = \"{pool_mode}\"\npool_size = 1"),
        ONE_SHARD,
    );
    let conninfo = format!(
        "{} application_name=startup_app options='-c DateStyle=SQL,DMY -c TimeZone=Asia/Tokyo'",
        env.proxy.app()
    );
    let client = connect(&conninfo).await;
    assert_eq!(value(&client, "SHOW datestyle").await, "SQL, DMY");
    client
        .batch_execute(
            "SET datestyle = 'ISO, MDY'; SET TIME ZONE 'UTC'; SET application_name = 'other'",
        )
        .await
        .unwrap();
    assert_eq!(value(&client, "SHOW datestyle").await, "ISO, MDY");
    client.batch_execute("RESET datestyle").await.unwrap();
    assert_eq!(value(&client, "SHOW datestyle").await, "SQL, DMY");
    client.batch_execute("RESET TIME ZONE").await.unwrap();
    assert_eq!(value(&client, "SHOW timezone").await, "Asia/Tokyo");
    client
        .batch_execute("SET datestyle = 'ISO, MDY'; SET TIME ZONE 'UTC'")
        .await
        .unwrap();
    client.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(value(&client, "SHOW datestyle").await, "SQL, DMY");
    assert_eq!(value(&client, "SHOW timezone").await, "Asia/Tokyo");
    assert_eq!(value(&client, "SHOW application_name").await, "startup_app");
    client
        .batch_execute("SET application_name TO DEFAULT")
        .await
        .unwrap();
    assert_eq!(value(&client, "SHOW application_name").await, "startup_app");
    // A RESET through the extended protocol too.
    client
        .execute("SET datestyle = 'ISO, YMD'", &[])
        .await
        .unwrap();
    client.execute("RESET datestyle", &[]).await.unwrap();
    assert_eq!(value(&client, "SHOW datestyle").await, "SQL, DMY");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_startup_values_transaction_pooling() {
    reset_returns_to_startup_values("transaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_startup_values_session_pooling() {
    reset_returns_to_startup_values("session").await;
}

/// Defect 8: in transaction pooling, a client's `SET ROLE`, `SET SESSION
/// AUTHORIZATION`, `set_config('role', ...)` or SQL `PREPARE` stayed on the
/// server connection and reached the next client of the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_of_a_clients_identity_or_session_reaches_the_next() {
    let env = Env::start(ClusterSpec::new(1, 0), "pool_size = 1", ONE_SHARD);
    env.c
        .shard(0)
        .primary
        .psql("app", "CREATE ROLE intruder; GRANT intruder TO app")
        .unwrap();
    for leak in [
        "SET ROLE intruder",
        "SET SESSION AUTHORIZATION intruder",
        "SELECT set_config('role', 'intruder', false)",
        "SELECT set_config('session_authorization', 'intruder', false)",
        "SET ROLE intruder; RESET ALL",
        "PREPARE leaked AS SELECT 1",
        "DO $$ BEGIN EXECUTE 'SET ROLE intruder'; END $$",
    ] {
        let first = connect(&env.proxy.app()).await;
        first.batch_execute(leak).await.unwrap();
        if leak.starts_with("SET ") && !leak.contains("RESET ALL") {
            // The client itself keeps what it set, transaction after transaction.
            assert_eq!(
                value(&first, "SELECT current_user").await,
                "intruder",
                "{leak}"
            );
        }
        drop(first);
        let next = connect(&env.proxy.app()).await;
        assert_eq!(
            value(&next, "SELECT current_user || ' ' || session_user").await,
            "app app",
            "after {leak}"
        );
        assert_eq!(
            value(
                &next,
                "SELECT count(*) FROM pg_prepared_statements WHERE name = 'leaked'"
            )
            .await,
            "0",
            "after {leak}"
        );
    }
}

impl Env {
    /// Inserts accounts `ids` through the proxy; returns, per shard, the
    /// ids that landed there.
    fn load_accounts(&self, raw: &mut Raw, ids: std::ops::RangeInclusive<i64>) -> Vec<Vec<i64>> {
        let rows: Vec<String> = ids.map(|i| format!("({i}, 'o{i}')")).collect();
        raw_ok(
            raw,
            &format!(
                "INSERT INTO accounts (id, owner) VALUES {}",
                rows.join(", ")
            ),
        );
        self.c
            .shards()
            .iter()
            .map(|s| {
                s.primary
                    .psql("app", "SELECT id FROM accounts ORDER BY id")
                    .unwrap()
                    .lines()
                    .filter_map(|l| l.parse().ok())
                    .collect()
            })
            .collect()
    }
}

/// SQLSTATE of the first error in `msgs`, or "" when there is none.
fn sqlstate_of(msgs: &[Msg]) -> String {
    errors(msgs).into_iter().next().unwrap_or_default()
}

/// A failed statement on one shard fails the whole transaction: statements
/// that go to another shard get 25P02 too (they ran and reported success),
/// until ROLLBACK or ROLLBACK TO SAVEPOINT. Savepoints reach every shard
/// of the transaction, also shards that join after them (`ROLLBACK TO`
/// failed with 3B001, or rolled back nothing on the late shard), in the
/// simple and the extended protocol (pgjdbc's `setSavepoint`).
#[test]
fn transactions_over_shards_fail_and_roll_back_to_savepoints_as_one() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let by_shard = env.load_accounts(&mut raw, 1..=20);
    let (x, y) = (by_shard[0][0], by_shard[1][0]);
    let (x2, y2) = (by_shard[0][1] + 100, by_shard[1][1] + 100);
    // Error on one shard, then a statement for the other.
    raw_ok(&mut raw, "BEGIN");
    raw_ok(
        &mut raw,
        &format!("UPDATE accounts SET owner = 'in tx' WHERE id = {y}"),
    );
    let msgs = raw.query(&format!(
        "INSERT INTO accounts (id, owner) VALUES ({x}, 'dup')"
    ));
    assert_eq!(sqlstate_of(&msgs), "23505");
    assert_eq!(status(&msgs), b'E');
    let msgs = raw.query(&format!(
        "UPDATE accounts SET owner = 'after error' WHERE id = {y}"
    ));
    assert_eq!(
        sqlstate_of(&msgs),
        "25P02",
        "the transaction is aborted on every shard"
    );
    assert_eq!(status(&msgs), b'E');
    raw_ok(&mut raw, "ROLLBACK");
    // Savepoints in the simple protocol: b on a shard that joins after s.
    for (i, extended) in [false, true].into_iter().enumerate() {
        let (a, b, c) = (
            x2 + i as i64 * 1000,
            y2 + i as i64 * 1000,
            x2 + 500 + i as i64 * 1000,
        );
        let run = |raw: &mut Raw, sql: &str| -> Vec<Msg> {
            if extended {
                let mut m = parse_msg("", sql);
                m.extend(bind_msg("", "", &[]));
                m.extend(execute_msg("", 0));
                m.extend(sync_msg());
                raw.send(&m);
                raw.until_ready()
            } else {
                raw.query(sql)
            }
        };
        for sql in [
            "BEGIN".to_owned(),
            format!("INSERT INTO accounts (id, owner) VALUES ({a}, 'a')"),
            "SAVEPOINT s".into(),
            format!("INSERT INTO accounts (id, owner) VALUES ({b}, 'b')"),
            "ROLLBACK TO SAVEPOINT s".into(),
            format!("INSERT INTO accounts (id, owner) VALUES ({c}, 'c')"),
            "SAVEPOINT t".into(),
        ] {
            let msgs = run(&mut raw, &sql);
            assert!(errors(&msgs).is_empty(), "{sql}: {:?}", errors(&msgs));
            assert_eq!(status(&msgs), b'T', "{sql}");
        }
        // An error after a savepoint, undone by ROLLBACK TO.
        let msgs = run(
            &mut raw,
            &format!("INSERT INTO accounts (id, owner) VALUES ({y}, 'dup')"),
        );
        assert_eq!(sqlstate_of(&msgs), "23505");
        let msgs = run(
            &mut raw,
            &format!("INSERT INTO accounts (id, owner) VALUES ({x}, 'dup')"),
        );
        assert_eq!(sqlstate_of(&msgs), "25P02");
        for sql in ["ROLLBACK TO t", "RELEASE SAVEPOINT s", "COMMIT"] {
            let msgs = run(&mut raw, sql);
            assert!(errors(&msgs).is_empty(), "{sql}: {:?}", errors(&msgs));
        }
        let mut rows = env.on_primaries(&format!(
            "SELECT id || '=' || owner FROM accounts WHERE id IN ({a}, {b}, {c})"
        ));
        rows.sort();
        let mut expected = vec![format!("{a}=a"), format!("{c}=c")];
        expected.sort();
        assert_eq!(rows, expected, "extended protocol: {extended}");
    }
}

/// Defect 4: SQL cursors, EXPLAIN, a query whose outer rows do not come
/// from a sharded table, and statements the parser gives up on were sent to
/// every shard and the answers glued together. Each now gives the answer
/// one Postgres would (EXPLAIN: the proxy's plan), or 0A000.
#[test]
fn no_statement_over_several_shards_is_answered_unmerged() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let by_shard = env.load_accounts(&mut raw, 1..=20);
    let one = by_shard[1][0];
    // EXPLAIN of a read over several shards is the proxy's own plan.
    let msgs = raw.query("EXPLAIN SELECT count(*) FROM accounts");
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert!(data_rows(&msgs) > 3, "the proxy's plan lines");
    for sql in [
        "EXPLAIN ANALYZE SELECT count(*) FROM accounts".to_owned(),
        "EXPLAIN UPDATE accounts SET owner = 'x'".into(),
    ] {
        let msgs = raw.query(&sql);
        assert_eq!(sqlstate_of(&msgs), "0A000", "{sql}");
        assert_eq!(data_rows(&msgs), 0);
    }
    // Outer rows that come from no sharded table: the sharded table is
    // gathered, then the statement runs once.
    let msgs = raw_ok(
        &mut raw,
        "SELECT EXISTS (SELECT 1 FROM accounts WHERE id > 3)",
    );
    assert_eq!(first_column(&msgs), vec!["t".to_owned()]);
    let msgs = raw_ok(&mut raw, "SELECT 1 UNION ALL SELECT id FROM accounts");
    assert_eq!(data_rows(&msgs), 21);
    // A scalar subquery over the shards is merged once, then its value
    // stands in its place: one row, the count over every shard.
    let msgs = raw_ok(&mut raw, "SELECT (SELECT count(*) FROM accounts)");
    assert_eq!(first_column(&msgs), vec!["20".to_owned()]);
    // Statements at the parser's limits: the right answer, or 0A000.
    for (sql, answer) in [
        (
            format!(
                "SELECT id FROM accounts WHERE {}id > 0{} ORDER BY id LIMIT 3",
                "(".repeat(250),
                ")".repeat(250)
            ),
            vec!["1", "2", "3"],
        ),
        (
            format!(
                "SELECT count(*) FROM accounts WHERE {}",
                (0..5000)
                    .map(|i| format!("id <> {}", 100_000 + i))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            ),
            vec!["20"],
        ),
    ] {
        let msgs = raw.query(&sql);
        match sqlstate_of(&msgs).as_str() {
            "0A000" => assert_eq!(data_rows(&msgs), 0),
            "" => assert_eq!(first_column(&msgs), answer, "{}", &sql[..80]),
            other => panic!("{other}: {}", &sql[..80]),
        }
    }
    // A cursor over one shard: FETCH and CLOSE follow it there.
    raw_ok(&mut raw, "BEGIN");
    raw_ok(
        &mut raw,
        &format!("DECLARE c CURSOR FOR SELECT owner FROM accounts WHERE id = {one}"),
    );
    let msgs = raw_ok(&mut raw, "FETCH ALL FROM c");
    assert_eq!(first_column(&msgs), [format!("o{one}")]);
    raw_ok(&mut raw, "CLOSE c");
    raw_ok(&mut raw, "COMMIT");
    // EXPLAIN of a one-shard query still works.
    raw_ok(
        &mut raw,
        &format!("EXPLAIN SELECT * FROM accounts WHERE id = {one}"),
    );
}

/// The CopyData payloads of a COPY TO STDOUT answer, concatenated.
fn copy_out_bytes(msgs: &[Msg]) -> Vec<u8> {
    msgs.iter()
        .filter(|(t, _)| *t == b'd')
        .flat_map(|(_, p)| p.iter().copied())
        .collect()
}

/// The rows of a binary COPY stream (first column as i64, like `id`);
/// panics unless there is exactly one header and one trailer, at the ends.
fn binary_copy_ids(stream: &[u8]) -> Vec<i64> {
    assert!(stream.starts_with(b"PGCOPY\n\xff\r\n\0"), "header first");
    let ext = u32::from_be_bytes(stream[15..19].try_into().unwrap()) as usize;
    let mut pos = 19 + ext;
    let mut ids = Vec::new();
    loop {
        let fields = i16::from_be_bytes(stream[pos..pos + 2].try_into().unwrap());
        pos += 2;
        if fields == -1 {
            assert_eq!(pos, stream.len(), "the trailer ends the stream");
            return ids;
        }
        for f in 0..fields {
            let len = i32::from_be_bytes(stream[pos..pos + 4].try_into().unwrap());
            pos += 4;
            if len > 0 {
                if f == 0 {
                    ids.push(i64::from_be_bytes(stream[pos..pos + 8].try_into().unwrap()));
                }
                pos += len as usize;
            }
        }
    }
}

/// Defects 4 and 9: `COPY ... TO STDOUT` of a sharded table sent every
/// shard's whole binary stream (two headers and trailers, psycopg stopped
/// at the first) and a CSV header per shard; `COPY (query) TO` glued the
/// shards' answers together, ignoring ORDER BY and aggregates (now merged
/// as the query itself is, then sent as COPY data); asyncpg's
/// `copy_records_to_table` (Parse/Describe/Flush, then COPY) hung, its
/// COPY split between a replica that refused it and a primary that waited.
#[test]
fn copy_over_several_shards_is_one_stream() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let by_shard = env.load_accounts(&mut raw, 1..=20);
    assert!(by_shard.iter().all(|ids| !ids.is_empty()));
    let msgs = raw_ok(&mut raw, "COPY accounts (id) TO STDOUT (FORMAT binary)");
    // The header comes with the first row in one CopyData, as Postgres
    // sends it: psycopg's read_row reads both from one message.
    let first_data = msgs.iter().find(|(t, _)| *t == b'd').expect("data");
    assert!(first_data.1.len() > 19 + 2, "header alone in a message");
    let mut ids = binary_copy_ids(&copy_out_bytes(&msgs));
    ids.sort();
    assert_eq!(ids, (1..=20).collect::<Vec<i64>>());
    assert_eq!(command_tags(&msgs), ["COPY 20"]);
    let msgs = raw_ok(
        &mut raw,
        "COPY (SELECT id FROM accounts WHERE id > 10) TO STDOUT (FORMAT binary)",
    );
    let mut ids = binary_copy_ids(&copy_out_bytes(&msgs));
    ids.sort();
    assert_eq!(ids, (11..=20).collect::<Vec<i64>>());
    let msgs = raw_ok(
        &mut raw,
        "COPY accounts (id, owner) TO STDOUT (FORMAT csv, HEADER)",
    );
    let text = String::from_utf8(copy_out_bytes(&msgs)).unwrap();
    assert_eq!(
        text.lines().filter(|l| *l == "id,owner").count(),
        1,
        "{text}"
    );
    assert!(text.starts_with("id,owner\n"));
    assert_eq!(text.lines().count(), 21);
    // One shard's rows: that shard alone.
    let one = by_shard[1][0];
    let msgs = raw_ok(
        &mut raw,
        &format!("COPY (SELECT owner FROM accounts WHERE id = {one}) TO STDOUT"),
    );
    assert_eq!(copy_out_bytes(&msgs), format!("o{one}\n").into_bytes());
    // Rows that must be merged are merged, then sent as COPY data.
    let expected: String = (1..=20).map(|i| format!("{i}\to{i}\n")).collect();
    let msgs = raw_ok(
        &mut raw,
        "COPY (SELECT id, owner FROM accounts ORDER BY id) TO STDOUT",
    );
    assert_eq!(String::from_utf8(copy_out_bytes(&msgs)).unwrap(), expected);
    assert_eq!(command_tags(&msgs), ["COPY 20"]);
    let msgs = raw_ok(
        &mut raw,
        "COPY (SELECT count(*), max(id) FROM accounts) TO STDOUT (FORMAT csv)",
    );
    assert_eq!(copy_out_bytes(&msgs), b"20,20\n");
    let msgs = raw_ok(
        &mut raw,
        "COPY (SELECT id FROM accounts ORDER BY id DESC LIMIT 5) TO STDOUT (FORMAT binary)",
    );
    assert_eq!(
        binary_copy_ids(&copy_out_bytes(&msgs)),
        [20, 19, 18, 17, 16]
    );
    let first_data = msgs.iter().find(|(t, _)| *t == b'd').expect("data");
    assert!(first_data.1.len() > 19 + 2, "header alone in a message");
    // asyncpg's copy_records_to_table: a lookup prepared with Flush (which
    // may go to a replica), then the COPY, which must run on the primaries.
    let mut m = parse_msg(
        "__asyncpg_stmt_1__",
        "SELECT id, owner FROM accounts LIMIT 0",
    );
    m.extend(describe_statement_msg("__asyncpg_stmt_1__"));
    m.extend(flush_msg());
    raw.send(&m);
    raw.until(b'T');
    raw.send(&query_msg(
        "COPY accounts (id, owner) FROM STDIN (FORMAT text)",
    ));
    let msgs = raw.until(b'G');
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    let mut data = Vec::new();
    for id in 101..=110 {
        data.extend(frontend_msg(b'd', format!("{id}\tcopied\n").as_bytes()));
    }
    data.extend(frontend_msg(b'c', &[]));
    raw.send(&data);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["COPY 10"]);
    assert_eq!(
        env.on_primaries("SELECT count(*) FROM accounts WHERE owner = 'copied'")
            .iter()
            .map(|n| n.parse::<i64>().unwrap())
            .sum::<i64>(),
        10
    );
}

/// Notifications (`A` messages) that arrive on `raw` within `wait`.
fn notifications_within(raw: &mut Raw, wait: std::time::Duration) -> Vec<(String, String)> {
    raw.s.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if std::io::Read::read_exact(&mut raw.s, &mut head).is_err() {
            break;
        }
        let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        std::io::Read::read_exact(&mut raw.s, &mut body).unwrap();
        assert_eq!(head[0], b'A', "only notifications arrive while idle");
        let fields: Vec<String> = body[4..]
            .split(|b| *b == 0)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        got.push((fields[0].clone(), fields[1].clone()));
    }
    raw.s
        .set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    got
}

/// Defect 6: LISTEN was accepted in transaction pooling and stayed on the
/// pooled server connection: the listener got nothing, and whoever
/// borrowed that connection next got its notifications. Now the proxy
/// listens for the client on a connection of its own and delivers each
/// notification between the client's transactions, in the simple and the
/// extended protocol, and nobody else gets them.
fn listen_and_notify(env: &Env) {
    let mut listener = env.raw();
    raw_ok(&mut listener, "LISTEN jobs");
    // pgjdbc sends LISTEN through the extended protocol.
    let mut m = parse_msg("", "LISTEN \"Mail\"");
    m.extend(bind_msg("", "", &[]));
    m.extend(execute_msg("", 0));
    m.extend(sync_msg());
    listener.send(&m);
    let msgs = listener.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["LISTEN"]);
    let mut sender = env.raw();
    raw_ok(&mut sender, "NOTIFY jobs, 'hello'");
    raw_ok(&mut sender, "SELECT pg_notify('Mail', 'second')");
    raw_ok(&mut sender, "NOTIFY other, 'nobody listens'");
    let got = notifications_within(&mut listener, std::time::Duration::from_secs(3));
    assert_eq!(
        got,
        [
            ("jobs".to_owned(), "hello".to_owned()),
            ("Mail".to_owned(), "second".to_owned())
        ]
    );
    assert!(notifications_within(&mut sender, std::time::Duration::from_millis(300)).is_empty());
    // In a transaction the listener gets them after it ends.
    raw_ok(&mut listener, "BEGIN");
    raw_ok(&mut listener, "SELECT 1");
    raw_ok(&mut sender, "NOTIFY jobs, 'while busy'");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let msgs = raw_ok(&mut listener, "SELECT 2");
    assert!(
        msgs.iter().all(|(t, _)| *t != b'A'),
        "held during the transaction"
    );
    raw_ok(&mut listener, "COMMIT");
    let got = notifications_within(&mut listener, std::time::Duration::from_secs(3));
    assert_eq!(got, [("jobs".to_owned(), "while busy".to_owned())]);
    // UNLISTEN stops them.
    raw_ok(&mut listener, "UNLISTEN jobs");
    raw_ok(&mut sender, "NOTIFY jobs, 'after unlisten'");
    raw_ok(&mut sender, "NOTIFY \"Mail\", 'still'");
    let got = notifications_within(&mut listener, std::time::Duration::from_secs(2));
    assert_eq!(got, [("Mail".to_owned(), "still".to_owned())]);
}

#[test]
fn listen_in_transaction_pooling_single_node() {
    listen_and_notify(&Env::start(
        ClusterSpec::new(1, 0),
        "pool_size = 2",
        ONE_SHARD,
    ));
}

#[test]
fn listen_in_transaction_pooling_sharded() {
    listen_and_notify(&Env::sharded());
}

/// One extended-protocol batch of `count` INSERTs of the prepared
/// statement `name`, each with Describe (as psycopg's executemany sends
/// them), ids from `first`, ended by Sync.
fn insert_batch(name: &str, ids: &[i64], owner: &str) -> Vec<u8> {
    let mut m = Vec::new();
    for id in ids {
        m.extend(bind_msg("", name, &[&id.to_string(), owner]));
        m.extend(describe_portal_msg(""));
        m.extend(execute_msg("", 0));
    }
    m.extend(sync_msg());
    m
}

/// Driver patterns across shards: an extended-protocol batch whose
/// statements go to different shards (pgjdbc `executeBatch`, psycopg and
/// asyncpg `executemany`, libpq pipelines) was refused with 0A000. Now
/// each shard runs its share at once and the client gets the answers in
/// its order; outside a transaction the batch commits on every shard or
/// on none, inside one it is part of the transaction.
#[test]
fn batches_over_several_shards_run_as_one() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let insert = "INSERT INTO accounts (id, owner) VALUES ($1, $2) RETURNING id";
    let mut m = parse_msg("ins", insert);
    m.extend(insert_batch("ins", &(1..=12).collect::<Vec<_>>(), "batch"));
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), vec!["INSERT 0 1"; 12]);
    let returned: Vec<String> = first_column(&msgs);
    assert_eq!(
        returned,
        (1..=12).map(|i| i.to_string()).collect::<Vec<_>>(),
        "answers in the client's order"
    );
    assert_eq!(status(&msgs), b'I');
    let per_shard: Vec<i64> = env
        .on_primaries("SELECT count(*) FROM accounts")
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        per_shard.iter().all(|n| *n > 0) && per_shard.iter().sum::<i64>() == 12,
        "{per_shard:?}"
    );
    // A duplicate in the middle: answers up to it, its error, and nothing
    // of the batch on any shard.
    raw.send(&insert_batch("ins", &[20, 21, 22, 5, 23, 24], "atomic"));
    let msgs = raw.until_ready();
    assert_eq!(errors(&msgs), ["23505"]);
    assert_eq!(command_tags(&msgs), vec!["INSERT 0 1"; 3]);
    assert_eq!(status(&msgs), b'I');
    assert!(env
        .on_primaries("SELECT id FROM accounts WHERE owner = 'atomic'")
        .is_empty());
    // Inside a transaction: the batch is part of it, and ROLLBACK undoes it.
    raw_ok(&mut raw, "BEGIN");
    let mut m = parse_msg("upd", "UPDATE accounts SET owner = $2 WHERE id = $1");
    for id in 1..=12 {
        m.extend(bind_msg("", "upd", &[&id.to_string(), "updated"]));
        m.extend(execute_msg("", 0));
    }
    m.extend(sync_msg());
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), vec!["UPDATE 1"; 12]);
    assert_eq!(status(&msgs), b'T');
    let msgs = raw_ok(
        &mut raw,
        "SELECT count(*) FROM accounts WHERE owner = 'updated'",
    );
    assert_eq!(first_column(&msgs), ["12"], "seen inside the transaction");
    raw_ok(&mut raw, "ROLLBACK");
    assert!(env
        .on_primaries("SELECT id FROM accounts WHERE owner = 'updated'")
        .is_empty());
    // And committed when the transaction commits.
    raw_ok(&mut raw, "BEGIN");
    raw.send(&insert_batch("ins", &[30, 31, 32, 33], "in tx"));
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    raw_ok(&mut raw, "COMMIT");
    assert_eq!(
        env.on_primaries("SELECT id FROM accounts WHERE owner = 'in tx'")
            .len(),
        4
    );
    // Multi-row INSERTs with parameters whose rows belong to different
    // shards (pgjdbc's reWriteBatchedInserts): alone, and two in a batch.
    let multi = "INSERT INTO accounts (id, owner) VALUES ($1, $2), ($3, $4), ($5, $6) RETURNING id";
    let mut m = parse_msg("multi", multi);
    m.extend(bind_msg(
        "",
        "multi",
        &["40", "multi", "41", "multi", "42", "multi"],
    ));
    m.extend(describe_portal_msg(""));
    m.extend(execute_msg("", 0));
    m.extend(sync_msg());
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["INSERT 0 3"]);
    let mut ids = first_column(&msgs);
    ids.sort();
    assert_eq!(ids, ["40", "41", "42"]);
    let mut m = Vec::new();
    for first in [50, 53] {
        let keys: Vec<String> = (first..first + 3).map(|i| i.to_string()).collect();
        m.extend(bind_msg(
            "",
            "multi",
            &[&keys[0], "multi", &keys[1], "multi", &keys[2], "multi"],
        ));
        m.extend(execute_msg("", 0));
    }
    m.extend(sync_msg());
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["INSERT 0 3", "INSERT 0 3"]);
    let mut rows = env.on_primaries("SELECT id FROM accounts WHERE owner = 'multi'");
    rows.sort_by_key(|r| r.parse::<i64>().unwrap());
    assert_eq!(rows, ["40", "41", "42", "50", "51", "52", "53", "54", "55"]);
}

/// Defect 4 and the cursor patterns: an SQL cursor over several shards
/// (psycopg's named cursors, psql's FETCH_COUNT) returned one shard's rows.
/// Now the shards' rows are merged (ORDER BY, aggregates) and fetched a
/// batch at a time; MOVE skips, CLOSE ends it, backward fetches are refused.
#[test]
fn sql_cursors_over_several_shards() {
    let env = Env::sharded();
    let mut raw = env.raw();
    env.load_accounts(&mut raw, 1..=30);
    raw_ok(&mut raw, "BEGIN");
    raw_ok(
        &mut raw,
        "DECLARE n CURSOR FOR SELECT count(*) FROM accounts",
    );
    assert_eq!(first_column(&raw_ok(&mut raw, "FETCH ALL FROM n")), ["30"]);
    raw_ok(
        &mut raw,
        "DECLARE c CURSOR FOR SELECT id, owner FROM accounts WHERE id > 2 ORDER BY id",
    );
    let msgs = raw_ok(&mut raw, "FETCH 7 FROM c");
    assert_eq!(first_column(&msgs), ["3", "4", "5", "6", "7", "8", "9"]);
    assert_eq!(command_tags(&msgs), ["FETCH 7"]);
    assert!(
        msgs.iter().any(|(t, _)| *t == b'T'),
        "a RowDescription first"
    );
    assert_eq!(command_tags(&raw_ok(&mut raw, "MOVE 3 IN c")), ["MOVE 3"]);
    assert_eq!(first_column(&raw_ok(&mut raw, "FETCH NEXT FROM c")), ["13"]);
    let msgs = raw_ok(&mut raw, "FETCH ALL FROM c");
    assert_eq!(
        first_column(&msgs),
        (14..=30).map(|i| i.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(
        command_tags(&raw_ok(&mut raw, "FETCH 5 FROM c")),
        ["FETCH 0"]
    );
    let msgs = raw.query("FETCH PRIOR FROM c");
    assert_eq!(sqlstate_of(&msgs), "55000");
    raw_ok(&mut raw, "ROLLBACK");
    raw_ok(&mut raw, "BEGIN");
    raw_ok(
        &mut raw,
        "DECLARE c CURSOR FOR SELECT id FROM accounts ORDER BY id DESC LIMIT 4",
    );
    assert_eq!(
        first_column(&raw_ok(&mut raw, "FETCH 3 FROM c")),
        ["30", "29", "28"]
    );
    assert_eq!(first_column(&raw_ok(&mut raw, "FETCH 3 FROM c")), ["27"]);
    assert_eq!(command_tags(&raw_ok(&mut raw, "CLOSE c")), ["CLOSE CURSOR"]);
    assert_eq!(sqlstate_of(&raw.query("FETCH 1 FROM c")), "34000");
    raw_ok(&mut raw, "ROLLBACK");
    // Outside a transaction, as Postgres: 25P01.
    assert_eq!(
        sqlstate_of(&raw.query("DECLARE c CURSOR FOR SELECT id FROM accounts")),
        "25P01"
    );
    // psycopg's named cursor: DECLARE and FETCH in the extended protocol.
    raw_ok(&mut raw, "BEGIN");
    let mut m = parse_msg("", "DECLARE \"named\" CURSOR FOR SELECT id FROM accounts WHERE id BETWEEN $1 AND $2 ORDER BY id");
    m.extend(bind_msg("", "", &["5", "25"]));
    m.extend(execute_msg("", 0));
    m.extend(sync_msg());
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["DECLARE CURSOR"]);
    let mut seen = Vec::new();
    loop {
        let mut m = parse_msg("", "FETCH FORWARD 7 FROM \"named\"");
        m.extend(bind_msg("", "", &[]));
        m.extend(describe_portal_msg(""));
        m.extend(execute_msg("", 0));
        m.extend(sync_msg());
        raw.send(&m);
        let msgs = raw.until_ready();
        assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
        let rows = first_column(&msgs);
        if rows.is_empty() {
            break;
        }
        seen.extend(rows);
    }
    assert_eq!(seen, (5..=25).map(|i| i.to_string()).collect::<Vec<_>>());
    raw_ok(&mut raw, "COMMIT");
}

/// Row-limited Executes of a portal over several shards (pgjdbc's
/// `setFetchSize`, asyncpg's cursors, pg-cursor) were refused after the
/// first batch. Now each Execute returns the next rows of the merge, with
/// PortalSuspended until the rows run out; then Close and COMMIT.
#[test]
fn portals_over_several_shards_read_in_batches() {
    let env = Env::sharded();
    let mut raw = env.raw();
    env.load_accounts(&mut raw, 1..=25);
    let select = "SELECT id, owner FROM accounts WHERE id > $1 ORDER BY id";
    // pgjdbc: BEGIN, Bind of a named portal with Describe and Execute(7), Sync.
    let mut m = parse_msg("", "BEGIN");
    m.extend(bind_msg("", "", &[]));
    m.extend(execute_msg("", 0));
    m.extend(parse_msg("S_1", select));
    m.extend(bind_msg("C_1", "S_1", &["3"]));
    m.extend(describe_portal_msg("C_1"));
    m.extend(execute_msg("C_1", 7));
    m.extend(sync_msg());
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(first_column(&msgs), ["4", "5", "6", "7", "8", "9", "10"]);
    assert_eq!(
        msgs.iter().filter(|(t, _)| *t == b's').count(),
        1,
        "PortalSuspended"
    );
    assert!(msgs.iter().any(|(t, _)| *t == b'T'), "described");
    let mut seen: Vec<String> = first_column(&msgs);
    loop {
        let mut m = execute_msg("C_1", 7);
        m.extend(sync_msg());
        raw.send(&m);
        let msgs = raw.until_ready();
        assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
        seen.extend(first_column(&msgs));
        if msgs.iter().any(|(t, _)| *t == b'C') {
            break;
        }
    }
    assert_eq!(seen, (4..=25).map(|i| i.to_string()).collect::<Vec<_>>());
    let mut m = close_msg(b'P', "C_1");
    m.extend(parse_msg("", "COMMIT"));
    m.extend(bind_msg("", "", &[]));
    m.extend(execute_msg("", 0));
    m.extend(sync_msg());
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(status(&msgs), b'I');
    // pg-cursor: Bind, Describe and Flush, then Execute(5) and Flush each
    // time, outside a transaction; Close and Sync at the end.
    let mut m = parse_msg("", "SELECT count(*), max(id) FROM accounts WHERE id > $1");
    m.extend(bind_msg("pgc", "", &["0"]));
    m.extend(describe_portal_msg("pgc"));
    m.extend(flush_msg());
    raw.send(&m);
    raw.until(b'T');
    let mut m = execute_msg("pgc", 5);
    m.extend(flush_msg());
    raw.send(&m);
    let msgs = raw.until(b'C');
    assert_eq!(msgs.iter().filter(|(t, _)| *t == b'D').count(), 1);
    let mut m = close_msg(b'P', "pgc");
    m.extend(sync_msg());
    raw.send(&m);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(status(&msgs), b'I');
    assert_eq!(
        first_column(&raw_ok(&mut raw, "SELECT count(*) FROM accounts")),
        ["25"]
    );
}

/// A field of `/proc/<pid>/status` in kB.
fn proc_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Defect 10: a 9 MB statement (an `IN` list of 1.3 million numbers) took
/// the proxy to 823 MB (1.13 GB sharded) and 215 MB stayed after. Now a
/// statement over 256 KiB is decided from its words without a parse (a
/// read goes to the primary; across shards it is refused with 0A000), and
/// the memory is given back.
fn large_statement(env: &Env, sharded: bool) {
    let mut raw = env.raw();
    raw_ok(
        &mut raw,
        "INSERT INTO accounts (id, owner) VALUES (7, 'seven')",
    );
    let pid = env.proxy.pid();
    let before = proc_kb(pid, "VmRSS:");
    let ids: Vec<String> = (1..=1_300_000).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT count(*) FROM accounts WHERE id IN ({})",
        ids.join(",")
    );
    assert!(sql.len() > 9_000_000);
    let msgs = raw.query(&sql);
    if sharded {
        assert_eq!(sqlstate_of(&msgs), "0A000");
    } else {
        assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
        assert_eq!(first_column(&msgs), ["1"]);
    }
    let peak = proc_kb(pid, "VmHWM:");
    let after = proc_kb(pid, "VmRSS:");
    assert!(
        peak < before + 150_000,
        "peak {peak} kB, before {before} kB"
    );
    assert!(
        after < before + 30_000,
        "after {after} kB, before {before} kB"
    );
    // The proxy goes on serving.
    assert_eq!(first_column(&raw_ok(&mut raw, "SELECT 1")), ["1"]);
}

#[test]
fn a_large_statement_costs_bounded_memory_with_replicas() {
    large_statement(&Env::replicas(), false);
}

#[test]
fn a_large_statement_costs_bounded_memory_sharded() {
    large_statement(&Env::sharded(), true);
}

/// Defect 2, second half: a client that gives up while the proxy waits for
/// servers (here a write over every shard, blocked by another client's row
/// lock) was not noticed: the proxy kept waiting and the server sessions
/// stayed in their transactions. Now its statements are cancelled, its
/// connections discarded, and nothing of it commits.
#[test]
fn a_client_that_leaves_mid_statement_leaves_nothing_behind() {
    let env = Env::sharded();
    let mut a = env.raw();
    let by_shard = env.load_accounts(&mut a, 1..=20);
    let locked = by_shard[1][0];
    raw_ok(&mut a, "BEGIN");
    raw_ok(
        &mut a,
        &format!("UPDATE accounts SET owner = 'locked' WHERE id = {locked}"),
    );
    let mut b = env.raw();
    b.send(&query_msg("UPDATE accounts SET owner = 'left'"));
    let blocked = |env: &Env| {
        env.on_primaries(
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'UPDATE accounts SET owner = ''left''' AND state <> 'idle'",
        )
        .iter()
        .map(|n| n.parse::<i64>().unwrap())
        .sum::<i64>()
    };
    assert!(eventually(std::time::Duration::from_secs(10), || blocked(
        &env
    ) > 0));
    b.s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(b);
    assert!(
        eventually(std::time::Duration::from_secs(10), || blocked(&env) == 0),
        "the left client's statement still runs or holds its transaction"
    );
    raw_ok(&mut a, "COMMIT");
    assert!(env
        .on_primaries("SELECT id FROM accounts WHERE owner = 'left'")
        .is_empty());
    assert_eq!(
        env.on_primaries("SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%'"),
        ["0", "0"]
    );
}

/// A statement for several shards (a reference-table write) whose Parse,
/// Bind, Execute and Sync arrive in separate TCP reads (a slow network, a
/// driver that flushes each message) was refused with 0A000 "must arrive
/// with its Execute and Sync". The batch is gathered up to its Sync first.
#[test]
fn a_batch_split_over_tcp_reads_is_one_batch() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let messages = [
        parse_msg("", "INSERT INTO currencies (code, name) VALUES ($1, $2)"),
        bind_msg("", "", &["CHF", "Swiss franc"]),
        describe_portal_msg(""),
        execute_msg("", 0),
        sync_msg(),
    ];
    for m in &messages {
        raw.send(m);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["INSERT 0 1"]);
    assert_eq!(
        env.on_primaries("SELECT name FROM currencies WHERE code = 'CHF'"),
        ["Swiss franc", "Swiss franc"],
        "a reference table row on every shard"
    );
    // Byte by byte, even.
    let bytes: Vec<u8> = [
        parse_msg("", "SELECT count(*) FROM currencies"),
        bind_msg("", "", &[]),
        execute_msg("", 0),
        sync_msg(),
    ]
    .concat();
    for b in bytes.chunks(3) {
        raw.send(b);
    }
    let msgs = raw.until_ready();
    assert_eq!(first_column(&msgs), ["3"]);
}

/// tokio-postgres' `copy_in` (Parse/Describe/Sync, then Bind/Execute/Sync)
/// of a COPY FROM into a sharded table: refused with one ErrorResponse and
/// one ReadyForQuery per Sync, and the connection stays in step.
#[test]
fn extended_copy_into_a_sharded_table_is_refused_in_step() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let mut batch = parse_msg("c1", "COPY accounts (id, owner) FROM STDIN");
    batch.extend(describe_statement_msg("c1"));
    batch.extend(sync_msg());
    raw.send(&batch);
    let first: Vec<u8> = raw.until_ready().iter().map(|m| m.0).collect();
    let mut batch = bind_msg("", "c1", &[]);
    batch.extend(execute_msg("", 0));
    batch.extend(sync_msg());
    raw.send(&batch);
    let second: Vec<u8> = raw.until_ready().iter().map(|m| m.0).collect();
    // The driver's copy sink, dropped unfinished, sends CopyFail and Sync;
    // outside COPY, Postgres ignores the CopyFail and answers the Sync.
    let mut fail = vec![b'f'];
    fail.extend_from_slice(&5i32.to_be_bytes());
    fail.push(0);
    fail.extend(sync_msg());
    raw.send(&fail);
    let after_fail: Vec<u8> = raw.until_ready().iter().map(|m| m.0).collect();
    let third: Vec<u8> = raw.query("SELECT 1").iter().map(|m| m.0).collect();
    assert_eq!(first, b"1tnZ", "Parse/Describe/Sync");
    assert_eq!(second, b"EZ", "Bind/Execute/Sync refused");
    assert_eq!(after_fail, b"Z", "CopyFail/Sync outside COPY");
    assert_eq!(third, b"TDCZ", "the connection is in step");
}
