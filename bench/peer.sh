#!/usr/bin/env bash
# Tessera beside better-auth, the most used TypeScript auth library, driven by one client.
#
#   bench/peer.sh [USERS] [REQUESTS] [CONNECTIONS]        # defaults 300 20000 64
#   TESSERA_BACKEND=postgres bench/peer.sh                 # Tessera on PostgreSQL too
#
# Installs better-auth 1.7.25 and pg from npm with the committed lockfile (bench/peer/), creates
# a fresh PostgreSQL database for it (and one for Tessera with TESSERA_BACKEND=postgres), starts
# better-auth in one Node process (bench/peer/server.mjs: email and password, the two-factor
# plugin, rate limits off) and `tessera serve` (TESSERA_BINARY, default target/release/tessera;
# a fresh SQLite data directory unless TESSERA_BACKEND=postgres; per-IP limits off), then runs
# bench/peer/drive.mjs against both: registration with TOTP, session checks, the second login
# step. Prints one table and the ratios. Loopback only; bounded by USERS and REQUESTS; drops what
# it created. Needs node and npm, psql, curl, Python 3, and PostgreSQL at PEER_DATABASE_URL
# (default postgres://postgres@127.0.0.1:5432/postgres, a database it may create others from).
set -euo pipefail
cd "$(dirname "$0")/.."
users=${1:-300}
requests=${2:-20000}
connections=${3:-64}
binary=${TESSERA_BINARY:-target/release/tessera}
admin_url=${PEER_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
backend=${TESSERA_BACKEND:-sqlite}
die() { echo "peer.sh: $*" >&2; exit 1; }
for tool in node npm psql curl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
[ -x "$binary" ] || die "$binary is not built (cargo build --release)"
case "$backend" in sqlite | postgres) ;; *) die "TESSERA_BACKEND must be sqlite or postgres" ;; esac
psql "$admin_url" -Atqc 'SELECT 1' >/dev/null 2>&1 || die "PostgreSQL is not reachable at $admin_url"

(cd bench/peer && npm ci --no-audit --no-fund --silent) || die "npm ci failed in bench/peer"

work=$(mktemp -d)
peer_db="tessera_peer_$$"
tessera_db="tessera_peer_t_$$"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $peer_db" >/dev/null 2>&1 || true
  psql "$admin_url" -qc "DROP DATABASE IF EXISTS $tessera_db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
database_url() { echo "${admin_url%/*}/$1"; }

psql "$admin_url" -qc "CREATE DATABASE $peer_db" >/dev/null
peer_port=$(free_port)
node bench/peer/server.mjs "$peer_port" "$(database_url "$peer_db")" >"$work/peer.log" 2>&1 &
pids+=($!)

tessera_port=$(free_port)
tessera_env=(TESSERA_DATA_DIR="$work/tessera-data" TESSERA_LISTEN="127.0.0.1:$tessera_port"
  TESSERA_IP_RATE_LIMIT_PER_MINUTE=0 TESSERA_MAX_CONNECTIONS_PER_IP=4096 TESSERA_MAX_CONNECTIONS=4096
  TESSERA_LOG=warn)
if [ "$backend" = postgres ]; then
  psql "$admin_url" -qc "CREATE DATABASE $tessera_db" >/dev/null
  tessera_env+=(TESSERA_DATABASE_URL="$(database_url "$tessera_db")")
fi
env -i PATH="$PATH" "${tessera_env[@]}" "$binary" serve >"$work/tessera.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 300); do
  grep -q '^ready' "$work/peer.log" 2>/dev/null && curl -fs "http://127.0.0.1:$tessera_port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
grep -q '^ready' "$work/peer.log" || { tail -5 "$work/peer.log" >&2; die "better-auth did not start"; }
curl -fs "http://127.0.0.1:$tessera_port/readyz" >/dev/null || { tail -5 "$work/tessera.log" >&2; die "tessera did not start"; }

echo "Tessera ($("$binary" --version 2>/dev/null || echo tessera), $backend) and better-auth 1.7.25 (PostgreSQL, Node $(node --version)), $(nproc) cores"
node bench/peer/drive.mjs "http://127.0.0.1:$tessera_port" "http://127.0.0.1:$peer_port" "$users" "$requests" "$connections"
