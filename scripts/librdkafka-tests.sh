#!/usr/bin/env bash
# Runs librdkafka's own integration tests (from the rdkafka-sys crate's copy of librdkafka) against
# a `runnel dev` node's Kafka listener.
#   scripts/librdkafka-tests.sh              the allowlist (scripts/librdkafka/allowlist.txt)
#   scripts/librdkafka-tests.sh 0113 "0090 -P"  the tests named (with test-runner options: -P runs
#                                              a test with the idempotent producer)
# librdkafka is built once per machine under ~/.cache/runnel/librdkafka (about 80 s on 2 cores).
# The node runs with 4 partitions for auto-created topics, the setting librdkafka's suite expects
# of a test cluster (Kafka's num.partitions).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
"$here/setup.sh" >/dev/null
(cd "$here/.." && cargo build -q --bin runnel)

manifest="$here/librdkafka/Cargo.toml"
cargo fetch -q --manifest-path "$manifest"
src="$(cargo metadata --format-version 1 --manifest-path "$manifest" |
  python3 -c 'import json,sys,os; d=json.load(sys.stdin); p=[p for p in d["packages"] if p["name"]=="rdkafka-sys"][0]; print(os.path.dirname(p["manifest_path"]))')/librdkafka"
version="$(basename "$(dirname "$src")")"
build="$HOME/.cache/runnel/librdkafka/$version"
if [ ! -x "$build/tests/test-runner" ]; then
  echo "librdkafka-tests: building librdkafka and its test runner ($version) in $build" >&2
  rm -rf "$build" && mkdir -p "$(dirname "$build")" && cp -r "$src" "$build"
  (cd "$build" && ./configure --no-download --disable-ssl --disable-gssapi --disable-curl --disable-lz4-ext >/dev/null &&
    make -s -j"$(nproc)" libs >/dev/null && make -s -C tests -j"$(nproc)" build >/dev/null)
fi

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  mapfile -t tests < <(grep -v '^#' "$here/librdkafka/allowlist.txt" | grep -v '^$')
fi

dir="$(mktemp -d /tmp/runnel-librdkafka.XXXXXX)"
port=$((20000 + RANDOM % 20000))
kport=$((port + 1))
RUNNEL_KAFKA_LISTEN="127.0.0.1:$kport" RUNNEL_KAFKA_DEFAULT_PARTITIONS=4 \
  "$RUNNEL_BIN" dev --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  "$RUNNEL_BIN" cluster info --bootstrap "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.2
done

cd "$build/tests"
echo "bootstrap.servers=127.0.0.1:$kport" > test.conf
export LD_LIBRARY_PATH="$build/src:$build/src-cpp" TEST_KAFKA_VERSION=3.0.0
failed=()
for entry in "${tests[@]}"; do
  read -r t opts <<<"$entry"
  t="$t${opts:+ $opts}"
  # shellcheck disable=SC2086
  if TESTS="${t%% *}" timeout 600 ./test-runner -p1 $opts >"$dir/${t// /}.log" 2>&1; then
    echo "librdkafka test $t: passed"
  else
    echo "librdkafka test $t: FAILED; its last lines:"
    tr -d '\033' <"$dir/${t// /}.log" | grep -v '^\[0m$' | tail -n 15
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "librdkafka tests failed: ${failed[*]} (node log: last lines)" >&2
  tail -n 20 "$dir/node.log" >&2
  exit 1
fi
echo "librdkafka tests passed: ${tests[*]}"
