"""Drives shardgate with asyncpg, which prepares with Parse/Describe/Flush,
binds without a Sync in between and fetches single rows with a row-limited
Execute. Creates `items` and `notes`; meant for a cluster with replicas and
eventual reads, sharded (items by id) or not. Usage: asyncpg_client.py DSN"""
import asyncio
import sys

import asyncpg


async def settled(c, sql, want, *args):
    """Polls an eventual read until the replicas have caught up."""
    for _ in range(300):
        got = await c.fetchval(sql, *args)
        if got == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql}: {got!r}, want {want!r}")


async def main(dsn):
    c = await asyncpg.connect(dsn)
    await c.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
    await c.execute("CREATE TABLE notes (id int, body text)")
    for i in range(1, 101):
        await c.execute("INSERT INTO items VALUES ($1, $2)", i, f"item-{i}")
    await settled(c, "SELECT count(*) FROM items", 100)
    # Keyed reads: described on one shard, bound to the key's shard.
    for i in (1, 37, 64, 100):
        assert await c.fetchval("SELECT name FROM items WHERE id = $1", i) == f"item-{i}"
    stmt = await c.prepare("SELECT name FROM items WHERE id = $1")
    assert [await stmt.fetchval(i) for i in range(1, 101)] == [f"item-{i}" for i in range(1, 101)]
    # Merged results fetched with a row limit (fetchval/fetchrow) and whole.
    row = await c.fetchrow("SELECT id, name FROM items ORDER BY id DESC")
    assert (row["id"], row["name"]) == (100, "item-100")
    ids = [r["id"] for r in await c.fetch("SELECT id FROM items ORDER BY id LIMIT 5")]
    assert ids == [1, 2, 3, 4, 5], ids
    # A keyed write in a transaction.
    async with c.transaction():
        await c.execute("UPDATE items SET name = $2 WHERE id = $1", 37, "renamed")
    await settled(c, "SELECT name FROM items WHERE id = $1", "renamed", 37)
    # COPY after the table is introspected on a replica: runs on the primary.
    await c.copy_records_to_table("notes", records=[(i, "n") for i in range(10)])
    await settled(c, "SELECT count(*) FROM notes", 10)
    # An error, then the connection goes on.
    try:
        await c.fetchval("SELECT 1 / 0")
        raise AssertionError("division by zero succeeded")
    except asyncpg.DivisionByZeroError:
        pass
    assert await c.fetchval("SELECT $1::int + 1", 41) == 42
    await c.close()
    print("ok")


asyncio.run(main(sys.argv[1]))
