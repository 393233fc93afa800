"""tensorflow_qdq.keras.QuantizeAndDequantize: config, range modes, per-channel ranges,
gradients, tf.function and model.fit/evaluate/predict — against TensorFlow's own kernels
and a NumPy model of the tracked ranges (tests/helpers/keras_reference.py)."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq
from tensorflow_qdq.keras import QuantizeAndDequantize
from tests.helpers.compare import bits
from tests.helpers.keras_reference import builtin_qdq, tracked_ranges

RNG = np.random.default_rng(1234)


def data(*shape, scale=3.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# -- configuration -------------------------------------------------------------------------

CONFIGS = [
    dict(),
    dict(num_bits=4, axis=-1, signed=False, narrow_range=True, round_mode="HALF_UP", gradient="straight_through"),
    dict(range_mode="fixed", min_value=-2.0, max_value=1.5, num_bits=5),
    dict(range_mode="fixed", axis=1, min_value=[-1.0, -2.0, -3.0], max_value=[1.0, 2.0, 0.5]),
    dict(range_mode="tracked", momentum=0.9, axis=0),
    dict(range_mode="tracked", min_value=-1.0, max_value=1.0, name="custom_name"),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_config_round_trip_gives_same_layer(config):
    layer = QuantizeAndDequantize(**config)
    clone = QuantizeAndDequantize.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    for key, value in config.items():
        assert layer.get_config()[key] == value
    x = data(4, 3)
    np.testing.assert_array_equal(bits(layer(x).numpy()), bits(clone(x).numpy()))
    # and through Keras' generic serialization (what .keras files use)
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is QuantizeAndDequantize and revived.get_config() == layer.get_config()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_bits=0), "num_bits=0"),
        (dict(num_bits=62), "num_bits=62"),
        (dict(num_bits=63, signed=False), "num_bits=63"),
        (dict(range_mode="moving"), "range_mode='moving'"),
        (dict(round_mode="HALF_DOWN"), "round_mode='HALF_DOWN'"),
        (dict(gradient="ste"), "gradient='ste'"),
        (dict(momentum=1.0), "momentum=1.0"),
        (dict(range_mode="fixed", min_value=0.0), "needs both min_value and max_value"),
        (dict(range_mode="fixed", min_value=1.0, max_value=0.0), "min_value must be <= max_value"),
        (dict(range_mode="fixed", min_value=float("nan"), max_value=1.0), "min_value must hold finite"),
        (dict(range_mode="fixed", min_value=[0.0], max_value=[1.0]), "need an axis"),
        (dict(range_mode="batch", min_value=0.0, max_value=1.0), "not 'batch'"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        QuantizeAndDequantize(**kwargs)


def test_bad_types_and_shapes_raise():
    with pytest.raises(TypeError, match="num_bits"):
        QuantizeAndDequantize(num_bits=8.0)
    with pytest.raises(TypeError, match="axis"):
        QuantizeAndDequantize(axis="last")
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        QuantizeAndDequantize(axis=2)(data(3, 4))
    with pytest.raises(ValueError, match="hold 2 values but axis 1 has 4 channels"):
        QuantizeAndDequantize(range_mode="fixed", axis=1, min_value=[0.0, 0.0], max_value=[1.0, 1.0])(data(3, 4))
    for kwargs in [{}, {"range_mode": "fixed", "min_value": 0.0, "max_value": 1.0}, {"range_mode": "tracked"}]:
        # Integer data: named as `inputs`, not as the op's attr T.
        with pytest.raises(TypeError, match="inputs must be bfloat16, float16, float32 or float64, got int32"):
            QuantizeAndDequantize(**kwargs)(np.arange(12, dtype=np.int32).reshape(3, 4))


@pytest.mark.parametrize("xla_supported", [False, True])
def test_supports_jit_follows_the_package_flag(monkeypatch, xla_supported):
    """Keras compiles with XLA only when every layer supports it, else warns and falls back."""
    monkeypatch.setattr(tensorflow_qdq._dispatch, "XLA_SUPPORTED", xla_supported)
    layer = QuantizeAndDequantize()
    assert layer.supports_jit is xla_supported
    model = keras.Sequential([keras.Input((3,)), layer])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.compile(loss="mse", jit_compile=True)
    assert model.jit_compile is xla_supported
    assert any("jit_compile" in str(w.message) for w in caught) is not xla_supported


# -- forward: each range mode against TensorFlow's kernels ---------------------------------

OPTIONS = [
    dict(num_bits=8),
    dict(num_bits=3, signed=False),
    dict(num_bits=5, narrow_range=True, round_mode="HALF_UP"),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("axis", [None, 0, -1])
@pytest.mark.parametrize("gradient", ["masked", "straight_through"])
def test_batch_range_matches_builtin_auto(options, axis, gradient):
    x = data(6, 7, 5)
    layer = QuantizeAndDequantize(axis=axis, gradient=gradient, **options)
    for training in (False, True):
        got = layer(x, training=training).numpy()
        np.testing.assert_array_equal(bits(got), bits(builtin_qdq(x, axis=axis, **options)))


@pytest.mark.parametrize("options", OPTIONS[:2])
@pytest.mark.parametrize("axis, lo, hi",
                         [(None, -1.5, 2.0), (1, -1.0, 0.5), (-1, [-1, -2, -3, -4, -5], [1, 2, 3, 4, 0.5])])
def test_fixed_range_matches_builtin_given(options, axis, lo, hi):
    x = data(4, 5, 5)
    if not options.get("signed", True):
        lo = np.zeros_like(np.asarray(lo, np.float32)).tolist() if isinstance(lo, list) else 0.0
    layer = QuantizeAndDequantize(range_mode="fixed", axis=axis, min_value=lo, max_value=hi, **options)
    expected = builtin_qdq(x, np.float32(lo), np.float32(hi), axis=axis, **options)
    np.testing.assert_array_equal(bits(layer(x).numpy()), bits(expected))
    np.testing.assert_array_equal(bits(tf.function(layer)(x).numpy()), bits(expected))


@pytest.mark.parametrize("range_update", ["delayed", "immediate"])
@pytest.mark.parametrize("axis", [None, 2])
def test_tracked_range_moves_in_training_and_stays_frozen_in_inference(axis, range_update):
    layer = QuantizeAndDequantize(range_mode="tracked", axis=axis, momentum=0.75, num_bits=6,
                                  range_update=range_update)
    batches = [data(3, 4, 5, scale=s) for s in (1.0, 4.0, 0.5)]
    probe = data(3, 4, 5, scale=10.0)
    expected_ranges = tracked_ranges(batches, 0.75, axis)
    # Before any training step the start range [-6, 6] is used as the given range.
    np.testing.assert_array_equal(layer(probe).numpy(), builtin_qdq(probe, -6.0, 6.0, axis=axis, num_bits=6))
    step = tf.function(lambda x: layer(x, training=True))
    used = expected_ranges[:1] + (expected_ranges[:-1] if range_update == "delayed" else expected_ranges[1:])
    for batch, (lo, hi), (used_lo, used_hi) in zip(batches, expected_ranges, used):
        out = step(batch).numpy()
        np.testing.assert_array_equal(layer.tracked_min.numpy(), lo)
        np.testing.assert_array_equal(layer.tracked_max.numpy(), hi)
        # training output: "immediate" uses the range just updated, "delayed" the range from
        # before the batch (the first batch has none: it sets the range first)
        np.testing.assert_array_equal(bits(out), bits(builtin_qdq(batch, used_lo, used_hi, axis=axis, num_bits=6)))
    lo, hi = expected_ranges[-1]
    for _ in range(2):  # inference: outputs use the tracked range, variables do not move
        np.testing.assert_array_equal(bits(layer(probe, training=False).numpy()),
                                      bits(builtin_qdq(probe, lo, hi, axis=axis, num_bits=6)))
        np.testing.assert_array_equal(layer.tracked_min.numpy(), lo)
        np.testing.assert_array_equal(layer.tracked_max.numpy(), hi)
    assert np.all(layer.tracked_updates.numpy() == 3)
    assert all(not w.trainable for w in layer.weights) and not layer.trainable_weights


@pytest.mark.parametrize("range_update", ["delayed", "immediate"])
@pytest.mark.parametrize("axis", [None, 1])
def test_tracked_range_gradient_is_the_mask_of_the_range_used(axis, range_update):
    """In training the input's gradient is the upstream gradient where the input lies inside the
    range the forward pass used (the moving average just tracked, or delayed, the one before this
    batch; not the batch's own range), 0 outside."""
    layer = QuantizeAndDequantize(range_mode="tracked", axis=axis, momentum=0.5, range_update=range_update)
    first, second = data(6, 3), data(6, 3, scale=6.0)
    layer(first, training=True)
    lo, hi = tracked_ranges([first, second], 0.5, axis)[0 if range_update == "delayed" else 1]
    upstream = data(6, 3)
    x = tf.constant(second)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    grad = tape.gradient(y, x, output_gradients=tf.constant(upstream)).numpy()
    lo, hi = (np.asarray(v)[np.newaxis] if axis == 1 else v for v in (lo, hi))
    inside = (second >= lo) & (second <= hi)
    assert not inside.all()  # the wider batch is clipped somewhere: the mask is tested
    np.testing.assert_array_equal(grad, np.where(inside, upstream, 0.0))


def test_tracked_range_skips_batches_that_are_not_finite():
    layer = QuantizeAndDequantize(range_mode="tracked", axis=1, momentum=0.5)
    first = data(4, 3)
    layer(first, training=True)
    lo, hi = tracked_ranges([first], 0.5, 1)[0]
    bad = data(4, 3)
    bad[0, 1] = np.nan  # first row: a NaN where SIMD reductions may or may not propagate it
    bad[3, 2] = np.inf
    layer(bad, training=True)
    lo2, hi2 = tracked_ranges([first, bad[:, :1]], 0.5, 1)[1]  # only channel 0 is finite
    np.testing.assert_array_equal(layer.tracked_min.numpy(), [lo2[0], lo[1], lo[2]])
    np.testing.assert_array_equal(layer.tracked_max.numpy(), [hi2[0], hi[1], hi[2]])
    np.testing.assert_array_equal(layer.tracked_updates.numpy(), [2, 1, 1])
    late_nan = data(9, 3)
    late_nan[8, 0] = np.nan
    layer(late_nan, training=True)
    np.testing.assert_array_equal(layer.tracked_updates.numpy(), [2, 2, 2])
    layer(np.zeros([0, 3], np.float32), training=True)  # empty batch: nothing moves
    np.testing.assert_array_equal(layer.tracked_updates.numpy(), [2, 2, 2])


def test_tracked_range_in_fit_evaluate_predict():
    x, y = data(64, 6), data(64, 2)
    qdq = QuantizeAndDequantize(range_mode="tracked", name="qdq_in")
    model = keras.Sequential([keras.Input((6,)), qdq, keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    start = [w.numpy().copy() for w in qdq.weights]
    model.evaluate(x, y, batch_size=16, verbose=0)
    model.predict(x, batch_size=16, verbose=0)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(start, qdq.weights))
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    lo, hi = tracked_ranges(np.split(x, 4), 0.99)[-1]
    np.testing.assert_array_equal(qdq.tracked_min.numpy(), lo)
    np.testing.assert_array_equal(qdq.tracked_max.numpy(), hi)
    assert qdq.tracked_updates.numpy() == 4
    frozen = [w.numpy().copy() for w in qdq.weights]
    predicted = model.predict(x, verbose=0)
    dense = model.layers[-1]
    expected = builtin_qdq(x, lo, hi) @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-6)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(frozen, qdq.weights))


def test_per_channel_weight_ranges_are_per_output_channel():
    """A Dense kernel [in, out] quantized per channel on axis -1: each output column gets the
    range of that column alone — the same as quantizing the column by itself per tensor."""
    kernel = data(9, 4) * np.asarray([0.01, 1.0, 10.0, 100.0], np.float32)
    got = QuantizeAndDequantize(axis=-1, num_bits=4, narrow_range=True)(kernel).numpy()
    for c in range(4):
        column = builtin_qdq(kernel[:, c], num_bits=4, narrow_range=True)
        np.testing.assert_array_equal(bits(got[:, c]), bits(column))
    per_tensor = QuantizeAndDequantize(num_bits=4, narrow_range=True)(kernel).numpy()
    assert not np.array_equal(got[:, 0], per_tensor[:, 0])  # the small column survives only per channel


# -- gradients ------------------------------------------------------------------------------

def _grad(fn, x, upstream):
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, x, output_gradients=tf.constant(upstream)).numpy()


@pytest.mark.parametrize("axis, lo, hi", [(None, -1.0, 2.0), (0, [-1.0, -0.5, -3.0, 0.0], [1.0, 2.0, 0.5, 1.0])])
def test_masked_gradient_matches_builtin_op_gradient(axis, lo, hi):
    x, upstream = data(4, 6), data(4, 6)
    layer = QuantizeAndDequantize(range_mode="fixed", axis=axis, min_value=lo, max_value=hi)
    got = _grad(layer, x, upstream)
    lo_b = np.asarray(lo, np.float32).reshape((-1, 1) if axis == 0 else ())
    hi_b = np.asarray(hi, np.float32).reshape((-1, 1) if axis == 0 else ())
    np.testing.assert_array_equal(got, upstream * ((lo_b <= x) & (x <= hi_b)))
    assert 0 < np.count_nonzero(got) < got.size
    if axis is None:  # TensorFlow's own V4 gradient (given per-tensor ranges, where TF is right)
        builtin = _grad(lambda t: tf.quantization.quantize_and_dequantize_v2(t, lo, hi, range_given=True), x, upstream)
        np.testing.assert_array_equal(got, builtin)
    # the same gradient as calling tensorflow_qdq's function directly, and under tf.function
    op = _grad(lambda t: tensorflow_qdq.quantize_and_dequantize_v2(
        t, np.float32(lo), np.float32(hi), range_given=True, axis=axis), x, upstream)
    np.testing.assert_array_equal(got, op)
    np.testing.assert_array_equal(tf.function(lambda t: _grad_graph(layer, t, upstream))(x).numpy(), got)


def _grad_graph(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    return tape.gradient(y, x, output_gradients=tf.constant(upstream))


@pytest.mark.parametrize("range_mode", ["fixed", "batch", "tracked"])
def test_straight_through_gradient_is_identity_like_builtin_v1(range_mode):
    x, upstream = data(5, 4), data(5, 4)
    kwargs = dict(min_value=-0.5, max_value=0.5) if range_mode == "fixed" else {}
    layer = QuantizeAndDequantize(range_mode=range_mode, gradient="straight_through", **kwargs)
    got = _grad(lambda t: layer(t, training=True), x, upstream)
    builtin = _grad(lambda t: tf.quantization.quantize_and_dequantize(t, -0.5, 0.5, range_given=True), x, upstream)
    np.testing.assert_array_equal(got, builtin)
    np.testing.assert_array_equal(got, upstream)


def test_tracked_training_gradient_masks_with_the_updated_range():
    layer = QuantizeAndDequantize(range_mode="tracked", momentum=0.5, range_update="immediate")
    first, second, upstream = data(6, 3, scale=1.0), data(6, 3, scale=3.0), data(6, 3)
    layer(first, training=True)
    got = _grad(lambda t: layer(t, training=True), second, upstream)
    lo, hi = tracked_ranges([first, second], 0.5)[1]
    np.testing.assert_array_equal(got, upstream * ((lo <= second) & (second <= hi)))
    assert 0 < np.count_nonzero(got) < got.size


def test_batch_range_masked_gradient_passes_every_finite_element():
    x, upstream = data(3, 5), data(3, 5)
    got = _grad(QuantizeAndDequantize(axis=1), x, upstream)
    np.testing.assert_array_equal(got, upstream)


def test_training_through_the_layer_changes_weights_before_it():
    """Gradients reach trainable weights upstream of the layer inside model.fit."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), QuantizeAndDequantize(range_mode="tracked")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = model.layers[0].kernel.numpy().copy()
    model.fit(data(32, 4), data(32, 3), epochs=1, verbose=0)
    assert not np.allclose(before, model.layers[0].kernel.numpy())


def test_other_keras_backends_are_refused_with_the_fix(monkeypatch):
    import importlib
    import sys

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    monkeypatch.delitem(sys.modules, "tensorflow_qdq.keras")
    with pytest.raises(ImportError, match="KERAS_BACKEND=tensorflow"):
        importlib.import_module("tensorflow_qdq.keras")
