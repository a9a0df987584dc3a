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
#   CONNECTIONS=32     wrk connections in total: two wrk processes of one thread, half each
#   SESSION_USERS=32   sessions cycled through by the introspection load
#   MFA_USERS=500      users with MFA (each costs 13 argon2 hashes to create: 3 password
#                      checks and 10 backup codes)
#   SEED_SECONDS=300   time bound of creating them; fewer users if it is reached
#   PAIRS_PER_USER=3   {mfa_token, code} pairs per user and second-step run (1 to 3: codes of
#                      consecutive 30 s steps, sent in step order; each pair costs one password
#                      login, i.e. one argon2 hash, before the run)
#   PREP_SECONDS=240   time bound of those logins per run (mfa_tokens live 5 minutes)
#   MFA_BOUND=25       upper bound (wrk -d) of each second-step run; it ends when the pairs do
#                      (at most 26 s with 3 pairs per user: all codes must stay acceptable)
#   POOL_SIZE=10       --database-pool-size of each instance
#   ROUNDS=3           repetitions of the four runs (one/two instances x two workloads); the
#                      report gives each round and the medians
#   KEEP=1             keep the work directory (wrk outputs, instance logs) instead of deleting it
#
# Everything goes to 127.0.0.1 only; every load run is bounded in time. The script creates its
# own database (tessera_bench_*) and drops it on exit, also on failure or Ctrl-C.
set -euo pipefail
# settings of the instances come from this script only, not from the caller's environment
while read -r name; do unset "$name"; done < <(compgen -e | grep '^TESSERA_' || true)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
PGADMINDB=${PGADMINDB:-test}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
SESSION_USERS=${SESSION_USERS:-32}
MFA_USERS=${MFA_USERS:-500}
SEED_SECONDS=${SEED_SECONDS:-300}
PAIRS_PER_USER=${PAIRS_PER_USER:-3}
PREP_SECONDS=${PREP_SECONDS:-240}
MFA_BOUND=${MFA_BOUND:-25}
POOL_SIZE=${POOL_SIZE:-10}
ROUNDS=${ROUNDS:-3}
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
(( CONNECTIONS >= 2 && CONNECTIONS % 2 == 0 )) || die "CONNECTIONS must be even and at least 2"
(( PAIRS_PER_USER >= 1 && PAIRS_PER_USER <= 3 )) || die "PAIRS_PER_USER must be 1, 2 or 3"
(( MFA_BOUND <= 30 * (4 - PAIRS_PER_USER) - 4 )) \
    || die "MFA_BOUND must be at most $((30 * (4 - PAIRS_PER_USER) - 4)) with PAIRS_PER_USER=$PAIRS_PER_USER"

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
INSTANCE_PIDS=()

# Kills what this script started and is still running: a process id is signalled only while its
# command line names this run's work directory (ids get reused once a process has ended).
cleanup() {
    local status=$? pid cmd
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || continue
        [[ $cmd == *"$WORK"* ]] && kill "$pid" 2>/dev/null || true
    done
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
    INSTANCE_PIDS+=("$pid")
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

# in the background and waited for, so that a TERM to this script is acted on at once
helper() {
    python3 "$HERE/helper.py" "$@" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"
}
# cpu_start FILE / cpu_stop: CPU time of the instances and PostgreSQL during a run (helper.py cpu)
cpu_start() {
    python3 "$HERE/helper.py" cpu --db "$DB" --pid "${INSTANCE_PIDS[@]}" --out "$1" &
    CPU_PID=$!
    PIDS+=("$CPU_PID")
    sleep 0.3
}
cpu_stop() { kill -TERM "$CPU_PID"; wait "$CPU_PID"; }
RUNS=$WORK/runs.tsv
: >"$RUNS"

# --- instance A, baseline, seeding ---------------------------------------------------------
start_instance A

# pgbench_rate LABEL SQL: a PostgreSQL baseline measured like the instances see the database
pgbench_rate() {
    local label=$1 tag=$2 sql=$3 tps p50 p99
    printf '\\set id random(1, 10000)\n%s\n' "$sql" >"$WORK/pg-$tag.sql"
    (cd "$WORK" && pgbench -n -M prepared -f "pg-$tag.sql" -c $((2 * POOL_SIZE)) -j 2 -T "$DURATION" \
        -l --sampling-rate=0.05 --log-prefix="pglog-$tag" "$DB" >"$WORK/pgbench-$tag.out" 2>&1) \
        || { cat "$WORK/pgbench-$tag.out" >&2; die "pgbench failed"; }
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$WORK/pgbench-$tag.out" | head -1)
    read -r p50 p99 _ < <(helper pglog "$WORK"/pglog-"$tag".*)
    printf '0\t%s (pgbench, %d clients)\t-\t=%.0f %s %s\n' "$label" $((2 * POOL_SIZE)) "$tps" "$p50" "$p99" >>"$RUNS"
}

if command -v pgbench >/dev/null 2>&1; then
    log "baseline: pgbench single-row primary-key read, then single-row update, $((2 * POOL_SIZE)) clients, ${DURATION}s each"
    psql -X -q -d "$DB" -c "CREATE TABLE bench_kv (id int PRIMARY KEY, v text);
        INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, 10000) g; ANALYZE bench_kv" >/dev/null
    pgbench_rate "baseline: PostgreSQL single-row read" read "SELECT v FROM bench_kv WHERE id = :id;"
    pgbench_rate "baseline: PostgreSQL single-row update, one commit each" write \
        "UPDATE bench_kv SET v = md5(v) WHERE id = :id;"
    psql -X -q -d "$DB" -c "DROP TABLE bench_kv" >/dev/null
else
    log "pgbench not found: no PostgreSQL baseline (Debian: postgresql-contrib or postgresql-15)"
fi

log "seeding $SESSION_USERS users with sessions and $MFA_USERS users with MFA through the API"
helper users --base "$BASE_A" --prefix s --count "$SESSION_USERS" --out "$WORK/session-users.jsonl"
jq -r .token "$WORK/session-users.jsonl" >"$WORK/tokens.txt"
helper users --base "$BASE_A" --prefix m --count "$MFA_USERS" --mfa --out "$WORK/mfa-users.jsonl" \
    --seconds "$SEED_SECONDS"
MFA_USERS=$(wc -l <"$WORK/mfa-users.jsonl")
if (( PAIRS_PER_USER > 1 && MFA_USERS / 2 < 2 * CONNECTIONS )); then
    # a user's pairs must be answered in step order: with fewer users per wrk process than
    # about twice its connections, a later step can overtake an earlier one (which then fails)
    log "warning: $MFA_USERS MFA users are too few for $CONNECTIONS connections with $PAIRS_PER_USER pairs per user; expect 401s"
fi

# --- runs ----------------------------------------------------------------------------------
# Every run uses two wrk processes of one thread and CONNECTIONS/2 connections each: both aimed
# at A for one instance, one at A and one at B for two instances. The client is the same in
# both cases, only the number of instances behind it changes.

# wrk_start OUT URL SECONDS SCRIPT SCRIPT_ARGS...: starts wrk in the background, sets WRK_PID
wrk_start() {
    local out=$1 url=$2 secs=$3 script=$4
    shift 4
    wrk -t1 -c$((CONNECTIONS / 2)) -d"${secs}s" --timeout 10s --latency -s "$script" "$url" -- "$@" \
        >"$out" 2>&1 &
    WRK_PID=$!
    PIDS+=("$WRK_PID")
}

wrk_wait() { # PID OUT
    wait "$1" || { cat "$2" >&2; die "wrk failed (output above)"; }
    grep -q '^RESULT ' "$2" || { cat "$2" >&2; die "wrk printed no RESULT line (output above)"; }
}

# session_run ROUND INSTANCES
session_run() {
    local r=$1 n=$2 second pa pb
    second=$BASE_A
    (( n == 2 )) && second=$BASE_B
    log "round $r: session introspection, $n instance(s), ${DURATION}s"
    cpu_start "$WORK/cpu-session-$r-$n"
    wrk_start "$WORK/session-$r-$n-a.out" "$BASE_A" "$DURATION" "$HERE/session.lua" "$WORK/tokens.txt"
    pa=$WRK_PID
    wrk_start "$WORK/session-$r-$n-b.out" "$second" "$DURATION" "$HERE/session.lua" "$WORK/tokens.txt"
    pb=$WRK_PID
    wrk_wait "$pa" "$WORK/session-$r-$n-a.out"
    wrk_wait "$pb" "$WORK/session-$r-$n-b.out"
    cpu_stop
    printf '%s\tsession introspection\t%s\t%s,%s\t%s\n' "$r" "$n" \
        "$WORK/session-$r-$n-a.out" "$WORK/session-$r-$n-b.out" \
        "$WORK/cpu-session-$r-$n" >>"$RUNS"
}

# mfa_run ROUND INSTANCES
mfa_run() {
    local r=$1 n=$2 second pa pb pairs
    pairs=$WORK/pairs-$r-$n
    if (( n == 1 )); then
        log "round $r: preparing $MFA_USERS x $PAIRS_PER_USER {mfa_token, code} pairs (password logins, not timed)"
        helper pairs --base "$BASE_A" --split 2 --users "$WORK/mfa-users.jsonl" --out "$pairs" \
            --per-user "$PAIRS_PER_USER" --bound "$MFA_BOUND" --prep-seconds "$PREP_SECONDS"
        second=$BASE_A
    else
        # the tokens each wrk process completes were obtained through the OTHER instance
        log "round $r: preparing $MFA_USERS x $PAIRS_PER_USER pairs through the other instance than the one completing them"
        helper pairs --base "$BASE_A" --base "$BASE_B" --split 2 --cross \
            --users "$WORK/mfa-users.jsonl" --out "$pairs" \
            --per-user "$PAIRS_PER_USER" --bound "$MFA_BOUND" --prep-seconds "$PREP_SECONDS"
        second=$BASE_B
    fi
    log "round $r: second login step, $n instance(s), until the pairs are used (at most ${MFA_BOUND}s)"
    cpu_start "$WORK/cpu-mfa-$r-$n"
    wrk_start "$WORK/mfa-$r-$n-a.out" "$BASE_A" "$MFA_BOUND" "$HERE/mfa.lua" "$pairs.0" 1 "$WORK/done-$r-$n-a"
    pa=$WRK_PID
    wrk_start "$WORK/mfa-$r-$n-b.out" "$second" "$MFA_BOUND" "$HERE/mfa.lua" "$pairs.1" 1 "$WORK/done-$r-$n-b"
    pb=$WRK_PID
    # wrk sleeps out its -d even when the Lua script has stopped its thread: end it by SIGINT
    # (wrk then reports normally) once its thread has marked that all its pairs are answered
    while kill -0 "$pa" 2>/dev/null || kill -0 "$pb" 2>/dev/null; do
        [[ -e $WORK/done-$r-$n-a.0 ]] && kill -INT "$pa" 2>/dev/null || true
        [[ -e $WORK/done-$r-$n-b.0 ]] && kill -INT "$pb" 2>/dev/null || true
        sleep 0.1
    done
    wrk_wait "$pa" "$WORK/mfa-$r-$n-a.out"
    wrk_wait "$pb" "$WORK/mfa-$r-$n-b.out"
    cpu_stop
    printf '%s\tsecond login step\t%s\t%s,%s\t%s\n' "$r" "$n" "$WORK/mfa-$r-$n-a.out" "$WORK/mfa-$r-$n-b.out" \
        "$WORK/cpu-mfa-$r-$n" >>"$RUNS"
    if (( n == 2 )); then
        # single use across instances: pairs completed on A must fail when replayed on B
        read -r accepted tried statuses < <(helper replay --base "$BASE_B" --pairs "$pairs.0" --count 50)
        log "round $r: replayed $tried pairs completed on A on instance B: $accepted accepted ($statuses)"
        echo "round $r: $tried pairs completed on A, replayed on B: $accepted accepted (statuses $statuses)" \
            >>"$WORK/checks.txt"
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
echo "client: two wrk processes x 1 thread x $((CONNECTIONS / 2)) connections (one instance: both at A;" \
    "two: one per instance); session runs ${DURATION}s; second-step runs: $MFA_USERS users x $PAIRS_PER_USER pairs"
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
