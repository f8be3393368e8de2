#!/usr/bin/env bash
# Random SQL through shardgate (issue 19): starts `shardgate demo` (2 shards,
# each a primary and a replica, the sharded sample schema, transaction
# pooling), runs sqlsmith through the proxy for a bounded number of queries
# while a probe client keeps querying, then the same sqlsmith (same seed)
# directly against shard 0 as a reference. Checks that the proxy never
# crashed or hung, that every error sqlsmith saw carries a SQLSTATE, that
# the probe was served throughout, and that SHOW POOLS shows no server
# connection still lent afterwards. Prints query and error counts by SQLSTATE
# and the proxy's RSS before and after.
#
#   scripts/sqlsmith.sh [QUERIES]      (default 2000; SQLSMITH_SEED, default 1)
#
# SQLSMITH_ARGS adds sqlsmith options (default --exclude-catalog: queries
# over the sample schema, not the system catalogs).
#
# SHARDGATE_BIN overrides the binary (default: target/debug/shardgate, built
# when missing). Exits non-zero when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

queries=${1:-2000}
seed=${SQLSMITH_SEED:-1}
port=${SQLSMITH_PORT:-6499}
bin=${SHARDGATE_BIN:-target/debug/shardgate}
work=$(mktemp -d /tmp/sqlsmith-run.XXXXXX)
export SHARDGATE_HARNESS_DIR=${SHARDGATE_HARNESS_DIR:-$work/harness}

if ! command -v sqlsmith >/dev/null 2>&1; then
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends sqlsmith >/dev/null
fi
[ -x "$bin" ] || cargo build --locked -p shardgate --bin shardgate
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
psql=("$pg_bin/psql" -X -q -A -t -v ON_ERROR_STOP=1)

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

demo_pid=""
probe_pid=""
cleanup() {
  [ -n "$probe_pid" ] && kill "$probe_pid" 2>/dev/null || true
  if [ -n "$demo_pid" ] && kill -0 "$demo_pid" 2>/dev/null; then
    kill -TERM "$demo_pid" 2>/dev/null || true
    wait "$demo_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

RUST_LOG=${RUST_LOG:-warn} "$bin" demo --port "$port" >"$work/demo.out" 2>"$work/demo.err" &
demo_pid=$!
for _ in $(seq 1 600); do
  grep -q "shardgate demo is running" "$work/demo.out" 2>/dev/null && break
  kill -0 "$demo_pid" 2>/dev/null || { cat "$work/demo.err" >&2; echo "demo exited" >&2; exit 1; }
  sleep 0.5
done
grep -q "shardgate demo is running" "$work/demo.out" || { echo "demo did not start" >&2; exit 1; }
shard0=$(sed -n 's/.*shard 0: primary \([0-9.]*:[0-9]*\).*/\1/p' "$work/demo.out")
proxy_db="host=127.0.0.1 port=$port user=app password=secret dbname=app sslmode=disable"
admin_db="host=127.0.0.1 port=$port user=admin password=admin dbname=shardgate sslmode=disable"
direct_db="host=${shard0%:*} port=${shard0#*:} user=app password=secret dbname=app sslmode=disable"
log_db="host=${shard0%:*} port=${shard0#*:} user=app password=secret dbname=smithlog sslmode=disable"

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$demo_pid/status"; }

# sqlsmith --log-to writes each error (with its SQLSTATE) to these tables, in
# a database of their own on shard 0 beside the data under test.
"${psql[@]}" -d "$direct_db" -c "CREATE DATABASE smithlog"
"${psql[@]}" -d "$log_db" <<'SQL'
CREATE TABLE instance (id bigserial PRIMARY KEY, rev text, target text, hostname text,
                       version text, seed text, t timestamptz DEFAULT now());
CREATE TABLE error (id bigint REFERENCES instance (id), msg text, query text, target text,
                    sqlstate text, t timestamptz DEFAULT now(), errid bigserial PRIMARY KEY);
CREATE TABLE stat (id bigint REFERENCES instance (id), generated bigint, level float,
                   nodes float, retries float, updated timestamptz, impedance jsonb);
SQL

# The probe: a short statement through the proxy every 200 ms; each must
# answer within 10 s.
probe() {
  local ok=0 bad=0 start=$SECONDS
  while [ ! -e "$work/probe.stop" ]; do
    [ $(((ok + bad) % 50)) = 0 ] && echo "$((SECONDS - start)) $(rss_kb)" >>"$work/rss.txt"
    if out=$(PGCONNECT_TIMEOUT=10 timeout 10 "${psql[@]}" -d "$proxy_db" -c "SELECT count(*) FROM customers" 2>&1) && [ "$out" = 200 ]; then
      ok=$((ok + 1))
    else
      bad=$((bad + 1))
      echo "$(date +%T) $out" >>"$work/probe.errors"
    fi
    sleep 0.2
  done
  echo "$ok $bad" >"$work/probe.result"
}

rss_before=$(rss_kb)
probe &
probe_pid=$!

run_smith() { # name target
  local start end rc=0
  start=$(date +%s)
  timeout 3600 sqlsmith --target="$2" --log-to="$log_db" --seed="$seed" \
    --max-queries="$queries" ${SQLSMITH_ARGS---exclude-catalog} --verbose >"$work/$1.out" 2>"$work/$1.err" || rc=$?
  end=$(date +%s)
  echo "$1: sqlsmith exited $rc after $((end - start)) s"
  [ "$rc" = 124 ] && fail "$1: sqlsmith did not finish within an hour (hang?)"
  return 0
}

run_smith proxy "$proxy_db"
kill -0 "$demo_pid" 2>/dev/null || fail "the proxy exited during the run"
touch "$work/probe.stop"
wait "$probe_pid" || true
probe_pid=""
rss_after=$(rss_kb || echo 0)

# Nothing lent after the run (sv_active), nothing idle in a transaction.
sleep 1
lent=$("${psql[@]}" -d "$admin_db" -c "SELECT coalesce(sum(sv_active), 0) FROM shardgate.pools")
[ "$lent" = 0 ] || fail "SHOW POOLS: $lent server connections still lent after the run"
for addr in $(sed -n 's/.*primary \([0-9.]*:[0-9]*\).*/\1/p' "$work/demo.out"); do
  stuck=$("${psql[@]}" -d "host=${addr%:*} port=${addr#*:} user=app password=secret dbname=app sslmode=disable" \
    -c "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'")
  [ "$stuck" = 0 ] || fail "$addr: $stuck sessions idle in transaction"
done

run_smith direct "$direct_db"

read -r probe_ok probe_bad <"$work/probe.result"
[ "$probe_bad" = 0 ] || fail "the probe failed $probe_bad times (see $work/probe.errors)"

report() { # instance-number name
  "${psql[@]}" -d "$log_db" -F ' ' -c "
    SELECT coalesce(nullif(e.sqlstate, ''), '(none)'), count(*)
    FROM error e WHERE e.id = (SELECT id FROM instance ORDER BY id LIMIT 1 OFFSET $1)
    GROUP BY 1 ORDER BY 2 DESC" | sed "s/^/  $2 /"
}
echo "queries: $queries per run (seed $seed)"
echo "errors by SQLSTATE (proxy run, then direct run on shard 0):"
report 0 proxy
report 1 direct
echo "most frequent errors through the proxy:"
"${psql[@]}" -d "$log_db" -F ' ' -c "
  SELECT count(*), sqlstate, left(split_part(msg, E'\n', 1), 110)
  FROM error WHERE id = (SELECT min(id) FROM instance)
  GROUP BY 2, 3 ORDER BY 1 DESC LIMIT 15" | sed 's/^/  /'
none=$("${psql[@]}" -d "$log_db" -c "SELECT count(*) FROM error WHERE id = (SELECT min(id) FROM instance) AND coalesce(sqlstate, '') = ''")
[ "$none" = 0 ] || fail "$none errors through the proxy had no SQLSTATE"
broken=$("${psql[@]}" -d "$log_db" -c "SELECT string_agg(DISTINCT sqlstate, ',') FROM error WHERE id = (SELECT min(id) FROM instance) AND sqlstate LIKE '08%'")
[ -z "$broken" ] || fail "connection errors through the proxy: $broken"
echo "probe: $probe_ok answered, $probe_bad failed"
echo "proxy RSS during the proxy run (seconds kB): $(tr '\n' ',' <"$work/rss.txt")"
stats=$("${psql[@]}" -d "$admin_db" -c "SELECT count(*) || ' fingerprints, ' || coalesce(sum(length(query)), 0) || ' bytes of text' FROM shardgate.query_stats")
echo "shardgate.query_stats after the run (bounded by query_stats_max): $stats"
echo "proxy RSS: ${rss_before} kB before, ${rss_after} kB after"
grep -q panicked "$work/demo.err" && fail "the proxy panicked (see $work/demo.err)"
echo "work directory: $work"
if [ "$failures" -gt 0 ]; then
  echo "sqlsmith: $failures checks failed" >&2
  exit 1
fi
echo "sqlsmith: all checks passed"
