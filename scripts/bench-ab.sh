#!/usr/bin/env bash
# A/B comparison of two gateway builds (or two settings) on this machine, one scenario, rounds
# alternating the order (A B, B A, A B, …) so drift of the machine hits both sides alike.
# Each run gets 2 fresh nodes started as `make bench` starts them, a fresh database and Redis
# prefix. Prints each run's one-line summary; the JSON lines go to $AB_DIR/results.jsonl.
#
#   scripts/bench-ab.sh [-r ROUNDS] BIN_A BIN_B -- <confab-bench scenario and its arguments>
#
# e.g. (the node addresses and pids are added by the script):
#   scripts/bench-ab.sh -r 3 /tmp/old/confab target/release/confab -- \
#     fanout --clients 1000 --room-size 10 --rate 5000 --warmup 3 --duration 15
#
# Environment (all optional):
#   A_ENV / B_ENV              extra settings of that side's nodes, e.g. "CONFAB__DATABASE__SEND_WRITERS=4"
#   A_CONFIG_DIR / B_CONFIG_DIR  that side's config/ (an older build may need its own defaults)
#   A_DB_QUERY / B_DB_QUERY    appended to that side's database URL as its query, e.g. "sslmode=require"
#   BENCH=target/release/confab-bench   the load generator of both sides ...
#   A_BENCH / B_BENCH          ... or of one side (to compare two load generators on one build)
#   AB_DIR=.confab/bench-ab
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
log() { echo "bench-ab: $*" >&2; }
die() { log "$*"; exit 1; }

rounds=2
if [ "${1:-}" = -r ]; then rounds=$2; shift 2; fi
[ $# -ge 3 ] && [ "$3" = -- ] || die "usage: $0 [-r ROUNDS] BIN_A BIN_B -- <scenario> <args>"
BIN_A=$(realpath "$1"); BIN_B=$(realpath "$2"); shift 3
[ -x "$BIN_A" ] && [ -x "$BIN_B" ] || die "both binaries must exist"
BENCH=$(realpath "${BENCH:-$root/target/release/confab-bench}")
[ -x "$BENCH" ] || die "no $BENCH (cargo build --release -p confab-bench)"
dir="${AB_DIR:-$root/.confab/bench-ab}"
mkdir -p "$dir"
: >"$dir/results.jsonl"

eval "$(bash scripts/ensure-services.sh)"
PG_ADMIN="$CONFAB_TEST_DATABASE_URL"
REDIS_URL="$CONFAB_TEST_REDIS_URL"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# shellcheck source=scripts/lib/nodes.sh
. "$root/scripts/lib/nodes.sh"

node_pids=()
DB_NAME=""
PREFIX=""
teardown() {
  stop_nodes
  if [ -n "$DB_NAME" ]; then
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [ -n "$PREFIX" ]; then
    redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null |
      xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  fi
  DB_NAME=""
  PREFIX=""
}
trap teardown EXIT

# run_side A|B ROUND: one run of the scenario against fresh nodes of that side.
run_side() {
  local side=$1 round=$2 bin env_extra config_dir db_query bench
  if [ "$side" = A ]; then bin=$BIN_A; env_extra=${A_ENV:-}; config_dir=${A_CONFIG_DIR:-}; db_query=${A_DB_QUERY:-}; bench=${A_BENCH:-$BENCH}
  else bin=$BIN_B; env_extra=${B_ENV:-}; config_dir=${B_CONFIG_DIR:-}; db_query=${B_DB_QUERY:-}; bench=${B_BENCH:-$BENCH}; fi
  local stamp
  stamp=$(date +%Y%m%d%H%M%S)$RANDOM
  DB_NAME="confab_ab_$stamp"
  PREFIX="ab$stamp"
  psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB_NAME\"" >/dev/null
  DB_URL=$(echo "$PG_ADMIN" | sed -E "s#^(postgres(ql)?://[^/]+)/[^?]*#\1/$DB_NAME#")
  [ -n "$db_query" ] && DB_URL="$DB_URL?$db_query"
  bench_node_env
  # Threads as `make bench` sets them (scripts/bench.sh), whichever build is measured: `idle`'s
  # node on its own thread, the other scenarios' nodes with their share of the cores.
  case "$SCENARIO" in
    idle) EXTRA_ENV=(CONFAB__SERVER__SINGLE_THREAD=true) ;;
    *)
      local w
      w=$(shared_workers 2)
      EXTRA_ENV=(CONFAB__SERVER__WORKERS="$w" CONFAB__SERVER__SINGLE_THREAD="$(single_thread_for "$w")")
      ;;
  esac
  # Each side's own settings come last, so they win.
  # shellcheck disable=SC2206 # word splitting of the extra settings is what is wanted
  EXTRA_ENV+=($env_extra)
  [ -n "$config_dir" ] && EXTRA_ENV+=(CONFAB_CONFIG_DIR="$config_dir")
  start_nodes "$bin" "$dir" 2
  settle
  local n0="http://127.0.0.1:${ports[0]}" n1="http://127.0.0.1:${ports[1]}" target
  case "$SCENARIO" in
    fanout) target=(--nodes "$n0,$n1" --pids "${node_pids[0]},${node_pids[1]}" --metrics "$n0" "$n1") ;;
    ramp) target=(--nodes "$n0,$n1" --pids "${node_pids[0]},${node_pids[1]}") ;;
    idle) target=(--node "$n0" --setup-node "$n1" --pid "${node_pids[0]}") ;;
    storm) target=(--nodes "$n0,$n1") ;;
    crash) target=(--nodes "$n0,$n1" --victim 1 --victim-pid "${node_pids[1]}") ;;
    history) target=(--node "$n0" --db-url "$DB_URL") ;;
    *) die "unknown scenario $SCENARIO" ;;
  esac
  "$bench" "$SCENARIO" "${target[@]}" "${ARGS[@]}" --label "$side-$round" \
    >>"$dir/results.jsonl" 2>"$dir/run.log" || { cat "$dir/run.log" >&2; die "run $side-$round failed"; }
  echo "$side-$round $SCENARIO: $(tail -n1 "$dir/run.log")"
  teardown
}

SCENARIO=$1; shift
ARGS=("$@")
log "A = $BIN_A ${A_ENV:-} (load generator ${A_BENCH:-$BENCH})"
log "B = $BIN_B ${B_ENV:-} (load generator ${B_BENCH:-$BENCH})"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then run_side A "$r"; run_side B "$r"
  else run_side B "$r"; run_side A "$r"; fi
done
log "JSON lines: $dir/results.jsonl"
