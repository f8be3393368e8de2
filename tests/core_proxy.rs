//! Core proxy behaviour against real Postgres through the real binary: the
//! protocol, pooling, prepared statements, session state, cancel, auth, TLS,
//! bad input and shutdown.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shardgate_harness::{ClusterSpec, Node};
use support::*;

const LONG: Duration = Duration::from_secs(300);

/// A trust-authenticated user (`raw_login` logs in as it) that reaches the
/// servers as `app`.
const TRUSTED_USER: &str = "\n[[users]]\nname = \"trusted\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"secret\"\n";

fn start(
    spec: ClusterSpec,
    proxy_extra: &str,
    users_extra: &str,
) -> (shardgate_harness::Cluster, Proxy) {
    let c = cluster(spec);
    let port = free_port();
    let proxy = Proxy::start(c.dir(), port, &config(&c, port, proxy_extra, users_extra));
    (c, proxy)
}

fn primary(c: &shardgate_harness::Cluster) -> &Node {
    &c.shard(0).primary
}

/// Item 1: pgbench in every protocol mode and TPC-B through transaction pooling
/// with fewer server connections than clients.
#[test]
fn pgbench_modes_with_transaction_pooling() {
    let (_c, proxy) = start(ClusterSpec::new(1, 0), "pool_size = 10", "");
    let ci = proxy.app();
    let init = run(pgbench(&ci).args(["-i", "-s", "10", "-q"]).command(), LONG);
    assert_success(&init, "pgbench -i");
    for mode in [
        &["-S", "-M", "simple"][..],
        &["-S", "-M", "extended"][..],
        &["-S", "-M", "prepared"][..],
        &["-M", "prepared"][..],
    ] {
        let out = run(
            pgbench(&ci)
                .args(["-c", "32", "-j", "2", "-T", "5"])
                .args(mode)
                .command(),
            LONG,
        );
        assert_success(&out, &format!("pgbench {mode:?}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("number of failed transactions: 0 (0.000%)"),
            "pgbench {mode:?} had failures:\n{stdout}\n{stderr}"
        );
        assert!(
            !stderr.to_lowercase().contains("error"),
            "pgbench {mode:?} printed errors:\n{stderr}"
        );
        let processed = stdout
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            processed > 100,
            "pgbench {mode:?} processed only {processed}:\n{stdout}"
        );
    }
}

/// Item 2: psql: catalog queries, \copy both ways, binary COPY, multi-statement
/// queries, an error inside a transaction followed by ROLLBACK.
#[test]
fn psql_catalog_copy_multistatement_and_errors() {
    let (c, proxy) = start(ClusterSpec::new(1, 0), "", "");
    let ci = proxy.app();
    let dir = c.dir();
    psql_ok(
        &ci,
        "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2), data bytea)",
    );
    let d = run(psql(&ci).args(["-c", "\\d items"]), LONG);
    assert_success(&d, "\\d");
    let d = String::from_utf8_lossy(&d.stdout);
    assert!(
        d.contains("Table \"public.items\"") && d.contains("price"),
        "{d}"
    );
    let dt = run(psql(&ci).args(["-c", "\\dt"]), LONG);
    assert!(String::from_utf8_lossy(&dt.stdout).contains("items"));

    // \copy in from CSV, then out, and compare.
    let csv_in = dir.join("items_in.csv");
    let mut text = String::new();
    for i in 1..=2000 {
        text.push_str(&format!(
            "{i},\"name, {i}\",{}.{:02},\\x{:04x}\n",
            i,
            i % 100,
            i
        ));
    }
    std::fs::write(&csv_in, &text).unwrap();
    let load = run(
        psql(&ci).args([
            "-c",
            &format!("\\copy items from '{}' (format csv)", csv_in.display()),
        ]),
        LONG,
    );
    assert_success(&load, "\\copy from");
    assert!(String::from_utf8_lossy(&load.stdout).contains("COPY 2000"));
    let csv_out = dir.join("items_out.csv");
    let dump = run(
        psql(&ci).args([
            "-c",
            &format!(
                "\\copy (SELECT * FROM items ORDER BY id) to '{}' (format csv)",
                csv_out.display()
            ),
        ]),
        LONG,
    );
    assert_success(&dump, "\\copy to");
    assert_eq!(std::fs::read_to_string(&csv_out).unwrap(), text);

    // Binary COPY out of one table and into another.
    let bin = dir.join("items.bin");
    assert_success(
        &run(
            psql(&ci).args([
                "-c",
                &format!("\\copy items to '{}' (format binary)", bin.display()),
            ]),
            LONG,
        ),
        "binary copy out",
    );
    assert!(std::fs::read(&bin)
        .unwrap()
        .starts_with(b"PGCOPY\n\xff\r\n\0"));
    psql_ok(&ci, "CREATE TABLE items2 (LIKE items)");
    assert_success(
        &run(
            psql(&ci).args([
                "-c",
                &format!("\\copy items2 from '{}' (format binary)", bin.display()),
            ]),
            LONG,
        ),
        "binary copy in",
    );
    let same = psql_ok(
        &ci,
        "SELECT count(*) FROM (SELECT * FROM items EXCEPT SELECT * FROM items2) x",
    );
    assert_eq!(same, "0");
    assert_eq!(psql_ok(&ci, "SELECT count(*) FROM items2"), "2000");

    // Several statements in one simple Query: all run, the last result shows.
    let multi = psql_ok(
        &ci,
        "INSERT INTO items VALUES (5001, 'a'); INSERT INTO items VALUES (5002, 'b'); SELECT count(*) FROM items WHERE id > 5000",
    );
    assert_eq!(
        multi.lines().collect::<Vec<_>>(),
        ["INSERT 0 1", "INSERT 0 1", "2"]
    );

    // An error inside a transaction, then ROLLBACK: nothing of it remains.
    let script = "BEGIN;\nINSERT INTO items VALUES (6001, 'x');\nSELECT 1/0;\nSELECT 1;\nROLLBACK;\nSELECT count(*) FROM items WHERE id = 6001;\n";
    let out = run_with_stdin(
        psql(&ci).args(["-A", "-t", "-v", "ON_ERROR_STOP=0"]),
        script.as_bytes(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("division by zero"), "{stderr}");
    assert!(
        stderr.contains("current transaction is aborted"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).trim().ends_with('0'));
    assert_eq!(
        primary(&c)
            .psql("app", "SELECT count(*) FROM items WHERE id = 6001")
            .unwrap(),
        "0"
    );
}

/// Item 3: Cancel through the proxy stops only the cancelled client's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_right_query() {
    let (_c, proxy) = start(ClusterSpec::new(1, 0), "", "");
    let victim = connect(&proxy.app()).await;
    let bystander = connect(&proxy.app()).await;
    let token = victim.cancel_token();
    let other = tokio::spawn(async move {
        bystander
            .query_one("SELECT pg_sleep(1.5)::text, 42::int4", &[])
            .await
            .map(|r| r.get::<_, i32>(1))
    });
    let sleeper = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let cancelled_at = Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send cancel");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled query returned")
        .unwrap();
    let err = result.expect_err("query must be cancelled");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(other.await.unwrap().expect("bystander unaffected"), 42);
}

/// Item 4: Named prepared statements survive transaction pooling: tokio-postgres
/// with 500 statements on 2 server connections (and a 100-entry server cache,
/// so statements are evicted and re-prepared), and psycopg 3 with
/// server-side prepared statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_across_server_connections() {
    let (_c, proxy) = start(
        ClusterSpec::new(1, 0),
        "pool_size = 2\nprepared_statements_cache = 100",
        "",
    );
    let ci = proxy.app();
    let mut tasks = Vec::new();
    for worker in 0..3i64 {
        let ci = ci.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&ci).await;
            let mut stmts = Vec::new();
            for i in 0..500 {
                stmts.push(
                    client
                        .prepare(&format!("SELECT $1::int8 + {i}, 'w{worker}'"))
                        .await
                        .expect("prepare"),
                );
            }
            for round in 0..3i64 {
                for (i, s) in stmts.iter().enumerate() {
                    let tx = client.transaction().await.expect("begin");
                    let row = tx.query_one(s, &[&round]).await.expect("execute prepared");
                    assert_eq!(row.get::<_, i64>(0), round + i as i64);
                    assert_eq!(row.get::<_, String>(1), format!("w{worker}"));
                    tx.commit().await.expect("commit");
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let out = run_client_script("psycopg_prepared.py", vec![ci]).await;
    assert!(
        out.contains("ok 1500"),
        "psycopg prepared statements: {out}"
    );
}

/// A table changed under a prepared `SELECT *`: the statement the proxy
/// keeps on the pooled server connection under its own name goes stale.
/// The client that prepared it before the change gets Postgres's `0A000`
/// ("cached plan must not change result type"), as it would from Postgres;
/// a client preparing the same text afterwards gets the new columns, not
/// the stale statement of the connection it happens to be given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_made_stale_by_ddl_is_prepared_afresh() {
    let (_c, proxy) = start(ClusterSpec::new(1, 0), "pool_size = 1", "");
    let first = connect(&proxy.app()).await;
    first
        .batch_execute(
            "CREATE TABLE stale (id int PRIMARY KEY, a text); INSERT INTO stale VALUES (1, 'x')",
        )
        .await
        .unwrap();
    let sql = "SELECT * FROM stale WHERE id = $1";
    let before = first.prepare(sql).await.unwrap();
    assert_eq!(first.query_one(&before, &[&1i32]).await.unwrap().len(), 2);
    first
        .batch_execute("ALTER TABLE stale ADD COLUMN b int DEFAULT 7")
        .await
        .unwrap();
    let err = first.query_one(&before, &[&1i32]).await.unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("0A000"),
        "{err}"
    );
    for _ in 0..3 {
        let later = connect(&proxy.app()).await;
        let stmt = later.prepare(sql).await.unwrap();
        let row = later.query_one(&stmt, &[&1i32]).await.unwrap();
        assert_eq!((row.len(), row.get::<_, i32>(2)), (3, 7));
    }
    // The first client's session is intact: it prepares again and goes on.
    let again = first.prepare(sql).await.unwrap();
    assert_eq!(first.query_one(&again, &[&1i32]).await.unwrap().len(), 3);
}

/// Item 5: Two clients sharing one server connection keep their own settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_follows_the_client() {
    let (_c, proxy) = start(ClusterSpec::new(1, 0), "pool_size = 1", "");
    let mut a = connect(&proxy.app()).await;
    let mut b = connect(&proxy.app()).await;
    a.batch_execute("CREATE SCHEMA IF NOT EXISTS sa; CREATE SCHEMA IF NOT EXISTS sb")
        .await
        .unwrap();
    a.batch_execute("SET search_path TO sa, public; SET application_name = 'client_a'; SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    b.batch_execute("SET search_path TO sb; SET application_name TO 'client_b'; SET TIME ZONE 'America/New_York'")
        .await
        .unwrap();
    let want_a = ("sa, public", "client_a", "Asia/Tokyo");
    let want_b = ("sb", "client_b", "America/New_York");
    for i in 0..100 {
        let (client, want) = if i % 2 == 0 {
            (&mut a, want_a)
        } else {
            (&mut b, want_b)
        };
        let tx = client.transaction().await.unwrap();
        let row = tx
            .query_one(
                "SELECT current_setting('search_path'), current_setting('application_name'), current_setting('TimeZone')",
                &[],
            )
            .await
            .unwrap();
        let got: (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2.as_str()),
            want,
            "iteration {i}"
        );
        tx.commit().await.unwrap();
    }
    // A SET that is rolled back does not stick.
    a.batch_execute("BEGIN; SET search_path TO public; ROLLBACK")
        .await
        .unwrap();
    let row = a
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "sa, public");
}

/// Unnamed-statement batches (Parse, Bind, Describe, Execute, Sync in one
/// write, as libpq's `PQexecParams`, psycopg and pgbench `-M extended` send
/// them), which the proxy forwards in one piece: errors, failed transactions,
/// SET sent the same way, and a batch that has to wait for a connection
/// behave as with Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unnamed_statement_batches_keep_errors_and_state() {
    use tokio_postgres::types::Type;
    let (_c, proxy) = start(
        ClusterSpec::new(1, 0),
        "pool_size = 1\npool_timeout = \"300ms\"",
        "",
    );
    let a = connect(&proxy.app()).await;
    let b = connect(&proxy.app()).await;
    let value = |rows: Vec<tokio_postgres::Row>| rows[0].get::<_, i32>(0);
    let rows = a
        .query_typed("SELECT $1::int4 + 1", &[(&41i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(value(rows), 42);

    // A server error ends the batch; the next one runs.
    let err = a.query_typed("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err}");
    let rows = a
        .query_typed("SELECT $1::int4", &[(&7i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(value(rows), 7);

    // Inside a transaction an error fails it until ROLLBACK.
    a.batch_execute("BEGIN").await.unwrap();
    a.query_typed("SELECT 1/0", &[]).await.unwrap_err();
    let err = a.query_typed("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err}");
    a.batch_execute("ROLLBACK").await.unwrap();

    // SET sent as an unnamed batch follows the client to its next
    // transactions, though the other client changes the one connection.
    a.query_typed("SET application_name = 'batch_a'", &[])
        .await
        .unwrap();
    for _ in 0..3 {
        b.batch_execute("SET application_name = 'batch_b'")
            .await
            .unwrap();
        let rows = a
            .query_typed("SELECT current_setting('application_name')", &[])
            .await
            .unwrap();
        assert_eq!(rows[0].get::<_, String>(0), "batch_a");
    }

    // A batch that finds no free connection gets the pool error and its
    // client can go on once the connection is free.
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let err = a.query_typed("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    b.batch_execute("COMMIT").await.unwrap();
    let rows = a
        .query_typed("SELECT $1::int4 * 2", &[(&21i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(value(rows), 42);
}

/// COPY through the extended protocol (tokio-postgres sends Bind, Execute
/// and Sync before any data: the proxy must keep reading the client once the
/// server asks for data), a COPY the server rejects halfway, and the same
/// connection afterwards, on one server connection shared with another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_through_the_extended_protocol() {
    use futures_util::{SinkExt, StreamExt};
    let (_c, proxy) = start(
        ClusterSpec::new(1, 0),
        "pool_size = 1\npool_timeout = \"5s\"",
        TRUSTED_USER,
    );
    let a = connect(&proxy.app()).await;
    let b = connect(&proxy.app()).await;
    a.batch_execute("CREATE TABLE copied (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let rows: String = (0..5000).map(|i| format!("{i}\tnote {i}\n")).collect();
    let sink = a.copy_in("COPY copied FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    for chunk in rows.as_bytes().chunks(7000) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.as_mut().finish().await.unwrap(), 5000);

    // A duplicate key fails the COPY; the client sees the error and goes on.
    let sink = a.copy_in("COPY copied FROM STDIN").await.unwrap();
    let mut sink = std::pin::pin!(sink);
    let dup = "5000\tnew\n1\tduplicate\n";
    let failed = async {
        sink.send(bytes::Bytes::from_static(dup.as_bytes())).await?;
        sink.as_mut().finish().await
    }
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&failed).as_deref(), Some("23505"), "{failed}");

    let out = b
        .copy_out("COPY (SELECT * FROM copied ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let mut out = std::pin::pin!(out);
    let mut dumped = Vec::new();
    while let Some(chunk) = out.next().await {
        dumped.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(dumped).unwrap(), rows);
    let count: i64 = a
        .query_one("SELECT count(*) FROM copied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 5000);

    // An unnamed Parse, Bind, Describe, Execute and Sync sent in one piece
    // (the proxy's plain-batch path) that starts a COPY: the server ignores
    // that Sync and answers the one after CopyDone.
    let port = proxy.port;
    let raw_copy = tokio::task::spawn_blocking(move || {
        let mut raw = raw_login(port);
        let mut batch = Vec::new();
        batch.extend(frontend_msg(b'P', b"\0COPY copied FROM STDIN\0\0\0"));
        batch.extend(frontend_msg(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(frontend_msg(b'D', b"P\0"));
        batch.extend(frontend_msg(b'E', b"\0\0\0\0\0"));
        batch.extend(frontend_msg(b'S', b""));
        raw.send(&batch);
        let tags = raw.tags_until_ok(b'G');
        assert_eq!(tags, b"12nG", "before the copy data");
        let mut data = Vec::new();
        data.extend(frontend_msg(b'd', b"6000\tbatch\n"));
        data.extend(frontend_msg(b'c', b""));
        data.extend(frontend_msg(b'S', b""));
        raw.send(&data);
        assert_eq!(raw.tags_until_ok(b'Z'), b"CZ", "after CopyDone and Sync");
        raw.send(&query_msg("SELECT count(*) FROM copied"));
        assert_eq!(raw.tags_until_ok(b'Z'), b"TDCZ", "the next query");
    });
    tokio::time::timeout(Duration::from_secs(60), raw_copy)
        .await
        .expect("raw COPY client done")
        .expect("raw COPY client passed");
    // The one server connection went back to the pool after both copies.
    let count: i64 = b
        .query_one("SELECT count(*) FROM copied", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 5001);
}

/// `defer_begin`: a plain BEGIN holds no server connection until the
/// transaction's first statement, which then runs in the same transaction
/// as BEGIN; everything a client sees of its transaction stays the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_begin_keeps_transactions_whole() {
    let (c, proxy) = start(
        ClusterSpec::new(1, 0),
        "pool_size = 1\npool_timeout = \"300ms\"",
        TRUSTED_USER,
    );
    let ci = proxy.app();
    let a = connect(&ci).await;
    let b = connect(&ci).await;
    a.batch_execute("CREATE TABLE tdb (id int)").await.unwrap();
    let idle_in_tx = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%'";
    let count = || primary(&c).psql("app", "SELECT count(*) FROM tdb").unwrap();

    // After BEGIN alone the one server connection is free for others.
    a.batch_execute("BEGIN").await.unwrap();
    assert_eq!(primary(&c).psql("app", idle_in_tx).unwrap(), "0");
    b.simple_query("SELECT 1")
        .await
        .expect("connection not held by BEGIN");
    // The first statement opens the transaction on the server, which now
    // holds the connection: another client times out.
    a.batch_execute("INSERT INTO tdb VALUES (1)").await.unwrap();
    assert_eq!(primary(&c).psql("app", idle_in_tx).unwrap(), "1");
    let err = b
        .simple_query("SELECT 1")
        .await
        .expect_err("connection held");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    a.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(count(), "0");

    // BEGIN and what follows are one transaction, in both protocols.
    a.batch_execute("START TRANSACTION").await.unwrap();
    let first: i64 = a
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    let second: i64 = a
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, second);
    a.batch_execute("INSERT INTO tdb VALUES (2); COMMIT")
        .await
        .unwrap();
    assert_eq!(count(), "1");
    let mut a = a;
    let tx = a.transaction().await.unwrap();
    tx.execute("INSERT INTO tdb VALUES ($1)", &[&3i32])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(), "1");

    // SET inside a deferred-BEGIN transaction follows the client when it
    // commits, and not when it rolls back.
    for (name, end) in [("in_tx", "COMMIT"), ("rolled_back", "ROLLBACK")] {
        a.batch_execute("BEGIN").await.unwrap();
        a.batch_execute(&format!("SET application_name = '{name}'"))
            .await
            .unwrap();
        a.batch_execute(end).await.unwrap();
        b.batch_execute("SET application_name = 'other'")
            .await
            .unwrap();
        let row = a.query_one("SHOW application_name", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "in_tx", "after {end}");
    }

    // An error after BEGIN fails the transaction as usual.
    a.batch_execute("BEGIN").await.unwrap();
    let err = a
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err}");
    let err = a
        .batch_execute("SELECT 1")
        .await
        .expect_err("transaction failed");
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err}");
    a.batch_execute("ROLLBACK").await.unwrap();

    // The client is told it is in a transaction at once, and a second BEGIN
    // still gets Postgres's warning.
    let mut raw = raw_login(proxy.port);
    assert_eq!(status(&raw.query("begin;")), b'T');
    assert_eq!(status(&raw.query("SELECT 1")), b'T');
    assert_eq!(status(&raw.query("COMMIT")), b'I');
    // BEGIN and the next statement in one write: the answers keep their order.
    raw.send(&[query_msg("BEGIN"), query_msg("SELECT 42")].concat());
    let tags = |msgs: &[Msg]| msgs.iter().map(|m| m.0).collect::<Vec<u8>>();
    let begin = raw.until_ready();
    assert_eq!((tags(&begin), status(&begin)), (b"CZ".to_vec(), b'T'));
    let select = raw.until_ready();
    assert_eq!((tags(&select), status(&select)), (b"TDCZ".to_vec(), b'T'));
    assert_eq!(status(&raw.query("ROLLBACK")), b'I');
    let out = run(
        psql(&ci).args(["-c", "BEGIN", "-c", "BEGIN", "-c", "COMMIT"]),
        Duration::from_secs(60),
    );
    assert_success(&out, "psql BEGIN twice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("there is already a transaction in progress"),
        "{stderr}"
    );

    // No connection for the first statement: a clear error, and the client
    // goes on afterwards.
    b.batch_execute("BEGIN; SELECT 1").await.unwrap();
    a.batch_execute("BEGIN").await.unwrap();
    let err = a
        .batch_execute("INSERT INTO tdb VALUES (4)")
        .await
        .expect_err("pool busy");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    b.batch_execute("COMMIT").await.unwrap();
    a.batch_execute("ROLLBACK").await.unwrap();
    a.batch_execute("INSERT INTO tdb VALUES (5)").await.unwrap();
    assert_eq!(count(), "2");

    // With defer_begin = false, BEGIN takes its server connection at once.
    let port = free_port();
    let eager = Proxy::start(c.dir(), port, &config(&c, port, "defer_begin = false", ""));
    let e = connect(&eager.app()).await;
    e.batch_execute("BEGIN").await.unwrap();
    assert_eq!(primary(&c).psql("app", idle_in_tx).unwrap(), "1");
    e.batch_execute("ROLLBACK").await.unwrap();
}

/// Item 6: A client killed inside a transaction leaves nothing behind.
#[test]
fn killed_client_rolls_back_and_frees_the_server() {
    let (c, proxy) = start(ClusterSpec::new(1, 0), "", "");
    psql_ok(&proxy.app(), "CREATE TABLE t6 (id int)");
    let mut child = psql(&proxy.app())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"BEGIN;\nINSERT INTO t6 VALUES (1);\n")
        .unwrap();
    stdin.flush().unwrap();
    let idle_in_tx = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%'";
    assert!(
        eventually(Duration::from_secs(20), || primary(&c)
            .psql("app", idle_in_tx)
            .unwrap()
            == "1"),
        "the transaction never started"
    );
    child.kill().unwrap();
    let _ = child.wait();
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || primary(&c)
            .psql("app", idle_in_tx)
            .unwrap()
            == "0"),
        "server session still idle in transaction"
    );
    assert!(killed.elapsed() <= Duration::from_secs(3));
    assert_eq!(
        primary(&c).psql("app", "SELECT count(*) FROM t6").unwrap(),
        "0"
    );
    drop(stdin);
}

/// Item 7: Many clients on a small pool; pool exhaustion gives a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_small_pool_and_pool_timeout() {
    let (c, proxy) = start(ClusterSpec::new(1, 0), "pool_size = 5", "");
    let ci = proxy.app();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let ci = ci.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&ci).await;
            let tx = client.transaction().await?;
            tx.batch_execute("SELECT pg_sleep(0.01)").await?;
            let v: i32 = tx.query_one("SELECT $1::int4", &[&i]).await?.get(0);
            tx.commit().await?;
            Ok::<i32, tokio_postgres::Error>(v)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().expect("client succeeded"), i as i32);
    }

    // A second proxy on the same cluster with 2 connections and a tiny wait.
    let port = free_port();
    let tiny = Proxy::start(
        c.dir(),
        port,
        &config(&c, port, "pool_size = 2\npool_timeout = \"200ms\"", ""),
    );
    let ci = tiny.app();
    let holder1 = connect(&ci).await;
    let holder2 = connect(&ci).await;
    holder1.batch_execute("BEGIN; SELECT 1").await.unwrap();
    holder2.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let waiter = connect(&ci).await;
    let started = Instant::now();
    let err = waiter
        .simple_query("SELECT 1")
        .await
        .expect_err("pool is exhausted");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    let message = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("pool_timeout"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
    holder1.batch_execute("COMMIT").await.unwrap();
    holder2.batch_execute("COMMIT").await.unwrap();
    // The waiter's connection still works, and so do new clients.
    let rows = waiter
        .query("SELECT 7::int4", &[])
        .await
        .expect("after the error");
    assert_eq!(rows[0].get::<_, i32>(0), 7);
    let fresh = connect(&ci).await;
    fresh.simple_query("SELECT 1").await.expect("fresh client");
}

fn make_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
        ],
    );
    (dir.join("server.crt"), dir.join("server.key"))
}

/// Item 8: SCRAM, md5 and trust; uniform failure for wrong password and unknown
/// user; 3D000 for an unknown database; TLS with sslmode=require.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_methods_and_tls() {
    let c = cluster(ClusterSpec::new(1, 0));
    let (cert, key) = make_cert(c.dir());
    let port = free_port();
    let users = &format!(
        "\n[[users]]\nname = \"md5user\"\npassword = \"md5pass\"\nauth = \"md5\"\nserver_user = \"app\"\nserver_password = \"secret\"\n{TRUSTED_USER}"
    );
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert.display().to_string(),
        key.display().to_string()
    );
    let proxy = Proxy::start(c.dir(), port, &config(&c, port, &extra, users));

    for (user, password) in [("app", "secret"), ("md5user", "md5pass"), ("trusted", "")] {
        let ci = format!("host=127.0.0.1 port={port} user={user} dbname=app sslmode=disable password='{password}'");
        assert_eq!(
            psql_ok(&ci, "SELECT current_user"),
            "app",
            "login as {user}"
        );
    }
    // SCRAM is what psql negotiated for app: a wrong password and an unknown
    // user fail the same way.
    let mut messages = Vec::new();
    for (user, password) in [("app", "wrong"), ("ghost", "secret"), ("md5user", "nope")] {
        let ci = format!(
            "host=127.0.0.1 port={port} user={user} dbname=app sslmode=disable password={password}"
        );
        let err = tokio_postgres::connect(&ci, tokio_postgres::NoTls)
            .await
            .err()
            .expect("login must fail");
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{user}: {err}");
        messages.push(err.as_db_error().unwrap().message().replace(user, "USER"));
        let out = run(psql(&ci).args(["-c", "SELECT 1"]), LONG);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(messages.windows(2).all(|w| w[0] == w[1]), "{messages:?}");
    let err = tokio_postgres::connect(
        &proxy.conninfo("app", "secret", "no_such_db"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("unknown database");
    assert_eq!(sqlstate(&err).as_deref(), Some("3D000"), "{err}");

    // TLS.
    let ci =
        format!("host=127.0.0.1 port={port} user=app password=secret dbname=app sslmode=require");
    assert_eq!(psql_ok(&ci, "SELECT 40 + 2"), "42");
    let info = run(psql(&ci).args(["-c", "\\conninfo"]), LONG);
    assert!(String::from_utf8_lossy(&info.stdout).contains("SSL connection"));
    assert!(proxy.log_text().contains("tls=true"));
    // Over TLS the proxy offers SCRAM-SHA-256-PLUS: libpq binds the login to
    // the certificate (channel_binding=require fails unless the server
    // completed a PLUS exchange), and plain SCRAM still works.
    for binding in ["require", "disable"] {
        let ci = format!(
            "host=127.0.0.1 port={port} user=app password=secret dbname=app sslmode=require channel_binding={binding}"
        );
        assert_eq!(psql_ok(&ci, "SELECT 7"), "7", "channel_binding={binding}");
    }
    let ci = format!(
        "host=127.0.0.1 port={port} user=app password=secret dbname=app sslmode=disable channel_binding=require"
    );
    let out = run(psql(&ci).args(["-c", "SELECT 1"]), LONG);
    assert!(
        !out.status.success(),
        "channel binding without TLS must fail"
    );
    // Without TLS configured the proxy answers N, so sslmode=require fails cleanly.
    let c2port = free_port();
    let plain = Proxy::start(c.dir(), c2port, &config(&c, c2port, "", ""));
    let ci =
        format!("host=127.0.0.1 port={c2port} user=app password=secret dbname=app sslmode=require");
    let out = run(psql(&ci).args(["-c", "SELECT 1"]), LONG);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not support SSL"));
    drop(plain);
}

/// Logs in over a raw socket as the trust user and reads up to ReadyForQuery.
fn raw_login(port: u16) -> Raw {
    Raw::connect(port, "trusted", "app")
}

/// Reads until EOF; returns everything received.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    all
}

fn assert_protocol_error(reply: &[u8], what: &str) {
    assert!(
        reply.first() == Some(&b'E'),
        "{what}: expected ErrorResponse, got {reply:?}"
    );
    let text = String::from_utf8_lossy(reply);
    assert!(text.contains("C08P01"), "{what}: {text}");
}

/// Sends each bad input on its own connection (after logging in where the case says so)
/// and checks that an 08P01 error and a closed connection come back; then a message cut
/// short by the client closing its side.
fn send_bad_input(port: u16, cases: Vec<(&'static str, bool, Vec<u8>)>) {
    for (what, after_login, bytes) in cases {
        let mut s = if after_login {
            raw_login(port).s
        } else {
            let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        };
        s.write_all(&bytes).unwrap();
        let reply = read_to_close(&mut s);
        assert_protocol_error(&reply, what);
    }
    // A message cut short by the client closing its side.
    let mut s = raw_login(port).s;
    let mut m = vec![b'Q'];
    m.extend_from_slice(&100i32.to_be_bytes());
    m.extend_from_slice(b"SELECT");
    s.write_all(&m).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_protocol_error(&read_to_close(&mut s), "truncated message");
}

/// Waits until the bystander has had `count` answers (a hang fails after a generous timeout).
async fn wait_for_answers(answered: &std::sync::atomic::AtomicU64, count: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while answered.load(std::sync::atomic::Ordering::Relaxed) < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the bystander stopped getting answers"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Back-pressure: a client that stops reading in the middle of a large answer
/// holds up only itself. The proxy's socket to it fills and the proxy waits
/// for room; meanwhile another client is served, and once the first reads
/// again it gets every row, in order, then ReadyForQuery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gets_every_row_later() {
    const ROWS: usize = 20_000;
    const WIDTH: usize = 1000;
    let users = TRUSTED_USER;
    let (_c, proxy) = start(ClusterSpec::new(1, 0), "", users);
    let mut slow = raw_login(proxy.port).s;
    // About 20 MB of rows: far more than the socket buffers between them hold.
    let sql = format!("SELECT i, repeat('x', {WIDTH}) FROM generate_series(1, {ROWS}) i");
    slow.write_all(&query_msg(&sql)).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let other = connect(&proxy.app()).await;
    for n in 0..20i64 {
        let row = other.query_one("SELECT $1::int8 + 1", &[&n]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), n + 1);
    }

    let rows = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut pos = 0;
        let mut rows = 0usize;
        loop {
            while buf.len() >= pos + 5 {
                let len = i32::from_be_bytes(buf[pos + 1..pos + 5].try_into().unwrap()) as usize;
                if buf.len() < pos + 1 + len {
                    break;
                }
                let (tag, body) = (buf[pos], &buf[pos + 5..pos + 1 + len]);
                pos += 1 + len;
                match tag {
                    b'D' => {
                        rows += 1;
                        assert_eq!(i16::from_be_bytes([body[0], body[1]]), 2);
                        let n = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
                        let i: usize = std::str::from_utf8(&body[6..6 + n])
                            .unwrap()
                            .parse()
                            .unwrap();
                        assert_eq!(i, rows, "rows out of order");
                        let w = i32::from_be_bytes(body[6 + n..10 + n].try_into().unwrap());
                        assert_eq!(w as usize, WIDTH);
                    }
                    b'E' => panic!("error: {}", String::from_utf8_lossy(body)),
                    b'Z' => return rows,
                    _ => {}
                }
            }
            let n = slow.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed after {rows} rows");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap();
    assert_eq!(rows, ROWS);
}

/// Item 9: Malformed input gets 08P01 and a closed connection; other clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_without_harming_others() {
    let users = TRUSTED_USER;
    let (_c, proxy) = start(ClusterSpec::new(1, 0), "max_message_size = 65536", users);
    let port = proxy.port;
    let bystander = connect(&proxy.app()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop2, answered2) = (stop.clone(), answered.clone());
    let load = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let v: i64 = bystander
                .query_one("SELECT $1::int8 * 2", &[&(n as i64)])
                .await?
                .get(0);
            assert_eq!(v, 2 * n as i64);
            n += 1;
            answered2.store(n, std::sync::atomic::Ordering::Relaxed);
        }
        Ok::<u64, tokio_postgres::Error>(n)
    });
    // The bystander is running queries before the bad input starts ...
    wait_for_answers(&answered, 10).await;

    let cases: Vec<(&'static str, bool, Vec<u8>)> = vec![
        (
            "garbage before startup",
            false,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "TLS hello without SSLRequest",
            false,
            vec![0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3, 0x42],
        ),
        ("length over max_message_size", true, {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&(1_000_000i32).to_be_bytes());
            m.extend_from_slice(b"SELECT 1");
            m
        }),
        ("unknown message type", true, vec![0x01, 0, 0, 0, 4]),
        ("query without NUL", true, {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&12i32.to_be_bytes());
            m.extend_from_slice(b"SELECT 1");
            m
        }),
        ("bind overrunning its length", true, {
            let mut body = Vec::new();
            body.extend_from_slice(b"\0\0");
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&1i16.to_be_bytes());
            body.extend_from_slice(&1000i32.to_be_bytes());
            body.extend_from_slice(b"abc");
            body.extend_from_slice(&0i16.to_be_bytes());
            let mut m = vec![b'B'];
            m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            m.extend_from_slice(&body);
            m
        }),
        ("negative length", true, vec![b'Q', 0xff, 0xff, 0xff, 0xf0]),
    ];
    // Blocking sockets: off the runtime's worker threads, so the bystander keeps running.
    tokio::task::spawn_blocking(move || send_bad_input(port, cases))
        .await
        .unwrap();
    // ... and keeps getting answers after it.
    let before = answered.load(std::sync::atomic::Ordering::Relaxed);
    wait_for_answers(&answered, before + 10).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = load.await.unwrap().expect("bystander saw no error");
    assert!(n > before);
    assert!(
        !proxy.log_text().contains("panicked"),
        "{}",
        proxy.log_tail()
    );
    connect(&proxy.app())
        .await
        .simple_query("SELECT 1")
        .await
        .unwrap();
}

/// Item 10: SIGTERM: the open transaction finishes, new connections are refused,
/// the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_transactions_finish() {
    let (c, mut proxy) = start(ClusterSpec::new(1, 0), "shutdown_timeout = \"20s\"", "");
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE t10 (id int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO t10 VALUES (1)")
        .await
        .unwrap();
    proxy.terminate();
    let port = proxy.port;
    let refused = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", port)).is_err()
        })
    })
    .await
    .unwrap();
    assert!(refused, "new connections still accepted after SIGTERM");
    assert!(proxy.is_running(), "exited while a transaction was open");
    client
        .batch_execute("INSERT INTO t10 VALUES (2); COMMIT")
        .await
        .expect("open transaction completes");
    let status = tokio::task::spawn_blocking(move || {
        let s = proxy.wait_exit(Duration::from_secs(15));
        (s, proxy)
    })
    .await
    .unwrap();
    let (status, proxy) = status;
    let status = status.unwrap_or_else(|| panic!("did not exit:\n{}", proxy.log_tail()));
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        primary(&c).psql("app", "SELECT count(*) FROM t10").unwrap(),
        "2"
    );
}
