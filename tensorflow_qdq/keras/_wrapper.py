"""QuantizeWrapper: any weighted Keras layer with per-channel quantized weights, and the
BatchNorm fold for quantization-aware training.

The wrapper keeps the float layer (and its variables) inside, and calls the layer's own
``call`` with its weight attributes swapped for quantized tensors (see ``_weights``), so
built-in layers and their subclasses compute exactly what they compute in float.

BatchNorm fold (``batch_norm=``: the config of the BatchNormalization that followed the
layer), the fold of PyTorch's ConvBn modules and of Jacob et al. (2018):

* weights are scaled by ``f = gamma / sqrt(moving_variance + epsilon)`` per output channel
  and then quantized, so training sees the weights that will be deployed;
* while training (until ``freeze_bn_delay`` training steps have run, or always if it is
  None), the output is unscaled (``y / f + bias``), normalized with the *batch* statistics,
  which also update the moving statistics: BatchNorm trains as it did in float;
* in inference, after the delay, and in exports: ``y + beta + (bias - moving_mean) * f``,
  one layer with a bias and no BatchNormalization.

The bias (folded or not) is added rounded onto the int32 grid ``input step x weight step``
that the integer runtimes add it on, once the input's quantizer is known (``_bias``).
"""

import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tensorflow_qdq._contract import check_num_bits
from tensorflow_qdq.keras import _bias, _observer, _target, _weights
from tensorflow_qdq.keras._layer import QuantizeAndDequantize
from tensorflow_qdq.keras._placement import GATED_ACTIVATIONS, sigmoid_grid
from tensorflow_qdq.keras._weights import activation_name

_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_NO_GRID = object()  # input not quantized, or call sites on different grids: the bias stays float


@keras.saving.register_keras_serializable(package="tensorflow_qdq")
class QuantizeWrapper(keras.layers.Wrapper):
    """Wraps a weighted Keras layer so its weights are quantized per output channel.

    Args:
      layer: a Dense, Conv1D/2D/3D, Conv*Transpose, DepthwiseConv1D/2D, SeparableConv1D/2D,
        EinsumDense or Embedding layer (or a subclass whose ``call`` reads the same weight
        attributes).
      weight_bits: bits of the weight grid (signed, symmetric narrow range, per output
        channel, range measured from the weight at every call), or None for float weights.
      batch_norm: the config of a BatchNormalization layer folded into this one (see the
        module docstring), or None.
      freeze_bn_delay: training steps after which the folded BatchNorm stops using batch
        statistics (None: never while training).
      input_bits: if set, the wrapper also quantizes its input (per tensor, tracked range);
        ``quantize_model`` places input quantizers in the graph instead and leaves this None.
      output_bits: if set, the output is quantized (per tensor, tracked range) after the bias and
        before the layer's activation: ``quantize_model`` sets it when that activation is one no
        runtime fuses into the op (softmax, sigmoid, swish, gelu, ...), so the op itself stays
        integer. A swish (silu) activation is then computed as ``y * q(sigmoid(y))`` with its
        gate on the fixed grid of TFLite's int8 LOGISTIC (``gate_quantizer``: unsigned, step
        2^-bits), as TFLite's LOGISTIC and MUL need.
    """

    def __init__(self, layer, weight_bits=8, batch_norm=None, freeze_bn_delay=None, input_bits=None,
                 output_bits=None, momentum=0.99, activation_range="tracked", range_update="delayed", **kwargs):
        kwargs.setdefault("name", f"{layer.name}")
        super().__init__(layer, **kwargs)
        self.specs = _weights.weight_specs(layer)
        if self.specs is None:
            raise ValueError(
                f"QuantizeWrapper: layer {layer.name!r} ({type(layer).__name__}) has no weights that tensorflow-qdq "
                "knows how to quantize; supported: Dense, EinsumDense, Embedding, Conv*, Conv*Transpose, "
                "DepthwiseConv*, SeparableConv* and their subclasses"
            )
        self.weight_bits = None if weight_bits is None else check_num_bits(weight_bits, _weights.WEIGHT_SIGNED)
        if freeze_bn_delay is not None and (isinstance(freeze_bn_delay, bool) or int(freeze_bn_delay) < 0):
            raise ValueError(f"freeze_bn_delay={freeze_bn_delay!r} must be None or a number of steps >= 0")
        self.freeze_bn_delay = None if freeze_bn_delay is None else int(freeze_bn_delay)
        self.batch_norm = None
        if batch_norm is not None:
            if not any(s.folds_batch_norm for s in self.specs):
                raise ValueError(f"QuantizeWrapper: a BatchNormalization cannot be folded into {type(layer).__name__}")
            if activation_name(layer) not in (None, "linear"):
                raise ValueError(f"QuantizeWrapper: {layer.name!r} has an activation; a BatchNorm after it cannot fold")
            self.batch_norm = keras.layers.BatchNormalization.from_config(dict(batch_norm))
        self.input_bits, self.output_bits, self.momentum = input_bits, output_bits, momentum
        self.activation_range, self.range_update = activation_range, range_update
        common = dict(range_mode=activation_range, momentum=momentum, range_update=range_update)
        self.input_quantizer = self.output_quantizer = None
        if input_bits is not None:
            self.input_quantizer = QuantizeAndDequantize(num_bits=input_bits, name="input_quantizer", **common)
        if output_bits is not None:
            self.output_quantizer = QuantizeAndDequantize(num_bits=output_bits, name="output_quantizer", **common)
        # swish is x * sigmoid(x) in TensorFlow: TFLite runs its LOGISTIC and MUL in int8 only
        # with a range on the sigmoid's output (the gate) too.
        self.gate_quantizer = None
        if output_bits is not None and activation_name(layer) in GATED_ACTIVATIONS:
            self.gate_quantizer = QuantizeAndDequantize(num_bits=output_bits, name="gate_quantizer",
                                                        **sigmoid_grid(output_bits))
        # A separable conv is a depthwise and a pointwise conv: the tensor between them needs a
        # range too, or no runtime keeps the pair in integer arithmetic.
        self.intermediate_quantizer = None
        if isinstance(layer, _SEPARABLE) and self.weight_bits is not None:
            self.intermediate_quantizer = QuantizeAndDequantize(
                num_bits=8 if input_bits is None else input_bits, name="intermediate_quantizer", **common)

    # -- building ---------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        # Building the functional graph (quantize_model, or loading a .keras file): remember the
        # quantizer whose grid the input is on, for the bias grid (see _bias). Not tracked as a
        # sublayer (it belongs to the model), and forgotten if call sites disagree.
        inputs = args[0] if args else kwargs.get("inputs")
        history = getattr(inputs, "_keras_history", None)
        if isinstance(inputs, keras.KerasTensor) and history is not None:
            owner = history.operation if isinstance(history.operation, QuantizeAndDequantize) else None
            known = self.__dict__.get("_input_grid")
            if known is None and owner is not None:
                link = weakref.ref(owner)
            elif known is None or known is _NO_GRID or known() is not owner:
                link = _NO_GRID
            else:
                link = known
            object.__setattr__(self, "_input_grid", link)
        return super().__call__(*args, **kwargs)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.input_quantizer is not None:
            self.input_quantizer.build(input_shape)
        if self.output_quantizer is not None:
            self.output_quantizer.build(self.layer.compute_output_shape(input_shape))
        if self.gate_quantizer is not None:
            self.gate_quantizer.build(self.layer.compute_output_shape(input_shape))
        if self.intermediate_quantizer is not None:
            self.intermediate_quantizer.build(input_shape)
        if self.batch_norm is not None:
            self.batch_norm.build(self.layer.compute_output_shape(input_shape))
            self.fold_steps = self.add_weight(name="fold_steps", shape=(), dtype="int64", initializer="zeros",
                                              trainable=False, autocast=False)
        self.built = True

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # -- the weights --------------------------------------------------------------------------

    def _fold_factor(self):
        """gamma / sqrt(moving_variance + epsilon), per output channel."""
        bn = self.batch_norm
        factor = ops.rsqrt(ops.add(bn.moving_variance, bn.epsilon))
        return factor if bn.gamma is None else ops.multiply(bn.gamma, factor)

    def float_weights(self):
        """{attr: float weight as the layer computes with it (BatchNorm folded in)}, and the bias
        to add after the layer's linear part (folded with the moving statistics), or None."""
        factor = self._fold_factor() if self.batch_norm is not None else None
        return self._folded_weights(factor), self._folded_bias(factor)

    def _folded_weights(self, factor):
        out = {}
        for spec in self.specs:
            w = ops.convert_to_tensor(getattr(self.layer, spec.attr))
            if factor is not None and spec.folds_batch_norm:
                w = ops.multiply(w, _along(factor, spec.axes(len(w.shape)), len(w.shape), w.shape))
            out[spec.attr] = w
        return out

    def _folded_bias(self, factor):
        bias = getattr(self.layer, "bias", None)
        bias = None if bias is None else ops.convert_to_tensor(bias)
        if factor is not None:
            bn = self.batch_norm
            shift = ops.negative(ops.multiply(bn.moving_mean, factor))
            if bias is not None:
                shift = ops.add(shift, ops.multiply(bias, factor))
            bias = shift if bn.beta is None else ops.add(shift, bn.beta)
        return bias

    # -- calling ------------------------------------------------------------------------------

    def call(self, inputs, training=None):
        if self.input_quantizer is not None:
            inputs = self.input_quantizer(inputs, training=training)
        target = _target.current_target()
        if target is not None:
            return self._deploy_call(inputs, target)
        # The factor once per call; the frozen bias only where it is used (a training step with
        # batch statistics does not need it).
        factor = self._fold_factor() if self.batch_norm is not None else None
        weights = float_weights = self._folded_weights(factor)
        if self.weight_bits is not None:
            weights = {spec.attr: _weights.quantize_weight(weights[spec.attr], spec.channel_axes, self.weight_bits)
                       for spec in self.specs}
        y = self._linear(inputs, weights, training)
        if self.batch_norm is not None and training:
            frozen = lambda: self._add_bias(  # noqa: E731
                y, self._on_bias_grid(self._folded_bias(factor), float_weights))
            if self.freeze_bn_delay is None:
                y = self._batch_statistics(y, factor)
            else:
                y = tf.cond(self.fold_steps < self.freeze_bn_delay, lambda: self._batch_statistics(y, factor), frozen)
            self.fold_steps.assign_add(1)
        elif self.batch_norm is not None and self._calibrating_untrained_batch_norm():
            y = self._batch_statistics(y, factor, update=False)
        else:
            y = self._add_bias(y, self._on_bias_grid(self._folded_bias(factor), float_weights))
        return self._activate(y, training)

    def _linear(self, inputs, weights, training=None):
        """The layer's own call with the given weights, without bias and activation."""
        if self.intermediate_quantizer is not None:
            return self._separable(inputs, weights, training)
        values = dict(weights, bias=None, activation=None)
        if hasattr(self.layer, "use_bias"):
            values["use_bias"] = False
        with _weights.swapped(self.layer, values):
            return self.layer.call(inputs)

    def _separable(self, inputs, weights, training):
        """SeparableConv as its two convolutions with the intermediate tensor quantized."""
        layer = self.layer
        y = ops.depthwise_conv(inputs, weights["depthwise_kernel"], strides=layer.strides, padding=layer.padding,
                               data_format=layer.data_format, dilation_rate=layer.dilation_rate)
        y = self.intermediate_quantizer(y, training=training)
        return ops.conv(y, weights["pointwise_kernel"], strides=1, padding="valid", data_format=layer.data_format)

    def _activate(self, y, training=None):
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, training=training)
        if self.gate_quantizer is not None:
            return ops.multiply(y, self.gate_quantizer(ops.sigmoid(y), training=training))
        activation = getattr(self.layer, "activation", None)
        return y if activation is None else activation(y)

    def _add_bias(self, y, bias):
        if bias is None:
            return y
        bias = ops.cast(bias, y.dtype)
        if _weights.output_channel_axis(self.layer) == 1:
            return _add_along_channels(y, ops.reshape(bias, (1, -1) + (1,) * (len(y.shape) - 2)))
        if len(bias.shape) == 1 and len(y.shape) >= 2:
            return tf.nn.bias_add(y, bias)  # one op that converters fuse into the conv/gemm
        return ops.add(y, bias)

    def _calibrating_untrained_batch_norm(self):
        """Whether ``calibrate`` is running and the folded BatchNorm has never seen data (moving
        mean 0 and variance 1, Keras' initial values: a model trained from scratch). Its
        inference output is then the raw conv output, not the normalized one that training
        computes, and ranges calibrated on it can be orders of magnitude off: QAT then starts
        with most activations clipped, the batch variances collapse and BatchNorm's
        1/sqrt(variance) blows the gradients up. Calibration normalizes with the batch's
        statistics instead, as the training step will (the moving statistics stay as they are)."""
        if _observer.calibration_observer() is None or not tf.executing_eagerly():
            return False
        bn = self.batch_norm
        return bool(np.all(np.asarray(bn.moving_mean) == 0.0) and np.all(np.asarray(bn.moving_variance) == 1.0))

    def _batch_statistics(self, y, factor, update=True):
        """Training before the freeze: BatchNorm with batch statistics of the unfolded output
        ``z = y / f + bias`` (f = gamma * r, r = rsqrt(moving_variance + eps) > 0). z is affine
        in y per channel, so its statistics come from y's (mean_z = mean_y / f + bias,
        var_z = var_y / f^2), and BatchNorm(z) = gamma * (z - mean_z) * rsqrt(var_z + eps) + beta
        = |gamma| * (y - mean_y) * rsqrt(var_y + eps * f^2) + beta: one multiply-add on y, and
        no division in the part that is differentiated. ``update=False`` (calibrating untrained
        statistics) leaves the moving statistics alone."""
        bn = self.batch_norm
        axis = _weights.output_channel_axis(self.layer) % len(y.shape)
        # The moving statistics (assigned, so not differentiated) divide by f; a zero f zeroed
        # that channel's weights, so y = 0 there and dividing by 1 instead is exact.
        safe = ops.where(ops.equal(factor, 0.0), ops.ones_like(factor), factor)
        reduce = [a for a in range(len(y.shape)) if a != axis]
        mean_y, variance_y = ops.moments(ops.cast(y, "float32"), axes=reduce)
        if update:  # not while calibrating: calibration only reads the model
            mean = ops.divide(mean_y, safe)
            bias = getattr(self.layer, "bias", None)
            if bias is not None:
                mean = ops.add(mean, bias)
            variance = ops.divide(variance_y, ops.square(safe))
            m = bn.momentum
            bn.moving_mean.assign(ops.add(ops.multiply(bn.moving_mean, m), ops.multiply(mean, 1.0 - m)))
            bn.moving_variance.assign(ops.add(ops.multiply(bn.moving_variance, m),
                                              ops.multiply(variance, 1.0 - m)))
        # (safe for f: where f = 0, y = 0 and var_y = 0, and rsqrt(0 + eps * 1) * |gamma| = 0.)
        scale = ops.rsqrt(ops.add(variance_y, ops.multiply(ops.square(safe), bn.epsilon)))
        if bn.gamma is not None:
            scale = ops.multiply(scale, ops.abs(bn.gamma))
        offset = ops.negative(ops.multiply(mean_y, scale))
        if bn.beta is not None:
            offset = ops.add(offset, bn.beta)
        shape = [1] * len(y.shape)
        shape[axis] = -1
        return _add_along_channels(ops.multiply(y, ops.cast(ops.reshape(scale, shape), y.dtype)),
                                   ops.cast(ops.reshape(offset, shape), y.dtype))

    def _deploy_call(self, inputs, target):
        """Export trace: the folded weights and bias as constants, weights through the target."""
        with tf.init_scope():
            weights, bias = self.float_weights()
            weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
            bias = None if bias is None else np.asarray(bias, np.float32)
        emitted = {}
        for spec in self.specs:
            w = weights[spec.attr]
            if self.weight_bits is None:
                emitted[spec.attr] = tf.constant(w)
            else:
                emitted[spec.attr] = target.weight(w, spec.axes(w.ndim), self.weight_bits, self.layer)
        if bias is not None:  # the rounded bias that Keras adds, which the runtimes round to the same codes
            with tf.init_scope():
                bias = np.asarray(self._on_bias_grid(tf.constant(bias), weights), np.float32)
        y = self._linear(inputs, emitted)
        y = self._add_bias(y, None if bias is None else tf.constant(bias))
        return self._activate(y)

    def _bias_grid_input(self):
        """The quantizer whose grid the tensor that the bias is added to was computed from."""
        if self.intermediate_quantizer is not None:
            return self.intermediate_quantizer  # a separable conv's bias follows its pointwise conv
        if self.input_quantizer is not None:
            return self.input_quantizer
        link = self.__dict__.get("_input_grid")
        return None if link is None or link is _NO_GRID else link()

    def _on_bias_grid(self, bias, float_weights):
        """``bias`` rounded onto the int32 grid the integer runtimes add it on (see _bias), while
        weights are quantized and the input is on a per-tensor grid; else unchanged. Not while
        calibrating: the ranges that define the grid are being measured."""
        if bias is None or self.weight_bits is None or _observer.calibration_observer() is not None:
            return bias
        spec = next((s for s in self.specs if s.folds_batch_norm), None)
        if spec is None or len(bias.shape) != 1:
            return bias
        input_step = _bias.quantizer_step(self._bias_grid_input())
        if input_step is None:
            return bias
        w = float_weights[spec.attr]
        weight_step = _bias.weight_steps(w, spec.axes(len(w.shape)), self.weight_bits)
        if weight_step.shape[0] != bias.shape[0]:
            return bias
        return _bias.rounded(bias, input_step, weight_step)

    # -- config -------------------------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            weight_bits=self.weight_bits,
            batch_norm=None if self.batch_norm is None else self.batch_norm.get_config(),
            freeze_bn_delay=self.freeze_bn_delay,
            input_bits=self.input_bits,
            output_bits=self.output_bits,
            momentum=self.momentum,
            activation_range=self.activation_range,
            range_update=self.range_update,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"], custom_objects=custom_objects)
        return cls(**config)


def _add_along_channels(y, bias):
    """y + bias, bias shaped to broadcast along one axis. Not keras.ops.add: on TensorFlow
    (Keras 3.15) it turns such an add into a BiasAdd and picks the channel axis by size, so a
    channels-first output whose last dimension equals its channel count gets the bias added
    along the wrong axis."""
    return tf.add(y, bias)


def _along(vector, axes, rank, shape):
    """``vector`` (one value per output channel, the channels being ``axes`` of a weight of
    that rank, merged in order) reshaped to broadcast against the weight."""
    target = [1] * rank
    for a in axes:
        target[a] = int(shape[a])
    return ops.reshape(vector, target)
