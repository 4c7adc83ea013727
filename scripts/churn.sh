#!/usr/bin/env bash
# The churn test, bounded: three real nodes on one shared database while a nemesis restarts
# (SIGTERM), kills (kill -9) and pauses (SIGSTOP, 6 s) them in turn; producers and live
# readers go through random nodes; the checker fails the run on any lost, duplicated,
# skipped, reordered, vanished or disagreeing message, and on any TTL probe (a message whose
# TTL outlives the run) missing from a read through any node (benches/src/bin/churn).
#
#   scripts/churn.sh SERVER_BINARY [SECONDS]
#
# Runs: PostgreSQL three times, then once with five nodes and every nemesis (a cut too),
# MariaDB, MongoDB and Cassandra once each, PostgreSQL once more with one node's clock
# 120 s ahead, and once with partitions (every node in a network
# namespace of its own; each in turn is cut off from the others for 10 s while it keeps its
# clients and the store, the last one with its clock 20 s ahead; needs root); then in
# memory: graceful restarts twice, and the follow scenario (a join).
# Needs the servers of scripts/services.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:?usage: scripts/churn.sh SERVER_BINARY [SECONDS]}
seconds=${2:-40}
churn=target/debug/ipubsub-churn
cargo build -q -p ipubsub-benches --bin ipubsub-churn --locked

run() {
    printf -- '--- churn: %s\n' "$*"
    "$churn" --server "$server" --seconds "$seconds" --check "$@"
}
for _ in 1 2 3; do run --backend postgres; done
# Five nodes, every nemesis in turn: SIGTERM, kill -9, SIGSTOP and a 10 s cut (needs root).
run --backend postgres --nodes 5 --nemesis term,kill,stop,cut --every 4
run --backend mysql
run --backend mongodb
run --backend cassandra
run --backend postgres --clock-offset 120
run --backend postgres --nemesis cut --every 3 --clock-offset 20
# In-memory queues and sync-match streams under graceful restarts, twice (lost, duplicated,
# phantom).
for _ in 1 2; do
    printf -- '--- churn: --scenario memory\n'
    "$churn" --server "$server" --seconds "$seconds" --scenario memory --backend memory
done
# Receivers waiting on in-memory streams follow them to a joining node (fails if any never
# gets its message).
printf -- '--- churn: --scenario follow\n'
"$churn" --server "$server" --scenario follow --backend memory
