#!/usr/bin/env bash
# The three-broker cluster of docker/docker-compose.yml, checked from outside
# Docker with kcat: build the FROM-scratch image from the release binary, bring
# the cluster up under its own compose project on free host ports, produce and
# consume, stop the leader of a partition, keep producing and consuming on the
# other two, restart it and check it is a working voter again (stop another
# broker, so that the restarted one is needed for every election and commit),
# then compare the replicas' checksums. `docker compose down -v` and the image
# removal always run at exit, also on failure or interruption. About a minute;
# ends with `N passed, N failed`.
#
# Without docker, a reachable daemon, or compose (v2 plugin or docker-compose
# v1) the suite prints "SKIP: ..." and `0 passed, 0 failed`.
#
# Environment: RAFKA_BIN (broker binary, found like the other suites otherwise),
# RAFKA_BROKER1_PORT/2/3 (fixed host ports instead of free ones),
# RAFKA_COMPOSE_UP_TIMEOUT (seconds for the cluster to get healthy, default 120).
set -uo pipefail

SUITE=compose
# lib.sh: pass/fail/finish/expect_eq, find_binary, HERE, ROOT. Its single-broker
# helpers are not used; log_tail and cleanup are replaced below.
# shellcheck source=../kcat/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../kcat/lib.sh"

COMPOSE_FILE="$ROOT/docker/docker-compose.yml"
KCAT_TIMEOUT=20            # seconds for one kcat invocation
UP_TIMEOUT=${RAFKA_COMPOSE_UP_TIMEOUT:-120}
HEALTH_TIMEOUT=90          # seconds for a restarted broker to get healthy
FAILOVER_TIMEOUT=30        # seconds for partition leaders to move off a stopped broker
CONSUME_TIMEOUT=60         # seconds to read back everything produced
TOPIC=compose-test
SERVICES=(broker1 broker2 broker3)
PROJECT="rafka-compose-test-$$"
COMPOSE=() STARTED=""
export RAFKA_IMAGE="rafka:compose-test-$$" RAFKA_EXTERNAL_HOST=127.0.0.1

skip() { echo "[$SUITE] SKIP: $1"; finish; }

# dc ARGS...: compose for this project, bounded in time.
dc() { timeout 180 "${COMPOSE[@]}" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }

# On the first failure (called by lib.sh's fail): the last lines of every broker.
log_tail() {
    [ -n "$STARTED" ] || return 0
    local s
    for s in "${SERVICES[@]}"; do
        echo "---- last 40 lines of $s ----"
        dc logs --no-color --tail 40 "$s" 2>&1 | tail -n 40
    done
}

cleanup() {
    if [ -n "$STARTED" ]; then
        if [ "$failed" -gt 0 ]; then
            local keep="/tmp/$PROJECT.log"
            dc logs --no-color >"$keep" 2>&1 && echo "[$SUITE] full broker logs kept in $keep"
        fi
        dc down -v --remove-orphans -t 10 >/dev/null 2>&1 ||
            echo "[$SUITE] WARNING: '${COMPOSE[*]} -p $PROJECT down -v' failed; remove the project by hand"
    fi
    docker image inspect "$RAFKA_IMAGE" >/dev/null 2>&1 && docker rmi -f "$RAFKA_IMAGE" >/dev/null 2>&1
    [ -n "$TMP" ] && rm -rf "$TMP"
}

# -- environment ------------------------------------------------------------
command -v docker >/dev/null || skip "docker is not installed"
timeout 30 docker info >/dev/null 2>&1 || skip "the Docker daemon is not reachable (docker info failed)"
if timeout 30 docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null && timeout 30 docker-compose version >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    skip "neither 'docker compose' nor 'docker-compose' is available"
fi
echo "[$SUITE] using $("${COMPOSE[@]}" version 2>/dev/null | head -n 1), project $PROJECT"

command -v kcat >/dev/null || { fail "prerequisites" "kcat is not installed"; finish; }
BIN=$(find_binary 2>&1) || { fail "prerequisites" "$BIN"; finish; }
TMP=$(mktemp -d -t "rafka-$SUITE-XXXXXX")

# Host ports: RAFKA_BROKER<N>_PORT when given (must be free), free ones otherwise.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -n "${RAFKA_BROKER1_PORT:-}${RAFKA_BROKER2_PORT:-}${RAFKA_BROKER3_PORT:-}" ]; then
    PORTS=("${RAFKA_BROKER1_PORT:-19092}" "${RAFKA_BROKER2_PORT:-29092}" "${RAFKA_BROKER3_PORT:-39092}")
    for p in "${PORTS[@]}"; do
        port_busy "$p" && { fail "prerequisites" "host port $p is already in use (RAFKA_BROKER<N>_PORT)"; finish; }
    done
else
    read -r -a PORTS < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])') || true
    [ "${#PORTS[@]}" -eq 3 ] || { fail "prerequisites" "could not find 3 free host ports"; finish; }
fi
export RAFKA_BROKER1_PORT=${PORTS[0]} RAFKA_BROKER2_PORT=${PORTS[1]} RAFKA_BROKER3_PORT=${PORTS[2]}
# Admin listeners (/metrics, /health, /ready): always free host ports.
read -r -a ADMIN_PORTS < <(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])') || true
[ "${#ADMIN_PORTS[@]}" -eq 3 ] || { fail "prerequisites" "could not find 3 free host ports"; finish; }
export RAFKA_BROKER1_ADMIN_PORT=${ADMIN_PORTS[0]} RAFKA_BROKER2_ADMIN_PORT=${ADMIN_PORTS[1]} \
    RAFKA_BROKER3_ADMIN_PORT=${ADMIN_PORTS[2]}
# addr N: the address clients outside Docker use for broker N.
addr() { echo "127.0.0.1:${PORTS[$1 - 1]}"; }
ALL_BS="$(addr 1),$(addr 2),$(addr 3)"

# -- helpers ----------------------------------------------------------------
# health SERVICE: first line "<container state>/<health>" (running/healthy, exited/unhealthy,
# absent, ...), then what the last health check printed.
health() {
    local id
    id=$(dc ps -q "$1" 2>/dev/null)
    [ -n "$id" ] || { echo absent; return; }
    docker inspect -f '{{.State.Status}}/{{with .State.Health}}{{.Status}}{{range .Log}}{{"\n"}}exit {{.ExitCode}}: {{.Output}}{{end}}{{else}}no-healthcheck{{end}}' "$id" 2>/dev/null |
        awk 'NF { l[++n] = substr($0, 1, 300) } END { printf "%s", l[1]; if (n > 1) printf ", last health check: %s", l[n]; print "" }'
}
# wait_healthy TIMEOUT SERVICE...: every SERVICE running and healthy before TIMEOUT seconds;
# otherwise returns 1 with WHY describing each service.
wait_healthy() {
    local timeout=$1 s st all deadline=$((SECONDS + $1)); shift
    while :; do
        all=1 WHY="not healthy within ${timeout}s:"
        for s in "$@"; do
            st=$(health "$s")
            [[ $st == running/healthy* ]] || all=0
            WHY+=$'\n'"  $s: $st"
        done
        [ "$all" -eq 1 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 1
    done
}
# produce BOOTSTRAP FIRST LAST: messages key<i>:msg-<i> (keys spread them over the partitions),
# acks=all, one request in flight so that a retry cannot reorder a partition.
produce() {
    local i
    for ((i = $2; i <= $3; i++)); do printf 'key%d:msg-%d\n' "$i" "$i"; done |
        timeout 60 kcat -b "$1" -P -t "$TOPIC" -K: -X acks=all -X max.in.flight=1 -X message.timeout.ms=45000 2>"$TMP/kcat.err"
}
# produce_check NAME BOOTSTRAP FIRST LAST
produce_check() {
    # kcat may exit 0 after a failed delivery, so its report counts too. Other stderr lines
    # (e.g. connection refused by a stopped broker) are librdkafka noise it recovers from.
    if produce "$2" "$3" "$4" && ! grep -q 'Delivery failed\|Failed to produce' "$TMP/kcat.err"; then
        pass "$1"
    else
        fail "$1" "kcat -P: $(tail -n 5 "$TMP/kcat.err")"
    fi
}
# consume_check NAME BOOTSTRAP COUNT: all partitions from the beginning, retried until COUNT
# messages come back or CONSUME_TIMEOUT; then exactly msg-1..msg-COUNT, each once, in produce
# order within every partition.
consume_check() {
    local name=$1 bs=$2 count=$3 deadline=$((SECONDS + CONSUME_TIMEOUT)) got=0 out="$TMP/consumed"
    while :; do
        timeout "$KCAT_TIMEOUT" kcat -b "$bs" -C -q -e -o beginning -t "$TOPIC" -f '%p %s\n' >"$out" 2>"$TMP/kcat.err"
        got=$(wc -l <"$out")
        [ "$got" -ge "$count" ] || [ "$SECONDS" -ge "$deadline" ] && break
        sleep 1
    done
    local expected actual disorder
    expected=$(seq 1 "$count" | sed 's/^/msg-/' | sort)
    actual=$(cut -d' ' -f2 "$out" | sort)
    if [ "$expected" != "$actual" ]; then
        fail "$name" "read $got messages, expected $count; duplicates: $(sort "$out" | cut -d' ' -f2 | uniq -d | head -5 | xargs),"\
" missing: $(comm -23 <(echo "$expected") <(echo "$actual") | head -5 | xargs), kcat: $(tail -n 3 "$TMP/kcat.err")"
        return
    fi
    disorder=$(awk '{ n = substr($2, 5) + 0; if (n <= last[$1]) print "partition " $1 ": msg-" n " after msg-" last[$1]; last[$1] = n }' "$out" | head -3)
    if [ -n "$disorder" ]; then fail "$name" "out of produce order: $disorder"; else pass "$name"; fi
}
# leaders BOOTSTRAP: "<partition> <leader> <replicas>" per partition of TOPIC, from Metadata.
leaders() {
    timeout "$KCAT_TIMEOUT" kcat -b "$1" -L -t "$TOPIC" -m 5 2>/dev/null |
        sed -nE 's/^ *partition ([0-9]+), leader (-?[0-9]+), replicas: ([0-9,]*[0-9]).*/\1 \2 \3/p'
}
# wait_leaders_on BOOTSTRAP NODE...: every partition of TOPIC led by one of NODE..., within
# FAILOVER_TIMEOUT; the last answer is in LEADERS.
wait_leaders_on() {
    local bs=$1 deadline=$((SECONDS + FAILOVER_TIMEOUT)) p l r ok; shift
    while :; do
        LEADERS=$(leaders "$bs")
        ok=$([ -n "$LEADERS" ] && echo 1 || echo 0)
        while read -r p l r; do [[ " $* " == *" $l "* ]] || ok=0; done <<<"$LEADERS"
        [ "$ok" -eq 1 ] && return 0
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 1
    done
}
# metadata_check NAME NODE EXPECTED_NODES...: within FAILOVER_TIMEOUT, Metadata from broker
# NODE lists exactly the brokers EXPECTED_NODES, each at its advertised host port.
metadata_check() {
    local name=$1 node=$2 out n ok deadline=$((SECONDS + FAILOVER_TIMEOUT)); shift 2
    while :; do
        out=$(timeout "$KCAT_TIMEOUT" kcat -b "$(addr "$node")" -L -m 5 2>&1)
        ok=1
        grep -Eq "^ *$# brokers:" <<<"$out" || ok=0
        for n in "$@"; do grep -Eq "^ *broker $n at $(addr "$n")( |$)" <<<"$out" || ok=0; done
        [ "$ok" -eq 1 ] && { pass "$name"; return; }
        [ "$SECONDS" -ge "$deadline" ] && { fail "$name" "$(grep -E 'brokers:|broker [0-9]+ at|rror' <<<"$out" | head -n 6)"; return; }
        sleep 1
    done
}
# replicas_check NAME: within FAILOVER_TIMEOUT, the three replicas of every partition of
# TOPIC report the same applied index and data checksum (`rafka checksums`, run inside
# broker1's container since the Raft port 9093 is not published).
replicas_check() {
    local name=$1 deadline=$((SECONDS + FAILOVER_TIMEOUT)) n verdict
    while :; do
        for n in 1 2 3; do
            dc exec -T broker1 /usr/local/bin/rafka checksums --cluster-id rafka-compose --peer "broker$n:9093" >"$TMP/checksums$n" 2>"$TMP/checksums.err" ||
                echo "broker$n: $(tail -n 1 "$TMP/checksums.err")" >"$TMP/checksums$n"
        done
        verdict=$(python3 - "$TOPIC" "$TMP"/checksums{1,2,3} <<'PY'
import json, sys
topic, files = sys.argv[1], sys.argv[2:]
per_partition = {}
for node, path in enumerate(files, 1):
    text = open(path).read()
    try:
        replicas = json.loads(text)
    except ValueError:
        print(f"broker{node} gave no checksums: {text.strip()[:200]}"); sys.exit(1)
    for r in replicas:
        if r["topic"] == topic:
            per_partition.setdefault(r["partition"], {})[node] = (r["applied_index"], r["checksum"], r["batches"])
problems = [f"partition {p}: " + ", ".join(f"broker{n} index {i} checksum {c} batches {b}" for n, (i, c, b) in sorted(nodes.items()))
            for p, nodes in sorted(per_partition.items())
            if len(nodes) != 3 or len(set(nodes.values())) != 1]
if len(per_partition) != 3:
    problems.insert(0, f"{len(per_partition)} partitions of {topic} found, expected 3")
if problems:
    print("; ".join(problems)); sys.exit(1)
print("; ".join(f"partition {p}: index {i} checksum {c} batches {b}" for p, nodes in sorted(per_partition.items())
                for (i, c, b) in [nodes[1]]))
PY
        ) && { pass "$name"; echo "[$SUITE] replicas: $verdict"; return; }
        [ "$SECONDS" -ge "$deadline" ] && { fail "$name" "$verdict"; return; }
        sleep 1
    done
}
# stop_check NODE: docker compose stop brokerNODE
stop_check() {
    if dc stop -t 15 "broker$1" >"$TMP/compose.out" 2>&1 && [[ $(health "broker$1") == exited/* ]]; then
        pass "docker compose stop broker$1"
    else
        fail "docker compose stop broker$1" "$(health "broker$1"); $(tail -n 5 "$TMP/compose.out")"
    fi
}
# start_check NODE: docker compose start brokerNODE, healthy within HEALTH_TIMEOUT
start_check() {
    local name="broker$1 starts again and is healthy within ${HEALTH_TIMEOUT}s"
    if ! dc start "broker$1" >"$TMP/compose.out" 2>&1; then
        fail "$name" "compose start: $(tail -n 5 "$TMP/compose.out")"
    elif wait_healthy "$HEALTH_TIMEOUT" "broker$1"; then
        pass "$name"
    else
        fail "$name" "$WHY"
    fi
}
others() { local n; for n in 1 2 3; do [ "$n" == "$1" ] || [ "$n" == "${2:-}" ] || echo "$n"; done | xargs; }
bootstrap_of() { local n bs=""; for n in "$@"; do bs+="${bs:+,}$(addr "$n")"; done; echo "$bs"; }
# stop_and_fail_over NODE WHY NAME_PREFIX: stop brokerNODE (WHY: the reason, for the progress
# line), then every partition must get a leader on the two others within FAILOVER_TIMEOUT.
# Sets LIVE (the two others) and LIVE_BS (their bootstrap) for the checks that follow.
stop_and_fail_over() {
    local node=$1 why=$2 name
    read -r -a LIVE <<<"$(others "$node")"
    LIVE_BS=$(bootstrap_of "${LIVE[@]}")
    echo "[$SUITE] stopping broker$node ($why); broker${LIVE[0]} and broker${LIVE[1]} must serve alone"
    stop_check "$node"
    name="${3}every partition gets a leader on broker${LIVE[0]}/broker${LIVE[1]} within ${FAILOVER_TIMEOUT}s"
    if wait_leaders_on "$LIVE_BS" "${LIVE[@]}"; then
        pass "$name"
    else
        fail "$name" "partition leader replicas: ${LEADERS:-<no metadata>}"
    fi
}

# -- image and cluster ------------------------------------------------------
if RAFKA_BIN=$BIN timeout 300 bash "$ROOT/docker/build-scratch-image.sh" "$RAFKA_IMAGE" >"$TMP/build.out" 2>&1; then
    pass "build-scratch-image.sh builds $RAFKA_IMAGE FROM scratch from $BIN"
else
    fail "build-scratch-image.sh builds $RAFKA_IMAGE FROM scratch from $BIN" "$(tail -n 10 "$TMP/build.out")"
    finish
fi

name="compose up: broker1..3 healthy within ${UP_TIMEOUT}s (host ports ${PORTS[*]})"
up_args=(up -d)
if "${COMPOSE[@]}" up --help 2>/dev/null | grep -q -- '--wait-timeout'; then
    up_args+=(--wait --wait-timeout "$UP_TIMEOUT")
fi
STARTED=1
t0=$SECONDS
dc "${up_args[@]}" >"$TMP/compose.out" 2>&1
# With compose v2 --wait already waited; docker-compose v1 has no --wait, so poll the same health.
if wait_healthy "$UP_TIMEOUT" "${SERVICES[@]}"; then
    pass "$name"
    echo "[$SUITE] cluster healthy after $((SECONDS - t0))s"
else
    fail "$name" "$(tail -n 5 "$TMP/compose.out")"$'\n'"$WHY"
    finish
fi

for n in 1 2 3; do
    metadata_check "Metadata from broker$n lists broker1..3 at their advertised host ports" "$n" 1 2 3
done
# admin_check N: broker N's published admin port answers /ready with 200 and serves /metrics.
admin_check() {
    local name="broker$1 admin port: /ready 200 and Prometheus /metrics" out
    if out=$(python3 - "127.0.0.1:${ADMIN_PORTS[$1 - 1]}" 2>&1 <<'PY'
import sys, urllib.request
admin = sys.argv[1]
with urllib.request.urlopen(f"http://{admin}/ready", timeout=5) as r:
    assert r.status == 200, f"/ready answered {r.status}"
with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as r:
    text = r.read().decode()
assert "# TYPE rafka_requests_total counter" in text, "no rafka_requests_total in /metrics"
PY
    ); then pass "$name"; else fail "$name" "$(tail -n 3 <<<"$out")"; fi
}
for n in 1 2 3; do admin_check "$n"; done

# -- produce and consume on three brokers -----------------------------------
produce_check "produce 100 messages (acks=all) to auto-created topic $TOPIC" "$ALL_BS" 1 100
LEADERS=$(leaders "$ALL_BS")
replica_sets=$(while read -r p l r; do tr , '\n' <<<"$r" | sort -n | paste -sd, -; done <<<"$LEADERS" | sort | uniq -c | xargs)
if [ "$replica_sets" == "3 1,2,3" ]; then
    pass "$TOPIC has 3 partitions, each replicated on brokers 1,2,3"
else
    fail "$TOPIC has 3 partitions, each replicated on brokers 1,2,3" "partition leader replicas: ${LEADERS:-<no metadata>}"
fi
echo "[$SUITE] partition leader replicas: $(paste -sd';' - <<<"$LEADERS")"
consume_check "consume returns the 100 messages" "$ALL_BS" 100

# -- lose the leader of partition 0 -----------------------------------------
victim=$(awk '$1 == 0 && $2 >= 1 && $2 <= 3 { print $2 }' <<<"$LEADERS")
victim=${victim:-2}
stop_and_fail_over "$victim" "leader of partition 0" ""
metadata_check "with broker$victim stopped: Metadata lists only broker${LIVE[0]} and broker${LIVE[1]}" "${LIVE[0]}" "${LIVE[@]}"
produce_check "with broker$victim stopped: produce 100 more messages" "$LIVE_BS" 101 200
consume_check "with broker$victim stopped: consume returns all 200 messages" "$LIVE_BS" 200

# -- bring it back ----------------------------------------------------------
start_check "$victim"
metadata_check "Metadata from the restarted broker$victim lists broker1..3" "$victim" 1 2 3

# The restarted broker must be a working voter again: stop another one, so that every
# election and every commit needs broker$victim.
second=${LIVE[0]}
stop_and_fail_over "$second" "the restarted broker$victim is one of the two left" "with broker$second stopped: "
produce_check "with broker$second stopped: produce 100 more messages" "$LIVE_BS" 201 300
consume_check "with broker$second stopped: consume returns all 300 messages" "$LIVE_BS" 300
start_check "$second"

# -- end state --------------------------------------------------------------
consume_check "all three brokers up: consume returns all 300 messages" "$ALL_BS" 300
replicas_check "the 3 replicas of every partition hold identical data (rafka checksums)"
restarts="" WHY=""
for s in "${SERVICES[@]}"; do
    r=$(docker inspect -f '{{.RestartCount}}' "$(dc ps -q "$s")" 2>/dev/null)
    [ "${r:-0}" == 0 ] || restarts+=" $s restarted $r time(s) by docker (crash?)"
done
if [ -z "$restarts" ] && wait_healthy 10 "${SERVICES[@]}"; then
    pass "broker1..3 healthy at the end, none crashed"
else
    fail "broker1..3 healthy at the end, none crashed" "${restarts}${WHY:+ $WHY}"
fi
finish
