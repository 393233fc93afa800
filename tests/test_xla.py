"""jit_compile: our ops lower to the composite, bit-identical to our kernels (SEMANTICS §3, §5).

The reference is the same Python function run eagerly, i.e. on the custom kernels
(whose agreement with TensorFlow's kernels is tested elsewhere). Many random cases
share one compiled function to keep compile time down.
"""

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tensorflow_qdq import _composite
from tests.helpers.cases import (
    DTYPES,
    ISAS,
    cpu_loops,
    per_channel_case,
    per_tensor_case,
    random_attrs,
    unsigned_zero_slices,
)
from tests.helpers.compare import assert_same_bits

ZERO = tf.UnconnectedGradients.ZERO
PER_TENSOR_CASES = 8
PER_CHANNEL_CASES = 6
DEPTH = 192
PER_SLICE = 24


def _api(kind):
    """The public entry points, all in the raw axis convention (-1 = per-tensor)."""
    if kind == "v2":
        return lambda x, lo, hi, axis, **a: qdq.raw_ops.QuantizeAndDequantizeV2(
            input=x, input_min=lo, input_max=hi, axis=axis, **a)
    if kind == "wrapper_v1":  # tf.quantization.quantize_and_dequantize style: identity gradient
        return lambda x, lo, hi, axis, **a: qdq.quantize_and_dequantize(
            x, lo, hi, axis=None if axis == -1 else axis, **a)
    if kind == "wrapper_v2":
        return lambda x, lo, hi, axis, **a: qdq.quantize_and_dequantize_v2(
            x, lo, hi, axis=None if axis == -1 else axis, **a)
    return lambda x, lo, hi, axis, **a: qdq.quantize_and_dequantize_v4(x, lo, hi, axis=axis, **a)


def _forward_and_gradients(cases, tensors):
    """For each case: output, d/dx, d/dmin, d/dmax of sum(output * w)."""
    results = []
    for (kind, axis, attrs), (x, lo, hi, w) in zip(cases, tensors):
        with tf.GradientTape() as tape:
            tape.watch([x, lo, hi])
            y = _api(kind)(x, lo, hi, axis, **attrs)
            loss = tf.reduce_sum(y * w)
        results.append([y, *tape.gradient(loss, [x, lo, hi], unconnected_gradients=ZERO)])
    return results


def _random_cases(seed, dtype):
    rng = np.random.default_rng(seed)
    np_dtype = dtype.as_numpy_dtype
    cases, arrays = [], []
    kinds = ("v2", "v4", "wrapper_v1", "wrapper_v2")
    for i in range(PER_TENSOR_CASES + PER_CHANNEL_CASES):
        attrs = random_attrs(rng, dtype)
        if i < PER_TENSOR_CASES:
            x, lo, hi = per_tensor_case(rng, dtype, (int(rng.integers(1, 5)), int(rng.integers(1, 40))), attrs)
            axis = -1
        else:
            x, lo, hi, axis = per_channel_case(rng, dtype, DEPTH, PER_SLICE, i % 3, attrs)
        # Upstream gradient: signed values, zeros (so -g * 0 signs show) and one NaN sometimes.
        w = rng.normal(size=x.shape) * (rng.random(x.shape) < 0.9)
        cases.append((kinds[i % len(kinds)], axis, attrs))
        arrays.append([x, lo, hi, w.astype(np_dtype)])
    return cases, arrays


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_xla_forward_and_gradient_bit_identical_to_kernels(dtype):
    cases, arrays = _random_cases(1000 + DTYPES.index(dtype), dtype)
    tensors = [[tf.constant(a) for a in case] for case in arrays]
    compiled = tf.function(lambda t: _forward_and_gradients(cases, t), jit_compile=True)
    actual = compiled(tensors)
    for isa in ISAS:  # eager: the custom kernels, on each set of CPU loops
        with cpu_loops(isa):
            expected = _forward_and_gradients(cases, tensors)
        slices = 0
        for (kind, axis, attrs), exp, act, arr in zip(cases, expected, actual, arrays):
            slices += 1 if axis == -1 else arr[0].shape[axis]
            sign_free = unsigned_zero_slices(arr[0], axis, attrs)
            for name, e, a in zip(("output", "d_input", "d_min", "d_max"), exp, act):
                assert_same_bits(a.numpy(), e.numpy(), f"{dtype.name} {isa} {kind} axis={axis} {attrs} {name}",
                                 sign_free if name == "output" else None)
    assert slices == PER_TENSOR_CASES + PER_CHANNEL_CASES * DEPTH  # 1160 independent slices per dtype


def test_composite_is_not_used_outside_xla(monkeypatch):
    calls = []
    real = _composite.forward
    monkeypatch.setattr(_composite, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = tf.constant([[-1.0, 0.3, 0.8]])

    def f(x):
        return qdq.quantize_and_dequantize_v2(x, [-1.0, -1.0, 0.0], [1.0, 0.5, 1.0], range_given=True, axis=1)

    eager = f(x)
    graph_fn = tf.function(f)
    graph = graph_fn(x)
    op_types = {op.type for op in graph_fn.get_concrete_function(x).graph.get_operations()}
    assert "Qdq>QuantizeAndDequantizeV4" in op_types and "Rint" not in op_types
    assert not calls, "the composite ran outside XLA"
    compiled = tf.function(f, jit_compile=True)(x)
    assert calls, "the composite was not used under jit_compile"
    assert_same_bits(compiled.numpy(), eager.numpy())
    assert_same_bits(graph.numpy(), eager.numpy())


def test_kernels_cannot_compile_so_routing_matters():
    """Without routing, XLA rejects the custom op: the composite is what makes jit work."""
    fn = tf.function(
        lambda x: qdq._loader.ops.qdq_quantize_and_dequantize_v4(x, x[0], x[0], axis=-1), jit_compile=True
    )
    with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.NotFoundError, tf.errors.UnimplementedError)):
        fn(tf.constant([1.0, 2.0]))


def test_v3_static_and_dynamic_num_bits():
    dtype = tf.bfloat16
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(6, 40)) * 3, dtype)
    lo = tf.constant(rng.uniform(-3, -0.1, size=40), dtype)
    hi = tf.constant(rng.uniform(0.1, 3, size=40), dtype)

    def f(x, bits):
        outs = []
        for axis, (a, b) in ((-1, (lo[0], hi[0])), (1, (lo, hi))):
            for signed in (True, False):
                for given in (True, False):
                    outs.append(qdq.raw_ops.QuantizeAndDequantizeV3(
                        input=x, input_min=a, input_max=b, num_bits=bits, signed_input=signed,
                        range_given=given, narrow_range=signed, axis=axis))
        return outs

    static = tf.function(lambda x: f(x, tf.constant(5)), jit_compile=True)(x)
    compiled = tf.function(f, jit_compile=True)  # compiled once; num_bits is a run-time value
    for bits in (1, 5, 16, 24):
        dynamic = compiled(x, tf.constant(bits))
        for e, a in zip(f(x, tf.constant(bits)), dynamic):
            assert_same_bits(a.numpy(), e.numpy(), f"V3 num_bits={bits} (tensor)")
    for e, a in zip(f(x, tf.constant(5)), static):
        assert_same_bits(a.numpy(), e.numpy(), "V3 num_bits=5 (constant)")


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16], ids=lambda d: d.name)
def test_v4_grad_op_and_second_order(dtype):
    rng = np.random.default_rng(6)
    x = tf.constant(np.where(rng.random((5, 7)) < 0.1, np.nan, rng.normal(size=(5, 7))), dtype)
    g = tf.constant(rng.normal(size=(5, 7)), dtype)
    lo = tf.constant(rng.uniform(-1, 0, size=7), dtype)
    hi = tf.constant(rng.uniform(0, 1, size=7), dtype)

    def f(g, x):
        with tf.GradientTape(persistent=True) as outer:
            outer.watch([g, x])
            back, dmin, dmax = qdq.raw_ops.QuantizeAndDequantizeV4Grad(
                gradients=g, input=x, input_min=lo, input_max=hi, axis=1)
            with tf.GradientTape() as inner:
                inner.watch(x)
                y = qdq.quantize_and_dequantize_v4(x, lo[0], hi[0], range_given=True)
                loss = tf.reduce_sum(y * g)
            dx = inner.gradient(loss, x)
            second = tf.reduce_sum(back * g) + tf.reduce_sum(dx * g)
        return [back, dmin, dmax, dx, *outer.gradient(second, [g, x], unconnected_gradients=ZERO)]

    compiled = tf.function(f, jit_compile=True)(g, x)
    for i, (e, a) in enumerate(zip(f(g, x), compiled)):
        assert_same_bits(a.numpy(), e.numpy(), f"V4Grad / second order result {i}")


def test_invalid_given_range_is_nan_under_xla_and_an_error_outside():
    x = tf.constant([[0.5, -0.5], [1.0, 2.0]])
    lo = tf.constant([1.0, -1.0])
    hi = tf.constant([-1.0, 1.0])  # channel 0 has min > max
    fn = tf.function(lambda x, lo, hi: qdq.quantize_and_dequantize_v2(x, lo, hi, range_given=True, axis=1),
                     jit_compile=True)
    out = fn(x, lo, hi).numpy()
    assert np.isnan(out[:, 0]).all()
    np.testing.assert_array_equal(out[:, 1], qdq.quantize_and_dequantize_v2(x[:, 1], -1.0, 1.0, range_given=True))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_m"):
        qdq.quantize_and_dequantize_v2(x, lo, hi, range_given=True, axis=1)


def test_static_errors_under_xla_name_the_argument():
    x = tf.constant([[1.0, 2.0]])
    with pytest.raises(ValueError, match="num_bits=0"):
        tf.function(lambda x: qdq.quantize_and_dequantize_v2(x, 0.0, 0.0, num_bits=0), jit_compile=True)(x)
    with pytest.raises(ValueError, match="axis=2"):
        tf.function(lambda x: qdq.quantize_and_dequantize_v4(x, 0.0, 0.0, axis=2), jit_compile=True)(x)
    with pytest.raises(ValueError, match="input_min"):
        tf.function(lambda x: qdq.quantize_and_dequantize_v2(x, [0.0, 1.0, 2.0], [1.0, 2.0, 3.0],
                                                             range_given=True, axis=1), jit_compile=True)(x)
    # An element type outside the contract (the kernels' type attribute rejects it outside XLA).
    with pytest.raises(TypeError, match=r"input must be bfloat16, float16, float32 or float64, got int32"):
        tf.function(lambda x: qdq.quantize_and_dequantize_v2(x, 0, 0), jit_compile=True)(tf.constant([1, 2]))


def test_keras_models_compile_with_xla(monkeypatch):
    """Every layer of a quantized model reports supports_jit (so Keras's jit_compile='auto'
    picks XLA on machines with an accelerator; on CPU-only machines Keras never does);
    predictions equal the kernels' and QAT training runs through the composite."""
    import keras

    from tensorflow_qdq.keras import QuantizeAndDequantize, quantize_model

    calls = []
    real = _composite.forward
    monkeypatch.setattr(_composite, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, 12)).astype(np.float32) * 2
    y = (x[:, :3].sum(1) > 0).astype(np.int32)

    def layer_model(jit):
        model = keras.Sequential([keras.Input((12,)), QuantizeAndDequantize(num_bits=4, axis=-1, round_mode="HALF_UP")])
        model.compile(jit_compile=jit)
        return model

    plain = layer_model(False).predict(x, verbose=0)
    assert not calls
    compiled = layer_model(True).predict(x, verbose=0)
    assert calls
    assert_same_bits(compiled, plain, "Keras layer predict, jit_compile=True vs False")

    keras.utils.set_random_seed(0)
    float_model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                                    keras.layers.Dense(2)])
    model = quantize_model(float_model, weight_bits=4, activation_bits=8)
    assert all(layer.supports_jit for layer in model._flatten_layers())  # what 'auto' asks
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    calls.clear()
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"]
    assert calls and np.all(np.isfinite(history)) and history[-1] < history[0]


def test_documented_limit_inner_function_traced_outside_xla():
    """docs/XLA_EXPORT.md: an inner tf.function first traced outside XLA keeps its kernel trace
    (TensorFlow's cache), which XLA rejects; one first traced inside the jit function works."""
    x = tf.constant([1.0, -0.25, 0.5])
    inner = tf.function(lambda x: qdq.quantize_and_dequantize_v2(x, 0.0, 0.0))
    inner(x)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Qdq>"):
        tf.function(lambda x: inner(x) * 2, jit_compile=True)(x)
    fresh = tf.function(lambda x: qdq.quantize_and_dequantize_v2(x, 0.0, 0.0))
    out = tf.function(lambda x: fresh(x) * 2, jit_compile=True)(x)
    assert_same_bits(out.numpy(), (qdq.quantize_and_dequantize_v2(x, 0.0, 0.0) * 2).numpy())


def test_denormal_inputs_and_ranges_match_the_kernels():
    x = tf.constant(np.array([1e-40, -3e-39, 1.0, 0.5, 2e-45, -0.0], np.float32))
    for given in (False, True):
        def f(x, given=given):
            return qdq.quantize_and_dequantize_v2(x, np.float32(-1e-39), np.float32(1e-39), range_given=given)
        assert_same_bits(tf.function(f, jit_compile=True)(x).numpy(), f(x).numpy(), f"given={given}")


def test_static_range_shapes_checked_as_outside_xla_for_measured_ranges_too():
    x = tf.constant([[1.0, 2.0]])
    bad_calls = [
        lambda x: qdq.quantize_and_dequantize_v2(x, 0.0, 0.0, axis=1),  # per channel needs vectors
        lambda x: qdq.quantize_and_dequantize_v2(x, [0.0], [0.0]),  # per tensor needs scalars
    ]
    for call in bad_calls:
        with pytest.raises(ValueError, match="input_min"):
            tf.function(call)(x)  # the kernels' shape functions
        with pytest.raises(ValueError, match="input_min"):
            tf.function(call, jit_compile=True)(x)  # the composite
