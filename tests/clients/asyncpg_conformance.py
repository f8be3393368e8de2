#!/usr/bin/env python3
"""asyncpg's program of the driver conformance matrix (SCENARIOS.md).

Runs the 20 scenarios through shardgate with asyncpg's own APIs and checks
what a user sees plus the data on the primaries (direct connections). One
JSON line per scenario on stdout, diagnostics on stderr.

What asyncpg puts on the wire (asyncpg/protocol/coreproto.pyx):
  * `conn.execute(sql)` without arguments: a simple Query.
  * every other statement (`execute` with arguments, `fetch*`, `prepare`):
    Parse(named `__asyncpg_stmt_N__`, cached) + Describe(S) + Flush, then
    Bind + Execute + Sync; `fetchrow`/`fetchval` use Execute with a row
    limit of 1.
  * `executemany`: one prepare, then Bind/Execute pairs pipelined, one Sync.
  * cursors (in a transaction): Bind(named portal) + Execute(n) + Sync, then
    Execute(n) + Sync per batch (PortalSuspended in between).
  * `transaction()`: simple Query `BEGIN` / `COMMIT;` / `ROLLBACK;`; nested:
    `SAVEPOINT x;` / `RELEASE SAVEPOINT x;` / `ROLLBACK TO x;`.
  * COPY: simple Query then CopyData/CopyDone (in) or CopyData (out);
    `copy_records_to_table` first prepares `SELECT cols FROM t LIMIT 1`
    (Parse/Describe/Flush only) to learn the column types.
  * cancellation (`asyncio.wait_for` / task cancel): a CancelRequest on a
    new connection; the cancelled statement's 57014 is swallowed by asyncpg
    and the next statement waits until the server acknowledged it.

Usage: asyncpg_conformance.py            run every scenario
       asyncpg_conformance.py hold KEY   (child of `client_killed`)
"""
import asyncio
import datetime
import csv
import io
import json
import os
import signal
import struct
import sys
import time
import traceback
import uuid
from decimal import Decimal

import asyncpg

ENV = os.environ
HOST = ENV.get("SG_HOST", "127.0.0.1")
PORT = int(ENV.get("SG_PORT", "5432"))
USER = ENV.get("SG_USER", "app")
PASSWORD = ENV.get("SG_PASSWORD", "")
DATABASE = ENV.get("SG_DATABASE", "")
TOPOLOGY = ENV.get("SG_TOPOLOGY", "single")
PRIMARIES = [p for p in ENV.get("SG_PRIMARIES", "").split(",") if p]
REF = ENV.get("SG_REF", "")
REF_DATABASE = ENV.get("SG_REF_DATABASE", "")
BASE = int(ENV.get("SG_KEY_BASE", "0"))
# Reads through the proxy may go to a replica (`eventual`).
EVENTUAL = TOPOLOGY in ("replicas", "sharded")
# `direct.env`: the "proxy" is shard 0's primary itself.
DIRECT = f"{HOST}:{PORT}" in PRIMARIES

SCENARIO_LIMIT = 60  # seconds per scenario
CATCH_UP = 10  # seconds a comparison of eventual reads is retried
COPY_RECORDS_LIMIT = 15  # guard of copy_records_to_table (known hang)

ACCOUNT_COLS = ["id", "owner", "currency", "balance"]
INSERT_ACCOUNT = (
    "INSERT INTO accounts (id, owner, currency, balance) VALUES ($1, $2, $3, $4)"
)
SELECT_RANGE = (
    "SELECT id, owner, currency, balance FROM accounts"
    " WHERE id BETWEEN $1 AND $2 ORDER BY id"
)
CURRENCIES = ["USD", "EUR", "JPY", "GBP"]


class Fail(Exception):
    """A check failed; the message is the scenario's detail."""


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def describe(e):
    """An exception as a detail: class, SQLSTATE and message."""
    if isinstance(e, asyncpg.PostgresError):
        return f"{type(e).__name__} [{e.sqlstate}] {e}"
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    return f"{type(e).__name__}: {e}"


def short(items, n=5):
    items = list(items)
    more = f" … (+{len(items) - n})" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def key_range(i):
    """Keys of scenario i: [lo, hi]."""
    lo = BASE + 1000 * i
    return lo, lo + 999


def keys(i, n):
    lo, _ = key_range(i)
    return [lo + k for k in range(n)]


def account(key, k):
    """The deterministic account row number k (balances repeat: ties)."""
    return (key, f"owner-{k}", CURRENCIES[k % 4], Decimal(k * 37 % 50) + Decimal("0.25"))


def hostport(addr):
    h, p = addr.rsplit(":", 1)
    return h, int(p)


async def connect(host, port, database, **kw):
    return await asyncpg.connect(
        host=host, port=port, user=USER, password=PASSWORD, database=database,
        timeout=10, **kw)


async def close_quietly(conn):
    try:
        await asyncio.wait_for(conn.close(), 3)
    except BaseException:
        conn.terminate()


class Ctx:
    """One scenario: its connections (closed at the end, whatever happens),
    child processes, the step it is at, and soft problems."""

    def __init__(self, i):
        self.i = i
        self.conns = []
        self.procs = []
        self.step = "start"
        self.problems = []

    async def _track(self, coro):
        c = await coro
        self.conns.append(c)
        return c

    async def proxy(self, **kw):
        """A new client connection through the proxy (statement cache 100)."""
        return await self._track(connect(HOST, PORT, DATABASE, **kw))

    async def primary(self, i):
        h, p = hostport(PRIMARIES[i])
        return await self._track(connect(h, p, DATABASE))

    async def primaries(self):
        if not hasattr(self, "_primaries"):
            self._primaries = [await self.primary(i) for i in range(len(PRIMARIES))]
        return self._primaries

    async def ref(self):
        if not hasattr(self, "_ref"):
            h, p = hostport(REF)
            self._ref = await self._track(connect(h, p, REF_DATABASE))
        return self._ref

    def problem(self, msg):
        log(f"  problem: {msg}")
        self.problems.append(msg)

    async def close(self):
        for p in self.procs:
            if p.returncode is None:
                try:
                    p.kill()
                    await asyncio.wait_for(p.wait(), 5)
                except BaseException:
                    pass
        for c in self.conns:
            await close_quietly(c)


# ---------------------------------------------------------------- helpers


async def on_primaries(ctx, sql, *args):
    """(primary index, record) of `sql` run directly on every primary."""
    out = []
    for i, c in enumerate(await ctx.primaries()):
        out.extend((i, r) for r in await c.fetch(sql, *args))
    return out


async def accounts_on_primaries(ctx, lo, hi):
    """id -> (owner, currency, balance) on the primaries; a row present on
    two primaries is a failure."""
    seen, where = {}, {}
    dups = []
    for i, r in await on_primaries(ctx, SELECT_RANGE, lo, hi):
        if r["id"] in seen:
            dups.append(f"{r['id']} on primaries {where[r['id']]} and {i}")
        seen[r["id"]] = (r["owner"], r["currency"], r["balance"])
        where[r["id"]] = i
    check(not dups, f"rows on more than one primary: {short(dups)}")
    return seen


async def expect_accounts(ctx, i, expected, what="primaries"):
    """The primaries hold exactly `expected` (id -> row tuple incl. id) in
    scenario i's key range."""
    lo, hi = key_range(i)
    found = await accounts_on_primaries(ctx, lo, hi)
    want = {k: tuple(v[1:]) for k, v in expected.items()}
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    changed = [f"{k}: expected {want[k]}, found {found[k]}"
               for k in sorted(set(want) & set(found)) if want[k] != found[k]]
    if missing or extra or changed:
        parts = [f"{what}: expected {len(want)} rows, found {len(found)}"]
        if missing:
            parts.append(f"missing ids {short(missing)}")
        if extra:
            parts.append(f"unexpected ids {short(extra)}")
        if changed:
            parts.append(f"different: {short(changed, 3)}")
        raise Fail("; ".join(parts))


async def insert_accounts(conn, rows):
    """One autocommit INSERT per row (the plainest write there is)."""
    for r in rows:
        status = await conn.execute(INSERT_ACCOUNT, *r)
        check(status == "INSERT 0 1", f"INSERT of {r[0]} returned {status!r}")


async def load_ref(ctx, i, rows):
    """Makes scenario i's range of the reference database hold exactly
    `rows`. Idempotent upserts, never a plain delete-and-insert: the matrix
    runs this program in the three topologies at once, with the same keys
    and the same reference database, and the rows are the same in all."""
    ref = await ctx.ref()
    lo, hi = key_range(i)
    async with ref.transaction():
        await ref.executemany(
            INSERT_ACCOUNT + " ON CONFLICT (id) DO UPDATE SET owner = excluded.owner,"
            " currency = excluded.currency, balance = excluded.balance", rows)
        await ref.execute("DELETE FROM accounts WHERE id BETWEEN $1 AND $2 AND id <> all($3::bigint[])",
                          lo, hi, [r[0] for r in rows])


async def eventually(fn, what):
    """Retries `fn() -> (ok, detail)` for CATCH_UP s where reads are
    eventual (replica lag), once elsewhere."""
    deadline = time.monotonic() + (CATCH_UP if EVENTUAL else 0)
    while True:
        ok, detail = await fn()
        if ok:
            return
        if time.monotonic() >= deadline:
            raise Fail(f"{what}: {detail}")
        await asyncio.sleep(0.2)


def diff(expected, found):
    """Where two lists differ, for a detail."""
    if expected == found:
        return "equal"
    for n, (a, b) in enumerate(zip(expected, found)):
        if a != b:
            return (f"{len(found)} items vs {len(expected)} expected;"
                    f" first difference at {n}: expected {a!r}, found {b!r}")
    return f"{len(found)} items vs {len(expected)} expected (prefix equal)"


def tuples(records):
    return [tuple(r) for r in records]


async def shards_of(ctx, conn, candidates):
    """Which primary each candidate key of `accounts` lands on, found by
    inserting it through the proxy and looking on the primaries (then
    deleted directly). Unsharded: all on primary 0."""
    if len(PRIMARIES) == 1:
        return {k: 0 for k in candidates}
    for k in candidates:
        await conn.execute(INSERT_ACCOUNT, k, "probe", "USD", Decimal(0))
    where = {r["id"]: i for i, r in await on_primaries(
        ctx, "SELECT id FROM accounts WHERE id = any($1::bigint[])", candidates)}
    for c in await ctx.primaries():
        await c.execute("DELETE FROM accounts WHERE id = any($1::bigint[])", candidates)
    check(len(where) == len(candidates),
          f"probe: keys {short(set(candidates) - set(where))} not found on any primary")
    return where


def pick(where, shard, used):
    """A probed key on `shard` not used yet."""
    for k, s in sorted(where.items()):
        if s == shard and k not in used:
            used.add(k)
            return k
    raise Fail(f"probe: no free key on primary {shard} among {sorted(where)}")


async def soft(ctx, label, fn):
    """Runs check `fn()`; a failure is recorded (the scenario fails) and the
    scenario goes on, so its detail tells about every part."""
    try:
        await fn()
        return True
    except Fail as e:
        ctx.problem(f"[{label}] {e}")
    except Exception as e:
        log(traceback.format_exc())
        ctx.problem(f"[{label}] {describe(e)}")
    return False


async def expect_error(coro, sqlstate, what):
    """`coro` must fail with `sqlstate`."""
    try:
        got = await coro
    except asyncpg.PostgresError as e:
        check(e.sqlstate == sqlstate,
              f"{what}: expected SQLSTATE {sqlstate}, got {describe(e)}")
        return e
    raise Fail(f"{what}: expected SQLSTATE {sqlstate}, succeeded with {got!r}")


# ---------------------------------------------------------------- scenarios


async def s_autocommit(ctx):
    """Autocommit INSERT x10 / UPDATE / DELETE with parameters (each one
    Parse/Describe/Flush + Bind/Execute/Sync); the command tags and the
    primaries."""
    conn = await ctx.proxy()
    rows = {k: account(k, n) for n, k in enumerate(keys(1, 10))}
    ctx.step = "inserts"
    await insert_accounts(conn, rows.values())
    ks = list(rows)
    ctx.step = "update"
    st = await conn.execute(
        "UPDATE accounts SET owner = $2, balance = $3 WHERE id = $1",
        ks[3], "updated", Decimal("77.70"))
    check(st == "UPDATE 1", f"UPDATE returned {st!r}, expected 'UPDATE 1'")
    ctx.step = "delete"
    st = await conn.execute("DELETE FROM accounts WHERE id = $1", ks[7])
    check(st == "DELETE 1", f"DELETE returned {st!r}, expected 'DELETE 1'")
    rows[ks[3]] = (ks[3], "updated", rows[ks[3]][2], Decimal("77.70"))
    del rows[ks[7]]
    ctx.step = "check primaries"
    await expect_accounts(ctx, 1, rows)


async def tx_first_update(ctx, i):
    """tx_commit / tx_rollback: an existing row, then in conn.transaction()
    a prepared UPDATE as the very first statement after BEGIN, then 5
    INSERTs. Returns (conn, transaction, rows before, rows after)."""
    conn = await ctx.proxy()
    ks = keys(i, 6)
    before = {ks[0]: account(ks[0], 0)}
    ctx.step = "insert existing row"
    await insert_accounts(conn, before.values())
    await expect_accounts(ctx, i, before, "primaries before the transaction")
    after = dict(before)
    tr = conn.transaction()
    ctx.step = "BEGIN"
    await tr.start()
    ctx.step = "prepared UPDATE (first statement of the transaction)"
    upd = await conn.prepare("UPDATE accounts SET owner = $2, balance = $3 WHERE id = $1")
    await upd.fetch(ks[0], "tx-updated", Decimal("500.00"))
    st = upd.get_statusmsg()
    check(st == "UPDATE 1",
          f"first statement of the transaction (prepared UPDATE) reported {st!r}, expected 'UPDATE 1'")
    after[ks[0]] = (ks[0], "tx-updated", before[ks[0]][2], Decimal("500.00"))
    for n, k in enumerate(ks[1:], 1):
        ctx.step = f"INSERT {n} in the transaction"
        await insert_accounts(conn, [account(k, n)])
        after[k] = account(k, n)
    return conn, tr, before, after


async def s_tx_commit(ctx):
    """conn.transaction() with a prepared UPDATE first, 5 INSERTs, COMMIT:
    all 6 changes on the primaries."""
    conn, tr, _, after = await tx_first_update(ctx, 2)
    ctx.step = "COMMIT"
    await tr.commit()
    ctx.step = "check primaries"
    await expect_accounts(ctx, 2, after)


async def s_tx_rollback(ctx):
    """The same, ROLLBACK: the primaries hold only the row from before."""
    conn, tr, before, _ = await tx_first_update(ctx, 3)
    ctx.step = "ROLLBACK"
    await tr.rollback()
    ctx.step = "check primaries"
    await expect_accounts(ctx, 3, before)
    check(await conn.fetchval("SELECT 1") == 1, "SELECT 1 after ROLLBACK")


async def s_savepoint(ctx):
    """Nested conn.transaction() = SAVEPOINT / ROLLBACK TO / RELEASE SAVEPOINT:
    a (shard X) kept; b (shard Y) and b2 (shard X) rolled back to the
    savepoint; c (shard Y) and c2 (shard X) released and committed."""
    conn = await ctx.proxy()
    ctx.step = "probe placement"
    where = await shards_of(ctx, conn, keys(4, 12))
    used = set()
    other = 1 if len(PRIMARIES) > 1 else 0
    a, b, b2, c, c2 = (pick(where, 0, used), pick(where, other, used),
                       pick(where, 0, used), pick(where, other, used),
                       pick(where, 0, used))
    log(f"  savepoint keys: a={a} b={b} b2={b2} c={c} c2={c2} placement={where}")
    rows = {k: account(k, n) for n, k in enumerate([a, b, b2, c, c2])}
    async with conn.transaction():  # BEGIN ... COMMIT
        ctx.step = "INSERT a"
        await insert_accounts(conn, [rows[a]])
        sp = conn.transaction()  # nested: a savepoint
        ctx.step = "SAVEPOINT"
        await sp.start()
        ctx.step = "INSERT b (other shard than a), b2 after SAVEPOINT"
        await insert_accounts(conn, [rows[b], rows[b2]])
        ctx.step = "ROLLBACK TO savepoint"
        await sp.rollback()
        sp = conn.transaction()
        ctx.step = "second SAVEPOINT"
        await sp.start()
        ctx.step = "INSERT c, c2 after the rollback to the savepoint"
        await insert_accounts(conn, [rows[c], rows[c2]])
        ctx.step = "RELEASE SAVEPOINT"
        await sp.commit()
        ctx.step = "COMMIT"
    ctx.step = "check primaries"
    await expect_accounts(ctx, 4, {k: rows[k] for k in (a, c, c2)})


async def s_error_in_tx(ctx):
    """In a transaction: INSERT a; a duplicate key (23505); the next
    statements fail with 25P02 (an INSERT on the other shard, SELECT 1);
    ROLLBACK; the connection works; nothing on the primaries."""
    conn = await ctx.proxy()
    ctx.step = "probe placement"
    where = await shards_of(ctx, conn, keys(5, 6))
    used = set()
    a = pick(where, 0, used)
    b = pick(where, 1 if len(PRIMARIES) > 1 else 0, used)
    tr = conn.transaction()
    await tr.start()
    ctx.step = "INSERT a"
    await insert_accounts(conn, [account(a, 0)])
    ctx.step = "duplicate INSERT a"
    await expect_error(conn.execute(INSERT_ACCOUNT, *account(a, 0)), "23505",
                       "duplicate key in the transaction")
    await soft(ctx, "INSERT b after the error", lambda: expect_error(
        conn.execute(INSERT_ACCOUNT, *account(b, 1)), "25P02",
        "INSERT on another shard than the failed one"))
    await soft(ctx, "SELECT 1 after the error", lambda: expect_error(
        conn.fetchval("SELECT 1"), "25P02", "SELECT 1"))
    ctx.step = "ROLLBACK"
    await tr.rollback()

    async def select_1():
        got = await conn.fetchval("SELECT 1")
        check(got == 1, f"returned {got!r}")

    await soft(ctx, "SELECT 1 after ROLLBACK", select_1)
    await soft(ctx, "check primaries", lambda: expect_accounts(ctx, 5, {}))


async def s_prepared_reuse(ctx):
    """conn.prepare() once (Parse/Describe/Flush of a named statement), run
    10 times with different keys (Bind/Execute(limit 1)/Sync) inside a
    transaction, then 10 more times outside (retried until the replica has
    the row): always the right row."""
    conn = await ctx.proxy()
    rows = [account(k, n) for n, k in enumerate(keys(6, 10))]
    ctx.step = "inserts"
    await insert_accounts(conn, rows)
    await expect_accounts(ctx, 6, {r[0]: r for r in rows})
    ctx.step = "prepare"
    stmt = await conn.prepare("SELECT id, owner, currency, balance FROM accounts WHERE id = $1")
    order = rows[::2] + rows[1::2]
    async with conn.transaction():
        for n, r in enumerate(order):
            ctx.step = f"execution {n + 1} in a transaction"
            got = await stmt.fetchrow(r[0])
            check(got is not None and tuple(got) == r,
                  f"execution {n + 1} (key {r[0]}) in a transaction returned {got and tuple(got)!r}, expected {r!r}")
    for n, r in enumerate(order):
        ctx.step = f"execution {n + 11} outside a transaction"

        async def same(r=r):
            got = await stmt.fetchrow(r[0])
            return got is not None and tuple(got) == r, f"got {got and tuple(got)!r}, expected {r!r}"

        await eventually(same, f"execution {n + 11} (key {r[0]}) outside a transaction")


async def s_batch(ctx):
    """executemany of 50 INSERTs (one Parse, 50 pipelined Bind/Execute, one
    Sync): each row once on the primaries; then executemany of UPDATEs in a
    transaction, seen inside it, rolled back: no change."""
    conn = await ctx.proxy()
    rows = [account(k, n) for n, k in enumerate(keys(7, 50))]
    ctx.step = "executemany INSERT"
    try:
        await conn.executemany(INSERT_ACCOUNT, rows)
        ctx.step = "check primaries after executemany"
        await expect_accounts(ctx, 7, {r[0]: r for r in rows})
    except Exception as e:
        ctx.problem(f"[executemany INSERT] {e if isinstance(e, Fail) else describe(e)}")
        lo, hi = key_range(7)
        n = len(await accounts_on_primaries(ctx, lo, hi))
        if n not in (0, len(rows)):
            ctx.problem(f"the failed executemany left {n} of {len(rows)} rows on the primaries (not atomic)")
        for c in await ctx.primaries():
            await c.execute("DELETE FROM accounts WHERE id BETWEEN $1 AND $2", lo, hi)
        ctx.step = "fallback: load the rows with INSERTs"
        await insert_accounts(conn, rows)
    tr = conn.transaction()
    await tr.start()
    ctx.step = "executemany UPDATE in a transaction"
    await conn.executemany(
        "UPDATE accounts SET owner = 'batch-rolled-back', balance = balance + 1000 WHERE id = $1",
        [(r[0],) for r in rows])
    for r in (rows[0], rows[-1], rows[25]):
        ctx.step = f"read {r[0]} back in the transaction"
        got = await conn.fetchval("SELECT owner FROM accounts WHERE id = $1", r[0])
        check(got == "batch-rolled-back",
              f"inside the transaction, row {r[0]} has owner {got!r} after the executemany UPDATE")
    ctx.step = "ROLLBACK"
    await tr.rollback()
    ctx.step = "check primaries after the rollback"
    await expect_accounts(ctx, 7, {r[0]: r for r in rows}, "primaries after the rolled back batch")


async def s_returning(ctx):
    """INSERT ... RETURNING id and UPDATE ... RETURNING balance via fetchval
    (Execute with a row limit of 1): the values equal the primaries'."""
    conn = await ctx.proxy()
    key = keys(8, 1)[0]
    row = account(key, 3)
    ctx.step = "insert account"
    await insert_accounts(conn, [row])
    ids = []
    for amount in (Decimal("12.34"), Decimal("-5.00")):
        ctx.step = f"INSERT ledger {amount} RETURNING id"
        lid = await conn.fetchval(
            "INSERT INTO ledger (account_id, amount, note) VALUES ($1, $2, $3) RETURNING id",
            key, amount, "returning")
        check(isinstance(lid, int), f"RETURNING id gave {lid!r}")
        ids.append((lid, amount))
    check(ids[0][0] != ids[1][0], f"two INSERTs returned the same id {ids[0][0]}")
    ctx.step = "UPDATE RETURNING balance"
    bal = await conn.fetchval(
        "UPDATE accounts SET balance = balance + $2 WHERE id = $1 RETURNING balance",
        key, Decimal("5.50"))
    check(bal == row[3] + Decimal("5.50"), f"RETURNING balance gave {bal!r}, expected {row[3] + Decimal('5.50')}")
    ctx.step = "check primaries"
    got = sorted((r["id"], r["amount"]) for _, r in await on_primaries(
        ctx, "SELECT id, amount FROM ledger WHERE account_id = $1", key))
    check(got == sorted(ids), f"ledger on the primaries {got}, RETURNING gave {sorted(ids)}")
    await expect_accounts(ctx, 8, {key: (key, row[1], row[2], bal)})


async def load_120(ctx, i, conn):
    """120 accounts of scenario i through the proxy, and into the reference."""
    rows = [account(k, n) for n, k in enumerate(keys(i, 120))]
    ctx.step = "load 120 rows"
    await insert_accounts(conn, rows)
    await expect_accounts(ctx, i, {r[0]: r for r in rows})
    await load_ref(ctx, i, rows)
    return rows


async def s_cursor_fetch(ctx):
    """conn.cursor(prefetch=7) iteration and cursor.fetch(7) in a transaction
    (Bind + Execute(7) + Sync, then Execute(7) + Sync: PortalSuspended in
    between), equal to the reference; and a SQL cursor DECLARE/FETCH ALL."""
    conn = await ctx.proxy()
    await load_120(ctx, 9, conn)
    lo, hi = key_range(9)
    q = "SELECT id, owner FROM accounts WHERE id BETWEEN $1 AND $2 ORDER BY id"
    want = tuples(await (await ctx.ref()).fetch(q, lo, hi))
    check(len(want) == 120, f"reference holds {len(want)} rows, expected 120")

    async def iterate():
        async with conn.transaction():
            got = [tuple(r) async for r in conn.cursor(q, lo, hi, prefetch=7)]
        check(got == want, diff(want, got))

    async def fetch_7():
        async with conn.transaction():
            cur = await conn.cursor(q, lo, hi)
            got, sizes = [], []
            while True:
                batch = await cur.fetch(7)
                if not batch:
                    break
                sizes.append(len(batch))
                got.extend(tuple(r) for r in batch)
                check(len(sizes) <= 40, f"did not end after {len(got)} rows")
        check(got == want, diff(want, got))
        check(sizes == [7] * 17 + [1], f"batch sizes {sizes}, expected 17 x 7 then 1")

    async def sql_cursor():
        async with conn.transaction():
            await conn.execute(
                f"DECLARE c CURSOR FOR SELECT count(*) FROM accounts WHERE id BETWEEN {lo} AND {hi}")
            got = tuples(await conn.fetch("FETCH ALL FROM c"))
            await conn.execute("CLOSE c")
        check(got == [(120,)], f"FETCH ALL FROM c returned {got}, expected [(120,)]")

    for label, fn in [("conn.cursor(prefetch=7) iteration", iterate),
                      ("cursor.fetch(7)", fetch_7),
                      ("SQL cursor DECLARE / FETCH ALL / CLOSE", sql_cursor)]:
        ctx.step = label
        if not await soft(ctx, label, fn):
            conn.terminate()  # its state is unknown after a failure: a fresh one
            conn = await ctx.proxy()


def copy_rows(i, n, owners):
    return [(k, owners[m % len(owners)], CURRENCIES[m % 4], Decimal(m * 7 % 30) + Decimal("0.50"))
            for m, k in enumerate(keys(i, n))]


async def copy_out(conn, sql, fmt):
    buf = io.BytesIO()
    await conn.copy_from_query(sql, output=buf, format=fmt)
    return buf.getvalue()


async def copy_table_out(conn, fmt):
    buf = io.BytesIO()
    await conn.copy_from_table("accounts", columns=ACCOUNT_COLS, output=buf, format=fmt)
    return buf.getvalue()


def lines_in_range(data, lo, hi, sep):
    """COPY text/csv records whose first field (id) is in [lo, hi], sorted.

    CSV is split into records with the csv module: other programs' rows in
    the same table may hold quoted newlines. Text format escapes newlines,
    so its records are its lines."""
    if sep == ",":
        records = [tuple(r) for r in csv.reader(io.StringIO(data.decode(), newline=""))]
    else:
        records = [tuple(line.split(sep)) for line in data.decode().splitlines()]
    return sorted(r for r in records if r and lo <= int(r[0]) <= hi)


async def copy_scenario(ctx, i, fmt, sep, owners, encode):
    """copy_text / copy_csv: copy_to_table (COPY FROM STDIN), then
    copy_from_query and copy_from_table (COPY TO STDOUT) equal to the
    reference."""
    conn = await ctx.proxy()
    lo, hi = key_range(i)
    rows = copy_rows(i, 20, owners)
    data = "".join(encode(r) for r in rows).encode()
    ctx.step = f"copy_to_table format={fmt}"
    st = await conn.copy_to_table("accounts", source=io.BytesIO(data),
                                  columns=ACCOUNT_COLS, format=fmt)
    check(st == "COPY 20", f"copy_to_table returned {st!r}, expected 'COPY 20'")
    ctx.step = "check primaries"
    await expect_accounts(ctx, i, {r[0]: r for r in rows})
    await load_ref(ctx, i, rows)
    ref = await ctx.ref()
    q = (f"SELECT id, owner, currency, balance FROM accounts"
         f" WHERE id BETWEEN {lo} AND {hi} ORDER BY id")
    want = await copy_out(ref, q, fmt)
    ctx.step = "copy_from_query"

    async def same_query():
        got = await copy_out(conn, q, fmt)
        g, w = got.decode().splitlines(), want.decode().splitlines()
        why = ("same lines in another order (ORDER BY lost)" if sorted(g) == sorted(w)
               else diff(w, g))
        return got == want, f"{why}; got {got[:120]!r}…"

    await soft(ctx, "copy_from_query", lambda: eventually(same_query, f"format={fmt}"))
    ctx.step = "copy_from_table"
    want_t = lines_in_range(await copy_table_out(ref, fmt), lo, hi, sep)
    check(len(want_t) == 20, f"reference COPY accounts TO STDOUT has {len(want_t)} of our lines")

    async def same_table():
        got = lines_in_range(await copy_table_out(conn, fmt), lo, hi, sep)
        return got == want_t, diff(want_t, got)

    await soft(ctx, "copy_from_table", lambda: eventually(same_table, f"format={fmt}"))


def text_field(s):
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


async def s_copy_text(ctx):
    """COPY FROM STDIN / TO STDOUT in text format (escaped tab and backslash)."""
    await copy_scenario(
        ctx, 10, "text", "\t", ["plain", "tab\there", "back\\slash", "ünï"],
        lambda r: "\t".join([str(r[0]), text_field(r[1]), r[2], str(r[3])]) + "\n")


def csv_field(s):
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\n') else s


async def s_copy_csv(ctx):
    """The same in CSV, with quoted fields containing a comma and a quote."""
    await copy_scenario(
        ctx, 11, "csv", ",", ["Doe, Jane", 'say "hi"', "plain"],
        lambda r: ",".join([str(r[0]), csv_field(r[1]), r[2], str(r[3])]) + "\n")


def binary_tuples(data):
    """The tuples of a binary COPY stream (raw bytes each); the stream must
    be one header, tuples, one trailer, nothing else."""
    sig = b"PGCOPY\n\xff\r\n\x00"
    check(data.startswith(sig), f"binary COPY output does not start with the signature: {data[:20]!r}")
    _, ext = struct.unpack_from("!ii", data, 11)
    pos = 19 + ext
    out = []
    while True:
        (n,) = struct.unpack_from("!h", data, pos)
        if n == -1:
            pos += 2
            break
        start = pos
        pos += 2
        for _ in range(n):
            (ln,) = struct.unpack_from("!i", data, pos)
            pos += 4 + max(ln, 0)
        out.append(data[start:pos])
    check(pos == len(data), f"binary COPY output has {len(data) - pos} bytes after the trailer"
          f" (two streams concatenated?)")
    return out


def binary_in_range(data, lo, hi):
    """Sorted tuples whose first field (id, int8) is in [lo, hi]."""
    return sorted(t for t in binary_tuples(data) if lo <= struct.unpack_from("!q", t, 6)[0] <= hi)


async def s_copy_binary(ctx):
    """copy_records_to_table (binary COPY FROM STDIN, after a
    Parse/Describe/Flush of `SELECT cols FROM accounts LIMIT 1`), guarded by
    a timeout (known hang into a sharded table); then binary
    copy_from_query / copy_from_table equal to the reference. When the write
    fails, the rows are loaded with INSERTs so the reads are still checked."""
    lo, hi = key_range(12)
    rows = copy_rows(12, 20, ["bin-a", "bin, b", "bïn"])
    conn = await ctx.proxy()
    ctx.step = "copy_records_to_table"
    try:
        st = await asyncio.wait_for(
            conn.copy_records_to_table("accounts", records=rows, columns=ACCOUNT_COLS),
            COPY_RECORDS_LIMIT)
        check(st == "COPY 20", f"copy_records_to_table returned {st!r}, expected 'COPY 20'")
        await expect_accounts(ctx, 12, {r[0]: r for r in rows})
    except (asyncio.TimeoutError, Exception) as e:
        msg = (f"copy_records_to_table hung for {COPY_RECORDS_LIMIT} s"
               if isinstance(e, asyncio.TimeoutError) else describe(e))
        copying = [(i, r) for i, r in await on_primaries(
            ctx, "SELECT pid, state, query_start > now() - interval '30 s' AS recent"
                 " FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'COPY %'"
                 " AND state <> 'idle' AND pid <> pg_backend_pid()", DATABASE)]
        now = [f"primary {i} pid {r['pid']} {r['state']}" for i, r in copying if r["recent"]]
        old = len(copying) - len(now)
        ctx.problem(f"[copy_records_to_table] {msg}; this COPY on the primaries: {now}"
                    + (f"; {old} older sessions still in COPY" if old else ""))
        for c in await ctx.primaries():
            await c.execute("DELETE FROM accounts WHERE id BETWEEN $1 AND $2", lo, hi)
        conn.terminate()
        conn = await ctx.proxy()
        ctx.step = "fallback: load the rows with INSERTs"
        await insert_accounts(conn, rows)
        await expect_accounts(ctx, 12, {r[0]: r for r in rows})
    await load_ref(ctx, 12, rows)
    ref = await ctx.ref()
    q = (f"SELECT id, owner, currency, balance FROM accounts"
         f" WHERE id BETWEEN {lo} AND {hi} ORDER BY id")
    want = await copy_out(ref, q, "binary")
    ctx.step = "copy_from_query format=binary"

    async def same_query():
        got = await copy_out(conn, q, "binary")
        if got == want:
            return True, ""
        try:
            tuples_got = binary_tuples(got)
            why = diff(binary_tuples(want), tuples_got)
        except Fail as e:
            why = str(e)
        return False, f"{len(got)} bytes, expected {len(want)}: {why}"

    await soft(ctx, "copy_from_query format=binary", lambda: eventually(same_query, "output"))
    ctx.step = "copy_from_table format=binary"
    want_t = binary_in_range(await copy_table_out(ref, "binary"), lo, hi)

    async def same_table():
        got = binary_in_range(await copy_table_out(conn, "binary"), lo, hi)
        return got == want_t, f"{len(got)} tuples of our range, expected {len(want_t)}; {diff(want_t, got)}"

    await soft(ctx, "copy_from_table format=binary", lambda: eventually(same_table, "output"))


async def s_listen_notify(ctx):
    """add_listener (simple Query LISTEN) on A; NOTIFY and SELECT pg_notify()
    on B; A's callback gets both payloads within 10 s."""
    chan = f"chan_{BASE}"
    a = await ctx.proxy()
    b = await ctx.proxy()
    got = []
    arrived = asyncio.Event()

    def on_notify(_conn, _pid, channel, payload):
        got.append((channel, payload))
        if len(got) >= 2:
            arrived.set()

    ctx.step = "LISTEN (add_listener)"
    await a.add_listener(chan, on_notify)
    ctx.step = "NOTIFY"
    await b.execute(f"NOTIFY {chan}, 'hello'")
    ctx.step = "SELECT pg_notify"
    await b.execute("SELECT pg_notify($1, $2)", chan, "payload-2")
    ctx.step = "wait for notifications"
    try:
        await asyncio.wait_for(arrived.wait(), 10)
    except asyncio.TimeoutError:
        pass
    want = [(chan, "hello"), (chan, "payload-2")]
    check(sorted(got) == want, f"notifications received within 10 s: {got}, expected {want}")


async def s_cancel_timeout(ctx):
    """Cancel with asyncio.wait_for (and with task.cancel() inside a
    transaction): asyncpg sends a CancelRequest; the next statement must run
    within 5 s (asyncpg first waits for the cancelled statement's answer, so
    an unforwarded cancel shows as a 30 s wait), and in the transaction it
    must fail with 25P02 (proof the statement was cancelled with an error,
    57014, since asyncpg does not surface that error itself). Then
    statement_timeout = 300 gives 57014 on pg_sleep(5); RESET; SELECT 1."""
    conn = await ctx.proxy()
    ctx.step = "wait_for(pg_sleep(30), 0.5)"
    t0 = time.monotonic()
    try:
        r = await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(30)"), 0.5)
        raise Fail(f"pg_sleep(30) returned {r!r} before the 0.5 s timeout")
    except asyncio.TimeoutError:
        pass
    ctx.step = "SELECT 1 after the cancel"
    got = await asyncio.wait_for(conn.fetchval("SELECT 1"), 25)
    took = time.monotonic() - t0
    check(got == 1, f"SELECT 1 after the cancel returned {got!r}")
    check(took < 5.5, f"the cancelled pg_sleep(30) was answered only after {took:.1f} s (cancel not forwarded?)")

    ctx.step = "task.cancel() of pg_sleep(30) in a transaction"
    tr = conn.transaction()
    await tr.start()
    task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.5)
    t0 = time.monotonic()
    task.cancel()
    try:
        await task
        raise Fail("cancelled pg_sleep(30) task completed")
    except asyncio.CancelledError:
        pass
    ctx.step = "statement after the cancel in the transaction"
    try:
        r = await asyncio.wait_for(conn.fetchval("SELECT 1"), 25)
        raise Fail(f"after the cancel in a transaction, SELECT 1 returned {r!r}: the cancelled"
                   f" statement did not fail with 57014 (expected 25P02 now)")
    except asyncpg.PostgresError as e:
        check(e.sqlstate == "25P02",
              f"after the cancel in a transaction, expected 25P02, got {describe(e)}")
    took = time.monotonic() - t0
    check(took < 5, f"the cancel in the transaction took {took:.1f} s")
    await tr.rollback()

    ctx.step = "SET statement_timeout = 300"
    await conn.execute("SET statement_timeout = 300")
    ctx.step = "SELECT pg_sleep(5) with statement_timeout"
    t0 = time.monotonic()
    await expect_error(asyncio.wait_for(conn.fetchval("SELECT pg_sleep(5)"), 25), "57014",
                       "pg_sleep(5) with statement_timeout = 300")
    took = time.monotonic() - t0
    check(took < 4, f"statement_timeout error came after {took:.1f} s")
    ctx.step = "RESET statement_timeout"
    await conn.execute("RESET statement_timeout")
    got = await conn.fetchval("SELECT 1")
    check(got == 1, f"SELECT 1 after RESET returned {got!r}")
    got = await conn.fetchval("SELECT current_setting('statement_timeout')")
    check(got == "0", f"statement_timeout after RESET is {got!r}, expected '0'")


TYPED_COLS = ["j", "jb", "ints", "texts", "n", "ts", "d", "b", "u", "f", "flag"]


async def s_types(ctx):
    """Every column type of `typed` as a parameter (asyncpg's binary codecs;
    json/jsonb as text), read back by key in a transaction; and a row of
    NULLs."""
    conn = await ctx.proxy()
    k1, k2 = keys(15, 2)
    j = '{"a": [1, 2, {"b": null}], "s": "x\\u00e9 ü",  "k": 1}'
    jb = {"k": [1, "two", None, True], "n": 1.5, "nested": {"é": "ü"}}
    vals = [
        j,
        json.dumps(jb),
        [1, -2, 2147483647, None, -2147483648],
        ["plain", "with,comma", 'quo"te', "back\\slash", "", None, "üñí", "{br}"],
        Decimal("12345678901234567890.1234567890"),
        datetime.datetime(2024, 2, 29, 13, 45, 30, 123456,
                          tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))),
        datetime.date(1999, 12, 31),
        bytes(range(256)),
        uuid.UUID("12345678-9abc-4def-8123-456789abcdef"),
        0.1 + 0.2,
        True,
    ]
    cols = ", ".join(TYPED_COLS)
    params = ", ".join(f"${n + 2}" for n in range(len(TYPED_COLS)))
    sql = f"INSERT INTO typed (id, {cols}) VALUES ($1, {params})"
    ctx.step = "INSERT typed row"
    st = await conn.execute(sql, k1, *vals)
    check(st == "INSERT 0 1", f"INSERT returned {st!r}")
    ctx.step = "INSERT row of NULLs"
    st = await conn.execute(sql, k2, *([None] * len(TYPED_COLS)))
    check(st == "INSERT 0 1", f"INSERT of NULLs returned {st!r}")
    ctx.step = "read back in a transaction"
    async with conn.transaction():
        r1 = await conn.fetchrow(f"SELECT {cols} FROM typed WHERE id = $1", k1)
        r2 = await conn.fetchrow(f"SELECT {cols} FROM typed WHERE id = $1", k2)
    check(r1 is not None and r2 is not None, f"rows read back: {r1!r}, {r2!r}")
    bad = []
    for name, sent, got in zip(TYPED_COLS, vals, r1):
        if name == "jb":
            same = got is not None and json.loads(got) == jb
        else:
            same = got == sent and isinstance(got, type(sent))
        if not same:
            bad.append(f"{name}: sent {sent!r}, got {got!r}")
    nulls = [name for name, got in zip(TYPED_COLS, r2) if got is not None]
    check(not bad, "values differ: " + "; ".join(bad))
    check(not nulls, f"NULL row: columns not NULL: {nulls}")
    found = [r["id"] for _, r in await on_primaries(
        ctx, "SELECT id FROM typed WHERE id = any($1::bigint[])", [k1, k2])]
    check(sorted(found) == [k1, k2], f"typed rows on the primaries: {found}, expected [{k1}, {k2}]")


async def s_metadata(ctx):
    """asyncpg's catalog traffic: set_type_codec('json') (its pg_type lookup
    by name), the type introspection of a composite (`accounts` row type),
    prepared statement attributes, and information_schema / pg_catalog
    queries: accounts found once, with id, owner, currency, balance."""
    conn = await ctx.proxy()
    want = ACCOUNT_COLS
    ctx.step = "set_type_codec json"
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    got = await conn.fetchval("SELECT $1::json", {"a": [1, 2]})
    check(got == {"a": [1, 2]}, f"json codec round trip gave {got!r}")
    ctx.step = "composite type introspection"
    rec = await conn.fetchval("SELECT ROW($1::bigint, 'o', 'USD', 2.5)::accounts", 7)
    check(rec is not None and list(rec.keys()) == want and tuple(rec) == (7, "o", "USD", Decimal("2.5")),
          f"accounts row type decoded as {rec!r}, expected fields {want}")
    ctx.step = "prepared statement attributes"
    stmt = await conn.prepare("SELECT * FROM accounts WHERE false")
    got = [a.name for a in stmt.get_attributes()]
    check(got == want, f"SELECT * FROM accounts attributes {got}, expected {want}")
    ctx.step = "information_schema.columns"
    got = tuples(await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
        "accounts"))
    exp = [("id", "bigint"), ("owner", "text"), ("currency", "text"), ("balance", "numeric")]
    check(got == exp, f"information_schema.columns of accounts: {got}, expected {exp}")
    ctx.step = "pg_catalog"
    got = tuples(await conn.fetch(
        "SELECT c.relname, c.relnatts FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'public' AND c.relname = $1 AND c.relkind = 'r'", "accounts"))
    check(got == [("accounts", 4)], f"pg_class rows for accounts: {got}, expected [('accounts', 4)]")


async def s_read_your_writes(ctx):
    """SET shardgate.consistency = session (not in `single`, where every
    read is on the primary anyway: the loop still runs), then 20 times an
    autocommit INSERT and at once a SELECT of it: every row seen at once."""
    conn = await ctx.proxy()
    if TOPOLOGY != "single":
        ctx.step = "SET shardgate.consistency = session"
        await conn.execute("SET shardgate.consistency = session")
    missed = []
    for n, k in enumerate(keys(17, 20)):
        ctx.step = f"write/read {n + 1}"
        await insert_accounts(conn, [account(k, n)])
        got = await conn.fetchval("SELECT owner FROM accounts WHERE id = $1", k)
        if got != f"owner-{n}":
            missed.append(f"{k}: {got!r}")
    check(not missed, f"{len(missed)} of 20 writes not seen at once: {short(missed)}")


async def s_cross_shard_read(ctx):
    """Aggregates, GROUP BY, ORDER BY + LIMIT/OFFSET and a join with the
    reference table over both shards, equal to the reference database, with
    literal values (conn.fetch) and as conn.prepare() with parameters."""
    conn = await ctx.proxy()
    await load_120(ctx, 18, conn)
    lo, hi = key_range(18)
    queries = {
        "aggregates": "SELECT count(*), sum(balance), min(id), max(id) FROM accounts WHERE id BETWEEN $1 AND $2",
        "group by": "SELECT currency, count(*) FROM accounts WHERE id BETWEEN $1 AND $2"
                    " GROUP BY currency ORDER BY currency",
        "order/limit/offset": "SELECT id FROM accounts WHERE id BETWEEN $1 AND $2"
                              " ORDER BY balance DESC, id LIMIT 5 OFFSET 2",
        "join": "SELECT a.id, a.owner, c.name FROM accounts a JOIN currencies c ON c.code = a.currency"
                " WHERE a.id BETWEEN $1 AND $2 ORDER BY a.id",
        "grouped subquery": "SELECT s.currency, s.n, s.total FROM (SELECT currency, count(*) AS n, sum(balance) AS total FROM accounts WHERE id BETWEEN $1 AND $2 GROUP BY currency) s ORDER BY s.currency",
    }
    ref = await ctx.ref()
    for name, q in queries.items():
        want = tuples(await ref.fetch(q, lo, hi))
        plain = q.replace("$1", str(lo)).replace("$2", str(hi))
        ctx.step = f"{name} (plain)"

        async def same_plain(plain=plain, want=want):
            got = tuples(await conn.fetch(plain))
            return got == want, diff(want, got)

        await eventually(same_plain, f"{name} (plain)")
        ctx.step = f"{name} (prepared)"
        stmt = await conn.prepare(q)

        async def same_prepared(stmt=stmt, want=want):
            got = tuples(await stmt.fetch(lo, hi))
            return got == want, diff(want, got)

        await eventually(same_prepared, f"{name} (prepared)")


async def idle_in_tx(ctx):
    """Sessions of SG_DATABASE idle in transaction on the primaries."""
    return [f"primary {i} pid {r['pid']}: {r['query']!r}" for i, r in await on_primaries(
        ctx, "SELECT pid, left(query, 80) AS query FROM pg_stat_activity"
             " WHERE datname = $1 AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
        DATABASE)]


async def s_client_killed(ctx):
    """A child process (asyncpg, this program with `hold KEY`) opens a
    transaction, INSERTs, prints READY and is SIGKILLed: within 10 s the row
    is absent and no session is idle in transaction on any primary."""
    key = keys(19, 1)[0]
    ctx.step = "start child"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, os.path.abspath(__file__), "hold", str(key),
        stdout=asyncio.subprocess.PIPE)
    ctx.procs.append(proc)
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    check(line.strip() == b"READY", f"child printed {line!r} instead of READY (exit {proc.returncode})")
    ctx.step = "check the open transaction before the kill"
    before = await idle_in_tx(ctx)
    check(any("INSERT" in s for s in before),
          f"before the kill no primary shows the child's transaction idle in transaction: {before}")
    ctx.step = "SIGKILL"
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    ctx.step = "wait for the primaries to drop the transaction"
    deadline = time.monotonic() + 10
    while True:
        rows = [r["id"] for _, r in await on_primaries(ctx, "SELECT id FROM accounts WHERE id = $1", key)]
        left = await idle_in_tx(ctx)
        if not rows and not left:
            return
        if time.monotonic() > deadline:
            raise Fail(f"10 s after SIGKILL of the client: row {key} on primaries: {bool(rows)};"
                       f" sessions idle in transaction: {left}")
        await asyncio.sleep(0.2)


async def hold(key):
    """The child of client_killed: a transaction with an INSERT left open."""
    conn = await connect(HOST, PORT, DATABASE)
    tr = conn.transaction()
    await tr.start()
    await conn.execute(INSERT_ACCOUNT, key, "held", "USD", Decimal(0))
    print("READY", flush=True)
    await asyncio.sleep(600)


async def s_backend_terminated(ctx):
    """SELECT pg_backend_pid() through the proxy (on a primary thanks to the
    `consistency=strong` hint), pg_terminate_backend() of it directly on its
    primary, then 5 statements on the same client connection all succeed
    (the proxy must not hand out the dead server connection), and the write
    among them is on the primaries. Direct (no proxy): the client connection
    is the terminated one, so asyncpg must report the loss, and the 5
    statements run on a new connection."""
    conn = await ctx.proxy()
    k1, k2 = keys(20, 2)
    ctx.step = "SELECT pg_backend_pid()"
    pid = await conn.fetchval("/* shardgate: consistency=strong */ SELECT pg_backend_pid()")
    ctx.step = "pg_terminate_backend on the primaries"

    async def terminate(pid):
        hit = []
        for i, c in enumerate(await ctx.primaries()):
            if await c.fetchval(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND datname = $2",
                    pid, DATABASE):
                hit.append(i)
        return hit

    hit = await terminate(pid)
    if not hit:
        ctx.problem(f"backend {pid} of the hinted SELECT pg_backend_pid() is on no primary")
        ctx.step = "INSERT ... RETURNING pg_backend_pid()"
        pid = await conn.fetchval(
            "INSERT INTO accounts (id, owner, currency) VALUES ($1, 'pid', 'USD') RETURNING pg_backend_pid()", k2)
        hit = await terminate(pid)
        check(hit, f"backend {pid} of an INSERT is on no primary")
    await asyncio.sleep(0.2)
    if DIRECT:
        ctx.step = "statement on the terminated connection (direct)"
        try:
            await conn.fetchval("SELECT 1")
            raise Fail("direct: SELECT 1 on the terminated connection succeeded")
        except (asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError,
                asyncpg.InterfaceError, ConnectionError):
            pass
        conn = await ctx.proxy()
    errors = []
    statements = [
        ("SELECT 1", lambda: conn.fetchval("SELECT 1"), 1),
        ("INSERT", lambda: conn.execute(INSERT_ACCOUNT, *account(k1, 0)), "INSERT 0 1"),
        ("SELECT $1::int + 1", lambda: conn.fetchval("SELECT $1::int + 1", 41), 42),
        ("simple SELECT 3", lambda: conn.execute("SELECT 3"), "SELECT 1"),
        ("SELECT count(*) FROM currencies", lambda: conn.fetchval("SELECT count(*) FROM currencies"), 4),
    ]
    for n, (name, run, want) in enumerate(statements, 1):
        ctx.step = f"statement {n} after the termination: {name}"
        try:
            got = await run()
            if got != want:
                errors.append(f"{n} {name}: got {got!r}, expected {want!r}")
        except Exception as e:
            errors.append(f"{n} {name}: {describe(e)}")
            if conn.is_closed():
                errors.append("client connection closed")
                break
    check(not errors, f"statements after pg_terminate_backend({pid}): {'; '.join(errors)}")
    ctx.step = "check primaries"
    found = [r["id"] for _, r in await on_primaries(ctx, "SELECT id FROM accounts WHERE id = $1", k1)]
    check(found == [k1], f"the INSERT after the termination: row {k1} found {len(found)} times on the primaries")


async def s_multi_statement(ctx):
    """Query strings of several statements (conn.execute without arguments:
    the simple protocol), going to different shards where sharded: each
    runs; an error in one undoes the whole string."""
    conn = await ctx.proxy()
    k = keys(21, 4)

    def ins(*ks):
        values = ", ".join(f"({x}, 'multi', 'USD', 1)" for x in ks)
        return f"INSERT INTO accounts (id, owner, currency, balance) VALUES {values}"
    ctx.step = "a string of three statements"
    await conn.execute(f"{ins(k[0])}; {ins(k[1], k[2])}; UPDATE accounts SET balance = 5 WHERE id = {k[0]}")
    ctx.step = "a string failing in its second statement"
    await expect_error(conn.execute(f"{ins(k[3])}; {ins(k[0])}"), "23505", "the duplicate in the string")
    check(await conn.fetchval("SELECT 1") == 1, "SELECT 1 after the failed string")
    ctx.step = "check primaries"
    await expect_accounts(ctx, 21, {
        k[0]: (k[0], "multi", "USD", Decimal(5)),
        k[1]: (k[1], "multi", "USD", Decimal(1)),
        k[2]: (k[2], "multi", "USD", Decimal(1)),
    })


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


async def clean():
    """Deletes this program's key range from every table on every primary
    (the reference database is shared by the concurrent runs of the three
    topologies: see load_ref)."""
    lo, hi = BASE, BASE + 999_999
    targets = [(hostport(p), DATABASE) for p in PRIMARIES]
    for (h, p), db in targets:
        c = await connect(h, p, db)
        try:
            for sql in ("DELETE FROM ledger WHERE account_id BETWEEN $1 AND $2",
                        "DELETE FROM accounts WHERE id BETWEEN $1 AND $2",
                        "DELETE FROM typed WHERE id BETWEEN $1 AND $2"):
                await c.execute(sql, lo, hi)
        finally:
            await close_quietly(c)


async def run_one(i, name, fn):
    ctx = Ctx(i)
    log(f"== {name} ({TOPOLOGY}{', direct' if DIRECT else ''})")
    ok, detail = False, ""
    t0 = time.monotonic()
    try:
        async with asyncio.timeout(SCENARIO_LIMIT) as limit:
            try:
                await fn(ctx)
                ok = not ctx.problems
                detail = "; ".join(ctx.problems)
            except Fail as e:
                detail = "; ".join(ctx.problems + [f"[{ctx.step}] {e}"])
            except Exception as e:
                if isinstance(e, (asyncio.TimeoutError, TimeoutError)) and limit.expired():
                    raise
                log(traceback.format_exc())
                detail = "; ".join(ctx.problems + [f"[{ctx.step}] {describe(e)}"])
    except (asyncio.TimeoutError, TimeoutError):
        detail = "; ".join(ctx.problems + [f"[{ctx.step}] hung: no answer within {SCENARIO_LIMIT} s"])
    finally:
        try:
            await asyncio.wait_for(ctx.close(), 15)
        except BaseException as e:
            log(f"  closing: {describe(e)}")
    log(f"   {'ok' if ok else 'FAIL'} in {time.monotonic() - t0:.1f} s {detail}")
    print(json.dumps({"scenario": name, "ok": ok, "detail": detail}), flush=True)


async def main():
    try:
        await clean()
    except Exception as e:
        log(f"cleaning the key range failed: {describe(e)}")
    only = ENV.get("SG_ONLY")  # comma-separated scenario names, for debugging by hand
    for i, (name, fn) in enumerate(SCENARIOS, 1):
        if only and name not in only.split(","):
            continue
        await run_one(i, name, fn)


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        asyncio.run(hold(int(sys.argv[2])))
    else:
        asyncio.run(main())
