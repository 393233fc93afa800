"""tensorflow_qdq.keras.calibrate: activation ranges from data on a model from quantize_model.

Reference: the float model's own intermediate activations (keras.Model over its layers'
outputs), whose min/max are what "max" calibration must give each quantizer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_qdq.keras import QuantizeAndDequantize, calibrate, quantize_model
from tests.helpers.keras_reference import builtin_qdq

L = keras.layers


def float_model():
    inputs = keras.Input((5, 5, 2), name="image")
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.ReLU(name="relu")(x)
    y = L.Conv2D(4, 1, name="side")(inputs)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def data(n=40, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal((n, 5, 5, 2)) * scale).astype(np.float32)


# quantizer name -> the float model's tensor it quantizes
QUANTIZED = {"conv_input_quantizer": "image", "relu_output_quantizer": "relu", "side_output_quantizer": "side",
             "add_output_quantizer": "add", "head_input_quantizer": "gap", "head_output_quantizer": "head"}


def test_max_calibration_gives_the_float_activations_min_max():
    model = float_model()
    x = data()
    q = quantize_model(model, verbose=False)
    ranges = calibrate(q, x, batch_size=16, verbose=False)
    # the float model with the weights the quantized copy computes with (per-channel 8-bit)
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            layer.set_weights([builtin_qdq(kernel, axis=-1, narrow_range=True), bias])
    probe = keras.Model(model.inputs, [model.input if name == "image" else model.get_layer(name).output
                                       for name in QUANTIZED.values()])
    activations = dict(zip(QUANTIZED, probe(x, training=False)))
    for name, activation in activations.items():
        a = np.asarray(activation)
        quantizer = q.get_layer(name)
        lo, hi = quantizer.tracked_min.numpy(), quantizer.tracked_max.numpy()
        assert ranges[name] == pytest.approx((lo, hi))
        # widened to include 0, like the tracked ranges
        np.testing.assert_allclose([lo, hi], [min(a.min(), 0), max(a.max(), 0)], rtol=1e-6, atol=1e-6, err_msg=name)
    assert q.get_layer("relu_output_quantizer").tracked_min.numpy() == 0
    # training continues from the calibrated ranges (the first batch does not replace them)
    assert all(int(z.tracked_updates.numpy()) == 1 for z in q.layers if isinstance(z, QuantizeAndDequantize))
    before = q.get_layer("add_output_quantizer").tracked_max.numpy()
    q(x[:8] * 0.0, training=True)  # an all-zero batch: the range decays by the momentum only
    np.testing.assert_allclose(q.get_layer("add_output_quantizer").tracked_max.numpy(), before * 0.99, rtol=1e-6)


def test_num_batches_and_datasets():
    x = data(64)
    q1, q2 = (quantize_model(float_model(), verbose=False) for _ in range(2))
    for q in (q1, q2):
        q.set_weights(q1.get_weights())
    calibrate(q1, x[:32], verbose=False)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(64))).batch(16)
    calibrate(q2, dataset, num_batches=2, verbose=False)  # (x, y) batches: x used; 2 batches = 32 rows
    np.testing.assert_array_equal(q1.get_layer("add_output_quantizer").tracked_max.numpy(),
                                  q2.get_layer("add_output_quantizer").tracked_max.numpy())


def test_methods_clip_the_tail_that_max_keeps():
    x = np.random.default_rng(3).laplace(size=(200, 5, 5, 2)).astype(np.float32)  # heavy tails
    top = {}
    for method, options in (("max", {}), ("percentile", {"percentile": 99.9}), ("mse", {}), ("entropy", {})):
        q = quantize_model(float_model(), verbose=False)
        calibrate(q, x, method=method, verbose=False, **options)
        top[method] = q.get_layer("conv_input_quantizer").tracked_max.numpy()
    assert top["max"] == pytest.approx(x.max())
    assert top["percentile"] < 0.8 * top["max"] and top["mse"] < top["max"] and top["entropy"] <= top["max"], top


def test_progress_bar_then_ptq_export_path(capsys):
    q = quantize_model(float_model(), verbose=False)
    calibrate(q, data(48), batch_size=16)
    out = capsys.readouterr().out
    assert "calibrate (max) 3/3 [==============================]" in out


def test_two_inputs_take_a_list():
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    model = keras.Model([a, b], L.Dense(2, name="d")(L.Add(name="add")([a, b])))
    q = quantize_model(model, verbose=False)
    xa, xb = np.full((8, 4), -2.0, np.float32), np.full((8, 4), 5.0, np.float32)
    calibrate(q, [xa, xb], verbose=False)
    lo_hi = {z.name: (z.tracked_min.numpy(), z.tracked_max.numpy()) for z in q.layers
             if isinstance(z, QuantizeAndDequantize)}
    assert lo_hi["add_input_quantizer"] == (-2.0, 0.0) and lo_hi["add_input_quantizer_2"] == (0.0, 5.0)
    assert lo_hi["add_output_quantizer"] == (0.0, 3.0) and "d_input_quantizer" not in lo_hi


def test_bad_input_is_named():
    q = quantize_model(float_model(), verbose=False)
    with pytest.raises(ValueError,
                       match=r"batch of shape \(4, 5, 5, 3\) does not fit the model's input \(None, 5, 5, 2\)"):
        calibrate(q, np.zeros((4, 5, 5, 3), np.float32), verbose=False)
    with pytest.raises(ValueError, match="method='minmax' is not one of"):
        calibrate(q, data(), method="minmax", verbose=False)
    with pytest.raises(ValueError, match="num_batches=0"):
        calibrate(q, data(), num_batches=0, verbose=False)
    with pytest.raises(ValueError, match="holds no batch"):
        calibrate(q, [], verbose=False)
    with pytest.raises(ValueError, match="no QuantizeAndDequantize layer with a tracked or learned range"):
        calibrate(float_model(), data(), verbose=False)
