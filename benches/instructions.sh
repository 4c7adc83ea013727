#!/usr/bin/env bash
# User-space instructions a server binary spends per in-memory send, counted by callgrind:
# stable where wall-clock figures are not (a shared 2-core machine). Needs valgrind
# (apt-get install valgrind) and a release build of ipubsub-server and ipubsub-loadgen.
#
#   bash benches/instructions.sh [SERVER_BINARY] [SENDS] [RECEIVERS]
#                                 # default: target/release, 20000, 0
#
# Runs the server under callgrind on one worker thread, sends SENDS messages (8 publishers,
# 100 streams; with RECEIVERS long-polling receivers taking every one of them), then the same
# with none, and prints the difference per message.
set -euo pipefail
cd "$(dirname "$0")/.."
server=$(realpath "${1:-target/release/ipubsub-server}")
sends=${2:-20000}
receivers=${3:-0}
port=16689
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

count() { # count SENDS -> total Ir
    IPUBSUB_NODE__HTTP_BIND_ADDR_PORT=127.0.0.1:$port IPUBSUB_STORAGE__BACKEND=none \
        IPUBSUB_LOG__LEVEL=warn TOKIO_WORKER_THREADS=1 \
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$server" \
        >"$work/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
        sleep 0.3
    done
    if [ "$1" -gt 0 ]; then
        target/release/ipubsub-loadgen --url "http://127.0.0.1:$port" --publishers 8 \
            --receivers "$receivers" --streams 100 --count "$1" >/dev/null
    fi
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    grep -h '^summary:' "$work"/cg.* | awk '{s += $2} END {print s}'
    rm -f "$work"/cg.*
}

base=$(count 0)
total=$(count "$sends")
what="send"
[ "$receivers" -gt 0 ] && what="message sent and received ($receivers receivers)"
echo "$server: $(( (total - base) / sends )) instructions per $what (callgrind, user space, $sends sends)"
