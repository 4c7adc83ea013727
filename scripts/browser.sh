#!/usr/bin/env bash
# The API from a page of another origin in a real browser: headless Chromium (Debian's
# package, installed if missing) driven by playwright-core (npm, pinned in
# browser/package-lock.json). See browser/cors.test.mjs for what the page does.
#
# Usage: scripts/browser.sh [SERVER_BINARY]   (default: target/debug/ipubsub-server)
set -euo pipefail
cd "$(dirname "$0")/.."

server=${1:-target/debug/ipubsub-server}
if [ ! -x "$server" ]; then
    cargo build -p ipubsub-server --locked
fi
# Installs Debian packages, updating the package lists once if they are stale.
install() {
    echo "installing $* (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends "$@" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "$@" >/dev/null; }
}
if [ ! -x /usr/bin/chromium ]; then
    install chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    install nodejs npm
fi
if [ ! -d browser/node_modules/playwright-core ]; then
    npm ci --prefix browser --no-audit --no-fund --silent
fi
node browser/cors.test.mjs "$server"
