"""Many Python threads and tf.function calls with inter_op_parallelism > 1 calling the ops at
once with different attributes give results bit-identical to a sequential run.

The check runs in a fresh process (tests/fuzz/concurrency_check.py) because TensorFlow's
thread pools can only be configured before its first op."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_threads_and_parallel_graphs_match_sequential_results():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.concurrency_check", "--threads", "16", "--rounds", "2",
         "--inter-op", "4", "--intra-op", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["inter_op"] == 4 and summary["intra_op"] == 2
    assert summary["errors"] == [], summary
    assert summary["mismatch_count"] == 0, summary
    assert summary["calls"] == 48 * 2 * 16 + 48 * 2 * 4
