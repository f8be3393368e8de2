"""Inserts items(id, name) rows through shardgate with psycopg 3, whose
parameters travel in text format. Usage: psycopg_insert.py CONNINFO FIRST LAST"""
import sys

import psycopg

conninfo, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with psycopg.connect(conninfo, autocommit=True) as conn:
    for i in range(first, last + 1):
        conn.execute("INSERT INTO items (id, name) VALUES (%t, %t)", (i, "text-param"))
print("ok", last - first + 1)
