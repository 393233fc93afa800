"""Edge cases (SEMANTICS §3.7-3.9): empty tensors, rank-0 input, NaN, ±inf, all-zero data,
degenerate and extreme ranges, extreme bit widths, denormals, many channels — each
compared bit for bit with TensorFlow where TF is right, else with the NumPy model."""
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers import cases, compare

F = np.float32
FORWARD = ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4")
ALL_DTYPES = (np.float32, np.float64, np.float16, ml_dtypes.bfloat16)


def _kwargs(op, x, lo, hi, **attrs):
    kw = dict(input=x, input_min=lo, input_max=hi, **attrs)
    if op.endswith("V3"):
        kw["num_bits"] = np.int32(kw.pop("num_bits", 8))
        kw.pop("round_mode", None)
        kw.setdefault("range_given", False)
    return kw


def _check_against_tf(x, lo, hi, ops=FORWARD, **attrs):
    """Ours vs TF for every op; returns mismatch descriptions."""
    bad = []
    for op in ops:
        kw = _kwargs(op, x, lo, hi, **attrs)
        ours, theirs = getattr(qdq.raw_ops, op)(**kw), getattr(tf.raw_ops, op)(**kw)
        if not compare.same_bits(ours, theirs):
            bad.append(f"{op} {attrs}: {compare.describe(ours, theirs)}")
    return bad


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_empty_tensors(dtype):
    shapes = [((0,), -1), ((0, 3), -1), ((0, 3), 1), ((3, 0), 0), ((2, 0, 4), 2), ((2, 0, 4), 1)]
    for shape, axis in shapes:
        x = np.zeros(shape, dtype)
        depth = () if axis == -1 else (shape[axis],)
        lo, hi = np.full(depth, -1, dtype), np.full(depth, 1, dtype)
        for op in FORWARD:
            for given in (False, True):
                out = getattr(qdq.raw_ops, op)(**_kwargs(op, x, lo, hi, axis=axis, range_given=given))
                assert out.shape == shape and out.dtype == dtype
                if np.dtype(dtype) in (np.float32, np.float64) and (op.endswith("V3") or axis == -1 or not given):
                    theirs = getattr(tf.raw_ops, op)(**_kwargs(op, x, lo, hi, axis=axis, range_given=given))
                    assert theirs.shape == shape
        grads = qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=x, input=x, input_min=lo, input_max=hi, axis=axis)
        assert grads[0].shape == shape and grads[1].shape == lo.shape and not np.any(grads[1].numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_rank0_input(dtype):
    bad = []
    for v in (0.3, -0.7, 0.0, -0.0, 5.0):
        x = np.asarray(v, dtype)
        for given in (False, True):
            bad += _check_against_tf(x, dtype(-1), dtype(1), ops=FORWARD[::2], range_given=given)
        g = qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=np.asarray(2, dtype), input=x, input_min=dtype(-1),
                                                    input_max=dtype(1))
        want = tf.raw_ops.QuantizeAndDequantizeV4Grad(gradients=np.asarray(2, dtype), input=x,
                                                      input_min=dtype(-1), input_max=dtype(1))
        bad += [f"V4Grad rank 0 {v}: {compare.describe(a, b)}" for a, b in zip(g, want) if not compare.same_bits(a, b)]
    assert not bad, "\n".join(bad)


def test_nan_and_infinity_with_given_range():
    """Given: NaN stays NaN, ±inf clamp to the range, NaN never leaks into other elements."""
    x = np.array([np.nan, -np.inf, np.inf, -5.0, 0.3, 5.0, -0.0], F)
    bad = []
    for attrs in (dict(), dict(signed_input=False), dict(num_bits=3, narrow_range=True), dict(round_mode="HALF_UP")):
        bad += _check_against_tf(x, F(-1), F(2), range_given=True, **attrs)
    assert not bad, "\n".join(bad)
    out = qdq.raw_ops.QuantizeAndDequantizeV2(input=x, input_min=F(-1), input_max=F(2), range_given=True).numpy()
    assert np.isnan(out[0]) and not np.any(np.isnan(out[1:]))


def test_infinity_in_auto_range_makes_the_slice_nan():
    """SEMANTICS §3.7: same as TF, per tensor and per channel (only the channel holding the inf)."""
    x = np.array([[1.0, -2.0, 0.5], [np.inf, 0.25, -0.5]], F)
    bad = _check_against_tf(x, F(0), F(0))
    lo = hi = np.zeros(3, F)
    bad += _check_against_tf(x, lo, hi, axis=1)
    assert not bad, "\n".join(bad)
    out = qdq.raw_ops.QuantizeAndDequantizeV2(input=x, input_min=lo, input_max=hi, axis=1).numpy()
    assert np.all(np.isnan(out[:, 0])) and not np.any(np.isnan(out[:, 1:]))


def test_nan_channel_in_per_channel_auto():
    """An all-NaN channel gives NaN output; the other channels are untouched by it."""
    x = np.array([[np.nan, 1.0, -2.0], [np.nan, 0.3, 0.7]], F)
    out = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=np.zeros(3, F), input_max=np.zeros(3, F),
                                              axis=1).numpy()
    assert np.all(np.isnan(out[:, 0]))
    clean = tf.raw_ops.QuantizeAndDequantizeV4(input=x[:, 1:], input_min=np.zeros(2, F), input_max=np.zeros(2, F),
                                               axis=1)
    compare.assert_same_bits(out[:, 1:], clean, "other channels")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_all_zero_data(dtype):
    bad = []
    for x in (np.zeros((3, 4), dtype), -np.zeros((3, 4), dtype), np.array([[0.0, -0.0]] * 3, dtype)):
        for attrs in (dict(), dict(signed_input=False), dict(round_mode="HALF_UP"), dict(num_bits=2)):
            bad += _check_against_tf(x, dtype(0), dtype(0), range_given=True, **attrs)
            if np.all(np.signbit(x)) or not np.any(np.signbit(x)):  # mixed ±0: TF's max depends on its order
                bad += _check_against_tf(x, dtype(0), dtype(0), **attrs)
                depth = np.zeros(x.shape[1], dtype)
                bad += _check_against_tf(x, depth, depth, axis=1, **attrs)
        # 1 bit: qmax = 0, so TF divides 0 by 0 (NaN); ours gives the zeros the model gives.
        for given in (False, True):
            c = cases.Case(x=x, input_min=np.asarray(0, dtype), input_max=np.asarray(0, dtype), num_bits=1,
                           range_given=given)
            ours = qdq.raw_ops.QuantizeAndDequantizeV2(**c.kwargs())
            if not compare.same_bits(ours, c.reference()) or np.any(ours.numpy() != 0):
                bad.append(f"1-bit {c!r}: {compare.describe(ours, c.reference())}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_point_and_extreme_ranges(dtype):
    """lo == hi, ranges at the largest finite values and at the smallest normals."""
    fi = np.finfo(dtype)
    x = np.array([-3.0, -1.0, -0.25, 0.0, 0.5, 2.0, fi.max, -fi.max, fi.tiny, -fi.tiny], dtype)
    bad = []
    for lo, hi in ((1.0, 1.0), (-2.0, -2.0), (-fi.max, fi.max), (0.0, fi.max), (-fi.max, 0.0),
                   (-fi.tiny, fi.tiny), (fi.tiny, 2 * fi.tiny), (-1.0, fi.max)):
        for attrs in (dict(), dict(signed_input=False), dict(num_bits=16, round_mode="HALF_UP")):
            case = cases.Case(x=x, input_min=np.asarray(lo, dtype), input_max=np.asarray(hi, dtype),
                              range_given=True, **attrs)
            if not case.degenerate():
                bad += _check_against_tf(x, dtype(lo), dtype(hi), range_given=True, **attrs)
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_extreme_bit_widths(dtype):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(257) * 3).astype(dtype)
    bad = []
    for signed, bits in ((True, 1), (True, 2), (True, 61), (False, 1), (False, 62), (True, 24), (True, 53)):
        for given in (False, True):
            for mode in ("HALF_TO_EVEN", "HALF_UP"):
                lo, hi = (dtype(-2.5), dtype(4.0)) if signed else (dtype(0), dtype(4.0))
                bad += _check_against_tf(x, lo, hi, signed_input=signed, num_bits=bits, range_given=given,
                                         round_mode=mode)
    assert not bad, "\n".join(bad)


def test_denormal_inputs_flush_to_zero_like_tf():
    """SEMANTICS §3.8: TF's CPU kernels run with FTZ/DAZ; ours inherit it (same bits)."""
    tiny = np.finfo(F).tiny
    x = np.array([tiny / 4, -tiny / 8, tiny, 1e-39, 0.5, -1.0], F)
    bad = _check_against_tf(x, F(-1), F(1), range_given=True)
    bad += _check_against_tf(x * F(1e-30), F(0), F(0))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("shape,axis", [((3, 3000), 1), ((1500, 2, 3), 0), ((2, 1100, 5), 1), ((4, 1), 1),
                                        ((1, 7), 0), ((70000,), -1), ((3, 40000), 0)])
def test_channel_counts_and_sizes(shape, axis):
    """Few and many channels (> 1024 takes another reduction path), size-1 channel axes, and
    tensors big enough to be split across threads."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 2).astype(F)
    depth = () if axis == -1 else (shape[axis],)
    lo = np.full(depth, -1.5, F)
    hi = np.full(depth, 1.25, F)
    bad = _check_against_tf(x, lo, hi, axis=axis)
    bad += _check_against_tf(x, lo, hi, axis=axis, round_mode="HALF_UP", ops=FORWARD[::2])
    if axis == -1:
        bad += _check_against_tf(x, lo, hi, axis=axis, range_given=True)
    else:
        ours = qdq.raw_ops.QuantizeAndDequantizeV2(input=x, input_min=lo, input_max=hi, axis=axis, range_given=True)
        theirs = tf.raw_ops.QuantizeAndDequantizeV3(input=x, input_min=lo, input_max=hi, axis=axis, num_bits=8)
        if not compare.same_bits(ours, theirs):
            bad.append(f"given per-channel: {compare.describe(ours, theirs)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_half_up_artifacts_are_kept(dtype):
    """SEMANTICS §3.5: HALF_UP is floor(y + 0.5) with the add in the compute type, as in TF:
    the largest value below 0.5 rounds to 1, odd integers above 2^23 (2^52) bump up."""
    mant = np.finfo(dtype).nmant
    below_half = np.nextafter(dtype(0.5), dtype(0))
    odd = dtype(2.0 ** mant + 1)
    x = np.array([below_half, -below_half, 0.5, -0.5, 1.5, odd, -odd], dtype)
    lo, hi = dtype(-(2.0 ** 60)), dtype(2.0 ** 60 - 1)  # 61 bits: scale 1
    bad = []
    for mode in ("HALF_UP", "HALF_TO_EVEN"):
        bad += _check_against_tf(x, lo, hi, ops=FORWARD[::2], range_given=True, num_bits=61, round_mode=mode)
    out = qdq.raw_ops.QuantizeAndDequantizeV2(input=x, input_min=lo, input_max=hi, range_given=True, num_bits=61,
                                              round_mode="HALF_UP").numpy()
    assert not bad, "\n".join(bad)
    assert out[0] == 1 and out[5] == odd + 1 and out[6] == -odd + 1, out
