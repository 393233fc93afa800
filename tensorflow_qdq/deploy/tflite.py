"""to_tflite: a full-integer TFLite model with the ranges learned in quantization-aware training
(or, with ``integer=False``, the converter's float model of the portable SavedModel).

The model is traced with each activation quantizer as ``FakeQuantWithMinMaxVars`` and its
weights as constants on their per-channel grid, the form the TFLite converter turns into int8
kernels with per-channel int8 weights and int32 biases. The symmetric grid of a quantizer maps exactly onto
FakeQuant's: a signed range with step s is [-128 s, 127 s] (zero point 128 on 0..255).
"""

import gc
import os
import tempfile

import numpy as np
import tensorflow as tf

from tensorflow_qdq import _grid
from tensorflow_qdq._export import export
from tensorflow_qdq.deploy import _preflight, _quiet, _sessions, _trace, _verify
from tensorflow_qdq.keras._target import Target

# Ops that move or fix values: they may read and write int8 without a range of their own.
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
# Ops the converter makes from matmuls (see ``_dequantize_float_matmul_inputs``).
_MATMUL_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL")


class TFLiteTarget(Target):
    """Emits FakeQuant ops (activations) and on-grid constants (weights) for the TFLite converter."""

    def __init__(self):
        # What keeps the model off TFLite's integer kernels, found while tracing: the trace goes on
        # (with 8-bit stand-ins) so that ``raise_problems`` names every offending layer at once.
        self.problems = []

    def weight(self, weight, channel_axes, num_bits, layer):
        if num_bits != 8:
            self.problems.append(f"the weights of layer {layer.name!r} are quantized to {num_bits} bits; TFLite's "
                                 "integer kernels take 8-bit weights (export with to_onnx, or quantize to 8 bits)")
        amax = _grid.channel_amax(weight, channel_axes)
        inv = _grid.weight_step(amax, 8)
        shape = [1] * weight.ndim
        for a in channel_axes:
            shape[a] = weight.shape[a]
        qmax = np.float32(_grid.code_range(8, _grid.WEIGHT_SIGNED, _grid.WEIGHT_NARROW_RANGE)[1])
        scale = qmax / np.where(amax > 0, amax, np.float32(1)).astype(np.float32)
        # The op's arithmetic in float32: round(w * scale) * step, so the constant equals the
        # kernel's fake-quantized weight bit for bit.
        on_grid = (np.rint(weight * scale.reshape(shape)) * inv.reshape(shape)).astype(np.float32)
        # No FakeQuant on weights: the converter rejects a per-channel FakeQuant that reaches a
        # kernel through a reshape or transpose (Conv1D, Dense, depthwise, transposed convs), and
        # for a constant it picks max|w_c| / 127 per output channel itself, which is this grid.
        return tf.constant(on_grid)

    # Forms of the trace the converter needs (see _trace.trace and _trace.frozen).
    unroll_recurrent = True
    matmul_for_tensordot = True
    unsplat_biases = True
    one_scale_per_tensor = True
    hard_sigmoid_on_grid = True
    quantize_preprocessed_inputs = True
    batch_norm_in_one_op = True

    def activation(self, x, quantizer, lo, hi):
        lo, hi = self._grid_range(quantizer, lo, hi)
        return tf.quantization.fake_quant_with_min_max_vars(
            x, tf.constant(lo, tf.float32), tf.constant(hi, tf.float32), num_bits=8,
            narrow_range=quantizer.narrow_range)

    def quantize_input(self, x, layers, quantizer):
        """A model input read by elementwise affine ``layers`` (Rescaling, Normalization) whose
        output ``quantizer`` quantizes: FakeQuant on the input over the range that the layers map
        onto the quantizer's, so their op (``affine_form``) reads int8 as well as writes it.
        With one scale and an offset on the grid (Rescaling(1/255)) the grids coincide and the
        result equals the Keras model's; per-channel statistics share one input grid (TFLite's
        activations are per tensor), coarser than the quantizer's for the channels whose range
        maps to a narrower input range."""
        lo, hi = self._grid_range(quantizer, *quantizer.constant_range())
        a, b = _trace.affine_map(layers, x.shape)
        a, b = np.broadcast_arrays(a, b)
        moving = a != 0  # a channel the layers set to a constant needs no input range
        ends = np.concatenate([(lo - b[moving]) / a[moving], (hi - b[moving]) / a[moving]])
        if not ends.size or not np.all(np.isfinite(ends)):
            return x
        # FakeQuant moves its zero point onto the grid: a range that holds 0 stays where it is.
        lo_in, hi_in = min(float(ends.min()), 0.0), max(float(ends.max()), 0.0)
        return tf.quantization.fake_quant_with_min_max_vars(
            x, tf.constant(lo_in, tf.float32), tf.constant(hi_in, tf.float32), num_bits=8)

    @staticmethod
    def affine_form(layers, shape):
        """The calls of elementwise affine preprocessing layers as one op that the converter
        quantizes: ``x @ diag(a) + b``, an int8 FULLY_CONNECTED with one weight per channel (exact
        on its per-channel grid). The layers' own ops (MUL then ADD, SUB then MUL) would leave
        the tensor between them without a range, so float. None where the map varies along
        other axes than the last, or the channel count is unknown."""
        channels = shape[-1]
        if channels is None:
            return None
        a, b = _trace.affine_map(layers, shape)
        a, b = (np.broadcast_to(v, v.shape[:-1] + (channels,)).reshape(-1, channels) for v in (a, b))
        if np.any(a != a[0]) or np.any(b != b[0]):
            return None
        kernel = tf.constant(np.diag(a[0]).astype(np.float32))
        bias = tf.constant(b[0].astype(np.float32))

        def call(inputs):
            return tf.nn.bias_add(tf.matmul(tf.cast(inputs, tf.float32), kernel), bias)

        return call

    @staticmethod
    def batch_norm_form(layer, shape):
        """A BatchNormalization in inference (``x * a + b`` per channel) as one op that the
        converter quantizes: a 1x1 DEPTHWISE_CONV_2D with weight ``a`` and bias ``b`` (one weight
        per channel, so exact on its per-channel int8 grid; the ReLU after it fuses). None
        unless it normalizes the channels of an NHWC image tensor."""
        if len(shape) != 4 or shape[-1] is None or layer.axis not in (-1, 3):
            return None
        a, b = _trace.affine_map([layer], shape)
        a, b = (np.broadcast_to(v, v.shape[:-1] + (shape[-1],)).reshape(-1, shape[-1]) for v in (a, b))
        if np.any(a != a[0]) or np.any(b != b[0]) or np.any(a[0] == 0):
            return None  # a zero weight would give its channel no scale
        kernel = tf.constant(a[0].reshape(1, 1, -1, 1).astype(np.float32))
        bias = tf.constant(b[0].astype(np.float32))

        def call(inputs, *args, **kwargs):
            weight, shift = tf.cast(kernel, inputs.dtype), tf.cast(bias, inputs.dtype)  # a float16 policy
            return tf.nn.bias_add(tf.nn.depthwise_conv2d(inputs, weight, [1, 1, 1, 1], "VALID"), shift)

        return call

    def check(self, quantizer):
        """Records why ``quantizer`` cannot be a TFLite activation, if it cannot (a quantizer
        that the trace leaves out, see ``_trace._one_scale_per_tensor``)."""
        self._grid_range(quantizer, *quantizer.constant_range())

    def _grid_range(self, quantizer, lo, hi):
        """[qmin * step, qmax * step] of an 8-bit per-tensor quantizer (FakeQuant's range); for any
        other the problem is recorded and a stand-in range returned."""
        found = self._range_problems(quantizer, lo, hi)
        if found:
            self.problems.extend(found)
            return -1.0, 1.0
        inv = float(_grid.step(lo, hi, 8, quantizer.signed, quantizer.narrow_range))
        qmin, qmax = _grid.code_range(8, quantizer.signed, quantizer.narrow_range)
        return qmin * inv, qmax * inv

    @staticmethod
    def _range_problems(quantizer, lo, hi):
        """Why ``quantizer`` cannot be a TFLite activation (a list, empty if it can)."""
        name = f"quantizer {quantizer.name!r}"
        found = []
        if quantizer.num_bits != 8:
            found.append(f"{name} is {quantizer.num_bits}-bit; TFLite's integer kernels take 8-bit activations "
                         "(export with to_onnx, or quantize to 8 bits)")
        if quantizer.axis is not None:
            found.append(f"{name} quantizes per channel; TFLite activations are per tensor")
        elif np.all(_grid.step(lo, hi, 8, quantizer.signed, quantizer.narrow_range) <= 0):
            found.append(f"{name} has the degenerate range [{float(lo)}, {float(hi)}]; calibrate or train the model "
                         "before exporting")
        return found

    def raise_problems(self):
        """One ValueError naming every problem the trace recorded (each once, in graph order)."""
        found = list(dict.fromkeys(self.problems))
        if found:
            count = f"{len(found)} problem{'s' if len(found) > 1 else ''}"
            raise ValueError(f"to_tflite: the model cannot run on TFLite's integer kernels ({count}):\n"
                             + "\n".join(f"  - {problem}" for problem in found))


def to_tflite(model, *, integer=None, allow_float_ops=False, exact=False, optimizations=None, verify=True,
              verify_data=None, input_signature=None):
    """Converts ``model`` to a TFLite flatbuffer (bytes).

    Args:
      model: a Keras model (or, for ``integer=False``, a SavedModel directory or a ``tf.Module``).
      integer: True gives a full-integer model: int8 weights per channel, int8 activations
        with the ranges the quantizers hold (calibrated or learned in QAT), int32 biases
        (``integer_tflite``). False gives a float model (with QUANTIZE/DEQUANTIZE
        pairs where the model quantizes): the model is exported as ``tensorflow_qdq.export`` does and
        converted as it is. Default: True for a Keras model (one without quantizers raises:
        pass ``integer=False`` for a float model), False for a SavedModel directory or a
        ``tf.Module``.
      allow_float_ops: with ``integer=True``, accept ops that stay float (else ValueError
        naming them).
      exact, optimizations: for ``integer=False`` only: ``tensorflow_qdq.export``'s ``exact``, and the
        converter's ``optimizations``.
      verify, verify_data: for a Keras model, the TFLite interpreter runs the result on sample
        inputs and it must agree with the Keras model (see ``to_onnx`` and docs/DEPLOY.md,
        "Verified exports"): True raises ``tensorflow_qdq.deploy.ExportMismatchError``,
        ``"warn"`` warns, False skips; ``verify_data`` (or ``verify`` itself) gives the inputs.
      input_signature: with ``integer=True``, a ``tf.TensorSpec`` per model input (batch
        dimension None), for a subclassed model whose input shapes or dtypes Keras did not record.
    """
    mode, data = _verify.parse(verify, verify_data)
    is_directory = isinstance(model, (str, os.PathLike))
    is_keras = hasattr(model, "layers") and hasattr(model, "_flatten_layers")
    if integer is None:
        integer = is_keras
    if integer:
        if exact or optimizations is not None:
            raise ValueError("to_tflite: exact= and optimizations= apply to integer=False only; the integer route "
                             "sets the converter itself")
        if is_directory:
            raise ValueError("to_tflite(integer=True) needs the Keras model from quantize_model, not a SavedModel "
                             "directory: its quantizers say which ranges to use")
        _preflight.check_exportable(model, "to_tflite")

        def convert(keras_model, allow):
            with _quiet.converter_output_hidden():
                # the verifier's taps are functional models: the signature is the model's own
                signature = input_signature if keras_model is model else None
                return integer_tflite(keras_model, allow_float_ops=allow, input_signature=signature)

        flatbuffer = convert(model, allow_float_ops)
    else:
        flatbuffer = _float_tflite(model, exact, optimizations)
        convert = None
    if is_keras:
        _verify_tflite(model, flatbuffer, mode, data, None if convert is None else lambda tap: convert(tap, True),
                       input_signature)
    return flatbuffer


def _float_tflite(model, exact, optimizations):
    """The converter's model of ``model`` exported as ``tensorflow_qdq.export`` exports it."""
    with _quiet.converter_output_hidden(), tempfile.TemporaryDirectory(prefix="qdq_tflite_") as tmp:
        portable = os.path.join(tmp, "portable")
        export(model, portable, exact=exact)
        converter = tf.lite.TFLiteConverter.from_saved_model(portable)
        if optimizations is not None:
            converter.optimizations = optimizations
        return converter.convert()


def _verify_tflite(model, flatbuffer, mode, data, reconvert, input_signature=None):
    names = [spec.name for spec in _trace.input_signature(model, input_signature)]
    probe = None if reconvert is None else (lambda tap: _sessions.tflite_session(reconvert(tap), names))
    _verify.verify_export(model, _sessions.tflite_session(flatbuffer, names), what="to_tflite",
                          runtime="the TFLite interpreter", mode=mode, data=data, probe=probe)


def integer_tflite(model, *, allow_float_ops=False, input_signature=None):
    """The full-integer flatbuffer of a quantization-aware Keras model (see to_tflite).
    ``input_signature``: TensorSpecs for the model inputs (a subclassed model never called)."""
    _preflight.check_quantized(model, "to_tflite")
    # Variables the quantizers do not own (LayerNormalization, an unfolded BatchNorm) become
    # constants: left as resource variables they would stay float READ_VARIABLE ops.
    target = TFLiteTarget()
    frozen = _trace.frozen(model, target, input_signature)
    target.raise_problems()  # before converting: the converter would fail on the stand-in ranges, or hide them
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converted = converter.convert()
    # The traced function's graphs and the converter's are cyclic garbage now: up to 4 GB for
    # InceptionResNetV2 (75x75), which Python's cycle collector may hold on to for long in a
    # process with a large model; freed before the interpreter and the verification run.
    del converter, frozen
    gc.collect()
    flatbuffer = _dequantize_float_matmul_inputs(converted)
    float_ops = float_compute_ops(flatbuffer)
    if float_ops and not allow_float_ops:
        raise ValueError(
            "to_tflite: these ops stayed float in the TFLite model (a tensor they read or write has no quantization "
            f"range): {', '.join(float_ops)}; quantize what feeds them, or pass allow_float_ops=True to accept a "
            "partly float model")
    return flatbuffer


def _dequantize_float_matmul_inputs(flatbuffer):
    """``flatbuffer`` with a DEQUANTIZE before each float matmul that reads an int8 activation.

    The converter (TF 2.21) emits such an op, which the interpreter refuses ("fully_connected.cc
    input->type != kTfLiteFloat32 (INT8 != FLOAT32)"), for a BatchMatMul (a Dense or EinsumDense on
    a rank-3 input: MultiHeadAttention's projections) whose input is quantized but whose output is
    not (it feeds the float attention products): when it turns the BatchMatMul into a
    FULLY_CONNECTED it drops the DEQUANTIZE the op read, unless another op read it too. The float
    op over the dequantized input is what it meant and what the Keras model computes."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    codes = model.operatorCodes
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    matmuls = {i for i, c in enumerate(codes) if names.get(max(c.builtinCode, c.deprecatedBuiltinCode)) in _MATMUL_OPS}
    changed = False
    for graph in model.subgraphs:
        dequantized, operators = {}, []
        for op in graph.operators:
            if op.opcodeIndex in matmuls and graph.tensors[op.outputs[0]].type == schema.TensorType.FLOAT32:
                for k, index in enumerate(op.inputs):
                    if index < 0 or graph.tensors[index].type != schema.TensorType.INT8 or _is_constant(
                            model, graph.tensors[index]):
                        continue  # int8 weights of a hybrid op stay
                    if index not in dequantized:
                        dequantized[index] = _add_dequantize(model, graph, index, operators)
                    op.inputs[k] = dequantized[index]
                    changed = True
            operators.append(op)
        graph.operators = operators
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else flatbuffer


def _is_constant(model, tensor):
    buffer = model.buffers[tensor.buffer]
    return (buffer.data is not None and len(buffer.data) > 0) or bool(getattr(buffer, "offset", 0))


def _add_dequantize(model, graph, index, operators):
    """Appends to ``operators`` a DEQUANTIZE of tensor ``index`` into a new float tensor; its index."""
    from tensorflow.lite.python import schema_py_generated as schema

    code = next((i for i, c in enumerate(model.operatorCodes)
                 if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE), None)
    if code is None:
        code = len(model.operatorCodes)
        opcode = schema.OperatorCodeT()
        opcode.builtinCode = opcode.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
        opcode.version = 2  # int8 input
        model.operatorCodes.append(opcode)
    source = graph.tensors[index]
    tensor = schema.TensorT()
    tensor.shape, tensor.shapeSignature = source.shape, source.shapeSignature
    tensor.type, tensor.buffer = schema.TensorType.FLOAT32, 0  # buffer 0: the empty one
    tensor.name = (source.name.decode() if isinstance(source.name, bytes) else source.name) + "/dequantized"
    graph.tensors.append(tensor)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, [index], [len(graph.tensors) - 1]
    operators.append(op)
    return len(graph.tensors) - 1


def float_compute_ops(flatbuffer):
    """Names (``OP#index``) of the ops that compute in float, QUANTIZE/DEQUANTIZE aside."""
    graph = interpreter(flatbuffer)
    tensors = {t["index"]: t for t in graph.get_tensor_details()}
    found = []
    for op in graph._get_ops_details():
        if op["op_name"] in _BOUNDARY_OPS:
            continue
        dtypes = [tensors[i]["dtype"] for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0 and i in tensors]
        if any(d in (np.float32, np.float16) for d in dtypes):
            found.append(f"{op['op_name']}#{op['index']}")
    return found


def interpreter(flatbuffer, *, default_delegates=False, threads=None):
    """A TFLite interpreter (LiteRT's, else TensorFlow's) over ``flatbuffer``. Without default
    delegates it runs the ops as converted (XNNPACK would merge them into one, which is what
    ``float_compute_ops`` must not see); with them it runs as deployed (the runners)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - LiteRT is the maintained interpreter; TF's still works
        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    resolver = OpResolverType.AUTO if default_delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_content=bytes(flatbuffer), num_threads=threads,
                       experimental_op_resolver_type=resolver)
