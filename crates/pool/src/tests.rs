//! The pool against a real Postgres: waiting clients served in order, a
//! client that stops waiting loses no slot, timeouts, broken connections.

use std::sync::Arc;
use std::time::Duration;

use shardgate_harness::{Cluster, ClusterSpec};
use tokio::sync::mpsc;

use crate::{ConnectParams, Pool, PoolConfig, PoolError, PoolKey, PoolStats};

const LONG: Duration = Duration::from_secs(60);

fn cluster() -> Cluster {
    Cluster::start(ClusterSpec::new(1, 0).hba("host all all 127.0.0.1/32 trust"))
        .expect("start cluster")
}

fn pool(cluster: &Cluster, size: usize, wait: Duration) -> Pool {
    let addr = cluster.shard(0).primary.addr();
    Pool::new(
        PoolKey {
            addr: addr.clone(),
            user: "postgres".into(),
            database: "postgres".into(),
        },
        ConnectParams {
            addr: Arc::from(addr),
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            connect_timeout: Duration::from_secs(10),
            prepared_capacity: 10,
            tls: Arc::new(crate::ServerTls::disabled()),
        },
        PoolConfig {
            max_size: size,
            checkout_timeout: wait,
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
        },
    )
}

/// Yields until `pool` has `n` clients waiting.
async fn until_waiting(pool: &Pool, n: u64) {
    tokio::time::timeout(LONG, async {
        while pool.stats().waiting != n {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected {n} waiting: {:?}", pool.stats()));
}

/// A client queued behind the others that reports, in `order`, when it got
/// its connection and releases it at once.
fn queue(pool: &Pool, name: &'static str, order: &mpsc::UnboundedSender<&'static str>) {
    let (pool, order) = (pool.clone(), order.clone());
    tokio::spawn(async move {
        let conn = pool.get().await.expect("queued client served");
        order.send(name).expect("test listens");
        drop(conn);
    });
}

async fn served(order: &mut mpsc::UnboundedReceiver<&'static str>) -> Vec<&'static str> {
    let mut names = Vec::new();
    while names.len() < 2 {
        let name = tokio::time::timeout(LONG, order.recv()).await;
        names.push(name.expect("served in time").expect("sender alive"));
    }
    names
}

fn settled(pool: &Pool) -> PoolStats {
    let stats = pool.stats();
    assert_eq!(
        (stats.open, stats.idle, stats.waiting),
        (1, 1, 0),
        "{stats:?}"
    );
    stats
}

/// Queues, in this order, a client that will be told to leave and two that
/// report in `order` when they are served; returns the first one's task.
async fn queue_three(
    pool: &Pool,
    names: [&'static str; 2],
    order: &mpsc::UnboundedSender<&'static str>,
) -> tokio::task::JoinHandle<Result<(), PoolError>> {
    let leaver = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    until_waiting(pool, 1).await;
    queue(pool, names[0], order);
    until_waiting(pool, 2).await;
    queue(pool, names[1], order);
    until_waiting(pool, 3).await;
    leaver
}

#[tokio::test]
async fn waiters_are_served_in_order_and_one_that_leaves_loses_no_slot() {
    let c = cluster();
    let pool = pool(&c, 1, LONG);
    let (tx, mut rx) = mpsc::unbounded_channel();

    // The first waiter leaves while still queued.
    let held = pool.get().await.expect("first connection");
    let leaver = queue_three(&pool, ["second", "third"], &tx).await;
    leaver.abort();
    until_waiting(&pool, 2).await;
    drop(held);
    assert_eq!(served(&mut rx).await, ["second", "third"]);
    settled(&pool);

    // The first waiter is handed the connection and leaves before it runs
    // (this runtime has one thread: the abort comes first).
    let held = pool.get().await.expect("connection again");
    let leaver = queue_three(&pool, ["fourth", "fifth"], &tx).await;
    drop(held);
    leaver.abort();
    assert_eq!(served(&mut rx).await, ["fourth", "fifth"]);
    let stats = settled(&pool);
    assert_eq!(stats.timeouts, 0);
}

#[tokio::test]
async fn a_wait_past_the_timeout_fails_and_the_pool_recovers() {
    let c = cluster();
    let pool = pool(&c, 1, Duration::from_millis(200));
    let held = pool.get().await.expect("first connection");
    match pool.get().await {
        Err(PoolError::Timeout {
            size, timeout_ms, ..
        }) => assert_eq!((size, timeout_ms), (1, 200)),
        Err(e) => panic!("expected a timeout, got {e}"),
        Ok(_) => panic!("expected a timeout, got a second connection of a pool of one"),
    }
    drop(held);
    let again = pool.get().await.expect("free again");
    drop(again);
    let stats = settled(&pool);
    assert_eq!(stats.timeouts, 1);
}

/// Queues a client that reports how long it waited and how the wait ended.
fn timed_wait(pool: &Pool) -> tokio::task::JoinHandle<(Duration, Result<(), String>)> {
    let pool = pool.clone();
    tokio::spawn(async move {
        let start = std::time::Instant::now();
        let result = pool.get().await.map(drop).map_err(|e| e.to_string());
        (start.elapsed(), result)
    })
}

#[tokio::test]
async fn each_waiter_gets_its_own_full_timeout_also_after_the_queue_emptied() {
    let c = cluster();
    let wait = Duration::from_millis(300);
    let pool = pool(&c, 1, wait);
    let held = pool.get().await.expect("first connection");

    // Three clients queue 100 ms apart: each waits its own full timeout,
    // not the first one's.
    let mut waiters = Vec::new();
    for _ in 0..3 {
        waiters.push(timed_wait(&pool));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in waiters {
        let (waited, result) = tokio::time::timeout(LONG, w)
            .await
            .expect("the wait ended")
            .expect("task finished");
        assert!(result.is_err(), "a pool of one, held: expected a timeout");
        assert!(
            waited >= wait,
            "timed out after {waited:?}, before {wait:?}"
        );
    }
    // Nobody waits now; a client queuing later times out all the same.
    let (waited, result) = tokio::time::timeout(LONG, timed_wait(&pool))
        .await
        .expect("the wait ended")
        .expect("task finished");
    assert!(result.is_err() && waited >= wait, "{waited:?} {result:?}");

    // A client served before its deadline is not timed out by the sweep of
    // one queued before it.
    let early = timed_wait(&pool);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = timed_wait(&pool);
    until_waiting(&pool, 2).await;
    let (_, early_result) = tokio::time::timeout(LONG, early)
        .await
        .expect("the wait ended")
        .expect("task finished");
    assert!(early_result.is_err(), "the first waiter times out");
    drop(held);
    let (_, late_result) = late.await.expect("task finished");
    assert_eq!(late_result, Ok(()), "the second waiter gets the freed slot");
    assert_eq!(settled(&pool).timeouts, 5);
}

#[tokio::test]
async fn a_broken_connection_is_closed_and_its_slot_opens_a_new_one() {
    let c = cluster();
    let pool = pool(&c, 1, LONG);
    let mut held = pool.get().await.expect("first connection");
    let first_backend = held.backend_key;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move {
            let conn = pool.get().await.expect("waiter served");
            tx.send(conn.backend_key).expect("test listens");
        }
    });
    until_waiting(&pool, 1).await;
    held.broken = true;
    drop(held);
    let second_backend = tokio::time::timeout(LONG, rx.recv())
        .await
        .expect("served in time")
        .expect("sender alive");
    waiter.await.expect("waiter finished");
    assert_ne!(
        first_backend, second_backend,
        "the broken connection was reused"
    );
    settled(&pool);
}
