"""Smoke test: the library loads and agrees bit for bit with TensorFlow's own V2/V4 kernels."""
import numpy as np
import pytest
import tensorflow as tf

import tensorflow_qdq as qdq


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("range_given", [False, True])
@pytest.mark.parametrize("op", ["QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4"])
def test_per_tensor_matches_builtin(dtype, range_given, op):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 33)).astype(dtype) * 3
    kwargs = dict(input=x, input_min=np.asarray(-2.5, dtype), input_max=np.asarray(1.7, dtype),
                  num_bits=5, range_given=range_given, signed_input=True)
    ours = getattr(qdq.raw_ops, op)(**kwargs).numpy()
    theirs = getattr(tf.raw_ops, op)(**kwargs).numpy()
    np.testing.assert_array_equal(ours.view(np.uint8), theirs.view(np.uint8))
