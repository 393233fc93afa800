"""CPU benchmark: tensorflow-qdq's kernels against TensorFlow's built-ins, in one process.

    python benchmarks/cpu.py            # full run (< 10 min): writes benchmarks/RESULTS.md, benchmarks/cpu.png
    python benchmarks/cpu.py --quick    # under a minute
    python benchmarks/cpu.py --out DIR  # write elsewhere

Each case runs ours, TensorFlow's way of doing the same thing, and a NumPy copy of
the same number of bytes, interleaved in one loop so that load from other processes
hits all three alike; the table reports medians. Both ops are called through their
generated op functions (the thinnest Python layer each has), so small sizes compare
dispatch overhead fairly.

GB/s counts the bytes that must move: read the input and write the output (given
range), plus one more read of the input for an auto range, or of the gradient for
V4Grad. "% copy" compares that with the copy's rate (read + write).
"""

import argparse
import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a source checkout without installing
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from _results import load_average, machine_info, write_results  # noqa: E402

BEGIN, END = "<!-- cpu:begin -->", "<!-- cpu:end -->"
FULL_SIZES = [10, 14, 18, 20, 22, 24, 26]
QUICK_SIZES = [10, 16, 20, 22]
TINY_SIZES = [10, 12]


@dataclasses.dataclass
class Case:
    name: str  # e.g. "V4 given"
    layout: str  # "per-tensor", "axis 0", "middle axis", "last axis"
    dtype: str
    passes: int  # buffer-sized transfers that must happen: 2 (read, write) or 3
    max_log2: int = 26  # skip sizes above this (TensorFlow's slowest paths)


CASES = [
    Case("V4 given", "per-tensor", "float32", 2),
    Case("V4 auto", "per-tensor", "float32", 3),
    Case("V2 given", "per-tensor", "float32", 2, 24),
    Case("V4 auto", "axis 0", "float32", 3, 24),
    Case("V4 auto", "middle axis", "float32", 3, 24),
    Case("V4 auto", "last axis", "float32", 3, 24),
    Case("given (V3)", "axis 0", "float32", 2, 24),
    Case("given (V3)", "middle axis", "float32", 2, 24),
    Case("given (V3)", "last axis", "float32", 2, 24),
    Case("V4Grad", "per-tensor", "float32", 3),
    Case("V4Grad", "last axis", "float32", 3, 24),
    Case("V4 given", "per-tensor", "float64", 2, 24),
    Case("V4 auto", "per-tensor", "float64", 3, 24),
    Case("V4 given", "per-tensor", "float16", 2, 24),
    Case("V4 auto", "per-tensor", "float16", 3, 24),
    Case("V4 given", "per-tensor", "bfloat16", 2, 24),
    Case("V4 auto", "per-tensor", "bfloat16", 3, 24),
    Case("V4 auto", "last axis", "bfloat16", 3, 24),
]
QUICK_NAMES = {("V4 given", "per-tensor"), ("V4 auto", "per-tensor"), ("V4 auto", "axis 0"),
               ("V4 auto", "middle axis"), ("V4 auto", "last axis"), ("V4Grad", "per-tensor")}


def shape_for(n, layout):
    """[n / c^2, c, c]: axis 0 = many long channels, middle = c channels of c runs, last = c channels."""
    c = 64 if n >= 1 << 16 else 16
    return (n // (c * c), c, c)


def axis_for(layout):
    return {"per-tensor": -1, "axis 0": 0, "middle axis": 1, "last axis": 2}[layout]


def _setup(case, n):
    """Returns (ours, theirs) zero-argument callables for one case and size."""
    import tensorflow as tf
    from tensorflow.python.ops import gen_array_ops, gen_math_ops

    from tensorflow_qdq._loader import ops

    dtype = tf.as_dtype(case.dtype)
    narrow = dtype in (tf.float16, tf.bfloat16)
    compute = tf.float32 if narrow else dtype
    shape = shape_for(n, case.layout)
    axis = axis_for(case.layout)
    rng = np.random.default_rng(0)
    x = tf.cast(tf.constant(rng.normal(size=shape).astype(np.float32) * 3), dtype)
    depth = 1 if axis == -1 else shape[axis]
    lo = tf.cast(tf.fill([depth] if axis != -1 else [], -2.5), dtype)
    hi = tf.cast(tf.fill([depth] if axis != -1 else [], 2.5), dtype)
    axis_attr = {} if axis == -1 else {"axis": axis}

    def via_cast(fn):
        # What a TensorFlow user does for half/bfloat16 today: cast to float32 and back.
        if not narrow:
            return fn
        return lambda *a: gen_math_ops.cast(fn(*[gen_math_ops.cast(t, compute) for t in a]), dtype)

    if case.name == "V4Grad":
        g = tf.identity(x)
        ours = lambda: ops.qdq_quantize_and_dequantize_v4_grad(g, x, lo, hi, **axis_attr)  # noqa: E731
        theirs_fn = via_cast(lambda g_, x_, l_, h_: gen_array_ops.quantize_and_dequantize_v4_grad(
            g_, x_, l_, h_, **axis_attr)[0])
        return ours, lambda: theirs_fn(g, x, lo, hi)
    given = "given" in case.name
    if case.name.startswith("given (V3)"):
        bits = tf.constant(8)
        ours = lambda: ops.qdq_quantize_and_dequantize_v4(x, lo, hi, range_given=True, **axis_attr)  # noqa: E731
        theirs_fn = via_cast(lambda x_, l_, h_: gen_array_ops.quantize_and_dequantize_v3(
            x_, l_, h_, bits, range_given=True, **axis_attr))
        return ours, lambda: theirs_fn(x, lo, hi)
    ours_op = ops.qdq_quantize_and_dequantize_v2 if case.name.startswith("V2") else ops.qdq_quantize_and_dequantize_v4
    tf_op = (gen_array_ops.quantize_and_dequantize_v2 if case.name.startswith("V2")
             else gen_array_ops.quantize_and_dequantize_v4)
    ours = lambda: ours_op(x, lo, hi, range_given=given, **axis_attr)  # noqa: E731
    theirs_fn = via_cast(lambda x_, l_, h_: tf_op(x_, l_, h_, range_given=given, **axis_attr))
    return ours, lambda: theirs_fn(x, lo, hi)


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(case, n, budget_s, min_reps, max_reps):
    """Median seconds of (ours, TensorFlow, copy of the same bytes), interleaved."""
    ours, theirs = _setup(case, n)
    itemsize = np.dtype(case.dtype if case.dtype != "bfloat16" else "float16").itemsize
    src = np.random.default_rng(1).random(n * itemsize // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy = lambda: np.copyto(dst, src)  # noqa: E731
    for fn in (ours, theirs, copy):  # warm up: first-call setup and page faults
        fn()
    probe = _time(ours) + _time(theirs) + _time(copy)
    reps = int(min(max_reps, max(min_reps, budget_s / max(probe, 1e-9))))
    samples = ([], [], [])
    for rep in range(reps):
        # Alternate who runs first after the copy, so neither side always finds the other's data cached.
        order = (0, 1, 2) if rep % 2 == 0 else (1, 0, 2)
        for k in order:
            samples[k].append(_time((ours, theirs, copy)[k]))
    return tuple(statistics.median(s) for s in samples), tuple(min(s) for s in samples), reps


@dataclasses.dataclass
class Row:
    case: Case
    log2: int
    ours_s: float
    tf_s: float
    copy_s: float
    reps: int
    best: tuple = (0.0, 0.0, 0.0)  # fastest repeat of ours, TF, copy: what an idle machine approaches

    @property
    def n(self):
        return 1 << self.log2

    @property
    def bytes_moved(self):
        itemsize = 2 if self.case.dtype in ("float16", "bfloat16") else np.dtype(self.case.dtype).itemsize
        return self.case.passes * self.n * itemsize

    def gbps(self, seconds):
        return self.bytes_moved / seconds / 1e9

    @property
    def copy_gbps(self):
        itemsize = 2 if self.case.dtype in ("float16", "bfloat16") else np.dtype(self.case.dtype).itemsize
        return 2 * self.n * itemsize / self.copy_s / 1e9

    @property
    def speedup(self):
        return self.tf_s / self.ours_s

    @property
    def best_speedup(self):
        return self.best[1] / self.best[0]


def table(rows):
    head = ("| case | layout | dtype | elements | ours ms | TF ms | speedup | ours GB/s | TF GB/s | copy GB/s "
            "| ours % of copy | best ours / TF ms | best speedup |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.case.name} | {r.case.layout} | {r.case.dtype} | 2^{r.log2} | {r.ours_s * 1e3:.3f} | "
            f"{r.tf_s * 1e3:.3f} | {r.speedup:.2f}x | {r.gbps(r.ours_s):.1f} | {r.gbps(r.tf_s):.1f} | "
            f"{r.copy_gbps:.1f} | {100 * r.gbps(r.ours_s) / r.copy_gbps:.0f}% | "
            f"{r.best[0] * 1e3:.3f} / {r.best[1] * 1e3:.3f} | {r.best_speedup:.2f}x |"
        )
    return "\n".join(lines)


def markdown(rows, info, load_before, load_after, mode, elapsed):
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        BEGIN,
        "## CPU",
        "",
        f"`python benchmarks/cpu.py{'' if mode == 'full' else ' --' + mode}` on {stamp}: {info['cpu']}, "
        f"TensorFlow {info['tensorflow']}, tensorflow-qdq loops: {info['isa']}, intra-op threads: "
        f"{info['intra_op_threads']}. Load average (1/5/15 min) before: {load_before}; after: {load_after} "
        f"(other processes may share the machine: times are medians of interleaved repeats; the last two "
        f"columns use each side's fastest repeat, what an idle machine approaches). Took {elapsed:.0f} s.",
        "",
        "TF = TensorFlow's built-in op called the same way (generated op function); for float16/bfloat16 "
        "it is the cast route (cast to float32, built-in op, cast back), since TensorFlow has no such "
        "kernels. Per-channel given ranges: TensorFlow's V2/V4 reject them, so TF is V3. GB/s counts the "
        "bytes that must move (2 passes over the buffer for given ranges, 3 for auto ranges and V4Grad); "
        "copy = NumPy copy of the same buffer into a preallocated one.",
        "",
        table(rows),
        "",
        END,
    ])


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wanted = [("V4 given", "per-tensor", "float32"), ("V4 auto", "per-tensor", "float32"),
              ("V4 auto", "last axis", "float32"), ("V4 auto", "axis 0", "float32"),
              ("V4Grad", "per-tensor", "float32")]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, key in enumerate(wanted):
        sel = [r for r in rows if (r.case.name, r.case.layout, r.case.dtype) == key]
        if not sel:
            continue
        xs = [r.n for r in sel]
        color = f"C{i}"
        ax.plot(xs, [r.gbps(r.ours_s) for r in sel], "-o", color=color, label=f"ours: {key[0]}, {key[1]}")
        ax.plot(xs, [r.gbps(r.tf_s) for r in sel], "--x", color=color, alpha=0.7, label=f"TF: {key[0]}, {key[1]}")
    copy = {}
    for r in rows:
        if r.case.dtype == "float32":
            copy.setdefault(r.n, []).append(r.copy_gbps)
    if copy:
        xs = sorted(copy)
        ax.plot(xs, [statistics.median(copy[x]) for x in xs], ":", color="k", label="NumPy copy (same bytes)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements (float32)")
    ax.set_ylabel("GB/s of bytes that must move")
    ax.set_title("tensorflow-qdq vs TensorFlow built-ins, CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few cases and sizes, under a minute")
    mode.add_argument("--tiny", action="store_true", help="smallest sizes only (smoke test)")
    p.add_argument("--out", default=None,
                   help="directory for RESULTS.md (CPU section only) and cpu.png; default: print only")
    p.add_argument("--budget", type=float, default=None, help="seconds of repeats per case and size")
    return p.parse_args(argv)


def main(argv=None, default_out=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = "quick" if args.quick else "tiny" if args.tiny else "full"
    sizes = {"full": FULL_SIZES, "quick": QUICK_SIZES, "tiny": TINY_SIZES}[mode]
    cases = (CASES if mode == "full"
             else [c for c in CASES if (c.name, c.layout) in QUICK_NAMES and c.dtype == "float32"])
    budget = args.budget if args.budget is not None else {"full": 0.25, "quick": 0.12, "tiny": 0.01}[mode]
    min_reps, max_reps = (2, 3) if mode == "tiny" else (5, 200)
    out = args.out if args.out is not None else default_out

    info = machine_info()
    load_before = load_average()
    print(f"[bench] {info['cpu']}; TensorFlow {info['tensorflow']}; loops: {info['isa']}; load {load_before}",
          flush=True)
    start = time.perf_counter()
    rows = []
    work = [(c, s) for c in cases for s in sizes if s <= c.max_log2]
    for i, (case, log2) in enumerate(work, 1):
        (ours_s, tf_s, copy_s), best, reps = measure(case, 1 << log2, budget, min_reps, max_reps)
        row = Row(case, log2, ours_s, tf_s, copy_s, reps, best)
        rows.append(row)
        print(f"[bench {i}/{len(work)} {time.perf_counter() - start:5.0f}s] {case.name:10s} {case.layout:11s} "
              f"{case.dtype:8s} 2^{log2:<2d} ours {ours_s * 1e3:9.3f} ms  TF {tf_s * 1e3:9.3f} ms  "
              f"x{row.speedup:6.2f}  {row.gbps(ours_s):6.1f} GB/s ({100 * row.gbps(ours_s) / row.copy_gbps:3.0f}% "
              f"of copy)  reps {reps}", flush=True)
    elapsed = time.perf_counter() - start
    section = markdown(rows, info, load_before, load_average(), mode, elapsed)
    print(table(rows))
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_results(out / "RESULTS.md", section, BEGIN, END)
        plot(rows, out / "cpu.png")
        print(f"[bench] wrote {out / 'RESULTS.md'} (CPU section) and {out / 'cpu.png'}", flush=True)
    return rows


if __name__ == "__main__":
    main(default_out=HERE)
