#!/usr/bin/env bash
# Starts Runnel on its embedded single-node default: node 1, its own only metadata voter, listening
# on 127.0.0.1:9292, data in ./runnel-data. Extra arguments go to `runnel dev`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/setup.sh"
. "$here/env.sh"
cd "$here/.."
cargo build --bin runnel
exec "$RUNNEL_BIN" dev "$@"
