#!/usr/bin/env bash
# Installs what building and testing rafka needs on a Debian machine, checking
# each requirement for what the tool really loads or runs, so that an unrelated
# file of a similar name never passes for it.
#
#   scripts/install-deps.sh build   what `cargo build` needs (libclang, a C++ compiler)
#   scripts/install-deps.sh test    the above, plus kcat, the Python clients and
#                                   fusermount3 (the power-cut suite's FUSE mounts)
#   scripts/install-deps.sh check   install nothing; exit 1 naming what is missing
#
# Runs as root or through sudo. Sourcing is not needed: it changes nothing in
# the caller's environment.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The directories and names clang-sys (bindgen, used by librocksdb-sys) searches
# when LIBCLANG_PATH is unset and it links libclang without the `runtime`
# feature: exactly `libclang.so` or `libclang-<version>.so`. libclang-cpp.so and
# versioned `libclang.so.1` files do not count, whatever else the image ships.
libclang_for_clang_sys() {
    local dir name
    if command -v llvm-config >/dev/null; then
        dir=$(llvm-config --libdir 2>/dev/null || true)
        for name in "$dir"/libclang.so "$dir"/libclang-[0-9]*.so; do
            [ -e "$name" ] && { echo "$name"; return 0; }
        done
    fi
    shopt -s nullglob
    for dir in /usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib* \
        /usr/lib*/*/* /usr/lib*/* /usr/lib*; do
        for name in "$dir"/libclang.so "$dir"/libclang-[0-9]*.so; do
            # -e follows the symlink: a dangling libclang.so is no library.
            [ -e "$name" ] && { echo "$name"; shopt -u nullglob; return 0; }
        done
    done
    shopt -u nullglob
    return 1
}

# Prints "name==version" for each line of requirements.txt that is not
# installed at exactly that version in the python3 on PATH.
missing_python_requirements() {
    python3 - compat-tests/requirements.txt <<'PY'
import re, sys
from importlib import metadata
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, wanted = re.split(r"==", line, maxsplit=1)
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        have = None
    if have != wanted:
        print(line)
PY
}

# The modules the compatibility suites import, imported for real.
python_clients_import() {
    python3 -c 'import confluent_kafka, kafka, kafka.codec, snappy, lz4.frame, zstandard, crc32c, prometheus_client' 2>/dev/null
}

missing_build_packages() {
    libclang_for_clang_sys >/dev/null || echo libclang-dev
    command -v c++ >/dev/null || echo g++
}

missing_test_packages() {
    missing_build_packages
    command -v kcat >/dev/null || echo kcat
    fusermount3 -V >/dev/null 2>&1 || echo fuse3
    if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
        echo python3 python3-pip
    fi
}

apt_install() {
    [ $# -gt 0 ] || return 0
    echo "installing Debian packages: $*"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pip_install() {
    local missing
    missing=$(missing_python_requirements)
    [ -n "$missing" ] || return 0
    echo "installing Python packages: $(echo $missing)"
    # Debian's own python3 marks itself externally managed (PEP 668); these
    # test clients are meant for exactly this interpreter.
    PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check -r compat-tests/requirements.txt
}

# Fails naming every requirement still missing after the install.
verify() {
    local mode=$1 problems=()
    libclang_for_clang_sys >/dev/null || problems+=("no libclang.so where clang-sys looks (package libclang-dev)")
    command -v c++ >/dev/null || problems+=("no C++ compiler on PATH (package g++)")
    if [ "$mode" != build ]; then
        command -v kcat >/dev/null || problems+=("kcat is not on PATH (package kcat)")
        fusermount3 -V >/dev/null 2>&1 || problems+=("fusermount3 does not run (package fuse3)")
        if ! command -v python3 >/dev/null; then
            problems+=("python3 is not on PATH")
        else
            [ -z "$(missing_python_requirements)" ] || problems+=("Python packages missing: $(missing_python_requirements | tr '\n' ' ')")
            python_clients_import || problems+=("the Python clients do not import (confluent_kafka, kafka and codecs, prometheus_client)")
        fi
    fi
    if [ ${#problems[@]} -gt 0 ]; then
        printf 'missing: %s\n' "${problems[@]}" >&2
        return 1
    fi
    echo "build requirements present: $(libclang_for_clang_sys), $(command -v c++)"
    [ "$mode" = build ] || echo "test requirements present: $(command -v kcat), $(command -v fusermount3), Python clients importable"
}

mode=${1:-test}
case $mode in
    build) apt_install $(missing_build_packages | sort -u) ;;
    test)
        apt_install $(missing_test_packages | sort -u)
        pip_install
        ;;
    check) ;;
    *) echo "usage: $0 build|test|check" >&2; exit 2 ;;
esac
verify "$mode"
