"""Deployment of quantization-aware Keras models as integer models: ONNX and TFLite.

``to_onnx`` and ``to_tflite`` trace a model from ``tensorflow_qdq.keras.quantize_model`` once
with every range and weight frozen to constants, each quantizer emitting the ops that the
runtime turns into integer kernels (see ``_trace``), then convert with the runtime's own
converter (tf2onnx, the TFLite converter) and check the result.
"""

from tensorflow_qdq.deploy._errors import ExportMismatchError, ExportMismatchWarning  # noqa: E402

__all__ = ["ExportMismatchError", "ExportMismatchWarning"]
