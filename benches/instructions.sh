#!/usr/bin/env bash
# User-space instructions a server binary spends per in-memory send, counted by callgrind:
# stable where wall-clock figures are not (a shared 2-core machine). Needs valgrind
# (apt-get install valgrind) and a release build of ipubsub-server and ipubsub-loadgen.
#
#   bash benches/instructions.sh [SERVER_BINARY] [SENDS] [RECEIVERS] [single|forwarding]
#                                 # default: target/release, 20000, 0, single
#
# Runs the server under callgrind on one worker thread, sends SENDS messages (8 publishers,
# 100 streams; with RECEIVERS long-polling receivers taking every one of them), then the same
# with none, and prints the difference per message.
#
# `forwarding`: the counted server is the second node of a two-node cluster, and every send
# and receive goes to it for streams the other node owns (16 streams; `--route other`): what
# the forwarding hop costs in user space, to set beside `single`.
#
# CALLGRIND_OUT=DIR keeps the loaded run's callgrind output there, for
# `callgrind_annotate --inclusive=yes DIR/cg.*`.
set -euo pipefail
cd "$(dirname "$0")/.."
server=$(realpath "${1:-target/release/ipubsub-server}")
sends=${2:-20000}
receivers=${3:-0}
mode=${4:-single}
work=$(mktemp -d)
others=()
cleanup() {
    for pid in "${others[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
load=(--url "http://127.0.0.1:$port" --streams 100)
case "$mode" in
    single) ;;
    forwarding)
        owner_port=$(free_port)
        gossip=("$(free_port)" "$(free_port)")
        for i in 0 1; do
            http=$([ "$i" = 0 ] && echo "$owner_port" || echo "$port")
            cat >"$work/node-$i.yaml" <<EOF
node:
  name: "node-$i"
  http_bind_addr_port: "127.0.0.1:$http"
  gossip_bind_addr_port: "127.0.0.1:${gossip[$i]}"
cluster:
  name: "instructions-$$"
  static_bootstrap_node_addr_ports: ["127.0.0.1:${gossip[0]}", "127.0.0.1:${gossip[1]}"]
  gossip_interval_ms: 100
log:
  level: warn
storage:
  backend: none
EOF
        done
        TOKIO_WORKER_THREADS=1 "$server" --config "$work/node-0.yaml" >"$work/owner.log" 2>&1 &
        others+=($!)
        load=(--url "http://127.0.0.1:$owner_port,http://127.0.0.1:$port" --route other
            --owned-by node-0 --streams 16 --check)
        ;;
    *) echo "instructions.sh: mode single or forwarding, not $mode" >&2; exit 1 ;;
esac

count() { # count SENDS -> total Ir
    local config=()
    [ "$mode" = forwarding ] && config=(--config "$work/node-1.yaml")
    IPUBSUB_NODE__HTTP_BIND_ADDR_PORT=127.0.0.1:$port IPUBSUB_STORAGE__BACKEND=none \
        IPUBSUB_LOG__LEVEL=warn TOKIO_WORKER_THREADS=1 \
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" "$server" "${config[@]}" \
        >"$work/server.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 100); do
        if [ "$mode" = forwarding ]; then
            curl -s "http://127.0.0.1:$port/api/v1/cluster" | grep -q node-0 && break
        else
            curl -s -o /dev/null "http://127.0.0.1:$port/health" && break
        fi
        sleep 0.3
    done
    if [ "$1" -gt 0 ]; then
        target/release/ipubsub-loadgen "${load[@]}" --publishers 8 \
            --receivers "$receivers" --count "$1" >/dev/null
    fi
    kill -INT "$pid"
    wait "$pid" 2>/dev/null || true
    grep -h '^summary:' "$work"/cg.* | awk '{s += $2} END {printf "%.0f\n", s}'
    if [ "$1" -gt 0 ] && [ -n "${CALLGRIND_OUT:-}" ]; then
        mkdir -p "$CALLGRIND_OUT"
        mv "$work"/cg.* "$CALLGRIND_OUT"/
    fi
    rm -f "$work"/cg.*
}

base=$(count 0)
total=$(count "$sends")
echo "instructions.sh: $base instructions idle, $total loaded" >&2
what="send"
[ "$receivers" -gt 0 ] && what="message sent and received ($receivers receivers)"
[ "$mode" = forwarding ] && what="$what, forwarded to the owner"
echo "$server: $(( (total - base) / sends )) instructions per $what (callgrind, user space, $sends sends)"
