#!/usr/bin/env python3
"""confluent-kafka-python (librdkafka) compatibility checks against rafka.

Consumers here use assign()/seek() with explicit partitions; consumer groups have their own
suite (test_groups.py).
"""

import concurrent.futures
import logging
import re
import sys
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import (BASE_TS, Msg, by_partition, expect, expect_eq, make_messages,  # noqa: E402
                     run_suite, wait_until)

from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, TIMESTAMP_CREATE_TIME,  # noqa: E402
                             TIMESTAMP_LOG_APPEND_TIME,
                             Consumer, KafkaError, KafkaException, Producer, TopicPartition, libversion)
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,  # noqa: E402
                                   ConfigResource, ConfigSource, NewPartitions, NewTopic,
                                   OffsetSpec, ResourceType)

TIMEOUT = 30  # seconds, for any single client operation
PARTITIONS = 3
PER_PARTITION = 40
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]


# -- clients -----------------------------------------------------------------
def admin_client(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def new_consumer(bootstrap):
    # group.id is mandatory in confluent-kafka but unused: assign() only, no commits.
    return Consumer({"bootstrap.servers": bootstrap, "group.id": "rafka-compat-unused",
                     "enable.auto.commit": False, "enable.auto.offset.store": False,
                     "enable.partition.eof": True, "auto.offset.reset": "error"})


def admin_call(bootstrap, method, *args, key=None, **kwargs):
    """Run AdminClient.<method> and wait for its result (the client must outlive its futures)."""
    admin = admin_client(bootstrap)
    futures = getattr(admin, method)(*args, request_timeout=TIMEOUT, **kwargs)
    try:
        return (futures if key is None else futures[key]).result(timeout=TIMEOUT + 5)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"AdminClient.{method} returned no result within {TIMEOUT + 5}s") from None


def create_topic(bootstrap, topic, partitions):
    admin_call(bootstrap, "create_topics", [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
               key=topic, operation_timeout=TIMEOUT)
    return wait_for_topic(bootstrap, topic, partitions)


def wait_for_topic(bootstrap, topic, partitions):
    """Wait until Metadata lists `topic` with `partitions` partitions, each with a leader."""
    admin = admin_client(bootstrap)

    def ready():
        md = admin.list_topics(timeout=5).topics.get(topic)  # all-topics request: never auto-creates
        if md is None or md.error is not None or len(md.partitions) != partitions:
            return None
        return md if all(pm.leader >= 0 for pm in md.partitions.values()) else None

    return wait_until(ready, TIMEOUT, interval=0.2, what=f"topic {topic} with {partitions} partitions")


def start_producing(bootstrap, topic, msgs, **conf):
    """Queue `msgs` (to their explicit partitions) on a new producer without waiting.

    Returns (producer, reports): reports[i] becomes (error, partition, offset) for msgs[i]
    once its delivery report is served by producer.poll()/flush().
    """
    config = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
              "enable.idempotence": False, "message.timeout.ms": TIMEOUT * 1000}
    config.update(conf)
    producer = Producer(config)
    reports = [None] * len(msgs)

    def on_delivery(idx):
        def cb(err, m):
            reports[idx] = (err, m.partition(), m.offset())
        return cb

    for idx, m in enumerate(msgs):
        producer.produce(topic, value=m.value, key=m.key, partition=m.partition,
                         headers=m.headers or None, timestamp=m.ts, on_delivery=on_delivery(idx))
        producer.poll(0)
    return producer, reports


def produce(bootstrap, topic, msgs, **conf):
    """Produce `msgs` and wait for all delivery reports; return them (see start_producing)."""
    producer, reports = start_producing(bootstrap, topic, msgs, **conf)
    expect_eq(producer.flush(TIMEOUT), 0, "messages still undelivered after flush")
    return reports


def check_delivered(reports, msgs, first_offset=0, offsets=True):
    """Every report succeeded on the requested partition; offsets dense from `first_offset`."""
    errors = [(i, r[0]) for i, r in enumerate(reports) if r is None or r[0] is not None]
    expect(not errors, f"{len(errors)} failed deliveries, first: {errors[:3]}")
    expect_eq([r[1] for r in reports], [m.partition for m in msgs], "delivered partitions")
    if offsets:
        for p, reps in by_partition(reports, lambda r: r[1]).items():
            got = [r[2] for r in reps]
            expect_eq(got, list(range(first_offset, first_offset + len(got))), f"partition {p} acked offsets")


def poll_until(consumer, done, timeout=TIMEOUT):
    """Consume until done(messages, eof_partitions) holds; raise on errors or at the deadline."""
    msgs, eofs = [], set()
    deadline = time.monotonic() + timeout
    while not done(msgs, eofs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer timed out: {len(msgs)} messages, EOF on partitions {sorted(eofs)}")
        for m in consumer.consume(num_messages=500, timeout=0.2):
            if m.error() is None:
                msgs.append(m)
            elif m.error().code() == KafkaError._PARTITION_EOF:
                eofs.add(m.partition())
            else:
                raise KafkaException(m.error())
    return msgs


def read_all(bootstrap, topic, partitions):
    """Read `partitions` of `topic` from OFFSET_BEGINNING up to their high watermarks."""
    with closing(new_consumer(bootstrap)) as c:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        return poll_until(c, lambda _m, eofs: eofs >= set(partitions))


def verify(consumed, expected, first_offset=0):
    """Consumed messages match `expected` per partition: dense offsets, keys, values, headers, timestamps."""
    got_by_p = by_partition(consumed, lambda m: m.partition())
    exp_by_p = by_partition(expected, lambda m: m.partition)
    expect_eq(sorted(got_by_p), sorted(exp_by_p), "partitions with data")
    for p, exp in exp_by_p.items():
        got = got_by_p[p]
        offsets = [m.offset() for m in got]
        expect_eq(offsets, list(range(first_offset, first_offset + len(exp))), f"partition {p} offsets")
        for g, e in zip(got, exp):
            where = f"partition {p} offset {g.offset()}"
            expect_eq(g.key(), e.key, f"{where} key")
            expect_eq(g.value(), e.value, f"{where} value")
            expect_eq(list(g.headers() or []), e.headers, f"{where} headers")
            expect_eq(g.timestamp(), (TIMESTAMP_CREATE_TIME, e.ts), f"{where} timestamp")


# -- checks ------------------------------------------------------------------
def check_admin_basics(bootstrap, R):
    with R.check("admin: create topic with 3 partitions, list_topics shows 3 partitions with leaders"):
        create_topic(bootstrap, "cfk-admin", PARTITIONS)

    with R.check("admin: creating an existing topic fails with TOPIC_ALREADY_EXISTS (36)"):
        expect_admin_error(KafkaError.TOPIC_ALREADY_EXISTS, bootstrap, "create_topics",
                           [NewTopic("cfk-admin", 1, 1)], key="cfk-admin")

    with R.check("admin: invalid topic name 'bad topic!' fails with INVALID_TOPIC_EXCEPTION (17)"):
        expect_admin_error(KafkaError.TOPIC_EXCEPTION, bootstrap, "create_topics",
                           [NewTopic("bad topic!", 1, 1)], key="bad topic!")

    with R.check("admin: create_partitions grows cfk-admin from 3 to 5 partitions"):
        admin_call(bootstrap, "create_partitions", [NewPartitions("cfk-admin", 5)], key="cfk-admin")
        wait_for_topic(bootstrap, "cfk-admin", 5)

    with R.check("admin: describe_configs on a topic succeeds"):
        res = ConfigResource(ResourceType.TOPIC, "cfk-admin")
        configs = admin_call(bootstrap, "describe_configs", [res], key=res)
        expect(isinstance(configs, dict), f"unexpected result {configs!r}")

    with R.check("admin: describe_cluster lists this broker and a cluster id"):
        desc = admin_call(bootstrap, "describe_cluster")
        expect(desc.cluster_id, f"empty cluster_id: {desc.cluster_id!r}")
        expect_eq([f"{n.host}:{n.port}" for n in desc.nodes], [bootstrap], "cluster nodes")


def topic_configs(bootstrap, topic):
    """describe_configs of `topic`: {name: ConfigEntry}."""
    res = ConfigResource(ResourceType.TOPIC, topic)
    return admin_call(bootstrap, "describe_configs", [res], key=res)


def incremental(topic, *entries):
    """A topic resource for incremental_alter_configs: entries are (name, value, AlterConfigOpType)."""
    return ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry(name, value, incremental_operation=op) for name, value, op in entries])


def expect_config(configs, name, value, source):
    entry = configs.get(name)
    expect(entry is not None, f"{name} missing from describe_configs: {sorted(configs)}")
    got_source = getattr(entry.source, "value", entry.source)  # the enum or its int, by client version
    expect_eq((entry.value, got_source), (value, source.value), f"{name} (value, source)")


def check_configs(bootstrap, R):
    topic = "cfk-configs"
    with R.check("configs: incremental_alter_configs SET and APPEND; describe_configs reports them as "
                 "DYNAMIC_TOPIC_CONFIG"):
        create_topic(bootstrap, topic, 1)
        res = incremental(topic, ("compression.type", "lz4", AlterConfigOpType.SET),
                          ("cleanup.policy", "compact", AlterConfigOpType.APPEND),
                          ("max.message.bytes", "65536", AlterConfigOpType.SET))
        admin_call(bootstrap, "incremental_alter_configs", [res], key=res)
        configs = topic_configs(bootstrap, topic)
        expect_config(configs, "compression.type", "lz4", ConfigSource.DYNAMIC_TOPIC_CONFIG)
        expect_config(configs, "cleanup.policy", "delete,compact", ConfigSource.DYNAMIC_TOPIC_CONFIG)
        expect_config(configs, "max.message.bytes", "65536", ConfigSource.DYNAMIC_TOPIC_CONFIG)
        expect_config(configs, "min.insync.replicas", "1", ConfigSource.DEFAULT_CONFIG)
        expect(not configs["compression.type"].is_read_only, "topic configs are alterable")

    with R.check("configs: incremental DELETE and SUBTRACT; the deleted key is back to its default"):
        res = incremental(topic, ("compression.type", None, AlterConfigOpType.DELETE),
                          ("cleanup.policy", "delete", AlterConfigOpType.SUBTRACT))
        admin_call(bootstrap, "incremental_alter_configs", [res], key=res)
        configs = topic_configs(bootstrap, topic)
        expect_config(configs, "compression.type", "producer", ConfigSource.DEFAULT_CONFIG)
        expect_config(configs, "cleanup.policy", "compact", ConfigSource.DYNAMIC_TOPIC_CONFIG)
        expect_config(configs, "max.message.bytes", "65536", ConfigSource.DYNAMIC_TOPIC_CONFIG)

    with R.check("configs: validate_only=True checks the change and applies nothing"):
        res = incremental(topic, ("min.insync.replicas", "2", AlterConfigOpType.SET))
        admin_call(bootstrap, "incremental_alter_configs", [res], key=res, validate_only=True)
        expect_config(topic_configs(bootstrap, topic), "min.insync.replicas", "1", ConfigSource.DEFAULT_CONFIG)

    with R.check("configs: an unknown name or a bad value fails with INVALID_CONFIG (40) and changes nothing"):
        for entry in [("dummy.doesntexist", "1", AlterConfigOpType.SET),
                      ("compression.type", "brotli", AlterConfigOpType.SET),
                      ("min.insync.replicas", "zero", AlterConfigOpType.SET),
                      ("message.timestamp.type", "LogAppendTime", AlterConfigOpType.APPEND)]:
            # With a valid change in the same resource: it is refused too (a resource changes whole or not at all).
            res = incremental(topic, ("max.message.bytes", "1000", AlterConfigOpType.SET), entry)
            expect_admin_error(KafkaError.INVALID_CONFIG, bootstrap, "incremental_alter_configs", [res], key=res)
        configs = topic_configs(bootstrap, topic)
        expect_config(configs, "compression.type", "producer", ConfigSource.DEFAULT_CONFIG)
        expect_config(configs, "max.message.bytes", "65536", ConfigSource.DYNAMIC_TOPIC_CONFIG)

    with R.check("configs: an unknown topic fails with UNKNOWN_TOPIC_OR_PART (3)"):
        res = incremental("cfk-no-such-topic", ("compression.type", "gzip", AlterConfigOpType.SET))
        expect_admin_error(KafkaError.UNKNOWN_TOPIC_OR_PART, bootstrap, "incremental_alter_configs", [res], key=res)

    with R.check("configs: changing a (static) broker config fails with INVALID_REQUEST (42)"):
        res = ConfigResource(ResourceType.BROKER, "1", incremental_configs=[
            ConfigEntry("message.max.bytes", "2000", incremental_operation=AlterConfigOpType.SET)])
        expect_admin_error(KafkaError.INVALID_REQUEST, bootstrap, "incremental_alter_configs", [res], key=res)

    with R.check("configs: alter_configs replaces the overrides; keys left out return to their defaults"):
        res = ConfigResource(ResourceType.TOPIC, topic, set_config={"message.timestamp.type": "LogAppendTime"})
        admin_call(bootstrap, "alter_configs", [res], key=res)
        configs = topic_configs(bootstrap, topic)
        expect_config(configs, "message.timestamp.type", "LogAppendTime", ConfigSource.DYNAMIC_TOPIC_CONFIG)
        expect_config(configs, "cleanup.policy", "delete", ConfigSource.DEFAULT_CONFIG)
        expect_config(configs, "max.message.bytes", "1048588", ConfigSource.DEFAULT_CONFIG)


def delivery_error(bootstrap, topic, key, value, **conf):
    """Produce one message on its own and return its delivery report's error (None: delivered)."""
    producer, reports = start_producing(bootstrap, topic, [Msg(0, key, value, None, BASE_TS)],
                                        **{"compression.type": "none", **conf})
    expect_eq(producer.flush(TIMEOUT), 0, "message still undelivered after flush")
    return reports[0][0]


def check_topic_rules(bootstrap, R):
    with R.check("create_topics: an unknown config name fails with INVALID_CONFIG (40) and creates nothing"):
        expect_admin_error(KafkaError.INVALID_CONFIG, bootstrap, "create_topics",
                           [NewTopic("cfk-bad-config", 1, 1, config={"dummy.doesntexist": "1"})],
                           key="cfk-bad-config")
        expect_admin_error(KafkaError.INVALID_CONFIG, bootstrap, "create_topics",
                           [NewTopic("cfk-bad-config", 1, 1, config={"max.message.bytes": "many"})],
                           key="cfk-bad-config")
        expect("cfk-bad-config" not in admin_client(bootstrap).list_topics(timeout=5).topics,
               "refused topic was created")

    with R.check("create_topics validate_only=True: a valid topic is checked, not created; a bad config "
                 "still fails with INVALID_CONFIG"):
        admin_call(bootstrap, "create_topics",
                   [NewTopic("cfk-validate-only", 2, 1, config={"cleanup.policy": "compact"})],
                   key="cfk-validate-only", validate_only=True)
        expect("cfk-validate-only" not in admin_client(bootstrap).list_topics(timeout=5).topics,
               "validate_only created the topic")
        expect_admin_error(KafkaError.INVALID_CONFIG, bootstrap, "create_topics",
                           [NewTopic("cfk-validate-only", 1, 1, config={"dummy.doesntexist": "1"})],
                           key="cfk-validate-only", validate_only=True)

    with R.check("max.message.bytes=2000 on a topic: a 5000-byte message fails with MSG_SIZE_TOO_LARGE (10), "
                 "a 1000-byte one is delivered; describe_configs reports 2000"):
        topic = "cfk-max-bytes"
        admin_call(bootstrap, "create_topics",
                   [NewTopic(topic, 1, 1, config={"max.message.bytes": "2000"})], key=topic,
                   operation_timeout=TIMEOUT)
        wait_for_topic(bootstrap, topic, 1)
        expect_config(topic_configs(bootstrap, topic), "max.message.bytes", "2000", ConfigSource.DYNAMIC_TOPIC_CONFIG)
        err = delivery_error(bootstrap, topic, b"k", b"x" * 5000)
        expect(err is not None and err.code() == KafkaError.MSG_SIZE_TOO_LARGE, f"5000 bytes: {err}")
        err = delivery_error(bootstrap, topic, b"k", b"x" * 1000)
        expect(err is None, f"1000 bytes: {err}")

    with R.check("cleanup.policy=compact: a keyed message is delivered, one without a key fails with "
                 "INVALID_RECORD (87)"):
        topic = "cfk-compacted"
        admin_call(bootstrap, "create_topics",
                   [NewTopic(topic, 1, 1, config={"cleanup.policy": "compact"})], key=topic,
                   operation_timeout=TIMEOUT)
        wait_for_topic(bootstrap, topic, 1)
        err = delivery_error(bootstrap, topic, b"k", b"keyed")
        expect(err is None, f"keyed message: {err}")
        err = delivery_error(bootstrap, topic, None, b"no key")
        expect(err is not None and err.code() == KafkaError.INVALID_RECORD, f"message without a key: {err}")


def check_internal_topic(bootstrap, R):
    with R.check("internal topic: producing to __consumer_offsets fails with TOPIC_EXCEPTION (17)"):
        # Looking a group up (FindCoordinator) makes the broker create its offsets topic;
        # the group itself does not exist, which is not what this check is about.
        try:
            admin_call(bootstrap, "describe_consumer_groups", ["cfk-internal-probe"], key="cfk-internal-probe")
        except KafkaException:
            pass
        wait_for_topic(bootstrap, "__consumer_offsets", 1)
        producer, reports = start_producing(bootstrap, "__consumer_offsets",
                                            [Msg(0, b"k", b"not an offset record", [], BASE_TS)])
        expect_eq(producer.flush(TIMEOUT), 0, "messages still undelivered after flush")
        err = reports[0][0]
        expect(err is not None and err.code() == KafkaError.TOPIC_EXCEPTION, f"delivery report error {err}")


def check_log_append_time(bootstrap, R):
    with R.check("message.timestamp.type=LogAppendTime: the broker's time replaces the producer's, "
                 "in the delivery report and for consumers"):
        topic = "cfk-append-time"
        admin_call(bootstrap, "create_topics",
                   [NewTopic(topic, num_partitions=1, replication_factor=1,
                             config={"message.timestamp.type": "LogAppendTime"})],
                   key=topic, operation_timeout=TIMEOUT)
        wait_for_topic(bootstrap, topic, 1)
        msgs = [Msg(0, b"k", f"stamped-{i}".encode(), None, BASE_TS + i) for i in range(5)]
        before = int(time.time() * 1000)
        producer, reports = start_producing(bootstrap, topic, msgs)
        stamps = []
        producer.produce(topic, value=b"reported", partition=0, timestamp=BASE_TS,
                         on_delivery=lambda err, m: stamps.append((err, m.timestamp())))
        expect_eq(producer.flush(TIMEOUT), 0, "messages still undelivered after flush")
        after = int(time.time() * 1000)
        check_delivered(reports, msgs)
        (err, (kind, stamp)), = stamps
        expect(err is None and kind == TIMESTAMP_LOG_APPEND_TIME and before <= stamp <= after,
               f"delivery report timestamp {(err, kind, stamp)}, expected LogAppendTime in [{before}, {after}]")
        stored = read_all(bootstrap, topic, [0])
        for m in stored:
            kind, stamp = m.timestamp()
            expect(kind == TIMESTAMP_LOG_APPEND_TIME and before <= stamp <= after,
                   f"offset {m.offset()}: timestamp {(kind, stamp)}, expected LogAppendTime in [{before}, {after}]")
        # Lookups by time use the broker's times too, not the producer's (BASE_TS + i, long past).
        last = stored[-1]
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "cfk-append-time-lookup"})
        try:
            [found] = c.offsets_for_times([TopicPartition(topic, 0, last.timestamp()[1])], timeout=TIMEOUT)
            first_at_last_stamp = next(m.offset() for m in stored if m.timestamp()[1] == last.timestamp()[1])
            expect_eq(found.offset, first_at_last_stamp, "offsets_for_times at the last append time")
            [past] = c.offsets_for_times([TopicPartition(topic, 0, BASE_TS)], timeout=TIMEOUT)
            expect_eq(past.offset, 0, "offsets_for_times at a producer timestamp before every append")
        finally:
            c.close()


def expect_admin_error(code, *call, **kwargs):
    try:
        admin_call(*call, **kwargs)
    except KafkaException as exc:
        err = exc.args[0]
        expect_eq(err.code(), code, f"error code (error: {err})")
        return
    raise AssertionError(f"operation succeeded, expected error code {code}")


def check_codecs(bootstrap, R):
    for codec in CODECS:
        topic, msgs = f"cfk-codec-{codec}", make_messages(codec, PARTITIONS, PER_PARTITION)
        with R.check(f"produce acks=all compression={codec}: delivery reports OK, dense offsets"):
            create_topic(bootstrap, topic, PARTITIONS)
            check_delivered(produce(bootstrap, topic, msgs, **{"compression.type": codec}), msgs)
        with R.check(f"consume compression={codec} from OFFSET_BEGINNING, then seek to a middle offset"), \
                closing(new_consumer(bootstrap)) as c:
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
            verify(poll_until(c, lambda _m, eofs: eofs >= set(range(PARTITIONS))), msgs)
            mid = PER_PARTITION // 2 + 1  # lands inside a (compressed) batch
            c.seek(TopicPartition(topic, 1, mid))
            expected = [m for m in msgs if m.partition == 1][mid:]
            verify(poll_until(c, lambda got, _e: len(got) >= len(expected)), expected, first_offset=mid)


def check_acks(bootstrap, R):
    msgs = make_messages("acks", 1, 100)
    with R.check("produce acks=1: delivered at dense offsets and read back"):
        check_delivered(produce(bootstrap, "cfk-acks1", msgs, acks="1"), msgs)
        verify(read_all(bootstrap, "cfk-acks1", [0]), msgs)

    with R.check("produce acks=0: messages eventually readable"):
        check_delivered(produce(bootstrap, "cfk-acks0", msgs, acks="0"), msgs, offsets=False)
        wait_until(lambda: len(read_all(bootstrap, "cfk-acks0", [0])) >= len(msgs), TIMEOUT,
                   what="acks=0 messages to become readable")
        verify(read_all(bootstrap, "cfk-acks0", [0]), msgs)


def check_auto_create(bootstrap, R):
    with R.check("auto-create: producing to an unknown topic creates it with 1 partition"):
        msgs = [Msg(0, b"k", b"v", [], BASE_TS)]
        check_delivered(produce(bootstrap, "cfk-auto-created", msgs), msgs)
        wait_for_topic(bootstrap, "cfk-auto-created", 1)


def check_offsets(bootstrap, R):
    topic = "cfk-codec-none"  # written by check_codecs
    msgs = by_partition(make_messages("none", PARTITIONS, PER_PARTITION), lambda m: m.partition)
    with R.check("get_watermark_offsets returns (0, count) per partition"), \
            closing(new_consumer(bootstrap)) as c:
        for p in range(PARTITIONS):
            got = c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT, cached=False)
            expect_eq(got, (0, PER_PARTITION), f"partition {p} watermarks")

    with R.check("offsets_for_times (ListOffsets by timestamp) returns correct offsets"), \
            closing(new_consumer(bootstrap)) as c:
        first, last = msgs[1][0].ts, msgs[1][-1].ts
        cases = [(first - 1, 0), (first, 0), (msgs[1][7].ts, 7),
                 (msgs[1][7].ts + 1, 8), (last, PER_PARTITION - 1), (last + 1, OFFSET_END)]
        for ts, want in cases:
            [tp] = c.offsets_for_times([TopicPartition(topic, 1, ts)], timeout=TIMEOUT)
            expect(tp.error is None, f"timestamp {ts}: partition error {tp.error}")
            expect_eq(tp.offset, want, f"offset for timestamp {ts} (first message at {first})")

    with R.check("AdminClient.list_offsets: earliest, latest and max_timestamp (ListOffsets v7, KIP-734) "
                 "name the first record with the largest timestamp"):
        stamped = "cfk-max-timestamp"
        create_topic(bootstrap, stamped, 1)
        # Timestamps rise, fall back, and reach their largest twice: offsets 3 and 5.
        stamps = [BASE_TS, BASE_TS + 5, BASE_TS + 2, BASE_TS + 9, BASE_TS + 1, BASE_TS + 9]
        msgs = [Msg(0, b"k", f"v{i}".encode(), [], ts) for i, ts in enumerate(stamps)]
        check_delivered(produce(bootstrap, stamped, msgs), msgs)
        tp = TopicPartition(stamped, 0)
        for spec, want in [(OffsetSpec.earliest(), (0, -1)), (OffsetSpec.latest(), (len(stamps), -1)),
                           (OffsetSpec.max_timestamp(), (3, BASE_TS + 9))]:
            got = admin_call(bootstrap, "list_offsets", {tp: spec}, key=tp)
            expect_eq((got.offset, got.timestamp), want, f"list_offsets {type(spec).__name__}")


def check_delete(bootstrap, R):
    with R.check("admin: delete_topics removes the topic from list_topics"):
        create_topic(bootstrap, "cfk-delete-me", 2)
        admin_call(bootstrap, "delete_topics", ["cfk-delete-me"], key="cfk-delete-me", operation_timeout=TIMEOUT)
        admin = admin_client(bootstrap)
        wait_until(lambda: "cfk-delete-me" not in admin.list_topics(timeout=5).topics, TIMEOUT,
                   interval=0.2, what="cfk-delete-me to disappear from Metadata")


def check_durability(broker, R):
    bootstrap, topic = broker.bootstrap, "cfk-durability"
    first = make_messages("dur1", 2, 200)
    second = make_messages("dur2", 2, 200, ts_base=BASE_TS + 500_000)
    with R.check("durability: acks=all messages acknowledged before kill -9 are all readable exactly once, in order"):
        create_topic(bootstrap, topic, 2)
        check_delivered(produce(bootstrap, topic, first), first)
        broker.kill9()
        verify(read_all(bootstrap, topic, [0, 1]), first)

    with R.check("durability: acknowledged messages survive a graceful restart (SIGTERM)"):
        check_delivered(produce(bootstrap, topic, second), second, first_offset=200)
        code = broker.restart()
        expect(code in (0, -15), f"broker exit code after SIGTERM was {code} (-9 means it ignored SIGTERM)")
        verify(read_all(bootstrap, topic, [0, 1]), first + second)

    with R.check("durability: kill -9 with produce requests in flight: every acked message is at its acked offset"):
        topic, msgs = "cfk-durability-inflight", make_messages("inflight", 1, 3000)
        create_topic(bootstrap, topic, 1)
        # Many small requests in flight; non-idempotent retries may legally duplicate unacked ones.
        producer, reports = start_producing(bootstrap, topic, msgs, **{"linger.ms": 0, "batch.num.messages": 10})

        def acked():
            producer.poll(0.001)
            return sum(r is not None for r in reports)

        wait_until(lambda: acked() >= 300, TIMEOUT, interval=0, what="300 delivery reports")
        broker.kill9()
        expect_eq(producer.flush(TIMEOUT), 0, "messages still undelivered after restart")
        stored = {m.offset(): m for m in read_all(bootstrap, topic, [0])}
        expect_eq(sorted(stored), list(range(len(stored))), "offsets after restart (dense from 0)")
        for m, (err, _p, offset) in zip(msgs, reports):
            if err is None:
                got = stored.get(offset)
                expect(got is not None and (got.key(), got.value()) == (m.key, m.value),
                       f"acked message {m.key!r} missing or different at offset {offset}")


def check_idempotence(broker, R):
    bootstrap = broker.bootstrap
    with R.check("idempotence: retries across kill -9 and a graceful restart leave no duplicates and no gaps"):
        topic, msgs = "cfk-idempotent", make_messages("idem", 2, 2000)
        create_topic(bootstrap, topic, 2)
        producer, reports = start_producing(bootstrap, topic, msgs, **{
            "enable.idempotence": True, "linger.ms": 0, "batch.num.messages": 10,
            "max.in.flight.requests.per.connection": 5})

        def acked():
            producer.poll(0.001)
            return sum(r is not None for r in reports)

        wait_until(lambda: acked() >= 500, TIMEOUT, interval=0, what="500 delivery reports")
        broker.kill9()
        wait_until(lambda: acked() >= 2500, TIMEOUT, interval=0, what="2500 delivery reports")
        broker.restart()
        expect_eq(producer.flush(TIMEOUT), 0, "messages still undelivered after the restarts")
        check_delivered(reports, msgs, offsets=False)
        # Exactly the produced messages, each once, in produce order per partition.
        verify(read_all(bootstrap, topic, [0, 1]), msgs)


# The newest request version librdkafka 2.16 knows of each API, which the broker's ApiVersions must let it
# use (librdkafka takes the highest version both sides know). A lower maximum on the broker shows here.
LIBRDKAFKA_NEWEST = {"Produce": 10, "Fetch": 16, "ListOffsets": 7, "Metadata": 13, "OffsetCommit": 9,
                     "OffsetFetch": 9}
SENT = re.compile(r"Sent (\w+)Request \(v(\d+),")


class SentVersions(logging.Handler):
    """Collects the version of every request librdkafka logs as sent (debug=protocol)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.sent = {}

    def emit(self, record):
        for api, version in SENT.findall(record.getMessage()):
            self.sent.setdefault(api, set()).add(int(version))


def check_negotiated_versions(bootstrap, R):
    with R.check("librdkafka negotiates its newest Produce, Fetch, ListOffsets, Metadata, OffsetCommit and "
                 "OffsetFetch versions"):
        handler = SentVersions()
        logger = logging.getLogger("cfk-protocol")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        try:
            topic = "cfk-versions"
            create_topic(bootstrap, topic, 1)
            msgs = make_messages(topic, 1, 3)
            check_delivered(produce(bootstrap, topic, msgs, debug="protocol", logger=logger), msgs)
            consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "rafka-compat-unused",
                                 "enable.auto.commit": False, "enable.partition.eof": True,
                                 "debug": "protocol", "logger": logger})
            with closing(consumer) as c:
                c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
                verify(poll_until(c, lambda _m, eofs: 0 in eofs), msgs)
                c.offsets_for_times([TopicPartition(topic, 0, BASE_TS)], timeout=TIMEOUT)
                c.poll(0)
            # A group member: FindCoordinator, JoinGroup, SyncGroup, OffsetFetch, OffsetCommit, LeaveGroup.
            member = Consumer({"bootstrap.servers": bootstrap, "group.id": "cfk-versions-group",
                               "auto.offset.reset": "earliest", "enable.auto.commit": False,
                               "debug": "protocol", "logger": logger})
            try:
                member.subscribe([topic])
                got = poll_until(member, lambda m, _eofs: len(m) >= len(msgs))
                member.commit(asynchronous=False)
                [committed] = member.committed([TopicPartition(topic, 0)], timeout=TIMEOUT)
                expect_eq(committed.offset, got[-1].offset() + 1, "committed offset")
            finally:
                member.close()
        finally:
            logger.removeHandler(handler)
        used = {api: max(handler.sent.get(api, {-1})) for api in LIBRDKAFKA_NEWEST}
        print(f"    librdkafka {libversion()[0]} sent: " + ", ".join(
            f"{api} v{sorted(versions)}" for api, versions in sorted(handler.sent.items())))
        expect_eq(used, LIBRDKAFKA_NEWEST, "newest request version librdkafka sent per API")


def main(broker, R):
    bootstrap = broker.bootstrap
    check_admin_basics(bootstrap, R)
    check_negotiated_versions(bootstrap, R)
    check_configs(bootstrap, R)
    check_topic_rules(bootstrap, R)
    check_internal_topic(bootstrap, R)
    check_log_append_time(bootstrap, R)
    check_codecs(bootstrap, R)
    check_acks(bootstrap, R)
    check_auto_create(bootstrap, R)
    check_offsets(bootstrap, R)
    check_delete(bootstrap, R)
    check_durability(broker, R)
    check_idempotence(broker, R)


if __name__ == "__main__":
    run_suite("confluent", main)
