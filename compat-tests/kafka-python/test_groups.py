#!/usr/bin/env python3
"""kafka-python consumer-group checks against rafka.

Group members are KafkaConsumers with group_id, subscribe() and enable_auto_commit=False, each
polling in its own thread and committing synchronously after every processed batch.
Checks: 2/2/2 assignment across 3 members, exactly-once consumption across members, a member
leaving and one joining (timed from subscribe() to every member holding its new assignment),
KafkaAdminClient list/describe/delete of groups, resuming from committed offsets after a graceful
restart and after kill -9, enable_auto_commit's commit before rejoining a rebalance, and removing a
static member (group_instance_id) by its instance id.
Producers set enable_idempotence=False (see FINDINGS.md).

kafka-python 3 runs ConsumerRebalanceListener callbacks on its IO thread and refuses blocking
calls there ("Cannot block on net.run() from the IO thread itself"), so the listener here only
tracks the assignment and never commits.
"""

import sys
import threading
import time
import traceback
from collections import Counter
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import expect, expect_eq, run_suite, wait_until  # noqa: E402
from group_helpers import (ALL, PARTITIONS, SEQ, TIMEOUT, MemberView, Members, broker_env,  # noqa: E402
                           check_exactly_once, consumed, produce_and_check, timer, wait_balanced,
                           wait_consumed)

from kafka import (ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer,  # noqa: E402
                   KafkaProducer, TopicPartition)
from kafka.admin import MemberToRemove  # noqa: E402
from kafka.structs import OffsetAndMetadata  # noqa: E402

SUITE = "kafka-python-groups"
MEMBER_CONF = {"session_timeout_ms": 10000, "heartbeat_interval_ms": 1000}
timing = timer(SUITE)


def client_conf(bootstrap):
    return {"bootstrap_servers": bootstrap, "request_timeout_ms": TIMEOUT * 1000}


def admin(bootstrap):
    return closing(KafkaAdminClient(client_id="rafka-groups-admin", **client_conf(bootstrap)))


def create_topic(bootstrap, topic):
    with admin(bootstrap) as a:
        a.create_topics({topic: {"num_partitions": PARTITIONS, "replication_factor": 1}},
                        timeout_ms=TIMEOUT * 1000, wait_for_metadata=True)


def produce(bootstrap, topic, count, tag):
    """Produce `count` keyed messages round-robin over the partitions with acks='all'.

    Returns {(partition, offset): (key, value)}.
    """
    producer = KafkaProducer(acks="all", linger_ms=5, enable_idempotence=False, max_block_ms=TIMEOUT * 1000,
                             client_id="rafka-groups-producer", **client_conf(bootstrap))
    try:
        sent = [(f"{tag}-k{i}".encode(), f"{tag}-v{i}".encode()) for i in range(count)]
        futures = [producer.send(topic, key=k, value=v, partition=i % PARTITIONS) for i, (k, v) in enumerate(sent)]
        producer.flush(timeout=TIMEOUT)
        return {(md.partition, md.offset): kv for md, kv in ((f.get(timeout=TIMEOUT), kv)
                                                             for f, kv in zip(futures, sent))}
    finally:
        producer.close(timeout=5)


def end_offsets(bootstrap, topic):
    with closing(KafkaConsumer(group_id=None, **client_conf(bootstrap))) as c:
        ends = c.end_offsets([TopicPartition(topic, p) for p in ALL], timeout_ms=TIMEOUT * 1000)
        return {tp.partition: off for tp, off in ends.items()}


def committed(bootstrap, group, topic):
    """{partition: committed offset} per KafkaAdminClient.list_group_offsets (OffsetFetch)."""
    with admin(bootstrap) as a:
        offsets = a.list_group_offsets(group).get(group, {})
    return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic and om.offset >= 0}


def wait_committed_to_end(bootstrap, group, topic):
    ends = end_offsets(bootstrap, topic)
    wait_until(lambda: committed(bootstrap, group, topic) == ends, TIMEOUT, interval=0.2,
               what=f"group {group} committed offsets == end offsets {ends}")


# -- group members ----------------------------------------------------------------
class Member(MemberView, ConsumerRebalanceListener):
    """A subscribed KafkaConsumer polling in its own thread.

    commit="batch": commit every processed batch synchronously.
    commit="auto": enable_auto_commit=True with a 10-minute interval, so the only commits are the
    ones kafka-python makes before rejoining a rebalance (never on close).
    """

    def __init__(self, name, bootstrap, group, topic, commit="batch", **conf):
        self.name, self.topic, self.commit_mode = name, topic, commit
        self.conf = {"group_id": group, "client_id": name, "enable_auto_commit": commit == "auto",
                     "auto_commit_interval_ms": 600_000, "auto_offset_reset": "earliest",
                     **MEMBER_CONF, **client_conf(bootstrap), **conf}
        self.consumer = None
        self.lock = threading.Lock()
        self.records = []          # (seq, partition, offset, key, value)
        self.assignment = set()
        self.pending = {}          # partition -> next offset to commit (processed, not committed)
        self.commit_errors = []
        self.errors = []
        self.subscribed_at = None
        self.stopping = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._run, name=name, daemon=True).start()
        wait_until(lambda: self.subscribed_at or self.done.is_set(), TIMEOUT, what=f"{name} subscribe()")

    def _run(self):
        try:
            self.consumer = KafkaConsumer(**self.conf)
            self.subscribed_at = time.monotonic()
            self.consumer.subscribe([self.topic], listener=self)
            while not self.stopping.is_set():
                for tp, recs in self.consumer.poll(timeout_ms=100, max_records=100).items():
                    with self.lock:
                        self.records.extend((next(SEQ), tp.partition, r.offset, r.key, r.value) for r in recs)
                    self.pending[tp.partition] = recs[-1].offset + 1
                if self.pending and self.commit_mode == "batch":
                    self._commit(list(self.pending))
        except Exception:  # noqa: BLE001 - reported by the checks
            self.errors.append(traceback.format_exc(limit=3))
        finally:
            if self.consumer is not None:
                try:
                    self.consumer.close(autocommit=False)  # LeaveGroup, unless static
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(f"close: {exc!r}")
            self.done.set()

    def _commit(self, partitions):
        offsets = {TopicPartition(self.topic, p): OffsetAndMetadata(self.pending[p], "", -1)
                   for p in partitions if p in self.pending}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, timeout_ms=TIMEOUT * 1000)
        except Exception as exc:  # noqa: BLE001 - CommitFailedError, RebalanceInProgressError, ...
            self.commit_errors.append(f"{type(exc).__name__}: {exc}")
            return
        for tp, om in offsets.items():
            if self.pending.get(tp.partition) == om.offset:
                del self.pending[tp.partition]

    # ConsumerRebalanceListener, called from poll() in this member's thread
    def on_partitions_assigned(self, assigned):
        with self.lock:
            self.assignment |= {tp.partition for tp in assigned}

    def on_partitions_revoked(self, revoked):
        self._drop({tp.partition for tp in revoked})

    def on_partitions_lost(self, lost):
        self._drop({tp.partition for tp in lost})

    def _drop(self, gone):
        for p in gone:
            self.pending.pop(p, None)
        with self.lock:
            self.assignment -= gone


# -- checks -------------------------------------------------------------------------
def check_group(bootstrap, R, topic, group):
    expected = {}
    with Members() as members:
        with R.check("3 members subscribe: 6 partitions assigned 2/2/2, each exactly once"):
            t0 = time.monotonic()
            members.extend(Member(f"kp{i}", bootstrap, group, topic) for i in range(3))
            timing("3 new members in an empty group, first subscribe() to all assigned",
                   wait_balanced(members, [2, 2, 2], t0, "2/2/2 assignment"))

        with R.check("300 messages consumed exactly once across 3 members, commits reach the end offsets"):
            # Produced once the group is stable, unlike the confluent suite: kafka-python 3.0.12 now
            # and then discards a completed JoinGroup/SyncGroup (SyncGroupResponse error_code=0, then
            # "need_rejoin: True (from base.rejoin_needed)" and a new JoinGroup), which makes a second
            # rebalance ~1 heartbeat later. Commits made during that rebalance are refused (see
            # check_commit_before_rejoin), so consuming across it duplicates messages.
            expected.update(produce(bootstrap, topic, 300, "a"))
            wait_consumed(members, expected)
            wait_committed_to_end(bootstrap, group, topic)
            check_exactly_once(members, expected)

        with R.check("KafkaAdminClient list_groups / describe_groups show the group with 3 members"):
            with admin(bootstrap) as a:
                listed = {g["group_id"]: g for g in a.list_groups()}
                expect(group in listed, f"{group} not listed: {sorted(listed)}")
                desc = a.describe_groups([group])[group]
            expect_eq((desc["error"], desc["group_state"], desc["protocol_type"], desc["protocol_data"]),
                      (None, "Stable", "consumer", "range"), "error, state, protocol type, protocol")
            got = {m["client_id"]: sorted(p for t in m["member_assignment"]["assigned_partitions"]
                                          for p in t["partitions"]) for m in desc["members"]}
            expect_eq(got, {m.name: sorted(m.assigned()) for m in members}, "member assignments")

        with R.check("member leaves (close): its partitions move, 3/3 across the other two"):
            leaver = members.pop()
            t0 = time.monotonic()
            leaver.close()
            timing("member leave, close() to remaining members reassigned",
                   wait_balanced(members, [3, 3], t0, "3/3 assignment"))
            members.append(leaver)  # keep its records for the exactly-once check

        with R.check("60 messages produced after the leave consumed exactly once"):
            produce_and_check(produce, wait_committed_to_end, bootstrap, group, topic, members, expected, 60, "b")

        with R.check("member joins a stable group: 2/2/2 again (timed)"):
            joiner = Member("kp3", bootstrap, group, topic)
            live = members[:2] + [joiner]
            members.append(joiner)
            timing("member join, new member's subscribe() to all 3 holding their new assignment",
                   wait_balanced(live, [2, 2, 2], joiner.subscribed_at, "2/2/2 after join"))

        with R.check("60 messages produced after the join consumed exactly once"):
            produce_and_check(produce, wait_committed_to_end, bootstrap, group, topic, members, expected, 60, "c")

        with R.check("members close cleanly; no commit errors in the whole run"):
            for m in members:
                m.close()
            errors = {m.name: m.commit_errors for m in members if m.commit_errors}
            expect(not errors, f"commit errors: {errors}")


def check_resume(broker, R, topic, group):
    bs = broker.bootstrap
    for i, (variant, bounce) in enumerate((("graceful restart", broker.restart), ("kill -9", broker.kill9))):
        with R.check(f"after {variant}: a new member resumes from the committed offsets (only the 30 new)"):
            pending = produce(bs, topic, 30, f"d{i}")
            bounce()
            with Members() as members:
                members.append(Member(f"kp-resume{i}", bs, group, topic))
                wait_balanced(members, [PARTITIONS], members[0].subscribed_at, "sole member assigned all")
                wait_consumed(members, pending)
                wait_committed_to_end(bs, group, topic)
                # Anything older than the committed offsets would have come first, in offset order.
                check_exactly_once(members, pending)
                members[0].close()


def check_commit_before_rejoin(bootstrap, R, topic, group):
    """With enable_auto_commit, kafka-python (like the Java client) commits the consumed offsets when
    a rebalance starts, before rejoining. Kafka accepts that OffsetCommit while the group is
    PreparingRebalance, since the member's generation is still current."""
    with R.check("enable_auto_commit: the commit before rejoining a rebalance succeeds, nothing consumed twice"), \
            Members() as members:
        members.append(Member("kp-auto0", bootstrap, group, topic, commit="auto"))
        wait_balanced(members, [6], members[0].subscribed_at, "6 partitions to the first member")
        ends = end_offsets(bootstrap, topic)
        wait_consumed(members, {(p, o): None for p in ALL for o in range(ends[p])})
        members.append(Member("kp-auto1", bootstrap, group, topic, commit="auto"))
        wait_balanced(members, [3, 3], members[1].subscribed_at, "3/3 after join")

        def dups():
            return sum(1 for n in Counter((p, o) for _s, p, o, _k, _v in consumed(members)).values() if n > 1)

        # Either the pre-rebalance commit reached the end offsets, or the new member re-reads from 0.
        wait_until(lambda: committed(bootstrap, group, topic) == ends or dups(), TIMEOUT, interval=0.1,
                   what="pre-rebalance commit or re-consumption")
        got = committed(bootstrap, group, topic)
        expect(got == ends and not dups(), f"committed offsets {got} (end offsets {ends}); "
                                           f"{dups()} messages consumed twice")


def check_delete(bootstrap, R, group):
    with R.check("delete_groups on the empty group works; its offsets are gone"):
        with admin(bootstrap) as a:
            wait_until(lambda: a.describe_groups([group])[group]["group_state"] == "Empty", TIMEOUT,
                       interval=0.2, what=f"{group} Empty")
            expect_eq(a.delete_groups([group]), {group: "OK"}, "delete_groups result")
            expect(group not in {g["group_id"] for g in a.list_groups()}, f"{group} still listed")
            expect_eq(a.list_group_offsets(group).get(group, {}), {}, "committed offsets after delete")


def check_static_removal(bootstrap, R, topic, group):
    """KIP-345: a static member (group_instance_id) sends no LeaveGroup when it closes; an admin
    removes it by its instance id alone (LeaveGroup v3+), and the other member gets its partitions
    without waiting for the session timeout."""
    with Members() as members:
        with R.check("static members (group_instance_id) 3/3; one closes and stays in the group"):
            members.append(Member("kp-static-a", bootstrap, group, topic, group_instance_id="kp-inst-a"))
            members.append(Member("kp-static-b", bootstrap, group, topic, group_instance_id="kp-inst-b"))
            wait_balanced(members, [3, 3], members[0].subscribed_at, "3/3 between the static members")
            members[1].close()
            with admin(bootstrap) as a:
                described = a.describe_groups([group])[group]
            expect_eq(sorted(m["group_instance_id"] for m in described["members"]), ["kp-inst-a", "kp-inst-b"],
                      "static members after one closed")

        with R.check("remove_group_members by group_instance_id: the other member gets all 6 before the "
                     "session timeout; removing it again answers UNKNOWN_MEMBER_ID"):
            t0 = time.monotonic()
            with admin(bootstrap) as a:
                removed = a.remove_group_members(group, [MemberToRemove(group_instance_id="kp-inst-b")])
            expect_eq({k: v.__name__ for k, v in removed.items()}, {"kp-inst-b": "NoError"}, "removal")
            took = wait_balanced(members[:1], [PARTITIONS], t0, "all partitions to the remaining member")
            timing("static member removed by instance id, request to the other member holding all 6", took)
            expect(took * 1000 < MEMBER_CONF["session_timeout_ms"] * 0.8,
                   f"reassigned after {took:.1f}s: the session timeout did it, not the removal")
            with admin(bootstrap) as a:
                again = a.remove_group_members(group, [MemberToRemove(group_instance_id="kp-inst-b")])
            expect_eq({k: v.__name__ for k, v in again.items()}, {"kp-inst-b": "UnknownMemberIdError"},
                      "second removal")
            members[0].close()


def main(broker, R):
    bs = broker.bootstrap
    with R.check("create 6-partition topic; group coordinator answers"):
        create_topic(bs, "kp-groups")
        # The first FindCoordinator creates __consumer_offsets; members that look up the coordinator
        # while it starts back off and may miss the first generation. Start it here, once.
        wait_until(lambda: committed(bs, "kp-grp", "kp-groups") is not None, TIMEOUT, interval=0.2,
                   what="OffsetFetch through the group coordinator")
    check_group(bs, R, "kp-groups", "kp-grp")
    check_resume(broker, R, "kp-groups", "kp-grp")
    check_delete(bs, R, "kp-grp")
    check_commit_before_rejoin(bs, R, "kp-groups", "kp-grp-auto")
    check_static_removal(bs, R, "kp-groups", "kp-grp-static")


if __name__ == "__main__":
    run_suite(SUITE, main, extra_env=broker_env())
