"""Public functions with the signatures of tf.quantization.* (SPEC §2)."""

import operator

import tensorflow as tf

from tensorflow_qdq import _routing

__all__ = ["quantize_and_dequantize", "quantize_and_dequantize_v2", "quantize_and_dequantize_v4"]


def _tensors(input, input_min, input_max):  # noqa: A002 - TF's argument name
    """Converts the three inputs to tensors of input's dtype (lists, NumPy and scalars welcome)."""
    input = tf.convert_to_tensor(input, name="input")  # noqa: A001
    input_min = tf.convert_to_tensor(input_min, dtype_hint=input.dtype, name="input_min")
    input_max = tf.convert_to_tensor(input_max, dtype_hint=input.dtype, name="input_max")
    return input, input_min, input_max


def _channel_axis(input, axis):  # noqa: A002
    """The wrapper axis convention: None -> per-tensor (-1); negative counts from the end."""
    if axis is None:
        return -1
    axis = operator.index(axis)
    if axis >= 0:
        return axis
    rank = input.shape.rank
    if rank is None:
        raise ValueError(f"axis={axis} is negative but the rank of input is unknown; pass a non-negative axis")
    if axis < -rank:
        raise ValueError(f"axis={axis} is out of range for input of rank {rank}: must be in [{-rank}, {rank})")
    return axis + rank


def quantize_and_dequantize(
    input,  # noqa: A002
    input_min,
    input_max,
    signed_input=True,
    num_bits=8,
    range_given=False,
    round_mode="HALF_TO_EVEN",
    name=None,
    narrow_range=False,
    axis=None,
):
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
    input, input_min, input_max = _tensors(input, input_min, input_max)  # noqa: A001
    return _routing.qdq_v2(
        input,
        input_min,
        input_max,
        signed_input=signed_input,
        num_bits=num_bits,
        range_given=range_given,
        round_mode=round_mode,
        narrow_range=narrow_range,
        axis=_channel_axis(input, axis),
        name=name,
    )


def quantize_and_dequantize_v2(
    input,  # noqa: A002
    input_min,
    input_max,
    signed_input=True,
    num_bits=8,
    range_given=False,
    round_mode="HALF_TO_EVEN",
    name=None,
    narrow_range=False,
    axis=None,
):
    """Like :func:`quantize_and_dequantize`, with a range-masked gradient.

    Drop-in for ``tf.quantization.quantize_and_dequantize_v2``: emits
    ``Qdq>QuantizeAndDequantizeV4``, whose gradient passes ``grad`` where
    ``input`` lies inside the quantization range and 0 elsewhere. With
    ``range_given=False`` the mask uses the range actually measured (TensorFlow
    masks with the ignored ``input_min``/``input_max`` instead).
    """
    input, input_min, input_max = _tensors(input, input_min, input_max)  # noqa: A001
    return _routing.qdq_v4(
        input,
        input_min,
        input_max,
        signed_input=signed_input,
        num_bits=num_bits,
        range_given=range_given,
        round_mode=round_mode,
        narrow_range=narrow_range,
        axis=_channel_axis(input, axis),
        name=name,
    )


def quantize_and_dequantize_v4(
    input,  # noqa: A002
    input_min,
    input_max,
    signed_input=True,
    num_bits=8,
    range_given=False,
    round_mode="HALF_TO_EVEN",
    narrow_range=False,
    axis=-1,
    name=None,
):
    """Drop-in for ``tf.quantize_and_dequantize_v4`` (raw axis convention: -1 is per-tensor).

    Emits ``Qdq>QuantizeAndDequantizeV4`` with the range-masked gradient.
    """
    input, input_min, input_max = _tensors(input, input_min, input_max)  # noqa: A001
    return _routing.qdq_v4(
        input,
        input_min,
        input_max,
        signed_input=signed_input,
        num_bits=num_bits,
        range_given=range_given,
        round_mode=round_mode,
        narrow_range=narrow_range,
        axis=axis,
        name=name,
    )
