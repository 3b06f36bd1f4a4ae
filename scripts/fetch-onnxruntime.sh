#!/usr/bin/env bash
# Puts the ONNX Runtime shared library where Cascade's `ort` backend looks for
# it by default (.ort/libonnxruntime.so). It comes from the onnxruntime wheel
# on PyPI (capi/libonnxruntime.so.<version> inside it), fetched with pip; no
# build script downloads anything. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${ORT_VERSION:-1.31.1}"
DEST=.ort
LIB="$DEST/libonnxruntime.so.$VERSION"
if [ -f "$LIB" ] && [ -L "$DEST/libonnxruntime.so" ]; then
  echo "onnxruntime $VERSION already at $DEST/libonnxruntime.so"
  exit 0
fi
mkdir -p "$DEST/wheel"
python3 -m pip download --quiet --no-deps --only-binary=:all: "onnxruntime==$VERSION" -d "$DEST/wheel"
WHEEL=$(ls "$DEST"/wheel/onnxruntime-"$VERSION"-*.whl | head -n 1)
python3 - "$WHEEL" "$LIB" "$VERSION" <<'PY'
import sys, zipfile, shutil
wheel, out, version = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    name = f"onnxruntime/capi/libonnxruntime.so.{version}"
    with z.open(name) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
ln -sf "libonnxruntime.so.$VERSION" "$DEST/libonnxruntime.so"
rm -rf "$DEST/wheel"
echo "onnxruntime $VERSION -> $DEST/libonnxruntime.so"
