#!/usr/bin/env bash
# The main job: sets up .venv and the build if needed, then runs the QAT demo
# (examples/qat_digits.py: float vs 8-bit vs 4-bit quantization-aware training on
# scikit-learn's bundled digits, then a SavedModel round trip). Extra arguments go to it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
exec python examples/qat_digits.py "$@"
