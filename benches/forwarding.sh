#!/usr/bin/env bash
# What a forwarding hop costs when the nodes do not share CPUs (issue 16): three release nodes
# on loopback, each in a cgroup of its own capped at QUOTA CPUs (cgroup v1 `cpu` or v2
# `cpu.max`: root), the load generator uncapped. Every stream is owned by node-1; the load goes
# straight to it (`--route owner`) or through node-2, which forwards every request
# (`--route other`), the two alternated round by round. Prints each run and the ratios.
#
#   bash benches/forwarding.sh [QUOTA=0.5] [ROUNDS=3] [SECONDS=8] [h2|http1] [http1|h2]
#   (4th, between members: http1 forwards over pooled HTTP/1.1,
#   `http.http2.forward_to_members: false`; 5th, the clients' protocol: h2 multiplexes every
#   publisher and receiver over one HTTP/2 connection per node)
#
# PROXY=nginx adds a third route each round, for reference: the load goes to nginx (one
# worker, in a cgroup of its own with the same cap), which proxies every request to node-1
# over keep-alive HTTP/1.1 connections (nginx proxies no HTTP/2 upstream): what a hop through a
# mature reverse proxy costs in the same setup.
set -euo pipefail
cd "$(dirname "$0")/.."
quota=${1:-0.5}
rounds=${2:-3}
seconds=${3:-8}
forward=${4:-h2}
clients=${5:-http1}

[ "$(id -u)" -eq 0 ] || { echo "forwarding.sh: needs root (cgroups)" >&2; exit 1; }
cargo build --release --locked -p ipubsub-server -p ipubsub-benches \
    --bin ipubsub-server --bin ipubsub-loadgen
server=$PWD/target/release/ipubsub-server
loadgen=$PWD/target/release/ipubsub-loadgen

work=$(mktemp -d)
period=100000
quota_us=$(python3 -c "print(int(float('$quota') * $period))")
if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    cgroup_root=/sys/fs/cgroup/cpu
    limit() { echo "$period" >"$1/cpu.cfs_period_us"; echo "$quota_us" >"$1/cpu.cfs_quota_us"; }
elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    cgroup_root=/sys/fs/cgroup
    echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
    limit() { echo "$quota_us $period" >"$1/cpu.max"; }
else
    echo "forwarding.sh: no cgroup cpu controller found" >&2
    exit 1
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for i in 1 2 3 nginx; do rmdir "$cgroup_root/ipubsub-fwd-$$-$i" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http=() gossip=()
for i in 1 2 3; do http+=("$(free_port)"); gossip+=("$(free_port)"); done
case "$forward" in
    h2) forward_h2=true ;;
    http1) forward_h2=false ;;
    *) echo "forwarding.sh: forward over h2 or http1, not $forward" >&2; exit 1 ;;
esac
case "$clients" in
    h2) client_args=(--http2) ;;
    http1) client_args=() ;;
    *) echo "forwarding.sh: clients speak h2 or http1, not $clients" >&2; exit 1 ;;
esac
for i in 1 2 3; do
    cat >"$work/node-$i.yaml" <<EOF
node:
  name: "node-$i"
  http_bind_addr_port: "127.0.0.1:${http[$((i - 1))]}"
  gossip_bind_addr_port: "127.0.0.1:${gossip[$((i - 1))]}"
cluster:
  name: "fwd-$$"
  static_bootstrap_node_addr_ports: ["127.0.0.1:${gossip[0]}", "127.0.0.1:${gossip[1]}", "127.0.0.1:${gossip[2]}"]
  gossip_interval_ms: 100
engine:
  max_waiting_requests: 100000
http:
  http2:
    forward_to_members: $forward_h2
log:
  level: warn
storage:
  backend: none
EOF
    group="$cgroup_root/ipubsub-fwd-$$-$i"
    mkdir -p "$group"
    limit "$group"
    sh -c "echo \$\$ >'$group/cgroup.procs'; exec '$server' --config '$work/node-$i.yaml'" \
        >"$work/node-$i.log" 2>&1 &
    pids+=($!)
done

first="http://127.0.0.1:${http[0]}"
for _ in $(seq 100); do
    members=$(curl -sf "$first/api/v1/cluster" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))' 2>/dev/null || echo 0)
    [ "$members" = 3 ] && break
    sleep 0.2
done
[ "$members" = 3 ] || { echo "forwarding.sh: the cluster did not form" >&2; cat "$work"/node-*.log >&2; exit 1; }
urls="$first,http://127.0.0.1:${http[1]},http://127.0.0.1:${http[2]}"
routes=(owner other)
if [ "${PROXY:-}" = nginx ]; then
    # HTTP/2 clients reach nginx over h2c with prior knowledge (`listen … http2`).
    listen_h2=$([ "$clients" = h2 ] && echo " http2" || true)
    nginx=$(command -v nginx || echo /usr/sbin/nginx)
    [ -x "$nginx" ] || { echo "forwarding.sh: PROXY=nginx needs nginx (apt-get install nginx)" >&2; exit 1; }
    proxy_port=$(free_port)
    mkdir -p "$work/nginx"
    cat >"$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream owner { server 127.0.0.1:${http[0]}; keepalive 128; }
    server {
        listen 127.0.0.1:$proxy_port$listen_h2;
        http2_max_concurrent_streams 1024;
        location / {
            proxy_pass http://owner;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 120s;
        }
    }
}
NGINX
    group="$cgroup_root/ipubsub-fwd-$$-nginx"
    mkdir -p "$group"
    limit "$group"
    sh -c "echo \$\$ >'$group/cgroup.procs'; exec '$nginx' -c '$work/nginx.conf'" >"$work/nginx.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$proxy_port/api/v1/cluster" >/dev/null && break; sleep 0.1; done
    routes+=(nginx)
fi
echo "three nodes, each capped at $quota CPU; forwarding over $([ "$forward_h2" = true ] && echo HTTP/2 || echo HTTP/1.1), clients over $clients; $rounds rounds of ${seconds}s"

# CPU seconds (user + system) of each node so far, then of nginx's worker when it runs.
cpu_of() {
    for pid in "${pids[@]:0:3}"; do awk '{printf "%.2f ", ($14 + $15) / 100}' "/proc/$pid/stat"; done
    if [ "${#pids[@]}" -gt 3 ]; then
        for pid in $(pgrep -P "${pids[3]}"); do awk '{printf "%.2f ", ($14 + $15) / 100}' "/proc/$pid/stat"; done
    fi
}
declare -A rates
for round in $(seq "$rounds"); do
    for route in "${routes[@]}"; do
        read -r -a before <<<"$(cpu_of)"
        case "$route" in
            nginx) route_args=(--route owner --via-proxy "http://127.0.0.1:$proxy_port") ;;
            *) route_args=(--route "$route") ;;
        esac
        out=$("$loadgen" --url "$urls" "${route_args[@]}" --owned-by node-1 --publishers 16 \
            --receivers 16 --streams 16 --duration "$seconds" --check "${client_args[@]}")
        rate=$(echo "$out" | sed -n 's/^delivered: *[0-9]* in [0-9.]*s = \([0-9]*\) msg\/s.*/\1/p')
        [ -n "$rate" ] || { echo "$out" >&2; echo "forwarding.sh: no rate in the output" >&2; exit 1; }
        read -r -a after <<<"$(cpu_of)"
        delivered=$(echo "$out" | sed -n 's/^delivered: *\([0-9]*\) in.*/\1/p')
        per_node=$(python3 -c "
b, a = [$(IFS=,; echo "${before[*]}")], [$(IFS=,; echo "${after[*]}")]
names = ['node-1', 'node-2', 'node-3', 'nginx']
print(' '.join('%s %.1f' % (names[i], (a[i] - b[i]) / $delivered * 1e6) for i in range(len(a))))")
        echo "round $round route=$route delivered/s=$rate CPU µs per message: $per_node"
        rates[$route,$round]=$rate
    done
done
for round in $(seq "$rounds"); do
    python3 -c "print('round $round: through node-2 / straight to node-1 = %.2f' % (${rates[other,$round]} / ${rates[owner,$round]}))"
    if [ -n "${rates[nginx,$round]:-}" ]; then
        python3 -c "print('round $round: through nginx / straight to node-1 = %.2f' % (${rates[nginx,$round]} / ${rates[owner,$round]}))"
    fi
done
