"""Learned (LSQ) ranges in Keras: QuantizeAndDequantize(range_mode="learned") and
quantize_model(activation_range="learned") — start values, forward pass against TensorFlow's
own kernel, the step's gradient against the NumPy LSQ model, training, calibration, saving,
mixed precision, XLA, and export to ONNX Runtime and TFLite."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq
from tensorflow_qdq.keras import QuantizeAndDequantize, calibrate, quantization_report, quantize_model
from tests.helpers import reference
from tests.helpers.compare import bits
from tests.helpers.keras_reference import builtin_qdq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # examples/runtimes.py: tooling
import runtimes  # noqa: E402

L = keras.layers
RNG = np.random.default_rng(77)


def data(*shape, scale=2.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def grid(bits_, signed=True, narrow=False):
    return reference.int_range(signed, bits_, narrow)


def test_first_training_batch_starts_the_step_from_its_range_then_forward_is_tfs_kernel():
    layer = QuantizeAndDequantize(num_bits=4, range_mode="learned")
    x = data(32, 5)
    layer(x, training=True)
    qmin, qmax = grid(4)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    # TensorFlow's range rule keeps the side with the smaller scale: the larger step.
    want = max(np.float32(lo) / np.float32(qmin), np.float32(hi) / np.float32(qmax))
    np.testing.assert_allclose(layer.step.numpy(), want, rtol=1e-6)
    assert layer.step_initialized.numpy() == 1
    s = layer.step.numpy()
    y = layer(x, training=False).numpy()
    want_y = builtin_qdq(x, np.float32(qmin) * s, np.float32(qmax) * s, num_bits=4)
    np.testing.assert_array_equal(bits(y), bits(want_y))


@pytest.mark.parametrize("axis", [None, -1])
def test_step_gradient_is_lsqs_and_training_moves_it(axis):
    layer = QuantizeAndDequantize(num_bits=3, range_mode="learned", axis=axis, min_value=-1.0, max_value=1.0)
    x = data(64, 4)
    g = data(64, 4)
    with tf.GradientTape() as tape:
        y = layer(x, training=True)
    # the variable is log(step): its gradient is step * d/dstep
    ds = (tape.gradient(y, layer.log_step, output_gradients=tf.constant(g)) / layer.step).numpy()
    qmin, qmax = grid(3)
    s = layer.step.numpy()
    lo, hi = np.float32(qmin) * s, np.float32(qmax) * s
    raw_axis = -1 if axis is None else 1
    _, want, magnitude = reference.lsq_gradient(g, x, lo, hi, num_bits=3, axis=raw_axis)
    assert reference.close_in_dtype(ds.reshape(-1), want, magnitude, np.float32)
    model = keras.Sequential([keras.Input((4,)), layer, L.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, x.sum(1, keepdims=True), epochs=3, verbose=0)
    assert not np.allclose(layer.step.numpy(), s, rtol=1e-3)


def test_given_bounds_calibration_and_set_range_start_the_step():
    given = QuantizeAndDequantize(num_bits=8, range_mode="learned", min_value=-2.0, max_value=3.0)
    given.build((None, 3))
    np.testing.assert_allclose(given.step.numpy(), 3.0 / 127, rtol=1e-6)
    assert given.step_initialized.numpy() == 1
    layer = QuantizeAndDequantize(num_bits=8, range_mode="learned", signed=False)
    layer.build((None, 3))
    assert layer.step_initialized.numpy() == 0
    layer.set_range(-1.0, 5.1)  # widened to include 0; unsigned: only the max side has a step
    np.testing.assert_allclose(layer.step.numpy(), 5.1 / 255, rtol=1e-6)
    assert layer.step_initialized.numpy() == 1
    x = np.abs(data(50, 3))
    model = keras.Sequential([keras.Input((3,)), QuantizeAndDequantize(num_bits=8, range_mode="learned", signed=False)])
    ranges = calibrate(model, x, verbose=False)
    (lo, hi), = ranges.values()
    q = model.layers[0]
    np.testing.assert_allclose(q.step.numpy(), hi / 255, rtol=1e-6)
    # calibrated: the first training batch does not replace it
    q(x[:8] * 10, training=True)
    np.testing.assert_allclose(q.step.numpy(), hi / 255, rtol=1e-6)


def test_constant_range_is_the_forward_passs_range():
    layer = QuantizeAndDequantize(num_bits=4, range_mode="learned", axis=-1)
    x = data(16, 3)
    layer(x, training=True)
    layer.log_step.assign(layer.log_step.numpy() + np.float32(0.31))
    lo, hi = layer.constant_range()
    np.testing.assert_array_equal(bits(layer(x).numpy()), bits(builtin_qdq(x, lo, hi, axis=-1, num_bits=4)))


@pytest.mark.parametrize("bad", [-1e9, 1e9, np.nan, np.inf, -np.inf])
def test_a_collapsed_step_is_clamped_not_nan(bad):
    layer = QuantizeAndDequantize(num_bits=4, range_mode="learned", min_value=-1.0, max_value=1.0)
    model = keras.Sequential([keras.Input((4,)), layer, L.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    layer.log_step.assign(bad)
    x = data(32, 4)
    lo, hi = layer.constant_range()
    assert np.isfinite(lo) and np.isfinite(hi) and lo < 0 < hi
    history = model.fit(x, x[:, :1], epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])) and np.all(np.isfinite(model.predict(x, verbose=0)))


def test_config_saving_and_errors(tmp_path):
    layer = QuantizeAndDequantize(num_bits=4, range_mode="learned", axis=1, min_value=[-1.0, -2.0],
                                  max_value=[1.0, 0.5])
    model = keras.Sequential([keras.Input((2,)), layer])
    model.layers[0].log_step.assign(np.log([0.3, 0.07]))
    path = tmp_path / "learned.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = data(10, 2)
    np.testing.assert_array_equal(bits(loaded.predict(x, verbose=0)), bits(model.predict(x, verbose=0)))
    assert loaded.layers[0].get_config() == layer.get_config()
    with pytest.raises(ValueError, match="gradient='straight_through' does not apply"):
        QuantizeAndDequantize(range_mode="learned", gradient="straight_through")
    with pytest.raises(ValueError, match="both min_value and max_value"):
        QuantizeAndDequantize(range_mode="learned", min_value=-1.0)
    with pytest.raises(ValueError, match="activation_range='lsq'"):
        quantize_model(keras.Sequential([keras.Input((2,)), L.Dense(2)]), activation_range="lsq")


def test_mixed_precision_and_xla_train_the_float32_step():
    x = data(64, 4)
    for policy, jit in (("mixed_float16", False), ("float32", True)):
        keras.config.set_dtype_policy(policy)
        try:
            model = keras.Sequential([keras.Input((4,)), L.Dense(8), QuantizeAndDequantize(num_bits=4,
                                      range_mode="learned"), L.Dense(1, dtype="float32")])
            model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse", jit_compile=jit)
            q = model.layers[1]
            model.fit(x, x[:, :1], epochs=2, batch_size=16, verbose=0)
            assert q.log_step.dtype == "float32" and q.step_initialized.numpy() == 1
            assert np.isfinite(q.step.numpy()) and q.step.numpy() > 0
        finally:
            keras.config.set_dtype_policy("float32")


def _digits_model():
    return keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", use_bias=False),
                             L.BatchNormalization(), L.ReLU(), L.Flatten(), L.Dense(10)])


def test_quantize_model_learned_trains_and_exports_to_onnx_and_tflite():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)
    y = digits.target
    keras.utils.set_random_seed(0)
    q = quantize_model(_digits_model(), activation_range="learned", verbose=False)
    quantizers = [layer for layer in q._flatten_layers() if isinstance(layer, QuantizeAndDequantize)]
    assert quantizers and all(z.range_mode == "learned" for z in quantizers)
    assert all("learned range" in row.detail for row in quantization_report(q) if row.status == "activation quantizer")
    calibrate(q, x[:256], verbose=False)
    q.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps_before = [z.step.numpy().copy() for z in quantizers]
    q.fit(x[:1200], y[:1200], epochs=2, batch_size=32, verbose=0)
    assert any(not np.allclose(a, z.step.numpy()) for a, z in zip(steps_before, quantizers))
    test = x[1200:]
    keras_out = q.predict(test, verbose=0)
    assert np.mean(keras_out.argmax(1) == y[1200:]) > 0.8
    onnx_out = runtimes.onnx_runner(tensorflow_qdq.to_onnx(q).SerializeToString())(test)
    # ORT's integer kernels requantize where Keras keeps float: small differences, same predictions
    assert np.max(np.abs(onnx_out - keras_out)) <= 0.05 * np.max(np.abs(keras_out))
    assert np.mean(onnx_out.argmax(1) == keras_out.argmax(1)) >= 0.97
    tflite_out = runtimes.tflite_runner(tensorflow_qdq.to_tflite(q))(test)
    assert np.mean(tflite_out.argmax(1) == keras_out.argmax(1)) >= 0.97
