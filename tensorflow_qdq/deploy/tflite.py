"""to_tflite: a full-integer TFLite model with the ranges learned in quantization-aware training.

The model is traced with each activation quantizer as ``FakeQuantWithMinMaxVars`` and its
weights as constants on their per-channel grid, the form the TFLite converter turns into int8
kernels with per-channel int8 weights and int32 biases. The symmetric grid of a quantizer maps exactly onto
FakeQuant's: a signed range with step s is [-128 s, 127 s] (zero point 128 on 0..255).
"""

import numpy as np
import tensorflow as tf

from tensorflow_qdq.deploy import _grid, _trace

# Ops that move or fix values: they may read and write int8 without a range of their own.
_BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")


class TFLiteTarget:
    """Emits FakeQuant ops (activations) and on-grid constants (weights) for the TFLite converter."""

    def weight(self, weight, channel_axes, num_bits, layer):
        if num_bits != 8:
            raise ValueError(f"to_tflite: the weights of layer {layer.name!r} are quantized to {num_bits} bits; "
                             "TFLite's integer kernels take 8-bit weights (export with to_onnx, or quantize to 8 bits)")
        amax = _grid.channel_amax(weight, channel_axes)
        inv = _grid.step(-amax, amax, 8, True, True)
        shape = [1] * weight.ndim
        for a in channel_axes:
            shape[a] = weight.shape[a]
        scale = np.float32(127) / np.where(amax > 0, amax, np.float32(1)).astype(np.float32)
        # The op's arithmetic in float32: round(w * scale) * step, so the constant equals the
        # kernel's fake-quantized weight bit for bit.
        on_grid = (np.rint(weight * scale.reshape(shape)) * inv.reshape(shape)).astype(np.float32)
        # No FakeQuant on weights: the converter rejects a per-channel FakeQuant that reaches a
        # kernel through a reshape or transpose (Conv1D, Dense, depthwise, transposed convs), and
        # for a constant it picks max|w_c| / 127 per output channel itself, which is this grid.
        return tf.constant(on_grid)

    def activation(self, x, quantizer, lo, hi):
        name = f"quantizer {quantizer.name!r}"
        if quantizer.num_bits != 8:
            raise ValueError(f"to_tflite: {name} is {quantizer.num_bits}-bit; TFLite's integer kernels take 8-bit "
                             "activations (export with to_onnx, or quantize to 8 bits)")
        if quantizer.axis is not None:
            raise ValueError(f"to_tflite: {name} quantizes per channel; TFLite activations are per tensor")
        inv = float(_grid.step(lo, hi, 8, quantizer.signed, quantizer.narrow_range))
        if inv <= 0:
            raise ValueError(f"to_tflite: {name} has the degenerate range [{float(lo)}, {float(hi)}]; "
                             "calibrate or train the model before exporting")
        qmin, qmax = _grid.code_range(8, quantizer.signed, quantizer.narrow_range)
        return tf.quantization.fake_quant_with_min_max_vars(
            x, tf.constant(qmin * inv, tf.float32), tf.constant(qmax * inv, tf.float32), num_bits=8,
            narrow_range=quantizer.narrow_range)


def integer_tflite(model, *, allow_float_ops=False):
    """The full-integer flatbuffer of a quantization-aware Keras model (see to_tflite)."""
    _trace.check_quantized(model, "to_tflite")
    # Variables the quantizers do not own (LayerNormalization, an unfolded BatchNorm) become
    # constants: left as resource variables they would stay float READ_VARIABLE ops.
    frozen = _trace.frozen(model, TFLiteTarget())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    flatbuffer = converter.convert()
    float_ops = float_compute_ops(flatbuffer)
    if float_ops and not allow_float_ops:
        raise ValueError(
            "to_tflite: these ops stayed float in the TFLite model (a tensor they read or write has no quantization "
            f"range): {', '.join(float_ops)}; quantize what feeds them, or pass allow_float_ops=True to accept a "
            "partly float model")
    return flatbuffer


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
