"""Case strategies: one random call of an op or wrapper, with everything it is called with.

A case is drawn through a small ``Draw`` interface so the same generator runs from a seeded
NumPy generator (the worker subprocesses: case ``(seed, index)`` is always the same call, so
every failure is reproducible with ``python -m tests.fuzz --repro SEED:INDEX``) and from
Hypothesis (``hypothesis_cases()``, which shrinks in-process failures).
"""

import dataclasses
import zlib
from pathlib import Path
from typing import Any, Optional

import ml_dtypes
import numpy as np

from tensorflow_qdq import _contract
from tests.helpers import reference as ref

RAW_OPS = ("V2", "V3", "V4", "V4Grad")
API_OPS = ("api_qdq", "api_qdq_v2", "api_qdq_v4")
TAPE_OPS = ("tape_v2", "tape_v4")
KERAS_OPS = ("keras",)
# The Keras layer is fuzzed when the package has it (checked without importing TensorFlow).
HAVE_KERAS = (Path(__file__).resolve().parents[2] / "tensorflow_qdq" / "keras" / "_layer.py").exists()
DEFAULT_OPS = RAW_OPS + API_OPS + TAPE_OPS + (KERAS_OPS if HAVE_KERAS else ())
WRONG_DTYPES = ("int32", "int64", "uint8", "bool", "complex64", "string")
MODES = ("eager", "function", "function_dynamic")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EDGE_INTS = (
    ref.INT32_MIN, ref.INT32_MIN + 1, -(2**16), -100, -65, -64, -63, -62, -61, -3, -2, -1, 0, 1, 2, 3,
    7, 8, 16, 23, 24, 25, 31, 32, 33, 52, 53, 54, 60, 61, 62, 63, 64, 65, 100, 2**16,
    ref.INT32_MAX - 1, ref.INT32_MAX, ref.INT32_MAX + 1, ref.INT32_MIN - 1, 2**32, INT64_MIN, INT64_MAX,
)
ROUND_MODES = _contract.ROUND_MODES  # every valid mode; the model (tests/helpers/reference.py) rounds each its own way


class RandomDraw:
    """Draws from a NumPy generator seeded by (seed, index)."""

    def __init__(self, seed, index):
        self.rng = np.random.default_rng([seed & 0xFFFFFFFF, seed >> 32, index])

    def integer(self, lo, hi):
        return int(self.rng.integers(lo, hi, endpoint=True))

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p):
        return bool(self.rng.random() < p)

    def seed(self):
        return int(self.rng.integers(2**32))


class HypothesisDraw:
    """The same interface over a Hypothesis ``draw`` (shrinks towards the first options)."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self.st = st
        self.draw = draw

    def integer(self, lo, hi):
        return self.draw(self.st.integers(lo, hi))

    def choice(self, options):
        return options[self.draw(self.st.integers(0, len(options) - 1))]

    def chance(self, p):
        return self.draw(self.st.integers(0, 999)) < int(p * 1000)

    def seed(self):
        return self.draw(self.st.integers(0, 2**32 - 1))


@dataclasses.dataclass
class Case:
    op: str
    mode: str
    dtype: str  # input dtype (may be a wrong one)
    shape: tuple
    x: Any
    min_value: Any  # ndarray, or a Python float for the wrappers
    max_value: Any
    min_dtype: str
    max_dtype: str
    axis: Optional[int]
    num_bits: int
    signed_input: bool = True
    narrow_range: bool = False
    range_given: bool = False
    round_mode: str = "HALF_TO_EVEN"
    grad: Any = None  # V4Grad gradients / upstream gradient for tape ops
    grad_dtype: str = "float32"
    num_bits_dtype: str = "int32"  # V3
    num_bits_shape: tuple = ()
    keras: Optional[dict] = None  # the Keras layer's other arguments
    seed: int = 0
    index: int = 0

    def summary(self):
        """A one-line description (no data), for reports."""
        bits_type = ""
        if self.num_bits_dtype != "int32" or self.num_bits_shape:
            bits_type = f" ({self.num_bits_dtype}{list(self.num_bits_shape)})"
        return (
            f"{self.op}/{self.mode} dtype={self.dtype} shape={self.shape} axis={self.axis} "
            f"num_bits={self.num_bits}{bits_type} "
            f"signed={self.signed_input} narrow={self.narrow_range} given={self.range_given} "
            f"round={self.round_mode} min={_short(self.min_value, self.min_dtype)} "
            f"max={_short(self.max_value, self.max_dtype)}"
            + (f" grad_dtype={self.grad_dtype}" if self.grad is not None else "")
            + (f" keras={self.keras}" if self.keras is not None else "")
        )


def _short(v, dtype):
    if isinstance(v, float):
        return repr(v)
    a = np.asarray(v)
    if a.dtype.kind in "fc" or dtype in ref.FLOAT_DTYPES:
        vals = np.real(a.ravel()[:4]).astype(np.float64).tolist()
    else:
        vals = a.ravel()[:4].tolist()
    return f"{dtype}{list(a.shape)}{vals}{'...' if a.size > 4 else ''}"


# --- values -----------------------------------------------------------------------------------

_EXP_RANGE = {"bfloat16": 36, "float16": 4, "float32": 36, "float64": 300}


def _specials(dtype):
    info = ml_dtypes.finfo(ref.NP_DTYPES.get(dtype, np.float32))
    tiny = float(info.tiny)
    return [np.nan, np.inf, -np.inf, 0.0, -0.0, tiny, -tiny, tiny / 4, -tiny / 8, float(info.max),
            -float(info.max), 1.0, -1.0, 0.5, -0.5, 1e-30, 1e30]


def values(d, rng, n, dtype):
    """n float64 values of one random style, some sprinkled with specials."""
    fdt = dtype if dtype in ref.NP_DTYPES else "float32"
    style = d.choice(("normal", "normal", "uniform", "ints", "halves", "specials", "constant", "wide"))
    if style == "normal":
        scale = 10.0 ** rng.uniform(-_EXP_RANGE[fdt] / 3, _EXP_RANGE[fdt] / 3)
        v = rng.normal(size=n) * scale + (rng.normal() * scale if d.chance(0.3) else 0.0)
    elif style == "uniform":
        a, b = sorted(rng.normal(size=2) * 10.0 ** rng.uniform(-3, 3))
        v = rng.uniform(a, b, size=n)
    elif style == "ints":
        v = rng.integers(-300, 300, size=n).astype(np.float64)
    elif style == "halves":
        v = rng.integers(-40, 40, size=n) / 2.0 * 2.0 ** rng.integers(-8, 8)
    elif style == "specials":
        v = rng.choice(_specials(fdt), size=n)
    elif style == "constant":
        v = np.full(n, rng.choice(_specials(fdt)))
    else:
        v = rng.normal(size=n) * 10.0 ** rng.uniform(-_EXP_RANGE[fdt], _EXP_RANGE[fdt], size=n)
    if n and d.chance(0.25):
        k = max(1, n // 8)
        v[rng.integers(0, n, size=k)] = rng.choice(_specials(fdt), size=k)
    return v


def as_dtype(v, dtype):
    """float64 values -> an array of `dtype` (wrong dtypes included)."""
    v = np.asarray(v, np.float64)
    if dtype in ref.NP_DTYPES:
        with np.errstate(all="ignore"):
            return v.astype(ref.NP_DTYPES[dtype])
    clean = np.nan_to_num(v, nan=0.0, posinf=100.0, neginf=-100.0).clip(-100, 100)
    if dtype == "string":
        return np.array([repr(float(a)).encode() for a in clean.ravel()], dtype=object).reshape(v.shape)
    if dtype == "complex64":
        return clean.astype(np.complex64)
    if dtype == "bool":
        return clean > 0
    if dtype == "uint8":
        return np.abs(clean).astype(np.uint8)
    return clean.astype(np.dtype(dtype))


# --- the case ---------------------------------------------------------------------------------

def _shape(d, big_ok):
    rank = d.choice((0, 1, 1, 2, 2, 2, 3, 3, 4, 5, 6))
    dims = []
    for _ in range(rank):
        dims.append(d.choice((0, 1, 1, 2, 2, 3, 3, 4, 5, 7, 8, 16, 33)))
    shape = tuple(dims)
    limit = 4096
    while int(np.prod(shape, dtype=np.int64)) > limit:
        i = int(np.argmax(shape))
        shape = shape[:i] + (max(1, shape[i] // 2),) + shape[i + 1 :]
    if big_ok and rank and d.chance(0.01):  # big enough for several shards of the CPU loops
        i = d.integer(0, rank - 1)
        shape = tuple(1 for _ in shape)
        shape = shape[:i] + (d.choice((70_000, 140_001, 262_147)),) + shape[i + 1 :]
        if rank > 1 and d.chance(0.5):
            j = (i + 1) % rank
            shape = shape[:j] + (d.choice((2, 3, 5, 64, 1025)),) + shape[j + 1 :]
            shape = shape[:i] + (max(1, shape[i] // shape[j]),) + shape[i + 1 :]
    return shape


def _axis(d, op, rank):
    wrapper = op in API_OPS[:2] or op in TAPE_OPS or op in KERAS_OPS
    if wrapper and d.chance(0.3):
        return None
    r = d.integer(0, 99)
    if r < 40:
        return -1
    if r < 75 and rank > 0:
        k = d.integer(0, rank - 1)
        return k - rank if wrapper and d.chance(0.4) else k
    if r < 88:
        return d.choice((-2, -rank - 1, -rank, rank, rank + 1, -100, 0))
    return d.choice(EDGE_INTS)


def _num_bits(d, signed):
    r = d.integer(0, 99)
    if r < 80:
        if d.chance(0.5):
            return d.integer(1, ref.max_bits(signed))
        return d.choice((1, 2, 3, 4, 7, 8, 15, 16, 23, 24, 53, 61, 62))
    return d.choice(EDGE_INTS)


def _range_shape(d, axis, shape):
    """Right shape for min/max, or (sometimes) a wrong one."""
    rank = len(shape)
    per_channel = axis is not None and axis != -1 and -rank <= axis < rank
    right = (shape[axis],) if per_channel else ()
    if d.chance(0.88):
        return right
    return d.choice(((), (1,), (2,), (0,), (1, 1), (3, 2), (right[0] + 1,) if right else (5,), (4,)))


def _bounds(d, rng, style, n, float_dtype):
    """Bounds around the data, random values, or specials."""
    if style < 6:
        width = np.abs(values(d, rng, n, float_dtype)) + 0.0
        center = values(d, rng, n, float_dtype) * (0.1 if d.chance(0.5) else 1.0)
        lo_all, hi_all = center - width, center + width
        if d.chance(0.15):
            lo_all, hi_all = np.minimum(lo_all, 0.0), np.maximum(hi_all, 0.0)
    elif style < 8:
        lo_all = values(d, rng, n, float_dtype)
        hi_all = values(d, rng, n, float_dtype)
    else:
        lo_all = rng.choice(_specials(float_dtype), size=n)
        hi_all = rng.choice(_specials(float_dtype), size=n)
    return lo_all, hi_all


def draw_case(d, seed=0, index=0, ops=DEFAULT_OPS, big_ok=True):
    rng = np.random.default_rng(d.seed())
    op = d.choice(ops)
    if op == "keras":
        return draw_keras_case(d, rng, seed, index)
    mode = d.choice(("eager", "eager", "eager", "eager", "eager", "function", "function_dynamic", "function_dynamic"))
    float_dtype = d.choice(ref.FLOAT_DTYPES)
    dtype = float_dtype if d.chance(0.95) else d.choice(WRONG_DTYPES)
    shape = _shape(d, big_ok)
    signed = d.chance(0.7)
    axis = _axis(d, op, len(shape))
    nbits = _num_bits(d, signed)
    range_given = d.chance(0.5)
    n = int(np.prod(shape, dtype=np.int64))
    x = as_dtype(values(d, rng, n, float_dtype).reshape(shape), dtype)

    min_dtype = max_dtype = grad_dtype = dtype
    if d.chance(0.04):
        min_dtype = d.choice(ref.FLOAT_DTYPES + WRONG_DTYPES[:2])
    if d.chance(0.04):
        max_dtype = d.choice(ref.FLOAT_DTYPES + WRONG_DTYPES[:2])
    if op == "V4Grad" and d.chance(0.04):
        grad_dtype = d.choice(ref.FLOAT_DTYPES + WRONG_DTYPES[:2])

    # Bounds: around the data, or specials, or swapped.
    channel_axis = axis
    if op in API_OPS[:2] or op in TAPE_OPS or op in KERAS_OPS:
        if axis is None:
            channel_axis = -1
        elif axis < 0 and axis >= -len(shape):
            channel_axis = axis + len(shape)
    min_shape = _range_shape(d, channel_axis, shape)
    max_shape = min_shape if d.chance(0.9) else _range_shape(d, channel_axis, shape)
    m = int(np.prod(min_shape, dtype=np.int64))
    k = int(np.prod(max_shape, dtype=np.int64))
    style = d.integer(0, 9)
    with np.errstate(all="ignore"):  # huge centres and widths may overflow to inf: wanted
        lo_all, hi_all = _bounds(d, rng, style, max(m, k), float_dtype)
    if d.chance(0.05):
        lo_all, hi_all = hi_all, lo_all
    min_value = as_dtype(lo_all[:m].reshape(min_shape), min_dtype)
    max_value = as_dtype(hi_all[:k].reshape(max_shape), max_dtype)
    if op in API_OPS + TAPE_OPS + KERAS_OPS and min_shape == () and max_shape == () and d.chance(0.3):
        # Exactly representable Python floats. Not zeros: TensorFlow's eager constant cache keys
        # Python scalars by value, so 0.0 can come back as a cached -0.0 tensor (and vice versa).
        if min_dtype == dtype == max_dtype and dtype in ref.FLOAT_DTYPES and min_value != 0 and max_value != 0:
            min_value, max_value = float(min_value), float(max_value)

    case = Case(
        op=op, mode=mode, dtype=dtype, shape=shape, x=x, min_value=min_value, max_value=max_value,
        min_dtype=min_dtype, max_dtype=max_dtype, axis=axis, num_bits=nbits, signed_input=signed,
        narrow_range=d.chance(0.3), range_given=range_given,
        round_mode=d.choice(ROUND_MODES) if d.chance(0.97) else d.choice(("HALF_DOWN", "", "half_up")),
        grad_dtype=grad_dtype, seed=seed, index=index,
    )
    if op == "V3":
        case.round_mode = "HALF_TO_EVEN"
        case.num_bits = (nbits + 2**31) % 2**32 - 2**31  # a tensor value: int32
        if d.chance(0.05):
            case.num_bits_dtype = d.choice(("int64", "float32", "int16"))
        if d.chance(0.05):
            case.num_bits_shape = d.choice(((1,), (2,), (1, 1)))
    if op == "V4Grad" or op in TAPE_OPS:
        gshape = shape
        if op == "V4Grad" and d.chance(0.06):
            gshape = d.choice(((), (1,), shape + (1,), tuple(s + 1 for s in shape) or (2,)))
        gn = int(np.prod(gshape, dtype=np.int64))
        case.grad = as_dtype(values(d, rng, gn, float_dtype).reshape(gshape), grad_dtype)
    return case


def _keras_bound(d, rng, dtype, count, scale):
    """A layer bound: a float (count None) or a list, exactly representable in `dtype`, or odd."""
    r = d.integer(0, 99)
    n = 1 if count is None else count
    v = as_dtype(rng.normal(size=n) * scale, dtype if dtype in ref.NP_DTYPES else "float32")
    vals = [float(a) for a in np.asarray(v, np.float64)]
    if r < 6:
        vals[d.integer(0, n - 1)] = d.choice((float("nan"), float("inf"), -float("inf")))
    if count is None:
        return vals[0]
    if r >= 94:
        return vals + [1.0] if d.chance(0.5) else vals[:-1]
    return vals


def draw_keras_case(d, rng, seed, index):
    """A call of the Keras layer with random constructor arguments (some invalid)."""
    dtype = d.choice(ref.FLOAT_DTYPES) if d.chance(0.97) else d.choice(("int32", "int64"))
    shape = _shape(d, big_ok=False)
    rank = len(shape)
    x = as_dtype(values(d, rng, int(np.prod(shape, dtype=np.int64)), dtype if dtype in ref.NP_DTYPES else "float32")
                 .reshape(shape), dtype)
    signed = d.chance(0.7)
    range_mode = d.choice(("batch", "batch", "fixed", "fixed", "tracked")) if d.chance(0.97) else "auto"
    if d.chance(0.85):
        num_bits = d.integer(1, ref.max_bits(signed)) if d.chance(0.6) else d.choice((2, 4, 8, 16))
    else:
        num_bits = d.choice(EDGE_INTS + (8.0, True, "8"))
    if d.chance(0.35):
        axis = None
    elif d.chance(0.85) and rank:
        axis = d.integer(-rank, rank - 1)
    else:
        axis = d.choice((rank, -rank - 1, 2**31 - 1, -(2**31), 1.5, True))
    channels = shape[axis] if isinstance(axis, int) and not isinstance(axis, bool) and -rank <= axis < rank else None
    scale = 10.0 ** rng.uniform(-2, 3)
    min_value = max_value = None
    if range_mode in ("fixed", "tracked", "auto") and d.chance(0.95 if range_mode == "fixed" else 0.5):
        per_channel = channels is not None and channels > 0 and d.chance(0.5)
        count = channels if per_channel else None
        min_value = _keras_bound(d, rng, dtype, count, scale)
        max_value = _keras_bound(d, rng, dtype, count, scale)
        if d.chance(0.9) and isinstance(min_value, list) == isinstance(max_value, list):
            if isinstance(min_value, list) and len(min_value) == len(max_value):
                pairs = [sorted((a, b)) for a, b in zip(min_value, max_value)]
                min_value, max_value = [p[0] for p in pairs], [p[1] for p in pairs]
            elif not isinstance(min_value, list):
                min_value, max_value = sorted((min_value, max_value))
        if d.chance(0.04):
            max_value = None
    elif range_mode == "batch" and d.chance(0.03):
        min_value, max_value = -1.0, 1.0
    layer_dtype = dtype if dtype in ref.FLOAT_DTYPES else "float32"
    case = Case(
        op="keras", mode=d.choice(("eager", "eager", "function")), dtype=dtype, shape=shape, x=x,
        min_value=None, max_value=None, min_dtype=dtype, max_dtype=dtype, axis=axis,
        num_bits=num_bits if isinstance(num_bits, int) and not isinstance(num_bits, bool) else 8,
        signed_input=signed, narrow_range=d.chance(0.3), range_given=range_mode != "batch",
        round_mode=d.choice(ROUND_MODES) if d.chance(0.97) else "HALF_DOWN", seed=seed, index=index,
        keras=dict(range_mode=range_mode, num_bits=num_bits, min_value=min_value, max_value=max_value,
                   gradient=d.choice(("masked", "straight_through")) if d.chance(0.98) else "identity",
                   layer_dtype=layer_dtype),
    )
    return case


def generate(seed, index, **kwargs):
    """Case number `index` of run `seed` (deterministic)."""
    return draw_case(RandomDraw(seed, index), seed=seed, index=index, **kwargs)


def hypothesis_cases(**kwargs):
    """A Hypothesis strategy over the same cases."""
    from hypothesis import strategies as st

    @st.composite
    def _cases(draw):
        return draw_case(HypothesisDraw(draw), **kwargs)

    return _cases()


def fingerprint(case):
    """A short stable hash of a case's data, to check a reproducer regenerates the same call."""
    parts = [case.summary().encode()]
    for a in (case.x, case.min_value, case.max_value, case.grad):
        if isinstance(a, np.ndarray) and a.dtype != object:
            parts.append(a.tobytes())
    return f"{zlib.crc32(b''.join(parts)):08x}"
