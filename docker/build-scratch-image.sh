#!/usr/bin/env bash
# Builds the image `rafka:latest` FROM scratch, with no registry access: the
# release binary plus exactly the shared libraries `ldd` says it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-rafka:latest}
target_dir=${CARGO_TARGET_DIR:-target}
cargo build --release
binary="$target_dir/release/rafka"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/rafka" "$rootfs/var/lib/rafka" "$rootfs/tmp"
cp "$binary" "$rootfs/usr/local/bin/rafka"
cp configs/* "$rootfs/etc/rafka/"
# Every library the binary loads, including the dynamic loader itself.
ldd "$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
cp docker/Dockerfile.scratch "$context/Dockerfile"
docker build -q -t "$tag" "$context"
echo "built $tag"
