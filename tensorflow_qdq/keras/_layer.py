"""The Keras 3 quantize-and-dequantize layer: its arguments, and what a call does while calibrating,
exporting or passing a tensor through; where its range comes from is a strategy in ``_ranges``."""

import math
import numbers

import keras
import tensorflow as tf

from tensorflow_qdq import _dispatch
from tensorflow_qdq._contract import check_choice, check_num_bits, check_round_mode, dtypes_text
from tensorflow_qdq.keras import _observer, _target
from tensorflow_qdq.keras._ranges import RANGE_MODES, STRATEGIES

GRADIENTS = ("masked", "straight_through")
RANGE_UPDATES = ("delayed", "immediate")


def _as_bound(name, value):
    """A float or a list of floats (per channel), checked to be finite numbers."""
    if value is None:
        return None
    if isinstance(value, numbers.Real):
        values, scalar = [value], True
    else:
        values, scalar = list(tf.nest.flatten(value)), False
        if not values:
            raise ValueError(f"{name} must be a number or a non-empty list of numbers, got {value!r}")
    floats = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"{name} must hold finite numbers, got {value!r}")
        floats.append(float(v))
    return floats[0] if scalar else floats


@keras.saving.register_keras_serializable(package="tensorflow_qdq")
class QuantizeAndDequantize(keras.layers.Layer):
    """Quantizes then dequantizes its input with tensorflow-qdq's kernels (fake quantization).

    Args:
      num_bits: bits of the integer grid (1..61 signed, 1..62 unsigned).
      axis: ``None`` quantizes per tensor; an int quantizes per channel along that axis
        (negative counts from the end, so ``-1`` is the last axis).
      range_mode: where the quantization range comes from:
        ``"fixed"`` - ``min_value``/``max_value`` (numbers, or lists of one value per channel);
        ``"batch"`` - each call measures the min/max of its input (per slice);
        ``"tracked"`` - moving averages of the batch min/max (widened to include 0), kept in
        non-trainable variables, updated only when ``training=True`` and used as the given
        range otherwise; a slice whose batch holds NaN or +-inf keeps its range.
        ``min_value``/``max_value`` optionally set the range used before the first training
        step (default [-6, 6]); the first training batch replaces it.
        ``range_update`` says which range a training step quantizes with.
        ``"learned"`` - a trainable step per slice (LSQ, Esser et al. 2020); the range is
        ``(qmin * step, qmax * step)`` and the step's gradient is LSQ's (the rounding
        residual inside the range, the clip bound outside, times 1/sqrt(n * Qp)), computed
        by the fused ``Qdq>QuantizeAndDequantizeLsqGrad`` kernel. The trainable variable is
        ``log_step`` (``step = exp(log_step)``: positive by construction; the forward pass
        also clamps it to a finite range, so a NaN or infinite variable cannot give a NaN).
        The start is ``min_value``/``max_value`` if given, else :func:`calibrate`'s range,
        else the first training batch's range (as ``"tracked"`` starts).
      signed: signed (``True``) or unsigned integer grid.
      narrow_range: drop the most negative signed code (symmetric grid, e.g. -127..127).
      round_mode: one of ``tensorflow_qdq._contract.ROUND_MODES`` (``"HALF_TO_EVEN"``, the default).
      gradient: ``"masked"`` (``QuantizeAndDequantizeV4``: the gradient passes where the input
        lies inside the range, 0 outside) or ``"straight_through"`` (identity gradient);
        ``"learned"`` ranges always use the masked input gradient.
      momentum: decay of the tracked moving averages, in [0, 1).
      range_update: for ``"tracked"`` ranges in training: ``"delayed"`` (default) quantizes
        with the range from before this batch and updates it from the same pass over the
        input (delayed scaling, as FP8 training does; one read of the activation instead of
        three); ``"immediate"`` updates the range first and quantizes with the updated one
        (TF Model Optimization's order). A range never updated (no calibration, first step)
        is set from the batch first either way. See docs/KERAS.md.

    Under ``tf.distribute`` each training step gathers the per-replica batch min/max across all
    replicas and reduces them, so every replica applies the same update: the tracked range equals
    what one device would track on the global batch (variables use ``only_first_replica``
    aggregation; all replicas write identical values). Under a mixed-precision policy the op runs
    in the compute dtype (bfloat16/half kernels); the tracked variables stay float32.
    """

    def __init__(
        self,
        num_bits=8,
        axis=None,
        range_mode="batch",
        min_value=None,
        max_value=None,
        signed=True,
        narrow_range=False,
        round_mode="HALF_TO_EVEN",
        gradient="masked",
        momentum=0.99,
        range_update="delayed",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("range_mode", range_mode, RANGE_MODES)
        check_round_mode(round_mode)
        check_choice("gradient", gradient, GRADIENTS)
        check_choice("range_update", range_update, RANGE_UPDATES)
        self.range_update = range_update
        self.signed = bool(signed)
        self.num_bits = check_num_bits(num_bits, self.signed)
        if axis is not None:
            if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
                raise TypeError(f"axis must be None or an int, got {axis!r}")
            axis = int(axis)
        self.axis = axis
        self.range_mode = range_mode
        self.min_value = _as_bound("min_value", min_value)
        self.max_value = _as_bound("max_value", max_value)
        self._check_bounds()
        self.narrow_range = bool(narrow_range)
        self.round_mode = round_mode
        self.gradient = gradient
        if range_mode == "learned" and gradient != "masked":
            raise ValueError("range_mode='learned' uses LSQ's gradient (masked for the input); "
                             f"gradient={gradient!r} does not apply to it")
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} is out of range: must be in [0, 1)")
        self.momentum = momentum
        # Keras compiles a model with XLA only if every layer says it can; the xla support
        # in tensorflow_qdq sets this module flag when its composite lowering is available.
        self.supports_jit = _dispatch.XLA_SUPPORTED

    def _check_bounds(self):
        given = (self.min_value is not None, self.max_value is not None)
        if self.range_mode == "batch" and any(given):
            raise ValueError("min_value/max_value apply to range_mode 'fixed' or 'tracked', not 'batch'")
        if self.range_mode == "fixed" and not all(given):
            raise ValueError("range_mode='fixed' needs both min_value and max_value")
        if self.range_mode in ("tracked", "learned") and any(given) and not all(given):
            raise ValueError(f"range_mode={self.range_mode!r} takes both min_value and max_value (the start range) "
                             "or neither")
        if not all(given):
            return
        lo, hi = self.min_value, self.max_value
        if isinstance(lo, list) != isinstance(hi, list) or (isinstance(lo, list) and len(lo) != len(hi)):
            raise ValueError(f"min_value and max_value must have the same shape, got {lo!r} and {hi!r}")
        if isinstance(lo, list) and self.axis is None:
            raise ValueError("min_value/max_value lists (per channel) need an axis; use numbers with axis=None")
        for a, b in zip(tf.nest.flatten(lo), tf.nest.flatten(hi)):
            if a > b:
                raise ValueError(f"min_value must be <= max_value, got {lo!r} > {hi!r}")

    @property
    def _strategy(self):
        return STRATEGIES[self.range_mode]

    # -- building ---------------------------------------------------------------------------

    def build(self, input_shape):
        rank = len(input_shape)
        self.channels = None  # per channel: the size of the axis (the ranges' length)
        if self.axis is not None:
            if not -rank <= self.axis < rank:
                raise ValueError(f"axis={self.axis} is out of range for input of rank {rank}: "
                                 f"must be in [{-rank}, {rank})")
            self.channel_axis = self.axis % rank
            self.channels = input_shape[self.channel_axis]
            per_channel = self.range_mode in ("tracked", "learned") or isinstance(self.min_value, list)
            if self.channels is None and per_channel:
                raise ValueError(f"the size of axis {self.axis} must be known to build per-channel ranges")
        if isinstance(self.min_value, list) and len(self.min_value) != self.channels:
            raise ValueError(
                f"min_value/max_value hold {len(self.min_value)} values "
                f"but axis {self.axis} has {self.channels} channels"
            )
        self._strategy.build(self)

    @property
    def step(self):
        """The learned grid step(s), ``exp(log_step)`` (range_mode "learned" only)."""
        return tf.exp(tf.convert_to_tensor(self.log_step))

    def compute_output_shape(self, input_shape):
        return input_shape

    # -- calling ----------------------------------------------------------------------------

    def call(self, inputs, training=None, passthrough=False, requantize=False):
        """``passthrough=True``: the input is already on this quantizer's grid (it is this
        layer's output moved by layers that keep values, e.g. ZeroPadding2D or MaxPooling2D;
        ``quantize_model`` calls a quantizer so). It passes through unchanged and unobserved;
        an export emits this quantizer's range again, so the runtime sees the same scale on
        both sides of the moving layer.

        ``requantize=True``: the input is this layer's output averaged (AveragePooling): it is
        rounded onto this quantizer's grid again, with the range as it stands (not observed,
        not updated), as the runtimes' int8 average pooling does (TFLite requires the same
        scale on both sides)."""
        x = tf.convert_to_tensor(inputs)
        if not x.dtype.is_floating:  # else TF's op-level error names the attr T, not the argument
            raise TypeError(f"{type(self).__name__}: inputs must be {dtypes_text()}, "
                            f"got {x.dtype.name}")
        if requantize and _observer.calibration_observer() is None and _target.current_target() is None:
            return self.call(x, training=False)  # the inference path: the range as it stands
        if passthrough or requantize:
            target = _target.current_target()
            return x if target is None else target.activation(x, self, *self.constant_range())
        observe = _observer.calibration_observer()
        if observe is not None and self._strategy.observed_by_calibration:
            observe(self, x)  # calibration sees the float activations, unquantized
            return x
        target = _target.current_target()
        if target is not None:
            return target.activation(x, self, *self.constant_range())
        return self._strategy.quantize(self, x, training)

    def constant_range(self):
        """The range the layer uses in inference, as float32 NumPy values (read eagerly)."""
        return self._strategy.constant_range(self)

    def set_range(self, lo, hi):
        """Sets a tracked range (calibration): the values used in inference and as the start of
        training's moving averages (the update counter is set so training continues from it), or
        a learned range's step."""
        self._strategy.set_range(self, lo, hi)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_bits=self.num_bits,
            axis=self.axis,
            range_mode=self.range_mode,
            min_value=self.min_value,
            max_value=self.max_value,
            signed=self.signed,
            narrow_range=self.narrow_range,
            round_mode=self.round_mode,
            gradient=self.gradient,
            momentum=self.momentum,
            range_update=self.range_update,
        )
        return config
