"""Mixed precision: under mixed_bfloat16 / mixed_float16 the layers run our bfloat16/half
kernels directly (no float32 copy of the data), keep float32 variables, match the SEMANTICS
half/bfloat16 reference, and quantization-aware training converges."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from tensorflow_qdq.keras import QuantizeAndDequantize, quantize_model
from tests.helpers.compare import bits
from tests.helpers.keras_reference import builtin_qdq

POLICIES = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}


@pytest.fixture(params=sorted(POLICIES))
def policy(request):
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param, POLICIES[request.param]
    finally:
        keras.mixed_precision.set_global_policy("float32")


def qdq_nodes(fn, *specs):
    """The Qdq ops of fn's graph, and every Cast to float32 of a tensor with the data's shape."""
    graph = tf.function(fn).get_concrete_function(*specs).graph
    qdq = [op for op in graph.get_operations() if op.type.startswith("Qdq>")]
    data_shape = specs[0].shape.as_list()
    casts_up = [op for op in graph.get_operations() if op.type == "Cast"
                and op.get_attr("DstT") == tf.float32 and op.inputs[0].shape.as_list() == data_shape]
    return qdq, casts_up


@pytest.mark.parametrize("range_mode, axis", [("batch", None), ("fixed", -1), ("tracked", None), ("tracked", 1)])
def test_layer_runs_the_low_precision_kernel_directly(policy, range_mode, axis):
    name, dtype = policy
    kwargs = dict(min_value=-2.0, max_value=1.5) if range_mode == "fixed" else {}
    layer = QuantizeAndDequantize(range_mode=range_mode, axis=axis, num_bits=6, **kwargs)
    assert layer.compute_dtype == dtype.name and layer.variable_dtype == "float32"
    spec = tf.TensorSpec([8, 5], dtype)
    for training in (False, True):
        qdq, casts_up = qdq_nodes(lambda x: layer(x, training=training), spec)
        assert qdq and all(op.get_attr("T") == dtype for op in qdq), name
        assert all(op.inputs[0].dtype == dtype and op.outputs[0].dtype == dtype for op in qdq)
        assert not casts_up, [op.name for op in casts_up]  # no float32 round trip of the data
    assert all(w.dtype == ("int64" if "updates" in w.path else "float32") for w in layer.weights)

    x32 = np.random.default_rng(2).standard_normal((8, 5)).astype(np.float32) * 2
    x = tf.cast(x32, dtype)
    out = layer(x32, training=True)  # float32 input is autocast to the compute dtype
    assert out.dtype == dtype
    if range_mode == "batch":
        lo = hi = None
    elif range_mode == "fixed":
        lo, hi = tf.cast(-2.0, dtype), tf.cast(1.5, dtype)
    else:
        lo, hi = tf.cast(layer.tracked_min, dtype), tf.cast(layer.tracked_max, dtype)
        assert layer.tracked_updates.numpy().min() == 1
    # SEMANTICS §3.6: half/bfloat16 = cast_T(TF's float32 kernel on the upcast input and range)
    f32 = lambda t: None if t is None else tf.cast(t, tf.float32).numpy()  # noqa: E731
    expected = tf.cast(builtin_qdq(f32(x), f32(lo), f32(hi), axis=axis, num_bits=6), dtype).numpy()
    np.testing.assert_array_equal(bits(out.numpy()), bits(expected))


def test_qat_under_mixed_precision_converges(policy):
    name, dtype = policy
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        (digits.data / 16.0).astype(np.float32), digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    keras.utils.set_random_seed(4)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(48, activation="relu"),
        keras.layers.Dense(10),
        keras.layers.Activation("linear", dtype="float32"),  # float32 logits for the loss
    ])
    q = quantize_model(model, weight_bits=8, activation_bits=8, verbose=False)
    dense = q.get_layer(model.layers[0].name)
    assert dense.compute_dtype == dtype.name and dense.layer.kernel.dtype == "float32"
    qdq, casts_up = qdq_nodes(lambda t: q(t, training=True), tf.TensorSpec([32, 64], tf.float32))
    # input, two kernels, the ReLU output in the compute dtype; the logits' quantizer sits
    # after the float32 Activation (a linear activation fuses)
    assert [op.get_attr("T") for op in qdq] == [dtype] * 4 + [tf.float32], [op.name for op in qdq]
    q.compile(optimizer=keras.optimizers.Adam(3e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    if name == "mixed_float16":
        assert isinstance(q.optimizer, keras.optimizers.LossScaleOptimizer)
    _, before = q.evaluate(x_test, y_test, verbose=0)
    q.fit(x_train, y_train, batch_size=32, epochs=10, verbose=0)
    _, accuracy = q.evaluate(x_test, y_test, verbose=0)
    print(name, "accuracy before", before, "after", accuracy)
    assert accuracy >= 0.9 and accuracy > before + 0.5
    assert all(np.isfinite(z.tracked_max.numpy()) for z in q.layers if isinstance(z, QuantizeAndDequantize))
