#!/usr/bin/env bash
# Starts (or stops) a local three-node cluster on loopback ports, from
# configs/broker-cluster-node{1,2,3}.json: Kafka on 19092/29092/39092, Raft on
# 19093/29093/39093, data in ./data/node{1,2,3}, logs in ./data/node{1,2,3}.log.
#
#   scripts/cluster.sh start    # build if needed, start the three nodes, wait until healthy
#   scripts/cluster.sh status   # health of each node
#   scripts/cluster.sh stop     # SIGTERM the three nodes
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir=${CARGO_TARGET_DIR:-target}
bin=${RAFKA_BIN:-$target_dir/release/rafka}
nodes=(1 2 3)

pid_file() { echo "data/node$1.pid"; }

start() {
    [ -x "$bin" ] || cargo build --release
    mkdir -p data
    for n in "${nodes[@]}"; do
        if [ -f "$(pid_file "$n")" ] && kill -0 "$(cat "$(pid_file "$n")")" 2>/dev/null; then
            echo "node $n already running"
            continue
        fi
        "$bin" --config "configs/broker-cluster-node$n.json" >>"data/node$n.log" 2>&1 &
        echo $! >"$(pid_file "$n")"
    done
    local deadline=$((SECONDS + 60))
    for n in "${nodes[@]}"; do
        until "$bin" health --bootstrap "127.0.0.1:${n}9092" >/dev/null 2>&1; do
            if [ $SECONDS -ge $deadline ]; then
                echo "node $n did not become healthy; see data/node$n.log" >&2
                exit 1
            fi
            sleep 0.2
        done
    done
    status
    echo "bootstrap servers: 127.0.0.1:19092,127.0.0.1:29092,127.0.0.1:39092"
}

status() {
    for n in "${nodes[@]}"; do
        printf 'node %s: ' "$n"
        "$bin" health --bootstrap "127.0.0.1:${n}9092" 2>&1 | tail -n 1 || true
    done
}

stop() {
    for n in "${nodes[@]}"; do
        local file
        file=$(pid_file "$n")
        [ -f "$file" ] || continue
        kill "$(cat "$file")" 2>/dev/null || true
        rm -f "$file"
    done
}

case ${1:-start} in
    start) start ;;
    status) status ;;
    stop) stop ;;
    *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
