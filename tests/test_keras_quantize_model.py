"""tensorflow_qdq.keras.quantize_model: what it wraps, where it places quantizers, the report.

References are TensorFlow's own kernels (keras_reference.builtin_qdq) applied to the float
model's weights, and the float model itself."""

import keras
import numpy as np
import pytest

from tensorflow_qdq.keras import (
    QuantizeAndDequantize,
    QuantizedMultiHeadAttention,
    QuantizeWrapper,
    quantization_report,
    quantize_model,
)
from tests.helpers.keras_reference import builtin_qdq

L = keras.layers
RNG = np.random.default_rng(99)


def data(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def quantizers(model):
    return {layer.name: layer for layer in model.layers if isinstance(layer, QuantizeAndDequantize)}


def producer(model, layer_name, index=0):
    """The layer whose output feeds input ``index`` of layer ``layer_name``."""
    tensors = model.get_layer(layer_name)._inbound_nodes[0].arguments.keras_tensors
    return tensors[index]._keras_history.operation


def functional_model():
    inputs = keras.Input((10, 3))
    x = L.Conv1D(4, 3, activation="relu", name="conv")(inputs)
    x = L.Flatten(name="flat")(x)
    inner = keras.Sequential([keras.Input((32,)), L.Dense(6, activation="tanh", name="inner_dense")], name="inner")
    x = inner(x)
    x = L.BatchNormalization(name="bn")(x)
    outputs = L.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs)


def test_copy_wraps_every_kernel_keeps_float_weights_and_leaves_the_original():
    model = functional_model()
    model.get_layer("bn").set_weights([w + 0.5 for w in model.get_layer("bn").get_weights()])
    q = quantize_model(model, weight_bits=6, activation_bits=5, verbose=False)
    for name in ("conv", "head"):
        wrapper = q.get_layer(name)
        assert type(wrapper) is QuantizeWrapper and wrapper.weight_bits == 6
        for a, b in zip(model.get_layer(name).get_weights(), wrapper.layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    assert type(q.get_layer("inner").get_layer("inner_dense")) is QuantizeWrapper
    # a BatchNorm after a tanh cannot fold: it stays, with its weights
    assert type(q.get_layer("bn")) is L.BatchNormalization
    for a, b in zip(model.get_layer("bn").get_weights(), q.get_layer("bn").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert type(model.get_layer("head")) is L.Dense
    assert all(qz.num_bits == 5 and qz.range_mode == "tracked" for qz in quantizers(q).values())
    # relu output: unsigned grid; the model input and the linear head output: signed
    assert quantizers(q)["conv_output_quantizer"].signed is False
    assert quantizers(q)["conv_input_quantizer"].signed is True
    assert quantizers(q)["head_output_quantizer"].signed is True


def test_quantized_dense_is_qdq_input_then_layer_with_qdq_kernel_then_qdq_output():
    model = keras.Sequential([keras.Input((7,)), L.Dense(5, activation="relu", name="d")])
    x = data(16, 7) * 3
    q = quantize_model(model, weight_bits=4, activation_bits=8, verbose=False)
    assert [layer.name for layer in q.layers[1:]] == ["d_input_quantizer", "d", "d_output_quantizer"]
    kernel, bias = model.get_layer("d").get_weights()
    q_kernel = builtin_qdq(kernel, axis=-1, num_bits=4, narrow_range=True)
    assert all(len(np.unique(q_kernel[:, c])) <= 15 for c in range(5))  # 4 bits, narrow range
    # before training the tracked ranges start at [-6, 6] (signed) and [0, 6] (unsigned)
    pre = np.maximum(builtin_qdq(x, -6.0, 6.0) @ q_kernel + bias, 0)
    expected = builtin_qdq(pre, 0.0, 6.0, signed=False)
    np.testing.assert_allclose(q(x, training=False).numpy(), expected, atol=1e-5)
    # a training call tracks this batch's ranges and quantizes with them
    out = q(x, training=True).numpy()
    qin, qout = q.get_layer("d_input_quantizer"), q.get_layer("d_output_quantizer")
    assert qin.tracked_min.numpy() == min(x.min(), 0) and qin.tracked_max.numpy() == max(x.max(), 0)
    pre = np.maximum(builtin_qdq(x, x.min(), x.max()) @ q_kernel + bias, 0)
    assert qout.tracked_min.numpy() == 0 and abs(qout.tracked_max.numpy() - pre.max()) <= 1e-5 * pre.max()
    np.testing.assert_allclose(out, builtin_qdq(pre, 0.0, qout.tracked_max.numpy(), signed=False), atol=1e-5)


def residual_model():
    inputs = keras.Input((6, 6, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    a = L.Conv2D(4, 1, name="a")(x)  # x feeds two consumers: one quantizer for both
    b = L.Conv2D(4, 1, activation="relu6", name="b")(x)
    s = L.Add(name="add")([a, b])
    s = L.MaxPooling2D(name="pool")(s)
    s = L.Concatenate(name="cat")([s, L.MaxPooling2D(name="pool2")(x)])
    s = L.GlobalAveragePooling2D(name="gap")(s)
    return keras.Model(inputs, L.Dense(3, activation="softmax", name="head")(s))


def test_default_placement_quantizes_inputs_and_fused_outputs_once_per_tensor():
    model = residual_model()
    q = quantize_model(model, verbose=False)
    qz = quantizers(q)
    # the model input, before the first conv
    assert producer(q, "c1") is qz["c1_input_quantizer"]
    # conv -> BN -> ReLU: BN folded, one quantizer after the ReLU, shared by a and b and pool2
    assert "bn1" not in {layer.name for layer in q.layers} and q.get_layer("c1").batch_norm is not None
    assert producer(q, "relu1") is q.get_layer("c1")
    shared = producer(q, "a")
    assert shared is producer(q, "b") is producer(q, "pool2") is qz["relu1_output_quantizer"]
    assert shared.signed is False
    # Add: inputs (the outputs of a and b) and output quantized
    assert producer(q, "add", 0) is qz["a_output_quantizer"] and qz["a_output_quantizer"].signed
    assert producer(q, "add", 1) is qz["b_output_quantizer"] and not qz["b_output_quantizer"].signed
    assert producer(q, "pool") is qz["add_output_quantizer"]
    # Concatenate: inputs and output quantized (ONNX Runtime's QLinearConcat needs a
    # DequantizeLinear on each input). Its inputs are max poolings of quantized tensors, on
    # their grids already: the owners pass them through (no second range) and export their
    # scales again.
    assert producer(q, "cat", 0) is qz["add_output_quantizer"] and producer(q, "cat", 1) is shared
    assert "cat_input_quantizer" not in qz and "cat_input_quantizer_2" not in qz
    assert [node.arguments.kwargs.get("passthrough", False) for node in shared._inbound_nodes] == [False, True]
    assert producer(q, "gap") is qz["cat_output_quantizer"]
    # Dense with softmax: the logits are quantized inside the wrapper, before the softmax
    head = q.get_layer("head")
    assert head.output_quantizer is not None and "head_output_quantizer" not in qz
    assert producer(q, "head") is qz["head_input_quantizer"]


def test_tensorrt_scheme_quantizes_weighted_and_add_inputs_with_signed_grids():
    q = quantize_model(residual_model(), scheme="tensorrt", verbose=False)
    qz = quantizers(q)
    assert sorted(qz) == ["a_input_quantizer", "add_input_quantizer", "add_input_quantizer_2",
                          "c1_input_quantizer", "head_input_quantizer"]
    assert all(z.signed for z in qz.values())
    assert producer(q, "b") is qz["a_input_quantizer"]  # one quantizer per tensor
    assert q.get_layer("head").output_quantizer is None
    with pytest.raises(ValueError, match="scheme='tflite' is not one of"):
        quantize_model(residual_model(), scheme="tflite")


def test_fold_gives_the_float_model_back_without_quantization_error():
    """With 24-bit grids and ranges set from data, the quantized copy (BN folded, moving
    statistics in inference) computes the float model's function."""
    model = residual_model()
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.set_weights([w * 0.5 + 0.3 for w in layer.get_weights()])
    q = quantize_model(model, weight_bits=24, activation_bits=24, verbose=False)
    x = data(8, 6, 6, 3)
    q(x, training=True)  # one tracked update (momentum 0.99 from the batch range)...
    for z in quantizers(q).values():
        z.set_range(-50.0 if z.signed else 0.0, 50.0)  # ...then wide ranges: no clipping
    q.get_layer("head").output_quantizer.set_range(-50.0, 50.0)
    q.get_layer("c1").batch_norm.set_weights(model.get_layer("bn1").get_weights())  # undo the training update
    np.testing.assert_allclose(q(x, training=False).numpy(), model(x, training=False).numpy(), atol=2e-5)


def test_report_and_summary_list_what_stays_float_and_why(capsys):
    inputs = keras.Input((5, 4))
    x = L.LSTM(3, return_sequences=True, name="lstm")(inputs)
    x = L.Dense(3, name="keep")(x)
    x = L.LayerNormalization(name="ln")(x)
    model = keras.Model(inputs, L.Dense(2, name="head")(x))
    q = quantize_model(model, skip_layers=["keep"])
    printed = capsys.readouterr().out
    assert "1 of 3 layers with kernels quantized" in printed
    rows = {row.name: row for row in quantization_report(q)}
    assert rows["head"].status == "quantized" and rows["head"].kind == "Dense"
    assert rows["lstm"].status == "float" and "LSTM" in rows["lstm"].detail and rows["lstm"].has_kernel
    assert rows["keep"].status == "float" and "skip_layers" in rows["keep"].detail
    assert rows["ln"].status == "float" and not rows["ln"].has_kernel
    for name in ("lstm", "keep"):
        assert f"left float: {name}" in printed
    with pytest.raises(ValueError, match=r"strict=True.*lstm \(LSTM\)"):
        quantize_model(model, strict=True, verbose=False)


def test_attention_and_embedding_are_quantized():
    tokens = keras.Input((6,), dtype="int32")
    x = L.Embedding(20, 8, name="embed")(tokens)
    x = L.MultiHeadAttention(2, 4, name="mha")(x, x)
    model = keras.Model(tokens, L.Dense(2, name="head")(L.GlobalAveragePooling1D()(x)))
    q = quantize_model(model, strict=True, verbose=False)
    assert type(q.get_layer("mha")) is QuantizedMultiHeadAttention
    assert type(q.get_layer("embed")) is QuantizeWrapper
    table = model.get_layer("embed").get_weights()[0]
    ids = RNG.integers(0, 20, (3, 6)).astype("int32")
    rows = builtin_qdq(table.T, axis=-1, narrow_range=True).T  # one scale per row (token)
    np.testing.assert_allclose(q.get_layer("embed")(ids).numpy(), rows[ids], atol=1e-7)


def test_quantized_model_trains_and_only_float_weights_are_trainable():
    model = keras.Sequential([keras.Input((4,)), L.Dense(8, activation="relu"), L.Dense(2)])
    q = quantize_model(model, verbose=False)
    assert len(q.trainable_weights) == len(model.trainable_weights) == 4
    q.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = data(64, 4), data(64, 2)
    before = q.evaluate(x, y, verbose=0)
    q.fit(x, y, epochs=5, batch_size=32, verbose=0)
    assert q.evaluate(x, y, verbose=0) < before
    assert all(z.tracked_updates.numpy() == 10 for z in quantizers(q).values())


def test_user_placed_quantizers_are_kept_not_doubled():
    inputs = keras.Input((4,))
    x = QuantizeAndDequantize(range_mode="tracked", name="mine")(inputs)
    model = keras.Model(inputs, L.Dense(2, name="d")(x))
    q = quantize_model(model, verbose=False)
    assert producer(q, "d") is q.get_layer("mine") and "d_input_quantizer" not in quantizers(q)


def test_quantize_model_rejects_what_it_cannot_rebuild_naming_the_layer():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    with pytest.raises(ValueError, match="Sequential or functional"):
        quantize_model(Sub())
    with pytest.raises(ValueError, match="no input shape"):
        quantize_model(keras.Sequential([L.Dense(2)]))

    inputs = keras.Input((3,))
    lam = keras.Model(inputs, L.Dense(2)(L.Lambda(lambda t: t * 2, name="times2")(inputs)))
    with pytest.raises(ValueError, match=r"strict=True.*times2 \(Lambda\): Lambda layer"):
        quantize_model(lam, strict=True)

    class Odd(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1],), name="w")

        def call(self, x):
            return x * self.w

    odd = keras.Model(inputs, Odd(name="odd")(inputs))
    with pytest.raises(ValueError, match=r"strict=True.*odd \(Odd\): no quantization rule for its weights \(w\)"):
        quantize_model(odd, strict=True)
    assert quantization_report(quantize_model(odd, skip_layers=["odd"], verbose=False))[-1].status == "float"
    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d")])
    with pytest.raises(ValueError, match=r"skip_layers names layers that are not in .*\['nope'\]"):
        quantize_model(model, skip_layers=["nope"])
    with pytest.raises(ValueError, match="num_bits=0"):
        quantize_model(model, weight_bits=0)
    with pytest.raises(ValueError, match="momentum=1"):
        quantize_model(model, momentum=1)


def test_same_outputs_as_float_model_in_the_limit_of_many_bits():
    model = functional_model()
    q = quantize_model(model, weight_bits=24, activation_bits=24, verbose=False)
    x = data(8, 10, 3) * 0.1  # activations inside the start ranges
    np.testing.assert_allclose(q(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.array_equal(q(x).numpy(), model(x).numpy())
