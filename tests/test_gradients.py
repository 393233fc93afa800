"""Gradients (SEMANTICS §5): V2/V3 identity; V4 masked — given ranges bit-identical to TF's
V4Grad, auto ranges masked with the measured range; V4Grad itself; numeric checks;
second order; eager, tf.function, GradientTape and tf.gradients."""
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers import cases, compare, reference

DTYPES = (np.float32, np.float64)


def _grads(fn, x, lo, hi, g, function=False):
    """(d input, d input_min, d input_max) of fn(x, lo, hi) for upstream gradient g."""
    def run(x, lo, hi, g):
        with tf.GradientTape() as tape:
            tape.watch([x, lo, hi])
            y = fn(x, lo, hi)
        return tape.gradient(y, [x, lo, hi], output_gradients=g)

    run = tf.function(run) if function else run
    return run(tf.constant(x), tf.constant(lo), tf.constant(hi), tf.constant(g))


def _raw(op, case, **over):
    def fn(x, lo, hi):
        kw = case.kwargs(op)
        kw.update(input=x, input_min=lo, input_max=hi, **over)
        return getattr(qdq.raw_ops, op)(**kw)
    return fn


def _upstream(rng, x):
    return rng.standard_normal(x.shape).astype(x.dtype)


@pytest.mark.parametrize("function", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("op", ["QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3"])
def test_v2_v3_gradient_is_identity(op, function):
    rng = np.random.default_rng(1)
    batch = [c for c in cases.random_cases(11, 30 if function else 60, np.float32) if not c.degenerate()]
    bad = []
    for i, c in enumerate(batch):
        g = _upstream(rng, c.x)
        dx, dmin, dmax = _grads(_raw(op, c), c.x, c.input_min, c.input_max, g, function)
        if dmin is not None or dmax is not None or not compare.same_bits(dx, g):
            bad.append(f"#{i} {c!r}: dmin={dmin} dmax={dmax} {compare.describe(dx, g)}")
    cases.record(f"gradient identity {op}", len(batch))
    assert not bad, "\n".join(bad)


def test_wrapper_v1_semantics_identity_gradient():
    x = tf.constant([-3.0, -0.5, 0.0, 0.7, 9.0])
    g = tf.constant([1.0, 2.0, 3.0, 4.0, 5.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = qdq.quantize_and_dequantize(x, -1.0, 1.0, range_given=True)
    compare.assert_same_bits(tape.gradient(y, x, output_gradients=g), g, "straight-through")


@pytest.mark.parametrize("function", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_v4_given_per_tensor_matches_tf_gradient(dtype, function):
    """Per-tensor given ranges: TF's V4 gradient is right; ours is bit-identical, min/max get zeros."""
    rng = np.random.default_rng(2)
    batch = [c for c in cases.random_cases(12, 40 if function else 120, dtype, per_channel=False,
                                           range_given=True) if not c.degenerate()]
    bad = []
    for i, c in enumerate(batch):
        g = _upstream(rng, c.x)
        ours = _grads(_raw("QuantizeAndDequantizeV4", c), c.x, c.input_min, c.input_max, g, function)

        def tf_fn(x, lo, hi, c=c):
            kw = c.kwargs("QuantizeAndDequantizeV4")
            kw.update(input=x, input_min=lo, input_max=hi)
            return tf.raw_ops.QuantizeAndDequantizeV4(**kw)

        theirs = _grads(tf_fn, c.x, c.input_min, c.input_max, g, function)
        for what, a, b in zip(("input", "input_min", "input_max"), ours, theirs):
            if not compare.same_bits(a, b):
                bad.append(f"#{i} d{what} {c!r}: {compare.describe(a, b)}")
        if np.any(np.asarray(ours[1])) or np.asarray(ours[1]).shape != c.input_min.shape:
            bad.append(f"#{i} dmin not zeros of min's shape: {ours[1]}")
    cases.record(f"V4 gradient vs TF {np.dtype(dtype).name}", len(batch))
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("function", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_v4_given_per_channel_matches_tf_v4grad(dtype, function):
    """TF's V4 rejects per-channel given ranges, but its V4Grad kernel accepts them: same mask."""
    rng = np.random.default_rng(3)
    batch = cases.random_cases(13, 40 if function else 120, dtype, per_channel=True, range_given=True)
    bad = []
    for i, c in enumerate(batch):
        g = _upstream(rng, c.x)
        dx, dmin, dmax = _grads(_raw("QuantizeAndDequantizeV4", c), c.x, c.input_min, c.input_max, g, function)
        want = tf.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g, input=c.x, input_min=c.input_min,
                                                      input_max=c.input_max, axis=c.axis)
        for what, a, b in zip(("input", "input_min", "input_max"), (dx, dmin, dmax), want):
            if not compare.same_bits(a, b):
                bad.append(f"#{i} d{what} {c!r}: {compare.describe(a, b)}")
    cases.record(f"V4 per-channel gradient vs TF V4Grad {np.dtype(dtype).name}", len(batch))
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("function", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_v4_auto_masks_with_measured_range(per_channel, function):
    """FIX (SEMANTICS §5): auto ranges mask with the range the forward pass measured, which
    holds every non-NaN element of its slice: the gradient passes everywhere but at NaN.
    That equals TF's own V4Grad kernel fed the measured range (TF is right there)."""
    rng = np.random.default_rng(4)
    batch = cases.random_cases(14, 30 if function else 80, np.float32, per_channel=per_channel, range_given=False)
    bad = []
    for i, c in enumerate(batch):
        x = c.x.copy()
        if x.size > 2:
            x.reshape(-1)[rng.integers(0, x.size)] = np.nan
        c.x = x
        g = _upstream(rng, x)
        dx, dmin, dmax = _grads(_raw("QuantizeAndDequantizeV4", c), x, c.input_min, c.input_max, g, function)
        slices = c.slices()
        lo = np.array([s[0] for s in slices], x.dtype).reshape(c.input_min.shape)
        hi = np.array([s[1] for s in slices], x.dtype).reshape(c.input_max.shape)
        want = tf.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g, input=x, input_min=lo, input_max=hi,
                                                      axis=c.axis)[0]
        model = np.where(np.isnan(x), np.float32(0) * g, g)
        for what, a, b in (("vs TF V4Grad(measured)", dx, want), ("vs model", dx, model),
                           ("dmin", dmin, np.zeros_like(c.input_min)), ("dmax", dmax, np.zeros_like(c.input_max))):
            if not compare.same_bits(a, b):
                bad.append(f"#{i} {what} {c!r}: {compare.describe(a, b)}")
    cases.record("V4 auto gradient", len(batch))
    assert not bad, "\n".join(bad[:20])


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_v4grad_op_matches_tf(dtype):
    """The raw V4Grad op on random gradients, inputs (with NaN, inf, boundary values) and bounds."""
    rng = np.random.default_rng(5)
    bad, n = [], 0
    for i, c in enumerate(cases.random_cases(15, 400, dtype, range_given=True)):
        x = c.x.copy().reshape(-1)
        if x.size:
            k = rng.integers(0, x.size, size=min(4, x.size))
            lo_flat = np.broadcast_to(c.input_min.reshape(-1)[:1], k.shape)
            x[k] = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0], dtype), size=k.size)
            x[k[:1]] = lo_flat[:1]  # exactly on a bound: inclusive
        x = x.reshape(c.x.shape)
        g = _upstream(rng, x)
        if x.size and rng.random() < 0.2:
            g.reshape(-1)[0] = rng.choice([np.nan, np.inf, -0.0])
        kw = dict(gradients=g, input=x, input_min=c.input_min, input_max=c.input_max, axis=c.axis)
        ours, theirs = qdq.raw_ops.QuantizeAndDequantizeV4Grad(**kw), tf.raw_ops.QuantizeAndDequantizeV4Grad(**kw)
        ref = reference.masked_gradient(g, x, c.input_min, c.input_max, axis=c.axis, daz=False)
        n += 1
        for what, a, b in (("backprop", ours[0], theirs[0]), ("min", ours[1], theirs[1]),
                           ("max", ours[2], theirs[2]), ("model", ours[0], ref)):
            if not compare.same_bits(a, b):
                bad.append(f"#{i} {what} {c!r}: {compare.describe(a, b)}")
    cases.record(f"V4Grad op vs TF {np.dtype(dtype).name}", n)
    assert not bad, "\n".join(bad[:20])


def test_tf_gradients_in_graph_mode():
    """tf.gradients inside a v1 graph: V2 identity, V4 masked with the given range."""
    x_np = np.array([-2.0, -1.0, -0.25, 0.0, 0.5, 1.0, 3.0], np.float32)
    with tf.Graph().as_default():
        x = tf.constant(x_np)
        y2 = qdq.quantize_and_dequantize(x, -1.0, 1.0, range_given=True)
        y4 = qdq.quantize_and_dequantize_v2(x, -1.0, 1.0, range_given=True)
        g2, g4 = tf.gradients(y2, x)[0], tf.gradients(y4, x)[0]
        with tf.compat.v1.Session() as sess:
            g2, g4 = sess.run([g2, g4])
    np.testing.assert_array_equal(g2, np.ones_like(x_np))
    np.testing.assert_array_equal(g4, ((x_np >= -1) & (x_np <= 1)).astype(np.float32))


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_numeric_gradient_of_forward_away_from_steps(per_channel):
    """With 40 bits in float64 the grid step (~1e-12) is far below the finite-difference step,
    so the forward op is numerically the identity inside the range and constant outside it:
    its numeric Jacobian is the V4 mask. Points stay away from the range bounds."""
    rng = np.random.default_rng(6)
    x = rng.uniform(-2, 2, (3, 4))
    x[np.abs(np.abs(x) - 1) < 0.05] = 0.5
    lo = np.full(3, -1.0) if per_channel else np.float64(-1.0)
    hi = np.full(3, 1.0) if per_channel else np.float64(1.0)
    axis = 0 if per_channel else None

    def f(t):
        return qdq.quantize_and_dequantize_v2(t, lo, hi, range_given=True, num_bits=40, axis=axis)

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(x)], delta=1e-3)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)
    np.testing.assert_array_equal(np.diag(theoretical[0]), (np.abs(x) <= 1).reshape(-1).astype(np.float64))


def test_numeric_gradient_of_v4grad_wrt_gradients():
    """V4Grad is linear in `gradients`: its numeric Jacobian equals the second-order gradient."""
    x = tf.constant([[-2.0, -0.5, 0.0], [0.7, 1.0, 3.0]], tf.float64)
    lo, hi = tf.constant([-1.0, -0.6, 0.0], tf.float64), tf.constant([1.0, 0.2, 2.0], tf.float64)

    def f(g):
        return qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g, input=x, input_min=lo, input_max=hi, axis=1)[0]

    theoretical, numerical = tf.test.compute_gradient(f, [tf.ones_like(x)])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-9)
    mask = reference.masked_gradient(np.ones((2, 3)), x.numpy(), lo.numpy(), hi.numpy(), axis=1)
    np.testing.assert_array_equal(np.diag(theoretical[0]), mask.reshape(-1))


@pytest.mark.parametrize("function", [False, True], ids=["eager", "tf.function"])
def test_second_order_gradient(function):
    """FIX (SEMANTICS §5): d/dg of (dV4/dx · w) is w·mask; d/dx of the mask is zero (TF raises TypeError)."""
    x_np = np.array([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5], np.float32)
    w_np = np.arange(1, 8, dtype=np.float32)

    def run(x, g, w):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([x, g])
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = qdq.quantize_and_dequantize_v2(x, -1.0, 1.0, range_given=True)
            dx = inner.gradient(y, x, output_gradients=g)
            s = tf.reduce_sum(dx * w)
        return outer.gradient(s, g), outer.gradient(s, x)

    run = tf.function(run) if function else run
    d_g, d_x = run(tf.constant(x_np), tf.ones_like(x_np), tf.constant(w_np))
    mask = ((x_np >= -1) & (x_np <= 1)).astype(np.float32)
    np.testing.assert_array_equal(d_g, w_np * mask)
    assert d_x is None or not np.any(d_x.numpy())


def test_gradients_half_and_bfloat16():
    """The masked gradient in the narrow types equals the float32 mask cast back."""
    for dtype in (tf.half, tf.bfloat16):
        x = tf.cast(tf.constant([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5]), dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = qdq.quantize_and_dequantize_v2(x, tf.cast(-1.0, dtype), tf.cast(1.0, dtype), range_given=True)
        dx = tape.gradient(y, x, output_gradients=tf.cast(tf.range(1.0, 8.0), dtype))
        assert dx.dtype == dtype
        np.testing.assert_array_equal(tf.cast(dx, tf.float32).numpy(), [0, 2, 3, 4, 5, 6, 0])


def test_v4_auto_gradient_with_unknown_shape_in_tf_function():
    """The auto-range mask is built from tf.shape, so it works when the rank is unknown at trace."""
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = qdq.quantize_and_dequantize_v4(x, tf.zeros([3]), tf.zeros([3]), axis=1)
        return tape.gradient(y, x)

    x = np.array([[1.0, np.nan, -3.0], [0.5, 2.0, -1.0]], np.float32)
    np.testing.assert_array_equal(grad(x).numpy(), np.isfinite(x).astype(np.float32))
