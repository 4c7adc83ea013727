#!/usr/bin/env bash
# Runs every check and every test of the workspace: formatting, clippy (warnings are errors),
# all unit, integration and doc tests, the loom models of the matching core, and the docs.
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

# Servers the tests need are started here (scripts/services.sh) once storage backends that
# need one exist; the in-memory and embedded parts need none.
if [ -x scripts/services.sh ]; then
    step "services"
    scripts/services.sh
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "loom models (ipubsub-core)"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p ipubsub-core --test loom --release --locked

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

printf '\nscripts/test.sh: all checks passed in %ss\n' "$(( $(date +%s) - started ))"
