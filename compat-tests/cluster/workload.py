"""Steady acks=all produce load with a timeline of acknowledgements, and its read-back verification.

Values come from durability/checker.py (`p<producer>-<seq>`), so its `read_back` and `analyse`
report lost, duplicated and reordered records; `offset_mismatches` adds that each acknowledged
record sits at the very offset its acknowledgement reported.
"""

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "durability"))
import checker  # noqa: E402

from confluent_kafka import Producer  # noqa: E402

FLUSH_TIMEOUT = 150  # seconds; longer than message.timeout.ms so every message gets its verdict


class Workload:
    """`producers` threads, each producing `rate` values/s round-robin over the partitions.

    Value seq i of producer k goes to partition i % partitions. Every acknowledgement is kept
    with its arrival time, so gaps in service can be measured afterwards.
    """

    def __init__(self, bootstrap, topic, partitions, producers=2, rate=150, first_producer=0,
                 client_id="rafka-cluster-test", idempotent=True, message_timeout_ms=120_000, conf=None):
        self.topic = topic
        self.partitions = partitions
        self.rate = rate
        self.indexes = range(first_producer, first_producer + producers)
        self.conf = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                     "enable.idempotence": idempotent, "message.timeout.ms": message_timeout_ms,
                     "client.id": client_id, "log_level": 0, **(conf or {})}
        self.acked = {}  # value -> (partition, offset)
        self.ack_times = []  # (monotonic time, partition), in arrival order per thread
        self.failed = []  # (value, error text)
        self.sent = 0
        self.errors = []  # exceptions that ended a producer thread
        self._stop = threading.Event()
        self._flush_timeout = FLUSH_TIMEOUT
        self._threads = []
        self._lock = threading.Lock()

    # -- running -------------------------------------------------------------------
    def start(self):
        for index in self.indexes:
            thread = threading.Thread(target=self._produce, args=(index,), name=f"producer {index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, flush_timeout=FLUSH_TIMEOUT):
        """Stop producing, wait for every queued message's delivery report (up to `flush_timeout`)."""
        self._flush_timeout = flush_timeout
        self._stop.set()
        for thread in self._threads:
            thread.join(flush_timeout + 10)
        self._threads = []

    def close(self):
        """stop() for cleanup after a failure: give up on queued messages quickly."""
        if self._threads:
            self.stop(flush_timeout=5)

    def _produce(self, index):
        try:
            self._produce_until_stopped(index)
        except Exception as exc:  # noqa: BLE001 - reported by the check through self.errors
            self.errors.append(f"producer {index}: {exc!r}")

    def _produce_until_stopped(self, index):
        producer = Producer(self.conf)
        started, seq = time.monotonic(), 0
        while not self._stop.is_set():
            if seq < self.rate * (time.monotonic() - started):
                try:
                    producer.produce(self.topic, checker.value_of(index, seq), partition=seq % self.partitions,
                                     on_delivery=self._on_delivery)
                    seq += 1
                except BufferError:
                    pass  # local queue full while the cluster is unavailable: try again shortly
            producer.poll(0.001)
        remaining = producer.flush(self._flush_timeout)
        with self._lock:
            self.sent += seq
            self.failed.extend((b"unflushed", "still queued at stop") for _ in range(remaining))

    def _on_delivery(self, err, msg):
        if err is None:
            self.acked[msg.value()] = (msg.partition(), msg.offset())
            self.ack_times.append((time.monotonic(), msg.partition()))
        else:
            self.failed.append((msg.value(), str(err)))

    # -- observing -------------------------------------------------------------------
    def acks_since(self, since, partition):
        return sum(1 for t, p in list(self.ack_times) if p == partition and t >= since)

    def wait_acks(self, count, since=0.0, partitions=None, timeout=60):
        """Until every partition in `partitions` (default all) has `count` acks at or after `since`."""
        partitions = list(range(self.partitions)) if partitions is None else list(partitions)
        deadline = time.monotonic() + timeout
        while True:
            if self.errors:
                raise RuntimeError(f"producer thread failed: {self.errors}")
            counts = {p: self.acks_since(since, p) for p in partitions}
            if all(n >= count for n in counts.values()):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"after {timeout:.0f}s only {counts} acks per partition (wanted {count}); "
                                   f"{len(self.failed)} failed deliveries, first: {self.failed[:3]}")
            time.sleep(0.05)

    def max_ack_gap(self, partitions, since, until=None):
        """Longest time between consecutive acks of any one of `partitions` within [since, until]."""
        until = time.monotonic() if until is None else until
        longest = 0.0
        for partition in partitions:
            times = sorted(t for t, p in list(self.ack_times) if p == partition and since <= t <= until)
            if len(times) < 2:
                raise AssertionError(f"fewer than 2 acks of partition {partition} to measure a gap")
            longest = max(longest, max(b - a for a, b in zip(times, times[1:])))
        return longest

    def expect_no_failures(self):
        if self.errors:
            raise AssertionError(f"producer thread failed: {self.errors}")
        if self.failed:
            raise AssertionError(f"{len(self.failed)} deliveries failed (acks=all must retry until acknowledged); "
                                 f"first: {self.failed[:3]}")


def offset_mismatches(records, acked):
    """Acknowledged values read back at another partition or offset than the ack reported."""
    wrong = []
    for partition, entries in records.items():
        for offset, value in entries:
            expected = acked.get(value)
            if expected is not None and expected != (partition, offset):
                wrong.append(f"{value.decode()} acked at {expected}, read at {(partition, offset)}")
    return wrong


def stray_records(records, producers):
    """Values read back that were written by any of `producers`."""
    return [v.decode() for entries in records.values() for _o, v in entries
            if checker.parse_value(v)[0] in producers]


def verify_read_back(bootstrap, work, unexpected_producers=()):
    """Read the whole topic back: every acked record once, in producer order, at its acked offset.

    Values of `unexpected_producers` (whose deliveries all failed) must not be there at all.
    Returns the checker's Report.
    """
    records = checker.read_back(bootstrap, work.topic, work.partitions)
    report = checker.analyse(records, work.acked, work.partitions)
    report.produced, report.failed = work.sent, len(work.failed)
    report.print(work.partitions)
    if report.acked == 0:
        raise AssertionError("no record was acknowledged")
    if report.problems():
        raise AssertionError(f"{report.problems()} acknowledged records lost, duplicated or reordered")
    wrong = offset_mismatches(records, work.acked)
    if wrong:
        raise AssertionError(f"{len(wrong)} records not at their acknowledged offset, first: {wrong[:3]}")
    strays = stray_records(records, unexpected_producers)
    if strays:
        raise AssertionError(f"{len(strays)} records whose delivery failed are in the log, first: {strays[:3]}")
    return report
