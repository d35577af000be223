#!/usr/bin/env python3
"""Power cuts: every broker's data dir is a powercut-fs mount (tools/powercut-fs), which keeps
writes that were not fsynced in memory and throws them away at a cut, as a power cut would
(kill -9 alone keeps the page cache, so it cannot see a missing fsync). Under acks=all load from
the durability checker's producers (two idempotent, one not), brokers are killed -9 and their
filesystems cut at once, then mounted again from what was synced and restarted:

  fs          through a real mount: synced bytes and names survive a cut, unsynced ones do not
  single      one broker, three power cuts
  cluster     three nodes, each on its own mount: a cut of the leader of partition 0, a cut of
              all three at once, a cut of another node

Every acknowledged record must be read back (lost = 0), and the idempotent producers' records
exactly once and in order. Each scenario also checks that its cuts threw unsynced data away, so
that it could have lost something.

Needs /dev/fuse and fusermount3 (Debian's fuse3, installed by scripts/install-deps.sh test):
without them the suite is skipped, or fails when CI=true. POWERCUT_FS_BIN names the filesystem
binary (default: next to the broker binary, see harness.find_binary).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "durability"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
from harness import (REPO_ROOT, Broker, Results, _die_with_parent, exit_on_sigterm, expect,  # noqa: E402
                     find_binary, remove_tmp, stop_brokers, wait_until)
from cluster import Cluster  # noqa: E402

import checker  # noqa: E402  (durability/checker.py)
from confluent_kafka import Consumer, TopicPartition  # noqa: E402

SUITE = "powercut"
MOUNT_TIMEOUT = 15.0  # mounting, or unmounting at a cut
PARTITIONS = 3
# Producers 0 and 1 are idempotent; producer 2 is not, so its retries may duplicate (never lose).
IDEMPOTENT = [True, True, False]
RATE = 150  # values/s per producer: steady load that a loaded 2-core machine keeps up with
CUT_LINE = re.compile(r"^cut: dropped (\d+) unsynced bytes in (\d+) files and (\d+) namespace changes$", re.M)


def fuse_missing():
    """What this machine lacks to mount powercut-fs (empty when nothing)."""
    missing = []
    if not os.path.exists("/dev/fuse"):
        missing.append("/dev/fuse does not exist")
    if shutil.which("fusermount3") is None:
        missing.append("fusermount3 is not on PATH (Debian package fuse3)")
    return missing


def find_powercut_fs():
    """$POWERCUT_FS_BIN, else powercut-fs beside the broker binary (one cargo build makes both)."""
    explicit = os.environ.get("POWERCUT_FS_BIN")
    path = Path(explicit) if explicit else Path(find_binary()).parent / "powercut-fs"
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not an executable file; build it with `cargo build --release`")
    return str(path)


def is_mounted(path):
    """Whether `path` is a mount point in this process's mount table."""
    target = os.path.realpath(path).encode()
    with open("/proc/self/mountinfo", "rb") as table:
        return any(line.split()[4] == target for line in table)


class Mount:
    """powercut-fs serving `backing` at `mountpoint`. cut() is a power cut: what was not
    synced is gone, and the next start() mounts what was."""

    def __init__(self, binary, backing, mountpoint, log_path):
        self.binary = binary
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.log_path = Path(log_path)
        self.proc = None
        self.dropped_bytes = []  # per cut

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        """Mount (from the main thread: the process dies with the thread that started it)."""
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, str(self.backing), str(self.mountpoint)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                         preexec_fn=_die_with_parent)

        def mounted():
            if self.proc.poll() is not None:
                raise RuntimeError(f"powercut-fs exited with code {self.proc.returncode}: {self.log_tail()}")
            return is_mounted(self.mountpoint)

        wait_until(mounted, MOUNT_TIMEOUT, what=f"powercut-fs mounted at {self.mountpoint}", fatal=RuntimeError)

    def cut(self):
        """Power cut: powercut-fs drops what was not synced, unmounts and exits. The processes
        using the mount must be dead already, or what they do next would count as synced."""
        proc = self.proc
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=MOUNT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"powercut-fs did not exit within {MOUNT_TIMEOUT:.0f}s of the cut: "
                               f"{self.log_tail()}") from None
        finally:
            self.proc = None
        if proc.returncode != 0:
            raise RuntimeError(f"powercut-fs exited with code {proc.returncode} at the cut: {self.log_tail()}")
        found = CUT_LINE.search(out.decode(errors="replace"))
        expect(found is not None, f"powercut-fs said nothing about the cut: {out!r}")
        expect(not is_mounted(self.mountpoint), f"{self.mountpoint} is still mounted after the cut")
        self.dropped_bytes.append(int(found.group(1)))
        print(f"[{SUITE}] {self.mountpoint.parent.name}: {found.group(0)}", flush=True)

    def close(self):
        """Cut if mounted; a dead mount (powercut-fs killed) is detached."""
        if self.running:
            try:
                self.cut()
            except Exception as exc:  # noqa: BLE001 - cleanup goes on; the test has its verdict
                print(f"[{SUITE}] closing {self.mountpoint}: {exc}", flush=True)
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False,
                           stdin=subprocess.DEVNULL)

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no powercut-fs log)"


class PowercutBroker(Broker):
    """harness.Broker with its data dir on a powercut-fs mount."""

    def __init__(self, fs_binary):
        super().__init__()
        self.mount = Mount(fs_binary, self.tmp / "backing", self.data_dir, self.tmp / "powercut-fs.log")

    def start(self):
        if not self.mount.running:
            self.mount.start()
        super().start()

    def power_cut(self):
        self.stop(signal.SIGKILL)
        self.mount.cut()
        self.start()

    def close(self):
        try:
            self.stop()
        finally:
            self.mount.close()
            remove_tmp(self.tmp, self.kept_what)


class PowercutCluster(Cluster):
    """cluster.Cluster with every node's data dir on its own powercut-fs mount."""

    def __init__(self, fs_binary):
        super().__init__(name="powercut")
        self.mounts = {i: Mount(fs_binary, node.dir / "backing", node.data_dir, node.dir / "powercut-fs.log")
                       for i, node in self.nodes.items()}

    def _spawn(self, node):
        if not self.mounts[node.id].running:
            self.mounts[node.id].start()
        super()._spawn(node)

    def power_cut(self, node_ids):
        """kill -9 the nodes, then cut their filesystems, then start them and wait for the cluster."""
        print(f"[{SUITE}] power cut of node(s) {sorted(node_ids)}", flush=True)
        for i in node_ids:
            self.kill9(i)
        for i in node_ids:
            self.mounts[i].cut()
        for i in node_ids:
            self.spawn(i)
        self.wait_ready()

    def close(self):
        procs = [node.proc for node in self.nodes.values()]
        for node in self.nodes.values():
            node.proc = None
        try:
            stop_brokers(procs)
        finally:
            for mount in self.mounts.values():
                mount.close()
            super().close()


def run_checker(bootstrap, topic, seconds, faults, replication_factor=-1):
    """The durability checker's workload and read-back, where a partition the brokers cannot
    serve any more counts as empty: every record acknowledged in it is reported lost."""
    acked, failed, sent = checker.run_workload(bootstrap, topic, PARTITIONS, len(IDEMPOTENT), seconds, RATE,
                                               faults, IDEMPOTENT, replication_factor)
    readable = readable_partitions(bootstrap, topic)
    records = checker.read_back(bootstrap, topic, readable) if readable else {}
    report = checker.analyse(records, acked, PARTITIONS)
    report.produced, report.failed = sum(sent), len(failed)
    for value, error in failed[:3]:
        print(f"[{SUITE}] failed: {value!r}: {error}", flush=True)
    return report


def readable_partitions(bootstrap, topic, timeout=30):
    """The partitions whose offsets the brokers give within `timeout` (brokers that just restarted
    may need a moment); the others are named."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "powercut-probe", "log_level": 0})
    readable = []
    try:
        for p in range(PARTITIONS):
            try:
                wait_until(lambda: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5), timeout,
                           interval=0.5, what=f"offsets of {topic}/{p}")
                readable.append(p)
            except TimeoutError as exc:
                print(f"[{SUITE}] {topic}/{p} cannot be read: {exc}", flush=True)
    finally:
        consumer.close()
    return readable


def verdict(report, dropped_bytes):
    """lost = 0 for every producer; no duplicate or reordered record of an idempotent producer;
    and the cuts threw unsynced data away (else they could not have caught a missing fsync)."""
    report.print(PARTITIONS)
    plain = tuple(f"p{i}-" for i, idempotent in enumerate(IDEMPOTENT) if not idempotent)

    def of_idempotent(found):
        return [v for values in found.values() for v in values if not v.startswith(plain)]

    lost = [v for values in report.lost.values() for v in values]
    print(f"[{SUITE}] lost={len(lost)} idempotent duplicates={len(of_idempotent(report.duplicated))} "
          f"idempotent reordered={len(of_idempotent(report.reordered))} "
          f"unsynced bytes dropped per cut={dropped_bytes}", flush=True)
    expect(report.acked > 0, "no record was acknowledged")
    expect(not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:5]}")
    expect(not of_idempotent(report.duplicated), f"idempotent duplicates: {of_idempotent(report.duplicated)[:5]}")
    expect(not of_idempotent(report.reordered), f"idempotent reordered: {of_idempotent(report.reordered)[:5]}")
    expect(report.failed == 0, f"{report.failed} records failed to produce (acks=all should retry)")
    expect(sum(dropped_bytes) > 0, f"the cuts dropped no unsynced bytes ({dropped_bytes})")


def check_filesystem(fs_binary):
    """Through a real mount: after a cut only fsynced bytes and directory-fsynced names remain."""
    root = Path(tempfile.mkdtemp(prefix="rafka-powercut-fs-"))
    mount = Mount(fs_binary, root / "backing", root / "mnt", root / "powercut-fs.log")
    try:
        mount.start()
        mnt = mount.mountpoint
        (mnt / "dir").mkdir()
        with open(mnt / "dir" / "kept", "wb") as f:
            f.write(b"synced")
            f.flush()
            os.fsync(f.fileno())
            f.write(b" and more")
        dir_fd = os.open(mnt / "dir", os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
        with open(mnt / "dir" / "nameless", "wb") as f:
            f.write(b"synced, but its name is not")
            f.flush()
            os.fsync(f.fileno())
        expect((mnt / "dir" / "kept").read_bytes() == b"synced and more", "the mount shows unsynced writes")
        mount.cut()
        expect(mount.dropped_bytes == [len(b" and more")], f"dropped {mount.dropped_bytes}")
        mount.start()
        expect(sorted(os.listdir(mnt / "dir")) == ["kept"], f"after the cut: {os.listdir(mnt / 'dir')}")
        expect((mnt / "dir" / "kept").read_bytes() == b"synced", "after the cut: not the synced bytes")
    finally:
        mount.close()
        shutil.rmtree(root, ignore_errors=True)


def check_single(R, fs_binary):
    started = len(R.failed)
    with R.check("single: broker starts on powercut-fs", timeout=60):
        broker = PowercutBroker(fs_binary)
        broker.__enter__()
    if len(R.failed) > started:
        return
    R.broker = broker
    try:
        with R.check("single: three power cuts under acks=all load: nothing acknowledged lost", timeout=300):
            faults = [(3, broker.power_cut), (7, broker.power_cut), (11, broker.power_cut)]
            report = run_checker(broker.bootstrap, "powercut-single", seconds=15, faults=faults)
            verdict(report, broker.mount.dropped_bytes)
    finally:
        R.broker = None
        broker.close()


def check_cluster(R, fs_binary):
    started = len(R.failed)
    with R.check("cluster: three nodes start on powercut-fs", timeout=90):
        cluster = PowercutCluster(fs_binary)
        cluster.__enter__()
    if len(R.failed) > started:
        return
    R.broker = cluster
    topic = "powercut-cluster"
    try:
        with R.check("cluster: power cuts of one node and of all nodes at once: nothing acknowledged lost",
                     timeout=360):
            def cut_leader():
                cluster.power_cut([cluster.leader_of(topic, 0)])

            def cut_all():
                cluster.power_cut(cluster.ids)

            def cut_other():
                leader = cluster.leader_of(topic, 0)
                cluster.power_cut([next(i for i in cluster.ids if i != leader)])

            faults = [(3, cut_leader), (8, cut_all), (14, cut_other)]
            report = run_checker(cluster.bootstrap(), topic, seconds=18, faults=faults, replication_factor=3)
            verdict(report, [b for mount in cluster.mounts.values() for b in mount.dropped_bytes])
    finally:
        R.broker = None
        cluster.close()


def main():
    exit_on_sigterm()
    R = Results(SUITE)
    missing = fuse_missing()
    if missing:
        if os.environ.get("CI") == "true":
            R.record("FUSE is available (/dev/fuse, fusermount3)", False, "; ".join(missing))
            R.finish()
        print(f"[{SUITE}] SKIP: {'; '.join(missing)} (with CI=true this fails)")
        print("0 passed, 0 failed")
        return
    fs_binary = None
    with R.check("powercut-fs binary is built"):
        fs_binary = find_powercut_fs()
    if fs_binary is not None:
        with R.check("fs: a cut keeps fsynced bytes and names, drops the rest", timeout=60):
            check_filesystem(fs_binary)
        check_single(R, fs_binary)
        check_cluster(R, fs_binary)
    R.finish()


if __name__ == "__main__":
    os.chdir(REPO_ROOT)
    main()
