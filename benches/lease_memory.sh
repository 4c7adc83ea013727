#!/usr/bin/env bash
# What a message in flight costs: a server's RSS with 100,000 messages of 100 B buffered on
# 100 streams, then once acknowledged receives (ackTimeoutSeconds=600) took them all and
# none is acknowledged. Needs curl and python3, and a build of ipubsub-server.
#
#   bash benches/lease_memory.sh [SERVER_BINARY]      # default: target/debug/ipubsub-server
set -euo pipefail
cd "$(dirname "$0")/.."
server=$(realpath "${1:-target/debug/ipubsub-server}")
port=16691
work=$(mktemp -d)
IPUBSUB_NODE__HTTP_BIND_ADDR_PORT=127.0.0.1:$port IPUBSUB_STORAGE__BACKEND=none \
    IPUBSUB_LOG__LEVEL=warn "$server" >"$work/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.1
done
python3 - "$work" <<'PY'
import json, sys
for b in range(100):
    messages = [{"streamId": f"mem-{i % 100}", "messageUuid": f"message-{b:03}-{i:04}",
                 "message": "x" * 100, "inMemoryStreamSize": 10000} for i in range(1000)]
    open(f"{sys.argv[1]}/b{b}.json", "w").write(json.dumps({"messages": messages}))
PY
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
start=$(rss)
for b in $(seq 0 99); do
    curl -s -o /dev/null "http://127.0.0.1:$port/api/v1/streams/sendBatch" --data-binary "@$work/b$b.json"
done
buffered=$(rss)
for _ in $(seq 1 10); do
    for s in $(seq 0 99); do
        curl -s -o /dev/null "http://127.0.0.1:$port/api/v1/streams/receive?streamId=mem-$s&timeoutSeconds=0&maxMessages=100&ackTimeoutSeconds=600"
    done
done
leased=$(rss)
in_flight=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^ipubsub_in_flight_messages / {print $2}')
echo "RSS KiB: start $start, 100000 buffered $buffered, $in_flight in flight $leased"
echo "per message in flight beyond buffered: $(( (leased - buffered) * 1024 / in_flight )) B"
