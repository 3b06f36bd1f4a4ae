#!/usr/bin/env bash
# Everything the test suite needs beyond cargo, from the package registries:
#  - .venv with Python onnxruntime (the reference the backends are checked
#    against) and the Triton HTTP client (a standard Open Inference Protocol
#    client, used unchanged against Cascade), from PyPI;
#  - .ort/libonnxruntime.so for the `ort` backend, from PyPI;
#  - Debian's redis-server, which the replica tests start on loopback ports
#    of their own (never as a service), and Debian's prometheus for promtool
#    (the alert rules' unit tests).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import onnxruntime, tritonclient.http, numpy, kubernetes_validate, yaml" 2>/dev/null || [ ! -x .venv/bin/hadolint ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
fi
bash scripts/fetch-onnxruntime.sh
# Debian packages the tests need: redis-server, and prometheus for promtool.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's ${need[*]} for the tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null; }
    # The packages may start system services; the tests start their own.
    if command -v service >/dev/null 2>&1; then
      for s in redis-server prometheus; do service "$s" stop >/dev/null 2>&1 || true; done
    fi
  else
    echo "${need[*]} missing and cannot be installed here: the tests that need them will say SKIPPED"
  fi
fi
