"""AVX2 loops against the portable loops, bit for bit, through tensorflow_qdq._core (no
TensorFlow): every op of the core over dtypes, layouts (per tensor, first/middle/last axis),
odd sizes, NaN and zero inputs. Run by tests/test_sanitizers.py under ASan/UBSan, where an
out-of-bounds vector load in a tail would be reported, and by tests/test_generic_lanes.py for
the generic narrow lanes; arguments restrict the dtypes; prints "isa_check: N cases"."""
import sys

import numpy as np

from tensorflow_qdq import _core

try:
    import ml_dtypes

    DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16]
except ImportError:
    DTYPES = [np.float32, np.float64, np.float16]
LAYOUTS = [((0,), -1), ((1,), -1), ((7,), -1), ((33,), -1), ((1000,), -1), ((70001,), -1), ((5, 301), 0),
           ((3, 65), 0), ((4, 6, 37), 1), ((2, 3, 4100), 1), ((1001, 3), 1), ((257, 9), 1), ((2, 70, 3), 1)]
UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def bits(a):
    return np.ascontiguousarray(np.asarray(a)).view(UINT[np.asarray(a).dtype.itemsize])


def both(fn):
    """fn() under the portable loops and under AVX2, as bit patterns."""
    out = []
    for isa in ("baseline", "avx2"):
        assert _core.set_cpu_isa(isa) == isa, f"the CPU or the build has no {isa} loops"
        result = fn()
        out.append([bits(r) for r in (result if isinstance(result, tuple) else (result,))])
    return out


def main(names=()):
    """Every op over DTYPES, or over the dtypes named (e.g. float16 bfloat16)."""
    dtypes = [d for d in DTYPES if not names or np.dtype(d).name in names]
    assert len(dtypes) == len(names) or not names, f"unknown or unavailable dtypes in {names}"
    rng = np.random.default_rng(11)
    cases = 0
    for dtype in dtypes:
        for shape, axis in LAYOUTS:
            depth = 1 if axis == -1 else shape[axis]
            x = (rng.standard_normal(shape) * 3).astype(dtype)
            if x.size > 4:
                x.reshape(-1)[rng.integers(0, x.size, 3)] = np.nan
                x.reshape(-1)[rng.integers(0, x.size, 3)] = -0.0
            g = rng.standard_normal(shape).astype(dtype)
            lo = np.minimum(rng.standard_normal(depth), 0).astype(dtype)
            hi = np.maximum(rng.standard_normal(depth), 0.5).astype(dtype)
            lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
            scalar = (lambda v: v.reshape(())) if axis == -1 else (lambda v: v)
            runs = [
                lambda: _core.quantize(x, scalar(lo), scalar(hi), range_given=False, axis=axis),
                lambda: _core.quantize(x, scalar(lo), scalar(hi), range_given=True, round_mode="HALF_UP", axis=axis),
                lambda: _core.masked_gradient(g, x, scalar(lo), scalar(hi), axis=axis),
                lambda: _core.lsq_gradient(g, x, scalar(lo), scalar(hi), num_bits=4, axis=axis),
            ]
            for delayed in (False, True):
                for updates in (np.zeros(depth, np.int64), np.full(depth, 2, np.int64)):
                    runs.append(lambda d=delayed, u=updates: _core.tracked_quantize(
                        x, scalar(lo32), scalar(hi32), scalar(u), momentum=0.9, delayed=d, axis=axis))
            for run in runs:
                base, avx2 = both(run)
                for b, a in zip(base, avx2):
                    np.testing.assert_array_equal(a, b, err_msg=f"{np.dtype(dtype).name} {shape} axis={axis}")
                cases += 1
    print(f"isa_check: {cases} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
