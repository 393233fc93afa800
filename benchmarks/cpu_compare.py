"""The CPU benchmark of two builds in one run: before and after a change.

    python benchmarks/cpu_compare.py BEFORE_TREE [AFTER_TREE] [--rounds 3] [--write]

Each tree is a built checkout (``python setup.py build_ext --inplace`` in it; the default
AFTER_TREE is this one). The two builds cannot share a process (they register the same op
names), so ``benchmarks/cpu.py --quick`` runs in each tree in turn, alternating round after
round so that load from other processes hits both alike. Per case: the median of our time and
of the speedup over TensorFlow's built-in (which runs in the same process as ours, so it cancels
drift), before and after. ``--write`` puts the table in benchmarks/RESULTS.md.
"""

import argparse
import collections
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- cpu-compare:begin -->", "<!-- cpu-compare:end -->"


def run_quick(tree):
    """{(case, layout, dtype, size): (ours ms, speedup)} from one quick run in `tree`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(tree))
    with tempfile.TemporaryDirectory() as scratch:  # cpu.py writes its RESULTS.md section there, not in `tree`
        out = subprocess.run([sys.executable, str(Path(tree) / "benchmarks" / "cpu.py"), "--quick", "--out", scratch],
                             cwd=tree, env=env, capture_output=True, text=True, check=True, timeout=1200).stdout
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 7 and cells[3].startswith("2^"):
            rows[tuple(cells[:4])] = (float(cells[4]), float(cells[6].rstrip("x")))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=HERE.parent)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    runs = {"before": collections.defaultdict(list), "after": collections.defaultdict(list)}
    for r in range(args.rounds):
        for side, tree in (("before", args.before), ("after", args.after)):
            for key, value in run_quick(tree.resolve()).items():
                runs[side][key].append(value)
            print(f"[cpu-compare] round {r + 1}/{args.rounds}: {side} done", flush=True)
    lines = [BEGIN, "## CPU benchmark: before/after a change, one run", "",
             f"`python benchmarks/cpu_compare.py {args.before} --rounds {args.rounds}` on "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: `benchmarks/cpu.py --quick` of each "
             "build in turn; medians over the rounds. after/before < 1 is faster; the speedup over TensorFlow "
             "(measured in the same process as ours) cancels machine drift.", "",
             "| case | layout | dtype | elements | before ms | after ms | after / before | speedup before | "
             "speedup after |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for key in sorted(set(runs["before"]) & set(runs["after"])):
        b, a = runs["before"][key], runs["after"][key]
        bt, at = statistics.median(v[0] for v in b), statistics.median(v[0] for v in a)
        bs, as_ = statistics.median(v[1] for v in b), statistics.median(v[1] for v in a)
        lines.append(f"| {' | '.join(key)} | {bt:.3f} | {at:.3f} | {at / bt:.2f} | {bs:.2f}x | {as_:.2f}x |")
    lines += ["", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        sys.path.insert(0, str(HERE))
        from _results import write_results

        write_results(HERE / "RESULTS.md", text, BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
