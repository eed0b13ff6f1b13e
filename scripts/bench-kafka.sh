#!/usr/bin/env bash
# Produce and consume throughput through the Kafka protocol (librdkafka via confluent-kafka,
# tests/kafka/bench.py) and through the gRPC SDK (`runnel bench`), against the same fresh 3-node
# local cluster in one run: same topic shape (6 partitions, replication factor 3), acks=all,
# 100-byte records. Run it on a quiet machine. Writes both results as JSON lines to stdout.
#   scripts/bench-kafka.sh [records]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
records="${1:-200000}"
export RUNNEL_CLUSTER_DIR="${RUNNEL_CLUSTER_DIR:-$(mktemp -d /tmp/runnel-bench-kafka.XXXXXX)}"
"$here/setup.sh" >/dev/null
(cd "$here/.." && cargo build -q --bin runnel)
"$here/cluster.sh" up 3 >&2
trap '"$here/cluster.sh" down >&2; rm -rf "$RUNNEL_CLUSTER_DIR"' EXIT
bootstrap="127.0.0.1:9292,127.0.0.1:9293,127.0.0.1:9294"
kafka="127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
for t in bench-grpc bench-kafka bench-perf; do
  "$RUNNEL_BIN" topic create "$t" --partitions 6 --replication-factor 3 --bootstrap "$bootstrap" >/dev/null
done
sleep 2
echo "# gRPC SDK (runnel bench produce / consume)" >&2
"$RUNNEL_BIN" bench produce --topic bench-grpc --records "$records" --record-size 100 --bootstrap "$bootstrap" --output json |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"client":"runnel SDK over gRPC, produce", **{k:d[k] for k in d if k in ("records","records_per_sec","mb_per_sec","latency_ms_p50","latency_ms_p99","seconds")}}))'
"$RUNNEL_BIN" bench consume --topic bench-grpc --bootstrap "$bootstrap" --output json |
  python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"client":"runnel SDK over gRPC, consume", **{k:d[k] for k in d if k in ("records","records_per_sec","mb_per_sec","seconds")}}))'
echo "# Kafka protocol (confluent-kafka / librdkafka)" >&2
"$RUNNEL_VENV/bin/python" "$here/../tests/kafka/bench.py" --bootstrap "$kafka" --topic bench-kafka --records "$records"
# librdkafka's own C benchmark (examples/rdkafka_performance), when scripts/librdkafka-tests.sh
# has built librdkafka: the client costs little, so this is the node's Kafka path.
perf_dir="$(ls -d "$HOME"/.cache/runnel/librdkafka/*/examples 2>/dev/null | tail -1)"
if [ -n "$perf_dir" ]; then
  [ -x "$perf_dir/rdkafka_performance" ] || make -s -C "$perf_dir" rdkafka_performance >/dev/null
  echo "# librdkafka rdkafka_performance (C), produce then consume" >&2
  LD_LIBRARY_PATH="$perf_dir/../src" "$perf_dir/rdkafka_performance" -P -t bench-perf -b "$kafka" -s 100 \
    -c "$records" -X acks=all -X enable.idempotence=true -X linger.ms=5 -l 2>&1 | grep -E "messages produced|latency" | tail -3
  LD_LIBRARY_PATH="$perf_dir/../src" "$perf_dir/rdkafka_performance" -C -G bench-perf-group -t bench-perf -b "$kafka" \
    -X auto.offset.reset=earliest -c "$records" 2>&1 | grep -E "messages consumed" | tail -1
fi

