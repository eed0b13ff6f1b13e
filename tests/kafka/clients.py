"""Real Kafka client libraries against a Runnel node's Kafka listener.

Run by tests/tests/kafka_clients.rs with the virtualenv scripts/setup.sh makes
(confluent-kafka on librdkafka 2.x, kafka-python, aiokafka). Each scenario asserts what it
checks and exits non-zero with the reason when something is wrong; the Rust test owns the
cluster (starting, killing and restarting nodes) and checks the result through Runnel's own SDK.

    python clients.py <scenario> --bootstrap host:port[,host:port] --topic T [...]
"""

import argparse
import asyncio
import json
import sys
import time

DEADLINE_S = 90


def fail(why):
    print(f"FAILED: {why}", file=sys.stderr)
    sys.exit(1)


def check(cond, why):
    if not cond:
        fail(why)


# ----------------------------------------------------------------------------- confluent-kafka


def idempotent_produce(args):
    """enable.idempotence=true, acks=all: sends --count records (value "v<i>") to partition 0,
    pacing itself so a leader kill (by the Rust test, once --ready-file exists) lands mid-stream.
    Writes every acknowledged (value, offset) as JSON lines to --out."""
    from confluent_kafka import Producer

    p = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120000,
        "retry.backoff.ms": 100,
    })
    acked, errors = [], []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            acked.append((msg.value().decode(), msg.offset()))

    for i in range(args.count):
        while True:
            try:
                p.produce(args.topic, value=f"v{i}".encode(), key=f"k{i}".encode(), partition=0,
                          on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        if i == args.count // 4:
            open(args.ready_file, "w").close()
        if i % 100 == 0:
            p.poll(0.02)
    left = p.flush(120)
    check(left == 0, f"{left} records still unacknowledged after 120 s")
    check(not errors, f"delivery errors: {errors[:5]}")
    with open(args.out, "w") as f:
        for value, offset in acked:
            f.write(json.dumps({"value": value, "offset": offset}) + "\n")
    print(f"acked {len(acked)}")


def codecs(args):
    """Every codec a client may send (gzip, snappy, lz4, zstd) round-trips."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    expected = []
    for codec in ["gzip", "snappy", "lz4", "zstd", "none"]:
        p = Producer({"bootstrap.servers": args.bootstrap, "compression.type": codec, "linger.ms": 20})
        for i in range(200):
            v = f"{codec}-{i}-" + "abc" * (i % 30)
            p.produce(args.topic, value=v.encode(), key=codec.encode(), partition=0,
                      headers=[("codec", codec.encode())])
            expected.append((codec, v))
        check(p.flush(30) == 0, f"{codec}: not all records acknowledged")
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": "codecs-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(args.topic, 0, 0)])
    got = []
    deadline = time.time() + DEADLINE_S
    while len(got) < len(expected) and time.time() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        got.append((m.key().decode(), m.value().decode()))
        check(dict(m.headers() or []).get("codec") == m.key(), f"header lost on {m.key()}")
    c.close()
    check(got == expected, f"read {len(got)} of {len(expected)} records; first difference at "
          f"{next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), len(got))}")
    print(f"codecs ok ({len(got)} records)")


def wait_assignment(consumers, want, what):
    """Polls every consumer until their assignments have the sizes in `want` (in any order: which
    member gets the larger share is the assignor's choice)."""
    deadline = time.time() + DEADLINE_S
    while time.time() < deadline:
        for c in consumers:
            c.poll(0.2)
        sizes = [len(c.assignment()) for c in consumers]
        if sorted(sizes) == sorted(want):
            return
    fail(f"{what}: assignments {[len(c.assignment()) for c in consumers]}, wanted {want}")


def group(args):
    """A group consumer with manual commits: all partitions, a rebalance when a second member joins
    (each gets some), back to one when it leaves; committed() shows what was committed;
    offsets_for_times finds records by timestamp."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    partitions = args.partitions
    # Recent, so time retention (7 days by default) keeps them for the offsets_for_times check.
    base_ts = int(time.time() * 1000) - 200_000
    p = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    for part in range(partitions):
        for i in range(100):
            p.produce(args.topic, value=f"p{part}-{i}".encode(), partition=part, timestamp=base_ts + i * 1000)
    check(p.flush(30) == 0, "produce not acknowledged")

    conf = {"bootstrap.servers": args.bootstrap, "group.id": args.group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}
    a = Consumer(dict(conf, **{"client.id": "member-a"}))
    a.subscribe([args.topic])
    wait_assignment([a], [partitions], "one member")
    seen = {}
    deadline = time.time() + DEADLINE_S
    while (len(seen) < partitions or min(seen.values()) < 50) and time.time() < deadline:
        m = a.poll(0.5)
        if m is not None and not m.error():
            seen[m.partition()] = seen.get(m.partition(), 0) + 1
    check(len(seen) == partitions and min(seen.values()) >= 50, f"consumed {seen}")
    a.commit(asynchronous=False)
    positions = {tp.partition: tp.offset for tp in a.position(a.assignment())}
    committed = {tp.partition: tp.offset for tp in a.committed(a.assignment(), timeout=10)}
    check(committed == positions, f"committed() {committed} != positions {positions}")

    b = Consumer(dict(conf, **{"client.id": "member-b"}))
    b.subscribe([args.topic])
    wait_assignment([a, b], [partitions - partitions // 2, partitions // 2], "two members")
    b.close()
    wait_assignment([a], [partitions], "after the second member left")

    times = a.offsets_for_times([TopicPartition(args.topic, 0, base_ts + 42_500)], timeout=10)
    check(times[0].offset == 43, f"offsets_for_times: {times[0].offset}, expected 43")
    a.close()
    with open(args.out, "w") as f:
        json.dump({str(k): v for k, v in committed.items()}, f)
    print(f"group ok, committed {committed}")


# ------------------------------------------------------------------------------ kafka-python


def kafka_python(args):
    """kafka-python with its defaults (idempotent, acks=all), then a group consumer that commits
    and a second one in the same group that resumes from the commit."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    p = KafkaProducer(bootstrap_servers=args.bootstrap.split(","))
    futures = [p.send(args.topic, key=f"k{i}".encode(), value=f"kp-{i}".encode(), partition=0) for i in range(500)]
    offsets = [f.get(timeout=30).offset for f in futures]
    p.close()
    check(offsets == list(range(offsets[0], offsets[0] + 500)), "offsets are not dense and in order")
    c = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap.split(","), group_id=args.group,
                      auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=20000)
    got = []
    for m in c:
        got.append(m.value.decode())
        if len(got) == 300:
            break
    check(got == [f"kp-{i}" for i in range(300)], f"first records {got[:3]}...")
    c.commit()
    tp = TopicPartition(args.topic, 0)
    check(c.committed(tp) == offsets[0] + 300, f"committed {c.committed(tp)}")
    c.close()
    c2 = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap.split(","), group_id=args.group,
                       auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=20000)
    rest = []
    for m in c2:
        rest.append(m.value.decode())
        if len(rest) == 200:
            break
    c2.close()
    check(rest == [f"kp-{i}" for i in range(300, 500)], f"the second consumer resumed at {rest[:1]}")
    print("kafka-python ok")


# ---------------------------------------------------------------------------------- aiokafka


def aiokafka(args):
    """aiokafka: produce, consume in a group, commit."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def run():
        p = AIOKafkaProducer(bootstrap_servers=args.bootstrap, enable_idempotence=True)
        await p.start()
        try:
            for i in range(200):
                await p.send_and_wait(args.topic, f"aio-{i}".encode(), key=b"k", partition=0)
        finally:
            await p.stop()
        c = AIOKafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                             auto_offset_reset="earliest", enable_auto_commit=False)
        await c.start()
        got = []
        try:
            async def consume():
                async for m in c:
                    got.append(m.value.decode())
                    if len(got) == 200:
                        return
            await asyncio.wait_for(consume(), DEADLINE_S)
            await c.commit()
        finally:
            await c.stop()
        check(got == [f"aio-{i}" for i in range(200)], f"aiokafka read {got[:3]}...")

    asyncio.run(run())
    print("aiokafka ok")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", default="g")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--out", default="/dev/null")
    ap.add_argument("--ready-file", default="/dev/null")
    args = ap.parse_args()
    scenarios = {"idempotent-produce": idempotent_produce, "codecs": codecs, "group": group,
                 "kafka-python": kafka_python, "aiokafka": aiokafka}
    check(args.scenario in scenarios, f"unknown scenario {args.scenario}; one of {sorted(scenarios)}")
    scenarios[args.scenario](args)


if __name__ == "__main__":
    main()
