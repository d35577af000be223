#!/usr/bin/env python3
"""An OpenMessaging-Benchmark-style workload against rafka.

    RAFKA_BIN=/path/to/release/rafka python3 bench/omb.py [--nodes 1,3] [--seconds 45]

One topic of 100 partitions (replication factor = nodes), 1 KiB incompressible payloads,
4 producers and 4 consumers, each its own OS process (so Python's GIL does not cap the
rate), the consumers in one consumer group subscribed to the topic. Producers are
librdkafka clients as OMB's Kafka driver configures them: acks=all, idempotence on,
linger.ms=1, batch.size=128 KiB, keyless messages.

Two phases per node count, each with its own consumer group and a fresh set of processes:

1. max rate: every producer as fast as it can for --seconds (after --warmup). Produce
   msg/s and MB/s, consume MB/s, end-to-end latency p50/p99/p99.9/max.
2. fixed rate: 50% of the produce rate measured in phase 1, spread evenly over the
   producers. Publish latency p50/p99/p99.9 (librdkafka's produce() -> acknowledgement)
   and end-to-end latency.

End-to-end latency is the consumer's CLOCK_MONOTONIC when the message reaches the
application minus the producer's CLOCK_MONOTONIC at produce(), carried in the first 8
bytes of the payload (one machine, one clock, microsecond resolution).

Every figure is also given as a ratio to the machine limits measured at the start of the
run: throughput against the fsynced 1 MiB write bandwidth (divided by the node count:
every replica writes to the same disk) and the loopback TCP bandwidth, latencies as
multiples of one 4 KiB write + fdatasync (p50). Prints a table, writes
bench/results-omb.json.
"""

import argparse
import json
import multiprocessing
import queue
import signal
import struct
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cluster  # noqa: E402  (puts compat-tests on sys.path)
import machine  # noqa: E402
import procstat  # noqa: E402
from harness import _die_with_parent, exit_on_sigterm  # noqa: E402
from workloads import QUIET, create_topic, payloads, producer_config  # noqa: E402

from confluent_kafka import Consumer, KafkaException, Producer  # noqa: E402

TOPIC = "omb-test"
VALUE_BYTES = 1024
STAMP = struct.Struct("<q")  # producer's CLOCK_MONOTONIC in µs at the head of each payload
LINGER_MS = 1
BATCH_BYTES = 128 * 1024
# At max rate every producer keeps its queue full, so end-to-end latency there includes the
# time to drain it (reported as client_queue_drain_ms). The bound keeps that time short
# while leaving enough queued to fill a batch for every partition.
QUEUE_KBYTES = 4 * 1024
FIXED_RATE_FRACTION = 0.5
STARTUP_S = 60.0  # processes up, consumer group assigned every partition
FLUSH_S = 30.0  # producers' flush after the window
SETUP_S = 90.0  # cluster start and topic creation, per node count


# -- latency histogram ------------------------------------------------------------------
def bucket(us):
    """`us` rounded down to 8 significant bits (at most 0.4% low): a few thousand buckets per
    run instead of one sample per message, cheap to merge across processes."""
    if us < 256:
        return max(0, us)
    shift = us.bit_length() - 8
    return (us >> shift) << shift


QUANTILES = (("p50_ms", 0.5), ("p99_ms", 0.99), ("p99.9_ms", 0.999))


def percentiles_ms(hist):
    """{"p50_ms": ..., "max_ms": ..., "samples": n} of a Counter of µs buckets ({} if empty)."""
    total = sum(hist.values())
    if not total:
        return {}
    out = {"samples": total, "max_ms": max(hist) / 1e3}
    keys = sorted(hist)
    for name, q in QUANTILES:
        rank, seen = q * total, 0
        for k in keys:
            seen += hist[k]
            if seen >= rank:
                out[name] = k / 1e3
                break
    return out


def now_us():
    return time.monotonic_ns() // 1000


# -- worker processes -------------------------------------------------------------------
def worker(kind, idx, spec, go, start_at, out):
    """Process entry point: run one producer or consumer, report its figures on `out`."""
    _die_with_parent()  # a benchmark that dies must not leave clients hammering the broker
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        run = run_producer if kind == "producer" else run_consumer
        out.put(("result", kind, idx, run(idx, spec, go, start_at, out)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the phase
        out.put(("error", kind, idx, f"{kind} {idx}: {type(exc).__name__}: {exc}"))


def window(spec, start_at):
    """(measure_from, end) on CLOCK_MONOTONIC µs, the same for every process."""
    measure_from = start_at + spec["warmup"]
    return int(measure_from * 1e6), int((measure_from + spec["seconds"]) * 1e6)


def stamped_payloads():
    """Next payload: the send time in the first 8 bytes, then random (incompressible) bytes."""
    tails = payloads(VALUE_BYTES - STAMP.size)
    pack = STAMP.pack
    return lambda: pack(now_us()) + tails()


def run_producer(idx, spec, go, start_at, out):
    rate = spec["rate"]  # msg/s for this producer; None: as fast as it can
    failures = []
    latency = Counter()
    measure_from = end = None

    def on_delivery(err, msg):
        if err is not None:
            failures.append(str(err))
        elif rate is not None and now_us() - msg.latency() * 1e6 >= measure_from:
            latency[bucket(int(msg.latency() * 1e6))] += 1

    extra = {"enable.idempotence": True, "queue.buffering.max.kbytes": QUEUE_KBYTES, "on_delivery": on_delivery,
             # At max rate only failures call back: the Python callback would cap the rate.
             "delivery.report.only.error": rate is None}
    producer = Producer(producer_config(spec["bootstrap"], "all", LINGER_MS, BATCH_BYTES, **extra))
    producer.list_topics(spec["topic"], timeout=30)  # connected, metadata known
    out.put(("ready", "producer", idx, None))
    if not go.wait(STARTUP_S):
        raise TimeoutError("no start signal")
    begin = start_at.value
    measure_from, end = window(spec, begin)
    send = paced_loop if rate is not None else max_rate_loop
    sent = send(producer, spec["topic"], rate, int(begin * 1e6), measure_from, end)
    undelivered = producer.flush(FLUSH_S)
    return {"messages": sent, "bytes": sent * VALUE_BYTES, "failed": len(failures),
            "first_failure": failures[0] if failures else None, "undelivered": undelivered,
            "publish_latency_hist": dict(latency)}


def max_rate_loop(producer, topic, _rate, _begin, measure_from, end):
    """Produce until `end`; returns how many produce() calls were accepted in the window."""
    next_value = stamped_payloads()
    produce, poll = producer.produce, producer.poll
    counted = 0
    while True:
        t = now_us()
        if t >= end:
            return counted
        accepted = 0
        for _ in range(500):
            try:
                produce(topic, next_value())
                accepted += 1
            except BufferError:  # queue at QUEUE_KBYTES: wait for acknowledgements
                poll(0.001)
        poll(0)
        if t >= measure_from:
            counted += accepted


def paced_loop(producer, topic, rate, begin, measure_from, end):
    """Offer `rate` msg/s from `begin` (µs) to `end`, releasing due messages every 0.5 ms."""
    next_value = stamped_payloads()
    produce, poll = producer.produce, producer.poll
    sent = counted = 0
    while True:
        t = now_us()
        if t >= end:
            return counted
        due = int((t - begin) * rate / 1e6)
        while sent < due:
            try:
                produce(topic, next_value())
                counted += t >= measure_from
            except BufferError:
                pass  # below the peak this does not happen; the achieved rate shows it if it does
            sent += 1
        poll(0)
        time.sleep(0.0005)


def run_consumer(idx, spec, go, start_at, out):
    def on_assign(_consumer, partitions):
        out.put(("assigned", "consumer", idx, len(partitions)))

    def on_revoke(_consumer, _partitions):
        out.put(("assigned", "consumer", idx, 0))

    consumer = Consumer({"bootstrap.servers": spec["bootstrap"], "group.id": spec["group"],
                         "auto.offset.reset": "latest", "enable.auto.commit": True,
                         "fetch.queue.backoff.ms": 10, **QUIET})  # see workloads.consume_all
    try:
        consumer.subscribe([spec["topic"]], on_assign=on_assign, on_revoke=on_revoke)
        started = time.monotonic()
        while not go.is_set():  # serve the group protocol until every process is ready
            consumer.consume(num_messages=100, timeout=0.1)
            if time.monotonic() - started > STARTUP_S:
                raise TimeoutError("no start signal")
        return consume_window(consumer, *window(spec, start_at.value))
    finally:
        consumer.close()


def consume_window(consumer, measure_from, end):
    """Messages and bytes that reached the application in the window, and their end-to-end
    latency (one receive time per batch: that is when the application has them)."""
    latency = Counter()
    messages = nbytes = 0
    unpack = STAMP.unpack_from
    while True:
        t = now_us()
        if t >= end:
            break
        batch = consumer.consume(num_messages=1000, timeout=min(0.1, (end - t) / 1e6))
        received = now_us()
        if received < measure_from or received >= end:
            continue
        for m in batch:
            if m.error() is not None:
                raise KafkaException(m.error())
            value = m.value()
            nbytes += len(value)
            latency[bucket(received - unpack(value)[0])] += 1
        messages += len(batch)
    return {"messages": messages, "bytes": nbytes, "e2e_latency_hist": dict(latency)}


# -- one phase: processes, start signal, results ----------------------------------------
class Phase:
    """The producer and consumer processes of one phase; a context manager that ends them all."""

    def __init__(self, spec, producers, consumers, rate):
        ctx = multiprocessing.get_context("spawn")  # no librdkafka threads inherited through fork
        self.out = ctx.Queue()
        self.go = ctx.Event()
        self.start_at = ctx.Value("d", 0.0)
        per_producer = None if rate is None else rate / producers
        self.procs = [ctx.Process(target=worker, daemon=True, name=f"omb-{kind}-{i}",
                                  args=(kind, i, {**spec, "rate": per_producer}, self.go, self.start_at, self.out))
                      for kind, n in (("consumer", consumers), ("producer", producers)) for i in range(n)]
        self.producers, self.consumers = producers, consumers

    def __enter__(self):
        for p in self.procs:
            p.start()
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)

    def next_event(self, deadline):
        try:
            event = self.out.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            dead = [f"{p.name} exit {p.exitcode}" for p in self.procs if p.exitcode not in (None, 0)]
            raise TimeoutError(f"workers did not report in time ({', '.join(dead) or 'none exited'})") from None
        if event[0] == "error":
            raise RuntimeError(event[3])
        return event

    def wait_ready(self, partitions, deadline):
        """Until every producer is connected and the consumers together own every partition."""
        ready, assigned = set(), {}
        # Every consumer owning some partitions means the group's last rebalance is done.
        while len(ready) < self.producers or sum(assigned.values()) != partitions \
                or len([n for n in assigned.values() if n]) < min(self.consumers, partitions):
            what, _kind, idx, value = self.next_event(deadline)
            if what == "ready":
                ready.add(idx)
            elif what == "assigned":
                assigned[idx] = value
        return assigned

    def start(self):
        self.start_at.value = time.monotonic() + 0.2
        self.go.set()
        return self.start_at.value

    def results(self, deadline):
        out = {"producer": [], "consumer": []}
        while len(out["producer"]) + len(out["consumer"]) < len(self.procs):
            event = self.next_event(deadline)
            if event[0] == "result":
                out[event[1]].append(event[3])
        return out


def broker_cpu_in_window(pids, measure_from, end):
    """Broker CPU (% of one core, per process) between two CLOCK_MONOTONIC instants."""
    time.sleep(max(0.0, measure_from - time.monotonic()))
    before = [procstat.cpu_seconds(p) or 0.0 for p in pids]
    time.sleep(max(0.0, end - time.monotonic()))
    return [100 * ((procstat.cpu_seconds(p) or 0.0) - b) / (end - measure_from) for p, b in zip(pids, before)]


def run_phase(brokers, args, rate):
    spec = {"bootstrap": brokers.bootstrap, "topic": TOPIC, "group": f"omb-{uuid.uuid4().hex[:8]}",
            "warmup": args.warmup, "seconds": args.seconds}
    with Phase(spec, args.producers, args.consumers, rate) as phase:
        assigned = phase.wait_ready(args.partitions, time.monotonic() + STARTUP_S)
        begin = phase.start()
        cpu = broker_cpu_in_window(brokers.pids(), begin + args.warmup, begin + args.warmup + args.seconds)
        reports = phase.results(time.monotonic() + FLUSH_S + 15)
    return summarize_phase(reports, args.seconds, rate, assigned, cpu)


def merged(hists):
    return sum((Counter(h) for h in hists), Counter())


def summarize_phase(reports, seconds, rate, assigned, cpu):
    prod, cons = reports["producer"], reports["consumer"]
    sent = sum(r["messages"] for r in prod)
    consumed = sum(r["bytes"] for r in cons)
    out = {"offered_msgs_per_s": rate, "produce_msgs_per_s": sent / seconds,
           "produce_MBps": sent * VALUE_BYTES / seconds / 1e6,
           "consume_msgs_per_s": sum(r["messages"] for r in cons) / seconds, "consume_MBps": consumed / seconds / 1e6,
           "failed": sum(r["failed"] for r in prod), "undelivered": sum(r["undelivered"] for r in prod),
           "first_failure": next((r["first_failure"] for r in prod if r["first_failure"]), None),
           "partitions_per_consumer": sorted(assigned.values()), "broker_cpu_pct_per_node": cpu,
           "e2e_latency": percentiles_ms(merged(r["e2e_latency_hist"] for r in cons))}
    if rate is not None:
        out["publish_latency"] = percentiles_ms(merged(r["publish_latency_hist"] for r in prod))
    elif sent:
        out["client_queue_drain_ms"] = 1e3 * QUEUE_KBYTES * 1024 * len(prod) / (sent * VALUE_BYTES / seconds)
    return out


# -- machine limits and ratios ----------------------------------------------------------
def machine_limits(args):
    tmp = tempfile.gettempdir()  # where the brokers' temporary data dirs go
    disk = machine.disk_fsync(tmp, seconds_1m=args.disk_seconds, seconds_4k=args.disk_seconds * 2 / 3)
    return {"disk_fsync_1m_MBps": disk["seq_1m_fdatasync_MBps"], "fdatasync_4k_p50_ms": disk["w4k_fdatasync_p50_ms"],
            "loopback_MBps": machine.loopback_tcp(seconds=args.loopback_seconds)["MBps"], "disk": disk,
            "data_fs": machine.filesystem_of(tmp), "machine": machine.machine_info()}


def add_ratios(res, limits, nodes):
    """Each throughput as a share of the disk (divided by the replicas that share it) and of
    loopback; each latency as a multiple of one 4 KiB fdatasync."""
    disk_share = limits["disk_fsync_1m_MBps"] / nodes
    res["produce_share_of_disk"] = res["produce_MBps"] / disk_share
    res["produce_share_of_loopback"] = res["produce_MBps"] / limits["loopback_MBps"]
    res["consume_share_of_loopback"] = res["consume_MBps"] / limits["loopback_MBps"]
    for key in ("e2e_latency", "publish_latency"):
        lat = res.get(key)
        if lat:
            lat["in_fdatasyncs"] = {k: v / limits["fdatasync_4k_p50_ms"] for k, v in lat.items() if k.endswith("_ms")}


# -- per node count -----------------------------------------------------------------------
def measure_nodes(nodes, args, res):
    """Both phases on a fresh deployment of `nodes` brokers, into `res` as they finish."""
    kwargs = {"raft_timing": cluster.shipped_raft_timing()} if nodes > 1 else {}
    with cluster.start_cluster(nodes, **kwargs) as brokers:
        create_topic(brokers.bootstrap, TOPIC, args.partitions, time.monotonic() + SETUP_S, replication_factor=nodes)
        log(f"{nodes} node(s): max rate for {args.seconds:g} s")
        res["max_rate"] = run_phase(brokers, args, None)
        rate = FIXED_RATE_FRACTION * res["max_rate"]["produce_msgs_per_s"]
        log(f"{nodes} node(s): fixed rate {rate:,.0f} msg/s for {args.seconds:g} s")
        res["fixed_rate"] = run_phase(brokers, args, rate)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# -- table --------------------------------------------------------------------------------
def fmt_latency(lat):
    if not lat:
        return "no samples"
    ratio = lat.get("in_fdatasyncs", {})
    return "  ".join(f"{name} {lat[key]:.1f} ms ({ratio[key]:.1f}x)"
                     for name, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("p99.9", "p99.9_ms"),
                                       ("max", "max_ms")) if key in lat)


def phase_lines(name, r, nodes):
    offered = f", offered {r['offered_msgs_per_s']:,.0f} msg/s" if r["offered_msgs_per_s"] else ""
    share = "disk" if nodes == 1 else f"disk/{nodes}"
    lines = [f"  {name}{offered}",
             f"    produce   {r['produce_msgs_per_s']:>9,.0f} msg/s {r['produce_MBps']:7.1f} MB/s "
             f"({r['produce_share_of_disk']:.0%} of {share}, {r['produce_share_of_loopback']:.1%} of loopback)",
             f"    consume   {r['consume_msgs_per_s']:>9,.0f} msg/s {r['consume_MBps']:7.1f} MB/s "
             f"({r['consume_share_of_loopback']:.1%} of loopback)",
             f"    end-to-end  {fmt_latency(r['e2e_latency'])}"]
    if "publish_latency" in r:
        lines.append(f"    publish     {fmt_latency(r['publish_latency'])}")
    if "client_queue_drain_ms" in r:
        lines.append(f"    (includes draining a full client queue: {r['client_queue_drain_ms']:.0f} ms at this rate)")
    cpu = " ".join(f"{c:.0f}%" for c in r["broker_cpu_pct_per_node"])
    lines.append(f"    broker CPU (% of a core, per node) {cpu}; partitions per consumer "
                 f"{r['partitions_per_consumer']}")
    if r["failed"] or r["undelivered"]:
        lines.append(f"    FAILED deliveries {r['failed']} (first: {r['first_failure']}), "
                     f"undelivered after flush {r['undelivered']}")
    return lines


def table(results):
    lim = results.get("machine_limits", {})
    a = results["args"]
    lines = [f"OMB-style workload: 1 topic, {a['partitions']} partitions, {VALUE_BYTES} B values, "
             f"{a['producers']} producers, {a['consumers']} consumers; acks=all, idempotent, "
             f"linger.ms={LINGER_MS}, batch.size={BATCH_BYTES // 1024} KiB, at most {QUEUE_KBYTES // 1024} MiB queued "
             f"per producer; {a['seconds']:g} s per phase"]
    if lim:
        lines.append(f"machine: fsynced 1 MiB writes {lim['disk_fsync_1m_MBps']:.0f} MB/s, 4 KiB fdatasync p50 "
                     f"{lim['fdatasync_4k_p50_ms']:.2f} ms, loopback {lim['loopback_MBps']:.0f} MB/s, load average "
                     f"{' '.join(f'{x:.1f}' for x in lim['machine'].get('loadavg_at_start', ()))}")
        lines.append("latencies in ms and (in parentheses) as multiples of the 4 KiB fdatasync p50")
    for res in results["runs"]:
        n = res["nodes"]
        lines.append(f"{n} node{'s' if n > 1 else ''} (replication factor {n})")
        for name, key in (("max rate", "max_rate"), ("fixed rate, 50% of max", "fixed_rate")):
            if key in res:
                lines += phase_lines(name, res[key], n)
    lines += [f"ERROR {e}" for e in results["errors"]]
    return "\n".join(lines)


def _budget_exceeded(_sig, _frame):
    raise SystemExit("time budget exceeded")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,3", help="node counts to measure, comma-separated (default 1,3)")
    ap.add_argument("--seconds", type=float, default=45.0, help="measured seconds per phase (default 45)")
    ap.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before each phase (default 5)")
    ap.add_argument("--partitions", type=int, default=100, help="partitions of the topic (default 100)")
    ap.add_argument("--producers", type=int, default=4, help="producer processes (default 4)")
    ap.add_argument("--consumers", type=int, default=4, help="consumer processes, one group (default 4)")
    ap.add_argument("--disk-seconds", type=float, default=3.0, help="1 MiB fdatasync test at the start")
    ap.add_argument("--loopback-seconds", type=float, default=2.0)
    ap.add_argument("--budget", type=float, default=540.0,
                    help="hard limit on the whole run in seconds (default 540): processes are stopped and "
                         "what was measured is written")
    ap.add_argument("--out", default=str(HERE / "results-omb.json"))
    return ap.parse_args()


def main():
    args = parse_args()
    exit_on_sigterm()  # SystemExit unwinds every `with`: clients and brokers are stopped
    signal.signal(signal.SIGALRM, _budget_exceeded)
    signal.alarm(int(args.budget))
    results = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args), "runs": [], "errors": []}
    try:
        results["binary"] = cluster.binary_info()
        log("machine limits")
        results["machine_limits"] = machine_limits(args)
        for nodes in (int(n) for n in args.nodes.split(",")):
            res = {"nodes": nodes}
            results["runs"].append(res)
            try:
                measure_nodes(nodes, args, res)
            except Exception as exc:  # noqa: BLE001 - recorded; the next node count still runs
                results["errors"].append(f"{nodes} node(s): {type(exc).__name__}: {str(exc).splitlines()[0]}")
    except SystemExit as exc:
        results["errors"].append(f"aborted: {exc}")
    finally:
        signal.alarm(0)
        for res in results["runs"]:
            for key in ("max_rate", "fixed_rate"):
                if key in res and "machine_limits" in results:
                    add_ratios(res[key], results["machine_limits"], res["nodes"])
        Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(table(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
