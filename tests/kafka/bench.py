"""Produce and consume throughput through librdkafka (confluent-kafka) against a Runnel cluster's
Kafka listeners: the Kafka-protocol counterpart of `runnel bench produce` / `runnel bench consume`.
scripts/bench-kafka.sh runs both against the same cluster in one run.

    python bench.py --bootstrap host:port,... --topic T --records N --record-size B
Prints one JSON object: produce records/s, MB/s, delivery latency p50/p99 (ms), consume records/s.
"""

import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="bench-kafka")
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--record-size", type=int, default=100)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--compression", default="none")
    args = ap.parse_args()

    from confluent_kafka import Consumer, Producer, TopicPartition

    p = Producer({
        "bootstrap.servers": args.bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": args.linger_ms,
        "compression.type": args.compression,
        "queue.buffering.max.messages": 1_000_000,
    })
    value = b"x" * args.record_size
    latencies = []
    errors = []

    start = time.perf_counter()
    for i in range(args.records):
        sent = time.perf_counter()

        def on_delivery(err, msg, sent=sent):
            if err is not None:
                errors.append(str(err))
            else:
                latencies.append(time.perf_counter() - sent)

        while True:
            try:
                p.produce(args.topic, value=value, key=str(i % 1024).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(300)
    produce_s = time.perf_counter() - start
    if left or errors:
        print(f"produce failed: {left} unacknowledged, errors {errors[:3]}", file=sys.stderr)
        sys.exit(1)
    latencies.sort()
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    c = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": f"bench-{time.time_ns()}",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800,
    })
    md = c.list_topics(args.topic, timeout=10)
    parts = sorted(md.topics[args.topic].partitions)
    c.assign([TopicPartition(args.topic, p, 0) for p in parts])
    got = 0
    start = time.perf_counter()
    deadline = start + 300
    while got < args.records and time.perf_counter() < deadline:
        for m in c.consume(10_000, 1.0):
            if not m.error():
                got += 1
    consume_s = time.perf_counter() - start
    c.close()
    if got < args.records:
        print(f"consume read {got} of {args.records}", file=sys.stderr)
        sys.exit(1)
    mb = args.records * args.record_size / 1e6
    print(json.dumps({
        "client": "confluent-kafka (librdkafka) over the Kafka protocol",
        "records": args.records,
        "record_size": args.record_size,
        "partitions": len(parts),
        "produce_records_per_sec": round(args.records / produce_s),
        "produce_mb_per_sec": round(mb / produce_s, 1),
        "produce_latency_p50_ms": round(pct(0.50), 2),
        "produce_latency_p99_ms": round(pct(0.99), 2),
        "consume_records_per_sec": round(got / consume_s),
        "consume_mb_per_sec": round(mb / consume_s, 1),
    }))


if __name__ == "__main__":
    main()
