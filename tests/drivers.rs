//! The driver conformance matrix (tests/clients/SCENARIOS.md): pgjdbc,
//! node-postgres, psycopg 3, asyncpg and libpq run the same scenarios through
//! shardgate in three topologies (one primary; a primary with a replica;
//! two shards of a primary and a replica each), check the data on the
//! servers afterwards, and the test prints a scenario × driver × topology
//! table and fails on any scenario that did not pass.
//!
//! `cargo test --test drivers -- --ignored serve_topologies --nocapture`
//! starts the same topologies and keeps them running (writing one
//! `<topology>.env` file per topology into `$SG_SERVE_DIR`, default
//! `/tmp/sg-serve`) until a file `stop` appears there: to run a driver
//! program by hand (`set -a; . /tmp/sg-serve/sharded.env; python3 ...`).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shardgate_harness::{Cluster, ClusterSpec};
use support::{run, Proxy, APP_PASSWORD};

/// Scenario names, in the order every program reports them.
const SCENARIOS: &[&str] = &[
    "autocommit",
    "tx_commit",
    "tx_rollback",
    "savepoint",
    "error_in_tx",
    "prepared_reuse",
    "batch",
    "returning",
    "cursor_fetch",
    "copy_text",
    "copy_csv",
    "copy_binary",
    "listen_notify",
    "cancel_timeout",
    "types",
    "metadata",
    "read_your_writes",
    "cross_shard_read",
    "client_killed",
    "backend_terminated",
    "multi_statement",
];

/// The topologies, in table order.
const TOPOLOGIES: &[&str] = &["single", "replicas", "sharded"];

/// Database of a topology's unsharded reference copy (on shard 0's
/// primary): one per topology, as the topologies run at the same time.
fn ref_database(topology: &str) -> String {
    format!("drv_ref_{topology}")
}

/// Time limit of one driver program's whole run.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(900);

/// One driver program.
struct Driver {
    name: &'static str,
    /// First key of its range in every table.
    key_base: i64,
}

const DRIVERS: &[Driver] = &[
    Driver {
        name: "pgjdbc",
        key_base: 1_000_000,
    },
    Driver {
        name: "node-postgres",
        key_base: 2_000_000,
    },
    Driver {
        name: "psycopg",
        key_base: 3_000_000,
    },
    Driver {
        name: "asyncpg",
        key_base: 4_000_000,
    },
    Driver {
        name: "libpq",
        key_base: 5_000_000,
    },
];

fn clients_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/clients"))
}

/// The command that runs `driver`'s program (the JDBC one compiled into `build`).
fn driver_command(driver: &Driver, build: &Path) -> Command {
    let dir = clients_dir();
    match driver.name {
        "pgjdbc" => {
            let mut c = Command::new("java");
            c.arg("-cp")
                .arg(format!("{}:{}", build.display(), jdbc_jar()))
                .arg("Conformance");
            c
        }
        "node-postgres" => {
            let mut c = Command::new("node");
            c.arg(dir.join("node/conformance.js"));
            c
        }
        "psycopg" => {
            let mut c = Command::new("python3");
            c.arg(dir.join("psycopg_conformance.py"));
            c
        }
        "asyncpg" => {
            let mut c = Command::new("python3");
            c.arg(dir.join("asyncpg_conformance.py"));
            c
        }
        "libpq" => {
            let mut c = Command::new("bash");
            c.arg(dir.join("libpq_conformance.sh"));
            c.env(
                "PG_BIN",
                shardgate_harness::pg_bin("psql").parent().unwrap(),
            );
            c
        }
        other => panic!("unknown driver {other}"),
    }
}

/// pgjdbc's jar (Debian's libpostgresql-jdbc-java; scripts/deps.sh installs it).
fn jdbc_jar() -> &'static str {
    "/usr/share/java/postgresql.jar"
}

/// Compiles the JDBC program into `build`.
fn compile_jdbc(build: &Path) {
    let out = run(
        Command::new("javac")
            .arg("-d")
            .arg(build)
            .arg("-cp")
            .arg(jdbc_jar())
            .arg(clients_dir().join("jdbc/Conformance.java")),
        Duration::from_secs(300),
    );
    support::assert_success(&out, "javac Conformance.java");
}

/// One topology behind its own proxy.
struct Topology {
    name: &'static str,
    database: String,
    proxy: Proxy,
    primaries: Vec<String>,
}

impl Topology {
    /// The environment a driver program gets (SCENARIOS.md).
    fn env(&self, ref_addr: &str, key_base: i64) -> Vec<(String, String)> {
        vec![
            ("SG_HOST".into(), "127.0.0.1".into()),
            ("SG_PORT".into(), self.proxy.port.to_string()),
            ("SG_USER".into(), "app".into()),
            ("SG_PASSWORD".into(), APP_PASSWORD.into()),
            ("SG_DATABASE".into(), self.database.clone()),
            ("SG_TOPOLOGY".into(), self.name.into()),
            ("SG_PRIMARIES".into(), self.primaries.join(",")),
            ("SG_REF".into(), ref_addr.into()),
            ("SG_REF_DATABASE".into(), ref_database(self.name)),
            ("SG_KEY_BASE".into(), key_base.to_string()),
        ]
    }
}

/// The shard-map part of the sharded topology's configuration.
const SHARDED_TABLES: &str = r#"
[sharding]
default_shard = 0

[[sharded_tables]]
table = "accounts"
column = "id"
function = "hash"
key_type = "bigint"

[[sharded_tables]]
table = "ledger"
column = "account_id"
function = "hash"
key_type = "bigint"

[[sharded_tables]]
table = "typed"
column = "id"
function = "hash"
key_type = "bigint"

[[reference_tables]]
table = "currencies"
"#;

/// The cluster, the reference database and the three topologies' proxies.
struct Matrix {
    topologies: Vec<Topology>,
    ref_addr: String,
    _dir: tempdir::Dir,
    cluster: Cluster,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("sg-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("create temp dir");
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Matrix {
    fn start() -> Matrix {
        let cluster = support::cluster(ClusterSpec::new(2, 1));
        let dir = tempdir::Dir::new("drivers");
        let mut databases: Vec<String> = TOPOLOGIES
            .iter()
            .flat_map(|t| [format!("drv_{t}"), ref_database(t)])
            .collect();
        databases.push("drv_direct".into());
        for db in databases {
            cluster
                .execute_on_primaries(&format!("CREATE DATABASE {db} OWNER app"))
                .expect("create database");
        }
        cluster
            .wait_replicas_caught_up(Duration::from_secs(60))
            .expect("replicas catch up");
        let s0 = cluster.shard(0);
        let s1 = cluster.shard(1);
        let p0 = s0.primary.addr();
        let users = format!("\n[[users]]\nname = \"app\"\npassword = \"{APP_PASSWORD}\"\n");
        let proxy_section = |port: u16| format!("[proxy]\nlisten = \"127.0.0.1:{port}\"\n");
        let start = |name: &'static str, db: &str, body: String, primaries: Vec<String>| {
            let port = support::free_port();
            let config = format!("{}{users}{body}", proxy_section(port));
            let proxy = Proxy::start(&dir.0, port, &config);
            Topology {
                name,
                database: db.into(),
                proxy,
                primaries,
            }
        };
        let single = start(
            "single",
            "drv_single",
            format!("\n[[shards]]\nprimary = {p0:?}\n"),
            vec![p0.clone()],
        );
        let replicas = start(
            "replicas",
            "drv_replicas",
            format!(
                "\n[routing]\ndefault_consistency = \"eventual\"\n\n[[shards]]\nprimary = {p0:?}\nreplicas = [{:?}]\n",
                s0.replicas[0].addr()
            ),
            vec![p0.clone()],
        );
        let p1 = s1.primary.addr();
        let sharded = start(
            "sharded",
            "drv_sharded",
            format!(
                "\n[routing]\ndefault_consistency = \"eventual\"\n{SHARDED_TABLES}\n[[shards]]\nprimary = {p0:?}\nreplicas = [{:?}]\n\n[[shards]]\nprimary = {p1:?}\nreplicas = [{:?}]\n",
                s0.replicas[0].addr(),
                s1.replicas[0].addr()
            ),
            vec![p0.clone(), p1],
        );
        let schema = std::fs::read_to_string(clients_dir().join("schema.sql")).expect("schema");
        let topologies = vec![single, replicas, sharded];
        for t in &topologies {
            let out = run(
                support::psql(&t.proxy.conninfo("app", APP_PASSWORD, &t.database))
                    .arg("-q")
                    .arg("-c")
                    .arg(&schema),
                Duration::from_secs(120),
            );
            support::assert_success(&out, &format!("schema through {}", t.name));
        }
        for t in TOPOLOGIES {
            s0.primary
                .psql(&ref_database(t), &schema)
                .expect("reference schema");
        }
        s0.primary
            .psql("drv_direct", &schema)
            .expect("schema directly");
        cluster
            .wait_replicas_caught_up(Duration::from_secs(60))
            .expect("replicas catch up");
        Matrix {
            topologies,
            ref_addr: p0,
            _dir: dir,
            cluster,
        }
    }
}

/// What one program said about one scenario.
#[derive(Debug, Clone)]
enum Outcome {
    Pass,
    Fail(String),
    Missing(String),
}

/// Runs one driver program against one topology; its outcome per scenario.
fn run_driver(
    driver: &Driver,
    topo: &Topology,
    ref_addr: &str,
    build: &Path,
) -> BTreeMap<String, Outcome> {
    let mut cmd = driver_command(driver, build);
    cmd.envs(topo.env(ref_addr, driver.key_base));
    let out = run(&mut cmd, DRIVER_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut seen = BTreeMap::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            eprintln!(
                "{} on {}: not a result line: {line}",
                driver.name, topo.name
            );
            continue;
        };
        let name = v["scenario"].as_str().unwrap_or("?").to_owned();
        let outcome = if v["ok"].as_bool() == Some(true) {
            Outcome::Pass
        } else {
            Outcome::Fail(v["detail"].as_str().unwrap_or("").to_owned())
        };
        seen.insert(name, outcome);
    }
    let why_missing = if out.status.success() {
        "not reported".to_owned()
    } else {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        format!(
            "program ended with {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    };
    for s in SCENARIOS {
        seen.entry((*s).to_owned())
            .or_insert_with(|| Outcome::Missing(why_missing.clone()));
    }
    if !stderr.trim().is_empty() {
        eprintln!(
            "---- {} on {}: stderr ----\n{}",
            driver.name,
            topo.name,
            stderr
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    seen
}

/// The table: one row per scenario, one column per driver and topology.
fn render_table(results: &BTreeMap<(String, String), BTreeMap<String, Outcome>>) -> String {
    let mut header = String::from("| scenario |");
    let mut rule = String::from("|---|");
    for d in DRIVERS {
        for t in TOPOLOGIES {
            header.push_str(&format!(" {} {} |", d.name, t));
            rule.push_str("---|");
        }
    }
    let mut text = format!("{header}\n{rule}\n");
    for s in SCENARIOS {
        text.push_str(&format!("| {s} |"));
        for d in DRIVERS {
            for t in TOPOLOGIES {
                let cell = match results
                    .get(&(d.name.to_owned(), (*t).to_owned()))
                    .and_then(|m| m.get(*s))
                {
                    Some(Outcome::Pass) => "ok",
                    Some(Outcome::Fail(_)) => "FAIL",
                    Some(Outcome::Missing(_)) | None => "missing",
                };
                text.push_str(&format!(" {cell} |"));
            }
        }
        text.push('\n');
    }
    text
}

/// Sessions left `idle in transaction` on a primary, in `database`.
fn idle_in_transaction(cluster: &Cluster, database: &str) -> Vec<String> {
    cluster
        .shards()
        .iter()
        .filter_map(|s| {
            let n = s
                .primary
                .psql(
                    "postgres",
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND state LIKE 'idle in transaction%'"
                    ),
                )
                .ok()?;
            (n != "0").then(|| format!("{}: {n}", s.primary.addr()))
        })
        .collect()
}

#[test]
fn driver_matrix() {
    let matrix = Matrix::start();
    let build = tempdir::Dir::new("jdbc-build");
    compile_jdbc(&build.0);
    let results = std::sync::Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for topo in &matrix.topologies {
            let results = &results;
            let build = &build.0;
            let ref_addr = &matrix.ref_addr;
            scope.spawn(move || {
                for d in DRIVERS {
                    let r = run_driver(d, topo, ref_addr, build);
                    results
                        .lock()
                        .unwrap()
                        .insert((d.name.to_owned(), topo.name.to_owned()), r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    // Straight to the process's stderr, past the test harness's capture, so
    // the table shows in every run (CI's too), passing or not.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("\ndriver conformance matrix:\n{}\n", render_table(&results)).as_bytes(),
    );
    let mut failures = Vec::new();
    for ((driver, topo), m) in &results {
        for (scenario, outcome) in m {
            match outcome {
                Outcome::Pass => {}
                Outcome::Fail(d) | Outcome::Missing(d) => {
                    failures.push(format!("{driver} / {topo} / {scenario}: {d}"))
                }
            }
        }
    }
    for t in &matrix.topologies {
        let left = idle_in_transaction(&matrix.cluster, &t.database);
        if !left.is_empty() {
            failures.push(format!(
                "{}: sessions left idle in transaction: {}",
                t.name,
                left.join(", ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Starts the topologies and keeps them running for driver programs run by
/// hand (see the module documentation).
#[test]
#[ignore]
fn serve_topologies() {
    let matrix = Matrix::start();
    let dir =
        PathBuf::from(std::env::var("SG_SERVE_DIR").unwrap_or_else(|_| "/tmp/sg-serve".into()));
    std::fs::create_dir_all(&dir).expect("serve dir");
    let _ = std::fs::remove_file(dir.join("stop"));
    for t in &matrix.topologies {
        let mut text = String::new();
        for (k, v) in t.env(&matrix.ref_addr, 1_000_000) {
            text.push_str(&format!("{k}={v}\n"));
        }
        text.push_str(&format!("SG_PROXY_LOG={}\n", t.proxy.log.display()));
        std::fs::write(dir.join(format!("{}.env", t.name)), text).expect("write env");
    }
    // Straight to shard 0's primary, no proxy: every scenario must pass here.
    let p0 = matrix.cluster.shard(0).primary.port();
    let direct = matrix.topologies[0]
        .env(&matrix.ref_addr, 1_000_000)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "SG_PORT" => (k, p0.to_string()),
            "SG_DATABASE" => (k, "drv_direct".to_owned()),
            _ => (k, v),
        })
        .map(|(k, v)| format!("{k}={v}\n"))
        .collect::<String>();
    std::fs::write(dir.join("direct.env"), direct).expect("write env");
    println!("topologies running; env files in {}", dir.display());
    while !dir.join("stop").exists() {
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_file(dir.join("stop"));
}
