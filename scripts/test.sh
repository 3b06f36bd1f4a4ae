#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need
# (Python onnxruntime + Triton client into .venv, libonnxruntime.so into .ort,
# all from PyPI), then runs every test with the default backend set and again
# with the ONNX Runtime backend compiled in.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-env.sh
echo "== cargo test (default features: tract)"
cargo test --workspace
echo "== cargo test --features ort (tract + ONNX Runtime)"
ORT_DYLIB_PATH="$PWD/.ort/libonnxruntime.so" cargo test --features ort
