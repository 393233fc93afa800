"""References for the Keras tests, independent of tensorflow-qdq's code: TensorFlow's own
kernels (tf.raw_ops) for float32/float64, and a NumPy model of the tracked moving averages."""

import numpy as np
import tensorflow as tf


def builtin_qdq(x, lo=None, hi=None, *, axis=None, num_bits=8, signed=True, narrow_range=False,
                round_mode="HALF_TO_EVEN"):
    """TensorFlow's kernel on float32/float64 data: auto range when lo/hi are None, else given.

    Given per-channel ranges go through V3 (TF 2.21's V2/V4 reject them); the rest through V4.
    axis uses the Keras layer's convention (None = per tensor, negative from the end).
    """
    x = np.asarray(x)
    raw_axis = -1 if axis is None else axis % x.ndim
    given = lo is not None
    lo = np.asarray(0 if lo is None else lo, x.dtype)
    hi = np.asarray(0 if hi is None else hi, x.dtype)
    if given and raw_axis != -1:
        lo = np.broadcast_to(lo, [x.shape[raw_axis]]).copy()
        hi = np.broadcast_to(hi, [x.shape[raw_axis]]).copy()
        assert round_mode == "HALF_TO_EVEN", "V3 rounds half to even only"
        out = tf.raw_ops.QuantizeAndDequantizeV3(
            input=x, input_min=lo, input_max=hi, num_bits=num_bits, signed_input=signed,
            range_given=True, narrow_range=narrow_range, axis=raw_axis)
    else:
        if raw_axis != -1:  # auto per channel: the op checks min/max shapes only
            lo = np.zeros([x.shape[raw_axis]], x.dtype)
            hi = lo
        out = tf.raw_ops.QuantizeAndDequantizeV4(
            input=x, input_min=lo, input_max=hi, num_bits=num_bits, signed_input=signed,
            range_given=given, round_mode=round_mode, narrow_range=narrow_range, axis=raw_axis)
    return out.numpy()


def tracked_ranges(batches, momentum, axis=None):
    """The tracked [min, max] after each batch: batch min/max widened to 0, the first finite
    batch taken as is, then exponential moving averages (float32 arithmetic like the layer's)."""
    lo = hi = None
    history = []
    for batch in batches:
        batch = np.asarray(batch, np.float32)
        axes = None if axis is None else tuple(a for a in range(batch.ndim) if a != axis % batch.ndim)
        b_lo = np.minimum(batch.min(axis=axes), np.float32(0))
        b_hi = np.maximum(batch.max(axis=axes), np.float32(0))
        if lo is None:
            lo, hi = b_lo, b_hi
        else:
            m = np.float32(momentum)
            lo = lo * m + b_lo * (np.float32(1) - m)
            hi = hi * m + b_hi * (np.float32(1) - m)
        history.append((np.float32(lo) if np.ndim(lo) == 0 else lo.astype(np.float32),
                        np.float32(hi) if np.ndim(hi) == 0 else hi.astype(np.float32)))
    return history


def grid_step(lo, hi, num_bits, signed=True, narrow_range=False):
    """The op's grid step for a given range (SEMANTICS §3.4), from the NumPy oracle."""
    from tests.helpers.reference import Arith, int_range, slice_params

    qmin, qmax = int_range(signed, num_bits, narrow_range)
    ar = Arith(np.float32, daz=True)
    *_, inv, degenerate = slice_params(np.float32(lo), np.float32(hi), qmin, qmax, ar)
    return np.where(degenerate, np.float32(0), inv).astype(np.float32)


def bias_on_grid(bias, input_step, weight, weight_bits):
    """A bias as the integer runtimes add it: int32 codes on input step x weight step (the
    weight's symmetric narrow per-output-channel grid, channels last), round half to even."""
    amax = np.max(np.abs(weight.reshape(-1, weight.shape[-1])), axis=0).astype(np.float32)
    weight_step = grid_step(-amax, amax, weight_bits, narrow_range=True)
    scale = (np.float64(input_step) * weight_step.astype(np.float64)).astype(np.float32)
    return (np.rint(np.asarray(bias, np.float64) / scale) * scale).astype(np.float32)
