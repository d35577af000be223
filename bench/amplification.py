#!/usr/bin/env python3
"""Disk bytes written per payload byte, per replica, over a large produce.

    RAFKA_BIN=/path/to/release/rafka python3 bench/amplification.py [--bytes 1GB] [--nodes 1,3]

One topic with one partition (replication factor = nodes), 1 KiB incompressible values,
acks=all. Each broker's /proc/<pid>/io write_bytes is read before the produce and again
15 s after the last acknowledgement (flushes and compactions included), and the table
gives, per node count: payload bytes, bytes each replica wrote, their ratio (the target
is at most 1.5), the data dir size as a multiple of the payload, and the produce rate as
a share of the disk's fsynced 1 MiB write bandwidth measured in the same run.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "compat-tests"))
import machine  # noqa: E402
from cluster import start_cluster  # noqa: E402
from procstat import io_write_bytes  # noqa: E402
from workloads import payloads, producer_config  # noqa: E402

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

VALUE_BYTES = 1024
SETTLE_S = 15


def parse_bytes(text):
    units = {"KB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            return int(float(text[:-2]) * factor)
    return int(text)


def dir_bytes(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def produce(bootstrap, topic, total):
    producer = Producer(producer_config(bootstrap, "all", 5, 1_000_000))
    next_value = payloads(VALUE_BYTES)
    failed = []
    for _ in range(total // VALUE_BYTES):
        while True:
            try:
                producer.produce(topic, next_value(), on_delivery=lambda err, _m: err and failed.append(err))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(300) or failed:
        raise RuntimeError(f"produce failed: {failed[:3]}")


def measure(nodes, total):
    with start_cluster(nodes) as brokers:
        admin = AdminClient({"bootstrap.servers": brokers.bootstrap})
        admin.create_topics([NewTopic("amplification", 1, nodes)])["amplification"].result(60)
        pids = brokers.pids()
        before = [io_write_bytes(pid) or 0 for pid in pids]
        started = time.monotonic()
        produce(brokers.bootstrap, "amplification", total)
        produce_s = time.monotonic() - started
        time.sleep(SETTLE_S)  # the measurement window: flushes and compactions after the produce
        written = [(io_write_bytes(pid) or 0) - b for pid, b in zip(pids, before)]
        payload = (total // VALUE_BYTES) * VALUE_BYTES
        return {
            "nodes": nodes,
            "payload_bytes": payload,
            "written_per_replica": written,
            "bytes_per_payload_byte": [w / payload for w in written],
            "data_dir_per_payload_byte": [dir_bytes(d) / payload for d in brokers.data_dirs],
            "produce_mb_s": payload / produce_s / 1e6,
        }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", default="1GB", type=parse_bytes)
    parser.add_argument("--nodes", default="1,3")
    args = parser.parse_args()
    disk = machine.disk_fsync()["seq_1m_fdatasync_MBps"] * 1e6
    rows = [measure(int(n), args.bytes) for n in args.nodes.split(",")]
    print(f"fsynced 1 MiB write bandwidth: {disk / 1e6:.0f} MB/s")
    print("nodes  payload   written/payload per replica   data dir/payload   produce MB/s (share of disk)")
    for r in rows:
        ratios = " ".join(f"{x:.2f}" for x in r["bytes_per_payload_byte"])
        dirs = " ".join(f"{x:.2f}" for x in r["data_dir_per_payload_byte"])
        share = r["produce_mb_s"] * 1e6 / disk
        print(f"{r['nodes']:>5}  {r['payload_bytes'] / 1e9:.2f} GB   {ratios:<28}  {dirs:<17}  "
              f"{r['produce_mb_s']:.0f} ({share:.0%})")
    print(json.dumps({"disk_bytes_per_s": disk, "runs": rows}))


if __name__ == "__main__":
    main()
