# Sourced by the other scripts: one shared build directory outside the clone, so RocksDB's C++ (most
# of a clean build) is compiled once per machine and reused by every clone and CI run.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/runnel/target}"
mkdir -p "$CARGO_TARGET_DIR"
# RocksDB's build script compiles with every core it is given.
export NUM_JOBS="${NUM_JOBS:-$(nproc)}"
RUNNEL_BIN="${RUNNEL_BIN:-$CARGO_TARGET_DIR/debug/runnel}"
export RUNNEL_BIN
# The simulator builds separately, with tokio's unstable cfg so turmoil can seed tokio's internal
# RNG (select! branch order): without it a seed does not replay exactly. Its own target directory
# keeps these flags from invalidating the main build (the simulator does not compile RocksDB).
SIM_TARGET_DIR="${SIM_TARGET_DIR:-$HOME/.cache/runnel/target-sim}"
SIM_RUSTFLAGS="--cfg tokio_unstable"
sim_cargo() { CARGO_TARGET_DIR="$SIM_TARGET_DIR" RUSTFLAGS="$SIM_RUSTFLAGS" cargo "$@"; }
# Python Kafka clients (confluent-kafka on librdkafka, kafka-python, aiokafka) for the Kafka
# protocol tests, in a virtualenv outside the clone (scripts/setup.sh creates it).
export RUNNEL_VENV="${RUNNEL_VENV:-$HOME/.cache/runnel/venv}"
