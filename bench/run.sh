#!/usr/bin/env bash
# rafka benchmark suite: prints a table on stdout and writes bench/results.json.
#
#   RAFKA_BIN=/path/to/release/rafka bench/run.sh [--quick] [--consume-bytes 500MB] [--nodes 1] ...
#
# The broker binary is found like the compat suites find it: $RAFKA_BIN, then
# target/release/rafka, then $CARGO_TARGET_DIR/release/rafka (build it first with
# `cargo build --release`). Progress goes to stderr. `bench/run.sh --help` lists options.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# A hard wall-clock cap on top of the script's own budget (540 s by default): SIGTERM
# becomes SystemExit in Python, which stops every broker; SIGKILL 20 s later if needed.
exec timeout --signal=TERM --kill-after=20 600 python3 -u "$here/bench.py" "$@"
