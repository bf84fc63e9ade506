#!/usr/bin/env bash
# The group-commit statement alone, under pgbench: what one call of `confab_store_batch`
# (migrations m0003-m0009) costs Postgres, without the gateway around it. A fresh database is
# migrated with confab-migrate and seeded with 1,000 users in 100 threads of 10; each pgbench
# transaction stores SENDS messages from members picked in order from a shuffled list, through
# the prepared statement the way the gateway calls it (arrays of ids, threads, senders,
# client_msg_ids, bodies; time-ordered ids as UUIDv7 gives). Prints, per round, the calls and
# messages per second, the mean latency of a call, and the CPU all Postgres processes on this
# machine used per call and per message — so run it on an otherwise quiet machine. Every round
# also measures the harness alone (building the arrays without the call) so it can be
# subtracted.
#
#   scripts/pgbench-store-batch.sh [-n SENDS] [-c CLIENTS] [-T SECONDS] [-r ROUNDS]
#
# Defaults: 13 sends per call (what a node's writer commits at 10,000 msgs/s), 1 client, 10 s,
# 2 rounds. Two clients contend for the same threads' row locks, as two nodes' writers do.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { echo "pgbench-store-batch: $*" >&2; }

sends=13 clients=1 secs=10 rounds=2
while getopts "n:c:T:r:" o; do
  case $o in
    n) sends=$OPTARG ;; c) clients=$OPTARG ;; T) secs=$OPTARG ;; r) rounds=$OPTARG ;;
    *) echo "usage: $0 [-n SENDS] [-c CLIENTS] [-T SECONDS] [-r ROUNDS]" >&2; exit 2 ;;
  esac
done

eval "$(bash scripts/ensure-services.sh)"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$pgbin/pgbench" ] || { log "no pgbench under /usr/lib/postgresql/*/bin"; exit 1; }
cargo build --release -q -p confab-migrations --bin confab-migrate
db="confab_pgbench_$(date +%Y%m%d%H%M%S)$RANDOM"
url=$(echo "$CONFAB_TEST_DATABASE_URL" | sed -E "s#^(postgres(ql)?://[^/]+)/[^?]*#\1/$db#")
psql "$CONFAB_TEST_DATABASE_URL" -qc "CREATE DATABASE \"$db\""
work=$(mktemp -d)
trap 'psql "$CONFAB_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1; rm -rf "$work"' EXIT
DATABASE_URL="$url" "$root/target/release/confab-migrate" up >/dev/null

psql "$url" -q <<'SQL'
INSERT INTO users (id, username, username_lower, password_hash, created_at)
  SELECT gen_random_uuid(), 'u' || g, 'u' || g, 'x', now() FROM generate_series(1, 1000) g;
INSERT INTO threads (id, kind, name, public, last_seq, last_activity_at, created_at, created_by)
  SELECT gen_random_uuid(), 'group', 'r' || g, false, 0, now(), now(),
         (SELECT id FROM users LIMIT 1)
  FROM generate_series(1, 100) g;
WITH u AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM users),
     t AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM threads)
INSERT INTO thread_members (thread_id, user_id, joined_at, last_read_seq)
  SELECT t.id, u.id, now(), 0 FROM u JOIN t ON t.n = u.n / 10;
CREATE TABLE bench_picks (k int PRIMARY KEY, thread_id uuid NOT NULL, user_id uuid NOT NULL);
WITH m AS (SELECT thread_id, user_id, row_number() OVER (ORDER BY random()) - 1 AS n
           FROM thread_members)
INSERT INTO bench_picks SELECT g, m.thread_id, m.user_id
  FROM generate_series(1, 4000) g JOIN m ON m.n = g % 1000;
ANALYZE;
SQL

# One call's arguments, built from SENDS consecutive picks; time-ordered ids like UUIDv7.
args="SELECT array_agg((lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1e6)::bigint), 16, '0') \
|| substr(replace(gen_random_uuid()::text, '-', ''), 17))::uuid ORDER BY k) ids, \
array_agg(thread_id ORDER BY k) th, array_agg(user_id ORDER BY k) us, \
array_agg(gen_random_uuid()::text ORDER BY k) cm, array_agg(repeat('x', 64) ORDER BY k) bo \
FROM bench_picks WHERE k > :off::int AND k <= :off::int + :n::int"
printf '\\set off random(0, %d)\nSELECT count(*) FROM (%s) a, LATERAL confab_store_batch(a.ids, a.th, a.us, a.cm, a.bo, now()) s;\n' \
  $((4000 - sends)) "$args" >"$work/call.sql"
printf '\\set off random(0, %d)\nSELECT cardinality(a.ids) + cardinality(a.th) + cardinality(a.us) + cardinality(a.cm) + cardinality(a.bo) FROM (%s) a;\n' \
  $((4000 - sends)) "$args" >"$work/harness.sql"

# CPU (ticks) of every postgres process, the exited backends included (the postmaster's
# children's time).
pg_ticks() {
  # A process may exit between the glob and the read: cat then fails, which is no error here.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '$2 == "(postgres)" { s += $14 + $15 + $16 + $17 } END { print s }'
}
hz=$(getconf CLK_TCK)
run() { # SCRIPT LABEL
  local a b out tps lat
  a=$(pg_ticks)
  out=$("$pgbin/pgbench" -n -M prepared -c "$clients" -j "$clients" -T "$secs" -D n="$sends" \
    -f "$1" "$url" 2>&1) || { echo "$out" >&2; exit 1; }
  b=$(pg_ticks)
  tps=$(echo "$out" | awk '/^tps/ { print $3 }')
  lat=$(echo "$out" | awk '/latency average/ { print $4 }')
  awk -v l="$2" -v tps="$tps" -v lat="$lat" -v n="$sends" -v t="$secs" -v d=$((b - a)) -v hz="$hz" \
    'BEGIN { cpu = d / hz; calls = tps * t;
             printf "%s: %.0f calls/s (%.0f msgs/s), %.3f ms per call, Postgres CPU %.0f µs per call, %.1f µs per message\n",
                    l, tps, tps * n, lat, cpu / calls * 1e6, cpu / (calls * n) * 1e6 }'
}
log "$sends sends per call, $clients client(s), $secs s, $rounds round(s)"
for r in $(seq "$rounds"); do
  run "$work/call.sql" "round $r, store batch"
  # The 100 thread rows take every call's updates: how far their table has grown says whether
  # page pruning kept up (a table of many pages means long update chains to walk).
  psql "$url" -Atc "SELECT 'threads table: ' || pg_relation_size('threads') / 8192 || ' pages, ' \
    || n_dead_tup || ' dead rows' FROM pg_stat_user_tables WHERE relname = 'threads'"
  run "$work/harness.sql" "round $r, harness only"
done
