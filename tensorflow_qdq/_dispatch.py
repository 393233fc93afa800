"""Chooses between the custom kernels and the composite of standard ops.

The kernels are used everywhere except where they cannot run: while a function is
traced for XLA (``tf.function(jit_compile=True)``, Keras ``jit_compile=True``), the
composite of ``_composite`` is emitted instead. Detection asks TensorFlow the same
question its own ops ask (``cond_v2``, ``array_grad``): is the graph being built,
or a graph enclosing it, inside an ``XLAControlFlowContext``? ``tf.function``
enters one around every trace of a ``jit_compile=True`` function.
"""

import numpy as np
import tensorflow as tf

from tensorflow_qdq import _composite
from tensorflow_qdq._loader import ops as _ops

try:  # TensorFlow's own helper; private, so keep a fallback that walks the same structure.
    from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext as _tf_in_xla
except ImportError:  # pragma: no cover - depends on the TensorFlow version
    _tf_in_xla = None

# tf.function(jit_compile=True) compiles our functions: inside XLA they lower to the composite
# (docs/XLA_EXPORT.md); the Keras layers report it to Keras as supports_jit.
XLA_SUPPORTED = True


def _walk_in_xla(graph):
    while graph is not None:
        ctxt = graph._get_control_flow_context()  # noqa: SLF001 - no public API says this
        while ctxt is not None:
            if ctxt.IsXLAContext():
                return True
            ctxt = ctxt.outer_context
        graph = getattr(graph, "outer_graph", None)
    return False


def in_xla_context():
    """True while tracing a graph that XLA will compile (never in eager mode)."""
    if tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    if _tf_in_xla is not None:
        return bool(_tf_in_xla(graph))
    return _walk_in_xla(graph)


# One entry point per op: the kernel outside XLA, the composite inside it.


def _composite_call(default_name, name, fn, *args, **kwargs):
    with tf.name_scope(name or default_name):
        return fn(*args, **kwargs)


def qdq_v2(input, input_min, input_max, *, name=None, **attrs):  # noqa: A002 - TF's argument name
    if in_xla_context():
        return _composite_call("QuantizeAndDequantizeV2", name, _composite.qdq, input, input_min, input_max,
                               masked=False, **attrs)
    return _ops.qdq_quantize_and_dequantize_v2(input, input_min, input_max, name=name, **attrs)


def qdq_v3(input, input_min, input_max, num_bits, *, name=None, **attrs):  # noqa: A002
    if in_xla_context():
        static_bits = tf.get_static_value(num_bits)
        bits = int(static_bits) if static_bits is not None and np.ndim(static_bits) == 0 else num_bits
        return _composite_call("QuantizeAndDequantizeV3", name, _composite.qdq, input, input_min, input_max,
                               masked=False, num_bits=bits, **attrs)
    return _ops.qdq_quantize_and_dequantize_v3(input, input_min, input_max, num_bits, name=name, **attrs)


def qdq_v4(input, input_min, input_max, *, name=None, **attrs):  # noqa: A002
    if in_xla_context():
        return _composite_call("QuantizeAndDequantizeV4", name, _composite.qdq, input, input_min, input_max,
                               masked=True, **attrs)
    return _ops.qdq_quantize_and_dequantize_v4(input, input_min, input_max, name=name, **attrs)


def qdq_v4_grad(gradients, input, input_min, input_max, *, axis=-1, name=None):  # noqa: A002
    if in_xla_context():
        return _composite_call("QuantizeAndDequantizeV4Grad", name, _composite.v4_grad, gradients, input,
                               input_min, input_max, axis=axis)
    return _ops.qdq_quantize_and_dequantize_v4_grad(gradients, input, input_min, input_max, axis=axis, name=name)


def qdq_lsq_grad(gradients, input, input_min, input_max, *, name=None, **attrs):  # noqa: A002
    if in_xla_context():
        return _composite_call("QuantizeAndDequantizeLsqGrad", name, _composite.lsq_gradient, gradients, input,
                               input_min, input_max, **attrs)
    return _ops.qdq_quantize_and_dequantize_lsq_grad(gradients, input, input_min, input_max, name=name, **attrs)
