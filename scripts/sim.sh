#!/usr/bin/env bash
# Runs the deterministic cluster simulation.
#   scripts/sim.sh --seed 123456          one seed, verbose (replays a failure exactly)
#   scripts/sim.sh --seeds 100 --first 1  seeds 1..100, one summary line each
#   scripts/sim.sh --seed 7 --plant skip-fsync --history /tmp/h.jsonl
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/.."
sim_cargo build -q -p runnel-sim --bin runnel-sim
exec "$SIM_TARGET_DIR/debug/runnel-sim" "$@"
