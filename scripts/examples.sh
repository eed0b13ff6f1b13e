#!/usr/bin/env bash
# Builds the client SDK's examples and runs them against a `runnel dev` node this script starts on
# a free port in a temporary directory (stopped and removed on exit). Waits at most 60 s for the
# node to answer; each example has its own bounded waits. Used by scripts/test.sh (CI).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/.."
cargo build --bin runnel --examples -p runnel-cli -p runnel-client
dir="$(mktemp -d -t runnel-examples-XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
addr="127.0.0.1:$port"
RUNNEL_KAFKA_LISTEN=127.0.0.1:0 "$RUNNEL_BIN" dev --listen "$addr" --data-dir "$dir/data" >"$dir/node.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
ready=""
for _ in $(seq 1 120); do
  if "$RUNNEL_BIN" cluster health --bootstrap "$addr" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || { cat "$dir/node.log"; echo "runnel dev exited" >&2; exit 1; }
  sleep 0.5
done
[ -n "$ready" ] || { tail -50 "$dir/node.log"; echo "runnel dev did not answer within 60 s" >&2; exit 1; }
examples="$CARGO_TARGET_DIR/debug/examples"
timeout 60 "$examples/producer" "$addr" 1000
timeout 60 "$examples/assign_reader" "$addr" 1000
echo "examples ran against runnel dev at $addr"
