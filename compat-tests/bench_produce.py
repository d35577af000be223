#!/usr/bin/env python3
"""Produce throughput: one confluent-kafka producer, acks=all, batching on.

Produces --count messages of --size bytes to a fresh (auto-created) topic and
waits for every delivery report. Starts its own rafka broker unless
--bootstrap host:port is given. A warm-up message creates the topic and opens
the connection before the clock starts.
"""

import argparse
import os
import sys
import time

from confluent_kafka import Producer

from harness import Broker, exit_on_sigterm


def bench(bootstrap, count, size, linger_ms, batch_size, timeout):
    topic = f"bench-produce-{int(time.time() * 1000)}"
    stats = {"ok": 0, "failed": 0, "first_error": None}

    def on_delivery(err, _msg):
        if err is None:
            stats["ok"] += 1
        else:
            stats["failed"] += 1
            stats["first_error"] = stats["first_error"] or err

    producer = Producer({
        "bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
        "linger.ms": linger_ms, "batch.size": batch_size, "compression.type": "none",
        "queue.buffering.max.messages": 1_000_000, "queue.buffering.max.kbytes": 1_048_576,
        "message.timeout.ms": timeout * 1000, "on_delivery": on_delivery,
    })
    producer.produce(topic, b"warm-up")
    if producer.flush(timeout) or stats["failed"]:
        sys.exit(f"warm-up message to {topic} failed: {stats['first_error']}")
    stats["ok"] = 0

    payload = os.urandom(size)
    deadline = time.monotonic() + timeout
    start = time.perf_counter()
    for i in range(count):
        while True:
            try:
                producer.produce(topic, payload)
                break
            except BufferError:  # local queue full: serve delivery reports, retry
                producer.poll(0.01)
                if time.monotonic() > deadline:
                    sys.exit(f"timed out after {timeout}s with {i} of {count} messages queued")
        if i % 1000 == 0:
            producer.poll(0)
    remaining = producer.flush(max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - start

    mb = stats["ok"] * size / 1e6
    print(f"topic {topic}: {stats['ok']} of {count} messages x {size} B delivered in {elapsed:.2f} s "
          f"(acks=all, linger.ms={linger_ms}, batch.size={batch_size})")
    print(f"{stats['ok'] / elapsed:,.0f} messages/s, {mb / elapsed:,.1f} MB/s")
    if remaining or stats["failed"]:
        sys.exit(f"{stats['failed']} failed, {remaining} undelivered; first error: {stats['first_error']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("count", nargs="?", type=int, default=200_000, help="messages to produce (default 200000)")
    ap.add_argument("--size", type=int, default=1024, help="message size in bytes (default 1024)")
    ap.add_argument("--bootstrap", help="use an already running broker at host:port")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1_000_000)
    ap.add_argument("--timeout", type=int, default=600, help="overall deadline in seconds (default 600)")
    args = ap.parse_args()
    exit_on_sigterm()
    run = (args.count, args.size, args.linger_ms, args.batch_size, args.timeout)
    if args.bootstrap:
        bench(args.bootstrap, *run)
    else:
        with Broker() as broker:
            bench(broker.bootstrap, *run)


if __name__ == "__main__":
    main()
