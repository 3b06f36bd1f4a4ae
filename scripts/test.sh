#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need
# (Python onnxruntime + Triton client into .venv, libonnxruntime.so into .ort,
# all from PyPI; Debian's redis-server and prometheus), then runs every test
# with the default backend, and again with the ONNX Runtime backend compiled
# in the tests that differ with it (the backend tests). Ends with one
# summary line, and the tests that could not run here (SKIPPED; under
# CI=true a test that cannot run fails instead).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-env.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
skipped="${CARGO_TARGET_DIR:-target}/tmp/skipped.txt"
mkdir -p "$(dirname "$skipped")"
: >"$skipped"
echo "== cargo test --workspace (default features: tract)"
cargo test --workspace 2>&1 | tee -a "$log"
echo "== cargo test --features ort --test integration backends:: (tract + ONNX Runtime)"
ORT_DYLIB_PATH="$PWD/.ort/libonnxruntime.so" cargo test --features ort --test integration backends:: 2>&1 | tee -a "$log"
# Every cargo test binary prints "test result: ok. N passed; M failed; ...".
if [ -s "$skipped" ]; then
    echo "== SKIPPED here (they need what this machine lacks; CI=true runs them or fails):"
    sort -u "$skipped" | sed 's/^/   /'
fi
awk -v skipped="$(sort -u "$skipped" | wc -l)" \
    '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed, %d skipped\n", p, f, skipped }' "$log"
