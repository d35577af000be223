#!/usr/bin/env python3
"""Clients of every generation: the old request versions and message formats.

kafka-python pinned to a broker version (api_version=(0, 8, 2), (0, 9),
(0, 10, 0)) and librdkafka without ApiVersions (api.version.request=false with
broker.version.fallback) speak the protocol of Kafka 0.8 to 0.10: Metadata v0,
Produce v0-v2 with message sets of magic 0 and 1 (gzip wrappers included),
Fetch v0-v3, ListOffsets v0, OffsetCommit v0-v2, OffsetFetch v0-v1. The
clients reach the broker through a recording proxy (the broker advertises the
proxy's address), so each check also asserts which request versions really
crossed the wire. Records written by a modern client are read by old ones and
the other way round.
"""

import socket
import struct
import sys
import threading
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import expect, expect_eq, free_ports, run_suite  # noqa: E402

from confluent_kafka import Consumer, Producer, TopicPartition as CkTopicPartition  # noqa: E402
from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

TIMEOUT = 30  # seconds, for any single client operation
COUNT = 30
PROXY_PORT = free_ports(1)[0]

API_NAMES = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata", 8: "OffsetCommit", 9: "OffsetFetch",
             10: "FindCoordinator", 11: "JoinGroup", 12: "Heartbeat", 14: "SyncGroup", 18: "ApiVersions"}


class RecordingProxy:
    """Forwards TCP connections to the broker and records (api, version) of every request."""

    def __init__(self, target_port, port):
        self.target = ("127.0.0.1", target_port)
        self.bootstrap = f"127.0.0.1:{port}"
        self.seen = set()
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def versions(self, api):
        with self.lock:
            return sorted(v for a, v in self.seen if a == api)

    def clear(self):
        with self.lock:
            self.seen.clear()

    def close(self):
        self.server.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=pump, args=(client, upstream, self._request_parser()), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client, None), daemon=True).start()

    def _request_parser(self):
        """A callback fed the client's bytes, noting each request's api key and version."""
        buf = bytearray()

        def feed(data):
            buf.extend(data)
            while len(buf) >= 8:
                size = struct.unpack(">i", buf[:4])[0]
                if len(buf) < 4 + size:
                    break
                api, version = struct.unpack(">hh", buf[4:8])
                with self.lock:
                    self.seen.add((API_NAMES.get(api, api), version))
                del buf[:4 + size]
        return feed


def pump(src, dst, observe):
    """Copies `src` to `dst` until either side closes, showing each chunk to `observe`."""
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            if observe:
                observe(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with_closed(s)


def with_closed(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def values(tag, count=COUNT):
    return [f"{tag}-{i}".encode() * (1 + i % 3) for i in range(count)]


def kp_produce(bootstrap, api_version, topic, vals, compression=None):
    producer = KafkaProducer(bootstrap_servers=bootstrap, api_version=api_version, acks="all",
                             compression_type=compression, linger_ms=5, enable_idempotence=False,
                             request_timeout_ms=TIMEOUT * 1000)
    try:
        futures = [producer.send(topic, key=b"k%d" % i, value=v, partition=0) for i, v in enumerate(vals)]
        producer.flush(TIMEOUT)
        return [f.get(TIMEOUT).offset for f in futures]
    finally:
        producer.close(TIMEOUT)


def kp_consume(bootstrap, api_version, topic, count, group_id=None):
    """`count` records of partition 0 from the beginning, as (offset, key, value, timestamp)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, api_version=api_version, group_id=group_id,
                             enable_auto_commit=False, auto_offset_reset="earliest",
                             request_timeout_ms=TIMEOUT * 1000 + 1000, consumer_timeout_ms=TIMEOUT * 1000)
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        got = []
        for msg in consumer:
            got.append((msg.offset, msg.key, msg.value, msg.timestamp))
            if len(got) == count:
                break
        return got, consumer
    except Exception:
        consumer.close()
        raise


def check_kafka_python_version(broker, proxy, R, api_version, expected):
    """Produce (plain and gzip) and consume with kafka-python pinned to `api_version`."""
    label = ".".join(map(str, api_version))
    topic = f"legacy-kp-{label.replace('.', '-')}"
    with R.check(f"kafka-python api_version={label}: produce, gzip, consume, commit"):
        proxy.clear()
        plain, gzipped = values(f"{label}-plain"), values(f"{label}-gzip")
        offsets = kp_produce(proxy.bootstrap, api_version, topic, plain)
        expect_eq(offsets, list(range(COUNT)), "offsets of plain messages")
        offsets = kp_produce(proxy.bootstrap, api_version, topic, gzipped, compression="gzip")
        expect_eq(offsets, list(range(COUNT, 2 * COUNT)), "offsets of gzip messages")
        got, consumer = kp_consume(proxy.bootstrap, api_version, topic, 2 * COUNT,
                                   group_id=f"legacy-group-{label}")
        with closing(consumer):
            expect_eq([g[0] for g in got], list(range(2 * COUNT)), "offsets read back")
            expect_eq([g[2] for g in got], plain + gzipped, "values read back")
            expect_eq([g[1] for g in got], [b"k%d" % i for i in range(COUNT)] * 2, "keys read back")
            tp = TopicPartition(topic, 0)
            consumer.commit({tp: OffsetAndMetadata(17, "legacy", -1)})
            expect_eq(consumer.committed(tp), 17, "committed offset read back")
        for api, versions in expected.items():
            expect_eq(proxy.versions(api), versions, f"{api} versions on the wire")


def check_librdkafka_fallback(broker, proxy, R, fallback, expected, subscribe):
    """librdkafka without ApiVersions, as against a broker of version `fallback`;
    `subscribe` joins a consumer group (Kafka 0.9 and later), otherwise partitions
    are assigned by hand."""
    topic = f"legacy-rdkafka-{fallback.replace('.', '-')}"
    # log_level 3: without it librdkafka warns that both settings are deprecated.
    conf = {"bootstrap.servers": proxy.bootstrap, "api.version.request": False, "log_level": 3,
            "broker.version.fallback": fallback}
    how = "consume in a group" if subscribe else "consume assigned"
    with R.check(f"librdkafka broker.version.fallback={fallback}: produce, {how}, commit"):
        proxy.clear()
        sent = values(f"rd-{fallback}")
        delivered = []
        producer = Producer({**conf, "acks": "all", "linger.ms": 5, "compression.codec": "gzip"})
        for i, v in enumerate(sent):
            producer.produce(topic, key=b"k%d" % i, value=v, partition=0,
                             on_delivery=lambda err, msg: delivered.append((err, msg.offset() if msg else None)))
        expect_eq(producer.flush(TIMEOUT), 0, "messages left after flush")
        expect_eq([d[0] for d in delivered], [None] * COUNT, "delivery errors")
        expect_eq(sorted(d[1] for d in delivered), list(range(COUNT)), "delivered offsets")
        consumer = Consumer({**conf, "group.id": f"legacy-rd-{fallback}", "auto.offset.reset": "earliest",
                             "enable.auto.commit": False, "session.timeout.ms": 6000})
        try:
            if subscribe:
                consumer.subscribe([topic])
            else:
                consumer.assign([CkTopicPartition(topic, 0, 0)])
            got = []
            deadline_polls = TIMEOUT * 10
            while len(got) < COUNT and deadline_polls > 0:
                msg = consumer.poll(0.1)
                deadline_polls -= 1
                if msg is None:
                    continue
                expect(msg.error() is None, f"consumer error {msg.error()}")
                got.append((msg.offset(), msg.value()))
            expect_eq(got, list(enumerate(sent)), "offsets and values read back")
            consumer.commit(offsets=[CkTopicPartition(topic, 0, COUNT)], asynchronous=False)
            committed = consumer.committed([CkTopicPartition(topic, 0)], timeout=TIMEOUT)
            expect_eq(committed[0].offset, COUNT, "committed offset read back")
        finally:
            consumer.close()
        for api, versions in expected.items():
            expect_eq(proxy.versions(api), versions, f"{api} versions on the wire")


def check_mixed_generations(broker, proxy, R):
    with R.check("records of a modern client (v2 batches, headers) read by a Kafka 0.8 client, and back"):
        topic = "legacy-mixed"
        producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "compression.codec": "lz4"})
        sent = values("modern")
        for i, v in enumerate(sent):
            producer.produce(topic, key=b"k%d" % i, value=v, partition=0, headers=[("h", b"x")],
                             timestamp=1_700_000_000_000 + i)
        expect_eq(producer.flush(TIMEOUT), 0, "messages left after flush")
        got, consumer = kp_consume(proxy.bootstrap, (0, 8, 2), topic, COUNT)
        consumer.close()
        expect_eq([(g[0], g[2]) for g in got], list(enumerate(sent)), "0.8 client reads modern records")
        got, consumer = kp_consume(proxy.bootstrap, (0, 10, 0), topic, COUNT)
        consumer.close()
        expect_eq([g[3] for g in got], [1_700_000_000_000 + i for i in range(COUNT)],
                  "0.10 client reads the producer's timestamps (magic 1)")
        old = values("old")
        kp_produce(proxy.bootstrap, (0, 9), topic, old)
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "legacy-mixed-modern",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        try:
            consumer.assign([CkTopicPartition(topic, 0, COUNT)])
            read = []
            for _ in range(TIMEOUT * 10):
                msg = consumer.poll(0.1)
                if msg is not None:
                    expect(msg.error() is None, f"consumer error {msg.error()}")
                    read.append(msg.value())
                if len(read) == COUNT:
                    break
            expect_eq(read, old, "modern client reads records of a Kafka 0.9 producer")
        finally:
            consumer.close()


def main(broker, R):
    proxy = RecordingProxy(broker.port, PROXY_PORT)
    try:
        check_kafka_python_version(broker, proxy, R, (0, 8, 2), {
            "Metadata": [0], "Produce": [0], "Fetch": [0], "ListOffsets": [0],
            "OffsetCommit": [1], "OffsetFetch": [1]})
        check_kafka_python_version(broker, proxy, R, (0, 9), {
            "Metadata": [0], "Produce": [1], "Fetch": [1], "ListOffsets": [0],
            "OffsetCommit": [2], "OffsetFetch": [1]})
        check_kafka_python_version(broker, proxy, R, (0, 10, 0), {
            "Metadata": [1], "Produce": [2], "Fetch": [2], "ListOffsets": [0]})
        check_librdkafka_fallback(broker, proxy, R, "0.9.0.1", {
            "Metadata": [0], "Produce": [1], "Fetch": [1], "ListOffsets": [0]}, subscribe=True)
        check_librdkafka_fallback(broker, proxy, R, "0.8.2.2", {
            "Metadata": [0], "Produce": [0], "Fetch": [0]}, subscribe=False)
        check_mixed_generations(broker, proxy, R)
    finally:
        proxy.close()


if __name__ == "__main__":
    # The broker advertises the proxy, so clients come back through it after Metadata.
    run_suite("legacy", main, extra_env={"RAFKA_ADVERTISED_LISTENER": f"127.0.0.1:{PROXY_PORT}"})
