#!/usr/bin/env bash
# What a restart costs a stream whose dedupe window holds more ids than a node remembers
# (storage.max_remembered_ids, 1,000,000 by default): 64 publishers send about a million
# deduplicating persistent sends to one stream of the embedded store, the server restarts,
# and three sends of new ids are timed with curl (the first lists the stream, finds that
# it does not fit, and indexes it). Needs release builds of ipubsub-server and
# ipubsub-loadgen.
#
#   bash benches/dedupe_big_stream.sh [SECONDS]               # default: 30 s of sends
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
port=16692
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
start
target/release/ipubsub-loadgen --url "http://127.0.0.1:$port" --publishers 64 --receivers 0 \
    --streams 1 --duration "$seconds" --mode persistent --stream-prefix big \
    --dedupe-window 3600 | grep '^sent'
kill "$pid"
wait "$pid" 2>/dev/null || true
start
for i in 1 2 3; do
    curl -s -o /dev/null -w "send $i: %{http_code} in %{time_total} s\n" \
        "http://127.0.0.1:$port/api/v1/streams/send" \
        -d "{\"streamId\":\"big-0\",\"messageUuid\":\"probe-$i\",\"message\":{},\"writeToDB\":true,\"dedupeWindowSeconds\":3600}"
done
curl -s "http://127.0.0.1:$port/metrics" |
    grep -E '^ipubsub_log_(id_listings|id_lookups)_total|^ipubsub_log_remembered_ids'
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=
