#!/usr/bin/env bash
# Where a running server's CPU goes, while a load runs against it:
#
#   load-tests/profile.sh PID ADMIN_URL SECONDS [OUT_DIR]
#
# 1. From /proc and /metrics (always): the server's CPU seconds over the
#    window, the ranking answers in it and the CPU per answer, and each
#    model's inference seconds beside them. Those are
#    wall time: on a saturated box they include waiting for a core, so
#    read them as proportions between models, and the perf split below
#    as the share of CPU.
# 2. With `perf` (Debian's linux-perf): a sampled profile with DWARF call
#    stacks (OUT_DIR/perf.data), and the inclusive share of the server's
#    samples for each part of a /v1/rank request. perf costs the server
#    some throughput while it samples; the shares are what to read.
#    PERF=0 skips it (for the CPU per answer without perf's cost).
#
# Start the load first, then this; it stops by itself after SECONDS.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 PID ADMIN_URL SECONDS [OUT_DIR]" >&2
    exit 2
fi
pid=$1 admin=$2 seconds=$3 out=${4:-.cache/profile}
mkdir -p "$out"
tick=$(getconf CLK_TCK)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
inference_sums() { # model<TAB>seconds, one line per model
    curl -fsS --max-time 5 "$admin/metrics" |
        awk -F'[{}"]' '/^cascade_model_inference_duration_seconds_sum/ {
            for (i = 1; i < NF; i++) if ($i ~ /(^|,)model=$/) m = $(i + 1)
            split($0, v, " "); s[m] += v[length(v)]
        } END { for (m in s) printf "%s\t%s\n", m, s[m] }' | sort
}

rank_requests() { # ranking answers so far (every arm and outcome)
    curl -fsS --max-time 5 "$admin/metrics" |
        awk '/^cascade_rank_requests_total/ { n += $NF } END { printf "%d\n", n }'
}

before_cpu=$(cpu_ticks)
before_inf=$(inference_sums)
before_req=$(rank_requests)
if [ "${PERF:-1}" != 0 ] && command -v perf >/dev/null; then
    perf record -q -F 250 --call-graph dwarf,32768 -p "$pid" -o "$out/perf.data" -- sleep "$seconds" 2>/dev/null
else
    [ "${PERF:-1}" = 0 ] || echo "perf not found: CPU and inference shares only" >&2
    sleep "$seconds"
fi
after_cpu=$(cpu_ticks)
after_inf=$(inference_sums)
after_req=$(rank_requests)

cpu=$(awk -v a="$before_cpu" -v b="$after_cpu" -v t="$tick" 'BEGIN { printf "%.2f", (b - a) / t }')
echo "server CPU: $cpu s in $seconds s ($(awk -v c="$cpu" -v s="$seconds" 'BEGIN { printf "%.2f", c / s }') cores)"
awk -v n=$((after_req - before_req)) -v c="$cpu" -v s="$seconds" 'BEGIN {
    if (n > 0) printf "ranking answers: %d (%.0f/s), server CPU per answer: %.1f us\n", n, n / s, c / n * 1e6
}'
join -t $'\t' <(echo "$before_inf") <(echo "$after_inf") |
    awk -F'\t' -v cpu="$cpu" '{ d = $3 - $2; printf "  inference %-12s %7.2f s wall (%.2f per server CPU second)\n", $1, d, d / cpu }'

[ -f "$out/perf.data" ] || exit 0
perf report -i "$out/perf.data" --children --sort symbol -g none --stdio 2>/dev/null >"$out/report.txt"
echo "perf, inclusive share of the server's samples:"
part() { # label, then a pattern matched against the symbol (the line's last fields)
    awk -v label="$1" -v pat="$2" '$3 == "[.]" || $3 == "[k]" {
        sym = $4; for (i = 5; i <= NF; i++) sym = sym " " $i
        sub(/( -)+$/, "", sym)  # empty trailing columns
        if (sym ~ pat) { printf "  %-44s %s\n", label, $1; found = 1; exit }
    } END { if (!found) printf "  %-44s -\n", label }' "$out/report.txt"
}
part "/v1/rank (everything below)" 'Pipeline>::rank_cached::\{\{closure\}\}$'
part "retrieval" '^cascade::pipeline::stages::retrieve$'
part "feature assembly" '^cascade::data::features::FeatureSet::assemble$'
part "caller candidates (id lookup)" '^cascade::pipeline::stages::caller_candidates$'
part "model inference, dense path (any thread)" '^cascade::model::dense::Dense::run$'
part "model inference (blocking pool)" 'BlockingTask<cascade::model::executor'
part "batcher task (bulking, hand-offs)" '^cascade::model::batcher::Actor::run::\{\{closure\}\}$'
part "drift sampling" '^cascade::telemetry::drift::DriftMonitor::observe$'
part "score cache insert" '^cascade::pipeline::score_cache::ScoreCache::insert$'
perf report -i "$out/perf.data" --no-children --sort dso -g none --stdio 2>/dev/null |
    awk '/%/ { printf "  self time in %-30s %s\n", $2, $1 }' | head -4
