//! Proxy memory per idle client: shardgate (shipped defaults, SCRAM) and PgBouncer, with
//! many client connections logged in and idle, and what one client that sent a large
//! statement or read a large answer leaves behind once it is idle.
//!
//! Run with `cargo bench -p shardgate --bench idle_clients` (set `SHARDGATE_HARNESS_DIR`
//! to a tmpfs directory of your own). The program starts one Postgres primary with the
//! harness, then for each target in turn: starts the proxy, logs one client in and runs
//! `SELECT 1` (so the pool holds a server connection and the runtime is warm), reads the
//! proxy's `VmRSS` from `/proc/<pid>/status`, opens `BENCH_IDLE_CLIENTS` client connections
//! that log in with SCRAM-SHA-256 (the `pool` crate's login over a raw socket: startup,
//! SASL, up to ReadyForQuery) and then send nothing, waits `BENCH_SETTLE_SECS`, and reads
//! `VmRSS` again. The difference over the client count is the proxy's memory per idle
//! client. Then one idle client leaves and another (tokio-postgres, simple protocol)
//! takes its place (shardgate's default `max_client_connections` is 10,000), sends a
//! statement of `BENCH_LARGE_MB` MB (`SELECT length('xxx...')`), goes idle, then reads a row of that size (`SELECT repeat('x', n)`) and goes idle; `VmRSS` after each
//! (and the peak, `VmHWM`, reset before each through `/proc/<pid>/clear_refs`) tells what
//! the proxy kept. Last, every client disconnects and `VmRSS` is read once more.
//!
//! Environment (defaults in brackets): `BENCH_IDLE_CLIENTS` [10000], `BENCH_TARGETS`
//! [shardgate,pgbouncer], `BENCH_SETTLE_SECS` [3], `BENCH_LARGE_MB` [10] (0 skips the
//! large statement and answer), `BENCH_CONNECT_CONCURRENCY` [32] logins in flight,
//! `BENCH_SHARDGATE`: another shardgate binary to run as target `shardgate` (e.g. an older
//! build, to compare), `BENCH_ROUNDS` [1]: the targets run this many times, interleaved.
//!
//! File descriptors: the bench raises its own `RLIMIT_NOFILE` to the client count plus a
//! margin (the hard limit too when it may, e.g. as root with `CAP_SYS_RESOURCE`; otherwise
//! the soft limit to the hard one, which must then suffice); shardgate inherits it,
//! PgBouncer (started through `runuser`, whose PAM session set its soft limit to 1024
//! here) raises its soft limit to the hard one before it starts. Each proxy holds one
//! descriptor per client.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec};
use shardgate_pool::{ConnectParams, ServerConn, ServerTls};

#[path = "common/mod.rs"]
mod common;
use common::{
    create_app, free_port, in_own_session, pgbouncer_version, start_pgbouncer, status_kb,
    write_readable, Process, DATABASE, PASSWORD, USER,
};

/// Server connections per proxy: shardgate's shipped `pool_size`, and PgBouncer's
/// `default_pool_size` default.
const POOL: usize = 20;
/// Room above the client count in the proxies' limits and the fd limit.
const FD_MARGIN: u64 = 200;

struct Params {
    clients: usize,
    targets: Vec<String>,
    settle: Duration,
    large_bytes: usize,
    concurrency: usize,
    shardgate: PathBuf,
    rounds: usize,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not a number: {v:?}")),
        Err(_) => default,
    }
}

impl Params {
    fn from_env() -> Params {
        let targets = std::env::var("BENCH_TARGETS")
            .unwrap_or_else(|_| "shardgate,pgbouncer".into())
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>();
        for t in &targets {
            assert!(
                t == "shardgate" || t == "pgbouncer",
                "BENCH_TARGETS: unknown target {t:?} (shardgate, pgbouncer)"
            );
        }
        Params {
            clients: env_number("BENCH_IDLE_CLIENTS", 10_000),
            targets,
            settle: Duration::from_secs(env_number("BENCH_SETTLE_SECS", 3)),
            large_bytes: env_number::<usize>("BENCH_LARGE_MB", 10) << 20,
            concurrency: env_number("BENCH_CONNECT_CONCURRENCY", 32).max(1),
            shardgate: std::env::var_os("BENCH_SHARDGATE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shardgate"))),
            rounds: env_number("BENCH_ROUNDS", 1).max(1),
        }
    }
}

/// What one target measured (kB).
#[derive(Default)]
struct Measured {
    name: String,
    before: Option<u64>,
    idle: Option<u64>,
    connect_secs: f64,
    /// `VmRSS` with the large client connected and idle, before its statement.
    large_before: Option<u64>,
    /// Peak during the large statement, and `VmRSS` once its client is idle.
    stmt_peak: Option<u64>,
    stmt_after: Option<u64>,
    answer_peak: Option<u64>,
    answer_after: Option<u64>,
    closed: Option<u64>,
    nofile: Option<String>,
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("idle_clients bench: skipped (run it with `cargo bench`)");
        return;
    }
    let params = Params::from_env();
    // Each proxy holds one descriptor per client, and so does this process.
    let needed = params.clients as u64 + FD_MARGIN;
    let limit = raise_nofile(needed);
    assert!(
        limit >= needed,
        "RLIMIT_NOFILE hard limit {limit} is below the {needed} descriptors {} clients need \
         (raise it, e.g. `ulimit -Hn {needed}` as root, or lower BENCH_IDLE_CLIENTS)",
        params.clients
    );
    eprintln!("starting the primary");
    let cluster = Cluster::start(ClusterSpec::new(1, 0).setting("max_connections", "200"))
        .expect("start the cluster");
    create_app(&cluster);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut results = Vec::new();
    for round in 0..params.rounds {
        for target in &params.targets {
            eprintln!("round {}: {target}", round + 1);
            let (port, process) = match target.as_str() {
                "shardgate" => spawn_shardgate(&params.shardgate, &cluster),
                _ => start_pgbouncer(
                    cluster.dir(),
                    cluster.shard(0).primary.port(),
                    POOL,
                    params.clients + FD_MARGIN as usize,
                ),
            };
            let m = rt.block_on(measure(&params, target, port, process.pid));
            report(&m, params.clients);
            results.push(m);
            drop(process);
        }
    }
    print_table(&params, &results);
}

/// Raises this process's `RLIMIT_NOFILE` to at least `want` descriptors (the hard limit
/// too, which needs `CAP_SYS_RESOURCE`) or else the soft limit to the hard one; returns the soft limit.
/// The proxies started afterwards inherit it.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let raised = libc::rlimit {
            rlim_cur: want.max(lim.rlim_cur),
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return raised.rlim_cur;
        }
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_cur
}

/// shardgate with the shipped defaults: only the listen address, the user and the primary.
fn spawn_shardgate(binary: &Path, cluster: &Cluster) -> (u16, Process) {
    let port = free_port();
    let config = cluster.dir().join("shardgate-idle.toml");
    write_readable(
        &config,
        &format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n\n[[users]]\nname = \"{USER}\"\n\
             password = \"{PASSWORD}\"\n\n[[shards]]\nprimary = {:?}\nreplicas = []\n",
            cluster.shard(0).primary.addr()
        ),
    );
    let mut command = in_own_session(binary);
    command.arg("--config").arg(&config);
    let mut process = Process::spawn(
        "shardgate",
        command,
        &cluster.dir().join("shardgate-idle.log"),
    );
    process.wait_listening(port);
    (port, process)
}

fn conninfo(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DATABASE} \
         sslmode=disable"
    )
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS.
fn reset_peak(pid: u32) {
    let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

async fn measure(params: &Params, name: &str, port: u16, pid: u32) -> Measured {
    let mut m = Measured {
        name: name.to_owned(),
        nofile: fs::read_to_string(format!("/proc/{pid}/limits"))
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .map(|l| {
                        l.split_whitespace()
                            .skip(3)
                            .take(2)
                            .collect::<Vec<_>>()
                            .join("/")
                    })
            }),
        ..Default::default()
    };
    // Warm up: one login and one statement, so the pool holds a server connection.
    {
        let client = connect_pg(port).await;
        client.simple_query("SELECT 1").await.expect("SELECT 1");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    m.before = status_kb(pid, "VmRSS");
    let started = Instant::now();
    let mut idle = open_idle(params, port).await;
    m.connect_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(params.settle).await;
    m.idle = status_kb(pid, "VmRSS");
    eprintln!(
        "{name}: {} idle clients in {:.1} s, RSS {:?} -> {:?} kB",
        idle.len(),
        m.connect_secs,
        m.before,
        m.idle
    );
    if params.large_bytes > 0 {
        // The large client takes an idle one's place: shardgate's default
        // `max_client_connections` is 10,000, the bench's default client count.
        drop(idle.pop());
        tokio::time::sleep(Duration::from_millis(200)).await;
        let client = connect_pg(port).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        m.large_before = status_kb(pid, "VmRSS");
        reset_peak(pid);
        let sql = format!("SELECT length('{}')", "x".repeat(params.large_bytes));
        let rows = client.simple_query(&sql).await.expect("large statement");
        drop(rows);
        drop(sql);
        m.stmt_peak = status_kb(pid, "VmHWM");
        tokio::time::sleep(params.settle).await;
        m.stmt_after = status_kb(pid, "VmRSS");
        reset_peak(pid);
        let rows = client
            .simple_query(&format!("SELECT repeat('x', {})", params.large_bytes))
            .await
            .expect("large answer");
        drop(rows);
        m.answer_peak = status_kb(pid, "VmHWM");
        tokio::time::sleep(params.settle).await;
        m.answer_after = status_kb(pid, "VmRSS");
        drop(client);
    }
    drop(idle);
    tokio::time::sleep(params.settle).await;
    m.closed = status_kb(pid, "VmRSS");
    m
}

async fn connect_pg(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&conninfo(port), tokio_postgres::NoTls)
        .await
        .expect("connect with tokio-postgres");
    tokio::spawn(conn);
    client
}

/// Opens `params.clients` logged-in connections, `params.concurrency` logins at a time.
async fn open_idle(params: &Params, port: u16) -> Vec<ServerConn> {
    let connect = Arc::new(ConnectParams {
        addr: format!("127.0.0.1:{port}").into(),
        user: USER.into(),
        password: Some(PASSWORD.into()),
        database: DATABASE.into(),
        connect_timeout: Duration::from_secs(60),
        prepared_capacity: 1,
        tls: Arc::new(ServerTls::disabled()),
    });
    let mut conns = Vec::with_capacity(params.clients);
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    while conns.len() < params.clients {
        while started < params.clients && tasks.len() < params.concurrency {
            let connect = connect.clone();
            tasks.spawn(async move {
                let mut conn = ServerConn::connect(&connect).await?;
                // The bench's own memory: nothing is read on an idle connection.
                conn.read_buf = bytes::BytesMut::new();
                conn.server_params = Vec::new();
                Ok::<_, shardgate_pool::ConnectError>(conn)
            });
            started += 1;
        }
        match tasks.join_next().await {
            Some(Ok(Ok(conn))) => conns.push(conn),
            Some(Ok(Err(e))) => panic!("client {} could not log in: {e}", conns.len()),
            Some(Err(e)) => panic!("login task failed: {e}"),
            None => break,
        }
    }
    conns
}

fn kb(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| format!("{:.1}", v as f64 / 1024.0))
}

fn diff(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.1}", (b as f64 - a as f64) / 1024.0),
        _ => "?".into(),
    }
}

fn per_client(m: &Measured, clients: usize) -> String {
    match (m.before, m.idle) {
        (Some(a), Some(b)) => format!("{:.2}", (b as f64 - a as f64) / clients as f64),
        _ => "?".into(),
    }
}

fn report(m: &Measured, clients: usize) {
    eprintln!(
        "{}: {} kB per idle client; large statement: peak {} MiB, kept {} MiB; large answer: \
         peak {} MiB, kept {} MiB; all closed: {} MiB",
        m.name,
        per_client(m, clients),
        diff(m.large_before, m.stmt_peak),
        diff(m.large_before, m.stmt_after),
        diff(m.stmt_after, m.answer_peak),
        diff(m.stmt_after, m.answer_after),
        kb(m.closed)
    );
}

fn print_table(params: &Params, results: &[Measured]) {
    println!(
        "\n| target | RSS MiB before | RSS MiB with {} idle | kB per idle client | login time s | {} MB statement: peak / kept MiB | {} MB answer: peak / kept MiB | RSS MiB after all left |",
        params.clients,
        params.large_bytes >> 20,
        params.large_bytes >> 20
    );
    println!("|---|---|---|---|---|---|---|---|");
    for m in results {
        println!(
            "| {} | {} | {} | {} | {:.1} | {} / {} | {} / {} | {} |",
            m.name,
            kb(m.before),
            kb(m.idle),
            per_client(m, params.clients),
            m.connect_secs,
            diff(m.large_before, m.stmt_peak),
            diff(m.large_before, m.stmt_after),
            diff(m.stmt_after, m.answer_peak),
            diff(m.stmt_after, m.answer_after),
            kb(m.closed),
        );
    }
    println!();
    println!("- clients: {} idle, logged in with SCRAM-SHA-256, {} logins in flight; settle {} s before each reading", params.clients, params.concurrency, params.settle.as_secs());
    println!(
        "- shardgate: {} with the shipped defaults (transaction pooling, pool_size {POOL}, workers = one per core)",
        params.shardgate.display()
    );
    if params.targets.iter().any(|t| t == "pgbouncer") {
        println!(
            "- pgbouncer: {}, transaction mode, default_pool_size {POOL}, scram-sha-256",
            pgbouncer_version()
        );
    }
    for m in results {
        println!(
            "- {}: max open files (soft/hard) {}",
            m.name,
            m.nofile.as_deref().unwrap_or("?")
        );
    }
    println!(
        "- kept: VmRSS once the large client is idle, minus VmRSS before its statement (answer: minus VmRSS after the statement); peak: VmHWM (reset before each) minus the same"
    );
    println!(
        "- machine: {} CPU(s)",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
}
