"""The fuzz suite's own float64 reference model of the quantize-and-dequantize family.

Independent of the library and of TensorFlow: NumPy only. It follows SEMANTICS §3-§5. Every
arithmetic step is done in float64 and then rounded to the compute type C (float32 for
bfloat16/half/float32, float64 for float64). For C = float32 this is exact: a product or
quotient of two float32 values rounded once to float64 and again to float32 equals the
correctly rounded float32 result (53 >= 2*24 + 2), so the model is bit-exact without
ever doing float32 arithmetic.

Denormals (SEMANTICS §3.8): TensorFlow runs kernels with flush-to-zero / denormals-are-zero
on its own threads but not necessarily on the caller's thread, so the model has two
modes: ``daz=False`` (IEEE) and ``daz=True`` (every input denormal read as a signed zero,
every denormal result flushed). The oracle accepts, element by element, either mode.

Validation: :func:`violations` lists the arguments a call breaks (SEMANTICS §4); a call with no
violation must succeed, a call with some must raise an error naming one of them.
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


def compute_dtype(dtype):
    return np.float64 if dtype == "float64" else np.float32


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
    return arith.r(np.asarray(values, NP_DTYPES[dtype]).astype(np.float64))


def store(values, dtype):
    """Compute values (float64 holding C values) -> storage dtype, round to nearest even."""
    c = compute_dtype(dtype)
    with np.errstate(all="ignore"):
        return np.asarray(values, np.float64).astype(c).astype(NP_DTYPES[dtype])


def channel_view(a, axis):
    """[outer, depth, inner] view of a (per-tensor: [1, 1, n])."""
    if axis == -1:
        return a.reshape(1, 1, -1)
    shape = a.shape
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    return a.reshape(outer, shape[axis], inner)


def slice_params(lo, hi, qmin, qmax, ar):
    """SEMANTICS §3.4 on arrays of per-channel bounds (compute values)."""
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


def quantize(x, dtype, lo_given, hi_given, *, signed_input, num_bits, range_given, round_half_up,
             narrow_range, axis, daz):
    """Forward pass of V2/V3/V4 (valid arguments). Returns an array of `dtype`."""
    x = np.asarray(x, NP_DTYPES[dtype])
    if x.size == 0:
        return x.copy()
    ar = Arith(compute_dtype(dtype), daz)
    v = channel_view(load(x, dtype, ar), axis)
    if range_given:
        lo = load(np.ravel(lo_given), dtype, ar)
        hi = load(np.ravel(hi_given), dtype, ar)
    else:
        lo, hi = measured_range(v)
    qmin, qmax = int_range(signed_input, num_bits, narrow_range)
    new_lo, new_hi, scale, inv, degenerate = slice_params(lo, hi, qmin, qmax, ar)
    b = lambda a: a.reshape(1, -1, 1)  # noqa: E731 - broadcast per channel
    if range_given:
        v = np.where(b(new_hi) < v, b(new_hi), v)
        v = np.where(v < b(new_lo), b(new_lo), v)
    y = ar.mul(v, b(scale))
    if round_half_up:
        rounded = np.floor(ar.add(y, 0.5))
    else:
        rounded = np.rint(y)
    out = ar.mul(rounded, b(inv))
    # Degenerate slices (SEMANTICS §3.4 FIX): zeros, signed as TF's own zero round(v * T_MAX) * inv
    # would be: round(v) for v = +-0, else v's sign; times inv where inv is finite.
    zero_round = np.floor(ar.add(v, 0.5)) if round_half_up else np.rint(v)
    r = np.where(v == 0, zero_round, np.copysign(0.0, v))
    degenerate_out = np.where(np.isfinite(b(inv)), ar.mul(r, b(inv)), r)
    out = np.where(b(degenerate), np.where(np.isnan(v), v, degenerate_out), out)
    return store(out.reshape(x.shape), dtype)


def masked_gradient(g, x, dtype, lo, hi, axis, daz, fold_unit=False):
    """V4Grad's input_backprop: g * (lo[c] <= x <= hi[c]) in the compute type.

    ``fold_unit``: the compiler may turn ``g * 1`` into ``g`` (an exact IEEE identity), so on
    a DAZ thread a denormal g can come out unflushed where the mask is 1."""
    x = np.asarray(x, NP_DTYPES[dtype])
    if x.size == 0:
        return x.copy()
    ar = Arith(compute_dtype(dtype), daz)
    xv = channel_view(load(x, dtype, ar), axis)
    gv = channel_view(load(g, dtype, ar), axis)
    clo = load(np.ravel(lo), dtype, ar).reshape(1, -1, 1)
    chi = load(np.ravel(hi), dtype, ar).reshape(1, -1, 1)
    mask = (xv >= clo) & (xv <= chi)
    out = ar.mul(gv, mask.astype(np.float64))
    if fold_unit:
        raw = channel_view(np.asarray(g, NP_DTYPES[dtype]).astype(np.float64), axis)
        out = np.where(mask, raw, out)
    return store(out.reshape(x.shape), dtype)


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
