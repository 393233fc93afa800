"""What a runtime makes of each Keras layer: integer kernel, float, or no compute at all.

``quantization_report(model, runtime=...)`` exports the model (unverified: the report is for
looking, and a disagreeing model is worth a report too), lets the runtime build the graph it
will run (ONNX Runtime's optimized graph; the TFLite flatbuffer's ops as converted, before a
delegate merges them) and attributes each runtime op to the Keras layer it came from through
the name scopes that tracing leaves in op names (``functional_1/conv2_1/convolution``); the
ops of a custom layer quantize_model inlined are keras.ops nodes, which the trace scopes by their
own names (``functional_1/block_multiply_1/Mul``), and go to that layer's row.
"""

import os
import re
import tempfile

from tensorflow_qdq._contract import check_choice

RUNTIMES = ("onnxruntime", "tflite")

# ONNX Runtime's integer kernels (contrib ops included).
_ONNX_INTEGER = ("QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                 "QAttention")
# Ops that move or re-encode values without computing new ones: they say nothing about a
# layer's arithmetic (ONNX Runtime also runs MaxPool and friends on uint8 in place).
_ONNX_NEUTRAL = ("QuantizeLinear", "DequantizeLinear", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity",
                 "Flatten", "Shape", "Cast", "MaxPool", "Pad", "Slice", "Gather", "Split", "Expand", "Tile",
                 "DepthToSpace", "SpaceToDepth", "GlobalMaxPool", "Constant")
_ONNX_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul")
_ONNX_WEIGHTED_INTEGER = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                          "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearConvTranspose")
_INTEGER_TYPES = (2, 3, 21, 22)  # onnx.TensorProto UINT8, INT8, UINT4, INT4
_TFLITE_WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D",
                    "CONV_3D_TRANSPOSE", "BATCH_MATMUL", "EMBEDDING_LOOKUP", "GATHER")
_TFLITE_NEUTRAL = ("QUANTIZE", "DEQUANTIZE", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "PAD", "PADV2",
                   "MAX_POOL_2D", "STRIDED_SLICE", "SLICE", "SHAPE", "PACK", "UNPACK", "SPLIT", "CAST")


def runtime_rows(model, rows, runtime, export_options):
    """``rows`` (quantization_report's) with ``runtime_status``/``runtime_detail`` filled in."""
    check_choice("runtime", runtime, RUNTIMES)
    ops = _onnx_ops(model, export_options) if runtime == "onnxruntime" else _tflite_ops(model, export_options)
    names = _name_tree(model)
    suffixed = _suffixed_scopes([scope for op in ops for scope in op.scopes])
    found = {}
    for op in ops:
        rows_of_op = [r for r in dict.fromkeys(_layer_of(scope, names, suffixed) for scope in op.scopes)
                      if r is not None]
        for row_name in rows_of_op[:1] if op.first_only else rows_of_op:
            found.setdefault(row_name, []).append(op)
    return [_with_runtime(row, found.get(row.name, [])) for row in rows]


class _Op:
    """One runtime op: its kind, the names it carries (``first_only``: the first that names a
    layer decides; else every layer named shares the op, as TFLite's fused ops list them),
    whether it computes in integers, only moves data, is a weighted op, and why it is float."""

    def __init__(self, kind, scopes, integer, neutral, weighted, reason="", first_only=False):
        self.kind, self.scopes, self.integer, self.neutral = kind, scopes, integer, neutral
        self.weighted, self.reason, self.first_only = weighted, reason, first_only


def _with_runtime(row, ops):
    """The status of a layer with a kernel is that of its weighted op (a float activation
    after an integer conv is named in the detail); other layers go by all their ops."""
    import dataclasses

    compute = [op for op in ops if not op.neutral]
    deciding = [op for op in compute if op.weighted] if row.has_kernel else compute
    deciding = deciding or compute
    others = [op for op in compute if op not in deciding and not op.integer]
    if row.status == "activation quantizer":
        status, detail = "quantize/dequantize", ""
    elif not ops:
        status, detail = "absent", "no op of its own in the runtime graph (folded, or nothing to compute)"
    elif not compute:
        status, detail = "moves data", _kinds(ops)
    elif any(not op.integer for op in deciding):
        status = "float"
        detail = "; ".join(dict.fromkeys(f"{op.kind} in float: {op.reason}" for op in deciding if not op.integer))
    else:
        status, detail = "integer", _kinds(deciding)
    if others and status != "float":
        detail += "; also in float: " + "; ".join(dict.fromkeys(f"{op.kind} ({op.reason})" for op in others))
    return dataclasses.replace(row, runtime_status=status, runtime_detail=detail)


def _kinds(ops):
    return ", ".join(dict.fromkeys(op.kind for op in ops))


# ---------------------------------------------------------------------------- names


def _name_tree(model):
    """{layer name: (report row name, subtree for a nested model or None)}, and the ops of the
    custom layers quantize_model inlined (``_qdq_inlined``: keras.ops graph nodes that the trace
    scopes by their own name, see ``_trace._operations_scoped``), each to its layer's row. A
    layer of the graph keeps its name: an inlined layer's sublayers keep their own rows."""
    import keras

    from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention

    def walk(m, prefix):
        tree = {}
        for layer in m.layers:
            nested = isinstance(layer, keras.Model) and not isinstance(layer, QuantizedMultiHeadAttention)
            tree[layer.name] = (prefix + layer.name, walk(layer, f"{prefix}{layer.name}/") if nested else None)
        for name, (_, ops) in getattr(m, "_qdq_inlined", {}).items():
            for op_name, _ in ops:
                tree.setdefault(op_name, (prefix + name, None))
        return tree

    return walk(model, "")


def _suffixed_scopes(scopes):
    """Whether the trace numbered every layer's name scope (``conv2d_1`` for layer ``conv2d``,
    ``conv2d_1_2`` for layer ``conv2d_1``): then a trailing ``_N`` is stripped before an exact
    match is tried, else the other way round."""
    layer_parts = [s.split("/")[1] for s in scopes if s.count("/") >= 2]
    return bool(layer_parts) and all(re.search(r"_\d+$", part) for part in layer_parts)


def _layer_of(scope, tree, suffixed=True):
    """The report row name of the layer a traced op name belongs to, or None. The first path
    component is the model's own name scope; the next ones are matched to layer names, into
    nested models."""
    return _descend(scope.split("/")[1:-1], tree, suffixed)


def _descend(parts, tree, suffixed):
    for i, part in enumerate(parts):
        entry = _match(part, tree, suffixed)
        if entry is None:
            continue
        row_name, subtree = entry
        if subtree is not None:
            return _descend(parts[i + 1:], subtree, suffixed) or row_name
        return row_name
    return None


def _match(part, tree, suffixed):
    base = re.sub(r"_\d+$", "", part)
    order = (base, part) if suffixed else (part, base)
    return next((tree[name] for name in order if name in tree), None)


# ---------------------------------------------------------------------------- ONNX Runtime


def _onnx_ops(model, export_options):
    import onnx
    import onnxruntime as ort

    from tensorflow_qdq.deploy import _sessions
    from tensorflow_qdq.deploy.onnx import to_onnx

    exported = to_onnx(model, verify=False, **export_options)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-specific layouts
    _sessions.four_bit_options(exported, options)
    with tempfile.TemporaryDirectory(prefix="qdq_report_") as tmp:
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(exported.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    before = {n.name: n for n in exported.graph.node}
    producer = {out: n for n in exported.graph.node for out in n.output}
    consumers = {}
    for n in exported.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    tables = {t.name: t.data_type for t in optimized.graph.initializer}
    ops = []
    for node in optimized.graph.node:
        kind = node.op_type
        integer = kind.startswith("QLinear") or kind in _ONNX_INTEGER
        neutral = kind in _ONNX_NEUTRAL
        weighted = kind in _ONNX_WEIGHTED or kind in _ONNX_WEIGHTED_INTEGER
        if kind == "Gather" and node.input[0] in tables:  # an embedding lookup: integer if it reads codes
            integer = tables[node.input[0]] in _INTEGER_TYPES
            neutral, weighted = False, True
        reason = ""
        if not integer and not neutral:
            reason = "it looks up a float table" if kind == "Gather" else \
                _onnx_float_reason(before.get(node.name), producer, consumers)
        ops.append(_Op(kind, _onnx_names(node, weighted), integer, neutral, weighted, reason, first_only=True))
    return ops


def _onnx_names(node, weighted):
    """Where to look for the layer's name scope: the node's name and outputs, then, for a
    weighted op that a converter renamed (tf2onnx's ``Conv__870`` for a depthwise conv with a
    bias), its weight and bias (both the layer's own). Other inputs come from other layers."""
    own = {"QLinearConv": (3, 8), "QLinearMatMul": (3,), "QGemm": (3, 6)}.get(node.op_type, (1, 2)) if weighted else ()
    return [node.name] + list(node.output) + [node.input[i] for i in own if i < len(node.input)]


def _onnx_float_reason(node, producer, consumers):
    """Why ONNX Runtime kept ``node`` (as exported) in float: what its QDQ fusion was missing."""
    if node is None:
        return "ONNX Runtime made this op itself"
    inputs = [name for name in node.input if name]
    if node.op_type in _ONNX_WEIGHTED:
        weight = producer.get(inputs[1]) if len(inputs) > 1 else None
        if weight is None or weight.op_type != "DequantizeLinear":
            via = "a float constant" if weight is None else f"{weight.op_type} (not a DequantizeLinear)"
            return f"its weight comes from {via}"
        inputs = inputs[:1]
    unquantized = [name for name in inputs if getattr(producer.get(name), "op_type", None) != "DequantizeLinear"
                   and name not in _constants(producer, name)]
    if unquantized:
        return "an input is not quantized (no DequantizeLinear before it)"
    users = consumers.get(node.output[0], [])
    if not users or any(u.op_type != "QuantizeLinear" for u in users):
        after = ", ".join(sorted({u.op_type for u in users})) or "the model output"
        return f"its output is not quantized (it goes to {after})"
    if node.op_type in ("Add", "Mul") and len(inputs) > sum(
            getattr(producer.get(name), "op_type", None) == "DequantizeLinear" for name in inputs):
        # ONNX Runtime fuses a binary op into QLinearAdd/QLinearMul only when every input is dequantized
        return f"an input is a float constant (QLinear{node.op_type} needs every input from a DequantizeLinear)"
    return "ONNX Runtime has no integer kernel for it here"


def _constants(producer, name):
    node = producer.get(name)
    return (name,) if node is None or node.op_type == "Constant" else ()


# ---------------------------------------------------------------------------- TFLite


def _tflite_ops(model, export_options):
    import numpy as np

    from tensorflow_qdq.deploy import tflite

    options = dict(export_options)
    options.setdefault("allow_float_ops", True)  # the report is where float ops are listed
    graph = tflite.interpreter(tflite.to_tflite(model, verify=False, **options))
    tensors = {t["index"]: t for t in graph.get_tensor_details()}
    ops = []
    for op in graph._get_ops_details():
        kind = op["op_name"]
        reads = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        writes = [tensors[i] for i in op["outputs"] if i in tensors]
        floats_in = [t for t in reads if t["dtype"] in (np.float32, np.float16)]
        floats_out = [t for t in writes if t["dtype"] in (np.float32, np.float16)]
        integer = not floats_in and not floats_out
        reason = ("it reads a float tensor" if floats_in else "") + \
                 (" and " if floats_in and floats_out else "") + ("it writes a float tensor" if floats_out else "")
        scopes = [part for t in writes for part in t["name"].split(";")]
        ops.append(_Op(kind, scopes, integer, kind in _TFLITE_NEUTRAL, kind in _TFLITE_WEIGHTED, reason))
    return ops
