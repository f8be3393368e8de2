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

/// Two shards of a primary and a replica, the proxy, the schema.
struct Sharded {
    c: Cluster,
    proxy: Proxy,
}

impl Sharded {
    fn start() -> Sharded {
        let c = cluster(ClusterSpec::new(2, 1));
        let port = free_port();
        let text = config(&c, port, "", EXTRA);
        let proxy = Proxy::start(c.dir(), port, &text);
        let out = run(
            psql(&proxy.app()).arg("-q").arg("-c").arg(SCHEMA),
            std::time::Duration::from_secs(120),
        );
        assert_success(&out, "schema");
        Sharded { c, proxy }
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
    let env = Sharded::start();
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
    let env = Sharded::start();
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
