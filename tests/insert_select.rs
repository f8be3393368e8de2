//! `INSERT INTO <sharded table> SELECT ...` on three shards (each a
//! primary, two-phase commit on): co-located copies run on the shards as
//! they are; anything else is carried by the proxy, each row to the shard
//! that owns its key. Every case checks what the client sees and the rows
//! each shard holds afterwards (each on its owner, counts exact, no row
//! twice): generate_series sources, co-located copies (with ON CONFLICT,
//! RETURNING, grouping), a reshuffle by another column, hash into range,
//! a reference-table source with defaults, BEGIN/ROLLBACK and COMMIT, a
//! unique violation midway (nothing left, no prepared transaction), bind
//! parameters (tokio-postgres and the raw protocol), carried ON CONFLICT,
//! what is refused, cancellation and a client that leaves.

mod support;

use shardgate_harness::{Cluster, ClusterSpec};
use shardgate_shardmap::{ShardKey, ShardMap};
use support::*;
use tokio_postgres::SimpleQueryMessage;

const TABLES: &str = r#"
[routing]
default_consistency = "strong"

[sharding]
default_shard = 0

[[sharded_tables]]
table = "src"
column = "id"

[[sharded_tables]]
table = "dst"
column = "id"

[[sharded_tables]]
table = "by_grp"
column = "grp"

[[sharded_tables]]
table = "totals"
column = "grp"

[[sharded_tables]]
table = "series"
column = "id"

[[sharded_tables]]
table = "per_country"
column = "code"

[[sharded_tables]]
table = "ranged"
column = "id"
function = "range"
ranges = [{ shard = 0, start = 0, end = 1000 }, { shard = 1, start = 1000, end = 2000 }, { shard = 2, start = 2000, end = 1000000 }]

[[reference_tables]]
table = "countries"
"#;

/// Asserts that every row of `table` is on the shard owning its shard key
/// value, that `total` rows exist in all, and that no row (its primary key
/// `pk`) appears twice.
fn assert_placed(c: &Cluster, map: &ShardMap, table: &str, pk: &str, total: usize) {
    let rule = map.table(None, table).expect("sharded table");
    let mut seen = std::collections::HashSet::new();
    let mut count = 0;
    let rows = per_shard(c, &format!("SELECT {}, {pk} FROM {table}", rule.column));
    for (shard, lines) in rows.iter().enumerate() {
        for line in lines {
            let (k, row) = line.split_once('|').expect("key|pk");
            let parsed = ShardKey::parse_text(rule.key_type, k).expect("key");
            let owner = map.shard_for(rule, &parsed).expect("owner");
            assert_eq!(owner, shard, "{table}: key {k} is on shard {shard}");
            assert!(seen.insert(row.to_owned()), "{table}: row {row} twice");
            count += 1;
        }
    }
    assert_eq!(count, total, "rows of {table}");
}

/// The sum over the shards of the number `sql` gives on each.
fn total(c: &Cluster, sql: &str) -> i64 {
    per_shard_n(c, sql).iter().sum()
}

/// Runs `sql` with `params`; returns the rows it wrote.
async fn execute(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> u64 {
    client
        .execute(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// Runs `sql` with `params` and asserts it fails with SQLSTATE `code`.
async fn fails_with(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    code: &str,
) {
    let e = client.execute(sql, params).await.expect_err(sql);
    assert_eq!(sqlstate_of(&e), code, "{sql}: {e:?}");
}

/// No shard holds a prepared (two-phase) transaction.
fn assert_no_prepared(c: &Cluster) {
    assert_eq!(
        per_shard_n(c, "SELECT count(*) FROM pg_prepared_xacts"),
        [0, 0, 0]
    );
}

fn sqlstate_of(e: &tokio_postgres::Error) -> String {
    sqlstate(e).unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

fn simple_tag(msgs: &[SimpleQueryMessage]) -> Option<u64> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_into_sharded_tables() {
    let c = cluster(ClusterSpec::new(3, 0));
    let port = free_port();
    let log = c.dir().join("shardgate-2pc.log");
    let extra = format!(
        "pool_size = 20\ntwo_phase_commit = true\ntwo_phase_log = {:?}",
        log.display().to_string()
    );
    let text = config(&c, port, &extra, &format!("{RAW_USER}{TABLES}"));
    let map = shardgate::config::Config::parse(&text, "test")
        .expect("config")
        .shard_map()
        .expect("map");
    let proxy = Proxy::start(c.dir(), port, &text);
    let client = connect(&proxy.app()).await;
    for ddl in [
        "CREATE TABLE src (id bigint PRIMARY KEY, grp bigint NOT NULL, v text)",
        "CREATE TABLE dst (id bigint PRIMARY KEY, grp bigint, v text, note text DEFAULT 'dflt')",
        "CREATE TABLE by_grp (grp bigint, id bigint, v text, PRIMARY KEY (grp, id))",
        "CREATE TABLE series (id bigint PRIMARY KEY, label text)",
        "CREATE TABLE countries (code bigint PRIMARY KEY, name text)",
        "CREATE TABLE per_country (code bigint PRIMARY KEY, name text, made text DEFAULT 'auto')",
        "CREATE TABLE ranged (id bigint PRIMARY KEY, v text)",
        "CREATE TABLE totals (grp bigint PRIMARY KEY, n bigint)",
    ] {
        client.batch_execute(ddl).await.expect(ddl);
    }

    // A set-returning source with no table: every row to its owner.
    let n = execute(
        &client,
        "INSERT INTO src SELECT g, g % 7, 'v' || g FROM generate_series(1, 3000) g",
        &[],
    )
    .await;
    assert_eq!(n, 3000);
    assert_placed(&c, &map, "src", "id", 3000);
    let n = execute(
        &client,
        "INSERT INTO series SELECT g, 'x' || g FROM generate_series(1, 100000) g",
        &[],
    )
    .await;
    assert_eq!(n, 100_000);
    assert_placed(&c, &map, "series", "id", 100_000);
    assert_eq!(
        total(&c, "SELECT count(*) FROM series WHERE label <> 'x' || id"),
        0
    );

    // Co-located copy (SELECT *, the default fills the extra column): the
    // statement runs on every shard as it is.
    let msgs = client
        .simple_query("INSERT INTO dst SELECT * FROM src")
        .await
        .expect("co-located copy");
    assert_eq!(simple_tag(&msgs), Some(3000));
    assert_placed(&c, &map, "dst", "id", 3000);
    assert_eq!(
        total(&c, "SELECT count(*) FROM dst WHERE note = 'dflt'"),
        3000
    );
    // Co-located with ON CONFLICT and RETURNING: as on one server.
    let msgs = client
        .simple_query(
            "INSERT INTO dst (id, grp, v) SELECT id, grp, v || '!' FROM src WHERE id IN (1, 2, 3) \
             ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING id",
        )
        .await
        .expect("co-located upsert");
    assert_eq!(simple_tag(&msgs), Some(3));
    let returned = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(returned, 3);
    assert_eq!(total(&c, "SELECT count(*) FROM dst WHERE v LIKE '%!'"), 3);
    assert_placed(&c, &map, "dst", "id", 3000);

    // Reshuffle: the target's key comes from another column.
    let n = execute(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp, id, v FROM src WHERE id <= 1000",
        &[],
    )
    .await;
    assert_eq!(n, 1000);
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 1000);

    // A hash-sharded source into a range-sharded target: not co-located
    // even though the key column is the source's key.
    let n = execute(&client, "INSERT INTO ranged SELECT id, v FROM src", &[]).await;
    assert_eq!(n, 3000);
    assert_eq!(
        per_shard_n(&c, "SELECT count(*) FROM ranged"),
        [999, 1000, 1001]
    );

    // A reference-table source, a column list, defaults for the rest.
    for code in 1..=20i64 {
        execute(
            &client,
            "INSERT INTO countries VALUES ($1, $2)",
            &[&code, &format!("country {code}")],
        )
        .await;
    }
    let n = execute(
        &client,
        "INSERT INTO per_country (code, name) SELECT code, name FROM countries WHERE code <= 15",
        &[],
    )
    .await;
    assert_eq!(n, 15);
    assert_placed(&c, &map, "per_country", "code", 15);
    assert_eq!(
        total(&c, "SELECT count(*) FROM per_country WHERE made = 'auto'"),
        15
    );

    // Inside a transaction: visible to it, gone after ROLLBACK.
    client.batch_execute("BEGIN").await.unwrap();
    let n = execute(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp, id, v FROM src WHERE id > 1000",
        &[],
    )
    .await;
    assert_eq!(n, 2000);
    let inside: i64 = client
        .query_one("SELECT count(*) FROM by_grp", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(inside, 3000);
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 1000);

    // The SELECT sees the transaction's own writes; COMMIT keeps both.
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("INSERT INTO src VALUES (5000, 3, 'new')", &[])
        .await
        .unwrap();
    let n = execute(
        &client,
        "INSERT INTO by_grp SELECT grp, id, v FROM src WHERE id = 5000",
        &[],
    )
    .await;
    assert_eq!(n, 1);
    client.batch_execute("COMMIT").await.unwrap();
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 1001);
    assert_eq!(total(&c, "SELECT count(*) FROM by_grp WHERE id = 5000"), 1);

    // A unique violation on one owner in the second batch: nothing is left
    // on any shard, and no prepared transaction either.
    let before = per_shard_n(&c, "SELECT count(*) FROM by_grp");
    // ORDER BY makes the SELECT one the proxy must merge: refused.
    fails_with(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp, id, v FROM src WHERE id >= 990 ORDER BY id",
        &[],
        "0A000",
    )
    .await;
    fails_with(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp, id + 0, v FROM src WHERE id <> 5000",
        &[],
        "23505",
    )
    .await;
    assert_eq!(per_shard_n(&c, "SELECT count(*) FROM by_grp"), before);
    assert_no_prepared(&c);
    // The conflict comes after other batches went in (each source shard
    // is fetched in turn).
    client
        .execute("INSERT INTO by_grp VALUES (3, 2999, 'taken')", &[])
        .await
        .unwrap();
    let before = per_shard_n(&c, "SELECT count(*) FROM by_grp");
    fails_with(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp, id, v FROM src WHERE id > 1000 AND id <> 5000",
        &[],
        "23505",
    )
    .await;
    assert_eq!(per_shard_n(&c, "SELECT count(*) FROM by_grp"), before);
    assert_no_prepared(&c);
    // The session goes on.
    let one: i64 = client
        .query_one("SELECT 1::bigint", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);

    // Extended protocol with parameters (tokio-postgres binds them).
    client
        .batch_execute("DELETE FROM by_grp WHERE id = 2999")
        .await
        .unwrap();
    let n = execute(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp, id, v FROM src WHERE id > $1 AND id <= $2",
        &[&2000i64, &2100i64],
    )
    .await;
    assert_eq!(n, 100);
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 1101);
    let stmt = client
        .prepare("INSERT INTO series (id, label) SELECT id + $1, v FROM src WHERE id <= $2")
        .await
        .expect("prepare");
    for (offset, upto) in [(200_000i64, 10i64), (300_000, 20)] {
        let n = client.execute(&stmt, &[&offset, &upto]).await.unwrap();
        assert_eq!(n as i64, upto);
    }
    assert_placed(&c, &map, "series", "id", 100_030);
    // Co-located with a parameter pinning one shard.
    let n = execute(
        &client,
        "INSERT INTO dst SELECT * FROM src WHERE id = $1 ON CONFLICT DO NOTHING",
        &[&5000i64],
    )
    .await;
    assert_eq!(n, 1);
    assert_placed(&c, &map, "dst", "id", 3001);

    // A failure inside a transaction fails the transaction; ROLLBACK
    // leaves nothing of it.
    let before = per_shard_n(&c, "SELECT count(*) FROM by_grp");
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("INSERT INTO by_grp VALUES (6, 777777, 'in tx')", &[])
        .await
        .unwrap();
    fails_with(
        &client,
        "INSERT INTO by_grp SELECT grp, id, v FROM src",
        &[],
        "23505",
    )
    .await;
    fails_with(&client, "SELECT 1", &[], "25P02").await;
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(per_shard_n(&c, "SELECT count(*) FROM by_grp"), before);

    // The target is the source: each row read once (the rows the statement
    // writes are not read back), moved to the owner of its new key.
    let n = execute(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp + 100, id, v FROM by_grp",
        &[],
    )
    .await;
    assert_eq!(n, 1101);
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 2202);
    client
        .batch_execute("DELETE FROM by_grp WHERE grp >= 100")
        .await
        .unwrap();
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 1101);

    // The raw extended protocol: a named statement and portal, Describe of
    // the portal, text parameters, inside a transaction, twice.
    let mut raw = Raw::connect(port, "raw", "app");
    raw_ok(&mut raw, "BEGIN");
    for (round, offset) in [(0, "400000"), (1, "500000")] {
        let mut batch = Vec::new();
        if round == 0 {
            batch.extend(parse_msg(
                "ins",
                "INSERT INTO series (id, label) SELECT id + $1, v FROM src WHERE id <= $2",
            ));
        } else {
            batch.extend(close_msg(b'P', "p"));
        }
        batch.extend(bind_msg("p", "ins", &[offset, "5"]));
        batch.extend(describe_portal_msg("p"));
        batch.extend(execute_msg("p", 0));
        batch.extend(sync_msg());
        raw.send(&batch);
        let msgs = raw.until_ready();
        assert_eq!(errors(&msgs), Vec::<String>::new(), "round {round}");
        if round == 0 {
            assert_eq!(tags(&msgs), "12nCZ");
        }
        assert_eq!(command_tags(&msgs), ["INSERT 0 5"], "round {round}");
        assert_eq!(status(&msgs), b'T');
    }
    raw_ok(&mut raw, "COMMIT");
    assert_placed(&c, &map, "series", "id", 100_040);

    // What is refused, and the session goes on after each.
    for (sql, code) in [
        (
            "INSERT INTO by_grp (grp, id) SELECT NULL::bigint, 1",
            "23502",
        ),
        ("INSERT INTO by_grp (id, v) SELECT 1, 'x'", "0A000"),
        (
            "INSERT INTO by_grp SELECT grp, id, v FROM src RETURNING id",
            "0A000",
        ),
        ("INSERT INTO by_grp (grp, id, v) SELECT 1, 2", "42601"),
        ("INSERT INTO by_grp (grp) SELECT 1, 2", "42601"),
    ] {
        let e = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate_of(&e), code, "{sql}: {e:?}");
    }
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 1101);

    // ON CONFLICT with carried rows: each owner gets an INSERT ... VALUES
    // with the clause.
    let n = execute(
        &client,
        "INSERT INTO by_grp SELECT grp, id, v FROM src ON CONFLICT DO NOTHING",
        &[],
    )
    .await;
    assert_eq!(n, 3001 - 1101);
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 3001);
    let n = execute(
        &client,
        "INSERT INTO by_grp (grp, id, v) SELECT grp, id, 'it''s \\ new' FROM src WHERE id <= $1 \
             ON CONFLICT (grp, id) DO UPDATE SET v = excluded.v",
        &[&10i64],
    )
    .await;
    assert_eq!(n, 10);
    assert_eq!(
        total(&c, "SELECT count(*) FROM by_grp WHERE v = 'it''s \\ new'"),
        10
    );
    assert_placed(&c, &map, "by_grp", "grp || '/' || id", 3001);
    fails_with(
        &client,
        "INSERT INTO by_grp SELECT grp, id, v FROM src ON CONFLICT (grp, id) DO UPDATE SET v = $1",
        &[&"x"],
        "0A000",
    )
    .await;

    // Co-located and grouped by the key: each shard's groups are whole,
    // so the statement runs on every shard as it is.
    let n = execute(&client, "INSERT INTO totals SELECT grp, count(*) FROM by_grp GROUP BY grp HAVING count(*) > 0 ORDER BY 1", &[]).await;
    assert_eq!(n, 7);
    assert_placed(&c, &map, "totals", "grp", 7);
    assert_eq!(total(&c, "SELECT coalesce(sum(n), 0) FROM totals"), 3001);
    // A window over all rows cannot run per shard, nor be carried.
    fails_with(
        &client,
        "INSERT INTO totals SELECT grp + 10, row_number() OVER () FROM by_grp",
        &[],
        "0A000",
    )
    .await;
    assert_placed(&c, &map, "totals", "grp", 7);
    assert_no_prepared(&c);
    drop(proxy);
}

/// A carried INSERT ... SELECT stops when the client cancels it or goes
/// away: nothing it wrote stays, no transaction is left open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_select_stops_on_cancel_and_when_the_client_leaves() {
    let c = cluster(ClusterSpec::new(3, 0));
    let port = free_port();
    let text = config(&c, port, "pool_size = 20", &format!("{RAW_USER}{TABLES}"));
    let proxy = Proxy::start(c.dir(), port, &text);
    let client = connect(&proxy.app()).await;
    client
        .batch_execute("CREATE TABLE series (id bigint PRIMARY KEY, label text)")
        .await
        .unwrap();
    // About 20 s of source rows, written as they come.
    let slow = "INSERT INTO series SELECT g, pg_sleep(0.02)::text FROM generate_series(1, 1000) g";

    let token = client.cancel_token();
    // The first batch is 100 rows (2 s); the cancel lands in the second.
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel");
    });
    let e = client.execute(slow, &[]).await.expect_err("cancelled");
    assert_eq!(sqlstate_of(&e), "57014", "{e:?}");
    canceller.await.unwrap();
    assert_eq!(per_shard_n(&c, "SELECT count(*) FROM series"), [0, 0, 0]);
    let one: i64 = client
        .query_one("SELECT 1::bigint", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);

    // A client that closes its connection while the statement runs.
    let mut leaver = Raw::connect(port, "raw", "app");
    leaver.send(&query_msg(slow));
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    leaver.s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(leaver);
    let open = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'app' \
                AND pid <> pg_backend_pid() AND (state LIKE 'idle in transaction%' \
                OR query LIKE '%pg_sleep%' AND state = 'active')";
    let mut last = Vec::new();
    let gone = eventually(std::time::Duration::from_secs(30), || {
        last = per_shard_n(&c, open);
        last.iter().all(|&n| n == 0)
    });
    assert!(
        gone,
        "transactions left open: {last:?}\n{}",
        proxy.log_tail()
    );
    assert_eq!(per_shard_n(&c, "SELECT count(*) FROM series"), [0, 0, 0]);
}
