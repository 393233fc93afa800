"""The bias as the integer runtimes hold it.

ONNX Runtime's QLinearConv/QGemm and TFLite's int8 CONV_2D/FULLY_CONNECTED add the bias as
int32 codes on the grid ``input step x weight step`` (per output channel, zero point 0): the
exporters round it there (``_onnx_passes.quantize_biases``; the TFLite converter). A float
bias in Keras differs from that by up to half a code, which moves the next quantizer's
rounding on a share of its elements (about 0.1% in an EfficientNet squeeze-excite conv) and
deep networks amplify each such flip. So the wrapper adds the bias already rounded onto that
grid (gradient straight through), and exports the rounded value: Keras and both runtimes
then add the same number.

The steps come from the composite's range math (the op's own), so they equal the scales the
exporters write bit for bit.
"""

import tensorflow as tf

from tensorflow_qdq import _composite, _learned

# int32 codes: a bias that does not fit stays float (the exporters keep it float too).
_INT32_LIMIT = 2.0 ** 31 - 1


def step_of_range(lo, hi, num_bits, signed, narrow_range):
    """The grid step (inverse scale) the op uses for [lo, hi], float32; 0 where degenerate."""
    qmin, qmax, _ = _composite._int_range(num_bits, signed, narrow_range, tf.float32)
    *_, inv, degenerate = _composite.range_params(tf.cast(lo, tf.float32), tf.cast(hi, tf.float32), qmin, qmax)
    return tf.where(degenerate, tf.zeros_like(inv), inv)


def quantizer_step(quantizer):
    """The step of a per-tensor activation quantizer's grid as it stands (inference range), or
    None where it has none (per-channel or batch ranges: the exporters keep such biases float)."""
    if quantizer is None or quantizer.axis is not None or not quantizer.built:
        return None
    mode = quantizer.range_mode
    if mode == "fixed":
        lo, hi = quantizer.min_value, quantizer.max_value
    elif mode == "tracked":
        lo, hi = quantizer.tracked_min, quantizer.tracked_max
    elif mode == "learned":
        lo, hi = _learned.range_of_step(quantizer.step, tf.float32, *quantizer._grid())
    else:
        return None
    return step_of_range(lo, hi, quantizer.num_bits, quantizer.signed, quantizer.narrow_range)


def weight_steps(weight, channel_axes, num_bits):
    """The per-output-channel steps of the weight grid (symmetric, narrow range: max|w| /
    (2^(bits-1) - 1)), flattened in channel order as the bias is."""
    rank = len(weight.shape)
    axes = tuple(a % rank for a in channel_axes)
    others = [a for a in range(rank) if a not in axes]
    amax = tf.reshape(tf.reduce_max(tf.abs(tf.cast(weight, tf.float32)), axis=others), [-1])
    return step_of_range(-amax, amax, num_bits, True, True)


def rounded(bias, input_step, weight_step):
    """``bias`` on the int32 grid ``input_step * weight_step`` (round half to even, as the
    exporters' ``np.rint``), where that grid exists and the codes fit; the gradient passes
    straight through to the float bias."""
    bias = tf.convert_to_tensor(bias)
    scale = tf.cast(input_step, tf.float32) * weight_step
    b = tf.cast(bias, tf.float32)
    safe = tf.where(scale > 0, scale, tf.ones_like(scale))
    codes = tf.round(b / safe)
    usable = (scale > 0) & tf.math.is_finite(scale) & (tf.abs(codes) <= _INT32_LIMIT)
    on_grid = tf.cast(tf.where(usable, codes * safe, b), bias.dtype)
    # on_grid exactly in the forward pass (x - x is 0), identity gradient to the float bias
    return tf.stop_gradient(on_grid) + (bias - tf.stop_gradient(bias))
