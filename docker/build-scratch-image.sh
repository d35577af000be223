#!/usr/bin/env bash
# Builds the image `rafka:latest` (or the tag given as $1) FROM scratch, with no
# registry access: the release binary plus exactly the shared libraries `ldd`
# says it needs, configs/* in /etc/rafka and docker/cluster/*.toml (the
# docker-compose.yml brokers) in /etc/rafka/cluster.
# With RAFKA_BIN set to an executable, that binary is used and nothing is
# compiled; otherwise `cargo build --release` builds $CARGO_TARGET_DIR/release/rafka.
set -euo pipefail
if [ -n "${RAFKA_BIN:-}" ]; then
    [ -f "$RAFKA_BIN" ] && [ -x "$RAFKA_BIN" ] || { echo "RAFKA_BIN=$RAFKA_BIN is not an executable file" >&2; exit 1; }
    binary=$(realpath "$RAFKA_BIN")   # before the cd below: RAFKA_BIN may be relative
fi
cd "$(dirname "$0")/.."
tag=${1:-rafka:latest}
if [ -z "${binary:-}" ]; then
    target_dir=${CARGO_TARGET_DIR:-target}
    cargo build --release
    binary="$target_dir/release/rafka"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/rafka/cluster" "$rootfs/var/lib/rafka" "$rootfs/tmp"
# Debug info is for profiling on the build machine, not for the image.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$rootfs/usr/local/bin/rafka" "$binary"
else
    cp "$binary" "$rootfs/usr/local/bin/rafka"
fi
cp configs/* "$rootfs/etc/rafka/"
cp docker/cluster/*.toml "$rootfs/etc/rafka/cluster/"
# Every library the binary loads, including the dynamic loader itself.
ldd "$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
cp docker/Dockerfile.scratch "$context/Dockerfile"
docker build -q -t "$tag" "$context"
echo "built $tag from $binary"
