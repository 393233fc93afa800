"""tensorflow_qdq.to_onnx: QDQ ONNX models that ONNX Runtime runs with integer kernels.

References: ONNX Runtime itself (its optimized graph says which integer kernels it formed, its
outputs are compared with the Keras model's), onnx's checker and its reference evaluator,
and the grid step read from the exported model's own last DequantizeLinear."""

import collections

import keras
import numpy as np
import onnx
import onnx.reference
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper

import tensorflow_qdq as qdq
from tensorflow_qdq.keras import calibrate, quantize_model

L = keras.layers


@pytest.fixture(scope="module")
def trained(short_qat):
    data, _, quantized = short_qat
    return data, quantized


def session(proto, tmp_path=None, **config):
    """An ONNX Runtime CPU session with all optimizations; with tmp_path, also the optimized graph."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    optimized = None
    if tmp_path is not None:
        optimized = str(tmp_path / "optimized.onnx")
        options.optimized_model_filepath = optimized
    s = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node) if optimized else None
    return s, ops


def run(s, x):
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def output_step(proto):
    """The scale of the DequantizeLinear that produces the model's output."""
    producer = {out: n for n in proto.graph.node for out in n.output}
    node = producer[proto.graph.output[0].name]
    while node.op_type != "DequantizeLinear":
        node = producer[node.input[0]]
    init = {t.name: t for t in proto.graph.initializer}
    return float(numpy_helper.to_array(init[node.input[1]]))


def weight_dequantizers(proto):
    """{op name: the DequantizeLinear feeding its weight} for every Conv and MatMul/Gemm."""
    producer = {out: n for n in proto.graph.node for out in n.output}
    return {n.name: producer.get(n.input[1]) for n in proto.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}


def test_8_bit_model_runs_as_integer_kernels_and_agrees_with_keras(trained, tmp_path):
    (_, x_test, _, y_test), quantized = trained
    model = quantized[8]
    path = tmp_path / "digits.onnx"
    proto = qdq.to_onnx(model, path)
    assert onnx.load(str(path)) == proto
    onnx.checker.check_model(proto, full_check=True)
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    init = {t.name: t for t in proto.graph.initializer}
    for name, dq in weight_dequantizers(proto).items():
        assert dq is not None and dq.op_type == "DequantizeLinear", name
        codes, scale = init[dq.input[0]], numpy_helper.to_array(init[dq.input[1]])
        # integer codes stored, not float weights: INT8 with zero point 0 (ONNX Runtime's u8s8 kernels)
        assert codes.data_type == TensorProto.INT8, name
        assert not np.any(numpy_helper.to_array(init[dq.input[2]])), name
        assert scale.ndim == 1 and scale.size > 1 and np.all(scale > 0), name  # per output channel
        assert any(a.name == "axis" for a in dq.attribute) or scale.size == 1
    s, ops = session(proto, tmp_path)
    assert ops["QLinearConv"] == 2, ops
    assert ops["QLinearMatMul"] + ops["QGemm"] + ops["MatMulInteger"] >= 1, ops
    assert "Conv" not in ops, ops
    out = run(s, x_test)
    expected = model.predict(x_test, verbose=0)
    agreement = np.mean(out.argmax(1) == expected.argmax(1))
    difference = np.max(np.abs(out - expected))
    print(f"ONNX Runtime vs Keras on {len(x_test)} digits: agreement {100 * agreement:.2f}%, max |difference| "
          f"{difference:.3g}, output step {output_step(proto):.3g}")
    assert agreement >= 0.99
    assert difference <= output_step(proto) * (1 + 1e-5)


def test_4_bit_model_exports_int4_and_never_becomes_8_bit(trained):
    (_, x_test, _, _), quantized = trained
    model = quantized[4]
    proto = qdq.to_onnx(model)
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 21
    types = collections.Counter(t.data_type for t in proto.graph.initializer)
    # weights INT4 (zero point 0), activations UINT4; nothing 8-bit
    assert types[TensorProto.UINT4] > 0 and types[TensorProto.INT4] > 0
    assert types[TensorProto.UINT8] == 0 and types[TensorProto.INT8] == 0
    onnx.checker.check_model(proto, full_check=True)
    expected = model.predict(x_test[:100], verbose=0)
    step = output_step(proto)
    # ONNX's reference evaluator and ONNX Runtime (QDQ fusion off: it has no 4-bit kernels)
    reference = onnx.reference.ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x_test[:100]})[0]
    s, _ = session(proto, **{"session.disable_quant_qdq": "1"})
    for out in (reference, run(s, x_test[:100])):
        assert np.max(np.abs(out - expected)) <= step * (1 + 1e-5)
    with pytest.raises(ValueError, match=r"need ONNX opset 21.*opset=17"):
        qdq.to_onnx(model, opset=17)


def small_model(**kwargs):
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = L.ReLU(name="relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(x))
    return quantize_model(model, verbose=False, **kwargs)


def images(n=16, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 6, 6, 2)).astype(np.float32)


def test_widths_without_an_onnx_type_raise_naming_the_layer():
    model = small_model(weight_bits=5, activation_bits=8)
    with pytest.raises(ValueError, match=r"weights of layer 'conv' is quantized to 5 bits.*4, 8, 16"):
        qdq.to_onnx(model)
    model = small_model(weight_bits=8, activation_bits=6)
    with pytest.raises(ValueError, match=r"quantizer 'conv_input_quantizer' is quantized to 6 bits"):
        qdq.to_onnx(model)


def test_zero_range_channel_exports_with_a_positive_scale_and_the_same_output():
    model = small_model()
    conv = model.get_layer("conv").layer
    kernel = conv.kernel.numpy()
    kernel[..., 1] = 0.0  # an output channel whose weights are all zero
    conv.kernel.assign(kernel)
    x = images()
    calibrate(model, x, verbose=False)
    proto = qdq.to_onnx(model)
    dq = weight_dequantizers(proto)
    init = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    conv_dq = next(d for name, d in dq.items() if "conv" in name.lower() and init[d.input[1]].size == 4)
    assert np.all(init[conv_dq.input[1]] > 0)
    s, _ = session(proto)
    np.testing.assert_allclose(run(s, x), model.predict(x, verbose=0), atol=output_step(proto) * 1.00001)


def test_captured_tensors_become_constants_not_graph_inputs():
    """A Normalization layer's mean and variance are tensors the traced function captures (as in
    EfficientNet): they must be constants of the ONNX graph, whose only input is the model's."""
    inputs = keras.Input((6, 6, 2), name="image")
    x = L.Normalization(axis=-1, mean=[0.2, -0.5], variance=[0.04, 0.25], name="norm")(inputs)
    x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="conv")(x))
    model = quantize_model(keras.Model(inputs, L.Dense(3, name="head")(x)), verbose=False)
    x = images()
    calibrate(model, x, verbose=False)
    proto = qdq.to_onnx(model)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["output_0"]
    s, _ = session(proto)
    np.testing.assert_allclose(run(s, x), model.predict(x, verbose=0), atol=output_step(proto) * 1.00001)


def test_tensorrt_runtime_is_symmetric_int8_everywhere():
    model = small_model(scheme="tensorrt")
    x = images()
    calibrate(model, x, verbose=False)
    proto = qdq.to_onnx(model, runtime="tensorrt")
    init = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = init[node.input[2]]
            if zp.data_type != TensorProto.INT32:  # int32 biases aside
                assert zp.data_type == TensorProto.INT8 and not np.any(numpy_helper.to_array(zp)), node.name
    s, _ = session(proto, **{"session.qdqisint8allowed": "1"})
    expected = model.predict(x, verbose=0)
    assert np.max(np.abs(run(s, x) - expected)) <= 1e-5 + np.max(np.abs(expected)) * 1e-2
    with pytest.raises(ValueError, match=r"'relu_output_quantizer' is unsigned.*scheme='tensorrt'"):
        qdq.to_onnx(small_model(), runtime="tensorrt")
    with pytest.raises(ValueError, match="runtime='trt' is not one of"):
        qdq.to_onnx(model, runtime="trt")


def test_bad_models_get_errors_that_say_what_to_do(tmp_path):
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, L.Dense(2)(inputs))
    with pytest.raises(ValueError, match="has no quantizers.*quantize_model"):
        qdq.to_onnx(plain)
    model = small_model()
    model.get_layer("conv_input_quantizer").set_range(0.0, 0.0)
    with pytest.raises(ValueError, match=r"'conv_input_quantizer' has the degenerate range \[0.0, 0.0\]"):
        qdq.to_onnx(model)
    batch = keras.Model(inputs, L.Dense(2)(qdq.keras.QuantizeAndDequantize(range_mode="batch", name="meas")(inputs)))
    with pytest.raises(ValueError, match="meas"):
        qdq.to_onnx(batch)
    # a SavedModel: ours ops are refused by name; once exported to built-ins it converts
    model = small_model()
    x = images()
    calibrate(model, x, verbose=False)
    model.export(str(tmp_path / "ours"), verbose=False)
    with pytest.raises(ValueError, match=r"still holds tensorflow-qdq ops \(Qdq>QuantizeAndDequantizeV"):
        qdq.to_onnx(str(tmp_path / "ours"))
    qdq.export(str(tmp_path / "ours"), str(tmp_path / "builtin"))
    proto = qdq.to_onnx(str(tmp_path / "builtin"))
    # the weights, exported as float values on their grids, come back as codes per channel
    assert all(dq is not None and dq.op_type == "DequantizeLinear" for dq in weight_dequantizers(proto).values())
    s, _ = session(proto)
    expected = model.predict(x, verbose=0)
    assert np.max(np.abs(run(s, x) - expected)) <= output_step(proto) * 1.00001
