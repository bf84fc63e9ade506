#!/usr/bin/env bash
# `make cluster`: N gateway nodes (default 3) on Postgres + Redis behind a real load balancer
# (HAProxy from Debian's packages), everything on 127.0.0.1, so anyone can try the scaled-out
# setup on one machine.
#
# Usage:
#   bash scripts/cluster.sh                start, print the URLs, run until Ctrl-C, then stop all
#   bash scripts/cluster.sh --background   start, print the URLs and return (tests use this)
#   bash scripts/cluster.sh stop           stop what a --background start left running
#   bash scripts/cluster.sh status         show what runs
#
# Environment (all optional):
#   N=3                       number of gateway nodes
#   LB_PORT=8090              the load balancer's port on 127.0.0.1: the one URL clients use
#   NODE_PORTS="p1 p2 ..."    the nodes' own ports (default: free ports from LB_PORT+1 up)
#   CONFAB_BIN=target/release/confab   the gateway binary (`make cluster` builds it)
#   CLUSTER_DIR=.confab/cluster        state: haproxy.cfg, pid files, node logs
#   CLUSTER_DB=confab_cluster          database on the Postgres of scripts/ensure-services.sh,
#                                      created if missing
#   CLUSTER_PREFIX=confab_cluster      Redis key and channel prefix
#   CONFAB__SECTION__KEY=...           any gateway setting, passed to every node
#                                      (CONFAB__SERVER__WORKERS defaults to cores / N, at least 1)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

mode="foreground"
case "${1:-}" in
  "" | start) ;;
  --background | -b) mode="background" ;;
  stop) mode="stop" ;;
  status) mode="status" ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--background|stop|status]" >&2; exit 2 ;;
esac

N="${N:-3}"
LB_PORT="${LB_PORT:-8090}"
dir="${CLUSTER_DIR:-$root/.confab/cluster}"
BIN="${CONFAB_BIN:-$root/target/release/confab}"
DB="${CLUSTER_DB:-confab_cluster}"
PREFIX="${CLUSTER_PREFIX:-confab_cluster}"

log() { echo "cluster: $*" >&2; }
die() { log "$*"; exit 1; }

# tcp_open, http_status (and the benchmarks' node helpers).
# shellcheck source=scripts/lib/nodes.sh
. "$root/scripts/lib/nodes.sh"

# Body of GET http://127.0.0.1:$1$2.
http_body() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
    timeout 3 cat <&3 | sed '1,/^\r\{0,1\}$/d'
  ) 2>/dev/null
}

# Is $1 a live process of ours running $2 (guards against a recycled pid)?
ours() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2"; }

stop_all() {
  local pids=() pid
  if [ -f "$dir/haproxy.pid" ]; then
    pid=$(cat "$dir/haproxy.pid")
    if ours "$pid" haproxy; then kill -TERM "$pid" 2>/dev/null || true; fi
    rm -f "$dir/haproxy.pid"
  fi
  if [ -f "$dir/nodes.pid" ]; then
    while read -r pid; do
      if ours "$pid" confab; then pids+=("$pid"); kill -TERM "$pid" 2>/dev/null || true; fi
    done <"$dir/nodes.pid"
    # SIGTERM drains (bounded by shutdown.drain_timeout_secs, 20 s by default).
    for _ in $(seq 300); do
      local alive=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ "$alive" -eq 0 ] && break
      sleep 0.1
    done
    for pid in "${pids[@]}"; do
      if ours "$pid" confab; then log "node $pid did not drain in time: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    done
    rm -f "$dir/nodes.pid"
  fi
}

running() {
  local pid
  [ -f "$dir/haproxy.pid" ] && ours "$(cat "$dir/haproxy.pid")" haproxy && return 0
  if [ -f "$dir/nodes.pid" ]; then
    while read -r pid; do ours "$pid" confab && return 0; done <"$dir/nodes.pid"
  fi
  return 1
}

case "$mode" in
  stop)
    stop_all
    log "stopped"
    exit 0
    ;;
  status)
    if running; then
      cat "$dir/urls" 2>/dev/null || true
      exit 0
    fi
    log "not running"
    exit 1
    ;;
esac

# ---------- start ----------
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number, got '$N'"
[[ "$DB" =~ ^[A-Za-z0-9_]+$ ]] || die "CLUSTER_DB must be letters, digits and _, got '$DB'"
[ -x "$BIN" ] || die "no gateway binary at $BIN (run: make build, or set CONFAB_BIN)"
mkdir -p "$dir"
if running; then die "already running (see $dir); stop it with: bash scripts/cluster.sh stop"; fi
rm -f "$dir/nodes.pid" "$dir/haproxy.pid" "$dir/urls"
tcp_open "$LB_PORT" && die "port $LB_PORT is taken; choose another with LB_PORT=..."

bash scripts/ensure-tools.sh
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$HAPROXY" ] || die "haproxy is not installed"

eval "$(bash scripts/ensure-services.sh)"
admin="$CONFAB_TEST_DATABASE_URL"
if [ -z "$(psql "$admin" -Atqc "select 1 from pg_database where datname = '$DB'")" ]; then
  log "creating database $DB"
  psql "$admin" -qc "create database \"$DB\"" >/dev/null
fi
base="${admin%%\?*}"
query=""
if [[ "$admin" == *\?* ]]; then query="?${admin#*\?}"; fi
db_url="${base%/*}/$DB$query"

ports=()
if [ -n "${NODE_PORTS:-}" ]; then
  read -r -a ports <<<"$NODE_PORTS"
  [ "${#ports[@]}" -eq "$N" ] || die "NODE_PORTS has ${#ports[@]} ports for N=$N nodes"
else
  p=$((LB_PORT + 1))
  while [ "${#ports[@]}" -lt "$N" ]; do
    tcp_open "$p" || ports+=("$p")
    p=$((p + 1))
  done
fi

# From here on, a failure or Ctrl-C stops whatever was started.
cleanup() { stop_all; }
trap 'cleanup; exit 1' ERR
trap 'echo >&2; log "stopping"; cleanup; exit 0' INT TERM

# Wait until node $1 (pid $2, port $3) answers /readyz with 200.
wait_ready() {
  for _ in $(seq 600); do
    if ! kill -0 "$2" 2>/dev/null; then
      log "node $1 exited during start-up; the end of $dir/node-$1.log:"
      tail -n 20 "$dir/node-$1.log" >&2 || true
      return 1
    fi
    [ "$(http_status "$3" /readyz)" = "200" ] && return 0
    sleep 0.1
  done
  log "node $1 was not ready within 60 s; see $dir/node-$1.log"
  return 1
}

# The nodes share this machine's cores: each gets its share of worker threads (at least one)
# unless CONFAB__SERVER__WORKERS says otherwise. More workers than cores only adds hops between
# threads (docs/operations.md, "Scaling").
workers="${CONFAB__SERVER__WORKERS:-$(shared_workers "$N")}"
# A node with one core's share serves on its own thread: no worker thread to hand work to.
single_thread="${CONFAB__SERVER__SINGLE_THREAD:-$(single_thread_for "$workers")}"

for i in $(seq 1 "$N"); do
  port=${ports[$((i - 1))]}
  # The first node applies migrations; the others wait for it so they never race to migrate.
  migrate="${CONFAB__DATABASE__MIGRATE_ON_START:-true}"
  [ "$i" -gt 1 ] && migrate=false
  CONFAB__SERVER__HOST=127.0.0.1 \
    CONFAB__SERVER__PORT="$port" \
    CONFAB__NODE__ID="${PREFIX}-node$i" \
    CONFAB__DATABASE__URL="$db_url" \
    CONFAB__DATABASE__MIGRATE_ON_START="$migrate" \
    CONFAB__REDIS__URL="$CONFAB_TEST_REDIS_URL" \
    CONFAB__REDIS__KEY_PREFIX="$PREFIX" \
    CONFAB__CLUSTER__REPLICAS="$N" \
    CONFAB__SERVER__WORKERS="$workers" \
    CONFAB__SERVER__SINGLE_THREAD="$single_thread" \
    nohup "$BIN" </dev/null >"$dir/node-$i.log" 2>&1 &
  pid=$!
  echo "$pid" >>"$dir/nodes.pid"
  if [ "$i" -eq 1 ]; then wait_ready 1 "$pid" "$port" || { cleanup; exit 1; }; fi
done
i=0
while read -r pid; do
  i=$((i + 1))
  wait_ready "$i" "$pid" "${ports[$((i - 1))]}" || { cleanup; exit 1; }
done <"$dir/nodes.pid"

# ---------- HAProxy ----------
cfg="$dir/haproxy.cfg"
# Two descriptors per proxied connection: take what the file-descriptor limit allows.
fd_limit=$(ulimit -Hn)
[[ "$fd_limit" =~ ^[0-9]+$ ]] || fd_limit=1048576
maxconn=$(((fd_limit - 100) / 2))
[ "$maxconn" -gt 100000 ] && maxconn=100000
{
  cat <<EOF
# Generated by scripts/cluster.sh: $N Confab gateway nodes behind one port.
global
    maxconn $maxconn
    stats socket $dir/haproxy.sock mode 600 level admin

defaults
    mode http
    option forwardfor
    option redispatch
    retries 2
    timeout connect 5s
    timeout http-request 10s
    # Plain HTTP requests.
    timeout client 60s
    timeout server 60s
    # An upgraded WebSocket is a tunnel: it may be quiet for long (the gateway pings every
    # session.heartbeat_interval_ms), so this, not client/server, bounds its idle time.
    timeout tunnel 1h
    timeout client-fin 10s
    timeout server-fin 10s

frontend confab
    bind 127.0.0.1:$LB_PORT
    # HAProxy's own page: which nodes are up, how many connections each holds.
    stats enable
    stats uri /lb/stats
    stats refresh 5s
    default_backend gateways

backend gateways
    # Long-lived WebSockets: send each new connection to the node holding the fewest.
    balance leastconn
    # A node that is not ready (Postgres or Redis unreachable, draining) gets no new clients.
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
    default-server check inter 1s fall 2 rise 2
EOF
  for i in $(seq 1 "$N"); do
    echo "    server node$i 127.0.0.1:${ports[$((i - 1))]}"
  done
} >"$cfg"
"$HAPROXY" -c -q -f "$cfg" >&2 || die "invalid $cfg"
"$HAPROXY" -D -f "$cfg" -p "$dir/haproxy.pid" </dev/null >"$dir/haproxy.log" 2>&1
for _ in $(seq 100); do [ -s "$dir/haproxy.pid" ] && tcp_open "$LB_PORT" && break; sleep 0.1; done
tcp_open "$LB_PORT" || die "haproxy did not start; see $dir/haproxy.log"
# Every node must be in rotation before anyone is told to connect.
for _ in $(seq 100); do
  up=$(http_body "$LB_PORT" '/lb/stats;csv' | grep -c '^gateways,node[0-9]*,.*,UP,' || true)
  [ "$up" -eq "$N" ] && break
  sleep 0.1
done
[ "$up" -eq "$N" ] || die "only $up of $N nodes are up in haproxy (see http://127.0.0.1:$LB_PORT/lb/stats)"

{
  echo "Confab cluster: $N nodes behind HAProxy"
  echo "  load balancer  http://127.0.0.1:$LB_PORT   (WebSocket: ws://127.0.0.1:$LB_PORT/ws?token=...)"
  echo "  haproxy stats  http://127.0.0.1:$LB_PORT/lb/stats"
  for i in $(seq 1 "$N"); do
    echo "  node $i         http://127.0.0.1:${ports[$((i - 1))]}   (/metrics, /readyz; log $dir/node-$i.log)"
  done
  echo "  database       $DB   redis prefix $PREFIX"
} >"$dir/urls"
cat "$dir/urls"

trap - ERR
if [ "$mode" = "background" ]; then
  echo "stop with: bash scripts/cluster.sh stop"
  exit 0
fi
echo "Ctrl-C stops everything."
while sleep 1; do
  if ! running; then log "everything has exited"; stop_all; exit 1; fi
done
