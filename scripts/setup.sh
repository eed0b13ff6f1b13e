#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build Runnel: a C/C++ toolchain and libclang
# (RocksDB's bindings are generated with bindgen). Rust itself must already be installed (rustup).
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v c++ >/dev/null 2>&1 || need+=(g++)
# bindgen loads libclang at run time; Debian ships it as libclang-dev (libclang.so). Only libclang
# itself counts: libclang-cpp (pulled in by other packages) is a different library bindgen cannot use.
have_libclang() {
  for f in /usr/lib/llvm-*/lib/libclang.so /usr/lib/llvm-*/lib/libclang-[0-9]*.so \
    /usr/lib/*-linux-gnu/libclang-[0-9]*.so.[0-9]*; do
    [ -e "$f" ] && return 0
  done
  return 1
}
have_libclang || need+=(libclang-dev)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# The container image, the Compose cluster and the chaos runner (scripts/image.sh, scripts/chaos.sh):
# Docker with Debian's docker-compose, FUSE for the power-loss filesystem, iptables for network
# faults inside the containers' namespaces, nsenter to get there.
command -v docker >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
# Real Kafka clients for the Kafka-protocol tests (tests/tests/kafka.rs): kcat, on librdkafka.
command -v kcat >/dev/null 2>&1 || need+=(kcat)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found. Install Rust (https://rustup.rs), version 1.88 or newer, then re-run." >&2
  exit 1
fi

# The Python Kafka clients the Kafka-protocol tests drive (tests/tests/kafka_clients.rs), pinned,
# in a virtualenv outside the clone (scripts/env.sh: RUNNEL_VENV). About 15 s from PyPI.
. "$(cd "$(dirname "$0")" && pwd)/env.sh"
python_clients="confluent-kafka==2.16.1 kafka-python==3.0.12 aiokafka==0.14.0"
if [ ! -f "$RUNNEL_VENV/.clients" ] || [ "$(cat "$RUNNEL_VENV/.clients")" != "$python_clients" ]; then
  command -v python3 >/dev/null 2>&1 || { echo "setup: python3 is needed for the Kafka client tests" >&2; exit 1; }
  python3 -m venv "$RUNNEL_VENV" 2>/dev/null || {
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -qq python3-venv && python3 -m venv "$RUNNEL_VENV"
  }
  # shellcheck disable=SC2086
  "$RUNNEL_VENV/bin/pip" install -q $python_clients
  echo "$python_clients" > "$RUNNEL_VENV/.clients"
fi

