//! Fault injection under load (issue 19, "Faults"): nodes killed, frozen and
//! restarted, networks stalled and cut by the harness's fault proxy, and the
//! proxy itself killed inside a two-phase commit. Each test asserts what the
//! clients see.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec, ConnFault, Direction, FaultProxy, NewConnections};
use support::*;
use tokio_postgres::SimpleQueryMessage;

/// A statement that takes longer than this is taken for a hang.
const HANG: Duration = Duration::from_secs(60);

const ADMIN_USER: &str = "\n[[users]]\nname = \"ops\"\npassword = \"ops\"\nadmin = true\nserver_user = \"app\"\nserver_password = \"secret\"\n";

/// Fault proxies in front of some nodes, by node name (`shard0-replica0`).
type Via = HashMap<String, FaultProxy>;

/// Puts a fault proxy in front of each named node.
fn via(c: &Cluster, names: &[&str]) -> Via {
    c.nodes()
        .into_iter()
        .filter(|n| names.contains(&n.name()))
        .map(|n| (n.name().to_owned(), FaultProxy::start(&n.addr()).unwrap()))
        .collect()
}

/// The address the proxy is configured with for a node: its fault proxy's, if any.
fn addr_of(via: &Via, node: &shardgate_harness::Node) -> String {
    via.get(node.name())
        .map(FaultProxy::addr)
        .unwrap_or_else(|| node.addr())
}

/// A configuration like `support::config`, with the admin user `ops`, and
/// nodes reached through their fault proxies.
/// A proxy on a free port over `c`, its connections to the nodes of `via`
/// going through their fault proxies.
fn proxy_via(c: &Cluster, via: &Via, proxy_extra: &str, rest: &str) -> Proxy {
    let port = free_port();
    Proxy::start(c.dir(), port, &config_via(c, via, port, proxy_extra, rest))
}

fn config_via(c: &Cluster, via: &Via, port: u16, proxy_extra: &str, rest: &str) -> String {
    let mut shards = String::new();
    for s in c.shards() {
        let replicas: Vec<String> = s
            .replicas
            .iter()
            .map(|r| format!("{:?}", addr_of(via, r)))
            .collect();
        shards.push_str(&format!(
            "\n[[shards]]\nprimary = {:?}\nreplicas = [{}]\n",
            addr_of(via, &s.primary),
            replicas.join(", ")
        ));
    }
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{proxy_extra}\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n{ADMIN_USER}\n{rest}\n{shards}"
    )
}

/// The admin console's state of the node configured as `addr` (`up`, `banned`, ...).
async fn node_state(proxy: &Proxy, addr: &str) -> String {
    let admin = connect(&proxy.conninfo("ops", "ops", "shardgate")).await;
    for m in admin.simple_query("SHOW REPLICATION").await.unwrap() {
        if let SimpleQueryMessage::Row(r) = m {
            if r.get("node") == Some(addr) {
                return r.get("state").unwrap().to_owned();
            }
        }
    }
    panic!("{addr} not in SHOW REPLICATION");
}

/// Polls until the node configured as `addr` is banned; returns how long that took.
async fn time_to_ban(proxy: &Proxy, addr: &str, since: Instant, limit: Duration) -> Duration {
    loop {
        if node_state(proxy, addr).await == "banned" {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{addr} not banned within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first column of the first row of a simple query, as text.
async fn first_value(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<String, tokio_postgres::Error> {
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

/// What one load client saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    /// (when, SQLSTATE or message).
    errors: Vec<(Instant, String)>,
    /// Ports of the nodes that answered, with when.
    served: Vec<(Instant, u16)>,
    /// The longest a statement took.
    slowest: Duration,
}

impl Tally {
    /// How many errors of each SQLSTATE (or message start) the load saw.
    fn codes(&self) -> BTreeMap<String, usize> {
        self.errors.iter().fold(BTreeMap::new(), |mut m, (_, e)| {
            *m.entry(e.split(':').next().unwrap().to_owned())
                .or_default() += 1;
            m
        })
    }
}

/// Runs `sql` every 100 ms until it succeeds (within 30 s, else the test
/// fails); how long that took.
async fn until_it_works(client: &tokio_postgres::Client, sql: &str) -> Duration {
    let start = Instant::now();
    loop {
        match client.batch_execute(sql).await {
            Ok(()) => return start.elapsed(),
            Err(e) => assert!(
                start.elapsed() < Duration::from_secs(30),
                "writes did not resume: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clients running one statement in a loop until stopped; statements that
/// take longer than [`HANG`] fail the test.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    /// `clients` connections running `sql` (which returns a port as its
    /// first value) over and over; odd clients use the extended protocol.
    async fn start(conninfo: &str, clients: usize, sql: &'static str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let client = connect(conninfo).await;
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    let run = async {
                        if i % 2 == 0 {
                            first_value(&client, sql)
                                .await
                                .map(|v| v.parse().unwrap_or(0))
                        } else {
                            client
                                .query_one(sql, &[])
                                .await
                                .map(|r| r.get::<_, i32>(0) as u16)
                        }
                    };
                    let started = Instant::now();
                    let r = tokio::time::timeout(HANG, run).await;
                    tally.slowest = tally.slowest.max(started.elapsed());
                    match r {
                        Err(_) => panic!("client {i}: {sql} hung for {HANG:?}"),
                        Ok(Ok(port)) => {
                            tally.ok += 1;
                            tally.served.push((Instant::now(), port));
                        }
                        Ok(Err(e)) => {
                            let what = sqlstate(&e).unwrap_or_else(|| e.to_string());
                            let message = e
                                .as_db_error()
                                .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                            tally
                                .errors
                                .push((Instant::now(), format!("{what}: {message}")));
                            if client.is_closed() {
                                break;
                            }
                        }
                    }
                }
                tally
            }));
        }
        Load { stop, tasks }
    }

    /// Stops the clients and merges what they saw.
    async fn finish(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            let t = t.await.expect("load client panicked");
            all.ok += t.ok;
            all.errors.extend(t.errors);
            all.served.extend(t.served);
            all.slowest = all.slowest.max(t.slowest);
        }
        all
    }
}

const READ: &str = "SELECT inet_server_port()";

/// Replica faults under read load: reads go on elsewhere without one error,
/// the node is banned, and serves again once it is back.
/// How a node fails in [`replica_fault`] and the other scenarios.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NodeFault {
    /// SIGKILL to all its processes; started again afterwards.
    Kill,
    /// Its network stalls (fault proxy); healed afterwards.
    Stall,
    /// SIGSTOP to all its processes; SIGCONT afterwards.
    Freeze,
    /// Its answers are dropped on the way back (fault proxy); healed afterwards.
    DropAnswers,
}

async fn replica_fault(fault: NodeFault) {
    let stall = matches!(fault, NodeFault::Stall | NodeFault::DropAnswers);
    // Both leave the node silent rather than refusing connections.
    let silent = fault != NodeFault::Kill;
    let c = cluster(ClusterSpec::new(1, 2));
    let victim = &c.shard(0).replicas[0];
    let via = if stall {
        via(&c, &[victim.name()])
    } else {
        Via::new()
    };
    let port = free_port();
    let health_check_ms = 1000;
    let proxy = Proxy::start(
        c.dir(),
        port,
        &config_via(
            &c,
            &via,
            port,
            "pool_size = 20",
            &format!("[routing]\ndefault_consistency = \"eventual\"\nhealth_check_ms = {health_check_ms}\nban_ms = 2000\n"),
        ),
    );
    let victim_addr = addr_of(&via, victim);
    let load = Load::start(&proxy.app(), 16, READ).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let faulted = Instant::now();
    match fault {
        NodeFault::Kill => victim.kill().unwrap(),
        NodeFault::Stall => via[victim.name()].stall(),
        NodeFault::Freeze => victim.pause().unwrap(),
        NodeFault::DropAnswers => via[victim.name()].drop_direction(Direction::ToClient),
    }
    let banned = time_to_ban(&proxy, &victim_addr, faulted, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let healed = Instant::now();
    match fault {
        NodeFault::Kill => victim.start().unwrap(),
        NodeFault::Stall => via[victim.name()].heal(),
        NodeFault::Freeze => victim.resume().unwrap(),
        NodeFault::DropAnswers => via[victim.name()].heal(),
    }
    // Reads reach the node again (after its ban ends).
    let back = loop {
        let tally_probe = connect(&proxy.app()).await;
        let mut seen = false;
        for _ in 0..50 {
            if first_value(&tally_probe, READ).await.unwrap() == victim.port().to_string() {
                seen = true;
                break;
            }
        }
        if seen {
            break healed.elapsed();
        }
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "{} never served reads again",
            victim.name()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tally = load.finish().await;
    let during: usize = tally
        .served
        .iter()
        .filter(|(t, _)| *t > faulted + banned && *t < healed)
        .count();
    println!(
        "replica {fault:?}: {} reads, {} errors, slowest read {:?}, banned after {banned:?}, {during} reads while banned, serving again {back:?} after it was back",
        tally.ok,
        tally.errors.len(),
        tally.slowest,
    );
    assert!(
        tally.errors.is_empty(),
        "client-visible errors: {:?}",
        tally.errors
    );
    assert!(during > 0, "no reads were served while the replica was out");
    let limit = Duration::from_millis(if silent {
        // A silent node needs two unanswered checks (an overloaded machine
        // is not banned on one), plus the machine's own slowness.
        2 * health_check_ms + 1500
    } else {
        health_check_ms + 500
    });
    assert!(banned <= limit, "banned after {banned:?} (limit {limit:?})");
    // Reads caught on the node when it went silent ran again elsewhere once
    // it was banned, rather than waiting for the network to come back.
    let slowest_limit = limit + Duration::from_secs(2);
    assert!(
        tally.slowest <= slowest_limit,
        "a read took {:?} (limit {slowest_limit:?})",
        tally.slowest
    );
}

/// A replica killed with SIGKILL under read load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_reads_move_on() {
    replica_fault(NodeFault::Kill).await;
}

/// A replica behind a stalled network (connections open, nothing answers)
/// under read load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_stalled_reads_move_on() {
    replica_fault(NodeFault::Stall).await;
}

/// A replica whose answers are lost on the way back (one direction of its
/// network dropped) under read load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_answers_dropped_reads_move_on() {
    replica_fault(NodeFault::DropAnswers).await;
}

/// A replica frozen with SIGSTOP (all its processes) under read load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_frozen_reads_move_on() {
    replica_fault(NodeFault::Freeze).await;
}

/// Primary killed under mixed load: writes fail fast with 08006, reads go
/// on at replicas without an error, and writes resume once it is back,
/// without restarting the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_writes_fail_fast_reads_go_on() {
    let c = cluster(ClusterSpec::new(1, 2));
    let connect_timeout = Duration::from_secs(2);
    let proxy = proxy_via(
        &c,
        &Via::new(),
        "pool_size = 20\nconnect_timeout = \"2s\"",
        "[routing]\ndefault_consistency = \"eventual\"\nhealth_check_ms = 1000\nban_ms = 1000\n",
    );
    let app = connect(&proxy.app()).await;
    app.batch_execute("CREATE TABLE pk (id serial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await
        .unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    let reads = Load::start(&proxy.app(), 8, READ).await;
    let writes = Load::start(
        &proxy.app(),
        4,
        "INSERT INTO pk DEFAULT VALUES RETURNING inet_server_port()",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let primary = &c.shard(0).primary;
    primary.kill().unwrap();
    let killed = Instant::now();
    // Fresh writes while it is down: each fails with 08006, quickly.
    let writer = connect(&proxy.app()).await;
    let mut slowest = Duration::ZERO;
    let mut codes = BTreeSet::new();
    while killed.elapsed() < Duration::from_secs(4) {
        let t = Instant::now();
        let r = tokio::time::timeout(HANG, writer.batch_execute("INSERT INTO pk DEFAULT VALUES"))
            .await
            .expect("a write hung with the primary down");
        let err = r.expect_err("a write succeeded with the primary down");
        codes.insert(sqlstate(&err).unwrap_or_else(|| err.to_string()));
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let write_tally = writes.finish().await;
    primary.start().unwrap();
    let resumed = until_it_works(&writer, "INSERT INTO pk DEFAULT VALUES").await;
    let read_tally = reads.finish().await;
    let load_codes = write_tally.codes();
    println!(
        "primary killed: {} reads, {} read errors; fresh writes failed with {codes:?}, slowest in {slowest:?}; \
         load writes {} ok, errors by code {load_codes:?}; writes resumed {resumed:?} after restart",
        read_tally.ok,
        read_tally.errors.len(),
        write_tally.ok,
    );
    assert_eq!(codes, BTreeSet::from(["08006".to_owned()]));
    assert!(
        slowest < connect_timeout,
        "a write took {slowest:?} to fail (connect_timeout {connect_timeout:?})"
    );
    assert!(
        load_codes.keys().all(|c| c == "08006"),
        "writes under load failed with {load_codes:?}"
    );
    assert!(
        read_tally.errors.is_empty(),
        "read errors: {:?}",
        read_tally.errors
    );
}

/// The network to the primary stalls (connections open, nothing answers,
/// new ones accepted and silent): writes, on pooled connections and new
/// ones, fail with 08006 instead of hanging, reads go on at the replicas,
/// and writes work again once the network is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_stalled_writes_fail_not_hang() {
    primary_silent(NodeFault::Stall).await;
}

/// The primary frozen with SIGSTOP (all its processes; the kernel still
/// accepts connections): as [`primary_stalled_writes_fail_not_hang`], and
/// writes resume after SIGCONT without restarting the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_frozen_writes_fail_not_hang() {
    primary_silent(NodeFault::Freeze).await;
}

/// The primary goes silent (`fault`: its network stalled, or frozen) under
/// read and write load, for 6 s, then comes back.
async fn primary_silent(fault: NodeFault) {
    let c = cluster(ClusterSpec::new(1, 2));
    let primary = &c.shard(0).primary;
    let via = if fault == NodeFault::Stall {
        via(&c, &[primary.name()])
    } else {
        Via::new()
    };
    let connect_timeout = Duration::from_secs(3);
    let proxy = proxy_via(
        &c,
        &via,
        "pool_size = 20\nconnect_timeout = \"3s\"",
        "[routing]\ndefault_consistency = \"eventual\"\nhealth_check_ms = 1000\nban_ms = 1000\n",
    );
    let app = connect(&proxy.app()).await;
    app.batch_execute("CREATE TABLE ps (id serial PRIMARY KEY)")
        .await
        .unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    let reads = Load::start(&proxy.app(), 4, READ).await;
    let writes = Load::start(
        &proxy.app(),
        4,
        "INSERT INTO ps DEFAULT VALUES RETURNING inet_server_port()",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    match fault {
        NodeFault::Stall => via[primary.name()].stall(),
        NodeFault::Freeze => primary.pause().unwrap(),
        other => unreachable!("{other:?}"),
    }
    let silenced = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let write_tally = writes.finish().await;
    match fault {
        NodeFault::Stall => via[primary.name()].heal(),
        _ => primary.resume().unwrap(),
    }
    let resumed = until_it_works(&app, "INSERT INTO ps DEFAULT VALUES").await;
    let read_tally = reads.finish().await;
    let codes: BTreeSet<String> = write_tally.codes().into_keys().collect();
    let first_error = write_tally
        .errors
        .iter()
        .map(|(t, _)| t.saturating_duration_since(silenced))
        .min();
    println!(
        "primary {fault:?}: {} reads, {} read errors; writes {} ok, {} failed with {codes:?}, first after {first_error:?}, slowest write {:?}; writes resumed {resumed:?} after it was back",
        read_tally.ok,
        read_tally.errors.len(),
        write_tally.ok,
        write_tally.errors.len(),
        write_tally.slowest,
    );
    assert!(!write_tally.errors.is_empty(), "no write failed");
    assert_eq!(codes, BTreeSet::from(["08006".to_owned()]));
    let limit = connect_timeout + Duration::from_secs(2);
    assert!(
        write_tally.slowest < limit,
        "a write waited {:?} (connect_timeout {connect_timeout:?})",
        write_tally.slowest
    );
    assert!(
        read_tally.errors.is_empty(),
        "read errors: {:?}",
        read_tally.errors
    );
}

/// A server that stalls in the middle of an answer: only the client waiting
/// for it waits, until `query_timeout`, then gets 57014; the others, on the
/// same node, go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_mid_answer_holds_only_its_client() {
    let c = cluster(ClusterSpec::new(1, 0));
    let primary = &c.shard(0).primary;
    let via = via(&c, &[primary.name()]);
    let query_timeout = Duration::from_secs(2);
    let proxy = proxy_via(
        &c,
        &via,
        "pool_size = 20\nquery_timeout = \"2s\"",
        "[routing]\nhealth_check_ms = 1000\n",
    );
    let others = Load::start(&proxy.app(), 8, READ).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The answer's rows are 1 kB each: Postgres sends the first ones long
    // before the row with the marker, where the network goes silent.
    via[primary.name()].on_match(Direction::ToClient, b"stall-marker", ConnFault::Stall);
    let victim = connect(&proxy.app()).await;
    let sql = "SELECT i, CASE WHEN i = 30 THEN 'stall-marker' END AS m, repeat('x', 1000) AS pad \
               FROM generate_series(1, 60) i";
    let started = Instant::now();
    let r = tokio::time::timeout(HANG, victim.simple_query(sql))
        .await
        .expect("the stalled client hung past query_timeout");
    let waited = started.elapsed();
    let err = r.expect_err("an answer through a stalled network");
    assert_eq!(via[primary.name()].fired(), 1, "the stall fired");
    let mid = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = others.finish().await;
    let during = tally
        .served
        .iter()
        .filter(|(t, _)| *t > started && *t < mid)
        .count();
    println!(
        "stalled client: {:?} after {waited:?}; others: {} queries ({during} during the stall), {} errors",
        sqlstate(&err),
        tally.ok,
        tally.errors.len()
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(waited >= query_timeout, "gave up after {waited:?}");
    assert!(
        waited < query_timeout + Duration::from_secs(8),
        "waited {waited:?} with query_timeout {query_timeout:?}"
    );
    assert!(tally.errors.is_empty(), "errors: {:?}", tally.errors);
    assert!(during > 100, "only {during} other queries during the stall");
    // The victim's session goes on.
    assert_eq!(
        first_value(&victim, "SELECT 1").await.unwrap(),
        "1",
        "the session after the timeout"
    );
}

/// Starting balance of every ledger account.
const START_BALANCE: i64 = 1000;
/// Ledger accounts.
const ACCOUNTS: i64 = 40;

/// What the ledger clients saw.
#[derive(Debug, Default)]
struct LedgerTally {
    /// Transfers whose COMMIT succeeded.
    acked: Vec<i64>,
    /// Errors by SQLSTATE (or message).
    errors: BTreeMap<String, usize>,
}

/// Clients moving money between an account on shard 0 and one on shard 1,
/// each transfer recorded on both shards under its id; they reconnect when
/// their connection ends (the proxy may be killed under them).
struct Ledger {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<LedgerTally>>,
}

impl Ledger {
    fn start(conninfo: &str, clients: i64, round: i64, s0: &[i64], s1: &[i64]) -> Ledger {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, conninfo) = (stop.clone(), conninfo.to_owned());
                let (s0, s1) = (s0.to_vec(), s1.to_vec());
                tokio::spawn(async move {
                    let mut tally = LedgerTally::default();
                    let mut n = 0i64;
                    let mut client: Option<tokio_postgres::Client> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match client.take() {
                            Some(c) if !c.is_closed() => c,
                            _ => match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                                .await
                            {
                                Ok((c, conn)) => {
                                    tokio::spawn(conn);
                                    c
                                }
                                Err(_) => {
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    continue;
                                }
                            },
                        };
                        n += 1;
                        let txid = (round * 100 + i) * 1_000_000 + n;
                        let (a, b) = (
                            s0[(n as usize) % s0.len()],
                            s1[(n as usize * 7 + i as usize) % s1.len()],
                        );
                        let steps = [
                            "BEGIN".to_owned(),
                            format!("UPDATE accounts SET balance = balance - 1 WHERE id = {a}"),
                            format!("UPDATE accounts SET balance = balance + 1 WHERE id = {b}"),
                            format!("INSERT INTO transfers VALUES ({a}, {txid}, -1)"),
                            format!("INSERT INTO transfers VALUES ({b}, {txid}, 1)"),
                            "COMMIT".to_owned(),
                        ];
                        let mut failed = None;
                        for step in &steps {
                            let r = tokio::time::timeout(HANG, c.batch_execute(step))
                                .await
                                .unwrap_or_else(|_| {
                                    panic!("ledger client {i}: {step} hung for {HANG:?}")
                                });
                            if let Err(e) = r {
                                failed = Some(sqlstate(&e).unwrap_or_else(|| e.to_string()));
                                break;
                            }
                        }
                        match failed {
                            None => tally.acked.push(txid),
                            Some(code) => {
                                *tally.errors.entry(code).or_default() += 1;
                                let _ = c.batch_execute("ROLLBACK").await;
                            }
                        }
                        client = Some(c);
                    }
                    tally
                })
            })
            .collect();
        Ledger { stop, tasks }
    }

    async fn finish(self) -> LedgerTally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LedgerTally::default();
        for t in self.tasks {
            let t = t.await.expect("ledger client panicked");
            all.acked.extend(t.acked);
            for (k, v) in t.errors {
                *all.errors.entry(k).or_default() += v;
            }
        }
        all
    }
}

/// Checks the ledger on the shards themselves: nothing prepared is left,
/// money adds up, every transfer is on both shards or on neither, each
/// account's balance matches its transfers, and every acknowledged
/// transfer is there. Returns the number of transfers committed.
fn check_ledger(c: &Cluster, acked: &[i64]) -> usize {
    let prepared = per_shard_n(c, "SELECT count(*) FROM pg_prepared_xacts");
    assert_eq!(prepared, vec![0, 0], "prepared transactions left behind");
    let total: i64 = per_shard_n(c, "SELECT coalesce(sum(balance), 0) FROM accounts")
        .iter()
        .sum();
    assert_eq!(total, START_BALANCE * ACCOUNTS, "money was created or lost");
    let wrong = per_shard_n(
        c,
        &format!(
            "SELECT count(*) FROM accounts a WHERE balance <> {START_BALANCE} + \
             coalesce((SELECT sum(delta) FROM transfers t WHERE t.account_id = a.id), 0)"
        ),
    );
    assert_eq!(
        wrong,
        vec![0, 0],
        "balances that do not match their transfers"
    );
    let ids: Vec<BTreeSet<i64>> = per_shard(c, "SELECT txid FROM transfers")
        .into_iter()
        .map(|rows| rows.iter().map(|r| r.parse().unwrap()).collect())
        .collect();
    let one_sided: Vec<&i64> = ids[0].symmetric_difference(&ids[1]).collect();
    assert!(
        one_sided.is_empty(),
        "{} transfers committed on one shard only: {:?}",
        one_sided.len(),
        &one_sided[..one_sided.len().min(20)]
    );
    let lost: Vec<&i64> = acked.iter().filter(|t| !ids[0].contains(t)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged transfers are missing: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    ids[0].len()
}

/// Arms `pattern` on `proxy` and waits until it fired.
async fn stop_at(proxy: &FaultProxy, pattern: &str, fault: ConnFault) {
    let before = proxy.fired();
    proxy.on_match(Direction::ToServer, pattern.as_bytes(), fault);
    let what = pattern;
    let start = Instant::now();
    while proxy.fired() == before {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} never seen on the wire"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The proxy's log lines about two-phase commit.
fn two_phase_lines(proxy: &Proxy) -> String {
    proxy
        .log_text()
        .lines()
        .filter(|l| l.contains("two-phase") || l.contains("in-doubt"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Kills the proxy with SIGKILL and waits until it is gone.
fn kill_proxy(proxy: &mut Proxy) {
    send_signal(proxy.pid(), "-KILL");
    assert!(
        proxy.wait_exit(Duration::from_secs(30)).is_some(),
        "proxy survived SIGKILL"
    );
}

/// Two-phase commit under a ledger load with faults between its phases: the
/// network to one shard cut after PREPARE (COMMIT PREPARED lost), and the
/// proxy killed with SIGKILL after the decision and before it. After the
/// proxy's restart every transfer is committed on both shards or on
/// neither, and no acknowledged transfer is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_survives_cuts_and_proxy_kills() {
    let c = cluster(ClusterSpec::new(2, 0));
    let via = via(&c, &["shard0-primary", "shard1-primary"]);
    let shard1 = &via["shard1-primary"];
    let port = free_port();
    let log = c.dir().join("faults-2pc.log");
    let cfg = config_via(
        &c,
        &via,
        port,
        &format!(
            "pool_size = 20\nconnect_timeout = \"2s\"\ntwo_phase_commit = true\ntwo_phase_log = {:?}",
            log.display().to_string()
        ),
        "[routing]\nban_ms = 1000\n\n[[sharded_tables]]\ntable = \"accounts\"\ncolumn = \"id\"\n\n\
         [[sharded_tables]]\ntable = \"transfers\"\ncolumn = \"account_id\"\n",
    );
    let mut proxy = Proxy::start(c.dir(), port, &cfg);
    let app = connect(&proxy.app()).await;
    for sql in [
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)".to_owned(),
        "CREATE TABLE transfers (account_id bigint NOT NULL, txid bigint NOT NULL, \
         delta bigint NOT NULL, PRIMARY KEY (account_id, txid))"
            .to_owned(),
        format!(
            "INSERT INTO accounts SELECT g, {START_BALANCE} FROM generate_series(1, {ACCOUNTS}) g"
        ),
    ] {
        app.batch_execute(&sql).await.unwrap();
    }
    drop(app);
    let held = per_shard(&c, "SELECT id FROM accounts ORDER BY id");
    let s0: Vec<i64> = held[0].iter().map(|v| v.parse().unwrap()).collect();
    let s1: Vec<i64> = held[1].iter().map(|v| v.parse().unwrap()).collect();
    assert!(
        s0.len() > 5 && s1.len() > 5,
        "accounts on both shards: {held:?}"
    );
    let mut acked = Vec::new();
    let mut report = Vec::new();

    // 1. The network to shard 1 is cut when a COMMIT PREPARED goes out,
    // and stays cut for 2 s while the load goes on.
    let ledger = Ledger::start(&proxy.app(), 6, 1, &s0, &s1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_at(shard1, "COMMIT PREPARED", ConnFault::Cut).await;
    shard1.cut(NewConnections::Refuse);
    tokio::time::sleep(Duration::from_secs(2)).await;
    shard1.heal();
    // The in-doubt commit is finished while the proxy runs: its locks
    // would otherwise stall every transfer touching its accounts.
    let healed = Instant::now();
    while per_shard_n(&c, "SELECT count(*) FROM pg_prepared_xacts") != vec![0, 0] {
        assert!(
            healed.elapsed() < Duration::from_secs(30),
            "the commit cut off from shard 1 stayed in doubt while the proxy ran"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resolved_after = healed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t = ledger.finish().await;
    report.push(format!(
        "cut after PREPARE: {} acked, errors {:?}, in-doubt commit finished {resolved_after:?} after the network came back",
        t.acked.len(),
        t.errors
    ));
    acked.extend(t.acked);
    check_ledger(&c, &acked);

    // 2. and 3. The proxy is killed while a transfer's second phase (or
    // its first) is on the wire to shard 1; then restarted.
    // The transaction held at its COMMIT PREPARED was decided: committed at
    // restart; the one held at its PREPARE TRANSACTION was not: rolled back.
    for (round, (pattern, expect)) in [
        ("COMMIT PREPARED", "COMMIT PREPARED"),
        ("PREPARE TRANSACTION", "ROLLBACK PREPARED"),
    ]
    .into_iter()
    .enumerate()
    {
        let ledger = Ledger::start(&proxy.app(), 6, round as i64 + 2, &s0, &s1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop_at(shard1, pattern, ConnFault::Stall).await;
        kill_proxy(&mut proxy);
        let t = ledger.finish().await;
        // The held message never reaches the shard.
        shard1.cut_open();
        let in_doubt = per_shard_n(&c, "SELECT count(*) FROM pg_prepared_xacts");
        let restarted = Instant::now();
        proxy = Proxy::start(c.dir(), port, &cfg);
        // Recovery runs before the first client is let in (the listening
        // socket is open already).
        let probe = connect(&proxy.app()).await;
        drop(probe);
        let recovery = restarted.elapsed();
        // Besides the held transaction, others may be in doubt either way:
        // what the killed proxy had written but its fault proxy had not
        // forwarded yet is lost with it (as on a real network).
        let lines = two_phase_lines(&proxy);
        let resolved: BTreeMap<&str, usize> = ["COMMIT PREPARED", "ROLLBACK PREPARED"]
            .into_iter()
            .map(|a| {
                (
                    a,
                    lines
                        .lines()
                        .filter(|l| l.contains("resolved an in-doubt") && l.contains(a))
                        .count(),
                )
            })
            .collect();
        assert!(
            resolved[expect] >= 1,
            "recovery did not run {expect} for the held transaction (in doubt: {in_doubt:?}):\n{lines}"
        );
        report.push(format!(
            "proxy killed at {pattern}: {} acked, errors {:?}, in doubt {in_doubt:?} (per shard), resolved at restart {resolved:?} ({recovery:?})",
            t.acked.len(),
            t.errors
        ));
        acked.extend(t.acked);
        check_ledger(&c, &acked);
    }
    // Transfers work after all of it.
    let ledger = Ledger::start(&proxy.app(), 2, 9, &s0, &s1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = ledger.finish().await;
    assert!(!t.acked.is_empty() && t.errors.is_empty(), "{t:?}");
    acked.extend(t.acked);
    let committed = check_ledger(&c, &acked);
    println!(
        "{}\n{committed} transfers committed on both shards, {} acknowledged",
        report.join("\n"),
        acked.len()
    );
}

/// A statement over several shards, one of which stalls mid-answer: the
/// client gets 57014 shortly after `query_timeout` instead of waiting for
/// that shard forever; other clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_mid_answer_on_one_shard_of_several() {
    let c = cluster(ClusterSpec::new(2, 0));
    let via = via(&c, &["shard1-primary"]);
    let shard1 = &via["shard1-primary"];
    let query_timeout = Duration::from_secs(2);
    let proxy = proxy_via(
        &c,
        &via,
        "pool_size = 20\nquery_timeout = \"2s\"",
        "[[sharded_tables]]\ntable = \"big\"\ncolumn = \"id\"\n",
    );
    let app = connect(&proxy.app()).await;
    app.batch_execute("CREATE TABLE big (id bigint PRIMARY KEY, m text)")
        .await
        .unwrap();
    app.batch_execute("INSERT INTO big SELECT g, NULL FROM generate_series(1, 200) g")
        .await
        .unwrap();
    let on1: Vec<String> = per_shard(&c, "SELECT id FROM big ORDER BY id")[1].clone();
    let marker = &on1[on1.len() / 2];
    app.batch_execute(&format!(
        "UPDATE big SET m = 'stall-marker' WHERE id = {marker}"
    ))
    .await
    .unwrap();
    let others = Load::start(&proxy.app(), 4, READ).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    shard1.on_match(Direction::ToClient, b"stall-marker", ConnFault::Stall);
    let started = Instant::now();
    let r = tokio::time::timeout(
        HANG,
        app.simple_query("SELECT id, m, repeat('x', 1000) AS pad FROM big"),
    )
    .await
    .expect("the statement hung past query_timeout");
    let waited = started.elapsed();
    let err = r.expect_err("an answer through a stalled network");
    assert_eq!(shard1.fired(), 1, "the stall fired");
    let tally = others.finish().await;
    println!(
        "cross-shard statement with a stalled shard: {:?} after {waited:?}; others: {} queries, {} errors",
        sqlstate(&err),
        tally.ok,
        tally.errors.len()
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(
        waited < query_timeout + Duration::from_secs(8),
        "waited {waited:?} with query_timeout {query_timeout:?}"
    );
    assert!(tally.errors.is_empty(), "errors: {:?}", tally.errors);
    assert_eq!(first_value(&app, "SELECT 1").await.unwrap(), "1");
}

/// A replica fails under reads that run on both shards, merged (an
/// aggregate) and concatenated (plain rows): the reads caught on it run
/// again on the shard's other node before anything reached the client, so
/// no client sees an error, and the reads after go elsewhere.
async fn replica_fault_under_cross_shard_reads(fault: NodeFault) {
    let c = cluster(ClusterSpec::new(2, 1));
    let stall = fault == NodeFault::Stall;
    let via = if stall {
        via(&c, &["shard1-replica0"])
    } else {
        Via::new()
    };
    let victim = &c.shard(1).replicas[0];
    let port = free_port();
    let proxy = Proxy::start(
        c.dir(),
        port,
        &config_via(
            &c,
            &via,
            port,
            "pool_size = 20",
            "[routing]\ndefault_consistency = \"eventual\"\nhealth_check_ms = 1000\nban_ms = 2000\n\n\
             [[sharded_tables]]\ntable = \"cs\"\ncolumn = \"id\"\n",
        ),
    );
    let app = connect(&proxy.app()).await;
    app.batch_execute("CREATE TABLE cs (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    app.batch_execute("INSERT INTO cs SELECT generate_series(1, 100)")
        .await
        .unwrap();
    c.wait_replicas_caught_up(Duration::from_secs(30)).unwrap();
    // Every read runs on both shards; its value is a row count or an id,
    // not a port (a range of the key: both shards answer, one has the row).
    let merged = Load::start(&proxy.app(), 4, "SELECT count(*)::int FROM cs").await;
    let concatenated = Load::start(&proxy.app(), 4, "SELECT id::int FROM cs WHERE id < 2").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    match fault {
        NodeFault::Kill => victim.kill().unwrap(),
        NodeFault::Stall => via[victim.name()].stall(),
        other => unreachable!("{other:?}"),
    }
    let faulted = Instant::now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut tally = merged.finish().await;
    let concat = concatenated.finish().await;
    if stall {
        via[victim.name()].heal();
    }
    let concat_ok = concat.ok;
    tally.ok += concat.ok;
    tally.errors.extend(concat.errors);
    tally.served.extend(concat.served);
    tally.slowest = tally.slowest.max(concat.slowest);
    let after = tally
        .served
        .iter()
        .filter(|(t, _)| *t > faulted + Duration::from_secs(4))
        .count();
    println!(
        "replica {fault:?} under cross-shard reads: {} reads ({concat_ok} concatenated), {} errors {:?}, slowest {:?}, {after} reads in the last 2 s",
        tally.ok,
        tally.errors.len(),
        tally.codes(),
        tally.slowest,
    );
    assert!(
        tally.errors.is_empty(),
        "client-visible errors: {:?}",
        &tally.errors[..tally.errors.len().min(5)]
    );
    // Two unanswered checks of health_check_ms, plus the machine's slowness.
    let limit = Duration::from_millis(2 * 1000 + 1500 + 2000);
    assert!(tally.slowest <= limit, "a read waited {:?}", tally.slowest);
    assert!(after > 0, "no reads once the replica was out");
}

/// A replica's network stalls under reads that run on both shards: those
/// caught on it run again elsewhere when it is banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_stalled_under_cross_shard_reads() {
    replica_fault_under_cross_shard_reads(NodeFault::Stall).await;
}

/// A replica killed with SIGKILL under reads that run on both shards: those
/// caught on it run again on the shard's primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_under_cross_shard_reads() {
    replica_fault_under_cross_shard_reads(NodeFault::Kill).await;
}

/// A shard's primary frozen with SIGSTOP for 6 s under the two-shard ledger
/// (two-phase commit): transfers caught on it fail with 08006, and after
/// SIGCONT, with the proxy still running, every transfer is on both shards
/// or on neither and nothing is left prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_frozen_under_two_phase_commit() {
    let c = cluster(ClusterSpec::new(2, 0));
    let port = free_port();
    let log = c.dir().join("faults-2pc-freeze.log");
    let cfg = config_via(
        &c,
        &Via::new(),
        port,
        &format!(
            "pool_size = 20\nconnect_timeout = \"2s\"\ntwo_phase_commit = true\ntwo_phase_log = {:?}",
            log.display().to_string()
        ),
        "[routing]\nhealth_check_ms = 1000\nban_ms = 1000\n\n[[sharded_tables]]\ntable = \"accounts\"\ncolumn = \"id\"\n\n\
         [[sharded_tables]]\ntable = \"transfers\"\ncolumn = \"account_id\"\n",
    );
    let proxy = Proxy::start(c.dir(), port, &cfg);
    let app = connect(&proxy.app()).await;
    for sql in [
        "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)".to_owned(),
        "CREATE TABLE transfers (account_id bigint NOT NULL, txid bigint NOT NULL, \
         delta bigint NOT NULL, PRIMARY KEY (account_id, txid))"
            .to_owned(),
        format!(
            "INSERT INTO accounts SELECT g, {START_BALANCE} FROM generate_series(1, {ACCOUNTS}) g"
        ),
    ] {
        app.batch_execute(&sql).await.unwrap();
    }
    let held = per_shard(&c, "SELECT id FROM accounts ORDER BY id");
    let s0: Vec<i64> = held[0].iter().map(|v| v.parse().unwrap()).collect();
    let s1: Vec<i64> = held[1].iter().map(|v| v.parse().unwrap()).collect();
    let ledger = Ledger::start(&proxy.app(), 6, 1, &s0, &s1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.shard(1).primary.pause().unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    c.shard(1).primary.resume().unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let t = ledger.finish().await;
    let resumed = Instant::now();
    while per_shard_n(&c, "SELECT count(*) FROM pg_prepared_xacts") != vec![0, 0] {
        if resumed.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "primary frozen under two-phase commit: {} acked, errors {:?}, nothing prepared {:?} after the load stopped\n{}",
        t.acked.len(),
        t.errors,
        resumed.elapsed(),
        two_phase_lines(&proxy)
    );
    assert!(
        t.errors.keys().all(|c| c == "08006"),
        "errors other than 08006: {:?}",
        t.errors
    );
    check_ledger(&c, &t.acked);
}
