#!/usr/bin/env python3
"""Storage that scales with data, checked from outside with real clients on real processes:
retention by size and by time frees whole log files (the data dir shrinks), DeleteRecords
from confluent-kafka's and kafka-python's admin clients, consumers reset to the log start,
and on three nodes a follower wiped after its log was freed rejoins from a snapshot of state
(no records in it) plus log replication, its replica equal to the others.
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
from harness import Broker, expect, expect_eq, run_parts, wait_until  # noqa: E402

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SUITE = "storage"
MIB = 1 << 20
VALUE_BYTES = 1024
SEGMENT = 1 * MIB  # segment.bytes: the unit in which retention frees the log
CHECK_INTERVAL_MS = 200  # log_retention_check_interval_ms in these tests
PRODUCER_EXPIRATION_MS = 600_000  # producer_id_expiration_ms: 10 minutes


def create_topic(bootstrap, name, configs, partitions=1, replication_factor=1):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, config=configs)
    admin.create_topics([topic])[name].result(30)


def produce_bytes(bootstrap, topic, total_bytes, timestamp_ms=None):
    """Incompressible 1 KiB values, acks=all; returns how many were acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": True, "compression.type": "none"})
    acked = []
    failed = []

    def on_delivery(err, _msg):
        (failed if err else acked).append(err)

    for _ in range(total_bytes // VALUE_BYTES):
        while True:
            try:
                if timestamp_ms is None:
                    producer.produce(topic, os.urandom(VALUE_BYTES), on_delivery=on_delivery)
                else:
                    producer.produce(topic, os.urandom(VALUE_BYTES), on_delivery=on_delivery,
                                     timestamp=timestamp_ms)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(60)
    expect(remaining == 0 and not failed, f"{remaining} unflushed, failures: {failed[:3]}")
    return len(acked)


def watermarks(bootstrap, topic, partition=0):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "storage-watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        consumer.close()


def settled_watermarks(bootstrap, topic, partition=0):
    """Watermarks once retention has stopped moving the log start (unchanged over 5 check intervals)."""
    last = [None, time.monotonic()]

    def settled():
        now = watermarks(bootstrap, topic, partition)
        if now != last[0]:
            last[:] = [now, time.monotonic()]
            return None
        return now if time.monotonic() - last[1] >= 5 * CHECK_INTERVAL_MS / 1000 else None

    return wait_until(settled, 60, interval=CHECK_INTERVAL_MS / 2000, what=f"{topic}'s log start to settle")


def read_offsets(bootstrap, topic, start_offset, until, partition=0):
    """Offsets a consumer assigned at `start_offset` reads up to `until` (exclusive), reset to earliest."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"storage-read-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, partition, start_offset)])
    seen = []
    deadline = time.monotonic() + 60
    try:
        while (not seen or seen[-1] < until - 1) and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error():
                    raise KafkaException(message.error())
                seen.append(message.offset())
    finally:
        consumer.close()
    return seen


def dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def log_bytes(data_dir):
    """Bytes of every Raft group's log files under a data dir."""
    return dir_bytes(Path(data_dir) / "log")


def expect_dense(offsets, first, end, what):
    expect(offsets and offsets[0] == first, f"{what}: first offset {offsets[:1]}, expected {first}")
    expect(offsets == list(range(first, end)), f"{what}: offsets are not {first}..{end - 1} without gaps")


def single_node(R):
    env = {"RAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": str(CHECK_INTERVAL_MS),
           "RAFKA_PRODUCER_ID_EXPIRATION_MS": str(PRODUCER_EXPIRATION_MS)}
    with Broker(extra_env=env) as broker:
        R.broker = broker
        bootstrap = broker.bootstrap

        with R.check("retention.bytes: the log start moves and whole log files are freed", timeout=240):
            create_topic(bootstrap, "sized", {"segment.bytes": str(SEGMENT), "retention.bytes": str(3 * MIB)})
            acked = produce_bytes(bootstrap, "sized", 12 * MIB)
            expect_eq(acked, 12 * MIB // VALUE_BYTES, "acknowledged values")
            wait_until(lambda: watermarks(bootstrap, "sized")[0] > 0, 60, interval=0.2,
                       what="retention to move the log start")
            low, high = settled_watermarks(bootstrap, "sized")
            expect_eq(high, acked, "high watermark")
            expect(high - low <= 6 * MIB // VALUE_BYTES, f"kept {high - low} values, retention asks ~3 MiB")
            wait_until(lambda: log_bytes(broker.data_dir) < 7 * MIB, 60, interval=0.2,
                       what=f"log files under 7 MiB (now {log_bytes(broker.data_dir)} bytes)")
            expect_dense(read_offsets(bootstrap, "sized", 0, high), low, high, "consumer reset to the log start")

        with R.check("a kill -9 after the log was freed loses nothing that retention kept", timeout=120):
            low, high = watermarks(bootstrap, "sized")
            broker.kill9()
            expect_eq(watermarks(bootstrap, "sized"), (low, high), "watermarks after restart")
            expect_dense(read_offsets(bootstrap, "sized", low, high), low, high, "read back after restart")

        with R.check("an idempotent producer silent past producer.id.expiration.ms is forgotten", timeout=60):
            create_topic(bootstrap, "expiring", {})
            produce_bytes(bootstrap, "expiring", 10 * VALUE_BYTES, timestamp_ms=int(time.time() * 1000) - 3_600_000)
            wait_until(lambda: "idempotent producers expired" in broker.log_tail(lines=10_000), 30, interval=0.2,
                       what="the hour-old producer to expire")
            expect_eq(produce_bytes(bootstrap, "expiring", 10 * VALUE_BYTES), 10, "a new producer still writes")

        with R.check("retention.ms: records older than the limit go, a file at a time", timeout=240):
            create_topic(bootstrap, "timed", {"segment.bytes": str(SEGMENT), "retention.ms": "60000"})
            old = int(time.time() * 1000) - 3_600_000
            produce_bytes(bootstrap, "timed", 3 * MIB, timestamp_ms=old)
            produce_bytes(bootstrap, "timed", 2 * MIB)
            low, high = wait_until(lambda: (lambda w: w if w[0] > 0 else None)(watermarks(bootstrap, "timed")),
                                   60, interval=0.2, what="time retention to move the log start")
            expect(low <= 3 * MIB // VALUE_BYTES, f"log start {low} is past the hour-old records")
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "storage-times"})
            try:
                now = int(time.time() * 1000) - 600_000
                found = consumer.offsets_for_times([TopicPartition("timed", 0, now)], timeout=10)[0]
            finally:
                consumer.close()
            expect_eq(found.offset, 3 * MIB // VALUE_BYTES, "offset of the first recent record (time index)")

        with R.check("DeleteRecords from confluent-kafka: low watermark, consumers reset to it"):
            create_topic(bootstrap, "trim", {})
            produce_bytes(bootstrap, "trim", 100 * VALUE_BYTES)
            admin = AdminClient({"bootstrap.servers": bootstrap})
            futures = admin.delete_records([TopicPartition("trim", 0, 40)])
            result = futures[TopicPartition("trim", 0)].result(30)
            expect_eq(result.low_watermark, 40, "low watermark")
            expect_eq(watermarks(bootstrap, "trim"), (40, 100), "watermarks")
            expect_dense(read_offsets(bootstrap, "trim", 5, 100), 40, 100, "consumer below the start resets")

        with R.check("DeleteRecords from kafka-python, and past the end is OFFSET_OUT_OF_RANGE"):
            from kafka import KafkaAdminClient
            from kafka import TopicPartition as KTopicPartition
            from kafka.errors import OffsetOutOfRangeError
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            try:
                answer = admin.delete_records({KTopicPartition("trim", 0): 70})
                low = answer[KTopicPartition("trim", 0)]["low_watermark"]
                expect_eq(low, 70, "low watermark")
                try:
                    admin.delete_records({KTopicPartition("trim", 0): 500})
                    raise AssertionError("deleting past the high watermark was accepted")
                except OffsetOutOfRangeError:
                    pass
            finally:
                admin.close()
            expect_eq(watermarks(bootstrap, "trim"), (70, 100), "watermarks")


def three_nodes(R):
    from cluster import Cluster
    settings = {"log_retention_check_interval_ms": CHECK_INTERVAL_MS}
    with Cluster(settings=settings, name="storage") as c:
        R.cluster = c
        bootstrap = c.bootstrap()
        topic = "ret3"

        def group_log_bytes(node_id, group):
            return dir_bytes(c.nodes[node_id].data_dir / "log" / f"group-{group}")

        with R.check("three nodes: retention frees the log on every replica", timeout=300):
            create_topic(bootstrap, topic, {"segment.bytes": str(SEGMENT), "retention.bytes": str(2 * MIB)},
                         replication_factor=3)
            produce_bytes(bootstrap, topic, 10 * MIB)
            views = c.wait_replicas_agree(topic, timeout=120)
            group = next(e["group"] for e in c.checksums(c.ids[0]) if e["topic"] == topic)
            for node_id in c.ids:
                wait_until(lambda: group_log_bytes(node_id, group) < 6 * MIB, 60, interval=0.2,
                           what=f"node {node_id}'s log under 6 MiB")
            expect(views, "replica views")

        with R.check("three nodes: a follower wiped after its log was freed rejoins from state, not records",
                     timeout=300):
            low, high = watermarks(bootstrap, topic)
            expect(low > 0, "retention moved the log start")
            leader = c.leader_of(topic, 0)
            follower = next(i for i in c.ids if i != leader)
            c.wipe(follower)
            c.wait_replicas_agree(topic, timeout=120)
            wait_until(lambda: 0 < group_log_bytes(follower, group) < 6 * MIB, 60, interval=0.2,
                       what="the rejoined follower's log to hold the retained records only")
            snapshots = c.nodes[follower].data_dir / "snapshots" / f"group-{group}"
            expect(dir_bytes(snapshots) < 64 * 1024, f"the snapshot it received is {dir_bytes(snapshots)} bytes")
            produce_bytes(bootstrap, topic, 1 * MIB)
            c.wait_replicas_agree(topic, timeout=120)
            low, high = watermarks(bootstrap, topic)
            c.kill9(leader)
            c.wait_new_leader(topic, 0, excluded={leader})
            expect_dense(read_offsets(bootstrap, topic, low, high), low, high,
                         "read back from the new leader after the old one died")
            c.start(leader)
            c.wait_replicas_agree(topic, timeout=120)


if __name__ == "__main__":
    run_parts(SUITE, single_node, three_nodes)
