"""A three-node rafka cluster of real processes on free loopback ports, for failure tests.

    with Cluster() as c:                       # starts 3 nodes, waits until they form a cluster
        c.create_topic("t", partitions=3)
        leader = c.leader_of("t", 0)
        c.kill9(leader); ...; c.start(leader)
        c.wait_replicas_agree("t")

Each node gets its own JSON config file, data dir and log file in one temporary directory.
With `proxies=True` every directed Raft link (node i dials node j) and every node's Kafka
listener goes through a `proxy.TcpProxy` in this process, so `isolate(node)` can cut a node off
and `heal()` can reconnect it:

- node i's `initial_members` entry for node j is the port of the proxy i->j (its own entry is its
  real raft_address), so cutting the proxies i->* and *->i cuts i off from its peers;
- each node's advertised listener is a proxy in front of its real listener. A client whose
  client.id is `client_id(side, ...)` may only reach the nodes on its side of the split, as if it
  stood in that part of the network; other clients (this module's AdminClients, read-back
  consumers) reach every node. Without that, a producer bootstrapped to the isolated node would
  learn the other brokers from Metadata and simply produce to them.
  Raft links are blackholed while cut, client links are reset: a blackholed reconnect leaves
  librdkafka waiting for its ApiVersions answer (api.version.request.timeout.ms, 10 s) before it
  asks for new metadata, which would measure the client's timeout instead of the failover.

Brokers are started from the main thread only: their PR_SET_PDEATHSIG (harness._die_with_parent)
fires when the *thread* that forked them exits, so a broker started from a worker thread would be
killed when that thread ends.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import (REPO_ROOT, StartedInWith, _die_with_parent, find_binary, free_ports,  # noqa: E402
                     log_tail, remove_tmp, spawn_broker, stop_brokers, wait_until)
from proxy import TcpProxy, kafka_client_id  # noqa: E402

from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

READY_TIMEOUT = float(os.environ.get("RAFKA_READY_TIMEOUT", "60"))  # cluster formation, restarts
STOP_TIMEOUT = 10.0  # graceful stop before SIGKILL
TOOL_TIMEOUT = 15.0  # one `rafka checksums` / `rafka health` call
ADMIN_TIMEOUT = 5.0  # one Metadata request
LOG_TAIL_LINES = 40
SIDE_PREFIX = "side-"  # client.id prefix that places a client on one side of a split


class NotYet(Exception):
    """Raised inside a polled predicate to say why the condition does not hold yet."""


class ReplicasDiverged(AssertionError):
    """Two replicas applied the same Raft index but hold different data: never retried."""


class Node:
    """One broker process: ports, files, and the running process if any."""

    def __init__(self, node_id, root, listen_port, raft_port, admin_port):
        self.id = node_id
        self.listen_port = listen_port
        self.raft_port = raft_port
        self.admin = f"127.0.0.1:{admin_port}"  # /metrics, /health, /ready
        self.advertised_port = listen_port  # replaced by a proxy port when the cluster is proxied
        self.dir = root / f"node{node_id}"
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "broker.log"
        self.config_path = self.dir / "config.json"
        self.proc = None
        self.starts = 0

    @property
    def bootstrap(self):
        """Where clients reach this node: its advertised listener."""
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def raft_address(self):
        return f"127.0.0.1:{self.raft_port}"

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def started(self):
        """Started by the test and not stopped since. It may have crashed: metadata() says so."""
        return self.proc is not None

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_since_last_start(self):
        marker = f"==== start #{self.starts} ===="
        text = self.log_text()
        return text[text.rfind(marker):] if marker in text else text


class Cluster(StartedInWith):
    """`size` rafka nodes (ids 1..size) forming one Raft cluster; a context manager."""

    def __init__(self, size=3, proxies=False, snapshot_entries=10000, rtt_millis=50, election_rtt=4,
                 heartbeat_rtt=1, name="cluster", settings=None, secret=None, node_settings=None):
        self.binary = find_binary()
        self.root = Path(tempfile.mkdtemp(prefix=f"rafka-{name}-"))
        self.cluster_id = f"rafka-test-{name}-{uuid.uuid4().hex[:8]}"
        self.settings = {"snapshot_entries": snapshot_entries, "rtt_millis": rtt_millis,
                         "election_rtt": election_rtt, "heartbeat_rtt": heartbeat_rtt, **(settings or {})}
        self.secret = secret  # cluster_secret of every node (and of the tools)
        self.node_settings = node_settings or {}  # {node id: config keys that differ from the others'}
        self.proxied = proxies
        ids = list(range(1, size + 1))
        links = [(i, j) for i in ids for j in ids if i != j]
        # One free_ports call for every port: separate calls could hand out the same port twice.
        ports = iter(free_ports(3 * size + ((size + len(links)) if proxies else 0)))
        self.nodes = {i: Node(i, self.root, next(ports), next(ports), next(ports)) for i in ids}
        self.proxies = []
        self._link_ports = {}
        self._sides = None  # {side name: set of node ids} while the network is split
        self._cut_links = set()  # directed Raft links (i, j) blackholed by cut()
        self._paused = set()  # nodes stopped with SIGSTOP
        if proxies:
            for node in self.nodes.values():
                node.advertised_port = next(ports)
            self._link_ports = {link: next(ports) for link in links}

    # -- lifecycle -----------------------------------------------------------------
    def _start_in_with(self):
        self.start_all()  # `with Cluster()`: start() is start(node_id), one stopped node

    def start_all(self, timeout=READY_TIMEOUT):
        """Write the configs, start the proxies and every node, wait until the cluster has formed."""
        self.prepare()
        for node in self.nodes.values():
            self._spawn(node)
        self.wait_ready(timeout)

    def prepare(self):
        """Write every node's config and start the proxies, starting no node (see spawn)."""
        for node in self.nodes.values():
            node.dir.mkdir(parents=True, exist_ok=True)
            node.config_path.write_text(json.dumps(self._config_of(node), indent=2))
        if self.proxied:
            self._start_proxies()

    def spawn(self, node_id):
        """Start one node after prepare(), waiting for nothing: a lone node never forms a cluster."""
        self._spawn(self.nodes[node_id])

    def start(self, node_id, timeout=READY_TIMEOUT):
        """Start a stopped node on its old ports and data dir; wait until the cluster includes it."""
        node = self.nodes[node_id]
        if node.running:
            raise RuntimeError(f"node {node_id} is already running")
        self._spawn(node)
        self.wait_ready(timeout)

    def stop(self, node_id, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit code (None if not running)."""
        self.resume(node_id)  # a stopped process would only act on the signal once continued
        node = self.nodes[node_id]
        proc, node.proc = node.proc, None
        return stop_brokers([proc], sig, timeout)[0]

    def kill9(self, node_id):
        """SIGKILL: no chance to flush or say goodbye. Unlike harness.Broker.kill9, no restart."""
        return self.stop(node_id, signal.SIGKILL)

    def pause(self, node_id):
        """SIGSTOP: the node freezes with its connections open, as in a long GC pause or a VM stall."""
        self.nodes[node_id].proc.send_signal(signal.SIGSTOP)
        self._paused.add(node_id)

    def resume(self, node_id):
        if node_id in self._paused:
            self._paused.discard(node_id)
            proc = self.nodes[node_id].proc
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)

    def restart(self, node_id, timeout=READY_TIMEOUT):
        self.stop(node_id)
        self.start(node_id, timeout)

    def wipe_stopped(self, node_id):
        """kill -9 the node, delete its data dir and start it with the same id and config, waiting
        for nothing: a wiped node that must catch up from an unreachable leader never gets ready."""
        self.stop(node_id, signal.SIGKILL)
        shutil.rmtree(self.nodes[node_id].data_dir, ignore_errors=True)
        self._spawn(self.nodes[node_id])

    def wipe(self, node_id, timeout=READY_TIMEOUT, sig=signal.SIGTERM):
        """Stop the node with `sig`, delete its data dir, start it with the same id and config."""
        self.stop(node_id, sig)
        shutil.rmtree(self.nodes[node_id].data_dir, ignore_errors=True)
        self.start(node_id, timeout)

    def close(self):
        """Stop every node (SIGTERM to all at once, SIGKILL after STOP_TIMEOUT) and every proxy."""
        for node_id in list(self._paused):
            self.resume(node_id)
        procs = [n.proc for n in self.nodes.values()]
        for node in self.nodes.values():
            node.proc = None
        stop_brokers(procs, signal.SIGTERM, STOP_TIMEOUT)
        for proxy in self.proxies:
            proxy.close()
        self.proxies = []
        remove_tmp(self.root, "cluster data and logs")

    # -- which nodes ---------------------------------------------------------------
    @property
    def ids(self):
        return sorted(self.nodes)

    def running_ids(self):
        """Nodes that should be up: a node that crashed stays in, so waits on it fail with NodeDied."""
        return [i for i in self.ids if self.nodes[i].started]

    def isolated_ids(self):
        return set(self._sides["isolated"]) if self._sides else set()

    def reachable_ids(self):
        """Running nodes, neither isolated nor paused, that this process can treat as part of the healthy majority."""
        return [i for i in self.running_ids() if i not in self.isolated_ids() and i not in self._paused]

    def bootstrap(self, node_ids=None):
        """bootstrap.servers for the given nodes (default: all)."""
        return ",".join(self.nodes[i].bootstrap for i in (node_ids or self.ids))

    # -- readiness and metadata ----------------------------------------------------
    def wait_ready(self, timeout=READY_TIMEOUT):
        """Until every running node answers Metadata listing all running nodes and a controller."""
        def formed():
            for i in self.running_ids():
                md = self.metadata(i)
                missing = set(self.running_ids()) - set(md.brokers)
                if missing:
                    raise NotYet(f"node {i} lists brokers {sorted(md.brokers)}, not yet {sorted(missing)}")
                if md.controller_id < 0:
                    raise NotYet(f"node {i} knows no controller leader")
            return True

        self._wait(formed, timeout, "the cluster to form", fatal=NodeDied)

    def metadata(self, node_id, topic=None):
        """Metadata as answered by `node_id` itself.

        A fresh AdminClient per call: its first request goes over its only connection, the
        bootstrap one, so the answer is that node's view (a long-lived client would ask any
        broker it has learned about).
        """
        node = self._expect_alive(node_id)
        # Cheap pre-check so no librdkafka client is created (and retries) while the port is closed.
        with socket.create_connection(("127.0.0.1", node.listen_port), timeout=ADMIN_TIMEOUT):
            pass
        admin = AdminClient({"bootstrap.servers": node.bootstrap, "log_level": 0,
                             "socket.connection.setup.timeout.ms": int(ADMIN_TIMEOUT * 1000)})
        return admin.list_topics(topic=topic, timeout=ADMIN_TIMEOUT)

    def leaders(self, topic, ask=None):
        """{partition: leader id} as reported by node `ask` (default: the first reachable node)."""
        ask = ask if ask is not None else self._any_reachable()
        md = self.metadata(ask, topic).topics.get(topic)
        if md is None or md.error is not None:
            raise NotYet(f"node {ask} has no metadata for {topic}: {md.error if md else 'missing'}")
        return {p: pm.leader for p, pm in md.partitions.items()}

    def leader_of(self, topic, partition, ask=None):
        return self.leaders(topic, ask)[partition]

    def controller_id(self, ask=None):
        return self.metadata(ask if ask is not None else self._any_reachable()).controller_id

    def wait_new_leader(self, topic, partition, excluded, timeout=60):
        """Until a reachable node outside `excluded` reports *itself* leader of the partition.

        Asking the candidate itself (not a bystander with a possibly stale view) is what a
        producer relies on: the node it is sent to accepts the write.
        """
        def new_leader():
            views = {}
            for i in self.reachable_ids():
                if i in excluded:
                    continue
                try:
                    views[i] = self.leader_of(topic, partition, ask=i)
                except Exception as exc:  # noqa: BLE001 - one node not answering is "not yet"
                    views[i] = repr(exc)
                if views[i] == i:
                    return i
            raise NotYet(f"leader of {topic}/{partition} as seen by each candidate: {views}")

        return self._wait(new_leader, timeout, f"a new leader of {topic}/{partition} outside {sorted(excluded)}")

    def partition_count(self, topic):
        return len(self.leaders(topic))

    def create_topic(self, topic, partitions, replication_factor=3, timeout=60):
        """Create the topic, then wait until every partition has a leader and a replica on every node."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap(self.reachable_ids()), "log_level": 0})
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                                replication_factor=replication_factor)],
                                      request_timeout=timeout)
        futures[topic].result(timeout)

        def hosted_everywhere():
            leaders = self.leaders(topic)
            if len(leaders) != partitions or min(leaders.values()) < 0:
                raise NotYet(f"leaders {leaders}")
            for i in self.running_ids():
                hosted = {e["partition"] for e in self.checksums(i) if e["topic"] == topic}
                if hosted != set(range(partitions)):
                    raise NotYet(f"node {i} hosts partitions {sorted(hosted)}")
            return True

        self._wait(hosted_everywhere, timeout, f"topic {topic} hosted on every node", fatal=NodeDied)

    # -- rafka tools -----------------------------------------------------------------
    def tool(self, *args):
        """`rafka <args>` (an admin verb); the completed process, output captured."""
        return self._tool(*args)

    def health(self, node_id):
        """Exit code of `rafka health --bootstrap` against the node."""
        return self._tool("health", "--bootstrap", self.nodes[node_id].bootstrap).returncode

    def checksums(self, node_id):
        """The node's per-replica checksums: [{"topic", "partition", "group", "applied_index", ...}]."""
        done = self._tool("checksums", "--peer", self._expect_alive(node_id).raft_address,
                          "--cluster-id", self.cluster_id)
        if done.returncode != 0:
            raise RuntimeError(f"rafka checksums of node {node_id} exited {done.returncode}: "
                               f"{done.stderr.strip()[-500:]}")
        return json.loads(done.stdout)

    def replica_views(self, topic, node_ids=None):
        """{partition: {node id: (applied_index, checksum)}} over the given nodes (default: running)."""
        views = {}
        for i in node_ids or self.running_ids():
            for entry in self.checksums(i):
                if entry["topic"] == topic:
                    views.setdefault(entry["partition"], {})[i] = (entry["applied_index"], entry["checksum"])
        return views

    def wait_replicas_agree(self, topic, timeout=60):
        """Until all nodes report, per partition, the same applied index and checksum; returns the views.

        The same applied index with different checksums is a divergence and fails at once.
        """
        partitions = self.partition_count(topic)
        return self._wait(lambda: replicas_agree(self.replica_views(topic, self.ids), topic, partitions, self.ids),
                          timeout, f"all replicas of {topic} to agree", fatal=(ReplicasDiverged, NodeDied))

    # -- network splits --------------------------------------------------------------
    def client_id(self, side, who):
        """A client.id that places a client on `side` ("isolated" or "majority") of a split."""
        return f"{SIDE_PREFIX}{side}.{who}"

    def isolate(self, node_id):
        """Cut every Raft link to and from the node; clients keep to their own side (see module doc)."""
        self._require_proxies()
        self._sides = {"isolated": {node_id}, "majority": set(self.ids) - {node_id}}
        self._apply_policy()

    def cut(self, from_id, to_id):
        """Blackhole the Raft link on which node `from_id` dials node `to_id` (its requests to it:
        AppendEntries, votes, announcements); the other direction keeps working."""
        self._require_proxies()
        self._cut_links.add((from_id, to_id))
        self._apply_policy()

    def heal(self):
        """Undo isolate() and every cut()."""
        self._require_proxies()
        self._sides = None
        self._cut_links.clear()
        self._apply_policy()

    # -- diagnostics -----------------------------------------------------------------
    def log_tail(self, node_id=None, lines=LOG_TAIL_LINES):
        return "\n".join(log_tail(self.nodes[i].log_path, lines, node_id=i)
                         for i in ([node_id] if node_id is not None else self.ids))

    # -- internals -------------------------------------------------------------------
    def _config_of(self, node):
        members = {str(j): self._address_dialled(node.id, j) for j in self.ids}
        return {
            "node_id": node.id,
            "listener": f"127.0.0.1:{node.listen_port}",
            "advertised_listener": node.bootstrap,
            "admin_listener": node.admin,
            "cluster_id": self.cluster_id,
            "raft_address": node.raft_address,
            "initial_members": members,
            "data_dir": str(node.data_dir),
            **self.settings,
            **({"cluster_secret": self.secret} if self.secret is not None else {}),
            "auto_create_topics": True,
            "default_partitions": 3,
            "default_replication_factor": 3,
            "message_max_bytes": 1048588,
            "socket_request_max_bytes": 104857600,
            "max_connections": 1024,
            "offsets_topic_partitions": 1,
            "group_initial_rebalance_delay_ms": 0,
            **self.node_settings.get(node.id, {}),
        }

    def _address_dialled(self, from_id, to_id):
        if from_id == to_id or not self.proxied:
            return self.nodes[to_id].raft_address
        return f"127.0.0.1:{self._link_ports[(from_id, to_id)]}"

    def _env(self):
        # The config file is the whole truth: drop RAFKA_* overrides (RAFKA_BIN, a developer's
        # RAFKA_DATA_DIR...) that the config crate would otherwise apply to every node.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAFKA_")}
        env.setdefault("RUST_LOG", "info,openraft=warn")
        env["NO_COLOR"] = "1"  # plain log files without ANSI colour codes
        return env

    def _spawn(self, node):
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("start brokers from the main thread (see the module docstring)")
        node.starts += 1
        node.proc = spawn_broker(self.binary, node.config_path, node.log_path, node.starts, node.dir, self._env())

    def _tool(self, *args):
        env = self._env()
        if self.secret is not None:
            # For `rafka checksums` only: in a node's environment it would override its config file.
            env["RAFKA_CLUSTER_SECRET"] = self.secret
        return subprocess.run([self.binary, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL,
                              preexec_fn=_die_with_parent)

    def _expect_alive(self, node_id):
        """The node, unless the test started it and its process has exited since (a crash)."""
        node = self.nodes[node_id]
        if node.proc is not None and node.proc.poll() is not None:
            raise NodeDied(f"node {node_id} exited with code {node.proc.returncode}\n{self.log_tail(node_id)}")
        return node

    def _any_reachable(self):
        reachable = self.reachable_ids()
        if not reachable:
            raise RuntimeError("no running, non-isolated node to ask")
        return reachable[0]

    @staticmethod
    def _wait(predicate, timeout, what, fatal=()):
        """harness.wait_until; predicates raise NotYet(state seen), which the timeout message quotes."""
        return wait_until(predicate, timeout, interval=0.2, what=what, fatal=fatal)

    # -- proxies -----------------------------------------------------------------------
    def _start_proxies(self):
        for (i, j), port in self._link_ports.items():
            self.proxies.append(TcpProxy(f"raft {i}->{j}", port, self.nodes[j].raft_port,
                                         allows=lambda _side, i=i, j=j: self._link_allowed(i, j)))
        for node in self.nodes.values():
            self.proxies.append(TcpProxy(f"kafka ->{node.id}", node.advertised_port, node.listen_port,
                                         allows=lambda side, j=node.id: self._client_allowed(side, j),
                                         read_side=self._read_client_side, blackhole=False))

    def _link_allowed(self, from_id, to_id):
        if (from_id, to_id) in self._cut_links:
            return False
        return self._sides is None or self._side_of(from_id) == self._side_of(to_id)

    def _client_allowed(self, side, node_id):
        if self._sides is None or side not in self._sides:
            return True
        return node_id in self._sides[side]

    def _side_of(self, node_id):
        return next(name for name, members in self._sides.items() if node_id in members)

    @staticmethod
    def _read_client_side(sock):
        client_id, first_bytes = kafka_client_id(sock)
        side = None
        if client_id and client_id.startswith(SIDE_PREFIX):
            side = client_id[len(SIDE_PREFIX):].split(".", 1)[0]
        return side, first_bytes

    def _apply_policy(self):
        for proxy in self.proxies:
            proxy.reevaluate()

    def _require_proxies(self):
        if not self.proxied:
            raise RuntimeError("isolate()/heal() need Cluster(proxies=True)")


class NodeDied(RuntimeError):
    pass


def replicas_agree(views, topic, partitions, node_ids):
    """`views` ({partition: {node: (applied_index, checksum)}}) if every partition has a replica on
    every node, all at one applied index with one checksum. Raises NotYet while replicas lag,
    ReplicasDiverged if two replicas at the same index hold different data."""
    for p in range(partitions):
        replicas = views.get(p, {})
        by_index = {}
        for node_id, (index, checksum) in replicas.items():
            by_index.setdefault(index, {})[node_id] = checksum
        for index, checksums in by_index.items():
            if len(set(checksums.values())) > 1:
                raise ReplicasDiverged(f"{topic}/{p} at applied index {index}: checksums {checksums}")
        if set(replicas) != set(node_ids) or len(by_index) > 1:
            raise NotYet(f"{topic}/{p} replicas (applied_index, checksum): {replicas}")
    return views
