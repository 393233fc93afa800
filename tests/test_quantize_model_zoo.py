"""quantize_model on real architectures, end to end: quantize, calibrate, one training step,
.keras reload, SavedModel export that loads without the library, and ONNX export run by
ONNX Runtime. MobileNetV2 runs by default; the rest of the zoo is marked slow."""

import collections
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tensorflow_qdq as qdq
from tensorflow_qdq.deploy import ExportMismatchWarning
from tensorflow_qdq.keras import (
    QuantizeAndDequantize,
    QuantizedMultiHeadAttention,
    QuantizeWrapper,
    calibrate,
    quantization_report,
    quantize_model,
)
from tests.helpers import zoo

APPLICATIONS = ["MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121"]

_LOAD_AND_RUN = """
import sys
import numpy as np
import tensorflow as tf
data, out, directory = sys.argv[1:]
inputs = dict(np.load(data))
model = tf.saved_model.load(directory)
ops = {n.op for f in model.serve.concrete_functions for n in f.graph.as_graph_def().node}
ops |= {n.op for f in model.serve.concrete_functions
        for g in f.graph.as_graph_def().library.function for n in g.node_def}
tensors = [tf.constant(inputs[k]) for k in sorted(inputs)]
result = model.serve(tensors if len(tensors) > 1 else tensors[0])  # a multi-input model takes one list
np.savez(out, out=result.numpy(), bn=np.array(sorted(o for o in ops if "BatchNorm" in o), dtype=object))
assert "tensorflow_qdq" not in sys.modules
"""


def _kernel_layers(model):
    """Every layer of the float model that has a kernel (nested models included)."""
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if any(w.path.split("/")[-1] in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings")
               for w in layer._trainable_variables + layer._non_trainable_variables):
            out.append(layer)
    return out


def _ort_outputs(proto, inputs):
    options = ort.SessionOptions()
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = dict(zip([i.name for i in session.get_inputs()], inputs if isinstance(inputs, list) else [inputs]))
    return session.run(None, feeds)[0]


def _ort_optimized_ops(proto, tmp_path):
    """The op types of ONNX Runtime's optimized graph: where it formed integer kernels."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def _last_step(model):
    """The grid step of the quantizer on the model's output (the bound on an export's error)."""
    for layer in reversed(model.layers):
        if isinstance(layer, QuantizeAndDequantize):
            lo, hi = layer.constant_range()
            from tensorflow_qdq import _grid
            return float(_grid.step(lo, hi, layer.num_bits, layer.signed, layer.narrow_range))
    return 0.0


def end_to_end(model, tmp_path, batch=4, high=1.0):
    x = zoo.inputs_for(model, batch, high=high)
    classes = model.outputs[0].shape[-1]
    y = np.eye(classes, dtype="float32")[zoo.targets_for(model, batch)]
    q = quantize_model(model, verbose=False)

    # every layer with a kernel is quantized; no BatchNormalization is left after a foldable layer
    report = {row.name: row for row in quantization_report(q)}
    for layer in _kernel_layers(model):
        if isinstance(layer, keras.layers.EinsumDense) and layer.name.startswith(("query", "key", "value",
                                                                                      "attention_output")):
            continue  # projections inside MultiHeadAttention: reported under the attention layer
        row = report.get(layer.name) or next(r for n, r in report.items() if n.endswith("/" + layer.name))
        assert row.status == "quantized", row
    wrappers = [la for la in q._flatten_layers(include_self=False) if isinstance(la, QuantizeWrapper)]
    assert wrappers

    calibrate(q, x, verbose=False)
    q.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse")
    q.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    expected = q.predict(x, verbose=0)
    assert np.all(np.isfinite(expected))

    # .keras round trip: identical outputs
    path = tmp_path / "model.keras"
    q.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)

    # SavedModel without the library, no BatchNorm op in its graph
    export_dir = tmp_path / "saved"
    qdq.export(q, str(export_dir))
    arrays = {f"x{i}": a for i, a in enumerate(x if isinstance(x, list) else [x])}
    np.savez(tmp_path / "x.npz", **arrays)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_RUN, str(tmp_path / "x.npz"), str(tmp_path / "out.npz"),
                           str(export_dir)], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = np.load(tmp_path / "out.npz", allow_pickle=True)
    np.testing.assert_array_equal(result["out"], expected)

    # ONNX: runs in ONNX Runtime and agrees with Keras within one output step, no
    # BatchNormalization. to_onnx verifies by itself: a stretch between quantizers computed
    # differently raises; when every stretch agrees but rounding flips grow with the depth of
    # an untrained network (EfficientNetB0 here), it warns, and the end-to-end bound cannot hold.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExportMismatchWarning)
        proto = qdq.to_onnx(q)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    out = _ort_outputs(proto, x)
    step = _last_step(q)
    if not any(w.category is ExportMismatchWarning for w in caught):
        assert np.max(np.abs(out - expected)) <= step + 1e-6 * np.max(np.abs(expected)), (
            np.max(np.abs(out - expected)), step)
    return q, ops, result["bn"], proto


def test_mobilenet_v2_end_to_end(tmp_path):
    model = zoo.application("MobileNetV2")
    q, ops, bn_ops, proto = end_to_end(model, tmp_path)
    folded = [w for w in q.layers if isinstance(w, QuantizeWrapper) and w.batch_norm is not None]
    assert len(folded) == sum(isinstance(la, keras.layers.BatchNormalization) for la in model.layers)
    assert not any(isinstance(la, keras.layers.BatchNormalization) for la in q.layers)
    assert "BatchNormalization" not in ops and len(bn_ops) == 0
    # ONNX Runtime runs every convolution, residual Add and the classifier as integer kernels
    fused = _ort_optimized_ops(proto, tmp_path)
    convs = sum(isinstance(la, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)) for la in model.layers)
    adds = sum(isinstance(la, keras.layers.Add) for la in model.layers)
    print("ONNX Runtime's optimized MobileNetV2:", dict(fused))
    assert fused["QLinearConv"] == convs and "Conv" not in fused, fused
    assert fused["QLinearAdd"] == adds, fused
    assert fused["QGemm"] + fused["QLinearMatMul"] == 1, fused


@pytest.mark.slow
@pytest.mark.parametrize("name", APPLICATIONS)
def test_applications_end_to_end(name, tmp_path):
    model = zoo.application(name)
    high = 255.0 if name in ("ResNet50", "EfficientNetB0", "DenseNet121") else 1.0
    q, ops, _, _ = end_to_end(model, tmp_path, high=high)
    assert ops["DequantizeLinear"] > 0


def test_transformer_block_end_to_end(tmp_path):
    model = zoo.transformer_block()
    q, ops, _, _ = end_to_end(model, tmp_path)
    assert isinstance(q.get_layer("mha"), QuantizedMultiHeadAttention)
    assert type(q.get_layer("embed")) is QuantizeWrapper


@pytest.mark.slow
def test_conv_zoo_end_to_end(tmp_path):
    model = zoo.conv_zoo()
    q, ops, bn_ops, _ = end_to_end(model, tmp_path)
    assert type(q.get_layer("sub_dense").layer).__name__ == "_SubDense"
    assert len(bn_ops) == 0 and "BatchNormalization" not in ops
