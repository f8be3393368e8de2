//! Integration tests against real PostgreSQL servers.

use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardgate_harness::{pg_bin, Cluster, ClusterSpec, NodeRole, StopMode};

const CATCH_UP: Duration = Duration::from_secs(30);

fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn ports_of(cluster: &Cluster) -> Vec<u16> {
    cluster.nodes().iter().map(|node| node.port()).collect()
}

fn assert_torn_down(dir: &Path, ports: &[u16]) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    for port in ports {
        assert!(!accepts_connections(*port), "port {port} still accepts");
    }
}

#[test]
fn two_shards_two_replicas_lifecycle() {
    let started = Instant::now();
    let cluster = Cluster::start(ClusterSpec::new(2, 2)).expect("start cluster");
    eprintln!("2x2 cluster started in {:?}", started.elapsed());

    let names: Vec<&str> = cluster.nodes().iter().map(|node| node.name()).collect();
    assert_eq!(
        names,
        [
            "shard0-primary",
            "shard1-primary",
            "shard0-replica0",
            "shard0-replica1",
            "shard1-replica0",
            "shard1-replica1"
        ]
    );
    assert_eq!(cluster.shards().len(), 2);
    for node in cluster.nodes() {
        assert!(node.is_running(), "{} not running", node.name());
        assert!(accepts_connections(node.port()));
        assert_eq!(node.addr(), format!("127.0.0.1:{}", node.port()));
        assert!(node.data_dir().starts_with(cluster.dir()));
        assert!(node.log_path().is_file());
    }

    let shard0 = cluster.shard(0);
    assert_eq!(shard0.primary.role(), NodeRole::Primary);
    shard0
        .primary
        .psql(
            "postgres",
            "create table items (id int primary key, name text);\n\
             insert into items values (1, 'a'), (2, 'b');",
        )
        .expect("create table");
    cluster.wait_replicas_caught_up(CATCH_UP).expect("catch up");
    for replica in &shard0.replicas {
        assert_eq!(replica.role(), NodeRole::Replica);
        let rows = replica
            .psql(
                "postgres",
                "select string_agg(name, ',' order by id) from items",
            )
            .expect("read on replica");
        assert_eq!(rows, "a,b", "on {}", replica.name());
        assert_eq!(
            replica
                .psql("postgres", "select pg_is_in_recovery()")
                .unwrap(),
            "t"
        );
    }
    let err = cluster
        .shard(1)
        .primary
        .psql("postgres", "select * from items")
        .expect_err("shard1 has no table");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Crash a replica, write meanwhile, bring it back.
    let replica = &shard0.replicas[0];
    replica.stop(StopMode::Immediate).expect("stop replica");
    assert!(!replica.is_running());
    assert!(!accepts_connections(replica.port()));
    replica
        .stop(StopMode::Immediate)
        .expect("second stop is a no-op");
    shard0
        .primary
        .psql("postgres", "insert into items values (3, 'c')")
        .expect("insert");
    replica.start().expect("restart replica");
    assert!(replica.is_running());
    cluster
        .wait_replicas_caught_up(CATCH_UP)
        .expect("catch up after restart");
    assert_eq!(
        replica
            .psql("postgres", "select count(*) from items")
            .unwrap(),
        "3"
    );

    // Promote a replica of shard 1.
    let promoted = &cluster.shard(1).replicas[1];
    promoted.promote().expect("promote");
    assert_eq!(
        promoted
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    promoted
        .psql("postgres", "create table written_after_promotion (x int)")
        .expect("write on promoted replica");
    cluster
        .wait_replicas_caught_up(CATCH_UP)
        .expect("promoted replicas count as caught up");

    // A fast stop of a primary, then drop with it stopped.
    cluster
        .shard(1)
        .primary
        .stop(StopMode::Fast)
        .expect("fast stop");

    let dir = cluster.dir().to_owned();
    let ports = ports_of(&cluster);
    drop(cluster);
    assert_torn_down(&dir, &ports);
}

#[test]
fn panic_while_holding_a_cluster_tears_it_down() {
    let seen: Mutex<Option<(PathBuf, Vec<u16>)>> = Mutex::new(None);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let cluster = Cluster::start(ClusterSpec::default()).expect("start cluster");
        *seen.lock().unwrap() = Some((cluster.dir().to_owned(), ports_of(&cluster)));
        panic!("test panic while holding a cluster");
    }));
    assert!(outcome.is_err());
    let (dir, ports) = seen.lock().unwrap().take().expect("cluster was started");
    assert_eq!(ports.len(), 2);
    assert_torn_down(&dir, &ports);
}

#[test]
fn settings_and_hba_lines_apply() {
    let spec = ClusterSpec::new(1, 1)
        .setting("work_mem", "8MB")
        .setting("application_name", "it's quoted")
        .replica_setting("recovery_min_apply_delay", "'300ms'")
        .hba("host all md5user 127.0.0.1/32 md5");
    let cluster = Cluster::start(spec).expect("start cluster");
    let shard = cluster.shard(0);
    let replica = &shard.replicas[0];
    for node in cluster.nodes() {
        assert_eq!(node.psql("postgres", "show work_mem").unwrap(), "8MB");
    }
    let delay = "show recovery_min_apply_delay";
    assert_eq!(shard.primary.psql("postgres", delay).unwrap(), "0");
    assert_eq!(replica.psql("postgres", delay).unwrap(), "300ms");

    cluster
        .execute_on_primaries(
            "set password_encryption = 'md5';\n\
             create role md5user login password 'secret';",
        )
        .expect("create role");
    let method = shard
        .primary
        .psql(
            "postgres",
            "select auth_method from pg_hba_file_rules where 'md5user' = any(user_name)",
        )
        .unwrap();
    assert_eq!(method, "md5");
    cluster.wait_replicas_caught_up(CATCH_UP).expect("catch up");
    for node in cluster.nodes() {
        let output = Command::new(pg_bin("psql"))
            .args(["-X", "-A", "-t", "-c", "select current_user", "-d"])
            .arg(node.conninfo("md5user", "secret", "postgres"))
            .output()
            .expect("run psql");
        assert!(output.status.success(), "{output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "md5user");
    }
}

#[test]
fn stale_clusters_of_dead_processes_are_swept() {
    let mut stale = Cluster::start(ClusterSpec::new(1, 0)).expect("start cluster");
    assert!(stale.shard(0).replicas.is_empty());
    let dir = stale.dir().to_owned();
    let ports = ports_of(&stale);
    stale.keep();
    drop(stale);
    assert!(dir.exists());
    assert!(accepts_connections(ports[0]));

    // Pretend the owner was SIGKILLed: hand the directory to a process that has exited.
    let mut child = Command::new("true").spawn().expect("spawn true");
    child.wait().expect("wait for true");
    std::fs::write(dir.join("owner.pid"), format!("{}\n", child.id())).unwrap();

    let fresh = Cluster::start(ClusterSpec::new(1, 0)).expect("start second cluster");
    assert_torn_down(&dir, &ports);
    drop(fresh);
}

#[test]
fn zero_shards_is_rejected() {
    assert!(Cluster::start(ClusterSpec::new(0, 1)).is_err());
}

#[test]
fn start_fails_fast_with_the_log_tail() {
    let started = Instant::now();
    let spec = ClusterSpec::new(1, 1).setting("shared_buffers", "not a size");
    let err = Cluster::start(spec).expect_err("bad setting must fail");
    let message = err.to_string();
    assert!(message.contains("shard0-primary"), "{message}");
    assert!(message.contains("shared_buffers"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn restart_on_a_taken_port_fails_fast() {
    let cluster = Cluster::start(ClusterSpec::new(1, 0)).expect("start cluster");
    let primary = &cluster.shard(0).primary;
    primary.stop(StopMode::Fast).expect("stop");
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", primary.port())).expect("bind");
    let started = Instant::now();
    let err = primary.start().expect_err("port is taken");
    assert!(err.to_string().contains("Address already in use"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(!primary.is_running());
}

#[test]
fn node_faults_kill_freeze_and_restart() {
    let cluster = Cluster::start(ClusterSpec::new(1, 0)).unwrap();
    let node = &cluster.shard(0).primary;
    node.psql(
        "postgres",
        "CREATE TABLE f (id int); INSERT INTO f VALUES (1)",
    )
    .unwrap();
    // SIGKILL takes every server process down at once; a start recovers.
    node.kill().unwrap();
    assert!(!node.is_running());
    assert!(!accepts_connections(node.port()));
    node.start().unwrap();
    assert_eq!(
        node.psql("postgres", "SELECT count(*) FROM f").unwrap(),
        "1"
    );
    // Frozen: the port accepts (the kernel's backlog) but nothing answers.
    node.pause().unwrap();
    let frozen = node.psql_with_timeout("postgres", "SELECT 1", Duration::from_secs(2));
    assert!(frozen.is_err(), "a frozen server answered: {frozen:?}");
    node.resume().unwrap();
    assert_eq!(node.psql("postgres", "SELECT 1").unwrap(), "1");
    node.restart().unwrap();
    assert_eq!(
        node.psql("postgres", "SELECT count(*) FROM f").unwrap(),
        "1"
    );
}
