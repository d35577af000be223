#!/usr/bin/env bash
# Starts the embedded single-node broker, installing and building what it needs
# first: Debian's libclang-dev and a C++ compiler when missing (RocksDB is built
# from C++), then `cargo build --release`. A second run finds both done and
# starts in seconds.
#
#   scripts/run.sh [--config FILE]     default configs/single-node.toml
#
# Every key of the configuration can be overridden by RAFKA_<KEY>.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is not on PATH: install a Rust toolchain (rustup) first" >&2; exit 1; }
scripts/install-deps.sh build
cargo build --release --quiet
binary="${CARGO_TARGET_DIR:-target}/release/rafka"
[ $# -gt 0 ] || set -- --config configs/single-node.toml
exec "$binary" "$@"
