#!/usr/bin/env bash
# What the fence costs PostgreSQL itself, apart from the server: group commits of 16 records
# over 64 streams from 4 clients (the log's 4 commit workers), as pgbench transactions per
# second, for several shapes of the append statement, alternated round by round, each round on
# an emptied table:
#   plain       the unfenced INSERT … SELECT of the build before the fence
#   cte         the row fence (main until 2026-12-02): the passing streams in a CTE, locked FOR SHARE, then
#               INSERT … WHERE stream_id IN them
#   key-share   the same with FOR KEY SHARE (an acquisition would then need FOR UPDATE)
#   sharded     the same, each client on 16 streams of its own (commit workers that never
#               share a stream: no two transactions lock one row at once)
#   join        one pass: each record joined to its epoch row, locked FOR SHARE
#   join-nolock the same join without the lock (not correct: the suite's fence race fails
#               on it); the bound on what a lock-free shape of this fence could gain
#   lease       the write lease that replaced the row fence: the insert takes the lease's
#               barrier advisory lock shared and checks its alive lock, which a session of
#               this script holds for the run, as a node's keeper does
#
#   benches/pg-fence.sh [ROUNDS] [SECONDS]
#
# Needs the PostgreSQL of scripts/services.sh; uses (and recreates) a database of its own,
# ipubsub_fence_bench.
set -euo pipefail
rounds=${1:-6}
seconds=${2:-8}
db=ipubsub_fence_bench
export PGPASSWORD=ipubsub
psql() { command psql -h 127.0.0.1 -U ipubsub -qAt "$@"; }
end_sessions="SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '$db'"
runuser -u postgres -- psql -qAt postgres -c "$end_sessions" \
    -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db OWNER ipubsub" >/dev/null 2>&1
psql "$db" <<'SQL'
CREATE TABLE ipubsub_messages (stream_id TEXT NOT NULL, seq BIGINT NOT NULL,
    message_id BYTEA NOT NULL, accepted_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
    payload BYTEA NOT NULL, PRIMARY KEY (stream_id, seq));
CREATE INDEX ipubsub_messages_expires_at ON ipubsub_messages (expires_at);
CREATE TABLE ipubsub_epochs (stream_id TEXT NOT NULL PRIMARY KEY, epoch BIGINT NOT NULL);
INSERT INTO ipubsub_epochs SELECT 's' || i, 1 FROM generate_series(0, 63) i;
CREATE SEQUENCE seqs;
SQL
dir=$(mktemp -d)
# The lease's keeper: holds the alive lock (key 14; the barrier is 15) until the script ends.
command psql -h 127.0.0.1 -U ipubsub -qAt "$db" -c "SELECT pg_advisory_lock(14)" \
    -c "SELECT pg_sleep(86400)" >/dev/null </dev/null &
keeper=$!
trap 'kill $keeper; runuser -u postgres -- psql -qAt postgres -c "$end_sessions" >/dev/null; rm -rf "$dir"' EXIT
sleep 1
batch="SELECT 's' || floor(random() * 64)::int AS stream_id, (1::bigint << 40) + nextval('seqs') AS seq,
  '\x01'::bytea AS message_id, 0::bigint AS accepted_at, 0::bigint AS expires_at,
  convert_to(repeat('x', 100), 'UTF8') AS payload FROM generate_series(1, 16)"
cat >"$dir/plain.sql" <<EOF
WITH batch AS ($batch) INSERT INTO ipubsub_messages SELECT * FROM batch;
EOF
cat >"$dir/cte.sql" <<EOF
WITH batch AS ($batch), fence AS (SELECT e.stream_id FROM ipubsub_epochs e
  JOIN (SELECT DISTINCT stream_id, seq >> 40 AS epoch FROM batch) wanted
  ON e.stream_id = wanted.stream_id AND e.epoch = wanted.epoch FOR SHARE OF e),
written AS (INSERT INTO ipubsub_messages SELECT * FROM batch
  WHERE stream_id IN (SELECT stream_id FROM fence)) SELECT stream_id FROM fence;
EOF
sed 's/FOR SHARE OF e/FOR KEY SHARE OF e/' "$dir/cte.sql" >"$dir/key-share.sql"
sed "s/floor(random() \* 64)::int/(:client_id * 16 + floor(random() * 16)::int)/" \
    "$dir/cte.sql" >"$dir/sharded.sql"
cat >"$dir/join.sql" <<EOF
WITH batch AS ($batch) INSERT INTO ipubsub_messages SELECT b.* FROM batch b
  JOIN ipubsub_epochs e ON e.stream_id = b.stream_id AND e.epoch = b.seq >> 40
  FOR SHARE OF e RETURNING stream_id;
EOF
cat >"$dir/join-nolock.sql" <<EOF
WITH batch AS ($batch) INSERT INTO ipubsub_messages SELECT b.* FROM batch b
  JOIN ipubsub_epochs e ON e.stream_id = b.stream_id AND e.epoch = b.seq >> 40
  RETURNING stream_id;
EOF
cat >"$dir/lease.sql" <<EOF
WITH batch AS ($batch) INSERT INTO ipubsub_messages SELECT * FROM batch
  WHERE (SELECT CASE WHEN pg_advisory_xact_lock_shared(15) IS NOT NULL
    THEN NOT pg_try_advisory_xact_lock_shared(14) END);
EOF
shapes=(plain cte key-share sharded join join-nolock lease)
for _ in $(seq "$rounds"); do
    for shape in "${shapes[@]}"; do
        psql "$db" -c "TRUNCATE ipubsub_messages"
        runuser -u postgres -- psql -qAt -c CHECKPOINT postgres
        tps=$(pgbench -h 127.0.0.1 -U ipubsub -n -M prepared -c 4 -j 2 -T "$seconds" \
            -f "$dir/$shape.sql" "$db" 2>/dev/null | awk '/^tps/ {print int($3)}')
        echo "$shape $tps" >>"$dir/results"
    done
done
for shape in "${shapes[@]}"; do
    runs=$(awk -v s="$shape" '$1 == s {print $2}' "$dir/results" | sort -n)
    median=$(echo "$runs" | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : int((a[NR / 2] + a[NR / 2 + 1]) / 2)}')
    printf '%-12s median %6s   runs %s\n' "$shape" "$median" "$(echo "$runs" | tr '\n' ' ')"
done
