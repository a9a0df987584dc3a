#!/usr/bin/env bash
# Instructions per session introspection, counted by callgrind (independent of the machine's load).
#
#   bench/instructions.sh BINARY [FEW] [MANY]
#
# Runs BINARY's `serve` twice under `valgrind --tool=callgrind` on a fresh SQLite data directory
# (access log off, the defaults otherwise: log level info, so the request span is live):
# registers a user, logs in, sends FEW (default 500) then, in the second run, MANY (default
# 2500) `GET /api/auth/session` over 8 keep-alive connections, stops the server with SIGTERM and reads callgrind's total. The difference of the
# two totals divided by MANY - FEW is the work of one introspection in every thread of the
# process (HTTP, middleware, authentication, SQLite and its worker thread, JSON), with the start,
# the registration, the login and the shutdown cancelled out. Needs valgrind, curl, Python 3.
set -euo pipefail

binary=${1:?usage: bench/instructions.sh BINARY [FEW] [MANY]}
few=${2:-500}
many=${3:-2500}
[ -x "$binary" ] || { echo "instructions.sh: $binary is not an executable" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() {
  local requests=$1 dir=$work/run-$1 port pid
  mkdir -p "$dir/data"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  env -i PATH="$PATH" TESSERA_DATA_DIR="$dir/data" TESSERA_LISTEN="127.0.0.1:$port" \
    TESSERA_IP_RATE_LIMIT_PER_MINUTE=0 TESSERA_ACCESS_LOG=false \
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$binary" serve \
    >"$dir/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "instructions.sh: the server exited; see below" >&2; tail -5 "$dir/server.log" >&2; exit 1; }
    sleep 0.2
  done
  python3 - "$port" "$requests" <<'EOF' || { kill -TERM "$pid"; wait "$pid" || true; echo "instructions.sh: the client failed" >&2; exit 1; }
import http.client, json, sys, threading
port, total = int(sys.argv[1]), int(sys.argv[2])
def call(conn, method, path, body=None, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, data
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
credentials = {"email": "callgrind@example.com", "password": "Quartz-Meadow-Lantern-4821"}
status, data = call(conn, "POST", "/api/auth/register", credentials)
assert status == 201, (status, data)
status, data = call(conn, "POST", "/api/auth/login", credentials)
assert status == 200, (status, data)
token = json.loads(data)["token"]
failures = []
def worker(count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        status, data = call(c, "GET", "/api/auth/session", token=token)
        if status != 200:
            failures.append(status)
threads = [threading.Thread(target=worker, args=(total // 8 + (1 if i < total % 8 else 0),)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
if failures:
    sys.exit(f"instructions.sh: {len(failures)} introspections failed (first status {failures[0]})")
EOF
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$dir/callgrind.out"
}

echo "counting $few then $many introspections of $binary under callgrind (a minute or two)..." >&2
a=$(run "$few")
b=$(run "$many")
[ -n "$a" ] && [ -n "$b" ] || { echo "instructions.sh: callgrind wrote no total" >&2; exit 1; }
echo "instructions: $a for $few introspections, $b for $many"
echo "per introspection: $(( (b - a) / (many - few) ))"
