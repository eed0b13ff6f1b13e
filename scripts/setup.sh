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
