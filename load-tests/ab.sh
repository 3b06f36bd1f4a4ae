#!/usr/bin/env bash
# Two Cascade builds (or one build under two settings) in alternating
# rounds at one connection count: throughput and p99 from wrk, and the
# server's CPU per answer from /proc and /metrics (load-tests/profile.sh,
# without perf). Both caches off, known users (benches/peer/rank.lua).
#
#   load-tests/ab.sh OLD_BINARY NEW_BINARY                 # two builds
#   A_ENV="CASCADE_RANKING__BATCHING=true" B_ENV="CASCADE_RANKING__BATCHING=false" \
#     load-tests/ab.sh BINARY BINARY                       # two settings
#
# Environment: ROUNDS (3), CONNS (64), SECONDS_PER_ROUND (14: 2 s of it
# before the CPU window, 10 s in it). Each round starts a fresh server on
# 127.0.0.1:18181 (admin 19191) and stops it. Needs wrk.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -eq 2 ] || { echo "usage: $0 BINARY_A BINARY_B" >&2; exit 2; }
rounds=${ROUNDS:-3} conns=${CONNS:-64} secs=${SECONDS_PER_ROUND:-14}
users=$(mktemp)
trap 'rm -f "$users"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
# Known user ids, as benches/peer/compare.sh writes them (its venv has
# pyarrow: benches/peer/setup.sh).
"$repo/benches/peer/.venv/bin/python" -c 'import pyarrow.parquet as pq, sys
sys.stdout.write("\n".join(pq.read_table(sys.argv[1], columns=["id"]).column("id").to_pylist()) + "\n")' \
    "$repo/models/catalog/users.parquet" > "$users"
run() { # label binary env
    local label=$1 bin=$2 envs=$3 out
    out=$(mktemp)
    # shellcheck disable=SC2086
    env $envs CASCADE_RANKING__CACHE__ENABLED=false CASCADE_RANKING__SCORE_CACHE__ENABLED=false \
        CASCADE_SERVER__DRAIN_DELAY_MS=0 CASCADE_STATE__DIR="$(mktemp -d)" \
        "$bin" serve --listen 127.0.0.1:18181 --admin-listen 127.0.0.1:19191 >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs http://127.0.0.1:18181/healthz >/dev/null 2>&1 && break; sleep 0.2; done
    wrk -t2 -c"$conns" -d2s -s "$repo/benches/peer/rank.lua" http://127.0.0.1:18181 -- "$users" >/dev/null 2>&1
    wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$repo/benches/peer/rank.lua" \
        http://127.0.0.1:18181 -- "$users" >"$out" 2>&1 &
    local load=$!
    sleep 2
    local cpu
    cpu=$(PERF=0 "$repo/load-tests/profile.sh" "$pid" http://127.0.0.1:19191 10 "$(mktemp -d)" |
        sed -n 's/.*CPU per answer: //p')
    wait "$load"
    printf '%-2s %-40s %10s req/s  p99 %-8s  CPU per answer %s\n' "$label" "$(basename "$bin") ${envs:-}" \
        "$(awk '/Requests\/sec/ {print $2}' "$out")" "$(awk '$1 == "99%" {print $2}' "$out")" "$cpu"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    rm -f "$out"
}
for r in $(seq "$rounds"); do
    echo "round $r, $conns connections"
    run A "$1" "${A_ENV:-}"
    run B "$2" "${B_ENV:-}"
done
