"""Parameterised admin-console queries with psycopg 3 (text and binary
results, a prepared statement, a join with an aggregate); prints JSON with
the Python types the driver produced. Usage: admin_queries.py CONNINFO SHARD"""
import json
import sys

import psycopg

conninfo, shard = sys.argv[1], int(sys.argv[2])
NODES = ("SELECT node, shard, role, lag_bytes, in_recovery, lag_ms "
         "FROM shardgate.nodes WHERE shard = %s ORDER BY role")
out = {}
with psycopg.connect(conninfo, autocommit=True) as c:
    rows = c.execute(NODES, [shard]).fetchall()
    out["nodes"] = [list(r) for r in rows]
    out["types"] = [[type(v).__name__ for v in r] for r in rows]
    with c.cursor(binary=True) as cur:
        cur.execute(NODES, [shard])
        rows = cur.fetchall()
        out["binary"] = [list(r) for r in rows]
        out["binary_types"] = [[type(v).__name__ for v in r] for r in rows]
    for _ in range(3):
        r = c.execute("SELECT count(*) FROM shardgate.nodes WHERE shard = %s AND role = %s",
                      [shard, "primary"], prepare=True).fetchone()
    out["prepared"] = r[0]
    out["join"] = [list(r) for r in c.execute(
        "SELECT n.shard, sum(p.cl_waiting) AS waiting, count(*) AS pools "
        "FROM shardgate.nodes n JOIN shardgate.pools p USING (node) "
        "GROUP BY n.shard ORDER BY n.shard").fetchall()]
with psycopg.connect(conninfo) as c:  # not autocommit: psycopg wraps in BEGIN
    out["in_tx"] = c.execute("SELECT version FROM shardgate.version").fetchone()[0]
print(json.dumps(out))
