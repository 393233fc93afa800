"""GPU benchmark of tensorflow-qdq's CUDA kernels, in one command (no TensorFlow needed):

    python benchmarks/gpu.py            # build _core, check, time, write benchmarks/RESULTS.md
    python benchmarks/gpu.py --sizes 20,24 --dtypes float32 --no-write   # a quick look

1. builds tensorflow_qdq._core with nvcc (QDQ_CORE_ONLY=1 python setup.py build_ext --inplace);
2. checks the GPU results bit for bit against the CPU kernels on every timed layout;
3. times, side by side in one run on the same buffers: our forward (given and auto
   range) and V4Grad, per-tensor and per-channel (axis 0, a middle axis, the last
   axis), against a device-to-device copy of the same bytes (the bandwidth ceiling)
   and, where PyTorch is present, torch.fake_quantize_per_tensor_affine /
   fake_quantize_per_channel_affine (auto range: torch.aminmax/amin/amax + the same;
   V4Grad: the masked multiply g * ((x >= lo) & (x <= hi)));
4. prints a table and writes it, with the device name, between the markers
   <!-- gpu:begin --> and <!-- gpu:end --> of benchmarks/RESULTS.md (the rest of the file is kept).

Columns: GB/s = bytes that must move / time (given forward: read + write; auto
forward and V4Grad: two reads + one write); "% bound" = the time a copy at the
measured copy bandwidth needs for those bytes / our time; "vs torch" = PyTorch
time / our time (> 1: we are faster).
"""
import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- gpu:begin -->", "<!-- gpu:end -->"
CHANNELS = 256
QMIN, QMAX = -128, 127  # signed 8-bit, the common case


def build():
    env = dict(os.environ, QDQ_CORE_ONLY="1", QDQ_CUDA=os.environ.get("QDQ_CUDA", "1"))
    print("building tensorflow_qdq._core ...", flush=True)
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT, env=env, check=True)


def layouts(n):
    """(label, shape, axis) for n elements: per-tensor and per-channel on three axes."""
    c = CHANNELS
    return [("per-tensor", (n,), -1), ("axis 0", (c, n // c), 0), ("middle axis", (16, c, n // (16 * c)), 1),
            ("last axis", (n // c, c), 1)]


class Timer:
    def __init__(self, torch):
        self.torch = torch

    def __call__(self, fn, budget_s=0.05):
        t = self.torch
        fn()
        t.cuda.synchronize()
        start, end = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        once = max(start.elapsed_time(end) / 1e3, 1e-6)
        iters = int(min(200, max(5, budget_s / once)))
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters


def torch_dtype(torch, name):
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def host_copy(torch, t):
    """Device tensor -> NumPy (bfloat16 via ml_dtypes), bit-exact."""
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)
    return t.cpu().numpy()


def ranges(shape, axis):
    depth = 1 if axis == -1 else shape[axis]
    lo = np.full(depth, -2.0, np.float64) - np.arange(depth) / depth
    hi = np.full(depth, 2.0, np.float64) + np.arange(depth) / depth
    return lo, hi


class TorchReference:
    """The PyTorch equivalents (same bytes, same range), or None where unsupported."""

    def __init__(self, torch):
        self.torch = torch

    def _scale(self, lo, hi):
        return np.maximum(hi, -lo) / QMAX

    def given(self, x, axis, lo, hi):
        t = self.torch
        scale = self._scale(lo, hi)
        if axis == -1:
            return lambda: t.fake_quantize_per_tensor_affine(x, float(scale[0]), 0, QMIN, QMAX)
        s = t.tensor(scale, dtype=t.float32, device=x.device)
        z = t.zeros(len(scale), dtype=t.int32, device=x.device)
        return lambda: t.fake_quantize_per_channel_affine(x, s, z, axis, QMIN, QMAX)

    def auto(self, x, axis):
        t = self.torch
        z1 = t.zeros((), dtype=t.int32, device=x.device)
        if axis == -1:
            def run():
                lo, hi = t.aminmax(x)
                scale = (t.maximum(hi, -lo).float() / QMAX).reshape(1)
                return t.fake_quantize_per_tensor_affine(x, scale, z1.reshape(1), QMIN, QMAX)
            return run
        dims = [d for d in range(x.dim()) if d != axis]
        z = t.zeros(x.shape[axis], dtype=t.int32, device=x.device)

        def run_channel():
            lo, hi = x.amin(dim=dims), x.amax(dim=dims)
            scale = t.maximum(hi, -lo).float() / QMAX
            return t.fake_quantize_per_channel_affine(x, scale, z, axis, QMIN, QMAX)
        return run_channel

    def gradient(self, g, x, axis, lo, hi):
        t = self.torch
        shape = [1] * x.dim()
        if axis != -1:
            shape[axis] = x.shape[axis]
        lo_t = t.tensor(lo, dtype=x.dtype, device=x.device).reshape(shape)
        hi_t = t.tensor(hi, dtype=x.dtype, device=x.device).reshape(shape)
        return lambda: g * ((x >= lo_t) & (x <= hi_t))


def check(torch, db, core, x, g, axis, lo_h, hi_h, label):
    """GPU == CPU kernels, bit for bit, for the three timed calls."""
    xh, gh = host_copy(torch, x), host_copy(torch, g)
    for given in (True, False):
        want = core.quantize(xh, lo_h, hi_h, range_given=given, axis=axis)
        got = host_copy(torch, db.quantize(x, lo_h, hi_h, range_given=given, axis=axis))
        if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
            raise SystemExit(f"CHECK FAILED: forward {'given' if given else 'auto'} {label} {xh.dtype}")
    want = core.masked_gradient(gh, xh, lo_h, hi_h, axis=axis)
    got = host_copy(torch, db.masked_gradient(g, x, lo_h, hi_h, axis=axis))
    if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
        raise SystemExit(f"CHECK FAILED: V4Grad {label} {xh.dtype}")


def run(args):
    try:
        import torch
    except ImportError as exc:
        raise SystemExit(f"benchmarks/gpu.py times against PyTorch and uses its CUDA buffers: {exc}") from exc
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU visible to PyTorch")

    import device_buffers as db

    from tensorflow_qdq import _core as core

    ok, why = db.available()
    if not ok:
        raise SystemExit(f"cannot benchmark: {why}")
    core.set_cpu_isa("baseline")  # the check's reference: the shared scalar math, as the kernels
    timer = Timer(torch)
    ref = TorchReference(torch)
    rows = []
    for dtype in args.dtypes:
        for log2 in args.sizes:
            n = 1 << log2
            gen = torch.Generator(device="cuda").manual_seed(log2)
            base = torch.randn(n, device="cuda", generator=gen).mul_(1.5).to(torch_dtype(torch, dtype))
            grad = torch.randn(n, device="cuda", generator=gen).to(torch_dtype(torch, dtype))
            out = torch.empty_like(base)
            nbytes = n * base.element_size()
            host_dtype = host_copy(torch, base[:1]).dtype
            copy_dst = torch.empty_like(base)
            t_copy = timer(lambda dst=copy_dst, src=base: dst.copy_(src))
            copy_bw = 2 * nbytes / t_copy
            for label, shape, axis in layouts(n):
                x, g, o = base.view(shape), grad.view(shape), out.view(shape)
                lo, hi = ranges(shape, axis)
                lo_h, hi_h = lo.astype(host_dtype), hi.astype(host_dtype)
                if log2 <= args.check_max:
                    check(torch, db, core, x, g, axis, lo_h, hi_h, label)
                ws_q = torch.empty(max(1, db.workspace_bytes(x, axis=axis)), dtype=torch.uint8, device="cuda")
                ws_g = torch.empty(max(1, db.workspace_bytes(x, axis=axis, gradient=True)), dtype=torch.uint8,
                                   device="cuda")
                cases = [
                    ("forward given", 2, lambda: db.quantize(x, lo_h, hi_h, range_given=True, axis=axis, out=o,
                                                             workspace=ws_q), lambda: ref.given(x, axis, lo, hi)),
                    ("forward auto", 3, lambda: db.quantize(x, axis=axis, out=o, workspace=ws_q),
                     lambda: ref.auto(x, axis)),
                    ("V4Grad", 3, lambda: db.masked_gradient(g, x, lo_h, hi_h, axis=axis, out=o, workspace=ws_g),
                     lambda: ref.gradient(g, x, axis, lo, hi)),
                ]
                for op, passes, ours, theirs in cases:
                    t_ours = timer(ours)
                    try:
                        t_torch = timer(theirs())
                    except (RuntimeError, TypeError) as exc:  # dtype or layout PyTorch does not support
                        t_torch = None
                        why = str(exc).splitlines()[0][:60]
                        print(f"  torch n/a for {op} {label} {dtype}: {why}", flush=True)
                    moved = passes * nbytes
                    rows.append(dict(op=op, layout=label, dtype=dtype, log2=log2, us=t_ours * 1e6,
                                     gbs=moved / t_ours / 1e9, bound=(moved / copy_bw) / t_ours * 100,
                                     torch_us=None if t_torch is None else t_torch * 1e6,
                                     ratio=None if t_torch is None else t_torch / t_ours))
                    print(format_row(rows[-1]), flush=True)
            del base, grad, out, copy_dst
            torch.cuda.empty_cache()
    return rows, torch.cuda.get_device_name(), torch.__version__


HEADER = "| op | layout | dtype | elements | ours µs | GB/s | % bound | torch µs | vs torch |"


def format_row(r):
    torch_us = "n/a" if r["torch_us"] is None else f"{r['torch_us']:.1f}"
    ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    return (f"| {r['op']} | {r['layout']} | {r['dtype']} | 2^{r['log2']} | {r['us']:.1f} | {r['gbs']:.0f} | "
            f"{r['bound']:.0f}% | {torch_us} | {ratio} |")


def summary(rows):
    """The issue's targets, as measured (never asserted)."""
    big = [r for r in rows if r["log2"] >= 24]
    lines = []

    def worst(op, key="bound"):
        sel = [r for r in big if r["op"] == op]
        return min(sel, key=lambda r: r[key]) if sel else None

    for op, target in (("forward given", 90), ("forward auto", 85)):
        w = worst(op)
        if w:
            lines.append(f"- {op}, >= 2^24 elements: worst {w['bound']:.0f}% of the copy bound "
                         f"({w['layout']}, {w['dtype']}, 2^{w['log2']}); target >= {target}%")
    spread = []
    for r in big:
        pt = next((q for q in big if q["op"] == r["op"] and q["dtype"] == r["dtype"] and q["log2"] == r["log2"]
                   and q["layout"] == "per-tensor"), None)
        if pt and r["layout"] != "per-tensor":
            spread.append((r["us"] / pt["us"] - 1) * 100)
    if spread:
        lines.append(f"- per-channel vs per-tensor time, >= 2^24: at most {max(spread):+.0f}%; target within 10%")
    for kind, target in (("per-tensor", 1), ("per-channel", 2)):
        sel = [r["ratio"] for r in big if r["ratio"] is not None and r["op"] != "V4Grad"
               and (r["layout"] == "per-tensor") == (kind == "per-tensor")]
        if sel:
            lines.append(f"- vs PyTorch fake-quant, {kind}, >= 2^24: {min(sel):.2f}x .. {max(sel):.2f}x; "
                         f"target > {target}x")
    return lines


def write_results(rows, device, torch_version, argv):
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [BEGIN, f"## GPU: {device}", "",
            f"`python benchmarks/gpu.py {' '.join(argv)}`".replace(" `", "`") + f" — {now}, PyTorch {torch_version}.",
            "GB/s = bytes that must move / time; % bound = copy-bandwidth time for those bytes / our time; "
            "vs torch = PyTorch time / ours.", "", *summary(rows), "", HEADER,
            "|---|---|---|---|---:|---:|---:|---:|---:|", *map(format_row, rows), END]
    from _results import write_results as write_section  # the one writer of RESULTS.md

    write_section(RESULTS, "\n".join(body), BEGIN, END)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,22,24,26,28", help="log2 element counts (default 20,22,24,26,28)")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--check-max", type=int, default=24, help="check bit-exactness up to 2^this elements")
    parser.add_argument("--no-build", action="store_true", help="use the _core already built")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.dtypes = args.dtypes.split(",")
    if not args.no_build:
        build()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "helpers"))  # the device-buffer bridge, tests/helpers/device_buffers.py
    rows, device, torch_version = run(args)
    print("\n".join(["", f"GPU: {device}", *summary(rows)]))
    if not args.no_write:
        write_results(rows, device, torch_version, argv)


if __name__ == "__main__":
    main()
