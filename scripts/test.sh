#!/usr/bin/env bash
# Runs every test of the project: style checks, unit and integration tests
# (real broker processes) and the compatibility suites with real Kafka clients.
# Installs what it needs on a fresh Debian machine (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

install_system_packages() {
    local missing=()
    command -v clang >/dev/null || missing+=(clang)
    [ -n "$(find /usr/lib -name 'libclang*.so*' -print -quit 2>/dev/null)" ] || missing+=(libclang-dev)
    command -v kcat >/dev/null || missing+=(kcat)
    command -v python3 >/dev/null || missing+=(python3 python3-pip)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}"
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_system_packages
python3 -m pip install -q -r compat-tests/requirements.txt

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT

cargo fmt --check
cargo clippy --release --all-targets -- -D warnings
cargo build --release
cargo test --release 2>&1 | tee -a "$summary"

target_dir=${CARGO_TARGET_DIR:-target}
export RAFKA_BIN="$PWD/$target_dir/release/rafka"
[ -x "$RAFKA_BIN" ] || RAFKA_BIN="$target_dir/release/rafka"
compat_status=0
bash compat-tests/run-all.sh 2>&1 | tee -a "$summary" || compat_status=$?

# One closing line for the whole run: cargo's per-binary results plus the compat suites'.
python3 - "$summary" <<'PY'
import re, sys
passed = failed = 0
text = open(sys.argv[1], errors="replace").read()
for p, f in re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", text):
    passed += int(p); failed += int(f)
compat = re.findall(r"^(\d+) passed, (\d+) failed", text, re.M)
if compat:
    passed += int(compat[-1][0]); failed += int(compat[-1][1])
else:
    failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
exit $compat_status
