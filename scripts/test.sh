#!/usr/bin/env bash
# Runs every test of the project: style checks, unit and integration tests
# (real broker processes) and the compatibility suites with real Kafka clients.
# Installs what it needs on a fresh Debian machine (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

# libclang where clang-sys looks, a C++ compiler, kcat and the Python clients
# at the versions of compat-tests/requirements.txt; each checked for what the
# tool really loads, installed only when missing.
scripts/install-deps.sh test

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
