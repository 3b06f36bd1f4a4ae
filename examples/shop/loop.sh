#!/usr/bin/env bash
# The feedback loop on the shop, end to end (examples/shop/loop.py says each step): simulated
# shoppers view what they are shown, by their true preferences and a position bias; the ranking
# log and their views become a training set (`cascade dataset`); two rankers are trained from it
# (position-corrected and naive), vetted, shadowed and A/B-tested against version 1; the report's
# lift is compared with the ground truth. Writes examples/shop/loop_report.json.
#   bash examples/shop/loop.sh       (from anywhere; a few minutes)
# Env: CASCADE_BIN (default target/release/cascade, built if missing), SKIP_INSTALL=1 to reuse the
# venv, LOOP_COLLECT / LOOP_AB (rankings played before training / in the A/B test).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" PYTHONHASHSEED=0
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="$HERE/.venv"
if [[ "${SKIP_INSTALL:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/models/train/requirements.txt"
fi
export CASCADE_BIN="${CASCADE_BIN:-$ROOT/target/release/cascade}"
[[ -x "$CASCADE_BIN" ]] || (cd "$ROOT" && cargo build --release --bin cascade)
timeout 1200 "$VENV/bin/python" "$HERE/loop.py"
