#!/usr/bin/env python3
"""The admin listener (/metrics, /health, /ready) and the logs of rafka, on real processes.

- One broker: /metrics is scraped before and after a confluent-kafka run (create a topic,
  produce, consume in a consumer group and commit, one refused CreateTopics) and parsed with
  Prometheus's own text parser (prometheus_client); the request counters, latency histograms,
  byte counters, Raft append histograms, partition and consumer-group gauges must have moved
  by what the run did. The log has one INFO line per partition leadership and no ERROR line.
- One broker with RAFKA_LOG_FORMAT=json: every log line is a JSON object.
- Three nodes: a node alone is alive (/health 200) but not ready (/ready 503, `rafka health
  --admin` fails) and logs no ERROR while its vote requests to absent peers fail; once the
  others start every node is ready; with one node killed, the others log no ERROR either.

Ends with `N passed, N failed`.
"""

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
from harness import (Broker, Results, exit_on_sigterm, expect, expect_eq, find_binary,  # noqa: E402
                     wait_until)
from cluster import READY_TIMEOUT, Cluster  # noqa: E402

from confluent_kafka import Consumer, KafkaException, Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

SUITE = "metrics"
TIMEOUT = 30  # seconds, for any single client operation or condition
PARTITIONS = 2
MESSAGES = 200  # split evenly over the partitions
VALUE_SIZE = 100
TOPIC = "metrics-test"
GROUP = "metrics-test-group"


# -- HTTP and exposition --------------------------------------------------------------
def http_get(admin, path, timeout=5):
    """(status, content type, body) of GET http://admin/path; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type"), response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), err.read().decode()


class Scrape:
    """One /metrics answer, parsed by prometheus_client; checks the histograms are well formed."""

    def __init__(self, admin):
        status, content_type, text = http_get(admin, "/metrics")
        expect_eq(status, 200, "GET /metrics status")
        expect(content_type.startswith("text/plain; version=0.0.4"), f"content type {content_type}")
        self.families = list(text_string_to_metric_families(text))  # raises on malformed text
        names = [f.name for f in self.families]
        expect(len(names) == len(set(names)), f"a family appears twice: {names}")
        self.samples = [s for f in self.families for s in f.samples]
        for family in self.families:
            expect(family.documentation, f"{family.name} has no HELP text")
            if family.type == "histogram":
                self._check_histogram(family)

    @staticmethod
    def _check_histogram(family):
        series = {}
        for s in family.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            entry = series.setdefault(key, {"buckets": [], "count": None})
            if s.name.endswith("_bucket"):
                entry["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                entry["count"] = s.value
        for key, entry in series.items():
            buckets = sorted(entry["buckets"])
            counts = [c for _, c in buckets]
            expect(counts == sorted(counts), f"{family.name}{dict(key)} buckets decrease: {buckets}")
            expect(buckets and buckets[-1][0] == float("inf"), f"{family.name}{dict(key)} has no +Inf bucket")
            expect_eq(buckets[-1][1], entry["count"], f"{family.name}{dict(key)} +Inf bucket vs _count")

    def matching(self, name, **labels):
        want = {k: str(v) for k, v in labels.items()}
        return [s for s in self.samples if s.name == name and want.items() <= s.labels.items()]

    def value(self, name, **labels):
        """The sum of the matching samples; 0 when none (a counter not yet created)."""
        return sum(s.value for s in self.matching(name, **labels))

    def one(self, name, **labels):
        found = self.matching(name, **labels)
        expect_eq(len(found), 1, f"samples of {name}{labels}")
        return found[0]


def moved(before, after, name, **labels):
    return after.value(name, **labels) - before.value(name, **labels)


# -- the single-broker run --------------------------------------------------------------
def kafka_run(bootstrap):
    """Create TOPIC, produce MESSAGES, consume them in GROUP and commit; returns the open consumer."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
                        operation_timeout=TIMEOUT)[TOPIC].result(timeout=TIMEOUT)
    # The same topic again: refused with TOPIC_ALREADY_EXISTS, which the error counter must show.
    try:
        admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS, replication_factor=1)],
                            operation_timeout=TIMEOUT)[TOPIC].result(timeout=TIMEOUT)
        raise AssertionError("creating an existing topic succeeded")
    except KafkaException as err:
        expect("TOPIC_ALREADY_EXISTS" in str(err), f"unexpected error {err}")

    failures = []
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                         "message.timeout.ms": TIMEOUT * 1000})
    value = b"v" * VALUE_SIZE
    for i in range(MESSAGES):
        producer.produce(TOPIC, value, key=str(i).encode(), partition=i % PARTITIONS,
                         on_delivery=lambda err, _msg: err and failures.append(err))
    expect_eq(producer.flush(TIMEOUT), 0, "messages still queued after flush")
    expect_eq(failures, [], "delivery failures")

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([TOPIC])
    received = []

    def all_received():
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            received.append(msg)
        return len(received) >= MESSAGES

    wait_until(all_received, TIMEOUT, interval=0, what=f"{MESSAGES} messages in group {GROUP}")
    consumer.commit(asynchronous=False)
    return consumer


def single_broker_checks(results):
    with Broker(default_partitions=PARTITIONS) as broker:
        results.broker = broker
        admin = broker.admin
        with results.check("/health and /ready answer 200, other paths 404"):
            expect_eq(http_get(admin, "/health")[0], 200, "/health")
            status, _, body = http_get(admin, "/ready")
            expect_eq((status, body.strip()), (200, "ready"), "/ready")
            expect_eq(http_get(admin, "/nope")[0], 404, "/nope")
        with results.check("rafka health --admin exits 0 on a ready broker"):
            done = subprocess.run([find_binary(), "health", "--admin", admin], capture_output=True,
                                  text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
            expect_eq(done.returncode, 0, f"exit code (stderr {done.stderr.strip()!r})")

        before = after = None
        with results.check("/metrics parses with prometheus_client before and after a client run"):
            before = Scrape(admin)
            consumer = kafka_run(broker.bootstrap)
            try:
                # The coordinator counts the member once the group is formed; the commit made it so.
                after = wait_until(
                    lambda: (s := Scrape(admin)).value("rafka_consumer_group_members",
                                                       consumer_group=GROUP) == 1 and s,
                    TIMEOUT, interval=0.2, what=f"group {GROUP} with one member in /metrics")
                expect(after.value("rafka_connections") >= 1, "no open connection while clients are open")
            finally:
                consumer.close()
        if before is None or after is None:
            return

        with results.check("request counters and latency histograms moved per API"):
            for api in ["Produce", "Fetch", "Metadata", "CreateTopics", "JoinGroup", "SyncGroup",
                        "OffsetCommit", "FindCoordinator"]:
                requests = moved(before, after, "rafka_requests_total", api=api)
                expect(requests >= 1, f"rafka_requests_total{{api={api}}} moved by {requests}")
                observed = moved(before, after, "rafka_request_duration_seconds_count", api=api)
                expect(observed >= 1, f"{api} latency histogram count moved by {observed}")
                seconds = moved(before, after, "rafka_request_duration_seconds_sum", api=api)
                expect(seconds > 0, f"{api} latency histogram sum moved by {seconds}")
        with results.check("errors are counted by API and error code"):
            expect_eq(moved(before, after, "rafka_request_errors_total", api="CreateTopics",
                            error="TopicAlreadyExists"), 1, "CreateTopics TopicAlreadyExists errors")
            expect_eq(moved(before, after, "rafka_request_errors_total", api="Produce"), 0, "Produce errors")
        with results.check("bytes in and out per topic"):
            payload = MESSAGES * VALUE_SIZE
            bytes_in = moved(before, after, "rafka_topic_bytes_in_total", topic=TOPIC)
            bytes_out = moved(before, after, "rafka_topic_bytes_out_total", topic=TOPIC)
            # Batches carry headers and keys too, and a consumer may fetch a batch twice.
            expect(payload <= bytes_in < 2 * payload, f"bytes in {bytes_in} for {payload} payload bytes")
            expect(bytes_out >= payload, f"bytes out {bytes_out} for {payload} payload bytes")
        with results.check("partition high watermark, log start and leadership"):
            for partition in range(PARTITIONS):
                labels = {"topic": TOPIC, "partition": partition}
                expect_eq(after.one("rafka_partition_high_watermark", **labels).value,
                          MESSAGES // PARTITIONS, f"high watermark of {labels}")
                expect_eq(after.one("rafka_partition_log_start_offset", **labels).value, 0, "log start")
                expect_eq(after.one("rafka_partition_leader", **labels).value, 1, "leader here")
        with results.check("Raft appends, terms and leaders"):
            appends = moved(before, after, "rafka_raft_log_append_duration_seconds_count")
            expect(appends >= 1, f"{appends} Raft appends timed")
            appended = moved(before, after, "rafka_raft_log_append_bytes_sum")
            expect(appended >= MESSAGES * VALUE_SIZE, f"{appended} Raft log bytes for the produced payload")
            expect(moved(before, after, "rafka_raft_log_append_entries_sum") >= 1, "entries per append")
            commits = moved(before, after, "rafka_raft_commit_duration_seconds_count")
            expect(commits >= 1, f"{commits} produce commits timed")
            expect(moved(before, after, "rafka_raft_commit_duration_seconds_sum") > 0, "commit time observed")
            for partition in range(PARTITIONS):
                group = after.one("rafka_partition_leader", topic=TOPIC, partition=partition).labels["raft_group"]
                expect(after.one("rafka_raft_term", raft_group=group).value >= 1, f"term of group {group}")
                expect_eq(after.one("rafka_raft_leader", raft_group=group).value, 1, f"leader of group {group}")
                expect(after.value("rafka_raft_leader_changes_total", raft_group=group) >= 1,
                       f"leader changes of group {group}")
                expect(after.one("rafka_raft_applied_index", raft_group=group).value >= 1, "applied index")
        with results.check("consumer group members and lag"):
            expect_eq(after.value("rafka_consumer_group_members", consumer_group=GROUP), 1, "members")
            for partition in range(PARTITIONS):
                expect_eq(after.one("rafka_consumer_group_lag", consumer_group=GROUP, topic=TOPIC,
                                    partition=partition).value, 0, f"lag on partition {partition}")
        with results.check("storage gauges: no write stall, the records in the partitions' log files, "
                           "their index in RocksDB"):
            expect_eq(after.value("rafka_storage_write_stopped"), 0, "write stopped")
            on_disk = sum(after.one("rafka_partition_size_bytes", topic=TOPIC, partition=partition).value
                          for partition in range(PARTITIONS))
            expect(on_disk >= MESSAGES * VALUE_SIZE, f"{on_disk} bytes in the partitions' log files")
            indexed = (after.value("rafka_storage_memtable_bytes", column_family="batch_index")
                       + after.value("rafka_storage_sst_bytes", column_family="batch_index"))
            expect(indexed > 0, "nothing in the batch index column family")
            for counter in ("flush_written", "compaction_read", "compaction_written"):
                name = f"rafka_storage_{counter}_bytes_total"
                expect(after.one(name).value >= before.one(name).value >= 0, f"{name} never goes back")
        with results.check("connections and process memory"):
            expect(moved(before, after, "rafka_connections_accepted_total") >= 3, "connections accepted")
            expect(after.value("process_resident_memory_bytes") > 1 << 20, "resident memory")
        with results.check("one INFO line per partition leadership, no ERROR line"):
            log = broker.log_tail(lines=100_000)
            pattern = re.compile(r"INFO .*partition leader changed.*topic=\"?" + re.escape(TOPIC) +
                                 r"\"? partition=(\d+)")
            lines = [pattern.search(line) for line in log.splitlines()]
            partitions = sorted(int(m.group(1)) for m in lines if m)
            expect_eq(partitions, list(range(PARTITIONS)), "partitions with a leadership line")
            errors = [line for line in log.splitlines() if " ERROR " in line]
            expect_eq(errors, [], "ERROR lines")


def produce_one(bootstrap, topic):
    """One acknowledged message; the producer is gone on return, so it does not outlive the broker."""
    producer = Producer({"bootstrap.servers": bootstrap, "message.timeout.ms": TIMEOUT * 1000})
    producer.produce(topic, b"x")
    expect_eq(producer.flush(TIMEOUT), 0, "undelivered message")


def json_log_checks(results):
    with results.check("RAFKA_LOG_FORMAT=json writes one JSON object per line"):
        with Broker(extra_env={"RAFKA_LOG_FORMAT": "json"}) as broker:
            produce_one(broker.bootstrap, "metrics-json-log")  # auto-creates a topic: a leadership line

            def leadership_logged():
                text = broker.log_path.read_text()
                lines = [line for line in text.splitlines() if line.strip() and not line.startswith("====")]
                events = [json.loads(line) for line in lines]  # raises on any non-JSON line
                return [e for e in events if e["fields"].get("message") == "partition leader changed"]

            events = wait_until(leadership_logged, TIMEOUT, what="a JSON leadership event",
                                fatal=(json.JSONDecodeError, KeyError))
            expect_eq(events[0]["level"], "INFO", "level of the leadership event")
            expect_eq(events[0]["fields"]["topic"], "metrics-json-log", "its topic field")


# -- three nodes --------------------------------------------------------------------------
def error_lines(node):
    return [line for line in node.log_text().splitlines() if " ERROR " in line]


def unreachable_lines(node, peer):
    return [line for line in node.log_text().splitlines()
            if "peer unreachable" in line and re.search(rf"\bpeer={peer}\b", line)]


def health_tool(admin):
    return subprocess.run([find_binary(), "health", "--admin", admin], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def cluster_checks(results):
    cluster = Cluster(name="metrics")
    results.broker = cluster  # its log_tail() is printed under the first failure
    try:
        cluster.prepare()
        lone = cluster.nodes[1]
        with results.check("a node alone: /health 200, /ready 503, rafka health --admin fails"):
            cluster.spawn(1)
            wait_until(lambda: http_get(lone.admin, "/health")[0] == 200, READY_TIMEOUT,
                       what="node 1 /health")

            def serving_but_not_ready():
                status, _, body = http_get(lone.admin, "/ready")
                expect_eq(status, 503, f"/ready of a node without a majority ({body.strip()})")
                # Not ready first because it is starting, then for want of a controller.
                return "controller" in body

            wait_until(serving_but_not_ready, READY_TIMEOUT, interval=0.1, fatal=AssertionError,
                       what="node 1 /ready to say it knows no controller")
            done = health_tool(lone.admin)
            expect(done.returncode != 0, "rafka health --admin succeeded on a lone node")
            expect("503" in done.stderr, f"rafka health does not say why: {done.stderr.strip()!r}")
        with results.check("a node alone logs each absent peer once, and no ERROR"):
            # It probes both peers again and again (to found the controller group with them):
            # one WARN per peer, not one per failed dial.
            for peer in (2, 3):
                wait_until(lambda peer=peer: unreachable_lines(lone, peer), TIMEOUT,
                           what=f"node 1 to log peer {peer} unreachable")
            expect_eq(http_get(lone.admin, "/ready")[0], 503, "/ready of the lone node, later")
            for peer in (2, 3):
                expect_eq(len(unreachable_lines(lone, peer)), 1, f"'peer unreachable' lines for peer {peer}")
            expect_eq(error_lines(lone), [], "ERROR lines of the lone node")
        with results.check("with a majority every node becomes ready"):
            cluster.spawn(2)
            cluster.spawn(3)
            cluster.wait_ready()
            for node in cluster.nodes.values():
                wait_until(lambda node=node: http_get(node.admin, "/ready")[0] == 200, READY_TIMEOUT,
                           what=f"node {node.id} /ready")
                done = health_tool(node.admin)
                expect_eq(done.returncode, 0, f"rafka health --admin of node {node.id} ({done.stderr.strip()})")
            def one_controller_leader():
                leaders = {Scrape(n.admin).one("rafka_raft_leader", raft_group=0).value
                           for n in cluster.nodes.values()}
                return len(leaders) == 1 and leaders.pop() in (1, 2, 3)

            # Readiness comes from announcements; each node's own Raft view of the leader follows
            # within an election round, which a loaded machine can stretch.
            wait_until(one_controller_leader, READY_TIMEOUT, interval=0.1,
                       what="every node to report the same controller leader")
        with results.check("a killed controller leader: the others elect anew, log it once, and no ERROR"):
            # openraft logs every failed AppendEntries and vote request at ERROR: the survivors
            # fail both (replication to the dead node, then votes while electing without it).
            dead = int(Scrape(cluster.nodes[1].admin).one("rafka_raft_leader", raft_group=0).value)
            survivors = [i for i in cluster.ids if i != dead]
            seen = {i: len(unreachable_lines(cluster.nodes[i], dead)) for i in survivors}
            cluster.kill9(dead)

            def new_controller(i):
                scrape = Scrape(cluster.nodes[i].admin)
                leader = scrape.one("rafka_raft_leader", raft_group=0).value
                return leader in survivors and http_get(cluster.nodes[i].admin, "/ready")[0] == 200

            for i in survivors:
                wait_until(lambda i=i: new_controller(i), READY_TIMEOUT, what=f"node {i} to see a new controller")
                expect(Scrape(cluster.nodes[i].admin).value("rafka_raft_leader_changes_total", raft_group=0) >= 2,
                       f"node {i} counted fewer than two controller leaders")
            for i in survivors:
                node = cluster.nodes[i]
                expect_eq(len(unreachable_lines(node, dead)), seen[i] + 1, f"node {i} lines about peer {dead}")
                expect_eq(error_lines(node), [], f"ERROR lines of node {i}")
                changes = [line for line in node.log_text().splitlines() if "controller leader changed" in line]
                expect(changes and re.search(rf"previous=Some\({dead}\)", changes[-1]),
                       f"node {i} did not log the controller leadership moving off node {dead}: {changes[-1:]}")
    finally:
        cluster.close()


def main():
    exit_on_sigterm()
    results = Results(SUITE)
    try:
        single_broker_checks(results)
        results.broker = None
        json_log_checks(results)
        cluster_checks(results)
    except Exception as exc:  # noqa: BLE001 - a crash outside a check is one more failure
        results.record("suite ran to completion", False, repr(exc))
    results.finish()


if __name__ == "__main__":
    main()
