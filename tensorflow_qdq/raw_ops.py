"""Keyword-only wrappers with the signatures of ``tf.raw_ops.QuantizeAndDequantize*``.

Custom ops never appear in ``tf.raw_ops``; these give the same calling convention
(axis -1 = per-tensor) over the ``Qdq>`` ops.
"""

from tensorflow_qdq import _dispatch

__all__ = [
    "QuantizeAndDequantizeV2",
    "QuantizeAndDequantizeV3",
    "QuantizeAndDequantizeV4",
    "QuantizeAndDequantizeV4Grad",
    "QuantizeAndDequantizeLsqGrad",
]


def QuantizeAndDequantizeV2(*, input, input_min, input_max, signed_input=True, num_bits=8,  # noqa: A002,N802
                            range_given=False, round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1, name=None):
    """``Qdq>QuantizeAndDequantizeV2``; gradient: identity w.r.t. input."""
    return _dispatch.qdq_v2(input, input_min, input_max, signed_input=signed_input, num_bits=num_bits,
                           range_given=range_given, round_mode=round_mode, narrow_range=narrow_range, axis=axis,
                           name=name)


def QuantizeAndDequantizeV3(*, input, input_min, input_max, num_bits, signed_input=True,  # noqa: A002,N802
                            range_given=True, narrow_range=False, axis=-1, name=None):
    """``Qdq>QuantizeAndDequantizeV3`` (num_bits is a scalar int32 tensor; HALF_TO_EVEN)."""
    return _dispatch.qdq_v3(
        input, input_min, input_max, num_bits, signed_input=signed_input, range_given=range_given,
        narrow_range=narrow_range, axis=axis, name=name,
    )


def QuantizeAndDequantizeV4(*, input, input_min, input_max, signed_input=True, num_bits=8,  # noqa: A002,N802
                            range_given=False, round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1, name=None):
    """``Qdq>QuantizeAndDequantizeV4``; gradient: ``QuantizeAndDequantizeV4Grad``."""
    return _dispatch.qdq_v4(input, input_min, input_max, signed_input=signed_input, num_bits=num_bits,
                           range_given=range_given, round_mode=round_mode, narrow_range=narrow_range, axis=axis,
                           name=name)


def QuantizeAndDequantizeV4Grad(*, gradients, input, input_min, input_max, axis=-1, name=None):  # noqa: A002,N802
    """``Qdq>QuantizeAndDequantizeV4Grad``: (input_backprop, input_min_backprop, input_max_backprop)."""
    return _dispatch.qdq_v4_grad(gradients, input, input_min, input_max, axis=axis, name=name)


def QuantizeAndDequantizeLsqGrad(*, gradients, input, input_min, input_max,  # noqa: A002,N802
                                 signed_input=True, num_bits=8, round_mode="HALF_TO_EVEN", narrow_range=False,
                                 axis=-1, name=None):
    """``Qdq>QuantizeAndDequantizeLsqGrad``: (input_backprop, step_backprop) of V4 with the given
    range [input_min, input_max]; step_backprop is LSQ's gradient of the slice's grid step."""
    return _dispatch.qdq_lsq_grad(gradients, input, input_min, input_max, signed_input=signed_input,
                                 num_bits=num_bits, round_mode=round_mode, narrow_range=narrow_range, axis=axis,
                                 name=name)
