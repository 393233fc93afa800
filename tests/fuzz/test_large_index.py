"""64-bit indexing: tensors past 2^31 elements, whose extremes and channels live past 2^31.

float16 keeps each tensor at ~4 GiB; a test needs ~8-9 GiB at its peak (input and output;
the input is built inside a tf.function so its pieces are freed). Marked slow; skipped with
the reason when the machine has too little free memory."""

import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq
from tests.helpers import reference as ref

pytestmark = pytest.mark.slow

N31 = 2**31
NEEDED_GIB = 10


def _available_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return 0.0


@pytest.fixture(autouse=True)
def _enough_memory():
    if _available_gib() < NEEDED_GIB:
        pytest.skip(f"needs {NEEDED_GIB} GiB free, {_available_gib():.1f} GiB available")


def _same(got, want):
    assert np.all(ref.same_or_nan(got, want)), np.argwhere(~ref.same_or_nan(got, want))[:5]


def test_per_tensor_auto_range_whose_max_sits_past_2_31():
    rng = np.random.default_rng(0)
    pattern = rng.uniform(-1, 1, 4096).astype(np.float16)
    tail = rng.uniform(-1, 1, 4096).astype(np.float16)
    tail[100] = 8.0  # the global max, at flat index 2^31 + 100

    @tf.function
    def run():
        x = tf.concat([tf.tile(tf.constant(pattern), [N31 // 4096]), tf.constant(tail)], 0)
        y = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=tf.zeros([], tf.float16),
                                                input_max=tf.zeros([], tf.float16), num_bits=8)
        return y[:4096], y[N31 - 4096 : N31 + 4096], y[-4096:], tf.size(y, out_type=tf.int64)

    head, middle, end, size = (t.numpy() for t in run())
    assert size == N31 + 4096
    want = ref.quantize(np.concatenate([pattern, tail]), None, None, dtype="float16", signed_input=True, num_bits=8,
                        range_given=False, round_mode="HALF_TO_EVEN", narrow_range=False, axis=-1, daz=False)
    _same(head, want[:4096])
    _same(middle, want)
    _same(end, want[4096:])


def test_per_channel_last_axis_channels_indexed_past_2_31():
    rng = np.random.default_rng(1)
    row = rng.uniform(-1, 1, (1, 1024)).astype(np.float16)
    last = (2.0 + np.arange(1024) / 256.0).astype(np.float16)[None, :]  # every channel's max, last row
    rows = N31 // 1024

    @tf.function
    def run():
        x = tf.concat([tf.tile(tf.constant(row), [rows, 1]), tf.constant(last)], 0)
        z = tf.zeros([1024], tf.float16)
        y = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=z, input_max=z, num_bits=6, axis=1)
        return y[0], y[rows - 1], y[rows]

    first, before, after = (t.numpy() for t in run())
    want = ref.quantize(np.concatenate([row, last]), None, None, dtype="float16", signed_input=True, num_bits=6,
                        range_given=False, round_mode="HALF_TO_EVEN", narrow_range=False, axis=1, daz=False)
    _same(first, want[0])
    _same(before, want[0])
    _same(after, want[1])


def test_per_channel_given_ranges_and_gradient_on_a_channel_starting_past_2_31():
    half = N31 // 2 + 512  # channel 1 spans flat indices [2^30 + 512, 2^31 + 1024)
    rng = np.random.default_rng(2)
    piece = rng.uniform(-4, 4, (2, 1024)).astype(np.float16)
    lo = np.array([-1.0, -3.0], np.float16)
    hi = np.array([1.0, 0.5], np.float16)

    @tf.function
    def run():
        x = tf.tile(tf.constant(piece), [1, half // 1024])
        y = qdq.raw_ops.QuantizeAndDequantizeV4(input=x, input_min=lo, input_max=hi, num_bits=5, range_given=True,
                                                axis=0)
        g = qdq.raw_ops.QuantizeAndDequantizeV4Grad(gradients=y, input=x, input_min=lo, input_max=hi, axis=0)[0]
        return y[:, -1024:], g[:, -1024:]

    y_end, g_end = (t.numpy() for t in run())
    want = ref.quantize(piece, lo, hi, dtype="float16", signed_input=True, num_bits=5, range_given=True,
                        round_mode="HALF_TO_EVEN", narrow_range=False, axis=0, daz=False)
    _same(y_end, want)
    _same(g_end, ref.masked_gradient(want, piece, lo, hi, axis=0, daz=False))
