#!/usr/bin/env bash
# Live events under load, on the shipped app, with a release build:
#
#   load-tests/events-bench.sh [OUT_DIR]
#
# For each state backend (embedded with fsync on and off; Redis, Debian's
# redis-server on a loopback port of its own, two replicas):
#  1. events alone, a ramp of --batch 10 requests (events/s = 10 x rate),
#     open loop, p50/p99 per step;
#  2. /v1/rank alone at 300 req/s, then the same with 1,000 events/s
#     (100 req/s x 10) posted concurrently: the p99 ratio;
#  3. with Redis, the apply lag on the second replica (which only follows
#     the stream) from cascade_event_apply_lag_seconds.
# Every server gets a fresh state folder; everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.cache/events-bench}
mkdir -p "$out"
bin=./target/release/cascade
load=./target/release/cascade-load
[ -x "$bin" ] && [ -x "$load" ] || cargo build --release -p cascade -p cascade-load
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() { # admin port
    for _ in $(seq 1 300); do
        curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server on admin port $1 never became ready" >&2
    return 1
}

start() { # name public admin [env...]
    local name=$1 public=$2 admin=$3
    shift 3
    env CASCADE_STATE__DIR="$(mktemp -d)" "$@" "$bin" serve \
        --listen "127.0.0.1:$public" --admin-listen "127.0.0.1:$admin" \
        >"$out/$name.log" 2>&1 &
    pids+=($!)
    wait_ready "$admin"
}

summary() { # json file -> "p50 p99 achieved errors"
    python3 - "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for st in d.get("stages", [d]):
    l = st.get("latency_ms", {})
    errors = {k: v for k, v in st.get("errors", {}).items() if v}
    print(f'  offered {st.get("offered_rps", 0):7.1f}/s  achieved {st.get("achieved_rps", 0):7.1f}/s  '
          f'p50 {l.get("p50", 0):7.2f} ms  p99 {l.get("p99", 0):7.2f} ms  '
          f'status {st.get("status", {})}  errors {errors or "none"}')
EOF
}

lag_p99() { # admin port -> p99 of the apply lag from the histogram buckets
    curl -fsS "http://127.0.0.1:$1/metrics" | python3 -c '
import sys, re
b = []
for line in sys.stdin:
    m = re.match(r"cascade_event_apply_lag_seconds_bucket\{le=\"([^\"]+)\"\} (\S+)", line)
    if m:
        b.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
if not b or b[-1][1] == 0:
    print("no samples"); sys.exit()
total = b[-1][1]
p = lambda q: next(le for le, c in b if c >= q * total)
print(f"{int(total)} batches; p50 <= {p(0.5)*1000:.2f} ms, p99 <= {p(0.99)*1000:.2f} ms (bucket bounds)")'
}

run_backend() { # label public admin [env...]
    local label=$1 public=$2 admin=$3
    shift 3
    echo "== $label"
    start "$label" "$public" "$admin" "$@"
    local target="http://127.0.0.1:$public"
    echo "events alone (batch 10), ramp:"
    "$load" --target "$target" --scenario events --batch 10 --ramp 100,1000,3000,6000 \
        --duration 8 --warmup 2 --seed 1 --out "$out/$label-events.json" >/dev/null
    summary "$out/$label-events.json"
    echo "/v1/rank at 300/s alone:"
    "$load" --target "$target" --rate 300 --duration 15 --warmup 3 --seed 7 \
        --out "$out/$label-rank-alone.json" >/dev/null
    summary "$out/$label-rank-alone.json"
    echo "/v1/rank at 300/s with 1,000 events/s alongside:"
    "$load" --target "$target" --scenario events --batch 10 --rate 100 --duration 19 \
        --warmup 1 --seed 2 --out "$out/$label-events-bg.json" >/dev/null &
    local bg=$!
    "$load" --target "$target" --rate 300 --duration 15 --warmup 3 --seed 7 \
        --out "$out/$label-rank-events.json" >/dev/null
    wait "$bg"
    summary "$out/$label-rank-events.json"
    echo "  (events alongside:)"
    summary "$out/$label-events-bg.json"
}

run_backend embedded-fsync 18501 19501 CASCADE_STATE__FSYNC=true
cleanup; pids=()
run_backend embedded-nofsync 18502 19502 CASCADE_STATE__FSYNC=false
cleanup; pids=()

if command -v redis-server >/dev/null; then
    rport=16399
    rdir=$(mktemp -d)
    redis-server --bind 127.0.0.1 --port "$rport" --dir "$rdir" --appendonly yes \
        --appendfsync everysec --save "" --daemonize no >"$out/redis.log" 2>&1 &
    pids+=($!)
    sleep 0.5
    url="redis://127.0.0.1:$rport/0"
    # The follower replica: it only reads the stream.
    start follower 18504 19504 CASCADE_STATE__BACKEND=redis CASCADE_STATE__REDIS_URL="$url"
    run_backend redis-aof-everysec 18503 19503 CASCADE_STATE__BACKEND=redis CASCADE_STATE__REDIS_URL="$url"
    echo "apply lag on the follower replica: $(lag_p99 19504)"
else
    echo "redis-server is not installed: the Redis runs are skipped"
fi
