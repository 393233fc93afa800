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
from tests.test_export_trace import _tflite_run

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
    got = _tflite_run(flatbuffer, data)
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
    # the pooled output is rounded onto the transition conv's own grid again (requantize=True),
    # as TFLite's AVERAGE_POOL_2D keeps its input's scale: no quantizer of its own
    assert "concat_input_quantizer" not in {layer.name for layer in model.layers}
    _check_export(model, data)


def test_pooled_tensor_read_by_a_conv_and_a_concat_through_one_quantizer():
    """The pool's output (rounded again on the first conv's grid, as the AVERAGE_POOL_2D keeps
    its input's scale) is shared by the conv and the Concatenate."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.AveragePooling2D(2, name="pool")(keras.layers.Conv2D(8, 3, padding="same")(inputs))
    x = keras.layers.Concatenate(name="concat")([x, keras.layers.Conv2D(4, 1, name="reader")(x)])
    model, data = _calibrated(keras.Model(inputs, keras.layers.Flatten()(x)), (12, 12, 3))
    assert "reader_input_quantizer" not in {layer.name for layer in model.layers}
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


# -- application-sized models (slow): full integer (DenseNet's last BatchNormalization -> ReLU ->
# global pooling included: quantize_model places quantizers around an unfolded BatchNorm)


@pytest.mark.slow
@pytest.mark.parametrize("name,float_head", [("DenseNet121", ()), ("NASNetMobile", ())])
def test_keras_application_with_concatenations_exports(name, float_head):
    keras.utils.set_random_seed(0)
    float_model = getattr(keras.applications, name)(weights=None, input_shape=(32, 32, 3), classes=10,
                                                    classifier_activation=None)
    model, data = _calibrated(float_model, (32, 32, 3), 0.0, 255.0, rows=16)
    _check_export(model, data, float_head)


@pytest.mark.slow
def test_keras_hub_densenet_backbone_exports():
    import keras_hub  # installed by scripts/setup_env.sh
    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3))
    features = keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[2, 2], growth_rate=8,
                                                 image_shape=(32, 32, 3))(image)
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(features))
    model, data = _calibrated(keras.Model(image, logits), (32, 32, 3), rows=16)
    _check_export(model, data)


# -- partly float models --------------------------------------------------------------------------
# MultiHeadAttention's projections read a quantized input and write a float one (the attention
# products stay float). The converter turns such a BatchMatMul into a FULLY_CONNECTED that reads
# the int8 tensor itself when no other op reads its DEQUANTIZE, which the interpreter refuses
# ("fully_connected.cc input->type != kTfLiteFloat32 (INT8 != FLOAT32)"): to_tflite puts the
# DEQUANTIZE back.


def _float_matmuls_reading_int8(flatbuffer):
    """FULLY_CONNECTED / BATCH_MATMUL ops with a float output and an int8 first (activation) input."""
    graph = tflite.interpreter(flatbuffer)
    tensors = {t["index"]: t for t in graph.get_tensor_details()}
    found = []
    for op in graph._get_ops_details():
        if op["op_name"] not in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            continue
        if tensors[op["outputs"][0]]["dtype"] == np.float32 and tensors[op["inputs"][0]]["dtype"] == np.int8:
            found.append(f"{op['op_name']}#{op['index']}")
    return found


def test_attention_query_projection_of_a_quantized_input_reads_it_dequantized():
    """The query is a Dense's output, so its input quantizer has one reader: the query
    projection (the key and value projections share theirs, whose DEQUANTIZE the converter keeps)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 16))
    query = keras.layers.Dense(16)(inputs)
    x = keras.layers.MultiHeadAttention(2, 8)(query, inputs)
    model, data = _calibrated(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x))),
                              (8, 16))
    flatbuffer = qdq.to_tflite(model, allow_float_ops=True, verify_data=data[:8])  # verified: it runs and agrees
    assert not _float_matmuls_reading_int8(flatbuffer)
    assert "SOFTMAX" in " ".join(tflite.float_compute_ops(flatbuffer))  # partly float, as expected
    expected = model.predict(data, verbose=0)
    correlation = np.corrcoef(expected.ravel(), _tflite_run(flatbuffer, data).ravel())[0, 1]
    assert correlation >= 0.99, correlation


def test_converter_matmul_reading_a_quantize_directly_gets_a_dequantize():
    """The converter's defect on its own: FakeQuant -> BatchMatMulV2 with a constant weight ->
    a float op. The raw flatbuffer does not run; with the DEQUANTIZE it computes the float
    matmul of the fake-quantized input."""
    import tensorflow as tf

    weight = np.random.default_rng(1).normal(size=(16, 16)).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 16), tf.float32)])
    def serve(x):
        q = tf.quantization.fake_quant_with_min_max_vars(x, -3.0, 3.0, num_bits=8)
        return tf.nn.softmax(tf.linalg.matmul(q, tf.constant(weight)))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    raw = converter.convert()
    fixed = tflite._dequantize_float_matmul_inputs(raw)
    assert not _float_matmuls_reading_int8(fixed)
    if not _float_matmuls_reading_int8(raw):  # a converter without the defect (TF 2.21 has it): nothing to do
        assert fixed == raw
    data = np.random.default_rng(0).normal(size=(4, 8, 16)).astype(np.float32)
    expected = serve(data).numpy()
    np.testing.assert_allclose(_tflite_run(fixed, data), expected, atol=1e-5)


def test_average_pooling_output_is_rounded_on_its_inputs_grid():
    """quantize_model rounds an AveragePooling output onto the grid of the quantizer it averages
    (requantize=True), as the runtimes' int8 pooling does: checked against NumPy, and the export
    agrees with Keras."""
    from tests.helpers import reference

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    pooled = keras.layers.AveragePooling2D(2, name="pool")(x)
    model, data = _calibrated(keras.Model(inputs, keras.layers.Conv2D(2, 1, name="after")(pooled)), (8, 8, 3))
    quantizer = model.get_layer("conv_output_quantizer")
    requantized = model.get_layer("after").input
    assert requantized._keras_history.operation is quantizer  # no quantizer of its own
    values = keras.Model(model.inputs, [model.get_layer("pool").output, requantized])(data)
    averaged, got = (np.asarray(v) for v in values)
    lo, hi = quantizer.constant_range()
    expected = reference.quantize(averaged, lo, hi, signed_input=quantizer.signed, num_bits=8, range_given=True,
                                  narrow_range=quantizer.narrow_range)  # the NumPy model of the op
    np.testing.assert_array_equal(got, expected)
    assert np.mean(averaged != got) > 0.5  # it did round
    _check_export(model, data)


# -- a Concatenate followed by a ReLU (NASNet's last cell) ---------------------------------------
# quantize_model fuses the ReLU into the concat (one quantizer, after the ReLU), so Keras rounds
# once. TFLite's CONCATENATION fuses no activation: without a range of its own the converter gave
# the concat output its widest input's scale and the RELU requantized that onto the quantizer's
# grid, two roundings (NASNetMobile: 0.0669, then 0.0292; its teacher-forced check
# failed with 1% of the elements two steps off). The export puts the quantizer's range on the
# concat output itself.


def _nasnet_like_cell(activation):
    """``p`` (the previous cell's output, on a wide grid with more negative than positive range:
    its scale is the concat's coarsest) concatenated with a branch computed from it (small values,
    a fine grid), then the cell's ReLU: its output quantizer's grid is much finer than ``p``'s."""
    inputs = keras.Input((8, 8, 3), name="p")
    branch = keras.layers.Conv2D(4, 1, name="branch_conv")(inputs)
    x = keras.layers.Concatenate(name="cell_concat")([inputs, branch])
    x = activation(x)
    model = keras.Model(inputs, keras.layers.Flatten(name="flat")(x))
    conv = model.get_layer("branch_conv")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel * 0.2, bias])
    return model


@pytest.mark.parametrize("activation", [lambda: keras.layers.ReLU(name="cell_relu"),
                                        lambda: keras.layers.Activation("relu6", name="cell_relu")],
                         ids=["relu", "relu6"])
def test_concat_then_relu_is_rounded_once_onto_the_relu_quantizers_grid(activation):
    from tensorflow_qdq import _grid

    keras.utils.set_random_seed(0)
    model, data = _calibrated(_nasnet_like_cell(activation()), (8, 8, 3), -8.0, 3.0)
    quantizer = model.get_layer("cell_relu_output_quantizer")
    assert not quantizer.signed and "cell_concat_output_quantizer" not in {layer.name for layer in model.layers}
    lo, hi = quantizer.constant_range()
    step = float(_grid.step(lo, hi, 8, quantizer.signed, quantizer.narrow_range))
    flatbuffer = qdq.to_tflite(model, verify_data=data[:8])
    assert not _non_integer_ops(flatbuffer)
    expected = model.predict(data, verbose=0)
    for delegates in (False, True):  # the kernels as converted, and as deployed (XNNPACK)
        interpreter = tflite.interpreter(flatbuffer, default_delegates=delegates)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], data.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], data)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        # Before the fix: up to 4 steps (12% of the elements past one step). Now each input goes
        # onto the ReLU's grid in one requantization, as in Keras: at most a step apart (the branch's
        # conv output, which only the concat reads, is written onto that grid directly where Keras
        # rounds it on its own grid first).
        steps = np.abs(expected - got) / step
        assert np.max(steps) <= 1.0 + 1e-3, (delegates, np.mean(steps > 1.5), np.max(steps))
    # How: the CONCATENATION writes the quantizer's grid (uint8 as int8: zero point -128).
    graph = tflite.interpreter(flatbuffer)
    tensors = {t["index"]: t for t in graph.get_tensor_details()}
    concat = next(op for op in graph._get_ops_details() if op["op_name"] == "CONCATENATION")
    scale, zero_point = tensors[concat["outputs"][0]]["quantization"]
    np.testing.assert_allclose(scale, step, rtol=1e-6)
    assert zero_point == -128


# A conv whose output only a Concatenate reads: TFLite's converter writes its int8 output straight
# onto the concat's scale (one rounding). quantize_model leaves that output to the concat's
# quantizer, and the exporters give the conv the concat's range, so Keras, ONNX Runtime and TFLite
# all round it once (before: Keras and ONNX Runtime rounded it on its own grid first; DenseNet's
# TFLite export was one step off on 2.4% of such a conv's elements here).


def _conv_into_concat():
    inputs = keras.Input((8, 8, 4), name="x")
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="b")(a)
    return keras.Model(inputs, keras.layers.Concatenate(name="cat")([a, b]))


def test_a_conv_read_only_by_a_concat_is_rounded_once_on_the_concats_grid(tmp_path):
    import onnxruntime as ort

    from tensorflow_qdq import _grid

    keras.utils.set_random_seed(0)
    model, data = _calibrated(_conv_into_concat(), (8, 8, 4), -2.0, 2.0, rows=64)
    names = {layer.name for layer in model.layers}
    assert "b_output_quantizer" not in names and "a_output_quantizer" in names  # a is read by b too
    quantizer = model.get_layer("cat_output_quantizer")
    step = float(_grid.step(*quantizer.constant_range(), 8, quantizer.signed, quantizer.narrow_range))
    expected = model.predict(data, verbose=0)
    # an independent reference for the b half: b's float output rounded once onto the concat's grid
    lo, hi = (float(v) for v in quantizer.constant_range())
    b_float = keras.Model(model.inputs, model.get_layer("b").output).predict(data, verbose=0)
    np.testing.assert_allclose(expected[..., 8:], np.clip(np.round(b_float / step), lo / step, hi / step) * step,
                               atol=1e-5)
    # both inputs are ReLU outputs: the concat is non-negative, on the finer unsigned grid (and its
    # inputs' zero point: TFLite's built-in int8 requantization from the unsigned grid of `a` onto a
    # signed one was a step off on 24% of a's elements)
    assert not quantizer.signed
    flatbuffer = qdq.to_tflite(model)
    assert not _non_integer_ops(flatbuffer)
    session = ort.InferenceSession(qdq.to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    runtimes = {"ONNX Runtime": session.run(None, {session.get_inputs()[0].name: data})[0]}
    for delegates in (True, False):  # LiteRT as deployed (XNNPACK), and TFLite's built-in kernels
        interpreter = tflite.interpreter(flatbuffer, default_delegates=delegates)
        interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], data.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], data)
        interpreter.invoke()
        runtimes[f"TFLite delegates={delegates}"] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    for runtime, got in runtimes.items():
        # a step off only where float32 and integer sums straddle a rounding boundary
        off = np.abs(got - expected) / step
        assert np.max(off) <= 1.0 + 1e-3 and np.mean(off > 0.5) <= 0.002, (runtime, np.mean(off > 0.5))


def test_a_relu_branch_of_a_signed_concat_keeps_its_own_grid_and_integer_kernel(tmp_path):
    """Concat of a ReLU branch and a linear one (a signed grid): the ReLU branch keeps its own
    unsigned quantizer, since ONNX Runtime cannot fold a ReLU into a QLinearConv whose output grid
    is signed (the conv ran in float: InceptionV3 at 54% integer); the linear branch defers."""
    import collections

    import onnx
    import onnxruntime as ort

    inputs = keras.Input((8, 8, 4), name="x")
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(8, 3, padding="same", name="b")(inputs)
    keras.utils.set_random_seed(0)
    model, data = _calibrated(keras.Model(inputs, keras.layers.Concatenate(name="cat")([a, b])), (8, 8, 4))
    names = {layer.name for layer in model.layers}
    assert "a_output_quantizer" in names and "b_output_quantizer" not in names
    assert model.get_layer("cat_output_quantizer").signed
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(qdq.to_onnx(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 2 and ops["Conv"] == 0, dict(ops)
    assert not _non_integer_ops(qdq.to_tflite(model))
