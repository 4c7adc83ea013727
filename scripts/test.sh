#!/usr/bin/env bash
# Runs every check and every test of the workspace: formatting, clippy (warnings are errors),
# all unit, integration and doc tests, the API against its OpenAPI document (schemathesis),
# the API from a page of another origin in headless Chromium,
# the churn test (a real cluster on each shared database under a nemesis),
# the loom models of the matching core, the fuzz targets for a bounded time, and the docs.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    # rustup installs into ~/.cargo/bin, which a non-login shell may not have on PATH.
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "scripts/test.sh: cargo not found; install Rust 1.94 or later (rustup)" >&2
        exit 1
    fi
fi

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

# The database servers the storage backends' tests run against: installed if missing,
# started if stopped, reused if running. Their tests fail (never skip) without them.
step "services (PostgreSQL, MariaDB, Cassandra, MongoDB)"
scripts/services.sh

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "cargo test"
# Every feature: each storage backend's tests run against its real server.
cargo test --workspace --all-features --locked

step "OpenAPI conformance (schemathesis against a running node)"
scripts/conformance.sh target/debug/ipubsub-server

step "browser: CORS, long-polls and EventSource in headless Chromium (scripts/browser.sh)"
scripts/browser.sh target/debug/ipubsub-server

step "churn: real nodes, a nemesis and a checker (scripts/churn.sh)"
scripts/churn.sh target/debug/ipubsub-server "${CHURN_SECONDS:-40}"

step "loom models (ipubsub-core)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p ipubsub-core --test loom --release --locked

step "fuzz targets (${FUZZ_SECONDS:-60} s each, from the kept corpus)"
scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps --locked --quiet

step "systemd unit (deploy/ipubsub.service)"
# Checked against the binary just built, at the path the unit names once installed.
if command -v systemd-analyze >/dev/null; then
    unit_dir=$(mktemp -d)
    sed "s|/usr/local/bin/ipubsub-server|$PWD/target/debug/ipubsub-server|" \
        deploy/ipubsub.service >"$unit_dir/ipubsub.service"
    # verify exits 0 on what it merely warns about ("Failed to parse …"): any output fails.
    unit_report=$(systemd-analyze verify "$unit_dir/ipubsub.service" 2>&1 || echo "verify failed")
    rm -rf "$unit_dir"
    if [ -n "$unit_report" ]; then
        echo "$unit_report"
        exit 1
    fi
else
    echo "systemd-analyze is not installed: unit not checked"
fi

printf '\nscripts/test.sh: all checks passed in %ss\n' "$(( $(date +%s) - started ))"
