#!/usr/bin/env bash
# What a restart costs idempotent persistent sends on the embedded store: 64 publishers send
# to the same 1,000 streams with the same ids (the load generator numbers its sends from 0)
# before and after a `kill -9`, with a dedupe window of 300 s, then once more without one.
# Prints the send rate and the log's dedupe counters of each run. Needs release builds of
# ipubsub-server and ipubsub-loadgen.
#
#   bash benches/dedupe_restart.sh [SECONDS]                  # default: 5 s per run
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-5}
port=16691
data=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$data"' EXIT
start() {
    IPUBSUB_NODE__HTTP_BIND_ADDR_PORT=127.0.0.1:$port IPUBSUB_STORAGE__BACKEND=embedded \
        IPUBSUB_STORAGE__EMBEDDED__PATH="$data/store" \
        IPUBSUB_LOG__LEVEL=warn target/release/ipubsub-server >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
        sleep 0.1
    done
}
run() {
    echo "$1"
    shift
    target/release/ipubsub-loadgen --url "http://127.0.0.1:$port" --publishers 64 \
        --receivers 0 --streams 1000 --duration "$seconds" --mode persistent \
        --stream-prefix fixed "$@" | grep '^sent'
    curl -s "http://127.0.0.1:$port/metrics" |
        grep -E '^ipubsub_log_(appended_messages|duplicates|id_lookups|id_listings)_total' |
        tr '\n' ' '
    echo
}
start
run "first, window 300 s" --dedupe-window 300
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
start
run "after kill -9 and a restart, window 300 s" --dedupe-window 300
kill "$pid"
wait "$pid" 2>/dev/null || true
start
run "after a restart, no window"
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=
