"""Per-process resource figures from /proc: RSS, peak RSS, CPU time.

`Sampler` polls VmRSS of a set of pids in a background thread and keeps the
maximum; `cpu_seconds(pid)` and `self_cpu_seconds()` give CPU time so each
phase can report where the CPU went (broker vs. the client in this process).
"""

import os
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def status_kib(pid, field):
    """A `Vm*` field of /proc/<pid>/status in KiB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib(pid):
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib / 1024


def hwm_mib(pid):
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib / 1024


def status_mib(pid, fields=("VmRSS", "VmHWM", "RssAnon", "RssFile")):
    """Several /proc/<pid>/status fields at once, in MiB ({} if the process is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in fields:
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        return {}
    return out


def io_write_bytes(pid):
    """Bytes `pid` caused to be sent to the storage layer (/proc/<pid>/io write_bytes), or None."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid):
    """utime + stime of `pid` (all threads) in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def self_cpu_seconds():
    t = os.times()
    return t.user + t.system


class Sampler:
    """Samples VmRSS of `pids` every `interval` s; `.peak_mib` is the max seen (sum over pids).

    `.at_peak` holds the status fields at that sample (summed over pids), `.per_pid_at_peak`
    each pid's VmRSS at that sample and `.per_pid_peak_mib` each pid's own maximum.
    """

    def __init__(self, pids, interval=0.05):
        self.pids = list(pids)
        self.interval = interval
        self.peak_mib = 0.0
        self.at_peak = {}
        self.per_pid_at_peak = []
        self.per_pid_peak_mib = [0.0] * len(self.pids)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            values = [status_mib(p) for p in self.pids]
            total = sum(v.get("VmRSS", 0.0) for v in values)
            for i, v in enumerate(values):
                self.per_pid_peak_mib[i] = max(self.per_pid_peak_mib[i], v.get("VmRSS", 0.0))
            if total > self.peak_mib:
                self.peak_mib = total
                self.at_peak = {k: sum(v.get(k, 0.0) for v in values) for k in ("VmRSS", "RssAnon", "RssFile")}
                self.per_pid_at_peak = [v.get("VmRSS") for v in values]
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)


class CpuMeter:
    """CPU seconds used by the broker pids and by this process between enter and exit."""

    def __init__(self, pids):
        self.pids = list(pids)

    def __enter__(self):
        self._t0 = time.perf_counter()
        self._b0 = [cpu_seconds(p) or 0.0 for p in self.pids]
        self._s0 = self_cpu_seconds()
        self._w0 = [io_write_bytes(p) or 0 for p in self.pids]
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self._t0
        b1 = [cpu_seconds(p) for p in self.pids]
        self.per_pid_cpu_s = [(b or 0.0) - a for a, b in zip(self._b0, b1)]
        self.broker_cpu_s = sum(self.per_pid_cpu_s)
        self.client_cpu_s = self_cpu_seconds() - self._s0
        w1 = [io_write_bytes(p) for p in self.pids]
        self.broker_disk_write_bytes = sum((b or 0) - a for a, b in zip(self._w0, w1))

    def as_dict(self):
        wall = max(self.wall_s, 1e-9)
        return {"wall_s": self.wall_s, "broker_cpu_s": self.broker_cpu_s, "client_cpu_s": self.client_cpu_s,
                "broker_cpu_pct": 100 * self.broker_cpu_s / wall, "client_cpu_pct": 100 * self.client_cpu_s / wall,
                "broker_disk_write_bytes": self.broker_disk_write_bytes}
