#!/usr/bin/env bash
# Chaos on a containerised Runnel cluster (crates/chaos): builds the binaries and the image, brings
# up deploy/compose/compose-N.yml under a project of its own with every node's data on a
# power-loss filesystem, injects faults chosen from a seed, and judges the recorded history.
#   scripts/chaos.sh                          20 cycles of every fault kind on 3 nodes, random seed
#   scripts/chaos.sh --nodes 5 --cycles 200   the long run
#   scripts/chaos.sh --seed 42                replay a seed's fault schedule
#   scripts/chaos.sh --faults kill,power-loss-all --cycles 10
#   scripts/chaos.sh --plant-skip-fsync --faults power-loss-all --cycles 3   must FAIL (lost writes)
# Exit status: 0 passed, 1 anomalies found (summary printed, logs and history kept), 2 could not run.
# Needs root (mounts, iptables in the containers' network namespaces) and Docker.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
cd "$here/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "chaos.sh: needs root (tmpfs and FUSE mounts, iptables inside the containers' network namespaces)" >&2
  exit 2
fi
"$here/setup.sh"
cargo build --bin runnel --bin runnel-lossyfs --bin runnel-chaos
RUNNEL_IMAGE_NO_BUILD=1 "$here/image.sh" --chaos
exec "$CARGO_TARGET_DIR/debug/runnel-chaos" --lossyfs "$CARGO_TARGET_DIR/debug/runnel-lossyfs" "$@"
