#!/usr/bin/env bash
# Rankings while the catalog changes: /v1/rank at a fixed rate, alone and
# beside a stream of new items (POST /v1/events, one item with an
# embedding per call), before and after thousands of catalog changes.
#
#   load-tests/field-updates-bench.sh NAME=BINARY[@DIR] ... [-- OUT_DIR]
#
# Each NAME=BINARY is a `cascade` release binary to measure (run from DIR,
# default the checkout: a build from another commit needs its own
# config/default.toml); they are measured one after the other in
# the same run, each on a fresh state folder, with the same seeds:
#  1. rank alone, 300 req/s, 20 s;
#  2. rank 300 req/s beside new items at 50 req/s (1,000 new items);
#  3. 5,000 more new items, 10 per call at 20 calls/s (no ranking load);
#  4. rank 300 req/s beside new items at 50 req/s again (6,000+ changes);
#  5. rank alone again, 20 s.
# Prints p50/p99/max per phase and the catalog rebuild time per batch
# (cascade_catalog_rebuild_seconds). Everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=()
out=.cache/field-updates
while [ $# -gt 0 ]; do
    case "$1" in
        --) out=$2; shift 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || { echo "usage: $0 NAME=BINARY[@DIR] ... [-- OUT_DIR]" >&2; exit 2; }
mkdir -p "$out"
load=./target/release/cascade-load
[ -x "$load" ] || cargo build --release -p cascade-load
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_ready() {
    for _ in $(seq 1 300); do
        curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "server on admin port $1 never became ready" >&2
    return 1
}

summary() { # name phase json
    python3 - "$@" <<'EOF'
import json, sys
name, phase, path = sys.argv[1:4]
d = json.load(open(path))
st = d.get("stages", [d])[0]
l = st.get("latency_ms", {})
errors = {k: v for k, v in st.get("errors", {}).items() if v}
print(f"{name:>8} {phase:<34} achieved {st.get('achieved_rps', 0):6.1f}/s  p50 {l.get('p50', 0):6.2f} ms  "
      f"p99 {l.get('p99', 0):6.2f} ms  max {l.get('max', 0):7.2f} ms  status {st.get('status', {})}  errors {errors or 'none'}")
EOF
}

rebuild() { # admin port -> mean and max rebuild seconds so far
    curl -fsS "http://127.0.0.1:$1/metrics" | python3 -c '
import sys
s = c = 0.0
buckets = []
for line in sys.stdin:
    if line.startswith("cascade_catalog_rebuild_seconds_sum"): s = float(line.split()[-1])
    if line.startswith("cascade_catalog_rebuild_seconds_count"): c = float(line.split()[-1])
print(f"catalog rebuilds: {int(c)}, mean {1000 * s / max(c, 1):.2f} ms")'
}

port=18480
for t in "${targets[@]}"; do
    name=${t%%=*}
    rest=${t#*=}
    bin=${rest%%@*}
    dir=.
    [[ "$rest" == *@* ]] && dir=${rest#*@}
    bin=$(realpath "$bin")
    public=$((port)); admin=$((port + 1)); port=$((port + 10))
    state=$(mktemp -d)
    (cd "$dir" && exec env CASCADE_STATE__DIR="$state" "$bin" serve \
        --listen "127.0.0.1:$public" --admin-listen "127.0.0.1:$admin") >"$out/$name.log" 2>&1 &
    pid=$!
    wait_ready "$admin"
    url="http://127.0.0.1:$public"
    rank() { "$load" --target "$url" --scenario rank --rate 300 --duration "$1" --warmup 2 --seed 7 --out "$2" >/dev/null; }
    items() { "$load" --target "$url" --scenario events --new-items --batch "${5:-1}" --rate "$1" --duration "$2" --warmup 0 --seed "$3" --out "$4" >/dev/null; }
    rank 20 "$out/$name-1.json"; summary "$name" "1 rank alone" "$out/$name-1.json"
    items 50 22 101 "$out/$name-2e.json" & ip=$!
    rank 20 "$out/$name-2.json"; wait $ip
    summary "$name" "2 rank + new items (first 1,000)" "$out/$name-2.json"
    summary "$name" "  new items" "$out/$name-2e.json"
    items 20 25 102 "$out/$name-3e.json" 10
    summary "$name" "3 5,000 more new items" "$out/$name-3e.json"
    items 50 22 103 "$out/$name-4e.json" & ip=$!
    rank 20 "$out/$name-4.json"; wait $ip
    summary "$name" "4 rank + new items (6,000+ so far)" "$out/$name-4.json"
    summary "$name" "  new items" "$out/$name-4e.json"
    rank 20 "$out/$name-5.json"; summary "$name" "5 rank alone after them" "$out/$name-5.json"
    echo "$name $(rebuild "$admin")"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
    rm -rf "$state"
done
