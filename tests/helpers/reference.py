"""The one NumPy model of the quantize-and-dequantize family: the tests and the fuzz suite
(tests/fuzz) both check the ops against it.

Independent of the library and of TensorFlow: NumPy (and ml_dtypes for bfloat16) only. It
follows docs/SEMANTICS.md §3-§5. Every arithmetic step is done in float64 and then rounded to
the compute type C (float32 for bfloat16/half/float32, float64 for float64). For C = float32
this is exact: a product or quotient of two float32 values rounded once to float64 and again
to float32 equals the correctly rounded float32 result (53 >= 2*24 + 2), so the model is
bit-exact without doing float32 arithmetic. Values in flight are float64 arrays holding C
values; per-channel slices are `[:, c, :]` of the `[outer, depth, inner]` view.

Denormals (SEMANTICS §3.8): TensorFlow runs its CPU kernels with flush-to-zero /
denormals-are-zero on its own threads, not necessarily on the caller's, so the model has two
modes: ``daz=True`` (every input denormal read as a signed zero, every denormal result
flushed; the default) and ``daz=False`` (IEEE). The fuzz oracle accepts either, element by
element.
"""

import math

import ml_dtypes
import numpy as np

FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")
NP_DTYPES = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def np_dtype(dtype):
    """A dtype name of FLOAT_DTYPES or anything np.dtype takes -> the NumPy dtype."""
    return NP_DTYPES[dtype] if isinstance(dtype, str) and dtype in NP_DTYPES else np.dtype(dtype)


def compute_dtype(dtype):
    return np.dtype(np.float64) if np_dtype(dtype) == np.float64 else np.dtype(np.float32)


def max_bits(signed_input):
    return 61 if signed_input else 62


def int_range(signed_input, num_bits, narrow_range):
    """qmin, qmax as exact Python ints (SEMANTICS §3.1)."""
    if not signed_input:
        return 0, 2**num_bits - 1
    half = 2 ** (num_bits - 1)
    return -half + (1 if narrow_range else 0), half - 1


class Arith:
    """float64 arithmetic rounded to the compute type after every step (optionally FTZ/DAZ)."""

    def __init__(self, cdtype, daz):
        self.c = np.dtype(cdtype)
        self.daz = daz
        self.tiny = float(np.finfo(self.c).tiny)
        self.max = float(np.finfo(self.c).max)

    def r(self, v):
        """Round float64 values to C (and flush denormals in DAZ mode), returned as float64."""
        with np.errstate(all="ignore"):
            out = np.asarray(v, np.float64).astype(self.c).astype(np.float64)
        if self.daz:
            out = np.where((out != 0) & (np.abs(out) < self.tiny), np.copysign(0.0, out), out)
        return out

    def mul(self, a, b):
        with np.errstate(all="ignore"):
            return self.r(np.multiply(a, b, dtype=np.float64))

    def div(self, a, b):
        with np.errstate(all="ignore"):
            return self.r(np.divide(a, b, dtype=np.float64))

    def add(self, a, b):
        with np.errstate(all="ignore"):
            return self.r(np.add(a, b, dtype=np.float64))


def load(values, dtype, arith):
    """Storage values -> compute values (exact widening, then DAZ if asked) as float64."""
    return arith.r(np.asarray(values, np_dtype(dtype)).astype(np.float64))


def store(values, dtype):
    """Compute values (float64 holding C values) -> storage dtype, round to nearest even."""
    with np.errstate(all="ignore"):
        return np.asarray(values, np.float64).astype(compute_dtype(dtype)).astype(np_dtype(dtype))


def channel_view(a, axis):
    """[outer, depth, inner] view of a (per-tensor: [1, 1, n])."""
    if axis == -1:
        return a.reshape(1, 1, -1)
    shape = a.shape
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return a.reshape(outer, shape[axis], inner)


def slice_params(lo, hi, qmin, qmax, ar):
    """SEMANTICS §3.4 on arrays of per-channel bounds (compute values): (lo, hi, scale,
    inv_scale, degenerate)."""
    cq_min = float(ar.r(np.float64(np.array(qmin, np.int64).astype(ar.c))))
    cq_max = float(ar.r(np.float64(np.array(qmax, np.int64).astype(ar.c))))
    lo_usable = ar.mul(cq_min, lo) > 0
    hi_usable = ar.mul(cq_max, hi) > 0
    with np.errstate(all="ignore"):
        s_lo = np.where(lo_usable, ar.div(cq_min, lo), ar.max)
        s_hi = np.where(hi_usable, ar.div(cq_max, hi), ar.max)
        take_lo = s_lo < s_hi
        inv_lo = ar.div(lo, cq_min)  # qmin == 0 gives +-inf/NaN here, as in C
        inv_hi = ar.div(hi, cq_max)
    scale = np.where(take_lo, s_lo, s_hi)
    inv = np.where(take_lo, inv_lo, inv_hi)
    new_lo = np.where(take_lo, lo, ar.mul(cq_min, inv_hi))
    new_hi = np.where(take_lo, ar.mul(cq_max, inv_lo), hi)
    degenerate = ~lo_usable & ~hi_usable
    return new_lo, new_hi, scale, inv, degenerate


def degenerate(lo, hi, signed_input, num_bits, narrow_range, dtype, daz=True):
    """Whether a slice with bounds (lo, hi) has no usable side (SEMANTICS §3.4)."""
    ar = Arith(compute_dtype(dtype), daz)
    bounds = (load(np.ravel(b), dtype, ar) for b in (lo, hi))
    return bool(slice_params(*bounds, *int_range(signed_input, num_bits, narrow_range), ar)[4][0])


def measured_range(v):
    """Per-channel NaN-ignoring min/max of a [outer, depth, inner] array; all-NaN -> NaN.

    Among equal extremes (+0.0 and -0.0) the first in memory order wins, as in the kernels'
    sequential scan and their in-order merge of per-shard partial ranges."""
    moved = np.moveaxis(v, 1, 0).reshape(v.shape[1], -1)
    rows = np.arange(moved.shape[0])
    with np.errstate(invalid="ignore"):
        lo = np.where(np.isnan(moved), np.inf, moved).min(axis=1, initial=np.inf)
        hi = np.where(np.isnan(moved), -np.inf, moved).max(axis=1, initial=-np.inf)
    if moved.shape[1]:
        lo_first = moved[rows, np.argmax(moved == lo[:, None], axis=1)]
        hi_first = moved[rows, np.argmax(moved == hi[:, None], axis=1)]
        lo = np.where(np.isfinite(lo), lo_first, lo)
        hi = np.where(np.isfinite(hi), hi_first, hi)
    empty = ~(~np.isnan(moved)).any(axis=1)
    lo[empty] = np.nan
    hi[empty] = np.nan
    return lo, hi


def _rounding(round_mode, ar):
    if round_mode == "HALF_UP":  # TF's floor(y + 0.5), the add rounded in C
        return lambda y: np.floor(ar.add(y, 0.5))
    assert round_mode == "HALF_TO_EVEN", round_mode
    return np.rint


def _operands(x, dtype, daz):
    """x as an array of `dtype` (default: its own), the dtype, and the arithmetic of its compute type."""
    dtype = np_dtype(dtype) if dtype is not None else np.asarray(x).dtype
    return np.asarray(x, dtype), dtype, Arith(compute_dtype(dtype), daz)


def quantize(x, input_min=None, input_max=None, *, signed_input=True, num_bits=8, range_given=False,
             round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1, dtype=None, daz=True):
    """The forward pass of V2/V3/V4 (SEMANTICS §3, valid arguments) on x, of `dtype` (default:
    x's own); the bounds are read only when range_given. Returns an array of that dtype."""
    x, dtype, ar = _operands(x, dtype, daz)
    if x.size == 0:
        return x.copy()
    v = channel_view(load(x, dtype, ar), axis)
    if range_given:
        lo, hi = load(np.ravel(input_min), dtype, ar), load(np.ravel(input_max), dtype, ar)
    else:
        lo, hi = measured_range(v)
    qmin, qmax = int_range(signed_input, num_bits, narrow_range)
    new_lo, new_hi, scale, inv, degenerate_ = slice_params(lo, hi, qmin, qmax, ar)
    b = lambda a: a.reshape(1, -1, 1)  # noqa: E731 - broadcast per channel
    if range_given:
        v = np.where(b(new_hi) < v, b(new_hi), v)
        v = np.where(v < b(new_lo), b(new_lo), v)
    rnd = _rounding(round_mode, ar)
    out = ar.mul(rnd(ar.mul(v, b(scale))), b(inv))
    # Degenerate slices (SEMANTICS §3.4 FIX): zeros, signed as TF's own zero round(v * T_MAX) * inv
    # would be: round(v) for v = +-0, else v's sign; times inv where inv is finite.
    r = np.where(v == 0, rnd(v), np.copysign(0.0, v))
    degenerate_out = np.where(np.isfinite(b(inv)), ar.mul(r, b(inv)), r)
    out = np.where(b(degenerate_), np.where(np.isnan(v), v, degenerate_out), out)
    return store(out.reshape(x.shape), dtype)


def masked_gradient(g, x, input_min, input_max, *, axis=-1, dtype=None, daz=True, fold_unit=False):
    """V4Grad's input_backprop (SEMANTICS §5): g * (lo[c] <= x <= hi[c]) in the compute type.

    ``fold_unit``: the compiler may turn ``g * 1`` into ``g`` (an exact IEEE identity), so on
    a DAZ thread a denormal g can come out unflushed where the mask is 1."""
    x, dtype, ar = _operands(x, dtype, daz)
    if x.size == 0:
        return x.copy()
    xv = channel_view(load(x, dtype, ar), axis)
    gv = channel_view(load(g, dtype, ar), axis)
    clo = load(np.ravel(input_min), dtype, ar).reshape(1, -1, 1)
    chi = load(np.ravel(input_max), dtype, ar).reshape(1, -1, 1)
    mask = (xv >= clo) & (xv <= chi)
    out = ar.mul(gv, mask.astype(np.float64))
    if fold_unit:
        raw = channel_view(np.asarray(g, dtype).astype(np.float64), axis)
        out = np.where(mask, raw, out)
    return store(out.reshape(x.shape), dtype)


def lsq_gradient(grad, x, input_min, input_max, *, signed_input=True, num_bits=8, round_mode="HALF_TO_EVEN",
                 narrow_range=False, axis=-1):
    """QuantizeAndDequantizeLsqGrad from LSQ's definition (Esser et al. 2020): for
    q = s * round(clamp(x / s, qmin, qmax)), dq/ds is round(x / s) - x / s inside the
    range and qmin / qmax below / above it (0 for NaN x and degenerate slices); the step
    gradient of a slice is sum(grad * dq/ds) / sqrt(n * max(qmax, 1)).

    Returns (input_backprop in x's dtype, step gradient per slice in float64, and the sum of
    |grad * dq/ds| per slice, the scale of the float64 rounding error the kernels may differ by).
    The residual is computed in the compute type, operation by operation, as the forward pass."""
    x = np.asarray(x)
    dtype = x.dtype
    ar = Arith(compute_dtype(dtype), True)
    qmin, qmax = int_range(signed_input, num_bits, narrow_range)
    v3 = channel_view(load(x, dtype, ar), axis)
    g3 = channel_view(np.asarray(grad, dtype).astype(np.float64), axis)
    lo, hi = load(np.ravel(input_min), dtype, ar), load(np.ravel(input_max), dtype, ar)
    p_lo, p_hi, scale, _, degenerate_ = slice_params(lo, hi, qmin, qmax, ar)
    b = lambda a: a.reshape(1, -1, 1)  # noqa: E731 - broadcast per channel
    v = np.where(b(p_hi) < v3, b(p_hi), v3)
    v = np.where(v < b(p_lo), b(p_lo), v)
    y = ar.mul(v, b(scale))
    d = ar.add(_rounding(round_mode, ar)(y), -y)  # in C, as the kernel subtracts
    d = np.where(v3 < b(lo), float(ar.r(qmin)), np.where(v3 > b(hi), float(ar.r(qmax)), d))
    d = np.where(np.isnan(v3) | b(degenerate_), 0.0, d)
    with np.errstate(all="ignore"):
        terms = g3 * d
    n = v3.shape[0] * v3.shape[2]
    norm = np.sqrt(n * max(qmax, 1)) if n else 1.0
    steps = terms.sum(axis=(0, 2)) / norm
    magnitudes = np.abs(terms).sum(axis=(0, 2)) / norm
    return masked_gradient(grad, x, input_min, input_max, axis=axis, daz=False), steps, magnitudes


def close_in_dtype(got, want, magnitude, dtype):
    """Whether got (stored in dtype) is want (float64) up to the rounding to dtype and a
    float64 summation-order error (a few ulps of double on the sum of magnitudes)."""
    want_t = np.asarray(want).astype(dtype).astype(np.float64)
    got = np.asarray(got).astype(np.float64)
    eps = float(np.finfo(np.dtype(dtype)).eps) if np.dtype(dtype) != np.float64 else 0.0
    tol = eps * np.abs(want_t) + 1e-12 * np.asarray(magnitude) + float(np.finfo(np.float64).tiny)
    return bool(np.all(np.abs(got - want_t) <= tol))


def as_double_for_check(values, dtype, daz):
    """What the kernel's min <= max check sees: float64 of the value read as float (DAZ aside)."""
    ar = Arith(compute_dtype(dtype), daz)
    return load(np.ravel(values), dtype, ar)


def same_or_nan(a, b):
    """Element-wise: bit-identical, or both NaN (NaN payload and sign are not part of the contract)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return np.zeros(a.shape, bool) if a.shape == b.shape else np.array(False)
    width = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    bits = a.view(width) == b.view(width)
    both_nan = np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64))
    return bits | both_nan


def is_finite_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and math.isfinite(v)
