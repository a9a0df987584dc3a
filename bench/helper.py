#!/usr/bin/env python3
"""Seeding helper of bench/scale-out.sh: creates users through Tessera's HTTP API and prepares
the inputs of the load runs. Standard library only; TOTP codes come from pyotp when it is
installed, else from Debian's oathtool, never from Tessera.

  helper.py users --base URL --prefix P --count N [--mfa] --out FILE [--seconds S]
      register + login each user; with --mfa also MFA setup + verify (a code computed here;
      verify hashes ten backup codes with argon2, so an MFA user costs 13 hashes). Users not
      started within S seconds are left out.
      FILE: one JSON object per line {email, password, token, secret?, step?}.
  helper.py pairs --base URL [--base URL2] --users FILE --out PREFIX [--split 1|2] [--cross]
                  [--per-user K] [--bound SECS] [--prep-seconds SECS]
      K password logins per user (argon2 on the server: not timed) for fresh mfa_tokens, then
      TOTP codes for K consecutive steps above the last step accepted for the user (replay
      rule), all acceptable for the next SECS seconds. Writes PREFIX.0 (and PREFIX.1 with
      --split 2) with lines "mfa_token code", a user's pairs in step order, and records the last
      step in FILE so the next call picks later ones. With --cross, the tokens of PREFIX.i are
      obtained through the other base URL than the one whose wrk process will use them.
  helper.py replay --base URL --pairs FILE --count K
      re-sends K already used pairs; prints how many were accepted (must be 0).
  helper.py pglog FILE...
      p50/p99 latency (ms) of pgbench per-transaction logs.
  helper.py cpu --db NAME --pid PID... --out FILE
      until SIGTERM: CPU clock ticks of the machine (total and busy, all cores), of the given
      processes (the instances) and of the PostgreSQL backends of database NAME.
  helper.py report RUNS
      the table of the run from RUNS: lines "round<TAB>workload<TAB>instances<TAB>out[,out]"
      naming wrk outputs (RESULT lines printed by bench/common.lua), or
      "round<TAB>workload<TAB>-<TAB>=rate p50 p99 note" for a baseline measured otherwise.
"""

import argparse
import concurrent.futures as cf
import http.client
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

PASSWORD = "bench-password-0123456789"
STEP = 30

_local = threading.local()


class HttpError(Exception):
    pass


def _conn(base):
    conns = getattr(_local, "conns", None)
    if conns is None:
        conns = _local.conns = {}
    conn = conns.get(base)
    if conn is None:
        u = urllib.parse.urlsplit(base)
        conn = conns[base] = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    return conn


def call(base, method, path, body=None, token=None, expect=(200,)):
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = "Bearer " + token
    data = json.dumps(body).encode() if body is not None else None
    for attempt in range(3):
        conn = _conn(base)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            break
        except (http.client.HTTPException, OSError):
            # keep-alive connection closed by the server's idle timeout: reconnect once or twice
            conn.close()
            _local.conns.pop(base, None)
            if attempt == 2:
                raise
    if resp.status not in expect:
        raise HttpError(f"{method} {path} -> {resp.status}: {raw[:300].decode(errors='replace')}")
    return json.loads(raw) if raw else None


def totp_codes(secret, first_step, count=1):
    """RFC 6238 codes of steps first_step .. first_step+count-1 for a base32 secret, from pyotp
    when it is installed, else from one oathtool call (its window prints consecutive steps)."""
    try:
        import pyotp  # noqa: PLC0415

        t = pyotp.TOTP(secret)
        return [t.at((first_step + k) * STEP) for k in range(count)]
    except ImportError:
        pass
    out = subprocess.run(
        ["oathtool", "--totp", "--base32", "--digits=6", "--time-step-size=30s",
         f"--window={count - 1}", f"--now=@{first_step * STEP + 1}", secret],
        check=True, capture_output=True, text=True,
    )
    codes = out.stdout.split()
    if len(codes) != count:
        raise RuntimeError(f"oathtool printed {out.stdout!r}")
    return codes


def totp(secret, step):
    return totp_codes(secret, step)[0]


def current_step():
    return int(time.time()) // STEP


def pool_map(fn, items, workers):
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def cmd_users(args):
    deadline = time.time() + args.seconds

    def one(i):
        if time.time() > deadline:
            return None
        email = f"{args.prefix}-{i}@bench.example"
        call(args.base, "POST", "/api/auth/register", {"email": email, "password": PASSWORD}, expect=(201,))
        login = call(args.base, "POST", "/api/auth/login", {"email": email, "password": PASSWORD})
        rec = {"email": email, "password": PASSWORD, "token": login["token"]}
        if args.mfa:
            setup = call(args.base, "POST", "/api/user/profile/mfa/setup", {"password": PASSWORD}, token=login["token"])
            step = current_step()
            call(args.base, "POST", "/api/user/profile/mfa/verify", {"code": totp(setup["secret"], step)}, token=login["token"])
            # the code is that of `step`, so the server stored `step` as the last accepted one
            rec.update(secret=setup["secret"], step=step)
        return rec

    t0 = time.time()
    recs = [r for r in pool_map(one, range(args.count), args.workers) if r is not None]
    if not recs:
        raise SystemExit("helper.py users: no user created within the time bound")
    with open(args.out, "w") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")
    cut = f" (of {args.count}: cut by the {args.seconds}s bound)" if len(recs) < args.count else ""
    print(f"seeded {len(recs)} users{' with MFA' if args.mfa else ''}{cut} in {time.time() - t0:.0f}s", file=sys.stderr)


def cmd_pairs(args):
    with open(args.users) as f:
        users = [json.loads(line) for line in f if line.strip()]
    bases, k = args.base, args.per_user
    t0 = time.time()
    deadline = t0 + args.prep_seconds

    # One password login per pair, phase by phase (all users' first pair, then all second ...),
    # so each wrk process meets a user's pairs in the order of their steps, len(users)/split
    # requests apart. Logins stop at the deadline (mfa_tokens live 5 minutes).
    def login(item):
        phase, i, u = item
        if time.time() > deadline:
            return None
        part = i % args.split
        # --cross: tokens for the wrk process aimed at bases[part] come from the other instance
        via = bases[(part + 1) % len(bases)] if args.cross else bases[part % len(bases)]
        r = call(via, "POST", "/api/auth/login", {"email": u["email"], "password": u["password"]})
        if not r.get("mfa_required"):
            raise HttpError(f"login of {u['email']} did not ask for MFA")
        return phase, i, part, r["mfa_token"]

    items = [(phase, i, u) for phase in range(k) for i, u in enumerate(users)]
    tokens = [t for t in pool_map(login, items, args.workers) if t is not None]
    prepared = time.time() - t0

    # Codes for steps s0 .. s0+k-1 with s0 = T-k+2 (T = the current step), which the server
    # (skew 1: it accepts T-1..T+1) takes in this order while its step is at most s0+1. So:
    # s0 must exceed the last accepted step of every user (replay rule), and the step s0+1
    # must not end before the run's time bound.
    last = max(u["step"] for u in users)
    while True:
        now = time.time()
        s0 = int(now) // STEP - k + 2
        if s0 > last and (s0 + 2) * STEP - now >= args.bound + 3:
            break
        time.sleep(0.1)
    codes = pool_map(lambda u: totp_codes(u["secret"], s0, k), users, args.workers)
    outs = [open(f"{args.out}.{p}", "w") for p in range(args.split)]
    for phase, i, part, token in tokens:
        outs[part].write(f"{token} {codes[i][phase]}\n")
    for o in outs:
        o.close()
    for u in users:
        u["step"] = s0 + k - 1
    with open(args.users, "w") as f:
        for u in users:
            f.write(json.dumps(u) + "\n")
    print(f"prepared {len(tokens)} pairs ({len(users)} users x {k}{', cut by the time bound' if len(tokens) < len(items) else ''}) "
          f"in {prepared:.0f}s of logins + {time.time() - t0 - prepared:.0f}s waiting for a usable step; "
          f"codes valid for {(s0 + 2) * STEP - time.time():.0f}s more", file=sys.stderr)


def cmd_replay(args):
    with open(args.pairs) as f:
        pairs = [line.split() for line in f if line.strip()][: args.count]
    accepted = 0
    statuses = {}
    for token, code in pairs:
        conn = _conn(args.base)
        conn.request("POST", "/api/auth/login/mfa", body=json.dumps({"mfa_token": token, "code": code}),
                     headers={"content-type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        accepted += resp.status == 200
    print(f"{accepted} {len(pairs)} " + ",".join(f"{k}:{v}" for k, v in sorted(statuses.items())))


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def cmd_pglog(args):
    lat = []
    for path in args.files:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    lat.append(int(parts[2]) / 1000)
    lat.sort()
    print(f"{percentile(lat, 50):.2f} {percentile(lat, 99):.2f} {len(lat)}")


def parse_result(path):
    res, samples = None, []
    with open(path) as f:
        for line in f:
            if line.startswith("RESULT "):
                res = dict(kv.split("=", 1) for kv in line.split()[1:])
            elif line.startswith("SAMPLE "):
                samples.append(line[7:].strip())
    if res is None:
        raise SystemExit(f"no RESULT line in {path} (did wrk fail?)")
    return res, samples


def cmd_cpu(args):
    """Samples until SIGTERM, every 0.2 s: the PostgreSQL backends of the database come and go
    (the instances close a pooled connection whose query was cancelled by a client going away,
    e.g. when wrk stops), so each backend's CPU time is followed while it lives, not read once
    before and once after. Prints: machine total and busy ticks (all cores), ticks of the given
    processes, ticks of the backends, each over the sampled interval."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    def proc_ticks(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError, ValueError):
            return None

    def machine():
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        total = sum(cpu[:8])
        return total, total - cpu[3] - cpu[4]  # busy: minus idle and iowait

    def backends():
        found = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().decode(errors="replace")
            except OSError:
                continue
            if cmd.startswith("postgres: ") and f" {args.db} " in cmd:
                ticks = proc_ticks(entry)
                if ticks is not None:
                    found[entry] = ticks
        return found

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    total0, busy0 = machine()
    inst0 = sum(proc_ticks(p) or 0 for p in args.pid)
    first = backends()  # backends born later start from 0
    last = dict(first)
    while not stop:
        time.sleep(0.2)
        for pid, ticks in backends().items():
            last[pid] = max(ticks, last.get(pid, 0))
    for pid, ticks in backends().items():
        last[pid] = max(ticks, last.get(pid, 0))
    total1, busy1 = machine()
    inst1 = sum(proc_ticks(p) or 0 for p in args.pid)
    pg = sum(t - first.get(pid, 0) for pid, t in last.items())
    with open(args.out, "w") as f:
        f.write(f"{total1 - total0} {busy1 - busy0} {inst1 - inst0} {pg}\n")


def cpu_split(path, ok):
    """CPU per 200 answer (ms) of the instances and of PostgreSQL, and the machine's busy share
    with the part of it outside both (wrk, PostgreSQL's background processes, other users)."""
    import os  # noqa: PLC0415

    hz = os.sysconf("SC_CLK_TCK")
    with open(path) as f:
        total, busy, inst, pg = (int(x) for x in f.read().split())
    # /proc/stat counts all cores in the same ticks as the processes' times
    per = lambda ticks: f"{ticks * 1000 / hz / ok:.2f}" if ok else "-"  # noqa: E731
    share = lambda ticks: f"{100 * ticks / total:.0f} %" if total else "-"  # noqa: E731
    return [per(inst), per(pg), share(busy), share(busy - inst - pg)]


def median(values):
    v = sorted(values)
    n = len(v)
    return (v[n // 2] + v[(n - 1) // 2]) / 2 if n else float("nan")


def cmd_report(args):
    rows, notes, ones, rates, cpu_rows = [], [], {}, {}, []
    with open(args.runs) as f:
        entries = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    for rnd, workload, instances, outs, *cpu in entries:
        if outs.startswith("="):
            rate, p50, p99, *note = outs[1:].split()
            rows.append([rnd, workload, instances, rate, p50, p99, " ".join(note) or "-", "", ""])
            continue
        results = [parse_result(p) for p in outs.split(",")]
        ok = sum(int(r["ok"]) for r, _ in results)
        total = sum(int(r["total"]) for r, _ in results)
        first = min(int(r["first_us"]) for r, _ in results if int(r["first_us"]) > 0)
        last = max(int(r["last_us"]) for r, _ in results)
        secs = (last - first) / 1e6
        rate = ok / secs if secs > 0 else 0.0
        rates.setdefault((workload, instances), []).append(rate)
        p50 = max(int(r["p50_us"]) for r, _ in results) / 1000
        p99 = max(int(r["p99_us"]) for r, _ in results) / 1000
        other = []
        for r, samples in results:
            for st in r["statuses"].split(";"):
                if st and not st.startswith("200:"):
                    other.append(st)
            if r["sockerr"] != "0/0/0/0":
                other.append("socket errors connect/read/write/timeout " + r["sockerr"])
            notes.extend(f"{workload}, {instances} instance(s), round {rnd}: {s}" for s in samples)
        ratio = ""
        if instances == "1":
            ones[(rnd, workload)] = rate
        elif (rnd, workload) in ones and ones[(rnd, workload)] > 0:
            ratio = f"{rate / ones[(rnd, workload)]:.2f}"
        split = "+".join(r["ok"] for r, _ in results)
        if cpu:
            cpu_rows.append([rnd, workload, instances, *cpu_split(cpu[0], ok)])
        rows.append([rnd, workload, instances, f"{rate:.0f}", f"{p50:.2f}", f"{p99:.2f}",
                     f"{ok}/{total} ({split}) in {secs:.1f} s", "; ".join(other) or "none", ratio])
    head = ["round", "workload", "instances", "requests/s (200 only)", "p50 ms", "p99 ms",
            "200s / answered (per wrk process)", "other statuses, errors", "two/one"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    workloads = list(dict.fromkeys(w for w, _ in rates))
    if workloads:
        print("\nMedian over the rounds (per-round ratios in brackets):\n")
        print("| workload | one instance, requests/s | two instances, requests/s | two/one |")
        print("|---|---|---|---|")
        for w in workloads:
            one, two = rates.get((w, "1"), []), rates.get((w, "2"), [])
            per_round = ", ".join(f"{b / a:.2f}" for a, b in zip(one, two) if a > 0)
            m1, m2 = median(one), median(two)
            print(f"| {w} | {m1:.0f} | {m2:.0f} | {m2 / m1:.2f} ({per_round}) |")
    if cpu_rows:
        print("\nCPU time per 200 answer (all threads of the instances; PostgreSQL backends of the "
              "benchmark database) and how busy the machine's cores were during the run:\n")
        head = ["round", "workload", "instances", "tessera ms/request", "PostgreSQL ms/request",
                "cores busy", "of which outside both"]
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for r in cpu_rows:
            print("| " + " | ".join(r) + " |")
    for n in notes:
        print(f"\nnon-200 sample: {n}")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("users")
    u.add_argument("--base", required=True)
    u.add_argument("--prefix", required=True)
    u.add_argument("--count", type=int, required=True)
    u.add_argument("--mfa", action="store_true")
    u.add_argument("--out", required=True)
    u.add_argument("--workers", type=int, default=8)
    u.add_argument("--seconds", type=int, default=300, help="time bound: users not started by then are left out")
    q = sub.add_parser("pairs")
    q.add_argument("--base", action="append", required=True)
    q.add_argument("--users", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--split", type=int, default=1, choices=(1, 2))
    q.add_argument("--cross", action="store_true")
    q.add_argument("--per-user", type=int, default=3, choices=(1, 2, 3))
    q.add_argument("--bound", type=int, default=25, help="seconds the run may last")
    q.add_argument("--prep-seconds", type=int, default=240)
    q.add_argument("--workers", type=int, default=8)
    r = sub.add_parser("replay")
    r.add_argument("--base", required=True)
    r.add_argument("--pairs", required=True)
    r.add_argument("--count", type=int, default=50)
    g = sub.add_parser("pglog")
    g.add_argument("files", nargs="+")
    c = sub.add_parser("cpu")
    c.add_argument("--db", required=True)
    c.add_argument("--pid", nargs="+", required=True)
    c.add_argument("--out", required=True)
    t = sub.add_parser("report")
    t.add_argument("runs")
    args = p.parse_args()
    if args.cmd in ("users", "pairs"):
        try:
            import pyotp  # noqa: F401, PLC0415
        except ImportError:
            if not shutil.which("oathtool"):
                sys.exit("helper.py: neither pyotp nor oathtool is available")
    {"users": cmd_users, "pairs": cmd_pairs, "replay": cmd_replay, "pglog": cmd_pglog,
     "report": cmd_report, "cpu": cmd_cpu}[args.cmd](args)


if __name__ == "__main__":
    main()
