"""The Keras 3 quantize-and-dequantize layer over tensorflow-qdq's ops."""

import math
import numbers

import keras
import numpy as np
import tensorflow as tf

import tensorflow_qdq as _qdq
from tensorflow_qdq import _composite, _dispatch, _learned
from tensorflow_qdq._contract import check_num_bits, check_round_mode, dtypes_text
from tensorflow_qdq._loader import ops as _ops
from tensorflow_qdq.deploy import _grid
from tensorflow_qdq.keras import _deploy

RANGE_MODES = ("fixed", "batch", "tracked", "learned")
GRADIENTS = ("masked", "straight_through")
RANGE_UPDATES = ("delayed", "immediate")

# Tracked ranges start here when no min_value/max_value is given (the same start as
# TF Model Optimization's moving-average quantizer); the first training batch replaces it.
_TRACKED_START = (-6.0, 6.0)


def _straight_through(x, y):
    """y, with the identity as its gradient with respect to x."""

    @tf.custom_gradient
    def identity_gradient(x):
        return tf.identity(y), lambda dy: dy

    return identity_gradient(x)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(repr, choices))}")
    return value


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
        _check_choice("range_mode", range_mode, RANGE_MODES)
        check_round_mode(round_mode)
        _check_choice("gradient", gradient, GRADIENTS)
        _check_choice("range_update", range_update, RANGE_UPDATES)
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
        self.supports_jit = bool(getattr(_qdq, "XLA_SUPPORTED", False))

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

    # -- building ---------------------------------------------------------------------------

    def build(self, input_shape):
        rank = len(input_shape)
        self._channels = None
        if self.axis is not None:
            if not -rank <= self.axis < rank:
                raise ValueError(f"axis={self.axis} is out of range for input of rank {rank}: "
                                 f"must be in [{-rank}, {rank})")
            self._axis = self.axis % rank
            self._channels = input_shape[self._axis]
            per_channel = self.range_mode in ("tracked", "learned") or isinstance(self.min_value, list)
            if self._channels is None and per_channel:
                raise ValueError(f"the size of axis {self.axis} must be known to build per-channel ranges")
        if isinstance(self.min_value, list) and len(self.min_value) != self._channels:
            raise ValueError(
                f"min_value/max_value hold {len(self.min_value)} values "
                f"but axis {self.axis} has {self._channels} channels"
            )
        if self.range_mode == "tracked":
            self._build_tracked()
        elif self.range_mode == "learned":
            self._build_learned()

    def _build_tracked(self):
        shape = () if self._channels is None else (self._channels,)
        lo, hi = (self.min_value, self.max_value) if self.min_value is not None else _TRACKED_START
        if not self.signed and self.min_value is None:
            lo = 0.0
        # Every replica writes the same (cross-replica reduced) value; keep the first.
        common = dict(shape=shape, trainable=False, autocast=False, aggregation="only_first_replica")
        # float32 whatever the layer's dtype (a float64 layer used to fail in training here).
        self.tracked_min = self.add_weight(name="tracked_min", initializer=keras.initializers.Constant(lo),
                                           dtype="float32", **common)
        self.tracked_max = self.add_weight(name="tracked_max", initializer=keras.initializers.Constant(hi),
                                           dtype="float32", **common)
        self.tracked_updates = self.add_weight(name="tracked_updates", initializer="zeros", dtype="int64", **common)

    def _grid(self):
        return _grid.code_range(self.num_bits, self.signed, self.narrow_range)

    def _step_of_range(self, lo, hi):
        """The grid step the op uses for [lo, hi] widened to include 0 (as tracked ranges are)."""
        return _grid.step(np.minimum(lo, 0.0), np.maximum(hi, 0.0), self.num_bits, self.signed, self.narrow_range)

    def _build_learned(self):
        shape = () if self._channels is None else (self._channels,)
        given = self.min_value is not None
        lo, hi = (self.min_value, self.max_value) if given else _TRACKED_START
        step = self._step_of_range(lo, hi)
        step = np.where(step > 0, step, self._step_of_range(*_TRACKED_START))  # e.g. min_value = max_value = 0
        log_step = np.log(np.broadcast_to(step, shape)).astype(np.float32)
        # The step is learned as its logarithm: positive by construction, and Adam-style
        # optimizers (whose updates are about the learning rate whatever the gradient's
        # scale) change it by a ratio, not by an absolute amount (see docs/KERAS.md).
        self.log_step = self.add_weight(name="log_step", shape=shape, trainable=True, autocast=False,
                                        initializer=keras.initializers.Constant(log_step),
                                        aggregation="only_first_replica")
        # 0 until a range is set from data (calibrate, or the first training batch); given bounds count as set.
        self.step_initialized = self.add_weight(
            name="step_initialized", shape=(), dtype="int64", trainable=False, autocast=False,
            aggregation="only_first_replica", initializer=keras.initializers.Constant(int(given)))

    @property
    def step(self):
        """The learned grid step(s), ``exp(log_step)`` (range_mode "learned" only)."""
        return tf.exp(tf.convert_to_tensor(self.log_step))

    def _set_step(self, step):
        """log_step = log(step) where step > 0 (a range with no step keeps the old value)."""
        step = np.broadcast_to(np.asarray(step, np.float32), self.log_step.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            self.log_step.assign(np.where(step > 0, np.log(step), self.log_step.numpy()).astype(np.float32))

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
        if requantize and _deploy.calibration_observer() is None and _deploy.current_target() is None:
            return self.call(x, training=False)  # the inference path: the range as it stands
        if passthrough or requantize:
            target = _deploy.current_target()
            return x if target is None else target.activation(x, self, *self.constant_range())
        observe = _deploy.calibration_observer()
        if observe is not None and self.range_mode in ("tracked", "learned"):
            observe(self, x)  # calibration sees the float activations, unquantized
            return x
        target = _deploy.current_target()
        if target is not None:
            return target.activation(x, self, *self.constant_range())
        if self.range_mode == "batch":  # the op ignores the values, but checks their shapes
            zero = self._per_slice(x, tf.zeros([], x.dtype))
            return self._qdq(x, zero, zero, range_given=False)
        if self.range_mode == "learned":
            return self._learned_qdq(x, training)
        if self.range_mode == "fixed":
            lo = self._per_slice(x, tf.constant(self.min_value, x.dtype))
            hi = self._per_slice(x, tf.constant(self.max_value, x.dtype))
        elif training:
            if self._fused_tracking():
                return self._tracked_step(x)
            lo, hi = self._update_tracked(x, delayed=self.range_update == "delayed")
        else:
            lo, hi = tf.convert_to_tensor(self.tracked_min), tf.convert_to_tensor(self.tracked_max)
        return self._qdq(x, tf.cast(lo, x.dtype), tf.cast(hi, x.dtype), range_given=True)

    def constant_range(self):
        """The range the layer uses in inference, as float32 NumPy values (read eagerly)."""
        if self.range_mode == "batch":
            raise ValueError(
                f"quantizer {self.name!r} has range_mode='batch': its range is measured from each input at run time, "
                "so there is no constant range to export; use range_mode='tracked' (and calibrate or train) or 'fixed'"
            )
        if self.range_mode == "fixed":
            return np.asarray(self.min_value, np.float32), np.asarray(self.max_value, np.float32)
        if self.range_mode == "learned":
            with tf.init_scope():  # the forward pass's own range, computed by the same function
                lo, hi = _learned.range_of_step(self.step, tf.float32, *self._grid())
                return lo.numpy(), hi.numpy()
        with tf.init_scope():
            return self.tracked_min.numpy().astype(np.float32), self.tracked_max.numpy().astype(np.float32)

    def set_range(self, lo, hi):
        """Sets a tracked range (calibration): the values used in inference and as the start of
        training's moving averages (the update counter is set so training continues from it)."""
        if self.range_mode == "learned":
            self._set_step(self._step_of_range(lo, hi))
            self.step_initialized.assign(1)
            return
        if self.range_mode != "tracked":
            raise ValueError(f"quantizer {self.name!r} has range_mode={self.range_mode!r}; only 'tracked' and "
                             "'learned' ranges can be set")
        self.tracked_min.assign(np.broadcast_to(np.float32(lo), self.tracked_min.shape))
        self.tracked_max.assign(np.broadcast_to(np.float32(hi), self.tracked_max.shape))
        self.tracked_updates.assign(np.ones(self.tracked_updates.shape, np.int64))

    def _learned_qdq(self, x, training):
        if training:
            # The first training step of a quantizer whose range was never set starts the
            # step from that batch's range; the variable is read after, so it gets the gradient.
            init = tf.cond(self.step_initialized > 0, tf.no_op, lambda: self._start_step(x))
            with tf.control_dependencies([init]):
                step = self.step
        else:
            step = self.step
        return _learned.quantize_and_dequantize_learned(
            x, step, signed_input=self.signed, num_bits=self.num_bits, round_mode=self.round_mode,
            narrow_range=self.narrow_range, axis=self.axis)

    def _start_step(self, x):
        """Sets the step from this batch's range (widened to include 0), where that gives one."""
        lo, hi, finite = self._batch_range(x)
        qmin, qmax = (tf.constant(q, tf.float32) for q in self._grid())
        *_, step, degenerate = _composite.range_params(tf.minimum(lo, 0.0), tf.maximum(hi, 0.0), qmin, qmax)
        valid = finite & ~degenerate & tf.math.is_finite(step) & (step > 0)
        old = tf.convert_to_tensor(self.log_step)
        return tf.group(self.log_step.assign(tf.where(valid, tf.math.log(tf.where(valid, step, 1.0)), old)),
                        self.step_initialized.assign(tf.ones_like(self.step_initialized)))

    def _per_slice(self, x, bound):
        """A scalar bound repeated for every channel when quantizing per channel."""
        if self.axis is None or bound.shape.rank != 0:
            return bound
        return tf.fill(tf.shape(x)[self._axis : self._axis + 1], bound)

    def _qdq(self, x, lo, hi, range_given):
        fn = _qdq.quantize_and_dequantize_v2 if self.gradient == "masked" else _qdq.quantize_and_dequantize
        return fn(
            x,
            lo,
            hi,
            signed_input=self.signed,
            num_bits=self.num_bits,
            range_given=range_given,
            round_mode=self.round_mode,
            narrow_range=self.narrow_range,
            axis=self.axis,
        )

    def _batch_range(self, x):
        """This step's min/max per slice over the global batch (every replica's share), and
        whether every element of the slice was finite."""
        if self._channels is None:
            axes = None
        else:
            axes = [a for a in range(x.shape.rank) if a != self._axis]
        # The range is observed, not learned (the op's range gradients are zero anyway): without
        # this the backward step still differentiates min/max, a full Equal/Cast/Sum/RealDiv
        # pass over the activation per bound that only multiplies zeros.
        x = tf.stop_gradient(x)
        lo = tf.cast(tf.reduce_min(x, axis=axes), tf.float32)
        hi = tf.cast(tf.reduce_max(x, axis=axes), tf.float32)
        # Checked explicitly: whether reduce_min/max propagate a NaN depends on where it sits.
        finite = tf.cast(tf.reduce_all(tf.math.is_finite(x), axis=axes), tf.float32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            # One collective per step: gather every replica's [min, max, finite], reduce here.
            # (An empty share gives [+inf, -inf, 1], which changes nothing.)
            every = ctx.all_gather(tf.stack([lo, hi, finite])[tf.newaxis], axis=0)
            lo, hi = tf.reduce_min(every[:, 0], axis=0), tf.reduce_max(every[:, 1], axis=0)
            finite = tf.reduce_min(every[:, 2], axis=0)
        return lo, hi, finite > 0

    @staticmethod
    def _fused_tracking():
        """Whether a training step can run as one Qdq>QuantizeAndDequantizeTracked op: not
        inside XLA (no custom ops there) and on one replica (several gather their batch
        ranges first); elsewhere the same update runs as standard ops (_update_tracked)."""
        if _dispatch.in_xla_context():
            return False
        ctx = tf.distribute.get_replica_context()
        return ctx is None or ctx.num_replicas_in_sync == 1

    def _tracked_step(self, x):
        """The tracked update and the quantize pass in one op (same arithmetic as
        _update_tracked + _qdq: the bounds may differ only in the sign of a zero)."""
        attrs = dict(signed_input=self.signed, num_bits=self.num_bits, round_mode=self.round_mode,
                     narrow_range=self.narrow_range, axis=-1 if self.axis is None else self._axis,
                     momentum=self.momentum, delayed=self.range_update == "delayed")
        y, lo, hi, count, _, _ = _ops.qdq_quantize_and_dequantize_tracked(
            x, self.tracked_min, self.tracked_max, self.tracked_updates, **attrs)
        self.tracked_min.assign(lo)
        self.tracked_max.assign(hi)
        self.tracked_updates.assign(count)
        if self.gradient == "straight_through":
            return _straight_through(x, y)
        return y

    def _update_tracked(self, x, delayed=False):
        """Moves the tracked range towards this batch's range (widened to include 0); returns
        the range to quantize with: the updated one, or, ``delayed``, the one from before this
        batch where the slice has been updated before.

        Slices whose batch holds a NaN or an infinity (on any replica), or no element at all,
        keep their range. The first update of a slice replaces its start range.
        """
        lo, hi, finite = self._batch_range(x)
        valid = finite & tf.math.is_finite(lo) & tf.math.is_finite(hi)
        lo, hi = tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)
        old_lo, old_hi = tf.convert_to_tensor(self.tracked_min), tf.convert_to_tensor(self.tracked_max)
        count = tf.convert_to_tensor(self.tracked_updates)
        decay = tf.where(count > 0, self.momentum, 0.0)
        new_lo = tf.where(valid, old_lo * decay + lo * (1.0 - decay), old_lo)
        new_hi = tf.where(valid, old_hi * decay + hi * (1.0 - decay), old_hi)
        self.tracked_min.assign(new_lo)
        self.tracked_max.assign(new_hi)
        self.tracked_updates.assign(count + tf.cast(valid, tf.int64))
        if delayed:
            return tf.where(count > 0, old_lo, new_lo), tf.where(count > 0, old_hi, new_hi)
        return new_lo, new_hi

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
