#!/usr/bin/env python3
"""The durability checker against a rafka broker with a short fault schedule:
kill -9 and restart, then a graceful restart, while three idempotent producers
write with acks=all. Any lost, duplicated or reordered record fails."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import expect, run_suite  # noqa: E402

import checker  # noqa: E402


def main(broker, R):
    with R.check("checker: detects lost, duplicated and reordered records"):
        v = checker.value_of
        records = {0: [(0, v(0, 0)), (1, v(0, 2)), (2, v(0, 1)), (3, v(0, 2))]}
        acked = {v(0, 0): (0, 0), v(0, 1): (0, 2), v(0, 2): (0, 1), v(0, 3): (0, 4)}
        report = checker.analyse(records, acked, 1)
        expect(report.lost[0] == ["p0-000000003"], f"lost: {report.lost[0]}")
        expect(report.duplicated[0] == ["p0-000000002"], f"duplicated: {report.duplicated[0]}")
        expect(report.reordered[0] == ["p0-000000001"], f"reordered: {report.reordered[0]}")

    with R.check("checker: kill -9 + restart, then graceful restart: nothing lost, duplicated or reordered",
                 timeout=600):
        faults = [(3, broker.kill9), (7, broker.restart)]
        report = checker.run(broker.bootstrap, "durability-single", partitions=3, producers=3, seconds=10,
                             rate=400, faults=faults)
        report.print(3)
        expect(report.acked > 0, "no record was acknowledged")
        expect(report.problems() == 0, f"{report.problems()} lost, duplicated or reordered records")
        expect(report.failed == 0, f"{report.failed} records failed to produce (acks=all should retry)")


if __name__ == "__main__":
    run_suite("durability", main)
