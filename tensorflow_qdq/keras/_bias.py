"""The bias as the integer runtimes hold it.

ONNX Runtime's QLinearConv/QGemm and TFLite's int8 CONV_2D/FULLY_CONNECTED add the bias as
int32 codes on the grid ``input step x weight step`` (per output channel, zero point 0): the
exporters round it there (``_onnx_passes.quantize_biases``; the TFLite converter). A float
bias in Keras differs from that by up to half a code, which moves the next quantizer's
rounding on a share of its elements (about 0.1% in an EfficientNet squeeze-excite conv) and
deep networks amplify each such flip. So the wrapper adds the bias already rounded onto that
grid (gradient straight through), and exports the rounded value: Keras and both runtimes
then add the same number.

The steps come from ``_grid`` (the op's own range math), as the scales the exporters write, so
they are equal bit for bit.
"""

import tensorflow as tf

from tensorflow_qdq import _grid, _learned

# int32 codes: a bias that does not fit stays float (the exporters keep it float too).
_INT32_LIMIT = 2.0 ** 31 - 1


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
        grid = _grid.code_range(quantizer.num_bits, quantizer.signed, quantizer.narrow_range)
        lo, hi = _learned.range_of_step(quantizer.step, tf.float32, *grid)
    else:
        return None
    return _grid.step_tensor(lo, hi, quantizer.num_bits, quantizer.signed, quantizer.narrow_range)


def weight_steps(weight, channel_axes, num_bits):
    """The per-output-channel steps of the weight grid (``_grid``: max|w| / (2^(bits-1) - 1)),
    flattened in channel order as the bias is."""
    rank = len(weight.shape)
    axes = tuple(a % rank for a in channel_axes)
    others = [a for a in range(rank) if a not in axes]
    amax = tf.reshape(tf.reduce_max(tf.abs(tf.cast(weight, tf.float32)), axis=others), [-1])
    return _grid.step_tensor(-amax, amax, num_bits, _grid.WEIGHT_SIGNED, _grid.WEIGHT_NARROW_RANGE)


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
