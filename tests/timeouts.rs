//! Timeouts and per-user limits of `[proxy]` against a real Postgres:
//! `auth_timeout`, `client_idle_timeout`, `idle_transaction_timeout`,
//! `query_timeout`, `max_connections_per_user`.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use shardgate_harness::ClusterSpec;
use support::*;

/// Waits for the proxy to close a connection the client keeps silent;
/// returns how long it took.
fn closed_within(mut s: TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_per_user_limits() {
    let c = cluster(ClusterSpec::new(1, 0));
    let port = free_port();
    let extra = "auth_timeout = \"1s\"\nclient_idle_timeout = \"1500ms\"\nidle_transaction_timeout = \"1500ms\"\nquery_timeout = \"1s\"\nmax_connections_per_user = 3";
    let proxy = Proxy::start(c.dir(), port, &config(&c, port, extra, ""));
    let primary = &c.shard(0).primary;

    // auth_timeout: a client that connects and says nothing is closed.
    let silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let took = closed_within(silent, Duration::from_secs(30));
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");

    // query_timeout: the statement is cancelled at the server (57014), the
    // session goes on.
    let client = connect(&proxy.app()).await;
    let start = Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("cancelled by query_timeout");
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let one = client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(simple_values(&one), vec!["1".to_owned()]);

    // idle_transaction_timeout: a client idle in a transaction is
    // disconnected (25P03), its transaction rolled back, its server
    // connection freed.
    client
        .batch_execute("CREATE TABLE tt (k int)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO tt VALUES (1)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let err = client
        .simple_query("COMMIT")
        .await
        .expect_err("disconnected in the transaction");
    assert!(client.is_closed(), "{err:?}");
    let other = connect(&proxy.app()).await;
    let n = other.simple_query("SELECT count(*) FROM tt").await.unwrap();
    assert_eq!(simple_values(&n), vec!["0".to_owned()]);
    let stuck = primary
        .psql(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
        )
        .unwrap();
    assert_eq!(stuck.trim(), "0");

    // client_idle_timeout: an idle client is disconnected (57P05).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(other.simple_query("SELECT 1").await.is_err());
    assert!(other.is_closed());

    // max_connections_per_user: the fourth connection of one user is refused.
    let held = [
        connect(&proxy.app()).await,
        connect(&proxy.app()).await,
        connect(&proxy.app()).await,
    ];
    let refused = tokio_postgres::connect(&proxy.app(), tokio_postgres::NoTls)
        .await
        .map(|_| ())
        .expect_err("a fourth connection of app");
    assert_eq!(sqlstate(&refused).as_deref(), Some("53300"), "{refused:?}");
    for h in &held {
        let one = h.simple_query("SELECT 1").await.unwrap();
        assert_eq!(simple_values(&one), vec!["1".to_owned()]);
    }
    let log = proxy.log_text();
    assert!(log.contains("auth_timeout"), "{log}");
    assert!(log.contains("query_timeout"), "{log}");
}

fn simple_values(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// `query_timeout` of a statement that runs on several shards: every shard
/// still answering is cancelled, the client gets `57014`, the session and
/// the shards' connections go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_every_shard() {
    let c = cluster(ClusterSpec::new(2, 0));
    let port = free_port();
    let sharded = "\n[sharding]\ndefault_shard = 0\n\n[[sharded_tables]]\ntable = \"items\"\ncolumn = \"id\"\nfunction = \"hash\"\nkey_type = \"bigint\"\n";
    let proxy = Proxy::start(
        c.dir(),
        port,
        &config(&c, port, "query_timeout = \"1s\"", sharded),
    );
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE items (id bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    let values: Vec<String> = (1..=20).map(|i| format!("({i}, {i})")).collect();
    client
        .batch_execute(&format!("INSERT INTO items VALUES {}", values.join(", ")))
        .await
        .unwrap();
    for sql in [
        // Merged (aggregate) and concatenated reads over both shards.
        "SELECT count(*) FROM items WHERE pg_sleep(0.5) IS NOT NULL",
        "SELECT id FROM items WHERE pg_sleep(0.5) IS NOT NULL",
    ] {
        let start = Instant::now();
        let err = client
            .simple_query(sql)
            .await
            .expect_err("cancelled by query_timeout");
        assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{sql}: {err:?}");
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{sql}: {:?}",
            start.elapsed()
        );
        let n = client
            .simple_query("SELECT count(*) FROM items")
            .await
            .unwrap();
        assert_eq!(simple_values(&n), vec!["20".to_owned()]);
    }
}
