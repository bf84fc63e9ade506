#!/usr/bin/env bash
# Make sure the operator tools the tests use are on this machine, installing what is missing
# from Debian's packages (a fresh Debian machine with only Rust is enough):
#   promtool  - checks /metrics (tests/tests/suite/ops.rs). Taken out of Debian's `prometheus`
#               package into .tools/bin/ (CONFAB_TOOLS) with `apt-get download` + `dpkg-deb -x`,
#               so no Prometheus server gets installed or started as a system service.
#   haproxy   - the load balancer of `make cluster` (scripts/cluster.sh), `apt-get install`.
# Logs go to stderr; a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
tools="${CONFAB_TOOLS:-$root/.tools}"

log() { echo "ensure-tools: $*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_updated=0
apt_update() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
}

# ---------- promtool ----------
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$tools/bin/promtool" ]; then
  log "fetching promtool from Debian's prometheus package into $tools/bin"
  work=$(mktemp -d)
  chmod 755 "$work" # apt-get download drops privileges to _apt
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download prometheus >&2 2>/dev/null); then
    apt_update
    (cd "$work" && apt-get download prometheus >&2)
  fi
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
  mkdir -p "$tools/bin"
  install -m 0755 "$work/x/usr/bin/promtool" "$tools/bin/promtool"
  "$tools/bin/promtool" --version >/dev/null
fi

# ---------- haproxy ----------
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  apt_update
  log "installing haproxy"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >&2
  # We want the binary, not a system-wide load balancer: scripts/cluster.sh runs its own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet haproxy 2>/dev/null; then
    log "stopping and disabling the haproxy system service the package started"
    $SUDO systemctl disable --now haproxy >&2 || true
  fi
fi
