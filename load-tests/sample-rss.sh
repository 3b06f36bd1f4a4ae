#!/usr/bin/env bash
# Samples a running server's memory next to its cache gauges, for soak runs:
#
#   load-tests/sample-rss.sh PID ADMIN_URL SECONDS [INTERVAL]
#   load-tests/sample-rss.sh "$(pgrep -f 'cascade serve')" http://127.0.0.1:19191 1800 30
#
# Prints one tab-separated line per sample: seconds since start, RSS (KB),
# and the weighed size of each cache (response cache bytes, score-cache
# scores) with their entry counts, read from /metrics. RSS that keeps rising
# while both caches sit at their bounds is a leak or fragmentation; RSS that
# rises with them is the caches filling. It stops by itself after SECONDS,
# or earlier when the process exits.
set -euo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 PID ADMIN_URL SECONDS [INTERVAL]" >&2
    exit 2
fi
pid=$1 admin=$2 seconds=$3 interval=${4:-30}

gauge() { # metric-line prefix -> value, or "-" when absent
    awk -v p="$1" 'index($0, p) == 1 { print $NF; found = 1; exit } END { if (!found) print "-" }'
}

printf 's\trss_kb\tresponse_cache_bytes\tresponse_entries\tscore_cache_scores\tscore_entries\n'
start=$(date +%s)
while :; do
    now=$(( $(date +%s) - start ))
    rss=$(ps -o rss= -p "$pid" 2>/dev/null | tr -d ' ') || break
    [ -n "$rss" ] || break
    m=$(curl -fsS --max-time 5 "$admin/metrics" 2>/dev/null || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$now" "$rss" \
        "$(gauge 'cascade_response_cache_bytes' <<<"$m")" \
        "$(gauge 'cascade_cache_entries{cache="response"}' <<<"$m")" \
        "$(gauge 'cascade_score_cache_scores' <<<"$m")" \
        "$(gauge 'cascade_cache_entries{cache="score"}' <<<"$m")"
    [ "$now" -lt "$seconds" ] || break
    sleep "$interval"
done
