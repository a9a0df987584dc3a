#!/usr/bin/env bash
# Instructions per session introspection, counted by callgrind (independent of the machine's load).
#
#   bench/instructions.sh BINARY [FEW] [MANY]
#   BASELINE=target/release/deps/load-HASH bench/instructions.sh BINARY   # and the bare endpoints
#
# Runs BINARY's `serve` twice under `valgrind --tool=callgrind` on a fresh SQLite data directory
# (access log off, the defaults otherwise: log level info, so the request span is live):
# registers a user, logs in, sends FEW (default 500) then, in the second run, MANY (default
# 2500) `GET /api/auth/session` over 8 keep-alive connections, stops the server with SIGTERM and reads callgrind's total. The difference of the
# two totals divided by MANY - FEW is the work of one introspection in every thread of the
# process (HTTP, middleware, authentication, SQLite and its worker thread, JSON), with the start,
# the registration, the login and the shutdown cancelled out. Needs valgrind, curl, Python 3.
#
# With BASELINE set to the load harness's executable (benches/load.rs, built by `cargo bench
# --bench load --no-run`), the same count is made for its bare endpoints on the same database and
# session: `GET /read` (the bare single-row read) and `GET /join` (the bare session+user join),
# served by that executable's `--serve-baseline` mode, so the three figures read side by side.
set -euo pipefail

binary=${1:?usage: bench/instructions.sh BINARY [FEW] [MANY]}
few=${2:-500}
many=${3:-2500}
[ -x "$binary" ] || { echo "instructions.sh: $binary is not an executable" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# run REQUESTS [PATH]: PATH empty = Tessera's introspection on a fresh database; /read or /join
# = the baseline executable on the database of the first Tessera run, with the session it made.
run() {
  local requests=$1 target=${2:-} dir port pid
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ -z "$target" ]; then
    dir=$work/run-$requests
    mkdir -p "$dir/data"
    env -i PATH="$PATH" TESSERA_DATA_DIR="$dir/data" TESSERA_LISTEN="127.0.0.1:$port" \
      TESSERA_IP_RATE_LIMIT_PER_MINUTE=0 TESSERA_ACCESS_LOG=false \
      valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$binary" serve \
      >"$dir/server.log" 2>&1 &
  else
    dir=$work/bare-${target#/}-$requests
    mkdir -p "$dir"
    ln -s "$work/run-$few/data" "$dir/data"
    echo '{"ok":true}' >"$dir/baseline.json"
    : >"$dir/write-users.txt"
    env -i PATH="$PATH" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" \
      "$BASELINE" --serve-baseline "$dir" "$port" >"$dir/server.log" 2>&1 &
  fi
  pid=$!
  for _ in $(seq 1 600); do
    curl -fs "http://127.0.0.1:$port/$([ -z "$target" ] && echo readyz || echo json)" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "instructions.sh: the server exited; see below" >&2; tail -5 "$dir/server.log" >&2; exit 1; }
    sleep 0.2
  done
  python3 - "$port" "$requests" "$work/run-$few/token" "$target" "$few" <<'EOF' || { kill -TERM "$pid"; wait "$pid" || true; echo "instructions.sh: the client failed" >&2; exit 1; }
import http.client, json, sys, threading
port, total, token_file, target = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
def call(conn, method, path, body=None, token=None):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = conn.getresponse()
    data = response.read()
    return response.status, data
if target:
    token = open(token_file).read().strip()
else:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    credentials = {"email": "callgrind@example.com", "password": "Quartz-Meadow-Lantern-4821"}
    status, data = call(conn, "POST", "/api/auth/register", credentials)
    assert status == 201, (status, data)
    status, data = call(conn, "POST", "/api/auth/login", credentials)
    assert status == 200, (status, data)
    token = json.loads(data)["token"]
    if total == int(sys.argv[5]):
        open(token_file, "w").write(token)
path = target or "/api/auth/session"
failures = []
def worker(count):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        status, data = call(c, "GET", path, token=token)
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
if [ -n "${BASELINE:-}" ]; then
  [ -x "$BASELINE" ] || { echo "instructions.sh: BASELINE=$BASELINE is not an executable" >&2; exit 2; }
  for target in /read /join; do
    echo "counting $few then $many requests of the baseline's $target under callgrind..." >&2
    a=$(run "$few" "$target")
    b=$(run "$many" "$target")
    [ -n "$a" ] && [ -n "$b" ] || { echo "instructions.sh: callgrind wrote no total" >&2; exit 1; }
    echo "per bare $target: $(( (b - a) / (many - few) ))"
  done
fi
