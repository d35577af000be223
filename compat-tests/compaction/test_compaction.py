#!/usr/bin/env python3
"""Compacted topics (cleanup.policy=compact and compact,delete), checked from outside with real
clients on real processes: a reader from the beginning sees the newest value of every key and no
older one, tombstones stay until delete.retention.ms and then go, whole log files are freed,
writes that race a compaction are never overwritten by a stale value, compact,delete also
honours retention.ms, switching a topic to compact starts compacting it, records without a key
are refused, and on three nodes the replicas stay identical through a leader's kill -9.
"""

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
from harness import Broker, expect, expect_eq, run_parts, wait_until  # noqa: E402

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,  # noqa: E402
                                   NewTopic, ResourceType)

SUITE = "compaction"
CHECK_INTERVAL_MS = 200  # log_retention_check_interval_ms: how often compaction passes run here
SEGMENT = 4096  # segment.bytes: the smallest log file the broker rolls, so files are freed early
EAGER = {"cleanup.policy": "compact", "segment.bytes": str(SEGMENT), "min.cleanable.dirty.ratio": "0.1"}
VALUE_PAD = 200  # bytes of padding per value, so that updates fill several log files


def create_topic(bootstrap, name, configs, replication_factor=1):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = NewTopic(name, num_partitions=1, replication_factor=replication_factor, config=configs)
    admin.create_topics([topic])[name].result(30)


def value_of(key, seq):
    return f"{key}={seq:08d}|".encode() + b"x" * VALUE_PAD


def seq_of(value):
    return int(value.split(b"|", 1)[0].split(b"=", 1)[1])


class Writer:
    """An idempotent acks=all producer that remembers, per key, the last value acknowledged."""

    def __init__(self, bootstrap, topic):
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                                  "enable.idempotence": True, "message.timeout.ms": 120_000})
        self.acked = {}
        self.sent = {}
        self.failed = []

    def send(self, key, value, timestamp=None):
        def on_delivery(err, msg):
            if err:
                self.failed.append(err)
            elif msg.value() is not None:
                self.acked[key] = max(self.acked.get(key, -1), seq_of(msg.value()))
            else:
                self.acked[key] = None

        extra = {} if timestamp is None else {"timestamp": timestamp}
        while True:
            try:
                self.producer.produce(self.topic, key=key, value=value, on_delivery=on_delivery, **extra)
                break
            except BufferError:
                self.producer.poll(0.05)
        self.sent.setdefault(key, set()).add(value)
        self.producer.poll(0)

    def update(self, key, seq, timestamp=None):
        self.send(key, value_of(key, seq), timestamp)

    def flush(self):
        remaining = self.producer.flush(120)
        expect(remaining == 0, f"{remaining} records unflushed")


def watermarks(bootstrap, topic):
    """(log start, high watermark); retried while a node that just restarted does not know the topic yet."""
    def ask():
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "compaction-watermarks"})
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        finally:
            consumer.close()

    return wait_until(ask, 60, interval=0.2, what=f"{topic}'s watermarks")


def log_start_moved(bootstrap, topic, past=0):
    return wait_until(lambda: (lambda w: w if w[0] > past else None)(watermarks(bootstrap, topic)), 90,
                      interval=CHECK_INTERVAL_MS / 1000, what=f"compaction to move {topic}'s log start past {past}")


def read_all(bootstrap, topic):
    """[(offset, key, value)] from the log start to the high watermark, with confluent-kafka."""
    low, high = watermarks(bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"compaction-read-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen = []
    deadline = time.monotonic() + 60
    try:
        while (not seen or seen[-1][0] < high - 1) and high > low and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=1.0):
                if message.error():
                    raise KafkaException(message.error())
                seen.append((message.offset(), message.key(), message.value()))
    finally:
        consumer.close()
    expect(not seen or seen[0][0] >= low, f"read from {seen[0][0]}, below the log start {low}")
    # A compaction may append restated records after the end was asked for.
    expect(not seen or seen[-1][0] >= high - 1, f"read up to {seen[-1][0] if seen else None}, end is {high}")
    return seen


def read_all_kafka_python(bootstrap, topic):
    """[(offset, key, value)] from the log start to the high watermark, with kafka-python."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTopicPartition
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    tp = KTopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        high = consumer.end_offsets([tp])[tp]
        seen = []
        deadline = time.monotonic() + 60
        while (not seen or seen[-1][0] < high - 1) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                seen.extend((r.offset, r.key, r.value) for r in records)
        return seen
    finally:
        consumer.close()


def expect_newest_only(records, acked, sent, what):
    """Every key read holds, in offset order, only values no older than the one before it, its
    last one is at least its last acknowledged value (an unacknowledged later write may have
    landed) and was sent, and a key whose last acknowledged write is a tombstone reads null."""
    last = {}
    for offset, key, value in records:
        if value is not None and last.get(key) is not None:
            expect(seq_of(value) >= seq_of(last[key]),
                   f"{what}: {key!r} at offset {offset} went back from {seq_of(last[key])} to {seq_of(value)}")
        last[key] = value
    for key, seq in acked.items():
        expect(key in last, f"{what}: the acknowledged key {key!r} is missing")
        if seq is None:
            expect_eq(last[key], None, f"{what}: {key!r} (tombstoned)")
        else:
            expect(last[key] is not None and seq_of(last[key]) >= seq,
                   f"{what}: {key!r} reads {last[key] and seq_of(last[key])}, acknowledged {seq}")
            expect(last[key] in sent[key], f"{what}: {key!r} reads a value never sent")
    return last


class Tail:
    """A consumer reading a topic from the beginning while it is written and compacted, checking
    as it goes that no key ever reads an older value than one it read before (it only moves
    forward: a position that falls below the log start resets to the log start, which is ahead)."""

    def __init__(self, bootstrap, topic):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"compaction-tail-{time.time_ns()}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self.newest = {}
        self.read = 0
        self.went_back = []
        self.errors = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stop.is_set():
                for message in self.consumer.consume(500, timeout=0.2):
                    if message.error():
                        continue
                    self.read += 1
                    key, value = message.key(), message.value()
                    if value is None:
                        continue
                    seq, before = seq_of(value), self.newest.get(key, -1)
                    if seq < before:
                        self.went_back.append((key, message.offset(), before, seq))
                    self.newest[key] = max(seq, before)
        except Exception as exc:  # noqa: BLE001 - reported by finish()
            self.errors.append(exc)
        finally:
            self.consumer.close()

    def finish(self):
        self.stop.set()
        self.thread.join(30)
        print(f"[{SUITE}] the tailing reader read {self.read} records, {len(self.newest)} keys", flush=True)
        expect(not self.errors, f"the tailing reader failed: {self.errors[:1]}")
        expect(self.read > 0, "the tailing reader read nothing")
        expect(not self.went_back, f"a key went back to an older value (key, offset, newest seen, read): "
                                   f"{self.went_back[:3]} ({len(self.went_back)} in all)")


def dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def compactions(log_text):
    return log_text.count("compaction restated the live records")


def single_node(R):
    env = {"RAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": str(CHECK_INTERVAL_MS)}
    with Broker(extra_env=env) as broker:
        R.broker = broker
        bootstrap = broker.bootstrap

        with R.check("DescribeConfigs reports the compaction configs with Kafka's defaults"):
            create_topic(bootstrap, "plain", {})
            admin = AdminClient({"bootstrap.servers": bootstrap})
            resource = ConfigResource(ResourceType.TOPIC, "plain")
            configs = admin.describe_configs([resource])[resource].result(30)
            reported = {name: entry.value for name, entry in configs.items()}
            expect_eq({name: reported.get(name) for name in ("min.cleanable.dirty.ratio", "delete.retention.ms",
                                                             "min.compaction.lag.ms", "max.compaction.lag.ms")},
                      {"min.cleanable.dirty.ratio": "0.5", "delete.retention.ms": "86400000",
                       "min.compaction.lag.ms": "0", "max.compaction.lag.ms": "9223372036854775807"},
                      "compaction defaults")

        with R.check("Kafka Connect config topic: a reader from the beginning gets the newest value of every key,"
                     " tombstones as null, and log files are freed", timeout=240):
            topic = "connect-configs"
            create_topic(bootstrap, topic, EAGER)
            baseline = dir_bytes(broker.data_dir / "log")
            writer = Writer(bootstrap, topic)
            keys = [f"connector-{i}".encode() for i in range(20)]
            for seq in range(100):
                for key in keys:
                    writer.update(key, seq)
            for key in keys[:5]:
                writer.send(key, None)
            writer.flush()
            expect(not writer.failed, f"failures: {writer.failed[:3]}")
            produced = watermarks(bootstrap, topic)[1]
            expect_eq(produced, 20 * 100 + 5, "records produced")
            log_start_moved(bootstrap, topic)
            # 2005 records of 200+ bytes were written: some 500 KB of log files.
            wait_until(lambda: dir_bytes(broker.data_dir / "log") - baseline < 100_000, 60, interval=0.2,
                       what=f"log files freed (now {dir_bytes(broker.data_dir / 'log') - baseline} bytes more "
                            f"than before the topic was written)")
            records = read_all(bootstrap, topic)
            last = expect_newest_only(records, writer.acked, writer.sent, "confluent-kafka reader")
            expect_eq(set(last), set(keys), "keys read")
            expect(len(records) < 3 * len(keys), f"{len(records)} records read for {len(keys)} keys")
            py_records = read_all_kafka_python(bootstrap, topic)
            expect_eq(py_records, records, "kafka-python reads the same records")

        with R.check("tombstones go once older than delete.retention.ms (IncrementalAlterConfigs)", timeout=120):
            admin = AdminClient({"bootstrap.servers": bootstrap})
            resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
                ConfigEntry("delete.retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
            admin.incremental_alter_configs([resource])[resource].result(30)

            def tombstones_gone():
                read = read_all(bootstrap, topic)
                return read if {key for _, key, _ in read} == set(keys[5:]) else None

            records = wait_until(tombstones_gone, 60, interval=0.5, what="the tombstoned keys to go")
            expect_newest_only(records, {k: v for k, v in writer.acked.items() if v is not None}, writer.sent,
                               "after the tombstones went")
            expect(all(value is not None for _, _, value in records), "a tombstone is still read")

        with R.check("a producer keeps updating keys while compaction runs: no stale value comes back",
                     timeout=240):
            topic = "hot"
            create_topic(bootstrap, topic, EAGER)
            writer = Writer(bootstrap, topic)
            tail = Tail(bootstrap, topic)
            keys = [f"k{i}".encode() for i in range(10)]
            before = compactions(broker.log_tail(lines=100_000))
            deadline = time.monotonic() + 60
            seq = 0
            while time.monotonic() < deadline and (seq < 3000 or compactions(broker.log_tail(lines=100_000))
                                                  < before + 5):
                for key in keys:
                    writer.update(key, seq)
                seq += 1
                if seq % 50 == 0:
                    writer.producer.flush(30)
            writer.flush()
            expect(not writer.failed, f"failures: {writer.failed[:3]}")
            ran = compactions(broker.log_tail(lines=100_000)) - before
            expect(ran >= 5, f"only {ran} compactions ran while writing")
            tail.finish()
            records = read_all(bootstrap, topic)
            last = expect_newest_only(records, writer.acked, writer.sent, "after concurrent writes")
            expect_eq({k: seq_of(v) for k, v in last.items()}, writer.acked, "newest value of each key")

        with R.check("compact,delete: records past retention.ms go too, newest values of recent keys stay",
                     timeout=180):
            topic = "both"
            create_topic(bootstrap, topic, {**EAGER, "cleanup.policy": "compact,delete", "retention.ms": "60000"})
            writer = Writer(bootstrap, topic)
            hour_ago = int(time.time() * 1000) - 3_600_000
            for seq in range(30):
                for i in range(10):
                    writer.update(f"old-{i}".encode(), seq, timestamp=hour_ago)
            for seq in range(30):
                for i in range(10):
                    writer.update(f"new-{i}".encode(), seq)
            writer.flush()

            def old_gone():
                read = read_all(bootstrap, topic)
                return read if {key for _, key, _ in read} == {f"new-{i}".encode() for i in range(10)} else None

            records = wait_until(old_gone, 90, interval=0.5, what="the hour-old keys to go")
            new = {k: v for k, v in writer.acked.items() if k.startswith(b"new")}
            last = expect_newest_only(records, new, writer.sent, "compact,delete")
            expect_eq({k: seq_of(v) for k, v in last.items()}, new, "newest value of each recent key")

        with R.check("AlterConfigs from kafka-python switches a topic from delete to compact: it is compacted",
                     timeout=180):
            from kafka import KafkaAdminClient
            from kafka.admin import ConfigResource as KConfigResource
            from kafka.admin import ConfigResourceType
            topic = "switched"
            create_topic(bootstrap, topic, {"segment.bytes": str(SEGMENT)})
            writer = Writer(bootstrap, topic)
            for seq in range(50):
                for i in range(10):
                    writer.update(f"s{i}".encode(), seq)
            writer.flush()
            expect_eq(watermarks(bootstrap, topic), (0, 500), "nothing compacted under cleanup.policy=delete")
            admin = KafkaAdminClient(bootstrap_servers=bootstrap)
            try:
                configs = {"cleanup.policy": "compact", "segment.bytes": str(SEGMENT),
                           "min.cleanable.dirty.ratio": "0.1"}
                admin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)],
                                    incremental=False)
            finally:
                admin.close()
            log_start_moved(bootstrap, topic)
            records = read_all_kafka_python(bootstrap, topic)
            last = expect_newest_only(records, writer.acked, writer.sent, "after the switch")
            expect_eq({k: seq_of(v) for k, v in last.items()}, writer.acked, "newest value of each key")
            expect_eq(len(records), 10, "one record per key")

        with R.check("a record without a key is refused by a compacted topic (INVALID_RECORD), confluent-kafka"
                     " and kafka-python"):
            errors = []
            producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "retries": 0})
            producer.produce("hot", value=b"no key", on_delivery=lambda err, _msg: errors.append(err))
            producer.flush(30)
            expect(errors and errors[0] is not None and errors[0].code() == KafkaError.INVALID_RECORD,
                   f"delivery report {errors}")
            from kafka import KafkaProducer
            from kafka.errors import InvalidRecordError
            kp = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=0)
            try:
                kp.send("hot", value=b"no key").get(timeout=30)
                raise AssertionError("kafka-python's keyless record was accepted")
            except InvalidRecordError:
                pass
            finally:
                kp.close()


def three_nodes(R):
    from cluster import Cluster
    settings = {"log_retention_check_interval_ms": CHECK_INTERVAL_MS}
    with Cluster(settings=settings, name="compaction") as c:
        R.cluster = c
        bootstrap = c.bootstrap()
        topic = "compact3"

        with R.check("three nodes: after compaction every replica is identical", timeout=240):
            create_topic(bootstrap, topic, EAGER, replication_factor=3)
            writer = Writer(bootstrap, topic)
            keys = [f"r{i}".encode() for i in range(20)]
            for seq in range(60):
                for key in keys:
                    writer.update(key, seq)
            writer.flush()
            log_start_moved(bootstrap, topic)
            c.wait_replicas_agree(topic, timeout=120)
            last = expect_newest_only(read_all(bootstrap, topic), writer.acked, writer.sent, "three nodes")
            expect_eq({k: seq_of(v) for k, v in last.items()}, writer.acked, "newest value of each key")

        with R.check("three nodes: kill -9 of the leader under compaction load loses no newest value and"
                     " brings back no stale one", timeout=300):
            stop = threading.Event()
            seqs = {"next": 60}

            def keep_writing():
                while not stop.is_set():
                    for key in keys:
                        writer.update(key, seqs["next"])
                    seqs["next"] += 1
                    writer.producer.poll(0.01)

            thread = threading.Thread(target=keep_writing, daemon=True)
            thread.start()
            tail = Tail(bootstrap, topic)
            try:
                low = watermarks(bootstrap, topic)[0]
                log_start_moved(bootstrap, topic, past=low)
                wait_until(lambda: tail.read > 0, 60, interval=0.1, what="the tailing reader to read")
                leader = c.leader_of(topic, 0)
                c.kill9(leader)
                c.wait_new_leader(topic, 0, excluded={leader})
                read_before = tail.read
                log_start_moved(bootstrap, topic, past=watermarks(bootstrap, topic)[0])
                wait_until(lambda: tail.read > read_before, 60, interval=0.1,
                           what="the tailing reader to read from the new leader")
            finally:
                stop.set()
                thread.join(30)
            writer.flush()
            expect(not writer.failed, f"{len(writer.failed)} failures: {writer.failed[:3]}")
            tail.finish()
            c.start(leader)
            c.wait_replicas_agree(topic, timeout=120)
            last = expect_newest_only(read_all(bootstrap, topic), writer.acked, writer.sent, "after kill -9")
            expect_eq({k: seq_of(v) for k, v in last.items()}, writer.acked, "newest value of each key")

        with R.check("three nodes: a follower wiped after compaction rejoins from a checkpoint plus the log,"
                     " identical to the others", timeout=300):
            leader = c.leader_of(topic, 0)
            follower = next(i for i in c.ids if i != leader)
            c.wipe(follower)
            low = watermarks(bootstrap, topic)[0]
            for seq in range(seqs["next"], seqs["next"] + 20):
                for key in keys:
                    writer.update(key, seq)
            writer.flush()
            # The writes may be compacted before the flush returns: the log start moves past `low`.
            log_start_moved(bootstrap, topic, past=low)
            c.wait_replicas_agree(topic, timeout=120)
            last = expect_newest_only(read_all(bootstrap, topic), writer.acked, writer.sent, "after the wipe")
            expect_eq({k: seq_of(v) for k, v in last.items()}, writer.acked, "newest value of each key")


if __name__ == "__main__":
    run_parts(SUITE, single_node, three_nodes)
