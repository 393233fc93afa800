"""Float NumPy model of SEMANTICS §3 (forward) and §5 (V4Grad), independent of TensorFlow.

The model computes in the compute type of the element type (float32 for half,
bfloat16 and float32; float64 for float64), rounding after every operation like
the kernels do, and flushes denormals to zero (TensorFlow's CPU kernels run with
FTZ/DAZ; SEMANTICS §3.8). Per-channel slices are `[:, c, :]` of the `[outer, depth,
inner]` view of the input.
"""
import numpy as np

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is a test dependency
    ml_dtypes = None


def compute_dtype(dtype):
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def int_range(signed_input, num_bits, narrow_range):
    if signed_input:
        return -(1 << (num_bits - 1)) + (1 if narrow_range else 0), (1 << (num_bits - 1)) - 1
    return 0, (1 << num_bits) - 1


def _ftz(a):
    a = np.asarray(a)
    tiny = np.finfo(a.dtype).tiny
    return np.where(np.abs(a) < tiny, np.copysign(a.dtype.type(0), a), a).astype(a.dtype)


def _mul(a, b):
    return _ftz(_ftz(a) * _ftz(b))


def _div(a, b):
    with np.errstate(all="ignore"):
        return _ftz(_ftz(a) / _ftz(b))


def slice_params(lo, hi, signed_input, num_bits, narrow_range, C):
    """SEMANTICS §3.4 for one slice: (lo, hi, scale, inv_scale, degenerate), all in C."""
    qmin_i, qmax_i = int_range(signed_input, num_bits, narrow_range)
    qmin, qmax = C.type(float(qmin_i)), C.type(float(qmax_i))
    lo, hi = C.type(lo), C.type(hi)
    big = np.finfo(C).max
    with np.errstate(all="ignore"):
        lo_usable = _mul(qmin, lo) > 0
        hi_usable = _mul(qmax, hi) > 0
        s_lo = _div(qmin, lo) if lo_usable else big
        s_hi = _div(qmax, hi) if hi_usable else big
        if s_lo < s_hi:
            scale, inv = s_lo, _div(lo, qmin)
            hi = _mul(qmax, inv)
        else:
            scale, inv = s_hi, _div(hi, qmax)
            lo = _mul(qmin, inv)
    return C.type(lo), C.type(hi), C.type(scale), C.type(inv), not lo_usable and not hi_usable


def _quantize_slice(x, lo, hi, attrs, C):
    lo, hi, scale, inv, degenerate = slice_params(lo, hi, attrs["signed_input"], attrs["num_bits"],
                                                  attrs["narrow_range"], C)
    with np.errstate(all="ignore"):
        if attrs["range_given"]:
            v = np.where(hi < x, hi, x).astype(C)
            v = np.where(v < lo, lo, v).astype(C)
        else:
            v = x
        rnd = (lambda y: np.floor(_ftz(y + C.type(0.5)))) if attrs["round_mode"] == "HALF_UP" else np.rint
        if degenerate:  # a zero, with the sign of TF's round(v * T_MAX) * inv where that is a zero
            r = np.where(v == 0, rnd(v), np.copysign(C.type(0), v)).astype(C)
            return np.where(np.isnan(v), v, r * inv if np.isfinite(inv) else r).astype(C)
        return _mul(rnd(_mul(v, scale)), inv)


def _view3(shape, axis):
    if axis == -1:
        return 1, 1, int(np.prod(shape, dtype=np.int64))
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


def measured_range(x3):
    """NaN-ignoring min/max of one [outer, inner] slice; NaN bounds when nothing is left."""
    finite = x3[~np.isnan(x3)]
    if finite.size == 0:
        return np.nan, np.nan
    return finite.min(), finite.max()


def quantize(x, input_min, input_max, *, signed_input=True, num_bits=8, range_given=False,
             round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1):
    """The forward pass of V2/V3/V4 (SEMANTICS §3) on a NumPy array of any supported dtype."""
    x = np.asarray(x)
    T = x.dtype
    C = compute_dtype(T)
    attrs = dict(signed_input=signed_input, num_bits=num_bits, range_given=range_given,
                 round_mode=round_mode, narrow_range=narrow_range)
    xc = _ftz(x.astype(C))
    outer, depth, inner = _view3(x.shape, axis)
    x3 = xc.reshape(outer, depth, inner)
    out = np.empty_like(x3)
    lo_all = np.asarray(input_min, dtype=T).astype(C).reshape(-1)
    hi_all = np.asarray(input_max, dtype=T).astype(C).reshape(-1)
    for c in range(depth):
        if range_given:
            lo, hi = lo_all[c], hi_all[c]
        else:
            lo, hi = measured_range(x3[:, c, :])
        out[:, c, :] = _quantize_slice(x3[:, c, :], lo, hi, attrs, C)
    return out.reshape(x.shape).astype(T)


def gradient(grad, x, input_min, input_max, axis=-1):
    """V4Grad's input_backprop: grad * (lo <= x <= hi), per channel along axis."""
    x = np.asarray(x)
    g = np.asarray(grad, dtype=x.dtype)
    C = compute_dtype(x.dtype)
    outer, depth, inner = _view3(x.shape, axis)
    x3 = x.astype(C).reshape(outer, depth, inner)
    g3 = g.astype(C).reshape(outer, depth, inner)
    lo = np.asarray(input_min, dtype=x.dtype).astype(C).reshape(-1)
    hi = np.asarray(input_max, dtype=x.dtype).astype(C).reshape(-1)
    out = np.empty_like(g3)
    for c in range(depth):
        xs = x3[:, c, :]
        mask = ((xs >= lo[c]) & (xs <= hi[c])).astype(C)
        with np.errstate(invalid="ignore"):  # inf gradient * 0 mask is NaN, as in the kernel
            out[:, c, :] = g3[:, c, :] * mask
    return out.reshape(x.shape).astype(x.dtype)


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
    T = x.dtype
    C = compute_dtype(T)
    qmin, qmax = int_range(signed_input, num_bits, narrow_range)
    outer, depth, inner = _view3(x.shape, axis)
    x3 = _ftz(x.astype(C)).reshape(outer, depth, inner)
    g3 = np.asarray(grad, dtype=T).astype(C).reshape(outer, depth, inner)
    lo_all = np.asarray(input_min, dtype=T).astype(C).reshape(-1)
    hi_all = np.asarray(input_max, dtype=T).astype(C).reshape(-1)
    rnd = (lambda y: np.floor(_ftz(y + C.type(0.5)))) if round_mode == "HALF_UP" else np.rint
    steps, magnitudes = np.zeros(depth), np.zeros(depth)
    n = outer * inner
    for c in range(depth):
        p_lo, p_hi, scale, _, degenerate = slice_params(lo_all[c], hi_all[c], signed_input, num_bits, narrow_range, C)
        xs, gs = x3[:, c, :], g3[:, c, :]
        with np.errstate(all="ignore"):
            v = np.where(p_hi < xs, p_hi, xs).astype(C)
            v = np.where(v < p_lo, p_lo, v).astype(C)
            y = _mul(v, scale)
            d = (rnd(y) - y).astype(np.float64)
            d = np.where(xs < lo_all[c], float(qmin), np.where(xs > hi_all[c], float(qmax), d))
            d = np.where(np.isnan(xs) | degenerate, 0.0, d)
            terms = gs.astype(np.float64) * d
        steps[c] = terms.sum() / np.sqrt(n * max(qmax, 1)) if n else 0.0
        magnitudes[c] = np.abs(terms).sum() / np.sqrt(n * max(qmax, 1)) if n else 0.0
    return gradient(grad, x, input_min, input_max, axis), steps, magnitudes


def close_in_dtype(got, want, magnitude, dtype):
    """Whether got (stored in dtype) is want (float64) up to the rounding to dtype and a
    float64 summation-order error (a few ulps of double on the sum of magnitudes)."""
    want_t = np.asarray(want).astype(dtype).astype(np.float64)
    got = np.asarray(got).astype(np.float64)
    eps = float(np.finfo(np.dtype(dtype)).eps) if np.dtype(dtype) != np.float64 else 0.0
    tol = eps * np.abs(want_t) + 1e-12 * np.asarray(magnitude) + float(np.finfo(np.float64).tiny)
    return bool(np.all(np.abs(got - want_t) <= tol))
