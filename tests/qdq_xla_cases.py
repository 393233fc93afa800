"""Random quantize-dequantize cases for the XLA and export tests.

A case is one op call: static attributes plus a tensor whose slices (channels, or
the whole tensor) are drawn from a mix of distributions chosen to reach every
branch of SEMANTICS §3: values near rounding ties, values outside given ranges,
degenerate ranges (all zeros, unsigned data <= 0, 1-bit signed), NaN and inf,
negative zeros, and num_bits up to the limits where HALF_UP's float artifacts
appear.
"""

import contextlib

import numpy as np
import tensorflow as tf

DTYPES = (tf.float32, tf.float64, tf.float16, tf.bfloat16)
_BITS = (1, 2, 3, 4, 5, 7, 8, 8, 8, 12, 16, 23, 24, 25, 31, 52)
_KINDS = ("normal", "normal", "uniform", "positive", "negative", "dyadic", "ties", "zeros", "nan", "inf", "tiny")


def random_attrs(rng, dtype, range_given=None):
    """One random set of op attributes (raw axis convention is set by the caller)."""
    signed = bool(rng.random() < 0.7)
    bits = int(rng.choice(_BITS))
    if rng.random() < 0.05:
        bits = 61 if signed else 62
    if dtype in (tf.float16, tf.bfloat16) and bits > 24 and rng.random() < 0.5:
        bits = int(rng.integers(2, 17))
    return dict(
        signed_input=signed,
        num_bits=bits,
        narrow_range=bool(rng.random() < 0.3),
        round_mode=str(rng.choice(["HALF_TO_EVEN", "HALF_UP"])),
        range_given=bool(rng.random() < 0.5) if range_given is None else range_given,
    )


def _finite_limit(dtype):
    return 6e4 if dtype == tf.float16 else 1e30


def random_range(rng, dtype):
    """A given (lo, hi) with lo <= hi in dtype, in float64."""
    magnitude = 10.0 ** rng.uniform(-3, 3)
    pattern = rng.integers(0, 6)
    a, b = rng.normal(size=2) * magnitude
    if pattern == 1:
        a, b = -abs(a), abs(b)
    elif pattern == 2:
        a, b = 0.0, abs(b)
    elif pattern == 3:
        a, b = -abs(a), 0.0
    elif pattern == 4:
        a = b
    elif pattern == 5:
        a, b = -magnitude, magnitude
    lo, hi = sorted(np.asarray([a, b], dtype.as_numpy_dtype).astype(np.float64))
    return lo, hi


def slice_values(rng, n, dtype, lo_hi=None, bits=8):
    """n values of one slice, float64 (cast to dtype by the caller)."""
    kind = rng.choice(_KINDS)
    scale = 10.0 ** rng.uniform(-3, 3)
    if lo_hi is not None:
        scale = max(abs(lo_hi[0]), abs(lo_hi[1]), 1e-3) * 1.5
    if kind == "normal":
        v = rng.normal(size=n) * scale
    elif kind == "uniform":
        v = rng.uniform(-scale, scale, size=n)
    elif kind == "positive":
        v = rng.uniform(0, scale, size=n)
    elif kind == "negative":
        v = -rng.uniform(0, scale, size=n)
    elif kind == "dyadic":
        v = rng.integers(-64, 65, size=n) / 2.0 ** rng.integers(0, 8)
    elif kind == "ties":
        # (k + 1/2) grid steps, so v * scale lands on or next to a rounding tie.
        steps = 2.0 ** min(bits - 1, 20)
        v = (rng.integers(-int(steps), int(steps) + 1, size=n) + 0.5) * (scale / steps)
    elif kind == "zeros":
        v = np.where(rng.random(n) < 0.5, -0.0, 0.0)
    elif kind == "tiny":
        v = rng.normal(size=n) * 1e-30 if dtype in (tf.float32, tf.float64) else rng.normal(size=n) * 1e-3
    else:
        v = rng.normal(size=n) * scale
    if kind == "nan":
        v[rng.random(n) < 0.2] = np.nan
    if kind == "inf":
        v[rng.integers(0, n)] = np.inf if rng.random() < 0.5 else -np.inf
    limit = _finite_limit(dtype)
    return np.clip(v, -limit, limit, out=v, where=np.isfinite(v))


def per_tensor_case(rng, dtype, shape, attrs):
    """(x, input_min, input_max) for a per-tensor call (numpy arrays of dtype)."""
    np_dtype = dtype.as_numpy_dtype
    lo_hi = random_range(rng, dtype) if attrs["range_given"] else None
    x = slice_values(rng, int(np.prod(shape)), dtype, lo_hi, attrs["num_bits"]).reshape(shape)
    lo, hi = lo_hi if lo_hi is not None else rng.normal(size=2)  # auto ignores them
    return x.astype(np_dtype), np.asarray(lo, np_dtype), np.asarray(hi, np_dtype)


def per_channel_case(rng, dtype, depth, per_slice, axis_layout, attrs):
    """(x, input_min, input_max, axis): `depth` channels of `per_slice` values each.

    axis_layout: 0 -> x is [depth, per_slice]; 1 -> [per_slice, depth];
    2 -> [2, depth, per_slice // 2] with axis 1.
    """
    np_dtype = dtype.as_numpy_dtype
    rows, los, his = [], [], []
    for _ in range(depth):
        lo_hi = random_range(rng, dtype) if attrs["range_given"] else None
        rows.append(slice_values(rng, per_slice, dtype, lo_hi, attrs["num_bits"]))
        lo, hi = lo_hi if lo_hi is not None else rng.normal(size=2)
        los.append(lo)
        his.append(hi)
    data = np.stack(rows)  # [depth, per_slice]
    if axis_layout == 0:
        x, axis = data, 0
    elif axis_layout == 1:
        x, axis = data.T, 1
    else:
        x, axis = np.transpose(data.reshape(depth, 2, per_slice // 2), (1, 0, 2)), 1
    return np.ascontiguousarray(x).astype(np_dtype), np.asarray(los, np_dtype), np.asarray(his, np_dtype), axis


def bits_of(a):
    """A comparable integer view: every NaN maps to one pattern, everything else keeps its bits."""
    a = np.atleast_1d(np.asarray(a))
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    out = a.view(width).copy()
    out[np.isnan(a.astype(np.float64))] = 0
    return out


def unsigned_zero_slices(x, axis, attrs):
    """Elements whose zero's sign is unspecified (SEMANTICS §3.4 and cc/qdq_math.h).

    A degenerate slice's zero takes the sign of inv_scale = max / qmax. With a measured
    range whose max is a zero, and both +0 and -0 in the slice, which zero the max is
    depends on the reduction order (the kernels' vector lanes and shards, XLA's
    reduction tree), so the output zeros' sign is not defined there.
    """
    x = np.asarray(x, np.float64)
    mask = np.zeros(x.shape, bool)
    if attrs.get("range_given", True) or x.size == 0:
        return mask
    b, signed = attrs["num_bits"], attrs["signed_input"]
    qmin = -(2 ** (b - 1)) + int(attrs["narrow_range"]) if signed else 0
    qmax = 2 ** (b - 1) - 1 if signed else 2**b - 1
    channels = [slice(None)] if axis == -1 else range(x.shape[axis])
    for c in channels:
        index = (slice(None),) * axis + (c,) if axis != -1 else (Ellipsis,)
        xs = x[index]
        finite = xs[~np.isnan(xs)]
        if finite.size == 0 or qmax == 0:
            continue
        lo, hi = finite.min(), finite.max()
        zeros = finite[finite == 0]
        mixed = np.signbit(zeros).any() and not np.signbit(zeros).all()
        if hi == 0 and mixed and not qmin * lo > 0:
            mask[index] = True
    return mask


def assert_same_bits(actual, expected, what="", sign_free=None):
    """Bit equality (any NaN equals any NaN); where sign_free, +0 and -0 are also equal."""
    a, e = bits_of(actual), bits_of(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    if sign_free is not None and sign_free.any():
        both_zero = np.atleast_1d(sign_free) & (np.atleast_1d(actual) == 0) & (np.atleast_1d(expected) == 0)
        a = np.where(both_zero, 0, a).astype(a.dtype)
        e = np.where(both_zero, 0, e).astype(e.dtype)
    bad = np.nonzero(a != e)
    if bad[0].size:
        idx = tuple(i[0] for i in bad)
        raise AssertionError(
            f"{what}: {bad[0].size} of {a.size} elements differ; first at {idx}: "
            f"{np.atleast_1d(actual)[idx]!r} != {np.atleast_1d(expected)[idx]!r}"
        )


ISAS = ("best", "baseline")


@contextlib.contextmanager
def cpu_loops(isa):
    """Runs the kernels on one set of CPU loops: "best" (AVX2 where the CPU has it, what
    users run) or "baseline" (the portable loops, cc/qdq_math.h element by element)."""
    from tensorflow_qdq import _isa

    with _isa.using(isa):
        yield
