#!/usr/bin/env python3
"""Durability checker for any Kafka-compatible cluster.

Several producers write unique values with acks=all while faults are injected;
then one consumer reads every partition back and the checker reports, per
partition, acknowledged-but-lost, duplicated and reordered records. Zero of
each is the only passing result.

Faults are shell commands run at given seconds into the run, so the checker
works against any cluster (`--fault "5:docker kill broker-2"`); the project's
own suite passes Python callables instead (see test_durability.py).

    python3 checker.py --bootstrap 127.0.0.1:9092 --seconds 20 \\
        --fault "5:kill -9 $(pgrep -f 'rafka.*node2')" --fault "10:./start-node2.sh"
"""

import argparse
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

CLIENT_TIMEOUT = 60  # seconds for any single client operation


@dataclass
class Report:
    produced: int = 0
    acked: int = 0
    failed: int = 0
    read: int = 0
    lost: dict = field(default_factory=lambda: defaultdict(list))
    duplicated: dict = field(default_factory=lambda: defaultdict(list))
    reordered: dict = field(default_factory=lambda: defaultdict(list))

    def problems(self):
        return sum(len(v) for d in (self.lost, self.duplicated, self.reordered) for v in d.values())

    def print(self, partitions):
        print(f"produced {self.produced}, acknowledged {self.acked}, failed {self.failed}, read back {self.read}")
        print(f"{'partition':>9} {'lost':>6} {'duplicated':>10} {'reordered':>9}")
        for p in range(partitions):
            print(f"{p:>9} {len(self.lost[p]):>6} {len(self.duplicated[p]):>10} {len(self.reordered[p]):>9}")
        for name, found in (("lost", self.lost), ("duplicated", self.duplicated), ("reordered", self.reordered)):
            examples = [v for p in sorted(found) for v in found[p]][:5]
            if examples:
                print(f"  {name}, first examples: {examples}")


def value_of(producer, seq):
    return f"p{producer}-{seq:09d}".encode()


def parse_value(raw):
    producer, seq = raw.decode().split("-")
    return int(producer[1:]), int(seq)


def create_topic(bootstrap, topic, partitions, replication_factor):
    admin = AdminClient({"bootstrap.servers": bootstrap})  # must outlive the future
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)])
    futures[topic].result(CLIENT_TIMEOUT)


def produce(bootstrap, topic, partitions, index, stop, rate, idempotent, acked, failed):
    """One producer: value i goes to partition i % partitions until `stop` is set."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": idempotent, "message.timeout.ms": 120_000,
                         "log_level": 0})

    def on_delivery(err, msg):
        if err is None:
            acked[msg.value()] = (msg.partition(), msg.offset())
        else:
            failed.append((msg.value(), str(err)))

    started, seq = time.monotonic(), 0
    while not stop.is_set():
        if seq < rate * (time.monotonic() - started):
            try:
                producer.produce(topic, value_of(index, seq), partition=seq % partitions, on_delivery=on_delivery)
                seq += 1
            except BufferError:
                pass
        producer.poll(0.001)
    remaining = producer.flush(150)
    if remaining:
        failed.extend((b"unflushed", "still queued") for _ in range(remaining))
    return seq


def read_back(bootstrap, topic, partitions):
    """Every record of every partition, in offset order: {partition: [(offset, value)]}.
    `partitions` is the partition count, or the list of partitions to read."""
    numbers = range(partitions) if isinstance(partitions, int) else list(partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "durability-checker",
                         "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 0})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=CLIENT_TIMEOUT)[1]
                for p in numbers}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in numbers])
        records = defaultdict(list)
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + CLIENT_TIMEOUT * 5
        while pending and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise RuntimeError(f"consume failed: {msg.error()}")
            records[msg.partition()].append((msg.offset(), msg.value()))
            if msg.offset() + 1 >= ends[msg.partition()]:
                pending.discard(msg.partition())
        if pending:
            raise RuntimeError(f"partitions {sorted(pending)} not read to their end in time")
        return records
    finally:
        consumer.close()


def analyse(records, acked, partitions):
    report = Report(acked=len(acked), read=sum(len(r) for r in records.values()))
    seen = defaultdict(int)
    for p in range(partitions):
        last_seq = {}
        for _offset, value in records.get(p, []):
            seen[value] += 1
            if seen[value] == 2:
                report.duplicated[p].append(value.decode())
            producer, seq = parse_value(value)
            if seq <= last_seq.get(producer, -1) and seen[value] == 1:
                report.reordered[p].append(value.decode())
            last_seq[producer] = max(seq, last_seq.get(producer, -1))
    for value, (p, _offset) in acked.items():
        if value not in seen:
            report.lost[p].append(value.decode())
    return report


def run_fault(fault):
    if callable(fault):
        fault()
    else:
        print(f"fault: {fault}", flush=True)
        subprocess.run(fault, shell=True, check=False, timeout=CLIENT_TIMEOUT)


def run(bootstrap, topic, partitions=3, producers=3, seconds=10, rate=500, faults=(), idempotent=True,
        replication_factor=-1):
    """Runs the workload with `faults` [(second, shell command or callable)] and returns a Report."""
    acked, failed, sent = run_workload(bootstrap, topic, partitions, producers, seconds, rate, faults, idempotent,
                                       replication_factor)
    report = analyse(read_back(bootstrap, topic, partitions), acked, partitions)
    report.produced, report.failed = sum(sent), len(failed)
    return report


def run_workload(bootstrap, topic, partitions, producers, seconds, rate, faults, idempotent, replication_factor):
    """Creates the topic and produces while running `faults`; returns (acked {value: (partition,
    offset)}, failed [(value, error)], values sent per producer). `idempotent` is one flag for every
    producer or a list with one per producer. A producer that stops on a fatal error (such as a
    lost sequence) counts as one failure."""
    create_topic(bootstrap, topic, partitions, replication_factor)
    stop, acked, failed, sent = threading.Event(), {}, [], [0] * producers
    flags = list(idempotent) if isinstance(idempotent, (list, tuple)) else [idempotent] * producers

    def worker(i):
        try:
            sent[i] = produce(bootstrap, topic, partitions, i, stop, rate, flags[i], acked, failed)
        except Exception as exc:  # noqa: BLE001 - reported as a failure of the run
            failed.append((f"producer {i}".encode(), repr(exc)))

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(producers)]
    for t in threads:
        t.start()
    started = time.monotonic()
    for at, fault in sorted(faults, key=lambda f: f[0]):
        while time.monotonic() - started < at:
            time.sleep(0.05)  # pacing the schedule, not synchronising with the broker
        run_fault(fault)
    while time.monotonic() - started < seconds:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(200)
    return acked, failed, sent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", default=f"durability-{int(time.time())}")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--replication-factor", type=int, default=-1)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=int, default=500, help="messages per second per producer")
    parser.add_argument("--no-idempotence", action="store_true", help="duplicates then become expected")
    parser.add_argument("--fault", action="append", default=[], metavar="SECONDS:COMMAND")
    args = parser.parse_args()
    faults = [(float(f.split(":", 1)[0]), f.split(":", 1)[1]) for f in args.fault]
    report = run(args.bootstrap, args.topic, args.partitions, args.producers, args.seconds, args.rate,
                 faults, not args.no_idempotence, args.replication_factor)
    report.print(args.partitions)
    sys.exit(1 if report.problems() else 0)


if __name__ == "__main__":
    main()
