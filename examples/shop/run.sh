#!/usr/bin/env bash
# The shop app, end to end: a venv from PyPI, the cascade binary (for `cascade features`), the
# synthetic world, the catalog snapshot, the two models, and a replay through the server.
#   bash examples/shop/run.sh       (from anywhere)
# Env: CASCADE_BIN (default target/release/cascade, built if missing), SKIP_INSTALL=1 to reuse the venv.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
START=$(date +%s)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-2}" PYTHONHASHSEED=0
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="$HERE/.venv"
if [[ "${SKIP_INSTALL:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/models/train/requirements.txt"
fi
export CASCADE_BIN="${CASCADE_BIN:-$ROOT/target/release/cascade}"
[[ -x "$CASCADE_BIN" ]] || (cd "$ROOT" && cargo build --release --bin cascade)
"$VENV/bin/python" "$HERE/train.py"
(cd "$ROOT" && "$CASCADE_BIN" eval --config examples/shop/config.toml --requests examples/shop/.cache/eval_requests.jsonl)
echo "run.sh wall time: $(( $(date +%s) - START )) s"
