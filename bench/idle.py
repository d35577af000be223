#!/usr/bin/env python3
"""What many idle partitions cost a three-node cluster.

    RAFKA_BIN=/path/to/release/rafka python3 bench/idle.py [--partitions 1000,10000] [--seconds 30]

For each partition count, a fresh three-node cluster (cluster.BenchCluster, the shipped
cluster's Raft timing) gets topics of --per-topic partitions each, replication factor 3,
created a few topics per CreateTopics request until the count is reached or the
--create-seconds deadline passes (the table then says how many were created). Once every
created partition has a leader (Metadata) and --settle seconds have passed, nothing is
produced or consumed for --seconds, and per node:

- CPU, % of one core: utime + stime from /proc/<pid>/stat over the window;
- RSS: VmRSS at the end of the window, and its peak (sampled every 0.5 s);
- peer RPCs per second, per kind: the rise of the counter
  rafka_peer_requests_total{kind=...} on the node's /metrics over the window ("n/a" when the
  broker does not export it).

Prints a table, writes bench/results-idle.json.
"""

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster  # noqa: E402  (puts compat-tests on sys.path)
import kafka_probe  # noqa: E402
import procstat  # noqa: E402
from harness import exit_on_sigterm  # noqa: E402
from workloads import QUIET  # noqa: E402

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

NODES = 3
PEER_RPC_METRIC = "rafka_peer_requests_total"
RPC_KINDS = ("append_entries", "heartbeat", "vote", "install_snapshot", "other")
RPC_COLUMNS = {"total": "RPC/s", "append_entries": "append", "heartbeat": "heartbeat", "vote": "vote",
               "install_snapshot": "snapshot", "other": "other"}
METADATA_TOPICS_PER_REQUEST = 100  # keeps one Metadata answer around half a megabyte


# -- creating the partitions ----------------------------------------------------------------
def topic_sizes(total, per_topic):
    """[(name, partitions)] adding up to `total`, `per_topic` each but the last."""
    sizes, left = [], total
    while left > 0:
        sizes.append((f"idle-{len(sizes):04d}", min(per_topic, left)))
        left -= sizes[-1][1]
    return sizes


def create_topics(bootstrap, sizes, per_request, deadline):
    """Create `sizes` a few topics per request until done or `deadline`; returns the created
    [(name, partitions)] and the first error, if any. One request at a time: the cluster
    turns each topic into Raft groups on every node, and a deep backlog of them only makes
    every request time out."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    created = []
    for i in range(0, len(sizes), per_request):
        chunk = sizes[i:i + per_request]
        left = deadline - time.monotonic()
        if left <= 1:
            return created, "deadline passed"
        futures = admin.create_topics([NewTopic(n, p, NODES) for n, p in chunk], operation_timeout=left,
                                      request_timeout=left)
        for name, partitions in chunk:
            try:
                futures[name].result(timeout=max(1.0, deadline - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - KafkaException or a timeout: stop creating
                return created, f"{name}: {exc}"
            created.append((name, partitions))
    return created, None


def led_partitions(bootstrap, names):
    """How many partitions of `names` have a leader, as one node answers Metadata."""
    led = 0
    for i in range(0, len(names), METADATA_TOPICS_PER_REQUEST):
        md = kafka_probe.metadata(bootstrap, topics=names[i:i + METADATA_TOPICS_PER_REQUEST], timeout=10.0)
        led += sum(1 for t in md["topics"].values() for leader in t["partitions"].values() if leader >= 0)
    return led


def wait_for_leaders(bootstrap, created, deadline):
    """Partitions with a leader once all have one or at `deadline`, whichever comes first."""
    names, want = [n for n, _ in created], sum(p for _, p in created)
    while True:
        try:
            led = led_partitions(bootstrap, names)
        except Exception:  # noqa: BLE001 - a slow answer while the nodes are busy: ask again
            led = 0
        if led >= want or time.monotonic() >= deadline:
            return led
        time.sleep(1.0)


# -- the idle window ------------------------------------------------------------------------
def peer_requests(admin):
    """{kind: count} of PEER_RPC_METRIC on one node's /metrics, or None if it is not exported."""
    try:
        with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    counts = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == PEER_RPC_METRIC:
                kind = s.labels.get("kind", "other")
                counts[kind] = counts.get(kind, 0.0) + s.value
    return counts or None


def rpc_rates(before, after, seconds):
    """{kind: per second, "total": ...} between two scrapes of one node, or None."""
    if before is None or after is None:
        return None
    rates = {k: (after.get(k, 0.0) - before.get(k, 0.0)) / seconds for k in set(before) | set(after)}
    rates["total"] = sum(rates.values())
    return rates


def snapshot(pids, admins):
    """Per node: (when, CPU seconds, peer request counts). Each node's figures are read
    together and timed on their own: a large /metrics answer takes a while to parse."""
    out = []
    for pid, admin in zip(pids, admins):
        when = time.monotonic()
        out.append((when, procstat.cpu_seconds(pid), peer_requests(admin)))
    return out


def node_figures(node_id, before, after, rss, rss_peak, elections):
    (t0, cpu0, rpc0), (t1, cpu1, rpc1) = before, after
    wall = t1 - t0
    return {"node": node_id, "window_s": wall, "cpu_pct": 100 * ((cpu1 or 0.0) - (cpu0 or 0.0)) / wall,
            "rss_mib": rss, "rss_peak_mib": max(rss_peak, rss or 0.0), "peer_rpcs_per_s": rpc_rates(rpc0, rpc1, wall),
            "elections": elections}


def measure_idle(brokers, seconds):
    """CPU, RSS and peer RPC rates of every node over `seconds` with no client traffic."""
    pids = brokers.pids()
    admins = [n.admin for n in brokers.members]
    events_before = brokers.log_events()
    before = snapshot(pids, admins)
    with procstat.Sampler(pids, interval=0.5) as sampler:
        time.sleep(seconds)  # the measurement window itself
    after = snapshot(pids, admins)
    events = brokers.log_events()
    elections = [now - then for now, then in zip(events["elections"], events_before["elections"])]
    return [node_figures(n.id, b, a, procstat.rss_mib(pid), peak, e)
            for n, pid, b, a, peak, e in zip(brokers.members, pids, before, after, sampler.per_pid_peak_mib,
                                             elections)]


def measure(total, args, res):
    """One partition count on a fresh cluster, into `res` as the figures come."""
    with cluster.BenchCluster(NODES, raft_timing=cluster.shipped_raft_timing()) as brokers:
        started = time.monotonic()
        deadline = started + args.create_seconds
        created, error = create_topics(brokers.bootstrap, topic_sizes(total, args.per_topic),
                                       args.topics_per_request, deadline)
        res.update({"topics_created": len(created), "partitions_created": sum(p for _, p in created),
                    "create_error": error, "create_s": time.monotonic() - started})
        res["partitions_led"] = wait_for_leaders(brokers.members[0].bootstrap, created, deadline) if created else 0
        res["until_led_s"] = time.monotonic() - started
        log(f"{total} partitions: {res['partitions_created']} created, {res['partitions_led']} with a leader "
            f"after {res['until_led_s']:.0f} s{f' ({error})' if error else ''}; idle for {args.seconds:g} s")
        time.sleep(args.settle)  # creation's own work (elections, flushes) is not the idle cost
        res["nodes"] = measure_idle(brokers, args.seconds)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# -- table ------------------------------------------------------------------------------------
def fmt_rate(rates, kind):
    if rates is None:
        return "n/a"
    return f"{rates.get(kind, 0.0):.0f}"


def table(results):
    header = (f"{'partitions':>10} {'node':>4} {'CPU %core':>9} {'RSS MiB':>7} {'peak':>5} "
              + " ".join(f"{c:>9}" for c in RPC_COLUMNS.values()) + f" {'elections':>9}")
    lines = [f"idle {results['args']['seconds']:g} s on a {NODES}-node cluster, replication factor {NODES}; "
             f"CPU and RSS per node from /proc, peer RPCs per second ({PEER_RPC_METRIC} on /metrics) "
             "in all and by kind", header]
    for res in results["runs"]:
        n = res["partitions_requested"]
        if "partitions_created" in res:
            lines.append(f"{n:>10} created {res['partitions_created']}, with a leader {res['partitions_led']}, "
                         f"in {res['until_led_s']:.0f} s" + (f" (stopped: {res['create_error']})"
                                                             if res["create_error"] else ""))
        for node in res.get("nodes", []):
            rates = node["peer_rpcs_per_s"]
            lines.append(f"{n:>10} {node['node']:>4} {node['cpu_pct']:>9.1f} {node['rss_mib'] or 0:>7.0f} "
                         f"{node['rss_peak_mib']:>5.0f} " + " ".join(f"{fmt_rate(rates, k):>9}" for k in RPC_COLUMNS)
                         + f" {node['elections']:>9}")
    lines += [f"ERROR {e}" for e in results["errors"]]
    return "\n".join(lines)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", default="1000",
                    help="partition counts to measure, comma-separated, each on a fresh cluster (default 1000)")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the idle window (default 30)")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds between every partition having a leader and the window (default 5)")
    ap.add_argument("--per-topic", type=int, default=100, help="partitions per topic (default 100)")
    ap.add_argument("--topics-per-request", type=int, default=5, help="topics per CreateTopics request (default 5)")
    ap.add_argument("--create-seconds", type=float, default=300.0,
                    help="deadline for creating the topics and their leaders, per count (default 300)")
    ap.add_argument("--out", default=str(HERE / "results-idle.json"))
    return ap.parse_args()


def main():
    args = parse_args()
    exit_on_sigterm()  # SystemExit unwinds the `with`: every node is stopped
    results = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args), "runs": [], "errors": []}
    try:
        results["binary"] = cluster.binary_info()
        for total in (int(x) for x in args.partitions.split(",")):
            res = {"partitions_requested": total}
            results["runs"].append(res)
            try:
                measure(total, args, res)
            except Exception as exc:  # noqa: BLE001 - recorded; the next count still runs
                results["errors"].append(f"{total} partitions: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    except SystemExit as exc:
        results["errors"].append(f"aborted: {exc}")
    finally:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(table(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
