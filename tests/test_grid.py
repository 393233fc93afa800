"""The grid module (tensorflow_qdq/_grid.py): code bounds and steps, against TensorFlow's own
QuantizeAndDequantizeV2 kernel, and its NumPy and tensor forms against each other bit for bit."""

import numpy as np
import pytest
import tensorflow as tf

from tensorflow_qdq import _grid


def _ranges(rng, n=400):
    """Ranges the exporters meet: ordinary, one-sided, zero-width, tiny and huge ends."""
    lo = -np.abs(rng.standard_normal(n)) * 10.0 ** rng.integers(-30, 30, n)
    hi = np.abs(rng.standard_normal(n)) * 10.0 ** rng.integers(-30, 30, n)
    lo[::7], hi[::11] = 0.0, 0.0
    lo[::13] = hi[::13] = 0.0
    return lo.astype(np.float32), hi.astype(np.float32)


GRIDS = [(b, s, n) for b in (1, 2, 4, 7, 8, 16) for s in (True, False) for n in ((False, True) if s else (False,))]


@pytest.mark.parametrize("num_bits, signed, narrow_range", GRIDS)
def test_numpy_and_tensor_steps_agree_bit_for_bit(num_bits, signed, narrow_range):
    lo, hi = _ranges(np.random.default_rng(num_bits * 4 + 2 * signed + narrow_range))
    numpy_step = _grid.step(lo, hi, num_bits, signed, narrow_range)
    tensor_step = _grid.step_tensor(lo, hi, num_bits, signed, narrow_range).numpy()
    np.testing.assert_array_equal(numpy_step.view(np.uint32), tensor_step.view(np.uint32))


@pytest.mark.parametrize("num_bits, signed, narrow_range", [g for g in GRIDS if g[0] > 1])
def test_steps_and_codes_are_tensorflows(num_bits, signed, narrow_range):
    # TensorFlow's kernel (not ours) quantizes points across the range: its outputs are
    # integer multiples of our step, within our code bounds, and reach the bound on the side
    # that sets the step.
    qmin, qmax = _grid.code_range(num_bits, signed, narrow_range)
    rng = np.random.default_rng(num_bits)
    for lo, hi in [(-1.0, 3.0), (-2.5, 0.7), (0.0, 5.0), (-0.3, 0.3), tuple(np.abs(rng.normal(size=2)) * [-4, 4])]:
        lo, hi = (min(lo, 0.0), max(hi, 0.0)) if signed else (0.0, max(hi, 0.0))
        x = np.linspace(lo - 1, hi + 1, 257).astype(np.float32)
        y = tf.quantization.quantize_and_dequantize_v2(
            x, lo, hi, signed_input=signed, num_bits=num_bits, range_given=True, narrow_range=narrow_range).numpy()
        step = float(_grid.step(lo, hi, num_bits, signed, narrow_range))
        codes = y / step
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert qmin <= np.round(codes).min() and np.round(codes).max() <= qmax
        assert np.round(codes).min() == qmin or np.round(codes).max() == qmax


def test_weight_step_is_the_symmetric_narrow_grid():
    amax = np.array([0.0, 1.0, 3e-20, 127.0], np.float32)
    np.testing.assert_array_equal(_grid.weight_step(amax, 8), _grid.step(-amax, amax, 8, True, True))
    assert _grid.code_range(8, _grid.WEIGHT_SIGNED, _grid.WEIGHT_NARROW_RANGE) == (-127, 127)
    assert float(_grid.weight_step(np.float32(127.0), 8)) == 1.0 and float(_grid.weight_step(np.float32(0), 8)) == 0
