"""The CUDA-enabled build: one _qdq_ops.so that holds the GPU kernels (device code
and DEVICE_GPU registrations for every op and dtype), links cudart statically, and
still loads and computes correctly in the CPU-only TensorFlow. Skipped, with the
reason, when the library was built without CUDA (no nvcc, or QDQ_CUDA=0)."""
import shutil
import subprocess

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import kernels

import tensorflow_qdq as qdq
from tensorflow_qdq import _build_info, _loader

OPS = ["QuantizeAndDequantizeV2", "QuantizeAndDequantizeV3", "QuantizeAndDequantizeV4",
       "QuantizeAndDequantizeV4Grad"]
TYPES = {tf.bfloat16.as_datatype_enum, tf.float16.as_datatype_enum, tf.float32.as_datatype_enum,
         tf.float64.as_datatype_enum}

pytestmark = pytest.mark.skipif(not _build_info.WITH_CUDA,
                                reason="op library built without CUDA kernels (nvcc not found or QDQ_CUDA=0)")


@pytest.mark.parametrize("op", OPS)
def test_gpu_kernels_registered_for_every_dtype_with_host_ranges(op):
    registered = kernels.get_registered_kernels_for_op("Qdq>" + op).kernel
    gpu = [k for k in registered if k.device_type == "GPU"]
    assert {k.constraint[0].allowed_values.list.type[0] for k in gpu} == TYPES
    host = {"input_min", "input_max"} | ({"num_bits"} if op.endswith("V3") else set())
    for k in gpu:
        assert set(k.host_memory_arg) == host


def test_library_carries_device_code_and_static_cudart():
    so = str(_loader._LIBRARY)
    if shutil.which("readelf") is None:
        pytest.skip("readelf not available")
    sections = subprocess.run(["readelf", "-SW", so], capture_output=True, text=True, check=True).stdout
    assert ".nv_fatbin" in sections
    needed = subprocess.run(["readelf", "-dW", so], capture_output=True, text=True, check=True).stdout
    assert "libcudart" not in needed  # static: nothing to find on the loader path
    exported = subprocess.run(["nm", "-D", "--defined-only", so], capture_output=True, text=True).stdout
    assert " cuda" not in exported  # cudart stays private to the library


def test_cpu_kernels_of_the_cuda_build_run_in_cpu_only_tensorflow():
    """The CUDA build loaded (at import) into a TensorFlow without GPU support; its CPU
    kernels must still be right, in every dtype, per-tensor and per-channel."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 40)).astype(np.float32) * 4
    for dtype in (tf.float32, tf.float64, tf.float16, tf.bfloat16):
        xt = tf.cast(x, dtype)
        for axis, lo, hi in ((-1, -3.0, 2.5), (0, [-3.0] * 6, [2.5] * 6)):
            args = dict(input=xt, input_min=tf.cast(lo, dtype), input_max=tf.cast(hi, dtype), num_bits=6,
                        range_given=True, axis=axis)
            with tf.device("/CPU:0"):
                ours = qdq.raw_ops.QuantizeAndDequantizeV4(**args)
            # TF's V3 takes per-channel given ranges; narrow types go through float32 (SEMANTICS §3.6).
            ref = tf.raw_ops.QuantizeAndDequantizeV3(
                input=tf.cast(xt, tf.float64 if dtype == tf.float64 else tf.float32),
                input_min=tf.cast(lo, tf.float64 if dtype == tf.float64 else tf.float32),
                input_max=tf.cast(hi, tf.float64 if dtype == tf.float64 else tf.float32),
                num_bits=6, range_given=True, axis=axis)
            got = ours.numpy()
            want = tf.cast(ref, dtype).numpy()
            if dtype == tf.bfloat16:
                got, want = got.astype(ml_dtypes.bfloat16), want.astype(ml_dtypes.bfloat16)
            np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
