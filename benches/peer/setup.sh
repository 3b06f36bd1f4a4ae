#!/usr/bin/env bash
# Creates benches/peer/.venv and installs requirements.txt into it. Idempotent:
# a second run only checks that the pinned versions are there.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c 'import starlette, uvicorn, onnxruntime, numpy, pyarrow; print("peer venv ready:", "starlette", starlette.__version__, "uvicorn", uvicorn.__version__, "onnxruntime", onnxruntime.__version__, "numpy", numpy.__version__, "pyarrow", pyarrow.__version__)'
