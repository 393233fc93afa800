"""quantization_report(model, runtime=...): what ONNX Runtime and the TFLite interpreter really
run for each Keras layer, checked against the runtimes' own graphs."""

import os
import tempfile

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tensorflow_qdq as qdq
from tensorflow_qdq.deploy import tflite
from tensorflow_qdq.keras import calibrate, quantization_report, quantize_model, report_summary

L = keras.layers


def _float_model():
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(6, 3, use_bias=False, name="c1")(inputs)
    x = L.ReLU(name="r1")(L.BatchNormalization(name="bn1")(x))
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.Add(name="add")([x, y])
    x = L.Conv2D(5, 1, activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(4, activation="softmax", name="head")(x))


def _quantized(**options):
    model = quantize_model(_float_model(), verbose=False, **options)
    calibrate(model, np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 3)).astype(np.float32), verbose=False)
    return model


def _optimized_onnx(model):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    path = os.path.join(tempfile.mkdtemp(), "optimized.onnx")
    options.optimized_model_filepath = path
    ort.InferenceSession(qdq.to_onnx(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(path).graph.node


def _weighted_rows(rows):
    return {r.name: r for r in rows if r.has_kernel}


def test_onnx_report_matches_the_optimized_graph():
    model = _quantized(skip_layers=["c2"])
    rows = _weighted_rows(quantization_report(model, runtime="onnxruntime"))
    nodes = _optimized_onnx(model)
    integer_nodes = [n for n in nodes if n.op_type in ("QLinearConv", "QLinearMatMul", "QGemm")]
    float_nodes = [n for n in nodes if n.op_type in ("Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul", "FusedGemm")]
    # the runtime's own count, independently of the report's attribution
    assert sum(r.runtime_status == "integer" for r in rows.values()) == len(integer_nodes) == 3
    assert [r.name for r in rows.values() if r.runtime_status == "float"] == ["c2"] and len(float_nodes) == 1
    assert "c2" in float_nodes[0].name
    assert "weight" in rows["c2"].runtime_detail and rows["c2"].status == "float"
    assert "Softmax" in rows["head"].runtime_detail  # the float activation after the integer matmul
    text = report_summary(quantization_report(model, runtime="onnxruntime"), model.name, "onnxruntime")
    assert "3 of 4 layers with kernels run as integer kernels" in text and "float in onnxruntime: c2" in text


def test_tflite_report_matches_the_flatbuffer():
    model = _quantized()
    rows = quantization_report(model, runtime="tflite")
    interpreter = tflite.interpreter(qdq.to_tflite(model))
    kernels = [op for op in interpreter._get_ops_details()
               if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    weighted = _weighted_rows(rows)
    assert len(kernels) == len(weighted) == 4
    assert all(r.runtime_status == "integer" for r in weighted.values())
    assert {r.name: r.runtime_status for r in rows}["add"] == "integer"


def test_tflite_report_names_float_layers():
    model = _quantized(skip_layers=["c2"])
    rows = _weighted_rows(quantization_report(model, runtime="tflite"))
    assert rows["c2"].runtime_status == "float" and "float tensor" in rows["c2"].runtime_detail
    assert rows["c1"].runtime_status == "integer"


@keras.saving.register_keras_serializable(package="test_runtime_report")
class ScaledSum(L.Layer):
    """A custom layer without weights whose call is keras.ops: quantize_model inlines it."""

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, inputs):
        return inputs[0] + inputs[1] * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def _inlined_model():
    """Two conv branches summed by ScaledSum (its multiply and add the model's only ones), then
    a ReLU that TFLite fuses into the ADD."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(6, 3, padding="same", name="a")(inputs)
    y = L.Conv2D(6, 1, name="b")(inputs)
    x = L.ReLU(name="relu")(ScaledSum(0.25, name="scaled")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(L.Conv2D(4, 1, name="c")(x))
    model = quantize_model(keras.Model(inputs, x), verbose=False)
    calibrate(model, np.random.default_rng(0).normal(size=(32, 8, 8, 3)).astype(np.float32), verbose=False)
    return model


def test_an_inlined_layer_reports_what_the_runtimes_run_for_its_ops():
    """The inlined layer is gone from the copy, its multiply and add are graph nodes: its row
    takes the runtime ops that compute them, the conv rows keep theirs."""
    model = _inlined_model()
    assert [tuple(op) for op in model._qdq_inlined["scaled"][1]] == [("scaled_multiply", "Multiply"), ("scaled", "Add")]
    # ONNX Runtime: the reference is its optimized graph's own adds and multiplies
    nodes = _optimized_onnx(model)
    floats = [n.op_type for n in nodes if n.op_type in ("Add", "Mul")]
    integers = [n.op_type for n in nodes if n.op_type in ("QLinearAdd", "QLinearMul")]
    assert len(floats) + len(integers) == 2, [n.op_type for n in nodes]
    rows = {r.name: r for r in quantization_report(model, runtime="onnxruntime")}
    row = rows["scaled"]
    assert (row.status, row.runtime_status) == ("inlined", "float" if floats else "integer"), row
    assert all(f"{kind} in float" in row.runtime_detail for kind in floats), row.runtime_detail
    if "Mul" in floats:  # as today: ONNX Runtime does not fuse a multiply by a float constant (0.25)
        assert "a float constant" in row.runtime_detail
    assert all(rows[name].runtime_status == "integer" for name in ("a", "b", "c"))
    # TFLite, full integer (to_tflite's default): int8 MUL and ADD, the ReLU fused into the ADD
    flatbuffer = qdq.to_tflite(model)
    assert tflite.float_compute_ops(flatbuffer) == []
    assert {"MUL", "ADD"} <= {op["op_name"] for op in tflite.interpreter(flatbuffer)._get_ops_details()}
    rows = {r.name: r for r in quantization_report(model, runtime="tflite")}
    assert (rows["scaled"].runtime_status, rows["scaled"].runtime_detail) == ("integer", "MUL, ADD")
    assert (rows["relu"].runtime_status, rows["relu"].runtime_detail) == ("integer", "ADD")
    assert all(rows[name].runtime_status == "integer" for name in ("a", "b", "c"))


def test_unknown_runtime():
    with pytest.raises(ValueError, match="runtime='tensorrt'"):
        quantization_report(_quantized(), runtime="tensorrt")
