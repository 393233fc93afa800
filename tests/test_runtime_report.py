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


def test_unknown_runtime():
    with pytest.raises(ValueError, match="runtime='tensorrt'"):
        quantization_report(_quantized(), runtime="tensorrt")
