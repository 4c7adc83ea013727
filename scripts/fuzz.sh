#!/usr/bin/env bash
# Runs each cargo-fuzz target (fuzz/fuzz_targets) for a bounded time, starting from the kept
# corpus (fuzz/corpus/<target>, read only: new inputs go to a temporary directory). Fails on a
# crash, leaving the input under fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
# Needs the nightly toolchain (sanitizers); installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
targets=(request resume_token)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd fuzz
cargo +nightly fuzz build
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    dict=()
    if [ -f "$target.dict" ]; then dict=(-dict="$target.dict"); fi
    echo "fuzzing $target for ${seconds}s"
    cargo +nightly fuzz run "$target" "$work/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 "${dict[@]}" 2>"$work/$target.log" \
        || { tail -n 60 "$work/$target.log"; exit 1; }
    grep -E "^Done|stat::number_of_executed_units|stat::new_units_added" "$work/$target.log" || true
done
