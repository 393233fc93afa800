"""QuantizeWrapper: per-channel weight quantization of every weighted layer family, and the
BatchNorm fold (float equivalence with Conv -> BatchNormalization, QAT semantics)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tensorflow_qdq.keras import QuantizeWrapper
from tests.helpers.keras_reference import builtin_qdq

L = keras.layers
RNG = np.random.default_rng(7)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# (layer factory, input shape, weight attribute, the weight reshaped so channels are its last axis)
FAMILIES = {
    "dense": (lambda: L.Dense(5), (4, 6), "kernel", lambda w: w),
    "conv1d": (lambda: L.Conv1D(5, 3), (2, 7, 3), "kernel", lambda w: w.reshape(-1, w.shape[-1])),
    "conv2d": (lambda: L.Conv2D(5, 3), (2, 6, 6, 3), "kernel", lambda w: w.reshape(-1, w.shape[-1])),
    "conv3d": (lambda: L.Conv3D(4, 2), (2, 4, 4, 4, 2), "kernel", lambda w: w.reshape(-1, w.shape[-1])),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(4, 3, strides=2), (2, 5, 5, 3), "kernel",
                         lambda w: np.moveaxis(w, -2, -1).reshape(-1, w.shape[-2])),
    "conv1d_transpose": (lambda: L.Conv1DTranspose(4, 3), (2, 5, 3), "kernel",
                         lambda w: np.moveaxis(w, -2, -1).reshape(-1, w.shape[-2])),
    "depthwise2d": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2), (2, 6, 6, 3), "kernel",
                    lambda w: w.reshape(-1, w.shape[-2] * w.shape[-1])),
    "depthwise2d_multiplier_1": (lambda: L.DepthwiseConv2D(3), (2, 6, 6, 3), "kernel",
                                 lambda w: w.reshape(-1, w.shape[-2] * w.shape[-1])),
    "einsum": (lambda: L.EinsumDense("abc,cde->abde", output_shape=(None, 2, 3)), (2, 4, 5), "kernel",
               lambda w: w.reshape(w.shape[0], -1)),
    "embedding": (lambda: L.Embedding(9, 4), None, "embeddings", lambda w: w.T),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_weights_are_quantized_per_output_channel(family):
    make, shape, attr, channels_last = FAMILIES[family]
    layer = make()
    x = RNG.integers(0, 9, (3, 5)) if shape is None else data(*shape)
    wrapper = QuantizeWrapper(layer, weight_bits=4)
    got = wrapper(x).numpy()
    weight = getattr(layer, attr).numpy()
    # reference: TensorFlow's kernel on the weight seen as (elements, channels)
    as_channels = channels_last(weight)
    expected_q = builtin_qdq(as_channels, axis=-1, num_bits=4, narrow_range=True)
    assert all(len(np.unique(expected_q[:, c])) <= 15 for c in range(expected_q.shape[1]))
    reference = make()
    reference(x)
    reference.set_weights(layer.get_weights())
    quantized = _undo(channels_last, expected_q, weight.shape, family)
    getattr(reference, attr).assign(quantized)
    np.testing.assert_allclose(got, reference(x).numpy(), rtol=1e-5, atol=1e-5)
    # the float variable is untouched and the layer's attribute is restored after the call
    np.testing.assert_array_equal(getattr(layer, attr).numpy(), weight)
    assert isinstance(getattr(layer, attr), keras.Variable)


def _undo(channels_last, q, shape, family):
    if family == "dense":
        return q
    if family == "embedding":
        return q.T
    if family.endswith("transpose"):
        moved = list(shape)
        moved[-2], moved[-1] = moved[-1], moved[-2]
        return np.moveaxis(q.reshape(moved), -1, -2)
    return q.reshape(shape)


FOLDABLE = {
    "conv2d": (lambda: L.Conv2D(6, 3, padding="same"), (4, 8, 8, 3), -1),
    "conv2d_no_bias": (lambda: L.Conv2D(6, 3, use_bias=False), (4, 8, 8, 3), -1),
    "depthwise2d": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2, padding="same"), (4, 8, 8, 3), -1),
    "separable2d": (lambda: L.SeparableConv2D(5, 3, padding="same"), (4, 8, 8, 3), -1),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"), (4, 5, 5, 3), -1),
    "conv1d": (lambda: L.Conv1D(4, 3), (4, 9, 3), -1),
    "dense": (lambda: L.Dense(7), (16, 5), -1),
}


def _pair(make, shape, axis):
    """A float layer and a BatchNormalization after it, with non-trivial statistics."""
    layer, bn = make(), L.BatchNormalization(axis=axis, momentum=0.9)
    x = data(*shape)
    bn(layer(x))
    bn.set_weights([RNG.random(w.shape).astype(np.float32) + 0.5 for w in bn.get_weights()])
    return layer, bn, x


def _folded(layer, bn, x, **kwargs):
    kwargs.setdefault("weight_bits", None)
    wrapper = QuantizeWrapper(L.deserialize(L.serialize(layer)), batch_norm=bn.get_config(), **kwargs)
    wrapper(x)
    wrapper.layer.set_weights(layer.get_weights())
    wrapper.batch_norm.set_weights(bn.get_weights())
    return wrapper


@pytest.mark.parametrize("family", sorted(FOLDABLE))
def test_fold_without_quantization_equals_layer_then_batch_norm(family):
    """Inference: the folded layer computes conv -> BN (moving statistics) within float
    rounding; training: conv -> BN with batch statistics, and the same moving-statistic update."""
    layer, bn, x = _pair(*FOLDABLE[family])
    wrapper = _folded(layer, bn, x)
    scale = np.max(np.abs(bn(layer(x), training=False).numpy()))
    np.testing.assert_allclose(wrapper(x, training=False).numpy(), bn(layer(x), training=False).numpy(),
                               atol=1e-5 * scale, rtol=0)
    expected = bn(layer(x), training=True).numpy()  # also moves bn's moving statistics
    got = wrapper(x, training=True).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.max(np.abs(expected)), rtol=0)
    np.testing.assert_allclose(wrapper.batch_norm.moving_mean.numpy(), bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wrapper.batch_norm.moving_variance.numpy(), bn.moving_variance.numpy(),
                               rtol=1e-5, atol=1e-6)


def test_fold_quantizes_the_folded_weight_and_bias():
    layer, bn, x = _pair(*FOLDABLE["conv2d"])
    wrapper = _folded(layer, bn, x, weight_bits=8)
    factor = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    folded = layer.kernel.numpy() * factor
    bias = bn.beta.numpy() + (layer.bias.numpy() - bn.moving_mean.numpy()) * factor
    reference = L.Conv2D(6, 3, padding="same")
    reference(x)
    reference.set_weights([builtin_qdq(folded.reshape(-1, 6), axis=-1, narrow_range=True).reshape(folded.shape), bias])
    np.testing.assert_allclose(wrapper(x, training=False).numpy(), reference(x).numpy(), atol=1e-5, rtol=1e-5)


def test_freeze_bn_delay_switches_to_moving_statistics():
    layer, bn, x = _pair(*FOLDABLE["conv2d"])
    wrapper = _folded(layer, bn, x, freeze_bn_delay=2)
    frozen = wrapper(x, training=False).numpy()
    for _step in range(2):  # batch statistics: differs from inference, statistics move
        assert not np.allclose(wrapper(x, training=True).numpy(), frozen, atol=1e-4)
    moving = wrapper.batch_norm.moving_mean.numpy().copy()
    after = wrapper(x, training=False).numpy()
    np.testing.assert_allclose(wrapper(x, training=True).numpy(), after, atol=1e-6)  # frozen now
    np.testing.assert_array_equal(wrapper.batch_norm.moving_mean.numpy(), moving)
    assert int(wrapper.fold_steps.numpy()) == 3


def test_gamma_zero_channel_gives_beta_in_training():
    layer, bn, x = _pair(*FOLDABLE["conv2d"])
    gamma = bn.gamma.numpy()
    gamma[2] = 0.0
    bn.gamma.assign(gamma)
    wrapper = _folded(layer, bn, x)
    out = wrapper(x, training=True).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[..., 2], bn.beta.numpy()[2], atol=1e-6)


def test_channels_first_conv_folds_under_xla():
    """TensorFlow's CPU kernels have no NCHW convolution; XLA does, and our ops compile there."""
    layer, bn = L.Conv2D(5, 3, data_format="channels_first"), L.BatchNormalization(axis=1)
    x = data(2, 3, 6, 7)
    run = tf.function(lambda m, v, **k: m(v, **k), jit_compile=True)
    bn(run(layer, x))
    bn.set_weights([RNG.random(w.shape).astype(np.float32) + 0.5 for w in bn.get_weights()])
    wrapper = QuantizeWrapper(L.deserialize(L.serialize(layer)), weight_bits=None, batch_norm=bn.get_config())
    run2 = tf.function(lambda v: wrapper(v, training=False), jit_compile=True)
    run2(x)
    wrapper.layer.set_weights(layer.get_weights())
    wrapper.batch_norm.set_weights(bn.get_weights())
    expected = tf.function(lambda v: bn(layer(v), training=False), jit_compile=True)(x).numpy()
    np.testing.assert_allclose(tf.function(lambda v: wrapper(v, training=False), jit_compile=True)(x).numpy(),
                               expected, atol=1e-5 * np.max(np.abs(expected)))


def test_wrapper_round_trips_through_config():
    layer, bn, x = _pair(*FOLDABLE["depthwise2d"])
    wrapper = _folded(layer, bn, x, weight_bits=6, freeze_bn_delay=10)
    clone = QuantizeWrapper.from_config(wrapper.get_config())
    assert clone.get_config() == wrapper.get_config()
    assert clone.weight_bits == 6 and clone.freeze_bn_delay == 10


def test_wrapper_errors_name_the_layer():
    with pytest.raises(ValueError, match="'norm'.*LayerNormalization"):
        QuantizeWrapper(L.LayerNormalization(name="norm"))
    with pytest.raises(ValueError, match="'c'.*activation"):
        QuantizeWrapper(L.Conv2D(2, 1, activation="relu", name="c"), batch_norm=L.BatchNormalization().get_config())
    with pytest.raises(ValueError, match="num_bits=0"):
        QuantizeWrapper(L.Dense(2), weight_bits=0)
    with pytest.raises(ValueError, match="freeze_bn_delay=-1"):
        QuantizeWrapper(L.Dense(2), freeze_bn_delay=-1)
