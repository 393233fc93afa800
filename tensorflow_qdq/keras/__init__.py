"""Keras 3 layers and quantization-aware training over tensorflow-qdq's ops.

``QuantizeAndDequantize`` is a fake-quantization layer (fixed, per-batch or tracked
ranges, per tensor or per channel); ``QuantizeWrapper`` quantizes a weighted layer's weights
per output channel (with an optional BatchNorm fold); ``quantize_model`` turns a Sequential or
functional model into a quantization-aware copy, ``calibrate`` sets its activation ranges
from data, and ``quantization_report`` lists what was quantized. Importing this module
registers the layers with Keras' serialization, so ``keras.saving.load_model`` of a
``.keras`` file that holds them needs ``import tensorflow_qdq.keras`` first.
"""

import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"tensorflow_qdq.keras needs Keras' TensorFlow backend, but Keras runs on {_keras.backend.backend()!r}; "
        "set KERAS_BACKEND=tensorflow before importing keras"
    )

from tensorflow_qdq.keras._attention import QuantizedMultiHeadAttention  # noqa: E402
from tensorflow_qdq.keras._bias_correction import correct_bias  # noqa: E402
from tensorflow_qdq.keras._calibrate import calibrate  # noqa: E402
from tensorflow_qdq.keras._equalize import equalize  # noqa: E402
from tensorflow_qdq.keras._layer import QuantizeAndDequantize  # noqa: E402
from tensorflow_qdq.keras._placement import SCHEMES  # noqa: E402
from tensorflow_qdq.keras._quantize_model import quantize_model  # noqa: E402
from tensorflow_qdq.keras._report import ReportRow, layer_rows, report_summary  # noqa: E402
from tensorflow_qdq.keras._sensitivity import sensitivity  # noqa: E402
from tensorflow_qdq.keras._wrapper import QuantizeWrapper  # noqa: E402

__all__ = [
    "QuantizeAndDequantize",
    "QuantizeWrapper",
    "QuantizedMultiHeadAttention",
    "ReportRow",
    "SCHEMES",
    "calibrate",
    "correct_bias",
    "equalize",
    "quantization_report",
    "quantize_model",
    "report_summary",
    "sensitivity",
]


def quantization_report(model, skipped=None, *, runtime=None, **export_options):
    """Rows (``ReportRow``) for every layer of a model made by ``quantize_model`` (nested
    models included, their layer names prefixed with the model's name). ``skipped``: the
    names passed as ``skip_layers`` (default: those ``quantize_model`` recorded on the model).

    ``runtime="onnxruntime"`` or ``"tflite"`` exports the model (``to_onnx`` / ``to_tflite``,
    given ``export_options`` such as ``opset=``; unverified, since the report is for looking)
    and fills in what that runtime runs for each layer: integer kernel or float, and why
    (``runtime_status``, ``runtime_detail``); ``print(report_summary(rows, runtime=...))`` counts them.
    """
    rows = layer_rows(model, skipped)
    if runtime is None:
        return rows
    # The runtime's view needs the exporters (deploy/, a layer above this one): the face
    # presents it, loaded only when asked for.
    from tensorflow_qdq.deploy import _runtime_report

    return _runtime_report.runtime_rows(model, rows, runtime, export_options)
