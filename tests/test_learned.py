"""Learned ranges (LSQ): the fused Qdq>QuantizeAndDequantizeLsqGrad kernel against a NumPy
model written from LSQ's definition (tests/helpers/reference.py), its XLA composite against the
kernel, quantize_and_dequantize_learned's forward against V4 and its gradients, second
order against finite differences, and a step that collapses staying valid."""
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tensorflow_qdq import _composite
from tests.helpers import compare, reference

LAYOUTS = [((1000,), -1), ((40000,), -1), ((5, 300), 0), ((4, 6, 33), 1), ((257, 30), 1), ((3, 2, 5), 2),
           ((0, 4), 1), ((6, 0), 0)]
DTYPES = [np.float32, np.float64, np.float16, tf.bfloat16.as_numpy_dtype]


def _case(rng, dtype, shape, axis, trial):
    unsigned = trial % 3 == 2
    depth = 1 if axis == -1 else shape[axis]
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    if trial == 4 and x.size:
        x.reshape(-1)[:: 7] = np.nan
    g = rng.standard_normal(shape).astype(dtype)
    a, b = rng.standard_normal(depth) * 3, rng.standard_normal(depth) * 3
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if unsigned:
        lo, hi = np.zeros(depth), np.abs(hi)
    if trial == 5 and depth:
        lo[0] = hi[0] = 0.0  # a degenerate slice: no step, no step gradient
    lo, hi = lo.astype(dtype), hi.astype(dtype)
    if axis == -1:
        lo, hi = lo.reshape(()), hi.reshape(())
    attrs = dict(signed_input=not unsigned, num_bits=int(rng.choice([1, 2, 3, 4, 8, 16])),
                 round_mode=["HALF_TO_EVEN", "HALF_UP"][trial % 2], narrow_range=trial % 4 == 1, axis=axis)
    return g, x, lo, hi, attrs


def _check(got_backprop, got_step, g, x, lo, hi, attrs, label):
    want_backprop, want_step, magnitude = reference.lsq_gradient(g, x, lo, hi, **attrs)
    got_backprop = got_backprop.numpy() if hasattr(got_backprop, "numpy") else got_backprop
    assert compare.same_bits(got_backprop, want_backprop), f"{label}: input_backprop"
    got_step = (got_step.numpy() if hasattr(got_step, "numpy") else np.asarray(got_step)).reshape(-1)
    assert reference.close_in_dtype(got_step, want_step, magnitude, x.dtype), \
        f"{label}: step_backprop {got_step} vs {want_step}"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_kernel_matches_lsq_reference(dtype, shape, axis):
    rng = np.random.default_rng(abs(hash((np.dtype(dtype).name, shape, axis))) % 2**32)
    for trial in range(6):
        g, x, lo, hi, attrs = _case(rng, dtype, shape, axis, trial)
        backprop, step = qdq.raw_ops.QuantizeAndDequantizeLsqGrad(gradients=g, input=x, input_min=lo, input_max=hi,
                                                                  **attrs)
        assert step.shape == np.shape(lo)
        _check(backprop, step, g, x, lo, hi, attrs, f"{shape} axis={axis} {attrs}")


def test_kernel_input_backprop_is_v4grads():
    """One mask: the fused kernel's input gradient is V4Grad's, bit for bit."""
    rng = np.random.default_rng(3)
    for shape, axis in LAYOUTS[:6]:
        g, x, lo, hi, attrs = _case(rng, np.float32, shape, axis, 4)
        got = qdq.raw_ops.QuantizeAndDequantizeLsqGrad(gradients=g, input=x, input_min=lo, input_max=hi, **attrs)[0]
        want = qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=g, input=x, input_min=lo, input_max=hi, axis=axis)[0]
        assert compare.same_bits(got.numpy(), want.numpy())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_xla_composite_matches_kernel(dtype):
    rng = np.random.default_rng(5)
    for shape, axis in LAYOUTS[:6]:
        for trial in range(6):
            g, x, lo, hi, attrs = _case(rng, dtype, shape, axis, trial)
            fn = tf.function(lambda g, x, lo, hi, a=attrs: qdq.raw_ops.QuantizeAndDequantizeLsqGrad(  # noqa: E731
                gradients=g, input=x, input_min=lo, input_max=hi, **a), jit_compile=True)
            backprop, step = fn(g, x, lo, hi)
            _check(backprop, step, g, x, lo, hi, attrs, f"XLA {shape} axis={axis} {attrs}")


@pytest.mark.parametrize("axis", [None, 1])
def test_learned_function_forward_is_v4_and_gradients_are_lsq(axis):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((16, 5)) * 2).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    step = np.float32(0.3) if axis is None else np.linspace(0.05, 0.5, 5).astype(np.float32)
    for bits, signed in ((4, True), (3, False), (8, True)):
        qmin, qmax = reference.int_range(signed, bits, False)
        lo, hi = np.float32(qmin) * step, np.float32(qmax) * step
        s = tf.Variable(step)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = qdq.quantize_and_dequantize_learned(xt, s, signed_input=signed, num_bits=bits, axis=axis)
        dx, ds = tape.gradient(y, [xt, s], output_gradients=tf.constant(g))
        raw_axis = -1 if axis is None else axis
        want = reference.quantize(x, lo, hi, signed_input=signed, num_bits=bits, range_given=True, axis=raw_axis)
        assert compare.same_bits(y.numpy(), want)
        want_dx, want_ds, magnitude = reference.lsq_gradient(g, x, lo, hi, signed_input=signed, num_bits=bits,
                                                            axis=raw_axis)
        assert compare.same_bits(dx.numpy(), want_dx)
        assert reference.close_in_dtype(ds.numpy().reshape(-1), want_ds, magnitude, np.float32)


def test_step_gradient_is_lsqs_straight_through_derivative():
    """Between rounding boundaries the forward pass's true derivative along the step is
    round(x/s) inside the range and qmin/qmax outside (measured here by finite differences);
    LSQ passes round() straight through, which adds -x/s inside. So the kernel's step gradient,
    unscaled, must equal the numeric derivative minus sum(g * x / s) over the elements inside."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, 400)
    s, h = 0.137, 1e-7
    g = rng.standard_normal(400)

    def f(step):
        return float(np.sum(g * qdq.quantize_and_dequantize_learned(x, tf.constant(step, tf.float64), num_bits=4)))

    numeric = (f(s + h) - f(s - h)) / (2 * h)
    inside = (x >= -8 * s) & (x <= 7 * s)
    want = numeric - np.sum(g[inside] * x[inside] / s)
    sv = tf.Variable(s, dtype=tf.float64)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(g * qdq.quantize_and_dequantize_learned(tf.constant(x), sv, num_bits=4))
    analytic = float(tape.gradient(y, sv)) * np.sqrt(x.size * 7)  # undo LSQ's gradient scale 1/sqrt(n * Qp)
    assert analytic == pytest.approx(want, rel=1e-6)


def test_second_order_matches_finite_differences():
    """Both outputs of LsqGrad are linear in the upstream gradient: its registered gradient
    w.r.t. it is checked against TensorFlow's numeric Jacobian."""
    rng = np.random.default_rng(8)
    x = tf.constant(rng.uniform(-3, 3, (6, 4)))
    lo, hi = tf.constant([-1.0, -2.0, -0.5, 0.0], tf.float64), tf.constant([1.0, 2.5, 0.25, 3.0], tf.float64)

    def fn(g):
        backprop, step = qdq.raw_ops.QuantizeAndDequantizeLsqGrad(gradients=g, input=x, input_min=lo, input_max=hi,
                                                                  num_bits=3, axis=1)
        return tf.concat([tf.reshape(backprop, [-1]), step * 3.0], 0)

    theoretical, numerical = tf.test.compute_gradient(fn, [tf.constant(rng.standard_normal((6, 4)))])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf, 1e-45])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_collapsed_step_stays_valid(bad, dtype):
    """A step at 0, negative, NaN, inf or denormal is clamped into a finite positive range:
    the output and both gradients are finite, and the gradient reaches the variable."""
    x = tf.constant(np.linspace(-3, 3, 50).astype(dtype))
    s = tf.Variable(np.float32(bad))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = qdq.quantize_and_dequantize_learned(x, s, num_bits=4)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    dx, ds = tape.gradient(loss, [x, s])
    assert np.all(np.isfinite(y.numpy())) and np.all(np.isfinite(dx.numpy())) and np.isfinite(ds.numpy())
    assert ds is not None


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_bits=0"):
        qdq.quantize_and_dequantize_learned([1.0], 0.1, num_bits=0)
    with pytest.raises(TypeError, match="input must be"):
        qdq.quantize_and_dequantize_learned(tf.constant([1]), 0.1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_min must be <= input_max"):
        qdq.raw_ops.QuantizeAndDequantizeLsqGrad(gradients=[1.0], input=[1.0], input_min=1.0, input_max=0.0)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="gradients must have the shape"):
        qdq.raw_ops.QuantizeAndDequantizeLsqGrad(gradients=[1.0, 2.0], input=[1.0], input_min=0.0, input_max=1.0)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="input_min"):
        qdq.raw_ops.QuantizeAndDequantizeLsqGrad(gradients=[[1.0]], input=[[1.0]], input_min=[0.0, 1.0],
                                                 input_max=[1.0, 2.0], axis=1)


def test_composite_step_derivative_is_the_reference_one():
    """The composite's element derivative (also used for second order) against the reference."""
    rng = np.random.default_rng(4)
    g, x, lo, hi, attrs = _case(rng, np.float32, (7, 9), 1, 1)
    d = _composite.lsq_step_derivative(x, lo, hi, **attrs).numpy()  # [outer, depth, inner]
    for c in range(9):
        one = np.zeros_like(g)
        one[:, c] = g[:, c]
        want = reference.lsq_gradient(one, x, lo, hi, **attrs)[1][c]
        assert np.sum(d[:, c, 0] * g[:, c].astype(np.float64)) == pytest.approx(want, rel=1e-9, abs=1e-12)
