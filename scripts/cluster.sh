#!/usr/bin/env bash
# A local cluster of real `runnel` processes on 127.0.0.1.
#   scripts/cluster.sh up 3|5   start N nodes (node 1 on 127.0.0.1:9292, node i on 9291+i; their Kafka
#                               listeners on 9092, 9093, ...); all are voters
#   scripts/cluster.sh down     stop them (SIGTERM, then SIGKILL after 10 s)
#   scripts/cluster.sh status   which nodes run, and the cluster as node 1 sees it
# State lives in ./runnel-cluster (data, logs, pids); `down` keeps the data, `clean` removes it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
dir="${RUNNEL_CLUSTER_DIR:-$PWD/runnel-cluster}"
# Another base port (e.g. for a second cluster on the same machine): RUNNEL_CLUSTER_BASE_PORT.
base_port="${RUNNEL_CLUSTER_BASE_PORT:-9292}"
kafka_base_port="${RUNNEL_CLUSTER_KAFKA_BASE_PORT:-9092}"

ensure_binary() {
  if [ ! -x "$RUNNEL_BIN" ] || [ -n "${RUNNEL_REBUILD:-}" ]; then
    "$here/setup.sh"
    (cd "$here/.." && cargo build --bin runnel)
  fi
}

is_running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

up() {
  local n="${1:-3}"
  case "$n" in 3|5) ;; *) echo "cluster.sh: up takes 3 or 5 (metadata voters), got '$n'" >&2; exit 2 ;; esac
  ensure_binary
  mkdir -p "$dir"
  local voters=""
  for i in $(seq 1 "$n"); do
    voters="${voters:+$voters,}$i=127.0.0.1:$((base_port + i - 1))"
  done
  for i in $(seq 1 "$n"); do
    if is_running "$dir/node$i.pid"; then
      echo "node $i already running (pid $(cat "$dir/node$i.pid"))"
      continue
    fi
    mkdir -p "$dir/node$i"
    RUNNEL_KAFKA_LISTEN="127.0.0.1:$((kafka_base_port + i - 1))" nohup "$RUNNEL_BIN" start --node-id "$i" \
      --listen "127.0.0.1:$((base_port + i - 1))" --data-dir "$dir/node$i" --voters "$voters" \
      >>"$dir/node$i.log" 2>&1 &
    echo $! >"$dir/node$i.pid"
    echo "node $i: pid $!, 127.0.0.1:$((base_port + i - 1)), Kafka 127.0.0.1:$((kafka_base_port + i - 1)), log $dir/node$i.log"
  done
  # Ready when node 1 reports a controller and all N brokers.
  for _ in $(seq 1 150); do
    for i in $(seq 1 "$n"); do
      if ! is_running "$dir/node$i.pid"; then
        echo "cluster.sh: node $i exited; last lines of $dir/node$i.log:" >&2
        tail -n 20 "$dir/node$i.log" >&2
        exit 1
      fi
    done
    if "$RUNNEL_BIN" cluster info --bootstrap "127.0.0.1:$base_port" --output json 2>/dev/null |
      python3 -c "import json,sys; d=json.load(sys.stdin); b=d.get('brokers',[]); sys.exit(0 if d.get('controller_id') and len(b)>=$n else 1)" 2>/dev/null; then
      echo "cluster ready: $n nodes"
      return 0
    fi
    sleep 0.2
  done
  echo "cluster.sh: cluster not ready after 30 s; see $dir/node*.log" >&2
  exit 1
}

down() {
  [ -d "$dir" ] || { echo "no cluster in $dir"; return 0; }
  for pidf in "$dir"/node*.pid; do
    [ -e "$pidf" ] || continue
    if is_running "$pidf"; then kill -TERM "$(cat "$pidf")" 2>/dev/null || true; fi
  done
  for pidf in "$dir"/node*.pid; do
    [ -e "$pidf" ] || continue
    for _ in $(seq 1 100); do is_running "$pidf" || break; sleep 0.1; done
    if is_running "$pidf"; then kill -KILL "$(cat "$pidf")" 2>/dev/null || true; fi
    rm -f "$pidf"
  done
  echo "cluster stopped (data kept in $dir)"
}

status() {
  local any=0
  for pidf in "$dir"/node*.pid; do
    [ -e "$pidf" ] || continue
    any=1
    local n; n="$(basename "$pidf" .pid)"
    if is_running "$pidf"; then echo "$n: running (pid $(cat "$pidf"))"; else echo "$n: stopped"; fi
  done
  [ $any = 1 ] || { echo "no cluster running from $dir"; return 0; }
  [ -x "$RUNNEL_BIN" ] && "$RUNNEL_BIN" cluster info --bootstrap "127.0.0.1:$base_port" || true
}

case "${1:-}" in
  up) up "${2:-3}" ;;
  down) down ;;
  status) status ;;
  clean) down; rm -rf "$dir"; echo "removed $dir" ;;
  *) echo "usage: scripts/cluster.sh up 3|5 | down | status | clean" >&2; exit 2 ;;
esac
