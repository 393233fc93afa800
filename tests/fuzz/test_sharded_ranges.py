"""Per-channel auto ranges on tensors big enough for the CPU loops to split the range
reduction into several shards (>= 2 x 32768 elements), with each channel's extremes, NaNs
and signed-zero ties placed where shards meet. Checked bit for bit against the float64
reference model, and against TensorFlow's kernel where TensorFlow is right (no NaN)."""

import zlib

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers import reference as ref

SHARD = 32768  # the CPU loops' minimum elements per shard (cc/qdq_cpu.cc)


def _run(x, axis, dtype, signed=True, bits=8, half_up=False):
    depth = x.shape[axis]
    zeros = np.zeros(depth, ref.NP_DTYPES[dtype])
    got = qdq.raw_ops.QuantizeAndDequantizeV4(
        input=tf.constant(x), input_min=zeros, input_max=zeros, signed_input=signed, num_bits=bits,
        range_given=False, round_mode="HALF_UP" if half_up else "HALF_TO_EVEN", axis=axis).numpy()
    mode = "HALF_UP" if half_up else "HALF_TO_EVEN"
    want = [ref.quantize(x, dtype=dtype, signed_input=signed, num_bits=bits, round_mode=mode, axis=axis, daz=daz)
            for daz in (False, True)]
    ok = ref.same_or_nan(got, want[0]) | ref.same_or_nan(got, want[1])
    assert ok.all(), f"{int((~ok).sum())} elements differ, first at {np.argwhere(~ok)[0]}"
    return got


def _plant_extremes(x, rng):
    """Puts extremes of the channels they fall in on both sides of every shard boundary
    (the loops cut the flat buffer into at most 4 x threads = 8 shards here)."""
    flat = x.reshape(-1)
    n = flat.size
    shards = max(1, min(n // SHARD, 8))
    for s in range(1, shards):
        b = n * s // shards
        for k, pos in enumerate((b - 1, b)):
            flat[pos] = (100.0 if k else -100.0) * (1 + rng.random())
    return x


SHAPES = [
    ((4, 40_000), 0),  # few channels, outer axis
    ((40_000, 3), 1),  # channel axis last: channels interleave (inner == 1)
    ((2, 1024, 64), 1),  # 1024 channels: the partial-range path's limit
    ((2, 1025, 64), 1),  # just past it: shards own channels
    ((70_000, 1), 1),  # size-1 channel axis folds to per-tensor
    ((3, 5, 9000), 2),  # 9000 channels, inner == 1
    ((9, 17_000), 0),
]


@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_per_channel_auto_across_shards(shape, axis, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((shape, axis, dtype)).encode()))
    x = rng.normal(size=shape)
    x = _plant_extremes(x, rng).astype(ref.NP_DTYPES[dtype])
    got = _run(x, axis, dtype)
    if dtype in ("float32", "float64"):
        zeros = np.zeros(shape[axis], dtype)
        theirs = tf.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=zeros, input_max=zeros, range_given=False,
                                                    num_bits=8, axis=axis).numpy()
        np.testing.assert_array_equal(got.view(np.uint8), theirs.view(np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_channels_living_in_one_shard_nan_channels_and_signed_zero_ties(dtype):
    n_rows = 6 * SHARD // 4
    x = np.random.default_rng(1).normal(size=(n_rows, 4))
    x[: n_rows // 2, 0] = np.nan  # channel 0: NaN in the first shards, data in the last
    x[:, 1] = np.nan  # channel 1: all NaN -> all NaN out
    x[:, 2] = 0.0
    x[n_rows // 2 :, 2] = -0.0  # channel 2: zeros of both signs, +0 first: degenerate, signs kept
    x[:, 3] = np.where(np.arange(n_rows) % 2, 0.0, -0.0)
    x[-1, 3] = 3.0  # channel 3: a single positive value in the last shard
    x = x.astype(dtype)
    got = _run(x, 1, dtype)
    assert np.isnan(got[:, 1]).all()
    assert np.array_equal(np.signbit(got[:, 2]), np.signbit(x[:, 2]))
    assert got[-1, 3] == 3.0


@pytest.mark.parametrize("signed,bits,half_up",
                         [(True, 2, False), (False, 8, True), (True, 16, True), (False, 1, False)])
def test_attributes_with_sharded_ranges(signed, bits, half_up):
    x = np.random.default_rng(bits).uniform(-3, 7, size=(5, 30_000)).astype(np.float32)
    _run(x, 0, "float32", signed=signed, bits=bits, half_up=half_up)
