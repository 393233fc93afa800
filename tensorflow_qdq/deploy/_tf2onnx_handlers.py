"""tf2onnx rules for TensorFlow ops that tf2onnx 1.17 has none for, registered once per process.

``Erfc``: Keras 3's exact GELU (``activation="gelu"``, ``approximate=False``) lowers to
``0.5 * x * erfc(-x / sqrt(2))``; ONNX has ``Erf`` (opset 9) but no ``Erfc``, and tf2onnx
leaves the node as it is, so the model fails ONNX's checker ("No Op registered for Erfc").
"""

import numpy as np

_registered = False


def register():
    """Adds our rules to tf2onnx's handler table (idempotent; tf2onnx must be importable)."""
    global _registered
    if _registered:
        return
    from tf2onnx.handler import tf_op

    tf_op("Erfc")(_Erfc)
    _registered = True


class _Erfc:
    @classmethod
    def version_9(cls, ctx, node, **kwargs):
        """erfc(x) = 1 - erf(x). The absolute error stays at float32 rounding (what GELU's
        ``x * erfc(.)`` needs); only erfc's relative precision for large x is lost."""
        from tf2onnx import utils

        dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
        erf = ctx.make_node("Erf", [node.input[0]], op_name_scope=node.name,
                            shapes=[ctx.get_shape(node.output[0])], dtypes=[ctx.get_dtype(node.output[0])])
        one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype))
        node.type = "Sub"
        ctx.replace_inputs(node, [one.output[0], erf.output[0]])
