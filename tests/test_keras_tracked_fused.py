"""The fused tracked step (Qdq>QuantizeAndDequantizeTracked, used in training on one replica
outside XLA) against the same update written in standard TensorFlow ops (the path used under
tf.distribute and XLA): outputs, gradients, tracked ranges and counts, bit for bit, over
every dtype, per tensor and per channel, with NaN and infinite batches."""

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq
from tensorflow_qdq.keras import QuantizeAndDequantize, _ranges

UINT = {2: tf.uint16, 4: tf.uint32, 8: tf.uint64}


def _bits(t):
    return tf.bitcast(t, UINT[t.dtype.size]).numpy()


@pytest.mark.parametrize("range_update", ["delayed", "immediate"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_fused_tracked_step_equals_the_standard_ops_update(dtype, range_update, monkeypatch):
    rng = np.random.default_rng(abs(hash((dtype, range_update))) % 2**32)
    for trial in range(12):
        axis = [None, -1, 0][trial % 3]
        kw = dict(num_bits=int(rng.choice([2, 4, 8])), signed=bool(trial % 5), narrow_range=trial % 7 == 0,
                  round_mode=["HALF_TO_EVEN", "HALF_UP"][trial % 2], momentum=0.9, axis=axis, range_mode="tracked",
                  range_update=range_update)
        fused, standard = QuantizeAndDequantize(dtype=dtype, **kw), QuantizeAndDequantize(dtype=dtype, **kw)
        # Short rows (the kernels' row loops) and long runs (the delayed step's one-pass loop,
        # with vector bodies and scalar heads and tails).
        shape = (int(rng.integers(1, 6)), 7) if trial % 2 else (int(rng.integers(1, 4)), int(rng.integers(64, 300)))
        for step in range(4):
            x = (rng.standard_normal(shape) * 3).astype(np.float32)
            if step == 2 and trial % 3 == 0:
                x[0, 0] = np.nan
            if step == 3 and trial % 4 == 1:
                x[0, 1] = np.inf
            if trial % 6 == 5:
                x = np.abs(x)
            if trial % 4 == 3:  # ReLU-like: the minimum is a zero, some of them negative zeros
                x = np.maximum(x, 0.0)
                x.flat[rng.integers(0, x.size, 3)] = -0.0
            xt = tf.cast(tf.constant(x), dtype)
            g = tf.cast(tf.constant(rng.standard_normal(shape).astype(np.float32)), dtype)
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(xt)
                monkeypatch.setattr(_ranges.TrackedRange, "fused", staticmethod(lambda: True))
                y_fused = fused(xt, training=True)
                monkeypatch.setattr(_ranges.TrackedRange, "fused", staticmethod(lambda: False))
                y_standard = standard(xt, training=True)
            label = f"trial {trial} step {step} {kw}"
            np.testing.assert_array_equal(_bits(y_fused), _bits(y_standard), err_msg=label)
            np.testing.assert_array_equal(_bits(tape.gradient(y_fused, xt, output_gradients=g)),
                                          _bits(tape.gradient(y_standard, xt, output_gradients=g)), err_msg=label)
            for name in ("tracked_min", "tracked_max", "tracked_updates"):
                np.testing.assert_array_equal(getattr(fused, name).numpy(), getattr(standard, name).numpy(),
                                              err_msg=f"{label} {name}")


def test_fused_op_is_used_in_training_and_validates_its_inputs():
    layer = QuantizeAndDequantize(range_mode="tracked")
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(tf.TensorSpec([4, 3])).graph
    assert "Qdq>QuantizeAndDequantizeTracked" in {op.type for op in graph.get_operations()}
    from tensorflow_qdq._loader import ops

    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="tracked_min"):
        ops.qdq_quantize_and_dequantize_tracked([[1.0, 2.0]], [0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [0, 0, 0],
                                                axis=1, momentum=0.9)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="momentum"):
        ops.qdq_quantize_and_dequantize_tracked([1.0], 0.0, 1.0, tf.constant(0, tf.int64), momentum=1.5)


@pytest.mark.parametrize("delayed", [False, True])
def test_fused_op_rejects_a_range_that_v4_would_reject(delayed):
    """A tracked range is only ever ordered, but one assigned by hand may not be: the fused op
    raises as V4 does on the standard path (which names input_min/input_max) instead of
    quantizing with NaN bounds."""
    from tensorflow_qdq._loader import ops

    x = tf.constant(np.linspace(-1, 1, 300, dtype=np.float32))
    count = tf.constant([1, 1], tf.int64)
    for lo, hi in (([0.0, 2.0], [1.0, 1.0]), ([np.nan, 0.0], [1.0, 1.0])):
        with pytest.raises(tf.errors.InvalidArgumentError, match="tracked_min must be <= tracked_max.*channel 1"
                           if lo[1] > hi[1] else "tracked_min must be <= tracked_max.*channel 0"):
            ops.qdq_quantize_and_dequantize_tracked(tf.reshape(x, [2, 150]), lo, hi, count, axis=0, momentum=0.9,
                                                    delayed=delayed)
    layer = QuantizeAndDequantize(range_mode="tracked", range_update="delayed" if delayed else "immediate")
    layer(x[:4], training=True)
    layer.tracked_min.assign(2.0)  # above tracked_max
    with pytest.raises(tf.errors.InvalidArgumentError, match="tracked_min must be <= tracked_max"):
        layer(x, training=True)


@pytest.mark.parametrize("axis", [-1, 0])
def test_one_pass_delayed_step_on_a_tensor_that_streams(axis):
    """Big enough (16 MB) for non-temporal stores and every shard of the pool: the one-pass
    delayed step equals V4 with the old range, and its new range the NumPy update of the batch
    min/max (zeros of both signs at the minimum, as after a ReLU)."""
    from tensorflow_qdq._loader import ops

    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((2, 1 << 21)).astype(np.float32), 0.0)
    x[:, 1000:1010] = -0.0
    x[1, 5] = np.nan if axis == 0 else x[1, 5]  # channel 1 keeps its range
    depth = 1 if axis == -1 else 2
    lo, hi = np.full(depth, -0.5, np.float32), np.full(depth, 2.5, np.float32)
    count = np.full(depth, 3, np.int64)
    shape = () if axis == -1 else (depth,)
    y, new_lo, new_hi, new_count, used_lo, used_hi = ops.qdq_quantize_and_dequantize_tracked(
        x, lo.reshape(shape), hi.reshape(shape), count.reshape(shape), axis=axis, momentum=0.9, delayed=True)
    want = tensorflow_qdq.quantize_and_dequantize_v2(x, lo.reshape(shape), hi.reshape(shape), range_given=True,
                                                      axis=None if axis == -1 else 0)
    np.testing.assert_array_equal(_bits(y), _bits(want))
    np.testing.assert_array_equal(used_lo.numpy().reshape(-1), lo)
    batch = x.reshape(depth, -1)
    finite = ~np.isnan(batch).any(axis=1)
    b_lo = np.minimum(np.nanmin(batch, axis=1), 0).astype(np.float32)
    b_hi = np.maximum(np.nanmax(batch, axis=1), 0).astype(np.float32)
    m = np.float32(0.9)
    exp_lo = np.where(finite, lo * m + b_lo * (np.float32(1) - m), lo)
    exp_hi = np.where(finite, hi * m + b_hi * (np.float32(1) - m), hi)
    np.testing.assert_array_equal(new_lo.numpy().reshape(-1), exp_lo)
    np.testing.assert_array_equal(new_hi.numpy().reshape(-1), exp_hi)
    np.testing.assert_array_equal(new_count.numpy().reshape(-1), count + finite)
