//! Shared helpers for the integration tests: a real Postgres cluster (from the
//! harness), the real `shardgate` binary configured for it, and real clients.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec};

mod raw;
// Not every test binary uses the raw client.
#[allow(unused_imports)]
pub use raw::*;

/// Password of the `app` role every test cluster has.
pub const APP_PASSWORD: &str = "secret";

/// A `[[users]]` entry for `raw`, who logs in without a password (so the
/// raw protocol client needs no SCRAM) and runs as `app` on the servers.
pub const RAW_USER: &str =
    "\n[[users]]\nname = \"raw\"\nauth = \"trust\"\nserver_user = \"app\"\nserver_password = \"secret\"\n";

/// `[[sharded_tables]]` entries for pgbench's tables, each by its key (hash,
/// bigint); a macro so test configurations can `concat!` it.
#[allow(unused_macros)]
macro_rules! pgbench_sharded_tables {
    () => {
        "\n[[sharded_tables]]\ntable = \"pgbench_accounts\"\ncolumn = \"aid\"\n\
         \n[[sharded_tables]]\ntable = \"pgbench_tellers\"\ncolumn = \"tid\"\n\
         \n[[sharded_tables]]\ntable = \"pgbench_branches\"\ncolumn = \"bid\"\n\
         \n[[sharded_tables]]\ntable = \"pgbench_history\"\ncolumn = \"aid\"\n"
    };
}
#[allow(unused_imports)]
pub(crate) use pgbench_sharded_tables;

/// Runs `cmd` with `input` on its standard input; returns what it printed.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

/// A cluster with an `app` role (password `secret`) owning database `app`.
pub fn cluster(spec: ClusterSpec) -> Cluster {
    let cluster = Cluster::start(spec).expect("start cluster");
    cluster
        .execute_on_primaries("CREATE ROLE app LOGIN SUPERUSER PASSWORD 'secret'")
        .expect("create role");
    cluster
        .execute_on_primaries("CREATE DATABASE app OWNER app")
        .expect("create database");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(60))
        .expect("replicas catch up");
    cluster
}

/// Rows of `sql` on each shard's primary, as strings.
pub fn per_shard(c: &Cluster, sql: &str) -> Vec<Vec<String>> {
    c.shards()
        .iter()
        .map(|s| {
            let out = s
                .primary
                .psql("app", sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            out.lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// One number per shard.
pub fn per_shard_n(c: &Cluster, sql: &str) -> Vec<i64> {
    per_shard(c, sql)
        .iter()
        .map(|v| v.first().and_then(|x| x.parse().ok()).unwrap_or(0))
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `[[shards]]` sections for every shard of `cluster`.
pub fn shards_toml(cluster: &Cluster) -> String {
    let mut s = String::new();
    for shard in cluster.shards() {
        let replicas: Vec<String> = shard
            .replicas
            .iter()
            .map(|r| format!("{:?}", r.addr()))
            .collect();
        s.push_str(&format!(
            "\n[[shards]]\nprimary = {:?}\nreplicas = [{}]\n",
            shard.primary.addr(),
            replicas.join(", ")
        ));
    }
    s
}

/// A complete configuration: `[proxy]` with `proxy_extra` lines, the `app`
/// user (SCRAM) plus `users_extra`, and the cluster's shards.
pub fn config(cluster: &Cluster, port: u16, proxy_extra: &str, users_extra: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n{proxy_extra}\n\n[[users]]\nname = \"app\"\npassword = \"secret\"\n{users_extra}\n{}",
        shards_toml(cluster)
    )
}

/// A running `shardgate` process; killed on drop.
pub struct Proxy {
    child: Option<Child>,
    /// Port it listens on.
    pub port: u16,
    /// Its log file.
    pub log: PathBuf,
}

/// Path of the `shardgate` binary under test (`SHARDGATE_BIN` overrides it,
/// e.g. to serve topologies from a copy while the workspace rebuilds).
pub fn binary() -> PathBuf {
    std::env::var_os("SHARDGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_shardgate")))
}

impl Proxy {
    /// Writes `config` into `dir`, starts the proxy and waits until it accepts connections.
    pub fn start(dir: &Path, port: u16, config: &str) -> Proxy {
        Proxy::start_with_env(dir, port, config, &[])
    }

    /// [`Proxy::start`] with extra environment variables (e.g. failpoints).
    pub fn start_with_env(dir: &Path, port: u16, config: &str, env: &[(&str, &str)]) -> Proxy {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stamp = format!("{}-{}-{n}", port, std::process::id());
        let config_path = dir.join(format!("proxy-{stamp}.toml"));
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.join(format!("proxy-{stamp}.log"));
        let log_file = std::fs::File::create(&log).expect("create log");
        let child = Command::new(binary())
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("TEST_PROXY_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn shardgate");
        let mut proxy = Proxy {
            child: Some(child),
            port,
            log,
        };
        proxy.wait_listening();
        proxy
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "shardgate exited with {status} before listening:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "shardgate did not listen on {} within 30 s:\n{}",
            self.port,
            self.log_tail()
        );
    }

    /// The last lines of the proxy's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The whole log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// libpq connection string through the proxy.
    pub fn conninfo(&self, user: &str, password: &str, database: &str) -> String {
        format!("host=127.0.0.1 port={} user={user} password={password} dbname={database} sslmode=disable", self.port)
    }

    /// Connection string for `app`/`secret` on database `app`.
    pub fn app(&self) -> String {
        self.conninfo("app", APP_PASSWORD, "app")
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        send_signal(self.pid(), "-TERM");
    }

    /// Waits for the process to exit (up to `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok().flatten() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let notable: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains("WARN") || l.contains("ERROR") || l.contains("ended with error")
                })
                .take(200)
                .collect();
            eprintln!(
                "---- shardgate log: warnings and errors ----\n{}\n---- shardgate log: tail ----\n{}",
                notable.join("\n"),
                self.log_tail()
            );
        }
    }
}

/// Runs a client program with a time limit; returns its output.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    }
}

/// `psql` with the given connection string and extra arguments.
pub fn psql(conninfo: &str) -> Command {
    let mut c = Command::new(shardgate_harness::pg_bin("psql"));
    c.arg("-X")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-d")
        .arg(conninfo);
    c
}

/// `pgbench` with the given connection string (passed as the database
/// name, which libpq expands; `-d` would mean `--debug`).
pub fn pgbench(conninfo: &str) -> PgBench {
    PgBench {
        conninfo: conninfo.to_owned(),
        cmd: Command::new(shardgate_harness::pg_bin("pgbench")),
    }
}

/// A pgbench invocation; the connection string goes last.
pub struct PgBench {
    conninfo: String,
    cmd: Command,
}

impl PgBench {
    /// Adds options.
    pub fn args<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(
        &mut self,
        args: I,
    ) -> &mut Self {
        self.cmd.args(args);
        self
    }

    /// The command, ready to run.
    pub fn command(&mut self) -> &mut Command {
        self.cmd.arg(&self.conninfo)
    }
}

/// Runs SQL through psql and returns trimmed unaligned output; panics on failure.
pub fn psql_ok(conninfo: &str, sql: &str) -> String {
    let out = run(
        psql(conninfo).args(["-A", "-t", "-c", sql]),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "psql failed for {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs the Python client `tests/clients/<name>` with `args` (off the async
/// runtime), asserts it succeeded and returns its standard output.
pub async fn run_client_script(name: &str, args: Vec<String>) -> String {
    let script = format!("{}/../../tests/clients/{name}", env!("CARGO_MANIFEST_DIR"));
    let what = name.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        run(
            Command::new("python3").arg(script).args(args),
            Duration::from_secs(600),
        )
    })
    .await
    .expect("client script task");
    assert_success(&out, &what);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects with tokio-postgres (no TLS) and drives the connection in the background.
pub async fn connect(conninfo: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e} {:?}", e.as_db_error()));
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("CONN ERROR {e:?}");
        }
    });
    client
}

/// The SQLSTATE of a tokio-postgres error, if it came from the server.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_owned())
}

/// Polls `f` until it returns true or `timeout` passes; returns whether it did.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts a client process succeeded, showing its output otherwise.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends signal `sig` (`"-STOP"`, `"-TERM"`, ...) to process `pid`.
pub fn send_signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// Replaces the file the proxy was started with (RELOAD reads it).
pub fn write_config(proxy: &Proxy, text: &str) {
    std::fs::write(proxy_config_path(proxy), text).expect("write config");
}

/// The file the proxy was started with (next to its log).
pub fn proxy_config_path(proxy: &Proxy) -> std::path::PathBuf {
    proxy.log.with_extension("toml")
}

/// Runs `openssl` with `args` in `dir` (certificates for TLS tests).
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = run(
        Command::new("openssl").current_dir(dir).args(args),
        Duration::from_secs(60),
    );
    assert_success(&out, &format!("openssl {args:?}"));
}

/// Samples a process's resident memory every 5 ms until stopped.
pub struct RssPeak {
    base: u64,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<()>,
}

impl RssPeak {
    /// Starts sampling process `pid`.
    pub fn start(pid: u32) -> RssPeak {
        let base = rss_kb(pid);
        let peak = Arc::new(AtomicU64::new(base));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kb(pid), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        RssPeak {
            base,
            peak,
            stop,
            sampler,
        }
    }

    /// The largest growth over the start so far, in kB.
    pub fn grew(&self) -> u64 {
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base)
    }

    /// Stops sampling; the largest growth, in kB.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let RssPeak {
            base,
            peak,
            sampler,
            ..
        } = self;
        sampler.join().unwrap();
        peak.load(Ordering::Relaxed).saturating_sub(base)
    }
}

/// Resident memory of a process, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
