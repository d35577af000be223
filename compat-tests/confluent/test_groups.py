#!/usr/bin/env python3
"""confluent-kafka (librdkafka) consumer-group checks against rafka.

Group members are Consumers with subscribe() and enable.auto.commit=False, each polling in its
own thread and committing synchronously after every processed batch (and from on_revoke).
Checks: assignment across 3 members, exactly-once consumption across members, a member leaving
and one joining (timed from subscribe() to every member holding its new assignment),
cooperative-sticky, committing from on_revoke during an eager rebalance, `rafka groups` lag,
AdminClient list/describe/delete of groups, resuming from committed offsets after a graceful
restart and after kill -9, and static membership (group.instance.id) across a member restart.
"""

import concurrent.futures
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import expect, expect_eq, run_suite, wait_until  # noqa: E402
from group_helpers import (ALL, PARTITIONS, SEQ, TIMEOUT, MemberView, Members, broker_env,  # noqa: E402
                           check_exactly_once, consumed, produce_and_check, timer, wait_balanced,
                           wait_consumed)

from confluent_kafka import (ConsumerGroupTopicPartitions, Consumer, KafkaError,  # noqa: E402
                             KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SUITE = "confluent-groups"
MEMBER_CONF = {"session.timeout.ms": 10000, "heartbeat.interval.ms": 1000}
timing = timer(SUITE)


# -- admin and produce ----------------------------------------------------------
def admin_call(bootstrap, method, *args, key=None, **kwargs):
    """Run AdminClient.<method> and wait for its result (the client must outlive its futures)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = getattr(admin, method)(*args, request_timeout=TIMEOUT, **kwargs)
    try:
        return (futures if key is None else futures[key]).result(timeout=TIMEOUT + 5)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"AdminClient.{method} returned no result within {TIMEOUT + 5}s") from None


def create_topic(bootstrap, topic):
    admin_call(bootstrap, "create_topics", [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)],
               key=topic, operation_timeout=TIMEOUT)
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def ready():
        md = admin.list_topics(timeout=5).topics.get(topic)
        return md is not None and md.error is None and len(md.partitions) == PARTITIONS \
            and all(pm.leader >= 0 for pm in md.partitions.values())

    wait_until(ready, TIMEOUT, interval=0.2, what=f"topic {topic} with {PARTITIONS} partitions")


def produce(bootstrap, topic, count, tag):
    """Produce `count` keyed messages round-robin over the partitions with acks=all.

    Returns {(partition, offset): (key, value)} from the delivery reports.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "enable.idempotence": False, "message.timeout.ms": TIMEOUT * 1000})
    acked, errors = {}, []

    def on_delivery(err, m):
        if err is not None:
            errors.append(err)
        else:
            acked[(m.partition(), m.offset())] = (m.key(), m.value())

    for i in range(count):
        producer.produce(topic, key=f"{tag}-k{i}".encode(), value=f"{tag}-v{i}".encode(),
                         partition=i % PARTITIONS, on_delivery=on_delivery)
        producer.poll(0)
    expect_eq(producer.flush(TIMEOUT), 0, "messages still undelivered after flush")
    expect(not errors and len(acked) == count, f"{len(errors)} failed deliveries, first: {errors[:3]}")
    return acked


def end_offsets(bootstrap, topic):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "rafka-groups-watermarks"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT)[1] for p in ALL}
    finally:
        c.close()


def committed(bootstrap, group, topic):
    """{partition: committed offset} per AdminClient.list_consumer_group_offsets (OffsetFetch)."""
    res = admin_call(bootstrap, "list_consumer_group_offsets", [ConsumerGroupTopicPartitions(group)], key=group)
    return {tp.partition: tp.offset for tp in res.topic_partitions if tp.topic == topic and tp.offset >= 0}


def wait_committed_to_end(bootstrap, group, topic):
    ends = end_offsets(bootstrap, topic)
    wait_until(lambda: committed(bootstrap, group, topic) == ends, TIMEOUT, interval=0.2,
               what=f"group {group} committed offsets == end offsets {ends}")
    return ends


def rafka_groups(broker):
    """Rows of `rafka groups`: dicts with group, state, partition, member, committed, end, lag."""
    out = subprocess.run([broker.binary, "groups", "--bootstrap", broker.bootstrap], capture_output=True,
                         text=True, timeout=TIMEOUT, check=True).stdout.splitlines()
    expect(out and out[0].split() == ["GROUP", "STATE", "TOPIC-PARTITION", "MEMBER", "CLIENT", "COMMITTED",
                                      "END", "LAG"], f"unexpected header: {out[:1]}")
    rows = []
    for line in out[1:]:
        f = line.split()
        topic, _, part = f[2].rpartition("-")
        rows.append({"group": f[0], "state": f[1], "topic": topic, "partition": int(part),
                     "member": f[3] if len(f) == 8 else "", "committed": int(f[-3]), "end": int(f[-2]),
                     "lag": f[-1]})
    return rows


def group_rows(broker, group):
    return sorted((r for r in rafka_groups(broker) if r["group"] == group), key=lambda r: r["partition"])


# -- group members ----------------------------------------------------------------
class Member(MemberView):
    """A subscribed Consumer polling in its own thread.

    commit="batch": commit every processed batch synchronously (and pending offsets from on_revoke).
    commit="revoke": commit only from on_revoke (which close() also triggers).
    """

    def __init__(self, name, bootstrap, group, topic, commit="batch", **conf):
        self.name, self.topic, self.commit_mode = name, topic, commit
        self.conf = {"bootstrap.servers": bootstrap, "group.id": group, "client.id": name,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "enable.partition.eof": True, **MEMBER_CONF, **conf}
        self.lock = threading.Lock()
        self.records = []          # (seq, partition, offset, key, value)
        self.assignment = set()
        self.eof = set()
        self.revoked = []          # lists of partitions revoked, per callback
        self.pending = {}          # partition -> next offset to commit (processed, not committed)
        self.commit_errors = []
        self.errors = []
        self.subscribed_at = None
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()
        wait_until(lambda: self.subscribed_at or self.done.is_set(), TIMEOUT, what=f"{name} subscribe()")

    # thread body
    def _run(self):
        consumer = None
        try:
            consumer = Consumer(self.conf)
            self.subscribed_at = time.monotonic()
            consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
            while not self.stopping.is_set():
                for m in consumer.consume(num_messages=100, timeout=0.1):
                    self._handle(m)
                if self.pending and self.commit_mode == "batch":
                    self._commit(consumer, list(self.pending))
        except Exception:  # noqa: BLE001 - reported by the checks
            self.errors.append(traceback.format_exc(limit=3))
        finally:
            if consumer is not None:
                try:
                    consumer.close()  # leaves the group (LeaveGroup)
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(f"close: {exc!r}")
            self.done.set()

    def _handle(self, m):
        if m.error() is not None:
            if m.error().code() == KafkaError._PARTITION_EOF:
                with self.lock:
                    self.eof.add(m.partition())
            else:
                self.errors.append(f"consume error: {m.error()}")
            return
        with self.lock:
            self.records.append((next(SEQ), m.partition(), m.offset(), m.key(), m.value()))
            self.eof.discard(m.partition())
        self.pending[m.partition()] = m.offset() + 1

    def _commit(self, consumer, partitions):
        offsets = [TopicPartition(self.topic, p, self.pending[p]) for p in partitions if p in self.pending]
        if not offsets:
            return
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
            bad = [f"{tp.partition}:{tp.error}" for tp in result or [] if tp.error is not None]
            if bad:
                self.commit_errors.append(f"partition errors {bad}")
                return
        except KafkaException as exc:
            self.commit_errors.append(str(exc.args[0]))
            return
        for tp in offsets:
            if self.pending.get(tp.partition) == tp.offset:
                del self.pending[tp.partition]

    def _on_assign(self, _consumer, partitions):
        with self.lock:
            self.assignment |= {tp.partition for tp in partitions}

    def _on_revoke(self, consumer, partitions):
        gone = {tp.partition for tp in partitions}
        self._commit(consumer, sorted(gone))
        self._drop(gone, revoked=True)

    def _on_lost(self, _consumer, partitions):
        self._drop({tp.partition for tp in partitions})

    def _drop(self, gone, revoked=False):
        for p in gone:
            self.pending.pop(p, None)
        with self.lock:
            self.assignment -= gone
            self.eof -= gone
            if revoked:
                self.revoked.append(sorted(gone))

    # main-thread view (assigned, snapshot, close: MemberView)
    def at_eof(self, partitions):
        with self.lock:
            return self.eof >= set(partitions)


# -- checks -------------------------------------------------------------------------
def check_range_group(broker, R, topic, group):
    """Three members, exactly-once consumption, leave, join, rafka groups, admin APIs. Returns all produced."""
    bs = broker.bootstrap
    expected = {}
    with Members() as members:
        with R.check("3 members subscribe: 6 partitions assigned 2/2/2, each exactly once"):
            expected.update(produce(bs, topic, 600, "a"))
            t0 = time.monotonic()
            members.extend(Member(f"c{i}", bs, group, topic) for i in range(3))
            timing("3 new members in an empty group, first subscribe() to all assigned",
                   wait_balanced(members, [2, 2, 2], t0, "2/2/2 assignment"))

        with R.check("600 messages consumed exactly once across 3 members, commits reach the end offsets"):
            wait_consumed(members, expected)
            wait_committed_to_end(bs, group, topic)
            check_exactly_once(members, expected)

        with R.check("rafka groups: Stable, 6 partitions owned by 3 members, lag 0"):
            rows = wait_until(lambda: (lambda rs: rs if len(rs) == PARTITIONS and all(r["member"] for r in rs)
                                       else None)(group_rows(broker, group)), TIMEOUT, interval=0.2,
                              what="6 owned rows in rafka groups")
            expect_eq({r["state"] for r in rows}, {"Stable"}, "states")
            expect_eq([r["lag"] for r in rows], ["0"] * PARTITIONS, "lags")
            expect_eq(len({r["member"] for r in rows}), 3, "distinct owners")

        with R.check("AdminClient list_consumer_groups / describe_consumer_groups show 3 members"):
            listed = admin_call(bs, "list_consumer_groups")
            expect(group in {g.group_id for g in listed.valid}, f"{group} not listed: {listed.valid}")
            desc = admin_call(bs, "describe_consumer_groups", [group], key=group)
            expect_eq(str(desc.state).rsplit(".", 1)[-1], "STABLE", "state")
            expect_eq(desc.partition_assignor, "range", "partition_assignor")
            expect_eq(sorted(m.client_id for m in desc.members), ["c0", "c1", "c2"], "member client ids")
            got = {m.client_id: sorted(tp.partition for tp in m.assignment.topic_partitions) for m in desc.members}
            expect_eq(got, {m.name: sorted(m.assigned()) for m in members}, "member assignments")

        with R.check("delete_consumer_groups on a group with members fails with NON_EMPTY_GROUP"):
            try:
                admin_call(bs, "delete_consumer_groups", [group], key=group)
                raise AssertionError("deleting a non-empty group succeeded")
            except KafkaException as exc:
                expect_eq(exc.args[0].code(), KafkaError.NON_EMPTY_GROUP, f"error {exc.args[0]}")

        with R.check("member leaves (close): its partitions move, 3/3 across the other two"):
            leaver = members.pop()
            t0 = time.monotonic()
            leaver.close()
            timing("member leave, close() to remaining members reassigned",
                   wait_balanced(members, [3, 3], t0, "3/3 assignment"))
            members.append(leaver)  # keep its records for the exactly-once check

        with R.check("120 messages produced after the leave consumed exactly once"):
            produce_and_check(produce, wait_committed_to_end, bs, group, topic, members, expected, 120, "b")

        with R.check("member joins a stable group: 2/2/2 again (timed)"):
            live = members[:2]
            joiner = Member("c3", bs, group, topic)
            members.append(joiner)
            took = wait_balanced(live + [joiner], [2, 2, 2], joiner.subscribed_at, "2/2/2 after join")
            timing("member join (eager range), new member's subscribe() to all 3 holding their new assignment", took)

        with R.check("120 messages produced after the join consumed exactly once"):
            produce_and_check(produce, wait_committed_to_end, bs, group, topic, members, expected, 120, "c")

        with R.check("members close cleanly; no commit errors in the whole run"):
            for m in members:
                m.close()
            errors = {m.name: m.commit_errors for m in members if m.commit_errors}
            expect(not errors, f"commit errors: {errors}")
    return expected


def check_lag_and_resume(broker, R, topic, group):
    bs = broker.bootstrap
    with R.check("rafka groups: group Empty with lag 0 after everything committed, consumers closed"):
        rows = wait_until(lambda: (lambda rs: rs if rs and {r["state"] for r in rs} == {"Empty"} else None)(
            group_rows(broker, group)), TIMEOUT, interval=0.2, what="Empty group rows")
        expect_eq([r["partition"] for r in rows], sorted(ALL), "partitions listed")
        expect_eq([r["lag"] for r in rows], ["0"] * PARTITIONS, "lags")

    pending = {}
    with R.check("rafka groups: lag 5 per partition after producing 30 more"):
        pending = produce(bs, topic, 30, "d")
        rows = group_rows(broker, group)
        expect_eq([r["lag"] for r in rows], ["5"] * PARTITIONS, "lags")
        expect_eq([r["end"] - r["committed"] for r in rows], [5] * PARTITIONS, "end - committed")

    for i, (variant, bounce) in enumerate((("graceful restart", broker.restart), ("kill -9", broker.kill9))):
        with R.check(f"after {variant}: a new member resumes from the committed offsets (only the 30 new)"):
            if i:
                pending = produce(bs, topic, 30, f"e{i}")
            bounce()
            with Members() as members:
                members.append(Member(f"resume-{variant.split()[-1]}", bs, group, topic))
                t0 = members[0].subscribed_at
                wait_balanced(members, [PARTITIONS], t0, "sole member assigned all partitions")
                wait_consumed(members, pending)
                wait_until(lambda: members[0].at_eof(ALL), TIMEOUT, interval=0.1, what="EOF on all partitions")
                check_exactly_once(members, pending)  # nothing older than the committed offsets
                wait_committed_to_end(bs, group, topic)
                members[0].close()


def check_cooperative(broker, R, topic, group):
    bs = broker.bootstrap
    conf = {"partition.assignment.strategy": "cooperative-sticky"}
    expected = {}
    with Members() as members:
        with R.check("cooperative-sticky: first member gets all 6 partitions, consumes 120"):
            expected.update(produce(bs, topic, 120, "coop-a"))
            members.append(Member("coop0", bs, group, topic, **conf))
            wait_balanced(members, [6], members[0].subscribed_at, "6 partitions to the first member")
            wait_consumed(members, expected)

        with R.check("cooperative-sticky: second member joins, 3/3, first member revokes only 3 (timed)"):
            members.append(Member("coop1", bs, group, topic, **conf))
            took = wait_balanced(members, [3, 3], members[1].subscribed_at, "3/3 after cooperative join")
            timing("member join (cooperative-sticky), new member's subscribe() to both holding their "
                   "new assignment", took)
            expect_eq([len(r) for r in members[0].revoked], [3], "first member's revocations (incremental)")
            desc = admin_call(bs, "describe_consumer_groups", [group], key=group)
            expect_eq(desc.partition_assignor, "cooperative-sticky", "partition_assignor")
            expect_eq(len(desc.members), 2, "members described")

        with R.check("cooperative-sticky: 120 more consumed exactly once across both"):
            produce_and_check(produce, wait_committed_to_end, bs, group, topic, members, expected, 120, "coop-b")

        with R.check("cooperative-sticky: second member leaves, first gets all 6 back, 60 more exactly once"):
            leaver = members[1]
            t0 = time.monotonic()
            leaver.close()
            timing("member leave (cooperative-sticky), close() to the other member holding all 6",
                   wait_balanced(members[:1], [6], t0, "6 partitions back to the first member"))
            produce_and_check(produce, wait_committed_to_end, bs, group, topic, members, expected, 60, "coop-c")
            members[0].close()
            errors = {m.name: m.commit_errors for m in members if m.commit_errors}
            expect(not errors, f"commit errors: {errors}")

    with R.check("delete_consumer_groups on the empty cooperative group works"):
        wait_until(lambda: str(admin_call(bs, "describe_consumer_groups", [group], key=group).state)
                   .endswith("EMPTY"), TIMEOUT, interval=0.2, what=f"{group} Empty")
        admin_call(bs, "delete_consumer_groups", [group], key=group)
        listed = admin_call(bs, "list_consumer_groups")
        expect(group not in {g.group_id for g in listed.valid}, f"{group} still listed after delete")
        expect_eq(committed(bs, group, topic), {}, "committed offsets after delete")
        expect(group not in {r["group"] for r in rafka_groups(broker)}, "group still in rafka groups")


def check_commit_on_revoke(broker, R, topic, group):
    """Kafka accepts OffsetCommit while the group is PreparingRebalance (the member's generation is
    still current); clients rely on it to commit from the revoke callback of an eager rebalance."""
    bs = broker.bootstrap
    with R.check("eager rebalance: commit from on_revoke succeeds, no message consumed twice"), Members() as members:
        members.append(Member("revoke0", bs, group, topic, commit="revoke"))
        wait_balanced(members, [6], members[0].subscribed_at, "6 partitions to the first member")
        ends = end_offsets(bs, topic)
        expected = {(p, o) for p in ALL for o in range(ends[p])}
        wait_until(lambda: expected <= {(p, o) for _s, p, o, _k, _v in consumed(members)}, TIMEOUT,
                   interval=0.1, what="first member consumed the whole topic (uncommitted)")
        members.append(Member("revoke1", bs, group, topic, commit="revoke"))
        wait_balanced(members, [3, 3], members[1].subscribed_at, "3/3 after join")
        wait_until(lambda: members[1].at_eof(members[1].assigned()), TIMEOUT, interval=0.1,
                   what="second member at EOF on its partitions")
        errors = members[0].commit_errors
        counts = Counter((p, o) for _s, p, o, _k, _v in consumed(members))
        dups = sum(1 for n in counts.values() if n > 1)
        expect(not errors and not dups,
               f"commit from on_revoke failed: {errors}; {dups} messages then consumed twice")


def check_static(broker, R, topic, group):
    """KIP-345: a static member (group.instance.id) that closes and starts again within the session
    timeout gets its partitions back under a new member id, and the other member does not
    rebalance; a static member that stays away is removed when its session times out."""
    bs = broker.bootstrap
    static = lambda instance: {"group.instance.id": instance}  # noqa: E731
    expected = {}
    with Members() as members:
        with R.check("static members: two consumers with group.instance.id share 6 partitions 3/3"):
            members.append(Member("static-a", bs, group, topic, **static("inst-a")))
            members.append(Member("static-b", bs, group, topic, **static("inst-b")))
            wait_balanced(members, [3, 3], members[0].subscribed_at, "3/3 between the static members")
            desc = admin_call(bs, "describe_consumer_groups", [group], key=group)
            expect_eq(sorted(m.group_instance_id for m in desc.members), ["inst-a", "inst-b"], "instance ids")

        with R.check("static member closes and starts again: same partitions, new member id, "
                     "no revocation for the other member (timed)"):
            a, b = members
            a_partitions, b_partitions, a_revoked = a.assigned(), b.assigned(), list(a.revoked)
            old_id = next(m.member_id for m in desc.members if m.group_instance_id == "inst-b")
            # librdkafka sends no LeaveGroup when a static member closes (KIP-345).
            b.close()
            restarted = Member("static-b2", bs, group, topic, **static("inst-b"))
            members.append(restarted)
            took = wait_balanced([a, restarted], [len(a_partitions), len(b_partitions)], restarted.subscribed_at,
                                 "the restarted static member holding partitions again")
            timing("static member restart, subscribe() to holding its old partitions", took)
            expect_eq(restarted.assigned(), b_partitions, "restarted member's partitions")
            expect_eq(a.assigned(), a_partitions, "other member's partitions")
            expect_eq(a.revoked, a_revoked, "other member's revocations since the restart")
            desc = admin_call(bs, "describe_consumer_groups", [group], key=group)
            ids = {m.group_instance_id: m.member_id for m in desc.members}
            expect_eq(sorted(ids), ["inst-a", "inst-b"], "instance ids after the restart")
            expect(ids["inst-b"] != old_id, f"inst-b kept its old member id {old_id}")

        with R.check("static members consume 120 messages exactly once after the restart"):
            produce_and_check(produce, wait_committed_to_end, bs, group, topic, members, expected, 120, "static")

        with R.check("static member that stays away is removed at its session timeout: the other gets all 6"):
            t0 = time.monotonic()
            restarted.close()
            took = wait_balanced([a], [PARTITIONS], t0, "all partitions to the remaining static member")
            timing("static member gone, close() to the other member holding all 6 (session timeout "
                   f"{MEMBER_CONF['session.timeout.ms']} ms)", took)
            expect(took * 1000 >= MEMBER_CONF["session.timeout.ms"] * 0.8,
                   f"reassigned after {took:.1f}s, before the session timeout: the member left instead")
            a.close()


def main(broker, R):
    bs = broker.bootstrap
    with R.check("create 6-partition topics; group coordinator answers"):
        create_topic(bs, "groups-range")
        create_topic(bs, "groups-coop")
        create_topic(bs, "groups-static")
        # The first FindCoordinator creates __consumer_offsets; members that look up the coordinator
        # while it starts back off ~1 s and miss the first generation. Start it here, once.
        wait_until(lambda: committed(bs, "grp-range", "groups-range") is not None, TIMEOUT, interval=0.2,
                   what="OffsetFetch through the group coordinator")
    check_range_group(broker, R, "groups-range", "grp-range")
    check_lag_and_resume(broker, R, "groups-range", "grp-range")
    check_cooperative(broker, R, "groups-coop", "grp-coop")
    check_commit_on_revoke(broker, R, "groups-coop", "grp-revoke")
    check_static(broker, R, "groups-static", "grp-static")


if __name__ == "__main__":
    run_suite(SUITE, main, extra_env=broker_env())
