#!/usr/bin/env bash
# The side-by-side comparison (issues 7 and 16): installs Redis, nginx and Nchan from
# Debian's packages if they are missing, builds the server, the bare hyper server and the
# runner in release mode, and runs
# every pattern against every target; arguments go to the runner (`--runs 1 --duration 3`
# for a quick look, `--help` for all).
#
#   bash benches/compare.sh            # 3 rounds, about 15 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || missing+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from Debian's packages" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing: ${missing[*]}; run as root or install them with apt-get" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    # The packages start system instances (Redis on 6379, nginx on 80); the runner starts
    # its own on free loopback ports.
    for service in redis-server nginx; do
        systemctl disable --now "$service" >/dev/null 2>&1 || service "$service" stop >/dev/null 2>&1 || true
    done
fi

cargo build --release --locked -p ipubsub-server -p ipubsub-benches \
    --bin ipubsub-server --bin bare-hyper --bin ipubsub-compare
# Pattern 1 holds ~1,100 connections open on each side.
ulimit -n "$(ulimit -Hn)"
exec target/release/ipubsub-compare "$@"
