#!/usr/bin/env python3
"""`__consumer_offsets` as Kafka records: what a consumer-lag tool reading the topic sees.

A confluent-kafka group commits offsets; then kcat consumes `__consumer_offsets` from the
beginning (CRCs checked) and a decoder written from Kafka's OffsetCommit / GroupMetadata key and
value schemas finds the group's commits exactly as OffsetFetch answers them; kafka-python's
KafkaConsumer (exclude_internal_topics=False) reads and decodes the same records. ListOffsets
(earliest, latest, by time) agrees with what was read. After a graceful restart and after
kill -9, the records and OffsetFetch still agree and new commits continue the offsets densely.
OffsetDelete and DeleteGroups write tombstones for exactly the keys they remove. Compaction by
restatement moves the log start past superseded records while every live key stays readable. In a
three-node cluster, the records and OffsetFetch still agree after kill -9 of the coordinator.
"""

import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
from harness import expect, expect_eq, run_suite, wait_until  # noqa: E402
from cluster import Cluster  # noqa: E402

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer  # noqa: E402
from kafka import TopicPartition as KpTopicPartition  # noqa: E402

SUITE = "offsets-records"
OFFSETS_TOPIC = "__consumer_offsets"
TIMEOUT = 30
TOPIC = "lagged"
PARTITIONS = 3
GROUP = "lag-tool-group"
# Compaction threshold for this suite's broker: above what the checks before check_compaction
# supersede (about 20 records), so only that check's commits trigger a restatement.
COMPACTION_MIN_RECORDS = 40
BUSY_COMMITS = COMPACTION_MIN_RECORDS + 10


# -- Kafka's __consumer_offsets schemas, decoded independently of the broker -------------
class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n):
        expect(self.pos + n <= len(self.data), f"record field runs past the end ({self.pos}+{n})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def i16(self):
        return struct.unpack(">h", self.take(2))[0]

    def i32(self):
        return struct.unpack(">i", self.take(4))[0]

    def i64(self):
        return struct.unpack(">q", self.take(8))[0]

    def string(self, nullable=False):
        n = self.i16()
        if n < 0:
            expect(nullable, "a null non-nullable string")
            return None
        return self.take(n).decode()

    def bytes_(self):
        n = self.i32()
        return None if n < 0 else self.take(n)

    def done(self):
        expect_eq(self.pos, len(self.data), "bytes decoded")


def decode_key(raw):
    """('offset', group, topic, partition) or ('group', group)."""
    r = Reader(raw)
    version = r.i16()
    if version in (0, 1):
        key = ("offset", r.string(), r.string(), r.i32())
    elif version == 2:
        key = ("group", r.string())
    else:
        raise AssertionError(f"unknown key version {version}")
    r.done()
    return key


def decode_offset_value(raw):
    r = Reader(raw)
    version = r.i16()
    expect(0 <= version <= 3, f"offset commit value version {version}")
    offset = r.i64()
    leader_epoch = r.i32() if version >= 3 else -1
    metadata = r.string()
    commit_ts = r.i64()
    if version == 1:
        r.i64()  # expire timestamp
    r.done()
    return {"offset": offset, "leader_epoch": leader_epoch, "metadata": metadata, "commit_ts": commit_ts}


def decode_group_value(raw):
    r = Reader(raw)
    version = r.i16()
    expect(0 <= version <= 3, f"group metadata value version {version}")
    value = {"protocol_type": r.string(), "generation": r.i32(), "protocol": r.string(nullable=True),
             "leader": r.string(nullable=True)}
    value["state_ts"] = r.i64() if version >= 2 else -1
    members = []
    for _ in range(r.i32()):
        member = {"member_id": r.string()}
        member["instance_id"] = r.string(nullable=True) if version >= 3 else None
        member["client_id"], member["client_host"] = r.string(), r.string()
        member["rebalance_timeout"] = r.i32() if version >= 1 else -1
        member["session_timeout"] = r.i32()
        member["subscription"], member["assignment"] = r.bytes_(), r.bytes_()
        members.append(member)
    value["members"] = members
    r.done()
    return value


def decode(records):
    """[(partition, offset, timestamp, key, value)] -> [(partition, offset, timestamp, key, decoded value or None)]."""
    out = []
    for partition, offset, ts, key, value in records:
        decoded_key = decode_key(key)
        if value is None:
            decoded = None
        elif decoded_key[0] == "offset":
            decoded = decode_offset_value(value)
        else:
            decoded = decode_group_value(value)
        out.append((partition, offset, ts, decoded_key, decoded))
    return out


def latest(decoded):
    """What compaction would keep: the last value of each key, tombstoned keys dropped."""
    state = {}
    for _, _, _, key, value in sorted(decoded, key=lambda r: (r[0], r[1])):
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
    return state


def group_offsets(state, group):
    return {(k[2], k[3]): v["offset"] for k, v in state.items() if k[0] == "offset" and k[1] == group}


# -- readers --------------------------------------------------------------------
def read_with_kcat(bootstrap):
    """Every record of __consumer_offsets from the beginning, through kcat with CRC checks.

    Each record is a header line `partition offset timestamp keylen valuelen` followed by the raw
    key and value bytes (lengths -1 for null), so binary keys need no escaping.
    """
    out = subprocess.run(
        ["kcat", "-C", "-b", bootstrap, "-t", OFFSETS_TOPIC, "-o", "beginning", "-e", "-q",
         "-X", "check.crcs=true", "-f", "%p %o %T %K %S\n%k%s"],
        capture_output=True, timeout=TIMEOUT)
    expect_eq(out.returncode, 0, f"kcat exit code (stderr: {out.stderr.decode(errors='replace')[-500:]})")
    data, pos, records = out.stdout, 0, []
    while pos < len(data):
        end = data.index(b"\n", pos)
        partition, offset, ts, key_len, value_len = (int(x) for x in data[pos:end].split())
        pos = end + 1
        key = data[pos:pos + max(key_len, 0)] if key_len >= 0 else None
        pos += max(key_len, 0)
        value = data[pos:pos + value_len] if value_len >= 0 else None
        pos += max(value_len, 0)
        records.append((partition, offset, ts, key, value))
    return records


def read_with_kafka_python(bootstrap):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, exclude_internal_topics=False, check_crcs=True,
                             enable_auto_commit=False, consumer_timeout_ms=1000, request_timeout_ms=20000)
    try:
        partitions = wait_until(lambda: consumer.partitions_for_topic(OFFSETS_TOPIC), TIMEOUT,
                                what="__consumer_offsets in kafka-python's metadata")
        tps = [KpTopicPartition(OFFSETS_TOPIC, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records = []
        deadline = time.monotonic() + TIMEOUT
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            expect(time.monotonic() < deadline, f"kafka-python stopped before the end offsets {ends}")
            for batch in consumer.poll(timeout_ms=500).values():
                records += [(m.partition, m.offset, m.timestamp, m.key, m.value) for m in batch]
        return records, {tp.partition: end for tp, end in ends.items()}
    finally:
        consumer.close()


def list_offsets(bootstrap, spec):
    """{partition: offset} of __consumer_offsets at OffsetSpec `spec` (earliest, latest, or a timestamp)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused-by-list-offsets"})
    try:
        meta = consumer.list_topics(OFFSETS_TOPIC, timeout=TIMEOUT).topics[OFFSETS_TOPIC]
        if spec in ("earliest", "latest"):
            return {p: consumer.get_watermark_offsets(TopicPartition(OFFSETS_TOPIC, p), timeout=TIMEOUT)
                    [0 if spec == "earliest" else 1] for p in meta.partitions}
        found = consumer.offsets_for_times([TopicPartition(OFFSETS_TOPIC, p, spec) for p in meta.partitions],
                                           timeout=TIMEOUT)
        return {tp.partition: tp.offset for tp in found}
    finally:
        consumer.close()


# -- the group ----------------------------------------------------------------------
def create_and_fill(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)])[TOPIC].result(TIMEOUT)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(60):
        producer.produce(TOPIC, value=f"v{i}".encode(), partition=i % PARTITIONS)
    expect_eq(producer.flush(TIMEOUT), 0, "undelivered messages")


def committed(bootstrap, group):
    """OffsetFetch through confluent-kafka: {(topic, partition): offset} (only committed ones)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=TIMEOUT)
        return {(tp.topic, tp.partition): tp.offset for tp in tps if tp.offset >= 0}
    finally:
        consumer.close()


def commit_as_member(bootstrap, group, offsets):
    """Join `group` by subscribe(), wait for the assignment, commit {partition: offset}, leave."""
    assigned = []
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "client.id": "lag-tool-test", "session.timeout.ms": 10000})
    try:
        consumer.subscribe([TOPIC], on_assign=lambda _c, parts: assigned.extend(parts))
        deadline = time.monotonic() + TIMEOUT
        while len(assigned) < PARTITIONS:
            expect(time.monotonic() < deadline, f"no full assignment within {TIMEOUT}s: {assigned}")
            consumer.poll(0.2)
        consumer.commit(offsets=[TopicPartition(TOPIC, p, o, metadata=f"m{p}") for p, o in offsets.items()],
                        asynchronous=False)
    finally:
        consumer.close()


def check_agreement(bootstrap, decoded, what):
    """The records' view of GROUP equals OffsetFetch's."""
    from_records = {k: v for k, v in group_offsets(latest(decoded), GROUP).items()}
    expect_eq(from_records, committed(bootstrap, GROUP), f"{what}: records vs OffsetFetch")


def added(before, after):
    """The records of `after` (decoded) that `before` (decoded) did not have, in order."""
    seen = {(r[0], r[1]) for r in before}
    return [r for r in after if (r[0], r[1]) not in seen]


def wait_records(bootstrap, predicate, what):
    return wait_until(lambda: (lambda d: predicate(d) and d)(decode(read_with_kcat(bootstrap))), TIMEOUT,
                      interval=0.2, what=what)


def main(broker, R):
    bs = broker.bootstrap
    first = {0: 5, 1: 11, 2: 17}
    started_ms = int(time.time() * 1000)
    with R.check("a confluent-kafka group commits; the records say exactly what OffsetFetch says"):
        create_and_fill(bs)
        commit_as_member(bs, GROUP, first)
        expect_eq(committed(bs, GROUP), {(TOPIC, p): o for p, o in first.items()}, "OffsetFetch")
        decoded = wait_records(bs, lambda d: group_offsets(latest(d), GROUP), "the group's commit records")
        check_agreement(bs, decoded, "kcat")
        values = [v for _, _, _, k, v in decoded if k[0] == "offset" and k[1] == GROUP]
        # librdkafka sends commit metadata with its C string's NUL terminator; the record keeps
        # exactly what was committed (OffsetFetch returns it too; the C client cuts it at the NUL).
        metadata = {key[3]: v["metadata"] for (_, _, _, key, v) in decoded if key[0] == "offset" and key[1] == GROUP}
        expect_eq(metadata, {p: f"m{p}\0" for p in first}, "commit metadata in the values")
        expect(all(v["commit_ts"] >= started_ms - 1000 for v in values), f"commit timestamps {values}")

    with R.check("GroupMetadata records: the generation with its member, then the group left empty"):
        groups = [(o, v) for _, o, _, k, v in decoded if k == ("group", GROUP)]
        expect(groups, "no GroupMetadata record for the group")
        with_member = [v for _, v in groups if v and v["members"]]
        expect(with_member, f"no GroupMetadata with members: {groups}")
        member = with_member[-1]["members"][0]
        expect_eq((with_member[-1]["protocol_type"], member["client_id"], member["session_timeout"]),
                  ("consumer", "lag-tool-test", 10000), "protocol type, client id, session timeout")
        expect(len(member["assignment"]) > 0, "the leader's assignment is recorded")
        last = wait_records(bs, lambda d: [v for _, _, _, k, v in d if k == ("group", GROUP)][-1]["members"] == [],
                            "GroupMetadata of the emptied group")
        last_group = [v for _, _, _, k, v in last if k == ("group", GROUP)][-1]
        expect(last_group["generation"] > with_member[-1]["generation"], "the empty generation comes later")

    with R.check("offsets are dense from 0, timestamps are the commit timestamps, ListOffsets agrees"):
        records = read_with_kcat(bs)
        by_partition = {}
        for p, o, ts, _, _ in records:
            by_partition.setdefault(p, []).append(o)
        for p, offsets in by_partition.items():
            expect_eq(offsets, list(range(len(offsets))), f"offsets of partition {p}")
        expect_eq(list_offsets(bs, "earliest"), {p: 0 for p in list_offsets(bs, "earliest")}, "earliest")
        latest_offsets = list_offsets(bs, "latest")
        expect_eq({p: o for p, o in latest_offsets.items() if o}, {p: len(o) for p, o in by_partition.items()},
                  "latest offsets = records read")
        commits = [(p, o, ts) for p, o, ts, k, v in decode(records) if k[0] == "offset" and k[1] == GROUP]
        p, o, ts = commits[0]
        expect_eq(list_offsets(bs, ts)[p], o, "ListOffsets by the first commit's timestamp")
        for (p, o, ts), (_, _, _, _, v) in zip(commits, [r for r in decode(records)
                                                         if r[3][0] == "offset" and r[3][1] == GROUP]):
            expect_eq(ts, v["commit_ts"], "record timestamp = commit timestamp")

    with R.check("kafka-python's KafkaConsumer reads and decodes the same records"):
        kp_records, ends = read_with_kafka_python(bs)
        kcat_records = read_with_kcat(bs)
        expect_eq(sorted(kp_records, key=lambda r: (r[0], r[1])),
                  sorted(kcat_records, key=lambda r: (r[0], r[1])), "kafka-python vs kcat records")
        check_agreement(bs, decode(kp_records), "kafka-python")

    second = {0: 20, 1: 21}
    for how in ("restart", "kill9"):
        with R.check(f"after a {how}, the records and OffsetFetch agree and offsets continue densely"):
            before = read_with_kcat(bs)
            getattr(broker, how)()
            after = wait_until(lambda: (lambda r: len(r) >= len(before) and r)(read_with_kcat(bs)), TIMEOUT,
                               interval=0.2, what="the records after the restart")
            expect_eq(after[:len(before)], before, "records kept across the restart")
            check_agreement(bs, decode(after), how)
            second = {p: o + 1 for p, o in second.items()}
            commit_as_member(bs, GROUP, second)
            later = decode(read_with_kcat(bs))
            by_partition = {}
            for p, o, _, _, _ in later:
                by_partition.setdefault(p, []).append(o)
            expect(all(o == list(range(len(o))) for o in by_partition.values()), "offsets dense")
            check_agreement(bs, later, f"commit after the {how}")
            expect_eq(group_offsets(latest(later), GROUP)[(TOPIC, 0)], second[0], "the new commit is the latest")

    with R.check("OffsetDelete writes a tombstone for the deleted offset only"):
        before = decode(read_with_kcat(bs))
        admin = KafkaAdminClient(bootstrap_servers=bs)
        try:
            admin.delete_group_offsets(GROUP, [KpTopicPartition(TOPIC, 1)])
        finally:
            admin.close()
        decoded = decode(read_with_kcat(bs))
        new = [(k, v) for _, _, _, k, v in added(before, decoded)]
        expect_eq(new, [(("offset", GROUP, TOPIC, 1), None)], "records written by OffsetDelete")
        check_agreement(bs, decoded, "after OffsetDelete")

    with R.check("DeleteGroups writes tombstones for every offset of the group and its metadata"):
        before = decode(read_with_kcat(bs))
        admin = AdminClient({"bootstrap.servers": bs})
        admin.delete_consumer_groups([GROUP], request_timeout=TIMEOUT)[GROUP].result(TIMEOUT)
        decoded = decode(read_with_kcat(bs))
        new = sorted((k, v is None) for _, _, _, k, v in added(before, decoded))
        expected = sorted([(("offset", GROUP, TOPIC, p), True) for p in (0, 2)] + [(("group", GROUP), True)])
        expect_eq(new, expected, "records written by DeleteGroups (all tombstones)")
        expect_eq(group_offsets(latest(decoded), GROUP), {}, "nothing left of the group in the records")
        expect_eq(committed(bs, GROUP), {}, "nothing left of the group in OffsetFetch")

    check_compaction(bs, R)
    check_coordinator_failover(R)
    check_follower_install(R)


def check_compaction(bs, R):
    """Runs last: the threshold below is reached only by its own commits."""
    with R.check("compaction: superseded records go, every live key is restated, a reader below resets"):
        commit_standalone(bs, "idle-group", [(0, 3)])
        commit_standalone(bs, "busy-group", [(i % PARTITIONS, i) for i in range(BUSY_COMMITS)])
        earliest = wait_until(lambda: list_offsets(bs, "earliest")[0] or None, TIMEOUT, interval=0.2,
                              what="the log start to move past the superseded records")
        records = read_with_kcat(bs)
        expect_eq(records[0][1], earliest, "kcat from the beginning starts at the log start")
        state = latest(decode(records))
        for group in ("idle-group", "busy-group"):
            expect_eq({k: v for k, v in group_offsets(state, group).items()}, committed(bs, group),
                      f"{group}: restated records vs OffsetFetch")
        expect_eq(group_offsets(state, "idle-group"), {(TOPIC, 0): 3}, "the idle group is still in the topic")
        expect_eq(group_offsets(state, GROUP), {}, "the deleted group stays deleted")
        # The pass may restate in the middle of the burst (it runs every 300 ms), and the commits after
        # it stay until enough of them are superseded again; the ones before it are gone.
        busy_records = sum(1 for _, _, _, k, _ in decode(records) if k[1] == "busy-group")
        expect(PARTITIONS <= busy_records < BUSY_COMMITS,
               f"{busy_records} busy-group records of {BUSY_COMMITS} commits: the superseded ones went")
        consumer = KafkaConsumer(bootstrap_servers=bs, exclude_internal_topics=False, auto_offset_reset="earliest",
                                 enable_auto_commit=False, request_timeout_ms=20000)
        try:
            tp = KpTopicPartition(OFFSETS_TOPIC, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            first = wait_until(lambda: [m for batch in consumer.poll(timeout_ms=500).values() for m in batch],
                               TIMEOUT, interval=0, what="records after the reset")
            expect_eq(first[0].offset, earliest, "a reader below the log start resets to it")
        finally:
            consumer.close()


def check_coordinator_failover(R):
    """Three nodes: the coordinator is killed; its successor's records and OffsetFetch agree."""
    with R.check("3 nodes: after kill -9 of the coordinator, records and OffsetFetch agree on its successor",
                 timeout=240):
        with Cluster(size=3, name="offsets-records", settings={"offsets_topic_partitions": 3}) as cluster:
            bs = cluster.bootstrap()
            cluster.create_topic(TOPIC, PARTITIONS)
            commit_as_member(bs, GROUP, {0: 7, 1: 8, 2: 9})
            commit_standalone(bs, GROUP, [(0, 10)])
            admin = AdminClient({"bootstrap.servers": bs})
            coordinator = admin.describe_consumer_groups([GROUP], request_timeout=TIMEOUT)[GROUP] \
                .result(TIMEOUT).coordinator.id
            before = read_with_kcat(bs)
            check_agreement(bs, decode(before), "before the kill")
            cluster.kill9(coordinator)
            survivors = cluster.bootstrap([i for i in cluster.ids if i != coordinator])
            after = wait_until(lambda: (lambda r: set(before) <= set(r) and r)(read_with_kcat(survivors)), 60,
                               interval=0.5, what="every record on the new coordinator")
            check_agreement(survivors, decode(after), "after the kill")
            commit_standalone(survivors, GROUP, [(1, 20)])
            later = decode(read_with_kcat(survivors))
            check_agreement(survivors, later, "a commit to the new coordinator")
            expect_eq(group_offsets(latest(later), GROUP)[(TOPIC, 1)], 20, "the new commit is the latest")
            cluster.start(coordinator)
            cluster.wait_replicas_agree(OFFSETS_TOPIC)


def check_follower_install(R):
    """Three nodes: a follower away while the offsets log was compacted and freed gets the groups
    from a checkpoint snapshot, and then agrees with the others (records and groups)."""
    with R.check("3 nodes: a follower back after the offsets log was freed installs the groups from a "
                 "checkpoint", timeout=240):
        settings = {"offsets_topic_partitions": 1, "log_segment_bytes": 4096,
                    "offsets_compaction_min_records": 20, "log_retention_check_interval_ms": 300}
        with Cluster(size=3, name="offsets-install", settings=settings) as cluster:
            bs = cluster.bootstrap()
            cluster.create_topic(TOPIC, PARTITIONS)
            commit_standalone(bs, "early", [(0, 1)])
            coordinator = wait_until(lambda: (lambda leader: leader >= 0 and leader)(
                cluster.leader_of(OFFSETS_TOPIC, 0)), TIMEOUT, what="the offsets partition's leader")
            away = next(i for i in cluster.ids if i != coordinator)
            cluster.stop(away)
            present = cluster.bootstrap([i for i in cluster.ids if i != away])
            commit_standalone(present, "busy", [(i % PARTITIONS, i) for i in range(200)])
            wait_until(lambda: list_offsets(present, "earliest")[0] > 100, TIMEOUT, interval=0.2,
                       what="compaction to move the log start")
            wait_until(lambda: "snapshot built" in cluster.nodes[coordinator].log_since_last_start(), TIMEOUT,
                       interval=0.2, what="the coordinator to snapshot its offsets partition")
            cluster.start(away)
            wait_until(lambda: "snapshot installed" in cluster.nodes[away].log_since_last_start(), 60,
                       interval=0.2, what="the returning follower to install a snapshot")
            cluster.wait_replicas_agree(OFFSETS_TOPIC)
            state = latest(decode(read_with_kcat(bs)))
            for group in ("early", "busy"):
                expect_eq(group_offsets(state, group), committed(bs, group), f"{group}: records vs OffsetFetch")


def commit_standalone(bootstrap, group, commits):
    """Commit each (partition, offset) in turn as an assign() consumer (no group membership)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
        for partition, offset in commits:
            consumer.commit(offsets=[TopicPartition(TOPIC, partition, offset)], asynchronous=False)
    finally:
        consumer.close()


if __name__ == "__main__":
    run_suite(SUITE, main, extra_env={
        "RAFKA_OFFSETS_COMPACTION_MIN_RECORDS": str(COMPACTION_MIN_RECORDS),
        "RAFKA_LOG_RETENTION_CHECK_INTERVAL_MS": "300"})
