"""An exported model run in the runtime that deploys it, over the Keras model's inputs.

``onnx_session`` and ``tflite_session`` return ``run(inputs) -> (outputs, steps)``: ``inputs``
a list of arrays in the order of the Keras model's inputs, ``outputs`` the runtime's outputs in
the order of the Keras model's (flattened) outputs, ``steps`` for each output the grid step
of the quantized tensor it was dequantized from, or None for a float output (verification
allows an output a few of its own steps of difference).
"""

import warnings

import numpy as np


def onnx_session(proto):
    """ONNX Runtime's CPU session with every graph optimization, as users run it (that is
    where the QDQ pairs become integer kernels). 4-bit models run with the QDQ fusion off (see
    ``four_bit_options``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    four_bit_options(proto, options)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    steps = onnx_output_steps(proto)

    def run(inputs):
        feeds = {name: np.asarray(x) for name, x in zip(names, inputs)}
        return [np.asarray(y) for y in session.run(None, feeds)], steps

    return run


def four_bit_options(proto, options):
    """ONNX Runtime 1.32 has no 4-bit integer conv/matmul kernels, and its QDQ fusion leaves a
    uint4 MaxPool that it then rejects: a model with 4-bit tensors runs with the fusion off
    (the 4-bit grid is computed exactly either way)."""
    if has_four_bit_tensors(proto):
        options.add_session_config_entry("session.disable_quant_qdq", "1")


def has_four_bit_tensors(proto):
    """Whether an ONNX model holds INT4/UINT4 initializers or constants (4-bit grids)."""
    from onnx import TensorProto

    four = (TensorProto.INT4, TensorProto.UINT4)
    return any(t.data_type in four for t in proto.graph.initializer) or any(
        a.t.data_type in four for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute)


def onnx_output_steps(proto):
    """For each graph output, the step of the grid it is dequantized from (None: float)."""
    return [_onnx_output_step(proto, o.name) for o in proto.graph.output]


def _onnx_output_step(proto, name):
    from onnx import numpy_helper

    producer = next((n for n in proto.graph.node if name in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        return None
    scale = next((t for t in proto.graph.initializer if t.name == producer.input[1]), None)
    if scale is None:
        return None
    value = numpy_helper.to_array(scale)
    return float(np.max(value)) if value.size else None


def tflite_session(flatbuffer, input_names=()):
    """The TFLite interpreter (LiteRT) with its default delegates, as deployed; inputs are
    matched to ``input_names`` (the traced signature's) by name, outputs kept in the
    converter's order (that of the traced function's outputs). Where LiteRT's XNNPACK delegate
    fails to prepare the model (it accepts some int8 ops it then cannot build: a tiny ViT's),
    it warns and runs TFLite's built-in kernels, as a deployment then has to."""
    from tensorflow_qdq.deploy import _quiet, tflite

    def interpreter_for(default_delegates):
        with _quiet.converter_output_hidden():  # LiteRT announces its XNNPACK delegate on stderr
            return tflite.interpreter(flatbuffer, default_delegates=default_delegates)

    state = {"interpreter": interpreter_for(True), "shapes": {}}
    steps = tflite_output_steps(flatbuffer)

    def invoke(inputs):
        interpreter, shapes = state["interpreter"], state["shapes"]
        details = _by_name(interpreter.get_input_details(), input_names)
        for detail, x in zip(details, inputs):
            x = np.asarray(x, detail["dtype"])
            if shapes.get(detail["index"]) != x.shape:
                interpreter.resize_tensor_input(detail["index"], x.shape)
                shapes[detail["index"]] = x.shape
        interpreter.allocate_tensors()
        for detail, x in zip(details, inputs):
            interpreter.set_tensor(detail["index"], np.asarray(x, detail["dtype"]))
        interpreter.invoke()
        return [interpreter.get_tensor(o["index"]).copy() for o in interpreter.get_output_details()], steps

    def run(inputs):
        try:
            return invoke(inputs)
        except RuntimeError as exc:
            if "XNNPACK" not in str(exc) or state.get("builtin"):
                raise
            warnings.warn(
                f"LiteRT's XNNPACK delegate (its default on CPU) failed to prepare this TFLite model "
                f"({str(exc).strip()[:160]}); it ran with TFLite's built-in kernels instead: deploy it with "
                "experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES", RuntimeWarning,
                stacklevel=2)
            state.update(interpreter=interpreter_for(False), shapes={}, builtin=True)
            return invoke(inputs)

    return run


def _by_name(details, names):
    """``details`` reordered to follow ``names`` when every name is found (the converter may
    prefix them, e.g. ``serving_default_image:0``), else as they are."""
    def bare(name):
        return name.split(":")[0].removeprefix("serving_default_")

    found = {bare(d["name"]): d for d in details}
    if names and len(names) == len(details) and all(n in found for n in names):
        return [found[n] for n in names]
    return list(details)


def tflite_output_steps(flatbuffer):
    """For each output, the scale of the int8 tensor it is dequantized from (ops as converted,
    no delegate: XNNPACK would hide them), or None."""
    from tensorflow_qdq.deploy import tflite

    graph = tflite.interpreter(flatbuffer)
    indices = [o["index"] for o in graph.get_output_details()]
    tensors = {t["index"]: t for t in graph.get_tensor_details()}
    producer = {out: op for op in graph._get_ops_details() for out in op["outputs"]}
    steps = []
    for index in indices:
        op = producer.get(index)
        scale = None
        if op is not None and op["op_name"] == "DEQUANTIZE":
            scale = tensors[op["inputs"][0]]["quantization"][0] or None
        steps.append(scale)
    return steps
