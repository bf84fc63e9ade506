#!/usr/bin/env bash
# `make bench`: build release binaries, start 2 release gateway nodes on a fresh database and
# Redis prefix, run every load scenario with `confab-bench`, profile the nodes under load, and
# write BENCHMARKS.md from what was measured. Everything runs on 127.0.0.1; the load generator
# shares the machine with the nodes, Redis and Postgres.
#
# Environment (all optional):
#   BENCH_DIR=.confab/bench   results, logs, perf data
#   BENCH_OUT=BENCHMARKS.md   the report
#   BENCH_QUICK=1             much shorter runs (to check the script itself; figures meaningless)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir="${BENCH_DIR:-$root/.confab/bench}"
out="${BENCH_OUT:-$root/BENCHMARKS.md}"
quick="${BENCH_QUICK:-0}"
mkdir -p "$dir"
rm -f "$dir"/results.jsonl "$dir"/commands.txt "$dir"/*.log "$dir"/perf.data*

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------- build ----------
log "building release binaries"
cargo build --release -p confab-gateway -p confab-bench
# Run copies: a rebuild during the run must not swap the binaries under the nodes (and perf
# needs the files the processes were started from to resolve symbols).
mkdir -p "$dir/bin"
cp target/release/confab target/release/confab-bench "$dir/bin/"
BIN="$dir/bin/confab"
BENCH="$dir/bin/confab-bench"

# ---------- services ----------
eval "$(bash scripts/ensure-services.sh)"
PG_ADMIN="$CONFAB_TEST_DATABASE_URL"
REDIS_URL="$CONFAB_TEST_REDIS_URL"
stamp=$(date +%Y%m%d%H%M%S)
DB_NAME="confab_bench_$stamp"
PREFIX="bench$stamp"
psql "$PG_ADMIN" -qc "CREATE DATABASE \"$DB_NAME\"" >/dev/null
# Same server, another database: replace the path of the admin URL.
DB_URL=$(echo "$PG_ADMIN" | sed -E "s#^(postgres(ql)?://[^/]+)/[^?]*#\1/$DB_NAME#")

# The fd limit bounds connections per process (sockets are fds).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)

# shellcheck source=scripts/lib/nodes.sh
. "$root/scripts/lib/nodes.sh"
node_pids=()
cleanup() {
  stop_nodes
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS \"$DB_NAME\" WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "$PREFIX*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
}
trap cleanup EXIT

# nodes_up: start the two nodes (NODE_ENV plus EXTRA_ENV), set N0/N1 and P0/P1, and write how
# they were started to commands.txt.
nodes_up() {
  start_nodes "$BIN" "$dir" 2
  N0="http://127.0.0.1:${ports[0]}"
  N1="http://127.0.0.1:${ports[1]}"
  P0=${node_pids[0]}
  P1=${node_pids[1]}
  log "nodes up (${EXTRA_ENV[*]:-default workers}): $N0 (pid $P0), $N1 (pid $P1)"
  local i
  for i in 0 1; do
    echo "env ${NODE_ENV[*]} ${EXTRA_ENV[*]} CONFAB__SERVER__PORT=${ports[$i]} CONFAB__NODE__ID=bench-n$i target/release/confab &"
  done >>"$dir/commands.txt"
}

bench_node_env
# `idle` measures one node taking every connection, serving on its own thread: the way to run one
# node process per core (docs/operations.md, "Scaling"). Against one worker per core, in paired
# runs of this scenario: connects/s +11 %, node CPU -30 %, RSS per connection 5.85 → 5.05 KiB.
EXTRA_ENV=(CONFAB__SERVER__SINGLE_THREAD=true)
{
  echo "make bench   # = bash scripts/bench.sh; what it ran:"
  echo "cargo build --release -p confab-gateway -p confab-bench"
  echo "psql \"$PG_ADMIN\" -c 'CREATE DATABASE \"$DB_NAME\"'"
} >>"$dir/commands.txt"
nodes_up

REDIS_PID=$(redis-cli -u "$REDIS_URL" info server 2>/dev/null | tr -d '\r' | awk -F: '/^process_id/{print $2}')
PG_DATA=$(psql "$PG_ADMIN" -Atc "show data_directory" 2>/dev/null || true)
PG_PID=$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || pgrep -o -x postgres || true)
AUX=()
[ -n "$REDIS_PID" ] && AUX+=("redis=$REDIS_PID")
# Only the backends serving the bench database: other work on the shared server is not ours.
[ -n "$PG_PID" ] && AUX+=("postgres=$PG_PID@$DB_NAME")
AUX_ARG=$(IFS=,; echo "${AUX[*]}")

# fanout_nodes_up: nodes_up, then COMMON: the fanout scenarios' arguments for those nodes.
fanout_nodes_up() {
  nodes_up
  COMMON=(--nodes "$N0,$N1" --pids "$P0,$P1" --aux "$AUX_ARG" --metrics "$N0" "$N1")
}

# Run one scenario once the machine calmed down after the previous one (`settle`): record the
# exact command, append its JSON lines to the results.
run() {
  settle
  echo "$*" | sed "s#$dir/bin/#target/release/#g; s#$root/##g" >>"$dir/commands.txt"
  "$@" >>"$dir/results.jsonl"
}

# Other work on the machine distorts every figure: wait (bounded) for it to calm down.
quiet_wait="${BENCH_QUIET_WAIT:-300}"
waited=0
background=$(busy_cpus)
while awk -v b="$background" 'BEGIN{exit !(b > 0.3)}' && [ "$waited" -lt "$quiet_wait" ]; do
  log "machine busy ($background CPUs in use by other work); waiting for it to calm down"
  sleep 10
  waited=$((waited + 13))
  background=$(busy_cpus)
done
log "background load before the run: $background CPUs busy"

# A yardstick of the machine itself (one core's arithmetic, loopback TCP round trips), recorded
# beside the figures: the same binary's figures drift with the machine from one day to the next.
echo "$BENCH calibrate" | sed "s#$dir/bin/#target/release/#g; s#$root/##g" >>"$dir/commands.txt"
calibration=$("$BENCH" calibrate 2>&1 >>"$dir/results.jsonl" | tail -n1 | sed 's/^calibrate: //')
log "machine speed: $calibration"

if [ "$quick" = 1 ]; then
  WARM=1; DUR=3; RATES="1000 10000"; PROFILE_RATES="2000"; RAMP_STEPS=2; IDLE_N=2000; HIST_N=20000; STORE_DUR=3
  EMBEDDED_RATES="2000"
else
  WARM=3; DUR=15; RATES="1000 2000 5000 10000"; PROFILE_RATES="2000 10000"; RAMP_STEPS=14; IDLE_N=19000; HIST_N=1000000; STORE_DUR=10
  EMBEDDED_RATES="2000 10000"
fi

# ---------- idle connections, first: node 0's heap is fresh (users are registered through
# node 1), so no freed memory of earlier runs flatters the per-connection figure ----------
log "idle: $IDLE_N connections to node 0 (fd limit $FD_LIMIT)"
run "$BENCH" idle --node "$N0" --setup-node "$N1" --pid "$P0" --connections "$IDLE_N" --users "$IDLE_N" \
  --room-size 10 --concurrency 256 --hold 5 --metrics "$N0" --aux "$AUX_ARG" --label idle

# ---------- every other scenario: the two nodes share the machine's cores ----------
# Restarted (same database and Redis prefix) the way `make cluster` runs nodes on one machine:
# each with its share of the cores as worker threads. The idle run above measures one node that
# takes every connection. Two nodes on 2
# cores with a worker per core each ran twice as many workers as cores; one each gave 6-16%
# more deliveries per CPU-second in paired runs (docs/operations.md, "Scaling"). A node with one
# core to itself serves on its own thread (`server.single_thread`): no worker thread, no hops.
SHARED_WORKERS=$(shared_workers 2)
SINGLE_THREAD=$(single_thread_for "$SHARED_WORKERS")
stop_nodes
EXTRA_ENV=(CONFAB__SERVER__WORKERS="$SHARED_WORKERS" CONFAB__SERVER__SINGLE_THREAD="$SINGLE_THREAD")
echo "# the nodes restarted for every scenario below, on the same database and Redis prefix:" \
  >>"$dir/commands.txt"
fanout_nodes_up

# ---------- fan-out at fixed rates (rooms of 10 over 2 nodes, 1,000 clients) ----------
for rate in $RATES; do
  log "fanout at $rate msgs/s"
  run "$BENCH" fanout "${COMMON[@]}" --clients 1000 --room-size 10 --rate "$rate" \
    --warmup "$WARM" --duration "$DUR" --label "fanout-$rate"
done

# ---------- flush window (`session.write_delay_ms`): the same loads, frames held per socket ----------
# Rooms of 100 (each client receives ~100 frames/s: the broadcast-heavy shape a window is for)
# without and with a window, then fanout-10000 with it. The report sets each `<twin>-window<ms>`
# run against its twin. The nodes restart for the window runs, and again without it after them.
WINDOW_MS=20
log "rooms of 100 at 1000 msgs/s"
run "$BENCH" fanout "${COMMON[@]}" --clients 1000 --room-size 100 --rate 1000 \
  --warmup "$WARM" --duration "$DUR" --label rooms100-1000
stop_nodes
EXTRA_ENV+=(CONFAB__SESSION__WRITE_DELAY_MS=$WINDOW_MS)
echo "# the nodes restarted with a flush window for the next two runs:" >>"$dir/commands.txt"
fanout_nodes_up
log "flush window of $WINDOW_MS ms"
run "$BENCH" fanout "${COMMON[@]}" --clients 1000 --room-size 100 --rate 1000 \
  --warmup "$WARM" --duration "$DUR" --label "rooms100-1000-window$WINDOW_MS"
run "$BENCH" fanout "${COMMON[@]}" --clients 1000 --room-size 10 --rate 10000 \
  --warmup "$WARM" --duration "$DUR" --label "fanout-10000-window$WINDOW_MS"
stop_nodes
unset 'EXTRA_ENV[-1]'
echo "# the nodes restarted without the window for every scenario below:" >>"$dir/commands.txt"
fanout_nodes_up

# ---------- durable store rate: rooms of 2, offered far beyond what can be stored ----------
# The drain waits (up to 40 s) until every acknowledged message has reached its room, so `lost`
# is loss and not what was still in flight: at this overload deliveries trail sends by ~10 s.
log "store rate"
run "$BENCH" fanout "${COMMON[@]}" --clients 1000 --room-size 2 --rate 40000 \
  --warmup 2 --duration "$STORE_DUR" --drain 5 --drain-max 40 --label "store-40000"

# ---------- ramp: the loss-free ceiling ----------
# 14 steps: ×1.5 from 1,000 msgs/s passes 50,000 (450,000 deliveries/s, the target) at step 11,
# and the refinements after the first failure bracket the ceiling. 10 steps ended at 38,443
# msgs/s with every step held on a faster machine, which said nothing of where it fails.
log "ramp"
run "$BENCH" ramp "${COMMON[@]}" --clients 1000 --room-size 10 --start-rate 1000 \
  --factor 1.5 --max-steps "$RAMP_STEPS" --refine 2 --warmup 2 --duration 8 --drain 5 --drain-max 30 \
  --max-p99-ms 500 --label ramp

# ---------- reconnect storm ----------
log "storm"
run "$BENCH" storm --nodes "$N0,$N1" --clients 1000 --room-size 10 --label storm

# ---------- history paging on a huge thread ----------
log "history ($HIST_N messages)"
run "$BENCH" history --node "$N0" --db-url "$DB_URL" --messages "$HIST_N" --requests 2000 \
  --label history

# ---------- profile: where the nodes' CPU goes, at a rate they sustain and at 90k/s ----------
profile_method="$dir/profile-method.md"
PROFILE_ARGS=()
# Counted beside the profile: socket writes and reads, event-loop waits, context switches.
PERF_COUNTS=syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,context-switches
if perf record -e cpu-clock -o "$dir/perf.check" -- true >/dev/null 2>&1; then
  for rate in $PROFILE_RATES; do
    settle
    log "profiling the nodes under fanout at $rate msgs/s"
    label="profile-$rate"
    "$BENCH" fanout "${COMMON[@]}" --clients 1000 --room-size 10 --rate "$rate" --warmup 8 \
      --duration 12 --drain 5 --drain-max 20 --label "$label" \
      >>"$dir/results.jsonl" 2>"$dir/$label.log" &
    fan=$!
    # Setup and connect take ~2 s; sample 10 s inside the 20 s of sending.
    sleep 9
    # The system calls and context switches of the same 10 s, counted beside the sampling
    # (the report divides them by the deliveries: writes per delivery, wake-ups per delivery).
    perf stat -x, -e "$PERF_COUNTS" -p "$P0,$P1" -o "$dir/counts-$rate.txt" -- sleep 10 \
      >/dev/null 2>&1 &
    counting=$!
    perf record -e cpu-clock -F 999 -g -p "$P0,$P1" -o "$dir/perf-$rate.data" -- sleep 10 \
      >/dev/null 2>"$dir/perf-record-$rate.log" || true
    wait "$counting" || true
    wait "$fan" || true
    cat "$dir/$label.log" >&2
    {
      echo "target/release/confab-bench fanout ${COMMON[*]} --clients 1000 --room-size 10 --rate $rate --warmup 8 --duration 12 --drain 5 --drain-max 20 --label $label &"
      echo "sleep 9; perf stat -x, -e $PERF_COUNTS -p $P0,$P1 -o counts-$rate.txt -- sleep 10 &"
      echo "perf record -e cpu-clock -F 999 -g -p $P0,$P1 -o perf-$rate.data -- sleep 10"
      echo "perf report -i perf-$rate.data --no-children --sort dso,sym --stdio -g none --percent-limit 0.4"
      echo "perf report -i perf-$rate.data --no-children --sort dso --stdio -g none"
    } >>"$dir/commands.txt"
    perf report -i "$dir/perf-$rate.data" --no-children --sort dso,sym --stdio -g none \
      --percent-limit 0.4 2>/dev/null | grep -v '^#' | grep -v '^$' >"$dir/profile-$rate.txt" || true
    perf report -i "$dir/perf-$rate.data" --no-children --sort dso --stdio -g none \
      2>/dev/null | grep -v '^#' | grep -v '^$' >"$dir/dso-$rate.txt" || true
    PROFILE_ARGS+=(--profile "$label=$dir/profile-$rate.txt" --profile-dso "$label=$dir/dso-$rate.txt")
    if [ -s "$dir/counts-$rate.txt" ]; then
      PROFILE_ARGS+=(--counts "$label=$dir/counts-$rate.txt")
    fi
  done
  PROFILE_ARGS+=(--counts-window-s 10)
  echo "Sampled with \`perf record -e cpu-clock -F 999 -g -p <both node pids>\` for 10 s in the \
middle of a fanout (rooms of 10, 1,000 clients; runs \`profile-*\` in the tables above, whose \
figures are disturbed by the sampling and are not used for the targets). The VM exposes no \
hardware counters, so the samples come from the kernel's CPU clock; a sample that falls while \
interrupts are disabled is reported where they are re-enabled, so \`finish_task_switch\` and \
\`_raw_spin_unlock_irqrestore\` stand for the whole context-switch and wake-up path. Over the \
same 10 s, \`perf stat -x, -e $PERF_COUNTS\` counted the nodes' system calls and context \
switches (tracepoints, which slow each counted call a little)." >"$profile_method"
else
  echo "\`perf\` cannot sample on this machine; the CPU split per process above (from /proc) is \
the only profile." >"$profile_method"
fi
rm -f "$dir/perf.check"

# ---------- node crash: last, because node 1 does not come back ----------
# Presence at its production defaults: the figure is how long a SIGKILLed node's users stay
# "online" to the people they share threads with.
log "crash: SIGKILL node 1 with its users connected"
# A failure here must not cost the report of everything measured before: its row then says
# "not measured".
run "$BENCH" crash --nodes "$N0,$N1" --victim 1 --victim-pid "$P1" --clients 1000 --room-size 10 \
  --label crash || log "the crash scenario failed (see above); its figure is left out"

# ---------- the embedded single node (`make run`): SQLite and in-process fan-out ----------
# One node with no database or Redis URL, on one thread, the rate limits and argon2 cost as
# above; its own section of the report (labels `embedded-…`), never part of the cluster's figures.
stop_nodes
mkdir -p "$dir/embedded"
rm -rf "$dir/embedded/data"
NODE_ENV=(CONFAB__DATABASE__DATA_DIR="$dir/embedded/data" "${BENCH_TUNING[@]}")
EXTRA_ENV=(CONFAB__SERVER__SINGLE_THREAD=true)
start_nodes "$BIN" "$dir/embedded" 1
E0="http://127.0.0.1:${ports[0]}"
EP=${node_pids[0]}
log "embedded node up: $E0 (pid $EP)"
{
  echo "# one embedded node (what \`make run\` starts) for the runs labelled embedded-…:"
  echo "env ${NODE_ENV[*]} ${EXTRA_ENV[*]} CONFAB__SERVER__PORT=${ports[0]} target/release/confab &" |
    sed "s#$root/##g"
} >>"$dir/commands.txt"
# Idle first, on a fresh heap (as for the cluster's node above).
run "$BENCH" idle --node "$E0" --pid "$EP" --connections "$IDLE_N" --users "$IDLE_N" \
  --room-size 10 --concurrency 256 --hold 5 --metrics "$E0" --label embedded-idle
for rate in $EMBEDDED_RATES; do
  log "embedded fanout at $rate msgs/s"
  run "$BENCH" fanout --nodes "$E0" --pids "$EP" --metrics "$E0" --clients 1000 --room-size 10 \
    --rate "$rate" --warmup "$WARM" --duration "$DUR" --drain 5 --drain-max 30 \
    --label "embedded-$rate"
done
# History paging on the node's own SQLite file (the messages inserted beside the running node).
log "embedded history ($HIST_N messages)"
run "$BENCH" history --node "$E0" --db-url "sqlite://$dir/embedded/data/confab.db" \
  --messages "$HIST_N" --requests 2000 --label embedded-history
stop_nodes

# ---------- the report ----------
{
  echo "| | |"
  echo "|---|---|"
  echo "| CPU | $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores available |"
  echo "| memory | $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
  echo "| kernel | $(uname -sr) |"
  echo "| fd limit per process | $FD_LIMIT |"
  echo "| other work on the machine before the run | $background CPUs busy (waited ${waited} s for it to calm down) |"
  echo "| machine speed before the run (\`confab-bench calibrate\`) | $calibration |"
  echo "| Postgres | $(psql "$PG_ADMIN" -Atc 'show server_version' 2>/dev/null), fsync=$(psql "$PG_ADMIN" -Atc 'show fsync' 2>/dev/null), synchronous_commit=$(psql "$PG_ADMIN" -Atc 'show synchronous_commit' 2>/dev/null) |"
  echo "| Redis | $(redis-cli -u "$REDIS_URL" info server 2>/dev/null | tr -d '\r' | awk -F: '/^redis_version/{print $2}') |"
  echo "| Rust | $(rustc --version) |"
  echo "| commit | $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)') |"
  echo "| date | $(date -u '+%Y-%m-%d %H:%M UTC') |"
  echo
  echo "Two release \`confab\` nodes (\`cargo build --release\`), default settings except:"
  echo "for every scenario after \`idle\` the nodes are restarted with \`CONFAB__SERVER__WORKERS=$SHARED_WORKERS\`,"
  echo "\`CONFAB__SERVER__SINGLE_THREAD=$SINGLE_THREAD\`"
  echo "(the machine's cores split between them, as \`make cluster\` does); \`idle\` measures one node"
  echo "that takes every connection, with \`CONFAB__SERVER__SINGLE_THREAD=true\` (one thread; the rest"
  echo "of the machine runs the load generator, Postgres and Redis); the runs named \`…-window$WINDOW_MS\`"
  echo "on nodes restarted with \`CONFAB__SESSION__WRITE_DELAY_MS=$WINDOW_MS\` as well (a flush window);"
  echo "rate limits raised (\`CONFAB__LIMITS__FRAMES_PER_SEC\`, \`FRAMES_BURST\`, \`USER_SENDS_PER_SEC\`,"
  echo "\`USER_SENDS_BURST\` = 1,000,000) so the benchmark measures fan-out rather than the limiter,"
  echo "and \`CONFAB__AUTH__ARGON2_MEMORY_KIB=256\`, \`ARGON2_ITERATIONS=1\` so that registering"
  echo "thousands of benchmark users is quick (no figure below involves password hashing)."
  echo "Postgres and Redis are the shared instances of \`scripts/ensure-services.sh\`; other"
  echo "work on the machine during the run (other databases, other tests) shows up as \"other\""
  echo "in the CPU split, and distorts the figures by that much."
} >"$dir/machine.md"

"$BENCH" report --results "$dir/results.jsonl" --machine "$dir/machine.md" \
  --commands "$dir/commands.txt" --profile-method "$profile_method" \
  "${PROFILE_ARGS[@]}" --out "$out"
log "wrote $out"
