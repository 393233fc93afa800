"""tensorflow_qdq.use_for_builtins: unmodified code calling tf.quantization.* runs on our kernels
with identical outputs and gradients (a model built both ways, compared bit for bit)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq
from tests.helpers.compare import bits

ORIGINAL_V1 = tf.quantization.quantize_and_dequantize
ORIGINAL_V2 = tf.quantization.quantize_and_dequantize_v2


class LegacyFakeQuant(keras.layers.Layer):
    """Existing user code: fake quantization written with TensorFlow's public functions.
    (An auto-range quantize_and_dequantize_v2 would differ in its gradient: the documented fix
    tested below.)"""

    def call(self, x):
        x = tf.quantization.quantize_and_dequantize(x, -2.0, 2.0, range_given=True, num_bits=6)
        x = tf.quantization.quantize_and_dequantize_v2(x, -1.5, 1.0, range_given=True, num_bits=5)
        ignored = tf.zeros([8])  # per-channel auto range: one (ignored) bound per channel
        return tf.quantization.quantize_and_dequantize(x, ignored, ignored, axis=-1, num_bits=4, round_mode="HALF_UP")


def build_model():
    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), LegacyFakeQuant(), keras.layers.Dense(3)])


def outputs_and_gradients(model, x):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, [x] + model.trainable_weights)

    y, grads = step(tf.constant(x))
    graph = step.get_concrete_function(tf.TensorSpec(x.shape, tf.float32)).graph
    graph_ops = {op.type for op in graph.get_operations()}
    return y.numpy(), [g.numpy() for g in grads], graph_ops


def test_routed_model_has_identical_outputs_and_gradients():
    x = np.random.default_rng(3).standard_normal((32, 6)).astype(np.float32) * 2
    y_tf, grads_tf, ops_tf = outputs_and_gradients(build_model(), x)
    with tensorflow_qdq.use_for_builtins():
        y_ours, grads_ours, ops_ours = outputs_and_gradients(build_model(), x)
    # the same code ran on different kernels
    assert {"QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4"} <= ops_tf
    assert not any(op.startswith("Qdq>") for op in ops_tf)
    assert {"Qdq>QuantizeAndDequantizeV2", "Qdq>QuantizeAndDequantizeV4"} <= ops_ours
    assert not {"QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4"} & ops_ours
    np.testing.assert_array_equal(bits(y_ours), bits(y_tf))
    assert len(grads_ours) == len(grads_tf) == 5
    for ours, theirs in zip(grads_ours, grads_tf):
        np.testing.assert_array_equal(bits(ours), bits(theirs))
    assert tf.quantization.quantize_and_dequantize is ORIGINAL_V1  # restored on exit


def test_plain_call_routes_until_restored_and_contexts_nest():
    routing = tensorflow_qdq.use_for_builtins()
    try:
        assert tf.quantization.quantize_and_dequantize is tensorflow_qdq.quantize_and_dequantize
        assert tf.quantization.quantize_and_dequantize_v2 is tensorflow_qdq.quantize_and_dequantize_v2
        assert tf.compat.v1.quantization.quantize_and_dequantize_v2 is tensorflow_qdq.quantize_and_dequantize_v2
        with tensorflow_qdq.use_for_builtins():
            pass
        # leaving the inner context keeps the outer routing
        assert tf.quantization.quantize_and_dequantize_v2 is tensorflow_qdq.quantize_and_dequantize_v2
        # half runs on our kernels (TensorFlow 2.21 has no half kernel for these ops)
        y = tf.quantization.quantize_and_dequantize_v2(tf.constant([0.3, -1.0], tf.half), 0.0, 0.0)
        assert y.dtype == tf.half
    finally:
        routing.restore()
    assert tf.quantization.quantize_and_dequantize_v2 is ORIGINAL_V2
    with pytest.raises(tf.errors.NotFoundError):
        tf.quantization.quantize_and_dequantize_v2(tf.constant([0.3, -1.0], tf.half), 0.0, 0.0)
    tensorflow_qdq.use_for_builtins()
    tensorflow_qdq.restore_builtins()
    assert tf.quantization.quantize_and_dequantize is ORIGINAL_V1
    assert tf.quantization.quantize_and_dequantize_v2 is ORIGINAL_V2


def test_tf_2_21_has_no_public_quantize_and_dequantize_v4():
    """Documented finding: only tf.raw_ops.QuantizeAndDequantizeV4 exists, so there is nothing
    to route; on a TensorFlow that exports tf.quantize_and_dequantize_v4 it is routed too."""
    if hasattr(tf, "quantize_and_dequantize_v4"):
        with tensorflow_qdq.use_for_builtins():
            assert tf.quantize_and_dequantize_v4 is tensorflow_qdq.quantize_and_dequantize_v4
    else:
        assert tf.__version__.startswith("2.21")
        with tensorflow_qdq.use_for_builtins():
            assert not hasattr(tf, "quantize_and_dequantize_v4")


def test_routed_auto_range_gradient_is_the_documented_fix():
    """The one intended difference: with range_given=False, TF masks the gradient with the
    ignored input_min/input_max (here 0, 0); ours masks with the measured range."""
    x = tf.constant([-1.0, 0.0, 0.5, 2.0])

    def grad():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.quantization.quantize_and_dequantize_v2(x, 0.0, 0.0)
        return tape.gradient(y, x).numpy()

    np.testing.assert_array_equal(grad(), [0, 1, 0, 0])
    with tensorflow_qdq.use_for_builtins():
        np.testing.assert_array_equal(grad(), [1, 1, 1, 1])
