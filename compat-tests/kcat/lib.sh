# Shared helpers for the kcat suites (test_kcat.sh, test_kcat_groups.sh); source it, don't run it.
# Set before sourcing:
#   SUITE             tag printed on every result line, e.g. kcat -> "[kcat] PASS ..."
#   DEFAULT_RUST_LOG  broker RUST_LOG unless the caller's environment sets one (default: info)
# start_broker [VAR=value...] passes extra environment variables to the broker.
# Provides: pass/fail/finish/expect_eq, find_binary, log_tail, start_broker/stop_broker and the
# EXIT/INT/TERM traps; sets HERE, ROOT, TIMEOUT, READY_TIMEOUT, STOP_TIMEOUT, and, once the broker
# is up, BIN, PORT, RAFT_PORT, BS (bootstrap address), TMP (data dir, log, scratch files).

HERE=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TIMEOUT=30          # seconds for any single kcat invocation
READY_TIMEOUT=${RAFKA_READY_TIMEOUT:-30}
STOP_TIMEOUT=10

passed=0 failed=0 failed_names=() BROKER_PID="" TMP="" BIN=""

# -- results ----------------------------------------------------------------
pass() { passed=$((passed + 1)); echo "[$SUITE] PASS $1"; }
fail() {
    failed=$((failed + 1)); failed_names+=("$1")
    echo "[$SUITE] FAIL $1: $2"
    if [ "$failed" -eq 1 ] && [ -n "$TMP" ]; then log_tail; fi
}
finish() {
    [ "$failed" -gt 0 ] && echo "[$SUITE] failed checks: $(IFS=';'; echo "${failed_names[*]}")"
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

# start_broker [VAR=value...]: single-node broker on free ports, fresh data dir,
# RAFKA_DEFAULT_PARTITIONS=3 plus the given variables; waits for a Metadata answer.
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
    TMP=$(mktemp -d -t "rafka-$SUITE-XXXXXX")
    (cd "$ROOT" && RUST_LOG=${RUST_LOG:-${DEFAULT_RUST_LOG:-info}} NO_COLOR=1 RAFKA_LISTENER="$BS" RAFKA_ADVERTISED_LISTENER="$BS" \
        RAFKA_RAFT_ADDRESS="127.0.0.1:$RAFT_PORT" RAFKA_ADMIN_LISTENER=127.0.0.1:0 \
        RAFKA_DATA_DIR="$TMP/data" RAFKA_DEFAULT_PARTITIONS=3 \
        exec env "$@" "$BIN" --config configs/single-node.toml) </dev/null >"$TMP/broker.log" 2>&1 &
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
