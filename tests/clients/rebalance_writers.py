#!/usr/bin/env python3
"""Writers for `tests/rebalance.rs`: psycopg 3 and asyncpg write through
shardgate while rebalancing jobs move rows, each keeping a ledger of what it
committed.

psycopg: accounts created with executemany; transfers sent in pipeline mode
(BEGIN, UPDATE, INSERT, COMMIT in one batch, Sync at the end). asyncpg:
accounts created with executemany; transfers as a prepared UPDATE and an
INSERT inside `conn.transaction()`. Both read their balance back after each
commit.

Environment: SG_HOST, SG_PORT, SG_USER, SG_PASSWORD, SG_DATABASE,
SG_KEY_BASE (first key; psycopg takes [base, base+ACCOUNTS), asyncpg the
next ACCOUNTS), SG_READY (a file created once the accounts exist), SG_STOP
(a file whose existence ends the writers).

Prints one JSON object: {"ledger": {id: [balance, entries, sum]}, "errors":
[...], "transfers": {"psycopg": n, "asyncpg": n}}.
"""

import asyncio
import json
import os
import random
import threading

import asyncpg
import psycopg

ENV = os.environ
ACCOUNTS = 200


def stopped():
    return os.path.exists(ENV["SG_STOP"])


class Book:
    """One writer's accounts, its next transfer and its ledger."""

    def __init__(self, base):
        self.ledger = {k: [0, 0, 0] for k in range(base, base + ACCOUNTS)}
        self.keys = list(self.ledger)
        self.rnd = random.Random(base)
        self.seq = 0
        self.errors = []

    def running(self):
        return not stopped() and not self.errors

    def next(self):
        """The next transfer: (account, amount, entry sequence)."""
        self.seq += 1
        return self.rnd.choice(self.keys), self.rnd.randint(1, 100), self.seq

    def committed(self, k, d):
        e = self.ledger[k]
        e[0] += d
        e[1] += 1
        e[2] += d

    def check(self, driver, k, got):
        if got != self.ledger[k][0]:
            self.errors.append(f"{driver} read back {k}: {got}, wrote {self.ledger[k][0]}")

    def result(self):
        return self.ledger, self.errors, self.seq


def psycopg_writer(base, out, ready):
    book = Book(base)
    conn = psycopg.connect(
        host=ENV["SG_HOST"], port=int(ENV["SG_PORT"]), user=ENV["SG_USER"],
        password=ENV["SG_PASSWORD"], dbname=ENV["SG_DATABASE"], autocommit=True,
        connect_timeout=10,
    )
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO accounts (id, balance) VALUES (%s, 0)",
                        [(k,) for k in book.keys])
    ready.set()
    while book.running():
        k, d, seq = book.next()
        try:
            with conn.pipeline():
                conn.execute("BEGIN")
                conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (d, k))
                conn.execute("INSERT INTO entries (account_id, seq, amount) VALUES (%s, %s, %s)",
                             (k, seq, d))
                conn.execute("COMMIT")
        except psycopg.Error as e:
            book.errors.append(f"psycopg transfer on {k}: {e.sqlstate} {e}")
            conn.execute("ROLLBACK")
            break
        book.committed(k, d)
        (got,) = conn.execute("SELECT balance FROM accounts WHERE id = %s", (k,)).fetchone()
        book.check("psycopg", k, got)
    conn.close()
    out["psycopg"] = book.result()


async def asyncpg_writer(base, out, ready):
    book = Book(base)
    conn = await asyncpg.connect(
        host=ENV["SG_HOST"], port=int(ENV["SG_PORT"]), user=ENV["SG_USER"],
        password=ENV["SG_PASSWORD"], database=ENV["SG_DATABASE"], timeout=10,
    )
    await conn.executemany("INSERT INTO accounts (id, balance) VALUES ($1, 0)",
                           [(k,) for k in book.keys])
    ready.set()
    update = await conn.prepare("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
    while book.running():
        k, d, seq = book.next()
        try:
            async with conn.transaction():
                await update.fetch(d, k)
                await conn.execute(
                    "INSERT INTO entries (account_id, seq, amount) VALUES ($1, $2, $3)", k, seq, d)
        except asyncpg.PostgresError as e:
            book.errors.append(f"asyncpg transfer on {k}: {e.sqlstate} {e}")
            break
        book.committed(k, d)
        book.check("asyncpg", k, await conn.fetchval("SELECT balance FROM accounts WHERE id = $1", k))
    await conn.close()
    out["asyncpg"] = book.result()


def main():
    base = int(ENV["SG_KEY_BASE"])
    out = {}
    ready_p = threading.Event()
    t = threading.Thread(target=psycopg_writer, args=(base, out, ready_p))
    t.start()

    class Ready:
        def __init__(self):
            self.done = False

        def set(self):
            self.done = True

    ready_a = Ready()

    async def run_async():
        task = asyncio.create_task(asyncpg_writer(base + ACCOUNTS, out, ready_a))
        while not (ready_a.done and ready_p.is_set()):
            if task.done():
                break
            await asyncio.sleep(0.05)
        with open(ENV["SG_READY"], "w") as f:
            f.write("ready\n")
        await task

    asyncio.run(run_async())
    t.join()
    ledger, errors, transfers = {}, [], {}
    for name in ("psycopg", "asyncpg"):
        l, e, n = out.get(name, ({}, [f"{name} writer did not finish"], 0))
        ledger.update({str(k): v for k, v in l.items()})
        errors += e
        transfers[name] = n
    print(json.dumps({"ledger": ledger, "errors": errors, "transfers": transfers}))


if __name__ == "__main__":
    main()
