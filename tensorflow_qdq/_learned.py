"""Quantize-and-dequantize with a learned step (LSQ, Esser et al. 2020).

The forward pass is ``Qdq>QuantizeAndDequantizeV4`` with the given range
``(qmin * step, qmax * step)``, so its output is bit-identical to that op's. The backward
pass is one fused op, ``Qdq>QuantizeAndDequantizeLsqGrad``: the input gradient is V4's
range mask (straight-through inside the range, 0 outside) and the step gradient is LSQ's
(the rounding residual inside the range, the clip bound outside, times 1/sqrt(n * Qp)).

A step can never make the range invalid: the forward pass uses the step clamped to
``[tiny, max / max(|qmin|, qmax)]`` of the input's dtype (a NaN step counts as ``tiny``),
so ``min < max`` and both are finite, and the gradient reaches the unclamped step
unchanged (straight-through), so a step pushed below the floor can grow back.
"""

import numpy as np
import tensorflow as tf

from tensorflow_qdq import _args, _dispatch
from tensorflow_qdq._contract import check_num_bits, code_range, dtypes_text


def step_bounds(dtype, qmin, qmax):
    """The smallest and largest steps that keep the range finite, normal and ordered in ``dtype``."""
    info = np.finfo(tf.as_dtype(dtype).as_numpy_dtype)
    return float(info.tiny), float(info.max) / max(abs(qmin), qmax, 1)


def valid_step(step, dtype, qmin, qmax):
    """``step`` clamped into ``step_bounds`` (NaN -> the floor), in step's dtype."""
    floor, ceil = step_bounds(dtype, qmin, qmax)
    floor_t, ceil_t = tf.constant(floor, step.dtype), tf.constant(ceil, step.dtype)
    return tf.where(step >= floor_t, tf.where(step <= ceil_t, step, ceil_t), floor_t)


def range_of_step(step, dtype, qmin, qmax):
    """The given range of the forward op: ``(qmin * step, qmax * step)`` in ``dtype``."""
    s = valid_step(step, dtype, qmin, qmax)
    return tf.cast(s * float(qmin), dtype), tf.cast(s * float(qmax), dtype)


def quantize_and_dequantize_learned(input, step, signed_input=True, num_bits=8, round_mode="HALF_TO_EVEN",  # noqa: A002
                                    narrow_range=False, axis=None, name=None):
    """Fake quantization with a trainable step: ``step * round(clamp(input / step, qmin, qmax))``.

    ``step`` is a scalar (``axis=None``) or a vector of ``input.shape[axis]`` values, of any
    float dtype (a float32 variable under mixed precision); its gradient is LSQ's, computed
    by the fused kernel (or its composite inside XLA). The output is that of
    :func:`quantize_and_dequantize_v2` with ``range_given=True`` and the range
    ``(qmin * step, qmax * step)``.
    """
    x = tf.convert_to_tensor(input, name="input")
    if not x.dtype.is_floating:
        raise TypeError(f"input must be {dtypes_text()}, got {x.dtype.name}")
    step = tf.convert_to_tensor(step, name="step", dtype_hint=tf.float32)
    if not step.dtype.is_floating:
        raise TypeError(f"step must be a float tensor, got {step.dtype.name}")
    check_num_bits(num_bits, signed_input)
    raw_axis = _args.channel_axis(x, axis)
    qmin, qmax = code_range(num_bits, signed_input, narrow_range)
    attrs = dict(signed_input=signed_input, num_bits=num_bits, round_mode=round_mode, narrow_range=narrow_range,
                 axis=raw_axis)

    @tf.custom_gradient
    def _learned(x, step):
        lo, hi = range_of_step(step, x.dtype, qmin, qmax)
        y = _dispatch.qdq_v4(x, lo, hi, range_given=True, **attrs)

        def grad(dy):
            dx, dstep = _dispatch.qdq_lsq_grad(dy, x, lo, hi, **attrs)
            return dx, tf.reshape(tf.cast(dstep, step.dtype), tf.shape(step))

        return y, grad

    with tf.name_scope(name or "QuantizeAndDequantizeLearned"):
        return _learned(x, step)
