"""The grid a range gives, for everyone outside the op itself: code bounds, steps, weight grids.

The range math is TensorFlow's ComputeQuantizationRange (SEMANTICS §3.3) in float32. On
tensors (``step_tensor``: the bias grid Keras adds on, the learned range's start) it is the
composite's own ``range_params``; on constants (``step``: the exporters' scales, the
learned range's initial step) it is the same arithmetic in NumPy, because exporters also
run inside graphs that are not eager (tf2onnx's rewriters), where a tensor cannot be read.
tests/test_grid.py checks the two bit for bit. The code bounds are the contract's
(``_contract.code_range``). Weights use one grid: signed, symmetric, narrow range (codes
-2^(b-1)+1 .. 2^(b-1)-1, zero point 0), per output channel, ranged by max |w|.
"""

import numpy as np
import tensorflow as tf

from tensorflow_qdq import _composite
from tensorflow_qdq._contract import code_range

__all__ = ["WEIGHT_NARROW_RANGE", "WEIGHT_SIGNED", "channel_amax", "code_range", "step", "step_tensor",
           "weight_step"]

# The weight grid (see the module docstring): what TensorRT's and ONNX Runtime's integer
# kernels require; a zero weight stays exactly zero.
WEIGHT_SIGNED = True
WEIGHT_NARROW_RANGE = True


def step_tensor(lo, hi, num_bits, signed, narrow_range):
    """The grid step (inverse scale) for [lo, hi] as a float32 tensor, elementwise over
    per-channel ranges; 0 where the range is degenerate (the op outputs 0 there)."""
    qmin, qmax = (tf.constant(q, tf.float32) for q in code_range(num_bits, signed, narrow_range))
    *_, inv, degenerate = _composite.range_params(tf.cast(lo, tf.float32), tf.cast(hi, tf.float32), qmin, qmax)
    return tf.where(degenerate, tf.zeros_like(inv), inv)


def step(lo, hi, num_bits, signed, narrow_range):
    """``step_tensor`` on constants: float32 NumPy values in (broadcast), float32 out."""
    qmin, qmax = (np.float32(q) for q in code_range(num_bits, signed, narrow_range))
    lo = np.asarray(lo, np.float32)
    hi = np.asarray(hi, np.float32)
    big = np.finfo(np.float32).max
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lo_usable, hi_usable = qmin * lo > 0, qmax * hi > 0
        scale_lo = np.where(lo_usable, qmin / lo, big)
        scale_hi = np.where(hi_usable, qmax / hi, big)
        inv = np.where(scale_lo < scale_hi, lo / qmin, hi / qmax).astype(np.float32)
    return np.where(lo_usable | hi_usable, inv, np.float32(0)).astype(np.float32)


def channel_amax(weight, channel_axes):
    """max |w| over everything but the channel axes, flattened in channel order."""
    others = tuple(a for a in range(weight.ndim) if a not in channel_axes)
    return np.max(np.abs(weight), axis=others).reshape(-1).astype(np.float32)


def weight_step(amax, num_bits):
    """The weight grid's step per channel for max |w| = ``amax`` (0 where amax is 0)."""
    return step(-np.asarray(amax, np.float32), amax, num_bits, WEIGHT_SIGNED, WEIGHT_NARROW_RANGE)
