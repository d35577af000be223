#!/usr/bin/env python3
"""kafka-python compatibility checks against rafka.

KafkaConsumer uses group_id=None with assign()/seek() here; consumer groups
have their own suite (test_groups.py). The producer keeps kafka-python's
default, an idempotent producer (InitProducerId plus sequence numbers).
"""

import sys
import time
import uuid
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import (by_partition, expect, expect_eq, make_messages, run_suite,  # noqa: E402
                     wait_until)

import kafka.errors as Errors  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402
from kafka.admin import AlterConfigOp, ConfigResource, ConfigResourceType  # noqa: E402
from kafka.codec import has_gzip, has_lz4, has_snappy, has_zstd  # noqa: E402
from kafka.protocol.admin.cluster import DescribeClusterRequest  # noqa: E402
from kafka.protocol.admin.groups import DescribeGroupsRequest, ListGroupsRequest  # noqa: E402
from kafka.protocol.consumer.fetch import FetchRequest  # noqa: E402
from kafka.protocol.consumer.group import (JoinGroupRequest, LeaveGroupRequest, OffsetCommitRequest,  # noqa: E402
                                           OffsetFetchRequest)
from kafka.protocol.consumer.offsets import ListOffsetsRequest  # noqa: E402
from kafka.protocol.metadata import ApiVersionsRequest, FindCoordinatorRequest, MetadataRequest  # noqa: E402
from kafka.protocol.producer.produce import ProduceRequest  # noqa: E402
from kafka.protocol.producer.transaction import InitProducerIdRequest  # noqa: E402
from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder  # noqa: E402

TIMEOUT = 30  # seconds, for any single client operation
PARTITIONS = 3
PER_PARTITION = 40
CODECS = {"none": lambda: True, "gzip": has_gzip, "snappy": has_snappy, "lz4": has_lz4, "zstd": has_zstd}


def client_conf(bootstrap):
    return {"bootstrap_servers": bootstrap, "client_id": "rafka-compat", "request_timeout_ms": TIMEOUT * 1000}


def new_admin(bootstrap):
    return KafkaAdminClient(**client_conf(bootstrap))


def new_consumer(bootstrap):
    return KafkaConsumer(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                         **client_conf(bootstrap))


def topic_partitions(bootstrap, topic):
    """{partition: leader} for `topic` per Metadata, or None if it is not listed."""
    with closing(new_admin(bootstrap)) as admin:
        for t in admin.describe_topics([topic]):
            if t["name"] == topic and t["error_code"] == 0:
                return {p["partition_index"]: p["leader_id"] for p in t["partitions"]}
    return None


def create_topic(bootstrap, topic, partitions):
    with closing(new_admin(bootstrap)) as admin:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}},
                            timeout_ms=TIMEOUT * 1000, wait_for_metadata=True)
    got = topic_partitions(bootstrap, topic)
    expect_eq(sorted(got or {}), list(range(partitions)), f"partitions of {topic}")
    expect(all(leader >= 0 for leader in got.values()), f"partitions without leader: {got}")


def produce(bootstrap, topic, msgs, **conf):
    """Produce `msgs` to their explicit partitions; return their RecordMetadata in order."""
    producer = KafkaProducer(acks="all", linger_ms=5,
                             max_block_ms=TIMEOUT * 1000, **client_conf(bootstrap), **conf)
    try:
        futures = [producer.send(topic, key=m.key, value=m.value, headers=m.headers,
                                 partition=m.partition, timestamp_ms=m.ts) for m in msgs]
        producer.flush(timeout=TIMEOUT)
        return [f.get(timeout=TIMEOUT) for f in futures]
    finally:
        producer.close(timeout=5)


def check_delivered(metas, msgs, first_offset=0):
    expect_eq([md.partition for md in metas], [m.partition for m in msgs], "acked partitions")
    for p, mds in by_partition(metas, lambda md: md.partition).items():
        got = [md.offset for md in mds]
        expect_eq(got, list(range(first_offset, first_offset + len(got))), f"partition {p} acked offsets")


def poll_until(consumer, done, timeout=TIMEOUT):
    """Poll until done(records) holds; raise at the deadline."""
    records = []
    deadline = time.monotonic() + timeout
    while not done(records):
        if time.monotonic() > deadline:
            raise TimeoutError(f"consumer timed out with {len(records)} records")
        for recs in consumer.poll(timeout_ms=200).values():
            records.extend(recs)
    return records


def read_to_end(consumer, tps):
    """Read assigned `tps` from their current positions up to the end offsets taken now."""
    end = consumer.end_offsets(tps, timeout_ms=TIMEOUT * 1000)
    return poll_until(consumer, lambda _r: all(consumer.position(tp, timeout_ms=TIMEOUT * 1000) >= end[tp]
                                                       for tp in tps))


def verify(records, expected, first_offset=0):
    """Records match `expected` per partition: dense offsets, keys, values, headers, CreateTime timestamps."""
    got_by_p = by_partition(records, lambda r: r.partition)
    exp_by_p = by_partition(expected, lambda m: m.partition)
    expect_eq(sorted(got_by_p), sorted(exp_by_p), "partitions with data")
    for p, exp in exp_by_p.items():
        got = got_by_p[p]
        expect_eq([r.offset for r in got], list(range(first_offset, first_offset + len(exp))),
                  f"partition {p} offsets")
        for r, m in zip(got, exp):
            where = f"partition {p} offset {r.offset}"
            expect_eq(r.key, m.key, f"{where} key")
            expect_eq(r.value, m.value, f"{where} value")
            expect_eq(list(r.headers or []), m.headers, f"{where} headers")
            expect_eq((r.timestamp_type, r.timestamp), (0, m.ts), f"{where} (timestamp type, timestamp)")


# -- checks ------------------------------------------------------------------
def check_codecs(bootstrap, R):
    for codec, available in CODECS.items():
        if not available():
            print(f"[kafka-python] SKIP compression={codec}: codec library not installed")
            continue
        topic = f"kp-codec-{codec}"
        msgs = make_messages(codec, PARTITIONS, PER_PARTITION, null_header_values=False)
        with R.check(f"produce acks=all compression={codec}: acked at dense offsets"):
            create_topic(bootstrap, topic, PARTITIONS)
            metas = produce(bootstrap, topic, msgs, compression_type=None if codec == "none" else codec)
            check_delivered(metas, msgs)
        with R.check(f"consume compression={codec}: seek_to_beginning then seek to a middle offset"), \
                closing(new_consumer(bootstrap)) as c:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            c.assign(tps)
            c.seek_to_beginning()
            verify(read_to_end(c, tps), msgs)
            mid = PER_PARTITION // 2 + 1
            c.seek(tps[1], mid)
            verify(read_to_end(c, tps), [m for m in msgs if m.partition == 1][mid:], first_offset=mid)


def check_offsets(bootstrap, R):
    topic = "kp-codec-none"  # written by check_codecs
    msgs = by_partition(make_messages("none", PARTITIONS, PER_PARTITION, null_header_values=False),
                        lambda m: m.partition)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    with R.check("beginning_offsets / end_offsets"), closing(new_consumer(bootstrap)) as c:
        expect_eq(c.beginning_offsets(tps, timeout_ms=TIMEOUT * 1000), {tp: 0 for tp in tps}, "beginning_offsets")
        expect_eq(c.end_offsets(tps, timeout_ms=TIMEOUT * 1000), {tp: PER_PARTITION for tp in tps}, "end_offsets")

    with R.check("offsets_for_times (ListOffsets by timestamp)"), closing(new_consumer(bootstrap)) as c:
        tp, part = tps[2], msgs[2]
        cases = [(part[0].ts - 1, 0), (part[0].ts, 0), (part[7].ts, 7), (part[7].ts + 1, 8),
                 (part[-1].ts, PER_PARTITION - 1), (part[-1].ts + 1, None)]
        for ts, want in cases:
            got = c.offsets_for_times({tp: ts}, timeout_ms=TIMEOUT * 1000)[tp]
            if want is None:
                expect(got is None, f"timestamp {ts} after the last message: expected None, got {got}")
            else:
                expect(got is not None, f"timestamp {ts}: got None, expected offset {want}")
                expect_eq((got.offset, got.timestamp), (want, part[want].ts), f"offset/timestamp for {ts}")


def check_delete(bootstrap, R):
    with R.check("admin: delete_topics removes the topic from list_topics"), \
            closing(new_admin(bootstrap)) as admin:
        create_topic(bootstrap, "kp-delete-me", 2)
        expect("kp-delete-me" in admin.list_topics(), "created topic missing from list_topics")
        admin.delete_topics(["kp-delete-me"], timeout_ms=TIMEOUT * 1000)
        wait_until(lambda: "kp-delete-me" not in admin.list_topics(), TIMEOUT, interval=0.2,
                   what="kp-delete-me to disappear from list_topics")


def modified_configs(admin, topic):
    """describe_configs of `topic`, only the keys not at their default: {name: (value, source)}."""
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return {name: (c["value"], c["config_source"]) for name, c in described["topic"][topic].items()}


def alter(admin, topic, configs, **kwargs):
    """alter_configs of one topic; the broker's answer for it ('OK' or the error)."""
    result = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)], **kwargs)
    return result["topic"][topic]


def check_configs(bootstrap, R):
    topic = "kp-configs"
    with R.check("configs: alter_configs (AlterConfigs) sets overrides; describe_configs reports them "
                 "as DYNAMIC_TOPIC_CONFIG"), closing(new_admin(bootstrap)) as admin:
        create_topic(bootstrap, topic, 1)
        answer = alter(admin, topic, {"compression.type": "gzip", "min.insync.replicas": "2"}, incremental=False)
        expect_eq(answer, "OK", "AlterConfigs answer")
        expect_eq(modified_configs(admin, topic),
                  {"compression.type": ("gzip", "DYNAMIC_TOPIC_CONFIG"),
                   "min.insync.replicas": ("2", "DYNAMIC_TOPIC_CONFIG")}, "overrides")

    with R.check("configs: alter_configs (IncrementalAlterConfigs) SET and DELETE keep the other overrides"), \
            closing(new_admin(bootstrap)) as admin:
        answer = alter(admin, topic, {"cleanup.policy": "compact",
                                      "min.insync.replicas": (AlterConfigOp.DELETE, None)}, incremental=True)
        expect_eq(answer, "OK", "IncrementalAlterConfigs answer")
        expect_eq(modified_configs(admin, topic),
                  {"compression.type": ("gzip", "DYNAMIC_TOPIC_CONFIG"),
                   "cleanup.policy": ("compact", "DYNAMIC_TOPIC_CONFIG")}, "overrides")

    with R.check("configs: validate_only applies nothing; a bad value answers InvalidConfigurationError"), \
            closing(new_admin(bootstrap)) as admin:
        expect_eq(alter(admin, topic, {"compression.type": "lz4"}, validate_only=True), "OK", "validate_only answer")
        for incremental in (False, True):
            answer = alter(admin, topic, {"compression.type": "brotli"}, incremental=incremental)
            expect("InvalidConfigurationError" in answer, f"incremental={incremental}: {answer}")
        # raise_on_unknown=False sends an unknown name to the broker, which refuses it.
        answer = alter(admin, topic, {"dummy.doesntexist": "1"}, raise_on_unknown=False)
        expect("InvalidConfigurationError" in answer, f"unknown config: {answer}")
        expect_eq(modified_configs(admin, topic)["compression.type"], ("gzip", "DYNAMIC_TOPIC_CONFIG"),
                  "compression.type after refused changes")


def check_internal_topic(bootstrap, R):
    with R.check("internal topic: __consumer_offsets has is_internal=True in Metadata; delete_topics and "
                 "create_partitions of it fail with InvalidTopicError (17)"), closing(new_admin(bootstrap)) as admin:
        # Looking a group up (FindCoordinator) makes the broker create its offsets topic.
        admin.describe_groups(["kp-internal-probe"])
        wait_until(lambda: "__consumer_offsets" in admin.list_topics(), TIMEOUT, interval=0.2,
                   what="__consumer_offsets in list_topics")
        internal = {t["name"]: t["is_internal"] for t in admin.describe_topics(["__consumer_offsets", "kp-admin"])}
        expect_eq(internal, {"__consumer_offsets": True, "kp-admin": False}, "is_internal by topic")
        refused = []
        for what, call in [("delete_topics", lambda: admin.delete_topics(["__consumer_offsets"])),
                           ("create_partitions", lambda: admin.create_partitions({"__consumer_offsets": 4}))]:
            try:
                call()
            except Errors.InvalidTopicError:
                refused.append(what)
        expect_eq(refused, ["delete_topics", "create_partitions"], "refused changes of __consumer_offsets")
        [offsets] = admin.describe_topics(["__consumer_offsets"])
        expect_eq((offsets["error_code"], len(offsets["partitions"])), (0, 1), "__consumer_offsets afterwards")


def check_log_dirs(broker, R):
    bootstrap = broker.bootstrap
    with R.check("describe_log_dirs (DescribeLogDirs): the data dir with every partition and its size; "
                 "a topic filter narrows it"), closing(new_admin(bootstrap)) as admin:
        [answer] = admin.describe_log_dirs()
        [log_dir] = answer["log_dirs"]
        expect_eq((log_dir["error_code"], log_dir["log_dir"]), (0, str(broker.data_dir)), "log dir")
        sizes = {(t["name"], p["partition_index"]): p["partition_size"]
                 for t in log_dir["topics"] for p in t["partitions"]}
        expect({("kp-admin", p) for p in range(PARTITIONS)} <= set(sizes), f"kp-admin missing: {sorted(sizes)}")
        written = [sizes.get(("kp-codec-none", p), -1) for p in range(PARTITIONS)]
        expect(all(size > 0 for size in written), f"sizes of partitions holding records: {written}")
        if "total_bytes" in log_dir:  # v4
            expect(log_dir["total_bytes"] >= log_dir["usable_bytes"] > 0, f"volume space {log_dir}")
        [narrowed] = admin.describe_log_dirs(topic_partitions={"kp-codec-none": [1]})
        topics = [(t["name"], [p["partition_index"] for p in t["partitions"]])
                  for d in narrowed["log_dirs"] for t in d["topics"]]
        expect_eq(topics, [("kp-codec-none", [1])], "filtered answer")


# The broker's newest version of each API (src/protocol/<api>.rs), every one what kafka-protocol 0.18 knows.
BROKER_NEWEST = {ProduceRequest: 13, FetchRequest: 18, ListOffsetsRequest: 10, MetadataRequest: 13,
                 OffsetCommitRequest: 9, OffsetFetchRequest: 9, FindCoordinatorRequest: 6, JoinGroupRequest: 8,
                 LeaveGroupRequest: 5, ListGroupsRequest: 5, DescribeGroupsRequest: 6, InitProducerIdRequest: 5,
                 DescribeClusterRequest: 2, ApiVersionsRequest: 4}


def check_negotiated_versions(bootstrap, R):
    with R.check("ApiVersions: kafka-python settles on the newest version both sides know of each API"), \
            closing(new_admin(bootstrap)) as admin:
        negotiated = admin._manager.broker_version_data  # what ApiVersions told it
        got = {request.__name__: negotiated.api_version(request) for request in BROKER_NEWEST}
        expected = {request.__name__: min(newest, request.max_version) for request, newest in BROKER_NEWEST.items()}
        print("    kafka-python negotiated: " + ", ".join(f"{k} v{v}" for k, v in got.items()))
        expect_eq(got, expected, "negotiated versions")


UNKNOWN_TOPIC_ID = 100


def send(admin, request):
    """One request through kafka-python's own connection and codec; its decoded answer."""
    return admin._manager.run(admin._manager.send, request)


def only(request_class, version, **fields):
    return request_class(**fields, min_version=version, max_version=version)


def check_topic_ids(bootstrap, R):
    """kafka-python's producer and fetcher stop at Produce v9 and Fetch v12, but its codec knows the
    newest versions: it sends them here, naming the topic by the id Metadata v13 gave."""
    with R.check("kafka-python's codec: Metadata v13 gives the topic id; Produce v13 and Fetch v18 name the "
                 "topic by it; an unknown id is UNKNOWN_TOPIC_ID (100)"), closing(new_admin(bootstrap)) as admin:
        create_topic(bootstrap, "kp-ids", 1)
        topic = MetadataRequest.MetadataRequestTopic(name="kp-ids")
        answer = send(admin, only(MetadataRequest, 13, topics=[topic], allow_auto_topic_creation=False))
        [described] = answer.topics
        expect_eq((answer.API_VERSION, answer.error_code, described.error_code), (13, 0, 0), "Metadata v13 answer")
        topic_id = described.topic_id
        builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
        for i in range(3):
            builder.append(timestamp=1_700_000_000_000 + i, key=b"k", value=b"v%d" % i)
        builder.close()

        def produce_by_id(topic_id):
            data = ProduceRequest.TopicProduceData
            partition = data.PartitionProduceData(index=0, records=builder.buffer())
            answer = send(admin, only(ProduceRequest, 13, transactional_id=None, acks=-1, timeout_ms=TIMEOUT * 1000,
                                      topic_data=[data(topic_id=topic_id, partition_data=[partition])]))
            [topic] = answer.responses
            [partition] = topic.partition_responses
            return topic.topic_id, partition.error_code, partition.base_offset

        def fetch_by_id(topic_id):
            fetched = FetchRequest.FetchTopic
            partition = fetched.FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=1 << 20)
            answer = send(admin, only(FetchRequest, 18, max_wait_ms=0, min_bytes=0, max_bytes=1 << 20,
                                      isolation_level=0, session_id=0, session_epoch=-1,
                                      topics=[fetched(topic_id=topic_id, partitions=[partition])],
                                      forgotten_topics_data=[], rack_id=""))
            [topic] = answer.responses
            [partition] = topic.partitions
            return topic.topic_id, partition

        expect_eq(produce_by_id(topic_id), (topic_id, 0, 0), "Produce v13 by id: (topic id, error, base offset)")
        got_id, partition = fetch_by_id(topic_id)
        expect_eq((got_id, partition.error_code, partition.high_watermark), (topic_id, 0, 3), "Fetch v18 by id")
        records = MemoryRecords(partition.records)
        values = []
        while records.has_next():
            values.extend(record.value for record in records.next_batch())
        expect_eq(values, [b"v0", b"v1", b"v2"], "values fetched by topic id")
        unknown = uuid.uuid4()
        expect_eq(produce_by_id(unknown)[:2], (unknown, UNKNOWN_TOPIC_ID), "Produce v13 to an unknown id")
        got_id, partition = fetch_by_id(unknown)
        expect_eq((got_id, partition.error_code), (unknown, UNKNOWN_TOPIC_ID), "Fetch v18 of an unknown id")


def main(broker, R):
    with R.check("admin: create topic with 3 partitions, describe_topics shows them with leaders"):
        create_topic(broker.bootstrap, "kp-admin", PARTITIONS)
    check_negotiated_versions(broker.bootstrap, R)
    check_topic_ids(broker.bootstrap, R)
    check_configs(broker.bootstrap, R)
    check_internal_topic(broker.bootstrap, R)
    check_codecs(broker.bootstrap, R)
    check_log_dirs(broker, R)
    check_offsets(broker.bootstrap, R)
    check_delete(broker.bootstrap, R)


if __name__ == "__main__":
    run_suite("kafka-python", main)
