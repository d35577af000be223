"""Broker processes for the benchmark, on top of compat-tests/harness.py.

`BenchBroker` is the harness `Broker` with precise readiness timing: it polls
with raw Kafka requests (kafka_probe) every few milliseconds instead of
creating a client per attempt, records spawn -> first answered Metadata and,
when `fetch_probe` is set, spawn -> first successful fetch of a given offset.

`start_cluster(nodes)` is the one place that knows how to bring up N nodes;
only nodes=1 exists today. A 3-node mode plugs in here and returns an object
with the same attributes (bootstrap, pids(), close()).
"""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "compat-tests"))

from harness import Broker, BrokerDied, READY_TIMEOUT  # noqa: E402

import kafka_probe  # noqa: E402

PROBE_INTERVAL = 0.005


class NotAvailable(Exception):
    """The requested deployment does not exist yet."""


class BenchBroker(Broker):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fetch_probe = None  # (topic, partition, offset) checked after Metadata
        self.ready_timeout = READY_TIMEOUT  # raised for recovery with a lot of data
        self.timings = []  # one dict per start

    def start(self):
        self._t_spawn = time.monotonic()
        super().start()

    def wait_ready(self, timeout=None):
        timeout = timeout or self.ready_timeout
        deadline = self._t_spawn + timeout
        timing = {"metadata_s": None, "fetch_s": None}

        def poll(check, what):
            last = None
            while True:
                if self.proc.poll() is not None:
                    raise BrokerDied(f"rafka exited with code {self.proc.returncode} while waiting for {what}"
                                     f"\n{self.log_tail()}")
                try:
                    if check():
                        return time.monotonic() - self._t_spawn
                except Exception as exc:  # noqa: BLE001 - not ready yet, retried until the deadline
                    last = exc
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} "
                                       f"(last error: {last!r})\n{self.log_tail()}")
                time.sleep(PROBE_INTERVAL)

        timing["metadata_s"] = poll(lambda: kafka_probe.metadata_ok(self.bootstrap, timeout=1.0),
                                    "first answered Metadata")
        if self.fetch_probe:
            topic, partition, offset = self.fetch_probe
            timing["fetch_s"] = poll(
                lambda: kafka_probe.fetch_last(self.bootstrap, topic, partition, offset, timeout=5.0),
                f"fetch of {topic}[{partition}]@{offset}")
        self.timings.append(timing)
        # The harness check (librdkafka Metadata) as a final confirmation.
        super().wait_ready(max(1.0, deadline - time.monotonic()))

    @property
    def last_timing(self):
        return self.timings[-1] if self.timings else {}

    def pids(self):
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []


SUPPORTED_NODES = (1,)


def check_available(nodes):
    if nodes not in SUPPORTED_NODES:
        raise NotAvailable(f"{nodes}-node: not available yet")


def start_cluster(nodes, **kwargs):
    """A not yet started cluster of `nodes` brokers: a context manager with .bootstrap,
    .pids(), .data_dir, .kill9(), .stop(), .start(), .last_timing and .close().

    Only the single embedded node exists today; a multi-node implementation
    returns an object with the same attributes (pids() then lists every node).
    """
    check_available(nodes)
    return BenchBroker(**kwargs)


def binary_info():
    from harness import find_binary

    path = find_binary()
    st = os.stat(path)
    return {"path": path, "size_bytes": st.st_size,
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime))}
