#!/usr/bin/env bash
# Cascade against its Python peer (benches/peer/server.py) on the same
# requests: known MovieLens users, both of Cascade's caches off.
#
#   benches/peer/compare.sh                          # Cascade on tract (config/default.toml)
#   benches/peer/compare.sh --config config/ort.toml # Cascade on ONNX Runtime (a build with --features ort)
#
# Starts both servers on free loopback ports, checks parity once (the same
# 2,000 requests to both: identical top-10 ids, scores within 1e-6; stops
# here when they differ), then runs alternating wrk rounds (Python, then
# Cascade, at each connection count) and prints req/s, p50 and p99 per round,
# the Cascade/Python throughput ratio, and Cascade's degraded answers
# (fallbacks: a cheaper, different answer) from its /metrics. Both servers
# are stopped on exit.
#
# Options: --config FILE (Cascade's, default config/default.toml)
#          --cascade-bin PATH (default target/release/cascade; never built here)
#          --rounds N (3) --duration S (10) --conns "16 64" --threads N (2)
#          --parity-n N (2000)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo/benches/peer"
cd "$repo"

config=config/default.toml
cascade_bin=target/release/cascade
rounds=3
duration=10
conns="16 64"
threads=2
parity_n=2000
while [[ $# -gt 0 ]]; do
    case "$1" in
        --config) config="$2"; shift 2 ;;
        --cascade-bin) cascade_bin="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --conns) conns="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --parity-n) parity_n="$2"; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

[[ -x "$cascade_bin" ]] || { echo "no Cascade binary at $cascade_bin (cargo build --release, or --features ort for ort)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }
"$here/setup.sh" >/dev/null
py="$here/.venv/bin/python"

work="$(mktemp -d /tmp/cascade-peer.XXXXXX)"
peer_pid="" cascade_pid=""
stop() {
    # SIGINT: Cascade skips its drain delay; uvicorn stops its workers.
    for pid in $cascade_pid $peer_pid; do kill -INT "$pid" 2>/dev/null || true; done
    for pid in $cascade_pid $peer_pid; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM

read -r peer_port cascade_port admin_port < <("$py" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
peer="http://127.0.0.1:$peer_port"
cascade="http://127.0.0.1:$cascade_port"
admin="http://127.0.0.1:$admin_port"

"$py" -c 'import pyarrow.parquet as pq, sys; sys.stdout.write("\n".join(pq.read_table("models/catalog/users.parquet", columns=["id"]).column("id").to_pylist()) + "\n")' > "$work/users.txt"

"$py" "$here/server.py" --port "$peer_port" > "$work/peer.log" 2>&1 &
peer_pid=$!
# ORT_DYLIB_PATH: where the ort backend finds ONNX Runtime (unless the config says).
ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$repo/.ort/libonnxruntime.so}" \
CASCADE_RANKING__CACHE__ENABLED=false \
CASCADE_RANKING__SCORE_CACHE__ENABLED=false \
CASCADE_STATE__DIR="$work/state" \
CASCADE_LOGGING__LEVEL=warn \
    "$cascade_bin" serve --config "$config" \
    --listen "127.0.0.1:$cascade_port" --admin-listen "127.0.0.1:$admin_port" > "$work/cascade.log" 2>&1 &
cascade_pid=$!

ready() { # name url pid log
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "$2/readyz" && return 0
        if ! kill -0 "$3" 2>/dev/null; then
            echo "$1 exited before it was ready:" >&2; head -5 "$4" >&2
            if grep -q "not compiled in" "$4"; then
                echo "(this binary has no ONNX Runtime: cargo build --release --features ort, or --cascade-bin)" >&2
            fi
            exit 1
        fi
        sleep 0.1
    done
    echo "$1 not ready after 30 s:" >&2; tail -20 "$4" >&2; exit 1
}
ready "the Python peer" "$peer" "$peer_pid" "$work/peer.log"
ready "Cascade" "$cascade" "$cascade_pid" "$work/cascade.log"
backend=$(curl -s "$admin/admin/models" | "$py" -c 'import json, sys
print(",".join(sorted({m["backend"] for m in json.load(sys.stdin)["models"]})))' 2>/dev/null || echo "?")
echo "Cascade $cascade_bin --config $config (backend: $backend), caches off, on $cascade; Python peer on $peer"
echo "machine: $(nproc) cores; wrk -t$threads, ${duration}s per run, $rounds rounds"

"$py" "$here/parity.py" --cascade "$cascade" --peer "$peer" -n "$parity_n"

# Not-ok Cascade answers so far (fallbacks, errors), from its counters.
not_ok() {
    curl -s "$admin/metrics" | awk '/^cascade_rank_requests_total/ && !/outcome="ok"/ {s += $NF} END {print s + 0}'
}

run_wrk() { # url conns seconds -> "req/s p50 p99 errors"
    wrk -t"$threads" -c"$2" -d"$3"s --latency -s "$here/rank.lua" "$1" -- "$work/users.txt" > "$work/wrk.out"
    awk '
        /Requests\/sec:/ {rps = $2}
        $1 == "50%" {p50 = $2}
        $1 == "99%" {p99 = $2}
        /Non-2xx or 3xx responses:/ {err += $NF}
        /Socket errors:/ {gsub(/,/, ""); err += $4 + $6 + $8 + $10}
        END {printf "%s %s %s %d\n", rps, p50, p99, err}' "$work/wrk.out"
}

# Warm both up (page cache, allocator, branch predictors), unreported.
run_wrk "$peer" 16 2 >/dev/null
run_wrk "$cascade" 16 2 >/dev/null

# Cascade's per-stage means from its /metrics counters: snapshot, diff.
snapshot() {
    curl -s "$admin/metrics" | awk '
        /^cascade_(stage_duration_seconds|rank_duration_seconds|model_inference_duration_seconds|inference_queue_wait_seconds|batch_queue_wait_seconds)_(sum|count)/ {
            key = $1; kind = (key ~ /_sum/) ? "sum" : "count"
            sub(/_(sum|count)/, "", key); gsub(/,?(variant|version)="[^"]*"/, "", key); gsub(/\{,/, "{", key); sub(/\{\}/, "", key)
            print key, kind, $NF
        }'
}
stage_means() { # before after
    awk 'NR == FNR {before[$1 " " $2] = $3; next}
        {v = $3 - before[$1 " " $2]; if ($2 == "sum") sum[$1] = v; else cnt[$1] = v}
        END {for (k in sum) if (cnt[k] > 0) printf "  %-72s %8.1f us  (n=%d)\n", k, 1e6 * sum[k] / cnt[k], cnt[k]}' "$1" "$2" | sort
}

snapshot > "$work/m_start"
results="$work/results"
printf "\n%-5s %5s | %10s %8s %8s | %10s %8s %8s %8s | %6s\n" \
    round conns "py req/s" "py p50" "py p99" "cas req/s" "cas p50" "cas p99" "cas !ok" ratio
for r in $(seq 1 "$rounds"); do
    for c in $conns; do
        read -r prps pp50 pp99 perr < <(run_wrk "$peer" "$c" "$duration")
        before=$(not_ok)
        read -r crps cp50 cp99 cerr < <(run_wrk "$cascade" "$c" "$duration")
        degraded=$(( $(not_ok) - before ))
        ratio=$(awk -v a="$crps" -v b="$prps" 'BEGIN {printf "%.2f", a / b}')
        printf "%-5s %5s | %10s %8s %8s | %10s %8s %8s %8s | %6s\n" \
            "$r" "$c" "$prps" "$pp50" "$pp99" "$crps" "$cp50" "$cp99" "$degraded" "${ratio}x"
        [[ "$perr" == 0 && "$cerr" == 0 ]] || echo "      errors: python $perr, cascade $cerr (non-2xx or socket errors)"
        echo "$c $prps $crps" >> "$results"
    done
done

echo
echo "median over rounds (req/s):"
for c in $conns; do
    awk -v c="$c" '$1 == c {p[++n] = $2; q[n] = $3}
        function median(a, n,   i, j, t) {
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) {t = a[i]; a[i] = a[j]; a[j] = t}
            return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        END {mp = median(p, n); mc = median(q, n)
             printf "  %3d connections: python %.0f, cascade %.0f, cascade/python %.2fx\n", c, mp, mc, mc / mp}' "$results"
done

echo
echo "uncontended: 1 connection, 1 wrk thread, 5 s each"
threads_saved=$threads; threads=1
read -r prps pp50 pp99 _ < <(run_wrk "$peer" 1 5)
snapshot > "$work/m0"
read -r crps cp50 cp99 _ < <(run_wrk "$cascade" 1 5)
snapshot > "$work/m1"
threads=$threads_saved
echo "  python  $prps req/s, p50 $pp50, p99 $pp99"
echo "  cascade $crps req/s, p50 $cp50, p99 $cp99"
echo "  Cascade's stages in that run (mean per call, from /metrics):"
stage_means "$work/m0" "$work/m1"
echo
echo "Cascade's stages over all the loaded rounds above (queueing included):"
stage_means "$work/m_start" "$work/m0"
