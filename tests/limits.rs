//! Limits against a real Postgres through the proxy (issue 19): a thousand
//! clients connecting at once, clients that vanish mid-message, mid-COPY and
//! mid-transaction, and `max_client_buffer` (one client's buffered input;
//! its output is streamed with backpressure, never buffered whole).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec};
use support::*;

/// An admin user for the console (`SHOW POOLS`).
const OPS: &str =
    "\n[[users]]\nname = \"ops\"\npassword = \"ops\"\nadmin = true\nserver_user = \"app\"\nserver_password = \"secret\"\n";

/// Server connections of each pool of the proxy.
const POOL_SIZE: usize = 4;

/// `max_client_buffer` of the proxies in the disconnect and buffer tests.
const CAP: usize = 1 << 20;

/// Raises this process's open-file limit to its hard limit (the proxy,
/// started from here, inherits it): a thousand clients need two thousand
/// descriptors between the test and the proxy.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= 4096,
        "open-file limit {} is too low for 1,000 clients",
        lim.rlim_cur
    );
}

/// `sum(sv_active)` and `sum(sv_open)` of the proxy's pools, from the admin console.
fn pool_servers(proxy: &Proxy) -> (i64, i64) {
    let out = psql_ok(
        &proxy.conninfo("ops", "ops", "shardgate"),
        "SELECT coalesce(sum(sv_active), 0), coalesce(sum(sv_open), 0) FROM shardgate.pools",
    );
    let mut it = out.split('|').map(|v| v.trim().parse::<i64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Waits until no server connection is lent to a client; panics with the
/// pools otherwise.
fn no_active_servers(proxy: &Proxy) {
    let ok = eventually(Duration::from_secs(20), || pool_servers(proxy).0 == 0);
    assert!(
        ok,
        "server connections still lent to clients: {}",
        psql_ok(
            &proxy.conninfo("ops", "ops", "shardgate"),
            "SELECT node, cl_active, sv_active, sv_idle, sv_open FROM shardgate.pools"
        )
    );
}

/// Sessions of `app` on each primary, by state, e.g. `["idle"]`.
fn server_sessions(c: &Cluster) -> Vec<Vec<String>> {
    per_shard(
        c,
        "SELECT coalesce(state, '-') FROM pg_stat_activity WHERE usename = 'app' AND datname = 'app' ORDER BY 1",
    )
}

/// Waits until no primary has an `app` session that is not `idle` (none
/// `idle in transaction`, none active), and at most `max` per primary.
fn servers_clean(c: &Cluster, max: usize) {
    let ok = eventually(Duration::from_secs(20), || {
        server_sessions(c)
            .iter()
            .all(|s| s.len() <= max && s.iter().all(|st| st == "idle"))
    });
    assert!(ok, "sessions left on the servers: {:?}", server_sessions(c));
}

/// Reads messages until the proxy closes the connection; returns the
/// SQLSTATEs of the errors it sent first.
fn errors_until_closed(s: &mut TcpStream) -> Vec<String> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut errs = Vec::new();
    loop {
        let mut head = [0u8; 5];
        match s.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("not closed within 30 s (errors so far {errs:?})")
            }
            // End of stream, or a reset because the proxy left input unread.
            Err(_) => return errs,
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        if s.read_exact(&mut body).is_err() {
            return errs;
        }
        if head[0] == b'E' {
            errs.push(field(&body, b'C'));
        }
    }
}

/// A thousand clients at once through a pool of ten: every one is served
/// (a transaction each); then with `max_client_connections` lowered below
/// the crowd, the ones over it get `53300` and the others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_clients_at_once() {
    const CLIENTS: usize = 1000;
    raise_fd_limit();
    let c = cluster(ClusterSpec::new(1, 0));
    let port = free_port();
    let users = format!("{RAW_USER}{OPS}");
    let proxy = Proxy::start(
        c.dir(),
        port,
        &config(
            &c,
            port,
            "pool_size = 10\npool_timeout = \"60s\"\nmax_client_connections = 2000",
            &users,
        ),
    );
    psql_ok(&proxy.app(), "CREATE TABLE hits (client int PRIMARY KEY)");
    let conninfo = proxy.conninfo("raw", "x", "app");

    // Everyone at once, each with a transaction.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let conninfo = conninfo.clone();
        tasks.push(tokio::spawn(async move {
            let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connect: {e} {:?}", sqlstate(&e)))?;
            tokio::spawn(conn);
            client
                .batch_execute(&format!("BEGIN; INSERT INTO hits VALUES ({i}); COMMIT"))
                .await
                .map_err(|e| format!("transaction: {e} {:?}", sqlstate(&e)))
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failed.push(e);
        }
    }
    let took = start.elapsed();
    eprintln!(
        "{CLIENTS} clients at once: {took:?}, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!(
        psql_ok(&proxy.app(), "SELECT count(*) FROM hits"),
        CLIENTS.to_string()
    );
    no_active_servers(&proxy);
    servers_clean(&c, 10);

    // Over max_client_connections: a clear 53300 for the ones over it; the
    // others hold their connection until every attempt is answered, then
    // each runs a statement.
    const LIMIT: usize = 600;
    psql_ok(
        &proxy.conninfo("ops", "ops", "shardgate"),
        &format!("SET max_client_connections = {LIMIT}"),
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (conninfo, barrier) = (conninfo.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let connected = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await;
            barrier.wait().await;
            match connected {
                Ok((client, conn)) => {
                    tokio::spawn(conn);
                    let rows = client.simple_query("SELECT 1").await;
                    Ok(rows.map_err(|e| format!("{e} {:?}", sqlstate(&e)))?.len())
                }
                Err(e) => Err(sqlstate(&e).unwrap_or_else(|| format!("not a Postgres error: {e}"))),
            }
        }));
    }
    let (mut served, mut refused, mut other) = (0, 0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => served += 1,
            Err(code) if code == "53300" => refused += 1,
            Err(e) => other.push(e),
        }
    }
    eprintln!(
        "{CLIENTS} clients over max_client_connections = {LIMIT}: {served} served, {refused} refused (53300) in {:?}",
        start.elapsed()
    );
    assert!(other.is_empty(), "{:?}", &other[..other.len().min(5)]);
    assert_eq!(served + refused, CLIENTS);
    assert!(served <= LIMIT, "{served} served over a limit of {LIMIT}");
    assert!(
        served >= LIMIT / 2,
        "only {served} served under a limit of {LIMIT}"
    );
    no_active_servers(&proxy);
    servers_clean(&c, 10);
    assert!(!proxy.log_text().contains("panicked"));
}

/// Table `t (k bigint)` in database `app` on every shard.
fn create_t(c: &Cluster) {
    for shard in c.shards() {
        shard
            .primary
            .psql("app", "CREATE TABLE t (k bigint PRIMARY KEY)")
            .expect("create t");
    }
}

/// A proxy over `c` with a pool of [`POOL_SIZE`] and `max_client_buffer` =
/// [`CAP`]: sharded by `t.k` over every shard, or (`sharded = false`) over
/// shard 0 alone.
fn limits_proxy(c: &Cluster, sharded: bool) -> Proxy {
    let port = free_port();
    let proxy_extra =
        format!("pool_size = {POOL_SIZE}\nmax_client_buffer = {CAP}\npool_timeout = \"10s\"");
    let users = format!("{RAW_USER}{OPS}");
    let text = if sharded {
        let tables = "\n[sharding]\ndefault_shard = 0\n\n[[sharded_tables]]\ntable = \"t\"\ncolumn = \"k\"\nfunction = \"hash\"\nkey_type = \"bigint\"\n";
        config(c, port, &proxy_extra, &format!("{users}{tables}"))
    } else {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{proxy_extra}\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n{users}\n\n[[shards]]\nprimary = {:?}\n",
            c.shard(0).primary.addr()
        )
    };
    Proxy::start(c.dir(), port, &text)
}

/// Clients that go away mid-message, mid-COPY and mid-transaction, more
/// often than the pools have connections: afterwards no server connection
/// is lent or left in a transaction, none of their rows is visible, and
/// the proxy serves the next clients (sharded and unsharded).
#[test]
fn clients_vanishing_leave_nothing_behind() {
    let c = cluster(ClusterSpec::new(2, 0));
    create_t(&c);
    let proxies = [limits_proxy(&c, true), limits_proxy(&c, false)];
    let mut next = 0i64;
    let mut key = || {
        next += 1;
        next
    };
    for proxy in &proxies {
        for _ in 0..3 * POOL_SIZE {
            // Mid-transaction: BEGIN; INSERT; close.
            let mut raw = Raw::connect(proxy.port, "raw", "app");
            raw_ok(&mut raw, "BEGIN");
            raw_ok(
                &mut raw,
                &format!("INSERT INTO t VALUES ({}), ({})", key(), key()),
            );
            drop(raw);

            // Half a frame, outside and inside a transaction.
            let mut raw = Raw::connect(proxy.port, "raw", "app");
            let q = query_msg(&format!("INSERT INTO t VALUES ({})", key()));
            raw.send(&q[..q.len() / 2]);
            drop(raw);
            let mut raw = Raw::connect(proxy.port, "raw", "app");
            raw_ok(&mut raw, "BEGIN");
            raw_ok(&mut raw, &format!("INSERT INTO t VALUES ({})", key()));
            raw.send(&q[..3]);
            drop(raw);

            // Mid-COPY: CopyData sent, no CopyDone, socket closed; outside
            // and inside a transaction.
            for in_tx in [false, true] {
                let mut raw = Raw::connect(proxy.port, "raw", "app");
                if in_tx {
                    raw_ok(&mut raw, "BEGIN");
                }
                raw.send(&query_msg("COPY t (k) FROM STDIN"));
                let msgs = raw.until(b'G');
                assert!(errors(&msgs).is_empty(), "{msgs:?}");
                let rows = format!("{}\n{}\n", key(), key());
                raw.send(&frontend_msg(b'd', rows.as_bytes()));
                // And half of the next CopyData.
                raw.send(&frontend_msg(b'd', b"12345\n")[..4]);
                drop(raw);
            }
        }
    }
    for proxy in &proxies {
        no_active_servers(proxy);
    }
    // Each proxy holds at most POOL_SIZE connections per primary.
    servers_clean(&c, 2 * POOL_SIZE);
    assert_eq!(
        per_shard_n(&c, "SELECT count(*) FROM t"),
        vec![0, 0],
        "rows of unfinished transactions and copies are visible"
    );
    // The pools are whole: more concurrent transactions than connections
    // in a pool all commit.
    for proxy in &proxies {
        let port = proxy.port;
        let first = key() * 1000;
        let workers: Vec<_> = (0..2 * POOL_SIZE as i64)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut raw = Raw::connect(port, "raw", "app");
                    raw_ok(&mut raw, "BEGIN");
                    raw_ok(&mut raw, &format!("INSERT INTO t VALUES ({})", first + i));
                    std::thread::sleep(Duration::from_millis(200));
                    let msgs = raw_ok(&mut raw, "COMMIT");
                    assert_eq!(status(&msgs), b'I');
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a transaction after the disconnects");
        }
        no_active_servers(proxy);
        assert!(!proxy.log_text().contains("panicked"));
    }
    let total: i64 = per_shard_n(&c, "SELECT count(*) FROM t").iter().sum();
    assert_eq!(total, 2 * 2 * POOL_SIZE as i64);
    servers_clean(&c, 2 * POOL_SIZE);
}

/// `max_client_buffer`: statements below it work, a message or an
/// extended-protocol batch beyond it gets `54000` and the connection is
/// closed; a client that pipelines without reading is made to wait (the
/// proxy reads no more of the server's answers than the client takes), so
/// the proxy's memory stays flat while other clients keep working.
#[test]
fn client_buffer_cap() {
    let c = cluster(ClusterSpec::new(2, 0));
    create_t(&c);
    for (sharded, proxy) in [
        (true, limits_proxy(&c, true)),
        (false, limits_proxy(&c, false)),
    ] {
        let what = if sharded { "sharded" } else { "unsharded" };
        // Below the cap: a 600 kB statement and its 600 kB answer.
        let mut raw = Raw::connect(proxy.port, "raw", "app");
        let big = "x".repeat(600_000);
        let msgs = raw_ok(&mut raw, &format!("SELECT '{big}' AS v"));
        assert_eq!(data_rows(&msgs), 1, "{what}");
        assert_eq!(first_column(&msgs), vec![big.clone()], "{what}");

        // An answer far wider than the cap streams through: one 40 MB row
        // is not held whole at the proxy.
        const WIDE: usize = 40_000_000;
        let rss = RssPeak::start(proxy.pid());
        let msgs = raw_ok(&mut raw, &format!("SELECT repeat('w', {WIDE})"));
        let grew_kb = rss.stop();
        let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
        assert_eq!(row.1.len(), 2 + 4 + WIDE, "{what}");
        eprintln!("{what}: a 40 MB row: RSS +{grew_kb} kB");
        assert!(grew_kb < 20 * 1024, "{what}: a 40 MB row took {grew_kb} kB");

        // One message over the cap, sent whole: 54000, then closed (the
        // proxy drains what the client still sends, so the error is not
        // lost to a reset).
        let mut raw = Raw::connect(proxy.port, "raw", "app");
        let mut huge = format!("SELECT '{}'", "h".repeat(2 * CAP));
        huge.push('\0');
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((huge.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(huge.as_bytes());
        let mut s = raw.s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = s.write_all(&m);
        });
        assert_eq!(errors_until_closed(&mut raw.s), vec!["54000"], "{what}");
        writer.join().unwrap();

        // A batch without Sync over the cap (sharded: batches are routed
        // whole, so the proxy gathers them).
        if sharded {
            let mut raw = Raw::connect(proxy.port, "raw", "app");
            let param = "y".repeat(4000);
            let mut batch = parse_msg("", "SELECT $1::text");
            for _ in 0..(CAP / 4000 + 50) {
                batch.extend(bind_msg("", "", &[&param]));
                batch.extend(execute_msg("", 0));
            }
            let mut s = raw.s.try_clone().unwrap();
            let writer = std::thread::spawn(move || {
                // The proxy may close before it has read everything.
                let _ = s.write_all(&batch);
            });
            assert_eq!(errors_until_closed(&mut raw.s), vec!["54000"], "{what}");
            writer.join().unwrap();
        }

        // Pipelining without reading: 1,500 answers of 100 kB (150 MB)
        // are asked for at once; the client reads nothing for a while.
        const QUERIES: usize = 1500;
        const WIDTH: usize = 100_000;
        let raw = Raw::connect(proxy.port, "raw", "app");
        let mut pipeline = Vec::new();
        for _ in 0..QUERIES {
            pipeline.extend(query_msg(&format!("SELECT repeat('z', {WIDTH})")));
        }
        let rss = RssPeak::start(proxy.pid());
        let mut s = raw.s.try_clone().unwrap();
        let writer = std::thread::spawn(move || s.write_all(&pipeline));
        std::thread::sleep(Duration::from_secs(3));
        // Another client is served meanwhile.
        let mut other = Raw::connect(proxy.port, "raw", "app");
        assert_eq!(
            first_column(&raw_ok(&mut other, "SELECT 41 + 1")),
            vec!["42"]
        );
        let waiting_kb = rss.grew();
        // Now everything arrives, in order and whole.
        let mut raw = raw;
        let (mut rows, mut ready) = (0, 0);
        while ready < QUERIES {
            let (t, p) = raw.read_msg();
            match t {
                b'D' => {
                    assert_eq!(p.len(), 2 + 4 + WIDTH, "{what}");
                    rows += 1;
                }
                b'Z' => ready += 1,
                b'E' => panic!("{what}: {}", error_text(&p)),
                _ => {}
            }
        }
        writer.join().unwrap().expect("the pipeline was written");
        assert_eq!(rows, QUERIES, "{what}");
        let peak_kb = rss.stop();
        eprintln!("{what}: pipelined 150 MB of answers: RSS +{waiting_kb} kB while the client waited, peak +{peak_kb} kB");
        assert!(
            peak_kb < 64 * 1024,
            "{what}: the proxy grew by {peak_kb} kB for a client that did not read"
        );
        drop(raw);
        no_active_servers(&proxy);
        assert!(!proxy.log_text().contains("panicked"));
    }
    servers_clean(&c, 2 * POOL_SIZE);
}

/// A shard's server connection ended by the server in the middle of a
/// statement on several shards (`pg_terminate_backend`): the client gets
/// an ERROR `08006` naming the shard, not the server's FATAL (its session
/// goes on), and its status is idle outside a transaction and failed inside.
#[test]
fn a_shard_connection_ended_mid_statement() {
    let c = cluster(ClusterSpec::new(2, 0));
    create_t(&c);
    let proxy = limits_proxy(&c, true);
    let mut raw = Raw::connect(proxy.port, "raw", "app");
    raw_ok(
        &mut raw,
        "INSERT INTO t SELECT g FROM generate_series(1, 20) g",
    );
    for in_tx in [false, true] {
        if in_tx {
            raw_ok(&mut raw, "BEGIN");
        }
        // About 2 s on each shard.
        raw.send(&query_msg("SELECT k, pg_sleep(0.2) FROM t"));
        let ended = eventually(Duration::from_secs(10), || {
            c.shard(1)
                .primary
                .psql(
                    "app",
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE usename = 'app' AND state = 'active' AND query LIKE '%pg_sleep%'",
                )
                .is_ok_and(|n| n.trim() == "1")
        });
        assert!(ended, "no statement to end on shard 1");
        let msgs = raw.until_ready();
        let errs: Vec<(String, String)> = msgs
            .iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, p)| (field(p, b'V'), field(p, b'C')))
            .collect();
        assert_eq!(
            errs,
            vec![("ERROR".to_owned(), "08006".to_owned())],
            "in_tx {in_tx}"
        );
        assert_eq!(
            status(&msgs),
            if in_tx { b'E' } else { b'I' },
            "in_tx {in_tx}"
        );
        if in_tx {
            raw_ok(&mut raw, "ROLLBACK");
        }
        assert_eq!(
            first_column(&raw_ok(&mut raw, "SELECT count(*) FROM t")),
            vec!["20"]
        );
    }
    no_active_servers(&proxy);
}
