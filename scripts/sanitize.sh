#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer run of the op library.
#
# Builds tensorflow-qdq with QDQ_SANITIZE=address,undefined in a scratch copy of the tree
# (your own build is left alone), then runs the test suite (pytest's default selection, which
# includes the fuzz suite's CI budget) and a further fuzz budget with the ASan runtime
# preloaded into Python. Every sanitizer report aborts the process that hit it and is logged;
# the run passes only with zero reports and zero test/fuzz failures.
#
#   scripts/sanitize.sh                 # tests + 3000 fuzz cases (seed 1)
#   FUZZ_CASES=20000 FUZZ_SEED=7 scripts/sanitize.sh -k "not soak"
#
# Environment: PYTHON (python), QDQ_SANITIZE (address,undefined), FUZZ_CASES, FUZZ_SEED,
# QDQ_SANITIZE_DIR (build/sanitize). Extra arguments go to pytest. TensorFlow itself is not
# instrumented: only our code is checked, and leak checking is off (TF holds memory on purpose).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
WORK="${QDQ_SANITIZE_DIR:-$ROOT/build/sanitize}"
SAN="${QDQ_SANITIZE:-address,undefined}"
FUZZ_CASES="${FUZZ_CASES:-3000}"
FUZZ_SEED="${FUZZ_SEED:-1}"
TREE="$WORK/tree"
LOGS="$WORK/logs"

echo "[sanitize] copying the source tree to $TREE"
rm -rf "$TREE" "$LOGS"
mkdir -p "$TREE" "$LOGS"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$TREE")
else
  (cd "$ROOT" && tar --exclude=./build --exclude=./.venv -cf - .) | (cd "$TREE" && tar -xf -)
fi

echo "[sanitize] building with -fsanitize=$SAN"
start=$(date +%s)
(cd "$TREE" && QDQ_SANITIZE="$SAN" QDQ_CUDA="${QDQ_CUDA:-0}" "$PY" setup.py -q build_ext --inplace)

LIB="$TREE/tensorflow_qdq/_qdq_ops.so"
# grep -c reads all of nm's output (grep -q would stop early and fail the pipe under pipefail).
if [ "$(nm -D "$LIB" | grep -c "__asan_report\|__ubsan_handle" || true)" -eq 0 ]; then
  echo "[sanitize] $LIB is not instrumented (no __asan_report/__ubsan_handle symbols)" >&2
  exit 1
fi

RUNTIME=""
case ",$SAN," in *,address,*) RUNTIME="$("${CXX:-g++}" -print-file-name=libasan.so)" ;; esac
case ",$SAN," in *,undefined,*) RUNTIME="$RUNTIME $("${CXX:-g++}" -print-file-name=libubsan.so)" ;; esac
export LD_PRELOAD="${RUNTIME# }"
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:detect_odr_violation=0:alloc_dealloc_mismatch=0:new_delete_type_mismatch=0:allow_user_segv_handler=1:log_path=$LOGS/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$LOGS/ubsan"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PYTHONPATH="$TREE${PYTHONPATH:+:$PYTHONPATH}"
echo "[sanitize] LD_PRELOAD=$LD_PRELOAD"

# Tests that cannot run with a preloaded ASan runtime: they start Python with a scrubbed
# environment (no LD_PRELOAD) on the instrumented core, or build helper programs with g++.
DESELECT=(
  "tests/test_core_cpu.py::test_imports_without_tensorflow"
  "tests/test_cuda_emu.py"
)
args=()
for t in "${DESELECT[@]}"; do
  if [ -e "$TREE/${t%%::*}" ]; then args+=(--deselect "$t"); fi
done

status=0
echo "[sanitize] pytest (default selection) under the sanitizers"
(cd "$TREE" && "$PY" -m pytest -q -p no:cacheprovider "${args[@]}" "$@") || status=1
echo "[sanitize] fuzz: $FUZZ_CASES cases, seed $FUZZ_SEED"
(cd "$TREE" && "$PY" -m tests.fuzz --cases "$FUZZ_CASES" --seed "$FUZZ_SEED" --json "$WORK/fuzz.json") || status=1

reports=$(find "$LOGS" -type f | wc -l)
if [ "$reports" -ne 0 ]; then
  echo "[sanitize] $reports sanitizer report(s):"
  for f in "$LOGS"/*; do echo "--- $f"; head -60 "$f"; done
  status=1
fi
echo "[sanitize] $( [ $status -eq 0 ] && echo CLEAN || echo FAILED ): $reports sanitizer reports, $(( $(date +%s) - start )) s"
exit $status
