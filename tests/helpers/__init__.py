"""Helpers of the test suite (imported as ``tests.helpers.<module>``; the repository root is on
sys.path, tests/conftest.py puts it there):

    reference          the float64 NumPy model of docs/SEMANTICS.md (also the fuzz suite's oracle)
    cases              the one random case generator (conformance Cases; XLA/export calls)
    compare            the one bit-pattern comparison (NaN payloads normalised, optional sign-free zeros)
    keras_reference    TensorFlow's own kernels and a NumPy tracked-range model, for the Keras tests
    zoo                models for the quantize_model/export tests (also benchmarks/qat_step.py)
    setup_under_test   setup.py imported without running a build
    qdq_worker         calls run in a child process (crashes and aborts fail one case); run by path
    keras_distribute_worker   tf.distribute training in its own process; run by path
    device_buffers     the GPU kernels on PyTorch/CuPy buffers (tests/test_gpu.py, benchmarks/gpu.py);
                       imported as a plain module, with this folder on sys.path
"""
