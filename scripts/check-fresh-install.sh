#!/usr/bin/env bash
# Runs the install step of the test command in a clean Debian 12 root (no
# clang, no libclang-dev, no kcat, no Python clients) and then checks, without
# trusting the install step's own verdict, that what the build and the suites
# load is really there:
#   - a libclang.so where clang-sys looks, which dlopen()s and answers
#     clang_getClangVersion();
#   - kcat on PATH, answering -V;
#   - fusermount3 on PATH, answering -V;
#   - the Python clients importable (confluent_kafka, kafka and their codecs).
#
#   scripts/check-fresh-install.sh [INSTALL_COMMAND...]
#
# INSTALL_COMMAND defaults to `scripts/install-deps.sh test` and runs inside the
# root with the repository mounted read-only at /src (its path is relative to
# the repository). The root is made once with debootstrap and kept in
# $RAFKA_FRESH_ROOT_CACHE (default $HOME/.cache/rafka-fresh-root) together with
# the downloaded .deb and pip files, so later runs cost well under a minute.
# Each run starts from an untouched copy: a throwaway container of an image
# imported from the root. Needs Docker (the engine, no registry) and root or sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=bookworm
MIRROR=${RAFKA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${RAFKA_FRESH_ROOT_CACHE:-$HOME/.cache/rafka-fresh-root}
ROOT="$CACHE/$SUITE-root"
# The packages of this project's machine kind that bear on the install step
# (see import_image); the image tag changes with the list.
KIND_PACKAGES="llvm libclang-cpp14 g++ python3 python3-pip"
IMAGE="rafka-fresh-root:$SUITE-$(echo "$KIND_PACKAGES" | cksum | cut -d' ' -f1)"
install_command=("$@")
[ ${#install_command[@]} -gt 0 ] || install_command=(scripts/install-deps.sh test)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

make_root() {
    [ -f "$ROOT/.complete" ] && return 0
    if ! command -v debootstrap >/dev/null; then
        echo "installing debootstrap"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
    fi
    echo "debootstrap $SUITE into $ROOT (once)"
    as_root rm -rf "$ROOT.partial"
    mkdir -p "$CACHE"
    as_root debootstrap --variant=minbase "$SUITE" "$ROOT.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
    as_root rm -rf "$ROOT"
    as_root mv "$ROOT.partial" "$ROOT"
    as_root touch "$ROOT/.complete"
    docker image rm -f "$IMAGE" >/dev/null 2>&1 || true
}

# The image is the root as debootstrap left it plus the packages of this
# project's machine kind that bear on the install step: llvm (so llvm-config is
# on PATH, which clang-sys asks first), libclang-cpp14 (the library whose name
# once passed for libclang), g++, and Debian's python3 with pip. A missing image
# (a new Docker engine, a pruned one) is made again from the cached root.
import_image() {
    docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
    echo "importing $ROOT as $IMAGE with the machine kind's packages"
    as_root tar -C "$ROOT" -c . | docker import - "$IMAGE-base" >/dev/null
    local builder="rafka-fresh-root-$$"
    docker run --name "$builder" --network host \
        -v "$CACHE/apt-archives:/var/cache/apt/archives" "$IMAGE-base" \
        bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                 --no-install-recommends $0 >/dev/null && rm -rf /var/lib/apt/lists/*' "$KIND_PACKAGES" ||
        { docker rm -f "$builder" >/dev/null; exit 1; }
    docker commit "$builder" "$IMAGE" >/dev/null
    docker rm -f "$builder" >/dev/null
    docker image rm -f "$IMAGE-base" >/dev/null
}

# Runs inside the container after the install step; independent of it.
read -r -d '' ASSERTIONS <<'SH' || true
set -u
status=0
shopt -s nullglob
libclang=""
for dir in /usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib* /usr/lib*/*/* /usr/lib*/* /usr/lib*; do
    for f in "$dir"/libclang.so "$dir"/libclang-[0-9]*.so; do
        [ -e "$f" ] && [ -z "$libclang" ] && libclang=$f
    done
done
if [ -z "$libclang" ]; then
    echo "FAIL: no libclang.so or libclang-<version>.so where clang-sys looks"; status=1
elif ! command -v python3 >/dev/null; then
    echo "FAIL: python3 missing, cannot load $libclang"; status=1
elif version=$(python3 - "$libclang" <<'PY'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
class CXString(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("private_flags", ctypes.c_uint)]
lib.clang_getClangVersion.restype = CXString
lib.clang_getCString.restype = ctypes.c_char_p
lib.clang_getCString.argtypes = [CXString]
print(lib.clang_getCString(lib.clang_getClangVersion()).decode())
PY
); then
    echo "ok: $libclang loads: $version"
else
    echo "FAIL: $libclang does not load as libclang"; status=1
fi
if command -v kcat >/dev/null && kcat -V >/dev/null 2>&1; then
    echo "ok: $(kcat -V 2>&1 | head -n 1)"
else
    echo "FAIL: kcat is not on PATH"; status=1
fi
if version=$(fusermount3 -V 2>&1); then
    echo "ok: $version"
else
    echo "FAIL: fusermount3 does not run"; status=1
fi
if command -v python3 >/dev/null &&
    python3 -c 'import confluent_kafka, kafka, kafka.codec, snappy, lz4.frame, zstandard, crc32c; print("ok: confluent_kafka", confluent_kafka.version(), "(librdkafka", confluent_kafka.libversion()[0] + "), kafka-python", kafka.__version__)'; then
    :
else
    echo "FAIL: the Python clients do not import"; status=1
fi
exit $status
SH

make_root
mkdir -p "$CACHE/apt-archives/partial" "$CACHE/pip"
import_image
echo "install step in a clean $SUITE root: ${install_command[*]}"
started=$(date +%s)
# The .deb and pip downloads are cached between runs; what is installed is not.
# The host's CA bundle goes in so that pip trusts what the host trusts (a
# machine whose traffic passes a TLS-inspecting proxy has its CA only there).
tls=()
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[ -f "$host_ca" ] && tls=(-v "$host_ca:/etc/ssl/host-ca.crt:ro" -e PIP_CERT=/etc/ssl/host-ca.crt)
docker run --rm --network host "${tls[@]}" \
    -v "$PWD:/src:ro" \
    -v "$CACHE/apt-archives:/var/cache/apt/archives" \
    -v "$CACHE/pip:/root/.cache/pip" \
    -w /src "$IMAGE" \
    bash -c '"$@" >/tmp/install.log 2>&1; rc=$?; tail -n 15 /tmp/install.log
             echo "install step exited $rc"; bash -c "$0"' "$ASSERTIONS" "${install_command[@]}"
echo "fresh-root check passed in $(($(date +%s) - started)) s"
