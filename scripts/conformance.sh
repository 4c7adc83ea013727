#!/usr/bin/env bash
# Checks a running ipubsub node against its OpenAPI document with schemathesis: examples,
# boundary values, fuzzed bodies and parameters, and stateful sequences along the document's
# links. Fails on any 5xx, any answer outside the document (status, schema, content type,
# headers), a schema-violating request accepted, or a schema-valid one refused.
#
# Usage: scripts/conformance.sh [SERVER_BINARY]   (default: target/debug/ipubsub-server)
# Generation is deterministic (no seed, no example database), so every run, here and in CI,
# sends the same cases and a failure reproduces. SCHEMATHESIS_EXAMPLES overrides the examples
# per operation.
set -euo pipefail
cd "$(dirname "$0")/.."

server=${1:-target/debug/ipubsub-server}
examples=${SCHEMATHESIS_EXAMPLES:-30}
version=4.32.5

if ! command -v st >/dev/null 2>&1 || ! st --version 2>/dev/null | grep -q "$version"; then
    python3 -m pip install --quiet --disable-pip-version-check "schemathesis==$version"
    hash -r
fi
if [ ! -x "$server" ]; then
    cargo build -p ipubsub-server --locked
fi

work=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# A node with the embedded store, whose longest wait is one second so that long polls and
# blocking sends finish quickly; the document's configurable maxima are set to this node's.
cat >"$work/node.yaml" <<EOF
node:
  name: conformance
  http_bind_addr_port: "127.0.0.1:0"
http:
  max_timeout_seconds: 1
  receive_default_timeout_seconds: 1
storage:
  backend: embedded
  embedded:
    path: $work/data
log:
  level: warn
EOF
sed -e 's/maximum: 300/maximum: 1/g' ipubsub-http/openapi.yaml >"$work/openapi.yaml"

"$server" --config "$work/node.yaml" >"$work/stdout" 2>"$work/stderr" &
pid=$!
addr=
for _ in $(seq 100); do
    addr=$(grep -o 'http://[0-9.:]*' "$work/stdout" | head -n 1 || true)
    [ -n "$addr" ] && break
    sleep 0.1
done
if [ -z "$addr" ]; then
    echo "conformance: the node did not start" >&2
    cat "$work/stderr" >&2
    exit 1
fi

if ! st --config-file scripts/schemathesis.toml run "$work/openapi.yaml" \
    --url "$addr" \
    --generation-deterministic \
    --max-examples "$examples" \
    --request-timeout 5 \
    --workers 1 >"$work/report" 2>&1; then
    cat "$work/report"
    echo "conformance: schemathesis found failures" >&2
    exit 1
fi
tail -n 25 "$work/report"
if grep -q "panicked" "$work/stderr"; then
    echo "conformance: the node panicked" >&2
    cat "$work/stderr" >&2
    exit 1
fi
