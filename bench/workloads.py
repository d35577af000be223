"""Client-side workloads with one librdkafka (confluent-kafka) client each.

Every function takes an absolute `deadline` (time.monotonic()) and raises
TimeoutError rather than waiting past it. The produce functions also take
`stall_s`: with no delivery progress for that long they raise `Stalled` (a
TimeoutError) at once instead of waiting for the deadline, so a broker that
stops acknowledging costs seconds of the time budget, not minutes.
"""

import itertools
import json
import os
import statistics
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

QUIET = {"log_level": 0}
PAYLOAD_POOL = 4096  # distinct random payloads, cycled: the data does not compress (RocksDB compresses SSTs)


def payloads(size):
    """A function returning the next of PAYLOAD_POOL distinct random payloads of `size` bytes."""
    return itertools.cycle([os.urandom(size) for _ in range(PAYLOAD_POOL)]).__next__


def _left(deadline):
    return max(0.0, deadline - time.monotonic())


class Stalled(TimeoutError):
    """No delivery progress for stall_s seconds."""


def _flush(producer, deadline, stall_s, what):
    """producer.flush() up to `deadline`, giving up early after `stall_s` s without progress.

    Returns the number of messages still undelivered (0 when all were acknowledged).
    """
    best = None
    since = time.monotonic()
    while True:
        remaining = producer.flush(min(1.0, _left(deadline)))
        now = time.monotonic()
        if not remaining or now >= deadline:
            return remaining
        if best is None or remaining < best:
            best, since = remaining, now
        elif stall_s and now - since >= stall_s:
            raise Stalled(f"{what}: no delivery for {now - since:.0f} s, {remaining} messages unacknowledged "
                          f"(stalled)")


def producer_config(bootstrap, acks, linger_ms, batch_size, **extra):
    conf = {
        "bootstrap.servers": bootstrap, "acks": str(acks), "enable.idempotence": False,
        "linger.ms": linger_ms, "batch.size": batch_size, "compression.type": "none",
        "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 65_536,
        "message.timeout.ms": 120_000, **QUIET,
    }
    conf.update(extra)
    return conf


def create_topic(bootstrap, topic, partitions=1, deadline=None, replication_factor=1):
    deadline = deadline or time.monotonic() + 30
    admin = AdminClient({"bootstrap.servers": bootstrap, **QUIET})
    futures = admin.create_topics([NewTopic(topic, partitions, replication_factor)],
                                  operation_timeout=_left(deadline))
    futures[topic].result(timeout=_left(deadline))
    # Wait until every partition has a leader as seen by a client.
    while True:
        md = admin.list_topics(topic, timeout=max(0.1, _left(deadline)))
        t = md.topics.get(topic)
        if t is not None and t.error is None and all(p.leader >= 0 for p in t.partitions.values()):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topic {topic} has no leader")
        time.sleep(0.02)


class ClientStats:
    """librdkafka statistics (stats_cb), reduced to what explains a produce figure.

    Windows of `interval_ms`; histograms (rtt = request round trip as the
    client sees it, int_latency = time a message waits in the client queue,
    which includes linger.ms) are per window, counters are cumulative.
    """

    def __init__(self, topic, interval_ms=500):
        self.topic = topic
        self.interval_ms = interval_ms
        self.snaps = []
        self.window_from = None  # ts (µs) before which windows are ignored
        self.base_reqs = 0

    def conf(self):
        return {"statistics.interval.ms": self.interval_ms, "stats_cb": self._cb}

    def _cb(self, raw):
        s = json.loads(raw)
        brokers = [b for b in s.get("brokers", {}).values() if b.get("nodeid", -1) >= 0]
        t = s.get("topics", {}).get(self.topic, {})
        self.snaps.append({
            "ts": s["ts"],
            "produce_reqs": sum(b.get("req", {}).get("Produce", 0) for b in brokers),
            "rtt": [b["rtt"] for b in brokers if b["rtt"]["cnt"]],
            "int_latency": [b["int_latency"] for b in brokers if b["int_latency"]["cnt"]],
            "batchcnt": [t["batchcnt"]] if t.get("batchcnt", {}).get("cnt") else [],
            "batchsize": [t["batchsize"]] if t.get("batchsize", {}).get("cnt") else [],
        })

    def mark(self):
        """Ignore windows before now (warm-up)."""
        if self.snaps:
            self.window_from = self.snaps[-1]["ts"]
            self.base_reqs = self.snaps[-1]["produce_reqs"]

    def summary(self):
        snaps = [x for x in self.snaps if self.window_from is None or x["ts"] > self.window_from]
        if not snaps:
            return {}
        out = {"produce_requests": snaps[-1]["produce_reqs"] - self.base_reqs}

        def values(key, field, scale):
            return [h[field] * scale for x in snaps for h in x[key]]

        def med(key, field, scale):
            vals = values(key, field, scale)
            return statistics.median(vals) if vals else None

        def worst(key, field, scale):
            vals = values(key, field, scale)
            return max(vals) if vals else None

        out["rtt_p50_ms"] = med("rtt", "p50", 1e-3)
        out["rtt_p99_ms"] = worst("rtt", "p99", 1e-3)
        out["client_queue_p50_ms"] = med("int_latency", "p50", 1e-3)
        out["batch_msgs_avg"] = med("batchcnt", "avg", 1)
        out["batch_bytes_avg"] = med("batchsize", "avg", 1)
        return {k: v for k, v in out.items() if v is not None}


class _Failures:
    def __init__(self):
        self.count = 0
        self.first = None

    def __call__(self, err, _msg):
        if err is not None:
            self.count += 1
            self.first = self.first or err


def _warm_up(producer, topic, payload, failures, deadline, stall_s=None):
    producer.produce(topic, payload)
    if _flush(producer, deadline, stall_s, f"warm-up message to {topic}") or failures.count:
        raise RuntimeError(f"warm-up message to {topic} failed: {failures.first}")


def produce_throughput(bootstrap, topic, size, acks, seconds, deadline, linger_ms=5, batch_size=1_000_000,
                       count=None, stall_s=None):
    """Produce `size`-byte messages as fast as one producer can, for `seconds` (or `count` messages).

    Only failed deliveries produce callbacks (delivery.report.only.error), so the
    Python side does as little per-message work as possible. A warm-up message
    creates the topic and opens the connection first (it is counted when `count`
    is given, so the topic then holds exactly `count` messages).
    Returns messages, bytes, seconds (first produce -> last ack), msgs/s, MB/s.
    """
    failures = _Failures()
    stats = ClientStats(topic)
    producer = Producer(producer_config(bootstrap, acks, linger_ms, batch_size, **stats.conf(),
                                        **{"delivery.report.only.error": True, "on_delivery": failures}))
    payload = payloads(size)
    t_warm = time.perf_counter()
    _warm_up(producer, topic, payload(), failures, deadline)
    warm_up_s = time.perf_counter() - t_warm
    stats.mark()
    produced = 0
    stall_mark = (0, time.monotonic())  # (produced, when): checked only when the queue stays full
    target = None if count is None else count - 1
    start = time.perf_counter()
    stop_at = start + seconds if seconds else None
    poll = producer.poll
    produce = producer.produce
    while True:
        if target is not None and produced >= target:
            break
        if stop_at is not None and time.perf_counter() >= stop_at:
            break
        burst = 2000 if target is None else min(2000, target - produced)
        for _ in range(burst):
            value = payload()
            try:
                produce(topic, value)
            except BufferError:  # local queue full: let librdkafka drain, retry once
                poll(0.002)
                try:
                    produce(topic, value)
                except BufferError:
                    now = time.monotonic()
                    if produced != stall_mark[0]:
                        stall_mark = (produced, now)
                    elif stall_s and now - stall_mark[1] >= stall_s:
                        raise Stalled(f"produce to {topic}: local queue full and no delivery for "
                                      f"{now - stall_mark[1]:.0f} s after {produced} messages (stalled)") from None
                    continue
            produced += 1
        poll(0)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"produce to {topic}: deadline passed after {produced} messages")
    remaining = _flush(producer, deadline, stall_s, f"produce to {topic}")
    elapsed = time.perf_counter() - start
    if remaining:
        raise TimeoutError(f"produce to {topic}: {remaining} messages undelivered at the deadline")
    if failures.count:
        raise RuntimeError(f"produce to {topic}: {failures.count} failed, first: {failures.first}")
    _drain_stats(producer, stats, deadline)
    return {"topic": topic, "size": size, "acks": str(acks), "linger_ms": linger_ms, "batch_size": batch_size,
            "messages": produced, "bytes": produced * size, "seconds": elapsed,
            "msgs_per_s": produced / elapsed, "MBps": produced * size / elapsed / 1e6,
            "warm_up_s": warm_up_s, "client_stats": _with_rate(stats.summary(), elapsed)}


def _with_rate(summary, seconds):
    if "produce_requests" in summary and seconds > 0:
        summary["produce_requests_per_s"] = summary["produce_requests"] / seconds
    return summary


def _drain_stats(producer, stats, deadline):
    """Serve callbacks until one more statistics window has been emitted (bounded)."""
    n = len(stats.snaps)
    until = min(deadline, time.monotonic() + 2 * stats.interval_ms / 1000)
    while len(stats.snaps) == n and time.monotonic() < until:
        producer.poll(0.05)


def consume_all(bootstrap, topic, expected, deadline, partition=0, **extra):
    """Read `expected` messages from the start of `topic` with an assign() consumer."""
    conf = {"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}", "enable.auto.commit": False,
            "enable.auto.offset.store": False, "auto.offset.reset": "earliest",
            # The broker outpaces the Python loop; when the local queue (queued.max.messages.kbytes)
            # fills, librdkafka pauses fetching for fetch.queue.backoff.ms (default 1000 ms), which
            # showed up as 1 s stalls. Resume fetching soon after the queue drains instead.
            "fetch.queue.backoff.ms": 10, **QUIET}
    conf.update(extra)
    consumer = Consumer(conf)
    try:
        messages = 0
        nbytes = 0
        first_at = None
        start = time.perf_counter()
        consumer.assign([TopicPartition(topic, partition, 0)])
        while messages < expected:
            # consume() waits for num_messages or the timeout: never ask for more than is left.
            want = min(10_000, expected - messages)
            batch = consumer.consume(num_messages=want, timeout=min(1.0, max(0.01, _left(deadline))))
            for m in batch:
                err = m.error()
                if err is not None:
                    if err.code() == -191:  # _PARTITION_EOF (not enabled by default)
                        continue
                    raise KafkaException(err)
                nbytes += len(m.value())
            messages += len(batch)
            if batch and first_at is None:
                first_at = time.perf_counter() - start
            if time.monotonic() >= deadline:
                raise TimeoutError(f"consume {topic}: deadline passed after {messages} of {expected} messages")
        elapsed = time.perf_counter() - start
    finally:
        consumer.close()
    return {"topic": topic, "messages": messages, "bytes": nbytes, "seconds": elapsed,
            "first_message_s": first_at, "msgs_per_s": messages / elapsed, "MBps": nbytes / elapsed / 1e6}


def produce_latency(bootstrap, topic, size, acks, rate, seconds, deadline, warmup_s=1.0, linger_ms=5,
                    batch_size=1_000_000, stall_s=None):
    """Offer `rate` msgs/s for warmup_s + seconds; per-message latency from librdkafka.

    Latency is Message.latency(): librdkafka's time from produce() to the
    delivery report (broker ack), so it does not include delays in serving
    callbacks from Python. Warm-up messages carry the key b"w" and are not counted.
    The pacing loop releases due messages about every 0.5 ms.
    """
    lat = []
    failures = _Failures()

    def on_delivery(err, msg):
        if err is not None:
            failures(err, msg)
        elif msg.key() is None:
            lat.append(msg.latency())

    stats = ClientStats(topic)
    producer = Producer(producer_config(bootstrap, acks, linger_ms, batch_size, on_delivery=on_delivery,
                                        **stats.conf()))
    payload = payloads(size)
    _warm_up(producer, topic, payload(), failures, deadline)
    lat.clear()
    marked = False
    produce = producer.produce
    start = time.perf_counter()
    measure_from = start + warmup_s
    end = measure_from + seconds
    sent = 0
    measured = 0
    dropped = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        due = int((now - start) * rate)
        key = b"w" if now < measure_from else None
        if key is None and not marked:
            producer.poll(0)
            stats.mark()
            marked = True
        while sent < due:
            try:
                produce(topic, payload(), key=key)
                if key is None:
                    measured += 1
            except BufferError:
                dropped += 1  # should not happen below the peak; reported
            sent += 1
        producer.poll(0)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"latency run on {topic}: deadline passed")
        time.sleep(0.0005)
    remaining = _flush(producer, deadline, stall_s, f"latency run on {topic}")
    _drain_stats(producer, stats, deadline)
    if remaining:
        raise TimeoutError(f"latency run on {topic}: {remaining} messages undelivered at the deadline")
    if failures.count:
        raise RuntimeError(f"latency run on {topic}: {failures.count} failed, first: {failures.first}")
    lat = sorted(x for x in lat if x is not None)
    if not lat:
        raise RuntimeError("no latency samples")

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3

    return {"topic": topic, "size": size, "acks": str(acks), "linger_ms": linger_ms,
            "offered_msgs_per_s": rate, "achieved_msgs_per_s": measured / seconds,
            "samples": len(lat), "dropped_queue_full": dropped,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "max_ms": lat[-1] * 1e3, "mean_ms": sum(lat) / len(lat) * 1e3,
            "client_stats": _with_rate(stats.summary(), seconds)}


def lone_latency(bootstrap, topic, size, acks, count, deadline):
    """Latency of single messages sent one at a time (each waits for the previous ack).

    The floor of a produce round trip: one request, one Raft append with fsync.
    """
    lat = []
    failures = _Failures()

    def on_delivery(err, msg):
        if err is not None:
            failures(err, msg)
        else:
            lat.append(msg.latency())

    producer = Producer(producer_config(bootstrap, acks, 0, 1_000_000, on_delivery=on_delivery))
    payload = payloads(size)
    _warm_up(producer, topic, payload(), failures, deadline)
    lat.clear()
    for _ in range(count):
        producer.produce(topic, payload())
        if producer.flush(_left(deadline)):
            raise TimeoutError(f"lone-message latency on {topic}: deadline passed")
    if failures.count:
        raise RuntimeError(f"lone-message latency on {topic}: {failures.count} failed, first: {failures.first}")
    lat = sorted(x for x in lat if x is not None)
    return {"topic": topic, "size": size, "acks": str(acks), "samples": len(lat),
            "p50_ms": lat[len(lat) // 2] * 1e3, "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
            "max_ms": lat[-1] * 1e3}
