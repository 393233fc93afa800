"""The CPU fast paths are bit-identical to TensorFlow.

Every instruction set the library can dispatch to (AVX2+F16C and the portable
baseline, forced through the library's `qdq_cpu_set_isa` hook), every layout
the driver distinguishes (per-tensor; per-channel runs, short rows, expanded
rows, many channels; sharded reductions; streamed outputs), vector tails and
all four dtypes. References: float32/float64 -> TensorFlow's own kernels
(`tf.raw_ops`); half/bfloat16 -> the cast route a TensorFlow user has today
(cast to float32, built-in op, cast back).
"""
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tensorflow_qdq import _isa

_BEST = _isa.select("best")

DTYPES = [tf.float32, tf.float64, tf.half, tf.bfloat16]
ISAS = ["baseline", "avx2"]


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs the test with the loops of one instruction set, then restores the best."""
    if request.param == "avx2" and _BEST != "avx2":
        pytest.skip("this CPU has no AVX2+F16C: only the baseline loops can run here")
    with _isa.using(request.param) as got:
        assert got == request.param
        yield request.param


def _bits(a):
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same_bits(ours, expected, nan_mask=None, skip=None):
    """Bitwise equality, except: NaN anywhere at nan_mask; a zero of either sign at skip."""
    ours, expected = np.asarray(ours), np.asarray(expected)
    assert ours.shape == expected.shape and ours.dtype == expected.dtype
    keep = np.ones(ours.shape, bool)
    if nan_mask is not None:
        assert np.isnan(ours.astype(np.float32)[nan_mask]).all()
        keep &= ~nan_mask
    if skip is not None:
        assert (ours.astype(np.float32)[skip & keep] == 0).all()
        keep &= ~skip
    ours, expected = ours[keep], expected[keep]
    bad = np.flatnonzero(_bits(ours) != _bits(expected))
    assert bad.size == 0, (
        f"{bad.size} of {ours.size} elements differ; first at {bad[0]}: "
        f"ours {ours.reshape(-1)[bad[0]]!r} vs reference {expected.reshape(-1)[bad[0]]!r}"
    )


def sample(shape, dtype, seed, scale=3.0):
    """Normal data with exact rounding ties, signed zeros, tiny and subnormal values."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * scale
    flat = x.reshape(-1)
    k = flat.size
    idx = rng.choice(k, size=min(k, max(1, k // 8)), replace=False)
    flat[idx[0::4]] = np.round(flat[idx[0::4]] * 4) / 4 + 0.5 / 127  # near grid ties of common scales
    flat[idx[1::4]] = np.round(flat[idx[1::4]] * 2) / 2  # exact halves
    flat[idx[2::4]] = np.where(rng.random(idx[2::4].size) < 0.5, 0.0, -0.0)
    flat[idx[3::4]] = rng.normal(size=idx[3::4].size) * 1e-40
    return tf.constant(x, dtype=tf.float64) if dtype == tf.float64 else tf.cast(tf.constant(x), dtype)


def all_zero_channels(x, axis):
    """Elements of slices with no non-zero, non-NaN value: their range is degenerate, where TensorFlow's
    zero signs depend on its reduction order (SEMANTICS §3.4 FIX; tested on its own below)."""
    a = np.abs(tf.cast(x, tf.float64).numpy())
    a = np.where(np.isnan(a), 0.0, a)
    if axis == -1:
        return np.full(a.shape, not a.any())
    others = tuple(i for i in range(a.ndim) if i != axis)
    dead = ~a.any(axis=others, keepdims=True)
    return np.broadcast_to(dead, a.shape)


def _compute(dtype):
    return dtype if dtype in (tf.float32, tf.float64) else tf.float32


def tf_reference(op, x, lo, hi, axis, **attrs):
    """TensorFlow's result for float32/float64, the cast route for half/bfloat16."""
    c = _compute(x.dtype)
    xc, loc, hic = tf.cast(x, c), tf.cast(lo, c), tf.cast(hi, c)
    if attrs.get("range_given") and axis != -1 and x.shape[axis] > 16:
        # TF 2.21's V2/V4 reject per-channel given ranges; V3 takes them (HALF_TO_EVEN only).
        assert attrs.get("round_mode", "HALF_TO_EVEN") == "HALF_TO_EVEN"
        v3 = {k: v for k, v in attrs.items() if k not in ("round_mode", "num_bits")}
        out = tf.raw_ops.QuantizeAndDequantizeV3(input=xc, input_min=loc, input_max=hic, axis=axis,
                                                 num_bits=attrs.get("num_bits", 8), **v3)
        return tf.cast(out, x.dtype)
    if attrs.get("range_given") and axis != -1:
        # Few channels: quantize each one per-tensor (any round mode).
        slices = tf.unstack(xc, axis=axis)
        out = [getattr(tf.raw_ops, op)(input=s, input_min=loc[i], input_max=hic[i], axis=-1, **attrs)
               for i, s in enumerate(slices)]
        return tf.cast(tf.stack(out, axis=axis), x.dtype)
    out = getattr(tf.raw_ops, op)(input=xc, input_min=loc, input_max=hic, axis=axis, **attrs)
    return tf.cast(out, x.dtype)


def ranges(x, axis, dtype, seed):
    rng = np.random.default_rng(seed)
    depth = 1 if axis == -1 else x.shape[axis]
    lo = -np.abs(rng.normal(size=depth)) * 2 - 0.1
    hi = np.abs(rng.normal(size=depth)) * 2 + 0.1
    if axis == -1:
        lo, hi = lo[0], hi[0]
    return tf.cast(tf.constant(lo), dtype), tf.cast(tf.constant(hi), dtype)


# (shape, axis): the driver's layouts. See cc/qdq_cpu.cc make_plan().
LAYOUTS = [
    ((37,), -1),  # tiny: tail only
    ((70001,), -1),  # pool split, vector tail
    ((2, 3, 4), -1),
    ((300, 129), 0),  # runs (inner >= 64), per-shard partial ranges
    ((5, 7, 9), 1),  # short rows, period expanded to a multiple
    ((601, 13), 1),  # last axis: rows with inner == 1
    ((3, 20000), 1),  # long row period: positions owned by shards
    ((17000, 65), 0),  # many long channels: channels owned by shards
    ((2, 17000, 2), 1),  # short runs of many channels (inner 2, period too long for rows)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("range_given", [False, True], ids=["auto", "given"])
def test_forward_matches_tensorflow(isa, dtype, shape, axis, range_given):
    x = sample(shape, dtype, seed=len(shape) * 31 + axis)
    lo, hi = ranges(x, axis, dtype, seed=3)
    depth = 1 if axis == -1 else shape[axis]
    # TensorFlow takes many per-channel given ranges only with HALF_TO_EVEN (V3).
    modes = ["HALF_TO_EVEN"] if range_given and depth > 16 else ["HALF_TO_EVEN", "HALF_UP"]
    for mode in modes:
        attrs = dict(signed_input=True, num_bits=7, range_given=range_given, round_mode=mode, narrow_range=False)
        ours = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=lo, input_max=hi, axis=axis, **attrs)
        ref = tf_reference("QuantizeAndDequantizeV4", x, lo, hi, axis, **attrs)
        assert_same_bits(ours, ref, skip=None if range_given else all_zero_channels(x, axis))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("signed_input,num_bits,narrow_range", [(True, 8, True), (False, 8, False), (True, 16, False),
                                                                 (False, 3, False), (True, 2, False)])
def test_attribute_variants(isa, dtype, signed_input, num_bits, narrow_range):
    x = sample((4099,), dtype, seed=num_bits)
    lo, hi = ranges(x, -1, dtype, seed=num_bits)
    if not signed_input:
        lo = tf.zeros_like(lo)
    for op in ["QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4"]:
        for range_given in [False, True]:
            attrs = dict(signed_input=signed_input, num_bits=num_bits, range_given=range_given,
                         narrow_range=narrow_range)
            ours = getattr(qdq.raw_ops, op)(input=x, input_min=lo, input_max=hi, **attrs)
            assert_same_bits(ours, tf_reference(op, x, lo, hi, -1, **attrs))


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=lambda d: d.name)
@pytest.mark.parametrize("shape,axis", [((300, 129), 0), ((601, 13), 1), ((5, 7, 9), 1)], ids=str)
def test_v3_per_channel_given_many_channels(isa, dtype, shape, axis):
    # V3 is TensorFlow's only op that takes per-channel given ranges directly.
    x = sample(shape, dtype, seed=5)
    lo, hi = ranges(x, axis, dtype, seed=6)
    attrs = dict(signed_input=True, range_given=True, narrow_range=False, axis=axis)
    ours = qdq.raw_ops.QuantizeAndDequantizeV3(input=x, input_min=lo, input_max=hi, num_bits=6, **attrs)
    ref = tf.raw_ops.QuantizeAndDequantizeV3(input=x, input_min=lo, input_max=hi, num_bits=6, **attrs)
    assert_same_bits(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape,axis", [((70001,), -1), ((300, 129), 0), ((601, 13), 1), ((5, 7, 9), 1),
                                        ((17000, 65), 0), ((3, 20000), 1)], ids=str)
def test_gradient_matches_tensorflow(isa, dtype, shape, axis):
    x = sample(shape, dtype, seed=11)
    g = sample(shape, dtype, seed=12)
    lo, hi = ranges(x, axis, dtype, seed=13)
    ours = qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g, input=x, input_min=lo, input_max=hi, axis=axis)[0]
    c = _compute(dtype)
    ref = tf.raw_ops.QuantizeAndDequantizeV4Grad(gradients=tf.cast(g, c), input=tf.cast(x, c), input_min=tf.cast(lo, c),
                                                 input_max=tf.cast(hi, c), axis=axis)[0]
    assert_same_bits(ours, tf.cast(ref, dtype))


def _with_nans(shape, axis, dtype, seed):
    """Data with NaNs, and the same data with each NaN replaced by a non-NaN value of its slice."""
    x = sample(shape, tf.float64, seed).numpy()
    rng = np.random.default_rng(seed)
    nan_mask = rng.random(shape) < 0.05
    moved = np.moveaxis(np.where(nan_mask, np.nan, x), axis, 0) if axis != -1 else np.where(nan_mask, np.nan, x)[None]
    filled = moved.copy()
    for c in range(moved.shape[0]):
        s = filled[c]
        members = s[~np.isnan(s)]
        s[np.isnan(s)] = members[0] if members.size else 0.0  # any member of the slice keeps its min/max
    back = (lambda a: np.moveaxis(a, 0, axis)) if axis != -1 else (lambda a: a[0])
    with_nan = tf.cast(tf.constant(back(moved)), dtype)
    return with_nan, tf.cast(tf.constant(back(filled)), dtype), tf.math.is_nan(tf.cast(with_nan, tf.float32)).numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape,axis", [((70001,), -1), ((300, 129), 0), ((601, 13), 1), ((3, 20000), 1)], ids=str)
def test_auto_range_ignores_nan(isa, dtype, shape, axis):
    x, filled, nan_mask = _with_nans(shape, axis, dtype, seed=21)
    zero = tf.zeros([], dtype)
    ours = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=zero, input_max=zero, axis=axis, num_bits=8)
    ref = tf_reference("QuantizeAndDequantizeV4", filled, zero, zero, axis, num_bits=8, range_given=False)
    assert_same_bits(ours, ref, nan_mask=nan_mask, skip=all_zero_channels(filled, axis))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape,axis", [((64, 70), 0), ((101, 6), 1), ((4, 6, 5), 1)], ids=str)
@pytest.mark.parametrize("round_mode", ["HALF_TO_EVEN", "HALF_UP"])
def test_degenerate_channels(isa, dtype, shape, axis, round_mode):
    # An all-zero channel has no usable range (SEMANTICS §3.4 FIX): zeros out, NaN stays NaN, the same bits
    # as the baseline loops, and the other channels equal TensorFlow's. With HALF_TO_EVEN each zero is
    # the one TF's own rule gives, round(v) * inv_scale, where inv_scale = max / qmax carries the sign
    # of the channel's measured max (its first zero in memory order, as a sequential max keeps).
    x = sample(shape, tf.float64, seed=31).numpy()
    moved = np.moveaxis(x, axis, 0)
    rng = np.random.default_rng(1)
    moved[2] = np.where(rng.random(moved[2].shape) < 0.5, 0.0, -0.0)
    moved[2][(0,) * (moved.ndim - 1)] = np.nan
    xt = tf.cast(tf.constant(x), dtype)
    zero = tf.zeros([], dtype)
    kw = dict(input=xt, input_min=zero, input_max=zero, axis=axis, round_mode=round_mode)
    ours = qdq.raw_ops.QuantizeAndDequantizeV4(**kw).numpy()
    with _isa.using("baseline"):
        baseline = qdq.raw_ops.QuantizeAndDequantizeV4(**kw).numpy()
    np.testing.assert_array_equal(_bits(ours), _bits(baseline))
    dead = np.moveaxis(ours, axis, 0)[2].reshape(-1)
    assert np.isnan(dead[0].astype(np.float32)) and (dead[1:].astype(np.float32) == 0).all()
    if round_mode == "HALF_TO_EVEN":
        zeros = np.moveaxis(xt.numpy(), axis, 0)[2].reshape(-1)[1:]
        sign = -1.0 if np.signbit(zeros[0].astype(np.float32)) else 1.0
        assert_same_bits(dead[1:], (zeros.astype(np.float32) * np.float32(sign)).astype(zeros.dtype))
    ref = tf_reference("QuantizeAndDequantizeV4", xt, zero, zero, axis, range_given=False, round_mode=round_mode)
    keep = [c for c in range(moved.shape[0]) if c != 2]
    assert_same_bits(np.moveaxis(ours, axis, 0)[keep], np.moveaxis(ref.numpy(), axis, 0)[keep])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_large_outputs_streamed(isa, dtype):
    # Outputs of 16 MiB and more are written with non-temporal stores; 2^22 + 3 float32 elements
    # also leaves a misaligned tail for every dtype.
    n = (1 << 22) + 3 if dtype != tf.float64 else (1 << 21) + 3
    x = sample((n,), dtype, seed=41)
    lo, hi = ranges(x, -1, dtype, seed=42)
    for range_given in [False, True]:
        attrs = dict(num_bits=8, range_given=range_given)
        ours = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=lo, input_max=hi, **attrs)
        assert_same_bits(ours, tf_reference("QuantizeAndDequantizeV4", x, lo, hi, -1, **attrs))
    ours = qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=x, input=x, input_min=lo, input_max=hi)[0]
    c = _compute(dtype)
    ref = tf.raw_ops.QuantizeAndDequantizeV4Grad(gradients=tf.cast(x, c), input=tf.cast(x, c),
                                                 input_min=tf.cast(lo, c), input_max=tf.cast(hi, c))[0]
    assert_same_bits(ours, tf.cast(ref, dtype))


def test_large_per_channel_auto_many_shards(isa):
    # Reductions split channels across shards; merged bound by bound (an empty shard must not leak).
    for shape, axis in [((2048, 3, 700), 1), ((4096, 1030), 1), ((1030, 4096), 0)]:
        x = sample(shape, tf.float32, seed=51)
        zero = tf.zeros([])
        ours = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=zero, input_max=zero, axis=axis)
        ref = tf.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=zero, input_max=zero, axis=axis)
        assert_same_bits(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_instruction_sets_agree_on_special_values(dtype):
    # Infinities, NaN payloads, subnormals, ties and degenerate ranges: every ISA gives the same bits,
    # including where TensorFlow has no reference (SEMANTICS FIX rows).
    if _BEST != "avx2":
        pytest.skip("this CPU has only the baseline loops: nothing to compare them with")
    rng = np.random.default_rng(61)
    specials = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 1e-45, -1e-39, 0.5, -0.5, 1.5, 2.5,
                         65504.0, 7e4, 3.4e38, -3.4e38])
    x = tf.cast(tf.constant(np.concatenate([rng.normal(size=997) * 4, specials])), dtype)
    cases = []
    for lo, hi in [(-1.0, 1.0), (0.0, 0.0), (-0.0, 0.0), (0.0, 5.0), (-np.inf, np.inf), (-3.0, -1.0)]:
        for signed_input, narrow, bits in [(True, False, 8), (False, False, 4), (True, True, 1), (True, False, 1)]:
            for range_given in [False, True]:
                for mode in ["HALF_TO_EVEN", "HALF_UP"]:
                    cases.append(dict(input=x, input_min=tf.cast(lo, dtype), input_max=tf.cast(hi, dtype),
                                      signed_input=signed_input, narrow_range=narrow, num_bits=bits,
                                      range_given=range_given, round_mode=mode))
    results = {}
    for name in ISAS:
        with _isa.using(name):
            results[name] = [qdq.raw_ops.QuantizeAndDequantizeV4(**kw).numpy() for kw in cases]
            results[name].append(qdq.raw_ops.QuantizeAndDequantizeV4Grad(
                gradients=x, input=x, input_min=tf.cast(-1.0, dtype), input_max=tf.cast(np.inf, dtype))[0].numpy())
    for a, b in zip(results["baseline"], results["avx2"]):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_isa_switch_reports_choice_and_moves_the_core_too():
    from tensorflow_qdq import _core

    assert _isa.current() == _BEST == _core.cpu_isa()
    with _isa.using("baseline") as got:
        assert got == "baseline" == _isa.current() == _core.cpu_isa()
    assert _isa.current() == _BEST == _core.cpu_isa()


def test_environment_variable_forces_baseline_at_load():
    # QDQ_CPU_ISA=baseline is read when the library loads (a fresh process).
    import os
    import subprocess
    import sys

    code = ("import tensorflow_qdq; from tensorflow_qdq import _isa, _core; "
            "print(_isa.current(), _core.cpu_isa())")
    env = dict(os.environ, QDQ_CPU_ISA="baseline", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "baseline baseline"
