use super::*;
use crate::consistency::Consistency;
use crate::shard::{normalize, LiteralSink};
use crate::{Analyzer, MAX_CACHED_SQL};

/// A classifier behind the analyzer's cache, as the proxy uses it.
struct Cached(Analyzer);

impl Cached {
    fn classify(&self, sql: &str) -> Classification {
        self.0.classify(sql, None)
    }

    fn classify_uncached(&self, sql: &str) -> Classification {
        self.0.classifier().classify(sql)
    }

    fn cache_len(&self) -> usize {
        self.0.cache_len()
    }

    fn calls_write_function(&self, toks: &[Token<'_>]) -> bool {
        self.0.classifier().calls_write_function(toks)
    }
}

/// [`Cached`] with `write_functions` and a cache of `capacity` entries.
fn cached(write_functions: &[String], capacity: usize) -> Cached {
    Cached(Analyzer::new(Classifier::new(write_functions), capacity))
}

/// The analyzer's cache key of `sql`.
fn cache_key(sql: &str, out: &mut String) {
    use std::fmt::Write as _;
    let n = normalize(sql, out, &mut LiteralSink::new(None, None)).unwrap();
    let _ = write!(out, "\u{1}{}", n.base);
}

const R: Route = Route::Read;
const W: Route = Route::Write;
const B: Route = Route::Begin { read_only: false };
const BRO: Route = Route::Begin { read_only: true };
const TC: Route = Route::TransactionControl;
const S: Route = Route::Session;

/// Statement → expected route. Comments say which rule an entry covers.
const TABLE: &[(&str, Route)] = &[
    // pgbench (TPC-B and -S), extended protocol text.
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", R),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", W),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;", W),
    ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;", W),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        W,
    ),
    // pgbench simple protocol, with literals.
    ("SELECT abalance FROM pgbench_accounts WHERE aid = 48213;", R),
    ("select count(*) from pgbench_branches", R),
    // Plain reads.
    ("SELECT 1", R),
    ("  select * from t where id = 5 and name = 'x''y'  ", R),
    ("SELECT * FROM t WHERE a IN (1, 2) ORDER BY b LIMIT 10 OFFSET 5", R),
    ("SELECT 1 UNION SELECT 2", R),
    ("(SELECT 1)", R),
    ("SELECT a, count(*) FILTER (WHERE b > 1) FROM t GROUP BY ROLLUP (a)", R),
    ("SELECT pg_is_in_recovery(), now(), pg_last_wal_replay_lsn()", R),
    ("SELECT substring('abc' from 1 for 2)", R),
    ("SELECT nextval FROM t", R), // a column, not a call
    ("SELECT 'nextval(1)', $$ pg_advisory_lock( $$ /* setval( */ -- lo_create(\n", R),
    ("SELECT my_nextval(1), nextval_stats()", R),
    ("SELECT 'for update' FROM t", R),
    ("SELECT 1; SELECT 2;", R),
    // SHOW.
    ("SHOW search_path", R),
    ("SHOW ALL", R),
    ("SHOW TRANSACTION ISOLATION LEVEL", R),
    ("show time zone", R),
    // Read-only CTEs, VALUES, TABLE.
    ("WITH x AS (SELECT 1 AS a) SELECT * FROM x", R),
    (
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
        R,
    ),
    ("VALUES (1, 2), (3, 4)", R),
    ("TABLE t", R),
    ("TABLE ONLY public.t", R),
    ("(TABLE t)", R),
    // EXPLAIN.
    ("EXPLAIN SELECT * FROM t", R),
    ("EXPLAIN ANALYZE SELECT 1", R),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT * FROM t WHERE a = 1", R),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", W),
    ("EXPLAIN (ANALYZE true) DELETE FROM t", W),
    ("EXPLAIN SELECT * FROM t FOR UPDATE", W),
    // COPY.
    ("COPY t TO STDOUT", R),
    ("COPY t (a, b) TO STDOUT WITH (FORMAT binary)", R),
    ("COPY (SELECT * FROM t WHERE a > 1) TO STDOUT WITH (FORMAT csv, HEADER)", R),
    ("COPY t FROM STDIN", W),
    ("COPY t (a, b) FROM STDIN WITH (FORMAT binary)", W),
    ("copy pgbench_accounts from stdin with (freeze on)", W), // sqlparser rejects it
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", W),
    // DML and DDL.
    ("INSERT INTO t VALUES (1)", W),
    ("insert into t select * from u", W),
    ("DELETE FROM t WHERE id = 1", W),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a", W),
    ("CREATE TABLE t (a int)", W),
    ("CREATE TEMP TABLE x AS SELECT 1", W),
    ("CREATE INDEX CONCURRENTLY i ON t (a)", W),
    ("ALTER TABLE t ADD COLUMN b int", W),
    ("DROP TABLE t", W),
    ("TRUNCATE t", W),
    ("COMMENT ON TABLE t IS 'x'", W),
    ("REFRESH MATERIALIZED VIEW v", W),
    ("GRANT SELECT ON t TO u", W),
    ("REVOKE SELECT ON t FROM u", W),
    ("ALTER SYSTEM SET work_mem = '1MB'", W),
    // Maintenance.
    ("VACUUM", W),
    ("vacuum analyze pgbench_accounts", W),
    ("VACUUM (VERBOSE, ANALYZE) t", W),
    ("ANALYZE t", W),
    ("CLUSTER t USING i", W),
    ("REINDEX TABLE t", W),
    ("CHECKPOINT", W),
    // Procedures, DO, notifications, locks.
    ("CALL p(1)", W),
    ("DO $$ BEGIN PERFORM 1; END $$", W),
    ("DO LANGUAGE plpgsql $body$ BEGIN RAISE NOTICE 'x'; END $body$", W),
    ("LISTEN ch", W),
    ("UNLISTEN *", W),
    ("NOTIFY ch, 'x'", W),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", W),
    // Locking clauses.
    ("SELECT * FROM t WHERE id = 1 FOR UPDATE", W),
    ("SELECT * FROM t FOR SHARE", W),
    ("SELECT * FROM t FOR NO KEY UPDATE", W),
    ("select * from t for no key update nowait", W),
    ("SELECT * FROM t FOR KEY SHARE", W),
    ("SELECT * FROM t FOR UPDATE OF t SKIP LOCKED", W),
    ("SELECT 1 FOR UPDATE", W), // sqlparser rejects it
    ("SELECT x FROM (SELECT * FROM t FOR UPDATE) s", W),
    ("TABLE t FOR SHARE", W),
    // Writing CTEs, SELECT INTO.
    ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", W),
    ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", W),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT count(*) FROM x", W),
    ("WITH a AS (SELECT 1), b AS (DELETE FROM t RETURNING 1) SELECT * FROM a", W),
    ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", W),
    ("SELECT * INTO newt FROM t", W),
    // Write functions, however named.
    ("SELECT nextval('s')", W),
    ("SELECT pg_catalog.nextval('s')", W),
    ("SELECT \"nextval\"('s')", W),
    ("SELECT NEXTVAL ( 's' )", W),
    ("SELECT pg_catalog . setval('s', 5)", W),
    ("SELECT pg_advisory_xact_lock(hashtext('k'))", W),
    ("SELECT * FROM t WHERE pg_try_advisory_lock(id)", W),
    ("SELECT set_config('search_path', 'x', false)", W),
    ("SELECT * FROM lo_import('/tmp/x')", W),
    ("SELECT nextval/* c */('s')", W),
    ("VALUES (nextval('s'))", W),
    ("SELECT 1; SELECT nextval('s')", W),
    // SQL-level prepared statements.
    ("PREPARE p AS SELECT 1", W),
    ("PREPARE p (int) AS SELECT $1", W),
    ("EXECUTE p", W),
    ("EXECUTE p(1)", W),
    ("DEALLOCATE p", W),
    ("DEALLOCATE ALL", W),
    // Cursors.
    ("DECLARE c CURSOR FOR SELECT 1", W),
    ("FETCH 10 FROM c", W),
    // Unparseable.
    ("SELEKT 1", W),
    ("garbage ))) (", W),
    ("SELECT 'unterminated", W),
    // Transactions.
    ("BEGIN", B),
    ("begin;", B),
    ("BEGIN WORK", B),
    ("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ", B),
    ("START TRANSACTION", B),
    ("BEGIN READ WRITE", B),
    ("BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE", B),
    ("BEGIN NOT DEFERRABLE", B),
    ("BEGIN READ ONLY", BRO),
    ("START TRANSACTION READ ONLY", BRO),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", BRO),
    ("BEGIN READ ONLY, DEFERRABLE", BRO),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", BRO),
    ("begin transaction isolation level repeatable read read only", BRO),
    ("start transaction read only, not deferrable", BRO),
    ("BEGIN READ ONLY READ WRITE", B),
    ("BEGIN BOGUS", W),
    ("COMMIT", TC),
    ("COMMIT AND CHAIN", TC),
    ("END", TC),
    ("END TRANSACTION", TC),
    ("ROLLBACK", TC),
    ("ABORT", TC),
    ("ABORT WORK", TC),
    ("SAVEPOINT a", TC),
    ("RELEASE a", TC),
    ("RELEASE SAVEPOINT a", TC),
    ("ROLLBACK TO a", TC),
    ("ROLLBACK TO SAVEPOINT a", TC),
    ("PREPARE TRANSACTION 'tx1'", TC),
    ("COMMIT PREPARED 'tx1'", TC),
    ("ROLLBACK PREPARED 'tx1'", TC),
    // Session state.
    ("SET search_path TO a, b", S),
    ("SET application_name = 'x'", S),
    ("SET LOCAL statement_timeout = 5", S),
    ("SET TIME ZONE 'UTC'", S),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", S),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", S),
    ("SET CONSTRAINTS ALL DEFERRED", S),
    ("SET ROLE app", S),
    ("SET shardgate.consistency = strong", S),
    ("RESET ALL", S),
    ("RESET search_path", S),
    ("RESET TIME ZONE", S),
    ("DISCARD ALL", S),
    ("DISCARD PLANS", S),
    // Multi-statement strings.
    ("SELECT 1; INSERT INTO t VALUES (1)", W),
    ("INSERT INTO t VALUES (1); SELECT 1", W),
    ("SET a = 1; SELECT 1", R),
    ("SET a = 1; SET b = 2;", S),
    ("SAVEPOINT a; RELEASE a", TC),
    ("COMMIT; SELECT 1", W),
    ("SELECT 1; BEGIN", W),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT;", B),
    ("BEGIN READ ONLY; SELECT 1; COMMIT", BRO),
    ("BEGIN READ ONLY; UPDATE t SET a = 1; COMMIT", B),
    ("BEGIN READ ONLY; SELECT nextval('s'); COMMIT", B),
    ("BEGIN; SELECT 1; COMMIT", B),
    // Hint comments do not change the route.
    ("/* shardgate: consistency=strong */ SELECT 1", R),
    ("SELECT /* shardgate: shard=2 */ * FROM t", R),
    ("/* shardgate: consistency=bounded, max_lag_ms=200 */ SELECT * FROM t WHERE id = 7", R),
    ("/* shardgate: sharding_key='42' */ UPDATE t SET a = 1 WHERE id = 42", W),
    ("/* shardgate: consistency=eventual */ BEGIN READ ONLY", BRO),
];

#[test]
fn routes_table() {
    assert!(TABLE.len() >= 60);
    let c = cached(&[], 1000);
    let mut failures = Vec::new();
    for (sql, want) in TABLE {
        let got = c.classify(sql);
        if got.route != *want {
            failures.push(format!("{sql:?}: got {:?}, want {want:?}", got.route));
        }
        // A cached answer is the same as a fresh one.
        assert_eq!(c.classify(sql), got, "{sql}");
        assert_eq!(c.classify_uncached(sql), got, "{sql}");
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_builtin_write_function() {
    let c = cached(&[], 0);
    for f in BUILTIN_WRITE_FUNCTIONS {
        for sql in [
            format!("SELECT {f}(1)"),
            format!("SELECT pg_catalog.{}(1, 2)", f.to_uppercase()),
            format!("SELECT * FROM t WHERE x = {f}('a')"),
        ] {
            let got = c.classify(&sql);
            assert_eq!(got.route, W, "{sql}");
            assert!(!got.fallback, "{sql}");
        }
    }
    for f in [
        "nextval",
        "setval",
        "currval",
        "lastval",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_shared",
        "pg_advisory_unlock_all",
        "set_config",
        "txid_current",
        "pg_current_xact_id",
        "pg_notify",
        "lo_create",
        "lo_creat",
        "lo_import",
        "lo_unlink",
        "lo_put",
        "lo_from_bytea",
        "lowrite",
    ] {
        assert!(BUILTIN_WRITE_FUNCTIONS.contains(&f), "{f} missing");
    }
}

#[test]
fn configured_write_functions() {
    let fns = vec![
        "app.bump_counter".to_owned(),
        "Audit_Log".to_owned(),
        " \"Touch\" ".to_owned(),
    ];
    let c = cached(&fns, 100);
    let plain = cached(&[], 100);
    for sql in [
        "SELECT bump_counter(1)",
        "SELECT app.bump_counter(1)",
        "SELECT other.BUMP_COUNTER(1)",
        "SELECT public.AUDIT_LOG('x')",
        "SELECT * FROM t WHERE audit_log(t.id) AND touch(1)",
        "SELECT \"audit_log\"('x')",
    ] {
        assert_eq!(c.classify(sql).route, W, "{sql}");
        assert_eq!(plain.classify(sql).route, R, "{sql}");
    }
    assert_eq!(c.classify("SELECT bump_counter FROM t").route, R);
    assert_eq!(c.classify("SELECT 'audit_log(1)'").route, R);
}

#[test]
fn write_functions_found_in_unparseable_statements() {
    let c = cached(&["f".to_owned()], 0);
    // sqlparser rejects these, but the token scan still sees the calls.
    let toks: Vec<Token<'_>> = Lexer::new("SELEKT f(1) FROM ))").collect();
    assert!(c.calls_write_function(&toks));
    let toks: Vec<Token<'_>> = Lexer::new("TABLE t /* nextval( */ 'nextval('").collect();
    assert!(!c.calls_write_function(&toks));
    assert!(parse("SELECT nextval('s') FOR NO KEY UPDATE").is_none());
    let got = c.classify("SELECT nextval('s') FOR NO KEY UPDATE");
    assert_eq!(got.route, W);
}

#[test]
fn psql_catalog_queries_are_reads() {
    let sql = include_str!("psql_catalog.sql");
    let stmts = split_statements(sql);
    assert_eq!(stmts.len(), 10);
    let c = cached(&[], 100);
    for stmt in stmts {
        let got = c.classify(stmt);
        assert_eq!(got.route, R, "{stmt}");
        assert!(!got.fallback, "sqlparser should parse {stmt}");
    }
    // All of them at once, as a simple-protocol string.
    let got = c.classify(sql);
    assert_eq!((got.route, got.statements), (R, 10));
}

#[test]
fn classification_details() {
    let c = cached(&[], 100);
    let x = c.classify("SET a = 1; SELECT 1; ; -- nothing\n");
    assert_eq!(x.statements, 2);
    assert!(x.changes_session);
    assert!(!x.fallback);
    assert!(x.is_read());

    let x = c.classify("");
    assert_eq!((x.route, x.statements), (R, 0));
    let x = c.classify("  /* only a comment */ ; ");
    assert_eq!((x.route, x.statements), (R, 0));

    let x = c.classify("BEGIN READ ONLY, DEFERRABLE");
    assert!(x.fallback);
    assert!(x.is_read());
    assert!(!x.changes_session);

    let x = c.classify("SELECT 1");
    assert_eq!(x.hints(), Ok(&Hints::EMPTY));

    let x = c.classify("/* shardgate: consistency=bounded, max_lag_ms=200 */ SELECT 1");
    let h = x.hints().unwrap();
    assert_eq!(h.consistency, Some(Consistency::Bounded));
    assert_eq!(h.max_lag_ms, Some(200));

    let x = c.classify("SELECT 1 /* shardgate: colour=red */");
    assert_eq!(x.route, R);
    assert_eq!(x.hints().unwrap_err().hint(), "colour");

    assert_eq!(
        Route::Begin { read_only: true }.to_string(),
        "begin read only"
    );
}

#[test]
fn cache_normalises_literals() {
    let c = cached(&[], 100);
    let a = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 123");
    assert_eq!(c.cache_len(), 1);
    let b = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 456");
    assert_eq!(c.cache_len(), 1);
    assert_eq!(a, b);
    let b = c.classify("SELECT  abalance\n FROM pgbench_accounts   WHERE aid = 789 -- x");
    assert_eq!(c.cache_len(), 1);
    assert_eq!(a, b);

    // Strings too, in any form.
    let a = c.classify("SELECT * FROM t WHERE name = 'alice' AND n = 1.5e3");
    let b = c.classify("SELECT * FROM t WHERE name = E'bob\\'s' AND n = 7");
    let d = c.classify("SELECT * FROM t WHERE name = $$x$$ AND n = .5");
    assert_eq!(c.cache_len(), 2);
    assert_eq!((a.clone(), a), (b, d));

    // Comments without hints do not matter; hint comments stay in the key.
    let a = c.classify("/* request 1 */ UPDATE t SET a = 1 WHERE id = 2");
    let b = c.classify("/* request 2 */ UPDATE t SET a = 3 WHERE id = 4");
    assert_eq!(a, b);
    assert_eq!(c.cache_len(), 3);
    let s1 = c.classify("SELECT * FROM t /* shardgate: shard=1 */ WHERE id = 1");
    let s2 = c.classify("SELECT * FROM t /* shardgate: shard=2 */ WHERE id = 1");
    assert_eq!(c.cache_len(), 5);
    assert_eq!(s1.hints().unwrap().shard, Some(1));
    assert_eq!(s2.hints().unwrap().shard, Some(2));
    assert_eq!(
        c.classify("SELECT * FROM t /* shardgate: shard=2 */ WHERE id = 99")
            .hints()
            .unwrap()
            .shard,
        Some(2)
    );

    // Different structure, different entries.
    let w = c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1 FOR UPDATE");
    assert_eq!(w.route, W);
    assert_eq!(
        c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
            .route,
        R
    );
    // Placeholders never collide with parameters or identifiers.
    let mut k1 = String::new();
    let mut k2 = String::new();
    cache_key("SELECT 1", &mut k1);
    cache_key("SELECT $1", &mut k2);
    assert_ne!(k1, k2);
    cache_key("SELECT ?", &mut k2);
    assert_ne!(k1, k2);
    // A control character between tokens: analysed as written, no key.
    assert!(normalize("SELECT \u{1}N", &mut k2, &mut LiteralSink::new(None, None)).is_none());
    cache_key("SELECT a b", &mut k1);
    cache_key("SELECT ab", &mut k2);
    assert_ne!(k1, k2);
}

#[test]
fn cached_equals_uncached_for_literal_variants() {
    let c = cached(&[], 1000);
    for (sql, _) in TABLE {
        let variant = sql.replace('1', "987").replace("'x'", "'zz'");
        assert_eq!(c.classify(sql), c.classify_uncached(sql), "{sql}");
        assert_eq!(
            c.classify(&variant),
            c.classify_uncached(&variant),
            "{variant}"
        );
    }
}

#[test]
fn cache_is_bounded() {
    for cap in [1usize, 2, 3, 10, 101] {
        let c = cached(&[], cap);
        for i in 0..500 {
            let sql = format!("SELECT c{i} FROM t WHERE id = {i}");
            assert_eq!(c.classify(&sql).route, R);
            assert!(c.cache_len() <= cap, "cap {cap}: {}", c.cache_len());
        }
    }
    // A statement in constant use survives a stream of one-off statements.
    let c = cached(&[], 10);
    let hot = "SELECT abalance FROM pgbench_accounts WHERE aid = 1";
    c.classify(hot);
    for i in 0..100 {
        c.classify(&format!("SELECT c{i} FROM t"));
        c.classify(hot);
        let len = c.cache_len();
        c.classify(hot);
        assert_eq!(c.cache_len(), len, "the hot statement stays cached");
    }
    // Capacity 0: no cache at all.
    let c = cached(&[], 0);
    c.classify("SELECT 1");
    assert_eq!(c.cache_len(), 0);
    // Long statements are decided but not cached.
    let c = cached(&[], 10);
    let long = format!(
        "SELECT * FROM t WHERE id IN ({}1)",
        "1, ".repeat(MAX_CACHED_SQL)
    );
    assert_eq!(c.classify(&long).route, R);
    assert_eq!(c.cache_len(), 0);
    // Statements with very many operators skip sqlparser and go to the primary.
    let deep = format!("SELECT {}1", "1 + ".repeat(MAX_PARSE_OPERATORS + 1));
    let got = c.classify(&deep);
    assert_eq!((got.route, got.fallback), (W, true));
    let ok = format!("SELECT {}1", "1 + ".repeat(MAX_PARSE_OPERATORS));
    assert_eq!(c.classify(&ok).route, R);
}

#[test]
fn classifier_is_shareable() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Classifier>();
    assert_send_sync::<Analyzer>();
    assert_send_sync::<Classification>();
    let c = Arc::new(cached(&[], 64));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    let sql = format!("SELECT x{} FROM t WHERE id = {i}", i % 50 + t);
                    assert_eq!(c.classify(&sql).route, R);
                    assert_eq!(c.classify("UPDATE t SET a = 1").route, W);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(c.cache_len() <= 64);
}

/// Statements sqlparser 0.64 rejects (PostgreSQL accepts them all). If an
/// upgrade fixes one, this test says so; the fallback keeps them routed.
#[test]
fn sqlparser_gaps() {
    let gaps = [
        "SELECT * FROM t FOR NO KEY UPDATE",
        "SELECT * FROM t FOR KEY SHARE",
        "SELECT 1 FOR UPDATE",
        "TABLE t",
        "copy pgbench_accounts from stdin with (freeze on)",
        "BEGIN READ ONLY, DEFERRABLE",
        "BEGIN NOT DEFERRABLE",
        "PREPARE TRANSACTION 'x'",
        "COMMIT PREPARED 'x'",
        "ROLLBACK PREPARED 'x'",
        "SET CONSTRAINTS ALL DEFERRED",
        "RESET TIME ZONE",
        "DO $$ BEGIN END $$",
        "vacuum analyze pgbench_accounts",
        "VACUUM (VERBOSE, ANALYZE) t",
        "CLUSTER t",
        "REINDEX TABLE t",
        "CHECKPOINT",
        "ALTER SYSTEM SET work_mem = '1MB'",
        "MOVE NEXT FROM c",
        "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
        "SECURITY LABEL ON TABLE t IS 'x'",
    ];
    let parsed: Vec<_> = gaps.iter().filter(|s| parse(s).is_some()).collect();
    assert!(parsed.is_empty(), "sqlparser now parses {parsed:?}");
}

/// A small deterministic generator (no extra dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

#[test]
fn never_panics() {
    let c = cached(&["f".to_owned(), "".to_owned(), ".".to_owned()], 50);
    let mut inputs: Vec<String> = [
        "",
        ";",
        ";;;",
        "'",
        "\"",
        "$",
        "$$",
        "$a$",
        "/*",
        "*/",
        "/* /* */",
        "--",
        "E'\\",
        "U&'",
        "'abc",
        "\"abc",
        "/* abc",
        "$a$ abc",
        "$1",
        "$99999999999999999999",
        "SELECT 'unterminated",
        "SELECT \"unterminated",
        "SELECT $$unterminated",
        "SELECT /* unterminated",
        "SELECT 1 /* shardgate: shard=1",
        "BEGIN READ",
        "BEGIN ISOLATION LEVEL",
        "BEGIN ISOLATION",
        "START",
        "PREPARE",
        "FOR",
        "SELECT FOR",
        "SELECT * FROM t FOR NO",
        "SELECT * FROM t FOR NO KEY",
        "SELECT * FROM t FOR KEY",
        "nextval(",
        "(",
        ")",
        "((((",
        "é",
        "😀",
        "SELECT '😀' ; ü/*ü",
        "\u{0}",
        "\u{1}N",
        "SELECT\u{0}1",
        "ÿ'",
        "x'",
        "b'",
        "1e",
        "1e+",
        "0x",
        ".",
        "..",
        "::",
        "SET",
        "RESET",
        "DISCARD",
        "SHOW",
        "TABLE",
        "COPY",
        "COPY (",
        "EXPLAIN",
        "EXPLAIN ANALYZE",
        "WITH",
        "WITH x AS (",
        "/* shardgate: sharding_key='é */ SELECT 1",
        "\u{feff}SELECT 1",
        "SELECT 1\u{a0}FROM t",
        "SELECT \u{b}1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Huge inputs.
    inputs.push(format!("SELECT {}1", "(".repeat(100_000)));
    inputs.push(format!("SELECT {}", "-".repeat(100_000)));
    inputs.push("x".repeat(1 << 20));
    inputs.push("SELECT 1;".repeat(10_000));
    inputs.push(format!("SELECT '{}", "a".repeat(100_000)));
    inputs.push("/*".repeat(50_000));
    inputs.push(format!("SELECT {} FROM t", "a + ".repeat(50_000)));
    inputs.push(format!("SELECT {}", "a AND ".repeat(50_000)));
    inputs.push(format!("SELECT 1{}", " UNION SELECT 1".repeat(50_000)));
    inputs.push(format!("SELECT 1{}", "::int".repeat(50_000)));
    inputs.push(format!(
        "SELECT 1 FROM t{}",
        " JOIN t ON true".repeat(20_000)
    ));
    inputs.push(format!("SELECT a{}", "[1]".repeat(50_000)));
    inputs.push(format!(
        "INSERT INTO t VALUES {}",
        vec!["(1, 'x')"; 20_000].join(", ")
    ));
    // Random soup of SQL fragments and odd characters.
    let pieces = [
        "SELECT ",
        "INSERT ",
        "BEGIN ",
        "READ ONLY",
        "FOR ",
        "UPDATE ",
        "NO KEY ",
        "SHARE ",
        "WITH ",
        "(",
        ")",
        "'",
        "\"",
        "$$",
        "$a$",
        "/*",
        "*/",
        "--",
        "\n",
        ";",
        ",",
        "nextval",
        "pg_catalog.",
        ".",
        "1",
        "1.5e-3",
        "$1",
        "é",
        "😀",
        "\u{0}",
        "E'\\",
        "shardgate:",
        "/* shardgate: shard=",
        "consistency=",
        "COPY ",
        "TO ",
        "FROM ",
        "STDIN",
        "EXPLAIN ",
        "SET ",
        "x",
        " ",
        "::",
        "[",
        "]",
        "U&'",
        "b'",
        "TABLE ",
        "ROLLBACK ",
        "PREPARE ",
        "TRANSACTION ",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let n = (rng.next() % 24) as usize;
        let s: String = (0..n).map(|_| rng.pick(&pieces)).collect();
        inputs.push(s);
    }
    // Random bytes, made valid UTF-8.
    for _ in 0..500 {
        let n = (rng.next() % 64) as usize;
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        inputs.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for sql in &inputs {
        let got = c.classify(sql);
        let again = c.classify(sql);
        assert_eq!(got.route, again.route);
        let _ = parse_hints(sql);
    }
}

/// Fuzzing found it (fuzz/regressions/classify/): the lexer takes `1P0` as
/// one number, so `OFFSET 1P0` (which does not parse) shared the cache
/// entry of `OFFSET 100` and was answered from it.
#[test]
fn number_tokens_with_letters_keep_their_own_cache_entry() {
    let c = cached(&[], 64);
    let ok = "SELECT id FROM orders ORDER BY id LIMIT 5 OFFSET 100";
    let junk = "SELECT id FROM orders ORDER BY id LIMIT 5 OFFSET 1P0";
    assert_eq!(c.classify(ok), c.classify_uncached(ok));
    assert_eq!(c.classify(junk), c.classify_uncached(junk));
    assert_ne!(c.classify(ok), c.classify(junk));
    for n in [
        "42",
        "1_000",
        "1.5e-3",
        ".5",
        "5.",
        "1E+10",
        "0x1F",
        "0o17",
        "0b101",
        "1_000.5_5",
        "0x1_F",
    ] {
        assert!(plain_number(n), "{n}");
    }
    for n in [
        "1P0", "1into", "1e", "1e+", "0xZ", "12abc", "1.5ex", "0Occc", "0b12",
        // Underscores not between two digits end the number for sqlparser
        // (fuzzing found `GROUP BY 1______` routed apart from its key's).
        "1__0", "1_", "1____", "1_.5", "0x_1", "1e_5",
    ] {
        assert!(!plain_number(n), "{n}");
    }
}

/// Fuzzing found it (fuzz/regressions/classify/): `::` and `: :` are both
/// two `:` tokens, and the key joined every token with a space, so the
/// second (no statement) took the cached route of the first.
#[test]
fn spacing_between_punctuation_is_part_of_the_cache_key() {
    let c = cached(&[], 64);
    let cast = "SELECT (count(*) + 1)::int FROM orders";
    let junk = "SELECT (count(*) + 1): :int FROM orders";
    assert_eq!(c.classify(cast), c.classify_uncached(cast));
    assert_eq!(c.classify(junk), c.classify_uncached(junk));
    let (mut a, mut b) = (String::new(), String::new());
    cache_key(cast, &mut a);
    cache_key(junk, &mut b);
    assert_ne!(a, b);
    cache_key("SELECT  1 /* x */ FROM\n t", &mut a);
    cache_key("SELECT 2 FROM t", &mut b);
    assert_eq!(a, b, "space, comments and literals still share a key");
    // An unterminated comment is no comment to skip.
    let open = "DECLARE c CURSOR FOR SELECT/* FROM orders";
    c.classify("DECLARE c CURSOR FOR SELECT");
    assert_eq!(c.classify(open), c.classify_uncached(open));
}

#[test]
fn an_unterminated_literal_does_not_share_a_terminated_ones_cache_key() {
    let key = |sql: &str| {
        let mut k = String::new();
        cache_key(sql, &mut k);
        k
    };
    let closed = key("SELECT * FROM t WHERE name = 'alice'");
    assert_eq!(closed, key("SELECT * FROM t WHERE name = 'bob'"));
    assert_eq!(closed, key("SELECT * FROM t WHERE name = 'it''s'"));
    assert_eq!(closed, key("SELECT * FROM t WHERE name = $$x$$"));
    assert_eq!(closed, key("SELECT * FROM t WHERE name = ''"));
    for open in [
        "SELECT * FROM t WHERE name = 'asmfc!",
        "SELECT * FROM t WHERE name = 'it''",
        "SELECT * FROM t WHERE name = '''",
        "SELECT * FROM t WHERE name = $$x",
        "SELECT * FROM t WHERE name = $a$x$b$",
        "SELECT * FROM t WHERE name = E'x\\'",
    ] {
        assert_ne!(closed, key(open), "{open}");
    }
}
