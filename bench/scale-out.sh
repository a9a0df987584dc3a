#!/usr/bin/env bash
# Scale-out benchmark: requests/s of session introspection and of the second login step for ONE
# Tessera instance and for TWO instances on one PostgreSQL database, measured in the same run,
# with the ratio two/one and a bare PostgreSQL single-row read rate as a baseline.
#
#   bench/scale-out.sh [TESSERA_BINARY]      (default target/release/tessera, built if missing)
#
# Settings (environment):
#   PGHOST=127.0.0.1 PGPORT=5432 PGUSER=postgres PGADMINDB=test   where to create the database
#   DURATION=10        seconds of each session-introspection run (wrk -d)
#   THREADS=2          wrk threads in total (even; two-instance runs: THREADS/2 per wrk process)
#   CONNECTIONS=32     wrk connections in total (two-instance runs: CONNECTIONS/2 per process)
#   SESSION_USERS=32   sessions cycled through by the introspection load
#   MFA_USERS=2000     users with MFA = {mfa_token, code} pairs per second-step run
#   MFA_BOUND=30       upper bound (wrk -d) of each second-step run; it ends when the pairs do
#   POOL_SIZE=10       --database-pool-size of each instance
#   ROUNDS=1           repetitions of the four runs (one/two instances x two workloads)
#   KEEP=1             keep the work directory (wrk outputs, instance logs) instead of deleting it
#
# Everything goes to 127.0.0.1 only; every load run is bounded in time. The script creates its
# own database (tessera_bench_*) and drops it on exit, also on failure or Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
PGADMINDB=${PGADMINDB:-test}
DURATION=${DURATION:-10}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
SESSION_USERS=${SESSION_USERS:-32}
MFA_USERS=${MFA_USERS:-2000}
MFA_BOUND=${MFA_BOUND:-30}
POOL_SIZE=${POOL_SIZE:-10}
ROUNDS=${ROUNDS:-1}
export PGHOST PGPORT PGUSER

die() { echo "scale-out.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
need() { command -v "$1" >/dev/null 2>&1 || die "missing prerequisite: $1 ($2)"; }

# --- prerequisites -------------------------------------------------------------------------
need wrk "Debian: apt-get install -y wrk"
need psql "Debian: apt-get install -y postgresql-client"
need curl "Debian: apt-get install -y curl"
need jq "Debian: apt-get install -y jq"
need python3 "Python 3.9 or later"
if ! command -v oathtool >/dev/null 2>&1 && ! python3 -c 'import pyotp' 2>/dev/null; then
    die "missing prerequisite: oathtool (Debian: apt-get install -y oathtool) or pyotp (pip install pyotp)"
fi
psql -X -q -d "$PGADMINDB" -c 'SELECT 1' >/dev/null 2>&1 \
    || die "PostgreSQL not reachable: psql -h $PGHOST -p $PGPORT -U $PGUSER -d $PGADMINDB failed"
(( THREADS >= 2 && THREADS % 2 == 0 )) || die "THREADS must be even and at least 2"
(( CONNECTIONS >= THREADS && CONNECTIONS % 2 == 0 )) || die "CONNECTIONS must be even and >= THREADS"

BIN=${1:-$ROOT/target/release/tessera}
if [[ ! -x $BIN ]]; then
    [[ $# -ge 1 ]] && die "no executable at $BIN"
    need cargo "the Rust toolchain, to build $BIN"
    log "building $BIN (cargo build --release, a few minutes)"
    cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
fi

# --- work directory, database, cleanup -----------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tessera-bench.XXXXXX")
DB="tessera_bench_$(date +%Y%m%d%H%M%S)_$$"
DB_CREATED=0
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if (( DB_CREATED )); then
        psql -X -q -d "$PGADMINDB" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 \
            || echo "scale-out.sh: could not drop database $DB" >&2
    fi
    if [[ ${KEEP:-0} == 1 ]]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

psql -X -q -d "$PGADMINDB" -c "CREATE DATABASE \"$DB\"" >/dev/null
DB_CREATED=1
URL="postgres://$PGUSER@$PGHOST:$PGPORT/$DB"
KEY=$(python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())')

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_instance NAME: serves on a free loopback port; sets BASE_<NAME>
start_instance() {
    local name=$1 port pid
    port=$(free_port)
    env TESSERA_SECRET_KEY="$KEY" TESSERA_IP_RATE_LIMIT_PER_MINUTE=0 TESSERA_LOG=warn \
        "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$WORK/$name" \
        --database-url "$URL" --database-pool-size "$POOL_SIZE" 2>"$WORK/$name.log" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 150); do
        if curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; then
            printf -v "BASE_$name" '%s' "http://127.0.0.1:$port"
            log "instance $name ready on 127.0.0.1:$port (pid $pid)"
            return
        fi
        kill -0 "$pid" 2>/dev/null || { tail -5 "$WORK/$name.log" >&2; die "instance $name exited at start"; }
        sleep 0.2
    done
    die "instance $name not ready after 30 s"
}

helper() { python3 "$HERE/helper.py" "$@"; }
RUNS=$WORK/runs.tsv
: >"$RUNS"

# --- instance A, baseline, seeding ---------------------------------------------------------
start_instance A

if command -v pgbench >/dev/null 2>&1; then
    log "baseline: pgbench single-row primary-key read, $((2 * POOL_SIZE)) clients, ${DURATION}s"
    psql -X -q -d "$DB" -c "CREATE TABLE bench_kv (id int PRIMARY KEY, v text);
        INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, 10000) g; ANALYZE bench_kv" >/dev/null
    printf '\\set id random(1, 10000)\nSELECT v FROM bench_kv WHERE id = :id;\n' >"$WORK/pg.sql"
    (cd "$WORK" && pgbench -n -M prepared -f pg.sql -c $((2 * POOL_SIZE)) -j 2 -T "$DURATION" \
        -l --sampling-rate=0.05 --log-prefix=pglog "$DB" >"$WORK/pgbench.out" 2>&1) \
        || { cat "$WORK/pgbench.out" >&2; die "pgbench failed"; }
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$WORK/pgbench.out" | head -1)
    read -r p50 p99 _ < <(helper pglog "$WORK"/pglog.*)
    printf '0\tbaseline: PostgreSQL single-row read (pgbench, %d clients)\t-\t=%.0f %s %s\n' \
        $((2 * POOL_SIZE)) "$tps" "$p50" "$p99" >>"$RUNS"
    psql -X -q -d "$DB" -c "DROP TABLE bench_kv" >/dev/null
else
    log "pgbench not found: no PostgreSQL baseline (Debian: postgresql-contrib or postgresql-15)"
fi

log "seeding $SESSION_USERS users with sessions and $MFA_USERS users with MFA through the API"
helper users --base "$BASE_A" --prefix s --count "$SESSION_USERS" --out "$WORK/session-users.jsonl"
jq -r .token "$WORK/session-users.jsonl" >"$WORK/tokens.txt"
helper users --base "$BASE_A" --prefix m --count "$MFA_USERS" --mfa --out "$WORK/mfa-users.jsonl"

# --- runs ----------------------------------------------------------------------------------
# session ROUND INSTANCES
session_run() {
    local r=$1 n=$2
    if (( n == 1 )); then
        log "round $r: session introspection, one instance, ${DURATION}s"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "$HERE/session.lua" \
            "$BASE_A" -- "$WORK/tokens.txt" >"$WORK/session-$r-1.out"
        printf '%s\tsession introspection\t1\t%s\n' "$r" "$WORK/session-$r-1.out" >>"$RUNS"
    else
        log "round $r: session introspection, two instances, ${DURATION}s"
        local pa pb
        wrk -t$((THREADS / 2)) -c$((CONNECTIONS / 2)) -d"${DURATION}s" --timeout 10s -s "$HERE/session.lua" \
            "$BASE_A" -- "$WORK/tokens.txt" >"$WORK/session-$r-2a.out" & pa=$!
        wrk -t$((THREADS / 2)) -c$((CONNECTIONS / 2)) -d"${DURATION}s" --timeout 10s -s "$HERE/session.lua" \
            "$BASE_B" -- "$WORK/tokens.txt" >"$WORK/session-$r-2b.out" & pb=$!
        wait "$pa"; wait "$pb"
        printf '%s\tsession introspection\t2\t%s,%s\n' "$r" "$WORK/session-$r-2a.out" "$WORK/session-$r-2b.out" >>"$RUNS"
    fi
}

# mfa ROUND INSTANCES
mfa_run() {
    local r=$1 n=$2
    if (( n == 1 )); then
        log "round $r: preparing $MFA_USERS {mfa_token, code} pairs (password logins, not timed)"
        helper pairs --base "$BASE_A" --users "$WORK/mfa-users.jsonl" --out "$WORK/pairs-$r-1"
        log "round $r: second login step, one instance (until the pairs are used, at most ${MFA_BOUND}s)"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"${MFA_BOUND}s" --timeout 10s -s "$HERE/mfa.lua" \
            "$BASE_A" -- "$WORK/pairs-$r-1.0" "$THREADS" >"$WORK/mfa-$r-1.out"
        printf '%s\tsecond login step\t1\t%s\n' "$r" "$WORK/mfa-$r-1.out" >>"$RUNS"
    else
        # the tokens of the pairs each wrk process sends were obtained through the OTHER instance
        log "round $r: preparing $MFA_USERS pairs, logged in through the other instance than the one that will complete them"
        helper pairs --base "$BASE_A" --base "$BASE_B" --split 2 --cross \
            --users "$WORK/mfa-users.jsonl" --out "$WORK/pairs-$r-2"
        log "round $r: second login step, two instances (until the pairs are used, at most ${MFA_BOUND}s)"
        local pa pb
        wrk -t$((THREADS / 2)) -c$((CONNECTIONS / 2)) -d"${MFA_BOUND}s" --timeout 10s -s "$HERE/mfa.lua" \
            "$BASE_A" -- "$WORK/pairs-$r-2.0" $((THREADS / 2)) >"$WORK/mfa-$r-2a.out" & pa=$!
        wrk -t$((THREADS / 2)) -c$((CONNECTIONS / 2)) -d"${MFA_BOUND}s" --timeout 10s -s "$HERE/mfa.lua" \
            "$BASE_B" -- "$WORK/pairs-$r-2.1" $((THREADS / 2)) >"$WORK/mfa-$r-2b.out" & pb=$!
        wait "$pa"; wait "$pb"
        printf '%s\tsecond login step\t2\t%s,%s\n' "$r" "$WORK/mfa-$r-2a.out" "$WORK/mfa-$r-2b.out" >>"$RUNS"
        # single use across instances: pairs completed on A must fail when replayed on B
        read -r accepted tried statuses < <(helper replay --base "$BASE_B" --pairs "$WORK/pairs-$r-2.0" --count 50)
        log "round $r: replayed $tried used pairs on the other instance: $accepted accepted ($statuses)"
        echo "round $r: $tried pairs completed on A, replayed on B: $accepted accepted (statuses $statuses)" >>"$WORK/checks.txt"
    fi
}

for r in $(seq "$ROUNDS"); do
    session_run "$r" 1
    mfa_run "$r" 1
    [[ -n ${BASE_B:-} ]] || start_instance B
    session_run "$r" 2
    mfa_run "$r" 2
done

# --- report --------------------------------------------------------------------------------
echo
echo "Tessera scale-out benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
echo "binary $BIN; PostgreSQL at $PGHOST:$PGPORT, database $DB; pool $POOL_SIZE per instance"
echo "wrk: $THREADS threads, $CONNECTIONS connections in total (two instances: half each);" \
    "session runs ${DURATION}s; second-step runs: $MFA_USERS pairs each"
echo
helper report "$RUNS"
echo
[[ -f $WORK/checks.txt ]] && cat "$WORK/checks.txt"
for name in A B; do
    [[ -f $WORK/$name.log ]] || continue
    lines=$(wc -l <"$WORK/$name.log")
    echo "instance $name log (level warn): $lines line(s)"
    if (( lines > 0 )); then
        # group by message shape (UUIDs, numbers and timestamps blanked) so bursts stay readable
        sed -E 's/[0-9a-f]{8}-[0-9a-f-]{27}/<id>/g; s/[0-9]+(\.[0-9]+)?/N/g' "$WORK/$name.log" \
            | sort | uniq -c | sort -rn | head -10
    fi
done
