#!/usr/bin/env bash
# dcpipe on a replicated broker, on one machine: a 3-node NATS JetStream cluster on 127.0.0.1
# (three nats-server processes joined by routes, each its own store directory, every write
# fsynced before it is acknowledged), dcpipe's streams with 3 replicas, and the workers of two
# institutions (oi01, oi02) and of the central bank's settlement, each connected to all three
# nodes. docs/OPERATIONS.md ("A replicated broker on one machine") describes it.
#
#   scripts/cluster.sh start [DIR]     start everything; DIR (default dcpipe-cluster) receives
#                                      the nodes' stores, the PKI, the ledgers, logs and pids
#   scripts/cluster.sh stop [DIR]      stop the workers (SIGTERM), then the nodes
#   scripts/cluster.sh commands BUS LEDGER TRUST KEYS METRICS_ADDR
#                                      print each worker's service name and dcpipe arguments
#                                      (one line each) for these values: the command lines
#                                      compose/docker-compose.yml runs, checked by the tests
#
# DCPIPE_BIN names the dcpipe binary (default: dcpipe on PATH), DCPIPE_NATS_SERVER the
# nats-server binary (default: the one scripts/setup.sh installed, else nats-server on PATH),
# DCPIPE_CLUSTER_LEDGER the ledgers (default sqlite://DIR/ledgers; a postgres:// URL works).
# Needs python3 (free ports, readiness).
set -euo pipefail

# The workers: one service per stage and institution, and settlement, as in compose.
SERVICES=(
  payer-oi01 payee-oi01 commit-oi01 finalize-oi01
  payer-oi02 payee-oi02 commit-oi02 finalize-oi02
  settlement
)
NODES=3
REPO=$(cd "$(dirname "$0")/.." && pwd)

# The dcpipe arguments of worker SERVICE; one argument per line.
#   worker_args SERVICE BUS LEDGER TRUST KEYS METRICS_ADDR
# KEYS is the PKI directory holding institutions/<oi>/signer and settlement (each worker gets
# its own signer's directory only).
worker_args() {
  local service=$1 bus=$2 ledger=$3 trust=$4 keys=$5 metrics=$6
  local stage=${service%%-*} institution= key
  if [ "$service" = settlement ]; then
    key=$keys/settlement
  else
    institution=${service#*-}
    key=$keys/institutions/$institution/signer
  fi
  printf '%s\n' --log-format json --metrics-addr "$metrics" worker "$stage"
  if [ -n "$institution" ]; then
    printf '%s\n' --institution "$institution"
  fi
  printf '%s\n' --bus "$bus" --ledger "$ledger" --pki "$trust" --key "$key"
}

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

# Waits until http://ADDRESS/readyz answers 200, up to SECONDS; false otherwise.
wait_ready() {
  python3 - "$1" "$2" <<'EOF'
import sys, time, urllib.request
address, seconds = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=2) as answer:
            if answer.status == 200:
                sys.exit(0)
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
}

nats_server_binary() {
  if [ -n "${DCPIPE_NATS_SERVER:-}" ]; then
    echo "$DCPIPE_NATS_SERVER"
    return
  fi
  local cache=${DCPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dcpipe}
  local installed=$cache/nats-server-2.12.8/bin/nats-server
  if [ -x "$installed" ]; then
    echo "$installed"
  elif command -v nats-server >/dev/null; then
    command -v nats-server
  else
    echo "nats-server not found: run scripts/setup.sh or set DCPIPE_NATS_SERVER" >&2
    exit 1
  fi
}

# Starts a process in its own session (it outlives this script), output to LOG, pid in pids.
launch() {
  local log=$1
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  echo "$!" >>pids
  echo "$!"
}

start() {
  local dir=${1:-dcpipe-cluster}
  local dcpipe=${DCPIPE_BIN:-dcpipe}
  if [[ $dcpipe == */* ]]; then
    dcpipe=$(realpath "$dcpipe")
  else
    dcpipe=$(command -v "$dcpipe")
  fi
  local nats_server
  nats_server=$(nats_server_binary)
  mkdir -p "$dir"
  cd "$dir"
  if [ -s pids ]; then
    echo "$(pwd) already has processes (pids): scripts/cluster.sh stop $dir first" >&2
    exit 1
  fi
  mkdir -p logs
  # A start that fails half-way stops what it started.
  trap 'echo "start failed: stopping what was started (logs in $PWD/logs)" >&2; stop "$PWD"' EXIT

  # 1. The nodes: client and route ports chosen free, the same settings as
  #    compose/nats/nats.conf.
  local ports routes=() i
  read -r -a ports <<<"$(free_ports $((NODES * 2)))"
  for ((i = 0; i < NODES; i++)); do
    routes+=("nats-route://127.0.0.1:${ports[NODES + i]}")
  done
  local addresses=()
  for ((i = 0; i < NODES; i++)); do
    local node=nats-$((i + 1))
    mkdir -p "nats/$node"
    {
      echo "server_name: $node"
      echo "listen: 127.0.0.1:${ports[i]}"
      echo "max_payload: 2097152"
      echo "jetstream {"
      echo "  store_dir: \"$(pwd)/nats/$node/jetstream\""
      echo "  # Every write is fsynced before it is acknowledged (the default, every 2 minutes,"
      echo "  # loses acknowledged messages when nodes crash together)."
      echo "  sync_interval: always"
      echo "}"
      echo "cluster {"
      echo "  name: dcpipe"
      echo "  listen: 127.0.0.1:${ports[NODES + i]}"
      echo "  routes: [$(
        IFS=,
        echo "${routes[*]}"
      )]"
      echo "}"
    } >"nats/$node/nats.conf"
    launch "logs/$node.log" "$nats_server" -c "nats/$node/nats.conf" >/dev/null
    addresses+=("127.0.0.1:${ports[i]}")
  done
  local bus
  bus="nats://$(
    IFS=,
    echo "${addresses[*]}"
  )"

  # 2. The streams, 3 replicas each (retried while the cluster elects its leaders).
  local attempt
  for attempt in $(seq 1 60); do
    if "$dcpipe" bus init --bus "$bus" --institutions oi01,oi02 --nats-stream-replicas 3 >logs/bus-init.log 2>&1; then
      break
    fi
    if [ "$attempt" = 60 ]; then
      echo "dcpipe bus init kept failing; logs/bus-init.log:" >&2
      cat logs/bus-init.log >&2
      exit 1
    fi
    sleep 0.5
  done

  # 3. Keys and wallets (kept when DIR already has them: start again after a stop).
  if [ ! -d pki ]; then
    "$dcpipe" pki init --out pki --institutions 2 --wallets 4 >logs/pki-init.log 2>&1
  fi
  local ledger=${DCPIPE_CLUSTER_LEDGER:-sqlite://$(pwd)/ledgers}
  local oi
  for oi in oi01 oi02; do
    "$dcpipe" wallets open --institution "$oi" --ledger "$ledger" --file "$REPO/compose/wallets/wallets-$oi.jsonl" >>logs/wallets-open.log 2>&1
  done

  # 4. The workers, with the command lines of compose/docker-compose.yml.
  local service metrics args pid
  local started=()
  for service in "${SERVICES[@]}"; do
    read -r metrics <<<"$(free_ports 1)"
    mapfile -t args < <(worker_args "$service" "$bus" "$ledger" pki/trust pki "127.0.0.1:$metrics")
    pid=$(launch "logs/$service.log" "$dcpipe" "${args[@]}")
    started+=("$service $pid 127.0.0.1:$metrics")
  done
  local line failed=0
  for line in "${started[@]}"; do
    read -r service pid metrics <<<"$line"
    if ! wait_ready "$metrics" 60; then
      echo "$service (pid $pid) is not ready after 60 s: logs/$service.log" >&2
      failed=1
    fi
  done

  echo "dcpipe cluster in $(pwd)"
  echo "  bus:    $bus (3 nodes, streams with 3 replicas)"
  echo "  ledger: $ledger"
  for ((i = 0; i < NODES; i++)); do
    echo "  nats-$((i + 1)): pid $(sed -n "$((i + 1))p" pids), client 127.0.0.1:${ports[i]}, route 127.0.0.1:${ports[NODES + i]}, log logs/nats-$((i + 1)).log"
  done
  for line in "${started[@]}"; do
    read -r service pid metrics <<<"$line"
    echo "  $service: pid $pid, metrics http://$metrics/metrics, log logs/$service.log"
  done
  echo "Pay:  $dcpipe submit --bus $bus --pki $(pwd)/pki/trust --payer $(pwd)/pki/wallets/w-oi01-000001 --payee $(pwd)/pki/wallets/w-oi02-000001 --amount-fen 12345"
  echo "Stop: scripts/cluster.sh stop $(pwd)"
  if [ "$failed" = 0 ]; then
    trap - EXIT
  fi
  return "$failed"
}

stop() {
  local dir=${1:-dcpipe-cluster}
  if [ ! -s "$dir/pids" ]; then
    echo "nothing started in $dir" >&2
    return 0
  fi
  local pids pid
  mapfile -t pids <"$dir/pids"
  # Workers first (the last started), with SIGTERM: they finish their batch and leave.
  local worker_pids=("${pids[@]:NODES}") node_pids=("${pids[@]:0:NODES}")
  for pid in "${worker_pids[@]}" "${node_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$dir/pids"
  echo "stopped ${#pids[@]} processes of $dir"
}

commands() {
  if [ $# -ne 5 ]; then
    echo "usage: $0 commands BUS LEDGER TRUST KEYS METRICS_ADDR" >&2
    exit 2
  fi
  local service args
  for service in "${SERVICES[@]}"; do
    mapfile -t args < <(worker_args "$service" "$@")
    echo "$service ${args[*]}"
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  commands) shift; commands "$@" ;;
  *)
    echo "usage: $0 start [DIR] | stop [DIR] | commands BUS LEDGER TRUST KEYS METRICS_ADDR" >&2
    exit 2
    ;;
esac
