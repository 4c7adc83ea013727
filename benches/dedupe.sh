#!/usr/bin/env bash
# What a dedupe window costs sends: sends/s of 64 publishers on 1,000 streams (no receivers)
# without and with `dedupeWindowSeconds`, a fresh server per run, alternated, and the
# server's RSS and remembered ids at the end. In memory, or (STORE=embedded) persistent sends
# to the embedded store, each run on a fresh data directory. Needs release builds of
# ipubsub-server and ipubsub-loadgen.
#
#   bash benches/dedupe.sh [ROUNDS] [SECONDS]                 # default: 3 rounds of 5 s
#   STORE=embedded bash benches/dedupe.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
seconds=${2:-5}
port=16690
store=${STORE:-none}
case "$store" in
none) load=(--mode memory) metric=ipubsub_dedupe_entries ;;
embedded) load=(--mode persistent) metric=ipubsub_log_remembered_ids ;;
*) echo "STORE is none or embedded" >&2; exit 2 ;;
esac
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
for round in $(seq 1 "$rounds"); do
    for mode in off on; do
        rm -rf "$data/store"
        IPUBSUB_NODE__HTTP_BIND_ADDR_PORT=127.0.0.1:$port IPUBSUB_STORAGE__BACKEND=$store \
            IPUBSUB_STORAGE__EMBEDDED__PATH="$data/store" \
            IPUBSUB_LOG__LEVEL=warn target/release/ipubsub-server >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 1 50); do
            curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
            sleep 0.1
        done
        extra=()
        [ "$mode" = on ] && extra=(--dedupe-window 300)
        rate=$(target/release/ipubsub-loadgen --url "http://127.0.0.1:$port" --publishers 64 \
            --receivers 0 --streams 1000 --duration "$seconds" "${load[@]}" "${extra[@]}" |
            sed -n 's/^sent:.*= \([0-9]*\) msg\/s/\1/p')
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
        entries=$(curl -s "http://127.0.0.1:$port/metrics" | awk -v m="$metric" '$1 == m {print $2}')
        echo "round $round store=$store dedupe=$mode sends/s=$rate remembered=$entries rss_kib=$rss"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done
