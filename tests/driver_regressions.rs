//! Regression tests for what real drivers found (issue 15): each replays the
//! exact message sequence a driver sends, through shardgate in front of two
//! shards (a primary and a replica each, eventual reads, like the demo),
//! and checks both the answer and the data on the primaries.

mod support;

use shardgate_harness::{Cluster, ClusterSpec};
use support::*;

/// The shard map and a `raw` user that logs in without a password, so the
/// raw protocol client needs no SCRAM.
const EXTRA: &str = r#"
[[users]]
name = "raw"
auth = "trust"
server_user = "app"
server_password = "secret"

[routing]
default_consistency = "eventual"

[sharding]
default_shard = 0

[[sharded_tables]]
table = "accounts"
column = "id"
function = "hash"
key_type = "bigint"

[[reference_tables]]
table = "currencies"
"#;

const SCHEMA: &str = "
CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL);
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(14, 2) NOT NULL DEFAULT 0);
INSERT INTO currencies VALUES ('USD', 'US dollar'), ('EUR', 'Euro');
";

/// The `raw` user and eventual reads, for a cluster of one shard.
const ONE_SHARD: &str = r#"
[[users]]
name = "raw"
auth = "trust"
server_user = "app"
server_password = "secret"

[routing]
default_consistency = "eventual"
"#;

/// A cluster, the proxy in front of it, the schema.
struct Env {
    c: Cluster,
    proxy: Proxy,
}

impl Env {
    /// Two shards of a primary and a replica each.
    fn sharded() -> Env {
        Env::start(ClusterSpec::new(2, 1), EXTRA)
    }

    /// One primary and a replica.
    fn replicas() -> Env {
        Env::start(ClusterSpec::new(1, 1), ONE_SHARD)
    }

    fn start(spec: ClusterSpec, extra: &str) -> Env {
        let c = cluster(spec);
        let port = free_port();
        let text = config(&c, port, "", extra);
        let proxy = Proxy::start(c.dir(), port, &text);
        let out = run(
            psql(&proxy.app()).arg("-q").arg("-c").arg(SCHEMA),
            std::time::Duration::from_secs(120),
        );
        assert_success(&out, "schema");
        c.wait_replicas_caught_up(std::time::Duration::from_secs(60))
            .expect("replicas catch up");
        Env { c, proxy }
    }

    fn raw(&self) -> Raw {
        Raw::connect(self.proxy.port, "raw", "app")
    }

    /// The rows `sql` returns on every primary, concatenated.
    fn on_primaries(&self, sql: &str) -> Vec<String> {
        self.c
            .shards()
            .iter()
            .flat_map(|s| {
                s.primary
                    .psql("app", sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Defect 1: pgjdbc with `setAutoCommit(false)` sends BEGIN through the
/// extended protocol in the same batch as the transaction's first
/// statement, both on the unnamed portal. The first statement was answered
/// with a second `BEGIN` and never ran.
#[test]
fn jdbc_begin_batched_with_the_first_statement_runs_it() {
    let env = Env::sharded();
    let mut raw = env.raw();
    raw_ok(
        &mut raw,
        "INSERT INTO accounts (id, owner) VALUES (42, 'a'), (43, 'b'), (44, 'c')",
    );
    let update = "UPDATE accounts SET owner = $1 WHERE id = $2";
    for (i, (owner, id)) in [("First", "42"), ("Second", "43")].iter().enumerate() {
        let mut batch = Vec::new();
        if i == 0 {
            batch.extend(parse_msg("", "BEGIN"));
            batch.extend(bind_msg("", "", &[]));
            batch.extend(execute_msg("", 0));
        }
        batch.extend(parse_msg("", update));
        batch.extend(bind_msg("", "", &[owner, id]));
        batch.extend(describe_portal_msg(""));
        batch.extend(execute_msg("", 1));
        batch.extend(sync_msg());
        raw.send(&batch);
        let msgs = raw.until_ready();
        assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
        let expected: &[&str] = if i == 0 {
            &["BEGIN", "UPDATE 1"]
        } else {
            &["UPDATE 1"]
        };
        assert_eq!(command_tags(&msgs), expected, "statement {i}");
        assert!(
            !msgs.iter().any(|(t, _)| *t == b'N'),
            "no 'already a transaction in progress' notice"
        );
        assert_eq!(status(&msgs), b'T');
    }
    // A third key written by a named statement, as pgjdbc does past prepareThreshold.
    let mut batch = parse_msg("S_1", update);
    batch.extend(bind_msg("", "S_1", &["Third", "44"]));
    batch.extend(execute_msg("", 1));
    batch.extend(parse_msg("", "COMMIT"));
    batch.extend(bind_msg("", "", &[]));
    batch.extend(execute_msg("", 0));
    batch.extend(sync_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["UPDATE 1", "COMMIT"]);
    assert_eq!(status(&msgs), b'I');
    let mut rows = env.on_primaries("SELECT id || '=' || owner FROM accounts");
    rows.sort();
    assert_eq!(rows, ["42=First", "43=Second", "44=Third"]);
}

/// Defect 2: pgjdbc with `setFetchSize` inside a transaction reads a
/// portal with a row-limited Execute, then closes the portal and commits in
/// one batch: Close(portal), Parse/Bind/Execute `COMMIT`, Sync. That batch
/// was never answered and the server's transaction stayed open.
#[test]
fn jdbc_close_portal_then_commit_after_a_fetch() {
    let env = Env::sharded();
    let mut raw = env.raw();
    let rows: Vec<String> = (1..=30).map(|i| format!("({i}, 'o{i}')")).collect();
    raw_ok(
        &mut raw,
        &format!(
            "INSERT INTO accounts (id, owner) VALUES {}",
            rows.join(", ")
        ),
    );
    let mut batch = parse_msg("", "BEGIN");
    batch.extend(bind_msg("", "", &[]));
    batch.extend(execute_msg("", 0));
    batch.extend(parse_msg(
        "",
        "UPDATE accounts SET owner = 'x' WHERE id = $1",
    ));
    batch.extend(bind_msg("", "", &["7"]));
    batch.extend(execute_msg("", 0));
    batch.extend(parse_msg(
        "S_2",
        "SELECT id, owner FROM accounts WHERE id = $1",
    ));
    batch.extend(bind_msg("C_3", "S_2", &["7"]));
    batch.extend(describe_portal_msg("C_3"));
    batch.extend(execute_msg("C_3", 1));
    batch.extend(sync_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(first_column(&msgs), ["7"]);
    assert_eq!(status(&msgs), b'T');
    let mut batch = close_msg(b'P', "C_3");
    batch.extend(parse_msg("", "COMMIT"));
    batch.extend(bind_msg("", "", &[]));
    batch.extend(execute_msg("", 0));
    batch.extend(sync_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(tags(&msgs), "312CZ");
    assert_eq!(command_tags(&msgs), ["COMMIT"]);
    assert_eq!(status(&msgs), b'I');
    assert_eq!(
        env.on_primaries("SELECT owner FROM accounts WHERE id = 7"),
        ["x"]
    );
    assert_eq!(
        env.on_primaries(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' AND state LIKE 'idle in transaction%'"
        ),
        ["0", "0"]
    );
}

/// Parse, Bind, Describe and Execute of one unnamed statement with text
/// parameters (what psycopg and libpq send for a statement in a pipeline).
fn statement(sql: &str, params: &[&str]) -> Vec<u8> {
    let mut m = parse_msg("", sql);
    m.extend(bind_msg("", "", params));
    m.extend(describe_portal_msg(""));
    m.extend(execute_msg("", 0));
    m
}

/// Defect 3: psycopg ends `executemany` and a `with conn.pipeline()` block
/// with Sync *and then Flush*. The Flush kept the proxy thinking a batch
/// was open, so the next `with conn.transaction()` ran where it should not
/// (its INSERT committed although the block rolled back, or it went to a
/// replica and failed with 25006). Pipelines whose read and write arrive in
/// separate reads, or with a Flush between them, must run the write on the
/// primary too.
fn flush_after_sync_and_pipelines(env: &Env) {
    let mut raw = env.raw();
    let insert = "INSERT INTO accounts (id, owner) VALUES ($1, $2)";
    let mut batch = parse_msg("_pg3_0", insert);
    batch.extend(bind_msg("", "_pg3_0", &["1", "many"]));
    batch.extend(describe_portal_msg(""));
    batch.extend(execute_msg("", 0));
    batch.extend(sync_msg());
    batch.extend(flush_msg());
    raw.send(&batch);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["INSERT 0 1"]);
    for _ in 0..2 {
        assert_eq!(status(&raw_ok(&mut raw, "BEGIN")), b'T');
        let msgs = raw_ok(
            &mut raw,
            "INSERT INTO accounts (id, owner) VALUES (10, 'rolled back')",
        );
        assert_eq!(
            status(&msgs),
            b'T',
            "the INSERT runs inside the transaction"
        );
        assert_eq!(status(&raw_ok(&mut raw, "ROLLBACK")), b'I');
        // And once more after a pipeline ending in Sync and Flush.
        let mut pipeline = statement("SELECT 1", &[]);
        pipeline.extend(statement(insert, &["2", "pipelined"]));
        pipeline.extend(sync_msg());
        pipeline.extend(flush_msg());
        raw.send(&pipeline);
        let msgs = raw.until_ready();
        let fine = errors(&msgs).is_empty() || errors(&msgs) == ["23505"];
        assert!(fine, "{:?}", errors(&msgs));
    }
    // A read and a write of one pipeline in separate TCP reads.
    raw.send(&statement("SELECT 1", &[]));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut rest = statement(insert, &["3", "split"]);
    rest.extend(sync_msg());
    raw.send(&rest);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["SELECT 1", "INSERT 0 1"]);
    // The same with a Flush after the read, whose answer is read first.
    let mut first = statement("SELECT 1", &[]);
    first.extend(flush_msg());
    raw.send(&first);
    let msgs = raw.until(b'C');
    assert_eq!(command_tags(&msgs), ["SELECT 1"]);
    let mut rest = statement(insert, &["4", "after flush"]);
    rest.extend(sync_msg());
    raw.send(&rest);
    let msgs = raw.until_ready();
    assert!(errors(&msgs).is_empty(), "{:?}", errors(&msgs));
    assert_eq!(command_tags(&msgs), ["INSERT 0 1"]);
    assert_eq!(status(&msgs), b'I');
    let mut rows = env.on_primaries("SELECT id || '=' || owner FROM accounts");
    rows.sort();
    assert_eq!(rows, ["1=many", "2=pipelined", "3=split", "4=after flush"]);
}

#[test]
fn psycopg_flush_after_sync_with_replicas() {
    flush_after_sync_and_pipelines(&Env::replicas());
}

#[test]
fn psycopg_flush_after_sync_sharded() {
    flush_after_sync_and_pipelines(&Env::sharded());
}

/// Defect 5: `pg_terminate_backend` of one pooled server connection, idle
/// or busy, made every write on the shard fail with "the primary ... is
/// unavailable" for `ban_ms`. One connection's end is not the node's: the
/// dead idle connection is not handed out again, and the node keeps
/// serving everyone.
#[test]
fn a_terminated_backend_is_replaced_and_bans_nothing() {
    let env = Env::start(ClusterSpec::new(1, 0), ONE_SHARD);
    let primary = &env.c.shard(0).primary;
    let mut raw = env.raw();
    let pid = first_column(&raw_ok(&mut raw, "SELECT pg_backend_pid()"))[0].clone();
    primary
        .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    for i in 0..5 {
        let msgs = raw.query(&format!(
            "INSERT INTO accounts (id, owner) VALUES ({i}, 'after idle termination')"
        ));
        assert!(
            errors(&msgs).is_empty(),
            "statement {i}: {:?}",
            errors(&msgs)
        );
    }
    // A backend terminated while it runs the client's statement: that
    // statement fails, the next ones (and everyone else's) do not.
    let pid = first_column(&raw_ok(&mut raw, "SELECT pg_backend_pid()"))[0].clone();
    raw.send(&query_msg("SELECT pg_sleep(5)"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    primary
        .psql("postgres", &format!("SELECT pg_terminate_backend({pid})"))
        .unwrap();
    let msgs = raw.until_ready();
    assert_eq!(errors(&msgs).len(), 1, "the running statement fails");
    let mut other = env.raw();
    for i in 5..10 {
        for r in [&mut raw, &mut other] {
            let msgs = r.query(&format!(
                "INSERT INTO accounts (id, owner) VALUES ({i}, 'after busy termination') ON CONFLICT DO NOTHING"
            ));
            assert!(
                errors(&msgs).is_empty(),
                "statement {i}: {:?}",
                errors(&msgs)
            );
        }
    }
    assert_eq!(env.on_primaries("SELECT count(*) FROM accounts"), ["10"]);
}
