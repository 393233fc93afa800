"""to_tflite on DenseNet-style graphs (a pooled stem whose output is both concatenated and read
by a layer that does not quantize its input), and its errors naming every offending quantizer.

The default tests use tiny hand-built models (seconds); the application-sized ones
(keras.applications DenseNet121 and NASNetMobile at 32x32, KerasHub's DenseNetBackbone) are
marked slow. Each export is verified by to_tflite itself against Keras; the tests also compare
with ``model.predict`` and check the model is full-integer.
"""

import keras
import numpy as np
import pytest

import tensorflow_qdq as qdq
from tensorflow_qdq.deploy import tflite
from tensorflow_qdq.keras import QuantizeAndDequantize, calibrate, quantize_model

_INTEGER = (np.int8, np.int32)
_FLOAT = (np.float32, np.float16)


def _pooled_stem_concat(with_branch_relu=True, bn_in_branch=False):
    """conv -> ReLU -> MaxPool, concatenated with a conv of the pooled tensor (DenseNet's first
    dense layer). quantize_model quantizes the ReLU (unsigned grid) and passes that quantizer
    through the pool for the Concatenate, while the branch's ReLU reads the pool's output."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(2, name="stem_pool")(x)
    y = keras.layers.BatchNormalization(name="branch_bn")(x) if bn_in_branch else x
    if with_branch_relu:
        y = keras.layers.ReLU(name="branch_relu")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="branch_conv")(y)
    x = keras.layers.Concatenate(name="concat")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(x))


def _calibrated(float_model, shape, low=-1.0, high=1.0, rows=32):
    model = quantize_model(float_model, verbose=False)
    data = np.random.default_rng(0).uniform(low, high, (rows,) + shape).astype(np.float32)
    calibrate(model, data, verbose=False)
    return model, data


def _tflite_outputs(flatbuffer, x):
    runner = tflite.interpreter(flatbuffer)
    runner.resize_tensor_input(runner.get_input_details()[0]["index"], x.shape)
    runner.allocate_tensors()
    runner.set_tensor(runner.get_input_details()[0]["index"], x)
    runner.invoke()
    return runner.get_tensor(runner.get_output_details()[0]["index"])


def _non_integer_ops(flatbuffer):
    """Ops that read or write a float tensor, other than a QUANTIZE of a model input or a
    DEQUANTIZE to a model output (requantizing QUANTIZE ops inside are int8 to int8)."""
    graph = tflite.interpreter(flatbuffer)
    tensors = {t["index"]: t for t in graph.get_tensor_details()}
    ends = {d["index"] for d in graph.get_input_details() + graph.get_output_details()}
    found = []
    for op in graph._get_ops_details():
        used = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0 and i in tensors]
        floats = {i for i in used if tensors[i]["dtype"] in _FLOAT}
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") and floats <= ends:
            continue
        if floats or not all(tensors[i]["dtype"] in _INTEGER for i in used):
            found.append(op["op_name"])
    return found


def _check_export(model, data, float_head=()):
    """to_tflite (verified against Keras by the exporter), full-integer but for at most one op
    of each type in ``float_head`` (and the DEQUANTIZE/QUANTIZE around them), and correlated
    with ``predict`` at >= 0.99."""
    flatbuffer = qdq.to_tflite(model, allow_float_ops=bool(float_head), verify_data=data[:8])
    left = _non_integer_ops(flatbuffer)
    float_ops = [op for op in left if op not in ("QUANTIZE", "DEQUANTIZE")]
    assert set(float_ops) <= set(float_head) and len(float_ops) == len(set(float_ops)), left
    assert float_head or not left, left
    expected = model.predict(data, verbose=0)
    got = _tflite_outputs(flatbuffer, data)
    correlation = np.corrcoef(expected.ravel(), got.ravel())[0, 1]
    print(f"{model.name}: correlation {correlation:.5f}, max |difference| {np.max(np.abs(expected - got)):.3g}, "
          f"float ops {left}")
    assert correlation >= 0.99, correlation
    return flatbuffer


@pytest.mark.parametrize("with_branch_relu,bn_in_branch", [(True, False), (True, True), (False, False)])
def test_pooled_stem_concatenated_and_read_raw_exports_full_integer(with_branch_relu, bn_in_branch):
    keras.utils.set_random_seed(0)
    model, data = _calibrated(_pooled_stem_concat(with_branch_relu, bn_in_branch), (12, 12, 3))
    names = {layer.name: layer for layer in model.layers}
    stem = names["stem_relu_output_quantizer"]
    assert not stem.signed and len(stem._inbound_nodes) == 2  # the passthrough after the pool
    flatbuffer = _check_export(model, data)
    ops = [op["op_name"] for op in tflite.interpreter(flatbuffer)._get_ops_details()]
    assert "CONCATENATION" in ops and "MAX_POOL_2D" in ops, ops


def test_two_pooled_stems_concatenated_with_each_other():
    """Both inputs of the Concatenate arrive through passthroughs, on different grids."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    a = keras.layers.MaxPooling2D(2)(keras.layers.ReLU()(keras.layers.Conv2D(4, 3, padding="same")(inputs)))
    b = keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(4, 3, padding="same")(inputs))
    c = keras.layers.ReLU()(a)  # reads the pooled tensor itself
    x = keras.layers.Concatenate()([a, b, keras.layers.Conv2D(4, 1)(c)])
    model, data = _calibrated(keras.Model(inputs, keras.layers.Flatten()(x)), (12, 12, 3))
    _check_export(model, data)


def _transition_into_concat(trained_bn):
    """DenseNet's transition: conv -> AveragePooling2D, whose output a dense layer reads through
    BatchNormalization -> ReLU -> conv and the Concatenate through an input quantizer of its own
    (a second requantization after the pool's). ``trained_bn``: moving statistics and shift
    away from the identity (an untrained BN folds away in the converter)."""
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="transition_conv")(inputs)
    x = keras.layers.AveragePooling2D(2, name="transition_pool")(x)
    y = keras.layers.BatchNormalization(name="block_bn")(x)
    y = keras.layers.ReLU(name="block_relu")(y)
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="block_conv")(y)
    x = keras.layers.Concatenate(name="concat")([x, y])
    x = keras.layers.Concatenate(name="concat_2")([x, keras.layers.Conv2D(4, 1, name="next_conv")(x)])
    model = keras.Model(inputs, keras.layers.Flatten(name="flat")(x))
    if trained_bn:
        bn = model.get_layer("block_bn")
        rng = np.random.default_rng(1)
        bn.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype(np.float32) for w in bn.get_weights()])
    return model


def test_pooled_transition_concatenated_through_its_own_input_quantizer_exports():
    keras.utils.set_random_seed(0)
    model, data = _calibrated(_transition_into_concat(trained_bn=False), (12, 12, 3))
    assert "concat_input_quantizer" in {layer.name for layer in model.layers}
    _check_export(model, data)


def test_pooled_tensor_read_by_a_conv_and_a_concat_through_one_quantizer():
    """The pool's output quantizer (a requantization after the AVERAGE_POOL_2D) is shared by the
    conv and the Concatenate: the converter rejects the pool's two scales unless it is left out."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.AveragePooling2D(2, name="pool")(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    x = keras.layers.Concatenate(name="concat")([x, keras.layers.Conv2D(4, 1, name="reader")(x)])
    model, data = _calibrated(keras.Model(inputs, keras.layers.Flatten()(x)), (12, 12, 3))
    assert "reader_input_quantizer" in {layer.name for layer in model.layers}
    _check_export(model, data)


def test_batch_norm_after_a_quantized_tensor_runs_as_one_int8_op():
    """A BatchNormalization that follows no foldable layer (it reads the pooled tensor) with
    trained statistics: TensorFlow's MUL and ADD would stay float (no range between them); the
    export gives it as one DEPTHWISE_CONV_2D with the ReLU fused, in int8."""
    keras.utils.set_random_seed(0)
    model, data = _calibrated(_transition_into_concat(trained_bn=True), (12, 12, 3))
    flatbuffer = _check_export(model, data)
    ops = [op["op_name"] for op in tflite.interpreter(flatbuffer)._get_ops_details()]
    assert "DEPTHWISE_CONV_2D" in ops and "MUL" not in ops and "ADD" not in ops, ops


# -- every offending quantizer in one error ------------------------------------------------------


def _model_with_offending_quantizers():
    """Three quantizers TFLite cannot take: 4-bit, per-channel, and a degenerate range."""
    inputs = keras.Input((6,))
    x = QuantizeAndDequantize(num_bits=4, range_mode="fixed", min_value=-1.0, max_value=1.0, name="four_bit")(inputs)
    x = keras.layers.Dense(5)(x)
    x = QuantizeAndDequantize(axis=-1, range_mode="fixed", min_value=[-1.0] * 5, max_value=[1.0] * 5,
                              name="per_channel")(x)
    x = keras.layers.Dense(3)(x)
    x = QuantizeAndDequantize(range_mode="fixed", min_value=0.0, max_value=0.0, name="degenerate")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_every_offending_quantizer_is_named_in_one_error():
    model = _model_with_offending_quantizers()
    with pytest.raises(ValueError, match=r"\(3 problems\)") as info:
        qdq.to_tflite(model, verify=False)
    message = str(info.value)
    for expected in ("quantizer 'four_bit' is 4-bit", "quantizer 'per_channel' quantizes per channel",
                     "quantizer 'degenerate' has the degenerate range"):
        assert expected in message, message
    assert message.count("\n  - ") == 3  # one line each


def test_two_degenerate_ranges_after_quantize_model_are_both_named():
    keras.utils.set_random_seed(0)
    model, _ = _calibrated(_pooled_stem_concat(), (12, 12, 3))
    names = {layer.name: layer for layer in model.layers}
    for name in ("stem_conv_input_quantizer", "head_output_quantizer"):
        names[name].set_range(0.0, 0.0)
    with pytest.raises(ValueError, match=r"\(2 problems\)") as info:
        qdq.to_tflite(model, verify=False)
    assert "'stem_conv_input_quantizer' has the degenerate range" in str(info.value)
    assert "'head_output_quantizer' has the degenerate range" in str(info.value)


def test_four_bit_weights_of_two_layers_are_both_named():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation="relu", name="first")(inputs)
    float_model = keras.Model(inputs, keras.layers.Dense(2, name="second")(x))
    model = quantize_model(float_model, weight_bits=4, verbose=False)
    calibrate(model, np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32), verbose=False)
    with pytest.raises(ValueError, match=r"\(2 problems\)") as info:
        qdq.to_tflite(model, verify=False)
    for name in ("first", "second"):
        assert f"the weights of layer {name!r} are quantized to 4 bits" in str(info.value)


# -- application-sized models (slow)
# DenseNet ends in BatchNormalization -> ReLU -> global pooling, and quantize_model quantizes
# neither the BN's output (it follows no foldable layer) nor the pooling's input: that BN (one
# DEPTHWISE_CONV_2D) and the MEAN stay float until the placement quantizes them.
_DENSENET_HEAD = ("DEPTHWISE_CONV_2D", "MEAN")


@pytest.mark.slow
@pytest.mark.parametrize("name,float_head", [("DenseNet121", _DENSENET_HEAD), ("NASNetMobile", ())])
def test_keras_application_with_concatenations_exports(name, float_head):
    keras.utils.set_random_seed(0)
    float_model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10,
                                                    classifier_activation=None)
    model, data = _calibrated(float_model, (32, 32, 3), 0.0, 255.0, rows=16)
    _check_export(model, data, float_head)


@pytest.mark.slow
def test_keras_hub_densenet_backbone_exports():
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3))
    features = keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[2, 2], growth_rate=8,
                                                 image_shape=(32, 32, 3))(image)
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(features))
    model, data = _calibrated(keras.Model(image, logits), (32, 32, 3), rows=16)
    _check_export(model, data, _DENSENET_HEAD)
