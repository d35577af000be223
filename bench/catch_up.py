#!/usr/bin/env python3
"""A wiped follower catching up a large partition, and snapshot size against partition size.

    RAFKA_BIN=/path/to/release/rafka python3 bench/catch_up.py [--bytes 2GB] [--sizes 100MB,1GB,2GB]

Three nodes on this machine, one partition with three replicas, 1 KiB incompressible values:

1. Catch-up: after `--bytes` of acks=all produce, a follower is stopped, its data dir
   deleted and it is started again. Reported: seconds until every replica's checksum
   agrees, and the follower's peak RSS growth over its RSS before the wipe (VmRSS sampled
   every 50 ms). Then the same with the follower killed (-9) halfway through catching up
   and started again.
2. Snapshots: for each of `--sizes`, a fresh topic gets that much data, DeleteRecords moves
   its log start to the high watermark, and the leader's "snapshot built" log line gives
   the snapshot's bytes and build time: they must not grow with the partition.
"""

import argparse
import importlib.util
import json
import re
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "compat-tests"))
from amplification import dir_bytes, parse_bytes, produce  # noqa: E402
from harness import wait_until  # noqa: E402

# compat-tests/cluster/cluster.py, loaded under its own name: bench/cluster.py has the same one.
sys.path.append(str(Path(__file__).resolve().parent.parent / "compat-tests" / "cluster"))
_spec = importlib.util.spec_from_file_location(
    "test_cluster", Path(__file__).resolve().parent.parent / "compat-tests" / "cluster" / "cluster.py")
test_cluster = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(test_cluster)
Cluster = test_cluster.Cluster
from procstat import rss_mib as process_rss_mib  # noqa: E402

from confluent_kafka import TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

SAMPLE_S = 0.05
CATCH_UP_DEADLINE = 1800


def rss_mib(node):
    return (process_rss_mib(node.proc.pid) or 0.0) if node.proc else 0.0


def create(cluster, topic):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})
    admin.create_topics([NewTopic(topic, 1, 3)])[topic].result(60)
    wait_until(lambda: len(cluster.replica_views(topic).get(0, {})) == 3, 60, what=f"{topic} on every node")


def catch_up(cluster, topic, victim, kill_halfway):
    """Seconds until the replicas agree again after `victim` was wiped, and its peak RSS growth (MiB)."""
    node = cluster.nodes[victim]
    before = rss_mib(node)
    cluster.stop(victim)
    started = time.monotonic()
    shutil.rmtree(node.data_dir, ignore_errors=True)
    cluster.spawn(victim)
    leader_bytes = dir_bytes(cluster.nodes[cluster.leader_of(topic, 0)].data_dir / "log")
    peak = 0.0
    killed = False
    deadline = started + CATCH_UP_DEADLINE
    while time.monotonic() < deadline:
        peak = max(peak, rss_mib(node))
        if kill_halfway and not killed and dir_bytes(node.data_dir / "log") > leader_bytes / 2:
            cluster.kill9(victim)
            cluster.spawn(victim)
            killed = True
        try:
            cluster.wait_replicas_agree(topic, timeout=0.5)
            break
        except TimeoutError:
            pass
        time.sleep(SAMPLE_S)
    else:
        raise TimeoutError("the wiped follower never caught up")
    return time.monotonic() - started, peak - before, killed


SNAPSHOT_LINE = re.compile(r"snapshot built group=(\d+) .*bytes=(\d+) micros=(\d+)")


def snapshot_figures(cluster, topic, size):
    create(cluster, topic)
    produce(cluster.bootstrap(), topic, size)
    leader = cluster.leader_of(topic, 0)
    group = next(e["group"] for e in cluster.checksums(leader) if e["topic"] == topic)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap()})
    admin.delete_records([TopicPartition(topic, 0, -1)])[TopicPartition(topic, 0)].result(60)

    def built():
        for line in cluster.nodes[leader].log_text().splitlines():
            match = SNAPSHOT_LINE.search(line)
            if match and int(match.group(1)) == group and int(match.group(2)) > 0:
                return int(match.group(2)), int(match.group(3)) / 1e3
        return None

    snapshot_bytes, build_ms = wait_until(built, 120, interval=0.2, what=f"a snapshot of {topic}")
    return {"partition_bytes": size, "snapshot_bytes": snapshot_bytes, "build_ms": build_ms}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", default="2GB", type=parse_bytes)
    parser.add_argument("--sizes", default="100MB,1GB,2GB")
    parser.add_argument("--parts", default="catch-up,snapshots", help="which measurements to run")
    args = parser.parse_args()
    report = {}
    settings = {"log_retention_check_interval_ms": 200, "log_segment_bytes": 64 << 20}
    with Cluster(settings=settings, name="catch-up") as cluster:
        report["catch_up"] = []
        for kill_halfway in (False, True) if "catch-up" in args.parts else ():
            if not report["catch_up"]:
                create(cluster, "big")
                produce(cluster.bootstrap(), "big", args.bytes)
                cluster.wait_replicas_agree("big", timeout=600)
                victim = next(i for i in cluster.ids if i != cluster.leader_of("big", 0))
            seconds, rss_growth, killed = catch_up(cluster, "big", victim, kill_halfway)
            report["catch_up"].append({"bytes": args.bytes, "killed_halfway": killed, "seconds": seconds,
                                       "rss_growth_mib": rss_growth})
            print(f"wiped follower caught up {args.bytes / 1e9:.2f} GB in {seconds:.1f} s"
                  f"{' (killed -9 halfway)' if killed else ''}; peak RSS growth {rss_growth:.0f} MiB", flush=True)
        report["snapshots"] = []
        sizes = [parse_bytes(s) for s in args.sizes.split(",")] if "snapshots" in args.parts else []
        for i, size in enumerate(sizes):
            figures = snapshot_figures(cluster, f"snap{i}", size)
            report["snapshots"].append(figures)
            print(f"partition of {size / 1e6:.0f} MB: snapshot {figures['snapshot_bytes']} bytes, "
                  f"built in {figures['build_ms']:.1f} ms", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
