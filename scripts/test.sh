#!/usr/bin/env bash
# Runs every test: unit tests, the storage conformance suite, and the integration tests that start
# real `runnel` processes. Installs missing system packages first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
cd "$here/.."
# The integration tests start the real binary, so build it first (same profile as the tests); the
# chaos tests also need the power-loss filesystem and the container image.
cargo build --bin runnel --bin runnel-lossyfs
RUNNEL_IMAGE_NO_BUILD=1 "$here/image.sh" --chaos
# The client SDK's examples, run against a `runnel dev` node (scripts/examples.sh).
"$here/examples.sh"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --exclude runnel-sim --no-fail-fast "$@"
  # The failover suite again with mutual TLS between the nodes (docs/SECURITY.md).
  RUNNEL_IT_TLS=1 cargo nextest run --workspace --exclude runnel-sim --no-fail-fast -E 'binary(failover)' "$@"
  # The deterministic cluster simulation (fixed + random seeds; see scripts/sim.sh).
  sim_cargo nextest run -p runnel-sim --no-fail-fast "$@"
  # librdkafka's own integration tests on the allowlist, against a node's Kafka listener.
  "$here/librdkafka-tests.sh"
else
  cargo test --workspace --exclude runnel-sim --no-fail-fast "$@"
  RUNNEL_IT_TLS=1 cargo test -p runnel-tests --test failover --no-fail-fast "$@"
  sim_cargo test -p runnel-sim --no-fail-fast "$@"
  "$here/librdkafka-tests.sh"
fi
