#!/usr/bin/env bash
# Rolling-origin backtest (models/README.md, "Backtest"): retrains the cascade at the 60/70/80/90 %
# time cutoffs and writes models/backtest_report.json. Touches no shipped artifact.
#   SKIP_INSTALL=1 bash models/train/backtest.sh      (from anywhere)
# Env as run.sh: PYTHON, SKIP_INSTALL=1 to reuse an existing venv, CASCADE_BIN (default
# target/release/cascade, built if missing).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
START=$(date +%s)

source prepare.sh

.venv/bin/python backtest.py
echo "backtest.sh wall time: $(( $(date +%s) - START )) s"
