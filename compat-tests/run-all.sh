#!/usr/bin/env bash
# Runs every client compatibility suite (each starts its own rafka broker) and
# ends with `N passed, N failed` summed over all suites. Installs nothing: the
# caller provides the pip requirements (requirements.txt) and kcat.
# Each suite is bounded by SUITE_TIMEOUT seconds (default 900).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900}
export PYTHONUNBUFFERED=1

suite_cmd() {
    case $1 in
        confluent) cmd=("$PY" "$HERE/confluent/test_confluent.py") ;;
        kafka-python) cmd=("$PY" "$HERE/kafka-python/test_kafka_python.py") ;;
        kcat) cmd=(bash "$HERE/kcat/test_kcat.sh") ;;
        confluent-groups) cmd=("$PY" "$HERE/confluent/test_groups.py") ;;
        kafka-python-groups) cmd=("$PY" "$HERE/kafka-python/test_groups.py") ;;
        kcat-groups) cmd=(bash "$HERE/kcat/test_kcat_groups.sh") ;;
        offsets-records) cmd=("$PY" "$HERE/offsets/test_offsets_records.py") ;;
        compaction) cmd=("$PY" "$HERE/compaction/test_compaction.py") ;;
        legacy) cmd=("$PY" "$HERE/legacy/test_legacy_clients.py") ;;
        golden) cmd=("$PY" "$HERE/legacy/test_golden_bytes.py") ;;
        durability) cmd=("$PY" "$HERE/durability/test_durability.py") ;;
        powercut) cmd=("$PY" "$HERE/powercut/test_powercut.py") ;;
        storage) cmd=("$PY" "$HERE/storage/test_storage.py") ;;
        cluster) cmd=("$PY" "$HERE/cluster/test_failover.py") ;;
        metrics) cmd=("$PY" "$HERE/metrics/test_metrics.py") ;;
        compose) cmd=(bash "$HERE/compose/test_compose.sh") ;;
    esac
}

total_passed=0 total_failed=0 summary=()
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for name in confluent kafka-python kcat confluent-groups kafka-python-groups kcat-groups offsets-records compaction legacy golden durability powercut storage cluster metrics compose; do
    suite_cmd "$name"
    echo "==== $name ===="
    # On timeout the suite gets SIGTERM (it then stops its broker), SIGKILL 30 s later.
    timeout -k 30 "$SUITE_TIMEOUT" "${cmd[@]}" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    last=$(tail -n 1 "$out")
    if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
        p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]}
        # A suite that reports no failures but exits non-zero still counts as one failure.
        if [ "$f" -eq 0 ] && [ "$rc" -ne 0 ]; then f=1; fi
    else
        p=0 f=1
        echo "[$name] no result line (exit code $rc)"
    fi
    total_passed=$((total_passed + p)) total_failed=$((total_failed + f))
    summary+=("$name: $p passed, $f failed (exit $rc)")
done

echo "==== summary ===="
printf '%s\n' "${summary[@]}"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
