"""to_onnx: a QDQ ONNX model that ONNX Runtime (and TensorRT) run with integer kernels.

The model is traced with every quantizer as TensorFlow's ``QuantizeAndDequantizeV3`` with
constant ranges (weights: the folded float weight with its per-channel range), converted by
tf2onnx with *our* rule for those ops (``_qdq_rewriter``: exact widths, zero points and
scales; tf2onnx's own rule assumes 8 bits), then three passes put the graph in the form that
ONNX Runtime's QDQ fusion expects (``_passes``).
"""

import contextlib
import gc
import os

import numpy as np
import tensorflow as tf

from tensorflow_qdq import _grid
from tensorflow_qdq._builtins import qdq_ops_in_saved_model
from tensorflow_qdq._contract import check_choice
from tensorflow_qdq.deploy import _onnx_passes, _preflight, _quiet, _sessions, _tf2onnx_handlers, _trace, _verify
from tensorflow_qdq.keras._target import Target

RUNTIMES = ("onnxruntime", "tensorrt")
# Widths that ONNX has integer types for (4 and 16 bits from opset 21).
_WIDTHS = (4, 8, 16)
# Weights may also use the 7-bit grid, stored as INT8 (_onnx_passes.STORED_WIDTH).
_WEIGHT_WIDTHS = _WIDTHS + tuple(_onnx_passes.STORED_WIDTH)
_CONVERT_OPSET = 17  # tf2onnx converts at this opset; newer opsets are reached with onnx's converter


class OnnxTarget(Target):
    """Emits TF ops that tf2onnx turns into QuantizeLinear/DequantizeLinear (see module doc); the
    trace's forms stay off (tf2onnx and ONNX Runtime's QDQ fusion take the graph as Keras traces it)."""

    def __init__(self, storage):
        self.storage = storage  # an _onnx_passes.Storage: the runtime and how codes are stored
        self.runtime = storage.runtime
        self.widths = set()  # the stored widths (a 7-bit weight grid counts as 8)
        self.problems = []  # what cannot be exported, collected over the whole trace

    def _width_problem(self, num_bits, what, weight=False):
        if num_bits in (_WEIGHT_WIDTHS if weight else _WIDTHS):
            self.widths.add(_onnx_passes.STORED_WIDTH.get(num_bits, num_bits) if weight else num_bits)
            return None
        widths = ", ".join(map(str, _WIDTHS))
        return (f"{what} is quantized to {num_bits} bits, and ONNX has integer types of "
                f"{widths} bits only{' (weights may also use 7 bits, stored as INT8)' if weight else ''}; "
                "quantize it to one of those widths")

    def _check_width(self, num_bits, what, weight=False):
        problem = self._width_problem(num_bits, what, weight)
        if problem is not None:
            raise ValueError(f"to_onnx: {problem}")

    def raise_problems(self):
        """One ValueError naming every problem of the trace (a single one on one line)."""
        found = list(dict.fromkeys(self.problems))
        if len(found) == 1:
            raise ValueError(f"to_onnx: {found[0]}")
        if found:
            raise ValueError(f"to_onnx: the model cannot be exported to ONNX ({len(found)} problems):\n"
                             + "\n".join(f"  - {problem}" for problem in found))

    def weight(self, weight, channel_axes, num_bits, layer):
        problem = self._width_problem(num_bits, f"the weights of layer {layer.name!r}", weight=True)
        if problem is not None:
            self.problems.append(problem)
            return tf.constant(weight)  # a stand-in, so that the trace goes on to find the rest
        amax = _grid.channel_amax(weight, channel_axes)
        # An all-zero channel has no range; any positive one gives it the same (zero) codes.
        amax = np.where(amax > 0, amax, np.float32(1.0)).astype(np.float32)
        rank = weight.ndim
        others = [a for a in range(rank) if a not in channel_axes]
        perm = others + list(channel_axes)
        moved = np.transpose(weight, perm)
        flat = moved.reshape(moved.shape[: len(others)] + (-1,))
        out = tf.raw_ops.QuantizeAndDequantizeV3(
            input=tf.constant(flat), input_min=tf.constant(-amax), input_max=tf.constant(amax),
            num_bits=tf.constant(num_bits, tf.int32), signed_input=True, range_given=True, narrow_range=True,
            axis=len(others), name="weight_qdq")
        # Undo the merge and the move separately: a moved weight can have its original shape
        # (a transposed conv with as many inputs as outputs) and still need the inverse transpose.
        if flat.shape != moved.shape:
            out = tf.reshape(out, moved.shape)
        if perm != list(range(rank)):
            out = tf.transpose(out, [perm.index(a) for a in range(rank)])
        return out

    def activation(self, x, quantizer, lo, hi):
        problems = self._activation_problems(quantizer, lo, hi)
        if problems:
            self.problems.extend(problems)
            return x  # a stand-in, so that the trace goes on to find the rest
        return tf.raw_ops.QuantizeAndDequantizeV3(
            input=x, input_min=tf.constant(lo, x.dtype), input_max=tf.constant(hi, x.dtype),
            num_bits=tf.constant(quantizer.num_bits, tf.int32), signed_input=quantizer.signed, range_given=True,
            narrow_range=quantizer.narrow_range, axis=-1)


    def _activation_problems(self, quantizer, lo, hi):
        name = f"quantizer {quantizer.name!r}"
        found = [self._width_problem(quantizer.num_bits, name)]
        if quantizer.axis is not None:
            found.append(f"{name} quantizes per channel; ONNX activations are exported per tensor only")
        if self.runtime == "tensorrt" and not quantizer.signed:
            found.append(f"(runtime='tensorrt') {name} is unsigned, and TensorRT runs symmetric int8 only; make the "
                         "model with quantize_model(..., scheme='tensorrt')")
        elif quantizer.axis is None and not np.all(
                _grid.step(lo, hi, quantizer.num_bits, quantizer.signed, quantizer.narrow_range) > 0):
            found.append(f"{name} has the degenerate range [{float(np.min(lo))}, {float(np.max(hi))}] (no grid step); "
                         "calibrate or train the model before exporting")
        return [problem for problem in found if problem is not None]


def to_onnx(model, path=None, *, opset=None, runtime="onnxruntime", x86_without_vnni=False, verify=True,
            verify_data=None, input_signature=None):
    """Converts a quantization-aware Keras model to a QDQ ONNX model; returns the ModelProto.

    Every quantized layer gets its weights as integer codes behind a DequantizeLinear with one
    scale per output channel (``axis`` set) and its inputs behind DequantizeLinear, exactly
    where the Keras model quantizes; biases of Conv/Gemm become int32 with scale
    ``x_scale * w_scale`` (what ONNX Runtime's integer kernels take). 4- and 16-bit grids get
    INT4/UINT4/INT16/UINT16 (opset 21), 7-bit weight grids INT8; other widths raise.

    The export is verified: ONNX Runtime runs it on sample inputs and its outputs must agree
    with the Keras model's (docs/DEPLOY.md, "Verified exports"), else
    ``tensorflow_qdq.deploy.ExportMismatchError`` names the first quantized tensor where they
    part.

    Args:
      model: a Keras model from ``tensorflow_qdq.keras.quantize_model`` (calibrated or
        trained), or a SavedModel directory whose graph holds TensorFlow's
        QuantizeAndDequantize ops (not ``Qdq>`` ops: convert the Keras model instead; a
        SavedModel has no Keras model to verify against).
      path: where to write the ``.onnx`` file (optional; written only once verified).
      opset: the ONNX opset (default 17, or 21 when a 4- or 16-bit grid needs it).
      runtime: ``"onnxruntime"`` (default): activations as uint8 (a signed grid with zero point
        128, exact) and weights as int8 with zero point 0, which ONNX Runtime's CPU kernels fuse
        by default (u8s8, its fastest on x86); ``"tensorrt"``: symmetric int8 with zero point 0
        everywhere (TensorRT's rule; ONNX Runtime fuses it with the session option
        ``session.qdqisint8allowed=1``).
      x86_without_vnni: set it when the model will run in ONNX Runtime on an x86 CPU without
        VNNI (AVX2 or AVX-512 but neither AVX512_VNNI nor AVX_VNNI): there the u8s8 kernels can
        saturate with full-range 8-bit weights, so 8-bit weights are stored as uint8 with zero
        point 128 (u8u8: exact, slower). 7-bit weight grids (``quantize_model(..., weight_bits=7)``)
        cannot saturate and stay int8 (fast and exact on every CPU). docs/DEPLOY.md, ONNX, "Weights and
        the CPU".
      verify: True (default) raises on disagreement, ``"warn"`` warns, False skips the check;
        sample inputs may be passed here directly instead of True.
      verify_data: the sample inputs (an array, a list of arrays for several inputs, or batches);
        default: the first rows ``calibrate`` saw, else inputs drawn from the input spec.
      input_signature: a ``tf.TensorSpec`` per model input (batch dimension None), for a
        subclassed model whose input shapes or dtypes Keras did not record at its first call.
    """
    check_choice("runtime", runtime, RUNTIMES)
    if x86_without_vnni not in (True, False):
        raise ValueError(f"x86_without_vnni={x86_without_vnni!r} must be True or False")
    if x86_without_vnni and runtime != "onnxruntime":
        raise ValueError(f"x86_without_vnni=True applies to runtime='onnxruntime' only, got runtime={runtime!r}")
    storage = _onnx_passes.Storage(runtime, bool(x86_without_vnni))
    mode, data = _verify.parse(verify, verify_data)
    try:
        import onnx
        import tf2onnx  # noqa: F401 - checked here for the error below
    except ImportError as exc:  # pragma: no cover - the set-up script installs both
        raise ImportError(f"to_onnx needs tf2onnx and onnx ({exc}); pip install tf2onnx onnx") from exc
    if isinstance(model, (str, os.PathLike)):
        proto = _saved_model_to_onnx(os.fspath(model), storage, opset)
    else:
        _preflight.check_exportable(model, "to_onnx")
        proto = _keras_to_onnx(model, storage, opset, input_signature)
        _verify.verify_export(
            model, _sessions.onnx_session(proto), what="to_onnx", runtime="ONNX Runtime", mode=mode, data=data,
            probe=lambda tap: _sessions.onnx_session(_keras_to_onnx(tap, storage, opset)))
    if path is not None:
        onnx.save(proto, os.fspath(path))
    return proto


def _keras_to_onnx(model, storage, opset, input_signature=None):
    _tf2onnx_handlers.register()
    target = OnnxTarget(storage)
    with _quiet.converter_output_hidden():
        frozen = _trace.frozen(model, target, input_signature)
    target.raise_problems()
    with _quiet.converter_output_hidden(), _qdq_rewriter(target), _optimizer_copies_collected():
        proto = convert_frozen(frozen)
    # The traced function's graphs are cyclic garbage now (GBs for a large model): freed before
    # the runtime and the verification run, not at the cycle collector's next full pass.
    del frozen
    gc.collect()
    return _finish(proto, target, opset)


def _saved_model_to_onnx(directory, storage, opset):
    import tf2onnx

    _tf2onnx_handlers.register()
    target = OnnxTarget(storage)
    with _quiet.converter_output_hidden():
        graph_def, inputs, outputs = _saved_model_graph(directory)
        with _qdq_rewriter(target), _optimizer_copies_collected():
            proto, _ = tf2onnx.convert.from_graph_def(graph_def, input_names=inputs, output_names=outputs,
                                                      opset=_CONVERT_OPSET)
    return _finish(proto, target, opset)


def _finish(proto, target, opset):
    """The passes and the opset the widths need, checked by onnx's checker."""
    import onnx

    wide = target.widths - {8}
    if opset is None:
        opset = 21 if wide else _CONVERT_OPSET
    if wide and opset < 21:
        raise ValueError(f"to_onnx: {sorted(wide)}-bit grids need ONNX opset 21 (INT4/INT16 types), got opset={opset}")
    proto = _onnx_passes.finish(proto, opset, target.storage)
    onnx.checker.check_model(proto)
    return proto


def convert_frozen(function):
    """tf2onnx over a frozen concrete function (``_trace.frozen``), at the opset tf2onnx converts
    at; the graph's inputs and outputs are named ``image`` / ``output_0`` (not ``image:0``)."""
    import tf2onnx

    proto, _ = tf2onnx.convert.from_graph_def(
        function.graph.as_graph_def(), input_names=[t.name for t in function.inputs],
        output_names=[t.name for t in function.outputs], opset=_CONVERT_OPSET)
    names = {t.name: t.name.split(":")[0] for t in function.inputs}
    names.update({t.name: f"output_{i}" for i, t in enumerate(function.outputs)})
    _onnx_passes.rename_values(proto.graph, names)
    return proto


def _saved_model_graph(directory):
    from tf2onnx import tf_loader

    ours = qdq_ops_in_saved_model(directory)
    if ours:
        raise ValueError(f"to_onnx: the SavedModel {directory!r} still holds tensorflow-qdq ops ({', '.join(ours)}), "
                         "which ONNX has no rule for: convert the Keras model with to_onnx(model) instead")
    graph_def, inputs, outputs = tf_loader.from_saved_model(directory, None, None, tag="serve",
                                                            signatures=["serving_default"])[:3]
    return graph_def, inputs, outputs


_QDQ_OPS = ("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4")


@contextlib.contextmanager
def _qdq_rewriter(target):
    """Installs our QuantizeAndDequantize rule in place of tf2onnx's for one conversion."""
    from tf2onnx import tfonnx

    def rewrite(graph, ops):
        for node in list(ops):
            if node.type in _QDQ_OPS:
                _rewrite_one(graph, node, target)
        return graph.get_nodes()

    saved = tfonnx.rewrite_quantize_and_dequantize
    tfonnx.rewrite_quantize_and_dequantize = rewrite
    try:
        yield
    finally:
        tfonnx.rewrite_quantize_and_dequantize = saved


@contextlib.contextmanager
def _optimizer_copies_collected():
    """tf2onnx runs each of its optimizers on a deep copy of the whole graph, weights included
    (``tf2onnx.optimizer.optimize_graph``: the copy is dropped if the optimizer fails), for
    several rounds; a tf2onnx graph and its nodes refer to each other, so a discarded copy is
    freed by Python's cycle collector only, whose full passes are rare in a process that holds
    a large model. Converting a trained InceptionResNetV2 (75x75) so kept copies until the
    process ran out of 23 GB; measured on its cached weights, the conversion peaked 8.5 GB above
    the model (6 GB in tf2onnx's optimizers alone). Here each optimizer first frees the copies
    the ones before it discarded: two copies live at a time (the conversion peaked 4.6 GB above
    the model, and ran faster)."""
    import tf2onnx.optimizer as optimizer

    def collecting(factory):
        def make():
            gc.collect()
            return factory()
        return make

    saved = optimizer._get_optimizers
    optimizer._get_optimizers = lambda: {name: collecting(f) for name, f in saved().items()}
    try:
        yield
    finally:
        optimizer._get_optimizers = saved


def _constant(graph_node, what, node):
    if not graph_node.is_const():
        raise ValueError(f"to_onnx: the {what} of {node.type} node {node.name!r} is not a constant; "
                         "ONNX needs constant quantization ranges (freeze the variables, or calibrate/train and "
                         "export the Keras model)")
    return np.asarray(graph_node.get_tensor_value(as_list=False))


def _rewrite_one(graph, node, target):
    """One QuantizeAndDequantizeV2/V3/V4 node -> QuantizeLinear + DequantizeLinear. A node that
    quantizes a constant is a weight (``OnnxTarget.weight`` emits those), stored as a weight."""
    num_bits = (int(_constant(node.inputs[3], "num_bits", node)) if node.type.endswith("V3")
                else node.get_attr_value("num_bits", 8))
    signed = bool(node.get_attr_value("signed_input", 1))
    narrow = bool(node.get_attr_value("narrow_range", 0))
    axis = node.get_attr_value("axis", -1)
    range_given = node.get_attr_value("range_given", 1 if node.type.endswith("V3") else 0)
    if not range_given:
        raise ValueError(f"to_onnx: {node.type} node {node.name!r} measures its range from its input at run time; "
                         "ONNX needs a constant range")
    weight = node.inputs[0].is_const()
    target._check_width(num_bits, f"{node.type} node {node.name!r}", weight)
    lo = _constant(node.inputs[1], "input_min", node)
    hi = _constant(node.inputs[2], "input_max", node)
    inv = _grid.step(lo, hi, num_bits, signed, narrow)
    if not np.all(inv > 0):
        raise ValueError(f"to_onnx: {node.type} node {node.name!r} has a degenerate range (no grid step)")
    zero_point = target.storage.zero_point(num_bits, signed, inv.shape, weight)
    scale = _make_const(graph, "qdq_scale", inv)
    zp = _make_const(graph, target.storage.zero_point_name(num_bits, signed, weight), zero_point)
    attrs = {} if axis == -1 else {"axis": int(axis)}
    shape, dtype = graph.get_shape(node.output[0]), graph.get_dtype(node.output[0])
    source = node.input[0]
    graph.remove_node(node.name)
    quantize = graph.make_node("QuantizeLinear", [source, scale, zp], attr=attrs, shapes=[shape],
                               dtypes=[_onnx_passes.onnx_type(zero_point)])
    graph.make_node("DequantizeLinear", [quantize.output[0], scale, zp], attr=attrs, outputs=[node.output[0]],
                    shapes=[shape], dtypes=[dtype])


def _make_const(graph, prefix, value):
    from tf2onnx import utils

    return graph.make_const(utils.make_name(prefix), value).output[0]
