"""psycopg 3 with server-side prepared statements (prepare_threshold=0)
through shardgate: 500 distinct statements, each executed in several
separate transactions. Exits non-zero on any wrong result."""
import sys

import psycopg

conninfo = sys.argv[1]
statements = int(sys.argv[2]) if len(sys.argv) > 2 else 500
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3

with psycopg.connect(conninfo, prepare_threshold=0, autocommit=True) as conn:
    for r in range(rounds):
        for i in range(statements):
            with conn.transaction():
                (v,) = conn.execute(f"SELECT %s::int8 + {i}", (r,), prepare=True).fetchone()
                if v != r + i:
                    print(f"wrong result for statement {i} round {r}: {v}", file=sys.stderr)
                    sys.exit(1)
print("ok", statements * rounds)
