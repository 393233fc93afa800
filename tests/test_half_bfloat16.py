"""half and bfloat16 (SEMANTICS §3.6, FIX row 1): TF has no CPU kernel for them; ours compute in
float32 and round the result, bit-identical to cast_T(builtin_float32(cast_float32(x)))."""
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers import cases, compare

OPS = ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4")
NARROW = {"half": (np.float16, (-3, 3)), "bfloat16": (ml_dtypes.bfloat16, (-30, 30))}


def _narrow_cases(seed, count, dtype, decades, **kwargs):
    """Random cases in dtype, paired with the float32 case holding exactly the same values."""
    out = []
    for c in cases.random_cases(seed, count, np.float32, decades=decades, **kwargs):
        narrow = cases.Case(**{**c.__dict__, "x": c.x.astype(dtype), "input_min": c.input_min.astype(dtype),
                               "input_max": c.input_max.astype(dtype)})
        wide = cases.Case(**{**narrow.__dict__, "x": narrow.x.astype(np.float32),
                             "input_min": narrow.input_min.astype(np.float32),
                             "input_max": narrow.input_max.astype(np.float32)})
        if not wide.degenerate():
            out.append((narrow, wide))
    return out


def _builtin(op, wide, dtype):
    """cast_T(builtin_float32(cast_float32(x))); per-channel given ranges via TF's V3."""
    if wide.per_channel and wide.range_given:
        op = "QuantizeAndDequantizeV3"
    return np.asarray(getattr(tf.raw_ops, op)(**wide.kwargs(op))).astype(dtype)


@pytest.mark.parametrize("name", sorted(NARROW))
def test_forward_matches_cast_builtin(name):
    dtype, decades = NARROW[name]
    bad, n = [], 0
    for i, (narrow, wide) in enumerate(_narrow_cases(20 + len(name), 500, dtype, decades)):
        if wide.per_channel and wide.range_given:
            narrow.round_mode = wide.round_mode = "HALF_TO_EVEN"  # TF's V3 is the only reference here
        for op in OPS:
            if op.endswith("V3") and wide.x.ndim == 0:
                continue  # TF's V3 rejects rank-0 input
            ours = getattr(qdq.raw_ops, op)(**narrow.kwargs(op))
            want = _builtin(op, wide, dtype)
            n += 1
            if ours.dtype.as_numpy_dtype != dtype or not compare.same_bits(ours, want):
                bad.append(f"#{i} {op} {narrow!r}: {compare.describe(ours, want)}")
    cases.record(f"{name} vs cast(builtin float32)", n)
    assert n >= 900
    assert not bad, f"{len(bad)} of {n} differ:\n" + "\n".join(bad[:20])


@pytest.mark.parametrize("name", sorted(NARROW))
def test_half_up_per_channel_given_matches_model(name):
    """HALF_UP with per-channel given ranges has no TF reference: the NumPy model (float32 compute)."""
    dtype, decades = NARROW[name]
    bad = []
    pairs = _narrow_cases(30 + len(name), 150, dtype, decades, per_channel=True, range_given=True)
    for i, (narrow, _) in enumerate(pairs):
        narrow.round_mode = "HALF_UP"
        for op in ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4"):
            ours, want = getattr(qdq.raw_ops, op)(**narrow.kwargs(op)), narrow.reference()
            if not compare.same_bits(ours, want):
                bad.append(f"#{i} {op} {narrow!r}: {compare.describe(ours, want)}")
    cases.record(f"{name} HALF_UP per-channel vs model", 2 * len(pairs))
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("name", sorted(NARROW))
def test_v4grad_matches_cast_builtin(name):
    dtype, decades = NARROW[name]
    rng = np.random.default_rng(40)
    bad = []
    pairs = _narrow_cases(40 + len(name), 200, dtype, decades, range_given=True)
    for i, (narrow, wide) in enumerate(pairs):
        g = rng.standard_normal(narrow.x.shape).astype(dtype)
        ours = qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g, input=narrow.x, input_min=narrow.input_min,
                                                       input_max=narrow.input_max, axis=narrow.axis)
        theirs = tf.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g.astype(np.float32), input=wide.x,
                                                        input_min=wide.input_min, input_max=wide.input_max,
                                                        axis=wide.axis)
        for a, b in zip(ours, theirs):
            if not compare.same_bits(a, np.asarray(b).astype(dtype)):
                bad.append(f"#{i} {narrow!r}: {compare.describe(a, np.asarray(b).astype(dtype))}")
    cases.record(f"{name} V4Grad vs cast(builtin float32)", len(pairs))
    assert not bad, "\n".join(bad[:20])


def test_builtin_has_no_narrow_kernels():
    """FIX row 1: the built-ins raise NotFoundError for half/bfloat16 on CPU; ours run."""
    for dtype in (tf.half, tf.bfloat16):
        x = tf.cast(tf.constant([-1.0, 0.25, 0.5]), dtype)
        lo, hi = tf.cast(-1.0, dtype), tf.cast(1.0, dtype)
        with pytest.raises(tf.errors.NotFoundError):
            tf.raw_ops.QuantizeAndDequantizeV2(input=x, input_min=lo, input_max=hi)
        out = qdq.raw_ops.QuantizeAndDequantizeV2(input=x, input_min=lo, input_max=hi, range_given=True)
        assert out.dtype == dtype


def test_unsigned_16_bit_half_does_not_overflow():
    """SEMANTICS §3.6: qmax = 65535 overflows half; computing in float32 keeps it finite."""
    x = np.array([0.0, 0.25, 0.5, 1.0], np.float16)
    out = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=np.float16(0), input_max=np.float16(1),
                                              signed_input=False, num_bits=16, range_given=True).numpy()
    want = np.asarray(tf.raw_ops.QuantizeAndDequantizeV4(
        input=x.astype(np.float32), input_min=np.float32(0), input_max=np.float32(1), signed_input=False,
        num_bits=16, range_given=True)).astype(np.float16)
    assert np.all(np.isfinite(out))
    compare.assert_same_bits(out, want, "unsigned 16-bit half")
