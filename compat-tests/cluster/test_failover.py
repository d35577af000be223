#!/usr/bin/env python3
"""Cluster failure tests of rafka with confluent-kafka (librdkafka), on real processes.

Scenarios, each on a fresh cluster of three nodes (five for double-outage; see README.md for what
each one proves):
  leader-kill    kill -9 a partition leader during acks=all produce, restart it
  follower-kill  kill -9 a follower during produce, restart it under load
  isolation      cut the leader off the network (TCP proxies), heal
  wipe           stop a follower, write many entries, wipe its data dir, start it
  wipe-purged    kill -9 a caught-up follower of a long log, wipe it, restart it,
                 restart it again, under acks=all load
  wipe-rejoin    pause one follower, wipe the other and restart it, kill -9 the leader before the
                 wiped node caught up: the wiped node refuses votes, nothing acknowledged is lost
  peer-auth      node 3 replaced by one with the wrong cluster secret, and garbage on the Raft port:
                 refused
  double-outage  five nodes: 4 and 5 wiped while writes commit on 1-3, then 2 and 3 down and 1
                 wiped: the blank majority founds nothing; 2 and 3 back: no amnesiac vote elects anyone
  quorum-loss    pause both followers: the leader refuses a produce with NOT_ENOUGH_REPLICAS before
                 proposing it; resume them: writes are acknowledged again
  balance        restart every node one by one (SIGTERM): the leader balancer spreads leaders
                 within one of even again
  rolling-restart  rolling SIGTERM restart under idempotent acks=all load: controlled shutdown hands
                 leadership over, nothing lost or duplicated, no partition 1 s without an ack
  elect-leaders  balancer off: kafka-python, confluent-kafka and `rafka cluster elect-leaders` move
                 restarted nodes' partitions back to their preferred replicas (ElectLeaders)
  reassign       four nodes: replicas move under load (kafka-python, `rafka cluster reassign`), off
                 the leader, with the leader killed as the move starts, onto a dead node (cancelled),
                 off a dead node; nothing lost or duplicated
  epochs         records produced under three leaders (two kill -9s) while a consumer reads: the
                 leader epoch grows in Metadata, is stamped in every batch, OffsetForLeaderEpoch
                 places each epoch, stale and future epochs are refused in requests

    python3 compat-tests/cluster/test_failover.py [--repeat N] [--only leader-kill,wipe]

Prints `TIMING <scenario> <name>=<seconds>` lines and ends with `N passed, N failed`.
"""

import argparse
import json
import re
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "durability"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Results, exit_on_sigterm, expect, expect_eq, find_binary, wait_until  # noqa: E402
from cluster import READY_TIMEOUT, Cluster, NodeDied, NotYet, ReplicasDiverged, replicas_agree  # noqa: E402
from workload import Workload, offset_mismatches, stray_records, verify_read_back  # noqa: E402

import checker  # noqa: E402  (durability/checker.py)
import kafka_wire  # noqa: E402
from confluent_kafka import Consumer, ElectionType, KafkaError, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.admin import NewTopic  # noqa: E402
from kafka import KafkaAdminClient  # noqa: E402
from kafka import TopicPartition as KafkaTopicPartition  # noqa: E402

SUITE = "cluster"
RATE = 150  # values/s per producer thread: steady, and light enough for a loaded 2-core machine
PRODUCERS = 2
WARMUP_ACKS = 50  # per partition, before any fault: the load is flowing
ACKS_AFTER_FAULT = 100  # per partition, after a fault: the load flows again, well past in-flight retries
FAULT_DEADLINE = 60  # seconds for any recovery (election, catch-up): generous, timings are printed
LOAD_AFTER_RECOVERY_S = 2  # steady writes on the recovered cluster, not just the burst of retries
FOLLOWER_DOWN_S = 3  # how long writes run with a follower down
MINORITY_PRODUCER = 9  # producer index of the isolated side's values, distinct from the majority's
WIPE_SNAPSHOT_ENTRIES = 200
WIPE_ENTRIES = 15 * WIPE_SNAPSHOT_ENTRIES  # far past what a leader keeps in its log after a snapshot
PURGED_ENTRIES = 3 * WIPE_SNAPSHOT_ENTRIES  # entries before the wipe: several snapshots, logs purged
ONE_RECORD_PER_ENTRY = {"linger.ms": 0, "batch.num.messages": 1, "queue.buffering.max.messages": 500}
# What a broker logs when one of its Raft groups stops or cannot start: never expected.
GROUP_FAILURES = ("quit RaftCore::main on error", "stopped on an error", "cannot start partition group")


class ClusterResults(Results):
    """harness.Results that prints every node's log tail under each failed check."""

    cluster = None

    def record(self, name, ok, detail=""):
        super().record(name, ok, detail)
        if not ok and self.cluster is not None:
            print(self.cluster.log_tail(), flush=True)


class Steps:
    """Runs the named checks of one scenario in order; after a failure the rest are skipped,
    since each step builds on the state the previous one left."""

    def __init__(self, results, scenario):
        self.results = results
        self.scenario = scenario
        self.broken = False

    def __call__(self, name, fn, timeout=180, even_after_failure=False):
        full_name = f"{self.scenario}: {name}"
        if self.broken and not even_after_failure:
            print(f"[{SUITE}] SKIP {full_name} (an earlier step failed)", flush=True)
            return
        failed_before = len(self.results.failed)
        with self.results.check(full_name, timeout=timeout):
            fn()
        self.broken = self.broken or len(self.results.failed) > failed_before


def keep_producing(seconds):
    """Let the workload threads run on for `seconds`: pacing the load, not waiting for the broker."""
    time.sleep(seconds)


def timing(scenario, **seconds):
    for name, value in seconds.items():
        print(f"TIMING {scenario} {name}={value:.3f}", flush=True)


# -- steps shared by the scenarios --------------------------------------------------
def form_cluster(cluster):
    cluster.start_all()
    for node_id in cluster.ids:
        expect_eq(cluster.health(node_id), 0, f"`rafka health` exit code against node {node_id}")


def pick_follower(cluster, topic):
    """A node that does not lead partition 0, preferably not the controller leader either,
    so that killing it is a pure follower failure."""
    leader, controller = cluster.leader_of(topic, 0), cluster.controller_id()
    followers = [i for i in cluster.ids if i != leader]
    return next((i for i in followers if i != controller), followers[0])


def led_by(cluster, topic, node_id):
    return [p for p, leader in cluster.leaders(topic).items() if leader == node_id]


def start_and_catch_up(cluster, node_id, topic, scenario):
    started = time.monotonic()
    cluster.start(node_id)
    views = cluster.wait_replicas_agree(topic, timeout=FAULT_DEADLINE)
    timing(scenario, catch_up_s=time.monotonic() - started)
    print_agreement(views)


def catch_up_under_load(cluster, work, topic, recover, scenario, timing_name):
    """Run `recover()` (restart a node, heal the network) while `work` keeps producing: the load
    is acked again and flows on, then stops with no failed delivery, and every replica catches up
    (checksums agree). Prints TIMING `timing_name`: seconds from the recovery to agreement."""
    recovered_at = time.monotonic()
    recover()
    work.wait_acks(ACKS_AFTER_FAULT, since=recovered_at, timeout=FAULT_DEADLINE)
    keep_producing(LOAD_AFTER_RECOVERY_S)
    work.stop()
    work.expect_no_failures()
    views = cluster.wait_replicas_agree(topic, timeout=FAULT_DEADLINE)
    timing(scenario, **{timing_name: time.monotonic() - recovered_at})
    print_agreement(views)


def print_agreement(views):
    for partition in sorted(views):
        index, checksum = next(iter(views[partition].values()))
        print(f"  partition {partition}: {len(views[partition])} replicas at applied_index {index}, "
              f"checksum {checksum}", flush=True)


# -- a. leader kill -9 --------------------------------------------------------------
def leader_kill(cluster, step):
    topic, partitions, state = "leader-kill", 3, {}
    work = Workload(cluster.bootstrap(), topic, partitions, producers=PRODUCERS, rate=RATE, client_id="leader-kill")
    try:
        step(f"topic with {partitions} partitions, RF 3, hosted on every node",
             lambda: cluster.create_topic(topic, partitions))
        step("leader kill -9 during acks=all produce: a new leader is elected, every partition is acked again, "
             "no delivery fails", lambda: kill_leader_during_produce(cluster, work, topic, state), timeout=400)
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(cluster.running_ids()), work))
        step("the killed leader restarts and catches up: checksums of all replicas agree",
             lambda: start_and_catch_up(cluster, state["victim"], topic, "leader-kill"))
    finally:
        work.close()


def kill_leader_during_produce(cluster, work, topic, state):
    work.start()
    work.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
    victim = cluster.leader_of(topic, 0)
    victim_partitions = led_by(cluster, topic, victim)
    print(f"  kill -9 node {victim}, leader of {topic} partitions {victim_partitions}", flush=True)
    killed_at = time.monotonic()
    cluster.kill9(victim)
    state["victim"] = victim
    new_leader = cluster.wait_new_leader(topic, 0, excluded={victim}, timeout=FAULT_DEADLINE)
    elected_after = time.monotonic() - killed_at
    print(f"  node {new_leader} reports itself leader of {topic}/0", flush=True)
    work.wait_acks(ACKS_AFTER_FAULT, since=killed_at, timeout=FAULT_DEADLINE)
    keep_producing(LOAD_AFTER_RECOVERY_S)
    gap = work.max_ack_gap(victim_partitions, since=killed_at - 1)
    work.stop()
    timing("leader-kill", unavailability_s=gap, new_leader_metadata_s=elected_after)
    work.expect_no_failures()


# -- b. follower kill -9 ------------------------------------------------------------
def follower_kill(cluster, step):
    topic, state = "follower-kill", {}
    # One partition: with three, leaders are spread over all nodes and every kill is a leader kill.
    work = Workload(cluster.bootstrap(), topic, 1, producers=PRODUCERS, rate=RATE, client_id="follower-kill")
    try:
        step("topic with 1 partition, RF 3, hosted on every node", lambda: cluster.create_topic(topic, 1))
        step("follower kill -9 during acks=all produce: acks continue, no delivery fails",
             lambda: kill_follower_during_produce(cluster, work, topic, state))
        step("the killed follower restarts under load and catches up: checksums of all replicas agree",
             lambda: restart_follower_under_load(cluster, work, topic, state["victim"]))
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(), work))
    finally:
        work.close()


def kill_follower_during_produce(cluster, work, topic, state):
    work.start()
    work.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
    leader, victim = cluster.leader_of(topic, 0), pick_follower(cluster, topic)
    print(f"  kill -9 node {victim}, a follower of {topic}/0 (leader: node {leader})", flush=True)
    killed_at = time.monotonic()
    cluster.kill9(victim)
    state["victim"] = victim
    work.wait_acks(ACKS_AFTER_FAULT, since=killed_at, timeout=FAULT_DEADLINE)
    keep_producing(FOLLOWER_DOWN_S)
    timing("follower-kill", max_ack_gap_s=work.max_ack_gap([0], since=killed_at - 1))
    leader_after = cluster.leader_of(topic, 0)
    if leader_after != leader:
        print(f"  note: leadership of {topic}/0 moved from node {leader} to node {leader_after}", flush=True)
    work.expect_no_failures()


def restart_follower_under_load(cluster, work, topic, victim):
    catch_up_under_load(cluster, work, topic, lambda: cluster.start(victim), "follower-kill", "catch_up_s")


# -- c. network isolation of the leader ----------------------------------------------
def isolation(cluster, step):
    topic, partitions, state = "isolation", 3, {}
    try:
        step(f"topic with {partitions} partitions, RF 3, hosted on every node",
             lambda: cluster.create_topic(topic, partitions))
        step("leader isolated: the majority elects a new leader and keeps acknowledging; "
             "the isolated node steps down and acknowledges nothing",
             lambda: isolate_leader_during_produce(cluster, topic, partitions, state), timeout=400)
        step("after heal all replicas agree (checksums)", lambda: heal_under_load(cluster, topic, state))
        step("every acknowledged record is read back once, in order, at its acknowledged offset; "
             "no record of the isolated producer is in the log",
             lambda: verify_read_back(cluster.bootstrap(), state["majority"],
                                      unexpected_producers={MINORITY_PRODUCER}))
    finally:
        for work in state.get("workloads", []):
            work.close()
        if cluster.isolated_ids():
            cluster.heal()


def isolate_leader_during_produce(cluster, topic, partitions, state):
    victim = cluster.leader_of(topic, 0)
    majority_ids = [i for i in cluster.ids if i != victim]
    majority = Workload(cluster.bootstrap(majority_ids), topic, partitions, producers=PRODUCERS, rate=RATE,
                        client_id=cluster.client_id("majority", "producer"))
    state["majority"] = majority
    state["workloads"] = [majority]
    majority.start()
    majority.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
    victim_partitions = led_by(cluster, topic, victim)
    leaders_before = cluster.leaders(topic)
    print(f"  isolate node {victim}, leader of {topic} partitions {victim_partitions}", flush=True)
    isolated_at = time.monotonic()
    cluster.isolate(victim)
    # Started at once, while the isolated node may still believe it leads: the dangerous window.
    minority = Workload(cluster.bootstrap([victim]), topic, partitions, producers=1, rate=20,
                        first_producer=MINORITY_PRODUCER, client_id=cluster.client_id("isolated", "producer"),
                        idempotent=False, message_timeout_ms=5000, conf={"request.timeout.ms": 5000})
    state["workloads"].append(minority)
    minority.start()

    new_leader = cluster.wait_new_leader(topic, 0, excluded={victim}, timeout=FAULT_DEADLINE)
    elected_after = time.monotonic() - isolated_at
    print(f"  node {new_leader} reports itself leader of {topic}/0", flush=True)
    stepped_down_after = wait_stepped_down(cluster, victim, topic, 0, isolated_at)
    majority.wait_acks(ACKS_AFTER_FAULT, since=isolated_at, timeout=FAULT_DEADLINE)
    expect_isolated_node_points_elsewhere(cluster, victim, topic, leaders_before, isolated_at)
    keep_producing(LOAD_AFTER_RECOVERY_S)
    gap = majority.max_ack_gap(victim_partitions, since=isolated_at - 1)
    minority.stop(flush_timeout=30)
    timing("isolation", new_leader_metadata_s=elected_after, old_leader_stepdown_s=stepped_down_after,
           majority_max_ack_gap_s=gap)

    errors = Counter(err for _value, err in minority.failed)
    print(f"  isolated producer: {minority.sent} sent, {len(minority.acked)} acked, failures: {dict(errors)}",
          flush=True)
    expect(minority.sent > 0, "the isolated producer sent nothing")
    expect(not minority.acked, f"the isolated side acknowledged {len(minority.acked)} of {minority.sent} records, "
                               f"e.g. {list(minority.acked.items())[:3]}")
    expect_eq(len(minority.failed), minority.sent, "failed deliveries of the isolated producer")
    majority.expect_no_failures()


def expect_isolated_node_points_elsewhere(cluster, node_id, topic, leaders_before, since):
    """Within the broker session timeout (9 s), the isolated node still lists every broker and, for the
    partitions another node led, that node or a newer leader, never "no leader": its clients find
    the rest of the cluster through it."""
    md = cluster.metadata(node_id, topic)
    elapsed = time.monotonic() - since
    timing("isolation", isolated_metadata_checked_at_s=elapsed)
    expect(elapsed < 9, f"checked {elapsed:.1f}s into the isolation, past the broker session timeout")
    expect_eq(sorted(md.brokers), cluster.ids, "brokers listed by the isolated node")
    reported = {p: md.topics[topic].partitions[p].leader for p, leader in leaders_before.items() if leader != node_id}
    expect(all(leader not in (-1, node_id) for leader in reported.values()),
           f"leaders the isolated node reports for partitions others led: {reported}")


def wait_stepped_down(cluster, node_id, topic, partition, since):
    """Until the isolated node no longer reports itself leader of the partition; seconds since `since`."""
    def stepped_down():
        md = cluster.metadata(node_id, topic).topics.get(topic)
        if md is None or md.error is not None or partition not in md.partitions:
            return True
        leader = md.partitions[partition].leader
        if leader == node_id:
            raise NotYet(f"node {node_id} still reports itself leader of {topic}/{partition}")
        return True

    wait_until(stepped_down, FAULT_DEADLINE, interval=0.1, what=f"isolated node {node_id} to step down")
    return time.monotonic() - since


def heal_under_load(cluster, topic, state):
    def heal():
        cluster.heal()
        cluster.wait_ready()

    catch_up_under_load(cluster, state["majority"], topic, heal, "isolation", "heal_catch_up_s")


# -- d. wiped follower -----------------------------------------------------------------
def wiped_follower(cluster, step):
    topic, state = "wipe", {}
    try:
        step("topic with 1 partition, RF 3, hosted on every node", lambda: cluster.create_topic(topic, 1))
        step(f"a follower is stopped while the others commit {WIPE_ENTRIES} Raft entries "
             f"(snapshot_entries={WIPE_SNAPSHOT_ENTRIES})",
             lambda: write_entries_without_follower(cluster, topic, state))
        step("the wiped follower starts empty and catches up by log replication (a partition's snapshot "
             "carries no records, and its log is only cut by retention): checksums agree",
             lambda: wipe_and_catch_up(cluster, topic, state["victim"]))
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(), state["work"]))
    finally:
        if "work" in state:
            state["work"].close()


def write_entries_without_follower(cluster, topic, state):
    victim = pick_follower(cluster, topic)
    print(f"  stop node {victim}, a follower of {topic}/0", flush=True)
    cluster.stop(victim)
    state["victim"] = victim
    # One record per batch and no linger: each produce request becomes its own Raft entry. The
    # small local queue paces the producer to what the cluster commits, so stop() flushes quickly.
    work = Workload(cluster.bootstrap(cluster.running_ids()), topic, 1, producers=1, rate=1000, client_id="wipe",
                    conf=ONE_RECORD_PER_ENTRY)
    state["work"] = work
    work.start()
    wait_until(lambda: applied_index(cluster, topic, 0) >= WIPE_ENTRIES, 120, interval=0.5,
               what=f"{WIPE_ENTRIES} applied entries in {topic}/0")
    work.stop()
    work.expect_no_failures()


def applied_index(cluster, topic, partition):
    """Highest applied Raft index of the partition over the running nodes."""
    views = cluster.replica_views(topic)
    return max(index for index, _checksum in views.get(partition, {}).values())


def wipe_and_catch_up(cluster, topic, victim):
    started = time.monotonic()
    cluster.wipe(victim)
    views = cluster.wait_replicas_agree(topic, timeout=FAULT_DEADLINE * 2)
    timing("wipe", catch_up_s=time.monotonic() - started)
    print_agreement(views)


# -- e. caught-up follower wiped after its groups purged their logs -----------------------
STEADY_RATE = 5  # values/s through every fault: fewer than a leader keeps after a snapshot in one restart
STEADY_ACKS = 5  # acks after a fault that show the steady load flows again


def wiped_caught_up_follower(cluster, step):
    """The fault that used to kill a wiped follower's groups and then crash-loop it. The follower is
    caught up when it is wiped, and it is back before its leader purges past the position it had
    seen the follower match (the steady load is too slow for that), so the leader must notice that
    the follower lost its log: it used to stream it the tail of its purged log instead."""
    topic, state = "wipe-purged", {}
    steady = Workload(cluster.bootstrap(), topic, 1, producers=1, rate=STEADY_RATE, client_id="wipe-purged-steady",
                      conf=ONE_RECORD_PER_ENTRY)
    burst = Workload(cluster.bootstrap(), topic, 1, producers=1, rate=400, first_producer=1,
                     client_id="wipe-purged-burst", conf=ONE_RECORD_PER_ENTRY)
    try:
        step("topic with 1 partition, RF 3, hosted on every node", lambda: cluster.create_topic(topic, 1))
        step(f"acks=all produce {PURGED_ENTRIES} entries (snapshot_entries={WIPE_SNAPSHOT_ENTRIES}: the "
             f"controller's log is purged, a partition's only by retention), then only a steady "
             f"{STEADY_RATE}/s; every replica caught up", lambda: produce_until_purged(cluster, steady, burst, topic))
        step("kill -9 a follower, wipe its data dir, restart it under load: the leader, which had seen it "
             "match far along, notices the lost log and it catches up",
             lambda: wipe_caught_up(cluster, steady, topic, state))
        step("kill -9 and restart the wiped follower under load: it starts, serves and catches up",
             lambda: restart_and_catch_up(cluster, steady, topic, state["victim"]))
        step("the load stops with no failed delivery and all replicas agree (checksums)",
             lambda: stop_and_agree(cluster, steady, topic, "wipe-purged"))
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(), combined(steady, burst)))
        step("no Raft group of any node stopped on an error or failed to start",
             lambda: expect_no_group_failures(cluster), even_after_failure=True)
    finally:
        burst.close()
        steady.close()


def produce_until_purged(cluster, steady, burst, topic):
    steady.start()
    burst.start()
    wait_until(lambda: applied_index(cluster, topic, 0) >= PURGED_ENTRIES, 120, interval=0.5,
               what=f"{PURGED_ENTRIES} applied entries in {topic}/0")
    burst.stop()
    burst.expect_no_failures()
    wait_caught_up(cluster, topic, cluster.ids)


def combined(*workloads):
    """One view of several workloads on the same topic, for verify_read_back."""
    return SimpleNamespace(topic=workloads[0].topic, partitions=workloads[0].partitions,
                           acked={v: at for w in workloads for v, at in w.acked.items()},
                           sent=sum(w.sent for w in workloads), failed=[f for w in workloads for f in w.failed])


def wait_caught_up(cluster, topic, node_ids, timeout=FAULT_DEADLINE):
    """Until each of `node_ids` has applied, in partition 0, what the others had when this was called."""
    others = [i for i in cluster.running_ids() if i not in node_ids] or cluster.running_ids()
    target = max(index for index, _checksum in cluster.replica_views(topic, others)[0].values())

    def caught_up():
        views = cluster.replica_views(topic, node_ids).get(0, {})
        behind = {i: views.get(i, (None,))[0] for i in node_ids if views.get(i, (-1,))[0] < target}
        if behind:
            raise NotYet(f"applied index in {topic}/0 {behind}, wanted {target}")
        return True

    wait_until(caught_up, timeout, interval=0.2, what=f"nodes {node_ids} to apply index {target} of {topic}/0",
               fatal=NodeDied)


def wipe_caught_up(cluster, work, topic, state):
    victim, leader = pick_follower(cluster, topic), cluster.leader_of(topic, 0)
    state["victim"] = victim
    print(f"  kill -9 node {victim}, a caught-up follower of {topic}/0 (leader: node {leader}), and wipe it",
          flush=True)
    wiped_at = time.monotonic()
    cluster.wipe(victim, sig=signal.SIGKILL)
    wait_caught_up(cluster, topic, [victim])
    work.wait_acks(STEADY_ACKS, since=wiped_at, timeout=FAULT_DEADLINE)
    timing("wipe-purged", catch_up_s=time.monotonic() - wiped_at)
    leader_after = cluster.leader_of(topic, 0)
    if leader_after != leader:
        print(f"  note: leadership of {topic}/0 moved from node {leader} to node {leader_after}", flush=True)


def restart_and_catch_up(cluster, work, topic, victim):
    restarted_at = time.monotonic()
    cluster.kill9(victim)
    cluster.start(victim)
    wait_caught_up(cluster, topic, [victim])
    work.wait_acks(STEADY_ACKS, since=restarted_at, timeout=FAULT_DEADLINE)
    timing("wipe-purged", restart_catch_up_s=time.monotonic() - restarted_at)


def stop_and_agree(cluster, work, topic, scenario):
    keep_producing(LOAD_AFTER_RECOVERY_S)
    work.stop()
    work.expect_no_failures()
    started = time.monotonic()
    views = cluster.wait_replicas_agree(topic, timeout=FAULT_DEADLINE)
    timing(scenario, agree_after_stop_s=time.monotonic() - started)
    print_agreement(views)


def expect_no_group_failures(cluster):
    failures = [f"node {i}: {line.strip()}" for i in cluster.ids
                for line in cluster.nodes[i].log_text().splitlines() if any(f in line for f in GROUP_FAILURES)]
    expect(not failures, f"{len(failures)} group failures, first: {failures[:3]}")


def expect_no_panics(cluster):
    panics = [f"node {i}: {line.strip()}" for i in cluster.ids
              for line in cluster.nodes[i].log_text().splitlines() if "panicked" in line]
    expect(not panics, f"{len(panics)} panics, first: {panics[:3]}")


def self_test():
    """The verdicts this suite relies on do fire on bad data (no cluster needed)."""
    views = {0: {1: (7, "aa"), 2: (7, "aa"), 3: (7, "aa")}}
    expect_eq(replicas_agree(views, "t", 1, [1, 2, 3]), views, "agreeing replicas")
    for lagging in ({0: {1: (7, "aa"), 2: (7, "aa"), 3: (5, "bb")}}, {0: {1: (7, "aa"), 2: (7, "aa")}}):
        expect(raises(NotYet, lambda: replicas_agree(lagging, "t", 1, [1, 2, 3])), f"lagging not seen: {lagging}")
    diverged = {0: {1: (7, "aa"), 2: (7, "ab"), 3: (5, "bb")}}
    expect(raises(ReplicasDiverged, lambda: replicas_agree(diverged, "t", 1, [1, 2, 3])), "divergence not seen")
    v = checker.value_of
    records = {0: [(0, v(0, 0)), (1, v(9, 0)), (2, v(0, 1))]}
    acked = {v(0, 0): (0, 0), v(0, 1): (0, 1)}
    expect_eq(offset_mismatches(records, acked), ["p0-000000001 acked at (0, 1), read at (0, 2)"], "moved record")
    expect_eq(stray_records(records, {9}), ["p9-000000000"], "record of a failed producer")


def raises(exc_type, fn):
    try:
        fn()
    except exc_type:
        return True
    return False


# -- f. wiped follower rejoins while the leader dies ------------------------------------------
REFUSED_VOTE = re.compile(r"refused a vote: .* group=(\d+)")
GATE_OPEN = re.compile(r"vote gate open: .* group=(\d+)")


def wiped_rejoin_leader_kill(cluster, step):
    """The issue's amnesia scenario. Entries commit on the leader C and follower A while follower B
    is paused (B lags). A is wiped and restarted, and C dies before A has caught up (C's requests
    to A are cut so that A cannot catch up, whatever the timing). B resumes and campaigns: an empty
    A that granted its vote would make B leader without the records committed on C and A's old self.
    A must refuse until it has caught up; the cluster is unavailable until C is back, then nothing
    acknowledged is lost."""
    topic, state = "wipe-rejoin", {}
    work = Workload(cluster.bootstrap(), topic, 1, producers=PRODUCERS, rate=RATE, client_id="wipe-rejoin")
    try:
        step("topic with 1 partition, RF 3, hosted on every node", lambda: cluster.create_topic(topic, 1))
        step("one follower paused: acks=all writes commit on the leader and the other follower",
             lambda: lag_one_follower(cluster, work, topic, state))
        step("the other follower is killed, wiped and restarted; it finds the cluster exists (rejoining)",
             lambda: wipe_and_rejoin(cluster, state))
        step("the leader is killed before the wiped node caught up; the lagging follower resumes and "
             "campaigns: the wiped node refuses its votes and the lagging follower never leads",
             lambda: kill_leader_during_rejoin(cluster, topic, state))
        step("the killed leader restarts: acks resume, the wiped node catches up and opens every vote gate",
             lambda: restart_leader_after_rejoin(cluster, work, topic, state))
        step("the load stops with no failed delivery and all replicas agree (checksums)",
             lambda: stop_and_agree(cluster, work, topic, "wipe-rejoin"))
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(), work))
        step("the wiped node refused votes in a group only before that group's vote gate opened",
             lambda: expect_refusals_before_gates_open(cluster, state["wiped"]))
        step("no Raft group of any node stopped on an error or failed to start",
             lambda: expect_no_group_failures(cluster), even_after_failure=True)
    finally:
        work.close()


def lag_one_follower(cluster, work, topic, state):
    work.start()
    work.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
    leader = cluster.leader_of(topic, 0)
    followers = [i for i in cluster.ids if i != leader]
    state.update(leader=leader, wiped=followers[0], lagging=followers[1])
    print(f"  pause node {state['lagging']} (SIGSTOP); leader of {topic}/0: node {leader}", flush=True)
    paused_at = time.monotonic()
    cluster.pause(state["lagging"])
    work.wait_acks(ACKS_AFTER_FAULT, since=paused_at, timeout=FAULT_DEADLINE)


def wipe_and_rejoin(cluster, state):
    wiped, leader = state["wiped"], state["leader"]
    print(f"  kill -9 node {wiped}, wipe its data dir, cut node {leader}'s requests to it, start it", flush=True)
    cluster.cut(leader, wiped)
    cluster.wipe_stopped(wiped)
    wait_until(lambda: "rejoining" in cluster.nodes[wiped].log_since_last_start(), FAULT_DEADLINE, interval=0.1,
               what=f"node {wiped} to find that the cluster exists", fatal=NodeDied)


def kill_leader_during_rejoin(cluster, topic, state):
    wiped, leader, lagging = state["wiped"], state["leader"], state["lagging"]
    print(f"  kill -9 node {leader} (the leader), resume node {lagging}", flush=True)
    cluster.kill9(leader)
    cluster.resume(lagging)

    def refused():
        if not REFUSED_VOTE.search(cluster.nodes[wiped].log_since_last_start()):
            raise NotYet(f"node {wiped} has refused no vote yet")
        return True

    wait_until(refused, FAULT_DEADLINE, interval=0.1, what=f"node {wiped} to refuse a vote", fatal=NodeDied)
    seen = cluster.leader_of(topic, 0, ask=lagging)
    expect(seen != lagging, f"the lagging node {lagging} leads {topic}/0 with the wiped node's vote")


def restart_leader_after_rejoin(cluster, work, topic, state):
    wiped = state["wiped"]
    restarted_at = time.monotonic()
    cluster.heal()
    cluster.start(state["leader"])
    work.wait_acks(ACKS_AFTER_FAULT, since=restarted_at, timeout=FAULT_DEADLINE)
    wait_until(lambda: "rejoin complete" in cluster.nodes[wiped].log_since_last_start(), FAULT_DEADLINE,
               interval=0.2, what=f"node {wiped} to finish rejoining", fatal=NodeDied)
    timing("wipe-rejoin", recovery_s=time.monotonic() - restarted_at)


def expect_refusals_before_gates_open(cluster, node_id):
    """Every `refused a vote` line of a group comes before that group's `vote gate open` line."""
    refused, opened = {}, {}
    for number, line in enumerate(cluster.nodes[node_id].log_since_last_start().splitlines()):
        if match := REFUSED_VOTE.search(line):
            refused.setdefault(int(match.group(1)), []).append(number)
        elif match := GATE_OPEN.search(line):
            opened.setdefault(int(match.group(1)), number)
    print(f"  node {node_id}: refusals per group {({g: len(v) for g, v in refused.items()})}, "
          f"gates opened {sorted(opened)}", flush=True)
    expect(refused, f"node {node_id} refused no vote")
    late = {group: lines for group, lines in refused.items() if group in opened and max(lines) > opened[group]}
    expect(not late, f"node {node_id} refused votes after the group's gate had opened: {late}")


# -- g. peer authentication -----------------------------------------------------------------------
SECRET = "s3cret-of-the-test"
IMPOSTOR = 3  # started with another secret
HONEST = [1, 2]
RAW_SOCKET_TIMEOUT = 10  # seconds to wait for the node to close a refused connection


def form_without_impostor(cluster):
    """Three honest nodes form the cluster (a new cluster waits for every member); node 3 is then
    replaced, on a new data dir, by an impostor that knows another secret: nodes 1 and 2 go on alone."""
    impostor_settings = cluster.node_settings.pop(IMPOSTOR)
    cluster.start_all()
    cluster.kill9(IMPOSTOR)
    shutil.rmtree(cluster.nodes[IMPOSTOR].data_dir, ignore_errors=True)
    cluster.node_settings[IMPOSTOR] = impostor_settings
    cluster.prepare()
    cluster.spawn(IMPOSTOR)

    def formed():
        for i in HONEST:
            md = cluster.metadata(i)
            if sorted(md.brokers) != HONEST or md.controller_id not in HONEST:
                raise NotYet(f"node {i} lists brokers {sorted(md.brokers)}, controller {md.controller_id}")
        return True

    wait_until(formed, READY_TIMEOUT, interval=0.2, what="nodes 1 and 2 to form a cluster", fatal=NodeDied)
    for node_id in HONEST:
        expect_eq(cluster.health(node_id), 0, f"`rafka health` exit code against node {node_id}")


def peer_auth(cluster, step):
    topic = "peer-auth"
    work = Workload(cluster.bootstrap(HONEST), topic, 1, producers=1, rate=RATE, client_id="peer-auth")
    try:
        step("nodes 1 and 2 serve acks=all writes (auto-created topic, a replica on the impostor too)",
             lambda: serve_without_impostor(cluster, work))
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(HONEST), work))
        step("the impostor never joins: it leads nothing, knows no controller, and both honest nodes "
             "logged refusing it", lambda: impostor_refused(cluster, topic))
        step("garbage, an oversized frame and a request without handshake on the Raft port are refused "
             "(connection closed, WARN naming the address); the node keeps serving",
             lambda: raw_peer_port_refused(cluster))
    finally:
        work.close()


def serve_without_impostor(cluster, work):
    work.start()
    work.wait_acks(ACKS_AFTER_FAULT, timeout=FAULT_DEADLINE)
    work.stop()
    work.expect_no_failures()


def impostor_refused(cluster, topic):
    md = cluster.metadata(IMPOSTOR)
    expect(md.controller_id != IMPOSTOR, f"the impostor reports itself controller: {md.controller_id}")
    expect_eq(sorted(md.brokers), [IMPOSTOR], "brokers the impostor knows")
    leaders = cluster.leaders(topic, ask=HONEST[0])
    expect(IMPOSTOR not in leaders.values(), f"the impostor leads a partition: {leaders}")
    for node_id in HONEST:
        refusals = [line for line in cluster.nodes[node_id].log_text().splitlines()
                    if "refused a peer connection" in line and "MAC" in line]
        expect(refusals, f"node {node_id} never logged refusing the impostor's wrong MAC")
    expect("handshake refused" in cluster.nodes[IMPOSTOR].log_text(),
           "the impostor's log does not say its handshakes were refused")


def raw_peer_port_refused(cluster):
    node = cluster.nodes[HONEST[0]]
    probes = {
        "garbage": b"\x00\x00\x00\x10not a handshake!",
        "oversized frame": b"\xff\xff\xff\xff",
        # A Probe request envelope (request id 1, variant 4, group 0) sent instead of the Hello.
        "request without handshake": b"\x00\x00\x00\x14" + (1).to_bytes(8, "little") + (4).to_bytes(4, "little")
        + (0).to_bytes(8, "little"),
    }
    for name, payload in probes.items():
        with socket.create_connection(("127.0.0.1", node.raft_port), timeout=RAW_SOCKET_TIMEOUT) as sock:
            local = "%s:%d" % sock.getsockname()
            sock.recv(4096)  # the challenge
            sock.sendall(payload)
            expect_eq(read_until_closed(sock), b"", f"what node {node.id} answered to {name}")
        wait_until(lambda: any("refused a peer connection" in line and local in line
                               for line in node.log_text().splitlines()),
                   RAW_SOCKET_TIMEOUT, what=f"node {node.id} to log refusing {name} from {local}")
    for node_id in HONEST:
        expect_eq(cluster.health(node_id), 0, f"`rafka health` exit code against node {node_id}")


def read_until_closed(sock):
    """Everything the node sends until it closes the connection."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass  # closed with unread bytes of ours still queued: a reset is a close too
    return received


# -- h. leader without a quorum ----------------------------------------------------------------------
DELIVERY_TIMEOUT = 30  # seconds for one produce's delivery report


def quorum_loss(cluster, step):
    topic, state = "quorum-loss", {}
    try:
        step("topic with 1 partition, RF 3, hosted on every node", lambda: cluster.create_topic(topic, 1))
        step("both followers paused (SIGSTOP): once its lease is over, the leader refuses a produce with "
             "NOT_ENOUGH_REPLICAS (retries=0 shows the code)", lambda: produce_without_quorum(cluster, topic, state))
        step("followers resumed: a produce is acknowledged again",
             lambda: expect(deliver(Producer(producer_conf(cluster.bootstrap())), topic, b"after-resume") is None,
                            "the produce after the resume failed"))
        step("the refused record is not in the log, the acknowledged ones are",
             lambda: expect_log_values(cluster, topic, present=[b"before-pause", b"after-resume"],
                                       absent=[b"refused"]))
        step(f"idempotent acks=all load through a quorum loss of {QUORUM_LOSS_S} s, longer than the "
             f"producers' request.timeout.ms ({QUORUM_LOSS_REQUEST_TIMEOUT_MS} ms): after the resume every "
             "acknowledged record is read back once, none duplicated",
             lambda: idempotent_through_quorum_loss(cluster, state))
    finally:
        for node_id in state.get("paused", []):
            cluster.resume(node_id)


QUORUM_LOSS_S = 8
QUORUM_LOSS_REQUEST_TIMEOUT_MS = 3000


def idempotent_through_quorum_loss(cluster, state):
    topic = "quorum-loss-idempotent"
    cluster.create_topic(topic, 1)
    work = Workload(cluster.bootstrap(), topic, 1, producers=PRODUCERS, rate=RATE, client_id="quorum-loss-idem",
                    conf={"request.timeout.ms": QUORUM_LOSS_REQUEST_TIMEOUT_MS})
    try:
        work.start()
        work.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
        leader = cluster.leader_of(topic, 0)
        followers = [i for i in cluster.ids if i != leader]
        print(f"  pause nodes {followers} for {QUORUM_LOSS_S} s, the followers of leader {leader}", flush=True)
        paused_at = time.monotonic()
        for node_id in followers:
            cluster.pause(node_id)
        state["paused"] = followers
        keep_producing(QUORUM_LOSS_S)
        for node_id in followers:
            cluster.resume(node_id)
        state["paused"] = []
        resumed_at = time.monotonic()
        work.wait_acks(ACKS_AFTER_FAULT, since=resumed_at, timeout=FAULT_DEADLINE)
        # From a second before the pause: the gap starts at the last acknowledgement before it.
        gap = work.max_ack_gap([0], since=paused_at - 1)
        timing("quorum-loss", idempotent_max_ack_gap_s=gap)
        expect(gap > QUORUM_LOSS_REQUEST_TIMEOUT_MS / 1000,
               f"acknowledgements went on during the quorum loss (longest gap {gap:.2f} s)")
        work.stop()
        work.expect_no_failures()
        verify_read_back(cluster.bootstrap(), work)
    finally:
        work.close()


def producer_conf(bootstrap, **extra):
    return {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False, "linger.ms": 0,
            "message.timeout.ms": DELIVERY_TIMEOUT * 1000, "log_level": 0, **extra}


def deliver(producer, topic, value):
    """Produce one record to partition 0 and wait for its delivery report: None or the KafkaError."""
    outcome = []
    producer.produce(topic, value, partition=0, on_delivery=lambda err, _msg: outcome.append(err))
    producer.flush(DELIVERY_TIMEOUT + 5)
    if not outcome:
        raise AssertionError(f"no delivery report for {value!r} within {DELIVERY_TIMEOUT + 5}s")
    return outcome[0]


def produce_without_quorum(cluster, topic, state):
    leader = cluster.leader_of(topic, 0)
    # retries=0: the first answer is the delivery report, not hidden behind the client's retries.
    producer = Producer(producer_conf(cluster.nodes[leader].bootstrap, retries=0))
    expect(deliver(producer, topic, b"before-pause") is None, "the produce before the pause failed")
    followers = [i for i in cluster.ids if i != leader]
    print(f"  pause nodes {followers}, the followers of leader {leader}", flush=True)
    for node_id in followers:
        cluster.pause(node_id)
    state["paused"] = followers

    def lease_over():
        seen = cluster.leader_of(topic, 0, ask=leader)
        if seen == leader:
            raise NotYet(f"node {leader} still reports itself leader")
        return True

    wait_until(lease_over, FAULT_DEADLINE, interval=0.1, what=f"node {leader}'s lease to run out", fatal=NodeDied)
    err = deliver(producer, topic, b"refused")
    expect(err is not None and err.code() == KafkaError.NOT_ENOUGH_REPLICAS,
           f"the produce without a quorum got {err!r}, not NOT_ENOUGH_REPLICAS")
    for node_id in followers:
        cluster.resume(node_id)
    state["paused"] = []


def expect_log_values(cluster, topic, present, absent):
    values = [value for _offset, value in checker.read_back(cluster.bootstrap(), topic, 1).get(0, [])]
    for value in present:
        expect(value in values, f"{value!r} is not in {topic}/0: {values}")
    for value in absent:
        expect(value not in values, f"{value!r} is in {topic}/0 although it was refused: {values}")


# -- h. leader epochs ----------------------------------------------------------------------------
EPOCH_PHASE_RECORDS = 200  # records produced under each leader
EPOCH_PHASES = 3  # leaders: two kill -9s between them
NOT_LEADER_OR_FOLLOWER = 6


class EpochConsumer:
    """A librdkafka consumer reading partition 0 from offset 0 in its own thread, keeping
    (offset, value, leader epoch) of every record and any error it reports."""

    def __init__(self, bootstrap, topic):
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "epochs", "log_level": 0,
                                  "enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 1000})
        self.topic = topic
        self.records, self.errors = [], []
        self.running = False
        self.thread = None

    def start(self):
        self.consumer.assign([TopicPartition(self.topic, 0, 0)])
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            message = self.consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                self.errors.append(message.error())
            else:
                self.records.append((message.offset(), message.value(), message.leader_epoch()))

    def close(self):
        self.running = False
        if self.thread is not None:
            self.thread.join(10)
        self.consumer.close()


def leader_epochs(cluster, step):
    topic, state = "epochs", {"phases": [], "killed": []}
    consumer = EpochConsumer(cluster.bootstrap(), topic)
    try:
        step("topic with 1 partition, RF 3, hosted on every node", lambda: cluster.create_topic(topic, 1))
        step("records produced under three leaders, two of them killed with -9, while a consumer reads: "
             "each new leader reports a larger epoch in Metadata",
             lambda: produce_under_three_leaders(cluster, consumer, topic, state), timeout=400)
        step("the consumer reads every record once, in order, each stamped with its leader's epoch; "
             "librdkafka validated its position with OffsetForLeaderEpoch",
             lambda: expect_consumed_in_epochs(cluster, consumer, state))
        step("every node reports the leader's epoch in Metadata; OffsetForLeaderEpoch answers where each epoch "
             "ended; Fetch, ListOffsets report the epochs",
             lambda: expect_epoch_answers(cluster, topic, state))
        step("a stale current_leader_epoch is fenced and a newer one unknown in Fetch, ListOffsets and "
             "OffsetForLeaderEpoch; a fetch past its last epoch's end learns where the logs diverge",
             lambda: expect_epoch_fencing(cluster, topic, state))
    finally:
        consumer.close()


def epoch_of(cluster, topic, node_id):
    """The leader epoch `node_id` reports for topic/0 when it reports itself leader."""
    with kafka_wire.Connection(cluster.nodes[node_id].bootstrap) as conn:
        error, leader, epoch = conn.partition_metadata(topic, 0)
    expect_eq((error, leader), (0, node_id), f"node {node_id}'s Metadata for {topic}/0 (error, leader)")
    return epoch


def produce_under_three_leaders(cluster, consumer, topic, state):
    consumer.start()
    next_offset = 0
    for phase in range(EPOCH_PHASES):
        leader = cluster.wait_new_leader(topic, 0, excluded=set(state["killed"]), timeout=FAULT_DEADLINE)
        epoch = epoch_of(cluster, topic, leader)
        values = [f"epoch-phase{phase}-{i}".encode() for i in range(EPOCH_PHASE_RECORDS)]
        reports = []
        producer = Producer(producer_conf(cluster.bootstrap(cluster.running_ids())))
        for value in values:
            producer.produce(topic, value, partition=0,
                             on_delivery=lambda err, msg: reports.append((err, msg.offset())))
        producer.flush(DELIVERY_TIMEOUT + 5)
        expect_eq([err for err, _ in reports if err is not None], [], f"delivery errors in phase {phase}")
        expect_eq(sorted(offset for _, offset in reports),
                  list(range(next_offset, next_offset + len(values))), f"offsets acknowledged in phase {phase}")
        expect_eq(epoch_of(cluster, topic, leader), epoch, f"node {leader}'s epoch after phase {phase}")
        state["phases"].append({"leader": leader, "epoch": epoch, "start": next_offset, "values": values})
        print(f"  phase {phase}: node {leader} leads in epoch {epoch}, offsets "
              f"{next_offset}..{next_offset + len(values) - 1}", flush=True)
        next_offset += len(values)
        if phase + 1 == EPOCH_PHASES:
            break
        if state["killed"]:
            # Bring the first victim back so that the second kill leaves a majority.
            cluster.start(state["killed"].pop())
            cluster.wait_replicas_agree(topic, timeout=FAULT_DEADLINE)
        # The consumer is past this phase's records before their leader dies: it will
        # validate a position whose last epoch is this leader's.
        wait_until(lambda: len(consumer.records) >= next_offset, FAULT_DEADLINE, interval=0.1,
                   what=f"the consumer to read the {next_offset} records of phases 0..{phase}")
        print(f"  kill -9 node {leader}", flush=True)
        cluster.kill9(leader)
        state["killed"].append(leader)
    epochs = [p["epoch"] for p in state["phases"]]
    expect(all(a < b for a, b in zip(epochs, epochs[1:])), f"epochs of the three leaders do not grow: {epochs}")
    state["end"] = next_offset


def expect_consumed_in_epochs(cluster, consumer, state):
    wait_until(lambda: len(consumer.records) >= state["end"], FAULT_DEADLINE, interval=0.1,
               what=f"the consumer to read {state['end']} records")
    expected = [(p["start"] + i, value, p["epoch"]) for p in state["phases"] for i, value in enumerate(p["values"])]
    expect_eq(consumer.records, expected, "(offset, value, leader epoch) of every record consumed")
    fatal = [err for err in consumer.errors if err.fatal() or err.code() == KafkaError._LOG_TRUNCATION]
    expect_eq(fatal, [], "fatal or truncation errors the consumer reported")
    validations = sum(request_count(cluster, node_id, "OffsetForLeaderEpoch") for node_id in cluster.running_ids())
    print(f"  OffsetForLeaderEpoch requests answered by the running nodes: {validations}", flush=True)
    expect(validations > 0, "librdkafka sent no OffsetForLeaderEpoch to the running nodes")


def request_count(cluster, node_id, api):
    with urllib.request.urlopen(f"http://{cluster.nodes[node_id].admin}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    match = re.search(r'^rafka_requests_total\{api="%s"\} (\d+)' % api, text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def current_leader(cluster, topic, state):
    """A connection to the last phase's leader, which still leads in the same epoch."""
    leader = state["phases"][-1]["leader"]
    expect_eq(epoch_of(cluster, topic, leader), state["phases"][-1]["epoch"], f"node {leader}'s epoch")
    return kafka_wire.Connection(cluster.nodes[leader].bootstrap)


def expect_epoch_answers(cluster, topic, state):
    phases, end = state["phases"], state["end"]
    ends = [p["start"] + len(p["values"]) for p in phases]
    # Followers report the leader's epoch from its announcements.
    want = (0, phases[-1]["leader"], phases[-1]["epoch"])

    def everyone_agrees():
        views = {}
        for node_id in cluster.running_ids():
            with kafka_wire.Connection(cluster.nodes[node_id].bootstrap) as conn:
                views[node_id] = conn.partition_metadata(topic, 0)
        if any(view != want for view in views.values()):
            raise NotYet(f"(error, leader, epoch) per node: {views}")
        return True

    wait_until(everyone_agrees, FAULT_DEADLINE, interval=0.1,
               what=f"every running node to report (error, leader, epoch) {want} in Metadata")
    with current_leader(cluster, topic, state) as conn:
        for requested in range(phases[0]["epoch"], phases[-1]["epoch"] + 2):
            # The largest epoch with records at most the one asked, and where it ended.
            owners = [i for i, p in enumerate(phases) if p["epoch"] <= requested]
            if requested > phases[-1]["epoch"]:
                want = (0, -1, -1)
            else:
                want = (0, phases[owners[-1]]["epoch"], ends[owners[-1]])
            answer = conn.offset_for_leader_epoch(topic, 0, requested)
            expect_eq((answer.error_code, answer.leader_epoch, answer.end_offset), want,
                      f"OffsetForLeaderEpoch for epoch {requested} (error, epoch, end offset)")
        latest = conn.list_offsets(topic, 0, kafka_wire.LATEST)
        expect_eq((latest.error_code, latest.offset, latest.leader_epoch), (0, end, phases[-1]["epoch"]),
                  "ListOffsets latest (error, offset, leader epoch)")
        stamped = {}  # base offset -> epoch of every batch
        offset = 0
        while offset < end:
            answer = conn.fetch(topic, 0, offset, current_leader_epoch=phases[-1]["epoch"])
            expect_eq(answer.error_code, 0, f"Fetch from {offset} error code")
            batches = kafka_wire.batch_epochs(answer.records)
            expect(batches, f"Fetch from {offset} returned no batch")
            stamped.update((base, epoch) for base, _last, epoch in batches)
            offset = batches[-1][1] + 1
        for phase in phases:
            phase_end = phase["start"] + len(phase["values"])
            inside = {e for base, e in stamped.items() if phase["start"] <= base < phase_end}
            expect_eq(inside, {phase["epoch"]}, f"epochs stamped in the batches of offsets from {phase['start']}")


def expect_epoch_fencing(cluster, topic, state):
    phases = state["phases"]
    current, stale, newer = phases[-1]["epoch"], phases[0]["epoch"], phases[-1]["epoch"] + 1
    with current_leader(cluster, topic, state) as conn:
        for requested, code in [(stale, kafka_wire.FENCED_LEADER_EPOCH), (newer, kafka_wire.UNKNOWN_LEADER_EPOCH),
                                (current, 0), (kafka_wire.NO_EPOCH, 0)]:
            fetched = conn.fetch(topic, 0, 0, current_leader_epoch=requested)
            listed = conn.list_offsets(topic, 0, kafka_wire.LATEST, current_leader_epoch=requested)
            placed = conn.offset_for_leader_epoch(topic, 0, current, current_leader_epoch=requested)
            expect_eq((fetched.error_code, listed.error_code, placed.error_code), (code, code, code),
                      f"current_leader_epoch {requested} (the partition's is {current}): error codes of "
                      "Fetch, ListOffsets, OffsetForLeaderEpoch")
        fenced = conn.fetch(topic, 0, 0, current_leader_epoch=stale)
        expect_eq((fenced.current_leader.leader_id, fenced.current_leader.leader_epoch),
                  (phases[-1]["leader"], current), "the fenced Fetch's current leader (id, epoch)")
        # A fetcher that believes epoch 0's leader wrote past where it really ended.
        first_end = phases[0]["start"] + len(phases[0]["values"])
        diverged = conn.fetch(topic, 0, first_end + 5, current_leader_epoch=current, last_fetched_epoch=stale)
        expect_eq((diverged.error_code, diverged.diverging_epoch.epoch, diverged.diverging_epoch.end_offset),
                  (0, stale, first_end), "Fetch past its last epoch's end: (error, diverging epoch, end offset)")
        expect(not kafka_wire.batch_epochs(diverged.records), "a diverging fetch returned records")
        consistent = conn.fetch(topic, 0, first_end, current_leader_epoch=current, last_fetched_epoch=stale)
        # An absent tagged field decodes as None.
        expect_eq((consistent.error_code, consistent.diverging_epoch), (0, None),
                  "Fetch at its last epoch's end: (error, diverging epoch)")
        expect(kafka_wire.batch_epochs(consistent.records), "a fetch at its last epoch's end returned no records")
    follower = next(i for i in cluster.running_ids() if i != phases[-1]["leader"])

    def refused_by_follower():
        # UNKNOWN_LEADER_EPOCH until the follower has applied the leader's first entry.
        with kafka_wire.Connection(cluster.nodes[follower].bootstrap) as conn:
            code = conn.offset_for_leader_epoch(topic, 0, current, current_leader_epoch=current).error_code
        if code != NOT_LEADER_OR_FOLLOWER:
            raise NotYet(f"error code {code}")
        return True

    wait_until(refused_by_follower, FAULT_DEADLINE, interval=0.1,
               what=f"OffsetForLeaderEpoch on follower {follower} to answer NOT_LEADER_OR_FOLLOWER")



# -- leadership: balance after restarts, rolling restart, ElectLeaders ---------------------
BALANCE_DEADLINE = 30  # seconds: the balancer looks every 5 s; hand-overs take milliseconds
ROLLING_GAP_LIMIT_S = 1.0  # longest a partition may go without an acknowledged write in a rolling restart
ELECTION_NOT_NEEDED = 84


def leader_counts(cluster, topic):
    """{node: partitions of `topic` it leads}, every running node included, as node 1..n report."""
    counts = {i: 0 for i in cluster.running_ids()}
    for partition, leader in cluster.leaders(topic).items():
        if leader < 0:
            raise NotYet(f"{topic}/{partition} has no leader")
        counts[leader] = counts.get(leader, 0) + 1
    return counts


def wait_balanced(cluster, topic, timeout=BALANCE_DEADLINE):
    """Until the leaders of `topic` are spread within one of even over the running nodes."""
    def balanced():
        counts = leader_counts(cluster, topic)
        if max(counts.values()) - min(counts.values()) > 1:
            raise NotYet(f"leaders per node {counts}")
        return counts

    return wait_until(balanced, timeout, interval=0.2, what=f"leaders of {topic} balanced within one of even")


def sigterm_restart(cluster, node_id, scenario):
    """SIGTERM the node (controlled shutdown: it must exit 0 within the stop timeout), start it again."""
    stopped_at = time.monotonic()
    code = cluster.stop(node_id)
    stopped_after = time.monotonic() - stopped_at
    timing(scenario, **{f"node{node_id}_shutdown_s": stopped_after})
    expect_eq(code, 0, f"exit code of node {node_id} after SIGTERM")
    cluster.start(node_id)


def leaders_balance_after_restarts(cluster, step):
    topic, partitions = "balance", 6
    step(f"topic with {partitions} partitions, RF 3", lambda: cluster.create_topic(topic, partitions))
    step("leaders start balanced", lambda: wait_balanced(cluster, topic))

    def restart_all():
        for node_id in cluster.ids:
            sigterm_restart(cluster, node_id, "balance")
            print(f"  node {node_id} restarted; leaders per node {leader_counts(cluster, topic)}", flush=True)
        restarted_at = time.monotonic()
        counts = wait_balanced(cluster, topic)
        timing("balance", balanced_after_last_restart_s=time.monotonic() - restarted_at)
        print(f"  leaders per node {counts}", flush=True)

    step("every node restarted one by one (SIGTERM): leaders are balanced within one of even again",
         restart_all, timeout=300)

    def status_reports_balance():
        answer = cluster.tool("cluster", "status", "--bootstrap", cluster.bootstrap([1]), "--json")
        expect_eq(answer.returncode, 0, f"`rafka cluster status` exit code ({answer.stderr.strip()})")
        status = json.loads(answer.stdout)
        expect(status["balanced"] and status["imbalance"] <= 1, f"`rafka cluster status`: {status}")
        expect_eq(status["preferred_leaders"], status["partitions"], "partitions led by their preferred replica")

    step("`rafka cluster status` reports every partition led by its preferred replica, balanced",
         status_reports_balance)


def rolling_restart(cluster, step):
    topic, partitions, state = "rolling", 3, {}
    work = Workload(cluster.bootstrap(), topic, partitions, producers=PRODUCERS, rate=RATE, client_id="rolling")
    try:
        step(f"topic with {partitions} partitions, RF 3", lambda: cluster.create_topic(topic, partitions))
        step("rolling SIGTERM restart of every node under idempotent acks=all load: no delivery fails, "
             f"no partition goes {ROLLING_GAP_LIMIT_S} s without an acknowledged write",
             lambda: restart_each_under_load(cluster, work, topic, state), timeout=400)
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(), work))
        step("all replicas agree (checksums)", lambda: print_agreement(cluster.wait_replicas_agree(topic)))
    finally:
        work.close()


def restart_each_under_load(cluster, work, topic, state):
    work.start()
    work.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
    began = time.monotonic()
    for node_id in cluster.ids:
        wait_balanced(cluster, topic)  # the node leads its share, which it must hand over
        print(f"  SIGTERM node {node_id}, leader of {topic} partitions {led_by(cluster, topic, node_id)}",
              flush=True)
        sigterm_restart(cluster, node_id, "rolling-restart")
    wait_balanced(cluster, topic)
    work.wait_acks(ACKS_AFTER_FAULT, since=time.monotonic(), timeout=FAULT_DEADLINE)
    keep_producing(LOAD_AFTER_RECOVERY_S)
    gap = work.max_ack_gap(range(work.partitions), since=began)
    work.stop()
    timing("rolling-restart", max_ack_gap_s=gap, restarts_s=time.monotonic() - began)
    work.expect_no_failures()
    expect(gap < ROLLING_GAP_LIMIT_S, f"a partition went {gap:.3f} s without an acknowledged write")


def elect_leaders(cluster, step):
    """The balancer is off: a restarted node leads nothing until an ElectLeaders moves its
    preferred partitions back, driven by kafka-python, confluent-kafka and `rafka cluster`."""
    topic, partitions = "elect", 3
    state = {}
    step(f"topic with {partitions} partitions, RF 3", lambda: cluster.create_topic(topic, partitions))

    def preferred_of():
        md = cluster.metadata(cluster.ids[0], topic).topics[topic]
        state["preferred"] = {p: pm.replicas[0] for p, pm in md.partitions.items()}
        print(f"  preferred leaders {state['preferred']}", flush=True)

    step("every partition has a preferred replica", preferred_of)

    def restarted_leads_nothing(node_id):
        sigterm_restart(cluster, node_id, "elect-leaders")
        led = led_by(cluster, topic, node_id)
        expect_eq(led, [], f"partitions node {node_id} leads after its restart (balancer off)")
        return [p for p, preferred in state["preferred"].items() if preferred == node_id]

    def wait_led_by_preferred(wanted):
        def led():
            leaders = cluster.leaders(topic)
            off = {p: leaders[p] for p in wanted if leaders[p] != state["preferred"][p]}
            if off:
                raise NotYet(f"partitions not led by their preferred replica: {off}")
            return True

        wait_until(led, FAULT_DEADLINE, interval=0.1, what="preferred replicas to lead")

    def kafka_python_elects():
        first = cluster.ids[0]
        wanted = restarted_leads_nothing(first)
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap(), request_timeout_ms=30000)
        try:
            started = time.monotonic()
            answer = admin.elect_leaders(0, {topic: wanted}, timeout_ms=10000)
            timing("elect-leaders", kafka_python_election_s=time.monotonic() - started)
            codes = {p.partition_id: p.error_code for t in answer.replica_election_results
                     for p in t.partition_result}
            expect_eq(codes, {p: 0 for p in wanted}, "kafka-python ElectLeaders error codes")
            wait_led_by_preferred(wanted)
            again = admin.elect_leaders(0, {topic: wanted}, timeout_ms=10000)
            codes = {p.partition_id: p.error_code for t in again.replica_election_results for p in t.partition_result}
            expect_eq(codes, {p: ELECTION_NOT_NEEDED for p in wanted}, "error codes of a second election")
        finally:
            admin.close()

    step("kafka-python KafkaAdminClient.elect_leaders (PREFERRED) moves a restarted node's partitions back; "
         "asked again, ELECTION_NOT_NEEDED", kafka_python_elects)

    def confluent_elects():
        second = cluster.ids[1]
        wanted = restarted_leads_nothing(second)
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap(), "log_level": 0})
        partitions_wanted = [TopicPartition(topic, p) for p in wanted]
        result = admin.elect_leaders(ElectionType.PREFERRED, partitions_wanted).result(30)
        failed = {(tp.topic, tp.partition): err for tp, err in result.items() if err is not None}
        expect_eq(failed, {}, "confluent-kafka elect_leaders failures")
        expect_eq(sorted(tp.partition for tp in result), sorted(wanted), "partitions in the answer")
        wait_led_by_preferred(wanted)
        unclean = admin.elect_leaders(ElectionType.UNCLEAN, partitions_wanted).result(30)
        # Each error is a KafkaError (a KafkaException in some versions, wrapping one).
        codes = {tp.partition: (err if isinstance(err, KafkaError) else err.args[0]).code()
                 for tp, err in unclean.items() if err is not None}
        expect_eq(codes, {p: KafkaError.ELECTION_NOT_NEEDED for p in wanted},
                  "UNCLEAN election of partitions with a leader")

    step("confluent-kafka AdminClient.elect_leaders (PREFERRED) moves a restarted node's partitions back; "
         "UNCLEAN answers ELECTION_NOT_NEEDED", confluent_elects)

    def cli_elects():
        third = cluster.ids[2]
        wanted = restarted_leads_nothing(third)
        answer = cluster.tool("cluster", "elect-leaders", "--bootstrap", cluster.bootstrap([1]), "--json")
        expect_eq(answer.returncode, 0, f"`rafka cluster elect-leaders` exit code ({answer.stderr.strip()})")
        rows = json.loads(answer.stdout)
        elected = sorted(r["partition"] for r in rows if r["topic"] == topic and r["error_code"] == 0)
        expect_eq(elected, sorted(wanted), "partitions `rafka cluster elect-leaders` reports elected")
        wait_led_by_preferred(range(partitions))
        answer = cluster.tool("cluster", "elect-leaders", "--bootstrap", cluster.bootstrap([1]), "--topic", topic,
                              "--partition", str(wanted[0]), "--json")
        expect_eq(answer.returncode, 0, f"`rafka cluster elect-leaders --topic` exit code ({answer.stderr.strip()})")
        expect_eq([r["error_code"] for r in json.loads(answer.stdout)], [ELECTION_NOT_NEEDED],
                  "error code of electing a partition its preferred replica leads")

    step("`rafka cluster elect-leaders` (every partition) moves the last restarted node's partitions back",
         cli_elects)
    step("leaders balanced", lambda: wait_balanced(cluster, topic, timeout=5))


# -- the suite ---------------------------------------------------------------------------
# -- h. two outages on five nodes ---------------------------------------------------------------
OUTAGE_NODES = 5
FIRST_DOWN = [4, 5]  # wiped and down while writes commit on the other three
SECOND_DOWN = [2, 3]  # then down, while node 1 is wiped
BLANK = [1, 4, 5]  # a majority of the members, all with new data dirs
BLANK_WATCH_S = 5  # how long the blank majority is watched for founding a cluster of its own
FOUNDED_AGAIN = re.compile(r"so is the cluster|group founded|controller leader changed")
CONTROLLER_TERM = re.compile(r"controller leader changed .* term=(\d+)")


def double_outage(cluster, step):
    """The bootstrap hazard of five nodes and two outages. Nodes 4 and 5 are wiped and stay down while
    acks=all writes commit on 1, 2 and 3; then 2 and 3 go down and 1 is wiped too. Nodes 1, 4 and 5
    are a majority, all blank: they used to decide that the cluster was new and found a second history
    with the same log ids. They must keep waiting for the members that hold the first one. Once 2 and
    3 are back, the blank nodes know they are rejoining, and as three of the five voters lost their
    data, no leader could prove it holds every acknowledged record: they keep refusing votes, and the
    cluster stays unavailable rather than guess (recovering from the loss of a majority's data is an
    operator's decision)."""
    topic = "double-outage"
    work = Workload(cluster.bootstrap(), topic, 1, producers=PRODUCERS, rate=RATE, client_id="double-outage")
    try:
        step("topic with 1 partition, RF 5, hosted on every node",
             lambda: cluster.create_topic(topic, 1, replication_factor=OUTAGE_NODES))
        step(f"nodes {FIRST_DOWN} killed and wiped: acks=all writes commit on the other three",
             lambda: first_outage(cluster, work))
        step(f"nodes {SECOND_DOWN} killed, node 1 killed and wiped; nodes {BLANK} start blank: none founds a "
             f"cluster, elects a controller or leads a partition for {BLANK_WATCH_S} s",
             lambda: blank_majority_waits(cluster))
        step(f"nodes {SECOND_DOWN} restart: the blank nodes find the cluster exists, refuse votes, and no "
             f"leader of the controller is elected for {BLANK_WATCH_S} s",
             lambda: blank_majority_refuses(cluster))
        step("no Raft group of any node stopped on an error or failed to start",
             lambda: expect_no_group_failures(cluster), even_after_failure=True)
    finally:
        work.close()


def kill_and_wipe(cluster, node_id):
    cluster.kill9(node_id)
    shutil.rmtree(cluster.nodes[node_id].data_dir, ignore_errors=True)


def first_outage(cluster, work):
    work.start()
    work.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
    for node_id in FIRST_DOWN:
        kill_and_wipe(cluster, node_id)
    down_at = time.monotonic()
    work.wait_acks(ACKS_AFTER_FAULT, since=down_at, timeout=FAULT_DEADLINE)
    work.stop()
    work.expect_no_failures()


def blank_majority_waits(cluster):
    for node_id in SECOND_DOWN:
        cluster.kill9(node_id)
    kill_and_wipe(cluster, 1)
    for node_id in BLANK:
        cluster.spawn(node_id)
    # Each blank node first serves Kafka clients, then keeps asking its peers whether the cluster exists.
    wait_until(lambda: all(cluster.metadata(i) is not None for i in BLANK), FAULT_DEADLINE, interval=0.2,
               what=f"nodes {BLANK} to answer Metadata", fatal=NodeDied)
    watch_for_violation(cluster, lambda node_id: first_match(FOUNDED_AGAIN, cluster, node_id))


def blank_majority_refuses(cluster):
    # A restarted node reports the leader of its stored vote again; only a later term is an election.
    old_term = max((int(term) for node in cluster.nodes.values()
                    for term in CONTROLLER_TERM.findall(node.log_text())), default=0)
    for node_id in SECOND_DOWN:
        cluster.spawn(node_id)
    for node_id in BLANK:
        wait_until(lambda: "rejoining" in cluster.nodes[node_id].log_since_last_start(), FAULT_DEADLINE,
                   interval=0.2, what=f"node {node_id} to find that the cluster exists", fatal=NodeDied)
    wait_until(lambda: all(REFUSED_VOTE.search(cluster.nodes[i].log_since_last_start()) for i in BLANK),
               FAULT_DEADLINE, interval=0.2, what=f"nodes {BLANK} to refuse a vote", fatal=NodeDied)

    def violation(node_id):
        log = cluster.nodes[node_id].log_since_last_start()
        elected = [term for term in CONTROLLER_TERM.findall(log) if int(term) > old_term]
        if elected:
            return f"a controller leader of term {elected[-1]}"
        return first_match(re.compile("vote gate open"), cluster, node_id) if node_id in BLANK else None

    watch_for_violation(cluster, violation)


def first_match(pattern, cluster, node_id):
    found = pattern.search(cluster.nodes[node_id].log_since_last_start())
    return found and found.group(0)


def watch_for_violation(cluster, violation):
    """For BLANK_WATCH_S: no running node shows `violation(node)` (a description or None), and no blank
    node reports a controller. A negative claim needs a window: watched, not slept through, so a
    violation fails it at once."""
    watch_until = time.monotonic() + BLANK_WATCH_S
    while time.monotonic() < watch_until:
        for node_id in cluster.running_ids():
            seen = violation(node_id)
            expect(seen is None, f"node {node_id}: {seen}")
            if node_id not in BLANK:
                continue
            try:
                controller = cluster.metadata(node_id).controller_id
            except NodeDied:
                raise
            except Exception:  # noqa: BLE001 - a slow answer is no verdict; the log check still runs
                continue
            expect(controller < 0, f"node {node_id} reports controller {controller}")
        time.sleep(0.2)


# -- replica moves: AlterPartitionReassignments / ListPartitionReassignments ------------------
MOVE_NODES = 4
MOVE_GAP_LIMIT_S = 1.0  # longest a partition may go without an acknowledged write while it moves
INVALID_REPLICA_ASSIGNMENT, NO_REASSIGNMENT_IN_PROGRESS = 39, 85


def replicas_of(cluster, topic, ask):
    """{partition: replica list} as node `ask` reports it in Metadata."""
    md = cluster.metadata(ask, topic).topics.get(topic)
    if md is None or md.error is not None:
        raise NotYet(f"node {ask} has no metadata for {topic}")
    return {p: list(pm.replicas) for p, pm in md.partitions.items()}


def hosts_of(cluster, topic):
    """{partition: {node: (applied_index, checksum)}} over the running nodes that host a replica."""
    return cluster.replica_views(topic, cluster.running_ids())


def wait_moved(cluster, topic, partition, target, timeout=FAULT_DEADLINE):
    """Until every running node reports `target` as the partition's replicas and exactly the
    target's nodes host it."""
    def moved():
        for i in cluster.running_ids():
            reported = replicas_of(cluster, topic, i)[partition]
            if reported != target:
                raise NotYet(f"node {i} reports replicas {reported}")
        hosts = set(hosts_of(cluster, topic).get(partition, {}))
        if hosts != set(target):
            raise NotYet(f"{topic}/{partition} hosted on {sorted(hosts)}")
        return True

    wait_until(moved, timeout, interval=0.2, what=f"{topic}/{partition} moved to {target}", fatal=NodeDied)


def wait_hosts_agree(cluster, topic, placement, timeout=FAULT_DEADLINE):
    """Once the load has stopped: until the replicas of each partition (`placement`: {partition:
    nodes}) are at one applied index with one checksum; replicas at one index that differ fail."""
    def agree():
        views = hosts_of(cluster, topic)
        for partition, nodes in placement.items():
            replicas = views.get(partition, {})
            if set(replicas) != set(nodes):
                raise NotYet(f"{topic}/{partition} hosted on {sorted(replicas)}, not {sorted(nodes)}")
            by_index = {}
            for node_id, (index, checksum) in replicas.items():
                by_index.setdefault(index, set()).add(checksum)
            if any(len(sums) > 1 for sums in by_index.values()):
                raise ReplicasDiverged(f"{topic}/{partition}: {replicas}")
            if len(by_index) > 1:
                raise NotYet(f"{topic}/{partition} replicas lag: {replicas}")
        return {p: views[p] for p in placement}

    return wait_until(agree, timeout, interval=0.2, what=f"the replicas of {topic} to agree",
                      fatal=(ReplicasDiverged, NodeDied))


def create_placed_topic(cluster, topic, partitions):
    """A topic with RF 3 on a cluster of more than three nodes: every partition led, on 3 nodes."""
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap(), "log_level": 0})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=3)])[topic].result(60)

    def placed():
        leaders = cluster.leaders(topic)
        if len(leaders) != partitions or min(leaders.values()) < 0:
            raise NotYet(f"leaders {leaders}")
        return replicas_of(cluster, topic, cluster.ids[0])

    return wait_until(placed, FAULT_DEADLINE, interval=0.2, what=f"{topic} led and placed")


def reassign(cluster, step):
    """Four nodes: replicas move under idempotent acks=all load, driven by kafka-python's admin
    client and by `rafka cluster reassign`, once with the partition's leader leaving the replica set
    and once with the leader killed (kill -9) right after the move started."""
    topic, partitions, state = "moving", 2, {}
    work = Workload(cluster.bootstrap(), topic, partitions, producers=PRODUCERS, rate=RATE, client_id="moving")
    try:
        def create():
            state["replicas"] = create_placed_topic(cluster, topic, partitions)
            print(f"  replicas {state['replicas']}", flush=True)
            work.start()
            work.wait_acks(WARMUP_ACKS, timeout=FAULT_DEADLINE)
            state["began"] = time.monotonic()

        step(f"topic with {partitions} partitions, RF 3 on {MOVE_NODES} nodes, under load", create)
        step("kafka-python: invalid moves are refused (unknown broker, duplicate, nothing to cancel)",
             lambda: invalid_moves_refused(cluster, topic))
        step("kafka-python moves partition 0 off its leader onto the spare node: the move is listed while "
             "under way, then every node reports the new replicas, the old replica's copy is dropped, "
             "the new replicas agree", lambda: move_off_leader(cluster, work, topic, state), timeout=240)
        step("`rafka cluster reassign` moves partition 1 and its leader is killed (kill -9) halfway, once it "
             "added the learner: the next leader completes the move; the killed node returns and drops its copy",
             lambda: move_and_kill_leader(cluster, topic, state), timeout=300)
        step("a node is killed (kill -9): a move of partition 1 onto it waits, is listed, and is cancelled "
             "(kafka-python, replicas None): the replicas go back", lambda: cancel_stuck_move(cluster, topic, state),
             timeout=240)
        step("the dead node's replica of partition 0 moves to a live node; the node returns and drops "
             "its copy", lambda: replace_dead_replica(cluster, topic, state), timeout=240)

        def load_flowed():
            work.wait_acks(ACKS_AFTER_FAULT, since=time.monotonic(), timeout=FAULT_DEADLINE)
            gap = work.max_ack_gap([0], since=state["began"], until=state["moved_off_leader_at"])
            work.stop()
            timing("reassign", max_ack_gap_partition0_s=gap)
            work.expect_no_failures()
            expect(gap < MOVE_GAP_LIMIT_S, f"partition 0 went {gap:.3f} s without an acknowledged write")

        step(f"the load flowed: no delivery failed, partition 0 never went {MOVE_GAP_LIMIT_S} s without an "
             "ack while its replicas moved off its leader", load_flowed)
        step("the new replicas of each partition agree (checksums)",
             lambda: print_agreement(wait_hosts_agree(cluster, topic, state["targets"])))
        step("every acknowledged record is read back once, in order, at its acknowledged offset",
             lambda: verify_read_back(cluster.bootstrap(), work))
        step("no Raft group of any node stopped on an error or failed to start",
             lambda: expect_no_group_failures(cluster))
    finally:
        work.close()


def invalid_moves_refused(cluster, topic):
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap(), request_timeout_ms=30000)
    try:
        tp = KafkaTopicPartition(topic, 0)
        cases = {"unknown broker": [1, 2, 9], "duplicate broker": [1, 1, 2]}
        for what, replicas in cases.items():
            answer = admin.alter_partition_reassignments({tp: replicas})
            expect(answer[tp] is not None and answer[tp].errno == INVALID_REPLICA_ASSIGNMENT,
                   f"{what}: {answer}")
        answer = admin.alter_partition_reassignments({tp: None})
        expect(answer[tp] is not None and answer[tp].errno == NO_REASSIGNMENT_IN_PROGRESS, f"cancel: {answer}")
        expect_eq(admin.list_partition_reassignments(), {}, "reassignments in progress")
    finally:
        admin.close()


def move_off_leader(cluster, work, topic, state):
    before = state["replicas"][0]
    leader = wait_until(lambda: (lambda l: l >= 0 and l)(cluster.leader_of(topic, 0)), FAULT_DEADLINE,
                        what=f"a leader of {topic}/0")
    spare = next(i for i in cluster.ids if i not in before)
    target = [spare] + [i for i in before if i != leader]
    print(f"  partition 0: replicas {before}, leader {leader}; moving to {target}", flush=True)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap(), request_timeout_ms=30000)
    try:
        tp = KafkaTopicPartition(topic, 0)
        started = time.monotonic()
        answer = admin.alter_partition_reassignments({tp: target})
        expect_eq(answer, {tp: None}, "AlterPartitionReassignments answer")
        listed = admin.list_partition_reassignments()
        if listed:  # a fast move may be over before the list is asked for
            expect_eq(listed[tp]["adding_replicas"], [spare], "adding replicas")
            expect_eq(listed[tp]["removing_replicas"], [leader], "removing replicas")
            expect_eq(listed[tp]["replicas"], target + [leader], "replicas while moving")
        wait_until(lambda: admin.list_partition_reassignments() == {}, FAULT_DEADLINE, interval=0.1,
                   what="the move to finish")
        state["moved_off_leader_at"] = time.monotonic()
        timing("reassign", move_off_leader_s=state["moved_off_leader_at"] - started)
    finally:
        admin.close()
    wait_moved(cluster, topic, 0, target)
    state.setdefault("targets", {})[0] = target
    group = next(e["group"] for e in cluster.checksums(spare) if e["topic"] == topic and e["partition"] == 0)
    dropped = re.compile(rf"partition group dropped.*\bgroup={group}\b")
    wait_until(lambda: dropped.search(cluster.nodes[leader].log_text()), FAULT_DEADLINE, interval=0.2,
               what=f"node {leader} to drop its replica (group {group})")
    new_leader = cluster.leader_of(topic, 0)
    expect(new_leader in target, f"leader {new_leader} is one of the new replicas")


def wait_forgotten(cluster, dead):
    """Until every running node names a live controller and no longer lists the dead node (after
    the broker session timeout, as Kafka does): kafka-python's admin client gives up on a listed
    broker it cannot connect to instead of trying another."""
    def forgotten():
        for i in cluster.running_ids():
            md = cluster.metadata(i)
            if md.controller_id < 0 or md.controller_id == dead or dead in md.brokers:
                raise NotYet(f"node {i} names controller {md.controller_id}, brokers {sorted(md.brokers)}")
        return True

    wait_until(forgotten, FAULT_DEADLINE, interval=0.2, what=f"node {dead} forgotten")


def cancel_stuck_move(cluster, topic, state):
    target = state["targets"][1]
    victim = next(i for i in cluster.ids if i not in target)
    cluster.kill9(victim)
    state["victim"] = victim
    wait_forgotten(cluster, victim)
    leader = wait_until(lambda: (lambda l: l >= 0 and l)(cluster.leader_of(topic, 1)), FAULT_DEADLINE,
                        what=f"a leader of {topic}/1")
    stuck = [victim if i == next(n for n in target if n != leader) else i for i in target]
    print(f"  node {victim} killed; moving partition 1 from {target} to {stuck}, then cancelling", flush=True)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap(cluster.running_ids()), request_timeout_ms=30000)
    try:
        tp = KafkaTopicPartition(topic, 1)
        expect_eq(admin.alter_partition_reassignments({tp: stuck}), {tp: None}, "AlterPartitionReassignments answer")
        listed = wait_until(lambda: admin.list_partition_reassignments().get(tp), FAULT_DEADLINE,
                            what="the move in the list")
        expect_eq(listed["adding_replicas"], [victim], "adding replicas of the stuck move")
        keep_producing(1)  # the learner on the dead node cannot catch up: the move stays listed
        expect(admin.list_partition_reassignments().get(tp), "the move waiting for a dead node is still listed")
        started = time.monotonic()
        expect_eq(admin.alter_partition_reassignments({tp: None}), {tp: None}, "cancel answer")
        wait_until(lambda: admin.list_partition_reassignments() == {}, FAULT_DEADLINE, interval=0.1,
                   what="the cancelled move to end")
        timing("reassign", cancel_s=time.monotonic() - started)
    finally:
        admin.close()
    wait_moved(cluster, topic, 1, target)


def replace_dead_replica(cluster, topic, state):
    victim, target = state["victim"], state["targets"][0]
    if victim not in target:
        print(f"  node {victim} holds no replica of partition 0 ({target}): nothing to replace", flush=True)
    else:
        replacement = next(i for i in cluster.ids if i not in target)
        new_target = [replacement if i == victim else i for i in target]
        print(f"  partition 0: replacing dead node {victim} by {replacement}: {new_target}", flush=True)
        admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap(cluster.running_ids()),
                                 request_timeout_ms=30000)
        try:
            tp = KafkaTopicPartition(topic, 0)
            started = time.monotonic()
            expect_eq(admin.alter_partition_reassignments({tp: new_target}), {tp: None}, "answer")
            wait_until(lambda: admin.list_partition_reassignments() == {}, FAULT_DEADLINE, interval=0.1,
                       what="the move off the dead node to finish")
            timing("reassign", replace_dead_s=time.monotonic() - started)
        finally:
            admin.close()
        wait_moved(cluster, topic, 0, new_target)
        state["targets"][0] = new_target
    cluster.start(victim)
    for partition, nodes in state["targets"].items():
        wait_moved(cluster, topic, partition, nodes)


def move_and_kill_leader(cluster, topic, state):
    """The spare node is paused so that the move stops halfway: its learner cannot catch up. The
    leader is killed then, and the next leader must take the move on from the membership as it
    stands once the spare resumes."""
    before = state["replicas"][1]
    leader = wait_until(lambda: (lambda l: l >= 0 and l)(cluster.leader_of(topic, 1)), FAULT_DEADLINE,
                        what=f"a leader of {topic}/1")
    spare = next(i for i in cluster.ids if i not in before)
    target = [i for i in before if i != leader] + [spare]
    group = next(e["group"] for e in cluster.checksums(leader) if e["topic"] == topic and e["partition"] == 1)
    others = [i for i in cluster.ids if i not in (leader, spare)]
    print(f"  partition 1 (group {group}): replicas {before}, leader {leader}; spare {spare} paused, moving to "
          f"{target}, kill -9 {leader} once the learner is added, spare resumed", flush=True)
    cluster.pause(spare)
    try:
        answer = cluster.tool("cluster", "reassign", "--bootstrap", cluster.bootstrap(others), "--topic", topic,
                              "--partition", "1", "--replicas", ",".join(map(str, target)))
        expect_eq(answer.returncode, 0, f"`rafka cluster reassign` exit code ({answer.stderr.strip()})")
        learner = re.compile(rf"replica added as a learner group={group} learner={spare}\b")
        wait_until(lambda: learner.search(cluster.nodes[leader].log_since_last_start()), FAULT_DEADLINE,
                   interval=0.1, what=f"node {leader} to add node {spare} as a learner")
        cluster.kill9(leader)
    finally:
        cluster.resume(spare)
    started = time.monotonic()

    def finished():
        listed = cluster.tool("cluster", "reassignments", "--bootstrap", cluster.bootstrap(others), "--json")
        return listed.returncode == 0 and json.loads(listed.stdout) == []

    wait_until(finished, FAULT_DEADLINE, interval=0.2, what="the move to finish without the killed leader")
    timing("reassign", move_with_leader_killed_s=time.monotonic() - started)
    completed = re.compile(rf"replica move complete group={group}\b")
    finishers = [i for i in cluster.running_ids() if completed.search(cluster.nodes[i].log_text())]
    expect(finishers and leader not in finishers, f"the move was completed by {finishers}, not the killed leader")
    cluster.start(leader)
    wait_moved(cluster, topic, 1, target)
    state.setdefault("targets", {})[1] = target


SCENARIOS = {
    "leader-kill": (leader_kill, {}),
    "follower-kill": (follower_kill, {}),
    "isolation": (isolation, {"proxies": True}),
    "wipe": (wiped_follower, {"snapshot_entries": WIPE_SNAPSHOT_ENTRIES}),
    "wipe-purged": (wiped_caught_up_follower, {"snapshot_entries": WIPE_SNAPSHOT_ENTRIES}),
    "wipe-rejoin": (wiped_rejoin_leader_kill, {"proxies": True}),
    "quorum-loss": (quorum_loss, {}),
    "epochs": (leader_epochs, {}),
    "balance": (leaders_balance_after_restarts, {}),
    "rolling-restart": (rolling_restart, {}),
    "elect-leaders": (elect_leaders, {"settings": {"auto_leader_rebalance_enable": False}}),
    "double-outage": (double_outage, {"size": OUTAGE_NODES}),
    "reassign": (reassign, {"size": MOVE_NODES}),
    "peer-auth": (peer_auth, {"secret": SECRET, "node_settings": {IMPOSTOR: {"cluster_secret": "a-guess"}},
                              "form": form_without_impostor}),
}


def run_scenario(results, name):
    body, options = SCENARIOS[name]
    options = dict(options)
    form = options.pop("form", form_cluster)
    step = Steps(results, name)
    cluster = Cluster(name=name, **options)
    results.cluster = cluster
    try:
        size = len(cluster.ids)
        what = (f"{size} nodes form a cluster: each lists {size} brokers and a controller, `rafka health` exits 0"
                if form is form_cluster else form.__doc__)
        step(what, lambda: form(cluster), timeout=READY_TIMEOUT + 30)
        if not step.broken:
            body(cluster, step)
        step("no broker logged a panic", lambda: expect_no_panics(cluster), even_after_failure=True)
    finally:
        results.cluster = None
        cluster.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="run the whole set N times")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios (default: all of {','.join(SCENARIOS)})")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}")
    exit_on_sigterm()
    results = ClusterResults(SUITE)
    find_binary()  # fail now, clearly, rather than once per scenario
    with results.check("self-test: divergence, lagging replicas, moved and stray records are detected"):
        self_test()
    runs = []
    for run in range(1, args.repeat + 1):
        passed_before, failed_before = len(results.passed), len(results.failed)
        started = time.monotonic()
        print(f"==== run {run}/{args.repeat} ====", flush=True)
        for name in names:
            run_scenario(results, name)
        runs.append((len(results.passed) - passed_before, len(results.failed) - failed_before,
                     time.monotonic() - started))
        print(f"==== run {run}/{args.repeat}: {runs[-1][0]} passed, {runs[-1][1]} failed "
              f"in {runs[-1][2]:.0f}s ====", flush=True)
    if args.repeat > 1:
        print("==== per-run summary ====")
        for run, (passed, failed, seconds) in enumerate(runs, 1):
            print(f"run {run}: {'PASS' if failed == 0 else 'FAIL'} ({passed} passed, {failed} failed, {seconds:.0f}s)")
        print(f"{sum(1 for _p, f, _s in runs if f == 0)} of {len(runs)} runs passed")
    results.finish()


if __name__ == "__main__":
    main()
