#!/usr/bin/env bash
# Installs what shardgate's tests, demo and benchmarks need, only when missing:
# the PostgreSQL server and client binaries, PgBouncer, openssl, and the
# drivers of the conformance matrix (tests/clients): Python's psycopg 3 and
# asyncpg, pgjdbc with a JDK to compile against it, node-postgres (Node.js,
# npm, then `npm ci` in tests/clients/node). Safe to run again; does nothing
# when everything is there.
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
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

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
if ! python3 -c 'import prometheus_client' >/dev/null 2>&1; then
  echo "deps: installing prometheus_client (the metrics test parses /metrics with it)" >&2
  python3 -m pip install --quiet prometheus_client 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages prometheus_client 2>/dev/null \
    || { "${sudo_cmd[@]}" apt-get install -y -qq python3-prometheus-client >/dev/null; }
  python3 -c 'import prometheus_client' || { echo "deps: could not install prometheus_client" >&2; exit 1; }
fi

node_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/clients/node"
if [ ! -d "$node_dir/node_modules/pg" ] || [ ! -d "$node_dir/node_modules/pg-cursor" ] \
  || [ ! -d "$node_dir/node_modules/pg-copy-streams" ]; then
  echo "deps: installing node-postgres (npm ci)" >&2
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
    || { echo "deps: npm ci failed in $node_dir" >&2; exit 1; }
fi
