"""Where a quantizer's range comes from: one strategy per ``range_mode``.

Each strategy is stateless; it keeps what it needs in the quantizer layer it serves (Keras
variables created with ``add_weight``, so saving, distribution and checkpoints see them as
the layer's own) and answers the same five questions: which variables to build, how to
quantize a tensor in training and in inference, whether calibration observes it, the
constant range an export freezes, and how calibration sets a range.

* ``fixed``: ``min_value``/``max_value``.
* ``batch``: each call measures its input's min/max (no constant range).
* ``tracked``: moving averages of the batch min/max in non-trainable variables.
* ``learned``: a trainable step per slice (LSQ), kept as its logarithm.

See ``QuantizeAndDequantize`` for the user-facing description of each.
"""

import keras
import numpy as np
import tensorflow as tf

from tensorflow_qdq import _api, _dispatch, _grid, _learned
from tensorflow_qdq._loader import ops as _ops

# Tracked ranges start here when no min_value/max_value is given (the same start as
# TF Model Optimization's moving-average quantizer); the first training batch replaces it.
# Learned steps start from this range's step until data sets one.
DEFAULT_START = (-6.0, 6.0)


# ---------------------------------------------------------------- shared by the strategies


def quantize(q, x, lo, hi, range_given):
    """The quantizer's op (V2 for the masked gradient, V1 for straight through) on ``x``."""
    fn = _api.quantize_and_dequantize_v2 if q.gradient == "masked" else _api.quantize_and_dequantize
    return fn(x, lo, hi, signed_input=q.signed, num_bits=q.num_bits, range_given=range_given,
              round_mode=q.round_mode, narrow_range=q.narrow_range, axis=q.axis)


def per_slice(q, x, bound):
    """A scalar bound repeated for every channel when quantizing per channel."""
    if q.axis is None or bound.shape.rank != 0:
        return bound
    return tf.fill(tf.shape(x)[q.channel_axis : q.channel_axis + 1], bound)


def step_of_range(q, lo, hi):
    """The grid step the op uses for [lo, hi] widened to include 0 (as tracked ranges are)."""
    return _grid.step(np.minimum(lo, 0.0), np.maximum(hi, 0.0), q.num_bits, q.signed, q.narrow_range)


def batch_range(q, x):
    """This step's min/max per slice over the global batch (every replica's share), and
    whether every element of the slice was finite."""
    axes = None if q.channels is None else [a for a in range(x.shape.rank) if a != q.channel_axis]
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


def _straight_through(x, y):
    """y, with the identity as its gradient with respect to x."""

    @tf.custom_gradient
    def identity_gradient(x):
        return tf.identity(y), lambda dy: dy

    return identity_gradient(x)


def _variable_shape(q):
    return () if q.channels is None else (q.channels,)


# ---------------------------------------------------------------- the strategies


class RangeStrategy:
    """The interface; the defaults serve ranges that are neither observed nor settable."""

    observed_by_calibration = False  # calibrate measures the float input and sets the range

    def build(self, q):
        """Creates the quantizer's variables (after the channel count is known)."""

    def quantize(self, q, x, training):
        raise NotImplementedError

    def constant_range(self, q):
        """(lo, hi) the quantizer uses in inference, float32 NumPy values."""
        raise NotImplementedError

    def set_range(self, q, lo, hi):
        raise ValueError(f"quantizer {q.name!r} has range_mode={q.range_mode!r}; only 'tracked' and "
                         "'learned' ranges can be set")


class FixedRange(RangeStrategy):
    def quantize(self, q, x, training):
        lo = per_slice(q, x, tf.constant(q.min_value, x.dtype))
        hi = per_slice(q, x, tf.constant(q.max_value, x.dtype))
        return quantize(q, x, lo, hi, range_given=True)

    def constant_range(self, q):
        return np.asarray(q.min_value, np.float32), np.asarray(q.max_value, np.float32)


class BatchRange(RangeStrategy):
    def quantize(self, q, x, training):
        zero = per_slice(q, x, tf.zeros([], x.dtype))  # the op ignores the values, but checks their shapes
        return quantize(q, x, zero, zero, range_given=False)

    def constant_range(self, q):
        raise ValueError(
            f"quantizer {q.name!r} has range_mode='batch': its range is measured from each input at run time, "
            "so there is no constant range to export; use range_mode='tracked' (and calibrate or train) or 'fixed'"
        )


class TrackedRange(RangeStrategy):
    observed_by_calibration = True

    def build(self, q):
        lo, hi = (q.min_value, q.max_value) if q.min_value is not None else DEFAULT_START
        if not q.signed and q.min_value is None:
            lo = 0.0
        # Every replica writes the same (cross-replica reduced) value; keep the first.
        # float32 whatever the layer's dtype (a float64 layer used to fail in training here).
        common = dict(shape=_variable_shape(q), trainable=False, autocast=False, aggregation="only_first_replica")
        q.tracked_min = q.add_weight(name="tracked_min", initializer=_constant(lo), dtype="float32", **common)
        q.tracked_max = q.add_weight(name="tracked_max", initializer=_constant(hi), dtype="float32", **common)
        q.tracked_updates = q.add_weight(name="tracked_updates", initializer="zeros", dtype="int64", **common)

    def quantize(self, q, x, training):
        if training:
            if self.fused():
                return self._fused_step(q, x)
            lo, hi = self.update(q, x, delayed=q.range_update == "delayed")
        else:
            lo, hi = tf.convert_to_tensor(q.tracked_min), tf.convert_to_tensor(q.tracked_max)
        return quantize(q, x, tf.cast(lo, x.dtype), tf.cast(hi, x.dtype), range_given=True)

    def constant_range(self, q):
        with tf.init_scope():
            return q.tracked_min.numpy().astype(np.float32), q.tracked_max.numpy().astype(np.float32)

    def set_range(self, q, lo, hi):
        """The values used in inference and as the start of training's moving averages (the
        update counter is set so training continues from it)."""
        q.tracked_min.assign(np.broadcast_to(np.float32(lo), q.tracked_min.shape))
        q.tracked_max.assign(np.broadcast_to(np.float32(hi), q.tracked_max.shape))
        q.tracked_updates.assign(np.ones(q.tracked_updates.shape, np.int64))

    @staticmethod
    def fused():
        """Whether a training step can run as one Qdq>QuantizeAndDequantizeTracked op: not
        inside XLA (no custom ops there) and on one replica (several gather their batch
        ranges first); elsewhere the same update runs as standard ops (``update``)."""
        if _dispatch.in_xla_context():
            return False
        ctx = tf.distribute.get_replica_context()
        return ctx is None or ctx.num_replicas_in_sync == 1

    @staticmethod
    def _fused_step(q, x):
        """The tracked update and the quantize pass in one op (same arithmetic as ``update``
        + ``quantize``: the bounds may differ only in the sign of a zero)."""
        attrs = dict(signed_input=q.signed, num_bits=q.num_bits, round_mode=q.round_mode,
                     narrow_range=q.narrow_range, axis=-1 if q.axis is None else q.channel_axis,
                     momentum=q.momentum, delayed=q.range_update == "delayed")
        y, lo, hi, count, _, _ = _ops.qdq_quantize_and_dequantize_tracked(
            x, q.tracked_min, q.tracked_max, q.tracked_updates, **attrs)
        q.tracked_min.assign(lo)
        q.tracked_max.assign(hi)
        q.tracked_updates.assign(count)
        if q.gradient == "straight_through":
            return _straight_through(x, y)
        return y

    @staticmethod
    def update(q, x, delayed=False):
        """Moves the tracked range towards this batch's range (widened to include 0); returns
        the range to quantize with: the updated one, or, ``delayed``, the one from before this
        batch where the slice has been updated before.

        Slices whose batch holds a NaN or an infinity (on any replica), or no element at all,
        keep their range. The first update of a slice replaces its start range.
        """
        lo, hi, finite = batch_range(q, x)
        valid = finite & tf.math.is_finite(lo) & tf.math.is_finite(hi)
        lo, hi = tf.minimum(lo, 0.0), tf.maximum(hi, 0.0)
        old_lo, old_hi = tf.convert_to_tensor(q.tracked_min), tf.convert_to_tensor(q.tracked_max)
        count = tf.convert_to_tensor(q.tracked_updates)
        decay = tf.where(count > 0, q.momentum, 0.0)
        new_lo = tf.where(valid, old_lo * decay + lo * (1.0 - decay), old_lo)
        new_hi = tf.where(valid, old_hi * decay + hi * (1.0 - decay), old_hi)
        q.tracked_min.assign(new_lo)
        q.tracked_max.assign(new_hi)
        q.tracked_updates.assign(count + tf.cast(valid, tf.int64))
        if delayed:
            return tf.where(count > 0, old_lo, new_lo), tf.where(count > 0, old_hi, new_hi)
        return new_lo, new_hi


class LearnedRange(RangeStrategy):
    observed_by_calibration = True

    def build(self, q):
        given = q.min_value is not None
        lo, hi = (q.min_value, q.max_value) if given else DEFAULT_START
        step = step_of_range(q, lo, hi)
        step = np.where(step > 0, step, step_of_range(q, *DEFAULT_START))  # e.g. min_value = max_value = 0
        log_step = np.log(np.broadcast_to(step, _variable_shape(q))).astype(np.float32)
        # The step is learned as its logarithm: positive by construction, and Adam-style
        # optimizers (whose updates are about the learning rate whatever the gradient's
        # scale) change it by a ratio, not by an absolute amount (see docs/KERAS.md).
        q.log_step = q.add_weight(name="log_step", shape=_variable_shape(q), trainable=True, autocast=False,
                                  initializer=_constant(log_step), aggregation="only_first_replica")
        # 0 until a range is set from data (calibrate, or the first training batch); given bounds count as set.
        q.step_initialized = q.add_weight(
            name="step_initialized", shape=(), dtype="int64", trainable=False, autocast=False,
            aggregation="only_first_replica", initializer=_constant(int(given)))

    def quantize(self, q, x, training):
        if training:
            # The first training step of a quantizer whose range was never set starts the
            # step from that batch's range; the variable is read after, so it gets the gradient.
            init = tf.cond(q.step_initialized > 0, tf.no_op, lambda: self._start_step(q, x))
            with tf.control_dependencies([init]):
                step = q.step
        else:
            step = q.step
        return _learned.quantize_and_dequantize_learned(
            x, step, signed_input=q.signed, num_bits=q.num_bits, round_mode=q.round_mode,
            narrow_range=q.narrow_range, axis=q.axis)

    def constant_range(self, q):
        with tf.init_scope():  # the forward pass's own range, computed by the same function
            lo, hi = _learned.range_of_step(q.step, tf.float32, *_grid.code_range(q.num_bits, q.signed,
                                                                                   q.narrow_range))
            return lo.numpy(), hi.numpy()

    def set_range(self, q, lo, hi):
        """log_step = log(step of [lo, hi]) where that step is > 0 (a range with no step keeps
        the old value); the step then counts as set."""
        step = np.broadcast_to(np.asarray(step_of_range(q, lo, hi), np.float32), q.log_step.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            q.log_step.assign(np.where(step > 0, np.log(step), q.log_step.numpy()).astype(np.float32))
        q.step_initialized.assign(1)

    @staticmethod
    def _start_step(q, x):
        """Sets the step from this batch's range (widened to include 0), where that gives one."""
        lo, hi, finite = batch_range(q, x)
        step = _grid.step_tensor(tf.minimum(lo, 0.0), tf.maximum(hi, 0.0), q.num_bits, q.signed, q.narrow_range)
        valid = finite & tf.math.is_finite(step) & (step > 0)  # a degenerate range has step 0
        old = tf.convert_to_tensor(q.log_step)
        return tf.group(q.log_step.assign(tf.where(valid, tf.math.log(tf.where(valid, step, 1.0)), old)),
                        q.step_initialized.assign(tf.ones_like(q.step_initialized)))


def _constant(value):
    return keras.initializers.Constant(value)


STRATEGIES = {"fixed": FixedRange(), "batch": BatchRange(), "tracked": TrackedRange(), "learned": LearnedRange()}
RANGE_MODES = tuple(STRATEGIES)
