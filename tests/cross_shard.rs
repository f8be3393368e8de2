//! Cross-shard queries on three shards (each a primary): parallel fan-out,
//! one error and cancellation of the other shards, two-phase commit with
//! failpoints and recovery, TPC-B over sharded tables with two-phase commit,
//! ORDER BY streaming in bounded memory, LIMIT stopping shard work early.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shardgate_harness::{Cluster, ClusterSpec};
use support::*;
use tokio_postgres::types::ToSql;
use tokio_postgres::SimpleQueryMessage;

const LONG: Duration = Duration::from_secs(600);

/// Rows of the `big` table (tests 5 and 6) live at `id = shard * BIG_SPAN + k`.
const BIG_SPAN: i64 = 1_000_000;

/// Users besides `app`, the shard map, routing. `raw` logs in without a
/// password so the raw protocol client needs no SCRAM.
const EXTRA: &str = concat!(
    r#"
[[users]]
name = "raw"
auth = "trust"
server_user = "app"
server_password = "secret"

[routing]
default_consistency = "strong"

[sharding]
default_shard = 0

[[sharded_tables]]
table = "one_row"
column = "k"
function = "range"
ranges = [{ shard = 0, start = 0, end = 1000 }, { shard = 1, start = 1000, end = 2000 }, { shard = 2, start = 2000, end = 3000 }]

[[sharded_tables]]
table = "t"
column = "k"
function = "range"
ranges = [{ shard = 0, start = 0, end = 1000 }, { shard = 1, start = 1000, end = 2000 }, { shard = 2, start = 2000, end = 3000 }]

[[sharded_tables]]
table = "acct"
column = "k"
function = "range"
ranges = [{ shard = 0, start = 0, end = 1000 }, { shard = 1, start = 1000, end = 2000 }, { shard = 2, start = 2000, end = 3000 }]

[[sharded_tables]]
table = "big"
column = "id"
function = "range"
ranges = [{ shard = 0, start = 0, end = 1000000 }, { shard = 1, start = 1000000, end = 2000000 }, { shard = 2, start = 2000000, end = 3000000 }]
"#,
    pgbench_sharded_tables!(),
    r#""#
);

/// A 3-shard cluster (primaries only) and the text of a proxy configuration.
struct Env {
    c: Cluster,
    port: u16,
    text: String,
}

fn env(proxy_extra: &str) -> Env {
    let c = cluster(ClusterSpec::new(3, 0));
    let port = free_port();
    let proxy_extra = format!("pool_size = 20\n{proxy_extra}");
    let text = config(&c, port, &proxy_extra, EXTRA);
    Env { c, port, text }
}

impl Env {
    fn start(&self) -> Proxy {
        Proxy::start(self.c.dir(), self.port, &self.text)
    }
}

/// `[proxy]` lines enabling two-phase commit with its log in the cluster directory.
fn two_phase_extra(c_dir: &std::path::Path) -> (String, std::path::PathBuf) {
    let log = c_dir.join("shardgate-2pc.log");
    (
        format!(
            "two_phase_commit = true\ntwo_phase_log = {:?}",
            log.display().to_string()
        ),
        log,
    )
}

/// Statements matching `pattern` (ILIKE) still active on each shard.
fn active_on_shards(c: &Cluster, pattern: &str) -> Vec<i64> {
    per_shard_n(
        c,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND pid <> pg_backend_pid() AND query ILIKE '{pattern}'"
        ),
    )
}

/// Fails a hung future after `LONG`.
async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LONG, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {LONG:?}"))
}

fn simple_rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect()
}

/// Item 1: the shards of a cross-shard query work at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_runs_shards_in_parallel() {
    let env = env("");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE one_row (k bigint PRIMARY KEY)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO one_row VALUES (1), (1001), (2001)")
        .await
        .unwrap();
    assert_eq!(
        per_shard(&env.c, "SELECT k FROM one_row"),
        vec![vec!["1"], vec!["1001"], vec!["2001"]],
        "exactly one row on each shard"
    );
    // Warm up: a server connection to every shard, both protocols.
    let warm = client.simple_query("SELECT k FROM one_row WHERE k >= 0");
    assert_eq!(simple_rows(&warm.await.unwrap()).len(), 3);
    let warm = client.query("SELECT k FROM one_row WHERE k >= $1", &[&0i64]);
    assert_eq!(warm.await.unwrap().len(), 3);

    // A key range spanning every shard, then no key at all (every shard).
    for filter in ["WHERE k >= 0", ""] {
        let sql = format!("SELECT k, pg_sleep(1) FROM one_row {filter}");
        let start = Instant::now();
        let msgs = within(&sql, client.simple_query(&sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error()));
        let simple = start.elapsed();
        let mut keys: Vec<String> = simple_rows(&msgs)
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        keys.sort();
        assert_eq!(keys, ["1", "1001", "2001"], "{sql}");

        let sql = sql.replace(">= 0", ">= $1");
        let params: Vec<&(dyn ToSql + Sync)> = if filter.is_empty() {
            vec![]
        } else {
            vec![&0i64]
        };
        let start = Instant::now();
        let rows = within(&sql, client.query(&sql, &params))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error()));
        let extended = start.elapsed();
        let mut keys: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        keys.sort();
        assert_eq!(keys, [1, 1001, 2001], "{sql}");
        println!("{sql}: 1 s on each of 3 shards: simple {simple:?}, extended {extended:?}");
        assert!(
            simple < Duration::from_millis(1600),
            "{sql} simple: {simple:?}"
        );
        assert!(
            extended < Duration::from_millis(1600),
            "{sql} extended: {extended:?}"
        );
    }
}

/// Item 2: one shard fails; the client gets that one error, the other
/// shards stop working on the query, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_shard_reports_one_error_and_cancels_others() {
    let env = env("");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE t (k bigint PRIMARY KEY, v int)")
        .await
        .unwrap();
    // v = 0 only on shard 1 (the middle one): it fails after 0.5 s, while
    // shards 0 and 2 sleep 30 s before answering.
    client
        .batch_execute("INSERT INTO t VALUES (1, 1), (1001, 0), (2001, 2)")
        .await
        .unwrap();
    assert_eq!(per_shard_n(&env.c, "SELECT count(*) FROM t"), [1, 1, 1]);
    // The key range covers every shard (fan-out as it works today); the
    // same query without any key is checked at the end.
    const FAILING_ALL: &str = "SELECT k, 1 / (v + length(pg_sleep(CASE WHEN v = 0 THEN 0.5 ELSE 30 END)::text)) AS r FROM t";
    const FAILING: &str = "SELECT k, 1 / (v + length(pg_sleep(CASE WHEN v = 0 THEN 0.5 ELSE 30 END)::text)) AS r FROM t WHERE k >= 0";
    const PATTERN: &str = "%pg_sleep(CASE WHEN v = 0%";
    let quiet = |what: &str| {
        let mut last = Vec::new();
        let ok = eventually(Duration::from_secs(5), || {
            last = active_on_shards(&env.c, PATTERN);
            last.iter().all(|&n| n == 0)
        });
        assert!(
            ok,
            "{what}: the failed query still runs on the shards {last:?}"
        );
    };

    let port = env.port;
    let mut raw = tokio::task::spawn_blocking(move || Raw::connect(port, "raw", "app"))
        .await
        .unwrap();
    // Simple protocol, autocommit.
    let (mut raw, msgs) = tokio::task::spawn_blocking(move || {
        let m = raw.query(FAILING);
        (raw, m)
    })
    .await
    .unwrap();
    let tags: Vec<char> = msgs.iter().map(|m| m.0 as char).collect();
    assert_eq!(errors(&msgs), ["22012"], "messages {tags:?}");
    assert_eq!(data_rows(&msgs), 0, "messages {tags:?}");
    assert_eq!(status(&msgs), b'I');
    quiet("simple protocol");
    raw = tokio::task::spawn_blocking(move || {
        let m = raw_ok(&mut raw, "SELECT k, v FROM t WHERE k >= 0");
        assert_eq!(data_rows(&m), 3);
        let m = raw_ok(&mut raw, "SELECT v FROM t WHERE k = 1001");
        assert_eq!(data_rows(&m), 1);
        let m = raw_ok(&mut raw, "SELECT k, pg_sleep(0.1) FROM t WHERE k >= 0");
        assert_eq!(data_rows(&m), 3);
        raw
    })
    .await
    .unwrap();

    // Extended protocol (tokio-postgres).
    let err = within("extended", client.query(FAILING, &[]))
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err:?}");
    quiet("extended protocol");
    assert_eq!(
        client
            .query("SELECT k FROM t WHERE k >= $1", &[&0i64])
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        client
            .query("SELECT k FROM t WHERE k = $1", &[&2001i64])
            .await
            .unwrap()
            .len(),
        1
    );

    // Inside a transaction: the error aborts it, ROLLBACK ends it, the next
    // transaction works.
    raw = tokio::task::spawn_blocking(move || {
        assert_eq!(status(&raw_ok(&mut raw, "BEGIN")), b'T');
        raw_ok(&mut raw, "INSERT INTO t VALUES (5, 5)");
        let msgs = raw.query(FAILING);
        let tags: Vec<char> = msgs.iter().map(|m| m.0 as char).collect();
        assert_eq!(errors(&msgs), ["22012"], "messages {tags:?}");
        assert_eq!(status(&msgs), b'E');
        let msgs = raw.query("SELECT k FROM t WHERE k >= 0");
        assert_eq!(errors(&msgs), ["25P02"]);
        assert_eq!(status(&msgs), b'E');
        let msgs = raw_ok(&mut raw, "ROLLBACK");
        assert_eq!(status(&msgs), b'I');
        raw
    })
    .await
    .unwrap();
    quiet("inside a transaction");
    assert_eq!(
        per_shard_n(&env.c, "SELECT count(*) FROM t WHERE k = 5"),
        [0, 0, 0]
    );
    tokio::task::spawn_blocking(move || {
        raw_ok(&mut raw, "BEGIN");
        raw_ok(&mut raw, "INSERT INTO t VALUES (6, 6)");
        assert_eq!(
            data_rows(&raw_ok(&mut raw, "SELECT k, v FROM t WHERE k >= 0")),
            4
        );
        let msgs = raw_ok(&mut raw, "COMMIT");
        assert_eq!(status(&msgs), b'I');
    })
    .await
    .unwrap();
    assert_eq!(
        per_shard_n(&env.c, "SELECT count(*) FROM t WHERE k = 6"),
        [1, 0, 0]
    );

    // The same in the extended protocol.
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let err = within("extended in a transaction", tx.query(FAILING, &[]))
        .await
        .expect_err("division by zero");
    assert_eq!(sqlstate(&err).as_deref(), Some("22012"), "{err:?}");
    let err = tx
        .query("SELECT k FROM t WHERE k >= $1", &[&0i64])
        .await
        .expect_err("aborted");
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err:?}");
    tx.rollback().await.unwrap();
    quiet("extended protocol inside a transaction");
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES ($1, 7)", &[&7i64])
        .await
        .unwrap();
    assert_eq!(
        tx.query("SELECT k FROM t WHERE k >= $1", &[&0i64])
            .await
            .unwrap()
            .len(),
        5
    );
    tx.commit().await.unwrap();
    assert_eq!(per_shard_n(&env.c, "SELECT count(*) FROM t"), [3, 1, 1]);

    // Without any shard key: the same on every shard.
    let port = env.port;
    let msgs = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::connect(port, "raw", "app");
        let msgs = raw.query(FAILING_ALL);
        let after = raw.query("SELECT k, v FROM t");
        (msgs, after)
    })
    .await
    .unwrap();
    let tags: Vec<char> = msgs.0.iter().map(|m| m.0 as char).collect();
    let texts: Vec<String> = msgs
        .0
        .iter()
        .filter(|m| m.0 == b'E')
        .map(|m| error_text(&m.1))
        .collect();
    assert_eq!(errors(&msgs.0), ["22012"], "messages {tags:?} {texts:?}");
    quiet("no shard key");
    assert_eq!(errors(&msgs.1), Vec::<String>::new());
    assert_eq!(data_rows(&msgs.1), 5);
}

/// Item 3: the proxy dies between PREPARE and COMMIT PREPARED; at its next
/// start it finishes every in-doubt transaction as the decision log says.
async fn two_phase_commit_failpoint(failpoint: &str, committed: bool) {
    let c = cluster(ClusterSpec::new(3, 0));
    let (extra, log) = two_phase_extra(c.dir());
    let port = free_port();
    let text = config(&c, port, &format!("pool_size = 20\n{extra}"), EXTRA);
    // Created on each shard directly: DDL through the proxy would itself
    // commit with two-phase commit and hit the failpoint.
    for s in c.shards() {
        s.primary
            .psql("app", "CREATE TABLE acct (k bigint PRIMARY KEY, v text)")
            .unwrap();
    }
    let mut proxy =
        Proxy::start_with_env(c.dir(), port, &text, &[("SHARDGATE_FAILPOINT", failpoint)]);
    let client = connect(&proxy.app()).await;
    client.batch_execute("BEGIN").await.unwrap();
    for k in [1i64, 1001, 2001] {
        client
            .execute("INSERT INTO acct VALUES ($1, 'x')", &[&k])
            .await
            .unwrap();
    }
    let res = within("COMMIT", client.batch_execute("COMMIT")).await;
    assert!(res.is_err(), "COMMIT succeeded although the proxy died");
    let exit = proxy
        .wait_exit(Duration::from_secs(30))
        .expect("the proxy dies at the failpoint");
    assert!(!exit.success(), "{exit}");
    assert!(
        proxy.log_text().contains("failpoint reached"),
        "{}",
        proxy.log_tail()
    );
    drop(client);

    let prepared = "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'shardgate%'";
    assert_eq!(
        per_shard_n(&c, prepared),
        [1, 1, 1],
        "an in-doubt transaction on every shard"
    );
    assert_eq!(per_shard_n(&c, "SELECT count(*) FROM acct"), [0, 0, 0]);
    let decisions = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        decisions.lines().any(|l| l.starts_with("commit ")),
        committed,
        "decision log:\n{decisions}"
    );

    // Restart without the failpoint, same decision log.
    let proxy = Proxy::start(c.dir(), port, &text);
    let mut last = Vec::new();
    let resolved = eventually(Duration::from_secs(60), || {
        last = per_shard_n(&c, prepared);
        last.iter().all(|&n| n == 0)
    });
    assert!(
        resolved,
        "prepared transactions left after restart: {last:?}\n{}",
        proxy.log_tail()
    );
    let want = if committed { 1 } else { 0 };
    assert_eq!(
        per_shard_n(&c, "SELECT count(*) FROM acct"),
        [want, want, want]
    );
    // Through the restarted proxy too, and new transactions work.
    let client = connect(&proxy.app()).await;
    let rows = client
        .query("SELECT k FROM acct WHERE k >= $1", &[&0i64])
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, 3 * want);
    client.batch_execute("BEGIN").await.unwrap();
    for k in [2i64, 1002, 2002] {
        client
            .execute("INSERT INTO acct VALUES ($1, 'y')", &[&k])
            .await
            .unwrap();
    }
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        per_shard_n(&c, "SELECT count(*) FROM acct WHERE v = 'y'"),
        [1, 1, 1]
    );
    assert_eq!(per_shard_n(&c, prepared), [0, 0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_failpoint_after_decision() {
    two_phase_commit_failpoint("after_decision", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_failpoint_before_decision() {
    two_phase_commit_failpoint("before_decision", false).await;
}

/// Item 4: TPC-B over sharded pgbench tables, committed with two-phase commit.
#[test]
fn sharded_tpcb_with_two_phase_commit() {
    let c = cluster(ClusterSpec::new(3, 0));
    let (extra, log) = two_phase_extra(c.dir());
    let port = free_port();
    let text = config(&c, port, &format!("pool_size = 20\n{extra}"), EXTRA);
    let proxy = Proxy::start(c.dir(), port, &text);
    let ci = proxy.app();
    let init = run(pgbench(&ci).args(["-i", "-s", "3", "-q"]).command(), LONG);
    assert_success(&init, "pgbench -i through the proxy");
    let accounts: i64 = per_shard_n(&c, "SELECT count(*) FROM pgbench_accounts")
        .iter()
        .sum();
    assert_eq!(accounts, 300_000);
    let out = run(
        pgbench(&ci)
            .args(["-M", "prepared", "-c", "16", "-j", "2", "-T", "30", "-n"])
            .command(),
        LONG,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_success(&out, "pgbench TPC-B");
    assert!(
        stdout.contains("number of failed transactions: 0 (0.000%)"),
        "pgbench:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = |sql: &str| -> i64 { per_shard_n(&c, sql).iter().sum() };
    let a = sum("SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts");
    let h = sum("SELECT coalesce(sum(delta), 0) FROM pgbench_history");
    let b = sum("SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches");
    let t = sum("SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers");
    println!("sum(abalance) = {a}, sum(delta) = {h}, sum(bbalance) = {b}, sum(tbalance) = {t}");
    assert!(h != 0, "TPC-B did not run");
    assert_eq!((a, b, t), (h, h, h));
    // Two-phase commit was really used: decisions were logged and finished,
    // and nothing is left prepared.
    let decisions = std::fs::read_to_string(&log).unwrap_or_default();
    let commits = decisions
        .lines()
        .filter(|l| l.starts_with("commit "))
        .count();
    let done = decisions.lines().filter(|l| l.starts_with("done ")).count();
    println!("two-phase commits: {commits} decided, {done} finished");
    assert!(commits > 0, "no transaction used two-phase commit");
    assert_eq!(commits, done, "decisions not finished");
    assert_eq!(
        per_shard_n(&c, "SELECT count(*) FROM pg_prepared_xacts"),
        [0, 0, 0]
    );
}

/// Creates `big` through the proxy and loads `rows` rows directly on the
/// shards: `k` runs over `0..rows`, interleaved (`k % 3` is the shard), so a
/// merge on `k` takes rows from every shard in turn.
async fn load_big(c: &Cluster, client: &tokio_postgres::Client, rows: i64) {
    client
        .batch_execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, k bigint NOT NULL, pad text NOT NULL)",
        )
        .await
        .unwrap();
    client
        .batch_execute("CREATE INDEX big_k ON big (k)")
        .await
        .unwrap();
    for (s, shard) in c.shards().iter().enumerate() {
        shard
            .primary
            .psql(
                "app",
                &format!(
                    "INSERT INTO big SELECT {s} * {BIG_SPAN} + g, g, repeat('x', 100) \
                     FROM generate_series({s}, {}, 3) g; ANALYZE big",
                    rows - 1
                ),
            )
            .unwrap();
    }
    let total: i64 = per_shard_n(c, "SELECT count(*) FROM big").iter().sum();
    assert_eq!(total, rows);
}

/// Item 5: a merged ORDER BY over a million rows streams: little memory in
/// the proxy, the first row before the shards are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_streams_in_bounded_memory() {
    const ROWS: i64 = 1_000_000;
    let env = env("");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    load_big(&env.c, &client, ROWS).await;
    // Warm up: a connection to every shard.
    let warm = client
        .simple_query("SELECT id FROM big WHERE id IN (0, 1000001, 2000002)")
        .await;
    assert_eq!(simple_rows(&warm.unwrap()).len(), 3);

    let pid = proxy.pid();
    let base = rss_kb(pid);
    let rss = RssPeak::start(pid);

    let start = Instant::now();
    let no_params: [&(dyn ToSql + Sync); 0] = [];
    let stream = within(
        "ORDER BY",
        client.query_raw("SELECT * FROM big ORDER BY k", no_params),
    )
    .await
    .unwrap_or_else(|e| panic!("SELECT * FROM big ORDER BY k: {e} {:?}", e.as_db_error()));
    let mut stream = std::pin::pin!(stream);
    let first = within("first row", stream.next())
        .await
        .expect("a first row")
        .unwrap();
    let to_first = start.elapsed();
    assert_eq!(first.get::<_, i64>("k"), 0);
    // The client holds the first row: every shard is still sending.
    let c = &env.c;
    let active = active_on_shards(c, "%FROM big%ORDER BY%");
    assert!(
        active.iter().all(|&n| n > 0),
        "a shard finished before the client read past its first row: {active:?}"
    );
    let next = within("all rows", async {
        let mut next = 1i64;
        while let Some(row) = stream.next().await {
            let row = row.unwrap();
            let k: i64 = row.get("k");
            assert_eq!(k, next, "rows out of order");
            assert_eq!(row.get::<_, i64>("id"), (k % 3) * BIG_SPAN + k);
            next += 1;
        }
        next
    })
    .await;
    let total = start.elapsed();
    let grew = rss.stop();
    assert_eq!(next, ROWS, "row count");
    println!(
        "first row after {to_first:?}, all {ROWS} rows after {total:?}; proxy RSS {base} kB, +{grew} kB at most"
    );
    assert!(grew < 50 * 1024, "the proxy's RSS grew by {grew} kB");
    // The connection is fine afterwards.
    let rows = client
        .query("SELECT k FROM big WHERE id = $1", &[&(BIG_SPAN + 4)])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 4);
}

/// A GROUP BY with a million groups streams (one group held at a time); a
/// final ORDER BY over an aggregate sorts the groups at the proxy, within
/// `merge_memory_limit`: beyond it `53400` naming the limit, with a LIMIT
/// only the best rows are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_by_a_million_groups_stays_in_bounded_memory() {
    const ROWS: i64 = 1_000_000;
    let env = env("merge_memory_limit = 16777216");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    load_big(&env.c, &client, ROWS).await;
    let pid = proxy.pid();
    let base = rss_kb(pid);
    let rss = RssPeak::start(pid);
    // Each k is a group of its own, on its own shard: 1M groups streamed.
    let no_params: [&(dyn ToSql + Sync); 0] = [];
    let groups = within("GROUP BY", async {
        let stream = client
            .query_raw(
                "SELECT k % 1000000 AS g, count(*), sum(id) - sum(id) FROM big GROUP BY 1 ORDER BY 1",
                no_params,
            )
            .await
            .unwrap();
        let mut stream = std::pin::pin!(stream);
        let mut next = 0i64;
        while let Some(row) = stream.next().await {
            let row = row.unwrap();
            assert_eq!(row.get::<_, i64>(0), next);
            assert_eq!(row.get::<_, i64>(1), 1);
            next += 1;
        }
        next
    })
    .await;
    assert_eq!(groups, ROWS);
    let streamed = rss.grew();
    // Ordered by an aggregate, the groups are sorted at the proxy: 1M of
    // them do not fit in 16 MiB.
    let err = within(
        "sorted groups",
        client.simple_query("SELECT k, count(*) FROM big GROUP BY k ORDER BY count(*) DESC, k"),
    )
    .await
    .expect_err("over merge_memory_limit");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53400", "{db:?}");
    assert!(
        db.message().contains("merge_memory_limit"),
        "{}",
        db.message()
    );
    // Fifty thousand sorted groups fit, and are more than the proxy sorts
    // on its runtime thread: the sort runs on the blocking pool, and every
    // group comes back in order.
    let rows = within(
        "sorted groups off the runtime thread",
        client.query(
            "SELECT k, count(*) FROM big WHERE k < 50000 GROUP BY k ORDER BY count(*) DESC, k DESC",
            &[],
        ),
    )
    .await
    .unwrap();
    let keys: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, (0..50_000).rev().collect::<Vec<i64>>());
    // With a LIMIT only the best rows are kept.
    let rows = within(
        "top rows",
        client.query(
            "SELECT k, count(*) + k AS n FROM big GROUP BY k ORDER BY count(*) + k DESC LIMIT 3",
            &[],
        ),
    )
    .await
    .unwrap();
    let top: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(top, vec![ROWS - 1, ROWS - 2, ROWS - 3]);
    // An ordered-set aggregate holds its group's distinct values: a million
    // do not fit either.
    let err = within(
        "percentile",
        client.simple_query("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY k) FROM big"),
    )
    .await
    .expect_err("over merge_memory_limit");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53400", "{db:?}");
    assert!(db.message().contains("ordered-set"), "{}", db.message());
    // A grouped subquery under an outer query is merged, then the outer
    // query runs on one shard over its rows: 1000 groups fit (with the
    // client's parameter in the subquery), a million do not.
    let rows = within(
        "materialized subquery",
        client.query(
            "SELECT count(*), min(n), max(n) FROM (SELECT k % 1000 AS g, count(*) AS n FROM big WHERE k < $1 GROUP BY 1) s",
            &[&ROWS],
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        (
            rows[0].get::<_, i64>(0),
            rows[0].get::<_, i64>(1),
            rows[0].get::<_, i64>(2)
        ),
        (1000, ROWS / 1000, ROWS / 1000)
    );
    let err = within(
        "materialized subquery over the limit",
        client.simple_query("SELECT count(*) FROM (SELECT k, count(*) FROM big GROUP BY k) s"),
    )
    .await
    .expect_err("over merge_memory_limit");
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "53400", "{db:?}");
    assert!(db.message().contains("subquery"), "{}", db.message());
    let grew = rss.stop();
    println!(
        "{ROWS} groups: proxy RSS {base} kB, +{streamed} kB at most while streaming them, +{grew} kB at most with the sorts"
    );
    assert!(
        streamed < 50 * 1024,
        "streaming groups grew the RSS by {streamed} kB"
    );
    assert!(grew < 100 * 1024, "the sorts grew the RSS by {grew} kB");
}

/// Item 6: LIMIT over a merged ORDER BY stops the shards' work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_stops_shard_work_early() {
    // 100,000 rows a shard at 2 ms each: over 3 minutes per shard if run
    // to completion.
    const ROWS: i64 = 300_000;
    let env = env("");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    load_big(&env.c, &client, ROWS).await;
    let sql = "SELECT *, length(pg_sleep(0.002)::text) AS slow FROM big ORDER BY k LIMIT 10";
    let msgs = within("LIMIT", client.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e} {:?}", e.as_db_error()));
    let done = Instant::now();
    let rows = simple_rows(&msgs);
    let keys: Vec<String> = rows.iter().map(|r| r[1].clone().unwrap()).collect();
    let want: Vec<String> = (0..10).map(|k: i64| k.to_string()).collect();
    assert_eq!(keys, want);
    let ids: Vec<String> = rows.iter().map(|r| r[0].clone().unwrap()).collect();
    let want_ids: Vec<String> = (0..10i64)
        .map(|k| ((k % 3) * BIG_SPAN + k).to_string())
        .collect();
    assert_eq!(ids, want_ids);
    let c = &env.c;
    let mut last = Vec::new();
    let stopped = eventually(Duration::from_secs(2), || {
        last = active_on_shards(c, "%pg_sleep(0.002)%");
        last.iter().all(|&n| n == 0)
    });
    assert!(
        stopped,
        "shards still work on the query {:?} after the client got its rows: {last:?}",
        done.elapsed()
    );
    // Extended protocol too, and the connection stays usable.
    let rows = within(
        "LIMIT (extended)",
        client.query(
            "SELECT k FROM big WHERE k >= $1 ORDER BY k LIMIT 10",
            &[&100i64],
        ),
    )
    .await
    .unwrap();
    let keys: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(keys, (100..110).collect::<Vec<i64>>());
}

/// What the merge cannot compare exactly is not guessed: text keys under a
/// collation that does not order bytewise (an ICU database) and
/// user-defined aggregates (their per-shard results cannot be combined) are
/// answered by one server over the gathered rows, exactly as Postgres
/// answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collation_and_user_aggregates_are_answered_not_guessed() {
    let env = env("");
    for s in env.c.shards() {
        s.primary
            .psql(
                "postgres",
                "CREATE DATABASE icu OWNER app TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'",
            )
            .expect("create an ICU database");
    }
    let proxy = env.start();
    let client = connect(&proxy.conninfo("app", "secret", "icu")).await;
    client
        .batch_execute("CREATE TABLE t (k bigint PRIMARY KEY, name text, v int)")
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (1, 'b', 1), (1001, 'a', 2), (2001, 'B', 3)")
        .await
        .unwrap();
    // Numbers merge as usual.
    let rows = client
        .query("SELECT k FROM t ORDER BY v DESC", &[])
        .await
        .unwrap();
    let ks: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ks, vec![2001, 1001, 1]);
    // Text order under en-US is not byte order: the same statement over the
    // same rows on one server (VALUES: no sharded table) is the reference.
    let values = "(VALUES (1, 'b', 1), (1001, 'a', 2), (2001, 'B', 3)) AS t(k, name, v)";
    for sql in [
        "SELECT name FROM t ORDER BY name",
        "SELECT name, count(*) FROM t GROUP BY name ORDER BY name",
        "SELECT max(name), min(name) FROM t",
        "SELECT string_agg(name, ',' ORDER BY name) FROM t",
    ] {
        let got = simple_rows(&client.simple_query(sql).await.expect(sql));
        let one_server = sql.replace("FROM t", &format!("FROM {values}"));
        let want = simple_rows(&client.simple_query(&one_server).await.expect(sql));
        assert_eq!(got, want, "{sql}");
    }
    let sorted = simple_rows(
        &client
            .simple_query("SELECT string_agg(name, ',' ORDER BY name) FROM t")
            .await
            .unwrap(),
    );
    assert_ne!(
        sorted,
        vec![vec![Some("B,a,b".to_owned())]],
        "not byte order"
    );
    // The extended protocol too (the merge refuses once the shards describe
    // their columns, before anything is sent; then the table is gathered).
    let names: Vec<String> = client
        .query("SELECT name FROM t WHERE v > $1 ORDER BY name", &[&0i32])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<String> = simple_rows(
        &client
            .simple_query(&format!("SELECT name FROM {values} ORDER BY name"))
            .await
            .unwrap(),
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    assert_eq!(names, want);
    // A user-defined aggregate, created through the proxy on every shard.
    client
        .batch_execute("CREATE AGGREGATE my_sum(int) (sfunc = int4pl, stype = int)")
        .await
        .unwrap();
    let all = client
        .simple_query("SELECT my_sum(v) FROM t")
        .await
        .unwrap();
    assert_eq!(simple_rows(&all), vec![vec![Some("6".to_owned())]]);
    // On one shard it runs there.
    let one = client
        .simple_query("SELECT my_sum(v) FROM t WHERE k = 1001")
        .await
        .unwrap();
    assert_eq!(simple_rows(&one), vec![vec![Some("2".to_owned())]]);
}

/// Merged queries in the extended protocol: LIMIT and OFFSET as bind
/// parameters, a prepared statement executed many times with different
/// values, binary results, and a LIMIT inside a transaction (the shards are
/// drained, not cancelled, so the transaction goes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_queries_take_parameters_and_keep_transactions() {
    let env = env("");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    create_t(&client).await;
    let page = client
        .prepare("SELECT k FROM t WHERE g = $1 ORDER BY k DESC LIMIT $2 OFFSET $3")
        .await
        .unwrap();
    for (g, limit, offset) in [(0i32, 3i64, 0i64), (1, 5, 2), (6, 1, 400), (3, 0, 0)] {
        let rows = client.query(&page, &[&g, &limit, &offset]).await.unwrap();
        let got: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let want: Vec<i64> = (0..3000i64)
            .rev()
            .filter(|k| k % 7 == i64::from(g))
            .skip(offset as usize)
            .take(limit as usize)
            .collect();
        assert_eq!(got, want, "g={g} limit={limit} offset={offset}");
    }
    // Aggregates with a parameter, binary results (count bigint, avg numeric).
    let row = client
        .query_one(
            "SELECT count(*), sum(g), max(v)::text, avg(g)::text FROM t WHERE k < $1",
            &[&2500i64],
        )
        .await
        .unwrap();
    // avg(g)::text is an expression over an aggregate, computed at the
    // proxy as Postgres would: 7497 / 2500 with numeric's 16 digits.
    assert_eq!(row.get::<_, i64>(0), 2500);
    assert_eq!(row.get::<_, String>(3), "2.9988000000000000");
    let row = client
        .query_one(
            "SELECT count(*), sum(g), avg(g) FROM t WHERE k < $1",
            &[&1000i64],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1000);
    let sum: i64 = (0..1000i64).map(|k| k % 7).sum();
    assert_eq!(row.get::<_, i64>(1), sum);
    // EXPLAIN of a merged statement: the proxy's plan (which shards, what
    // each runs, the operators above them), simple and extended protocol.
    let sql = "EXPLAIN SELECT g, round(avg(v), 1) FROM t GROUP BY g HAVING count(*) > $1 ORDER BY 2 DESC LIMIT 3";
    let lines: Vec<String> = client
        .query(sql, &[&1i64])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>("QUERY PLAN"))
        .collect();
    let text = lines.join("\n");
    assert!(
        lines[0].starts_with("Shardgate Merge  (shards: 0, 1, 2)"),
        "{text}"
    );
    for part in [
        "Limit 3",
        "Sort groups by",
        "Filter: (count#",
        "Group key:",
        "Shard query (each shard):",
    ] {
        assert!(text.contains(part), "{part} missing from\n{text}");
    }
    assert!(
        lines
            .last()
            .unwrap()
            .trim_start()
            .starts_with("SELECT g, CASE WHEN false THEN"),
        "{text}"
    );
    let simple = client
        .simple_query("EXPLAIN SELECT k FROM t ORDER BY k DESC LIMIT 2")
        .await
        .unwrap();
    let rows = simple_rows(&simple);
    assert!(rows[0][0]
        .as_deref()
        .unwrap()
        .starts_with("Shardgate Merge"));
    assert!(
        rows.iter().any(|r| r[0]
            .as_deref()
            .unwrap()
            .contains("Merge sorted shard streams by col2 DESC NULLS FIRST")),
        "{rows:?}"
    );
    let err = client
        .simple_query("EXPLAIN ANALYZE SELECT count(*) FROM t")
        .await
        .expect_err("EXPLAIN ANALYZE across shards");
    assert_eq!(err.as_db_error().unwrap().code().code(), "0A000");
    // A single-shard statement is explained by its shard.
    let one = client
        .simple_query("EXPLAIN SELECT * FROM t WHERE k = 7")
        .await
        .unwrap();
    assert!(!simple_rows(&one)[0][0]
        .as_deref()
        .unwrap()
        .starts_with("Shardgate"));
    // LIMIT inside a transaction: no cancel, the transaction stays usable.
    client.batch_execute("BEGIN").await.unwrap();
    let first = client
        .query("SELECT k FROM t ORDER BY k LIMIT 2", &[])
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    client
        .batch_execute("UPDATE t SET g = 100 WHERE k = 5")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM t WHERE g = 100", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        per_shard_n(&env.c, "SELECT count(*) FROM t WHERE g = 100")
            .iter()
            .sum::<i64>(),
        1
    );
}

/// Creates `t` (sharded by range on `k`) with rows k = 0..3000, g = k % 7.
async fn create_t(client: &tokio_postgres::Client) {
    client
        .batch_execute("CREATE TABLE t (k bigint PRIMARY KEY, g int, v numeric(8,2))")
        .await
        .unwrap();
    let values: Vec<String> = (0..3000)
        .map(|k| format!("({k}, {}, {}.{:02})", k % 7, k % 100, k % 13))
        .collect();
    client
        .batch_execute(&format!("INSERT INTO t VALUES {}", values.join(",")))
        .await
        .unwrap();
}

/// Drivers such as asyncpg prepare with Parse, Describe and Flush, then bind
/// without a Sync in between, and fetch with a row limit: the statement is
/// described on one shard and bound to a key on another, and a merged
/// result stops at the limit with PortalSuspended, as Postgres does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_prepared_statements_and_row_limits_across_shards() {
    let env = env("");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    create_t(&client).await;
    let mut raw = Raw::connect(env.port, "raw", "app");
    let sync = frontend_msg(b'S', &[]);

    // Described on the default shard (0), answered at the Flush...
    raw.send(
        &[
            parse_msg("s1", "SELECT g FROM t WHERE k = $1"),
            describe_statement_msg("s1"),
            frontend_msg(b'H', &[]),
        ]
        .concat(),
    );
    let tags: Vec<u8> = raw.read_n(3).iter().map(|m| m.0).collect();
    assert_eq!(
        tags, b"1tT",
        "ParseComplete, ParameterDescription, RowDescription"
    );
    // ... then bound to a key of shard 2 before any Sync.
    raw.send(
        &[
            bind_msg("", "s1", &["2500"]),
            execute_msg("", 0),
            sync.clone(),
        ]
        .concat(),
    );
    let msgs = raw.until_ready();
    assert!(
        errors(&msgs).is_empty(),
        "{:?}",
        msgs.iter()
            .map(|(t, p)| (*t as char, error_text(p)))
            .collect::<Vec<_>>()
    );
    assert_eq!(first_column(&msgs), vec![(2500 % 7).to_string()]);

    // A merged aggregate and a merged ORDER BY with a row limit.
    for (sql, max_rows, want) in [
        ("SELECT count(*) FROM t", 1, vec!["3000".to_owned()]),
        (
            "SELECT k FROM t ORDER BY k DESC",
            2,
            vec!["2999".to_owned(), "2998".to_owned()],
        ),
    ] {
        raw.send(
            &[
                parse_msg("", sql),
                bind_msg("", "", &[]),
                execute_msg("", max_rows),
                sync.clone(),
            ]
            .concat(),
        );
        let msgs = raw.until_ready();
        assert!(errors(&msgs).is_empty(), "{sql}: {:?}", errors(&msgs));
        assert_eq!(first_column(&msgs), want, "{sql}");
        let tags: Vec<u8> = msgs.iter().map(|m| m.0).collect();
        assert!(
            tags.ends_with(b"sZ"),
            "{sql}: PortalSuspended then ReadyForQuery: {:?}",
            String::from_utf8_lossy(&tags)
        );
    }
    // A limit above the row count completes the portal.
    raw.send(
        &[
            parse_msg("", "SELECT count(*) FROM t"),
            bind_msg("", "", &[]),
            execute_msg("", 5),
            sync.clone(),
        ]
        .concat(),
    );
    let msgs = raw.until_ready();
    let tags: Vec<u8> = msgs.iter().map(|m| m.0).collect();
    assert!(
        tags.ends_with(b"CZ"),
        "CommandComplete: {:?}",
        String::from_utf8_lossy(&tags)
    );

    // Inside a transaction the suspended portal lives on, and the next
    // Execute continues the merge where it stopped.
    raw_ok(&mut raw, "BEGIN");
    raw.send(
        &[
            parse_msg("", "SELECT k FROM t ORDER BY k"),
            bind_msg("", "", &[]),
            execute_msg("", 1),
            sync.clone(),
        ]
        .concat(),
    );
    assert_eq!(first_column(&raw.until_ready()), vec!["0".to_owned()]);
    raw.send(&[execute_msg("", 1), sync.clone()].concat());
    assert_eq!(first_column(&raw.until_ready()), vec!["1".to_owned()]);
    raw_ok(&mut raw, "ROLLBACK");
    raw_ok(&mut raw, "SELECT 1");
}

/// A join not on the shard keys gathers the smaller table (its named
/// columns, its own conditions) and runs on every shard, with client
/// parameters on both steps; `EXPLAIN` of it, and of a materialized
/// subquery, describes both steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_statements_run_and_explain_their_steps() {
    let env = env("");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    create_t(&client).await;
    client
        .batch_execute("CREATE TABLE acct (k bigint PRIMARY KEY, g int, note text)")
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO acct SELECT k, k % 7, 'n' || k FROM generate_series(0, 2999, 100) k",
        )
        .await
        .unwrap();
    // acct (30 rows) joined to t (3000 rows) on g, not on k.
    let sql =
        "SELECT count(*), sum(t.v) FROM t JOIN acct a ON a.g = t.g WHERE a.k >= $1 AND t.k < $2";
    let row = client.query_one(sql, &[&1000i64, &2500i64]).await.unwrap();
    let count: i64 = row.get(0);
    // Every acct row with k >= 1000 matches the t rows (k < 2500) of its g.
    let want: i64 = (1000..3000i64)
        .step_by(100)
        .map(|ak| (0..2500i64).filter(|tk| tk % 7 == ak % 7).count() as i64)
        .sum();
    assert_eq!(count, want);
    let lines = |msgs: Vec<SimpleQueryMessage>| -> Vec<String> {
        simple_rows(&msgs)
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    };
    let plan = lines(
        client
            .simple_query(
                "EXPLAIN SELECT count(*) FROM t JOIN acct a ON a.g = t.g WHERE a.k >= 1000",
            )
            .await
            .unwrap(),
    );
    let text = plan.join("\n");
    assert!(text.contains("Gather a sharded table"), "{text}");
    assert!(
        text.contains(r#"SELECT "k", "g" FROM acct AS a WHERE (a.k >= 1000)"#),
        "the smaller table, its named columns and its own condition: {text}"
    );
    assert!(text.contains("on shards 0, 1, 2, merged"), "{text}");
    // The extended protocol answers EXPLAIN too.
    let rows = client
        .query(
            "EXPLAIN SELECT g, count(*) FROM (SELECT g, count(*) AS n FROM t GROUP BY g) s GROUP BY g",
            &[],
        )
        .await
        .unwrap();
    let text: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let text = text.join("\n");
    assert!(text.contains("Materialize a subquery"), "{text}");
    assert!(text.contains("on shard 0"), "{text}");
    // EXPLAIN ANALYZE would run the statement: refused.
    let err = client
        .simple_query("EXPLAIN ANALYZE SELECT count(*) FROM t JOIN acct a ON a.g = t.g")
        .await
        .expect_err("EXPLAIN ANALYZE of a gathered join");
    assert_eq!(err.as_db_error().unwrap().code().code(), "0A000");
}

/// A prepared statement merged across shards keeps a prepared statement of
/// its own on each shard's connection (parsed and planned once there), and
/// behaves as a prepared statement on Postgres does: right every time; a
/// shard statement that failed to prepare is prepared again once it can be
/// (not "does not exist"); after DDL changed its result columns it fails
/// once with `0A000`, and prepared again it answers with the new columns;
/// with a cache of two statements per connection, statements that evict
/// each other stay right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_prepared_statements_stay_prepared_on_the_shards() {
    let env = env("prepared_statements_cache = 2");
    let proxy = env.start();
    let client = connect(&proxy.app()).await;
    create_t(&client).await;
    let top = client
        .prepare("SELECT k, v FROM t ORDER BY v DESC, k LIMIT $1")
        .await
        .unwrap();
    for limit in [3i64, 5, 3] {
        let rows = client.query(&top, &[&limit]).await.unwrap();
        let keys: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let mut want: Vec<i64> = (0..3000i64).filter(|k| k % 100 == 99).collect();
        want.sort_by_key(|k| (std::cmp::Reverse(k % 13), *k));
        want.truncate(limit as usize);
        assert_eq!(keys, want, "LIMIT {limit}");
    }

    // The column goes away between Parse and the first run: every shard
    // refuses the statement, and it is not left half prepared.
    client
        .batch_execute("ALTER TABLE t ADD COLUMN w int")
        .await
        .unwrap();
    let later = client
        .prepare("SELECT count(*) FROM t WHERE g = 1 AND w IS NULL")
        .await
        .unwrap();
    client
        .batch_execute("ALTER TABLE t DROP COLUMN w")
        .await
        .unwrap();
    for _ in 0..2 {
        let err = client.query(&later, &[]).await.unwrap_err();
        let code = err.as_db_error().map(|e| e.code().code());
        assert_eq!(code, Some("42703"), "{err}");
    }
    client
        .batch_execute("ALTER TABLE t ADD COLUMN w int")
        .await
        .unwrap();
    let n: i64 = client.query_one(&later, &[]).await.unwrap().get(0);
    assert_eq!(n, (0..3000).filter(|k| k % 7 == 1).count() as i64);

    // `SELECT *` prepared, then a column added: as on Postgres, the old
    // statement fails once; prepared again it has the new column.
    let star_sql = "SELECT * FROM t ORDER BY k LIMIT 2";
    let star = client.prepare(star_sql).await.unwrap();
    assert_eq!(client.query(&star, &[]).await.unwrap()[0].len(), 4);
    client
        .batch_execute("ALTER TABLE t ADD COLUMN z int")
        .await
        .unwrap();
    let err = client.query(&star, &[]).await.unwrap_err();
    let code = err.as_db_error().map(|e| e.code().code());
    assert_eq!(code, Some("0A000"), "{err}");
    let star = client.prepare(star_sql).await.unwrap();
    let rows = client.query(&star, &[]).await.unwrap();
    assert_eq!((rows.len(), rows[0].len()), (2, 5));

    // Five statements through a cache of two: each evicts another.
    let mut stmts = Vec::new();
    for g in 0..5 {
        let sql = format!("SELECT count(*), max(k) FROM t WHERE g = {g}");
        stmts.push((g, client.prepare(&sql).await.unwrap()));
    }
    for _ in 0..3 {
        for (g, s) in &stmts {
            let row = client.query_one(s, &[]).await.unwrap();
            let keys: Vec<i64> = (0..3000).filter(|k| k % 7 == *g).collect();
            assert_eq!(row.get::<_, i64>(0), keys.len() as i64, "g = {g}");
            assert_eq!(row.get::<_, i64>(1), *keys.last().unwrap(), "g = {g}");
        }
    }
}
