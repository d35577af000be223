#!/usr/bin/env bash
# kcat consumer-group (-G, balanced KafkaConsumer) checks against rafka. Starts
# its own broker on free ports with a fresh data dir (RAFKA_DEFAULT_PARTITIONS=3,
# RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=500) and ends with `N passed, N failed`.
#
# kcat -G auto-commits (enable.auto.commit=true, offsets stored per message) and
# commits the stored offsets when it closes after -e. Note: in -G mode an explicit
# -o (e.g. `-o beginning`) overrides the committed offsets on every assignment
# (kcat sets the offset in its rebalance callback), so runs meant to resume from
# the committed offsets pass no -o.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TIMEOUT=30          # seconds for any single kcat invocation
READY_TIMEOUT=${RAFKA_READY_TIMEOUT:-30}
STOP_TIMEOUT=10
TOPIC=kcat-groups GROUP=kcat-grp FMT='%p:%o:%k:%s\n'

passed=0 failed=0 failed_names=() BROKER_PID="" TMP="" BIN=""

# -- results ----------------------------------------------------------------
pass() { passed=$((passed + 1)); echo "[kcat-groups] PASS $1"; }
fail() {
    failed=$((failed + 1)); failed_names+=("$1")
    echo "[kcat-groups] FAIL $1: $2"
    if [ "$failed" -eq 1 ] && [ -n "$TMP" ]; then log_tail; fi
}
finish() {
    [ "$failed" -gt 0 ] && echo "[kcat-groups] failed checks: $(IFS=';'; echo "${failed_names[*]}")"
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}
# expect_eq NAME EXPECTED ACTUAL
expect_eq() {
    if [ "$2" == "$3" ]; then pass "$1"
    else fail "$1" "output differs (< expected, > actual):"$'\n'"$(diff <(printf '%s\n' "$2") <(printf '%s\n' "$3") | head -20)"
    fi
}

# -- broker -----------------------------------------------------------------
find_binary() {
    if [ -n "${RAFKA_BIN:-}" ]; then
        [ -x "$RAFKA_BIN" ] && { echo "$RAFKA_BIN"; return; }
        echo "RAFKA_BIN=$RAFKA_BIN is not an executable file" >&2; return 1
    fi
    local c
    for c in "$ROOT/target/release/rafka" ${CARGO_TARGET_DIR:+"$CARGO_TARGET_DIR/release/rafka"}; do
        [ -x "$c" ] && { echo "$c"; return; }
    done
    echo "rafka binary not found (\$RAFKA_BIN, $ROOT/target/release/rafka${CARGO_TARGET_DIR:+, $CARGO_TARGET_DIR/release/rafka}); run cargo build --release" >&2
    return 1
}

log_tail() { echo "---- last 60 lines of $TMP/broker.log ----"; tail -n 60 "$TMP/broker.log" 2>/dev/null; }

stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$BROKER_PID" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$BROKER_PID" 2>/dev/null
    wait "$BROKER_PID" 2>/dev/null
    BROKER_PID=""
}

cleanup() { stop_broker; [ -n "$TMP" ] && rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_broker() {
    local ports
    command -v kcat >/dev/null || { fail "broker starts and answers Metadata" "kcat is not installed"; finish; }
    BIN=$(find_binary 2>&1) || { fail "broker starts and answers Metadata" "$BIN"; finish; }
    ports=$(python3 -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])') || { fail "broker starts and answers Metadata" "no free ports"; finish; }
    read -r PORT RAFT_PORT <<<"$ports"
    BS="127.0.0.1:$PORT"
    TMP=$(mktemp -d -t rafka-kcat-groups-XXXXXX)
    (cd "$ROOT" && RUST_LOG=${RUST_LOG:-info,openraft=warn} NO_COLOR=1 RAFKA_LISTENER="$BS" RAFKA_ADVERTISED_LISTENER="$BS" \
        RAFKA_RAFT_ADDRESS="127.0.0.1:$RAFT_PORT" RAFKA_DATA_DIR="$TMP/data" RAFKA_DEFAULT_PARTITIONS=3 \
        RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=500 \
        exec "$BIN" --config configs/single-node.toml) </dev/null >"$TMP/broker.log" 2>&1 &
    BROKER_PID=$!
    local deadline=$((SECONDS + READY_TIMEOUT))
    until kcat -b "$BS" -L -m 1 >/dev/null 2>&1; do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            wait "$BROKER_PID"
            fail "broker starts and answers Metadata" "rafka exited with code $? during startup"
            BROKER_PID=""; finish
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "broker starts and answers Metadata" "no Metadata answer on $BS within ${READY_TIMEOUT}s"; finish
        fi
        sleep 0.1
    done
    pass "broker starts and answers Metadata"
}

# -- helpers ----------------------------------------------------------------
# produce_lines TAG FROM TO: messages FROM..TO, each to partition i%3 (key TAG-k<i>, value TAG-v<i>), acks=all.
produce_lines() {
    local tag=$1 from=$2 to=$3 p i
    for p in 0 1 2; do
        for ((i = from + (p - from % 3 + 3) % 3; i <= to; i += 3)); do
            printf '%s-k%d:%s-v%d\n' "$tag" "$i" "$tag" "$i"
        done | timeout "$TIMEOUT" kcat -b "$BS" -P -t "$TOPIC" -p "$p" -K: -X acks=all \
            -X message.timeout.ms=$((TIMEOUT * 1000)) 2>>"$TMP/kcat.err" || return 1
    done
}
expected_lines() {  # expected_lines TAG FROM TO -> sorted `partition:key:value`
    local tag=$1 from=$2 to=$3 i
    for ((i = from; i <= to; i++)); do printf '%d:%s-k%d:%s-v%d\n' $((i % 3)) "$tag" "$i" "$tag" "$i"; done | sort
}
# group_consume [kcat args...]: balanced consumer in $GROUP until EOF on all assigned partitions.
# Output: raw `partition:offset:key:value` lines in $TMP/out; returns kcat's exit code.
group_consume() {
    timeout "$TIMEOUT" kcat -b "$BS" -G "$GROUP" "$TOPIC" -q -e -f "$FMT" "$@" >"$TMP/out" 2>"$TMP/kcat.err"
}
# strip_offsets: `p:o:k:v` -> sorted `p:k:v`
strip_offsets() { cut -d: -f1,3- "$TMP/out" | sort; }
# group_rows: `partition committed end lag` per partition of $GROUP from `rafka groups`, plus its state
group_rows() {
    "$BIN" groups --bootstrap "$BS" 2>>"$TMP/kcat.err" |
        awk -v g="$GROUP" '$1 == g { n = split($3, tp, "-"); print tp[n], $(NF-2), $(NF-1), $NF, $2 }' | sort -n
}

# -- checks -----------------------------------------------------------------
check_group_roundtrip() {
    local name rc out rows
    name="kcat -P 300 messages to 3 partitions"
    if produce_lines a 0 299; then pass "$name"; else fail "$name" "$(tail -n 5 "$TMP/kcat.err")"; finish; fi

    name="kcat -G -o beginning -e reads all 300 messages exactly once"
    local t0; t0=$(date +%s%3N)
    group_consume -o beginning; rc=$?
    if [ "$rc" -ne 0 ]; then fail "$name" "kcat exited $rc: $(tail -n 5 "$TMP/kcat.err")"
    else
        expect_eq "$name" "$(expected_lines a 0 299)" "$(strip_offsets)"
        echo "[kcat-groups] TIMING whole kcat -G -e run (join incl. 500 ms initial delay, 300 messages," \
            "EOF, commit, leave): $(( $(date +%s%3N) - t0 )) ms"
        expect_eq "kcat -G output: offsets 0..99 in order per partition" \
            "$(for p in 0 1 2; do seq 0 99 | sed "s/^/$p:/"; done)" \
            "$(for p in 0 1 2; do grep "^$p:" "$TMP/out" | cut -d: -f1,2; done)"
    fi

    name="after kcat -G exits: rafka groups shows $GROUP Empty, committed 100 = end, lag 0 on each partition"
    expect_eq "$name" $'0 100 100 0 Empty\n1 100 100 0 Empty\n2 100 100 0 Empty' "$(group_rows)"

    name="kcat -G -e again (no -o: committed offsets) reads nothing old"
    group_consume; rc=$?
    if [ "$rc" -ne 0 ]; then fail "$name" "kcat exited $rc: $(tail -n 5 "$TMP/kcat.err")"
    else expect_eq "$name" "" "$(strip_offsets)"; fi

    name="kcat -P 30 more; rafka groups shows lag 10 per partition"
    if produce_lines b 0 29; then
        expect_eq "$name" $'0 100 110 10 Empty\n1 100 110 10 Empty\n2 100 110 10 Empty' "$(group_rows)"
    else fail "$name" "$(tail -n 5 "$TMP/kcat.err")"; fi

    name="kcat -G -e resumes from the committed offsets: exactly the 30 new messages"
    group_consume; rc=$?
    if [ "$rc" -ne 0 ]; then fail "$name" "kcat exited $rc: $(tail -n 5 "$TMP/kcat.err")"
    else
        expect_eq "$name" "$(expected_lines b 0 29)" "$(strip_offsets)"
        expect_eq "$name: offsets 100..109 per partition" \
            "$(for p in 0 1 2; do seq 100 109 | sed "s/^/$p:/"; done)" \
            "$(for p in 0 1 2; do grep "^$p:" "$TMP/out" | cut -d: -f1,2; done)"
    fi
    expect_eq "after the resume: lag 0 again" $'0 110 110 0 Empty\n1 110 110 0 Empty\n2 110 110 0 Empty' \
        "$(group_rows)"

    name="kcat -G -o beginning overrides the committed offsets (kcat behaviour): all 330 again"
    group_consume -o beginning; rc=$?
    if [ "$rc" -ne 0 ]; then fail "$name" "kcat exited $rc: $(tail -n 5 "$TMP/kcat.err")"
    else expect_eq "$name" "$( (expected_lines a 0 299; expected_lines b 0 29) | sort)" "$(strip_offsets)"; fi
}

start_broker
check_group_roundtrip
finish
