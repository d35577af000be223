#!/usr/bin/env bash
# kcat compatibility checks against rafka. Starts its own broker on free ports
# with a fresh data dir (RAFKA_DEFAULT_PARTITIONS=3 so auto-created topics have
# 3 partitions), and ends with the line `N passed, N failed`.
# Consumer groups are not supported: kcat only consumes with -C -p/-o/-e.
set -uo pipefail

SUITE=kcat
CODECS=(none gzip snappy lz4 zstd)
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
