#!/usr/bin/env python3
"""psycopg 3 program of the driver conformance matrix (tests/clients/SCENARIOS.md).

Runs the 20 scenarios through the proxy (SG_HOST/SG_PORT) with psycopg's own
APIs and checks what a user sees plus the rows on the primaries, read with
direct connections. Prints one JSON line per scenario on stdout; diagnostics
go to stderr.

Each scenario runs in a forked child process with its own connections, so a
hang (time limit 60 s) or a crash cannot leak into the next scenario: on
timeout the child dumps its stack to stderr and is killed, which also closes
its connections.

`psycopg_conformance.py hold KEY` is the child of scenario client_killed: it
opens a transaction through the proxy, inserts account KEY, prints READY and
sleeps until it is killed.
"""
import csv
import faulthandler
import io
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import psycopg
from psycopg import pq
from psycopg.types import TypeInfo
from psycopg.types.composite import CompositeInfo
from psycopg.types.json import Json, Jsonb

ENV = os.environ
HOST, PORT = ENV["SG_HOST"], int(ENV["SG_PORT"])
USER, PASSWORD, DATABASE = ENV["SG_USER"], ENV["SG_PASSWORD"], ENV["SG_DATABASE"]
TOPOLOGY = ENV.get("SG_TOPOLOGY", "single")
PRIMARIES = [a.strip() for a in ENV["SG_PRIMARIES"].split(",") if a.strip()]
REF, REF_DATABASE = ENV["SG_REF"], ENV["SG_REF_DATABASE"]
BASE = int(ENV["SG_KEY_BASE"])
KEY_SPAN = 1_000_000
# `direct.env` points SG_HOST:SG_PORT at a primary: no proxy in between.
DIRECT = f"{HOST}:{PORT}" in PRIMARIES

SCENARIO_LIMIT = 60.0  # seconds per scenario (SCENARIOS.md)
TOTAL_BUDGET = 860.0  # the matrix kills the whole program after 900 s
CURRENCIES = ["USD", "EUR", "JPY", "GBP"]
INSERT_ACCOUNT = "INSERT INTO accounts (id, owner, currency, balance) VALUES (%s, %s, %s, %s)"
ACCOUNT_COLUMNS = "id, owner, currency, balance"
PGCOPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


# --------------------------------------------------------------------------
# Failures, steps and error descriptions
# --------------------------------------------------------------------------


class Failed(Exception):
    """A check failed; the message is the scenario's detail."""


class Abort(Exception):
    """Raised by the program inside `with conn.transaction()` to roll it back,
    as an application error would."""


_step_fd = None  # pipe to the parent, in a scenario child
_last_step = ""


def step(text):
    """Records what the scenario is doing (shown if it hangs or throws)."""
    global _last_step
    _last_step = text
    print(f"  .. {text}", file=sys.stderr, flush=True)
    if _step_fd is not None:
        os.write(_step_fd, (json.dumps({"step": text}) + "\n").encode())


def describe(exc):
    """Exception → `Class (SQLSTATE x): message`."""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or "none"
        return f"{type(exc).__name__} (SQLSTATE {state}): {str(exc).strip()}"
    return f"{type(exc).__name__}: {exc}"


def check(cond, detail):
    if not cond:
        raise Failed(detail)


def expect_error(sqlstate, what, fn):
    """Runs fn, which must fail with `sqlstate`; returns the exception."""
    try:
        fn()
    except psycopg.Error as e:
        if e.sqlstate == sqlstate:
            return e
        raise Failed(f"{what}: expected SQLSTATE {sqlstate}, got {describe(e)}") from None
    raise Failed(f"{what}: expected SQLSTATE {sqlstate}, but it succeeded")


def key(i, k=0):
    """Key k of scenario i (1-based)."""
    return BASE + 1000 * i + k


def short(values, n=8):
    values = list(values)
    text = ", ".join(str(v) for v in values[:n])
    return text + (f", ... ({len(values)} in all)" if len(values) > n else "")


# --------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------


def proxy(autocommit=True, **kwargs):
    """A connection through the proxy (psycopg's default prepare_threshold=5)."""
    return psycopg.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DATABASE,
        autocommit=autocommit, connect_timeout=10,
        application_name="psycopg-conformance", **kwargs,
    )


def direct(addr, dbname=DATABASE):
    """An autocommit connection straight to a server (`host:port`)."""
    host, port = addr.rsplit(":", 1)
    return psycopg.connect(
        host=host, port=int(port), user=USER, password=PASSWORD, dbname=dbname,
        autocommit=True, connect_timeout=10, application_name="psycopg-conformance-check",
    )


def on_primaries(query, params=()):
    """The rows of `query` run on every primary, concatenated."""
    rows = []
    for addr in PRIMARIES:
        with direct(addr) as conn:
            rows += conn.execute(query, params).fetchall()
    return rows


def accounts_on_primaries(lo, hi):
    """Accounts with id in [lo, hi] on all primaries, by id (duplicates kept)."""
    rows = on_primaries(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id BETWEEN %s AND %s", (lo, hi))
    return sorted(rows)


def diff_rows(found, expected):
    """'' when equal; else which keys (first column) are missing, extra,
    duplicated or different."""
    found, expected = list(found), list(expected)
    if found == expected:
        return ""
    fc = Counter(r[0] for r in found)
    ec = Counter(r[0] for r in expected)
    fmap, emap = {r[0]: r for r in found}, {r[0]: r for r in expected}
    parts = [f"expected {len(expected)} rows, found {len(found)}"]
    if missing := [k for k in ec if k not in fc]:
        parts.append(f"missing keys {short(missing)}")
    if extra := [k for k in fc if k not in ec]:
        parts.append(f"unexpected keys {short(extra)}")
    if dup := [k for k, n in fc.items() if n > ec.get(k, 0) and k in ec]:
        parts.append(f"duplicated keys {short(dup)}")
    changed = [k for k in fmap if k in emap and fmap[k] != emap[k]]
    if changed:
        k = changed[0]
        parts.append(f"{len(changed)} rows differ, e.g. expected {emap[k]!r}, found {fmap[k]!r}")
    if len(parts) == 1:
        order = [r[0] for r in found]
        parts.append(f"same rows in another order: {short(order)}")
    return "; ".join(parts)


def expect_accounts(lo, hi, expected, what="primaries"):
    """The accounts in [lo, hi] on the primaries are exactly `expected`."""
    problem = diff_rows(accounts_on_primaries(lo, hi), sorted(expected))
    check(not problem, f"{what}: {problem}")


def eventually(attempt):
    """Retries `attempt()` (None when fine, else a problem string) for up to
    10 s where reads may go to a lagging replica; returns the last problem.
    An error on a retry is reported together with the earlier problem."""
    deadline = time.monotonic() + (0 if TOPOLOGY == "single" else 10)
    problem = None
    while True:
        try:
            problem = attempt()
        except psycopg.Error as e:
            if problem is None:
                raise
            raise Failed(f"{problem}; then, retrying: {describe(e)}") from None
        if problem is None or time.monotonic() >= deadline:
            return problem
        time.sleep(0.3)


def reference(rows, fn):
    """fn(conn) on the reference database, inside a transaction that holds
    `rows` of accounts and is rolled back: the reference database is shared
    by concurrent runs, so nothing is ever committed there."""
    with direct(REF, REF_DATABASE) as ref:
        with ref.transaction(force_rollback=True):
            ref.cursor().executemany(INSERT_ACCOUNT, rows)
            return fn(ref)


def account_rows(i, n, owner=lambda k: f"owner {k}"):
    """n deterministic accounts of scenario i."""
    return [
        (key(i, k), owner(k), CURRENCIES[k % 4], Decimal(k * 37 % 101) + Decimal("0.25") * (k % 4))
        for k in range(n)
    ]


def insert_accounts(conn, rows):
    """Autocommit INSERTs, one statement per row; each must report 1 row."""
    for row in rows:
        n = conn.execute(INSERT_ACCOUNT, row).rowcount
        check(n == 1, f"INSERT of account {row[0]} reported {n} rows, expected 1")


def idle_in_transaction():
    """Sessions of SG_DATABASE `idle in transaction` on each primary."""
    found = {}
    for addr in PRIMARIES:
        with direct(addr) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                " AND state LIKE 'idle in transaction%%' AND pid <> pg_backend_pid()",
                (DATABASE,)).fetchone()
            if n:
                found[addr] = n
    return found


def run_parts(*parts):
    """Runs independent parts of a scenario, each a (name, fn); a failing part
    does not hide the next ones; fails with every part's problem."""
    problems = []
    for name, fn in parts:
        try:
            fn()
        except Failed as f:
            problems.append(f"{name}: {f}")
        except psycopg.Error as e:
            problems.append(f"{name}: {describe(e)} (at step: {_last_step})")
    check(not problems, " | ".join(problems))


class Placement:
    """Where keys land: in `sharded`, which primary each key of a scenario
    goes to is learnt by inserting candidate keys through the proxy
    (autocommit), looking them up on the primaries and deleting them there.
    take(side) hands out unused keys of shard `side` (0 or 1); with one
    primary both sides are that primary."""

    def __init__(self, i, count=40):
        keys = [key(i, k) for k in range(500, 500 + count)]
        step(f"learn the placement of {count} keys")
        with proxy() as conn:
            for k in keys:
                conn.execute(INSERT_ACCOUNT, (k, "placement probe", "USD", Decimal(0)))
        self.shards = []
        for addr in PRIMARIES:
            with direct(addr) as d:
                found = [r[0] for r in d.execute("SELECT id FROM accounts WHERE id = ANY(%s) ORDER BY id", (keys,))]
                d.execute("DELETE FROM accounts WHERE id = ANY(%s)", (keys,))
            if found:
                self.shards.append(found)
        placed = sum(len(f) for f in self.shards)
        check(placed == count, f"placement: {placed} of {count} autocommit INSERTs found on the primaries")
        if len(self.shards) == 1:
            self.shards.append(self.shards[0])
        self.used = set()

    def take(self, side):
        k = next(k for k in self.shards[side] if k not in self.used)
        self.used.add(k)
        return k

    def side(self, k):
        return 0 if k in self.shards[0] else 1


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------


def s_autocommit():
    """1. Autocommit INSERT×10 (psycopg prepares the statement itself after
    prepare_threshold=5 executions), UPDATE, DELETE: rowcounts and primaries."""
    rows = account_rows(1, 10)
    with proxy() as conn:
        step("10 autocommit INSERTs")
        insert_accounts(conn, rows)
        step("UPDATE and DELETE")
        n = conn.execute("UPDATE accounts SET balance = %s, owner = %s WHERE id = %s",
                         (Decimal("999.99"), "updated", key(1, 3))).rowcount
        check(n == 1, f"UPDATE reported {n} rows, expected 1")
        n = conn.execute("DELETE FROM accounts WHERE id = %s", (key(1, 7),)).rowcount
        check(n == 1, f"DELETE reported {n} rows, expected 1")
    expected = [r for r in rows if r[0] != key(1, 7)]
    expected = [(r[0], "updated", r[2], Decimal("999.99")) if r[0] == key(1, 3) else r for r in expected]
    step("check primaries")
    expect_accounts(key(1, 0), key(1, 999), expected)


def _tx_body(conn, i, base_k, tag):
    """Prepared UPDATE of the existing account base_k, then 5 INSERTs; returns
    the UPDATE's rowcount and what the transaction sees of the row."""
    n = conn.execute("UPDATE accounts SET balance = balance + %s, owner = %s WHERE id = %s",
                     (Decimal("1.50"), tag, key(i, base_k)), prepare=True).rowcount
    for k in range(base_k + 1, base_k + 6):
        conn.execute(INSERT_ACCOUNT, (key(i, k), f"{tag} {k}", CURRENCIES[k % 4], Decimal(k)))
    seen = conn.execute("SELECT owner, balance FROM accounts WHERE id = %s", (key(i, base_k),)).fetchone()
    return n, seen


def _tx_scenario(i, commit):
    """tx_commit / tx_rollback: (A) `with conn.transaction()` on an autocommit
    connection, (B) a non-autocommit connection (psycopg sends BEGIN before
    the first statement) ended by conn.commit() / conn.rollback()."""
    tag = "committed" if commit else "rolled back"
    existing = [(key(i, 0), "before", "USD", Decimal("100.00")),
                (key(i, 10), "before", "EUR", Decimal("100.00"))]
    with proxy() as setup:
        step("insert the existing rows")
        insert_accounts(setup, existing)
    with proxy() as conn:
        step("A: with conn.transaction()")
        try:
            with conn.transaction():
                n_a, seen_a = _tx_body(conn, i, 0, tag)
                if not commit:
                    raise Abort()
        except Abort:
            pass
    with proxy(autocommit=False) as conn:
        step("B: non-autocommit connection")
        n_b, seen_b = _tx_body(conn, i, 10, tag)
        conn.commit() if commit else conn.rollback()
    for part, n, seen in (("A", n_a, seen_a), ("B", n_b, seen_b)):
        check(n == 1, f"{part}: first statement of the transaction (prepared UPDATE) reported {n} rows, expected 1")
        check(seen == (tag, Decimal("101.50")),
              f"{part}: inside the transaction the updated row reads {seen!r}, expected {(tag, Decimal('101.50'))!r}")
    expected = list(existing)
    if commit:
        expected = []
        for base_k, cur in ((0, "USD"), (10, "EUR")):
            expected.append((key(i, base_k), tag, cur, Decimal("101.50")))
            expected += [(key(i, k), f"{tag} {k}", CURRENCIES[k % 4], Decimal(k))
                         for k in range(base_k + 1, base_k + 6)]
    step("check primaries")
    expect_accounts(key(i, 0), key(i, 999), expected)


def s_tx_commit():
    """2. Explicit transactions committed: all 6 changes, first statement 1 row."""
    _tx_scenario(2, commit=True)


def s_tx_rollback():
    """3. The same rolled back (exception out of the block / conn.rollback())."""
    _tx_scenario(3, commit=False)


def s_savepoint():
    """4. Savepoints, keys on two shards (b on a shard the transaction has not
    used yet). A: psycopg's nested `conn.transaction()` blocks (SAVEPOINT;
    psycopg.Rollback → ROLLBACK TO SAVEPOINT + RELEASE; normal exit →
    RELEASE). B: the literal sequence INSERT a; SAVEPOINT s; INSERT b;
    ROLLBACK TO s; INSERT c; RELEASE s; COMMIT in a `with` block."""
    place = Placement(4)
    row = lambda k: (k, f"sp {k - key(4)}", "USD", Decimal("4.00"))
    expected = []

    def seen_in_tx(conn, keys, want):
        seen = [r[0] for r in conn.execute("SELECT id FROM accounts WHERE id = ANY(%s) ORDER BY id", (keys,))]
        check(seen == sorted(want), f"inside the transaction: expected ids {sorted(want)}, found {seen}")

    def nested():
        a, b, c, d, e = place.take(0), place.take(1), place.take(1), place.take(1), place.take(0)
        with proxy() as conn:
            step("A: outer transaction with nested blocks")
            with conn.transaction():
                conn.execute(INSERT_ACCOUNT, row(a))
                with conn.transaction() as sp:  # SAVEPOINT while one shard is in the transaction
                    conn.execute(INSERT_ACCOUNT, row(b))
                    raise psycopg.Rollback(sp)  # ROLLBACK TO SAVEPOINT; RELEASE SAVEPOINT
                conn.execute(INSERT_ACCOUNT, row(c))
                with conn.transaction():  # SAVEPOINT ... RELEASE SAVEPOINT, both shards in use
                    conn.execute(INSERT_ACCOUNT, row(d))
                with conn.transaction() as sp:
                    conn.execute(INSERT_ACCOUNT, row(e))
                    raise psycopg.Rollback(sp)
                seen_in_tx(conn, [a, b, c, d, e], [a, c, d])
        expected.extend([row(a), row(c), row(d)])

    def literal():
        a, b, c = place.take(0), place.take(1), place.take(1)
        with proxy() as conn:
            step("B: SAVEPOINT s / ROLLBACK TO SAVEPOINT s / RELEASE SAVEPOINT s")
            with conn.transaction():
                conn.execute(INSERT_ACCOUNT, row(a))
                conn.execute("SAVEPOINT s")
                conn.execute(INSERT_ACCOUNT, row(b))
                conn.execute("ROLLBACK TO SAVEPOINT s")
                conn.execute(INSERT_ACCOUNT, row(c))
                conn.execute("RELEASE SAVEPOINT s")
                seen_in_tx(conn, [a, b, c], [a, c])
        expected.extend([row(a), row(c)])

    run_parts(("A (nested conn.transaction())", nested), ("B (SQL savepoints)", literal))
    step("check primaries")
    expect_accounts(key(4, 0), key(4, 999), expected)


def s_error_in_tx():
    """5. A failing statement in a transaction: 23505, then 25P02, ROLLBACK
    (psycopg's block on exception / conn.rollback()), the connection works."""
    dup = (key(5, 50), "existing", "USD", Decimal(1))
    with proxy() as conn:
        step("insert the existing row")
        insert_accounts(conn, [dup])
        step("A: with conn.transaction()")
        try:
            with conn.transaction():
                conn.execute(INSERT_ACCOUNT, (key(5, 0), "a", "USD", Decimal(1)))
                expect_error("23505", "A: duplicate INSERT", lambda: conn.execute(INSERT_ACCOUNT, dup))
                expect_error("25P02", "A: statement after the error", lambda: conn.execute("SELECT 1"))
                raise Abort()
        except Abort:
            pass
        status = conn.info.transaction_status
        check(status == pq.TransactionStatus.IDLE, f"A: after the block the connection is {status.name}, expected IDLE")
        got = conn.execute("SELECT 1").fetchone()
        check(got == (1,), f"A: SELECT 1 after ROLLBACK returned {got}")
    with proxy(autocommit=False) as conn:
        step("B: non-autocommit connection")
        conn.execute(INSERT_ACCOUNT, (key(5, 1), "a2", "USD", Decimal(1)))
        expect_error("23505", "B: duplicate INSERT", lambda: conn.execute(INSERT_ACCOUNT, dup))
        expect_error("25P02", "B: statement after the error", lambda: conn.execute("SELECT 1"))
        conn.rollback()
        got = conn.execute("SELECT 1").fetchone()
        check(got == (1,), f"B: SELECT 1 after conn.rollback() returned {got}")
        conn.commit()
    step("check primaries")
    expect_accounts(key(5, 0), key(5, 999), [dup])


def s_prepared_reuse():
    """6. One SELECT by key, 10 times: (A) prepare=True in a transaction,
    (B) automatic preparation after prepare_threshold=5 executions with
    shardgate.consistency=strong, (C) prepare=True with binary=True."""
    rows = account_rows(6, 10)
    query = "SELECT id, owner, currency, balance FROM accounts WHERE id = %s"
    with proxy() as conn:
        step("insert 10 rows")
        insert_accounts(conn, rows)

    def read_all(conn, part, **kw):
        for row in rows:
            got = conn.execute(query, (row[0],), **kw).fetchall()
            check(got == [row], f"{part}: key {row[0]}: expected {[row]}, got {got}")

    with proxy() as conn:
        step("A: prepare=True in a transaction")
        with conn.transaction():
            read_all(conn, "A", prepare=True)
    with proxy() as conn:
        step("B: automatic preparation, consistency=strong")
        conn.execute("SET shardgate.consistency = strong")
        read_all(conn, "B")  # executions 6..10 use the statement psycopg prepared
    with proxy() as conn:
        step("C: prepare=True, binary=True in a transaction")
        with conn.transaction():
            read_all(conn, "C", prepare=True, binary=True)


def _rollback_probe(conn, k, after):
    """Right after a batch, `with conn.transaction()` INSERTs account k and
    raises: the row must not reach the primaries. The INSERT has its own
    text: psycopg 3.3 keeps the auto-prepared name of a statement of a
    failed pipeline in its cache (its next use fails with 26000, against
    PostgreSQL too), which would hide what this probe looks for."""
    step(f"transaction that rolls back, after {after}")
    status = None
    try:
        with conn.transaction():
            conn.execute(INSERT_ACCOUNT + " /* probe */", (k, "probe", "USD", Decimal(0)))
            status = conn.info.transaction_status.name
            raise Abort()
    except Abort:
        pass
    found = on_primaries("SELECT id FROM accounts WHERE id = %s", (k,))
    check(not found, f"the row {k} inserted in a `with conn.transaction()` block that raised"
          f" is on the primaries: the block was not a transaction (ReadyForQuery status after the"
          f" INSERT: {status}, expected INTRANS)")


def s_batch():
    """7. psycopg's batches end with Sync then Flush (Parse/Bind/Execute×N,
    Sync, Flush): executemany (pipelined) and a `with conn.pipeline()`
    block, each once with all rows on one shard and once spanning shards;
    right after each, a `with conn.transaction()` that INSERTs on the shard
    the batch ended on and raises: the row must be absent. Then an
    executemany of UPDATEs in a transaction rolled back: no change."""
    place = Placement(7, 100)
    make = lambda k: (k, f"batch {k - key(7)}", CURRENCIES[k % 4], Decimal(k % 97))
    one_shard = lambda side, n: [make(place.take(side)) for _ in range(n)]
    spanning = lambda n: [make(place.take(j % 2)) for j in range(n)]
    batches = [("executemany, one shard", "executemany", one_shard(0, 13)),
               ("executemany, two shards", "executemany", spanning(12)),
               ("pipeline, one shard", "pipeline", one_shard(1, 13)),
               ("pipeline, two shards", "pipeline", spanning(12))]
    done, failed = [], []
    with proxy() as conn:
        cur = conn.cursor()
        parts = []
        for what, api, rows in batches:
            def run_batch(api=api, rows=rows, what=what):
                step(what)
                try:
                    if api == "executemany":
                        cur.executemany(INSERT_ACCOUNT, rows)
                        counts = [cur.rowcount]
                        want = [len(rows)]
                    else:
                        with conn.pipeline():
                            cursors = [conn.execute(INSERT_ACCOUNT, r) for r in rows]
                        counts = [c.rowcount for c in cursors]
                        want = [1] * len(rows)
                except BaseException:
                    failed.append((what, rows))
                    raise
                done.extend(rows)
                check(counts == want, f"rowcounts {counts}, expected {want}")

            def probe(rows=rows, what=what):
                _rollback_probe(conn, place.take(place.side(rows[-1][0])), what)
            parts += [(what, run_batch), (f"transaction after {what}", probe)]
        all_rows = [r for _, _, rows in batches for r in rows]

        def updates():
            step("executemany of UPDATEs in a transaction rolled back")
            n = None
            try:
                with conn.transaction():
                    cur.executemany("UPDATE accounts SET balance = balance + 1000 WHERE id = %s",
                                    [(r[0],) for r in all_rows])
                    n = cur.rowcount
                    raise Abort()
            except Abort:
                pass
            check(n == len(done), f"executemany of UPDATEs reported {n} rows, expected {len(done)}")
        parts += [("UPDATEs rolled back", updates),
                  ("transaction after the UPDATEs", lambda: _rollback_probe(conn, place.take(0), "the UPDATEs"))]

        def primaries():
            step("check primaries")
            expect_accounts(key(7, 0), key(7, 999), done,
                            "rows on the primaries" + (f" (the failed batches {[w for w, _ in failed]} expected absent)"
                                                       if failed else ""))
        run_parts(*parts, ("primaries", primaries))


def s_returning():
    """8. INSERT ... RETURNING id, executemany(returning=True) read with
    cursor.results(), UPDATE ... RETURNING balance: what came back equals
    what is on the primaries."""
    acct = key(8, 0)
    returned, balance = [], []
    with proxy() as conn:
        step("insert the account")
        insert_accounts(conn, [(acct, "ret", "USD", Decimal("10.00"))])

        def insert_returning():
            step("INSERT INTO ledger RETURNING id")
            (lid,) = conn.execute("INSERT INTO ledger (account_id, amount, note) VALUES (%s, %s, %s) RETURNING id",
                                  (acct, Decimal("12.34"), "first")).fetchone()
            returned.append((acct, lid, Decimal("12.34")))

        def many_returning():
            step("executemany(returning=True)")
            cur = conn.cursor()
            params = [(key(8, k), Decimal(k) + Decimal("0.5"), f"many {k}") for k in (1, 2, 3)]
            cur.executemany("INSERT INTO ledger (account_id, amount, note) VALUES (%s, %s, %s)"
                            " RETURNING account_id, id, amount", params, returning=True)
            many = [r for _ in cur.results() for r in cur.fetchall()]
            returned.extend(many)
            check([r[0] for r in many] == [p[0] for p in params],
                  f"executemany RETURNING gave {many}, expected one row per account {[p[0] for p in params]}")

        def update_returning():
            step("UPDATE ... RETURNING balance")
            got = conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s RETURNING balance",
                               (Decimal("5.25"), acct)).fetchall()
            balance.extend(got)
            check(got == [(Decimal("15.25"),)], f"UPDATE RETURNING gave {got}, expected [(Decimal('15.25'),)]")

        def primaries():
            step("check primaries")
            ledger = sorted(on_primaries(
                "SELECT account_id, id, amount FROM ledger WHERE account_id BETWEEN %s AND %s",
                (key(8, 0), key(8, 999))))
            check(ledger == sorted(returned),
                  f"ledger on the primaries {ledger}, the RETURNING clauses gave {sorted(returned)}")
            if balance:
                bal = on_primaries("SELECT balance FROM accounts WHERE id = %s", (acct,))
                check(bal == balance, f"balance on the primaries {bal}, RETURNING gave {balance}")
        run_parts(("INSERT RETURNING", insert_returning), ("executemany RETURNING", many_returning),
                  ("UPDATE RETURNING", update_returning), ("primaries", primaries))


def cursor_rows():
    """The 120 accounts of cursor_fetch (also used by cross_shard_read)."""
    return account_rows(9, 120, owner=lambda k: f"fetch {k:03d}")


def load_cursor_rows(reload=False):
    """Loads the cursor_fetch rows through the proxy (one INSERT each: the
    batch APIs are tested by `batch`)."""
    rows = cursor_rows()
    if reload:
        for addr in PRIMARIES:
            with direct(addr) as c:
                c.execute("DELETE FROM accounts WHERE id BETWEEN %s AND %s", (key(9, 0), key(9, 999)))
    with proxy() as conn:
        insert_accounts(conn, rows)
    expect_accounts(key(9, 0), key(9, 999), rows, "loading the cursor_fetch rows")
    return rows


def s_cursor_fetch():
    """9. Named (server-side) cursors — DECLARE, then FETCH FORWARD 7 — with
    fetchmany(7), with itersize 7, and binary, each on a non-autocommit
    connection then COMMIT; and an SQL cursor (DECLARE / FETCH ALL / CLOSE)
    in a `with conn.transaction()` block."""
    lo, hi = key(9, 0), key(9, 119)
    query = "SELECT id, owner FROM accounts WHERE id BETWEEN %s AND %s ORDER BY id"
    step("load 120 rows")
    rows = load_cursor_rows()
    expected = reference(rows, lambda ref: ref.execute(query, (lo, hi)).fetchall())
    check(len(expected) == 120, f"reference returned {len(expected)} rows")

    def named(name, fetch, **kw):
        step(f"named cursor {name}")
        with proxy(autocommit=False) as conn:
            with conn.cursor(name=name, **kw) as cur:
                got = fetch(cur)
            conn.commit()
        problem = diff_rows(got, expected)
        check(not problem, problem)

    def fetchmany(cur):
        cur.execute(query, (lo, hi))
        got, sizes = [], []
        while batch := cur.fetchmany(7):
            sizes.append(len(batch))
            got += batch
        check(all(s == 7 for s in sizes[:-1]), f"fetchmany(7) batch sizes {sizes}")
        return got

    def iterate(cur):
        cur.itersize = 7
        cur.execute(query, (lo, hi))
        return list(cur)

    def sql_cursor():
        step("SQL cursor in a transaction")
        with proxy() as conn:
            with conn.transaction():
                conn.execute(f"DECLARE c CURSOR FOR SELECT count(*) FROM accounts WHERE id BETWEEN {lo} AND {hi}")
                got = conn.execute("FETCH ALL FROM c").fetchall()
                conn.execute("CLOSE c")
        check(got == [(120,)], f"FETCH ALL returned {got}, expected [(120,)]")

    run_parts(("named cursor, fetchmany(7)", lambda: named("sg_fetchmany", fetchmany)),
              ("named cursor, itersize 7", lambda: named("sg_iter", iterate)),
              ("named binary cursor, itersize 7", lambda: named("sg_binary", iterate, binary=True)),
              ("SQL cursor", sql_cursor))


def copy_rows(i, owner):
    return [(key(i, k), owner(k), CURRENCIES[k % 4], (Decimal(k * 11) + Decimal(k) / 100).quantize(Decimal("0.01")))
            for k in range(20)]


def copy_out(conn, statement, params=()):
    """Raw bytes of a COPY ... TO STDOUT (cursor.copy + Copy.read)."""
    buf = bytearray()
    with conn.cursor().copy(statement, params) as copy:
        while data := copy.read():
            buf += data
    return bytes(buf)


def explain(expected, got):
    """What differs between two COPY outputs (bytes, or lists of rows)."""
    if isinstance(expected, bytes) and isinstance(got, bytes):
        expected, got = expected.rstrip(b"\n").split(b"\n"), got.rstrip(b"\n").split(b"\n")
    if isinstance(expected, tuple) and isinstance(got, tuple):  # (header count, rows)
        parts = [f"{got[0]} header lines, expected {expected[0]}"] if got[0] != expected[0] else []
        if got[1] != expected[1]:
            parts.append(explain(expected[1], got[1]))
        return "; ".join(parts)
    if not (isinstance(expected, list) and isinstance(got, list)):
        return f"expected {expected!r:.300}, got {got!r:.300}"
    counted = lambda rows: Counter(repr(r) for r in rows)
    missing = list((counted(expected) - counted(got)).elements())
    extra = list((counted(got) - counted(expected)).elements())
    if not missing and not extra:
        return (f"the same {len(got)} lines/rows in another order (ORDER BY not honoured):"
                f" got {short((repr(x)[:24] for x in got), 6)}")
    text = f"expected {len(expected)} lines/rows, got {len(got)}"
    if missing:
        text += f"; missing {short((m[:60] for m in missing), 4)}"
    if extra:
        text += f"; unexpected {short((x[:60] for x in extra), 4)}"
    return text


def compare_copy_out(what, statement, params, expected, transform=lambda b: b):
    """COPY TO through the proxy (a fresh connection) equals `expected`,
    retried for replica lag."""
    step(what)
    with proxy() as conn:
        def attempt():
            got = transform(copy_out(conn, statement, params))
            return None if got == expected else f"{explain(expected, got)}"
        problem = eventually(attempt)
    check(problem is None, problem)


def compare_copy_rows(what, statement, params, types, expected):
    """COPY TO read with Copy.set_types + read_row equals `expected` rows."""
    step(what)
    with proxy() as conn:
        def attempt():
            with conn.cursor().copy(statement, params) as copy:
                copy.set_types(types)
                got = []
                while (r := copy.read_row()) is not None:
                    got.append(r)
            return None if got == expected else f"read_row: {explain(expected, got)}"
        problem = eventually(attempt)
    check(problem is None, problem)


def text_escape(value):
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def in_range_lines(data, lo, hi, sep=b"\t", skip_header=False):
    """Lines of a text/CSV COPY whose first field (the id) is in [lo, hi], sorted."""
    lines = data.split(b"\n")
    if skip_header:
        lines = lines[1:]
    out = []
    for line in lines:
        head = line.split(sep, 1)[0]
        if head.isdigit() and lo <= int(head) <= hi:
            out.append(line)
    return sorted(out)


def s_copy_text():
    """10. COPY FROM STDIN text with Copy.write_row (10 rows) and Copy.write of
    text the program escapes (10 rows); COPY (query) TO read raw and with
    set_types/read_row; COPY accounts TO (whole table, our lines)."""
    i, lo, hi = 10, key(10, 0), key(10, 999)
    specials = {3: "tab\there", 4: "back\\slash", 5: "ünïcödé", 6: "new\nline", 13: "t\\a\tb"}
    rows = copy_rows(i, lambda k: specials.get(k, f"text {k}"))
    stmt_in = f"COPY accounts ({ACCOUNT_COLUMNS}) FROM STDIN"
    with proxy() as conn:
        cur = conn.cursor()
        step("COPY FROM STDIN with write_row")
        with cur.copy(stmt_in) as copy:
            for r in rows[:10]:
                copy.write_row(r)
        check(cur.rowcount == 10, f"COPY with write_row reported {cur.rowcount} rows, expected 10")
        step("COPY FROM STDIN with write")
        with cur.copy(stmt_in) as copy:
            for r in rows[10:]:
                copy.write(f"{r[0]}\t{text_escape(r[1])}\t{r[2]}\t{r[3]}\n")
        check(cur.rowcount == 10, f"COPY with write reported {cur.rowcount} rows, expected 10")
        step("check primaries")
        expect_accounts(lo, hi, rows)
        query_out = (f"COPY (SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id BETWEEN %s AND %s ORDER BY id)"
                     " TO STDOUT")
        table_out = "COPY accounts TO STDOUT"
        ref_query, ref_table = reference(rows, lambda ref: (
            copy_out(ref, query_out, (lo, hi)), in_range_lines(copy_out(ref, table_out), lo, hi)))
    types = ["int8", "text", "text", "numeric"]
    run_parts(
        ("COPY (query) TO STDOUT, read", lambda: compare_copy_out(
            "COPY (query) TO STDOUT, read", query_out, (lo, hi), ref_query)),
        ("COPY (query) TO STDOUT, read_row", lambda: compare_copy_rows(
            "COPY (query) TO STDOUT, read_row with set_types", query_out, (lo, hi), types, rows)),
        ("COPY accounts TO STDOUT (our lines)", lambda: compare_copy_out(
            "COPY accounts TO STDOUT", table_out, (), ref_table, lambda b: in_range_lines(b, lo, hi))))


def s_copy_csv():
    """11. COPY FROM STDIN (FORMAT csv, HEADER) with Copy.write of CSV text in
    chunks that split rows (write_row formats text, not CSV); COPY TO in
    CSV with HEADER: exactly one header, rows equal the reference."""
    i, lo, hi = 11, key(11, 0), key(11, 999)
    specials = {2: 'Doe, "Jr"', 12: "Roe, Jane", 5: 'quote " only'}
    rows = copy_rows(i, lambda k: specials.get(k, f"csv {k}"))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "owner", "currency", "balance"])
    w.writerows(rows)
    data = buf.getvalue()
    with proxy() as conn:
        cur = conn.cursor()
        step("COPY FROM STDIN csv")
        with cur.copy(f"COPY accounts ({ACCOUNT_COLUMNS}) FROM STDIN (FORMAT csv, HEADER true)") as copy:
            for start in range(0, len(data), 97):  # chunks not aligned with rows
                copy.write(data[start:start + 97])
        check(cur.rowcount == 20, f"COPY csv reported {cur.rowcount} rows, expected 20")
        step("check primaries")
        expect_accounts(lo, hi, rows)
        query_out = (f"COPY (SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id BETWEEN %s AND %s ORDER BY id)"
                     " TO STDOUT (FORMAT csv, HEADER true)")
        table_out = "COPY accounts TO STDOUT (FORMAT csv, HEADER true)"

        def table_view(b):
            """(number of header lines, our rows sorted)."""
            headers = sum(1 for line in b.split(b"\n") if line == b"id,owner,currency,balance")
            return headers, in_range_lines(b, lo, hi, sep=b",")
        ref_query, ref_table = reference(rows, lambda ref: (
            copy_out(ref, query_out, (lo, hi)), table_view(copy_out(ref, table_out))))
        parsed = [tuple(r) for r in csv.reader(io.StringIO(ref_query.decode()))]
        check(parsed[1:] == [tuple(str(v) for v in r) for r in rows], f"reference CSV unexpected: {parsed[:3]}")
    run_parts(
        ("COPY (query) TO STDOUT csv", lambda: compare_copy_out(
            "COPY (query) TO STDOUT csv", query_out, (lo, hi), ref_query)),
        ("COPY accounts TO STDOUT csv (header count, our lines)", lambda: compare_copy_out(
            "COPY accounts TO STDOUT csv", table_out, (), ref_table, table_view)))


def numeric_binary(value):
    """PostgreSQL's binary `numeric` of a Decimal with scale 2."""
    sign = 0x4000 if value < 0 else 0
    int_part, frac = f"{abs(value).quantize(Decimal('0.01')):f}".split(".")
    int_part = int_part.lstrip("0")
    int_part = int_part.rjust(-(-len(int_part) // 4) * 4, "0")
    groups = [int(int_part[p:p + 4]) for p in range(0, len(int_part), 4)] + [int(frac.ljust(4, "0"))]
    weight = len(int_part) // 4 - 1
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight = 0
    return struct.pack(f"!hhhh{len(groups)}h", len(groups), weight, sign, 2, *groups)


def binary_copy_stream(rows):
    """A whole binary COPY stream for (id, owner, currency, balance) rows."""
    out = bytearray(PGCOPY_SIGNATURE + struct.pack("!ii", 0, 0))
    for r in rows:
        fields = [struct.pack("!q", r[0]), r[1].encode(), r[2].encode(), numeric_binary(r[3])]
        out += struct.pack("!h", len(fields))
        for f in fields:
            out += struct.pack("!i", len(f)) + f
    return bytes(out + struct.pack("!h", -1))


def parse_binary_copy(data):
    """Tuples (lists of raw field bytes) of exactly one binary COPY stream;
    Failed says where a second stream shows up."""
    if not data.startswith(PGCOPY_SIGNATURE):
        raise Failed(f"binary COPY output does not start with the PGCOPY signature: {data[:20]!r}")
    headers = data.count(PGCOPY_SIGNATURE)
    (_flags, ext) = struct.unpack_from("!ii", data, 11)
    pos, rows = 19 + ext, []
    try:
        while True:
            if data.startswith(PGCOPY_SIGNATURE, pos):
                raise Failed(f"a second PGCOPY header at byte {pos} of {len(data)}, after {len(rows)} tuples,"
                             f" where the first stream's next tuple or trailer belongs (streams interleaved;"
                             f" {headers} headers in all)")
            (n,) = struct.unpack_from("!h", data, pos)
            pos += 2
            if n == -1:
                break
            fields = []
            for _ in range(n):
                (size,) = struct.unpack_from("!i", data, pos)
                pos += 4
                fields.append(None if size == -1 else data[pos:pos + size])
                pos += max(size, 0)
            rows.append(fields)
    except struct.error:
        raise Failed(f"binary COPY output malformed after {len(rows)} tuples ({len(data)} bytes,"
                     f" {headers} PGCOPY headers in it)") from None
    if pos != len(data):
        second = " a second stream (PGCOPY header)" if data.startswith(PGCOPY_SIGNATURE, pos) else ""
        raise Failed(f"{len(data) - pos} bytes of{second} after the trailer of the first stream"
                     f" (byte {pos} of {len(data)}, {len(rows)} tuples before it; {headers} headers in all)")
    return rows


def s_copy_binary():
    """12. COPY FROM STDIN (FORMAT binary) with set_types + write_row (10
    rows) and with write of a stream the program builds (10 rows); COPY
    (query) TO binary with set_types/read_row; COPY accounts TO binary read
    raw: exactly one stream, our tuples byte-equal to the reference."""
    i, lo, hi = 12, key(12, 0), key(12, 999)
    rows = copy_rows(i, lambda k: f"bin {k} ü")
    stmt_in = f"COPY accounts ({ACCOUNT_COLUMNS}) FROM STDIN (FORMAT binary)"
    with proxy() as conn:
        cur = conn.cursor()
        step("COPY FROM STDIN binary, write_row")
        with cur.copy(stmt_in) as copy:
            copy.set_types(["int8", "text", "text", "numeric"])
            for r in rows[:10]:
                copy.write_row(r)
        check(cur.rowcount == 10, f"binary COPY with write_row reported {cur.rowcount} rows, expected 10")
        step("COPY FROM STDIN binary, write of program-built bytes")
        stream = binary_copy_stream(rows[10:])
        with cur.copy(stmt_in) as copy:
            copy.write(stream[:25])  # split inside the first tuple
            copy.write(stream[25:])
        check(cur.rowcount == 10, f"binary COPY with write reported {cur.rowcount} rows, expected 10")
        step("check primaries")
        expect_accounts(lo, hi, rows)
        query_out = (f"COPY (SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id BETWEEN %s AND %s ORDER BY id)"
                     " TO STDOUT (FORMAT binary)")
        table_out = "COPY accounts TO STDOUT (FORMAT binary)"

        def ours(data):
            """Our tuples of a whole-table binary COPY, sorted by id."""
            tuples = parse_binary_copy(data)
            return sorted((t for t in tuples if lo <= struct.unpack("!q", t[0])[0] <= hi),
                          key=lambda t: t[0])
    ref_query, ref_table = reference(rows, lambda ref: (
        parse_binary_copy(copy_out(ref, query_out, (lo, hi))), ours(copy_out(ref, table_out))))
    check(len(ref_table) == 20, f"reference binary COPY gave {len(ref_table)} rows")
    run_parts(
        ("COPY (query) TO STDOUT binary, read", lambda: compare_copy_out(
            "COPY (query) TO STDOUT binary, read", query_out, (lo, hi), ref_query, parse_binary_copy)),
        ("COPY (query) TO STDOUT binary, read_row", lambda: compare_copy_rows(
            "COPY (query) TO STDOUT binary, read_row with set_types", query_out, (lo, hi),
            ["int8", "text", "text", "numeric"], rows)),
        ("COPY accounts TO STDOUT (FORMAT binary), our tuples", lambda: compare_copy_out(
            "COPY accounts TO STDOUT binary, read", table_out, (), ref_table, ours)))


def s_listen_notify():
    """13. LISTEN on A; NOTIFY and pg_notify from B; A's conn.notifies()
    yields both payloads within 10 s. (Notifications B receives itself are
    reported: a pooled server session that LISTENed may be lent to B.)"""
    chan = f"chan_{BASE}"
    with proxy() as a, proxy() as b:
        strays = []
        b.add_notify_handler(lambda n: strays.append((n.channel, n.payload)))
        step("LISTEN")
        a.execute(f"LISTEN {chan}")
        step("NOTIFY and pg_notify")
        b.execute(f"NOTIFY {chan}, 'hello'")
        b.execute("SELECT pg_notify(%s, %s)", (chan, "payload two"))
        step("conn.notifies(timeout=10, stop_after=2)")
        got = []
        try:
            notifies = a.notifies(timeout=10, stop_after=2)
        except TypeError:  # psycopg < 3.2: generator without timeout
            notifies = _notifies_with_timeout(a, 10, 2)
        for n in notifies:
            got.append((n.channel, n.payload))
        b.execute("SELECT 1")
        expected = [(chan, "hello"), (chan, "payload two")]
        check(sorted(got) == expected, f"A received {got} within 10 s, expected {expected}"
              f" (LISTEN answered without error; B, the notifying connection, received {strays})")


def _notifies_with_timeout(conn, timeout, count):
    """psycopg < 3.2 (notifies() has no timeout): a notify handler, and a
    cheap query every 0.2 s for the notifications to be read."""
    got = []
    conn.add_notify_handler(got.append)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        conn.execute("SELECT 1")
        time.sleep(0.2)
    return got


def s_cancel_timeout():
    """14. conn.cancel_safe() (libpq ≥ 17 cancel API) and conn.cancel() from
    another thread cancel pg_sleep(30) with 57014; statement_timeout too."""
    with proxy() as conn:
        cancels = [("cancel_safe", getattr(conn, "cancel_safe", conn.cancel)), ("cancel", conn.cancel)]
        for what, fn in cancels:
            step(f"pg_sleep(30) cancelled by conn.{what}() after 0.5 s")
            errors = []

            def cancel():
                try:
                    fn()
                except Exception as e:  # reported below
                    errors.append(e)
            timer = threading.Timer(0.5, cancel)
            timer.start()
            t0 = time.monotonic()
            try:
                expect_error("57014", f"SELECT pg_sleep(30) cancelled by conn.{what}()",
                             lambda: conn.execute("SELECT pg_sleep(30)"))
            finally:
                timer.cancel()
            elapsed = time.monotonic() - t0
            check(not errors, f"conn.{what}() raised {describe(errors[0]) if errors else ''}")
            check(elapsed < 5, f"conn.{what}(): the cancel took {elapsed:.1f} s, expected < 5 s")
            got = conn.execute("SELECT 1").fetchone()
            check(got == (1,), f"after conn.{what}(): SELECT 1 returned {got}")
        step("statement_timeout")
        conn.execute("SET statement_timeout = 300")
        t0 = time.monotonic()
        expect_error("57014", "SELECT pg_sleep(5) with statement_timeout = 300",
                     lambda: conn.execute("SELECT pg_sleep(5)"))
        elapsed = time.monotonic() - t0
        check(elapsed < 4, f"statement_timeout = 300 ended pg_sleep(5) after {elapsed:.1f} s")
        conn.execute("RESET statement_timeout")
        got = conn.execute("SELECT 1").fetchone()
        check(got == (1,), f"after RESET statement_timeout: SELECT 1 returned {got}")
        (timeout,) = conn.execute("SHOW statement_timeout").fetchone()
        check(timeout == "0", f"after RESET, statement_timeout is {timeout!r}")


TYPED_COLUMNS = ["j", "jb", "ints", "texts", "n", "ts", "d", "b", "u", "f", "flag"]
TYPED_VALUES = {
    "j": {"a": 1, "nested": [1, 2.5, "x", None, True]},
    "jb": {"k": "v", "list": [1, 2, 3], "ü": "ß"},
    "ints": [1, -2, 2147483647],
    "texts": ["a", "b c", 'q"uote', "comma,", "ü", None, "NULL", ""],
    "n": Decimal("12345678901234567890.1234567890"),
    "ts": datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    "d": date(2024, 2, 29),
    "b": bytes(range(256)),
    "u": uuid.UUID("12345678-9abc-4def-8123-456789abcdef"),
    "f": 1.0 / 3.0,
    "flag": True,
}


def s_types():
    """15. One typed row with text parameters, one with binary=True, one all
    NULL; read back in a transaction with text and binary results."""
    params = [Json(TYPED_VALUES["j"]), Jsonb(TYPED_VALUES["jb"])] + [TYPED_VALUES[c] for c in TYPED_COLUMNS[2:]]
    insert = (f"INSERT INTO typed (id, {', '.join(TYPED_COLUMNS)}) VALUES (%s{', %s' * len(TYPED_COLUMNS)})")
    select = f"SELECT {', '.join(TYPED_COLUMNS)} FROM typed WHERE id = %s"
    with proxy() as conn:
        step("insert with text parameters")
        check(conn.execute(insert, [key(15, 0)] + params).rowcount == 1, "text INSERT did not report 1 row")
        step("insert with binary parameters")
        check(conn.execute(insert, [key(15, 1)] + params, binary=True).rowcount == 1,
              "binary INSERT did not report 1 row")
        step("insert NULLs")
        check(conn.execute(insert, [key(15, 2)] + [None] * len(TYPED_COLUMNS)).rowcount == 1,
              "NULL INSERT did not report 1 row")
        problems = []
        with conn.transaction():
            for k, sent in ((0, "text params"), (1, "binary params"), (2, "NULLs")):
                for binary in (False, True):
                    step(f"read {sent}, binary results={binary}")
                    row = conn.execute(select, (key(15, k),), binary=binary).fetchone()
                    if row is None:
                        problems.append(f"{sent}: row {key(15, k)} not found")
                        continue
                    for col, got in zip(TYPED_COLUMNS, row):
                        want = None if k == 2 else TYPED_VALUES[col]
                        if got != want or (want is not None and type(got) is not type(want)):
                            problems.append(f"{sent}, {'binary' if binary else 'text'} results: {col}"
                                            f" sent {want!r:.80}, got {got!r:.80}")
        check(not problems, "; ".join(problems[:6]) + (f" ... ({len(problems)} in all)" if len(problems) > 6 else ""))


def s_metadata():
    """16. TypeInfo.fetch (its catalog query in a conn.transaction()),
    CompositeInfo.fetch of the accounts row type, information_schema.columns
    and the RowDescription of SELECT *: accounts has its 4 columns in order."""
    want = ["id", "owner", "currency", "balance"]
    with proxy() as conn:
        step("TypeInfo.fetch(conn, 'jsonb')")
        info = TypeInfo.fetch(conn, "jsonb")
        check(info is not None and (info.oid, info.array_oid) == (3802, 3807),
              f"TypeInfo.fetch jsonb gave {info and (info.oid, info.array_oid)}, expected (3802, 3807)")
        step("CompositeInfo.fetch(conn, 'accounts')")
        comp = CompositeInfo.fetch(conn, "accounts")
        check(comp is not None and list(comp.field_names) == want,
              f"CompositeInfo.fetch accounts gave {comp and comp.field_names}, expected {want}")
        step("information_schema.columns")
        cols = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
            ("accounts",)).fetchall()
        expected = [("id", "bigint"), ("owner", "text"), ("currency", "text"), ("balance", "numeric")]
        check(cols == expected, f"information_schema.columns: expected {expected}, got {cols}")
        step("cursor.description")
        cur = conn.execute("SELECT * FROM accounts WHERE false")
        names = [d.name for d in cur.description]
        check(names == want, f"cursor.description of SELECT * FROM accounts: {names}, expected {want}")
        tables = conn.execute("SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = 'public'"
                              " AND tablename = 'accounts'").fetchall()
        check(tables == [("accounts",)], f"pg_tables lookup of accounts gave {tables}")


def s_read_your_writes():
    """17. SET shardgate.consistency = session, then INSERT and at once SELECT
    it outside a transaction, 20 times (both auto-prepared after 5)."""
    if TOPOLOGY == "single":
        return "skipped in single"
    with proxy() as conn:
        conn.execute("SET shardgate.consistency = session")
        missed = []
        for k in range(20):
            step(f"insert and read back {k}")
            row = (key(17, k), f"ryw {k}", "USD", Decimal(k))
            conn.execute(INSERT_ACCOUNT, row)
            got = conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = %s", (row[0],)).fetchall()
            if got != [row]:
                missed.append(f"{row[0]}: {got}")
        check(not missed, f"{len(missed)} of 20 writes not seen at once: {short(missed, 4)}")


def s_cross_shard_read():
    """18. Aggregates, GROUP BY, ORDER BY ... LIMIT/OFFSET and a join with the
    reference table over the cursor_fetch rows, equal to the reference, as
    simple query (ClientCursor), extended unnamed, prepared, prepared binary."""
    lo, hi = key(9, 0), key(9, 119)
    rows = cursor_rows()
    if accounts_on_primaries(lo, hi) != sorted(rows):
        step("reload the cursor_fetch rows")
        load_cursor_rows(reload=True)
    queries = {
        "aggregates": "SELECT count(*), sum(balance), min(id), max(id) FROM accounts WHERE id BETWEEN %s AND %s",
        "group by": "SELECT currency, count(*) FROM accounts WHERE id BETWEEN %s AND %s"
                    " GROUP BY currency ORDER BY currency",
        "order/limit/offset": "SELECT id FROM accounts WHERE id BETWEEN %s AND %s"
                              " ORDER BY balance DESC, id LIMIT 5 OFFSET 2",
        "join": "SELECT a.id, a.owner, c.name FROM accounts a JOIN currencies c ON c.code = a.currency"
                " WHERE a.id BETWEEN %s AND %s ORDER BY a.id",
        "grouped subquery": "SELECT s.currency, s.n, s.total FROM (SELECT currency, count(*) AS n, sum(balance) AS total FROM accounts WHERE id BETWEEN %s AND %s GROUP BY currency) s ORDER BY s.currency",
    }
    expected = reference(rows, lambda ref: {n: ref.execute(q, (lo, hi)).fetchall() for n, q in queries.items()})
    variants = {
        "simple query": lambda c, q: psycopg.ClientCursor(c).execute(q, (lo, hi)).fetchall(),
        "extended": lambda c, q: c.execute(q, (lo, hi), prepare=False).fetchall(),
        "prepared": lambda c, q: c.execute(q, (lo, hi), prepare=True).fetchall(),
        "prepared binary": lambda c, q: c.execute(q, (lo, hi), prepare=True, binary=True).fetchall(),
    }
    with proxy() as conn:
        for vname, run in variants.items():
            for qname, q in queries.items():
                step(f"{qname} as {vname}")

                def attempt():
                    got = run(conn, q)
                    if got == expected[qname]:
                        return None
                    return f"{qname} ({vname}): expected {expected[qname]!r:.200}, got {got!r:.200}"
                problem = eventually(attempt)
                check(problem is None, problem)


def hold(k):
    """Child of client_killed: a transaction holding an INSERT, then sleep."""
    conn = proxy(autocommit=False)
    conn.execute(INSERT_ACCOUNT, (k, "held", "USD", Decimal(0)))
    print("READY", flush=True)
    time.sleep(60)


def s_client_killed():
    """19. A child with an open transaction (INSERT) through the proxy is
    SIGKILLed: the row never appears and no session stays idle in transaction."""
    k = key(19, 0)
    step("start the child")
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "hold", str(k)],
                             stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 20)
        line = child.stdout.readline().strip() if ready else b""
        check(line == b"READY", f"the child did not print READY within 20 s (got {line!r}, exit {child.poll()})")
        step("the child's transaction is open on a primary")
        deadline = time.monotonic() + 5
        while not (before := idle_in_transaction()) and time.monotonic() < deadline:
            time.sleep(0.1)
        check(before, "no session idle in transaction on any primary while the child holds its transaction")
    finally:
        step("SIGKILL the child")
        child.send_signal(signal.SIGKILL)
        child.wait()
    step("wait for the primaries")
    deadline = time.monotonic() + 10
    while True:
        rows = on_primaries("SELECT id FROM accounts WHERE id = %s", (k,))
        left = idle_in_transaction()
        if (not rows and not left) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    check(not rows, f"10 s after SIGKILL, the uncommitted row {k} is on the primaries (committed)")
    check(not left, f"10 s after SIGKILL, sessions idle in transaction on primaries: {left}")


def s_backend_terminated():
    """20. pg_terminate_backend on the server session behind the client
    connection; 5 more statements on the same psycopg connection succeed."""
    k = key(20, 0)
    with proxy() as conn:
        step("SELECT pg_backend_pid()")
        pid, port = conn.execute("/* shardgate: consistency=strong */"
                                 " SELECT pg_backend_pid(), inet_server_port()").fetchone()
        step(f"terminate backend {pid} (port {port})")
        terminated = []
        for addr in PRIMARIES:
            if port is not None and not addr.endswith(f":{port}"):
                continue
            with direct(addr) as d:
                r = d.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE pid = %s AND datname = %s", (pid, DATABASE)).fetchall()
                if r == [(True,)]:
                    terminated.append(addr)
        check(terminated, f"backend {pid} (server port {port}) not found on any primary")
        time.sleep(0.2)
        statements = [
            ("SELECT 1", (), lambda c: c.fetchone() == (1,)),
            (INSERT_ACCOUNT, (k, "after terminate", "USD", Decimal(1)), lambda c: c.rowcount == 1),
            ("SELECT count(*) FROM currencies", (), lambda c: c.fetchone() == (4,)),
            ("UPDATE accounts SET balance = 20 WHERE id = %s", (k,), lambda c: c.rowcount == 1),
            ("SELECT 2", (), lambda c: c.fetchone() == (2,)),
        ]
        problems = []
        for n, (sql, params, ok) in enumerate(statements, 1):
            step(f"statement {n} after the termination")
            try:
                cur = conn.execute(sql, params)
            except psycopg.Error as e:
                if DIRECT and n == 1:
                    # No proxy: the client's own session was killed, as it must be.
                    return f"direct: no proxy, the connection died as expected ({describe(e)})"
                problems.append(f"statement {n} ({sql.split()[0]}) failed: {describe(e).splitlines()[0]}")
                if conn.closed:
                    problems.append("the client connection was closed")
                    break
                continue
            check(not DIRECT, "direct: the statement after pg_terminate_backend succeeded; the terminate missed")
            if not ok(cur):
                problems.append(f"statement {n} ({sql}) gave a wrong answer")
    step("check primaries")
    on = accounts_on_primaries(k, k)
    check(not problems, f"after pg_terminate_backend of the client's server session: {'; '.join(problems)}"
          f" (the write's row on the primaries: {on})")
    expect_accounts(k, k, [(k, "after terminate", "USD", Decimal(20))])


def multi_statement_strings(i):
    """The two query strings of scenario `multi_statement` (i): one that
    writes keys 0-2 of i and updates key 0, one that writes key 3 and then
    fails on key 0 (23505)."""
    def ins(*ks):
        values = ", ".join(f"({key(i, k)}, 'multi', 'USD', 1)" for k in ks)
        return f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES {values}"
    good = f"{ins(0)}; {ins(1, 2)}; UPDATE accounts SET balance = 5 WHERE id = {key(i, 0)}"
    bad = f"{ins(3)}; {ins(0)}"
    return good, bad


def s_multi_statement():
    """21. Query strings of several statements (no parameters: the simple
    protocol), going to different shards where sharded: each runs; an error
    in one undoes the whole string."""
    good, bad = multi_statement_strings(21)
    with proxy() as conn:
        step("a string of three statements")
        conn.execute(good)
        step("a string failing in its second statement")
        expect_error("23505", "the duplicate in the string", lambda: conn.execute(bad))
        check(conn.execute("SELECT 1").fetchone() == (1,), "SELECT 1 after the failed string")
    step("check primaries")
    expect_accounts(key(21, 0), key(21, 999), [
        (key(21, 0), "multi", "USD", Decimal(5)),
        (key(21, 1), "multi", "USD", Decimal(1)),
        (key(21, 2), "multi", "USD", Decimal(1)),
    ])


SCENARIOS = [
    ("autocommit", s_autocommit),
    ("tx_commit", s_tx_commit),
    ("tx_rollback", s_tx_rollback),
    ("savepoint", s_savepoint),
    ("error_in_tx", s_error_in_tx),
    ("prepared_reuse", s_prepared_reuse),
    ("batch", s_batch),
    ("returning", s_returning),
    ("cursor_fetch", s_cursor_fetch),
    ("copy_text", s_copy_text),
    ("copy_csv", s_copy_csv),
    ("copy_binary", s_copy_binary),
    ("listen_notify", s_listen_notify),
    ("cancel_timeout", s_cancel_timeout),
    ("types", s_types),
    ("metadata", s_metadata),
    ("read_your_writes", s_read_your_writes),
    ("cross_shard_read", s_cross_shard_read),
    ("client_killed", s_client_killed),
    ("backend_terminated", s_backend_terminated),
    ("multi_statement", s_multi_statement),
]


# --------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------


def cleanup():
    """Deletes the program's key range from every table on every primary."""
    hi = BASE + KEY_SPAN - 1
    for addr in PRIMARIES:
        try:
            with direct(addr) as conn:
                conn.execute("SET statement_timeout = '30s'")
                conn.execute("DELETE FROM ledger WHERE account_id BETWEEN %s AND %s", (BASE, hi))
                conn.execute("DELETE FROM accounts WHERE id BETWEEN %s AND %s", (BASE, hi))
                conn.execute("DELETE FROM typed WHERE id BETWEEN %s AND %s", (BASE, hi))
        except Exception as e:
            print(f"cleanup on {addr} failed: {describe(e)}", file=sys.stderr, flush=True)


def wait_for_proxy(limit=15.0):
    """Waits until the proxy answers a primary-routed query: a previous
    program's backend_terminated may have left a primary banned for a few
    seconds, which would otherwise fail our first scenarios."""
    deadline = time.monotonic() + limit
    while True:
        try:
            with proxy() as conn:
                conn.execute("/* shardgate: consistency=strong */ SELECT 1")
            return
        except psycopg.Error as e:
            if time.monotonic() > deadline:
                print(f"the proxy still fails: {describe(e)}", file=sys.stderr, flush=True)
                return
            print(f"waiting for the proxy: {describe(e)}", file=sys.stderr, flush=True)
            time.sleep(0.5)


def _child_main(fn, wfd):
    """In the forked child: run fn, send {"ok", "detail"} to the parent."""
    global _step_fd
    _step_fd = wfd
    os.dup2(2, 1)  # only the parent writes to stdout
    sys.stdout = sys.stderr
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    try:
        note = fn()
        result = {"ok": True, "detail": note or ""}
    except Failed as f:
        result = {"ok": False, "detail": str(f)}
    except BaseException as e:
        traceback.print_exc()
        result = {"ok": False, "detail": f"{describe(e)} (at step: {_last_step})"}
    try:
        os.write(wfd, (json.dumps(result) + "\n").encode())
    finally:
        sys.stderr.flush()
        os._exit(0)


def run_isolated(fn, limit):
    """Runs scenario fn in a forked child with a time limit; (ok, detail)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child_main(fn, wfd)
    os.close(wfd)
    deadline = time.monotonic() + limit
    buf, result, last = b"", None, ""
    timed_out = False
    while result is None:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if not ready:
            continue
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            msg = json.loads(line)
            if "step" in msg:
                last = msg["step"]
            else:
                result = msg
    os.close(rfd)
    if timed_out:
        os.kill(pid, signal.SIGUSR1)  # stack dump to stderr
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if result is not None:
        return result["ok"], result["detail"]
    if timed_out:
        return False, f"timed out after {limit:.0f} s at step: {last}"
    return False, f"scenario process ended without a result (status {status}) at step: {last}"


def main():
    if sys.argv[1:2] == ["hold"]:
        hold(int(sys.argv[2]))
        return
    print(f"psycopg {psycopg.__version__} (libpq {pq.version()}, {pq.__impl__}) on {TOPOLOGY}"
          f"{' (direct)' if DIRECT else ''}", file=sys.stderr, flush=True)
    wait_for_proxy()
    cleanup()
    started = time.monotonic()
    for n, (name, fn) in enumerate(SCENARIOS):
        remaining = len(SCENARIOS) - n - 1
        budget = TOTAL_BUDGET - (time.monotonic() - started) - 5 * remaining
        limit = max(5.0, min(SCENARIO_LIMIT, budget))
        print(f"== {name}", file=sys.stderr, flush=True)
        ok, detail = run_isolated(fn, limit)
        if not ok:
            print(f"== {name} FAILED: {detail}", file=sys.stderr, flush=True)
        print(json.dumps({"scenario": name, "ok": ok, "detail": detail}), flush=True)


if __name__ == "__main__":
    main()
