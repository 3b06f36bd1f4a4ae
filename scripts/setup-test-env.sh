#!/usr/bin/env bash
# Everything the test suite needs beyond cargo, from PyPI only:
#  - .venv with Python onnxruntime (the reference the backends are checked
#    against) and the Triton HTTP client (a standard Open Inference Protocol
#    client, used unchanged against Cascade);
#  - .ort/libonnxruntime.so for the `ort` backend.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import onnxruntime, tritonclient.http, numpy" 2>/dev/null; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
bash scripts/fetch-onnxruntime.sh
