# Shared by scripts/bench.sh, bench-ab.sh and cluster.sh (sourced, not run): HTTP probes without
# curl, and starting and stopping release gateway nodes on loopback the way the benchmarks do.
#
# The caller sets DB_URL, REDIS_URL and PREFIX before calling `bench_node_env`, and defines
# `die`. `start_nodes BIN LOGDIR [N]` fills `ports` and `node_pids`; `stop_nodes` ends them.

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A port nothing listens on (the nodes bind it right after).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))
    tcp_open "$p" || { echo "$p"; return; }
  done
}

# Status code of GET http://127.0.0.1:$1$2 ("" when nothing answers), without curl.
http_status() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    IFS=' ' read -r -t 3 _ code _ <&3 || true
    echo "${code:-}"
  ) 2>/dev/null
}

# Settings of every benchmark node, clustered or embedded: production defaults except the rate
# limits (raised so the benchmark measures fan-out, not the limiter) and argon2's cost (256 KiB,
# 1 pass: setup registers thousands of users; logins are not what is measured).
BENCH_TUNING=(
  CONFAB__LIMITS__FRAMES_PER_SEC=1000000
  CONFAB__LIMITS__FRAMES_BURST=1000000
  CONFAB__LIMITS__USER_SENDS_PER_SEC=1000000
  CONFAB__LIMITS__USER_SENDS_BURST=1000000
  CONFAB__AUTH__ARGON2_MEMORY_KIB=256
  CONFAB__AUTH__ARGON2_ITERATIONS=1
  CONFAB__LOG__LEVEL=warn
)

# A cluster node's settings: the bench database and Redis prefix, and BENCH_TUNING.
bench_node_env() {
  NODE_ENV=(
    CONFAB__DATABASE__URL="$DB_URL"
    CONFAB__REDIS__URL="$REDIS_URL"
    CONFAB__REDIS__KEY_PREFIX="$PREFIX"
    CONFAB__CLUSTER__REPLICAS=2
    "${BENCH_TUNING[@]}"
  )
}

# start_nodes BIN LOGDIR [N=2]: N nodes of BIN with NODE_ENV (plus anything in EXTRA_ENV),
# one after the other (node 0 applies the migrations). Logs go to LOGDIR/node$i.log.
start_nodes() {
  local bin=$1 logdir=$2 n=${3:-2} i port
  ports=()
  node_pids=()
  for i in $(seq 0 $((n - 1))); do
    port=$(free_port)
    ports+=("$port")
    env "${NODE_ENV[@]}" "${EXTRA_ENV[@]}" CONFAB__SERVER__PORT="$port" CONFAB__NODE__ID="bench-n$i" \
      "$bin" >"$logdir/node$i.log" 2>&1 &
    node_pids+=("$!")
    for _ in $(seq 600); do
      [ "$(http_status "$port" /readyz)" = 200 ] && break
      kill -0 "${node_pids[$i]}" 2>/dev/null || die "node $i exited; see $logdir/node$i.log"
      sleep 0.1
    done
    [ "$(http_status "$port" /readyz)" = 200 ] || die "node $i never became ready; see $logdir/node$i.log"
  done
}

# TERM the nodes, KILL what is still there after 10 s.
stop_nodes() {
  local pid
  for pid in "${node_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${node_pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  node_pids=()
}

# shared_workers N: worker threads for each of N nodes sharing this machine — its cores split
# between them, at least one each (docs/operations.md, "Scaling").
shared_workers() {
  local cores
  cores=$(nproc 2>/dev/null || echo 1)
  echo $((cores / $1 > 0 ? cores / $1 : 1))
}

# single_thread_for WORKERS: `server.single_thread` for a node with that many workers — true for
# one (what `auto` chooses too; said explicitly so an older build is started the same way).
single_thread_for() {
  [ "$1" = 1 ] && echo true || echo false
}

# Busy CPUs over the next 3 s (the whole machine, from /proc/stat).
busy_cpus() {
  local a b
  a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  sleep 3
  b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
  echo "$a $b" | awk '{printf "%.2f", ($3-$1)/300}'
}

# Let the machine calm down (bounded) so no run pays for the one before: the nodes finish
# cleaning up closed sessions, Postgres its vacuum.
settle() {
  local i b
  for i in $(seq 20); do
    b=$(busy_cpus)
    awk -v b="$b" 'BEGIN{exit !(b > 0.3)}' || return 0
  done
  log "machine still busy ($b CPUs) after 60 s; going on"
}
