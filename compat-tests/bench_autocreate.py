#!/usr/bin/env python3
"""Auto-create latency: one Metadata request naming --count topics that do not exist yet,
with auto-creation on, timed from send to answer.

Starts its own rafka broker (--nodes 3: a three-node cluster, where each new partition's Raft
group elects a leader across nodes) unless --bootstrap host:port is given. A warm-up Metadata request
for one topic opens the connection and starts the controller before the clock starts. Fails
unless every topic comes back without an error and with a leader for each partition.
"""

import argparse
import sys
import time
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.protocol.metadata import MetadataRequest

from harness import Broker, exit_on_sigterm

sys.path.insert(0, str(Path(__file__).resolve().parent / "cluster"))
from cluster import Cluster  # noqa: E402


def metadata(admin, names):
    """One Metadata request for `names` with auto-creation allowed; returns the answer."""
    async def send():
        topics = [MetadataRequest.MetadataRequestTopic(name=name) for name in names]
        return await admin._manager.send(MetadataRequest(topics=topics, allow_auto_topic_creation=True))
    return admin._manager.run(send)


def bench(bootstrap, count, timeout):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout * 1000)
    try:
        prefix = f"bench-autocreate-{int(time.time() * 1000)}"
        metadata(admin, [f"{prefix}-warm-up"])
        names = [f"{prefix}-{i}" for i in range(count)]
        start = time.monotonic()
        answer = metadata(admin, names)
        took = time.monotonic() - start
    finally:
        admin.close()
    bad = [(t.name, t.error_code) for t in answer.topics
           if t.error_code != 0 or not t.partitions or any(p.leader_id < 0 for p in t.partitions)]
    if len(answer.topics) != count or bad:
        sys.exit(f"{len(answer.topics)} topics answered, not created or leaderless: {bad[:5]}")
    print(f"Metadata creating {count} new topics: {took:.2f}s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=300, help="seconds for the timed request")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the cluster started (default 1)")
    parser.add_argument("--bootstrap", help="an already running broker (default: start one)")
    args = parser.parse_args()
    exit_on_sigterm()
    if args.bootstrap:
        bench(args.bootstrap, args.count, args.timeout)
        return
    if args.nodes > 1:
        with Cluster(size=args.nodes, name="autocreate") as cluster:
            bench(cluster.bootstrap(), args.count, args.timeout)
        return
    with Broker(auto_create_topics=True) as broker:
        bench(broker.bootstrap, args.count, args.timeout)


if __name__ == "__main__":
    main()
