#!/usr/bin/env bash
# Password hashing under load: throughput, isolation, memory (BENCHMARKS.md, "Password hashing").
#
#   bench/hashing.sh [BINARY]     (default target/release/tessera; ~3 minutes)
#
# Starts BINARY on a fresh SQLite data directory on a free loopback port, registers USERS users
# and prints, one line each:
#   idle RSS; one login alone (median of sequential logins: one argon2 hash plus one write);
#   introspection alone (GET /api/auth/session, wrk -t1 -c8); password logins alone (wrk -c64:
#   requests/s against cores / one login; CPU per login and the share of it spent in the argon2
#   threads, which the machine's other load does not distort); introspection while logins flood the hashing pool
#   (p99 ratio); peak RSS (VmHWM) of the whole run; RSS right after the flood and AFTER_SECS later.
# Hashing settings pass through: TESSERA_HASHING_THREADS, TESSERA_HASHING_NICE.
# Needs wrk, curl, jq, python3. All traffic stays on 127.0.0.1; every load run is bounded.
set -euo pipefail

BIN=${1:-target/release/tessera}
USERS=${USERS:-32}
SECS=${SECS:-15}
AFTER_SECS=${AFTER_SECS:-40}
HERE=$(cd "$(dirname "$0")" && pwd)
for tool in wrk curl jq python3; do
  command -v "$tool" >/dev/null || { echo "hashing.sh: $tool is missing" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "hashing.sh: no executable at $BIN" >&2; exit 1; }

WORK=$(mktemp -d)
PID=""
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
TESSERA_DATA_DIR=$WORK/data TESSERA_LISTEN=127.0.0.1:$PORT TESSERA_IP_RATE_LIMIT_PER_MINUTE=0 \
  TESSERA_MAX_CONNECTIONS_PER_IP=1024 TESSERA_LOG=${TESSERA_LOG:-warn} "$BIN" serve >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$BASE/readyz" >/dev/null || { echo "hashing.sh: the server did not get ready: $(tail -1 "$WORK/server.log")" >&2; exit 1; }

rss() { awk -v k="$1:" '$1 == k { print int($2 / 1024) }' "/proc/$PID/status"; }
# CPU clock ticks (utime + stime) of the whole process, and of its argon2 threads (named
# tessera-hash-N; a binary without them reports 0).
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$PID/stat"; }
hash_ticks() {
  local sum=0 task
  for task in /proc/$PID/task/*; do
    [[ $(cat "$task/comm" 2>/dev/null) == tessera-hash-* ]] || continue
    sum=$((sum + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$task/stat")))
  done
  echo "$sum"
}
HZ=$(getconf CLK_TCK)
cpu_line() { # NAME REQUESTS TICKS_BEFORE HASH_TICKS_BEFORE
  local total=$(($(ticks) - $3)) hashing=$(($(hash_ticks) - $4))
  awk -v n="$1" -v r="$2" -v t="$total" -v h="$hashing" -v hz="$HZ" 'BEGIN {
    printf "%s cpu_ms_per_login %.1f hashing_threads_share %.2f\n", n, t * 1000 / hz / r, (t ? h / t : 0) }'
}
post() { curl -s -o "$WORK/body" -w '%{http_code}' -H 'content-type: application/json' -d "$2" "$BASE$1"; }

echo "progress: registering $USERS + 8 users" >&2
: >"$WORK/users"
: >"$WORK/tokens"
for n in $(seq "$USERS"); do
  email="hash-bench-$n@example.com" password="bench-password-$n-0123456789"
  [ "$(post /api/auth/register "{\"email\":\"$email\",\"password\":\"$password\"}")" = 201 ] ||
    { echo "hashing.sh: registration failed: $(cat "$WORK/body")" >&2; exit 1; }
  echo "$email $password" >>"$WORK/users"
done
# The sessions looked up belong to 8 other users: the login floods create sessions for the
# users above, and past 100 sessions a user's oldest end (the cap), which would turn lookups
# into 401s.
for n in $(seq 8); do
  email="hash-bench-session-$n@example.com" password="bench-password-s$n-0123456789"
  [ "$(post /api/auth/register "{\"email\":\"$email\",\"password\":\"$password\"}")" = 201 ] ||
    { echo "hashing.sh: registration failed: $(cat "$WORK/body")" >&2; exit 1; }
  [ "$(post /api/auth/login "{\"email\":\"$email\",\"password\":\"$password\"}")" = 200 ] ||
    { echo "hashing.sh: login failed: $(cat "$WORK/body")" >&2; exit 1; }
  jq -r .token "$WORK/body" >>"$WORK/tokens"
done

echo "progress: idle (settling 35 s, past the hashing threads' idle release)" >&2
sleep 35
echo "idle_rss_mb $(rss VmRSS)"

read -r email password < <(head -1 "$WORK/users")
T0=$(ticks) H0=$(hash_ticks)
for _ in $(seq 21); do
  curl -s -o /dev/null -w '%{time_total}\n' -H 'content-type: application/json' \
    -d "{\"email\":\"$email\",\"password\":\"$password\"}" "$BASE/api/auth/login"
done | sort -n | awk '{ t[NR] = $1 } END { printf "one_login_ms %.1f\n", t[int((NR + 1) / 2)] * 1000 }'
cpu_line sequential_logins 21 "$T0" "$H0"

result() { grep '^RESULT' "$1" | sed 's/^RESULT //'; }
echo "progress: introspection alone (${SECS} s)" >&2
wrk -t1 -c8 -d"${SECS}s" --latency -s "$HERE/session.lua" "$BASE" -- "$WORK/tokens" >"$WORK/intro" 2>&1
echo "introspection_alone $(result "$WORK/intro")"

echo "progress: password logins alone (${SECS} s, 64 connections)" >&2
T0=$(ticks) H0=$(hash_ticks)
wrk -t2 -c64 -d"${SECS}s" --timeout 20s -s "$HERE/login.lua" "$BASE" -- "$WORK/users" >"$WORK/logins" 2>&1
echo "logins_alone $(result "$WORK/logins")"
cpu_line logins_alone "$(result "$WORK/logins" | sed 's/.*total=\([0-9]*\).*/\1/')" "$T0" "$H0"
echo "rss_after_logins_mb $(rss VmRSS)"

echo "progress: introspection during a login flood ($((SECS + 10)) s)" >&2
# 2 s client timeout: under the flood many logins are abandoned by the client mid-queue.
wrk -t1 -c48 -d"$((SECS + 10))s" --timeout 2s -s "$HERE/login.lua" "$BASE" -- "$WORK/users" >"$WORK/flood" 2>&1 &
FLOOD=$!
sleep 5
wrk -t1 -c8 -d"${SECS}s" --latency -s "$HERE/session.lua" "$BASE" -- "$WORK/tokens" >"$WORK/intro-flood" 2>&1
echo "introspection_during_flood $(result "$WORK/intro-flood")"
wait "$FLOOD"
echo "flood_logins $(result "$WORK/flood")"
echo "peak_rss_mb $(rss VmHWM)"
echo "rss_right_after_mb $(rss VmRSS)"
echo "progress: waiting ${AFTER_SECS} s after the load" >&2
sleep "$AFTER_SECS"
echo "rss_${AFTER_SECS}s_after_mb $(rss VmRSS)"
echo "threads $(ls "/proc/$PID/task" | wc -l)"
grep -iE 'warn|error' "$WORK/server.log" | head -3 || true
