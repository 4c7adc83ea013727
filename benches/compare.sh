#!/usr/bin/env bash
# The side-by-side comparison (issue 7): installs Redis from Debian's packages if it is
# missing, builds the server, the bare hyper server and the runner in release mode, and runs
# every pattern against every target; arguments go to the runner (`--runs 1 --duration 3`
# for a quick look, `--help` for all).
#
#   bash benches/compare.sh            # 3 rounds, about 15 minutes on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    echo "installing redis-server from Debian's packages" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "redis-server is missing; run as root or install it (apt-get install redis-server)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server >/dev/null
    # The package starts a system instance on 6379; the runner starts its own on a free port.
    systemctl disable --now redis-server >/dev/null 2>&1 || service redis-server stop >/dev/null 2>&1 || true
fi

cargo build --release --locked -p ipubsub-server -p ipubsub-benches \
    --bin ipubsub-server --bin bare-hyper --bin ipubsub-compare
# Pattern 1 holds ~1,100 connections open on each side.
ulimit -n "$(ulimit -Hn)"
exec target/release/ipubsub-compare "$@"
