"""Broker processes for the benchmark, on top of compat-tests/harness.py.

`BenchBroker` is the harness `Broker` with precise readiness timing: it polls
with raw Kafka requests (kafka_probe) every few milliseconds instead of
creating a client per attempt, records spawn -> first answered Metadata and,
when `fetch_probe` is set, spawn -> first successful fetch of a given offset.

`BenchCluster` is three (or more) `rafka --config FILE` processes forming one
Raft cluster on free loopback ports, one JSON config, data dir and log per node
in one temporary directory. It has the same attributes as `BenchBroker`
(bootstrap lists every node, pids() every running node, kill9() SIGKILLs and
restarts every node), and its readiness time is "every node answers Metadata
listing all nodes and a known controller leader".

`start_cluster(nodes)` is the one place that knows how to bring up N nodes.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "compat-tests"))

from harness import (Broker, BrokerDied, BrokerProcesses, CONFIG, LOG_TAIL_LINES, READY_TIMEOUT,  # noqa: E402
                     REPO_ROOT, STOP_TIMEOUT, find_binary, free_ports, log_tail, spawn_broker, stop_brokers)

import kafka_probe  # noqa: E402

PROBE_INTERVAL = 0.005


class NotAvailable(Exception):
    """The requested deployment does not exist yet."""


# Broker log lines worth counting per run: they explain a slow or failed measurement.
LOG_EVENTS = {
    "rpc_timeouts": "timeout after",           # openraft: a peer RPC (AppendEntries, heartbeat) timed out
    "peer_connection_lost": "connection to peer",
    "elections": "vote changed",               # a term changed under a message in flight
    "panics": "panicked at",
    "error_lines": " ERROR ",
}


def log_events(paths):
    """{event: [count per log file]} for LOG_EVENTS."""
    out = {k: [] for k in LOG_EVENTS}
    for path in paths:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = ""
        for key, needle in LOG_EVENTS.items():
            out[key].append(text.count(needle))
    return out


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

    # Same interface as BenchCluster.
    nodes = 1

    @property
    def data_dirs(self):
        return [self.data_dir]

    def leader_of(self, topic, partition=0):
        return 1

    def log_events(self):
        return log_events([self.log_path])


# A fresh three-node cluster needs an election (election_rtt x rtt_millis = 0.5-1 s) before
# it answers; RAFKA_READY_TIMEOUT raises the default like it does for the compat suites.
CLUSTER_READY_TIMEOUT = max(60.0, READY_TIMEOUT)
HEALTH_TOOL_TIMEOUT = 15.0


def single_node_setting(key, default):
    """A setting of the single-node config the 1-node benchmark runs with, so both modes match."""
    try:
        import tomllib
        with open(REPO_ROOT / CONFIG, "rb") as f:
            return tomllib.load(f).get(key, default)
    except Exception:  # noqa: BLE001 - Python < 3.11 or no file: the documented default
        return default


class _Node:
    def __init__(self, node_id, root, port, raft_port, admin_port):
        self.id = node_id
        self.port = port
        self.raft_port = raft_port
        self.admin = f"127.0.0.1:{admin_port}"
        self.bootstrap = f"127.0.0.1:{port}"
        self.raft_address = f"127.0.0.1:{raft_port}"
        self.data_dir = root / "data" / f"node{node_id}"
        self.log_path = root / f"node{node_id}.log"
        self.config_path = root / f"node{node_id}.json"
        self.proc = None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None


class BenchCluster(BrokerProcesses):
    """`size` rafka processes (node ids 1..size) forming one Raft cluster; a context manager.

    Attributes as BenchBroker: bootstrap (every listener, comma-separated), pids(),
    data_dir (the parent of every node's data dir, so its size is the cluster's),
    data_dirs, kill9() (SIGKILL every node, start them all again), stop(), start(),
    fetch_probe, ready_timeout, last_timing, close(). The `with`, restart(), kill9() and
    close() come from harness.BrokerProcesses, like BenchBroker's.
    """

    kept_what = "cluster data and logs"

    def __init__(self, size=3, default_partitions=None, replication_factor=None, raft_timing=None):
        self.binary = find_binary()
        self.size = size
        self.nodes = size
        self.tmp = Path(tempfile.mkdtemp(prefix=f"rafka-bench{size}-"))
        self.data_dir = self.tmp / "data"
        ports = free_ports(3 * size)  # one call: separate calls could hand out a port twice
        self.members = [_Node(i, self.tmp, *ports[3 * (i - 1):3 * i]) for i in range(1, size + 1)]
        self.bootstrap = ",".join(n.bootstrap for n in self.members)
        self.default_partitions = (default_partitions if default_partitions is not None
                                   else single_node_setting("default_partitions", 1))
        self.replication_factor = replication_factor or size
        # rtt_millis / election_rtt / heartbeat_rtt: the single node's values unless overridden.
        self.raft_timing = {"rtt_millis": 50, "election_rtt": 4, "heartbeat_rtt": 1, **(raft_timing or {})}
        self.cluster_id = f"rafka-bench-{uuid.uuid4().hex[:8]}"
        self.fetch_probe = None  # (topic, partition, offset), fetched from the partition's leader
        self.ready_timeout = CLUSTER_READY_TIMEOUT
        self.timings = []
        self.starts = 0
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAFKA_")}  # the config file rules
        env.setdefault("RUST_LOG", "info,openraft=warn")
        env["NO_COLOR"] = "1"
        self.env = env
        for n in self.members:
            n.data_dir.mkdir(parents=True, exist_ok=True)
            n.config_path.write_text(json.dumps(self._config_of(n), indent=2) + "\n")

    def _config_of(self, node):
        return {
            "node_id": node.id,
            "listener": node.bootstrap,
            "advertised_listener": node.bootstrap,
            "admin_listener": node.admin,
            "cluster_id": self.cluster_id,
            "raft_address": node.raft_address,
            "initial_members": {str(n.id): n.raft_address for n in self.members},
            "data_dir": str(node.data_dir),
            **self.raft_timing,
            "snapshot_entries": 10000,
            "auto_create_topics": True,
            "default_partitions": self.default_partitions,
            "default_replication_factor": self.replication_factor,
            "message_max_bytes": 1048588,
            "socket_request_max_bytes": 104857600,
            "max_connections": 1024,
            "offsets_topic_partitions": 1,
            "group_initial_rebalance_delay_ms": 0,
        }

    @property
    def data_dirs(self):
        return [n.data_dir for n in self.members]

    # -- lifecycle -----------------------------------------------------------
    def start(self):
        """Spawn every stopped node (from the main thread: PR_SET_PDEATHSIG is per thread), wait."""
        self.starts += 1
        self._t_spawn = time.monotonic()
        for n in self.members:
            if not n.running:
                n.proc = spawn_broker(self.binary, n.config_path, n.log_path, self.starts, self.tmp, self.env)
        self.wait_ready()

    def wait_ready(self, timeout=None):
        """Until every node answers Metadata listing all nodes and a controller leader
        (metadata_s), then, with fetch_probe, until the partition's leader serves the offset
        (fetch_s); finally `rafka health` must exit 0 for every node."""
        timeout = timeout or self.ready_timeout
        deadline = self._t_spawn + timeout
        first = {}    # node id -> first answered Metadata (s after spawn)
        healthy = {}  # node id -> first Metadata with every node and a controller
        views = {}
        last = None

        def check_alive():
            for n in self.members:
                if n.proc is not None and n.proc.poll() is not None:
                    raise BrokerDied(f"node {n.id} exited with code {n.proc.returncode}\n{self.log_tail(n.id)}")

        def timed_out(what):
            return TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last!r}; "
                                f"node views {views})\n{self.log_tail()}")

        while len(healthy) < self.size:
            check_alive()
            for n in self.members:
                if n.id in healthy:
                    continue
                try:
                    md = kafka_probe.metadata(n.bootstrap, timeout=1.0)
                except Exception as exc:  # noqa: BLE001 - not listening yet
                    last = exc
                    continue
                now = time.monotonic() - self._t_spawn
                first.setdefault(n.id, now)
                views[n.id] = {"brokers": sorted(md["brokers"]), "controller": md["controller_id"]}
                if len(md["brokers"]) >= self.size and md["controller_id"] >= 0:
                    healthy[n.id] = now
            if len(healthy) == self.size:
                break
            if time.monotonic() >= deadline:
                raise timed_out("every node to list all nodes and a controller")
            time.sleep(PROBE_INTERVAL)
        timing = {"metadata_s": max(healthy.values()), "first_metadata_s": min(first.values()),
                  "per_node_metadata_s": [first[n.id] for n in self.members],
                  "per_node_healthy_s": [healthy[n.id] for n in self.members],
                  "controller_id": views[self.members[0].id]["controller"], "fetch_s": None}
        if self.fetch_probe:
            topic, partition, offset = self.fetch_probe
            while True:
                check_alive()
                try:
                    leader = self.leader_of(topic, partition)
                    if leader >= 0 and kafka_probe.fetch_last(self.members[leader - 1].bootstrap, topic,
                                                              partition, offset, timeout=5.0):
                        timing["fetch_s"] = time.monotonic() - self._t_spawn
                        timing["fetch_leader"] = leader
                        break
                    last = f"leader {leader} does not serve offset {offset} yet"
                except Exception as exc:  # noqa: BLE001 - no leader yet, not caught up...
                    last = exc
                if time.monotonic() >= deadline:
                    raise timed_out(f"fetch of {topic}[{partition}]@{offset} from its leader")
                time.sleep(PROBE_INTERVAL)
        self.timings.append(timing)
        # The broker's own health check as a final confirmation (not timed).
        for n in self.members:
            left = max(2.0, min(HEALTH_TOOL_TIMEOUT, deadline - time.monotonic()))
            while True:
                done = subprocess.run([self.binary, "health", "--bootstrap", n.bootstrap], cwd=self.tmp,
                                      env=self.env, capture_output=True, text=True, timeout=left,
                                      stdin=subprocess.DEVNULL)
                if done.returncode == 0:
                    break
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"`rafka health --bootstrap {n.bootstrap}` exited {done.returncode}: "
                                       f"{(done.stderr or done.stdout).strip()[-300:]}")
                time.sleep(0.1)

    def partition_info(self, topic, partition=0):
        """{"leader", "replicas", "isr"} of the partition as answered by the first node that answers."""
        last = None
        for n in self.members:
            if not n.running:
                continue
            try:
                md = kafka_probe.metadata(n.bootstrap, topics=[topic], timeout=2.0)
            except Exception as exc:  # noqa: BLE001 - try the next node
                last = exc
                continue
            t = md["topics"].get(topic, {})
            return {"leader": t.get("partitions", {}).get(partition, -1), "replicas": t.get("replicas", {}).get(partition),
                    "isr": t.get("isr", {}).get(partition), "asked_node": n.id}
        raise RuntimeError(f"no node answered Metadata for {topic}: {last!r}")

    def leader_of(self, topic, partition=0):
        """The partition's leader id (-1: none) as answered by the first node that answers."""
        return self.partition_info(topic, partition)["leader"]

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send `sig` to every node at once, wait up to `timeout`, then SIGKILL. Exit codes by node."""
        procs = [n.proc for n in self.members]
        for n in self.members:
            n.proc = None
        return stop_brokers(procs, sig, timeout)

    @property
    def last_timing(self):
        return self.timings[-1] if self.timings else {}

    def pids(self):
        return [n.proc.pid for n in self.members if n.running]

    def log_events(self):
        return log_events([n.log_path for n in self.members])

    def log_tail(self, node_id=None, lines=LOG_TAIL_LINES // 2):
        return "\n".join(log_tail(n.log_path, lines, node_id=n.id) for n in self.members
                         if node_id is None or n.id == node_id)


SUPPORTED_NODES = (1, 3)
CLUSTER_CONFIG = "configs/broker-cluster-node1.json"


def shipped_raft_timing():
    """rtt_millis, election_rtt and heartbeat_rtt of the shipped cluster configuration, so a
    benchmark cluster times its Raft groups like a deployed one."""
    shipped = json.loads((REPO_ROOT / CLUSTER_CONFIG).read_text())
    return {k: shipped[k] for k in ("rtt_millis", "election_rtt", "heartbeat_rtt")}


def check_available(nodes):
    if nodes not in SUPPORTED_NODES:
        raise NotAvailable(f"{nodes}-node: not available yet")


def start_cluster(nodes, **kwargs):
    """A not yet started cluster of `nodes` brokers: a context manager with .bootstrap,
    .pids(), .data_dir, .data_dirs, .nodes, .kill9(), .stop(), .start(), .leader_of(),
    .last_timing and .close(). nodes=1 is the embedded single node (configs/single-node.toml);
    nodes=3 is BenchCluster (pids() then lists every node).
    """
    check_available(nodes)
    if nodes == 1:
        return BenchBroker(**kwargs)
    return BenchCluster(nodes, **kwargs)


def binary_info():
    path = find_binary()
    st = os.stat(path)
    return {"path": path, "size_bytes": st.st_size,
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(st.st_mtime))}
