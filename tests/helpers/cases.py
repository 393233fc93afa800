"""Random quantize-and-dequantize cases: the one case generator of the tests (the fuzz suite,
tests/fuzz/, has its own strategies). Generators are seeded, so a failing case is reproducible
from its index. Two kinds, for two jobs:

* ``Case`` / ``random_case(s)``: op calls checked against TensorFlow's kernels and the NumPy model
  (conformance, gradients, half/bfloat16, edge cases). A Case holds the input, the range tensors
  and every attribute; ``kwargs(op)`` gives the keyword arguments of ``tf.raw_ops.<op>`` /
  ``tensorflow_qdq.raw_ops.<op>``. Values are finite (TensorFlow is the reference).
* ``random_attrs`` + ``per_tensor_case`` / ``per_channel_case``: calls for the XLA composite and
  the export tests, checked against our own kernels. Each slice (channel, or the whole tensor) is
  drawn from a mix of distributions chosen to reach every branch of SEMANTICS §3: values near
  rounding ties, values outside given ranges, degenerate ranges (all zeros, unsigned data <= 0,
  1-bit signed), NaN and inf, negative zeros, and num_bits up to the limits where HALF_UP's float
  artifacts appear.
"""
import contextlib
import dataclasses

import numpy as np
import tensorflow as tf

from tests.helpers import reference

# Bit widths: mostly the useful ones, plus the edges of float32/float64 precision and the maximum.
_BITS = list(range(1, 17)) + [23, 24, 25, 31, 32, 40, 52, 53, 54, 60, 61, 62]
_DIMS = [1, 1, 2, 3, 4, 5, 7, 8, 16, 33]

# name -> number of comparisons made, printed in pytest's terminal summary (conftest.py).
CHECKED = {}


def record(name, count):
    CHECKED[name] = CHECKED.get(name, 0) + count


@dataclasses.dataclass
class Case:
    x: np.ndarray
    input_min: np.ndarray
    input_max: np.ndarray
    signed_input: bool = True
    num_bits: int = 8
    range_given: bool = False
    round_mode: str = "HALF_TO_EVEN"
    narrow_range: bool = False
    axis: int = -1

    def kwargs(self, op="QuantizeAndDequantizeV2"):
        # 0-d arrays, never NumPy scalars: np.float64 is a Python float, and TF's eager scalar cache
        # keys on the value, so -0.0 and +0.0 would share one cached tensor.
        kw = dict(input=np.asarray(self.x), input_min=np.asarray(self.input_min),
                  input_max=np.asarray(self.input_max),
                  signed_input=self.signed_input, range_given=self.range_given,
                  narrow_range=self.narrow_range, axis=self.axis)
        if op.endswith("V3"):
            kw["num_bits"] = np.int32(self.num_bits)
        else:
            kw["num_bits"] = self.num_bits
            kw["round_mode"] = self.round_mode
        return kw

    def reference(self):
        return reference.quantize(self.x, self.input_min, self.input_max, signed_input=self.signed_input,
                                  num_bits=self.num_bits, range_given=self.range_given,
                                  round_mode=self.round_mode, narrow_range=self.narrow_range, axis=self.axis)

    def slices(self):
        """The per-slice (lo, hi) the forward pass uses (given, or measured)."""
        depth = 1 if self.axis == -1 else self.x.shape[self.axis]
        if self.range_given:
            lo = np.asarray(self.input_min).reshape(-1)
            hi = np.asarray(self.input_max).reshape(-1)
            return [(lo[c], hi[c]) for c in range(depth)]
        arith = reference.Arith(reference.compute_dtype(self.x.dtype), daz=True)
        view = reference.channel_view(reference.load(self.x, self.x.dtype, arith), self.axis)
        return list(zip(*reference.measured_range(view)))

    def degenerate(self):
        """True when some slice has no usable side of its range (SEMANTICS §3.4: TF is wrong there)."""
        return any(reference.degenerate(lo, hi, self.signed_input, self.num_bits, self.narrow_range, self.x.dtype)
                   for lo, hi in self.slices())

    def zero_sign_ambiguous(self):
        """True when an auto range's scale comes from a zero bound of a slice holding both +0.0 and
        -0.0 (the other side's scale overflowed). Which zero TF's min/max reduction returns then
        depends on its SIMD width and the zeros' positions, and the output zeros' signs follow it."""
        if self.range_given:
            return False
        C = reference.compute_dtype(self.x.dtype)
        x = self.x.astype(C)
        x2 = x.reshape(1, -1) if self.axis == -1 else np.moveaxis(x, self.axis, 0).reshape(x.shape[self.axis], -1)
        for row, (lo, hi) in zip(x2, self.slices()):
            zeros = row[row == 0]
            if not (np.any(np.signbit(zeros)) and not np.all(np.signbit(zeros))):
                continue
            qmin, qmax = reference.int_range(self.signed_input, self.num_bits, self.narrow_range)
            with np.errstate(all="ignore"):
                s_lo = C.type(qmin) / C.type(lo) if C.type(qmin) * C.type(lo) > 0 else np.finfo(C).max
                s_hi = C.type(qmax) / C.type(hi) if C.type(qmax) * C.type(hi) > 0 else np.finfo(C).max
            if (lo == 0 and s_lo < s_hi) or (hi == 0 and not s_lo < s_hi):
                return True
        return False

    @property
    def per_channel(self):
        return self.axis != -1

    def __repr__(self):
        return (f"Case(shape={self.x.shape}, dtype={self.x.dtype}, axis={self.axis}, bits={self.num_bits}, "
                f"signed={self.signed_input}, narrow={self.narrow_range}, given={self.range_given}, "
                f"round={self.round_mode}, min={np.asarray(self.input_min).tolist()!r:.60}, "
                f"max={np.asarray(self.input_max).tolist()!r:.60})")


def _shape(rng, allow_rank0=True, big=False):
    if big:
        return (int(rng.integers(2, 5)), int(rng.integers(9000, 12000)))
    rank = int(rng.integers(0 if allow_rank0 else 1, 5))
    return tuple(int(rng.choice(_DIMS)) for _ in range(rank))


def _data(rng, shape, dtype, decades=(-30, 30)):
    """Values spanning magnitudes 1e-30..1e30, with grid points (rounding ties), zeros and -0.0."""
    n = int(np.prod(shape, dtype=np.int64))
    mag = 10.0 ** rng.uniform(*decades)
    kind = rng.integers(0, 6)
    if kind == 0:
        v = rng.standard_normal(n)
    elif kind == 1:
        v = rng.uniform(0, 1, n)  # non-negative
    elif kind == 2:
        v = -rng.uniform(0, 1, n)  # non-positive
    elif kind == 3:
        v = rng.standard_normal(n) + rng.uniform(-4, 4)  # offset
    elif kind == 4:
        v = rng.integers(-64, 65, n) * 0.5  # halves: exact ties at small bit widths
        mag = 2.0 ** int(np.log2(mag))
    else:
        v = rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 3, n) / 1e3  # wide spread inside one tensor
    v = v * mag
    if n and rng.random() < 0.3:
        v[rng.integers(0, n, max(1, n // 8))] = 0.0
        v[rng.integers(0, n, max(1, n // 16))] = -0.0
    return v.astype(dtype).reshape(shape)


def _given(rng, x3):
    """A valid (lo <= hi) given range for one slice: from the data, narrower, one-sided or a point."""
    data = x3[~np.isnan(x3)]
    if data.size == 0:
        data = np.zeros(1, x3.dtype)
    lo, hi = float(data.min()), float(data.max())
    kind = rng.integers(0, 6)
    span = max(hi - lo, abs(hi), abs(lo), 1e-30)
    if kind == 1:  # narrower: clamping happens
        a, b = np.sort(rng.uniform(lo, hi, 2))
        lo, hi = a, b
    elif kind == 2:  # wider
        lo, hi = lo - rng.uniform(0, 1) * span, hi + rng.uniform(0, 1) * span
    elif kind == 3:  # positive range
        lo, hi = np.sort(rng.uniform(0.01, 1, 2) * span)
    elif kind == 4:  # negative range
        lo, hi = np.sort(-rng.uniform(0.01, 1, 2) * span)
    elif kind == 5:  # straddling zero, random
        lo, hi = -rng.uniform(0, 1) * span, rng.uniform(0, 1) * span
    return lo, hi


def random_case(rng, dtype=np.float32, *, per_channel=None, range_given=None, allow_rank0=True, big=False,
                decades=(-30, 30)):
    """One random case; per_channel/range_given force a mode when not None."""
    dtype = np.dtype(dtype)
    if per_channel is None:
        per_channel = rng.random() < 0.5
    if range_given is None:
        range_given = rng.random() < 0.5
    shape = _shape(rng, allow_rank0=allow_rank0 and not per_channel, big=big)
    if per_channel and not shape:
        shape = (int(rng.choice(_DIMS)),)
    x = _data(rng, shape, dtype, decades)
    axis = int(rng.integers(0, len(shape))) if per_channel else -1
    signed = bool(rng.random() < 0.6)
    bits = int(rng.choice(_BITS))
    if signed and bits > 61:
        bits = 61
    if per_channel:
        x3 = np.moveaxis(x, axis, 0).reshape(shape[axis], -1)
        ranges = [_given(rng, x3[c]) for c in range(shape[axis])] if range_given else \
            [(0.0, 0.0)] * shape[axis]
        lo = np.array([r[0] for r in ranges]).astype(dtype)
        hi = np.array([r[1] for r in ranges]).astype(dtype)
    else:
        r = _given(rng, x.reshape(-1)) if range_given else (0.0, 0.0)
        lo, hi = np.asarray(r[0]).astype(dtype), np.asarray(r[1]).astype(dtype)
    # Rounding to dtype can break lo <= hi only by reordering equal-ish values.
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    return Case(x=x, input_min=lo, input_max=hi, signed_input=signed, num_bits=bits, range_given=range_given,
                round_mode=str(rng.choice(["HALF_TO_EVEN", "HALF_UP"])), narrow_range=bool(rng.random() < 0.3),
                axis=axis)


def random_cases(seed, count, dtype=np.float32, **kwargs):
    rng = np.random.default_rng(seed)
    return [random_case(rng, dtype, **kwargs) for _ in range(count)]


# --- Calls for the XLA composite and the export tests -----------------------------------------

DTYPES = (tf.float32, tf.float64, tf.float16, tf.bfloat16)
_XLA_BITS = (1, 2, 3, 4, 5, 7, 8, 8, 8, 12, 16, 23, 24, 25, 31, 52)
_KINDS = ("normal", "normal", "uniform", "positive", "negative", "dyadic", "ties", "zeros", "nan", "inf", "tiny")


def random_attrs(rng, dtype, range_given=None):
    """One random set of op attributes (raw axis convention is set by the caller)."""
    signed = bool(rng.random() < 0.7)
    bits = int(rng.choice(_XLA_BITS))
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
    qmin, qmax = reference.int_range(attrs["signed_input"], attrs["num_bits"], attrs["narrow_range"])
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


ISAS = ("best", "baseline")


@contextlib.contextmanager
def cpu_loops(isa):
    """Runs the kernels on one set of CPU loops: "best" (AVX2 where the CPU has it, what
    users run) or "baseline" (the portable loops, cc/qdq_math.h element by element)."""
    from tensorflow_qdq import _isa

    with _isa.using(isa):
        yield
