"""Client-independent helpers shared by the consumer-group suites (confluent/test_groups.py,
kafka-python/test_groups.py).

A group member is any object with `name`, `commit_errors`, `stopping`/`done` (threading.Event),
`assigned()` (set of partitions) and `snapshot()` (list of (seq, partition, offset, key, value)
records, seq drawn from SEQ); MemberView supplies the last two plus close() from the fields
`lock`, `assignment`, `records`, `errors`.
"""

import itertools
import os
import time
from collections import Counter

from harness import expect, expect_eq, wait_until

TIMEOUT = 30  # seconds, for any single client operation or wait
PARTITIONS = 6
ALL = set(range(PARTITIONS))
REBALANCE_DELAY_MS = 500  # RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS for the group suites' broker

SEQ = itertools.count()  # global receive order across all members


def broker_env():
    """extra_env for run_suite: short initial rebalance delay, OffsetCommit refusals in the log."""
    return {
        "RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": str(REBALANCE_DELAY_MS),
        # refused OffsetCommits are logged at debug level; show them in the log tail on failure
        "RUST_LOG": os.environ.get("RUST_LOG", "info,openraft=warn,rafka::protocol::offset_commit=debug")}


class MemberView:
    """Main-thread view of a member polling in its own thread."""

    def assigned(self):
        with self.lock:
            return set(self.assignment)

    def snapshot(self):
        with self.lock:
            return list(self.records)

    def close(self):
        self.stopping.set()
        if not self.done.wait(TIMEOUT):
            raise TimeoutError(f"{self.name} did not close within {TIMEOUT}s")
        expect(not self.errors, f"{self.name} errors: {self.errors}")


class Members(list):
    """A list of Members that closes every one of them on exit, even after a failure."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for m in self:
            m.stopping.set()
        for m in self:
            m.done.wait(TIMEOUT)


def wait_balanced(members, sizes, since, what):
    """Wait until the assignments are disjoint, cover all partitions, and have `sizes`; return seconds since `since`."""
    def balanced():
        sets = [m.assigned() for m in members]
        return sorted(p for s in sets for p in s) == sorted(ALL) and [len(s) for s in sets] == sizes

    try:
        wait_until(balanced, TIMEOUT, interval=0.02, what=what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; assignments {[sorted(m.assigned()) for m in members]}") from None
    return time.monotonic() - since


def consumed(members):
    return sorted(r for m in members for r in m.snapshot())


def wait_consumed(members, expected):
    wait_until(lambda: set(expected) <= {(p, o) for _s, p, o, _k, _v in consumed(members)}, TIMEOUT,
               interval=0.1, what=f"{len(expected)} messages consumed")


def check_exactly_once(members, expected):
    """Every expected message consumed exactly once across `members`, in offset order per partition."""
    recs = consumed(members)
    counts = Counter((p, o) for _s, p, o, _k, _v in recs)
    dups = sorted(k for k, n in counts.items() if n > 1)
    errors = [e for m in members for e in m.commit_errors]
    expect(not dups, f"{len(dups)} messages consumed more than once, first (partition, offset): {dups[:5]}; "
                     f"commit errors seen: {errors[:3]}")
    expect_eq(set(counts), set(expected), "consumed (partition, offset) set")
    for _s, p, o, k, v in recs:
        expect_eq((k, v), expected[(p, o)], f"key/value at partition {p} offset {o}")
    for p in ALL:
        offsets = [o for _s, q, o, _k, _v in recs if q == p]
        expect(offsets == sorted(offsets), f"partition {p} consumed out of order: {offsets[:20]}")


def timer(suite):
    """timing(label, seconds) printing `[suite] TIMING label: N.NNs`."""
    def timing(label, seconds):
        print(f"[{suite}] TIMING {label}: {seconds:.2f}s", flush=True)
    return timing


def produce_and_check(produce, wait_committed_to_end, bootstrap, group, topic, members, expected, count, tag):
    """Produce `count` more messages with the suite's client; the members must consume and commit
    them, and every message so far must have been consumed exactly once."""
    new = produce(bootstrap, topic, count, tag)
    expected.update(new)
    wait_consumed(members, new)
    wait_committed_to_end(bootstrap, group, topic)
    check_exactly_once(members, expected)
