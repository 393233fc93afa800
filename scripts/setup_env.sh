#!/usr/bin/env bash
# Creates .venv (if needed) with TensorFlow and the test/demo dependencies, then
# builds tensorflow-qdq into it against that TensorFlow. Idempotent and quiet
# when everything is already in place. Sourced by scripts/test.sh and demo.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QDQ_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TF_SPEC="${QDQ_TF_SPEC:-tensorflow-cpu==2.21.0}"
KERAS_HUB_SPEC="keras-hub==0.32.0"

say() { echo "[tensorflow-qdq] $*"; }
# Some pip configurations warn once per package about absent local indexes; hide just those lines.
quiet_pip() { python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
if ! python -c "import tensorflow, pytest, hypothesis, sklearn, matplotlib, ml_dtypes, pybind11, tf2onnx, onnxruntime, ai_edge_litert, regex, tokenizers" 2>/dev/null; then
  say "installing $TF_SPEC and the test/demo dependencies (first run only)"
  quiet_pip install -q --disable-pip-version-check "$TF_SPEC" -r "$ROOT/requirements-dev.txt"
fi
# KerasHub (the export coverage tests build its backbones): without its dependencies, which
# would pull tensorflow-text and with it a second TensorFlow wheel; what it imports is in
# requirements-dev.txt.
if ! python -c "import keras_hub" 2>/dev/null; then
  say "installing $KERAS_HUB_SPEC (no dependencies)"
  quiet_pip install -q --disable-pip-version-check --no-deps "$KERAS_HUB_SPEC"
fi
if ! python -m pip show -q tensorflow-qdq >/dev/null 2>&1; then
  say "installing tensorflow-qdq (editable) against $(python -c 'import tensorflow as tf; print("TensorFlow", tf.__version__)' 2>/dev/null)"
  quiet_pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e "$ROOT"
else
  say "rebuilding what changed"
  (cd "$ROOT" && python setup.py -q build_ext --inplace)
fi
