"""tensorflow_qdq.keras.quantize_model and the Quantized* layers it builds."""

import keras
import numpy as np
import pytest

from tensorflow_qdq.keras import (
    QuantizeAndDequantize,
    QuantizedConv1D,
    QuantizedConv2D,
    QuantizedDense,
    quantize_model,
)
from keras_reference import bits, builtin_qdq

RNG = np.random.default_rng(99)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def functional_model():
    inputs = keras.Input((10, 3))
    x = keras.layers.Conv1D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    inner = keras.Sequential([keras.Input((32,)), keras.layers.Dense(6, activation="tanh", name="inner_dense")], name="inner")
    x = inner(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def test_functional_model_copy_has_quantized_layers_and_the_float_weights():
    model = functional_model()
    model.get_layer("bn").set_weights([w + 0.5 for w in model.get_layer("bn").get_weights()])
    q = quantize_model(model, weight_bits=6, activation_bits=5)
    assert type(q.get_layer("conv")) is QuantizedConv1D
    assert type(q.get_layer("head")) is QuantizedDense
    assert type(q.get_layer("inner").get_layer("inner_dense")) is QuantizedDense
    assert type(q.get_layer("bn")) is keras.layers.BatchNormalization
    for name in ("conv", "head"):
        src, dst = model.get_layer(name), q.get_layer(name)
        np.testing.assert_array_equal(dst.kernel.numpy(), src.kernel.numpy())
        np.testing.assert_array_equal(dst.bias.numpy(), src.bias.numpy())
        assert dst.kernel_quantizer.num_bits == 6 and dst.output_quantizer.num_bits == 5
        assert dst.kernel_quantizer.axis == -1 and dst.kernel_quantizer.range_mode == "batch"
        assert dst.output_quantizer.range_mode == "tracked" and dst.output_quantizer.axis is None
    for a, b in zip(model.get_layer("bn").get_weights(), q.get_layer("bn").get_weights()):
        np.testing.assert_array_equal(a, b)
    # the original is untouched, and the copy is a separate model
    assert type(model.get_layer("head")) is keras.layers.Dense
    assert q.get_layer("head").kernel is not model.get_layer("head").kernel
    # relu outputs get an unsigned grid, tanh/linear a signed one
    assert q.get_layer("conv").output_quantizer.signed is False
    assert q.get_layer("head").output_quantizer.signed is True


def test_quantized_dense_computes_qdq_of_the_float_layer_with_quantized_kernel():
    model = keras.Sequential([keras.Input((7,)), keras.layers.Dense(5, activation="relu", name="d")])
    x = data(16, 7) * 3
    q = quantize_model(model, weight_bits=4, activation_bits=8)
    layer = q.get_layer("d")
    q_kernel = builtin_qdq(layer.kernel.numpy(), axis=-1, num_bits=4, narrow_range=True)
    # the kernel grid: at most 15 levels per output column (4 bits, narrow range)
    assert all(len(np.unique(q_kernel[:, c])) <= 15 for c in range(5))
    pre = np.maximum(x @ q_kernel + layer.bias.numpy(), 0)
    # inference before training: the tracked start range of an unsigned quantizer is [0, 6]
    expected = builtin_qdq(pre, 0.0, 6.0, num_bits=8, signed=False)
    np.testing.assert_allclose(q(x, training=False).numpy(), expected, atol=1e-6)
    # a training call tracks this batch's range and quantizes with it
    out = q(x, training=True).numpy()
    lo, hi = layer.output_quantizer.tracked_min.numpy(), layer.output_quantizer.tracked_max.numpy()
    assert lo == 0 and abs(hi - pre.max()) <= 1e-5 * pre.max()
    np.testing.assert_allclose(out, builtin_qdq(pre, lo, hi, num_bits=8, signed=False), atol=1e-6)


def test_quantized_conv2d_matches_float_conv_with_quantized_kernel():
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, padding="same", name="c")])
    q = quantize_model(model, weight_bits=3)
    layer = q.get_layer("c")
    reference = keras.layers.Conv2D.from_config(model.get_layer("c").get_config())
    reference.build((None, 6, 6, 2))
    reference.kernel.assign(builtin_qdq(layer.kernel.numpy(), axis=-1, num_bits=3, narrow_range=True))
    reference.bias.assign(layer.bias.numpy() + 0.25)
    layer.bias.assign(layer.bias.numpy() + 0.25)
    x = data(2, 6, 6, 2)
    expected = builtin_qdq(reference(x).numpy(), -6.0, 6.0, num_bits=8)
    np.testing.assert_allclose(q(x).numpy(), expected, atol=1e-5)


def test_quantized_layers_round_trip_through_config():
    for layer in (QuantizedDense(3, activation="relu", weight_bits=5, activation_bits=6, momentum=0.9),
                  QuantizedConv2D(4, 3, weight_bits=2)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
        revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(revived) is type(layer) and revived.get_config() == layer.get_config()
        assert revived.kernel_quantizer.num_bits == layer.weight_bits


def test_quantized_model_trains_and_only_its_float_weights_are_trainable():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(2)])
    q = quantize_model(model)
    assert len(q.trainable_weights) == len(model.trainable_weights) == 4
    assert isinstance(q.layers[0].kernel_quantizer, QuantizeAndDequantize)
    q.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = data(64, 4), data(64, 2)
    before = q.evaluate(x, y, verbose=0)
    q.fit(x, y, epochs=5, verbose=0)
    assert q.evaluate(x, y, verbose=0) < before
    assert q.layers[0].output_quantizer.tracked_updates.numpy() == 10


def test_quantize_model_rejects_what_it_cannot_rebuild():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    with pytest.raises(ValueError, match="Sequential or functional"):
        quantize_model(Sub())
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="num_bits=0"):
        quantize_model(model, weight_bits=0)
    with pytest.raises(ValueError, match="momentum=1"):
        quantize_model(model, momentum=1)


def test_same_outputs_as_float_model_in_the_limit_of_many_bits():
    """With 24-bit grids the quantized copy reproduces the float model closely: the layers
    compute the same function, only quantization differs."""
    model = functional_model()
    q = quantize_model(model, weight_bits=24, activation_bits=24)
    x = data(8, 10, 3) * 0.1  # activations inside the start ranges
    np.testing.assert_allclose(q(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.array_equal(bits(q(x).numpy()), bits(model(x).numpy()))
