#!/usr/bin/env bash
# Installs what shardgate's tests, demo and benchmarks need, only when missing:
# the PostgreSQL server and client binaries, PgBouncer, openssl and Python's
# psycopg 3 and asyncpg. Safe to run again; does nothing when everything is there.
set -euo pipefail

sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
missing=()
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/postgres" ] || [ ! -x "$pg_bin/pgbench" ]; then
  missing+=(postgresql)
fi
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/psql" ] || [ ! -x "$pg_bin/pg_basebackup" ]; then
  missing+=(postgresql-client)
fi
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || missing+=(pgbouncer)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v runuser >/dev/null 2>&1 || missing+=(util-linux)

if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The harness runs Postgres as this OS user when started as root.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home /var/lib/postgresql --shell /bin/bash postgres
fi

if ! python3 -c 'import psycopg' >/dev/null 2>&1; then
  echo "deps: installing psycopg" >&2
  python3 -m pip install --quiet 'psycopg[binary]' 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages 'psycopg[binary]' 2>/dev/null \
    || { "${sudo_cmd[@]}" apt-get install -y -qq python3-psycopg >/dev/null; }
  python3 -c 'import psycopg' || { echo "deps: could not install psycopg" >&2; exit 1; }
fi
if ! python3 -c 'import asyncpg' >/dev/null 2>&1; then
  echo "deps: installing asyncpg" >&2
  python3 -m pip install --quiet asyncpg 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages asyncpg 2>/dev/null \
    || { "${sudo_cmd[@]}" apt-get install -y -qq python3-asyncpg >/dev/null; }
  python3 -c 'import asyncpg' || { echo "deps: could not install asyncpg" >&2; exit 1; }
fi
