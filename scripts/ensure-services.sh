#!/usr/bin/env bash
# Make sure a Postgres and a Redis are reachable for the tests, installing and starting them
# when they are missing (a fresh Debian machine with only Rust). Prints the two URLs as shell
# assignments for `eval`:
#   CONFAB_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres
#   CONFAB_TEST_REDIS_URL=redis://127.0.0.1:6379
# Everything it starts itself lives under .confab/ in the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state="$root/.confab"
mkdir -p "$state"

log() { echo "ensure-services: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  log "installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# ---------- Postgres ----------
PG_URL="${CONFAB_TEST_DATABASE_URL:-}"
pg_ok() { command -v psql >/dev/null 2>&1 && psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }
if [ -z "$PG_URL" ]; then
  if ! command -v psql >/dev/null 2>&1 || [ -z "$(pg_bin || true)" ]; then
    apt_install postgresql postgresql-client
  fi
  if pg_ok "postgres://postgres@127.0.0.1:5432/postgres"; then
    PG_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    # Our own trust-auth cluster under .confab/pg (Postgres refuses to run as root: use the
    # postgres system user the package created).
    bin=$(pg_bin)
    port=5432
    if tcp_open 5432; then port=55432; fi
    data="$state/pg"
    runas=()
    if [ "$(id -u)" -eq 0 ]; then runas=(runuser -u postgres --); chown postgres "$state" 2>/dev/null || true; fi
    if [ ! -f "$data/PG_VERSION" ]; then
      log "initdb $data"
      mkdir -p "$data"; [ "$(id -u)" -eq 0 ] && chown postgres "$data"
      "${runas[@]}" "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
    fi
    if ! pg_ok "postgres://postgres@127.0.0.1:$port/postgres"; then
      log "starting private postgres on port $port"
      "${runas[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
        -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=500 -c fsync=on" start >/dev/null
    fi
    PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    pg_ok "$PG_URL" || { log "postgres is not reachable at $PG_URL"; exit 1; }
  fi
fi

# ---------- Redis ----------
REDIS_URL="${CONFAB_TEST_REDIS_URL:-}"
if ! command -v redis-server >/dev/null 2>&1; then
  # Needed anyway: fault-injection tests start private redis-server instances.
  apt_install redis-server
fi
if [ -z "$REDIS_URL" ]; then
  if command -v redis-cli >/dev/null 2>&1 && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then
    REDIS_URL="redis://127.0.0.1:6379"
  else
    port=6379
    if tcp_open 6379; then port=56379; fi
    if [ "$(redis-cli -h 127.0.0.1 -p $port ping 2>/dev/null)" != "PONG" ]; then
      log "starting redis on port $port"
      redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$state" --logfile "$state/redis.log" >&2
      for _ in $(seq 50); do
        [ "$(redis-cli -h 127.0.0.1 -p $port ping 2>/dev/null)" = "PONG" ] && break
        sleep 0.1
      done
    fi
    REDIS_URL="redis://127.0.0.1:$port"
  fi
fi

# Postgres binaries for private instances (chaos tests) must exist too.
if [ -z "$(pg_bin || true)" ]; then apt_install postgresql; fi

echo "CONFAB_TEST_DATABASE_URL=$PG_URL"
echo "CONFAB_TEST_REDIS_URL=$REDIS_URL"
