"""Public functions with the signatures of tf.quantization.* (SEMANTICS §2)."""

from tensorflow_qdq import _args, _dispatch

__all__ = ["quantize_and_dequantize", "quantize_and_dequantize_v2", "quantize_and_dequantize_v4"]

_NAMES = ("input", "input_min", "input_max")


def _emit(op, input, input_min, input_max, axis, **attrs):  # noqa: A002 - TF's argument name
    """op on the three inputs as tensors of input's dtype (lists, NumPy and scalars welcome);
    ``axis(input)`` gives the raw axis."""
    input, input_min, input_max = _args.tensors_like(input, input_min, input_max, strict=False, names=_NAMES)  # noqa: A001
    return op(input, input_min, input_max, axis=axis(input), **attrs)


def quantize_and_dequantize(input, input_min, input_max, signed_input=True, num_bits=8,  # noqa: A002
                            range_given=False, round_mode="HALF_TO_EVEN", name=None, narrow_range=False, axis=None):
    """Quantizes then dequantizes a tensor, with a straight-through (identity) gradient.

    Drop-in for ``tf.quantization.quantize_and_dequantize``: emits
    ``Qdq>QuantizeAndDequantizeV2``. ``axis=None`` quantizes per tensor; an
    integer quantizes per channel along that axis (negative counts from the end).
    ``range_given=False`` measures each slice's min/max (``input_min``/``input_max``
    are ignored); ``range_given=True`` clamps to them (scalars, or vectors of
    ``input.shape[axis]`` values per channel).

    >>> import tensorflow_qdq as qdq
    >>> qdq.quantize_and_dequantize([-1.0, 0.3, 0.8], 0.0, 0.0).numpy().tolist()
    [-1.0, 0.296875, 0.796875]
    """
    return _emit(_dispatch.qdq_v2, input, input_min, input_max, lambda x: _args.channel_axis(x, axis),
                 signed_input=signed_input, num_bits=num_bits, range_given=range_given, round_mode=round_mode,
                 narrow_range=narrow_range, name=name)


def quantize_and_dequantize_v2(input, input_min, input_max, signed_input=True, num_bits=8,  # noqa: A002
                               range_given=False, round_mode="HALF_TO_EVEN", name=None, narrow_range=False, axis=None):
    """Like :func:`quantize_and_dequantize`, with a range-masked gradient.

    Drop-in for ``tf.quantization.quantize_and_dequantize_v2``: emits
    ``Qdq>QuantizeAndDequantizeV4``, whose gradient passes ``grad`` where
    ``input`` lies inside the quantization range and 0 elsewhere. With
    ``range_given=False`` the mask uses the range actually measured (TensorFlow
    masks with the ignored ``input_min``/``input_max`` instead).
    """
    return _emit(_dispatch.qdq_v4, input, input_min, input_max, lambda x: _args.channel_axis(x, axis),
                 signed_input=signed_input, num_bits=num_bits, range_given=range_given, round_mode=round_mode,
                 narrow_range=narrow_range, name=name)


def quantize_and_dequantize_v4(input, input_min, input_max, signed_input=True, num_bits=8,  # noqa: A002
                               range_given=False, round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1, name=None):
    """Drop-in for ``tf.quantize_and_dequantize_v4`` (raw axis convention: -1 is per-tensor).

    Emits ``Qdq>QuantizeAndDequantizeV4`` with the range-masked gradient.
    """
    return _emit(_dispatch.qdq_v4, input, input_min, input_max, lambda x: axis, signed_input=signed_input,
                 num_bits=num_bits, range_given=range_given, round_mode=round_mode, narrow_range=narrow_range,
                 name=name)
