"""tensorflow-qdq: the quantize-and-dequantize op family as custom TensorFlow ops.

CPU (and CUDA) kernels for bfloat16, half, float32 and float64, bit-identical to
TensorFlow's kernels where those are right, with TensorFlow's bugs fixed where
they are not (see the README). Importing the package loads the op library and
registers the gradients. Without TensorFlow installed, only the framework-free
core (``tensorflow_qdq._core``) is usable.
"""

from tensorflow_qdq._version import __version__  # noqa: F401

try:
    import tensorflow as _tf  # noqa: F401
except ImportError as _exc:  # the TensorFlow-free core still imports
    _TF_IMPORT_ERROR = _exc
else:
    _TF_IMPORT_ERROR = None
    from tensorflow_qdq import (
        _gradients,  # noqa: F401 - registers gradients
        raw_ops,
    )
    from tensorflow_qdq._api import quantize_and_dequantize, quantize_and_dequantize_v2, quantize_and_dequantize_v4
    from tensorflow_qdq._builtins import load_saved_model, qdq_ops_in_saved_model, restore_builtins, use_for_builtins
    from tensorflow_qdq._dispatch import XLA_SUPPORTED
    from tensorflow_qdq._export import export
    from tensorflow_qdq._learned import quantize_and_dequantize_learned
    from tensorflow_qdq._loader import LibraryError

__all__ = [
    "LibraryError",
    "XLA_SUPPORTED",
    "export",
    "load_saved_model",
    "qdq_ops_in_saved_model",
    "quantize_and_dequantize",
    "quantize_and_dequantize_learned",
    "quantize_and_dequantize_v2",
    "quantize_and_dequantize_v4",
    "raw_ops",
    "restore_builtins",
    "to_onnx",
    "to_tflite",
    "use_for_builtins",
]


def __getattr__(name):
    if name == "keras" and _TF_IMPORT_ERROR is None:
        # Imported on first use: Keras takes seconds to import and the ops do not need it.
        import importlib

        return importlib.import_module("tensorflow_qdq.keras")
    if name == "to_onnx" and _TF_IMPORT_ERROR is None:
        from tensorflow_qdq.deploy.onnx import to_onnx  # imports Keras and tf2onnx: only when asked for

        return to_onnx
    if name == "to_tflite" and _TF_IMPORT_ERROR is None:
        from tensorflow_qdq.deploy.tflite import to_tflite  # imports Keras: only when asked for

        return to_tflite
    if _TF_IMPORT_ERROR is not None and name in __all__:
        raise ImportError(
            f"tensorflow_qdq.{name} needs TensorFlow, which could not be imported ({_TF_IMPORT_ERROR}); "
            "install tensorflow-cpu (or tensorflow) and rebuild: pip install --no-build-isolation ."
        )
    raise AttributeError(f"module 'tensorflow_qdq' has no attribute {name!r}")
