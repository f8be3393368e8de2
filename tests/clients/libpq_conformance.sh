#!/usr/bin/env bash
# libpq column of the driver conformance matrix (tests/clients/SCENARIOS.md).
#
# Every scenario goes through libpq's own tools: psql (simple query
# protocol, COPY, cursors with FETCH_COUNT, LISTEN, CancelRequest on SIGINT,
# catalog queries of \d) and pgbench (extended protocol with -M extended,
# named prepared statements with -M prepared, pipeline mode with
# \startpipeline). python3 (standard library only) formats JSON and parses
# binary COPY data; it never talks to a server.
#
# Usage:
#   libpq_conformance.sh                 all scenarios, one JSON line each on stdout
#   libpq_conformance.sh hold KEY        child of client_killed: transaction holding account KEY
#   libpq_conformance.sh scenario NAME INDEX DIR      (internal) one scenario
#   libpq_conformance.sh terminate-backend PID        (internal) pg_terminate_backend on the primaries
#
# Each scenario runs in its own bash process under `timeout 60`; it records
# its problems in DIR/problems (the JSON detail) and its current step in
# DIR/step (reported when it times out). With SG_SELF_TEST=1 the work
# directory (scripts, outputs, COPY files) is kept for inspection.

set -u -o pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PSQL="$PG_BIN/psql"
PGBENCH="$PG_BIN/pgbench"
SELF=$(readlink -f "${BASH_SOURCE[0]}")

export PGPASSWORD="$SG_PASSWORD"
export PGCONNECT_TIMEOUT=10
export PGCLIENTENCODING=UTF8
export LC_ALL=C

SCENARIOS=(
    autocommit tx_commit tx_rollback savepoint error_in_tx prepared_reuse
    batch returning cursor_fetch copy_text copy_csv copy_binary listen_notify
    cancel_timeout types metadata read_your_writes cross_shard_read
    client_killed backend_terminated multi_statement
)

IFS=, read -r -a PRIMARIES <<<"$SG_PRIMARIES"
CURRENCIES=(USD EUR JPY GBP)

# Reads through the proxy may go to a lagging replica outside `single`.
if [[ "$SG_TOPOLOGY" == single ]]; then RETRY_SECONDS=0; else RETRY_SECONDS=10; fi

# Rows of cursor_fetch (scenario 9), also read by cross_shard_read.
CUR_LO=$((SG_KEY_BASE + 9000))
CUR_HI=$((CUR_LO + 119))

# ---------------------------------------------------------------------------
# Connections

# conninfo ADDR DATABASE: a libpq connection string for host:port ADDR.
conninfo() {
    echo "host=${1%:*} port=${1##*:} dbname=$2 user=$SG_USER"
}

PROXY_CONNINFO=$(conninfo "$SG_HOST:$SG_PORT" "$SG_DATABASE")

# Unaligned, tuples only, stop at the first error, errors with their SQLSTATE.
PSQL_FLAGS=(-X -A -t -v ON_ERROR_STOP=1 -v VERBOSITY=verbose -P 'null=<NULL>')

# psql through the proxy (command tags printed unless -q is given).
sg_psql() {
    "$PSQL" "${PSQL_FLAGS[@]}" -d "$PROXY_CONNINFO" "$@"
}

# primary_psql ADDR ARGS...: psql straight to one primary, quiet.
primary_psql() {
    local addr=$1
    shift
    "$PSQL" "${PSQL_FLAGS[@]}" -q -d "$(conninfo "$addr" "$SG_DATABASE")" "$@"
}

# psql straight to the unsharded reference database, quiet.
ref_psql() {
    "$PSQL" "${PSQL_FLAGS[@]}" -q -d "$(conninfo "$SG_REF" "$SG_REF_DATABASE")" "$@"
}

# sg_bench MODE SCRIPT ARGS...: pgbench through the proxy with a custom
# script; MODE is simple, extended (unnamed statements, $n parameters) or
# prepared (named statements, Parse once and Bind/Execute after).
sg_bench() {
    local mode=$1 script=$2
    shift 2
    "$PGBENCH" -n -M "$mode" -f "$script" -h "$SG_HOST" -p "$SG_PORT" -U "$SG_USER" "$@" "$SG_DATABASE"
}

# True when SG_HOST:SG_PORT is a primary itself (direct.env: no proxy).
is_direct() {
    local addr
    for addr in "${PRIMARIES[@]}"; do
        [[ "$addr" == "$SG_HOST:$SG_PORT" ]] && return 0
    done
    return 1
}

# ---------------------------------------------------------------------------
# Reporting inside a scenario process

# step TEXT: what the scenario is doing now (for the timeout message).
step() {
    printf '%s' "$*" >"$SCEN_DIR/step"
    echo "[$SCENARIO] $*" >&2
}

# problem TEXT: records a failed check; the scenario goes on.
problem() {
    printf '%s\n' "$*" >>"$SCEN_DIR/problems"
    echo "[$SCENARIO] FAIL: $*" >&2
}

# fail TEXT: records a failed check and ends the scenario (or the variant
# subshell it is called from).
fail() {
    problem "$@"
    exit 1
}

# note TEXT: detail of a passing scenario.
note() {
    printf '%s\n' "$*" >>"$SCEN_DIR/note"
}

# error_text FILE: psql/pgbench error output on one line, without the
# LOCATION/SCHEMA NAME/... lines of VERBOSITY=verbose.
error_text() {
    grep -v -E '^(LOCATION|SCHEMA NAME|TABLE NAME|COLUMN NAME|DATATYPE NAME|CONSTRAINT NAME): ' "$1" 2>/dev/null |
        tr '\n' ' ' | tr -s ' ' | cut -c1-700
}

CALLS=0
# run_or_fail WHAT COMMAND...: runs COMMAND, its standard output in OUT; a
# failure (non-zero exit) ends the scenario with the command's errors.
run_or_fail() {
    local what=$1
    shift
    CALLS=$((CALLS + 1))
    local err="$SCEN_DIR/stderr.$CALLS"
    OUT=$("$@" 2>"$err")
    local rc=$?
    if ((rc != 0)); then
        fail "$what failed (exit $rc): $(error_text "$err")${OUT:+ [output: $(printf '%s' "$OUT" | tr '\n' ' ' | cut -c1-300)]}"
    fi
}

# mismatch EXPECTED FOUND: the first difference between two outputs.
mismatch() {
    python3 - "$1" "$2" <<'EOF'
import sys
exp, got = sys.argv[1], sys.argv[2]
e = exp.split("\n") if exp else []
g = got.split("\n") if got else []
msg = f"expected {len(e)} lines, found {len(g)}"
for i in range(max(len(e), len(g))):
    a = e[i] if i < len(e) else "<none>"
    b = g[i] if i < len(g) else "<none>"
    if a != b:
        msg += f"; first difference at line {i + 1}: expected {a[:150]!r}, found {b[:150]!r}"
        break
if e != g and sorted(e) == sorted(g):
    msg += "; the same lines in another order"
print(msg)
EOF
}

# expect_equal WHAT EXPECTED FOUND: a problem unless equal.
expect_equal() {
    if [[ "$2" != "$3" ]]; then
        problem "$1: $(mismatch "$2" "$3")"
        return 1
    fi
}

# eventually_equals EXPECTED COMMAND...: runs COMMAND until it succeeds with
# EXPECTED on standard output, for up to RETRY_SECONDS (a read through the
# proxy may go to a lagging replica). OUT: the last output; LAST_ERR: the
# last error, if the last attempt failed.
eventually_equals() {
    local expected=$1
    shift
    local deadline=$((SECONDS + RETRY_SECONDS)) rc
    local err="$SCEN_DIR/eventually.err"
    while true; do
        OUT=$("$@" 2>"$err")
        rc=$?
        LAST_ERR=""
        ((rc != 0)) && LAST_ERR=" (exit $rc: $(error_text "$err"))"
        if ((rc == 0)) && [[ "$OUT" == "$expected" ]]; then
            return 0
        fi
        ((SECONDS >= deadline)) && return 1
        sleep 0.5
    done
}

# Background processes of this scenario, killed (by pid) when it ends.
BG_PIDS=()
kill_background() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
}

# ---------------------------------------------------------------------------
# Data helpers

# Deterministic account values, a function of the id only (the reference
# database is shared by the concurrent runs of the three topologies, which
# use the same keys: they write identical rows there and never delete).
account_sql_values() {
    local id=$1
    printf "(%d, 'acct-%d', '%s', %d.%02d)" "$id" "$id" "${CURRENCIES[id % 4]}" $((id % 1000)) $((id % 97))
}

# insert_accounts_script FROM TO: one autocommit INSERT per key.
insert_accounts_script() {
    local id
    for ((id = $1; id <= $2; id++)); do
        echo "INSERT INTO accounts (id, owner, currency, balance) VALUES $(account_sql_values "$id");"
    done
}

# insert_accounts_via_proxy FROM TO: the accounts of that key range,
# through the proxy, one autocommit INSERT each (simple protocol).
insert_accounts_via_proxy() {
    insert_accounts_script "$1" "$2" >"$SCEN_DIR/insert_$1.sql"
    run_or_fail "inserting accounts $1..$2 through the proxy" sg_psql -q -f "$SCEN_DIR/insert_$1.sql"
}

# ref_upsert_accounts FROM TO: the same accounts in the reference database.
ref_upsert_accounts() {
    local id values=()
    for ((id = $1; id <= $2; id++)); do
        values+=("$(account_sql_values "$id")")
    done
    local IFS=,
    run_or_fail "loading the reference database" ref_psql -c "INSERT INTO accounts (id, owner, currency, balance) VALUES ${values[*]}
        ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, currency = EXCLUDED.currency, balance = EXCLUDED.balance
        WHERE (accounts.owner, accounts.currency, accounts.balance) IS DISTINCT FROM (EXCLUDED.owner, EXCLUDED.currency, EXCLUDED.balance)"
}

# ref_upsert_copy_file FILE COPY_OPTIONS: rows of a COPY file into the
# reference database (through a temporary table, idempotent).
ref_upsert_copy_file() {
    run_or_fail "loading $1 into the reference database" ref_psql \
        -c "CREATE TEMP TABLE incoming (LIKE accounts)" \
        -c "\\copy incoming (id, owner, currency, balance) from '$1' with ($2)" \
        -c "INSERT INTO accounts SELECT * FROM incoming
            ON CONFLICT (id) DO UPDATE SET owner = EXCLUDED.owner, currency = EXCLUDED.currency, balance = EXCLUDED.balance
            WHERE (accounts.owner, accounts.currency, accounts.balance) IS DISTINCT FROM (EXCLUDED.owner, EXCLUDED.currency, EXCLUDED.balance)"
}

# on_primaries SQL: runs SQL on every primary directly; OUT: all rows,
# sorted by their first field (numerically).
on_primaries() {
    local addr all=""
    for addr in "${PRIMARIES[@]}"; do
        run_or_fail "query on primary $addr" primary_psql "$addr" -c "$1"
        [[ -n "$OUT" ]] && all+="$OUT"$'\n'
    done
    OUT=$(printf '%s' "$all" | sort -t'|' -k1,1n -s)
}

# count_on_primaries SQL: the sum over all primaries of a count query.
count_on_primaries() {
    local addr total=0
    for addr in "${PRIMARIES[@]}"; do
        run_or_fail "count on primary $addr" primary_psql "$addr" -c "$1"
        total=$((total + OUT))
    done
    OUT=$total
}

# expected_accounts FROM TO: the rows account_sql_values gives, as psql prints them.
expected_accounts() {
    local id
    for ((id = $1; id <= $2; id++)); do
        printf '%d|acct-%d|%s|%d.%02d\n' "$id" "$id" "${CURRENCIES[id % 4]}" $((id % 1000)) $((id % 97))
    done
}

# wait_for_proxy_count SQL N: until a count read through the proxy gives N.
wait_for_proxy_count() {
    if ! eventually_equals "$2" sg_psql -q -c "$1"; then
        fail "through the proxy, '$1' gave '${OUT}' instead of $2 after ${RETRY_SECONDS} s$LAST_ERR"
    fi
}

# wait_for_line FILE TEXT SECONDS: until FILE has a line TEXT.
wait_for_line() {
    local deadline=$((SECONDS + $3))
    until grep -qx -- "$2" "$1" 2>/dev/null; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.05
    done
}

# elapsed_since T0: seconds since $EPOCHREALTIME value T0.
elapsed_since() {
    awk -v t0="$1" -v t1="$EPOCHREALTIME" 'BEGIN { printf "%.2f", t1 - t0 }'
}

# ---------------------------------------------------------------------------
# Scenarios. KB is the scenario's first key: SG_KEY_BASE + 1000 * index.

# 1. autocommit: 10 INSERTs, an UPDATE and a DELETE as separate autocommit
# statements with $n parameters (pgbench -M extended: PQsendQueryParams,
# unnamed statements). RETURNING ... \gset aborts pgbench unless the UPDATE
# and the DELETE each hit exactly one row.
sc_autocommit() {
    local script="$SCEN_DIR/autocommit.pgb" returned="$SCEN_DIR/returned" k
    {
        for k in $(seq 0 9); do
            echo "\\set k$k :base + $k"
        done
        for k in $(seq 0 9); do
            echo "INSERT INTO accounts (id, owner, currency, balance) VALUES (:k$k, :owner, :cur, :bal);"
        done
        echo "UPDATE accounts SET balance = :newbal WHERE id = :k3 RETURNING balance \\gset upd_"
        echo "DELETE FROM accounts WHERE id = :k7 RETURNING id \\gset del_"
        echo "\\shell echo :upd_balance :del_id > $returned"
    } >"$script"
    step "pgbench -M extended"
    run_or_fail "pgbench -M extended (10 INSERTs, UPDATE, DELETE)" sg_bench extended "$script" -t 1 \
        -D base="$KB" -D owner=autocommit -D cur=USD -D bal=10.00 -D newbal=77.70
    expect_equal "UPDATE ... RETURNING balance / DELETE ... RETURNING id" "77.70 $((KB + 7))" "$(cat "$returned" 2>/dev/null)"

    step "checking the primaries"
    local expected=""
    for k in $(seq 0 9); do
        case $k in
        3) expected+="$((KB + k))|77.70"$'\n' ;;
        7) ;;
        *) expected+="$((KB + k))|10.00"$'\n' ;;
        esac
    done
    on_primaries "SELECT id, balance FROM accounts WHERE id BETWEEN $KB AND $((KB + 999)) ORDER BY id"
    expect_equal "rows on the primaries" "${expected%$'\n'}" "$OUT"
}

# tx_variant_psql FINISH K: BEGIN; UPDATE of account K as the first
# statement; 5 INSERTs; FINISH (COMMIT or ROLLBACK). Simple protocol, one
# Query message each, command tags checked. (The prepared UPDATE is the
# pgbench variant: psql 15 has no protocol-level prepare.)
tx_variant_psql() {
    local finish=$1 k=$2 i
    {
        echo "BEGIN;"
        echo "UPDATE accounts SET balance = 42.50 WHERE id = $k;"
        for i in 1 2 3 4 5; do
            echo "INSERT INTO accounts (id, owner, currency, balance) VALUES ($((k + i)), 'tx psql', 'EUR', 5.00);"
        done
        echo "$finish;"
    } >"$SCEN_DIR/psql_$k.sql"
    step "psql transaction ending in $finish"
    run_or_fail "psql transaction ($finish)" sg_psql -f "$SCEN_DIR/psql_$k.sql"
    expect_equal "psql command tags" \
        "BEGIN"$'\n'"UPDATE 1"$'\n'"$(printf 'INSERT 0 1\n%.0s' 1 2 3 4 5)"$'\n'"$finish" "$OUT"
}

# tx_variant_pgbench FINISH K: the same with named prepared statements
# (pgbench -M prepared: Parse/Describe once, then Bind/Execute), the UPDATE
# first; RETURNING \gset fails unless it hit one row.
tx_variant_pgbench() {
    local finish=$1 k=$2 i returned="$SCEN_DIR/returned_$2"
    {
        for i in 1 2 3 4 5; do echo "\\set k$i :k + $i"; done
        echo "BEGIN;"
        echo "UPDATE accounts SET balance = :newbal WHERE id = :k RETURNING balance \\gset upd_"
        for i in 1 2 3 4 5; do
            echo "INSERT INTO accounts (id, owner, currency, balance) VALUES (:k$i, 'tx pgbench', 'EUR', 5.00);"
        done
        echo "$finish;"
        echo "\\shell echo :upd_balance > $returned"
    } >"$SCEN_DIR/pgbench_$k.pgb"
    step "pgbench -M prepared transaction ending in $finish"
    run_or_fail "pgbench -M prepared transaction ($finish)" sg_bench prepared "$SCEN_DIR/pgbench_$k.pgb" -t 1 \
        -D k="$k" -D newbal=42.50
    expect_equal "UPDATE ... RETURNING balance, first statement of the transaction" "42.50" "$(cat "$returned" 2>/dev/null)"
}

# transaction_scenario FINISH: both variants, then the primaries.
transaction_scenario() {
    local finish=$1 a=$KB b=$((KB + 10))
    step "inserting the two rows to update"
    insert_accounts_via_proxy "$a" "$a"
    insert_accounts_via_proxy "$b" "$b"
    (tx_variant_psql "$finish" "$a")
    (tx_variant_pgbench "$finish" "$b")

    step "checking the primaries"
    local expected="" k i
    for k in "$a" "$b"; do
        if [[ "$finish" == COMMIT ]]; then
            expected+="$k|42.50"$'\n'
            for i in 1 2 3 4 5; do expected+="$((k + i))|5.00"$'\n'; done
        else
            expected+="$(expected_accounts "$k" "$k" | cut -d'|' -f1,4)"$'\n'
        fi
    done
    on_primaries "SELECT id, balance FROM accounts WHERE id BETWEEN $KB AND $((KB + 999)) ORDER BY id"
    expect_equal "rows on the primaries after $finish" "${expected%$'\n'}" "$OUT"
}

# 2. tx_commit: the first statement of an explicit transaction (an UPDATE:
# plain with psql, prepared with pgbench) is not lost and reports 1 row;
# COMMIT keeps all 6 changes of each variant.
sc_tx_commit() {
    transaction_scenario COMMIT
}

# 3. tx_rollback: the same transaction rolled back leaves nothing.
sc_tx_rollback() {
    transaction_scenario ROLLBACK
}

# place_keys FROM COUNT: in `sharded`, inserts probe accounts through the
# proxy and finds their shard directly; SHARD_KEYS_0 and SHARD_KEYS_1 hold
# keys of the first and the second primary (probes deleted again).
# Elsewhere: consecutive keys in both.
place_keys() {
    local from=$1 count=$2 k
    SHARD_KEYS_0=()
    SHARD_KEYS_1=()
    if [[ "$SG_TOPOLOGY" != sharded || ${#PRIMARIES[@]} -lt 2 ]]; then
        for ((k = from; k < from + count; k += 2)); do
            SHARD_KEYS_0+=("$k")
            SHARD_KEYS_1+=("$((k + 1))")
        done
        return
    fi
    step "placing probe keys on the shards"
    insert_accounts_via_proxy "$from" $((from + count - 1))
    run_or_fail "probe keys on ${PRIMARIES[0]}" primary_psql "${PRIMARIES[0]}" \
        -c "SELECT id FROM accounts WHERE id BETWEEN $from AND $((from + count - 1)) ORDER BY id"
    SHARD_KEYS_0=($OUT)
    run_or_fail "probe keys on ${PRIMARIES[1]}" primary_psql "${PRIMARIES[1]}" \
        -c "SELECT id FROM accounts WHERE id BETWEEN $from AND $((from + count - 1)) ORDER BY id"
    SHARD_KEYS_1=($OUT)
    local addr
    for addr in "${PRIMARIES[@]}"; do
        run_or_fail "deleting probe keys on $addr" primary_psql "$addr" \
            -c "DELETE FROM accounts WHERE id BETWEEN $from AND $((from + count - 1))"
    done
    if ((${#SHARD_KEYS_0[@]} < 3 || ${#SHARD_KEYS_1[@]} < 3)); then
        fail "probe keys $from..$((from + count - 1)) inserted through the proxy: ${#SHARD_KEYS_0[@]} on ${PRIMARIES[0]}, ${#SHARD_KEYS_1[@]} on ${PRIMARIES[1]}; need 3 on each"
    fi
}

# 4. savepoint: SAVEPOINT / ROLLBACK TO / RELEASE with a, b on different
# shards and c on b's shard: a and c committed, b not. Then psql's own
# nested transactions (ON_ERROR_ROLLBACK: psql wraps every statement of a
# transaction in SAVEPOINT pg_psql_temporary_savepoint / RELEASE and rolls
# back to it on error): a duplicate key in the middle does not lose the
# transaction.
sc_savepoint() {
    place_keys $((KB + 900)) 16
    local a=${SHARD_KEYS_0[0]} b=${SHARD_KEYS_1[0]} c=${SHARD_KEYS_1[1]}
    local d=${SHARD_KEYS_0[1]} e=${SHARD_KEYS_1[2]}
    local ins="INSERT INTO accounts (id, owner, currency, balance) VALUES"
    step "SAVEPOINT / ROLLBACK TO / RELEASE"
    (
        run_or_fail "savepoint transaction" sg_psql \
            -c "BEGIN" -c "$ins ($a, 'sp a', 'USD', 1)" -c "SAVEPOINT s" -c "$ins ($b, 'sp b', 'USD', 2)" \
            -c "ROLLBACK TO SAVEPOINT s" -c "$ins ($c, 'sp c', 'USD', 3)" -c "RELEASE SAVEPOINT s" -c "COMMIT"
        expect_equal "command tags" "$(printf '%s\n' BEGIN 'INSERT 0 1' SAVEPOINT 'INSERT 0 1' ROLLBACK 'INSERT 0 1' RELEASE COMMIT)" "$OUT"
    )

    step "psql ON_ERROR_ROLLBACK"
    printf '%s\n' "BEGIN;" "$ins ($d, 'sp d', 'USD', 4);" "$ins ($d, 'sp d again', 'USD', 4);" \
        "$ins ($e, 'sp e', 'USD', 5);" "COMMIT;" >"$SCEN_DIR/on_error_rollback.sql"
    OUT=$(sg_psql -v ON_ERROR_STOP=0 -v ON_ERROR_ROLLBACK=on -f "$SCEN_DIR/on_error_rollback.sql" 2>"$SCEN_DIR/oer.err")
    expect_equal "ON_ERROR_ROLLBACK command tags (stderr: $(error_text "$SCEN_DIR/oer.err"))" \
        "$(printf '%s\n' BEGIN 'INSERT 0 1' 'INSERT 0 1' COMMIT)" "$OUT"
    grep -q '23505' "$SCEN_DIR/oer.err" || problem "the duplicate INSERT did not fail with 23505: $(error_text "$SCEN_DIR/oer.err")"

    step "checking the primaries"
    on_primaries "SELECT id, owner FROM accounts WHERE id BETWEEN $KB AND $((KB + 999)) ORDER BY id"
    local expected
    expected=$(printf '%s\n' "$a|sp a" "$c|sp c" "$d|sp d" "$e|sp e" | sort -t'|' -k1,1n)
    expect_equal "rows on the primaries (a=$a, b=$b absent, c=$c, d=$d, e=$e)" "$expected" "$OUT"
}

# 5. error_in_tx: after a failed statement the transaction is aborted
# (25P02) until ROLLBACK, and the connection works afterwards. psql with
# ON_ERROR_STOP off goes on after errors; :SQLSTATE is the last result's.
sc_error_in_tx() {
    local a=$KB
    local ins="INSERT INTO accounts (id, owner, currency, balance) VALUES ($a, 'error in tx', 'USD', 1);"
    printf '%s\n' "BEGIN;" "$ins" '\echo insert_a :SQLSTATE' "$ins" '\echo duplicate :SQLSTATE' \
        "SELECT 1;" '\echo aborted :SQLSTATE' "ROLLBACK;" "SELECT 1;" '\echo after :SQLSTATE' >"$SCEN_DIR/error.sql"
    step "transaction with a duplicate key"
    OUT=$(sg_psql -v ON_ERROR_STOP=0 -f "$SCEN_DIR/error.sql" 2>"$SCEN_DIR/error.err")
    expect_equal "psql output (stderr: $(error_text "$SCEN_DIR/error.err"))" \
        "$(printf '%s\n' BEGIN 'INSERT 0 1' 'insert_a 00000' 'duplicate 23505' 'aborted 25P02' ROLLBACK 1 'after 00000')" "$OUT"

    step "checking the primaries"
    count_on_primaries "SELECT count(*) FROM accounts WHERE id = $a"
    expect_equal "rows of key $a on the primaries after ROLLBACK" "0" "$OUT"
}

# 6. prepared_reuse: one named prepared statement (pgbench -M prepared:
# Parse once per connection, then Bind/Execute) run 10 times on one
# connection with 10 different keys; \gset fails unless it returns a row.
sc_prepared_reuse() {
    insert_accounts_via_proxy "$KB" $((KB + 9))
    step "waiting until the rows are visible through the proxy"
    wait_for_proxy_count "SELECT count(*) FROM accounts WHERE id BETWEEN $KB AND $((KB + 9))" 10

    local script="$SCEN_DIR/prepared.pgb" returned="$SCEN_DIR/returned"
    {
        echo "SELECT id, owner, currency, balance FROM accounts WHERE id = :k \\gset r_"
        # \shell substitutes only arguments that start with a colon.
        echo "\\shell echo :r_id :r_owner :r_currency :r_balance >> $returned"
        echo "\\set k :k + 1"
    } >"$script"
    step "pgbench -M prepared, 10 executions"
    run_or_fail "pgbench -M prepared (10 SELECTs by key)" sg_bench prepared "$script" -t 10 -D k="$KB"
    expect_equal "rows returned by the prepared SELECT" "$(expected_accounts "$KB" $((KB + 9)) | tr '|' ' ')" "$(cat "$returned" 2>/dev/null)"
}

# 7. batch: libpq pipeline mode (pgbench \startpipeline/\endpipeline):
# 50 INSERTs with unnamed statements (-M extended) and 50 with named
# prepared statements (-M prepared), each pipeline one Sync; then a
# pipeline of 100 UPDATEs inside BEGIN ... ROLLBACK.
sc_batch() {
    local k
    batch_insert_script() { # FIRST_OFFSET
        for k in $(seq 0 49); do echo "\\set k$k :base + $(($1 + k))"; done
        echo "\\startpipeline"
        for k in $(seq 0 49); do
            echo "INSERT INTO accounts (id, owner, currency, balance) VALUES (:k$k, :owner, 'EUR', 1.00);"
        done
        echo "\\endpipeline"
    }
    batch_insert_script 0 >"$SCEN_DIR/extended.pgb"
    batch_insert_script 100 >"$SCEN_DIR/prepared.pgb"
    step "pipeline of 50 INSERTs, -M extended"
    (run_or_fail "pgbench -M extended pipeline of 50 INSERTs" sg_bench extended "$SCEN_DIR/extended.pgb" -t 1 -D base="$KB" -D owner="batch extended")
    step "pipeline of 50 INSERTs, -M prepared"
    (run_or_fail "pgbench -M prepared pipeline of 50 INSERTs" sg_bench prepared "$SCEN_DIR/prepared.pgb" -t 1 -D base="$KB" -D owner="batch prepared")

    step "checking the primaries"
    local expected=""
    for k in $(seq 0 49); do expected+="$((KB + k))|batch extended|1.00"$'\n'; done
    for k in $(seq 100 149); do expected+="$((KB + k))|batch prepared|1.00"$'\n'; done
    expected=${expected%$'\n'}
    # Each key exactly once: a key duplicated on two shards would show twice.
    local rows_query="SELECT id, owner, balance FROM accounts WHERE id BETWEEN $KB AND $((KB + 999)) ORDER BY id"
    on_primaries "$rows_query"
    expect_equal "rows on the primaries after the pipelines" "$expected" "$OUT"

    step "pipeline of UPDATEs in a transaction, rolled back"
    local returned="$SCEN_DIR/updated"
    {
        for k in $(seq 0 49) $(seq 100 149); do echo "\\set k$k :base + $k"; done
        echo "BEGIN;"
        echo "\\startpipeline"
        for k in $(seq 0 49) $(seq 100 149); do
            echo "UPDATE accounts SET balance = 999.00 WHERE id = :k$k;"
        done
        echo "\\endpipeline"
        echo "SELECT count(*) AS n FROM accounts WHERE id BETWEEN :base AND :base + 999 AND balance = 999.00 \\gset"
        echo "ROLLBACK;"
        echo "\\shell echo :n > $returned"
    } >"$SCEN_DIR/update.pgb"
    (run_or_fail "pgbench -M extended pipeline of 100 UPDATEs + ROLLBACK" sg_bench extended "$SCEN_DIR/update.pgb" -t 1 -D base="$KB")
    expect_equal "rows updated, seen inside the transaction" "100" "$(cat "$returned" 2>/dev/null)"
    on_primaries "$rows_query"
    expect_equal "rows on the primaries after the ROLLBACK" "$expected" "$OUT"
}

# 8. returning: INSERT ... RETURNING id into ledger (identity column) and
# UPDATE ... RETURNING balance, through psql (simple protocol) and pgbench
# -M extended ($n parameters); the returned values are on the primaries.
sc_returning() {
    local acct=$KB
    insert_accounts_via_proxy "$acct" "$acct"
    step "psql INSERT/UPDATE ... RETURNING"
    run_or_fail "psql RETURNING" sg_psql -q \
        -c "INSERT INTO ledger (account_id, amount, note) VALUES ($acct, 12.34, 'psql') RETURNING id" \
        -c "UPDATE accounts SET balance = balance + 5.25 WHERE id = $acct RETURNING balance"
    local -a returned=($OUT)
    local ledger_id=${returned[0]:-} balance=${returned[1]:-}
    if [[ ${#returned[@]} -ne 2 || ! "$ledger_id" =~ ^[0-9]+$ ]]; then
        fail "expected a ledger id and a balance from RETURNING, got '$OUT'"
    fi
    local want_balance
    want_balance=$(expected_accounts "$acct" "$acct" | awk -F'|' '{ printf "%.2f", $4 + 5.25 }')
    expect_equal "UPDATE ... RETURNING balance" "$want_balance" "$balance"

    step "pgbench -M extended INSERT ... RETURNING"
    local script="$SCEN_DIR/returning.pgb" file="$SCEN_DIR/returned"
    {
        echo "INSERT INTO ledger (account_id, amount, note) VALUES (:acct, :amount, 'pgbench') RETURNING id, amount \\gset r_"
        echo "\\shell echo :r_id :r_amount > $file"
    } >"$script"
    run_or_fail "pgbench -M extended INSERT ... RETURNING" sg_bench extended "$script" -t 1 -D acct="$acct" -D amount=-7.50
    local -a bench=($(cat "$file" 2>/dev/null))
    [[ "${bench[1]:-}" == "-7.50" ]] || problem "pgbench RETURNING amount: expected -7.50, found '${bench[*]}'"

    step "checking the primaries"
    on_primaries "SELECT account_id, id, amount, note FROM ledger WHERE account_id = $acct ORDER BY id"
    local expected
    expected=$(printf '%s\n' "$acct|$ledger_id|12.34|psql" "$acct|${bench[0]:-?}|-7.50|pgbench" | sort -t'|' -k2,2n)
    expect_equal "ledger rows on the primaries" "$expected" "$(sort -t'|' -k2,2n <<<"$OUT")"
    on_primaries "SELECT balance FROM accounts WHERE id = $acct"
    expect_equal "balance on the primaries" "$balance" "$OUT"
}

# load_cursor_rows: the 120 accounts of cursor_fetch, through the proxy
# unless the primaries hold them already, and in the reference database;
# then until all are visible through the proxy.
load_cursor_rows() {
    count_on_primaries "SELECT count(*) FROM accounts WHERE id BETWEEN $CUR_LO AND $CUR_HI"
    if [[ "$OUT" != 120 ]]; then
        step "loading the 120 accounts through the proxy"
        local addr
        for addr in "${PRIMARIES[@]}"; do
            run_or_fail "clearing $CUR_LO..$CUR_HI on $addr" primary_psql "$addr" \
                -c "DELETE FROM accounts WHERE id BETWEEN $CUR_LO AND $CUR_HI"
        done
        insert_accounts_via_proxy "$CUR_LO" "$CUR_HI"
    fi
    ref_upsert_accounts "$CUR_LO" "$CUR_HI"
    step "waiting until the 120 rows are visible through the proxy"
    wait_for_proxy_count "SELECT count(*) FROM accounts WHERE id BETWEEN $CUR_LO AND $CUR_HI" 120
}

# 9. cursor_fetch: psql with FETCH_COUNT 7 reads through a cursor (BEGIN;
# DECLARE _psql_cursor NO SCROLL CURSOR; FETCH FORWARD 7 ... ; CLOSE;
# COMMIT); then a SQL cursor with FETCH ALL.
sc_cursor_fetch() {
    load_cursor_rows
    local query="SELECT id, owner FROM accounts WHERE id BETWEEN $CUR_LO AND $CUR_HI ORDER BY id"
    run_or_fail "reference query" ref_psql -c "$query"
    local reference=$OUT
    step "psql FETCH_COUNT 7"
    run_or_fail "psql FETCH_COUNT=7 read" sg_psql -q -v FETCH_COUNT=7 -c "$query"
    expect_equal "rows read 7 at a time through a cursor" "$reference" "$OUT"

    step "SQL cursor"
    run_or_fail "DECLARE/FETCH ALL/CLOSE" sg_psql -q -c "BEGIN" \
        -c "DECLARE c CURSOR FOR SELECT count(*) FROM accounts WHERE id BETWEEN $CUR_LO AND $CUR_HI" \
        -c "FETCH ALL FROM c" -c "CLOSE c" -c "COMMIT"
    expect_equal "FETCH ALL FROM c" "120" "$OUT"
}

# range_lines DELIMITER LO HI: lines of COPY output whose first field (the
# id) is in [LO, HI], by id.
range_lines() {
    awk -F"$1" -v lo="$2" -v hi="$3" '$1 >= lo && $1 <= hi' | sort -t"$1" -k1,1n -s
}

# copy_roundtrip FILE OPTIONS DELIMITER: COPY FILE in through the proxy
# (psql \copy: COPY FROM STDIN, PQputCopyData), then COPY out both a query
# and the whole table (PQgetCopyData), compared with the reference; and
# the rows on the primaries compared with the reference.
copy_roundtrip() {
    local file=$1 options=$2 delim=$3 lo=$KB hi=$((KB + 19))
    local select="SELECT id, owner, currency, balance FROM accounts WHERE id BETWEEN $lo AND $hi ORDER BY id"
    ref_upsert_copy_file "$file" "$options"

    step "COPY FROM STDIN through the proxy"
    run_or_fail "\\copy accounts from file ($options)" sg_psql -c "\\copy accounts (id, owner, currency, balance) from '$file' with ($options)"
    expect_equal "COPY FROM command tag" "COPY 20" "$OUT"

    step "COPY (query) TO STDOUT"
    run_or_fail "reference COPY (query)" ref_psql -c "\\copy ($select) to stdout with ($options)"
    local reference=$OUT
    eventually_equals "$reference" sg_psql -q -c "\\copy ($select) to stdout with ($options)" ||
        problem "COPY ($select) TO STDOUT through the proxy: $(mismatch "$reference" "$OUT")$LAST_ERR"

    step "COPY accounts TO STDOUT"
    run_or_fail "reference COPY accounts" ref_psql -c "\\copy accounts to stdout with ($options)"
    local reference_table
    reference_table=$(range_lines "$delim" "$lo" "$hi" <<<"$OUT")
    expect_equal "reference COPY accounts TO STDOUT holds the 20 rows" 20 "$(grep -c '' <<<"$reference_table")"
    copy_table_range() {
        sg_psql -q -c "\\copy accounts to stdout with ($options)" | range_lines "$delim" "$lo" "$hi"
    }
    eventually_equals "$reference_table" copy_table_range ||
        problem "COPY accounts TO STDOUT through the proxy, rows $lo..$hi: $(mismatch "$reference_table" "$OUT")$LAST_ERR"

    step "checking the primaries"
    on_primaries "$select"
    local on_primaries_rows=$OUT
    run_or_fail "reference rows" ref_psql -c "$select"
    expect_equal "rows on the primaries" "$OUT" "$on_primaries_rows"
}

# 10. copy_text: text format with escapes (backslash, tab, non-ASCII).
sc_copy_text() {
    local file="$SCEN_DIR/accounts.txt" k owner
    for k in $(seq 0 19); do
        case $k in
        3) owner='back\\slash' ;;
        5) owner='tab\there' ;;
        7) owner='ünïcødé €' ;;
        *) owner="copy text $k" ;;
        esac
        printf '%d\t%s\t%s\t%d.25\n' $((KB + k)) "$owner" "${CURRENCIES[k % 4]}" "$k"
    done >"$file"
    copy_roundtrip "$file" "format text" $'\t'
}

# 11. copy_csv: CSV with quoted fields holding a comma and a quote.
sc_copy_csv() {
    local file="$SCEN_DIR/accounts.csv" k owner
    for k in $(seq 0 19); do
        case $k in
        2) owner='"Smith, John"' ;;
        4) owner='"say ""hi"", then go"' ;;
        *) owner="csv $k" ;;
        esac
        printf '%d,%s,%s,%d.50\n' $((KB + k)) "$owner" "${CURRENCIES[k % 4]}" "$k"
    done >"$file"
    copy_roundtrip "$file" "format csv" ','
}

# binary_copy_rows FILE LO HI: the tuples of a binary COPY file whose first
# field (int8 id) is in [LO, HI], in hex, by id; read as a COPY consumer
# does (up to the end-of-data marker), then a "!!" line for anything odd.
binary_copy_rows() {
    python3 - "$@" <<'EOF'
import struct, sys
path, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = open(path, "rb").read()
sig = b"PGCOPY\n\xff\r\n\0"
rows, problem, count = [], None, 0
if not data.startswith(sig):
    problem = f"not a binary COPY stream ({len(data)} bytes)"
else:
    pos = 19 + struct.unpack("!I", data[15:19])[0]
    try:
        while True:
            if data.startswith(sig, pos):
                problem = f"a second COPY header at byte {pos}, after {count} tuples"
                break
            (nfields,) = struct.unpack("!h", data[pos:pos + 2])
            if nfields == -1:
                if pos + 2 < len(data):
                    problem = f"{len(data) - pos - 2} bytes after the end-of-data marker"
                break
            start, pos, count = pos, pos + 2, count + 1
            fields = []
            for _ in range(nfields):
                (length,) = struct.unpack("!i", data[pos:pos + 4])
                pos += 4
                fields.append(data[pos:pos + max(length, 0)])
                pos += max(length, 0)
            key = struct.unpack("!q", fields[0])[0]
            if lo <= key <= hi:
                rows.append((key, data[start:pos].hex()))
    except struct.error:
        problem = f"truncated or unparsable at byte {pos}"
for key, tup in sorted(rows):
    print(key, tup)
if problem:
    print("!!", problem)
EOF
}

# describe_binary_copy FILE: its size, and where the COPY headers and
# end-of-data markers are, counted in tuples (for failure details).
describe_binary_copy() {
    python3 - "$1" <<'EOF'
import struct, sys
data = open(sys.argv[1], "rb").read()
sig = b"PGCOPY\n\xff\r\n\0"
pos, tuples, events = 0, 0, []
try:
    while pos < len(data):
        if data.startswith(sig, pos):
            events.append(f"header after {tuples} tuples")
            pos += 19 + struct.unpack("!I", data[pos + 15:pos + 19])[0]
            continue
        (n,) = struct.unpack("!h", data[pos:pos + 2])
        pos += 2
        if n == -1:
            events.append(f"end marker after {tuples} tuples")
            continue
        tuples += 1
        for _ in range(n):
            (length,) = struct.unpack("!i", data[pos:pos + 4])
            pos += 4 + max(length, 0)
except struct.error:
    events.append(f"unparsable at byte {pos}")
print(f"{len(data)} bytes: " + ", ".join(events))
EOF
}

# 12. copy_binary: the reference's rows copied out in binary, the file
# copied in through the proxy (COPY FROM STDIN (FORMAT binary)), then
# binary COPY out of a query (byte for byte) and of the whole table.
sc_copy_binary() {
    local lo=$KB hi=$((KB + 19))
    local select="SELECT id, owner, currency, balance FROM accounts WHERE id BETWEEN $lo AND $hi ORDER BY id"
    local ref_file="$SCEN_DIR/reference.bin" out_file="$SCEN_DIR/proxy.bin"
    ref_upsert_accounts "$lo" "$hi"
    run_or_fail "reference binary COPY out" ref_psql -c "\\copy ($select) to '$ref_file' with (format binary)"

    step "binary COPY FROM STDIN through the proxy"
    run_or_fail "\\copy accounts from binary file" sg_psql -c "\\copy accounts (id, owner, currency, balance) from '$ref_file' with (format binary)"
    expect_equal "COPY FROM command tag" "COPY 20" "$OUT"

    step "binary COPY (query) TO STDOUT"
    copy_query_out() {
        sg_psql -q -c "\\copy ($select) to '$out_file' with (format binary)" && od -An -tx1 "$out_file" | md5sum
    }
    local reference_md5
    reference_md5=$(od -An -tx1 "$ref_file" | md5sum)
    eventually_equals "$reference_md5" copy_query_out ||
        problem "binary COPY (query) TO STDOUT through the proxy differs from the reference (reference: $(describe_binary_copy "$ref_file"); proxy: $(describe_binary_copy "$out_file" 2>&1)); rows: $(mismatch "$(binary_copy_rows "$ref_file" "$lo" "$hi")" "$(binary_copy_rows "$out_file" "$lo" "$hi" 2>&1)")$LAST_ERR"

    step "binary COPY accounts TO STDOUT"
    run_or_fail "reference binary COPY accounts" ref_psql -c "\\copy accounts to '$SCEN_DIR/reference_table.bin' with (format binary)"
    local reference_rows
    reference_rows=$(binary_copy_rows "$SCEN_DIR/reference_table.bin" "$lo" "$hi")
    copy_table_out() {
        sg_psql -q -c "\\copy accounts to '$SCEN_DIR/proxy_table.bin' with (format binary)" &&
            binary_copy_rows "$SCEN_DIR/proxy_table.bin" "$lo" "$hi"
    }
    eventually_equals "$reference_rows" copy_table_out ||
        problem "binary COPY accounts TO STDOUT through the proxy, rows $lo..$hi: $(mismatch "$reference_rows" "$OUT") (proxy's stream: $(describe_binary_copy "$SCEN_DIR/proxy_table.bin" 2>&1))$LAST_ERR"

    step "checking the primaries"
    on_primaries "$select"
    expect_equal "rows on the primaries" "$(expected_accounts "$lo" "$hi")" "$OUT"
}

# 13. listen_notify: psql A LISTENs and then runs a statement every 0.5 s
# (psql prints the notifications libpq collected after each statement);
# psql B sends NOTIFY and pg_notify.
sc_listen_notify() {
    local channel="chan_$SG_KEY_BASE" a_out="$SCEN_DIR/a.out" a_err="$SCEN_DIR/a.err"
    local listening="$SCEN_DIR/listening" stop="$SCEN_DIR/stop" i
    {
        echo "LISTEN $channel;"
        echo "\\! touch $listening"
        for i in $(seq 1 30); do
            echo "SELECT 'poll $i', pg_backend_pid();"
            echo "\\set stop \`test -e $stop && echo true || echo false\`"
            echo "\\if :stop"
            echo "\\q"
            echo "\\endif"
            echo "\\! sleep 0.5"
        done
    } >"$SCEN_DIR/listener.sql"
    step "connection A: LISTEN"
    # psql itself in the background (not a function's subshell), so that
    # its pid is the one killed at the end.
    "$PSQL" "${PSQL_FLAGS[@]}" -d "$PROXY_CONNINFO" -f "$SCEN_DIR/listener.sql" >"$a_out" 2>"$a_err" &
    local a_pid=$!
    BG_PIDS+=("$a_pid")
    local deadline=$((SECONDS + 10))
    until [[ -e "$listening" ]]; do
        if ! kill -0 "$a_pid" 2>/dev/null || ((SECONDS >= deadline)); then
            fail "connection A did not get past LISTEN $channel within 10 s: $(error_text "$a_err")"
        fi
        sleep 0.05
    done

    step "connection B: NOTIFY and pg_notify"
    run_or_fail "NOTIFY from connection B" sg_psql -q -c "NOTIFY $channel, 'hello'" -c "SELECT pg_notify('$channel', 'world')" \
        -c "SELECT 'sender', pg_backend_pid()"
    local b_out=$OUT

    step "waiting for the notifications on A"
    local hello="Asynchronous notification \"$channel\" with payload \"hello\" received from server process with PID"
    local world="Asynchronous notification \"$channel\" with payload \"world\" received from server process with PID"
    local t0=$EPOCHREALTIME
    deadline=$((SECONDS + 10))
    until grep -qF "$hello" "$a_out" && grep -qF "$world" "$a_out"; do
        ((SECONDS >= deadline)) && break
        sleep 0.1
    done
    touch "$stop"
    local waited
    waited=$(elapsed_since "$t0")
    if ! grep -qF "$hello" "$a_out" || ! grep -qF "$world" "$a_out"; then
        # Which server sessions ran A's statements and B's, and who got what.
        local a_pids a_got b_pid b_got
        a_pids=$(grep '^poll ' "$a_out" | cut -d'|' -f2 | sort -u | paste -sd, -)
        a_got=$(grep -o 'with payload "[^"]*"' "$a_out" | paste -sd, -)
        b_pid=$(grep '^sender|' <<<"$b_out" | cut -d'|' -f2)
        b_got=$(grep -o 'with payload "[^"]*"' <<<"$b_out" | paste -sd, -)
        fail "connection A did not receive both notifications within 10 s (A received: ${a_got:-nothing}; its polls ran on server pids ${a_pids:-none}; the sender B ran on server pid ${b_pid:-?} and itself received: ${b_got:-nothing}) $(error_text "$a_err")"
    fi
    note "both notifications after ${waited} s"
}

# 14. cancel_timeout: psql sends a CancelRequest (PQcancel, on a new
# connection with the BackendKeyData the proxy gave) when it gets SIGINT
# during a query; then statement_timeout set with SET.
sc_cancel_timeout() {
    local k=$KB out="$SCEN_DIR/cancel.out" err="$SCEN_DIR/cancel.err"
    step "SELECT pg_sleep(30), SIGINT after 0.5 s"
    # After a cancelled -c, psql suppresses printing rows but still prints
    # command tags: the INSERT after it shows the connection still works.
    # A background job of a non-interactive shell ignores SIGINT: psql
    # must get it with its default disposition to install its handler.
    env --default-signal=INT "$PSQL" "${PSQL_FLAGS[@]}" -d "$PROXY_CONNINFO" -v ON_ERROR_STOP=0 -c '\echo connected' -c 'SELECT pg_sleep(30)' \
        -c "INSERT INTO accounts (id, owner, currency, balance) VALUES ($k, 'after cancel', 'USD', 0)" \
        >"$out" 2>"$err" &
    local pid=$!
    BG_PIDS+=("$pid")
    wait_for_line "$out" connected 10 || fail "psql did not connect within 10 s: $(error_text "$err")"
    sleep 0.5
    local t0=$EPOCHREALTIME
    kill -INT "$pid"
    local deadline=$((SECONDS + 6))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.05
    done
    local took
    took=$(elapsed_since "$t0")
    if kill -0 "$pid" 2>/dev/null; then
        problem "pg_sleep(30) still running 5 s after psql sent the cancel request; psql said: $(error_text "$err")"
    else
        wait "$pid"
        if ! grep -q '57014' "$err"; then
            problem "cancel: expected ERROR 57014 (canceling statement due to user request), psql said: $(error_text "$err")"
        elif awk -v t="$took" 'BEGIN { exit !(t > 5) }'; then
            problem "cancel: 57014 only after $took s"
        fi
        expect_equal "statement after the cancelled one (stderr: $(error_text "$err"))" \
            "$(printf '%s\n' connected 'INSERT 0 1')" "$(cat "$out")"
        count_on_primaries "SELECT count(*) FROM accounts WHERE id = $k AND owner = 'after cancel'"
        expect_equal "row inserted after the cancel, on the primaries" 1 "$OUT"
    fi

    step "SET statement_timeout = 300; SELECT pg_sleep(5)"
    printf '%s\n' "SET statement_timeout = 300;" "SELECT pg_sleep(5);" '\echo sleep :SQLSTATE' \
        "RESET statement_timeout;" "SELECT 1;" '\echo after :SQLSTATE' >"$SCEN_DIR/timeout.sql"
    t0=$EPOCHREALTIME
    OUT=$(sg_psql -v ON_ERROR_STOP=0 -f "$SCEN_DIR/timeout.sql" 2>"$SCEN_DIR/timeout.err")
    took=$(elapsed_since "$t0")
    expect_equal "statement_timeout (stderr: $(error_text "$SCEN_DIR/timeout.err"))" \
        "$(printf '%s\n' SET 'sleep 57014' RESET 1 'after 00000')" "$OUT"
    if awk -v t="$took" 'BEGIN { exit !(t >= 5) }'; then
        problem "statement_timeout: the script took $took s, pg_sleep(5) was not cut short"
    fi
}

# 15. types: one row of every column type sent as text parameters (pgbench
# -M extended: parameters of unspecified type, the server infers them from
# the columns), one row of NULLs; read back by key in a transaction.
sc_types() {
    local id=$KB id_null=$((KB + 1))
    local cols=(j jb ints texts n ts d b u f flag)
    local -A sent=(
        [j]='{"b":[1,2,{"c":null}],"a":"é"}'
        [jb]='{"a": {"k": true}, "b": [1, 2]}'
        [ints]='{1,NULL,-3,2147483647}'
        [texts]='{alpha,"be,ta",NULL,"q\"uote","sp ace"}'
        [n]='12345678901234567890.1234567890'
        [ts]='2024-02-29 13:45:56.123456+00'
        [d]='2024-02-29'
        [b]="$(python3 -c 'print("\\x" + bytes(range(256)).hex())')"
        [u]='a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'
        [f]='3.141592653589793'
        [flag]='t'
    )
    local c defines=() placeholders=() nulls=()
    for c in "${cols[@]}"; do
        defines+=(-D "$c=${sent[$c]}")
        placeholders+=(":$c")
        nulls+=(NULL)
    done
    local collist
    collist=$(IFS=,; echo "${cols[*]}")
    {
        echo "INSERT INTO typed (id, $collist) VALUES (:id, $(IFS=,; echo "${placeholders[*]}"));"
        echo "INSERT INTO typed (id, $collist) VALUES (:id_null, $(IFS=,; echo "${nulls[*]}"));"
    } >"$SCEN_DIR/types.pgb"
    step "pgbench -M extended INSERT of typed values"
    run_or_fail "pgbench -M extended INSERT INTO typed" sg_bench extended "$SCEN_DIR/types.pgb" -t 1 \
        -D id="$id" -D id_null="$id_null" "${defines[@]}"

    step "reading back in a transaction"
    run_or_fail "reading typed rows" sg_psql -q -F $'\x1f' -c "BEGIN" -c "SET LOCAL TimeZone = 'UTC'" \
        -c "SELECT $collist FROM typed WHERE id = $id" -c "SELECT $collist FROM typed WHERE id = $id_null" -c "COMMIT"
    local row1 row2
    {
        IFS= read -r row1
        IFS= read -r row2
    } <<<"$OUT"
    local -a got got_null
    IFS=$'\x1f' read -r -a got <<<"$row1"
    IFS=$'\x1f' read -r -a got_null <<<"$row2"
    local i
    for i in "${!cols[@]}"; do
        c=${cols[$i]}
        [[ "${got[$i]:-<missing>}" == "${sent[$c]}" ]] ||
            problem "column $c: sent '${sent[$c]:0:80}', read back '${got[$i]:-<missing>}'"
        [[ "${got_null[$i]:-<missing>}" == "<NULL>" ]] ||
            problem "column $c of the NULL row: read back '${got_null[$i]:-<missing>}'"
    done
}

# 16. metadata: psql's \d accounts (its pg_catalog queries: relation
# lookup by regex, attributes, indexes, constraints) and an
# information_schema query.
sc_metadata() {
    step "\\d accounts"
    run_or_fail "\\d accounts" sg_psql -c '\pset tuples_only off' -c '\d accounts'
    local columns
    columns=$(grep -E '^(id|owner|currency|balance)\|' <<<"$OUT")
    expect_equal "columns of \\d accounts" "$(printf '%s\n' 'id|bigint||not null|' 'owner|text||not null|' \
        'currency|text||not null|' 'balance|numeric(14,2)||not null|0')" "$columns"
    grep -q '"accounts_pkey" PRIMARY KEY, btree (id)' <<<"$OUT" ||
        problem "\\d accounts does not list the primary key: $(tr '\n' ' ' <<<"$OUT" | cut -c1-400)"

    step "information_schema.columns"
    run_or_fail "information_schema.columns" sg_psql -c "SELECT column_name, data_type FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = 'accounts' ORDER BY ordinal_position"
    expect_equal "information_schema.columns of accounts" \
        "$(printf '%s\n' 'id|bigint' 'owner|text' 'currency|text' 'balance|numeric')" "$OUT"
}

# 17. read_your_writes: SET shardgate.consistency = session, then INSERT and
# at once SELECT, 20 times, outside a transaction: psql (simple protocol)
# and pgbench -M extended on one connection (\gset fails on no row).
sc_read_your_writes() {
    if [[ "$SG_TOPOLOGY" == single ]]; then
        note "skipped in single"
        return
    fi
    local i k expected=""
    {
        echo "SET shardgate.consistency = session;"
        for i in $(seq 0 19); do
            k=$((KB + i))
            echo "INSERT INTO accounts (id, owner, currency, balance) VALUES ($k, 'ryw psql', 'USD', 1);"
            echo "SELECT id FROM accounts WHERE id = $k;"
            expected+="$k"$'\n'
        done
    } >"$SCEN_DIR/ryw.sql"
    step "psql: 20 INSERT + SELECT"
    OUT=$(sg_psql -q -v ON_ERROR_STOP=0 -f "$SCEN_DIR/ryw.sql" 2>"$SCEN_DIR/ryw.err")
    expect_equal "rows read right after their INSERT (psql; stderr: $(error_text "$SCEN_DIR/ryw.err"))" "${expected%$'\n'}" "$OUT"

    step "pgbench -M extended: 20 INSERT + SELECT"
    local returned="$SCEN_DIR/returned"
    {
        echo "SET shardgate.consistency = session;"
        echo "INSERT INTO accounts (id, owner, currency, balance) VALUES (:k, 'ryw pgbench', 'USD', 1);"
        echo "SELECT id FROM accounts WHERE id = :k \\gset r_"
        echo "\\shell echo :r_id >> $returned"
        echo "\\set k :k + 1"
    } >"$SCEN_DIR/ryw.pgb"
    (run_or_fail "pgbench INSERT then SELECT (the SELECT found no row?)" sg_bench extended "$SCEN_DIR/ryw.pgb" -t 20 -D k=$((KB + 100)))
    expected=$(seq $((KB + 100)) $((KB + 119)))
    expect_equal "rows read right after their INSERT (pgbench)" "$expected" "$(cat "$returned" 2>/dev/null)"
}

# 18. cross_shard_read: aggregates, GROUP BY, ORDER BY/LIMIT/OFFSET and a
# join over the 120 rows of cursor_fetch, equal to the reference: plain
# (psql, simple protocol: every row compared), and as named prepared
# statements with $1/$2 parameters (pgbench -M prepared; pgbench cannot
# print rows: \gset keeps the single row of the aggregate, \aset the last
# row of the others, and those are compared).
sc_cross_shard_read() {
    load_cursor_rows
    local lo=$CUR_LO hi=$CUR_HI
    local -a names=(aggregates group_by limit_offset join grouped_subquery)
    local -a queries=(
        "SELECT count(*) AS n, sum(balance) AS total, min(id) AS lo, max(id) AS hi FROM accounts WHERE id BETWEEN \$1 AND \$2"
        "SELECT currency, count(*) AS n FROM accounts WHERE id BETWEEN \$1 AND \$2 GROUP BY currency ORDER BY currency"
        "SELECT id FROM accounts WHERE id BETWEEN \$1 AND \$2 ORDER BY balance DESC, id LIMIT 5 OFFSET 2"
        "SELECT a.id, a.owner, c.name FROM accounts a JOIN currencies c ON c.code = a.currency WHERE a.id BETWEEN \$1 AND \$2 ORDER BY a.id"
        "SELECT s.currency, s.n, s.total FROM (SELECT currency, count(*) AS n, sum(balance) AS total FROM accounts WHERE id BETWEEN \$1 AND \$2 GROUP BY currency) s ORDER BY s.currency"
    )
    local i plain reference bench_expected=""
    for i in "${!queries[@]}"; do
        plain=${queries[$i]//\$1/$lo}
        plain=${plain//\$2/$hi}
        run_or_fail "reference ${names[$i]}" ref_psql -c "$plain"
        reference=$OUT
        bench_expected+="${names[$i]} $(tail -n 1 <<<"$reference" | tr '|' ' ')"$'\n'

        step "${names[$i]}: plain"
        eventually_equals "$reference" sg_psql -q -c "$plain" ||
            problem "${names[$i]} (plain): $(mismatch "$reference" "$OUT")$LAST_ERR"
    done

    step "pgbench -M prepared"
    local returned="$SCEN_DIR/returned" script="$SCEN_DIR/cross.pgb"
    with_variables() { # QUERY: $1/$2 as pgbench variables :lo/:hi
        local q=${1//\$1/:lo}
        echo "${q//\$2/:hi}"
    }
    {
        echo "$(with_variables "${queries[0]}") \\gset q0_"
        echo "\\shell echo aggregates :q0_n :q0_total :q0_lo :q0_hi >> $returned"
        echo "$(with_variables "${queries[1]}") \\aset q1_"
        echo "\\shell echo group_by :q1_currency :q1_n >> $returned"
        echo "$(with_variables "${queries[2]}") \\aset q2_"
        echo "\\shell echo limit_offset :q2_id >> $returned"
        echo "$(with_variables "${queries[3]}") \\aset q3_"
        echo "\\shell echo join :q3_id :q3_owner :q3_name >> $returned"
        echo "$(with_variables "${queries[4]}") \\aset q4_"
        echo "\\shell echo grouped_subquery :q4_currency :q4_n :q4_total >> $returned"
    } >"$script"
    bench_once() {
        rm -f "$returned"
        sg_bench prepared "$script" -t 1 -D lo="$lo" -D hi="$hi" >/dev/null && cat "$returned"
    }
    eventually_equals "${bench_expected%$'\n'}" bench_once ||
        problem "pgbench -M prepared (one row per query): $(mismatch "${bench_expected%$'\n'}" "$OUT")$LAST_ERR"
}

# hold KEY (child of client_killed): psql opens a transaction through the
# proxy, inserts account KEY, prints READY, and waits on its standard input
# (-f -) until it is killed. `exec`: this process is the psql client.
hold() {
    local key=$1
    exec "$PSQL" "${PSQL_FLAGS[@]}" -d "$PROXY_CONNINFO" -c "BEGIN" \
        -c "INSERT INTO accounts (id, owner, currency, balance) VALUES ($key, 'held', 'USD', 0)" \
        -c '\echo READY' -f -
}

# idle_in_tx_on_primaries [LIKE]: OUT = "addr:pid:query" of the sessions of
# SG_DATABASE idle in transaction on the primaries (whose last query
# matches LIKE, if given).
idle_in_tx_on_primaries() {
    local like=${1:-%} addr all=""
    for addr in "${PRIMARIES[@]}"; do
        run_or_fail "pg_stat_activity on $addr" primary_psql "$addr" -c "SELECT pid, left(query, 100) FROM pg_stat_activity
            WHERE datname = current_database() AND state LIKE 'idle in transaction%' AND query LIKE '$like'"
        [[ -n "$OUT" ]] && all+="$addr:$OUT "
    done
    OUT=$all
}

# 19. client_killed: a client killed with SIGKILL (no Terminate message,
# the socket just closes) in the middle of a transaction: the proxy must
# roll it back and not leave the server session idle in transaction.
sc_client_killed() {
    local key=$KB line ready=no
    step "child: BEGIN; INSERT; READY"
    coproc HOLDER { exec bash "$SELF" hold "$key" 2>"$SCEN_DIR/hold.err"; }
    local pid=$HOLDER_PID
    BG_PIDS+=("$pid")
    while IFS= read -r -t 15 line <&"${HOLDER[0]}"; do
        if [[ "$line" == READY ]]; then
            ready=yes
            break
        fi
    done
    [[ "$ready" == yes ]] || fail "the child never printed READY: $(error_text "$SCEN_DIR/hold.err")"

    # The transaction is open: row not committed, its session idle in transaction.
    count_on_primaries "SELECT count(*) FROM accounts WHERE id = $key"
    [[ "$OUT" == 0 ]] || fail "account $key is visible on the primaries before the child's transaction ended"
    idle_in_tx_on_primaries "%$key%"
    [[ -n "$OUT" ]] || problem "no session idle in transaction after the child's INSERT of $key (expected its open transaction on a primary)"

    step "SIGKILL the child; waiting for its transaction to end"
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null
    local deadline=$((SECONDS + 10)) rows
    while true; do
        count_on_primaries "SELECT count(*) FROM accounts WHERE id = $key"
        rows=$OUT
        idle_in_tx_on_primaries
        [[ "$rows" == 0 && -z "$OUT" ]] && return
        ((SECONDS >= deadline)) && break
        sleep 0.2
    done
    [[ "$rows" == 0 ]] || problem "account $key of the killed client is on the primaries ($rows rows)"
    [[ -z "$OUT" ]] || problem "10 s after the client was killed, sessions of $SG_DATABASE are still idle in transaction: $OUT"
}

# terminate-backend PID: pg_terminate_backend(PID) on the primary that runs
# it (called by psql's \! in backend_terminated); prints "addr:t" there.
terminate_backend() {
    local pid=$1 addr result
    for addr in "${PRIMARIES[@]}"; do
        result=$(primary_psql "$addr" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $pid")
        [[ -n "$result" ]] && echo "$addr:$result"
    done
}

# 20. backend_terminated: the server session behind a client connection is
# terminated between two statements; the next 5 statements on the same
# psql connection must succeed (psql in a script exits when it sees the
# connection lost).
sc_backend_terminated() {
    local k=$KB terminated="$SCEN_DIR/terminated"
    {
        echo "SELECT /* shardgate: consistency=strong */ pg_backend_pid() AS pid \\gset"
        echo "\\setenv SG_TERM_PID :pid"
        echo "\\! bash $SELF terminate-backend \"\$SG_TERM_PID\" > $terminated"
        echo "\\! sleep 0.2"
        echo "SELECT 'after 1';"
        echo "INSERT INTO accounts (id, owner, currency, balance) VALUES ($k, 'after terminate', 'USD', 1);"
        echo "SELECT 'after 3';"
        echo "UPDATE accounts SET balance = 20 WHERE id = $k;"
        echo "SELECT 'after 5';"
    } >"$SCEN_DIR/terminate.sql"
    step "pg_backend_pid, terminate, 5 statements"
    OUT=$(sg_psql -f "$SCEN_DIR/terminate.sql" 2>"$SCEN_DIR/terminate.err")
    local rc=$?
    local killed
    killed=$(grep -c ':t$' "$terminated" 2>/dev/null)
    if [[ "$killed" != 1 ]]; then
        fail "pg_backend_pid() through the proxy was not terminated on exactly one primary (found: '$(tr '\n' ' ' <"$terminated" 2>/dev/null)'); psql: $(error_text "$SCEN_DIR/terminate.err")"
    fi
    if is_direct; then
        # No proxy: the client's own session was terminated, psql must see it.
        if ((rc != 0)) && grep -qE '57P01|server closed the connection|connection to server was lost' "$SCEN_DIR/terminate.err"; then
            note "no proxy in between: the terminated backend was the client's own connection, lost as expected"
            return
        fi
        fail "no proxy in between: expected the connection lost after pg_terminate_backend, psql exit $rc: $(error_text "$SCEN_DIR/terminate.err")"
    fi
    ((rc == 0)) || problem "psql exit $rc after the backend was terminated: $(error_text "$SCEN_DIR/terminate.err")"
    expect_equal "output of the 5 statements" "$(printf '%s\n' 'after 1' 'INSERT 0 1' 'after 3' 'UPDATE 1' 'after 5')" "$OUT"
    count_on_primaries "SELECT count(*) FROM accounts WHERE id = $k AND balance = 20"
    expect_equal "the write after the termination, on the primaries" 1 "$OUT"
}

# 21. multi_statement: query strings of several statements (psql -c sends
# the whole string as one simple-protocol Query), going to different shards
# where sharded: each runs; an error in one undoes the whole string.
sc_multi_statement() {
    local k=$KB
    ins() {
        local v="" x
        for x in "$@"; do v+="${v:+, }($((k + x)), 'multi', 'USD', 1)"; done
        echo "INSERT INTO accounts (id, owner, currency, balance) VALUES $v"
    }
    step "a string of three statements"
    run_or_fail "the string of three statements" sg_psql -c "$(ins 0); $(ins 1 2); UPDATE accounts SET balance = 5 WHERE id = $k"
    step "a string failing in its second statement"
    if sg_psql -c "$(ins 3); $(ins 0)" >/dev/null 2>"$SCEN_DIR/multi.err" ||
        ! grep -q 23505 "$SCEN_DIR/multi.err"; then
        problem "the string with a duplicate: expected SQLSTATE 23505, got: $(error_text "$SCEN_DIR/multi.err")"
    fi
    count_on_primaries "SELECT count(*) FROM accounts WHERE id BETWEEN $k AND $((k + 999))"
    expect_equal "rows of the strings on the primaries" 3 "$OUT"
    count_on_primaries "SELECT count(*) FROM accounts WHERE id = $k AND balance = 5"
    expect_equal "the update of the first string on the primaries" 1 "$OUT"
}

# ---------------------------------------------------------------------------
# Driver

# run_scenario_process NAME INDEX DIR: body of the per-scenario process.
run_scenario_process() {
    SCENARIO=$1
    KB=$((SG_KEY_BASE + 1000 * $2))
    SCEN_DIR=$3
    exec 1>&2 # standard output is for the JSON lines of the parent only
    trap kill_background EXIT
    trap "exit 143" TERM
    step "starting"
    "sc_$SCENARIO"
    [[ -s "$SCEN_DIR/problems" ]] && exit 1
    exit 0
}

# delete_key_range: every row of SG_KEY_BASE's range, on every primary.
delete_key_range() {
    local lo=$SG_KEY_BASE hi=$((SG_KEY_BASE + 999999)) addr
    for addr in "${PRIMARIES[@]}"; do
        "$PSQL" "${PSQL_FLAGS[@]}" -q -d "$(conninfo "$addr" "$SG_DATABASE")" \
            -c "DELETE FROM accounts WHERE id BETWEEN $lo AND $hi" \
            -c "DELETE FROM ledger WHERE account_id BETWEEN $lo AND $hi" \
            -c "DELETE FROM typed WHERE id BETWEEN $lo AND $hi" >&2 ||
            echo "cleanup on $addr failed" >&2
    done
}

# emit NAME OK DETAIL: one JSON result line.
emit() {
    python3 -c 'import json, sys; print(json.dumps({"scenario": sys.argv[1], "ok": sys.argv[2] == "true", "detail": sys.argv[3]}))' "$@"
}

# join_lines FILE: the lines of FILE joined by " | " (nothing if no file).
join_lines() {
    [[ -f "$1" ]] && awk 'NR > 1 { printf " | " } { printf "%s", $0 }' "$1"
}

run_all() {
    local work
    work=$(mktemp -d /tmp/libpq_conformance.XXXXXX)
    delete_key_range
    local i name dir rc ok detail
    for i in "${!SCENARIOS[@]}"; do
        name=${SCENARIOS[$i]}
        dir="$work/$name"
        mkdir -p "$dir"
        timeout -k 5 60 bash "$SELF" scenario "$name" $((i + 1)) "$dir" </dev/null
        rc=$?
        detail=$(join_lines "$dir/problems")
        if ((rc == 0)); then
            ok=true
            detail=$(join_lines "$dir/note")
        elif ((rc == 124 || rc == 137)); then
            ok=false
            detail="timed out after 60 s during: $(cat "$dir/step" 2>/dev/null)${detail:+; $detail}"
        else
            ok=false
            [[ -n "$detail" ]] || detail="scenario process ended with status $rc during: $(cat "$dir/step" 2>/dev/null)"
        fi
        emit "$name" "$ok" "$detail"
    done
    if [[ "${SG_SELF_TEST:-}" == 1 ]]; then
        echo "work files kept in $work" >&2
    else
        rm -rf "$work"
    fi
}

case "${1:-}" in
hold) hold "$2" ;;
scenario) run_scenario_process "$2" "$3" "$4" ;;
terminate-backend) terminate_backend "$2" ;;
*) run_all ;;
esac
exit 0
