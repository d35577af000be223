#!/usr/bin/env bash
# kcat compatibility checks against rafka. Starts its own broker on free ports
# with a fresh data dir (RAFKA_DEFAULT_PARTITIONS=3 so auto-created topics have
# 3 partitions), and ends with the line `N passed, N failed`.
# Consumer groups are not supported: kcat only consumes with -C -p/-o/-e.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TIMEOUT=30          # seconds for any single kcat invocation
READY_TIMEOUT=${RAFKA_READY_TIMEOUT:-30}
STOP_TIMEOUT=10
CODECS=(none gzip snappy lz4 zstd)

passed=0 failed=0 failed_names=() BROKER_PID="" TMP=""

# -- results ----------------------------------------------------------------
pass() { passed=$((passed + 1)); echo "[kcat] PASS $1"; }
fail() {
    failed=$((failed + 1)); failed_names+=("$1")
    echo "[kcat] FAIL $1: $2"
    if [ "$failed" -eq 1 ] && [ -n "$TMP" ]; then log_tail; fi
}
finish() {
    [ "$failed" -gt 0 ] && echo "[kcat] failed checks: $(IFS=';'; echo "${failed_names[*]}")"
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
    local bin ports
    command -v kcat >/dev/null || { fail "broker starts and answers Metadata" "kcat is not installed"; finish; }
    bin=$(find_binary 2>&1) || { fail "broker starts and answers Metadata" "$bin"; finish; }
    ports=$(python3 -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])') || { fail "broker starts and answers Metadata" "no free ports"; finish; }
    read -r PORT RAFT_PORT <<<"$ports"
    BS="127.0.0.1:$PORT"
    TMP=$(mktemp -d -t rafka-kcat-XXXXXX)
    (cd "$ROOT" && RUST_LOG=${RUST_LOG:-info} NO_COLOR=1 RAFKA_LISTENER="$BS" RAFKA_ADVERTISED_LISTENER="$BS" \
        RAFKA_RAFT_ADDRESS="127.0.0.1:$RAFT_PORT" RAFKA_DATA_DIR="$TMP/data" RAFKA_DEFAULT_PARTITIONS=3 \
        exec "$bin" --config configs/single-node.toml) </dev/null >"$TMP/broker.log" 2>&1 &
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

# -- kcat wrappers ----------------------------------------------------------
# produce TOPIC PARTITION [kcat args...] < lines   (keys split on ':', acks=all)
produce() {
    local topic=$1 partition=$2; shift 2
    timeout "$TIMEOUT" kcat -b "$BS" -P -t "$topic" -p "$partition" -K: -X acks=all \
        -X message.timeout.ms=$((TIMEOUT * 1000)) "$@" 2>"$TMP/kcat.err"
}
# consume TOPIC PARTITION OFFSET FORMAT [kcat args...]   (to end of partition, then exit)
consume() {
    local topic=$1 partition=$2 offset=$3 format=$4; shift 4
    timeout "$TIMEOUT" kcat -b "$BS" -C -q -e -t "$topic" -p "$partition" -o "$offset" -f "$format" "$@" \
        2>"$TMP/kcat.err"
}
# produce_check NAME TOPIC PARTITION INPUT [kcat args...]: a failed produce fails NAME and returns 1
produce_check() {
    local name=$1 topic=$2 partition=$3 input=$4; shift 4
    printf '%s\n' "$input" | produce "$topic" "$partition" "$@" && return 0
    fail "$name" "kcat -P exited $?: $(tail -n 5 "$TMP/kcat.err")"
    return 1
}
lines() { local i; for ((i = $2; i <= $3; i++)); do printf '%s\n' "${1//@/$i}"; done; }

# -- checks -----------------------------------------------------------------
check_metadata() {
    local out
    out=$(timeout "$TIMEOUT" kcat -b "$BS" -L -m 5 2>&1)
    if grep -Eq "^ *1 brokers:" <<<"$out" && grep -Eq "broker [0-9]+ at $BS" <<<"$out"; then
        pass "kcat -L lists exactly this broker"
    else
        fail "kcat -L lists exactly this broker" "$out"
    fi
}

check_keys_headers() {
    local name="kcat -P -K: -H then -C -f '%k:%s:%h' reads back keys, values, headers exactly"
    local input=$'alpha:one\nbeta:two words\ngamma:\xc3\xa9t\xc3\xa9 utf-8\ndelta:colon:inside'
    produce_check "$name" kcat-basic 1 "$input" -H trace=abc123 -H source=kcat || return
    expect_eq "$name" \
        "$(sed 's/$/:trace=abc123,source=kcat/' <<<"$input")" \
        "$(consume kcat-basic 1 beginning '%k:%s:%h\n')"

    local out
    out=$(timeout "$TIMEOUT" kcat -b "$BS" -L -t kcat-basic -m 5 2>&1)
    if grep -q 'topic "kcat-basic" with 3 partitions' <<<"$out"; then
        pass "auto-created topic has RAFKA_DEFAULT_PARTITIONS=3 partitions"
    else
        fail "auto-created topic has RAFKA_DEFAULT_PARTITIONS=3 partitions" "$out"
    fi
}

check_nulls() {
    local name="kcat -Z: empty key/value are produced and read back as NULL"
    produce_check "$name" kcat-nulls 0 $'k1:v1\n:no-key\nk3:\nk4:v4' -Z || return
    expect_eq "$name" $'k1=v1\nNULL=no-key\nk3=NULL\nk4=v4' "$(consume kcat-nulls 0 beginning '%k=%s\n' -Z)"
}

check_offsets() {
    local name="kcat -C -o <offset> / -o -<n> start at the right offsets"
    produce_check "$name" kcat-offsets 2 "$(lines 'key@:value@' 0 99)" || return
    expect_eq "$name: -o 60" "$(lines '@ key@' 60 99)" "$(consume kcat-offsets 2 60 '%o %k\n')"
    expect_eq "$name: -o -5" "$(lines '@ value@' 95 99)" "$(consume kcat-offsets 2 -5 '%o %s\n')"
}

check_codecs() {
    local codec topic input
    for codec in "${CODECS[@]}"; do
        topic="kcat-codec-$codec"
        input=$(lines "key@:$codec value @ $(printf 'x%.0s' {1..50})" 0 199)
        if produce_check "-z $codec" "$topic" 0 "$input" -z "$codec"; then
            expect_eq "produce -z $codec, consume back" "$input" "$(consume "$topic" 0 beginning '%k:%s\n')"
        fi
        if produce_check "-X compression.codec=$codec" "$topic" 1 "$input" -X "compression.codec=$codec"; then
            expect_eq "produce -X compression.codec=$codec, consume back from offset 150" \
                "$(tail -n 50 <<<"$input")" "$(consume "$topic" 1 150 '%k:%s\n')"
        fi
    done
}

start_broker
check_metadata
check_keys_headers
check_nulls
check_offsets
check_codecs
finish
