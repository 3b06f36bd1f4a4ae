#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need
# (Python onnxruntime + Triton client into .venv, libonnxruntime.so into .ort,
# all from PyPI), then runs every test with the default backend set and again
# with the ONNX Runtime backend compiled in. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-env.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== cargo test --workspace (default features: tract)"
cargo test --workspace 2>&1 | tee -a "$log"
echo "== cargo test --features ort (tract + ONNX Runtime)"
ORT_DYLIB_PATH="$PWD/.ort/libonnxruntime.so" cargo test --features ort 2>&1 | tee -a "$log"
# Every cargo test binary prints "test result: ok. N passed; M failed; ...".
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
