#!/usr/bin/env python3
"""rafka benchmark suite: machine limits, produce/consume throughput, produce
latency at fixed offered loads, and the broker's footprint (RSS, startup,
recovery after kill -9). Prints a table and writes bench/results.json.

Every broker is a fresh process on free loopback ports with its own temporary
data dir (compat-tests/harness.py); all of them are stopped on any exit. The
3-node mode runs three such processes as one Raft cluster (cluster.BenchCluster),
every topic with replication factor 3.
Everything is bounded by one overall time budget (--budget, default 540 s),
shared between the node counts (see node_share): phases run against deadlines
derived from it, and each node count's large consume topic shrinks from its
requested size when the measured produce rate says it would not fit its share.
Run through bench/run.sh.
"""

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster  # noqa: E402  (puts compat-tests on sys.path)
import machine  # noqa: E402
import procstat  # noqa: E402
import report  # noqa: E402
import workloads  # noqa: E402
from harness import exit_on_sigterm  # noqa: E402

PRODUCE_MATRIX = [(1024, "all"), (1024, "1"), (100, "all"), (100, "1")]
LATENCY_LOADS = [0.50, 0.25, 0.75]  # 50% first: it is the one with a target
IDLE_SETTLE_S = 1.0  # idle RSS is read this long after the first answered Metadata
RECOVERY_LIMIT_S = 120.0
# A produce or latency run with no delivery progress for this long is abandoned as stalled
# (reported as an error with the brokers' log events) instead of waiting for its deadline.
STALL_S = 15.0
# Per produce/latency run, beyond its measured seconds: sync, disk probe, startup, idle
# settle, warm-up (topic creation), flush, stop. Used to split the budget between node counts.
RUN_OVERHEAD_S = {1: 7.0, 3: 11.0}
LARGE_TOPIC_MIN_S = 40.0  # large-topic phase without its fill/consume: startup, recovery, restart


def parse_size(text):
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    if unit not in units:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 1GB, 300MB, 512MiB)")
    return int(float(num) * units[unit])


class Budget:
    def __init__(self, seconds):
        self.start = time.monotonic()
        self.seconds = seconds
        self.end = self.start + seconds

    def left(self):
        return self.end - time.monotonic()

    def elapsed(self):
        return time.monotonic() - self.start

    def deadline(self, limit_s):
        """An absolute deadline `limit_s` from now, never past the budget."""
        return min(self.end, time.monotonic() + limit_s)


class Run:
    """Collects results and errors; `phase()` isolates a failing phase from the rest."""

    def __init__(self, args):
        self.args = args
        self.budget = Budget(args.budget)
        self.results = {"schema": 1, "errors": []}
        self.node_end = self.budget.end  # end of the current node count's share of the budget

    def node_left(self):
        """Seconds left in the current node count's share (never past the whole budget)."""
        return min(self.node_end, self.budget.end) - time.monotonic()

    @contextlib.contextmanager
    def phase(self, name):
        t0 = time.monotonic()
        log(f"--- {name} (budget left {self.budget.left():.0f} s)")
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - recorded, the next phase still runs
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            msg = f"{name}: {type(exc).__name__}: {first_line}"
            self.results["errors"].append(msg)
            log("ERROR " + msg)
            log(traceback.format_exc(limit=6))
        finally:
            log(f"    {name} took {time.monotonic() - t0:.1f} s")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def git_info():
    def git(*a):
        try:
            return subprocess.run(["git", "-C", str(HERE.parent), *a], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown", "dirty": bool(status)}


def total(values):
    """Sum of the known values (None if none is known): RSS and the like over every node."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def median(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


# -- phases -------------------------------------------------------------------

def phase_machine(run):
    a = run.args
    res = run.results.setdefault("machine_limits", {})
    # Same default temp dir as harness.Broker's mkdtemp, i.e. the data dirs' filesystem.
    import tempfile
    tmp = tempfile.gettempdir()
    res["data_fs"] = machine.filesystem_of(tmp)
    with run.phase("disk fsync"):
        res["disk"] = machine.disk_fsync(tmp, seconds_1m=a.disk_seconds, seconds_4k=a.disk_seconds * 2 / 3)
    with run.phase("loopback tcp"):
        res["loopback"] = machine.loopback_tcp(seconds=a.loopback_seconds)


def phase_machine_again(run):
    """The disk again at the end: on a shared machine its bandwidth moves; both are reported."""
    import tempfile
    if run.budget.left() < run.args.disk_seconds * 2 + 5:
        return
    with run.phase("disk fsync (again, at the end)"):
        run.results.setdefault("machine_limits", {})["disk_end"] = machine.disk_fsync(
            tempfile.gettempdir(), seconds_1m=run.args.disk_seconds, seconds_4k=run.args.disk_seconds * 2 / 3)


def finalize(r):
    """Derived figures and the targets.

    Each produce run is compared with the disk probe taken just before it
    (fraction_of_disk_fsync_bw) and with the mean of the start and end
    measurements (fraction_of_disk_fsync_bw_run_mean); the spread of every disk
    measurement of the run is recorded so a reader can judge the noise.

    With N nodes on one machine every node keeps its own replica on the same disk,
    so the reference is the disk's fsynced bandwidth divided by N (disk_share_MBps,
    disk_share_divisor = N). Runs of more than one node are also expressed as a
    fraction of the single-node figure with the same message size and acks
    (fraction_of_single_node), and so are their consume rate and latency peak.
    """
    ml = r.get("machine_limits", {})
    bws = [d["seq_1m_fdatasync_MBps"] for d in (ml.get("disk"), ml.get("disk_end")) if d]
    every = list(bws)
    if bws:
        ml["disk_fsync_MBps_run_mean"] = sum(bws) / len(bws)
    clusters = r.get("clusters", {})
    single = clusters.get("1", {}) if clusters.get("1", {}).get("status") == "measured" else {}
    for node in clusters.values():
        divisor = node.get("nodes", 1)
        runs = node.get("produce", []) + node.get("latency", {}).get("runs", [])
        every += [x["disk_adjacent"]["seq_1m_fdatasync_MBps"] for x in runs if x.get("disk_adjacent")]
        for p in node.get("produce", []):
            p["disk_share_divisor"] = divisor
            adjacent = p.get("disk_adjacent", {}).get("seq_1m_fdatasync_MBps")
            if adjacent:
                p["disk_share_MBps"] = adjacent / divisor
                p["fraction_of_disk_fsync_bw"] = p["MBps"] / p["disk_share_MBps"]
            if bws:
                p["fraction_of_disk_fsync_bw_run_mean"] = p["MBps"] / (ml["disk_fsync_MBps_run_mean"] / divisor)
            if single and divisor != 1:
                ref = next((x for x in single.get("produce", [])
                            if x["size"] == p["size"] and x["acks"] == p["acks"]), None)
                if ref and ref["MBps"]:
                    p["fraction_of_single_node"] = p["MBps"] / ref["MBps"]
        if single and divisor != 1:
            mine, ref = node.get("large_topic", {}).get("consume"), single.get("large_topic", {}).get("consume")
            if mine and ref and ref["MBps"]:
                mine["fraction_of_single_node"] = mine["MBps"] / ref["MBps"]
            lat, ref_lat = node.get("latency", {}), single.get("latency", {})
            if lat.get("peak_msgs_per_s") and ref_lat.get("peak_msgs_per_s"):
                lat["peak_fraction_of_single_node"] = lat["peak_msgs_per_s"] / ref_lat["peak_msgs_per_s"]
    if every:
        ml["disk_fsync_MBps_spread"] = [min(every), max(every)]
    r["targets"] = report.targets(r)


def fresh_broker(run, node_res, nodes):
    """Start a fresh cluster and record its startup time and idle RSS (summed over its nodes,
    and per node when there are several)."""
    kwargs = {}
    if nodes > 1:
        kwargs["raft_timing"] = {"rtt_millis": run.args.cluster_rtt_millis, "heartbeat_rtt": run.args.cluster_heartbeat_rtt,
                                 "election_rtt": run.args.cluster_election_rtt}
    b = cluster.start_cluster(nodes, **kwargs)
    if nodes > 1:
        node_res["config"] = {"default_partitions": b.default_partitions,
                              "default_replication_factor": b.replication_factor, **b.raft_timing}
    b.__enter__()
    try:
        timing = b.last_timing
        node_res.setdefault("startup_fresh_s", []).append(timing["metadata_s"])
        if nodes > 1:
            node_res.setdefault("startup_fresh_detail", []).append(
                {k: timing.get(k) for k in ("first_metadata_s", "per_node_metadata_s", "per_node_healthy_s",
                                            "controller_id")})
        pids = b.pids()
        at_ready = [procstat.rss_mib(pid) for pid in pids]
        time.sleep(IDLE_SETTLE_S)  # measurement window for idle memory, not synchronization
        idle = [procstat.status_mib(pid) for pid in pids]
        sample = {"at_ready_mib": total(at_ready), "after_settle_mib": total(x.get("VmRSS") for x in idle),
                  "anon_mib": total(x.get("RssAnon") for x in idle), "file_mib": total(x.get("RssFile") for x in idle)}
        if nodes > 1:
            sample["per_node_after_settle_mib"] = [x.get("VmRSS") for x in idle]
        node_res.setdefault("idle_rss_samples", []).append(sample)
    except BaseException:
        b.close()
        raise
    return b


def log_events(b):
    try:
        return b.log_events()
    except Exception:  # noqa: BLE001 - diagnostics only
        return None


def note_log_events(b, node_res, name, baseline=None):
    """Count the brokers' log events of interest (RPC timeouts, panics...) since `baseline`
    (an earlier log_events(b)), per node."""
    events = log_events(b)
    if events is None:
        return None
    if baseline:
        events = {k: [now - before for now, before in zip(v, baseline.get(k, [0] * len(v)))]
                  for k, v in events.items()}
    entry = {"run": name, **events}
    node_res.setdefault("broker_log_events", []).append(entry)
    return entry


def fmt_log_events(entry):
    if not entry:
        return "no broker log"
    parts = [f"{key.replace('_', ' ')} {'/'.join(str(c) for c in entry[key])}"
             for key in cluster.LOG_EVENTS if any(entry.get(key, []))]
    return "broker log (per node): " + (", ".join(parts) if parts else "nothing notable")


class LoggedRun:
    """`with LoggedRun(b, node_res, name) as lr:` records the brokers' log events during the
    block (lr.events) and, if the block fails, adds them to the error message."""

    def __init__(self, b, node_res, name):
        self.b, self.node_res, self.name = b, node_res, name
        self.events = None
        self.baseline = None

    def __enter__(self):
        self.baseline = log_events(self.b)
        return self

    def __exit__(self, exc_type, exc, _tb):
        self.events = note_log_events(self.b, self.node_res, self.name, self.baseline)
        if exc is not None and isinstance(exc, Exception) and _plain(exc):
            raise type(exc)(f"{exc} [{fmt_log_events(self.events)}]") from exc
        return False


def _plain(exc):
    """True if the exception can be rebuilt from one message (TimeoutError, RuntimeError...)."""
    try:
        type(exc)("x")
        return True
    except Exception:  # noqa: BLE001
        return False


def phase_produce(run, node_res, nodes):
    a = run.args
    out = node_res.setdefault("produce", [])
    for size, acks in PRODUCE_MATRIX:
        name = f"produce {size} B acks={acks}"
        with run.phase(name):
            if run.budget.left() < a.produce_seconds + 30:
                raise TimeoutError("skipped: time budget exhausted")
            settle_disk()
            probe = disk_probe(run)
            with contextlib.closing(fresh_broker(run, node_res, nodes)) as b:
                deadline = run.budget.deadline(a.produce_seconds * 4 + 60)
                topic = f"bench-p{size}-acks{acks}"
                with LoggedRun(b, node_res, name) as logged:
                    with procstat.Sampler(b.pids()) as sampler, procstat.CpuMeter(b.pids()) as cpu:
                        r = workloads.produce_throughput(b.bootstrap, topic, size, acks,
                                                         a.produce_seconds, deadline, linger_ms=a.linger_ms,
                                                         batch_size=a.batch_size, stall_s=STALL_S)
                events = logged.events
                pids = b.pids()
                r.update(cpu.as_dict())
                r["rss_peak_mib"] = sampler.peak_mib
                r["rss_peak_anon_mib"] = sampler.at_peak.get("RssAnon")
                r["rss_peak_file_mib"] = sampler.at_peak.get("RssFile")
                r["vmhwm_mib"] = total(procstat.hwm_mib(pid) for pid in pids)
                r["rss_after_mib"] = total(procstat.rss_mib(pid) for pid in pids)
                r["disk_adjacent"] = probe
                if nodes > 1:
                    r["nodes"] = nodes
                    info = b.partition_info(topic, 0)  # replicas: RF 3 as configured; isr after the run
                    r["leader_node"], r["replicas"], r["isr_after"] = info["leader"], info["replicas"], info["isr"]
                    r["rss_peak_per_node_mib"] = sampler.per_pid_peak_mib
                    r["rss_at_peak_per_node_mib"] = sampler.per_pid_at_peak
                    r["vmhwm_per_node_mib"] = [procstat.hwm_mib(pid) for pid in pids]
                    r["broker_cpu_s_per_node"] = cpu.per_pid_cpu_s
                    r["broker_log_events"] = events
                if r["bytes"]:
                    r["write_amplification"] = r["broker_disk_write_bytes"] / r["bytes"]
                out.append(r)
                log(f"    {r['msgs_per_s']:,.0f} msg/s {r['MBps']:.1f} MB/s, peak RSS {sampler.peak_mib:.0f} MiB"
                    + (f" (sum of {nodes} nodes, leader node {r['leader_node']})" if nodes > 1 else ""))


def peak_1k_all(node_res):
    for r in node_res.get("produce", []):
        if r["size"] == 1024 and r["acks"] == "all":
            return r
    return None


def plan_consume_size(run, node_res, nodes):
    """Requested size, or the largest that fits this node count's share of the budget given
    the measured 1 KiB produce rate (of the same node count)."""
    a = run.args
    requested = a.consume_bytes
    peak = peak_1k_all(node_res)
    fill_rate = (peak["MBps"] * 1e6 if peak else 50e6 / nodes) * 0.6  # a growing topic fills slower
    consume_rate = 100e6  # conservative; measured rates are several times higher
    reserve = RECOVERY_LIMIT_S / 4 + 15  # recovery probes, restarts
    reserve += len(LATENCY_LOADS) * (a.latency_seconds + 1 + RUN_OVERHEAD_S.get(nodes, 11.0) + 4) + 10  # latency
    avail = run.node_left() - reserve
    per_byte = 1 / fill_rate + 1 / consume_rate
    fits = int(max(0.0, avail) / per_byte)
    step = 64 * 10**6
    if requested <= fits:
        return requested, f"requested {report.fmt_bytes(requested)}, fits the time budget"
    size = max(step, fits // step * step)
    return size, (f"reduced from the requested {report.fmt_bytes(requested)} to fit the time budget "
                  f"(estimated fill {fill_rate / 1e6:.0f} MB/s, {avail:.0f} s available)")


def phase_large_topic(run, node_res, nodes):
    a = run.args
    res = node_res.setdefault("large_topic", {})
    size, why = plan_consume_size(run, node_res, nodes)
    msg_size = 1024
    count = max(1, size // msg_size)
    res.update({"requested_bytes": a.consume_bytes, "bytes": count * msg_size, "message_size": msg_size,
                "messages": count, "size_note": why})
    log(f"    large topic: {count:,} x {msg_size} B = {report.fmt_bytes(count * msg_size)} ({why})")
    topic = "bench-large"
    settle_disk()
    with contextlib.closing(fresh_broker(run, node_res, nodes)) as b:
        with run.phase("fill large topic"):
            # Never much past this node count's share: the next node count needs the rest.
            deadline = min(run.budget.deadline(max(60.0, run.budget.left() - 60)),
                           time.monotonic() + max(60.0, run.node_left() - 30))
            with LoggedRun(b, node_res, "fill large topic"):
                with procstat.Sampler(b.pids()) as sampler, procstat.CpuMeter(b.pids()) as cpu:
                    r = workloads.produce_throughput(b.bootstrap, topic, msg_size, "all", None, deadline,
                                                     linger_ms=a.linger_ms, batch_size=a.batch_size, count=count,
                                                     stall_s=STALL_S)
            r.update(cpu.as_dict())
            r["rss_peak_mib"] = sampler.peak_mib
            r["write_amplification"] = r["broker_disk_write_bytes"] / max(1, r["bytes"])
            if nodes > 1:
                r["leader_node"] = b.leader_of(topic, 0)
                r["rss_peak_per_node_mib"] = sampler.per_pid_peak_mib
            res["fill"] = r
            res["data_dir_bytes_after_fill"] = dir_bytes(b.data_dir)
            if nodes > 1:
                res["data_dir_bytes_after_fill_per_node"] = [dir_bytes(d) for d in b.data_dirs]
        if "fill" not in res:
            return
        with run.phase("consume large topic"):
            deadline = min(run.budget.deadline(max(30.0, run.budget.left() - 45)),
                           time.monotonic() + max(30.0, run.node_left() - 20))
            with LoggedRun(b, node_res, "consume large topic"):
                with procstat.Sampler(b.pids()) as sampler, procstat.CpuMeter(b.pids()) as cpu:
                    r = workloads.consume_all(b.bootstrap, topic, count, deadline)
            r.update(cpu.as_dict())
            r["rss_peak_mib"] = sampler.peak_mib
            if nodes > 1:
                r["rss_peak_per_node_mib"] = sampler.per_pid_peak_mib
            res["consume"] = r
            log(f"    {r['msgs_per_s']:,.0f} msg/s {r['MBps']:.1f} MB/s")
        with run.phase("recovery after kill -9"):
            if run.budget.left() < 20:
                raise TimeoutError("skipped: time budget exhausted")
            b.fetch_probe = (topic, 0, count - 1)
            b.ready_timeout = max(10.0, min(RECOVERY_LIMIT_S, run.budget.left() - 10))
            leader_before = b.leader_of(topic, 0)
            rss_before = [procstat.rss_mib(pid) for pid in b.pids()]
            with LoggedRun(b, node_res, "recovery after kill -9"):
                b.kill9()  # every node at once (3-node: the whole cluster crashes and restarts)
            t = b.last_timing
            rss_after = [procstat.rss_mib(pid) for pid in b.pids()]
            res["kill9"] = {"killed": "all nodes" if nodes > 1 else "the node",
                            "metadata_s": t["metadata_s"], "fetch_last_offset_s": t["fetch_s"],
                            "rss_before_kill_mib": total(rss_before), "rss_after_recovery_mib": total(rss_after),
                            "data_dir_bytes": dir_bytes(b.data_dir)}
            if nodes > 1:
                res["kill9"].update({"first_metadata_s": t.get("first_metadata_s"),
                                     "per_node_healthy_s": t.get("per_node_healthy_s"),
                                     "leader_before": leader_before, "fetch_leader": t.get("fetch_leader"),
                                     "rss_after_recovery_per_node_mib": rss_after})
            log(f"    kill -9 recovery: Metadata {t['metadata_s']:.3f} s, fetch {t['fetch_s']:.3f} s")
        with run.phase("graceful restart"):
            if run.budget.left() < 20:
                raise TimeoutError("skipped: time budget exhausted")
            with LoggedRun(b, node_res, "graceful restart"):  # counts shutdown panics too
                t0 = time.monotonic()
                code = b.stop()  # 3-node: SIGTERM to every node at once; exit codes by node
                stop_s = time.monotonic() - t0
                b.start()
            t = b.last_timing
            res["graceful_restart"] = {"stop_s": stop_s, "exit_code": code, "metadata_s": t["metadata_s"],
                                       "fetch_last_offset_s": t["fetch_s"]}


def latency_peak(node_res):
    """The 1 KiB acks=all peak the offered loads derive from: the throughput run, or, when that
    run failed (e.g. stalled), the large topic's fill (also 1 KiB acks=all, one producer)."""
    peak = peak_1k_all(node_res)
    if peak:
        return peak, "throughput run"
    fill = node_res.get("large_topic", {}).get("fill")
    if fill:
        return fill, "large-topic fill (the 1 KiB acks=all throughput run failed)"
    return None, None


def phase_latency(run, node_res, nodes):
    a = run.args
    res = node_res.setdefault("latency", {"runs": []})
    peak, source = latency_peak(node_res)
    if not peak:
        raise RuntimeError("no 1 KiB acks=all peak measured, so no offered load to derive")
    res["peak_msgs_per_s"] = peak["msgs_per_s"]
    res["peak_source"] = source
    for frac in LATENCY_LOADS:
        with run.phase(f"latency at {frac:.0%} of peak"):
            need = a.latency_seconds + 1 + 15
            if run.budget.left() < need:
                raise TimeoutError("skipped: time budget exhausted")
            settle_disk()
            probe = disk_probe(run)
            with contextlib.closing(fresh_broker(run, node_res, nodes)) as b:
                with LoggedRun(b, node_res, f"latency at {frac:.0%}") as logged:
                    if frac == 0.5:
                        lone = workloads.lone_latency(b.bootstrap, "bench-lone", 1024, "all", a.lone_count,
                                                      run.budget.deadline(30))
                        res["lone"] = lone
                    rate = frac * peak["msgs_per_s"]
                    deadline = run.budget.deadline(a.latency_seconds * 3 + 60)
                    topic = f"bench-lat{int(frac * 100)}"
                    with procstat.Sampler(b.pids()) as sampler, procstat.CpuMeter(b.pids()) as cpu:
                        r = workloads.produce_latency(b.bootstrap, topic, 1024, "all", rate,
                                                      a.latency_seconds, deadline, linger_ms=a.linger_ms,
                                                      batch_size=a.batch_size, stall_s=STALL_S)
                r.update(cpu.as_dict())
                r["load_fraction"] = frac
                r["disk_adjacent"] = probe
                r["rss_peak_mib"] = sampler.peak_mib
                if nodes > 1:
                    r["leader_node"] = b.leader_of(topic, 0)
                    r["rss_peak_per_node_mib"] = sampler.per_pid_peak_mib
                    r["broker_log_events"] = logged.events
                res["runs"].append(r)
                log(f"    p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms p999 {r['p999_ms']:.2f} ms")
    res["runs"].sort(key=lambda r: r["load_fraction"])
    res["plot"] = report.plot_latency(res["runs"], HERE / ("latency.png" if nodes == 1 else f"latency-{nodes}nodes.png"),
                                      nodes=nodes)


def run_nodes(run, nodes):
    node_res = {"nodes": nodes}
    try:
        cluster.check_available(nodes)
    except cluster.NotAvailable as exc:
        node_res["status"] = str(exc)
        log(f"--- {exc}")
        return node_res
    node_res["status"] = "measured"
    with run.phase("produce throughput"):
        phase_produce(run, node_res, nodes)
    with run.phase("large topic"):
        phase_large_topic(run, node_res, nodes)
    with run.phase("latency"):
        phase_latency(run, node_res, nodes)
    summarize(node_res, nodes)
    return node_res


def summarize(node_res, nodes):
    """Medians and maxima over the runs. RSS figures are sums over the nodes; with several
    nodes the per-node figures are kept too (idle: median per node; peak: max per node)."""
    starts = node_res.get("startup_fresh_s", [])
    if median(starts) is not None:
        node_res["startup_fresh_median_s"] = median(starts)
    samples = node_res.get("idle_rss_samples", [])
    if median(x["after_settle_mib"] for x in samples) is not None:
        node_res["idle_rss_median_mib"] = median(x["after_settle_mib"] for x in samples)
    if nodes > 1 and samples:
        per_node = [median(x.get("per_node_after_settle_mib", [None] * nodes)[i] for x in samples)
                    for i in range(nodes)]
        node_res["idle_rss_per_node_median_mib"] = per_node
        if any(v is not None for v in per_node):
            node_res["idle_rss_max_node_median_mib"] = max(v for v in per_node if v is not None)
    runs = node_res.get("produce", [])
    if runs:
        node_res["produce_rss_peak_mib"] = max(r.get("rss_peak_mib") or 0 for r in runs)
        node_res["produce_vmhwm_max_mib"] = max(r.get("vmhwm_mib") or 0 for r in runs)
        if nodes > 1:
            node_res["produce_rss_peak_per_node_mib"] = [
                max((r.get("rss_peak_per_node_mib") or [0] * nodes)[i] for r in runs) for i in range(nodes)]


def fixed_estimate(args, nodes):
    """Seconds a node count needs without its large topic's fill and consume (an estimate)."""
    overhead = RUN_OVERHEAD_S.get(nodes, 11.0)
    return (len(PRODUCE_MATRIX) * (args.produce_seconds + overhead)
            + len(LATENCY_LOADS) * (args.latency_seconds + 1 + overhead) + LARGE_TOPIC_MIN_S)


def node_share(run, counts, index):
    """This node count's share of what is left of the budget: its fixed part plus an equal
    part of the rest (the large topics). A count that finishes early leaves its spare
    time to the next one; the end-of-run disk measurement is reserved."""
    a = run.args
    pending = counts[index:]
    end_reserve = a.disk_seconds * 2 + 10
    spare = run.budget.left() - end_reserve - sum(fixed_estimate(a, n) for n in pending)
    return fixed_estimate(a, counts[index]) + max(0.0, spare) / len(pending)


def _budget_exceeded(_sig, _frame):
    raise SystemExit("time budget exceeded")


def disk_probe(run):
    """A short disk measurement right before a run: the disk of a shared machine moves a lot."""
    import tempfile
    return machine.disk_fsync(tempfile.gettempdir(), seconds_1m=run.args.probe_seconds,
                              seconds_4k=run.args.probe_seconds / 2)


def settle_disk():
    """Write back dirty pages left by earlier runs so they do not slow the next one."""
    t0 = time.monotonic()
    os.sync()
    log(f"    sync before the run: {time.monotonic() - t0:.2f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,3",
                    help="comma-separated node counts to measure (default 1,3: a single node, then a "
                         "three-node cluster on this machine)")
    ap.add_argument("--consume-bytes", type=parse_size, default=parse_size("1GB"),
                    help="size of the large topic for the consume and recovery tests (default 1GB; "
                         "reduced automatically when it would not fit the time budget)")
    ap.add_argument("--budget", type=float, default=540.0, help="overall time budget in seconds (default 540)")
    ap.add_argument("--produce-seconds", type=float, default=10.0, help="duration of each produce run")
    ap.add_argument("--latency-seconds", type=float, default=10.0, help="measured duration of each latency run")
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1_000_000)
    ap.add_argument("--lone-count", type=int, default=300, help="messages for the one-at-a-time latency floor")
    ap.add_argument("--disk-seconds", type=float, default=3.0, help="1 MiB fdatasync test at start and end")
    ap.add_argument("--probe-seconds", type=float, default=1.0,
                    help="short disk probe before each produce and latency run")
    ap.add_argument("--loopback-seconds", type=float, default=2.0)
    ap.add_argument("--cluster-rtt-millis", type=int, default=50,
                    help="rtt_millis of the 3-node cluster (default 50, as the single node)")
    ap.add_argument("--cluster-heartbeat-rtt", type=int, default=1,
                    help="heartbeat_rtt of the 3-node cluster (default 1, as configs/broker-cluster-node*.json; "
                         "openraft bounds each AppendEntries by the heartbeat interval)")
    ap.add_argument("--cluster-election-rtt", type=int, default=4,
                    help="election_rtt of the 3-node cluster (default 4, as configs/broker-cluster-node*.json)")
    ap.add_argument("--quick", action="store_true",
                    help="development mode: short runs and a 100 MB topic (figures are rough)")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    if args.quick:
        args.produce_seconds, args.latency_seconds, args.disk_seconds, args.loopback_seconds = 2, 2, 1, 0.5
        args.lone_count, args.probe_seconds = 50, 0.5
        if args.consume_bytes == parse_size("1GB"):
            args.consume_bytes = parse_size("100MB")
    node_counts = [int(x) for x in args.nodes.split(",") if x.strip()]

    exit_on_sigterm()
    # Hard stop shortly after the budget: SystemExit unwinds every `with` (brokers stopped),
    # and the finally below still writes what was measured.
    signal.signal(signal.SIGALRM, _budget_exceeded)
    signal.alarm(int(args.budget + 45))

    run = Run(args)
    r = run.results
    r["started_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    r.update(git_info())
    r["machine"] = machine.machine_info()
    r["args"] = {k: v for k, v in vars(args).items()}
    status = 0
    try:
        r["binary"] = cluster.binary_info()
        phase_machine(run)
        r["clusters"] = {}
        measurable = [n for n in node_counts if n in cluster.SUPPORTED_NODES]
        for n in node_counts:
            if n in measurable:
                share = node_share(run, measurable, measurable.index(n))
                run.node_end = time.monotonic() + share
                log(f"=== {n} node(s): {share:.0f} s of the {run.budget.left():.0f} s left")
            r["clusters"][str(n)] = run_nodes(run, n)
            r["clusters"][str(n)]["budget_share_s"] = share if n in measurable else None
            run.node_end = run.budget.end
        phase_machine_again(run)
    except SystemExit as exc:
        r["errors"].append(f"aborted: {exc}")
        status = 1
    except Exception as exc:  # noqa: BLE001
        r["errors"].append(f"aborted: {type(exc).__name__}: {exc}")
        log(traceback.format_exc())
        status = 1
    finally:
        signal.alarm(0)
        r["runtime_s"] = run.budget.elapsed()
        finalize(r)
        Path(args.out).write_text(json.dumps(r, indent=2, default=str) + "\n")
        print(report.table(r, args.out))
    return status


if __name__ == "__main__":
    sys.exit(main())
