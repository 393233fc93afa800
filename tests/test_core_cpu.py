"""tensorflow_qdq._core's CPU path (the pybind11 module the GPU tests and the GPU
benchmark use as their reference) against TensorFlow's own kernels: bit-identical
for float32/float64, and for half/bfloat16 against cast(builtin_float32(cast_f32(x)))
(SEMANTICS §3.6). Also: its arguments are validated with ValueError, and it imports
without TensorFlow."""
import subprocess
import sys
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

core = pytest.importorskip("tensorflow_qdq._core", reason="tensorflow_qdq._core is not built (needs pybind11)")

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
TF_DTYPES = {"float32": tf.float32, "float64": tf.float64, "float16": tf.float16, "bfloat16": tf.bfloat16}


def bits(a):
    a = np.asarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def tf_reference(x, lo, hi, dtype, **attrs):
    """TF's float32/float64 kernel; narrow types go through float32 (SEMANTICS §3.6)."""
    compute = tf.float64 if dtype == "float64" else tf.float32
    out = tf.raw_ops.QuantizeAndDequantizeV4(
        input=tf.cast(tf.constant(x), compute), input_min=tf.cast(tf.constant(lo), compute),
        input_max=tf.cast(tf.constant(hi), compute), **attrs)
    return tf.cast(out, TF_DTYPES[dtype]).numpy()


def random_case(rng, dtype, shape, axis, signed, range_given):
    depth = 1 if axis == -1 else shape[axis]
    scale = 10.0 ** rng.integers(-3, 4)
    x = np.asarray(rng.standard_normal(shape) * scale).astype(DTYPES[dtype])
    a = (rng.standard_normal(depth) * scale).astype(DTYPES[dtype])
    b = (rng.standard_normal(depth) * scale).astype(DTYPES[dtype])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    if not signed:  # keep clear of the degenerate unsigned ranges TF gets wrong (SEMANTICS FIX §3.4)
        x = np.asarray(np.abs(x))
        lo = np.zeros_like(lo)
        hi = np.abs(hi)
    if axis == -1:
        lo, hi = lo.reshape(()), hi.reshape(())
    return x, lo, hi


CASES = [  # shape, axis
    ((1000,), -1), ((3, 5, 7), -1), ((), -1), ((0, 4), -1), ((17, 6), 1), ((6, 17), 0), ((4, 5, 9), 1),
    ((2, 3, 4, 5), 3),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("range_given", [False, True])
@pytest.mark.parametrize("shape,axis", CASES)
def test_quantize_matches_tensorflow(dtype, range_given, shape, axis):
    rng = np.random.default_rng(zlib.crc32(repr((dtype, range_given, shape, axis)).encode()))
    for trial in range(6):
        signed = trial % 3 != 2
        attrs = dict(signed_input=signed, num_bits=int(rng.choice([2, 4, 8, 12])), range_given=range_given,
                     round_mode=["HALF_TO_EVEN", "HALF_UP"][trial % 2], narrow_range=bool(trial % 4 == 1),
                     axis=axis)
        x, lo, hi = random_case(rng, dtype, shape, axis, signed, range_given)
        if axis != -1 and range_given:  # TF's V4 rejects per-channel given ranges; V3 takes them
            compute = tf.float64 if dtype == "float64" else tf.float32
            want = tf.cast(tf.raw_ops.QuantizeAndDequantizeV3(
                input=tf.cast(x, compute), input_min=tf.cast(lo, compute), input_max=tf.cast(hi, compute),
                num_bits=attrs["num_bits"], signed_input=signed, range_given=True,
                narrow_range=attrs["narrow_range"], axis=axis), TF_DTYPES[dtype]).numpy()
            if attrs["round_mode"] != "HALF_TO_EVEN":
                attrs["round_mode"] = "HALF_TO_EVEN"
        else:
            want = tf_reference(x, lo, hi, dtype, **attrs)
        got = core.quantize(x, lo.reshape(-1), hi.reshape(-1), **attrs)
        assert got.dtype == x.dtype and got.shape == x.shape
        np.testing.assert_array_equal(bits(got), bits(want), err_msg=f"{attrs}")


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape,axis", [((50,), -1), ((7, 9), 0), ((7, 9), 1), ((3, 4, 5), 1)])
def test_masked_gradient_matches_tensorflow(dtype, shape, axis):
    rng = np.random.default_rng(3)
    x, lo, hi = random_case(rng, dtype, shape, axis, True, True)
    g = rng.standard_normal(shape).astype(DTYPES[dtype])
    compute = tf.float64 if dtype == "float64" else tf.float32
    want = tf.raw_ops.QuantizeAndDequantizeV4Grad(
        gradients=tf.cast(g, compute), input=tf.cast(x, compute), input_min=tf.cast(lo, compute),
        input_max=tf.cast(hi, compute), axis=axis)[0]
    want = tf.cast(want, TF_DTYPES[dtype]).numpy()
    got = core.masked_gradient(g, x, lo.reshape(-1), hi.reshape(-1), axis=axis)
    np.testing.assert_array_equal(bits(got), bits(want))


def test_worked_example_from_spec():
    x = np.array([-1, -0.5, 0, 0.3, 0.8, 0.555, 0.50390625], np.float32)
    z = np.zeros(1, np.float32)
    np.testing.assert_array_equal(core.quantize(x, z, z),
                                  np.array([-1, -0.5, 0, 0.296875, 0.796875, 0.5546875, 0.5], np.float32))
    assert core.quantize(x, z, z, round_mode="HALF_UP")[-1] == np.float32(0.5078125)


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_bits=0), "num_bits must be in \\[1, 61\\]"),
    (dict(num_bits=63, signed_input=False), "num_bits must be in \\[1, 62\\]"),
    (dict(axis=2), "axis must be -1"),
    (dict(axis=-2), "axis must be -1"),
    (dict(round_mode="UP"), "round_mode"),
    (dict(range_given=True, lo=[2.0], hi=[1.0]), "input_min must be <= input_max"),
    (dict(range_given=True, lo=[np.nan], hi=[1.0]), "input_min must be <= input_max"),
    (dict(axis=1, lo=[0.0], hi=[1.0]), "input_min must hold 3"),
    (dict(lo=np.zeros(1, np.float64)), "input_min must have dtype float32"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    x = np.ones((2, 3), np.float32)
    lo = np.asarray(kwargs.pop("lo", [0.0]), np.float32) if not isinstance(kwargs.get("lo"), np.ndarray) \
        else kwargs.pop("lo")
    hi = np.asarray(kwargs.pop("hi", [1.0]), np.float32)
    with pytest.raises(ValueError, match=message):
        core.quantize(x, lo, hi, **kwargs)


def test_rejects_unsupported_and_strided_inputs():
    with pytest.raises(ValueError, match="dtype must be"):
        core.quantize(np.ones(3, np.int32), np.zeros(1, np.int32), np.ones(1, np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        core.quantize(np.ones((4, 4), np.float32)[:, ::2], np.zeros(1, np.float32), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="shape of input"):
        core.masked_gradient(np.ones(3, np.float32), np.ones(4, np.float32), np.zeros(1, np.float32),
                             np.ones(1, np.float32))


def test_imports_without_tensorflow(tmp_path):
    """The core needs no TensorFlow: import it with TensorFlow made unimportable."""
    (tmp_path / "tensorflow.py").write_text("raise ImportError('TensorFlow hidden for this test')\n")
    code = ("import numpy as np, sys\n"
            "from tensorflow_qdq import _core\n"
            "assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n"
            "print(_core.quantize(np.array([0.3, -1.0], np.float32), np.zeros(1, np.float32),"
            " np.zeros(1, np.float32)).tolist(), _core.WITH_CUDA, _core.cuda_device_count())\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0:2] == ["[0.296875,", "-1.0]"]
