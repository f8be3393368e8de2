//! Replica routing on a real primary with two streaming replicas: where each
//! statement runs under each consistency level, lag-aware bounded reads, read
//! your writes, how levels are set, and node failures.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec, StopMode};
use support::*;
use tokio_postgres::SimpleQueryMessage;

const ADMIN_USER: &str = "\n[[users]]\nname = \"ops\"\npassword = \"ops\"\nadmin = true\nserver_user = \"app\"\nserver_password = \"secret\"\n";

fn routing_cluster(spec: ClusterSpec, routing: &str) -> (Cluster, Proxy) {
    let c = cluster(spec);
    let port = free_port();
    let users = format!("{ADMIN_USER}\n[routing]\n{routing}\n");
    let proxy = Proxy::start(c.dir(), port, &config(&c, port, "pool_size = 20", &users));
    (c, proxy)
}

/// Which node a port belongs to: "primary", "replica0", "replica1".
fn roles(c: &Cluster) -> HashMap<u16, String> {
    let s = c.shard(0);
    let mut m = HashMap::new();
    m.insert(s.primary.port(), "primary".to_owned());
    for (i, r) in s.replicas.iter().enumerate() {
        m.insert(r.port(), format!("replica{i}"));
    }
    m
}

async fn port_of(client: &tokio_postgres::Client, sql: &str) -> Result<u16, tokio_postgres::Error> {
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .expect("a row with a port"))
}

async fn connect_with(proxy: &Proxy, options: &str) -> tokio_postgres::Client {
    connect(&format!("{} options='{options}'", proxy.app())).await
}

/// The admin console's view of node `node` of shard 0 (0 is the
/// primary, then the replicas): (state, lag_ms).
async fn admin_node(proxy: &Proxy, c: &Cluster, node: usize) -> (String, Option<u64>) {
    let s = c.shard(0);
    let addr = match node {
        0 => s.primary.addr(),
        n => s.replicas[n - 1].addr(),
    };
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    let rows = admin.simple_query("SHOW REPLICATION").await.unwrap();
    for m in rows {
        if let SimpleQueryMessage::Row(r) = m {
            if r.get("node") == Some(addr.as_str()) {
                return (
                    r.get("state").unwrap().to_owned(),
                    r.get("lag_ms").and_then(|v| v.parse().ok()),
                );
            }
        }
    }
    panic!("node {node} not in SHOW REPLICATION");
}

/// Item 1: writes on the primary only; eventual reads spread over both replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_primary_and_eventual_reads_spread() {
    let (c, proxy) = routing_cluster(ClusterSpec::new(1, 2), "default_consistency = \"eventual\"");
    let roles = roles(&c);
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE w1 (id int)")
        .await
        .unwrap();
    for i in 0..50 {
        let port = port_of(
            &client,
            &format!("INSERT INTO w1 VALUES ({i}) RETURNING inet_server_port()"),
        )
        .await
        .unwrap();
        assert_eq!(roles[&port], "primary");
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..2000 {
        let port = port_of(&client, "SELECT inet_server_port()").await.unwrap();
        *counts.entry(roles[&port].clone()).or_default() += 1;
    }
    println!("eventual reads per node: {counts:?}");
    assert_eq!(counts.get("primary"), None, "{counts:?}");
    for r in ["replica0", "replica1"] {
        let n = counts.get(r).copied().unwrap_or(0);
        assert!((700..=1300).contains(&n), "{r} got {n} of 2000: {counts:?}");
    }
}

/// Where a statement must run: `Read` goes to a replica unless the level is
/// strong; `Write` always to the primary; `Replica` always to a replica (a
/// hint overrides the level).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Read,
    Write,
    Replica,
}

/// Statements and where they must run; `true` when the statement may fail
/// (it is still sent to the node it belongs on).
const TABLE: &[(&str, Expect, bool)] = &[
    ("SELECT 1", Expect::Read, false),
    ("SELECT * FROM rt WHERE id = 5", Expect::Read, false),
    ("SELECT count(*) FROM rt", Expect::Read, false),
    ("SHOW search_path", Expect::Read, false),
    ("WITH x AS (SELECT id FROM rt) SELECT count(*) FROM x", Expect::Read, false),
    ("VALUES (1), (2)", Expect::Read, false),
    ("TABLE rt", Expect::Read, false),
    ("EXPLAIN SELECT * FROM rt", Expect::Read, false),
    ("SELECT now(), pg_is_in_recovery()", Expect::Read, false),
    ("SELECT * FROM rt r1 JOIN rt r2 USING (id) WHERE r1.id < 3", Expect::Read, false),
    ("SELECT upper(v) FROM rt ORDER BY id LIMIT 3", Expect::Read, false),
    ("SELECT 'nextval(x)' AS not_a_call", Expect::Read, false),
    ("SELECT id FROM rt WHERE v = 'for update'", Expect::Read, false),
    ("SELECT * FROM rt WHERE id IN (SELECT id FROM rt WHERE id < 10)", Expect::Read, false),
    ("SELECT current_setting('search_path')", Expect::Read, false),
    ("BEGIN READ ONLY; SELECT count(*) FROM rt; COMMIT", Expect::Read, false),
    ("START TRANSACTION READ ONLY; SELECT 1; COMMIT", Expect::Read, false),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1; COMMIT", Expect::Read, false),
    ("/* shardgate: consistency=eventual */ SELECT 2", Expect::Replica, false),
    ("INSERT INTO rt VALUES (1000, 'x') ON CONFLICT DO NOTHING", Expect::Write, false),
    ("UPDATE rt SET v = v WHERE id = 1", Expect::Write, false),
    ("DELETE FROM rt WHERE id = -1", Expect::Write, false),
    ("MERGE INTO rt USING (SELECT 1 AS id) s ON rt.id = s.id WHEN MATCHED THEN UPDATE SET v = rt.v", Expect::Write, false),
    ("CREATE TABLE IF NOT EXISTS rt_ddl (id int)", Expect::Write, false),
    ("ALTER TABLE rt_ddl ADD COLUMN IF NOT EXISTS c int", Expect::Write, false),
    ("CREATE INDEX IF NOT EXISTS rt_ddl_idx ON rt_ddl (id)", Expect::Write, false),
    ("TRUNCATE rt_copy", Expect::Write, false),
    ("DROP TABLE IF EXISTS rt_nothing", Expect::Write, false),
    ("SELECT * FROM rt WHERE id = 1 FOR UPDATE", Expect::Write, false),
    ("SELECT * FROM rt WHERE id = 1 FOR SHARE", Expect::Write, false),
    ("SELECT * FROM rt WHERE id = 1 FOR NO KEY UPDATE", Expect::Write, false),
    ("SELECT * FROM rt WHERE id = 1 FOR KEY SHARE", Expect::Write, false),
    ("WITH w AS (UPDATE rt SET v = v WHERE id = 2 RETURNING id) SELECT count(*) FROM w", Expect::Write, false),
    ("SELECT nextval('rs')", Expect::Write, false),
    ("SELECT setval('rs', 10)", Expect::Write, false),
    ("SELECT currval('rs')", Expect::Write, true),
    ("SELECT lastval()", Expect::Write, true),
    ("SELECT pg_advisory_lock(42), pg_advisory_unlock(42)", Expect::Write, false),
    ("SELECT pg_try_advisory_lock(43), pg_advisory_unlock(43)", Expect::Write, false),
    ("SELECT pg_advisory_xact_lock(44)", Expect::Write, false),
    ("SELECT set_config('application_name', 'x', false)", Expect::Write, false),
    ("SELECT txid_current()", Expect::Write, false),
    ("SELECT touch_row()", Expect::Write, false),
    ("SELECT public.touch_row()", Expect::Write, false),
    ("VACUUM rt_copy", Expect::Write, false),
    ("ANALYZE rt_copy", Expect::Write, false),
    ("DO $$BEGIN PERFORM 1; END$$", Expect::Write, false),
    ("CALL noop_proc()", Expect::Write, false),
    ("BEGIN; SELECT 1; COMMIT", Expect::Write, false),
    ("SELECT 1; INSERT INTO rt_ddl VALUES (1)", Expect::Write, false),
    ("NOTIFY chan", Expect::Write, false),
    ("SELECT pg_notify('chan', 'x')", Expect::Write, false),
    ("CHECKPOINT", Expect::Write, false),
    ("/* shardgate: consistency=strong */ SELECT 3", Expect::Write, false),
    ("LOCK TABLE rt", Expect::Write, true),
];

/// Item 2: a table of statements, each with the node it must reach under each level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_table_routes_by_level() {
    let c = cluster(
        ClusterSpec::new(1, 2)
            .setting("log_statement", "all")
            .setting("log_min_error_statement", "panic"),
    );
    c.shard(0)
        .primary
        .psql(
            "app",
            "CREATE TABLE rt (id int PRIMARY KEY, v text);
             INSERT INTO rt SELECT g, 'v' || g FROM generate_series(1, 100) g;
             CREATE TABLE rt_copy (LIKE rt);
             CREATE SEQUENCE rs;
             CREATE FUNCTION touch_row() RETURNS int LANGUAGE sql AS 'UPDATE rt SET v = v WHERE id = 1 RETURNING 1';
             CREATE PROCEDURE noop_proc() LANGUAGE sql AS 'SELECT 1';",
        )
        .unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    let port = free_port();
    let users = format!("{ADMIN_USER}\n[routing]\nwrite_functions = [\"touch_row\"]\n");
    let proxy = Proxy::start(c.dir(), port, &config(&c, port, "", &users));
    assert!(TABLE.len() >= 40);
    let levels = ["strong", "bounded", "eventual", "session"];
    let mut expected: Vec<(String, &str, bool)> = Vec::new();
    for level in levels {
        for (i, (sql, exp, may_fail)) in TABLE.iter().enumerate() {
            let tag = format!("rt-{level}-{i}");
            let client = connect_with(&proxy, &format!("-c shardgate.consistency={level}")).await;
            let result = client.batch_execute(&format!("/* {tag} */ {sql}")).await;
            if !may_fail {
                result.unwrap_or_else(|e| panic!("{sql} at {level}: {e} {:?}", e.as_db_error()));
            }
            let role = match exp {
                Expect::Write => "primary",
                Expect::Replica => "replica",
                Expect::Read if level == "strong" => "primary",
                Expect::Read => "replica",
            };
            expected.push((tag, role, *may_fail));
        }
        // COPY: out is a read, in is a write.
        let client = connect_with(&proxy, &format!("-c shardgate.consistency={level}")).await;
        let tag = format!("rt-{level}-copy-out");
        let out = client
            .copy_out(&format!("/* {tag} */ COPY rt TO STDOUT"))
            .await
            .unwrap();
        futures_drain(out).await;
        expected.push((
            tag,
            if level == "strong" {
                "primary"
            } else {
                "replica"
            },
            false,
        ));
        let tag = format!("rt-{level}-copy-in");
        let sink = client
            .copy_in::<_, bytes::Bytes>(&format!("/* {tag} */ COPY rt_copy FROM STDIN"))
            .await
            .unwrap();
        send_copy_rows(sink, "1\tx\n2\ty\n").await;
        expected.push((tag, "primary", false));
    }
    let logs: Vec<(String, String)> = c
        .nodes()
        .iter()
        .map(|n| {
            let role = if n.name().contains("primary") {
                "primary"
            } else {
                "replica"
            };
            (
                role.to_owned(),
                std::fs::read_to_string(n.log_path()).unwrap(),
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for (tag, role, _) in &expected {
        let needle = format!("/* {tag} */");
        let seen: Vec<&str> = logs
            .iter()
            .filter(|(_, text)| text.contains(&needle))
            .map(|(r, _)| r.as_str())
            .collect();
        if seen != [*role] {
            wrong.push(format!("{tag}: expected {role}, seen on {seen:?}"));
        }
    }
    println!("{} statement/level cases checked", expected.len());
    assert!(wrong.is_empty(), "misrouted:\n{}", wrong.join("\n"));
}

async fn futures_drain(stream: tokio_postgres::CopyOutStream) {
    use futures_util::StreamExt;
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
}

async fn send_copy_rows(sink: tokio_postgres::CopyInSink<bytes::Bytes>, rows: &str) {
    use futures_util::SinkExt;
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from(rows.to_owned()))
        .await
        .unwrap();
    sink.as_mut().finish().await.unwrap();
}

/// One read through the proxy: when it started, which node answered, and the
/// heartbeat timestamp it saw (ms since epoch).
#[derive(Clone, Copy, Debug)]
struct Read {
    at: Instant,
    port: u16,
    seen_ms: f64,
}

/// Item 3: bounded staleness with replay paused and resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_staleness_follows_measured_lag() {
    const MAX_LAG: u64 = 500;
    const POLL: u64 = 100;
    const BEAT: u64 = 50;
    let (c, proxy) = routing_cluster(
        ClusterSpec::new(1, 2),
        &format!(
            "default_consistency = \"eventual\"\nmax_lag_ms = {MAX_LAG}\nlag_poll_ms = {POLL}"
        ),
    );
    let roles = roles(&c);
    let primary_port = c.shard(0).primary.port();
    let r1 = &c.shard(0).replicas[0];
    let r2 = &c.shard(0).replicas[1];
    let direct = connect(&c.shard(0).primary.conninfo("app", APP_PASSWORD, "app")).await;
    direct
        .batch_execute("CREATE TABLE hb (id int PRIMARY KEY, ts timestamptz); INSERT INTO hb VALUES (1, clock_timestamp())")
        .await
        .unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    // Heartbeat: (time committed, server timestamp in ms).
    let beats: Arc<Mutex<Vec<(Instant, f64)>>> = Arc::default();
    let beat_task = {
        let (stop, beats) = (stop.clone(), beats.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let row = direct
                    .query_one("UPDATE hb SET ts = clock_timestamp() WHERE id = 1 RETURNING extract(epoch FROM ts)::float8 * 1000", &[])
                    .await
                    .unwrap();
                beats.lock().unwrap().push((Instant::now(), row.get(0)));
                tokio::time::sleep(Duration::from_millis(BEAT)).await;
            }
        })
    };
    let reader = |level: &'static str| {
        let stop = stop.clone();
        let ci = format!("{} options='-c shardgate.consistency={level}'", proxy.app());
        tokio::spawn(async move {
            let client = connect(&ci).await;
            let mut reads = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                let row = client
                    .query_one("SELECT inet_server_port(), extract(epoch FROM ts)::float8 * 1000 FROM hb WHERE id = 1", &[])
                    .await
                    .expect("read");
                let port: i32 = row.get(0);
                reads.push(Read {
                    at,
                    port: port as u16,
                    seen_ms: row.get(1),
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            reads
        })
    };
    let bounded = reader("bounded");
    let eventual = reader("eventual");

    tokio::time::sleep(Duration::from_millis(1000)).await;
    r1.psql("app", "SELECT pg_wal_replay_pause()").unwrap();
    let paused1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, lag_a) = admin_node(&proxy, &c, 1).await;
    let at_a = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, lag_b) = admin_node(&proxy, &c, 1).await;
    let grew = lag_b.unwrap() as i64 - lag_a.unwrap() as i64;
    let wall = at_a.elapsed().as_millis() as i64;
    assert!(
        (grew - wall).abs() < 300,
        "lag grew by {grew} ms over {wall} ms of wall time"
    );

    r2.psql("app", "SELECT pg_wal_replay_pause()").unwrap();
    let paused2 = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let resumed = Instant::now();
    r1.psql("app", "SELECT pg_wal_replay_resume()").unwrap();
    r2.psql("app", "SELECT pg_wal_replay_resume()").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let bounded = bounded.await.unwrap();
    let eventual = eventual.await.unwrap();
    beat_task.await.unwrap();
    let beats = beats.lock().unwrap().clone();

    let role = |r: &Read| roles[&r.port].as_str();
    // A paused replica starts to lag with the first write after the pause.
    let first_beat_after = |t: Instant| {
        beats
            .iter()
            .map(|(at, _)| *at)
            .find(|at| *at > t)
            .expect("heartbeats after the pause")
    };
    let lagging1 = first_beat_after(paused1);
    let lagging2 = first_beat_after(paused2);
    let deadline = Duration::from_millis(MAX_LAG + 2 * POLL + 50);
    // Bounded reads leave replica 1 within the bound plus two polls.
    let late: Vec<_> = bounded
        .iter()
        .filter(|r| r.at > lagging1 + deadline && r.at < resumed && role(r) == "replica0")
        .map(|r| r.at.duration_since(lagging1))
        .collect();
    assert!(
        late.is_empty(),
        "bounded reads on paused replica 1 this long after it started to lag: {late:?}"
    );
    // Eventual reads may still use it (while it lags, before it resumes).
    assert!(eventual
        .iter()
        .any(|r| r.at > lagging1 + deadline && r.at < resumed && role(r) == "replica0"));
    // Both paused: bounded reads go to the primary.
    let both: Vec<_> = bounded
        .iter()
        .filter(|r| r.at > lagging2 + deadline && r.at < resumed)
        .collect();
    assert!(!both.is_empty());
    assert!(both.iter().all(|r| r.port == primary_port), "{both:?}");
    // After resuming, both replicas serve bounded reads again within two polls.
    for rep in ["replica0", "replica1"] {
        let first = bounded
            .iter()
            .find(|r| r.at > resumed && role(r) == rep)
            .unwrap_or_else(|| panic!("{rep} never used after resume"));
        let after = first.at.duration_since(resumed);
        assert!(
            after <= Duration::from_millis(2 * POLL + 250),
            "{rep} back after {after:?}"
        );
    }
    // No bounded read saw a heartbeat older than the bound allows: compare
    // with the newest heartbeat committed before the read started.
    let mut worst = 0.0f64;
    for r in &bounded {
        let Some(newest) = beats
            .iter()
            .filter(|(t, _)| *t < r.at)
            .map(|(_, ts)| *ts)
            .reduce(f64::max)
        else {
            continue;
        };
        worst = worst.max(newest - r.seen_ms);
    }
    println!(
        "bounded reads: {}; worst staleness {worst:.0} ms (bound {MAX_LAG} ms)",
        bounded.len()
    );
    assert!(
        worst <= (MAX_LAG + BEAT + 100) as f64,
        "a bounded read was {worst:.0} ms stale"
    );
}

/// Item 4: read your writes with replicas that apply WAL 300 ms late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_by_wal_position() {
    let (c, proxy) = routing_cluster(
        ClusterSpec::new(1, 2).replica_setting("recovery_min_apply_delay", "300ms"),
        "default_consistency = \"eventual\"",
    );
    let primary_port = c.shard(0).primary.port();
    let setup = connect(&proxy.app()).await;
    setup
        .batch_execute("CREATE TABLE ryw (id int)")
        .await
        .unwrap();
    let session = connect_with(&proxy, "-c shardgate.consistency=session").await;
    let mut fresh = 0;
    for i in 0..1000i32 {
        session
            .execute("INSERT INTO ryw VALUES ($1)", &[&i])
            .await
            .unwrap();
        let n: i64 = session
            .query_one("SELECT count(*) FROM ryw WHERE id = $1", &[&i])
            .await
            .unwrap()
            .get(0);
        fresh += n as usize;
    }
    assert_eq!(fresh, 1000, "session reads must see every write");
    // Once replicas have replayed the writes, session reads use them again.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let port = port_of(&session, "SELECT inet_server_port()")
        .await
        .unwrap();
    assert_ne!(port, primary_port, "session reads stayed on the primary");

    let eventual = connect_with(&proxy, "-c shardgate.consistency=eventual").await;
    let mut stale = 0;
    for i in 100_000..100_200i32 {
        eventual
            .execute("INSERT INTO ryw VALUES ($1)", &[&i])
            .await
            .unwrap();
        let n: i64 = eventual
            .query_one("SELECT count(*) FROM ryw WHERE id = $1", &[&i])
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            stale += 1;
        }
    }
    println!("session: 1000/1000 fresh; eventual: {stale}/200 stale");
    assert!(
        stale > 0,
        "eventual reads never stale: the experiment cannot tell"
    );
}

async fn show(client: &tokio_postgres::Client, what: &str) -> String {
    let rows = client
        .simple_query(&format!("SHOW shardgate.{what}"))
        .await
        .unwrap();
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap()
}

/// Item 5: every way of choosing the level, and invalid values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_ways_to_set_the_level() {
    let c = cluster(ClusterSpec::new(1, 2));
    let port = free_port();
    let users = format!(
        "{ADMIN_USER}\n[[users]]\nname = \"reader\"\npassword = \"r\"\nserver_user = \"app\"\nserver_password = \"secret\"\nconsistency = \"eventual\"\nmax_lag_ms = 250\n\n[routing]\ndefault_consistency = \"strong\"\n"
    );
    let proxy = Proxy::start(c.dir(), port, &config(&c, port, "", &users));
    let primary = c.shard(0).primary.port();
    let on_primary = |p: u16| p == primary;

    // Configuration default: strong.
    let app = connect(&proxy.app()).await;
    assert_eq!(show(&app, "consistency").await, "strong");
    assert!(on_primary(
        port_of(&app, "SELECT inet_server_port()").await.unwrap()
    ));
    // The user's own level.
    let reader = connect(&proxy.conninfo("reader", "r", "app")).await;
    assert_eq!(show(&reader, "consistency").await, "eventual");
    assert_eq!(show(&reader, "max_lag_ms").await, "250");
    assert!(!on_primary(
        port_of(&reader, "SELECT inet_server_port()").await.unwrap()
    ));
    // Startup option overrides the user.
    let opt = connect(&format!(
        "{} options='-c shardgate.consistency=strong'",
        proxy.conninfo("reader", "r", "app")
    ))
    .await;
    assert_eq!(show(&opt, "consistency").await, "strong");
    assert!(on_primary(
        port_of(&opt, "SELECT inet_server_port()").await.unwrap()
    ));
    // SET and RESET (simple protocol).
    app.batch_execute("SET shardgate.consistency = 'eventual'")
        .await
        .unwrap();
    assert_eq!(show(&app, "consistency").await, "eventual");
    assert!(!on_primary(
        port_of(&app, "SELECT inet_server_port()").await.unwrap()
    ));
    app.batch_execute("RESET shardgate.consistency")
        .await
        .unwrap();
    assert_eq!(show(&app, "consistency").await, "strong");
    // SET in the extended protocol.
    app.execute("SET shardgate.consistency TO eventual", &[])
        .await
        .unwrap();
    assert_eq!(show(&app, "consistency").await, "eventual");
    let row = app
        .query_one("SHOW shardgate.consistency", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "eventual");
    // A statement comment beats the session level, in both protocols.
    assert!(on_primary(
        port_of(
            &app,
            "/* shardgate: consistency=strong */ SELECT inet_server_port()"
        )
        .await
        .unwrap()
    ));
    let row = app
        .query_one(
            "/* shardgate: consistency=strong */ SELECT inet_server_port()",
            &[],
        )
        .await
        .unwrap();
    assert!(on_primary(row.get::<_, i32>(0) as u16));
    let row = reader
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap();
    assert!(!on_primary(row.get::<_, i32>(0) as u16));
    // Invalid values: 22023, nothing changes.
    for bad in [
        "SET shardgate.consistency = 'sometimes'",
        "SET shardgate.max_lag_ms = 'soon'",
        "/* shardgate: consistency=never */ SELECT 1",
    ] {
        let err = app.batch_execute(bad).await.expect_err(bad);
        assert_eq!(sqlstate(&err).as_deref(), Some("22023"), "{bad}: {err:?}");
    }
    let err = app
        .execute("SET shardgate.consistency = 'sometimes'", &[])
        .await
        .expect_err("extended invalid");
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"));
    assert_eq!(show(&app, "consistency").await, "eventual");
    app.batch_execute("SET shardgate.max_lag_ms = 321")
        .await
        .unwrap();
    assert_eq!(show(&app, "max_lag_ms").await, "321");
    // A startup option with a bad value is refused at login.
    let err = tokio_postgres::connect(
        &format!("{} options='-c shardgate.consistency=maybe'", proxy.app()),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("bad startup option");
    assert_eq!(sqlstate(&err).as_deref(), Some("22023"));
}

/// Item 6: a replica crashes under read load: no client sees an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_crash_under_read_load_is_invisible() {
    let (c, proxy) = routing_cluster(
        ClusterSpec::new(1, 2),
        "default_consistency = \"eventual\"\nhealth_check_ms = 1000\nban_ms = 2000",
    );
    let roles = Arc::new(roles(&c));
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (stop, seen, roles, ci) = (stop.clone(), seen.clone(), roles.clone(), proxy.app());
        tasks.push(tokio::spawn(async move {
            let client = connect(&ci).await;
            let mut errors = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let read = async {
                    if i % 2 == 0 {
                        port_of(&client, "SELECT inet_server_port()")
                            .await
                            .map(|p| p as i32)
                    } else {
                        client
                            .query_one("SELECT inet_server_port()", &[])
                            .await
                            .map(|r| r.get::<_, i32>(0))
                    }
                };
                let port = tokio::time::timeout(Duration::from_secs(15), read)
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "client {i} hung (protocol: {})",
                            if i % 2 == 0 { "simple" } else { "extended" }
                        )
                    });
                match port {
                    Ok(p) => seen
                        .lock()
                        .unwrap()
                        .push((Instant::now(), roles[&(p as u16)].clone())),
                    Err(e) => errors.push(format!("{e} {:?}", e.as_db_error())),
                }
                n += 1;
            }
            (n, errors)
        }));
    }
    let replica = &c.shard(0).replicas[0];
    tokio::time::sleep(Duration::from_secs(5)).await;
    replica.stop(StopMode::Immediate).unwrap();
    let stopped = Instant::now();
    let mut banned_after = None;
    while stopped.elapsed() < Duration::from_secs(5) {
        if admin_node(&proxy, &c, 1).await.0 == "banned" {
            banned_after = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let banned_after = banned_after.expect("replica never banned");
    assert!(
        banned_after <= Duration::from_millis(1000),
        "banned after {banned_after:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    replica.start().unwrap();
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        let (n, errors) = t.await.unwrap();
        total += n;
        assert!(errors.is_empty(), "client-visible errors: {errors:?}");
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().any(|(t, r)| *t > restarted && r == "replica0"),
        "the restarted replica never served reads again"
    );
    println!("{total} reads, none failed; replica banned after {banned_after:?}");
}

/// Item 7: primary down: reads go on, writes fail fast and clearly, and
/// work again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_down_reads_continue_writes_fail_fast() {
    let (c, proxy) = routing_cluster(
        ClusterSpec::new(1, 2),
        "default_consistency = \"eventual\"\nban_ms = 1000",
    );
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE pd (id int)")
        .await
        .unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    let primary = &c.shard(0).primary;
    primary.stop(StopMode::Immediate).unwrap();
    let bounded = connect_with(&proxy, "-c shardgate.consistency=bounded").await;
    let started = Instant::now();
    let err = client
        .batch_execute("INSERT INTO pd VALUES (1)")
        .await
        .expect_err("write with the primary down");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "write took {:?} to fail",
        started.elapsed()
    );
    let db = err.as_db_error().expect("a server-style error");
    assert!(db.code().code().starts_with("08"), "{db:?}");
    println!("write error: {}", db.message());
    let until = Instant::now() + Duration::from_secs(3);
    let mut reads = 0;
    while Instant::now() < until {
        port_of(&client, "SELECT inet_server_port()")
            .await
            .expect("eventual read");
        port_of(&bounded, "SELECT count(*) FROM pd").await.ok();
        bounded
            .simple_query("SELECT count(*) FROM pd")
            .await
            .expect("bounded read");
        reads += 1;
    }
    let started = Instant::now();
    let err = client
        .batch_execute("INSERT INTO pd VALUES (2)")
        .await
        .expect_err("still down");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(
        err.as_db_error().unwrap().message().contains("primary"),
        "{err:?}"
    );
    primary.start().unwrap();
    let back = Instant::now();
    loop {
        match client.batch_execute("INSERT INTO pd VALUES (3)").await {
            Ok(()) => break,
            Err(e) if back.elapsed() < Duration::from_secs(15) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("writes did not resume: {e:?}"),
        }
    }
    println!(
        "{reads} read rounds while the primary was down; writes back {:?} after restart",
        back.elapsed()
    );
}

/// Item 8: with role_detection = "auto", a promoted replica takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_replica_takes_writes() {
    let (c, proxy) = routing_cluster(
        ClusterSpec::new(1, 2),
        "default_consistency = \"eventual\"\nrole_detection = \"auto\"",
    );
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE pr (id int)")
        .await
        .unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    let new_primary = &c.shard(0).replicas[0];
    c.shard(0).primary.stop(StopMode::Immediate).unwrap();
    new_primary.promote().unwrap();
    let promoted = Instant::now();
    let port = loop {
        match port_of(
            &client,
            "INSERT INTO pr VALUES (1) RETURNING inet_server_port()",
        )
        .await
        {
            Ok(p) => break p,
            Err(_) if promoted.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("writes never reached the promoted replica: {e:?}"),
        }
    };
    let took = promoted.elapsed();
    assert_eq!(port, new_primary.port());
    assert!(
        took < Duration::from_secs(2),
        "writes resumed after {took:?}"
    );
    for _ in 0..20 {
        port_of(&client, "SELECT inet_server_port()")
            .await
            .expect("reads keep working");
    }
    // The old primary is out of rotation for good: fenced.
    assert_eq!(admin_node(&proxy, &c, 0).await.0, "fenced");
    println!("writes on the promoted replica after {took:?}");
}

/// The pids of the proxy's health-check sessions on `node`.
fn monitor_pids(node: &shardgate_harness::Node) -> Vec<u32> {
    node.psql(
        "postgres",
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'shardgate-monitor' ORDER BY backend_start",
    )
    .unwrap()
    .lines()
    .map(|l| l.trim().parse().unwrap())
    .collect()
}

/// A health check that stalls while the node keeps answering clients (an
/// overloaded machine) does not take the node out of rotation; the same
/// stall with no client traffic does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_health_check_does_not_ban_a_serving_node() {
    let (c, proxy) = routing_cluster(
        ClusterSpec::new(1, 0),
        "health_check_ms = 300\nlag_poll_ms = 100\nban_ms = 1000",
    );
    let primary = &c.shard(0).primary;
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE hc (id int)")
        .await
        .unwrap();
    // The monitor's session may not be open yet this soon after the start.
    let mut stalled = monitor_pids(primary);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stalled = monitor_pids(primary);
    }
    assert_eq!(stalled.len(), 1, "one health-check session: {stalled:?}");
    let stalled = stalled[0];

    // The check's server process is frozen while a client keeps writing.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, ci) = (stop.clone(), proxy.app());
        tokio::spawn(async move {
            let client = connect(&ci).await;
            let (mut n, mut errors) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client.batch_execute("INSERT INTO hc VALUES (1)").await {
                    Ok(()) => n += 1,
                    Err(e) => errors.push(format!("{e} {:?}", e.as_db_error())),
                }
            }
            (n, errors)
        })
    };
    send_signal(stalled, "-STOP");
    let frozen = Instant::now();
    let mut states = Vec::new();
    let mut reconnected = false;
    while frozen.elapsed() < Duration::from_secs(3) {
        states.push(admin_node(&proxy, &c, 0).await.0);
        reconnected |= monitor_pids(primary).len() > 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_signal(stalled, "-CONT");
    stop.store(true, Ordering::Relaxed);
    let (written, errors) = writer.await.unwrap();
    assert!(
        reconnected,
        "the check never gave up on the frozen session, so it never failed"
    );
    assert!(errors.is_empty(), "client-visible errors: {errors:?}");
    assert!(
        states.iter().all(|s| s != "banned"),
        "the serving primary was banned: {states:?}"
    );
    let count: i64 = client
        .query_one("SELECT count(*) FROM hc", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, i64::from(written));

    // The same stall with no client traffic bans the node, and the ban lifts
    // once the check answers again.
    let idle = *monitor_pids(primary)
        .last()
        .expect("a health-check session");
    send_signal(idle, "-STOP");
    let frozen = Instant::now();
    let banned = loop {
        if admin_node(&proxy, &c, 0).await.0 == "banned" {
            break frozen.elapsed();
        }
        assert!(
            frozen.elapsed() < Duration::from_secs(5),
            "an unanswered check with no traffic never banned the node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    send_signal(idle, "-CONT");
    let lifted = Instant::now();
    while admin_node(&proxy, &c, 0).await.0 == "banned" {
        assert!(
            lifted.elapsed() < Duration::from_secs(10),
            "the ban never lifted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .batch_execute("INSERT INTO hc VALUES (2)")
        .await
        .expect("writes work again");
    println!("{written} writes during a 3 s check stall, none failed; idle stall banned after {banned:?}");
}

/// A read whose server dies after sending part of a large answer runs again
/// on another node: the client sees the whole answer once and no error, in
/// both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_cut_off_mid_answer_runs_again_elsewhere() {
    let (c, proxy) = routing_cluster(
        ClusterSpec::new(1, 2),
        "default_consistency = \"eventual\"\nban_ms = 500",
    );
    let client = connect(&proxy.app()).await;
    // 40 rows of 1 kB, one every 50 ms: Postgres sends the first 8 kB long
    // before the answer is complete.
    let sql = "SELECT i, repeat('x', 1000) AS pad, pg_sleep(0.05)::text AS s \
               FROM generate_series(1, 40) i";
    for extended in [false, true] {
        let killer = {
            let nodes: Vec<String> = c
                .nodes()
                .iter()
                .map(|n| n.superuser_conninfo("postgres"))
                .collect();
            tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(1000));
                let kill = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                            WHERE query LIKE '%generate_series(1, 40)%' AND pid <> pg_backend_pid()";
                // Only the first node found running it: the retry must survive.
                nodes
                    .iter()
                    .map(|n| psql_ok(n, kill).trim().parse::<u32>().unwrap())
                    .find(|&killed| killed > 0)
            })
        };
        let ids: Vec<i32> = if extended {
            let rows = client.query(sql, &[]).await.expect("the read succeeds");
            rows.iter().map(|r| r.get(0)).collect()
        } else {
            client
                .simple_query(sql)
                .await
                .expect("the read succeeds")
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => r.get(0).map(|v| v.parse().unwrap()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            killer.await.unwrap(),
            Some(1),
            "the read's server process was killed mid-answer"
        );
        assert_eq!(
            ids,
            (1..=40).collect::<Vec<_>>(),
            "extended protocol: {extended}"
        );
    }
    // An answer larger than what is held back streams through whole.
    let rows = client
        .query(
            "SELECT i, repeat('y', 1000) FROM generate_series(1, 2000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2000);
    assert!(rows
        .iter()
        .enumerate()
        .all(|(n, r)| r.get::<_, i32>(0) == n as i32 + 1 && r.get::<_, &str>(1).len() == 1000));
}

/// New server connections to the primary hang (its postmaster is frozen)
/// while its open connections keep answering: the clients that needed a new
/// connection get a clear error, but the serving primary is not banned and
/// nobody else notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_logins_to_a_serving_node_do_not_ban_it() {
    let c = cluster(ClusterSpec::new(1, 0));
    let port = free_port();
    let users = format!("{ADMIN_USER}\n[routing]\nhealth_check_ms = 300\nban_ms = 1000\n");
    let proxy = Proxy::start(
        c.dir(),
        port,
        &config(&c, port, "pool_size = 8\nconnect_timeout = \"1s\"", &users),
    );
    let primary = &c.shard(0).primary;
    let setup = connect(&proxy.app()).await;
    setup
        .batch_execute("CREATE TABLE sl (id int)")
        .await
        .unwrap();
    let mut late = Vec::new();
    for _ in 0..4 {
        late.push(connect(&proxy.app()).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, ci) = (stop.clone(), proxy.app());
        tokio::spawn(async move {
            // One open transaction keeps its server connection throughout.
            let client = connect(&ci).await;
            client.batch_execute("BEGIN").await.unwrap();
            let (mut n, mut errors) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) && errors.len() < 10 {
                match client.batch_execute("INSERT INTO sl VALUES (1)").await {
                    Ok(()) => n += 1,
                    Err(e) => errors.push(format!("{e} {:?}", e.as_db_error())),
                }
            }
            if let Err(e) = client.batch_execute("COMMIT").await {
                errors.push(format!("COMMIT: {e} {:?}", e.as_db_error()));
            }
            (n, errors)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pid_file = std::fs::read_to_string(primary.data_dir().join("postmaster.pid")).unwrap();
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    send_signal(postmaster, "-STOP");
    // The writer keeps its connection, so every late client needs a new one.
    let tasks: Vec<_> = late
        .into_iter()
        .map(|client| {
            tokio::spawn(async move {
                let r = client
                    .batch_execute("BEGIN; INSERT INTO sl VALUES (2)")
                    .await
                    .map_err(|e| sqlstate(&e).unwrap_or_else(|| e.to_string()));
                (client, r)
            })
        })
        .collect();
    let (mut late, mut late_results) = (Vec::new(), Vec::new());
    for t in tasks {
        let (client, r) = t.await.unwrap();
        late.push(client);
        late_results.push(r);
    }
    let mut states = Vec::new();
    for _ in 0..20 {
        states.push(admin_node(&proxy, &c, 0).await.0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_signal(postmaster, "-CONT");
    stop.store(true, Ordering::Relaxed);
    let (written, errors) = writer.await.unwrap();

    assert!(
        late_results
            .iter()
            .any(|r| r.as_ref().err().map(String::as_str) == Some("08006")),
        "no late client needed a new connection: {late_results:?}"
    );
    assert!(
        errors.is_empty(),
        "the serving client saw errors: {errors:?}"
    );
    assert!(
        states.iter().all(|s| s != "banned"),
        "the serving primary was banned: {states:?}"
    );
    for client in &late {
        client
            .batch_execute("ROLLBACK; INSERT INTO sl VALUES (3)")
            .await
            .expect("a new connection works once the postmaster runs again");
    }
    let count: i64 = setup
        .query_one("SELECT count(*) FROM sl WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, i64::from(written));
    println!("{written} writes while logins hung, none failed; late clients: {late_results:?}");
}

/// asyncpg with replica routing: its Parse/Describe/Flush preparations land
/// on a replica, and what follows without a Sync (a write, COPY) still runs
/// on the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_with_replica_routing() {
    let (_c, proxy) = routing_cluster(ClusterSpec::new(1, 1), "default_consistency = \"eventual\"");
    let dsn = format!("postgresql://app:secret@127.0.0.1:{}/app", proxy.port);
    let out = run_client_script("asyncpg_client.py", vec![dsn]).await;
    assert!(out.contains("ok"), "asyncpg with replica routing: {out}");
}
