"""Machine limits measured in the same run as the broker figures.

* disk: fsynced sequential write bandwidth (1 MiB write + fdatasync, appending
  to a temp file in the filesystem that holds the broker data dirs), and
  4 KiB write + fdatasync operations per second with their latency;
* loopback: one TCP stream between two processes (python sockets).
"""

import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20


def _percentile(sorted_values, q):
    if not sorted_values:
        return None
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[idx]


def disk_fsync(directory=None, seconds_1m=3.0, seconds_4k=2.0):
    """Fsynced write figures for the filesystem of `directory` (default: the temp dir)."""
    directory = directory or tempfile.gettempdir()
    out = {"dir": directory, "st_dev": os.stat(directory).st_dev}
    block = os.urandom(MIB)
    fd, path = tempfile.mkstemp(prefix="rafka-bench-disk-", dir=directory)
    try:
        n = 0
        start = time.perf_counter()
        end = start + seconds_1m
        while time.perf_counter() < end:
            os.write(fd, block)
            os.fdatasync(fd)
            n += 1
        elapsed = time.perf_counter() - start
        out["seq_1m_fdatasync_MBps"] = n * MIB / elapsed / 1e6
        out["seq_1m_fdatasync_MiBps"] = n / elapsed
        out["seq_1m_blocks"] = n
        out["seq_1m_seconds"] = elapsed
    finally:
        os.close(fd)
        os.unlink(path)

    small = os.urandom(4096)
    fd, path = tempfile.mkstemp(prefix="rafka-bench-disk4k-", dir=directory)
    try:
        lat = []
        start = time.perf_counter()
        end = start + seconds_4k
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            os.write(fd, small)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        lat.sort()
        out["w4k_fdatasync_per_s"] = len(lat) / elapsed
        out["w4k_fdatasync_p50_ms"] = _percentile(lat, 0.50) * 1e3
        out["w4k_fdatasync_p99_ms"] = _percentile(lat, 0.99) * 1e3
        out["w4k_seconds"] = elapsed
    finally:
        os.close(fd)
        os.unlink(path)
    return out


_RECEIVER = r"""
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
srv.settimeout(30)
conn, _ = srv.accept(); conn.settimeout(30)
buf = bytearray(4 << 20); view = memoryview(buf); total = 0
while True:
    n = conn.recv_into(view)
    if not n:
        break
    total += n
conn.sendall(str(total).encode()); conn.close()
"""


def loopback_tcp(seconds=2.0, chunk=1 << 20):
    """One TCP stream over 127.0.0.1 from this process to a receiver process."""
    recv = subprocess.Popen([sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(recv.stdout.readline())
        payload = os.urandom(chunk)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sent = 0
            start = time.perf_counter()
            end = start + seconds
            while time.perf_counter() < end:
                sock.sendall(payload)
                sent += chunk
            sock.shutdown(socket.SHUT_WR)
            received = int(sock.recv(64).decode() or 0)
            elapsed = time.perf_counter() - start
        recv.wait(timeout=30)
        if received != sent:
            raise RuntimeError(f"loopback receiver counted {received} of {sent} bytes")
        return {"MBps": sent / elapsed / 1e6, "bytes": sent, "seconds": elapsed}
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()


def machine_info():
    info = {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                if key in ("MemTotal", "MemAvailable"):
                    info[key + "_MiB"] = int(value.split()[0]) // 1024
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    info["nproc_online"] = len(os.sched_getaffinity(0))
    return info


def filesystem_of(path):
    """(mount point, fstype, device) of the filesystem holding `path`, from /proc/mounts."""
    path = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
    except OSError:
        pass
    return {"mount": best[0], "fstype": best[1], "device": best[2]}
