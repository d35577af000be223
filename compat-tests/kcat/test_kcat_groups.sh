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

SUITE=kcat-groups DEFAULT_RUST_LOG=info,openraft=warn
TOPIC=kcat-groups GROUP=kcat-grp FMT='%p:%o:%k:%s\n'
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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

start_broker RAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=500
check_group_roundtrip
finish
